// Embedding lookup (index_select of table rows) and its gradient (index_add into an f32 table).
// Twin: Tensor::index_select / index_add_rows (crates/tensor/src/cpu). Ids outside [0, rows) are not read:
// the kernel skips them and sets *bad_id, which the host turns into an error naming the op.
#include "device.cuh"

// One block per id (grid-stride over ids), threads over columns.
template <typename T>
FT_DEVICE void embedding_forward_impl(const T* table, const int64_t* ids, T* out, int64_t n_ids, int64_t rows,
                                      int64_t cols, int* bad_id) {
    for (int64_t i = blockIdx.x; i < n_ids; i += gridDim.x) {
        int64_t id = ids[i];
        if (id < 0 || id >= rows) {
            if (threadIdx.x == 0) atomicAdd(bad_id, 1);
            continue;
        }
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[i * cols + c] = table[id * cols + c];
    }
}
FT_KERNEL void embedding_forward_f32(const float* table, const int64_t* ids, float* out, int64_t n_ids, int64_t rows,
                                     int64_t cols, int* bad_id) {
    embedding_forward_impl(table, ids, out, n_ids, rows, cols, bad_id);
}
FT_EXPORT(embedding_forward_f32)
FT_KERNEL void embedding_forward_bf16(const bf16* table, const int64_t* ids, bf16* out, int64_t n_ids, int64_t rows,
                                      int64_t cols, int* bad_id) {
    embedding_forward_impl(table, ids, out, n_ids, rows, cols, bad_id);
}
FT_EXPORT(embedding_forward_bf16)

// grad_table [rows, cols] f32 (zeroed by the caller) += grad_out rows at ids; repeated ids accumulate.
template <typename T>
FT_DEVICE void embedding_backward_impl(const T* grad_out, const int64_t* ids, float* grad_table, int64_t n_ids,
                                       int64_t rows, int64_t cols, int* bad_id) {
    for (int64_t i = blockIdx.x; i < n_ids; i += gridDim.x) {
        int64_t id = ids[i];
        if (id < 0 || id >= rows) {
            if (threadIdx.x == 0) atomicAdd(bad_id, 1);
            continue;
        }
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
            atomicAdd(&grad_table[id * cols + c], ft_to_float(grad_out[i * cols + c]));
    }
}
FT_KERNEL void embedding_backward_f32(const float* grad_out, const int64_t* ids, float* grad_table, int64_t n_ids,
                                      int64_t rows, int64_t cols, int* bad_id) {
    embedding_backward_impl(grad_out, ids, grad_table, n_ids, rows, cols, bad_id);
}
FT_EXPORT(embedding_backward_f32)
FT_KERNEL void embedding_backward_bf16(const bf16* grad_out, const int64_t* ids, float* grad_table, int64_t n_ids,
                                       int64_t rows, int64_t cols, int* bad_id) {
    embedding_backward_impl(grad_out, ids, grad_table, n_ids, rows, cols, bad_id);
}
FT_EXPORT(embedding_backward_bf16)

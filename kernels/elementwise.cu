// Fill, cast, strided copy and row reductions: the data-movement ops of the backend interface
// (crates/tensor/src/backend.rs: to_dtype, copy_strided, reduce). Grid-stride loops; 64-bit indices.
#include "device.cuh"

// Exactly 6 dims: the caller pads smaller ranks with leading size-1 dims (a fixed trip count keeps the arrays in
// registers; a loop bounded by a rank field put them in local memory) and collapses or rejects larger ones.
struct StridedShape {
    int64_t dims[6];
    int64_t strides[6];  // in elements of the source
    int64_t offset;
};

template <typename T>
FT_DEVICE void fill_impl(T* out, int64_t n, float value) {
    T v = ft_from_float<T>(value);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) out[i] = v;
}
FT_KERNEL void fill_f32(float* out, int64_t n, float value) { fill_impl(out, n, value); }
FT_EXPORT(fill_f32)
FT_KERNEL void fill_bf16(bf16* out, int64_t n, float value) { fill_impl(out, n, value); }
FT_EXPORT(fill_bf16)

template <typename From, typename To>
FT_DEVICE void cast_impl(const From* in, To* out, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = ft_from_float<To>(ft_to_float(in[i]));
}
FT_KERNEL void cast_f32_bf16(const float* in, bf16* out, int64_t n) { cast_impl(in, out, n); }
FT_EXPORT(cast_f32_bf16)
FT_KERNEL void cast_bf16_f32(const bf16* in, float* out, int64_t n) { cast_impl(in, out, n); }
FT_EXPORT(cast_bf16_f32)

// out[i] = in[offset + sum_d index_d(i) * strides[d]] for the row-major index i of `shape`.
template <typename T>
FT_DEVICE void copy_strided_impl(const T* in, T* out, StridedShape s) {
    int64_t n = 1;
#pragma unroll
    for (int d = 0; d < 6; ++d) n *= s.dims[d];
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t rest = i, src = s.offset;
#pragma unroll
        for (int d = 5; d >= 0; --d) {
            src += (rest % s.dims[d]) * s.strides[d];
            rest /= s.dims[d];
        }
        out[i] = in[src];
    }
}
FT_KERNEL void copy_strided_f32(const float* in, float* out, StridedShape s) { copy_strided_impl(in, out, s); }
FT_EXPORT(copy_strided_f32)
FT_KERNEL void copy_strided_bf16(const bf16* in, bf16* out, StridedShape s) { copy_strided_impl(in, out, s); }
FT_EXPORT(copy_strided_bf16)

// One block per row of a contiguous [rows, cols] matrix: out[row] = sum (op 0) or max (op 1) of the row, in
// f32. Other reductions are this after a strided copy that moves the reduced dims last.
template <typename T>
FT_DEVICE void reduce_rows_impl(const T* in, float* out, int64_t cols, int op) {
    __shared__ float scratch[32];
    const T* row = in + blockIdx.x * cols;
    float acc = op == 0 ? 0.f : -INFINITY;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = ft_to_float(row[c]);
        acc = op == 0 ? acc + v : fmaxf(acc, v);
    }
    acc = op == 0 ? ft_block_sum(acc, scratch) : ft_block_max(acc, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = acc;
}
FT_KERNEL void reduce_rows_f32(const float* in, float* out, int64_t cols, int op) { reduce_rows_impl(in, out, cols, op); }
FT_EXPORT(reduce_rows_f32)
FT_KERNEL void reduce_rows_bf16(const bf16* in, float* out, int64_t cols, int op) { reduce_rows_impl(in, out, cols, op); }
FT_EXPORT(reduce_rows_bf16)

// Pointwise math on a contiguous buffer, in f32: the backend's unary / affine / powf (crates/tensor/src/backend.rs,
// twins: the CPU backend's UnaryOp, affine, powf). `op` numbers the UnaryOp variants in declaration order
// (0 Neg .. 14 Sign), then 15 affine (x * a + b) and 16 powf (x ^ a). One op switch per element: memory bound.
FT_DEVICE float ft_pointwise(float x, int op, float a, float b) {
    switch (op) {
        case 0: return -x;
        case 1: return expf(x);
        case 2: return logf(x);
        case 3: return sqrtf(x);
        case 4: return 1.f / x;
        case 5: return x * x;
        case 6: return fabsf(x);
        case 7: return tanhf(x);
        case 8: return sinf(x);
        case 9: return cosf(x);
        case 10: return 1.f / (1.f + expf(-x));
        case 11: return x / (1.f + expf(-x));
        case 12: return x > 0.f ? x : 0.f;
        case 13: return x > 0.f ? 1.f : 0.f;
        case 14: return x > 0.f ? 1.f : (x < 0.f ? -1.f : 0.f);
        case 15: return x * a + b;
        default: return powf(x, a);
    }
}
template <typename T>
FT_DEVICE void unary_impl(const T* in, T* out, int64_t n, int op, float a, float b) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = ft_from_float<T>(ft_pointwise(ft_to_float(in[i]), op, a, b));
}
FT_KERNEL void unary_f32(const float* in, float* out, int64_t n, int op, float a, float b) { unary_impl(in, out, n, op, a, b); }
FT_EXPORT(unary_f32)
FT_KERNEL void unary_bf16(const bf16* in, bf16* out, int64_t n, int op, float a, float b) { unary_impl(in, out, n, op, a, b); }
FT_EXPORT(unary_bf16)

// out = lhs op rhs on contiguous buffers of one shape (the backend gathers broadcast views first), in f32.
// `op` numbers BinaryOp in declaration order: 0 Add, 1 Sub, 2 Mul, 3 Div, 4 Maximum, 5 Minimum.
template <typename T>
FT_DEVICE void binary_impl(const T* lhs, const T* rhs, T* out, int64_t n, int op) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float x = ft_to_float(lhs[i]), y = ft_to_float(rhs[i]), r;
        switch (op) {
            case 0: r = x + y; break;
            case 1: r = x - y; break;
            case 2: r = x * y; break;
            case 3: r = x / y; break;
            case 4: r = fmaxf(x, y); break;
            default: r = fminf(x, y); break;
        }
        out[i] = ft_from_float<T>(r);
    }
}
FT_KERNEL void binary_f32(const float* lhs, const float* rhs, float* out, int64_t n, int op) { binary_impl(lhs, rhs, out, n, op); }
FT_EXPORT(binary_f32)
FT_KERNEL void binary_bf16(const bf16* lhs, const bf16* rhs, bf16* out, int64_t n, int op) { binary_impl(lhs, rhs, out, n, op); }
FT_EXPORT(binary_bf16)

// Batched C[b] = A[b] x B[b] for contiguous row-major A [batch, m, k], B [batch, k, n] (or one [k, n] shared by
// every batch: b_batch_stride 0 instead of k * n), C [batch, m, n]; f32 accumulation. The backend's matmul on
// targets without cuBLASLt (the host emulation): 16x16 output tiles, one thread per output element, k walked in
// 16-wide tiles staged in shared memory. Grid: (ceil(n/16), ceil(m/16), batch), block (16, 16).
#define FT_GEMM_TILE 16
template <typename T>
FT_DEVICE void gemm_tiled_impl(const T* a, const T* b, T* c, int64_t m, int64_t n, int64_t k, int64_t b_batch_stride) {
    __shared__ float a_tile[FT_GEMM_TILE][FT_GEMM_TILE];
    __shared__ float b_tile[FT_GEMM_TILE][FT_GEMM_TILE + 1];
    const int64_t batch = blockIdx.z;
    a += batch * m * k;
    b += batch * b_batch_stride;
    c += batch * m * n;
    const int64_t row = blockIdx.y * (int64_t)FT_GEMM_TILE + threadIdx.y;
    const int64_t col = blockIdx.x * (int64_t)FT_GEMM_TILE + threadIdx.x;
    float acc = 0.f;
    for (int64_t k0 = 0; k0 < k; k0 += FT_GEMM_TILE) {
        int64_t ka = k0 + threadIdx.x, kb = k0 + threadIdx.y;
        a_tile[threadIdx.y][threadIdx.x] = row < m && ka < k ? ft_to_float(a[row * k + ka]) : 0.f;
        b_tile[threadIdx.y][threadIdx.x] = kb < k && col < n ? ft_to_float(b[kb * n + col]) : 0.f;
        __syncthreads();
        for (int kk = 0; kk < FT_GEMM_TILE; ++kk) acc += a_tile[threadIdx.y][kk] * b_tile[kk][threadIdx.x];
        __syncthreads();
    }
    if (row < m && col < n) c[row * n + col] = ft_from_float<T>(acc);
}
FT_KERNEL void gemm_tiled_f32(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k, int64_t b_batch_stride) {
    gemm_tiled_impl(a, b, c, m, n, k, b_batch_stride);
}
FT_EXPORT(gemm_tiled_f32)
FT_KERNEL void gemm_tiled_bf16(const bf16* a, const bf16* b, bf16* c, int64_t m, int64_t n, int64_t k, int64_t b_batch_stride) {
    gemm_tiled_impl(a, b, c, m, n, k, b_batch_stride);
}
FT_EXPORT(gemm_tiled_bf16)

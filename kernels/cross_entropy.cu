// Cross-entropy over the vocabulary with ignore_index, never materialising probabilities. Twin:
// ops::cross_entropy / cross_entropy_backward. One block per row; each thread streams its columns keeping an
// online (max, sum of exp) pair, and the pairs merge across the block.
//
// Forward writes lse[row] and loss[row] = lse - logit[target] (0 on ignored rows); the host (or a reduce
// kernel) sums loss and divides by the valid count. Backward: grad = w (exp(logit - lse) - onehot(target)),
// 0 on ignored rows, w = grad_loss / n_valid (mean) or grad_loss (sum), computed by the caller.
#include "device.cuh"

FT_DEVICE void ft_merge_online(float& m, float& s, float m2, float s2) {
    float mm = fmaxf(m, m2);
    if (mm == -INFINITY) return;  // both empty
    s = s * __expf(m - mm) + s2 * __expf(m2 - mm);
    m = mm;
}

template <typename T>
FT_DEVICE void cross_entropy_forward_impl(const T* logits, const int64_t* targets, float* lse, float* loss,
                                          int64_t rows, int64_t vocab, int64_t ignore_index, int* bad_target) {
    __shared__ float scratch_m[32];
    __shared__ float scratch_s[32];
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* x = logits + row * vocab;
        float m = -INFINITY, s = 0.f;
        for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) ft_merge_online(m, s, ft_to_float(x[c]), 1.f);
        for (int offset = 16; offset > 0; offset >>= 1) {
            float m2 = __shfl_xor_sync(0xffffffffu, m, offset), s2 = __shfl_xor_sync(0xffffffffu, s, offset);
            ft_merge_online(m, s, m2, s2);
        }
        unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
        __syncthreads();
        if (lane == 0) {
            scratch_m[warp] = m;
            scratch_s[warp] = s;
        }
        __syncthreads();
        m = -INFINITY;
        s = 0.f;
        for (unsigned w = 0; w < warps; ++w) ft_merge_online(m, s, scratch_m[w], scratch_s[w]);
        if (threadIdx.x == 0) {
            float row_lse = m + __logf(s);
            lse[row] = row_lse;
            int64_t t = targets[row];
            if (t == ignore_index) {
                loss[row] = 0.f;
            } else if (t < 0 || t >= vocab) {
                loss[row] = 0.f;
                atomicAdd(bad_target, 1);
            } else {
                loss[row] = row_lse - ft_to_float(x[t]);
            }
        }
    }
}
FT_KERNEL void cross_entropy_forward_f32(const float* logits, const int64_t* targets, float* lse, float* loss,
                                         int64_t rows, int64_t vocab, int64_t ignore_index, int* bad_target) {
    cross_entropy_forward_impl(logits, targets, lse, loss, rows, vocab, ignore_index, bad_target);
}
FT_EXPORT(cross_entropy_forward_f32)
FT_KERNEL void cross_entropy_forward_bf16(const bf16* logits, const int64_t* targets, float* lse, float* loss,
                                          int64_t rows, int64_t vocab, int64_t ignore_index, int* bad_target) {
    cross_entropy_forward_impl(logits, targets, lse, loss, rows, vocab, ignore_index, bad_target);
}
FT_EXPORT(cross_entropy_forward_bf16)

// Grid (column chunks, rows): each block writes one chunk of one row's gradient.
template <typename T>
FT_DEVICE void cross_entropy_backward_impl(const T* logits, const int64_t* targets, const float* lse, T* grad,
                                           int64_t rows, int64_t vocab, int64_t ignore_index, float weight) {
    for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
        int64_t t = targets[row];
        bool ignored = t == ignore_index || t < 0 || t >= vocab;
        float row_lse = lse[row];
        for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < vocab; c += (int64_t)gridDim.x * blockDim.x) {
            float g = ignored ? 0.f : weight * (__expf(ft_to_float(logits[row * vocab + c]) - row_lse) - (c == t ? 1.f : 0.f));
            grad[row * vocab + c] = ft_from_float<T>(g);
        }
    }
}
FT_KERNEL void cross_entropy_backward_f32(const float* logits, const int64_t* targets, const float* lse, float* grad,
                                          int64_t rows, int64_t vocab, int64_t ignore_index, float weight) {
    cross_entropy_backward_impl(logits, targets, lse, grad, rows, vocab, ignore_index, weight);
}
FT_EXPORT(cross_entropy_backward_f32)
FT_KERNEL void cross_entropy_backward_bf16(const bf16* logits, const int64_t* targets, const float* lse, bf16* grad,
                                           int64_t rows, int64_t vocab, int64_t ignore_index, float weight) {
    cross_entropy_backward_impl(logits, targets, lse, grad, rows, vocab, ignore_index, weight);
}
FT_EXPORT(cross_entropy_backward_bf16)

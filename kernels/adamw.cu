// Fused AdamW over one flat parameter buffer, the global gradient norm it clips with, and nothing else.
// Twin: ferrotune-train's Optimizer (torch's single-tensor AdamW, checked against torch by train_optim golden).
//
// grad_norm_sq: *accum += sum(g^2) over a buffer (f32 accumulation; call once per parameter buffer).
// adamw: the clipping coefficient min(1, max_norm / (sqrt(*norm_sq) + 1e-6)) is computed on the device from
// *norm_sq (null or max_norm <= 0: no clipping), so the step needs no host round trip. bf16 parameters keep
// an f32 master copy (master, updated in place; the bf16 param is its rounding); f32 parameters pass null.
#include "device.cuh"

template <typename T>
FT_DEVICE void grad_norm_sq_impl(const T* g, int64_t n, float* accum) {
    __shared__ float scratch[32];
    float s = 0.f;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = ft_to_float(g[i]);
        s += v * v;
    }
    s = ft_block_sum(s, scratch);
    if (threadIdx.x == 0) atomicAdd(accum, s);
}
FT_KERNEL void grad_norm_sq_f32(const float* g, int64_t n, float* accum) { grad_norm_sq_impl(g, n, accum); }
FT_EXPORT(grad_norm_sq_f32)
FT_KERNEL void grad_norm_sq_bf16(const bf16* g, int64_t n, float* accum) { grad_norm_sq_impl(g, n, accum); }
FT_EXPORT(grad_norm_sq_bf16)

// Hyper-parameters of one step, precomputed on the host exactly as the twin does (in f64, rounded to f32).
struct AdamWStep {
    float beta1, beta2, eps;
    float step_size;  // lr / (1 - beta1^step)
    float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
    float decay;  // 1 - lr * weight_decay
    float max_grad_norm;  // <= 0: no clipping
};

template <typename T>
FT_DEVICE void adamw_impl(T* param, float* master, const T* grad, float* m, float* v, int64_t n, AdamWStep h,
                          const float* norm_sq) {
    float scale = 1.f;
    if (norm_sq && h.max_grad_norm > 0.f) scale = fminf(1.f, h.max_grad_norm / (sqrtf(*norm_sq) + 1e-6f));
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = ft_to_float(grad[i]) * scale;
        float p = master ? master[i] : ft_to_float(param[i]);
        p *= h.decay;
        float mi = m[i] + (1.f - h.beta1) * (g - m[i]);
        float vi = h.beta2 * v[i] + (1.f - h.beta2) * g * g;
        p -= h.step_size * mi / (sqrtf(vi) / h.bias_correction2_sqrt + h.eps);
        m[i] = mi;
        v[i] = vi;
        if (master) master[i] = p;
        param[i] = ft_from_float<T>(p);
    }
}
FT_KERNEL void adamw_f32(float* param, float* master, const float* grad, float* m, float* v, int64_t n, AdamWStep h,
                         const float* norm_sq) {
    adamw_impl(param, master, grad, m, v, n, h, norm_sq);
}
FT_EXPORT(adamw_f32)
FT_KERNEL void adamw_bf16(bf16* param, float* master, const bf16* grad, float* m, float* v, int64_t n, AdamWStep h,
                          const float* norm_sq) {
    adamw_impl(param, master, grad, m, v, n, h, norm_sq);
}
FT_EXPORT(adamw_bf16)

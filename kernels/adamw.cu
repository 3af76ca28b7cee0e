// Fused AdamW over one flat parameter buffer, the global gradient norm it clips with, and nothing else.
// Twin: ferrotune-train's Optimizer (torch's single-tensor AdamW, checked against torch by train_optim golden).
//
// grad_norm_sq: *accum += sum(g^2) over a buffer (f32 accumulation; call once per parameter buffer).
// adamw: the clipping coefficient min(1, max_norm / (sqrt(*norm_sq) + 1e-6)) is computed on the device from
// *norm_sq (null or max_norm <= 0: no clipping), so the step needs no host round trip. bf16 parameters keep
// an f32 master copy (master, updated in place; the bf16 param is its rounding); f32 parameters pass null.
// bf16 parameters without a master copy may use stochastic rounding (stochastic_seed != 0): each element rounds
// up with probability equal to its distance from the lower bf16 neighbour, so updates smaller than half a bf16
// ulp still move the weight in expectation instead of vanishing. Pass a different seed every step.
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
    uint32_t stochastic_seed;  // bf16 without master only; 0: round to nearest even
};

// A 32-bit hash of (seed, index): splitmix64's finaliser, enough to decorrelate neighbouring elements.
FT_DEVICE uint32_t ft_hash(uint32_t seed, int64_t i) {
    uint64_t z = ((uint64_t)seed << 32) ^ (uint64_t)i;
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

// Round f32 to bf16 stochastically: add 16 random bits below the bf16 mantissa, then truncate.
template <typename T> FT_DEVICE T ft_round_stochastic(float x, uint32_t random);
template <> FT_DEVICE float ft_round_stochastic<float>(float x, uint32_t) { return x; }
template <> FT_DEVICE bf16 ft_round_stochastic<bf16>(float x, uint32_t random) {
    uint32_t w;
    memcpy(&w, &x, 4);
    if ((w & 0x7f800000u) == 0x7f800000u) return ft_from_float<bf16>(x);  // inf / NaN: no neighbours
    w += random & 0xffffu;
    w &= 0xffff0000u;
    float rounded;
    memcpy(&rounded, &w, 4);
    return ft_from_float<bf16>(rounded);  // exact: the low 16 bits are zero
}

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
        param[i] = !master && h.stochastic_seed ? ft_round_stochastic<T>(p, ft_hash(h.stochastic_seed, i)) : ft_from_float<T>(p);
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

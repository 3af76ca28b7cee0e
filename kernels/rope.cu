// Rotary position embedding in the half-split (rotate_half) layout of HF Llama. Twin: ops::rope / rope_backward
// and RopeTable (crates/tensor/src/ops/rope.rs), which computes inv_freq and attention_scaling for every HF
// rope_type (default, linear, dynamic NTK, llama3, yarn); the table kernel evaluates cos/sin from them in f64
// (angles reach position * inv_freq ~ 1e5 rad: f32 would lose about 1e-2) and rounds once to f32, as the twin.
#include "device.cuh"

// cos/sin [positions, half] = cos/sin(p * inv_freq[i]) * attention_scaling.
FT_KERNEL void rope_table(const double* inv_freq, double attention_scaling, float* cos_out, float* sin_out,
                          int64_t positions, int half) {
    int64_t n = positions * half;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        double angle = (double)(i / half) * inv_freq[i % half];
        cos_out[i] = (float)(cos(angle) * attention_scaling);
        sin_out[i] = (float)(sin(angle) * attention_scaling);
    }
}
FT_EXPORT(rope_table)

// x, out: [tokens, heads, head_dim]; positions: [tokens] (packed sequences restart at 0). One thread per
// (token, head, i < half) pair: out_i = x_i c - x_{i+half} s, out_{i+half} = x_{i+half} c + x_i s; the backward
// (inverse = 1) rotates by the opposite angle.
template <typename T>
FT_DEVICE void rope_impl(const T* x, const float* cos_t, const float* sin_t, const int64_t* positions, T* out,
                         int64_t tokens, int heads, int head_dim, int inverse) {
    int half = head_dim / 2;
    int64_t n = tokens * heads * half;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t pair = i % half, row = i / half, token = row / heads;
        int64_t p = positions[token];
        float c = cos_t[p * half + pair], s = sin_t[p * half + pair];
        if (inverse) s = -s;
        const T* xr = x + row * head_dim;
        float a = ft_to_float(xr[pair]), b = ft_to_float(xr[pair + half]);
        out[row * head_dim + pair] = ft_from_float<T>(a * c - b * s);
        out[row * head_dim + pair + half] = ft_from_float<T>(b * c + a * s);
    }
}
FT_KERNEL void rope_f32(const float* x, const float* cos_t, const float* sin_t, const int64_t* positions, float* out,
                        int64_t tokens, int heads, int head_dim, int inverse) {
    rope_impl(x, cos_t, sin_t, positions, out, tokens, heads, head_dim, inverse);
}
FT_EXPORT(rope_f32)
FT_KERNEL void rope_bf16(const bf16* x, const float* cos_t, const float* sin_t, const int64_t* positions, bf16* out,
                         int64_t tokens, int heads, int head_dim, int inverse) {
    rope_impl(x, cos_t, sin_t, positions, out, tokens, heads, head_dim, inverse);
}
FT_EXPORT(rope_bf16)

// SwiGLU: out = silu(gate) * up, and its gradient. Twin: ops::swiglu / swiglu_backward. Memory bound: one
// pass over gate, up (and grad_out), math in f32.
#include "device.cuh"

FT_DEVICE float ft_sigmoid(float a) { return 1.f / (1.f + __expf(-a)); }

template <typename T>
FT_DEVICE void swiglu_forward_impl(const T* gate, const T* up, T* out, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float a = ft_to_float(gate[i]), b = ft_to_float(up[i]);
        out[i] = ft_from_float<T>(a * ft_sigmoid(a) * b);
    }
}
FT_KERNEL void swiglu_forward_f32(const float* gate, const float* up, float* out, int64_t n) { swiglu_forward_impl(gate, up, out, n); }
FT_EXPORT(swiglu_forward_f32)
FT_KERNEL void swiglu_forward_bf16(const bf16* gate, const bf16* up, bf16* out, int64_t n) { swiglu_forward_impl(gate, up, out, n); }
FT_EXPORT(swiglu_forward_bf16)

// d gate = g * up * s * (1 + a (1 - s)),  d up = g * a * s,  s = sigmoid(a).
template <typename T>
FT_DEVICE void swiglu_backward_impl(const T* gate, const T* up, const T* grad_out, T* grad_gate, T* grad_up, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float a = ft_to_float(gate[i]), b = ft_to_float(up[i]), g = ft_to_float(grad_out[i]);
        float s = ft_sigmoid(a);
        grad_gate[i] = ft_from_float<T>(g * b * s * (1.f + a * (1.f - s)));
        grad_up[i] = ft_from_float<T>(g * a * s);
    }
}
FT_KERNEL void swiglu_backward_f32(const float* gate, const float* up, const float* grad_out, float* grad_gate, float* grad_up, int64_t n) {
    swiglu_backward_impl(gate, up, grad_out, grad_gate, grad_up, n);
}
FT_EXPORT(swiglu_backward_f32)
FT_KERNEL void swiglu_backward_bf16(const bf16* gate, const bf16* up, const bf16* grad_out, bf16* grad_gate, bf16* grad_up, int64_t n) {
    swiglu_backward_impl(gate, up, grad_out, grad_gate, grad_up, n);
}
FT_EXPORT(swiglu_backward_bf16)

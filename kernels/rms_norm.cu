// RMSNorm with an optional fused residual add, forward and backward. Twin: ops::rms_norm / rms_norm_backward
// (plus Tensor::add for the residual). One block per row; math in f32.
//
// Forward: h = x + residual (rounded to T, as the unfused add would be; h = x without a residual),
// r = 1 / sqrt(mean(h^2) + eps), y = h * r * weight. Writes y, h (when residual is given) and r per row.
// Backward: given dy (and dh_skip, the gradient reaching h through the residual stream, or null),
// dh = r * dy * w - h * r^3 * mean(dy * w * h) + dh_skip, dweight += dy * h * r (f32, summed over rows).
#include "device.cuh"

template <typename T>
FT_DEVICE void rms_norm_forward_impl(const T* x, const T* residual, const T* weight, T* y, T* h_out, float* inv_rms,
                                     int64_t rows, int64_t cols, float eps) {
    __shared__ float scratch[32];
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * cols;
        float sum_sq = 0.f;
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            float h = ft_to_float(xr[c]);
            if (residual) {
                T rounded = ft_from_float<T>(h + ft_to_float(residual[row * cols + c]));
                h_out[row * cols + c] = rounded;
                h = ft_to_float(rounded);
            }
            sum_sq += h * h;
        }
        float r = rsqrtf(ft_block_sum(sum_sq, scratch) / (float)cols + eps);
        // Threads reread the h they wrote themselves (same c), so no barrier is needed before this loop.
        const T* hr = residual ? h_out + row * cols : xr;
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
            y[row * cols + c] = ft_from_float<T>(ft_to_float(hr[c]) * r * ft_to_float(weight[c]));
        if (threadIdx.x == 0) inv_rms[row] = r;
    }
}
FT_KERNEL void rms_norm_forward_f32(const float* x, const float* residual, const float* weight, float* y, float* h_out,
                                    float* inv_rms, int64_t rows, int64_t cols, float eps) {
    rms_norm_forward_impl(x, residual, weight, y, h_out, inv_rms, rows, cols, eps);
}
FT_EXPORT(rms_norm_forward_f32)
FT_KERNEL void rms_norm_forward_bf16(const bf16* x, const bf16* residual, const bf16* weight, bf16* y, bf16* h_out,
                                     float* inv_rms, int64_t rows, int64_t cols, float eps) {
    rms_norm_forward_impl(x, residual, weight, y, h_out, inv_rms, rows, cols, eps);
}
FT_EXPORT(rms_norm_forward_bf16)

// Each block handles rows blockIdx.x, +gridDim.x, ... and keeps its share of dweight in dynamic shared memory
// (cols floats), added to grad_weight (f32, zeroed by the caller) once at the end: one atomic per column per
// block instead of per row.
template <typename T>
FT_DEVICE void rms_norm_backward_impl(const T* h, const T* weight, const T* grad_y, const T* grad_h_skip,
                                      const float* inv_rms, T* grad_h, float* grad_weight, int64_t rows, int64_t cols) {
    __shared__ float scratch[32];
    FT_DYNAMIC_SHARED(float, partial_gw);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) partial_gw[c] = 0.f;
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* hr = h + row * cols;
        const T* gr = grad_y + row * cols;
        float r = inv_rms[row], dot = 0.f;
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
            dot += ft_to_float(gr[c]) * ft_to_float(weight[c]) * ft_to_float(hr[c]);
        float coeff = r * r * r * ft_block_sum(dot, scratch) / (float)cols;
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            float hv = ft_to_float(hr[c]), g = ft_to_float(gr[c]);
            float dh = r * g * ft_to_float(weight[c]) - hv * coeff;
            if (grad_h_skip) dh += ft_to_float(grad_h_skip[row * cols + c]);
            grad_h[row * cols + c] = ft_from_float<T>(dh);
            partial_gw[c] += g * hv * r;
        }
    }
    // Each thread only touched its own columns of partial_gw, so no barrier is needed here either.
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) atomicAdd(&grad_weight[c], partial_gw[c]);
}
FT_KERNEL void rms_norm_backward_f32(const float* h, const float* weight, const float* grad_y, const float* grad_h_skip,
                                     const float* inv_rms, float* grad_h, float* grad_weight, int64_t rows, int64_t cols) {
    rms_norm_backward_impl(h, weight, grad_y, grad_h_skip, inv_rms, grad_h, grad_weight, rows, cols);
}
FT_EXPORT(rms_norm_backward_f32)
FT_KERNEL void rms_norm_backward_bf16(const bf16* h, const bf16* weight, const bf16* grad_y, const bf16* grad_h_skip,
                                      const float* inv_rms, bf16* grad_h, float* grad_weight, int64_t rows, int64_t cols) {
    rms_norm_backward_impl(h, weight, grad_y, grad_h_skip, inv_rms, grad_h, grad_weight, rows, cols);
}
FT_EXPORT(rms_norm_backward_bf16)

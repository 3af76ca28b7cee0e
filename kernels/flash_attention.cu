// Causal flash attention (FlashAttention-2's algorithm) with grouped-query heads on varlen packed batches,
// forward and backward, head_dim 64 and 128, f32 and bf16 storage, f32 math. Twin: ops::attention /
// attention_backward with segment_ids (crates/tensor/src/ops/attention.rs; math in cpu/kernels/attention.rs).
//
// Layout: q, out, grad_q [total_tokens, Hq, D]; k, v [total_tokens, Hkv, D]; sequence s owns tokens
// cu_seqlens[s] .. cu_seqlens[s+1] (int32, [n_seqs + 1]), and no token attends outside its sequence. Query head h
// reads kv head h / (Hq / Hkv). lse [Hq, total_tokens] (f32) is saved for the backward; a row that sees no key
// (only possible without causal masking on an empty sequence) gets out = 0, lse = -inf.
//
// This first version uses scalar FMAs (no tensor-core mma yet): a warp owns query rows, lane j scores key j of
// a 32-key tile, the softmax runs online across tiles, and each lane accumulates D/32 output columns.
#include "device.cuh"

namespace {
constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kBlockQ = kWarps * kRowsPerWarp;  // query rows per block
constexpr int kBlockK = 32;                      // keys per tile (one per lane)
}  // namespace

// Grid (query tiles of the longest sequence, Hq, n_seqs), 128 threads.
template <typename T, int D>
FT_DEVICE void flash_forward_impl(const T* q, const T* k, const T* v, const int* cu_seqlens, T* out, float* lse,
                                  int hq, int hkv, int64_t total, float scale, int causal) {
    constexpr int kCols = D / 32;  // output columns per lane
    __shared__ float q_s[kBlockQ][D];
    __shared__ float k_s[kBlockK][D + 1];  // +1: lane j reads row j, so rows must fall in different banks
    __shared__ float v_s[kBlockK][D];
    const int seq = blockIdx.z, head = blockIdx.y, kv_head = head / (hq / hkv);
    const int64_t start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - cu_seqlens[seq];
    const int q0 = blockIdx.x * kBlockQ;
    if (q0 >= len) return;  // whole block exits together: no barrier is skipped by part of it
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

    for (int i = threadIdx.x; i < kBlockQ * D; i += blockDim.x) {
        int r = i / D, d = i % D;
        q_s[r][d] = q0 + r < len ? ft_to_float(q[((start + q0 + r) * hq + head) * D + d]) * scale : 0.f;
    }
    float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kCols];
    for (int i = 0; i < kRowsPerWarp; ++i) {
        m[i] = -INFINITY;
        l[i] = 0.f;
        for (int c = 0; c < kCols; ++c) acc[i][c] = 0.f;
    }
    const int key_end = causal ? min(len, q0 + kBlockQ) : len;
    for (int k0 = 0; k0 < key_end; k0 += kBlockK) {
        __syncthreads();  // previous tile fully consumed (and q_s written, on the first pass)
        for (int i = threadIdx.x; i < kBlockK * D; i += blockDim.x) {
            int r = i / D, d = i % D;
            bool in = k0 + r < len;
            int64_t at = ((start + k0 + r) * hkv + kv_head) * D + d;
            k_s[r][d] = in ? ft_to_float(k[at]) : 0.f;
            v_s[r][d] = in ? ft_to_float(v[at]) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < kRowsPerWarp; ++i) {
            const int r = warp * kRowsPerWarp + i, row = q0 + r;
            if (row >= len) continue;  // warp-uniform
            const int key = k0 + lane;
            float s = -INFINITY;
            if (key < len && (!causal || key <= row)) {
                s = 0.f;
#pragma unroll 8
                for (int d = 0; d < D; ++d) s += q_s[r][d] * k_s[lane][d];
            }
            const float m_new = fmaxf(m[i], ft_warp_max(s));
            if (m_new == -INFINITY) continue;  // warp-uniform: nothing visible yet
            const float p = s == -INFINITY ? 0.f : __expf(s - m_new);
            const float alpha = m[i] == -INFINITY ? 0.f : __expf(m[i] - m_new);
            l[i] = l[i] * alpha + ft_warp_sum(p);
            m[i] = m_new;
#pragma unroll
            for (int c = 0; c < kCols; ++c) acc[i][c] *= alpha;
            for (int j = 0; j < kBlockK; ++j) {
                const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
                for (int c = 0; c < kCols; ++c) acc[i][c] += pj * v_s[j][lane + 32 * c];
            }
        }
    }
    for (int i = 0; i < kRowsPerWarp; ++i) {
        const int row = q0 + warp * kRowsPerWarp + i;
        if (row >= len) continue;
        const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
        for (int c = 0; c < kCols; ++c)
            out[((start + row) * hq + head) * D + lane + 32 * c] = ft_from_float<T>(acc[i][c] * inv);
        if (lane == 0) lse[(int64_t)head * total + start + row] = l[i] > 0.f ? m[i] + __logf(l[i]) : -INFINITY;
    }
}

// delta[h, t] = sum_d grad_out[t, h, d] * out[t, h, d]: the softmax backward's row term. One warp per (t, h).
template <typename T>
FT_DEVICE void flash_delta_impl(const T* out, const T* grad_out, float* delta, int64_t total, int hq, int d) {
    const int64_t warps_total = (int64_t)gridDim.x * (blockDim.x / 32);
    const int lane = threadIdx.x % 32;
    for (int64_t w = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32; w < total * hq; w += warps_total) {
        const int64_t token = w / hq;
        const int head = w % hq;
        float s = 0.f;
        for (int c = lane; c < d; c += 32) s += ft_to_float(out[w * d + c]) * ft_to_float(grad_out[w * d + c]);
        s = ft_warp_sum(s);
        if (lane == 0) delta[(int64_t)head * total + token] = s;
    }
}

// Grid (key tiles of the longest sequence, Hkv, n_seqs), 128 threads, dynamic shared memory
// flash_backward_shared_bytes(D). The block owns 32 keys of one kv head and accumulates their dK and dV in
// shared memory over every query head of the group and every query row that sees them; dQ goes to an f32
// buffer (zeroed by the caller) with atomics, since several key tiles contribute to each query row.
template <typename T, int D>
FT_DEVICE void flash_backward_impl(const T* q, const T* k, const T* v, const T* grad_out, const float* lse,
                                   const float* delta, const int* cu_seqlens, float* grad_q_accum, T* grad_k, T* grad_v,
                                   int hq, int hkv, int64_t total, float scale, int causal) {
    constexpr int kCols = D / 32;
    constexpr int kStride = D + 1;
    FT_DYNAMIC_SHARED(float, smem);
    float* k_s = smem;                        // [32][D + 1]
    float* v_s = k_s + kBlockK * kStride;     // [32][D + 1]
    float* dk_s = v_s + kBlockK * kStride;    // [32][D + 1]
    float* dv_s = dk_s + kBlockK * kStride;   // [32][D + 1]
    float* rows_s = dv_s + kBlockK * kStride; // per warp: q row [D], grad_out row [D]
    const int seq = blockIdx.z, kv_head = blockIdx.y, group = hq / hkv;
    const int64_t start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - cu_seqlens[seq];
    const int k0 = blockIdx.x * kBlockK;
    if (k0 >= len) return;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int i = threadIdx.x; i < kBlockK * D; i += blockDim.x) {
        int r = i / D, d = i % D;
        bool in = k0 + r < len;
        int64_t at = ((start + k0 + r) * hkv + kv_head) * D + d;
        k_s[r * kStride + d] = in ? ft_to_float(k[at]) : 0.f;
        v_s[r * kStride + d] = in ? ft_to_float(v[at]) : 0.f;
        dk_s[r * kStride + d] = 0.f;
        dv_s[r * kStride + d] = 0.f;
    }
    __syncthreads();
    float* q_row = rows_s + warp * 2 * D;
    float* do_row = q_row + D;
    const int key = k0 + lane;
    const bool key_in = key < len;
    const int first_row = causal ? k0 : 0;
    for (int head = kv_head * group; head < (kv_head + 1) * group; ++head) {
        for (int row = first_row + warp; row < len; row += kWarps) {
            const int64_t at = ((start + row) * hq + head) * D;
            for (int c = 0; c < kCols; ++c) {
                q_row[lane + 32 * c] = ft_to_float(q[at + lane + 32 * c]);
                do_row[lane + 32 * c] = ft_to_float(grad_out[at + lane + 32 * c]);
            }
            __syncwarp();
            const float row_lse = lse[(int64_t)head * total + start + row];
            const float row_delta = delta[(int64_t)head * total + start + row];
            float p = 0.f, ds = 0.f;
            if (key_in && (!causal || key <= row)) {
                float s = 0.f, dp = 0.f;
#pragma unroll 8
                for (int d = 0; d < D; ++d) {
                    s += q_row[d] * k_s[lane * kStride + d];
                    dp += do_row[d] * v_s[lane * kStride + d];
                }
                p = __expf(s * scale - row_lse);
                ds = p * (dp - row_delta);
            }
            // dV[j] += p_j dO, dK[j] += scale ds_j q: lane j owns row j within the warp; other warps add to
            // the same rows for other query rows, hence the shared-memory atomics.
            for (int d = 0; d < D; ++d) {
                if (p != 0.f) atomicAdd(&dv_s[lane * kStride + d], p * do_row[d]);
                if (ds != 0.f) atomicAdd(&dk_s[lane * kStride + d], scale * ds * q_row[d]);
            }
            // dQ[row] += scale sum_j ds_j K[j]: lane owns columns lane + 32c.
            float dq[kCols];
            for (int c = 0; c < kCols; ++c) dq[c] = 0.f;
            for (int j = 0; j < kBlockK; ++j) {
                const float dsj = __shfl_sync(0xffffffffu, ds, j);
                for (int c = 0; c < kCols; ++c) dq[c] += dsj * k_s[j * kStride + lane + 32 * c];
            }
            for (int c = 0; c < kCols; ++c)
                if (dq[c] != 0.f) atomicAdd(&grad_q_accum[at + lane + 32 * c], scale * dq[c]);
            __syncwarp();  // q_row / do_row are rewritten for the next row
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kBlockK * D; i += blockDim.x) {
        int r = i / D, d = i % D;
        if (k0 + r >= len) continue;
        int64_t at = ((start + k0 + r) * hkv + kv_head) * D + d;
        grad_k[at] = ft_from_float<T>(dk_s[r * kStride + d]);
        grad_v[at] = ft_from_float<T>(dv_s[r * kStride + d]);
    }
}

#define FT_FLASH_KERNELS(T, SUFFIX, D)                                                                              \
    FT_KERNEL void flash_attention_forward_##SUFFIX##_d##D(const T* q, const T* k, const T* v, const int* cu_seqlens, \
                                                           T* out, float* lse, int hq, int hkv, int64_t total,       \
                                                           float scale, int causal) {                                \
        flash_forward_impl<T, D>(q, k, v, cu_seqlens, out, lse, hq, hkv, total, scale, causal);                     \
    }                                                                                                                 \
    FT_EXPORT(flash_attention_forward_##SUFFIX##_d##D)                                                              \
    FT_KERNEL void flash_attention_backward_##SUFFIX##_d##D(                                                         \
        const T* q, const T* k, const T* v, const T* grad_out, const float* lse, const float* delta,                 \
        const int* cu_seqlens, float* grad_q_accum, T* grad_k, T* grad_v, int hq, int hkv, int64_t total,            \
        float scale, int causal) {                                                                                    \
        flash_backward_impl<T, D>(q, k, v, grad_out, lse, delta, cu_seqlens, grad_q_accum, grad_k, grad_v, hq, hkv, \
                                  total, scale, causal);                                                              \
    }                                                                                                                 \
    FT_EXPORT(flash_attention_backward_##SUFFIX##_d##D)

FT_FLASH_KERNELS(float, f32, 64)
FT_FLASH_KERNELS(float, f32, 128)
FT_FLASH_KERNELS(bf16, bf16, 64)
FT_FLASH_KERNELS(bf16, bf16, 128)

FT_KERNEL void flash_attention_delta_f32(const float* out, const float* grad_out, float* delta, int64_t total, int hq, int d) {
    flash_delta_impl(out, grad_out, delta, total, hq, d);
}
FT_EXPORT(flash_attention_delta_f32)
FT_KERNEL void flash_attention_delta_bf16(const bf16* out, const bf16* grad_out, float* delta, int64_t total, int hq, int d) {
    flash_delta_impl(out, grad_out, delta, total, hq, d);
}
FT_EXPORT(flash_attention_delta_bf16)

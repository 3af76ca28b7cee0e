// The device primitives every kernel in kernels/ is written against, and nothing else.
//
// Under nvcc (__CUDACC__) this header is a thin pass-through to CUDA: kernels use the CUDA spellings
// (threadIdx, blockIdx, blockDim, gridDim, __syncthreads, __shfl_*_sync, __ballot_sync / __any_sync /
// __all_sync, atomicAdd, __shared__, extern __shared__ via FT_DYNAMIC_SHARED) and cuda_bf16.h's bf16.
//
// Under a host C++ compiler (g++/clang++, the `ferrotune-kernels` crate's harness) the same names are an
// emulation: each block's threads run as ucontext fibers on one OS thread, switched at barriers.
// - __syncthreads parks a fiber until every live thread of its block has arrived;
// - a warp shuffle / vote writes the lane's value into a per-warp slot, waits until every live lane of the
//   warp has arrived (a warp barrier), reads, and waits again (so slots are not overwritten before reads);
// - __shared__ arrays become thread_local statics (blocks of one launch run one after another on each
//   worker thread, so a block's fibers share them), dynamic shared memory a per-launch buffer;
// - atomics are real atomics: several worker threads run different blocks of a launch at once.
// A barrier that not every thread reaches (a __syncthreads inside divergent code) is reported as a deadlock
// and aborts the test, as it would hang or corrupt on a GPU.
//
// What the emulation cannot show: timing, the GPU memory model (a missing __syncthreads between a shared
// write and another thread's read may pass here, since fibers switch only at barriers), bank conflicts,
// register spills, and the layout of real tensor-core fragments (no kernel here uses mma fragments yet).
#pragma once

#ifdef __CUDACC__

#include <cuda_bf16.h>
#include <stdint.h>

#define FT_KERNEL extern "C" __global__
#define FT_DEVICE __device__ __forceinline__
// Registers a kernel with the host harness; nothing to do on the GPU (the module exports it by name).
#define FT_EXPORT(name)
#define FT_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) unsigned char ft_dynamic_smem_[]; \
    type* name = reinterpret_cast<type*>(ft_dynamic_smem_)

typedef __nv_bfloat16 bf16;
FT_DEVICE float ft_to_float(float x) { return x; }
FT_DEVICE float ft_to_float(bf16 x) { return __bfloat162float(x); }
template <typename T> FT_DEVICE T ft_from_float(float x);
template <> FT_DEVICE float ft_from_float<float>(float x) { return x; }
template <> FT_DEVICE bf16 ft_from_float<bf16>(float x) { return __float2bfloat16_rn(x); }

#else  // host emulation

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local
#define FT_KERNEL extern "C"
#define FT_DEVICE inline

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace ft {

constexpr unsigned kWarpSize = 32;

// Where the calling fiber is: set by the block scheduler before each switch into a fiber.
struct ThreadPosition {
    dim3 thread, block, block_dim, grid_dim;
    unsigned linear_thread;
    unsigned char* dynamic_shared;
};
ThreadPosition& position();

// Park the calling fiber until the whole block (warp = false) or its warp (warp = true) has arrived.
void barrier(bool warp);
// The calling warp's exchange slots (one 64-bit word per lane) for shuffles and votes.
uint64_t* warp_slots();

// Runs `kernel` over every block of `grid` with `block` threads each, `dynamic_shared` bytes of dynamic
// shared memory per block. Returns 0, or -1 after printing why (deadlock, bad launch shape).
int launch(dim3 grid, dim3 block, size_t dynamic_shared, const std::function<void()>& kernel);

// Unpacks cuLaunchKernel-style `args` (one pointer per parameter) into a call of `kernel`.
template <typename... Params, size_t... I>
void invoke_unpacked(void (*kernel)(Params...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_reference_t<Params>*>(args[I])...);
}
template <typename... Params>
void invoke(void (*kernel)(Params...), void** args) {
    invoke_unpacked(kernel, args, std::index_sequence_for<Params...>{});
}

using HostEntry = int (*)(dim3 grid, dim3 block, size_t dynamic_shared, void** args);
// Adds a kernel to the table `ft_host_kernel` searches (static registration at load time).
struct Registrar {
    Registrar(const char* name, HostEntry entry);
};

}  // namespace ft

#define threadIdx (::ft::position().thread)
#define blockIdx (::ft::position().block)
#define blockDim (::ft::position().block_dim)
#define gridDim (::ft::position().grid_dim)
#define warpSize (::ft::kWarpSize)
#define FT_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::ft::position().dynamic_shared)
#define FT_EXPORT(name)                                                                                  \
    static int ft_host_entry_##name(dim3 grid, dim3 block, size_t dynamic_shared, void** args) {         \
        return ::ft::launch(grid, block, dynamic_shared, [&] { ::ft::invoke(name, args); });            \
    }                                                                                                    \
    static ::ft::Registrar ft_registrar_##name(#name, ft_host_entry_##name);

inline void __syncthreads() { ft::barrier(false); }
inline void __syncwarp(unsigned = 0xffffffffu) { ft::barrier(true); }

namespace ft {
template <typename T>
inline T exchange(T value, unsigned source_lane) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 64 bits");
    uint64_t* slots = warp_slots();
    unsigned lane = position().linear_thread % kWarpSize;
    uint64_t word = 0;
    std::memcpy(&word, &value, sizeof(T));
    slots[lane] = word;
    barrier(true);
    T out;
    word = slots[source_lane % kWarpSize];
    std::memcpy(&out, &word, sizeof(T));
    barrier(true);
    return out;
}
inline unsigned lane_id() { return position().linear_thread % kWarpSize; }
}  // namespace ft

template <typename T> inline T __shfl_sync(unsigned, T v, int src, int = 32) { return ft::exchange(v, (unsigned)src); }
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int mask, int = 32) {
    return ft::exchange(v, ft::lane_id() ^ (unsigned)mask);
}
template <typename T> inline T __shfl_down_sync(unsigned, T v, unsigned delta, int = 32) {
    unsigned src = ft::lane_id() + delta;
    T other = ft::exchange(v, src < 32 ? src : ft::lane_id());
    return src < 32 ? other : v;
}
inline unsigned __ballot_sync(unsigned, int predicate) {
    unsigned bits = 0;
    for (unsigned lane = 0; lane < 32; ++lane) bits |= (unsigned)(ft::exchange<int>(predicate != 0, lane) != 0) << lane;
    return bits;
}
inline int __any_sync(unsigned m, int predicate) { return __ballot_sync(m, predicate) != 0; }
inline int __all_sync(unsigned m, int predicate) { return __ballot_sync(m, !predicate) == 0; }

inline float atomicAdd(float* address, float value) {
    std::atomic_ref<float> a(*address);
    float old = a.load(std::memory_order_relaxed);
    while (!a.compare_exchange_weak(old, old + value, std::memory_order_relaxed)) {
    }
    return old;
}
inline int atomicAdd(int* address, int value) { return std::atomic_ref<int>(*address).fetch_add(value); }
inline unsigned atomicAdd(unsigned* address, unsigned value) { return std::atomic_ref<unsigned>(*address).fetch_add(value); }
inline float atomicMax(float* address, float value) {  // helper for reductions; CUDA has no float atomicMax
    std::atomic_ref<float> a(*address);
    float old = a.load(std::memory_order_relaxed);
    while (old < value && !a.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
    }
    return old;
}

using std::max;
using std::min;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }

// bf16 as the bit pattern; conversions round to nearest even, NaN stays NaN (as cuda_bf16.h does).
struct bf16 {
    uint16_t bits;
};
inline float ft_to_float(float x) { return x; }
inline float ft_to_float(bf16 x) {
    uint32_t w = (uint32_t)x.bits << 16;
    float f;
    std::memcpy(&f, &w, 4);
    return f;
}
template <typename T> T ft_from_float(float x);
template <> inline float ft_from_float<float>(float x) { return x; }
template <> inline bf16 ft_from_float<bf16>(float x) {
    uint32_t w;
    std::memcpy(&w, &x, 4);
    if ((w & 0x7fffffffu) > 0x7f800000u) return bf16{(uint16_t)((w >> 16) | 0x40)};
    w += 0x7fffu + ((w >> 16) & 1u);
    return bf16{(uint16_t)(w >> 16)};
}

#endif

// Shared by both sides: warp and block reductions built on the primitives above. A block reduction must be
// called by every thread of the block (it contains __syncthreads); `scratch` holds one float per warp.
FT_DEVICE float ft_warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}
FT_DEVICE float ft_warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}
FT_DEVICE float ft_block_sum(float v, float* scratch) {
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
    v = ft_warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = 0.f;
    for (unsigned w = 0; w < warps; ++w) total += scratch[w];
    return total;
}
FT_DEVICE float ft_block_max(float v, float* scratch) {
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
    v = ft_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float m = -INFINITY;
    for (unsigned w = 0; w < warps; ++w) m = fmaxf(m, scratch[w]);
    return m;
}

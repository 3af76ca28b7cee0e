//! The portable micro-kernel: plain Rust over fixed-size arrays, which the compiler keeps in registers and
//! vectorises for whatever the target has (SSE2 on baseline x86_64, NEON on aarch64). It serves f32 where no
//! SIMD kernel applies, and f64 always.

use super::driver::MicroKernel;
use crate::element::Float;

/// f32: 4 x 8 keeps the 8 accumulator vectors of 4 lanes (plus B and a broadcast) inside 16 SSE registers.
pub(crate) const F32_MICRO_KERNEL: MicroKernel<f32> =
    MicroKernel { mr: 4, nr: 8, kc: 256, mc: 3072, nc: 1024, avx512_packing: false, run: kernel::<f32, 4, 8> };

/// f64: 4 x 4 for the same reason (two f64 lanes per SSE register).
pub(crate) const F64_MICRO_KERNEL: MicroKernel<f64> =
    MicroKernel { mr: 4, nr: 4, kc: 256, mc: 3072, nc: 512, avx512_packing: false, run: kernel::<f64, 4, 4> };

/// See [`super::driver::KernelFn`] for the contract.
///
/// # Safety
/// As `KernelFn`: `a` holds `kc * MR` values, `b` holds `kc * NR`, and `c` is a writable `rows x cols` block
/// with row stride `ldc`, `rows <= MR`, `cols <= NR`.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<T: Float, const MR: usize, const NR: usize>(
    kc: usize,
    a: *const T,
    b: *const T,
    c: *mut T,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: T,
    beta: T,
) {
    // SAFETY: the caller guarantees these lengths (packed panels are exactly kc*MR and kc*NR values).
    let (a, b) = unsafe { (std::slice::from_raw_parts(a, kc * MR), std::slice::from_raw_parts(b, kc * NR)) };
    let mut acc = [[T::ZERO; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (row, &x) in acc.iter_mut().zip(ap) {
            for (acc, &y) in row.iter_mut().zip(bp) {
                *acc += x * y;
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(rows) {
        // SAFETY: row r < rows and columns < cols lie inside the caller's writable block.
        let out = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), cols) };
        for (o, &v) in out.iter_mut().zip(row) {
            *o = if beta == T::ZERO { alpha * v } else { alpha * v + beta * *o };
        }
    }
}

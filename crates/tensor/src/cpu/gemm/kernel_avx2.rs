//! AVX2 + FMA f32 micro-kernel: a 6 x 16 tile of C in 12 ymm accumulators.
//!
//! Per k step: two 8-wide loads of packed B, 6 broadcasts of packed A, 12 FMAs. 12 accumulators + 2 B vectors +
//! 1 broadcast use 15 of the 16 ymm registers. Full tiles load and store C directly; edge tiles go through a
//! small stack tile so no access strays outside the caller's block.

use super::driver::MicroKernel;
use std::arch::x86_64::*;

const MR: usize = 6;
const VECTORS: usize = 2;
const LANES: usize = 8;
const NR: usize = VECTORS * LANES;

/// KC = 256: an A micro-panel (6 KiB) and a B micro-panel (16 KiB) sit in a 32-48 KiB L1 together.
/// NC = 1024: the 256 x 1024 packed B block is 1 MiB, within a 1-2 MiB L2. (Not tuned on an AVX2-only CPU:
/// this machine has AVX-512, where this kernel runs only when forced.)
pub(crate) const MICRO_KERNEL: MicroKernel<f32> = MicroKernel { mr: MR, nr: NR, kc: 256, mc: 3072, nc: 1024, avx512_packing: false, run: kernel };

/// # Safety
/// The CPU supports AVX2 and FMA (checked with `is_x86_feature_detected!` before this kernel is selected), and
/// the pointers obey [`super::driver::KernelFn`]'s contract.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    beta: f32,
) {
    // SAFETY: loads stay inside the packed panels (kc*MR values of A, kc*NR of B) the contract guarantees; C is
    // accessed only at rows < rows, columns < cols (directly for a full tile, through `tile` otherwise).
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); VECTORS]; MR];
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(LANES));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(r));
                acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }

        let alpha_v = _mm256_set1_ps(alpha);
        let beta_v = _mm256_set1_ps(beta);
        if rows == MR && cols == NR {
            for (r, acc) in acc.iter().enumerate() {
                let row = c.add(r * ldc);
                for (v, &acc) in acc.iter().enumerate() {
                    let dst = row.add(v * LANES);
                    let mut out = _mm256_mul_ps(alpha_v, acc);
                    if beta != 0.0 {
                        out = _mm256_fmadd_ps(beta_v, _mm256_loadu_ps(dst), out);
                    }
                    _mm256_storeu_ps(dst, out);
                }
            }
            return;
        }
        let mut tile = [[0f32; NR]; MR];
        for (t, acc) in tile.iter_mut().zip(&acc) {
            _mm256_storeu_ps(t.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(t.as_mut_ptr().add(LANES), acc[1]);
        }
        for (r, t) in tile.iter().enumerate().take(rows) {
            let out = std::slice::from_raw_parts_mut(c.add(r * ldc), cols);
            for (o, &v) in out.iter_mut().zip(t) {
                *o = if beta == 0.0 { alpha * v } else { alpha * v + beta * *o };
            }
        }
    }
}

//! AVX-512F f32 micro-kernel: a 12 x 32 tile of C in 24 zmm accumulators.
//!
//! Per k step it loads two 16-wide vectors of packed B and broadcasts 12 values of packed A, issuing 24 FMAs:
//! with two 512-bit FMA ports that is 12 cycles of FMA work against 14 loads (3 load ports) and ~41 uops (a
//! 6-wide front end), so the FMA ports are the bottleneck, as they should be. 24 accumulators + 2 B vectors +
//! 1 broadcast fit the 32 zmm registers with room to spare. Edge tiles use AVX-512 masks for the columns and
//! skip the padding rows on store, so they need no scratch tile.

use super::driver::MicroKernel;
use std::arch::x86_64::*;

const MR: usize = 12;
const VECTORS: usize = 2;
const LANES: usize = 16;

/// Blocking for a core with 48 KiB L1d and 2 MiB L2 (Sapphire/Emerald Rapids class), chosen by measurement:
/// - KC = 1024: C is read and written once per k block, so long k blocks save C traffic; the B micro-panel
///   (up to 128 KiB) streams from L2 with a software prefetch and the A micro-panel (48 KiB) stays close. KC 256
///   and 512 measured a few per cent slower on the training shapes (k = 576, 1024, 1536: one or two k blocks).
/// - NC = 256: the KC x NC packed B block is 1 MiB, half of L2, leaving room for A panels and C lines.
/// - MC = 3072: packed A for a k block is at most 12 MiB (lives in L3); every training shape (m <= 2048) packs
///   B only once per k block.
pub(crate) const MICRO_KERNEL: MicroKernel<f32> =
    MicroKernel { mr: MR, nr: VECTORS * LANES, kc: 1024, mc: 3072, nc: 256, avx512_packing: true, run: kernel::<MR, VECTORS> };

/// # Safety
/// The CPU supports AVX-512F (the caller selected this kernel through `is_x86_feature_detected!`), and the
/// pointers obey [`super::driver::KernelFn`]'s contract.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const ROWS: usize, const NV: usize>(
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
    // SAFETY: every load below reads inside the packed panels (kc*ROWS values of A, kc*NV*16 of B), which the
    // contract guarantees; every C access is masked to columns < cols in rows < rows of the caller's block.
    unsafe {
        for r in 0..rows {
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc).wrapping_add(cols - 1) as *const i8);
        }
        let mut acc = [[_mm512_setzero_ps(); NV]; ROWS];
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            // B streams from L2 (its micro-panel is up to KC * 128 bytes): ask for the lines 8 steps ahead so
            // they are in L1 by the time they are loaded. Prefetching past the panel's end is harmless.
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(8 * NV * LANES) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(8 * NV * LANES + LANES) as *const i8);
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = _mm512_loadu_ps(b.add(v * LANES));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(r));
                for v in 0..NV {
                    acc[v] = _mm512_fmadd_ps(x, bv[v], acc[v]);
                }
            }
            a = a.add(ROWS);
            b = b.add(NV * LANES);
        }

        let alpha_v = _mm512_set1_ps(alpha);
        let beta_v = _mm512_set1_ps(beta);
        let mut masks = [0 as __mmask16; NV];
        for (v, mask) in masks.iter_mut().enumerate() {
            let live = cols.saturating_sub(v * LANES).min(LANES);
            *mask = ((1u32 << live) - 1) as __mmask16;
        }
        let store_row = |r: usize, acc: &[__m512; NV]| {
            let row = c.add(r * ldc);
            for v in 0..NV {
                if masks[v] == 0 {
                    continue;
                }
                // wrapping_add: for a masked-off tail the address may point past the block; nothing is read
                // or written there (masked lanes never fault), but plain `add` would be out of bounds.
                let dst = row.wrapping_add(v * LANES);
                let mut out = _mm512_mul_ps(alpha_v, acc[v]);
                if beta != 0.0 {
                    out = _mm512_fmadd_ps(beta_v, _mm512_maskz_loadu_ps(masks[v], dst), out);
                }
                _mm512_mask_storeu_ps(dst, masks[v], out);
            }
        };
        // Spelled out row by row: a loop here (bounded by `rows`, or by ROWS with an early exit) is too big
        // for the compiler to unroll, and would then spill every accumulator to the stack to index them.
        macro_rules! store_rows {
            ($($r:literal)*) => {$(
                if $r < ROWS && $r < rows {
                    store_row($r, &acc[$r.min(ROWS - 1)]);
                }
            )*};
        }
        store_rows!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    }
}

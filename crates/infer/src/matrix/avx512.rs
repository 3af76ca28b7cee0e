//! The few-rows kernel written out in AVX-512 intrinsics: one weight row against `N` activation rows, the weight
//! row loaded and widened to f32 once per 16 (f32, bf16) or 32 (Q8_0, Q4_1) weights and then used for every
//! activation row while it sits in registers.
//!
//! Why by hand: the portable body (`row_group`) goes through a 32-float stack block that LLVM vectorises but
//! does not keep in registers, which capped it at ~3 Gweights/s per core (compute-bound, well under the memory
//! bandwidth). Here a quantized block becomes f32 in two zmm registers (`d * q + m` in one fused multiply-add
//! per 16 weights, so the Q4_1 offset needs no separate `Σ x` term) and f32/bf16 rows keep several independent
//! accumulators per activation row so the multiply-add latency is hidden.
//!
//! Every function here must only be called where the CPU has avx512f, avx512bw, fma and f16c
//! (`KernelChoice::resolve` checks), hence `unsafe`.

use crate::quant::{BlockQ4_1, BlockQ8_0, QK};
use ferrotune_tensor::bf16;
use std::arch::x86_64::*;

/// Weight row `w` (f32, `cols` long) against `N` activation rows `xs [N, cols]`; `U` independent accumulators
/// per activation row (a multiply-add has ~4 cycles of latency, so one row alone needs several in flight).
#[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
#[inline]
pub unsafe fn f32_row<const N: usize, const U: usize>(
    w: &[f32],
    xs: &[f32],
    cols: usize,
    out: &mut [f32],
) {
    debug_assert!(w.len() >= cols && xs.len() >= N * cols && out.len() >= N);
    let mut acc = [[_mm512_setzero_ps(); U]; N];
    let step = 16 * U;
    let body = cols / step * step;
    let (wp, xp) = (w.as_ptr(), xs.as_ptr());
    let mut c = 0;
    while c < body {
        for u in 0..U {
            let wv = _mm512_loadu_ps(wp.add(c + 16 * u));
            for i in 0..N {
                acc[i][u] = _mm512_fmadd_ps(
                    wv,
                    _mm512_loadu_ps(xp.add(i * cols + c + 16 * u)),
                    acc[i][u],
                );
            }
        }
        c += step;
    }
    for i in 0..N {
        let mut s = row_sum(&acc[i]);
        for c in body..cols {
            s += w[c] * xs[i * cols + c];
        }
        out[i] = s;
    }
}

/// [`f32_row`] for bf16 weights: 16 bf16 are widened by a zero-extend and a 16-bit shift.
#[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
#[inline]
pub unsafe fn bf16_row<const N: usize, const U: usize>(
    w: &[bf16],
    xs: &[f32],
    cols: usize,
    out: &mut [f32],
) {
    debug_assert!(w.len() >= cols && xs.len() >= N * cols && out.len() >= N);
    let mut acc = [[_mm512_setzero_ps(); U]; N];
    let step = 16 * U;
    let body = cols / step * step;
    let (wp, xp) = (w.as_ptr(), xs.as_ptr());
    let mut c = 0;
    while c < body {
        for u in 0..U {
            let raw = _mm256_loadu_si256(wp.add(c + 16 * u) as *const __m256i);
            let wv = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)));
            for i in 0..N {
                acc[i][u] = _mm512_fmadd_ps(
                    wv,
                    _mm512_loadu_ps(xp.add(i * cols + c + 16 * u)),
                    acc[i][u],
                );
            }
        }
        c += step;
    }
    for i in 0..N {
        let mut s = row_sum(&acc[i]);
        for c in body..cols {
            s += w[c].to_f32() * xs[i * cols + c];
        }
        out[i] = s;
    }
}

/// Q8_0 blocks of one weight row against `N` activation rows: each block becomes `d * q` in two registers.
#[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
#[inline]
pub unsafe fn q8_0_row<const N: usize>(
    blocks: &[BlockQ8_0],
    xs: &[f32],
    cols: usize,
    out: &mut [f32],
) {
    debug_assert!(blocks.len() * QK == cols && xs.len() >= N * cols && out.len() >= N);
    // Two accumulators per row (first and second 16 weights of a block): two independent chains.
    let mut acc = [[_mm512_setzero_ps(); 2]; N];
    let xp = xs.as_ptr();
    for (b, blk) in blocks.iter().enumerate() {
        let d = _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(blk.d.to_bits() as i32)));
        let q = blk.qs.as_ptr() as *const __m128i;
        let w0 = _mm512_mul_ps(
            d,
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q))),
        );
        let w1 = _mm512_mul_ps(
            d,
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(1)))),
        );
        for i in 0..N {
            let x = xp.add(i * cols + b * QK);
            acc[i][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x.add(16)), acc[i][1]);
        }
    }
    for i in 0..N {
        out[i] = row_sum(&acc[i]);
    }
}

/// Q4_1 blocks of one weight row against `N` activation rows: the 16 bytes of nibbles are zero-extended to 16
/// lanes once, the low and high nibbles (weights 0..16 and 16..32) masked/shifted out, and each half becomes
/// `d * q + m` with one multiply-add.
#[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
#[inline]
pub unsafe fn q4_1_row<const N: usize>(
    blocks: &[BlockQ4_1],
    xs: &[f32],
    cols: usize,
    out: &mut [f32],
) {
    debug_assert!(blocks.len() * QK == cols && xs.len() >= N * cols && out.len() >= N);
    let mut acc = [[_mm512_setzero_ps(); 2]; N];
    let xp = xs.as_ptr();
    let low4 = _mm512_set1_epi32(15);
    for (b, blk) in blocks.iter().enumerate() {
        // d and m side by side in one 32-bit lane pair, widened together.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(
            (blk.d.to_bits() as u32 | (blk.m.to_bits() as u32) << 16) as i32,
        ));
        let d = _mm512_broadcastss_ps(dm);
        let m = _mm512_broadcastss_ps(_mm_movehdup_ps(dm));
        let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(blk.qs.as_ptr() as *const __m128i));
        let w0 = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(_mm512_and_si512(bytes, low4)), m);
        let w1 = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(bytes)), m);
        for i in 0..N {
            let x = xp.add(i * cols + b * QK);
            acc[i][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x.add(16)), acc[i][1]);
        }
    }
    for i in 0..N {
        out[i] = row_sum(&acc[i]);
    }
}

/// Sum of one activation row's partial-sum registers.
#[inline(always)]
unsafe fn row_sum<const U: usize>(parts: &[__m512; U]) -> f32 {
    let mut s = parts[0];
    for p in &parts[1..] {
        s = _mm512_add_ps(s, *p);
    }
    _mm512_reduce_add_ps(s)
}

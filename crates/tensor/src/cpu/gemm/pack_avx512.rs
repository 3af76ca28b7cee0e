//! AVX-512 packing of f32, bf16 and f16 sources into f32 micro-panels (the layout is described in `pack`).
//!
//! Everything moves in 16-lane vectors: a source run is read with a masked load (lanes past the run read as
//! zero, so padding comes for free and nothing outside the run is touched) and widened to f32 in registers.
//! Unit-line-stride panels are copied a k step at a time; unit-k-stride panels (a row-major A, or Bᵀ) are
//! transposed in 16 x 16 blocks with 64 in-register shuffles, which replaces 256 scattered scalar stores with
//! 16 vector stores.

use super::pack::PANEL_GROUP;
use super::InputFormat;
use std::arch::x86_64::*;

/// Whether this CPU can run [`pack_strip`] (AVX-512F for the arithmetic, BW and VL for the 16-bit masked loads).
pub(crate) fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl")
    })
}

#[inline(always)]
fn mask(lanes: usize) -> __mmask16 {
    if lanes >= 16 {
        0xFFFF
    } else {
        ((1u32 << lanes) - 1) as __mmask16
    }
}

/// Load `lanes` (at most 16) consecutive source elements at `ptr` as f32, zero in the remaining lanes.
///
/// # Safety
/// AVX-512F/BW/VL are available and `ptr .. ptr + lanes` is readable (masked-off lanes are never accessed).
#[inline(always)]
unsafe fn load16(format: InputFormat, ptr: *const u8, lanes: usize) -> __m512 {
    let m = mask(lanes);
    // SAFETY: masked loads only touch the enabled lanes, which the caller guarantees are readable.
    unsafe {
        match format {
            InputFormat::F32 => _mm512_maskz_loadu_ps(m, ptr as *const f32),
            // bf16 is the top half of an f32: widen to 32 bits and shift into place.
            InputFormat::Bf16 => {
                let halves = _mm256_maskz_loadu_epi16(m, ptr as *const i16);
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
            }
            InputFormat::F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, ptr as *const i16)),
            // Never passed in: `pack_strip` returns early for formats it cannot load.
            InputFormat::Other => _mm512_setzero_ps(),
        }
    }
}

/// Transpose a 16 x 16 block held as 16 row vectors, in place: afterwards `rows[j]` holds column j.
#[inline(always)]
unsafe fn transpose16(rows: &mut [__m512; 16]) {
    // SAFETY: register-only shuffles; the caller guarantees AVX-512F.
    unsafe {
        // 1: interleave 32-bit elements of row pairs.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(rows[2 * i], rows[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(rows[2 * i], rows[2 * i + 1]);
        }
        // 2: interleave 64-bit pairs. Now, within each 128-bit lane l, u[4q + c] holds rows 4q..4q+4 of
        // column 4l + c.
        let mut u = [_mm512_setzero_ps(); 16];
        for q in 0..4 {
            let pd = |x: __m512| _mm512_castps_pd(x);
            let (t0, t1, t2, t3) = (pd(t[4 * q]), pd(t[4 * q + 1]), pd(t[4 * q + 2]), pd(t[4 * q + 3]));
            u[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
            u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
            u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
            u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
        }
        // 3 and 4: a 4 x 4 transpose of 128-bit lanes across the four row groups, for each c.
        for c in 0..4 {
            let (a, b, cc, d) = (u[c], u[4 + c], u[8 + c], u[12 + c]);
            let ab_even = _mm512_shuffle_f32x4::<0x88>(a, b);
            let ab_odd = _mm512_shuffle_f32x4::<0xDD>(a, b);
            let cd_even = _mm512_shuffle_f32x4::<0x88>(cc, d);
            let cd_odd = _mm512_shuffle_f32x4::<0xDD>(cc, d);
            rows[c] = _mm512_shuffle_f32x4::<0x88>(ab_even, cd_even);
            rows[4 + c] = _mm512_shuffle_f32x4::<0x88>(ab_odd, cd_odd);
            rows[8 + c] = _mm512_shuffle_f32x4::<0xDD>(ab_even, cd_even);
            rows[12 + c] = _mm512_shuffle_f32x4::<0xDD>(ab_odd, cd_odd);
        }
    }
}

/// Pack a strip into micro-panels (layout in `pack`): panel `q`, step `p`, lane `i` receives
/// `src[base + (q * width + i) * line_stride + p * k_stride]` for lines below `lines`, zero past them.
/// Returns false (having written nothing) for layouts with neither stride 1 and for `InputFormat::Other`,
/// which the portable packer handles.
///
/// # Safety
/// [`available`] is true; `src` points to elements of `format` (`elem` bytes each) such that every
/// `base + i * line_stride + p * k_stride` (`i < lines`, `p < kc`) is readable; `dst` has
/// `lines.div_ceil(width) * kc * width` writable f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn pack_strip(
    format: InputFormat,
    src: *const u8,
    elem: usize,
    base: usize,
    line_stride: usize,
    k_stride: usize,
    lines: usize,
    kc: usize,
    width: usize,
    dst: *mut f32,
) -> bool {
    if format == InputFormat::Other || (line_stride != 1 && lines != 1 && k_stride != 1) {
        return false;
    }
    let at = |index: usize| src.wrapping_add(index * elem);
    let panels = lines.div_ceil(width);
    let panel_len = kc * width;
    // SAFETY: loads read source indices the caller guarantees (masked to the strip's lines and to the k range);
    // stores write dst[q * panel_len + p * width + g ..][.. min(16, width - g)] with q < panels, p < kc,
    // g < width: inside the caller's buffer.
    unsafe {
        if line_stride == 1 || lines == 1 {
            // Step by step across a group of panels: one contiguous source run per step (see PANEL_GROUP).
            for group in (0..panels).step_by(PANEL_GROUP) {
                for p in 0..kc {
                    let run = base + p * k_stride;
                    for q in group..panels.min(group + PANEL_GROUP) {
                        for g in (0..width).step_by(16) {
                            let line = q * width + g;
                            let v = load16(format, at(run + line), lines.saturating_sub(line));
                            _mm512_mask_storeu_ps(dst.add(q * panel_len + p * width + g), mask(width - g), v);
                        }
                    }
                }
            }
            return true;
        }
        for q in 0..panels {
            for g in (0..width).step_by(16) {
                let line0 = q * width + g;
                let group_lines = lines.saturating_sub(line0).min(16).min(width - g);
                let store_mask = mask(width - g);
                for p in (0..kc).step_by(16) {
                    let steps = (kc - p).min(16);
                    let mut block = [_mm512_setzero_ps(); 16];
                    for (i, row) in block.iter_mut().enumerate().take(group_lines) {
                        *row = load16(format, at(base + (line0 + i) * line_stride + p), steps);
                    }
                    transpose16(&mut block);
                    for (j, column) in block.iter().enumerate().take(steps) {
                        _mm512_mask_storeu_ps(dst.add(q * panel_len + (p + j) * width + g), store_mask, *column);
                    }
                }
            }
        }
        true
    }
}

//! ggml tensor types and their dequantization to f32 (ggml `ggml-common.h` block layouts, reference code
//! `ggml-quants.c` `dequantize_row_*`). Arithmetic is f32 in the same order as the reference, so results match
//! ggml and gguf-py bit for bit.
//!
//! ```text
//! type  weights/block bytes  layout (f16 = little-endian half)          weight j
//! Q4_0   32   18   f16 d; u8 qs[16]                                 lo nibbles j<16, hi nibbles j>=16: (q-8)*d
//! Q4_1   32   20   f16 d, m; u8 qs[16]                              q*d + m
//! Q5_0   32   22   f16 d; u8 qh[4]; u8 qs[16]                       (q | bit j of qh << 4) - 16) * d
//! Q5_1   32   24   f16 d, m; u8 qh[4]; u8 qs[16]                    (q | bit j of qh << 4) * d + m
//! Q8_0   32   34   f16 d; i8 qs[32]                                 q*d
//! Q2_K  256   84   u8 scales[16]; u8 qs[64]; f16 d, dmin            16-weight groups, 2-bit q, 4-bit scale/min
//! Q3_K  256  110   u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d   16 groups, 2 low bits + hmask bit, 6-bit scale
//! Q4_K  256  144   f16 d, dmin; u8 scales[12]; u8 qs[128]           8 groups of 32, 6-bit scale/min
//! Q5_K  256  176   f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
//! Q6_K  256  210   u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d      16 groups of 16, (q - 32) * d * scale
//! ```
//! "lo nibbles j<16": in the 32-weight formats byte `qs[j]` holds weight j in its low nibble and weight j+16 in
//! its high nibble (not neighbouring pairs).

use crate::{bail, Result};
use half::{bf16, f16};
use rayon::prelude::*;
use std::fmt;

/// The ggml tensor types ferrotune can read (by on-disk id). Variants keep ggml's spelling (`Q4_K`).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    F64,
    BF16,
}

/// (type, id, weights per block, bytes per block)
const TYPES: &[(GgmlType, u32, usize, usize)] = &[
    (GgmlType::F32, 0, 1, 4),
    (GgmlType::F16, 1, 1, 2),
    (GgmlType::Q4_0, 2, 32, 18),
    (GgmlType::Q4_1, 3, 32, 20),
    (GgmlType::Q5_0, 6, 32, 22),
    (GgmlType::Q5_1, 7, 32, 24),
    (GgmlType::Q8_0, 8, 32, 34),
    (GgmlType::Q2_K, 10, 256, 84),
    (GgmlType::Q3_K, 11, 256, 110),
    (GgmlType::Q4_K, 12, 256, 144),
    (GgmlType::Q5_K, 13, 256, 176),
    (GgmlType::Q6_K, 14, 256, 210),
    (GgmlType::F64, 28, 1, 8),
    (GgmlType::BF16, 30, 1, 2),
];

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPES.iter().find(|t| t.1 == id).map(|t| t.0)
    }
    fn row(self) -> &'static (GgmlType, u32, usize, usize) {
        TYPES.iter().find(|t| t.0 == self).expect("every GgmlType is listed in TYPES")
    }
    pub fn id(self) -> u32 {
        self.row().1
    }
    /// Weights per block (1 for plain float types).
    pub fn block_size(self) -> usize {
        self.row().2
    }
    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.row().3
    }
    pub fn supported_list() -> String {
        TYPES.iter().map(|t| format!("{:?} ({})", t.0, t.1)).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Where dequantized values go: f32 directly, or bf16 rounded from the f32 value.
pub trait DequantTarget: Copy + Send + Sync + Default {
    fn from_f32(x: f32) -> Self;
}
impl DequantTarget for f32 {
    #[inline(always)]
    fn from_f32(x: f32) -> f32 {
        x
    }
}
impl DequantTarget for bf16 {
    #[inline(always)]
    fn from_f32(x: f32) -> bf16 {
        bf16::from_f32(x)
    }
}

/// Blocks handed to one rayon task: big enough to amortise scheduling, small enough to balance.
const BLOCKS_PER_TASK: usize = 256;

/// Dequantize `bytes` (whole blocks of `ty`) into `out`, which must hold exactly the encoded number of weights.
pub fn dequantize_into<T: DequantTarget>(ty: GgmlType, bytes: &[u8], out: &mut [T]) -> Result<()> {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if !bytes.len().is_multiple_of(ts) || bytes.len() / ts != out.len() / bs || !out.len().is_multiple_of(bs) {
        bail!("{ty}: {} bytes do not hold {} weights ({bs} weights per {ts}-byte block)", bytes.len(), out.len());
    }
    let decode: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, y| y[0] = f16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::BF16 => |b, y| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::F64 => |b, y| y[0] = f64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])) as f32,
        GgmlType::Q4_0 => block_q4_0,
        GgmlType::Q4_1 => block_q4_1,
        GgmlType::Q5_0 => block_q5_0,
        GgmlType::Q5_1 => block_q5_1,
        GgmlType::Q8_0 => block_q8_0,
        GgmlType::Q2_K => block_q2_k,
        GgmlType::Q3_K => block_q3_k,
        GgmlType::Q4_K => block_q4_k,
        GgmlType::Q5_K => block_q5_k,
        GgmlType::Q6_K => block_q6_k,
    };
    // Plain float types decode one weight per "block"; group them so a task is not one element.
    let per_task = BLOCKS_PER_TASK * if bs == 1 { 64 } else { 1 };
    out.par_chunks_mut(per_task * bs).zip(bytes.par_chunks(per_task * ts)).for_each(|(out, bytes)| {
        let mut scratch = [0f32; 256];
        for (y, b) in out.chunks_exact_mut(bs).zip(bytes.chunks_exact(ts)) {
            let tmp = &mut scratch[..bs];
            decode(b, tmp);
            for (o, &v) in y.iter_mut().zip(tmp.iter()) {
                *o = T::from_f32(v);
            }
        }
    });
    Ok(())
}

/// Dequantize into a fresh vector.
pub fn dequantize<T: DequantTarget>(ty: GgmlType, bytes: &[u8]) -> Result<Vec<T>> {
    let n = (bytes.len() / ty.type_size()).checked_mul(ty.block_size());
    let Some(n) = n else { bail!("{ty}: {} bytes is too many weights", bytes.len()) };
    let mut out = vec![T::default(); n];
    dequantize_into(ty, bytes, &mut out)?;
    Ok(out)
}

#[inline(always)]
fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn block_q4_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        let x0 = (qs[j] & 0x0F) as i32 - 8;
        let x1 = (qs[j] >> 4) as i32 - 8;
        y[j] = x0 as f32 * d;
        y[j + 16] = x1 as f32 * d;
    }
}

fn block_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

fn block_q5_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        // Bit j of qh is the 5th bit of weight j, bit j+16 that of weight j+16.
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        let x0 = ((qs[j] as u32 & 0x0F) | h0) as i32 - 16;
        let x1 = ((qs[j] as u32 >> 4) | h1) as i32 - 16;
        y[j] = x0 as f32 * d;
        y[j + 16] = x1 as f32 * d;
    }
}

fn block_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        let x0 = (qs[j] as u32 & 0x0F) | h0;
        let x1 = (qs[j] as u32 >> 4) | h1;
        y[j] = x0 as f32 * d + m;
        y[j + 16] = x1 as f32 * d + m;
    }
}

fn block_q8_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for j in 0..32 {
        y[j] = b[2 + j] as i8 as f32 * d;
    }
}

fn block_q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let (d, dmin) = (half(b, 80), half(b, 82));
    let mut out = 0;
    let mut is = 0;
    for half_block in 0..2 {
        let q = &qs[half_block * 32..half_block * 32 + 32];
        for shift in [0u32, 2, 4, 6] {
            for sub in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
                for l in 0..16 {
                    y[out] = dl * ((q[sub * 16 + l] >> shift) & 3) as f32 - ml;
                    out += 1;
                }
            }
        }
    }
}

fn block_q3_k(b: &[u8], y: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let d = half(b, 108);
    // Sixteen 6-bit scales: low 4 bits in the nibbles of bytes 0-7 (groups 0-7 low nibbles, 8-15 high
    // nibbles), high 2 bits in bytes 8-11 (byte 8 + k holds groups k, k+4, k+8, k+12 at bits 0, 2, 4, 6).
    let packed = &b[96..108];
    let mut scales = [0i32; 16];
    for (g, scale) in scales.iter_mut().enumerate() {
        let low = if g < 8 { packed[g] & 0xF } else { packed[g - 8] >> 4 };
        let high = (packed[8 + g % 4] >> (2 * (g / 4))) & 3;
        *scale = (low | (high << 4)) as i32 - 32;
    }
    let mut out = 0;
    let mut group = 0;
    let mut bit = 0;
    for half_block in 0..2 {
        let q = &qs[half_block * 32..half_block * 32 + 32];
        for shift in [0u32, 2, 4, 6] {
            let m = 1u8 << bit;
            for sub in 0..2 {
                let dl = d * scales[group] as f32;
                group += 1;
                for l in sub * 16..sub * 16 + 16 {
                    // The hmask bit set means +0, clear means -4: values -4..3.
                    let v = ((q[l] >> shift) & 3) as i32 - if hmask[l] & m != 0 { 0 } else { 4 };
                    y[out] = dl * v as f32;
                    out += 1;
                }
            }
            bit += 1;
        }
    }
}

/// The 6-bit scale and min of group `j` (0..8) packed in the 12 `scales` bytes of Q4_K / Q5_K
/// (`get_scale_min_k4`): groups 0-3 in the low 6 bits of bytes 0-3 / 4-7, groups 4-7 split between the nibbles
/// of bytes 8-11 and the top 2 bits of bytes 0-7.
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

fn block_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for chunk in 0..4 {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let y = &mut y[chunk * 64..chunk * 64 + 64];
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0xF) as f32 - m1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn block_q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for chunk in 0..4 {
        let ql = &qs[chunk * 32..chunk * 32 + 32];
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let y = &mut y[chunk * 64..chunk * 64 + 64];
        for l in 0..32 {
            let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * ((ql[l] & 0xF) + hi1) as f32 - m1;
            y[l + 32] = d2 * ((ql[l] >> 4) + hi2) as f32 - m2;
        }
    }
}

fn block_q6_k(b: &[u8], y: &mut [f32]) {
    let d = half(b, 208);
    for half_block in 0..2 {
        let ql = &b[half_block * 64..half_block * 64 + 64];
        let qh = &b[128 + half_block * 32..128 + half_block * 32 + 32];
        let sc = &b[192 + half_block * 8..192 + half_block * 8 + 8];
        let y = &mut y[half_block * 128..half_block * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_low_nibbles_first_then_high() {
        // d = 0.5; byte j = (hi << 4) | lo with lo = j, hi = 15 - j.
        let mut b = h(0.5).to_vec();
        b.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
        let y: Vec<f32> = dequantize(GgmlType::Q4_0, &b).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5, "weight {j}");
            assert_eq!(y[j + 16], ((15 - j) as f32 - 8.0) * 0.5, "weight {}", j + 16);
        }
    }

    #[test]
    fn q4_1_scale_and_min() {
        let mut b = h(0.25).to_vec();
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| (j << 4) | (15 - j)));
        let y: Vec<f32> = dequantize(GgmlType::Q4_1, &b).unwrap();
        assert_eq!(y[0], 15.0 * 0.25 - 1.0);
        assert_eq!(y[15], -1.0);
        assert_eq!(y[16], -1.0);
        assert_eq!(y[31], 15.0 * 0.25 - 1.0);
    }

    #[test]
    fn q5_0_and_q5_1_fifth_bit_from_qh() {
        // qh bit j = 5th bit of weight j: set bits 0 and 17 only.
        let qh: u32 = (1 << 0) | (1 << 17);
        let mut b = h(1.0).to_vec();
        b.extend(qh.to_le_bytes());
        b.extend([0x21u8; 16]); // lo nibble 1, hi nibble 2
        let y: Vec<f32> = dequantize(GgmlType::Q5_0, &b).unwrap();
        assert_eq!(y[0], (16 + 1 - 16) as f32);
        assert_eq!(y[1], (1 - 16) as f32);
        assert_eq!(y[16], (2 - 16) as f32);
        assert_eq!(y[17], (16 + 2 - 16) as f32);
        let mut b = h(2.0).to_vec();
        b.extend(h(0.5));
        b.extend(qh.to_le_bytes());
        b.extend([0x21u8; 16]);
        let y: Vec<f32> = dequantize(GgmlType::Q5_1, &b).unwrap();
        assert_eq!(y[0], 17.0 * 2.0 + 0.5);
        assert_eq!(y[1], 1.0 * 2.0 + 0.5);
        assert_eq!(y[17], 18.0 * 2.0 + 0.5);
        assert_eq!(y[18], 2.0 * 2.0 + 0.5);
    }

    #[test]
    fn q8_0_signed_bytes() {
        let mut b = h(0.125).to_vec();
        b.extend((0..32).map(|j: i32| ((j - 16) * 8) as i8 as u8));
        let y: Vec<f32> = dequantize(GgmlType::Q8_0, &b).unwrap();
        for (j, &v) in y.iter().enumerate() {
            assert_eq!(v, ((j as i32 - 16) * 8) as f32 * 0.125);
        }
    }

    #[test]
    fn q4_k_scales_and_mins_of_all_eight_groups() {
        // Group g: scale g + 1, min 2g + 3 (all < 64); every quant = 5 (both nibbles).
        let sc: Vec<u8> = (0..8).map(|g| g + 1).collect();
        let mn: Vec<u8> = (0..8).map(|g| 2 * g + 3).collect();
        let mut packed = [0u8; 12];
        for j in 0..4 {
            packed[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            packed[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            packed[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
        }
        let mut b = h(0.5).to_vec();
        b.extend(h(0.25));
        b.extend(packed);
        b.extend([0x55u8; 128]);
        let y: Vec<f32> = dequantize(GgmlType::Q4_K, &b).unwrap();
        for g in 0..8 {
            let want = 0.5 * sc[g] as f32 * 5.0 - 0.25 * mn[g] as f32;
            assert_eq!(y[g * 32], want, "group {g}");
            assert_eq!(y[g * 32 + 31], want, "group {g}");
        }
    }

    #[test]
    fn q4_k_high_scale_bits() {
        // Scales past 15 for groups 4-7 use the top bits of bytes 0-7: scale 63, min 47 in group 5.
        let mut packed = [0u8; 12];
        packed[1] = 63 >> 4 << 6; // group 5 scale bits 4-5
        packed[5] = 47 >> 4 << 6; // group 5 min bits 4-5
        packed[9] = (63 & 0xF) | ((47 & 0xF) << 4);
        assert_eq!(scale_min_k4(5, &packed), (63, 47));
    }

    #[test]
    fn q5_k_high_bits_per_chunk() {
        // All scales 1 and mins 0; quant nibbles 0; qh byte l bit 2c sets weight l of chunk c's low half.
        let mut packed = [0u8; 12];
        for j in 0..4 {
            packed[j] = 1;
            packed[j + 8] = 1;
        }
        let mut b = h(1.0).to_vec();
        b.extend(h(0.0));
        b.extend(packed);
        let mut qh = [0u8; 32];
        qh[3] = 1 << 2; // chunk 1, low half, l = 3 -> weight 64 + 3
        qh[4] = 1 << 7; // chunk 3, high half, l = 4 -> weight 192 + 32 + 4
        b.extend(qh);
        b.extend([0u8; 128]);
        let y: Vec<f32> = dequantize(GgmlType::Q5_K, &b).unwrap();
        let hot: Vec<usize> = (0..256).filter(|&i| y[i] != 0.0).collect();
        assert_eq!(hot, vec![67, 228]);
        assert_eq!(y[67], 16.0);
    }

    #[test]
    fn q6_k_layout() {
        // ql = 0, qh = 0 -> every q = -32; scales[i] = i - 8 (signed); d = 0.5.
        let mut b = vec![0u8; 192];
        b.extend((0..16).map(|i: i32| (i - 8) as i8 as u8));
        b.extend(h(0.5));
        let y: Vec<f32> = dequantize(GgmlType::Q6_K, &b).unwrap();
        // Weight i of the 256: half n = i / 128, within it quarter k = (i % 128) / 32, l = i % 32,
        // scale index 8n + 2k + l / 16.
        for (i, &v) in y.iter().enumerate() {
            let (n, k, l) = (i / 128, (i % 128) / 32, i % 32);
            let s = (8 * n + 2 * k + l / 16) as f32 - 8.0;
            assert_eq!(v, 0.5 * s * -32.0, "weight {i}");
        }
        // One hot quant: ql[32] high nibble = 1 -> weight 96 + 0 gets q4 = 1 - 32.
        let mut b2 = b.clone();
        b2[32] = 0x10;
        let y2: Vec<f32> = dequantize(GgmlType::Q6_K, &b2).unwrap();
        assert_eq!(y2[96], 0.5 * (6.0 - 8.0) * -31.0);
    }

    #[test]
    fn q2_k_groups_of_sixteen() {
        // scales[i] = (min i) << 4 | (scale 1); qs byte value 0b11_10_01_00 -> shifts give 0,1,2,3.
        let mut b: Vec<u8> = (0..16u8).map(|i| (i << 4) | 1).collect();
        b.extend([0b1110_0100u8; 64]);
        b.extend(h(1.0));
        b.extend(h(0.5));
        let y: Vec<f32> = dequantize(GgmlType::Q2_K, &b).unwrap();
        for (i, &v) in y.iter().enumerate() {
            let group = i / 16;
            let shift_idx = (i % 128) / 32;
            assert_eq!(v, shift_idx as f32 - 0.5 * group as f32, "weight {i}");
        }
    }

    #[test]
    fn float_types_and_bf16_target() {
        let b: Vec<u8> = [1.5f32, -2.25].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(dequantize::<f32>(GgmlType::F32, &b).unwrap(), vec![1.5, -2.25]);
        let b: Vec<u8> = [h(0.5), h(-3.0)].concat();
        assert_eq!(dequantize::<f32>(GgmlType::F16, &b).unwrap(), vec![0.5, -3.0]);
        let b: Vec<u8> = [bf16::from_f32(7.0).to_le_bytes(), bf16::from_f32(-0.5).to_le_bytes()].concat();
        assert_eq!(dequantize::<bf16>(GgmlType::BF16, &b).unwrap(), vec![bf16::from_f32(7.0), bf16::from_f32(-0.5)]);
    }

    #[test]
    fn wrong_byte_count_is_an_error() {
        let mut out = vec![0f32; 32];
        assert!(dequantize_into(GgmlType::Q4_0, &[0u8; 17], &mut out).is_err());
        assert!(dequantize_into(GgmlType::Q4_0, &[0u8; 36], &mut out).is_err());
    }
}

//! Weight formats the engine keeps in memory, and the GGUF block layouts it computes on directly.
//!
//! | format | bytes / 32 weights | block                                  | value        |
//! |--------|--------------------|----------------------------------------|--------------|
//! | F32    | 128                | -                                      | w            |
//! | BF16   | 64                 | -                                      | w            |
//! | Q8_0   | 34                 | f16 d; i8 qs[32]                       | d * q        |
//! | Q4_1   | 20                 | f16 d, m; u8 qs[16] (low nibbles = 0..16, high = 16..32) | d * q + m |
//!
//! The block layouts and the quantizers are llama.cpp's reference ones (`quantize_row_q8_0_ref`,
//! `quantize_row_q4_1_ref`), so blocks read from a GGUF file and blocks made here are the same thing.

use ferrotune_models::{bail, Result};
use half::f16;

/// Weights per quantization block (both Q8_0 and Q4_1).
pub const QK: usize = 32;

/// How a weight matrix is held in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    BF16,
    Q8_0,
    Q4_1,
}

impl WeightFormat {
    /// `f32`, `bf16`, `q8_0` or `q4_1` (case-insensitive; `q8`/`q4` accepted).
    pub fn parse(name: &str) -> Result<WeightFormat> {
        Ok(match name.trim().to_ascii_lowercase().as_str() {
            "f32" => WeightFormat::F32,
            "bf16" => WeightFormat::BF16,
            "q8_0" | "q8" => WeightFormat::Q8_0,
            "q4_1" | "q4" => WeightFormat::Q4_1,
            other => bail!("unknown weight format {other:?}; expected f32, bf16, q8_0 or q4_1"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::BF16 => "bf16",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4_1 => "q4_1",
        }
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, WeightFormat::Q8_0 | WeightFormat::Q4_1)
    }
}

/// A GGUF Q8_0 block: 32 weights `d * qs[i]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

/// A GGUF Q4_1 block: 32 weights `d * q + m`, `q` the low nibble of `qs[i]` for weight `i < 16` and the high
/// nibble of `qs[i - 16]` for the rest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

impl BlockQ8_0 {
    pub const BYTES: usize = 34;

    /// llama.cpp's `quantize_row_q8_0_ref` for one block.
    pub fn quantize(x: &[f32; QK]) -> BlockQ8_0 {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; QK];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
        BlockQ8_0 { d: f16::from_f32(d), qs }
    }

    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = self.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = d * q as f32;
        }
    }

    /// One block from its 34 little-endian bytes as GGUF stores it.
    pub fn from_bytes(b: &[u8]) -> BlockQ8_0 {
        let mut qs = [0i8; QK];
        for (q, &byte) in qs.iter_mut().zip(&b[2..Self::BYTES]) {
            *q = byte as i8;
        }
        BlockQ8_0 { d: f16::from_le_bytes([b[0], b[1]]), qs }
    }
}

impl BlockQ4_1 {
    pub const BYTES: usize = 20;

    /// llama.cpp's `quantize_row_q4_1_ref` for one block.
    pub fn quantize(x: &[f32; QK]) -> BlockQ4_1 {
        let (min, max) = x.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            // `(int8_t)(x + 0.5f)` truncates toward zero; the operand is >= 0 here, so it is floor(x + 0.5).
            let lo = (((x[j] - min) * id + 0.5) as u8).min(15);
            let hi = (((x[j + QK / 2] - min) * id + 0.5) as u8).min(15);
            *q = lo | (hi << 4);
        }
        BlockQ4_1 { d: f16::from_f32(d), m: f16::from_f32(min), qs }
    }

    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (j, &q) in self.qs.iter().enumerate() {
            out[j] = d * (q & 15) as f32 + m;
            out[j + QK / 2] = d * (q >> 4) as f32 + m;
        }
    }

    /// One block from its 20 little-endian bytes as GGUF stores it.
    pub fn from_bytes(b: &[u8]) -> BlockQ4_1 {
        let mut qs = [0u8; QK / 2];
        qs.copy_from_slice(&b[4..Self::BYTES]);
        BlockQ4_1 { d: f16::from_le_bytes([b[0], b[1]]), m: f16::from_le_bytes([b[2], b[3]]), qs }
    }
}

/// Quantize a row-major matrix whose row length is a multiple of [`QK`], block by block.
pub fn quantize_q8_0(values: &[f32]) -> Result<Vec<BlockQ8_0>> {
    check_blocks(values.len())?;
    Ok(values.chunks_exact(QK).map(|c| BlockQ8_0::quantize(c.try_into().expect("chunk of QK"))).collect())
}

/// See [`quantize_q8_0`].
pub fn quantize_q4_1(values: &[f32]) -> Result<Vec<BlockQ4_1>> {
    check_blocks(values.len())?;
    Ok(values.chunks_exact(QK).map(|c| BlockQ4_1::quantize(c.try_into().expect("chunk of QK"))).collect())
}

fn check_blocks(len: usize) -> Result<()> {
    if !len.is_multiple_of(QK) {
        bail!("{len} values do not split into blocks of {QK}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(offset: f32) -> [f32; QK] {
        std::array::from_fn(|i| ((i as f32 * 0.37 + offset).sin() * 3.0) + offset)
    }

    #[test]
    fn q8_0_round_trip_within_half_a_step() {
        let x = wave(0.5);
        let mut back = [0.0; QK];
        BlockQ8_0::quantize(&x).dequantize(&mut back);
        let step = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= step * 0.51 + 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn q4_1_round_trip_within_half_a_step() {
        let x = wave(-1.0);
        let mut back = [0.0; QK];
        BlockQ4_1::quantize(&x).dequantize(&mut back);
        let (lo, hi) = x.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let step = (hi - lo) / 15.0;
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= step * 0.51 + 1e-2, "{a} vs {b}");
        }
    }

    #[test]
    fn constant_blocks_are_exact() {
        let x = [0.25f32; QK];
        let mut back = [0.0; QK];
        BlockQ4_1::quantize(&x).dequantize(&mut back);
        assert_eq!(back, x);
        BlockQ8_0::quantize(&[0.0; QK]).dequantize(&mut back);
        assert_eq!(back, [0.0; QK]);
    }

    #[test]
    fn formats_parse() {
        assert_eq!(WeightFormat::parse("Q4_1").unwrap(), WeightFormat::Q4_1);
        assert!(WeightFormat::parse("q5_k").is_err());
    }
}

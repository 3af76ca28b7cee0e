//! Rotary position embedding: frequency tables for every HF `rope_type` ferrotune supports, and the fused
//! rotation (forward and backward) in the half-split ("rotate_half") layout of HF Llama / GPT-NeoX.
//! Kernel and backward derivation: `cpu::kernels::rope`.
//!
//! The inverse frequencies follow `transformers/modeling_rope_utils.py` (checked against transformers 5.6.0 by
//! `scripts/golden/ops_basic.py`), with one deliberate difference: HF evaluates them in f32, ferrotune in f64
//! (the two agree to f32 rounding, about 1e-7 relative). The cos/sin tables are evaluated in f64 and rounded to
//! f32 once, where HF computes `position * inv_freq` and its cos/sin in f32.

use super::{cpu_compute_input, to_input_dtype};
use crate::cpu::kernels::rope as kernel;
use crate::element::Float;
use crate::{bail, DType, Error, Result, Storage, Tensor};
use std::borrow::Cow;
use std::f64::consts::PI;

/// How the base frequencies are stretched for contexts longer than pre-training (HF `rope_scaling` /
/// `rope_parameters`). Fields mirror the HF config keys; optional HF keys with defaults (`beta_fast = 32`,
/// `beta_slow = 1`) must be filled in by the config loader.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE (HF `"default"`).
    None,
    /// Position interpolation: every frequency divided by `factor` (HF `"linear"`).
    Linear { factor: f64 },
    /// Dynamic NTK: theta grows when seq_len exceeds original_max_position_embeddings (HF "dynamic").
    ///
    /// HF 5.6's `_compute_dynamic_ntk_parameters` takes this length from `config.max_position_embeddings`
    /// (it never reads `rope_scaling.original_max_position_embeddings`), so a loader that wants HF's numbers
    /// fills this field from `config.max_position_embeddings`.
    Dynamic { factor: f64, original_max_position_embeddings: usize },
    /// Llama 3.1 band-wise scaling (HF `"llama3"`).
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
    /// YaRN (Peng et al. 2023; HF `"yarn"`, with HF's default `truncate = true`).
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        attention_factor: Option<f64>,
    },
}

/// Borrowed or freshly evaluated `(cos, sin)` tables.
type CosSin<'a, T> = (Cow<'a, [T]>, Cow<'a, [T]>);

/// Inverse frequencies, attention scaling and the cos/sin tables of one RoPE configuration.
#[derive(Debug, Clone)]
pub struct RopeTable {
    head_dim: usize,
    inv_freq: Vec<f64>,
    attention_scaling: f64,
    /// `[max_positions, head_dim / 2]` f32, already multiplied by `attention_scaling`.
    cos: Tensor,
    sin: Tensor,
}

/// `1 / theta^(2i / dim)` for `i` in `0..dim/2`: the unscaled RoPE frequencies.
fn default_inv_freq(head_dim: usize, theta: f64) -> Vec<f64> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64)).collect()
}

fn check_positive(what: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        bail!("RopeTable: {what} must be finite and > 0, got {v}");
    }
    Ok(())
}

fn check_original_max(original_max_position_embeddings: usize) -> Result<()> {
    if original_max_position_embeddings == 0 {
        bail!("RopeTable: original_max_position_embeddings must be > 0");
    }
    Ok(())
}

/// HF `_compute_llama3_parameters`: wavelengths shorter than `original / high_freq_factor` are kept, longer
/// than `original / low_freq_factor` divided by `factor`, and the band between blends the two linearly in
/// `original / wavelength`.
fn llama3_inv_freq(base: &[f64], factor: f64, low_freq_factor: f64, high_freq_factor: f64, original: usize) -> Vec<f64> {
    let old_context_len = original as f64;
    let low_freq_wavelen = old_context_len / low_freq_factor;
    let high_freq_wavelen = old_context_len / high_freq_factor;
    base.iter()
        .map(|&f| {
            let wavelen = 2.0 * PI / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / factor
            } else {
                let smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// HF `_compute_yarn_parameters` (with `truncate = true`): returns `(inv_freq, attention_factor)`.
#[allow(clippy::too_many_arguments)]
fn yarn_inv_freq(
    head_dim: usize,
    theta: f64,
    factor: f64,
    original: usize,
    beta_fast: f64,
    beta_slow: f64,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
    attention_factor: Option<f64>,
) -> (Vec<f64>, f64) {
    let get_mscale = |scale: f64, mscale: f64| if scale <= 1.0 { 1.0 } else { 0.1 * mscale * scale.ln() + 1.0 };
    // HF tests `if mscale and mscale_all_dim`: both present and non-zero.
    let attention_factor = attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
        (Some(m), Some(m_all)) if m != 0.0 && m_all != 0.0 => get_mscale(factor, m) / get_mscale(factor, m_all),
        _ => get_mscale(factor, 1.0),
    });
    let dim = head_dim as f64;
    // The dimension whose wavelength completes `rotations` turns over the original context.
    let correction_dim = |rotations: f64| (dim * (original as f64 / (rotations * 2.0 * PI)).ln()) / (2.0 * theta.ln());
    let low = correction_dim(beta_fast).floor().max(0.0);
    let mut high = correction_dim(beta_slow).ceil().min(dim - 1.0);
    if low == high {
        high += 0.001; // HF: prevent a zero-width ramp
    }
    let inv_freq = (0..head_dim / 2)
        .map(|i| {
            let pos_freq = theta.powf((2 * i) as f64 / dim);
            let (extrapolation, interpolation) = (1.0 / pos_freq, 1.0 / (factor * pos_freq));
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let extrapolation_weight = 1.0 - ramp;
            interpolation * (1.0 - extrapolation_weight) + extrapolation * extrapolation_weight
        })
        .collect();
    (inv_freq, attention_factor)
}

impl RopeTable {
    /// inv_freq exactly as HF transformers' modeling_rope_utils computes it for each rope_type; `seq_len` is the
    /// longest position needed (dynamic NTK uses it; tables cover max(seq_len, max_position_embeddings) positions)
    ///
    /// `seq_len` counts positions (the largest position id + 1, HF's `max(position_ids) + 1`). For
    /// [`RopeScaling::Dynamic`] the frequencies are those HF computes for that length; note HF's module is
    /// stateful (after one long batch it keeps the grown frequencies for later short ones), this table is not.
    pub fn new(
        head_dim: usize,
        rope_theta: f64,
        scaling: &RopeScaling,
        max_position_embeddings: usize,
        seq_len: usize,
    ) -> Result<RopeTable> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            bail!("RopeTable: head_dim must be even and > 0 (the half-split layout pairs dim i with i + head_dim/2), got {head_dim}");
        }
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            bail!("RopeTable: rope_theta must be finite and > 1, got {rope_theta}");
        }
        let positions = seq_len.max(max_position_embeddings);
        if positions == 0 {
            bail!("RopeTable: max_position_embeddings and seq_len are both 0; the table would have no positions");
        }
        let (inv_freq, attention_scaling) = match *scaling {
            RopeScaling::None => (default_inv_freq(head_dim, rope_theta), 1.0),
            RopeScaling::Linear { factor } => {
                check_positive("factor", factor)?;
                (default_inv_freq(head_dim, rope_theta).into_iter().map(|f| f / factor).collect(), 1.0)
            }
            RopeScaling::Dynamic { factor, original_max_position_embeddings: original } => {
                check_positive("factor", factor)?;
                check_original_max(original)?;
                if head_dim < 4 {
                    bail!("RopeTable: dynamic NTK needs head_dim >= 4 (its exponent is dim / (dim - 2)), got {head_dim}");
                }
                // Below the original length HF keeps theta (the bracket is 1); above it theta grows so the
                // lowest frequency still spans the longer context.
                let len = seq_len.max(original) as f64;
                let dim = head_dim as f64;
                let theta = rope_theta * ((factor * len / original as f64) - (factor - 1.0)).powf(dim / (dim - 2.0));
                (default_inv_freq(head_dim, theta), 1.0)
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                check_positive("factor", factor)?;
                check_positive("low_freq_factor", low_freq_factor)?;
                check_original_max(original_max_position_embeddings)?;
                if !high_freq_factor.is_finite() || high_freq_factor <= low_freq_factor {
                    bail!("RopeTable: llama3 high_freq_factor must be > low_freq_factor, got {high_freq_factor} and {low_freq_factor}");
                }
                let base = default_inv_freq(head_dim, rope_theta);
                (llama3_inv_freq(&base, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings), 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
            } => {
                check_positive("factor", factor)?;
                check_positive("beta_fast", beta_fast)?;
                check_positive("beta_slow", beta_slow)?;
                check_original_max(original_max_position_embeddings)?;
                for (what, v) in [("mscale", mscale), ("mscale_all_dim", mscale_all_dim)] {
                    if v.is_some_and(|v| !v.is_finite()) {
                        bail!("RopeTable: yarn {what} must be finite, got {v:?}");
                    }
                }
                if let Some(a) = attention_factor {
                    check_positive("attention_factor", a)?;
                }
                yarn_inv_freq(
                    head_dim,
                    rope_theta,
                    factor,
                    original_max_position_embeddings,
                    beta_fast,
                    beta_slow,
                    mscale,
                    mscale_all_dim,
                    attention_factor,
                )
            }
        };
        let (cos, sin) = kernel::cos_sin_tables::<f32>(&inv_freq, attention_scaling, positions);
        let shape = [positions, head_dim / 2];
        Ok(RopeTable { head_dim, inv_freq, attention_scaling, cos: Tensor::from_vec(cos, &shape)?, sin: Tensor::from_vec(sin, &shape)? })
    }

    pub fn inv_freq(&self) -> &[f64] {
        &self.inv_freq
    }

    /// The factor cos and sin are multiplied by (YaRN's mscale; 1.0 for every other type).
    pub fn attention_scaling(&self) -> f64 {
        self.attention_scaling
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Positions `0..max_positions()` are covered.
    pub fn max_positions(&self) -> usize {
        self.cos.shape()[0]
    }

    /// `[max_positions, head_dim / 2]` f32, times `attention_scaling`.
    pub fn cos(&self) -> &Tensor {
        &self.cos
    }

    /// `[max_positions, head_dim / 2]` f32, times `attention_scaling`.
    pub fn sin(&self) -> &Tensor {
        &self.sin
    }

    /// The cos/sin tables in `T`: the stored f32 tables, or for f64 the rows `0..positions` evaluated in f64
    /// (the reference path would otherwise carry the f32 table's 1e-7 rounding).
    fn tables<T: Float>(&self, positions: usize) -> Result<CosSin<'_, T>> {
        if T::DTYPE == self.cos.dtype() {
            return Ok((Cow::Borrowed(self.cos.cpu_slice::<T>()?), Cow::Borrowed(self.sin.cpu_slice::<T>()?)));
        }
        let (cos, sin) = kernel::cos_sin_tables::<T>(&self.inv_freq, self.attention_scaling, positions);
        Ok((Cow::Owned(cos), Cow::Owned(sin)))
    }
}

/// One table row per `(batch, time)` row of `x`, from `[B, T]`, `[1, T]` or `[T]` integer positions.
fn row_positions(op: &'static str, positions: &Tensor, batch: usize, seq: usize, table_len: usize) -> Result<Vec<usize>> {
    let raw: Vec<i64> = match positions.dtype() {
        DType::I64 => positions.to_vec::<i64>()?,
        DType::I32 => positions.to_vec::<i32>()?.into_iter().map(i64::from).collect(),
        dtype => return Err(Error::UnsupportedDType { op, dtype }),
    };
    let per_row = match *positions.shape() {
        [b, t] if b == batch && t == seq => raw,
        // One row shared by the batch, as HF's `position_ids` of shape [1, T] is.
        [t] | [1, t] if t == seq => raw.repeat(batch),
        _ => return Err(Error::ShapeMismatch { op, lhs: vec![batch, seq], rhs: positions.shape().to_vec() }),
    };
    per_row
        .into_iter()
        .map(|p| match usize::try_from(p) {
            Ok(p) if p < table_len => Ok(p),
            _ => Err(Error::IndexOutOfRange { op, index: p, size: table_len }),
        })
        .collect()
}

fn apply(op: &'static str, x: &Tensor, table: &RopeTable, positions: &Tensor, inverse: bool) -> Result<Tensor> {
    let &[batch, seq, _heads, head_dim] = x.shape() else {
        return Err(Error::BadShape { op, msg: format!("expected [batch, seq, heads, head_dim], got {:?}", x.shape()) });
    };
    if head_dim != table.head_dim {
        return Err(Error::BadShape { op, msg: format!("head_dim {head_dim} does not match the RopeTable's {}", table.head_dim) });
    }
    let rows = row_positions(op, positions, batch, seq, table.max_positions())?;
    if x.elem_count() == 0 {
        return x.zeros_like();
    }
    if let Storage::Cuda(_) = x.storage() {
        return crate::cuda::fused::rope(op, x, &table.inv_freq, table.attention_scaling, &rows, inverse);
    }
    let xc = cpu_compute_input(op, x)?;
    let needed = rows.iter().max().map_or(0, |&p| p + 1);
    let out = super::float_dispatch!(op, xc.dtype(), T => {
        let (cos, sin) = table.tables::<T>(needed)?;
        let mut out = vec![T::ZERO; xc.elem_count()];
        let input = xc.cpu_slice::<T>()?;
        if inverse {
            kernel::rope_backward(input, &cos, &sin, &rows, head_dim, &mut out);
        } else {
            kernel::rope_forward(input, &cos, &sin, &rows, head_dim, &mut out);
        }
        Tensor::from_vec(out, x.shape())?
    });
    to_input_dtype(out, x.dtype())
}

/// Half-split ("rotate_half", HF Llama/NeoX) layout. x: `[B, T, n_heads, head_dim]`; positions: `[B, T]` or
/// `[T]` (i32 or i64): positions let packed sequences restart at 0.
/// `out = x*cos + rotate_half(x)*sin`, with cos/sin multiplied by attention_scaling as HF does.
///
/// `[1, T]` positions are accepted too (shared by the batch). Returned in the dtype of `x` (bf16/f16 rotate
/// in f32 with the f32 tables; f64 evaluates its own f64 tables).
pub fn rope(x: &Tensor, table: &RopeTable, positions: &Tensor) -> Result<Tensor> {
    apply("rope", x, table, positions, false)
}

/// `dL/dx` of [`rope`]: `grad_out` rotated by the opposite angles (the transpose of each 2x2 rotation).
pub fn rope_backward(grad_out: &Tensor, table: &RopeTable, positions: &Tensor) -> Result<Tensor> {
    apply("rope_backward", grad_out, table, positions, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    fn llama3() -> RopeScaling {
        RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64 }
    }

    #[test]
    fn frequencies_follow_each_scaling_rule() {
        let base = RopeTable::new(16, 10_000.0, &RopeScaling::None, 32, 0).unwrap();
        for (i, f) in base.inv_freq().iter().enumerate() {
            assert!((f - 10_000f64.powf(-(i as f64) / 8.0)).abs() < 1e-15);
        }
        assert_eq!((base.max_positions(), base.cos().shape()), (32, &[32, 8][..]));
        let linear = RopeTable::new(16, 10_000.0, &RopeScaling::Linear { factor: 4.0 }, 32, 100).unwrap();
        assert!(linear.inv_freq().iter().zip(base.inv_freq()).all(|(l, b)| (l * 4.0 - b).abs() < 1e-15));
        assert_eq!(linear.max_positions(), 100);
        // Dynamic NTK leaves the frequencies alone up to the original length and lowers them past it.
        let dynamic = RopeScaling::Dynamic { factor: 2.0, original_max_position_embeddings: 32 };
        assert_eq!(RopeTable::new(16, 10_000.0, &dynamic, 32, 32).unwrap().inv_freq(), base.inv_freq());
        let grown = RopeTable::new(16, 10_000.0, &dynamic, 32, 64).unwrap();
        assert!(grown.inv_freq()[0] == 1.0 && grown.inv_freq()[1..].iter().zip(&base.inv_freq()[1..]).all(|(g, b)| g < b));
        // Llama 3: the fastest frequency (wavelength 2 pi < 64 / 4) untouched, the slowest divided by 8.
        let l3 = RopeTable::new(16, 10_000.0, &llama3(), 128, 0).unwrap();
        assert_eq!(l3.inv_freq()[0], base.inv_freq()[0]);
        assert!((l3.inv_freq()[7] * 8.0 - base.inv_freq()[7]).abs() < 1e-18);
        let yarn = RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 64,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
        };
        let y = RopeTable::new(16, 10_000.0, &yarn, 256, 0).unwrap();
        assert!((y.attention_scaling() - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
        let c = y.cos().to_vec::<f32>().unwrap();
        assert!((c[0] as f64 - y.attention_scaling()).abs() < 1e-7, "cos(0) carries the attention scaling");
    }

    #[test]
    fn bad_configs_are_errors() {
        let none = RopeScaling::None;
        assert!(RopeTable::new(7, 10_000.0, &none, 8, 0).is_err());
        assert!(RopeTable::new(0, 10_000.0, &none, 8, 0).is_err());
        assert!(RopeTable::new(8, -1.0, &none, 8, 0).is_err());
        assert!(RopeTable::new(8, 10_000.0, &none, 0, 0).is_err());
        assert!(RopeTable::new(8, 10_000.0, &RopeScaling::Linear { factor: 0.0 }, 8, 0).is_err());
        let flat = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 2.0, high_freq_factor: 2.0, original_max_position_embeddings: 64 };
        assert!(RopeTable::new(8, 10_000.0, &flat, 8, 0).is_err());
        let dynamic = RopeScaling::Dynamic { factor: 2.0, original_max_position_embeddings: 0 };
        assert!(RopeTable::new(8, 10_000.0, &dynamic, 8, 0).is_err());
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let table = RopeTable::new(8, 10_000.0, &RopeScaling::None, 16, 0).unwrap();
        let x = Tensor::randn(0, &[2, 3, 4, 8], 0.0, 1.0, DType::F32).unwrap();
        let pos = Tensor::from_vec(vec![0i64, 1, 2], &[3]).unwrap();
        assert!(rope(&x, &table, &pos).is_ok());
        let x6 = Tensor::randn(0, &[2, 3, 4, 6], 0.0, 1.0, DType::F32).unwrap();
        assert!(matches!(rope(&x6, &table, &pos), Err(Error::BadShape { .. })));
        assert!(matches!(rope(&x.reshape(&[6, 4, 8]).unwrap(), &table, &pos), Err(Error::BadShape { .. })));
        let past = Tensor::from_vec(vec![0i32, 1, 16], &[3]).unwrap();
        assert!(matches!(rope(&x, &table, &past), Err(Error::IndexOutOfRange { index: 16, size: 16, .. })));
        let negative = Tensor::from_vec(vec![0i64, -1, 2], &[3]).unwrap();
        assert!(matches!(rope_backward(&x, &table, &negative), Err(Error::IndexOutOfRange { index: -1, .. })));
        let wrong_len = Tensor::from_vec(vec![0i64, 1], &[2]).unwrap();
        assert!(matches!(rope(&x, &table, &wrong_len), Err(Error::ShapeMismatch { .. })));
        let float_pos = Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap();
        assert!(matches!(rope(&x, &table, &float_pos), Err(Error::UnsupportedDType { .. })));
    }

    #[test]
    fn positions_strides_dtypes_and_inverse() {
        let table = RopeTable::new(8, 500.0, &llama3(), 128, 0).unwrap();
        // [B, T, H, D] made as a strided view of [B, H, T, D], as attention code produces it.
        let x = Tensor::randn(1, &[2, 4, 5, 8], 0.0, 1.0, DType::F64).unwrap().transpose(1, 2).unwrap();
        let shared = Tensor::from_vec(vec![3i64, 4, 5, 6, 7], &[5]).unwrap();
        let per_batch = Tensor::from_vec(vec![3i32, 4, 5, 6, 7, 3, 4, 5, 6, 7], &[2, 5]).unwrap();
        let y = rope(&x, &table, &shared).unwrap();
        assert_eq!(rope(&x.contiguous().unwrap(), &table, &per_batch).unwrap().max_abs_diff(&y).unwrap(), 0.0);
        let hf_style = shared.reshape(&[1, 5]).unwrap();
        assert_eq!(rope(&x, &table, &hf_style).unwrap().max_abs_diff(&y).unwrap(), 0.0);
        // The backward is the inverse rotation when attention_scaling is 1.
        let back = rope_backward(&y, &table, &shared).unwrap();
        assert!(back.max_abs_diff(&x).unwrap() < 1e-14);
        // f32 uses the f32 table (rounded once from f64); bf16 rounds on the way in and out.
        let y32 = rope(&x.to_dtype(DType::F32).unwrap(), &table, &shared).unwrap();
        assert!(y32.dtype() == DType::F32 && y32.max_abs_diff(&y).unwrap() < 1e-6);
        let yb = rope(&x.to_dtype(DType::BF16).unwrap(), &table, &shared).unwrap();
        assert!(yb.dtype() == DType::BF16 && yb.max_abs_diff(&y).unwrap() < 4.0 * 2f64.powi(-8) * 4.0);
    }
}

//! Scaled dot-product attention with grouped-query heads, causal masking and packed-sequence segments, forward
//! and backward (the memory-light FlashAttention-2 algorithm; the math is in `cpu::kernels::attention`).

use crate::cpu::kernels::attention::{flash_attention_backward, flash_attention_forward, AttentionMask, HeadsView};
use crate::{DType, Element, Error, Result, Storage, Tensor};

/// What may attend to what, and how scores are scaled.
#[derive(Debug, Clone, Default)]
pub struct AttentionOptions {
    /// Query `t` sees key `s` only if `s <= t + (S - T)`: aligned bottom-right as flash-attn does, so with a KV
    /// cache (`S > T`) the queries are the last `T` positions. With `S == T` this is the usual lower triangle.
    pub causal: bool,
    /// Multiplies `q . k`; `None` means `1 / sqrt(head_dim)`.
    pub scale: Option<f64>,
    /// `[B, T]` i32/i64 ids of packed sequences (needs `S == T`): query `t` sees key `s` only if their ids are
    /// equal, so packed examples do not attend to each other (LLaMA-Factory's `neat_packing`).
    pub segment_ids: Option<Tensor>,
}

/// Attention of `q [B, T, Hq, D]` over `k, v [B, S, Hkv, D]` (`Hq` a multiple of `Hkv`; query head `h` uses kv
/// head `h / (Hq / Hkv)`). Returns `(out [B, T, Hq, D]` in q's dtype, `lse [B, Hq, T]` in the compute dtype: f32,
/// or f64 for f64 inputs`)`; `lse` is what [`attention_backward`] needs besides `out`. A query that sees no key
/// gets a zero output and `lse = -inf`.
///
/// q, k and v may be strided views (say, narrows of a fused qkv projection): f32/f64 views whose last dimension
/// is unit-stride are read in place. bf16/f16 inputs compute in f32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention";
    let call = AttentionCall::new(OP, q, k, v, opts)?;
    let (b, t, hq, _) = call.q_shape;
    let (out, lse) = float_dispatch!(OP, call.compute, F => {
        let (qv, kv, vv) = (heads_view::<F>(OP, &call.q)?, heads_view::<F>(OP, &call.k)?, heads_view::<F>(OP, &call.v)?);
        let (out, lse) = flash_attention_forward(qv, kv, vv, F::from_f64(call.scale), call.mask())?;
        (Tensor::from_vec(out, q.shape())?, Tensor::from_vec(lse, &[b, hq, t])?)
    });
    Ok((out.to_dtype(q.dtype())?, lse))
}

/// Gradients of [`attention`] for the upstream gradient `grad_out [B, T, Hq, D]`: `(grad_q, grad_k, grad_v)`
/// shaped and typed like q, k and v. `out` and `lse` are what the forward returned with the same `opts`.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    grad_out: &Tensor,
    opts: &AttentionOptions,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let call = AttentionCall::new(OP, q, k, v, opts)?;
    let (b, t, hq, _) = call.q_shape;
    for (name, x) in [("out", out), ("grad_out", grad_out), ("lse", lse)] {
        check_float_cpu(OP, name, x)?;
    }
    for (name, x) in [("out", out), ("grad_out", grad_out)] {
        if x.shape() != q.shape() {
            return Err(Error::BadShape { op: OP, msg: format!("{name} is {:?} but q is {:?}", x.shape(), q.shape()) });
        }
    }
    if lse.shape() != [b, hq, t] {
        return Err(Error::BadShape { op: OP, msg: format!("lse is {:?}; expected [B, Hq, T] = {:?}", lse.shape(), [b, hq, t]) });
    }
    let out = unit_stride_operand(out, call.compute)?;
    let grad_out = unit_stride_operand(grad_out, call.compute)?;
    let lse = lse.to_dtype(call.compute)?.contiguous()?;
    let (dq, dk, dv) = float_dispatch!(OP, call.compute, F => {
        let (qv, kv, vv) = (heads_view::<F>(OP, &call.q)?, heads_view::<F>(OP, &call.k)?, heads_view::<F>(OP, &call.v)?);
        let (ov, gv) = (heads_view::<F>(OP, &out)?, heads_view::<F>(OP, &grad_out)?);
        let scale = F::from_f64(call.scale);
        let (dq, dk, dv) = flash_attention_backward(qv, kv, vv, ov, lse.cpu_slice::<F>()?, gv, scale, call.mask())?;
        (Tensor::from_vec(dq, q.shape())?, Tensor::from_vec(dk, k.shape())?, Tensor::from_vec(dv, v.shape())?)
    });
    Ok((dq.to_dtype(q.dtype())?, dk.to_dtype(k.dtype())?, dv.to_dtype(v.dtype())?))
}

/// Checked inputs of one attention call, in the compute dtype.
struct AttentionCall {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_shape: (usize, usize, usize, usize),
    compute: DType,
    scale: f64,
    causal: bool,
    segment_ids: Option<Vec<i64>>,
}

impl AttentionCall {
    fn new(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Self> {
        for (name, x) in [("q", q), ("k", k), ("v", v)] {
            check_float_cpu(op, name, x)?;
            if x.rank() != 4 {
                return Err(Error::BadShape { op, msg: format!("{name} must be [batch, seq, heads, head_dim], got {:?}", x.shape()) });
            }
        }
        if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
            let other = if k.dtype() != q.dtype() { k.dtype() } else { v.dtype() };
            return Err(Error::DTypeMismatch { op, lhs: q.dtype(), rhs: other });
        }
        let (qs, ks) = (q.shape(), k.shape());
        let (b, t, hq, d) = (qs[0], qs[1], qs[2], qs[3]);
        let hkv = ks[2];
        if k.shape() != v.shape() || ks[0] != b || ks[3] != d {
            return Err(Error::BadShape {
                op,
                msg: format!("q {qs:?}, k {ks:?} and v {:?} must be [B, T, Hq, D], [B, S, Hkv, D], [B, S, Hkv, D]", v.shape()),
            });
        }
        if hkv == 0 || hq % hkv != 0 {
            return Err(Error::BadShape { op, msg: format!("{hq} query heads are not a multiple of {hkv} kv heads") });
        }
        if d == 0 {
            return Err(Error::BadShape { op, msg: "head_dim is 0".into() });
        }
        let scale = opts.scale.unwrap_or(1.0 / (d as f64).sqrt());
        if !scale.is_finite() {
            return Err(Error::Msg(format!("{op}: scale {scale} is not finite")));
        }
        let segment_ids = match &opts.segment_ids {
            None => None,
            Some(seg) => {
                if let Storage::Cuda(_) = seg.storage() {
                    return crate::cuda::unavailable();
                }
                if !matches!(seg.dtype(), DType::I32 | DType::I64) {
                    return Err(Error::Msg(format!("{op}: segment ids must be i32 or i64, got {}", seg.dtype())));
                }
                if seg.shape() != [b, t] || ks[1] != t {
                    return Err(Error::BadShape {
                        op,
                        msg: format!("segment ids must be [B, T] = [{b}, {t}] with S == T; got {:?} and S = {}", seg.shape(), ks[1]),
                    });
                }
                Some(seg.to_dtype(DType::I64)?.to_vec::<i64>()?)
            }
        };
        let compute = q.dtype().compute_dtype();
        Ok(AttentionCall {
            q: unit_stride_operand(q, compute)?,
            k: unit_stride_operand(k, compute)?,
            v: unit_stride_operand(v, compute)?,
            q_shape: (b, t, hq, d),
            compute,
            scale,
            causal: opts.causal,
            segment_ids,
        })
    }

    fn mask(&self) -> AttentionMask<'_> {
        AttentionMask { causal: self.causal, segment_ids: self.segment_ids.as_deref() }
    }
}

/// A kernel view of a `[B, seq, heads, D]` CPU tensor prepared by [`unit_stride_operand`].
fn heads_view<'a, F: Element>(op: &'static str, x: &'a Tensor) -> Result<HeadsView<'a, F>> {
    let cpu = x.storage().as_cpu().ok_or(Error::DeviceMismatch { op, lhs: x.device(), rhs: crate::Device::Cpu })?;
    let (l, s) = (x.layout(), x.shape());
    HeadsView::new(cpu.as_slice::<F>()?, l.offset(), [s[0], s[1], s[2], s[3]], [l.strides()[0], l.strides()[1], l.strides()[2]])
}

/// A CPU float tensor, or the error that says why not (GPU tensors get the CUDA backend's answer).
fn check_float_cpu(op: &'static str, name: &str, x: &Tensor) -> Result<()> {
    if let Storage::Cuda(_) = x.storage() {
        return crate::cuda::unavailable();
    }
    if !x.dtype().is_float() {
        return Err(Error::Msg(format!("{op}: {name} has dtype {}; attention needs a float dtype", x.dtype())));
    }
    Ok(())
}

/// `x` in the compute dtype with a unit-stride last dimension: a view of `x` itself when it already is one (no
/// copy for narrows of a fused projection), else a contiguous copy.
fn unit_stride_operand(x: &Tensor, compute: DType) -> Result<Tensor> {
    if x.dtype() != compute {
        return x.to_dtype(compute);
    }
    let last = x.rank() - 1;
    if x.shape()[last] <= 1 || x.layout().strides()[last] == 1 {
        Ok(x.clone())
    } else {
        x.contiguous()
    }
}

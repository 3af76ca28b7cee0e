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
    let checked = CheckedCall::new(OP, q, k, v, opts)?;
    if let Storage::Cuda(_) = q.storage() {
        return crate::cuda::fused::attention(q, k, v, checked.scale, opts.causal, checked.segment_ids.as_deref());
    }
    let call = AttentionCall::new(checked, q, k, v, opts.causal)?;
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
    let checked = CheckedCall::new(OP, q, k, v, opts)?;
    let (b, t, hq, _) = checked.q_shape;
    for (name, x) in [("out", out), ("grad_out", grad_out), ("lse", lse)] {
        check_float(OP, name, x)?;
    }
    for (name, x) in [("out", out), ("grad_out", grad_out)] {
        if x.shape() != q.shape() {
            return Err(Error::BadShape { op: OP, msg: format!("{name} is {:?} but q is {:?}", x.shape(), q.shape()) });
        }
    }
    if lse.shape() != [b, hq, t] {
        return Err(Error::BadShape { op: OP, msg: format!("lse is {:?}; expected [B, Hq, T] = {:?}", lse.shape(), [b, hq, t]) });
    }
    if let Storage::Cuda(_) = q.storage() {
        let segments = checked.segment_ids.as_deref();
        return crate::cuda::fused::attention_backward(q, k, v, out, lse, grad_out, checked.scale, opts.causal, segments);
    }
    let call = AttentionCall::new(checked, q, k, v, opts.causal)?;
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

/// What both backends check of one attention call: shapes, dtypes, the scale and the segment ids (read back to
/// the host as i64).
struct CheckedCall {
    q_shape: (usize, usize, usize, usize),
    scale: f64,
    segment_ids: Option<Vec<i64>>,
}

impl CheckedCall {
    fn new(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Self> {
        for (name, x) in [("q", q), ("k", k), ("v", v)] {
            check_float(op, name, x)?;
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
                if !matches!(seg.dtype(), DType::I32 | DType::I64) {
                    return Err(Error::Msg(format!("{op}: segment ids must be i32 or i64, got {}", seg.dtype())));
                }
                if seg.shape() != [b, t] || ks[1] != t {
                    return Err(Error::BadShape {
                        op,
                        msg: format!("segment ids must be [B, T] = [{b}, {t}] with S == T; got {:?} and S = {}", seg.shape(), ks[1]),
                    });
                }
                // Ids on a GPU are read back: both backends need them on the host (the CUDA one as cu_seqlens).
                Some(seg.to_device(crate::Device::Cpu)?.to_dtype(DType::I64)?.to_vec::<i64>()?)
            }
        };
        Ok(CheckedCall { q_shape: (b, t, hq, d), scale, segment_ids })
    }
}

impl AttentionCall {
    /// The CPU kernels' operands of a checked call: unit-stride views in the compute dtype.
    fn new(checked: CheckedCall, q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Self> {
        let CheckedCall { q_shape, scale, segment_ids } = checked;
        let compute = q.dtype().compute_dtype();
        Ok(AttentionCall {
            q: unit_stride_operand(q, compute)?,
            k: unit_stride_operand(k, compute)?,
            v: unit_stride_operand(v, compute)?,
            q_shape,
            compute,
            scale,
            causal,
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

/// A float tensor, or the error that says why not.
fn check_float(op: &'static str, name: &str, x: &Tensor) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One attention problem: q [b, t, hq, d], k/v [b, s, hkv, d].
    #[derive(Clone, Copy, Debug)]
    struct Case {
        b: usize,
        t: usize,
        s: usize,
        hq: usize,
        hkv: usize,
        d: usize,
        causal: bool,
        segments: bool,
    }

    impl Case {
        fn scale(&self) -> f64 {
            1.0 / (self.d as f64).sqrt()
        }

        /// Packed sequences (sorted ids, as packing makes them): in even batch rows 64 tokens each, so the
        /// second 128-row query tile shares no segment with the first key tile (skipped); in odd rows 24 tokens
        /// each, offset so that segments straddle the tile boundary.
        fn segment_ids(&self) -> Option<Vec<i64>> {
            self.segments.then(|| {
                let id = |b: usize, t: usize| if b.is_multiple_of(2) { t / 64 } else { (t + 7) / 24 + 10 };
                (0..self.b).flat_map(|b| (0..self.t).map(move |t| id(b, t) as i64)).collect()
            })
        }

        fn inputs(&self, seed: u64, dtype: DType) -> (Tensor, Tensor, Tensor) {
            let q = Tensor::randn(seed, &[self.b, self.t, self.hq, self.d], 0.0, 1.0, dtype).unwrap();
            let k = Tensor::randn(seed + 1, &[self.b, self.s, self.hkv, self.d], 0.0, 1.0, dtype).unwrap();
            let v = Tensor::randn(seed + 2, &[self.b, self.s, self.hkv, self.d], 0.0, 1.0, dtype).unwrap();
            (q, k, v)
        }

        fn options(&self) -> AttentionOptions {
            let segment_ids = self.segment_ids().map(|s| Tensor::from_vec(s, &[self.b, self.t]).unwrap());
            AttentionOptions { causal: self.causal, scale: None, segment_ids }
        }

        fn visible(&self, seg: &Option<Vec<i64>>, b: usize, t: usize, s: usize) -> bool {
            let causal_ok = !self.causal || s + self.t <= t + self.s;
            let seg_ok = seg.as_ref().is_none_or(|g| g[b * self.t + s] == g[b * self.t + t]);
            causal_ok && seg_ok
        }

        /// Softmax probabilities of query (b, h, t) over all keys, materialised: the plain definition.
        fn probs(&self, q: &[f64], k: &[f64], b: usize, h: usize, t: usize) -> Vec<f64> {
            let (seg, g) = (self.segment_ids(), h / (self.hq / self.hkv));
            let qv = &q[((b * self.t + t) * self.hq + h) * self.d..][..self.d];
            let scores: Vec<f64> = (0..self.s)
                .map(|s| {
                    let kv = &k[((b * self.s + s) * self.hkv + g) * self.d..][..self.d];
                    let dot: f64 = qv.iter().zip(kv).map(|(a, b)| a * b).sum();
                    if self.visible(&seg, b, t, s) { dot * self.scale() } else { f64::NEG_INFINITY }
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if max == f64::NEG_INFINITY {
                return vec![0.0; self.s];
            }
            let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.iter().map(|x| x / sum).collect()
        }

        /// Naive forward: (out [b, t, hq, d], lse [b, hq, t]).
        fn reference(&self, q: &[f64], k: &[f64], v: &[f64]) -> (Vec<f64>, Vec<f64>) {
            let mut out = vec![0.0; self.b * self.t * self.hq * self.d];
            let mut lse = vec![f64::NEG_INFINITY; self.b * self.hq * self.t];
            let seg = self.segment_ids();
            for b in 0..self.b {
                for h in 0..self.hq {
                    let g = h / (self.hq / self.hkv);
                    for t in 0..self.t {
                        let p = self.probs(q, k, b, h, t);
                        for (s, &ps) in p.iter().enumerate() {
                            let vv = &v[((b * self.s + s) * self.hkv + g) * self.d..][..self.d];
                            for (o, &x) in out[((b * self.t + t) * self.hq + h) * self.d..][..self.d].iter_mut().zip(vv) {
                                *o += ps * x;
                            }
                        }
                        let qv = &q[((b * self.t + t) * self.hq + h) * self.d..][..self.d];
                        let sum: f64 = (0..self.s)
                            .filter(|&s| self.visible(&seg, b, t, s))
                            .map(|s| {
                                let kv = &k[((b * self.s + s) * self.hkv + g) * self.d..][..self.d];
                                (qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f64>() * self.scale()).exp()
                            })
                            .sum();
                        if sum > 0.0 {
                            lse[(b * self.hq + h) * self.t + t] = sum.ln();
                        }
                    }
                }
            }
            (out, lse)
        }

        /// Naive backward from the materialised softmax: dV = P^T dO, dS = P (dP - rowsum(P dP)), dQ = c dS K,
        /// dK = c dS^T Q.
        fn reference_backward(&self, q: &[f64], k: &[f64], v: &[f64], d_out: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
            let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
            let d = self.d;
            for b in 0..self.b {
                for h in 0..self.hq {
                    let g = h / (self.hq / self.hkv);
                    for t in 0..self.t {
                        let p = self.probs(q, k, b, h, t);
                        let qi = ((b * self.t + t) * self.hq + h) * d;
                        let kv_at = |s: usize| ((b * self.s + s) * self.hkv + g) * d;
                        let dp: Vec<f64> = (0..self.s).map(|s| (0..d).map(|j| d_out[qi + j] * v[kv_at(s) + j]).sum()).collect();
                        let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                        for s in 0..self.s {
                            let ds = p[s] * (dp[s] - delta);
                            for j in 0..d {
                                dv[kv_at(s) + j] += p[s] * d_out[qi + j];
                                dq[qi + j] += self.scale() * ds * k[kv_at(s) + j];
                                dk[kv_at(s) + j] += self.scale() * ds * q[qi + j];
                            }
                        }
                    }
                }
            }
            (dq, dk, dv)
        }
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() }).fold(0.0, f64::max)
    }

    const CASES: [Case; 7] = [
        // GQA 3:1, T not a multiple of the 128-row tile, odd head_dim.
        Case { b: 2, t: 150, s: 150, hq: 3, hkv: 1, d: 24, causal: true, segments: false },
        // 1:1, several tiles each way, D = 64.
        Case { b: 1, t: 260, s: 260, hq: 2, hkv: 2, d: 64, causal: true, segments: false },
        // KV cache: S > T, queries are the last T positions (one tile, then several).
        Case { b: 2, t: 5, s: 12, hq: 4, hkv: 2, d: 8, causal: true, segments: false },
        Case { b: 1, t: 140, s: 300, hq: 3, hkv: 1, d: 16, causal: true, segments: false },
        // Packed sequences spanning tiles (some tile pairs share no segment and are skipped).
        Case { b: 2, t: 200, s: 200, hq: 2, hkv: 1, d: 24, causal: true, segments: true },
        // Bidirectional, S != T.
        Case { b: 1, t: 33, s: 150, hq: 2, hkv: 1, d: 24, causal: false, segments: false },
        // S < T: the first T - S queries see no key and must output zeros.
        Case { b: 1, t: 10, s: 4, hq: 1, hkv: 1, d: 8, causal: true, segments: false },
    ];

    #[test]
    fn forward_and_backward_match_the_materialised_reference() {
        for (i, case) in CASES.iter().enumerate() {
            let (q, k, v) = case.inputs(10 * i as u64, DType::F64);
            let (qd, kd, vd) = (q.to_vec::<f64>().unwrap(), k.to_vec::<f64>().unwrap(), v.to_vec::<f64>().unwrap());
            let (want_out, want_lse) = case.reference(&qd, &kd, &vd);
            let (out, lse) = attention(&q, &k, &v, &case.options()).unwrap();
            assert_eq!(lse.shape(), [case.b, case.hq, case.t]);
            assert!(max_diff(&out.to_vec::<f64>().unwrap(), &want_out) < 1e-12, "{case:?}: out");
            assert!(max_diff(&lse.to_vec::<f64>().unwrap(), &want_lse) < 1e-12, "{case:?}: lse");

            let d_out = Tensor::randn(99, out.shape(), 0.0, 1.0, DType::F64).unwrap();
            let (dq, dk, dv) = attention_backward(&q, &k, &v, &out, &lse, &d_out, &case.options()).unwrap();
            let (wq, wk, wv) = case.reference_backward(&qd, &kd, &vd, &d_out.to_vec::<f64>().unwrap());
            assert!(max_diff(&dq.to_vec::<f64>().unwrap(), &wq) < 1e-11, "{case:?}: dq");
            assert!(max_diff(&dk.to_vec::<f64>().unwrap(), &wk) < 1e-11, "{case:?}: dk");
            assert!(max_diff(&dv.to_vec::<f64>().unwrap(), &wv) < 1e-11, "{case:?}: dv");

            // f32: the same algorithm in single precision (scores ~ N(0, 1), so errors ~ 1e-6).
            let (q32, k32, v32) = (q.to_dtype(DType::F32).unwrap(), k.to_dtype(DType::F32).unwrap(), v.to_dtype(DType::F32).unwrap());
            let (out32, lse32) = attention(&q32, &k32, &v32, &case.options()).unwrap();
            assert_eq!((out32.dtype(), lse32.dtype()), (DType::F32, DType::F32));
            assert!(max_diff(&out32.to_vec_f64().unwrap(), &want_out) < 2e-5, "{case:?}: f32 out");
            let g32 = d_out.to_dtype(DType::F32).unwrap();
            let (dq32, dk32, dv32) = attention_backward(&q32, &k32, &v32, &out32, &lse32, &g32, &case.options()).unwrap();
            assert!(max_diff(&dq32.to_vec_f64().unwrap(), &wq) < 1e-4, "{case:?}: f32 dq");
            assert!(max_diff(&dk32.to_vec_f64().unwrap(), &wk) < 1e-4, "{case:?}: f32 dk");
            assert!(max_diff(&dv32.to_vec_f64().unwrap(), &wv) < 1e-4, "{case:?}: f32 dv");
        }
    }

    #[test]
    fn rows_that_see_no_key_are_zero_with_zero_gradient() {
        let case = CASES[6];
        let (q, k, v) = case.inputs(5, DType::F64);
        let (out, lse) = attention(&q, &k, &v, &case.options()).unwrap();
        let (out, lse_v) = (out.to_vec::<f64>().unwrap(), lse.to_vec::<f64>().unwrap());
        // T = 10, S = 4: queries 0..6 see nothing (t + S - T < 0).
        assert!(out[..6 * case.d].iter().all(|&x| x == 0.0));
        assert!(lse_v[..6].iter().all(|&x| x == f64::NEG_INFINITY) && lse_v[6..].iter().all(|x| x.is_finite()));
        let out_t = Tensor::from_vec(out, q.shape()).unwrap();
        let ones = Tensor::ones(q.shape(), DType::F64, crate::Device::Cpu).unwrap();
        let (dq, dk, _) = attention_backward(&q, &k, &v, &out_t, &lse, &ones, &case.options()).unwrap();
        let dq = dq.to_vec::<f64>().unwrap();
        assert!(dq[..6 * case.d].iter().all(|&x| x == 0.0));
        assert!(dk.to_vec::<f64>().unwrap().iter().all(|x| x.is_finite()));
    }

    /// Central differences of `L = sum(out * W)` in f64 against the hand-written backward.
    #[test]
    fn backward_matches_finite_differences() {
        let cases = [
            Case { b: 1, t: 5, s: 7, hq: 2, hkv: 1, d: 3, causal: true, segments: false },
            Case { b: 2, t: 6, s: 6, hq: 2, hkv: 2, d: 3, causal: true, segments: true },
            Case { b: 1, t: 4, s: 3, hq: 3, hkv: 1, d: 2, causal: false, segments: false },
        ];
        for case in cases {
            let (q, k, v) = case.inputs(42, DType::F64);
            let opts = case.options();
            let w = Tensor::randn(7, q.shape(), 0.0, 1.0, DType::F64).unwrap();
            let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> f64 {
                let (out, _) = attention(q, k, v, &opts).unwrap();
                out.to_vec::<f64>().unwrap().iter().zip(w.to_vec::<f64>().unwrap()).map(|(a, b)| a * b).sum()
            };
            let (out, lse) = attention(&q, &k, &v, &opts).unwrap();
            let grads = attention_backward(&q, &k, &v, &out, &lse, &w, &opts).unwrap();
            let inputs = [&q, &k, &v];
            for (which, grad) in [grads.0, grads.1, grads.2].iter().enumerate() {
                let grad = grad.to_vec::<f64>().unwrap();
                let base = inputs[which].to_vec::<f64>().unwrap();
                for i in 0..base.len() {
                    let eps = 1e-6;
                    let shifted = |delta: f64| {
                        let mut x = base.clone();
                        x[i] += delta;
                        let x = Tensor::from_vec(x, inputs[which].shape()).unwrap();
                        let mut args = inputs.map(|t| t.clone());
                        args[which] = x;
                        loss(&args[0], &args[1], &args[2])
                    };
                    let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
                    assert!((numeric - grad[i]).abs() < 1e-7 * (1.0 + numeric.abs()), "{case:?} input {which} [{i}]: {numeric} vs {}", grad[i]);
                }
            }
        }
    }

    /// q, k and v as narrows of one fused projection `[B, T, (Hq + 2 Hkv) * D]` give what contiguous copies give.
    #[test]
    fn strided_views_of_a_fused_projection() {
        let (b, t, hq, hkv, d) = (2, 150, 3, 1, 16);
        let qkv = Tensor::randn(3, &[b, t, (hq + 2 * hkv) * d], 0.0, 1.0, DType::F32).unwrap();
        let q = qkv.narrow(2, 0, hq * d).unwrap().reshape(&[b, t, hq, d]).unwrap();
        let k = qkv.narrow(2, hq * d, hkv * d).unwrap().reshape(&[b, t, hkv, d]).unwrap();
        let v = qkv.narrow(2, (hq + hkv) * d, hkv * d).unwrap().reshape(&[b, t, hkv, d]).unwrap();
        assert!(!q.is_contiguous() && q.same_storage(&qkv), "the test needs q to stay a view");
        let opts = AttentionOptions { causal: true, ..Default::default() };
        let (out, lse) = attention(&q, &k, &v, &opts).unwrap();
        let (qc, kc, vc) = (q.contiguous().unwrap(), k.contiguous().unwrap(), v.contiguous().unwrap());
        let (out_c, lse_c) = attention(&qc, &kc, &vc, &opts).unwrap();
        assert_eq!(out.to_vec::<f32>().unwrap(), out_c.to_vec::<f32>().unwrap());
        assert_eq!(lse.to_vec::<f32>().unwrap(), lse_c.to_vec::<f32>().unwrap());
        let g = Tensor::randn(4, out.shape(), 0.0, 1.0, DType::F32).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let g = g.transpose(1, 2).unwrap(); // a strided grad_out
        let strided = attention_backward(&q, &k, &v, &out, &lse, &g, &opts).unwrap();
        let dense = attention_backward(&qc, &kc, &vc, &out_c, &lse_c, &g.contiguous().unwrap(), &opts).unwrap();
        assert_eq!(strided.0.to_vec::<f32>().unwrap(), dense.0.to_vec::<f32>().unwrap());
        assert_eq!(strided.1.to_vec::<f32>().unwrap(), dense.1.to_vec::<f32>().unwrap());
        assert_eq!(strided.2.to_vec::<f32>().unwrap(), dense.2.to_vec::<f32>().unwrap());
    }

    #[test]
    fn bf16_computes_in_f32_and_returns_bf16() {
        let case = CASES[0];
        let (q, k, v) = case.inputs(1, DType::BF16);
        let (out, lse) = attention(&q, &k, &v, &case.options()).unwrap();
        assert_eq!((out.dtype(), lse.dtype()), (DType::BF16, DType::F32));
        let up = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let (want, _) = attention(&up(&q), &up(&k), &up(&v), &case.options()).unwrap();
        // Outputs are convex combinations of N(0, 1) values: |out| < 4, one bf16 rounding is < 2^-8 relative.
        assert!(out.max_abs_diff(&want).unwrap() < 4.0 / 256.0);
        let g = Tensor::randn(2, q.shape(), 0.0, 1.0, DType::BF16).unwrap();
        let (dq, dk, dv) = attention_backward(&q, &k, &v, &out, &lse, &g, &case.options()).unwrap();
        assert_eq!((dq.dtype(), dk.dtype(), dv.dtype()), (DType::BF16, DType::BF16, DType::BF16));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let f = |shape: &[usize]| Tensor::zeros(shape, DType::F32, crate::Device::Cpu).unwrap();
        let none = AttentionOptions::default();
        // Query heads not a multiple of kv heads.
        assert!(attention(&f(&[1, 4, 3, 8]), &f(&[1, 4, 2, 8]), &f(&[1, 4, 2, 8]), &none).is_err());
        // head_dim mismatch, k/v mismatch, wrong rank, zero head_dim.
        assert!(attention(&f(&[1, 4, 2, 8]), &f(&[1, 4, 2, 4]), &f(&[1, 4, 2, 4]), &none).is_err());
        assert!(attention(&f(&[1, 4, 2, 8]), &f(&[1, 4, 2, 8]), &f(&[1, 5, 2, 8]), &none).is_err());
        assert!(attention(&f(&[4, 2, 8]), &f(&[4, 2, 8]), &f(&[4, 2, 8]), &none).is_err());
        assert!(attention(&f(&[1, 4, 2, 0]), &f(&[1, 4, 2, 0]), &f(&[1, 4, 2, 0]), &none).is_err());
        // dtype mismatch and integer inputs.
        let i = Tensor::zeros(&[1, 4, 2, 8], DType::I64, crate::Device::Cpu).unwrap();
        assert!(attention(&f(&[1, 4, 2, 8]), &f(&[1, 4, 2, 8]).to_dtype(DType::F64).unwrap(), &f(&[1, 4, 2, 8]), &none).is_err());
        assert!(attention(&i, &i, &i, &none).is_err());
        // Segment ids: wrong shape, float dtype, S != T.
        let seg = |shape: &[usize], dtype| AttentionOptions { segment_ids: Some(Tensor::zeros(shape, dtype, crate::Device::Cpu).unwrap()), ..Default::default() };
        let x = f(&[1, 4, 2, 8]);
        assert!(attention(&x, &x, &x, &seg(&[1, 5], DType::I64)).is_err());
        assert!(attention(&x, &x, &x, &seg(&[1, 4], DType::F32)).is_err());
        assert!(attention(&x, &f(&[1, 6, 2, 8]), &f(&[1, 6, 2, 8]), &seg(&[1, 4], DType::I32)).is_err());
        // Backward with a wrong lse or grad_out shape.
        let (out, lse) = attention(&x, &x, &x, &none).unwrap();
        assert!(attention_backward(&x, &x, &x, &out, &f(&[1, 4]), &out, &none).is_err());
        assert!(attention_backward(&x, &x, &x, &out, &lse, &f(&[1, 4, 2, 4]), &none).is_err());
        // Empty batch is fine.
        let e = f(&[0, 4, 2, 8]);
        let (out, lse) = attention(&e, &e, &e, &none).unwrap();
        assert_eq!((out.shape(), lse.shape()), (&[0, 4, 2, 8][..], &[0, 2, 4][..]));
    }
}

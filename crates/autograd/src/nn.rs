//! Differentiable fused blocks. Each forward is one fused kernel from `ferrotune_tensor::ops`; each backward is
//! that kernel's hand-written twin, fed only what the forward saved.

use crate::Var;
use ferrotune_tensor::ops::{self, AttentionOptions, Reduction, RopeTable};
use ferrotune_tensor::{Result, Tensor};
use std::sync::Arc;

impl Var {
    /// RMSNorm over the last dim with a learned `[hidden]` weight. Saves x (the normalisation is recomputed in
    /// backward: cheaper in memory than keeping the normalised activations).
    pub fn rms_norm(&self, weight: &Var, eps: f64) -> Result<Var> {
        let (x, w) = (self.value().clone(), weight.value().clone());
        let y = ops::rms_norm(&x, &w, eps)?;
        Ok(Var::from_fn(y, &[self, weight], "rms_norm", move |g| {
            let (gx, gw) = ops::rms_norm_backward(&x, &w, eps, g)?;
            Ok(vec![Some(gx), Some(gw)])
        }))
    }

    /// Rotary position embedding on `[B, T, heads, head_dim]`. Saves nothing but the positions: the backward is
    /// the inverse rotation.
    pub fn rope(&self, table: &Arc<RopeTable>, positions: &Tensor) -> Result<Var> {
        let y = ops::rope(self.value(), table, positions)?;
        let (table, positions) = (table.clone(), positions.clone());
        Ok(Var::from_fn(y, &[self], "rope", move |g| Ok(vec![Some(ops::rope_backward(g, &table, &positions)?)])))
    }

    /// `silu(gate) * up`, the Llama MLP activation. Saves gate and up.
    pub fn swiglu(&self, up: &Var) -> Result<Var> {
        let (gate, upv) = (self.value().clone(), up.value().clone());
        let y = ops::swiglu(&gate, &upv)?;
        Ok(Var::from_fn(y, &[self, up], "swiglu", move |g| {
            let (gg, gu) = ops::swiglu_backward(&gate, &upv, g)?;
            Ok(vec![Some(gg), Some(gu)])
        }))
    }

    /// Softmax over the last dim. Saves its output.
    pub fn softmax_last(&self) -> Result<Var> {
        let y = ops::softmax_last(self.value())?;
        let saved = y.clone();
        Ok(Var::from_fn(y, &[self], "softmax", move |g| Ok(vec![Some(ops::softmax_last_backward(&saved, g)?)])))
    }

    /// Log-softmax over the last dim. Saves its output.
    pub fn log_softmax_last(&self) -> Result<Var> {
        let y = ops::log_softmax_last(self.value())?;
        let saved = y.clone();
        Ok(Var::from_fn(y, &[self], "log_softmax", move |g| Ok(vec![Some(ops::log_softmax_last_backward(&saved, g)?)])))
    }

    /// Inverted dropout with a seeded mask that backward regenerates (nothing saved). `p == 0` is the identity.
    pub fn dropout(&self, p: f64, seed: u64) -> Result<Var> {
        if p == 0.0 {
            return Ok(self.clone());
        }
        let y = ops::dropout(self.value(), p, seed)?;
        Ok(Var::from_fn(y, &[self], "dropout", move |g| Ok(vec![Some(ops::dropout_backward(g, p, seed)?)])))
    }

    /// Memory-light causal attention with GQA: q `[B, T, Hq, D]`, k and v `[B, S, Hkv, D]`. Saves q, k, v, the
    /// output and the per-row log-sum-exp; backward recomputes probabilities tile by tile.
    pub fn attention(q: &Var, k: &Var, v: &Var, opts: &AttentionOptions) -> Result<Var> {
        let (qt, kt, vt) = (q.value().clone(), k.value().clone(), v.value().clone());
        let (out, lse) = ops::attention(&qt, &kt, &vt, opts)?;
        let (saved_out, opts) = (out.clone(), opts.clone());
        Ok(Var::from_fn(out, &[q, k, v], "attention", move |g| {
            let (gq, gk, gv) = ops::attention_backward(&qt, &kt, &vt, &saved_out, &lse, g, &opts)?;
            Ok(vec![Some(gq), Some(gk), Some(gv)])
        }))
    }

    /// Cross-entropy of `[N, V]` logits against `[N]` targets, skipping `ignore_index`. Saves the logits and
    /// the per-row log-sum-exp.
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: i64, reduction: Reduction) -> Result<Var> {
        let logits = self.value().clone();
        let out = ops::cross_entropy(&logits, targets, ignore_index, reduction)?;
        let (targets, lse, n_valid) = (targets.clone(), out.lse, out.n_valid);
        Ok(Var::from_fn(out.loss, &[self], "cross_entropy", move |g| {
            let grad_loss = g.to_vec_f64()?[0];
            let gl = ops::cross_entropy_backward(&logits, &targets, &lse, ignore_index, reduction, n_valid, grad_loss)?;
            Ok(vec![Some(gl)])
        }))
    }

    /// Fused `hidden @ weight^T` + cross-entropy: the `[N, V]` logits never exist. The gradients are computed
    /// during the forward (one pass over the vocab) and only scaled in backward, so the forward of a frozen
    /// lm_head skips the weight-gradient GEMM.
    pub fn linear_cross_entropy(hidden: &Var, weight: &Var, targets: &Tensor, ignore_index: i64, reduction: Reduction) -> Result<Var> {
        let out = ops::linear_cross_entropy(hidden.value(), weight.value(), targets, ignore_index, reduction, weight.requires_grad())?;
        let (gh, gw) = (out.grad_hidden, out.grad_weight);
        Ok(Var::from_fn(out.loss, &[hidden, weight], "linear_cross_entropy", move |g| {
            let s = g.to_vec_f64()?[0];
            let scale = |t: &Tensor| if s == 1.0 { Ok(t.clone()) } else { t.scale(s) };
            Ok(vec![Some(scale(&gh)?), gw.as_ref().map(scale).transpose()?])
        }))
    }
}

//! Optimizers over the trainable leaves, f32 state, one fused loop per tensor (rayon over chunks).
//!
//! - **AdamW** (torch `AdamW`, HF `optim: adamw_torch` and aliases), step `t`, lr `η`, decay `λ`:
//!   `p ← p (1 - η λ)`; `m ← β1 m + (1 - β1) g`; `v ← β2 v + (1 - β2) g²`;
//!   `p ← p - (η / (1 - β1^t)) · m / (sqrt(v) / sqrt(1 - β2^t) + ε)`.
//! - **Adafactor** (HF `transformers.optimization.Adafactor` as the Trainer builds it for `optim: adafactor`:
//!   `scale_parameter=False, relative_step=False, warmup_init=False`, `eps=(1e-30, 1e-3)`, `clip_threshold=1`,
//!   `decay_rate=-0.8`, `beta1=None`): `ρ = 1 - t^-0.8`, `q = g² + 1e-30`; for a matrix (factored, rows `R`,
//!   columns `C`) `r ← ρ r + (1-ρ) mean_C(q)`, `c ← ρ c + (1-ρ) mean_R(q)`, `u = g / sqrt((r / mean(r)) ⊗ c)`;
//!   for a vector `v ← ρ v + (1-ρ) q`, `u = g / sqrt(v)`; then `u ← u / max(1, rms(u) / 1)`,
//!   `p ← p - η λ p - η u`.
//! - **SGD** (torch `SGD`, momentum 0, `optim: sgd`): `p ← p - η (g + λ p)`.
//!
//! Gradients arrive already multiplied by the clipping coefficient (`grad_scale`). Parameters stored in bf16
//! (pure_bf16) are updated in f32 and rounded back to bf16 each step; their state stays f32.

use ferrotune_autograd::Var;
use ferrotune_models::{bail, Result};
use ferrotune_tensor::{DType, Tensor};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Elements per rayon task in the fused loops.
const CHUNK: usize = 1 << 14;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    AdamW,
    Adafactor,
    Sgd,
}

impl OptimizerKind {
    /// HF `optim` names this runtime implements.
    pub fn from_optim(name: &str) -> Result<OptimizerKind> {
        Ok(match name {
            "adamw_torch" | "adamw_torch_fused" | "adamw_torch_xla" | "adamw_torch_npu_fused" | "adamw_apex_fused" => OptimizerKind::AdamW,
            "adafactor" => OptimizerKind::Adafactor,
            "sgd" => OptimizerKind::Sgd,
            other => bail!("optim {other:?} is not implemented; use adamw_torch (or an alias), adafactor or sgd"),
        })
    }
}

/// Hyper-parameters (HF `TrainingArguments` names and defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig { kind: OptimizerKind::AdamW, adam_beta1: 0.9, adam_beta2: 0.999, adam_epsilon: 1e-8 }
    }
}

/// How one parameter is optimised: its lr relative to the schedule's (LoRA+ gives `lora_B` `ratio`) and its
/// weight decay (0 for biases and norms, as HF's `get_decay_parameter_names` groups them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamGroup {
    pub lr_multiplier: f64,
    pub weight_decay: f64,
}

/// HF `Trainer.get_decay_parameter_names` (transformers 5.6): decay everything whose lowercased name matches none
/// of `bias`, `layernorm`, `rmsnorm`, `(^|\.)norm($|\.)`, `_norm($|\.)` (nn.LayerNorm children are excluded too;
/// these models have none).
pub fn hf_decays(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    if n.contains("bias") || n.contains("layernorm") || n.contains("rmsnorm") {
        return false;
    }
    let parts: Vec<&str> = n.split('.').collect();
    if parts.contains(&"norm") {
        return false;
    }
    // `_norm` followed by the end or a dot: some dot-separated part ends with "_norm".
    !parts.iter().any(|p| p.ends_with("_norm"))
}

#[derive(Debug, Clone)]
enum State {
    Adam { m: Vec<f32>, v: Vec<f32> },
    AdafactorFactored { row: Vec<f32>, col: Vec<f32>, cols: usize },
    AdafactorVector { v: Vec<f32> },
    Sgd,
}

#[derive(Debug, Clone)]
struct Slot {
    name: String,
    shape: Vec<usize>,
    group: ParamGroup,
    step: u64,
    state: State,
}

/// Named state tensors and per-parameter step counts (what a checkpoint stores).
pub type OptimizerState = (Vec<(String, Tensor)>, BTreeMap<String, u64>);

/// One optimizer over a fixed list of named parameters (the order of [`Optimizer::step`]'s `params`).
#[derive(Debug, Clone)]
pub struct Optimizer {
    pub config: OptimizerConfig,
    slots: Vec<Slot>,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig, params: &[(String, Vec<usize>, ParamGroup)]) -> Optimizer {
        let slots = params
            .iter()
            .map(|(name, shape, group)| {
                let n: usize = shape.iter().product();
                let state = match config.kind {
                    OptimizerKind::AdamW => State::Adam { m: vec![0.0; n], v: vec![0.0; n] },
                    OptimizerKind::Adafactor if shape.len() >= 2 => {
                        let cols = *shape.last().unwrap_or(&1);
                        State::AdafactorFactored { row: vec![0.0; n / cols.max(1)], col: vec![0.0; cols], cols }
                    }
                    OptimizerKind::Adafactor => State::AdafactorVector { v: vec![0.0; n] },
                    OptimizerKind::Sgd => State::Sgd,
                };
                Slot { name: name.clone(), shape: shape.clone(), group: *group, step: 0, state }
            })
            .collect();
        Optimizer { config, slots }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    pub fn group(&self, index: usize) -> Option<ParamGroup> {
        self.slots.get(index).map(|s| s.group)
    }

    /// One update of every parameter with a gradient at lr `lr` (times each group's multiplier), gradients
    /// multiplied by `grad_scale` (the clipping coefficient). Each leaf is replaced by a fresh `Var::param`
    /// holding the new value (its gradient is thereby cleared).
    pub fn step(&mut self, params: &mut [(String, &mut Var)], lr: f64, grad_scale: f64) -> Result<()> {
        if params.len() != self.slots.len() {
            bail!("optimizer holds {} parameters but was given {}", self.slots.len(), params.len());
        }
        let cfg = self.config;
        for (slot, (name, var)) in self.slots.iter_mut().zip(params.iter_mut()) {
            if *name != slot.name || var.shape() != slot.shape.as_slice() {
                bail!("optimizer slot {:?} {:?} was given {name:?} {:?}", slot.name, slot.shape, var.shape());
            }
            let Some(grad) = var.grad() else { continue };
            let dtype = var.value().dtype();
            if dtype == DType::F64 {
                bail!("parameter {name:?} is f64; f64 models are for reference checks, train in f32 or bf16");
            }
            let mut p = var.value().to_dtype(DType::F32)?.to_vec::<f32>()?;
            let g = grad.to_dtype(DType::F32)?.to_vec::<f32>()?;
            slot.step += 1;
            let lr = lr * slot.group.lr_multiplier;
            let wd = slot.group.weight_decay;
            let gs = grad_scale as f32;
            match &mut slot.state {
                State::Adam { m, v } => adamw(&mut p, &g, m, v, slot.step, lr, wd, gs, &cfg),
                State::Sgd => sgd(&mut p, &g, lr, wd, gs),
                State::AdafactorVector { v } => {
                    let rho = 1.0 - (slot.step as f64).powf(-0.8);
                    let mut u: Vec<f32> = Vec::with_capacity(p.len());
                    for (vi, &gi) in v.iter_mut().zip(&g) {
                        let gi = gi * gs;
                        *vi = (rho as f32) * *vi + ((1.0 - rho) as f32) * (gi * gi + 1e-30);
                        u.push(gi / vi.sqrt());
                    }
                    adafactor_apply(&mut p, &mut u, lr, wd);
                }
                State::AdafactorFactored { row, col, cols } => {
                    let rho = 1.0 - (slot.step as f64).powf(-0.8);
                    let u = adafactor_factored(&g, row, col, *cols, rho, gs);
                    let mut u = u;
                    adafactor_apply(&mut p, &mut u, lr, wd);
                }
            }
            // The update runs on the host; the new value goes back where the parameter lives (a GPU's copy
            // stays there).
            let value = Tensor::from_vec(p, var.shape())?.to_dtype(dtype)?.to_device(var.value().device())?;
            **var = Var::param(value);
        }
        Ok(())
    }

    /// The state as named f32 tensors (`{param}.exp_avg`, `.exp_avg_sq`, `.exp_avg_sq_row`, `.exp_avg_sq_col`)
    /// plus the per-parameter step counts, for a checkpoint.
    pub fn state_tensors(&self) -> Result<OptimizerState> {
        let mut out = Vec::new();
        let mut steps = BTreeMap::new();
        for s in &self.slots {
            steps.insert(s.name.clone(), s.step);
            match &s.state {
                State::Adam { m, v } => {
                    out.push((format!("{}.exp_avg", s.name), Tensor::from_vec(m.clone(), &s.shape)?));
                    out.push((format!("{}.exp_avg_sq", s.name), Tensor::from_vec(v.clone(), &s.shape)?));
                }
                State::AdafactorFactored { row, col, .. } => {
                    out.push((format!("{}.exp_avg_sq_row", s.name), Tensor::from_vec(row.clone(), &[row.len()])?));
                    out.push((format!("{}.exp_avg_sq_col", s.name), Tensor::from_vec(col.clone(), &[col.len()])?));
                }
                State::AdafactorVector { v } => {
                    out.push((format!("{}.exp_avg_sq", s.name), Tensor::from_vec(v.clone(), &s.shape)?));
                }
                State::Sgd => {}
            }
        }
        Ok((out, steps))
    }

    /// Restore what [`Optimizer::state_tensors`] wrote; every tensor must be there with its shape.
    pub fn load_state(&mut self, get: &dyn Fn(&str) -> Result<Option<Tensor>>, steps: &BTreeMap<String, u64>) -> Result<()> {
        let read = |name: String, len: usize| -> Result<Vec<f32>> {
            match get(&name)? {
                Some(t) if t.elem_count() == len => Ok(t.to_dtype(DType::F32)?.to_vec::<f32>()?),
                Some(t) => bail!("optimizer state {name:?} has {} elements, expected {len}", t.elem_count()),
                None => bail!("optimizer state {name:?} is missing from the checkpoint"),
            }
        };
        for s in &mut self.slots {
            let Some(&step) = steps.get(&s.name) else {
                bail!("optimizer state has no step count for {:?}; the checkpoint was made with other trainable parameters", s.name)
            };
            s.step = step;
            match &mut s.state {
                State::Adam { m, v } => {
                    *m = read(format!("{}.exp_avg", s.name), m.len())?;
                    *v = read(format!("{}.exp_avg_sq", s.name), v.len())?;
                }
                State::AdafactorFactored { row, col, .. } => {
                    *row = read(format!("{}.exp_avg_sq_row", s.name), row.len())?;
                    *col = read(format!("{}.exp_avg_sq_col", s.name), col.len())?;
                }
                State::AdafactorVector { v } => *v = read(format!("{}.exp_avg_sq", s.name), v.len())?,
                State::Sgd => {}
            }
        }
        Ok(())
    }
}

/// torch's single-tensor AdamW (see the module docs), chunked over rayon.
#[allow(clippy::too_many_arguments)]
fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: u64, lr: f64, wd: f64, gs: f32, cfg: &OptimizerConfig) {
    let (b1, b2) = (cfg.adam_beta1, cfg.adam_beta2);
    let bc1 = 1.0 - b1.powi(step as i32);
    let bc2_sqrt = (1.0 - b2.powi(step as i32)).sqrt();
    let step_size = (lr / bc1) as f32;
    let decay = (1.0 - lr * wd) as f32;
    let (b1f, b2f, eps, bc2s) = (b1 as f32, b2 as f32, cfg.adam_epsilon as f32, bc2_sqrt as f32);
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for i in 0..p.len() {
                let gi = g[i] * gs;
                p[i] *= decay;
                m[i] += (1.0 - b1f) * (gi - m[i]);
                v[i] = b2f * v[i] + (1.0 - b2f) * gi * gi;
                let denom = v[i].sqrt() / bc2s + eps;
                p[i] -= step_size * m[i] / denom;
            }
        });
}

/// torch SGD without momentum: `p ← p - η (g + λ p)`.
fn sgd(p: &mut [f32], g: &[f32], lr: f64, wd: f64, gs: f32) {
    let (lr, wd) = (lr as f32, wd as f32);
    p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(p, g)| {
        for i in 0..p.len() {
            let d = g[i] * gs + wd * p[i];
            p[i] -= lr * d;
        }
    });
}

/// The factored second moment of Adafactor (HF `_approx_sq_grad`) and the unscaled update `u` for a
/// `[rows, cols]` gradient.
fn adafactor_factored(g: &[f32], row: &mut [f32], col: &mut [f32], cols: usize, rho: f64, gs: f32) -> Vec<f32> {
    let rows = row.len();
    let (rho, one_minus) = (rho as f32, (1.0 - rho) as f32);
    let sq: Vec<f32> = g.par_iter().map(|&x| (x * gs) * (x * gs) + 1e-30).collect();
    let row_mean: Vec<f32> = sq.par_chunks(cols).map(|r| r.iter().sum::<f32>() / cols as f32).collect();
    let mut col_sum = vec![0f32; cols];
    for r in sq.chunks(cols) {
        for (c, &x) in col_sum.iter_mut().zip(r) {
            *c += x;
        }
    }
    for (ri, m) in row.iter_mut().zip(&row_mean) {
        *ri = rho * *ri + one_minus * m;
    }
    for (ci, s) in col.iter_mut().zip(&col_sum) {
        *ci = rho * *ci + one_minus * (s / rows as f32);
    }
    let row_avg = row.iter().sum::<f32>() / rows as f32;
    let r_factor: Vec<f32> = row.iter().map(|&r| 1.0 / (r / row_avg).sqrt()).collect();
    let c_factor: Vec<f32> = col.iter().map(|&c| 1.0 / c.sqrt()).collect();
    let mut u = vec![0f32; g.len()];
    u.par_chunks_mut(cols).zip(g.par_chunks(cols)).zip(r_factor.par_iter()).for_each(|((u, g), &rf)| {
        for ((ui, &gi), &cf) in u.iter_mut().zip(g).zip(&c_factor) {
            *ui = rf * cf * gi * gs;
        }
    });
    u
}

/// `u ← u / max(1, rms(u))`, `p ← p - η λ p - η u` (HF Adafactor's clip_threshold 1 and update order).
fn adafactor_apply(p: &mut [f32], u: &mut [f32], lr: f64, wd: f64) {
    let ms: f64 = u.par_iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / u.len().max(1) as f64;
    let clip = (ms.sqrt()).max(1.0) as f32;
    let (lr, wd) = (lr as f32, wd as f32);
    p.par_chunks_mut(CHUNK).zip(u.par_chunks(CHUNK)).for_each(|(p, u)| {
        for i in 0..p.len() {
            if wd != 0.0 {
                p[i] += p[i] * (-wd * lr);
            }
            p[i] -= (u[i] / clip) * lr;
        }
    });
}

/// The global L2 norm of the gradients (in f64) and HF's clipping coefficient for `max_grad_norm`:
/// `min(1, max_norm / (norm + 1e-6))` (torch `clip_grad_norm_`), or 1 when `max_grad_norm <= 0`.
pub fn grad_norm_and_clip(params: &[(String, Var)], max_grad_norm: f64) -> Result<(f64, f64)> {
    let mut sq = 0.0f64;
    for (_, v) in params {
        if let Some(g) = v.grad() {
            let g = g.to_dtype(DType::F32)?.to_vec::<f32>()?;
            sq += g.par_iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
        }
    }
    let norm = sq.sqrt();
    let coef = if max_grad_norm > 0.0 { (max_grad_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };
    Ok((norm, coef))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_decay_names() {
        assert!(hf_decays("model.layers.0.self_attn.q_proj.weight"));
        assert!(hf_decays("model.embed_tokens.weight"));
        assert!(!hf_decays("model.layers.0.input_layernorm.weight"));
        assert!(!hf_decays("model.layers.0.post_attention_layernorm.weight"));
        assert!(!hf_decays("model.norm.weight"));
        assert!(!hf_decays("model.layers.0.self_attn.q_proj.bias"));
        assert!(!hf_decays("model.layers.0.q_norm.weight"));
        assert!(hf_decays("model.layers.0.self_attn.q_proj.lora_A.weight"));
    }
}

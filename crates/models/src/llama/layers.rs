//! The building blocks of the decoder over autograd: a linear projection and the token embedding.

use crate::Result;
use ferrotune_autograd::Var;
use ferrotune_tensor::{DType, Tensor};

/// `y = x W^T + b` with an HF-layout weight `W [out, in]` and optional bias `b [out]`.
///
/// This is the one place every projection (q/k/v/o, gate/up/down) goes through, so adapters attach here: a LoRA
/// branch becomes one more optional field and one more term, `y = x W^T + b + s (x A^T) B^T`, without touching
/// the model. The weight keeps its stored dtype (f32, bf16, f16, f64); the product is computed in the input's
/// dtype (f32 activations read a bf16 weight in place, the GEMM widens while packing).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
    /// A LoRA branch (PEFT's `lora.Linear`), when one is attached.
    pub lora: Option<LoraAdapter>,
}

/// A LoRA branch on a [`Linear`], exactly PEFT's `lora.Linear` with `fan_in_fan_out=False`:
///
/// ```text
/// y = x W^T (+ b) + scaling * ((dropout(x) A^T) B^T)      A [r, in], B [out, r]
/// ```
///
/// `scaling` is `lora_alpha / r` (or `lora_alpha / sqrt(r)` with rsLoRA). Gradients come from the ops the
/// branch is made of (matmul, dropout, scale): with `G = dL/dy` and `x' = dropout(x)`,
/// `dB = scaling * G^T (x' A^T)`, `dA = scaling * (G B)^T x'`, and `dx` gains `scaling * mask ⊙ (G B) A / (1-p)`;
/// a frozen `W` (a `Var::constant`) gets no weight-gradient GEMM, only `dx += G W`.
///
/// `A` and `B` are f32 (f64 in an f64 model) whatever `W`'s dtype, as LLaMA-Factory upcasts trainable
/// parameters. Dropout draws its mask from `mix64(step_seed ^ dropout_salt)`, so each module gets its own mask
/// and a step can be replayed exactly (backward regenerates the mask from the seed).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// `lora_A.weight [r, in]`.
    pub a: Var,
    /// `lora_B.weight [out, r]`.
    pub b: Var,
    pub scaling: f64,
    /// `lora_dropout` probability (0 = identity).
    pub dropout: f64,
    /// Makes this module's dropout mask differ from every other module's in the same step.
    pub dropout_salt: u64,
}

impl LoraAdapter {
    pub fn rank(&self) -> usize {
        self.a.shape()[0]
    }

    /// `scaling * B A` as a `[out, in]` tensor in `dtype` (what merging adds to `W`).
    pub fn delta_weight(&self, dtype: DType) -> Result<Tensor> {
        let (a, b) = (self.a.value(), self.b.value());
        let wide = if a.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
        let ba = b.to_dtype(wide)?.matmul(&a.to_dtype(wide)?)?.scale(self.scaling)?;
        Ok(ba.to_dtype(dtype)?)
    }
}

impl Linear {
    pub fn new(weight: Var, bias: Option<Var>) -> Linear {
        Linear { weight, bias, lora: None }
    }

    /// `x [N, in] -> [N, out]` (a LoRA branch, if attached, runs without dropout: evaluation).
    pub fn forward(&self, x: &Var) -> Result<Var> {
        self.forward_with_dropout(x, None)
    }

    /// `x [N, in] -> [N, out]`; `dropout_seed` (a training step's seed) turns on the LoRA branch's dropout.
    pub fn forward_with_dropout(&self, x: &Var, dropout_seed: Option<u64>) -> Result<Var> {
        let mut y = x.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.add(&in_dtype(b, y.value().dtype())?)?;
        }
        if self.lora.is_none() {
            return Ok(y);
        }
        let dtype = y.value().dtype();
        Ok(y.add(&self.lora_branch(x, dropout_seed, dtype)?)?)
    }

    /// The LoRA term `scaling * (dropout(x) Aᵀ) Bᵀ` (call only with a branch attached).
    fn lora_branch(&self, x: &Var, dropout_seed: Option<u64>, dtype: DType) -> Result<Var> {
        let Some(lora) = &self.lora else { return Err(crate::Error::msg("lora_branch: no LoRA branch attached")) };
        let dropped = match dropout_seed {
            Some(seed) if lora.dropout > 0.0 => x.dropout(lora.dropout, ferrotune_tensor::rng::mix64(seed ^ lora.dropout_salt))?,
            _ => x.clone(),
        };
        // `scaling` multiplies the rank-r intermediate `[N, r]` rather than the `[N, out]` product: the same
        // math for r times fewer multiplications (and one pass over the output fewer).
        let down = dropped.matmul(&in_dtype(&lora.a, dtype)?.t()?)?.scale(lora.scaling)?;
        Ok(down.matmul(&in_dtype(&lora.b, dtype)?.t()?)?)
    }

    /// [`Linear::forward_with_dropout`]'s graph without its value, for a backward pass that re-runs a forward
    /// only to backpropagate (activation checkpointing). The base product `x Wᵀ` is skipped (its node holds a
    /// zero view that takes no memory) but backpropagates exactly as the matmul it stands for: `dx = G W`,
    /// `dW = (xᵀ G)ᵀ` when `W` trains; bias and LoRA branch are built as usual. Only for outputs whose value
    /// nothing reads: the returned value is wrong on purpose.
    pub fn forward_without_value(&self, x: &Var, dropout_seed: Option<u64>) -> Result<Var> {
        let wt = self.weight.t()?;
        let (xv, wtv) = (x.value().clone(), wt.value().clone());
        let (rx, rw) = (x.requires_grad(), wt.requires_grad());
        let dtype = xv.dtype();
        let placeholder = Tensor::zeros(&[1, 1], dtype, xv.device())?.broadcast_as(&[x.shape()[0], self.out_features()])?;
        // The backward of `Var::matmul` for a 2-D product, term for term, so the gradients are bit-identical.
        let mut y = Var::from_fn(placeholder, &[x, &wt], "matmul(value skipped)", move |g| {
            let gx = if rx { Some(g.matmul(&wtv.t()?)?.to_dtype(xv.dtype())?) } else { None };
            let gw = if rw { Some(xv.t()?.matmul(g)?.to_dtype(wtv.dtype())?) } else { None };
            Ok(vec![gx, gw])
        });
        if let Some(b) = &self.bias {
            y = y.add(&in_dtype(b, dtype)?)?;
        }
        match &self.lora {
            None => Ok(y),
            Some(_) => Ok(y.add(&self.lora_branch(x, dropout_seed, dtype)?)?),
        }
    }

    /// Fold the LoRA branch into the weight (`W += scaling B A`, PEFT's `merge_and_unload`) and drop it. The
    /// merged weight keeps `W`'s dtype and trainability.
    pub fn merge_lora(&mut self) -> Result<()> {
        let Some(lora) = self.lora.take() else { return Ok(()) };
        let w = self.weight.value();
        let merged = w.add(&lora.delta_weight(w.dtype())?)?;
        self.weight = if self.weight.requires_grad() { Var::param(merged) } else { Var::constant(merged) };
        Ok(())
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }
}

/// `v` cast to `dtype` (a differentiable cast: the gradient goes back in `v`'s dtype), or `v` itself.
pub(crate) fn in_dtype(v: &Var, dtype: DType) -> Result<Var> {
    if v.value().dtype() == dtype {
        Ok(v.clone())
    } else {
        Ok(v.to_dtype(dtype)?)
    }
}

/// Rows of `table [vocab, hidden]` at `ids [N]`, in `dtype`.
///
/// HF builds the embedding as `nn.Embedding(vocab, hidden, padding_idx=pad_token_id)`, and torch gives the
/// `padding_idx` row **no gradient from the lookup** (its value is still looked up). To train exactly as HF
/// does, occurrences of `padding_idx` contribute nothing to the table's gradient here either; a tied lm_head
/// still sends that row its output-side gradient.
pub(crate) fn embedding(table: &Var, tokens: &[u32], ids: &Tensor, padding_idx: Option<u32>, dtype: DType) -> Result<Var> {
    let rows = match padding_idx {
        Some(pad) if table.requires_grad() && tokens.contains(&pad) => {
            let vocab = table.shape()[0];
            let keep: Vec<f64> = tokens.iter().map(|&t| if t == pad { 0.0 } else { 1.0 }).collect();
            let keep = Tensor::from_vec(keep, &[tokens.len(), 1])?.to_dtype(table.value().dtype())?.to_device(table.value().device())?;
            let ids_saved = ids.clone();
            Var::from_fn(table.value().index_select(ids)?, &[table], "embedding(padding_idx)", move |g| {
                Ok(vec![Some(g.mul(&keep)?.index_add_rows(&ids_saved, vocab)?)])
            })
        }
        _ => table.embedding(ids)?,
    };
    in_dtype(&rows, dtype)
}

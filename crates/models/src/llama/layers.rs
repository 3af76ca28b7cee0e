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
}

impl Linear {
    pub fn new(weight: Var, bias: Option<Var>) -> Linear {
        Linear { weight, bias }
    }

    /// `x [N, in] -> [N, out]`.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let y = x.matmul(&self.weight.t()?)?;
        match &self.bias {
            None => Ok(y),
            Some(b) => Ok(y.add(&in_dtype(b, y.value().dtype())?)?),
        }
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
            let keep = Tensor::from_vec(keep, &[tokens.len(), 1])?.to_dtype(table.value().dtype())?;
            let ids_saved = ids.clone();
            Var::from_fn(table.value().index_select(ids)?, &[table], "embedding(padding_idx)", move |g| {
                Ok(vec![Some(g.mul(&keep)?.index_add_rows(&ids_saved, vocab)?)])
            })
        }
        _ => table.embedding(ids)?,
    };
    in_dtype(&rows, dtype)
}

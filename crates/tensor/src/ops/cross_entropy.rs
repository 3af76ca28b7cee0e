//! Cross-entropy with `ignore_index`, and fused linear + cross-entropy (the lm_head and the loss in one kernel,
//! Liger's FLCE), forward and backward. The math is in `cpu::kernels::cross_entropy`.

use crate::cpu::gemm::MatRef;
use crate::cpu::kernels::cross_entropy::{
    cross_entropy_backward as ce_backward_kernel, cross_entropy_forward as ce_forward_kernel, linear_cross_entropy_fused,
    LinearCrossEntropyBlocks, RowMajor, CROSS_ENTROPY_VOCAB_CHUNK,
};
use crate::{bf16, f16, DType, Element, Error, Result, Storage, Tensor};

/// Run `$body` with `$rows` bound to a kernel view of `$logits` in its storage type and `$F` to the compute
/// type (f64 for f64, f32 for the rest).
macro_rules! with_logits {
    ($op:expr, $logits:expr, ($rows:ident, $F:ident) => $body:expr) => {{
        let logits: &Tensor = $logits;
        match logits.dtype() {
            DType::F32 => {
                type $F = f32;
                let $rows = row_major::<f32>($op, logits)?;
                $body
            }
            DType::F64 => {
                type $F = f64;
                let $rows = row_major::<f64>($op, logits)?;
                $body
            }
            DType::BF16 => {
                type $F = f32;
                let $rows = row_major::<bf16>($op, logits)?;
                $body
            }
            DType::F16 => {
                type $F = f32;
                let $rows = row_major::<f16>($op, logits)?;
                $body
            }
            dtype => return Err(Error::UnsupportedDType { op: $op, dtype }),
        }
    }};
}

/// How per-row losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// Average over the rows whose target is not `ignore_index`.
    #[default]
    Mean,
    Sum,
}

/// PyTorch's and LLaMA-Factory's label for "no loss here" (prompt tokens, padding).
pub const IGNORE_INDEX: i64 = -100;

/// The logits memory the fused linear + cross-entropy may use for one block of rows (`rows * V` compute
/// elements); see [`linear_cross_entropy`].
pub const LINEAR_CROSS_ENTROPY_LOGITS_BYTES: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct CrossEntropyOutput {
    /// Scalar, f32 (f64 for f64 logits).
    pub loss: Tensor,
    /// `[N]` log-sum-exp of each row (every row, ignored ones included), in the same dtype as `loss`.
    pub lse: Tensor,
    /// Rows whose target is not `ignore_index`.
    pub n_valid: usize,
}

/// `loss = reduce_n (lse_n - logits[n, y_n])` over rows with `y_n != ignore_index`, for `logits [N, V]` of any
/// float dtype (bf16/f16 read in place and computed in f32) and `targets [N]` i32/i64.
///
/// The log-sum-exp is computed online over 4096-column chunks, so no probability matrix is made. Unlike
/// PyTorch, a `Mean` with no valid row returns 0, not NaN (0/0): a micro-batch of prompt-only rows should add
/// nothing to the loss, not poison it. Targets outside `[0, V)` other than `ignore_index` are an error.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, ignore_index: i64, reduction: Reduction) -> Result<CrossEntropyOutput> {
    const OP: &str = "cross_entropy";
    let logits = logits_operand(OP, logits)?;
    let targets = targets_vec(OP, targets, logits.shape()[0])?;
    let compute = logits.dtype().compute_dtype();
    let (lse, loss_sum, n_valid) = with_logits!(OP, &logits, (rows, F) => {
        let (lse, loss_sum, n_valid) = ce_forward_kernel::<_, F>(rows, &targets, ignore_index, CROSS_ENTROPY_VOCAB_CHUNK)?;
        (Tensor::from_vec(lse, &[logits.shape()[0]])?, loss_sum, n_valid)
    });
    let loss = match reduction {
        Reduction::Sum => loss_sum,
        Reduction::Mean if n_valid == 0 => 0.0,
        Reduction::Mean => loss_sum / n_valid as f64,
    };
    Ok(CrossEntropyOutput { loss: Tensor::scalar(loss).to_dtype(compute)?, lse, n_valid })
}

/// `grad_logits [N, V]` in the logits dtype: `w * (softmax(logits_n) - onehot(y_n))` on valid rows, 0 on ignored
/// ones, with `w = grad_loss / n_valid` (`Mean`; 0 when `n_valid` is 0, matching the forward's constant 0) or
/// `w = grad_loss` (`Sum`). `lse` and `n_valid` come from [`cross_entropy`]; `n_valid` is taken as given, so a
/// caller normalising over several micro-batches may pass its own count.
pub fn cross_entropy_backward(
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    ignore_index: i64,
    reduction: Reduction,
    n_valid: usize,
    grad_loss: f64,
) -> Result<Tensor> {
    const OP: &str = "cross_entropy_backward";
    let logits = logits_operand(OP, logits)?;
    let shape = logits.shape().to_vec();
    let targets = targets_vec(OP, targets, shape[0])?;
    if let Storage::Cuda(_) = lse.storage() {
        return crate::cuda::unavailable();
    }
    if lse.shape() != [shape[0]] || !lse.dtype().is_float() {
        return Err(Error::BadShape { op: OP, msg: format!("lse must be [N] = [{}] floats, got {:?} {}", shape[0], lse.shape(), lse.dtype()) });
    }
    let row_weight = match reduction {
        Reduction::Sum => grad_loss,
        Reduction::Mean if n_valid == 0 => 0.0,
        Reduction::Mean => grad_loss / n_valid as f64,
    };
    let lse = lse.to_dtype(logits.dtype().compute_dtype())?.contiguous()?;
    with_logits!(OP, &logits, (rows, F) => {
        let grad = ce_backward_kernel::<_, F>(rows, &targets, lse.cpu_slice::<F>()?, ignore_index, F::from_f64(row_weight))?;
        Tensor::from_vec(grad, &shape)
    })
}

#[derive(Debug, Clone)]
pub struct LinearCrossEntropyOutput {
    /// Scalar, f32 (f64 for f64 inputs).
    pub loss: Tensor,
    pub n_valid: usize,
    /// `[N, H]` in hidden's dtype, for a unit upstream gradient.
    pub grad_hidden: Tensor,
    /// `[V, H]` in weight's dtype, for a unit upstream gradient; `None` unless `compute_grad_weight`.
    pub grad_weight: Option<Tensor>,
}

/// `cross_entropy(hidden @ weight^T, targets)` and its gradients in one pass, without ever making the `[N, V]`
/// logits: `hidden [N, H]`, `weight [V, H]` (the lm_head or tied embedding as HF stores it), `targets [N]`.
/// The gradients are for `grad_loss = 1`; the caller scales them by the upstream gradient. Pass
/// `compute_grad_weight = false` for a frozen lm_head (LoRA) to skip that GEMM and its `[V, H]` buffer.
///
/// Compute is f32 (f64 when both inputs are f64); a bf16/f16 weight is read in place by the GEMM. Unlike an
/// unfused bf16 lm_head, the logits are never rounded to bf16. Mean over no valid rows is 0 (see
/// [`cross_entropy`]).
///
/// Peak memory besides inputs and outputs: a logits strip of at most [`LINEAR_CROSS_ENTROPY_LOGITS_BYTES`]
/// (64 MiB; at least 16 rows' worth when the vocab is huge), two `[rows, H]` buffers, an f32 copy of hidden if
/// it is bf16/f16, and the f32 gradients before they are rounded to the input dtypes. Rows whose target is
/// `ignore_index` cost nothing: their logits are never computed and their gradient is zero.
pub fn linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    ignore_index: i64,
    reduction: Reduction,
    compute_grad_weight: bool,
) -> Result<LinearCrossEntropyOutput> {
    const OP: &str = "linear_cross_entropy";
    for (name, x) in [("hidden", hidden), ("weight", weight)] {
        if let Storage::Cuda(_) = x.storage() {
            return crate::cuda::unavailable();
        }
        if !x.dtype().is_float() {
            return Err(Error::UnsupportedDType { op: OP, dtype: x.dtype() });
        }
        if x.rank() != 2 {
            return Err(Error::BadShape { op: OP, msg: format!("{name} must be 2-D, got {:?}", x.shape()) });
        }
    }
    let (n, h, v) = (hidden.shape()[0], hidden.shape()[1], weight.shape()[0]);
    if weight.shape()[1] != h {
        return Err(Error::ShapeMismatch { op: OP, lhs: hidden.shape().to_vec(), rhs: weight.shape().to_vec() });
    }
    if v == 0 {
        return Err(Error::BadShape { op: OP, msg: "weight has no rows (vocab size 0)".into() });
    }
    let compute = hidden.dtype().compute_dtype();
    if compute != weight.dtype().compute_dtype() {
        return Err(Error::DTypeMismatch { op: OP, lhs: hidden.dtype(), rhs: weight.dtype() });
    }
    let targets = targets_vec(OP, targets, n)?;
    let counted_valid = targets.iter().filter(|&&t| t != ignore_index).count();
    let row_weight = match reduction {
        Reduction::Mean if counted_valid > 0 => 1.0 / counted_valid as f64,
        Reduction::Mean => 0.0,
        Reduction::Sum => 1.0,
    };
    let hidden_c = hidden.to_dtype(compute)?;
    let blocks = LinearCrossEntropyBlocks {
        rows: (LINEAR_CROSS_ENTROPY_LOGITS_BYTES / (v * compute.size_in_bytes())).max(16),
        vocab_chunk: vocab_chunk_for(v),
    };
    macro_rules! run {
        ($F:ty, $W:ty) => {{
            let (x, w) = (matrix::<$F>(OP, &hidden_c)?, matrix::<$W>(OP, weight)?);
            let r = linear_cross_entropy_fused::<$F, $W>(x, w, &targets, ignore_index, row_weight as $F, compute_grad_weight, blocks)?;
            let grad_weight = r.grad_weight.map(|g| Tensor::from_vec(g, &[v, h])).transpose()?;
            (r.loss_sum, r.n_valid, Tensor::from_vec(r.grad_hidden, &[n, h])?, grad_weight)
        }};
    }
    let (loss_sum, n_valid, grad_hidden, grad_weight) = match (compute, weight.dtype()) {
        (DType::F64, _) => run!(f64, f64),
        (_, DType::F32) => run!(f32, f32),
        (_, DType::BF16) => run!(f32, bf16),
        (_, DType::F16) => run!(f32, f16),
        (_, dtype) => return Err(Error::UnsupportedDType { op: OP, dtype }),
    };
    let loss = match reduction {
        Reduction::Mean if n_valid > 0 => loss_sum / n_valid as f64,
        Reduction::Mean => 0.0,
        Reduction::Sum => loss_sum,
    };
    Ok(LinearCrossEntropyOutput {
        loss: Tensor::scalar(loss).to_dtype(compute)?,
        n_valid,
        grad_hidden: grad_hidden.to_dtype(hidden.dtype())?,
        grad_weight: grad_weight.map(|g| g.to_dtype(weight.dtype())).transpose()?,
    })
}

/// Vocab columns per task of the fused kernel: 4096 (big enough GEMMs), fewer when that would leave threads
/// idle, never under 256.
fn vocab_chunk_for(vocab: usize) -> usize {
    let per_task = vocab.div_ceil(2 * rayon::current_num_threads());
    per_task.next_multiple_of(64).clamp(256, CROSS_ENTROPY_VOCAB_CHUNK)
}

/// A 2-D CPU tensor of element type `T` as a GEMM operand (any strides).
fn matrix<'a, T: Element>(op: &'static str, x: &'a Tensor) -> Result<MatRef<'a, T>> {
    let cpu = x.storage().as_cpu().ok_or(Error::DeviceMismatch { op, lhs: x.device(), rhs: crate::Device::Cpu })?;
    let l = x.layout();
    MatRef::new(cpu.as_slice::<T>()?, l.offset(), x.shape()[0], x.shape()[1], l.strides()[0], l.strides()[1])
}

/// `logits` as a 2-D CPU float tensor whose rows are unit-stride (a view when it already is, else a copy).
fn logits_operand(op: &'static str, logits: &Tensor) -> Result<Tensor> {
    if let Storage::Cuda(_) = logits.storage() {
        return crate::cuda::unavailable();
    }
    if !logits.dtype().is_float() {
        return Err(Error::UnsupportedDType { op, dtype: logits.dtype() });
    }
    if logits.rank() != 2 {
        return Err(Error::BadShape { op, msg: format!("logits must be [N, V] (reshape first), got {:?}", logits.shape()) });
    }
    if logits.shape()[1] <= 1 || logits.layout().strides()[1] == 1 {
        Ok(logits.clone())
    } else {
        logits.contiguous()
    }
}

/// A kernel view of 2-D logits prepared by [`logits_operand`].
fn row_major<'a, T: Element>(op: &'static str, logits: &'a Tensor) -> Result<RowMajor<'a, T>> {
    let cpu = logits.storage().as_cpu().ok_or(Error::DeviceMismatch { op, lhs: logits.device(), rhs: crate::Device::Cpu })?;
    let (l, s) = (logits.layout(), logits.shape());
    RowMajor::new(cpu.as_slice::<T>()?, l.offset(), s[0], s[1], l.strides()[0])
}

/// `targets [n]` (i32 or i64) as i64.
fn targets_vec(op: &'static str, targets: &Tensor, n: usize) -> Result<Vec<i64>> {
    if let Storage::Cuda(_) = targets.storage() {
        return crate::cuda::unavailable();
    }
    if !matches!(targets.dtype(), DType::I32 | DType::I64) {
        return Err(Error::Msg(format!("{op}: targets must be i32 or i64 class indices, got {}", targets.dtype())));
    }
    if targets.shape() != [n] {
        return Err(Error::BadShape { op, msg: format!("targets must be [N] = [{n}], got {:?}", targets.shape()) });
    }
    targets.to_dtype(DType::I64)?.to_vec::<i64>()
}

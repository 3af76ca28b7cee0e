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
    if let Storage::Cuda(_) = logits.storage() {
        let (n, vocab) = device_logits_shape(OP, logits)?;
        let targets = checked_targets(OP, targets, n, vocab, ignore_index)?;
        let n_valid = targets.iter().filter(|&&t| t != ignore_index).count();
        let (lse, row_losses) = crate::cuda::fused::cross_entropy_rows(logits, &targets, ignore_index)?;
        let loss = row_losses.sum_all()?;
        let loss = match reduction {
            Reduction::Sum => loss,
            Reduction::Mean if n_valid == 0 => loss.zeros_like()?,
            Reduction::Mean => loss.scale(1.0 / n_valid as f64)?,
        };
        return Ok(CrossEntropyOutput { loss, lse, n_valid });
    }
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
    let row_weight = match reduction {
        Reduction::Sum => grad_loss,
        Reduction::Mean if n_valid == 0 => 0.0,
        Reduction::Mean => grad_loss / n_valid as f64,
    };
    if let Storage::Cuda(_) = logits.storage() {
        let (n, vocab) = device_logits_shape(OP, logits)?;
        let targets = checked_targets(OP, targets, n, vocab, ignore_index)?;
        check_lse(OP, lse, n)?;
        return crate::cuda::fused::cross_entropy_grad(logits, &targets, lse, ignore_index, row_weight);
    }
    let logits = logits_operand(OP, logits)?;
    let shape = logits.shape().to_vec();
    let targets = targets_vec(OP, targets, shape[0])?;
    check_lse(OP, lse, shape[0])?;
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
    if let Storage::Cuda(_) = hidden.storage() {
        let targets = checked_targets(OP, targets, n, v, ignore_index)?;
        return linear_cross_entropy_on_device(hidden, weight, &targets, ignore_index, reduction, compute_grad_weight);
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

/// [`linear_cross_entropy`] on the CUDA backend, unfused: the `[N, V]` f32 logits are made by the GEMM kernel,
/// the cross-entropy kernels give the loss and `dL/dlogits`, and two more GEMMs the gradients. Same math and
/// compute dtype (f32) as the CPU's fused kernel; the logits strip is the whole matrix here (a fused device
/// kernel is future work), so device memory grows with `N * V`.
fn linear_cross_entropy_on_device(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[i64],
    ignore_index: i64,
    reduction: Reduction,
    compute_grad_weight: bool,
) -> Result<LinearCrossEntropyOutput> {
    let compute = hidden.dtype().compute_dtype();
    let (hidden_c, weight_c) = (hidden.to_dtype(compute)?, weight.to_dtype(compute)?);
    let logits = hidden_c.matmul(&weight_c.t()?)?;
    let n_valid = targets.iter().filter(|&&t| t != ignore_index).count();
    let (lse, row_losses) = crate::cuda::fused::cross_entropy_rows(&logits, targets, ignore_index)?;
    let row_weight = match reduction {
        Reduction::Mean if n_valid > 0 => 1.0 / n_valid as f64,
        Reduction::Mean => 0.0,
        Reduction::Sum => 1.0,
    };
    let loss = row_losses.sum_all()?.scale(row_weight)?;
    let grad_logits = crate::cuda::fused::cross_entropy_grad(&logits, targets, &lse, ignore_index, row_weight)?;
    let grad_hidden = grad_logits.matmul(&weight_c)?.to_dtype(hidden.dtype())?;
    let grad_weight = if compute_grad_weight { Some(grad_logits.t()?.matmul(&hidden_c)?.to_dtype(weight.dtype())?) } else { None };
    Ok(LinearCrossEntropyOutput { loss, n_valid, grad_hidden, grad_weight })
}

/// `[N, V]` float logits on the device: `(N, V)`.
fn device_logits_shape(op: &'static str, logits: &Tensor) -> Result<(usize, usize)> {
    if !logits.dtype().is_float() {
        return Err(Error::UnsupportedDType { op, dtype: logits.dtype() });
    }
    match *logits.shape() {
        [n, v] => Ok((n, v)),
        _ => Err(Error::BadShape { op, msg: format!("logits must be [N, V] (reshape first), got {:?}", logits.shape()) }),
    }
}

/// [`targets_vec`], each `ignore_index` or a class in `[0, vocab)` (the CPU kernels' `IndexOutOfRange` otherwise).
fn checked_targets(op: &'static str, targets: &Tensor, n: usize, vocab: usize, ignore_index: i64) -> Result<Vec<i64>> {
    let targets = targets_vec(op, targets, n)?;
    if let Some(&t) = targets.iter().find(|&&t| t != ignore_index && !(0..vocab as i64).contains(&t)) {
        return Err(Error::IndexOutOfRange { op, index: t, size: vocab });
    }
    Ok(targets)
}

fn check_lse(op: &'static str, lse: &Tensor, n: usize) -> Result<()> {
    if lse.shape() != [n] || !lse.dtype().is_float() {
        return Err(Error::BadShape { op, msg: format!("lse must be [N] = [{n}] floats, got {:?} {}", lse.shape(), lse.dtype()) });
    }
    Ok(())
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
        return crate::cuda::unavailable(op);
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

/// `targets [n]` (i32 or i64, read back to the host when on a GPU) as i64.
fn targets_vec(op: &'static str, targets: &Tensor, n: usize) -> Result<Vec<i64>> {
    if !matches!(targets.dtype(), DType::I32 | DType::I64) {
        return Err(Error::Msg(format!("{op}: targets must be i32 or i64 class indices, got {}", targets.dtype())));
    }
    if targets.shape() != [n] {
        return Err(Error::BadShape { op, msg: format!("targets must be [N] = [{n}], got {:?}", targets.shape()) });
    }
    targets.to_device(crate::Device::Cpu)?.to_dtype(DType::I64)?.to_vec::<i64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::cross_entropy::{cross_entropy_forward as forward_kernel, RowMajor};
    use crate::Device;

    const OP_TEST: &str = "test";

    /// Plain per-row log-softmax in f64: (loss per row or None, softmax rows).
    fn reference(logits: &[f64], vocab: usize, targets: &[i64]) -> (Vec<Option<f64>>, Vec<f64>) {
        let mut losses = vec![];
        let mut probs = vec![];
        for (row, &y) in logits.chunks(vocab).zip(targets) {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            losses.push((y != IGNORE_INDEX).then(|| lse - row[y as usize]));
            probs.extend(row.iter().map(|x| (x - lse).exp()));
        }
        (losses, probs)
    }

    /// Every third row ignored, the rest spread over the vocab.
    fn targets(n: usize, vocab: usize) -> Vec<i64> {
        (0..n).map(|i| if i % 3 == 1 { IGNORE_INDEX } else { ((i * 7919) % vocab) as i64 }).collect()
    }

    fn expected_grad(probs: &[f64], vocab: usize, targets: &[i64], weight: f64) -> Vec<f64> {
        let mut g: Vec<f64> = probs.to_vec();
        for (r, row) in g.chunks_mut(vocab).enumerate() {
            if targets[r] == IGNORE_INDEX {
                row.fill(0.0);
            } else {
                row[targets[r] as usize] -= 1.0;
                row.iter_mut().for_each(|x| *x *= weight);
            }
        }
        g
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn cross_entropy_matches_log_softmax() {
        // V = 5000 crosses the 4096-column online step; logits of scale 30 stress the running max.
        for (n, vocab, scale) in [(7, 5000, 30.0), (12, 33, 1.0)] {
            let logits = Tensor::randn(1, &[n, vocab], 0.0, scale, DType::F64).unwrap();
            let y = targets(n, vocab);
            let targets_t = Tensor::from_vec(y.clone(), &[n]).unwrap();
            let (losses, probs) = reference(&logits.to_vec::<f64>().unwrap(), vocab, &y);
            let valid: Vec<f64> = losses.iter().flatten().copied().collect();
            let mean = valid.iter().sum::<f64>() / valid.len() as f64;
            for (reduction, want, weight) in [(Reduction::Mean, mean, 0.5 / valid.len() as f64), (Reduction::Sum, valid.iter().sum(), 0.5)] {
                let out = cross_entropy(&logits, &targets_t, IGNORE_INDEX, reduction).unwrap();
                assert_eq!(out.n_valid, valid.len());
                assert!((out.loss.to_scalar::<f64>().unwrap() - want).abs() < 1e-10 * want.abs().max(1.0));
                let grad = cross_entropy_backward(&logits, &targets_t, &out.lse, IGNORE_INDEX, reduction, out.n_valid, 0.5).unwrap();
                assert!(max_diff(&grad.to_vec::<f64>().unwrap(), &expected_grad(&probs, vocab, &y, weight)) < 1e-14);
                // f32, and i32 targets.
                let l32 = logits.to_dtype(DType::F32).unwrap();
                let t32 = targets_t.to_dtype(DType::I32).unwrap();
                let out32 = cross_entropy(&l32, &t32, IGNORE_INDEX, reduction).unwrap();
                assert_eq!(out32.loss.dtype(), DType::F32);
                assert!((out32.loss.to_vec_f64().unwrap()[0] - want).abs() < 1e-5 * want.abs().max(1.0));
                let g32 = cross_entropy_backward(&l32, &t32, &out32.lse, IGNORE_INDEX, reduction, out32.n_valid, 0.5).unwrap();
                assert!(max_diff(&g32.to_vec_f64().unwrap(), &expected_grad(&probs, vocab, &y, weight)) < 1e-6);
            }
        }
    }

    #[test]
    fn online_steps_of_any_width_agree() {
        let (n, vocab) = (5, 50);
        let logits = Tensor::randn(2, &[n, vocab], 0.0, 20.0, DType::F64).unwrap().to_vec::<f64>().unwrap();
        let y = targets(n, vocab);
        let rows = RowMajor::new(&logits, 0, n, vocab, vocab).unwrap();
        let (whole, sum_whole, _) = forward_kernel::<f64, f64>(rows, &y, IGNORE_INDEX, vocab).unwrap();
        for step in [1, 7, 49] {
            let (lse, sum, _) = forward_kernel::<f64, f64>(rows, &y, IGNORE_INDEX, step).unwrap();
            assert!(max_diff(&lse, &whole) < 1e-12 && (sum - sum_whole).abs() < 1e-12, "step {step}");
        }
    }

    #[test]
    fn extreme_logits_stay_finite() {
        // A -inf logit (a masked token), huge spreads, and a row that is -inf except its target.
        let ninf = f32::NEG_INFINITY;
        let logits = Tensor::from_vec(vec![1000.0f32, -1000.0, 0.0, ninf, ninf, ninf, 5.0, ninf, 0.0, 0.0, -3e4, 3e4], &[3, 4]).unwrap();
        let y = Tensor::from_vec(vec![1i64, 2, 0], &[3]).unwrap();
        let out = cross_entropy(&logits, &y, IGNORE_INDEX, Reduction::Sum).unwrap();
        let loss = out.loss.to_scalar::<f32>().unwrap();
        assert!((loss - (2000.0 + 0.0 + 3e4)).abs() < 1e-1, "{loss}");
        let grad = cross_entropy_backward(&logits, &y, &out.lse, IGNORE_INDEX, Reduction::Sum, out.n_valid, 1.0).unwrap();
        assert!(grad.to_vec::<f32>().unwrap().iter().all(|g| g.is_finite()));
    }

    #[test]
    fn all_ignored_mean_is_zero_not_nan() {
        let logits = Tensor::randn(3, &[4, 10], 0.0, 1.0, DType::F32).unwrap();
        let y = Tensor::from_vec(vec![IGNORE_INDEX; 4], &[4]).unwrap();
        let out = cross_entropy(&logits, &y, IGNORE_INDEX, Reduction::Mean).unwrap();
        assert_eq!((out.loss.to_scalar::<f32>().unwrap(), out.n_valid), (0.0, 0));
        let grad = cross_entropy_backward(&logits, &y, &out.lse, IGNORE_INDEX, Reduction::Mean, 0, 1.0).unwrap();
        assert!(grad.to_vec::<f32>().unwrap().iter().all(|&g| g == 0.0));
        let hidden = Tensor::randn(4, &[4, 6], 0.0, 1.0, DType::F32).unwrap();
        let weight = Tensor::randn(5, &[10, 6], 0.0, 1.0, DType::F32).unwrap();
        let fused = linear_cross_entropy(&hidden, &weight, &y, IGNORE_INDEX, Reduction::Mean, true).unwrap();
        assert_eq!((fused.loss.to_scalar::<f32>().unwrap(), fused.n_valid), (0.0, 0));
        assert!(fused.grad_hidden.to_vec::<f32>().unwrap().iter().all(|&g| g == 0.0));
        assert!(fused.grad_weight.unwrap().to_vec::<f32>().unwrap().iter().all(|&g| g == 0.0));
    }

    #[test]
    fn bf16_logits_are_read_in_place_and_grads_come_back_bf16() {
        let logits = Tensor::randn(6, &[9, 300], 0.0, 3.0, DType::BF16).unwrap();
        let y = Tensor::from_vec(targets(9, 300), &[9]).unwrap();
        let out = cross_entropy(&logits, &y, IGNORE_INDEX, Reduction::Mean).unwrap();
        let wide = cross_entropy(&logits.to_dtype(DType::F64).unwrap(), &y, IGNORE_INDEX, Reduction::Mean).unwrap();
        assert_eq!(out.loss.dtype(), DType::F32);
        assert!((out.loss.to_vec_f64().unwrap()[0] - wide.loss.to_scalar::<f64>().unwrap()).abs() < 1e-5);
        let grad = cross_entropy_backward(&logits, &y, &out.lse, IGNORE_INDEX, Reduction::Mean, out.n_valid, 1.0).unwrap();
        assert_eq!(grad.dtype(), DType::BF16);
        let wide_grad = cross_entropy_backward(&logits.to_dtype(DType::F64).unwrap(), &y, &wide.lse, IGNORE_INDEX, Reduction::Mean, 6, 1.0).unwrap();
        // |grad| <= 1/6; one bf16 rounding is 2^-9 relative.
        assert!(grad.max_abs_diff(&wide_grad).unwrap() < 1.0 / 6.0 / 256.0);
    }

    #[test]
    fn strided_logits_need_no_copy_and_agree() {
        let big = Tensor::randn(8, &[6, 40], 0.0, 2.0, DType::F32).unwrap();
        let logits = big.narrow(1, 5, 30).unwrap();
        assert!(!logits.is_contiguous());
        let y = Tensor::from_vec(targets(6, 30), &[6]).unwrap();
        let a = cross_entropy(&logits, &y, IGNORE_INDEX, Reduction::Mean).unwrap();
        let b = cross_entropy(&logits.contiguous().unwrap(), &y, IGNORE_INDEX, Reduction::Mean).unwrap();
        assert_eq!(a.loss.to_scalar::<f32>().unwrap(), b.loss.to_scalar::<f32>().unwrap());
        let ga = cross_entropy_backward(&logits, &y, &a.lse, IGNORE_INDEX, Reduction::Mean, a.n_valid, 1.0).unwrap();
        let gb = cross_entropy_backward(&logits.contiguous().unwrap(), &y, &b.lse, IGNORE_INDEX, Reduction::Mean, b.n_valid, 1.0).unwrap();
        assert_eq!(ga.to_vec::<f32>().unwrap(), gb.to_vec::<f32>().unwrap());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let logits = Tensor::zeros(&[3, 5], DType::F32, Device::Cpu).unwrap();
        let t = |v: Vec<i64>| Tensor::from_vec(v, &[3]).unwrap();
        // Out-of-range target (not the ignore index), negative target, wrong count, float targets, 3-D logits.
        assert!(matches!(cross_entropy(&logits, &t(vec![0, 5, 1]), IGNORE_INDEX, Reduction::Mean), Err(Error::IndexOutOfRange { .. })));
        assert!(cross_entropy(&logits, &t(vec![0, -1, 1]), IGNORE_INDEX, Reduction::Mean).is_err());
        assert!(cross_entropy(&logits, &Tensor::from_vec(vec![0i64, 1], &[2]).unwrap(), IGNORE_INDEX, Reduction::Mean).is_err());
        assert!(cross_entropy(&logits, &t(vec![0, 1, 2]).to_dtype(DType::F32).unwrap(), IGNORE_INDEX, Reduction::Mean).is_err());
        assert!(cross_entropy(&logits.reshape(&[1, 3, 5]).unwrap(), &t(vec![0, 1, 2]), IGNORE_INDEX, Reduction::Mean).is_err());
        assert!(cross_entropy(&logits.to_dtype(DType::I32).unwrap(), &t(vec![0, 1, 2]), IGNORE_INDEX, Reduction::Mean).is_err());
        // A custom ignore index inside the vocab is honoured.
        let out = cross_entropy(&logits, &t(vec![0, 4, 4]), 4, Reduction::Sum).unwrap();
        assert_eq!(out.n_valid, 1);
        // Backward: lse of the wrong length, bad target.
        assert!(cross_entropy_backward(&logits, &t(vec![0, 1, 2]), &Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap(), IGNORE_INDEX, Reduction::Mean, 3, 1.0).is_err());
        assert!(cross_entropy_backward(&logits, &t(vec![0, 9, 2]), &out.lse, IGNORE_INDEX, Reduction::Mean, 3, 1.0).is_err());
        // Fused: shape and dtype mismatches, bad targets.
        let h = Tensor::zeros(&[3, 4], DType::F32, Device::Cpu).unwrap();
        let w = Tensor::zeros(&[5, 4], DType::F32, Device::Cpu).unwrap();
        assert!(linear_cross_entropy(&h, &Tensor::zeros(&[5, 3], DType::F32, Device::Cpu).unwrap(), &t(vec![0, 1, 2]), IGNORE_INDEX, Reduction::Mean, true).is_err());
        assert!(linear_cross_entropy(&h, &w.to_dtype(DType::F64).unwrap(), &t(vec![0, 1, 2]), IGNORE_INDEX, Reduction::Mean, true).is_err());
        assert!(linear_cross_entropy(&h, &w, &t(vec![0, 1, 7]), IGNORE_INDEX, Reduction::Mean, true).is_err());
        assert!(linear_cross_entropy(&h, &Tensor::zeros(&[0, 4], DType::F32, Device::Cpu).unwrap(), &t(vec![0, 1, 2]), IGNORE_INDEX, Reduction::Mean, true).is_err());
    }

    /// Unfused reference: logits = h W^T, then the plain formulas; returns (loss, grad_h, grad_w) in f64.
    fn unfused(h: &[f64], w: &[f64], n: usize, hd: usize, vocab: usize, y: &[i64], reduction: Reduction) -> (f64, Vec<f64>, Vec<f64>) {
        let logits: Vec<f64> =
            (0..n).flat_map(|r| (0..vocab).map(move |v| (0..hd).map(|j| h[r * hd + j] * w[v * hd + j]).sum::<f64>())).collect();
        let (losses, probs) = reference(&logits, vocab, y);
        let valid = losses.iter().flatten().count();
        let scale = if reduction == Reduction::Mean { 1.0 / valid as f64 } else { 1.0 };
        let loss = losses.iter().flatten().sum::<f64>() * scale;
        let g = expected_grad(&probs, vocab, y, scale);
        let mut gh = vec![0.0; n * hd];
        let mut gw = vec![0.0; vocab * hd];
        for r in 0..n {
            for v in 0..vocab {
                for j in 0..hd {
                    gh[r * hd + j] += g[r * vocab + v] * w[v * hd + j];
                    gw[v * hd + j] += g[r * vocab + v] * h[r * hd + j];
                }
            }
        }
        (loss, gh, gw)
    }

    #[test]
    fn fused_linear_cross_entropy_matches_unfused() {
        let (n, hd, vocab) = (37, 12, 700);
        let h = Tensor::randn(11, &[n, hd], 0.0, 1.0, DType::F64).unwrap();
        let w = Tensor::randn(12, &[vocab, hd], 0.0, 0.5, DType::F64).unwrap();
        let y = targets(n, vocab);
        let yt = Tensor::from_vec(y.clone(), &[n]).unwrap();
        let (hv, wv) = (h.to_vec::<f64>().unwrap(), w.to_vec::<f64>().unwrap());
        for reduction in [Reduction::Mean, Reduction::Sum] {
            let (loss, gh, gw) = unfused(&hv, &wv, n, hd, vocab, &y, reduction);
            let out = linear_cross_entropy(&h, &w, &yt, IGNORE_INDEX, reduction, true).unwrap();
            assert!((out.loss.to_scalar::<f64>().unwrap() - loss).abs() < 1e-12 * loss.abs());
            assert!(max_diff(&out.grad_hidden.to_vec::<f64>().unwrap(), &gh) < 1e-14);
            assert!(max_diff(&out.grad_weight.unwrap().to_vec::<f64>().unwrap(), &gw) < 1e-14);
            // Small blocks and chunks (several row blocks, a ragged last chunk) through the kernel directly.
            let blocks = LinearCrossEntropyBlocks { rows: 5, vocab_chunk: 64 };
            let row_weight = if reduction == Reduction::Mean { 1.0 / out.n_valid as f64 } else { 1.0 };
            let r = linear_cross_entropy_fused::<f64, f64>(
                matrix(OP_TEST, &h).unwrap(), matrix(OP_TEST, &w).unwrap(), &y, IGNORE_INDEX, row_weight, true, blocks,
            )
            .unwrap();
            assert!((r.loss_sum * row_weight - loss).abs() < 1e-12 * loss.abs());
            assert!(max_diff(&r.grad_hidden, &gh) < 1e-14);
            assert!(max_diff(&r.grad_weight.unwrap(), &gw) < 1e-14);
        }
        // f32, a transposed-view weight, and a frozen lm_head.
        let (loss, gh, gw) = unfused(&hv, &wv, n, hd, vocab, &y, Reduction::Mean);
        let w_t_view = w.to_dtype(DType::F32).unwrap().t().unwrap().contiguous().unwrap().t().unwrap();
        assert!(!w_t_view.is_contiguous());
        let out = linear_cross_entropy(&h.to_dtype(DType::F32).unwrap(), &w_t_view, &yt, IGNORE_INDEX, Reduction::Mean, true).unwrap();
        assert!((out.loss.to_vec_f64().unwrap()[0] - loss).abs() < 1e-5 * loss);
        assert!(max_diff(&out.grad_hidden.to_vec_f64().unwrap(), &gh) < 1e-6);
        assert!(max_diff(&out.grad_weight.unwrap().to_vec_f64().unwrap(), &gw) < 1e-6);
        let frozen = linear_cross_entropy(&h, &w, &yt, IGNORE_INDEX, Reduction::Mean, false).unwrap();
        assert!(frozen.grad_weight.is_none());
        assert!(max_diff(&frozen.grad_hidden.to_vec::<f64>().unwrap(), &gh) < 1e-14);
    }

    #[test]
    fn fused_linear_cross_entropy_bf16_weight_is_read_in_place() {
        let (n, hd, vocab) = (20, 16, 300);
        let h = Tensor::randn(21, &[n, hd], 0.0, 1.0, DType::BF16).unwrap();
        let w = Tensor::randn(22, &[vocab, hd], 0.0, 0.5, DType::BF16).unwrap();
        let y = Tensor::from_vec(targets(n, vocab), &[n]).unwrap();
        let out = linear_cross_entropy(&h, &w, &y, IGNORE_INDEX, Reduction::Mean, true).unwrap();
        let up = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let want = linear_cross_entropy(&up(&h), &up(&w), &y, IGNORE_INDEX, Reduction::Mean, true).unwrap();
        assert_eq!((out.loss.dtype(), out.grad_hidden.dtype()), (DType::F32, DType::BF16));
        // Same bf16 inputs, f32 instead of f64 arithmetic: the loss agrees to f32 precision; gradients to one
        // bf16 rounding of values below 0.5.
        assert!((out.loss.to_vec_f64().unwrap()[0] - want.loss.to_scalar::<f64>().unwrap()).abs() < 1e-5);
        assert!(out.grad_hidden.max_abs_diff(&want.grad_hidden).unwrap() < 2e-3);
        assert!(out.grad_weight.unwrap().max_abs_diff(&want.grad_weight.unwrap()).unwrap() < 2e-3);
    }

    /// Central differences of the fused loss in f64 for hidden and weight.
    #[test]
    fn fused_gradients_match_finite_differences() {
        let (n, hd, vocab) = (5, 3, 7);
        let h = Tensor::randn(31, &[n, hd], 0.0, 1.0, DType::F64).unwrap();
        let w = Tensor::randn(32, &[vocab, hd], 0.0, 1.0, DType::F64).unwrap();
        let y = Tensor::from_vec(targets(n, vocab), &[n]).unwrap();
        let out = linear_cross_entropy(&h, &w, &y, IGNORE_INDEX, Reduction::Mean, true).unwrap();
        let loss = |h: &Tensor, w: &Tensor| {
            linear_cross_entropy(h, w, &y, IGNORE_INDEX, Reduction::Mean, false).unwrap().loss.to_scalar::<f64>().unwrap()
        };
        let grads = [out.grad_hidden.to_vec::<f64>().unwrap(), out.grad_weight.unwrap().to_vec::<f64>().unwrap()];
        for (which, base) in [&h, &w].into_iter().enumerate() {
            let values = base.to_vec::<f64>().unwrap();
            for i in 0..values.len() {
                let shifted = |delta: f64| {
                    let mut x = values.clone();
                    x[i] += delta;
                    let x = Tensor::from_vec(x, base.shape()).unwrap();
                    if which == 0 { loss(&x, &w) } else { loss(&h, &x) }
                };
                let numeric = (shifted(1e-6) - shifted(-1e-6)) / 2e-6;
                assert!((numeric - grads[which][i]).abs() < 1e-8, "input {which} [{i}]: {numeric} vs {}", grads[which][i]);
            }
        }
        // The plain cross-entropy backward too.
        let logits = Tensor::randn(33, &[n, vocab], 0.0, 2.0, DType::F64).unwrap();
        let ce = cross_entropy(&logits, &y, IGNORE_INDEX, Reduction::Mean).unwrap();
        let grad = cross_entropy_backward(&logits, &y, &ce.lse, IGNORE_INDEX, Reduction::Mean, ce.n_valid, 1.0).unwrap().to_vec::<f64>().unwrap();
        let values = logits.to_vec::<f64>().unwrap();
        for i in 0..values.len() {
            let shifted = |delta: f64| {
                let mut x = values.clone();
                x[i] += delta;
                let x = Tensor::from_vec(x, logits.shape()).unwrap();
                cross_entropy(&x, &y, IGNORE_INDEX, Reduction::Mean).unwrap().loss.to_scalar::<f64>().unwrap()
            };
            let numeric = (shifted(1e-6) - shifted(-1e-6)) / 2e-6;
            assert!((numeric - grad[i]).abs() < 1e-8, "logits [{i}]: {numeric} vs {}", grad[i]);
        }
    }
}

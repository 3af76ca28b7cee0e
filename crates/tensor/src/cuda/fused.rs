//! The fused ops of `ops::` (RMSNorm, RoPE, attention, cross-entropy) on the CUDA backend, each launching the
//! kernels/*.cu kernel of its family. The `ops::` functions check shapes and arguments (the same checks for
//! both backends) and call these for tensors on `Device::Cuda`; these gather their operands into contiguous
//! device buffers of a dtype the kernels take (f32 or bf16) and launch.

use super::{kernel_dtype, CudaStorage, KernelArgs, BLOCK_THREADS, MAX_BLOCKS};
use crate::backend::BackendStorage;
use crate::cpu::CpuStorage;
use crate::{DType, Device, Error, Result, Storage, Tensor};
use ferrotune_kernels::LaunchConfig;

/// The device storage of `t`, or a `DeviceMismatch` naming `op` when `t` is on the CPU.
fn device_storage<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a CudaStorage> {
    match t.storage() {
        Storage::Cuda(s) => Ok(s),
        Storage::Cpu(_) => Err(Error::DeviceMismatch { op, lhs: Device::Cuda(0), rhs: Device::Cpu }),
    }
}

/// `t` gathered into a fresh contiguous device buffer of `dtype` (f32 or bf16).
fn dense(op: &'static str, t: &Tensor, dtype: DType) -> Result<CudaStorage> {
    kernel_dtype(op, dtype)?;
    let gathered = device_storage(op, t)?.contiguous(t.layout())?;
    if gathered.dtype() == dtype {
        Ok(gathered)
    } else {
        gathered.cast(dtype)
    }
}

/// A fresh device buffer next to `like`.
fn alloc(like: &CudaStorage, len: usize, dtype: DType) -> Result<CudaStorage> {
    CudaStorage::zeros(like.ordinal, len, dtype)
}

/// Host data copied to the device of `like` (ids, positions, sequence offsets, frequencies).
fn upload(like: &CudaStorage, host: CpuStorage) -> Result<CudaStorage> {
    CudaStorage::from_cpu(like.ordinal, &host)
}

fn tensor(s: CudaStorage, shape: &[usize]) -> Tensor {
    Tensor::from_storage(Storage::Cuda(s), shape)
}

/// The dtype the kernels run in for these operands: their common dtype when it is f32 or bf16 (bf16 kernels
/// compute in f32 and round once, as the CPU backend does), else f32 (mixed bf16 activations and f32 weights:
/// computed in f32 and rounded to the activations' dtype afterwards, again as on the CPU).
fn kernel_compute_dtype(dtypes: &[DType]) -> DType {
    match dtypes {
        [first, rest @ ..] if *first == DType::BF16 && rest.iter().all(|d| d == first) => DType::BF16,
        _ => DType::F32,
    }
}

/// Threads per block of the one-block-per-row kernels: a warp multiple covering the row, at most 256.
fn row_threads(cols: usize) -> u32 {
    cols.next_multiple_of(32).clamp(32, BLOCK_THREADS as usize) as u32
}

fn result_in(s: CudaStorage, dtype: DType) -> Result<CudaStorage> {
    if s.dtype() == dtype {
        Ok(s)
    } else {
        s.cast(dtype)
    }
}

/// Rejects f64/f16 inputs clearly: the kernels are f32 and bf16 only.
fn check_float(op: &'static str, t: &Tensor) -> Result<()> {
    match t.dtype() {
        DType::F32 | DType::BF16 => Ok(()),
        dtype => Err(Error::UnsupportedDType { op, dtype }),
    }
}

/// RMSNorm forward (kernels/rms_norm.cu, no residual): `(y [rows, cols], inv_rms [rows] f32)` in `dtype`.
fn rms_norm_rows(op: &'static str, x: &CudaStorage, w: &CudaStorage, rows: usize, cols: usize, eps: f64) -> Result<(CudaStorage, CudaStorage)> {
    let suffix = kernel_dtype(op, x.dtype())?;
    let (y, inv_rms) = (alloc(x, rows * cols, x.dtype())?, alloc(x, rows, DType::F32)?);
    let args = KernelArgs::default().buf(x).null().buf(w).buf(&y).null().buf(&inv_rms).val(rows as i64).val(cols as i64).val(eps as f32);
    let config = LaunchConfig::linear(rows.min(MAX_BLOCKS) as u32, row_threads(cols));
    // SAFETY: rms_norm_forward_T(x, residual = null, weight, y, h_out = null, inv_rms, rows, cols, eps): x and y
    // hold rows*cols elements, weight cols, inv_rms rows floats.
    unsafe { args.launch(x, &format!("rms_norm_forward_{suffix}"), config)? };
    Ok((y, inv_rms))
}

/// `ops::rms_norm` on the device: `x [.., H]`, `weight [H]` (checked by the caller, both non-empty).
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    const OP: &str = "rms_norm";
    check_float(OP, x)?;
    let dtype = kernel_compute_dtype(&[x.dtype(), weight.dtype()]);
    let cols = weight.elem_count();
    let rows = x.elem_count() / cols;
    let (xs, ws) = (dense(OP, x, dtype)?, dense(OP, weight, dtype)?);
    let (y, _) = rms_norm_rows(OP, &xs, &ws, rows, cols, eps)?;
    Ok(tensor(result_in(y, x.dtype())?, x.shape()))
}

/// `ops::rms_norm_backward` on the device. The backward kernel takes the forward's `1/rms` per row, which the
/// op's signature does not carry: the forward kernel recomputes it (one extra pass over x).
pub(crate) fn rms_norm_backward(x: &Tensor, weight: &Tensor, eps: f64, grad_out: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rms_norm_backward";
    check_float(OP, x)?;
    let dtype = kernel_compute_dtype(&[x.dtype(), weight.dtype(), grad_out.dtype()]);
    let cols = weight.elem_count();
    let rows = x.elem_count() / cols;
    let (xs, ws, gs) = (dense(OP, x, dtype)?, dense(OP, weight, dtype)?, dense(OP, grad_out, dtype)?);
    let (_, inv_rms) = rms_norm_rows(OP, &xs, &ws, rows, cols, eps)?;
    let suffix = kernel_dtype(OP, dtype)?;
    let (grad_x, grad_w) = (alloc(&xs, rows * cols, dtype)?, alloc(&xs, cols, DType::F32)?);
    let args = KernelArgs::default()
        .buf(&xs)
        .buf(&ws)
        .buf(&gs)
        .null()
        .buf(&inv_rms)
        .buf(&grad_x)
        .buf(&grad_w)
        .val(rows as i64)
        .val(cols as i64);
    // Each block keeps its share of dweight in dynamic shared memory (cols floats).
    let config = LaunchConfig { dynamic_shared: cols * 4, ..LaunchConfig::linear(rows.min(MAX_BLOCKS) as u32, row_threads(cols)) };
    // SAFETY: rms_norm_backward_T(h, weight, grad_y, grad_h_skip = null, inv_rms, grad_h, grad_weight (f32,
    // zeroed), rows, cols): the buffers hold rows*cols, cols, rows*cols, rows, rows*cols and cols elements.
    unsafe { args.launch(&xs, &format!("rms_norm_backward_{suffix}"), config)? };
    Ok((tensor(result_in(grad_x, x.dtype())?, x.shape()), tensor(result_in(grad_w, weight.dtype())?, weight.shape())))
}

/// `ops::rope` / `rope_backward` on the device for `x [B, T, heads, head_dim]` with one table row per
/// `(batch, time)` row (`rows`, checked by the caller). The cos/sin tables for positions `0..=max(rows)` are
/// evaluated on the device from the table's frequencies (kernels/rope.cu `rope_table`, f64 angles rounded
/// once to f32, as `RopeTable` does on the host).
pub(crate) fn rope(op: &'static str, x: &Tensor, inv_freq: &[f64], attention_scaling: f64, rows: &[usize], inverse: bool) -> Result<Tensor> {
    check_float(op, x)?;
    let &[_, _, heads, head_dim] = x.shape() else { unreachable!("checked by ops::rope") };
    let half = head_dim / 2;
    let xs = dense(op, x, x.dtype())?;
    let positions = rows.iter().max().map_or(0, |&p| p + 1);
    let freqs = upload(&xs, CpuStorage::F64(inv_freq.to_vec()))?;
    let (cos, sin) = (alloc(&xs, positions * half, DType::F32)?, alloc(&xs, positions * half, DType::F32)?);
    let args = KernelArgs::default().buf(&freqs).val(attention_scaling).buf(&cos).buf(&sin).val(positions as i64).val(half as i32);
    // SAFETY: rope_table(inv_freq [half] f64, attention_scaling, cos, sin [positions, half] f32, positions, half).
    unsafe { args.launch(&xs, "rope_table", super::grid_for(positions * half))? };
    let token_positions = upload(&xs, CpuStorage::I64(rows.iter().map(|&p| p as i64).collect()))?;
    let out = alloc(&xs, xs.buffer.len(), xs.dtype())?;
    let suffix = kernel_dtype(op, xs.dtype())?;
    let args = KernelArgs::default()
        .buf(&xs)
        .buf(&cos)
        .buf(&sin)
        .buf(&token_positions)
        .buf(&out)
        .val(rows.len() as i64)
        .val(heads as i32)
        .val(head_dim as i32)
        .val(i32::from(inverse));
    // SAFETY: rope_T(x, cos, sin, positions [tokens] i64 < positions, out, tokens, heads, head_dim, inverse): x
    // and out hold tokens*heads*head_dim elements.
    unsafe { args.launch(&xs, &format!("rope_{suffix}"), super::grid_for(rows.len() * heads * half))? };
    Ok(tensor(out, x.shape()))
}

/// What the flash-attention kernels need beyond q, k and v: `[B, T, ..]` rows packed as `B*T` tokens, split into
/// sequences by `cu_seqlens` (each batch row, or each run of equal segment ids within a row).
struct Varlen {
    cu_seqlens: Vec<i32>,
    max_len: usize,
}

impl Varlen {
    fn new(op: &'static str, b: usize, t: usize, segment_ids: Option<&[i64]>) -> Result<Varlen> {
        let mut cu_seqlens = vec![0i32];
        for row in 0..b {
            let start = row * t;
            match segment_ids {
                None => cu_seqlens.push((start + t) as i32),
                Some(ids) => {
                    let ids = &ids[start..start + t];
                    let mut seen = std::collections::HashSet::new();
                    for i in 1..=t {
                        if i == t || ids[i] != ids[i - 1] {
                            if !seen.insert(ids[i - 1]) {
                                return Err(Error::Msg(format!(
                                    "{op} on device cuda: segment id {} appears in two separate runs of batch row {row}; \
                                     the varlen kernels need each packed sequence as one contiguous run",
                                    ids[i - 1]
                                )));
                            }
                            cu_seqlens.push((start + i) as i32);
                        }
                    }
                }
            }
        }
        if b * t > i32::MAX as usize {
            return Err(Error::BadShape { op, msg: format!("{} tokens exceed the kernels' int32 sequence offsets", b * t) });
        }
        let max_len = cu_seqlens.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0);
        Ok(Varlen { cu_seqlens, max_len })
    }

    fn n_seqs(&self) -> usize {
        self.cu_seqlens.len() - 1
    }
}

/// Shapes of one device attention call, checked beyond what `ops::attention` checks for both backends.
struct FlashShape {
    b: usize,
    t: usize,
    hq: usize,
    hkv: usize,
    d: usize,
}

impl FlashShape {
    fn new(op: &'static str, q: &Tensor, k: &Tensor) -> Result<FlashShape> {
        check_float(op, q)?;
        let (qs, ks) = (q.shape(), k.shape());
        let shape = FlashShape { b: qs[0], t: qs[1], hq: qs[2], hkv: ks[2], d: qs[3] };
        if ks[1] != shape.t {
            return Err(Error::BadShape {
                op,
                msg: format!("device cuda attends T queries over the same T keys (no KV cache yet); got T = {} and S = {}", shape.t, ks[1]),
            });
        }
        if !matches!(shape.d, 64 | 128) {
            return Err(Error::BadShape {
                op,
                msg: format!("the flash-attention kernels (kernels/flash_attention.cu) take head_dim 64 or 128, got {}", shape.d),
            });
        }
        if shape.hq > 65535 {
            return Err(Error::BadShape { op, msg: format!("{} query heads exceed CUDA's gridDim.y limit", shape.hq) });
        }
        Ok(shape)
    }

    fn tokens(&self) -> usize {
        self.b * self.t
    }
}

/// `lse` between the kernels' `[Hq, B*T]` and the op's `[B, Hq, T]`.
fn lse_from_kernel(lse: CudaStorage, s: &FlashShape) -> Result<Tensor> {
    tensor(lse, &[s.hq, s.b, s.t]).permute(&[1, 0, 2])?.contiguous()
}

fn lse_to_kernel(op: &'static str, lse: &Tensor) -> Result<CudaStorage> {
    let lse = lse.permute(&[1, 0, 2])?;
    dense(op, &lse, DType::F32)
}

/// `ops::attention` on the device (kernels/flash_attention.cu): `(out [B, T, Hq, D]` in q's dtype, `lse
/// [B, Hq, T]` f32`)`. `segment_ids` are the `[B, T]` ids read back to the host (they become `cu_seqlens`).
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool, segment_ids: Option<&[i64]>) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention";
    let s = FlashShape::new(OP, q, k)?;
    let varlen = Varlen::new(OP, s.b, s.t, segment_ids)?;
    let dtype = q.dtype();
    let (qs, ks, vs) = (dense(OP, q, dtype)?, dense(OP, k, dtype)?, dense(OP, v, dtype)?);
    let cu = upload(&qs, CpuStorage::I32(varlen.cu_seqlens.clone()))?;
    let (out, lse) = (alloc(&qs, qs.buffer.len(), dtype)?, alloc(&qs, s.hq * s.tokens(), DType::F32)?);
    let suffix = kernel_dtype(OP, dtype)?;
    let args = KernelArgs::default()
        .buf(&qs)
        .buf(&ks)
        .buf(&vs)
        .buf(&cu)
        .buf(&out)
        .buf(&lse)
        .val(s.hq as i32)
        .val(s.hkv as i32)
        .val(s.tokens() as i64)
        .val(scale as f32)
        .val(i32::from(causal));
    // 16 query rows per block (kFlashBlockQ), one block row per head, one block plane per sequence.
    let config = LaunchConfig { grid: [varlen.max_len.div_ceil(16) as u32, s.hq as u32, varlen.n_seqs() as u32], block: [128, 1, 1], dynamic_shared: 0 };
    if s.tokens() > 0 {
        // SAFETY: flash_attention_forward_T_dD(q [tokens, Hq, D], k, v [tokens, Hkv, D], cu_seqlens [n_seqs + 1]
        // within 0..=tokens, out like q, lse [Hq, tokens] f32, hq, hkv, tokens, scale, causal).
        unsafe { args.launch(&qs, &format!("flash_attention_forward_{suffix}_d{}", s.d), config)? };
    }
    Ok((tensor(out, q.shape()), lse_from_kernel(lse, &s)?))
}

/// `ops::attention_backward` on the device: the delta kernel (rowwise `dO . O`), then the backward kernel, dQ
/// accumulated in f32 and rounded to q's dtype afterwards.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    grad_out: &Tensor,
    scale: f64,
    causal: bool,
    segment_ids: Option<&[i64]>,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let s = FlashShape::new(OP, q, k)?;
    let varlen = Varlen::new(OP, s.b, s.t, segment_ids)?;
    let dtype = q.dtype();
    let (qs, ks, vs) = (dense(OP, q, dtype)?, dense(OP, k, dtype)?, dense(OP, v, dtype)?);
    let (os, gs, lse) = (dense(OP, out, dtype)?, dense(OP, grad_out, dtype)?, lse_to_kernel(OP, lse)?);
    let suffix = kernel_dtype(OP, dtype)?;
    let cu = upload(&qs, CpuStorage::I32(varlen.cu_seqlens.clone()))?;
    let delta = alloc(&qs, s.hq * s.tokens(), DType::F32)?;
    let grad_q = alloc(&qs, qs.buffer.len(), DType::F32)?;
    let (grad_k, grad_v) = (alloc(&qs, ks.buffer.len(), dtype)?, alloc(&qs, vs.buffer.len(), dtype)?);
    if s.tokens() > 0 {
        let args = KernelArgs::default().buf(&os).buf(&gs).buf(&delta).val(s.tokens() as i64).val(s.hq as i32).val(s.d as i32);
        // One warp per (token, head): 4 per block of 128.
        let rows = s.tokens() * s.hq;
        // SAFETY: flash_attention_delta_T(out, grad_out [tokens, Hq, D], delta [Hq, tokens] f32, tokens, hq, d).
        unsafe { args.launch(&qs, &format!("flash_attention_delta_{suffix}"), LaunchConfig::linear(rows.div_ceil(4).min(MAX_BLOCKS) as u32, 128))? };
        let args = KernelArgs::default()
            .buf(&qs)
            .buf(&ks)
            .buf(&vs)
            .buf(&gs)
            .buf(&lse)
            .buf(&delta)
            .buf(&cu)
            .buf(&grad_q)
            .buf(&grad_k)
            .buf(&grad_v)
            .val(s.hq as i32)
            .val(s.hkv as i32)
            .val(s.tokens() as i64)
            .val(scale as f32)
            .val(i32::from(causal));
        // 32 keys per block; shared memory: K, V, dK, dV tiles of 32 x (D + 1) floats and a q / dO row per warp.
        let shared = (4 * 32 * (s.d + 1) + 4 * 2 * s.d) * 4;
        let config = LaunchConfig { grid: [varlen.max_len.div_ceil(32) as u32, s.hkv as u32, varlen.n_seqs() as u32], block: [128, 1, 1], dynamic_shared: shared };
        // SAFETY: flash_attention_backward_T_dD(q, k, v, grad_out, lse, delta, cu_seqlens, grad_q_accum (f32,
        // zeroed, like q), grad_k, grad_v (like k), hq, hkv, tokens, scale, causal).
        unsafe { args.launch(&qs, &format!("flash_attention_backward_{suffix}_d{}", s.d), config)? };
    }
    Ok((tensor(result_in(grad_q, dtype)?, q.shape()), tensor(grad_k, k.shape()), tensor(grad_v, v.shape())))
}

/// Cross-entropy forward per row (kernels/cross_entropy.cu) of `logits [N, V]` (f32 or bf16, read as they are)
/// against host `targets` (checked by the caller, `ignore_index` or in `[0, V)`): `(lse [N], loss [N])`, f32,
/// loss 0 on ignored rows.
pub(crate) fn cross_entropy_rows(logits: &Tensor, targets: &[i64], ignore_index: i64) -> Result<(Tensor, Tensor)> {
    const OP: &str = "cross_entropy";
    check_float(OP, logits)?;
    let (rows, vocab) = (logits.shape()[0], logits.shape()[1]);
    let ls = dense(OP, logits, logits.dtype())?;
    let ts = upload(&ls, CpuStorage::I64(targets.to_vec()))?;
    let (lse, loss) = (alloc(&ls, rows, DType::F32)?, alloc(&ls, rows, DType::F32)?);
    let bad = upload(&ls, CpuStorage::I32(vec![0]))?;
    if rows > 0 {
        let args = KernelArgs::default().buf(&ls).buf(&ts).buf(&lse).buf(&loss).val(rows as i64).val(vocab as i64).val(ignore_index).buf(&bad);
        let suffix = kernel_dtype(OP, ls.dtype())?;
        // SAFETY: cross_entropy_forward_T(logits [rows, vocab], targets [rows] i64, lse, loss [rows] f32, rows,
        // vocab, ignore_index, bad_target (one int)).
        unsafe { args.launch(&ls, &format!("cross_entropy_forward_{suffix}"), LaunchConfig::linear(rows.min(MAX_BLOCKS) as u32, row_threads(vocab)))? };
    }
    if let CpuStorage::I32(flag) = &bad.to_cpu()? {
        if flag[0] != 0 {
            // Only reachable if the caller's check was skipped: the kernel saw a target outside [0, V).
            let index = targets.iter().copied().find(|&t| t != ignore_index && !(0..vocab as i64).contains(&t)).unwrap_or(-1);
            return Err(Error::IndexOutOfRange { op: OP, index, size: vocab });
        }
    }
    Ok((tensor(lse, &[rows]), tensor(loss, &[rows])))
}

/// `w (softmax(logits) - onehot(target))` per row, 0 on ignored rows, in the logits' dtype (kernels/
/// cross_entropy.cu backward); `lse [N]` from [`cross_entropy_rows`].
pub(crate) fn cross_entropy_grad(logits: &Tensor, targets: &[i64], lse: &Tensor, ignore_index: i64, row_weight: f64) -> Result<Tensor> {
    const OP: &str = "cross_entropy_backward";
    check_float(OP, logits)?;
    let (rows, vocab) = (logits.shape()[0], logits.shape()[1]);
    let ls = dense(OP, logits, logits.dtype())?;
    let lse = dense(OP, lse, DType::F32)?;
    let ts = upload(&ls, CpuStorage::I64(targets.to_vec()))?;
    let grad = alloc(&ls, rows * vocab, ls.dtype())?;
    if rows * vocab > 0 {
        let args = KernelArgs::default().buf(&ls).buf(&ts).buf(&lse).buf(&grad).val(rows as i64).val(vocab as i64).val(ignore_index).val(row_weight as f32);
        let suffix = kernel_dtype(OP, ls.dtype())?;
        // Grid (column chunks, rows): gridDim.y is at most 65535, the kernel strides over further rows.
        let chunks = vocab.div_ceil(BLOCK_THREADS as usize).min(MAX_BLOCKS) as u32;
        let config = LaunchConfig { grid: [chunks, rows.min(65535) as u32, 1], block: [BLOCK_THREADS, 1, 1], dynamic_shared: 0 };
        // SAFETY: cross_entropy_backward_T(logits, targets, lse, grad [rows, vocab], rows, vocab, ignore_index,
        // weight).
        unsafe { args.launch(&ls, &format!("cross_entropy_backward_{suffix}"), config)? };
    }
    Ok(tensor(grad, logits.shape()))
}

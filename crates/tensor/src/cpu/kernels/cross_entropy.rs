//! Cross-entropy without a probability matrix, and fused linear + cross-entropy without a logits matrix.
//!
//! Per row `n` with logits `z_n` (vocab `V`) and target `y_n`: `lse_n = log sum_v exp(z_nv)`,
//! `loss_n = lse_n - z_n,y_n`. Rows whose target is `ignore_index` contribute neither loss nor gradient.
//!
//! Backward of one row, for an upstream weight `w_n` (`grad_loss / n_valid` for a mean, `grad_loss` for a sum,
//! 0 for ignored rows): `d loss_n / d z_nv = softmax(z_n)_v - [v == y_n]`, so
//! `grad_z_nv = w_n * (exp(z_nv - lse_n) - [v == y_n])`.
//!
//! - [`cross_entropy_forward`] streams each row in `vocab_chunk`-column pieces with an online log-sum-exp
//!   (running max `m` and sum `s`; a chunk with max `m'` and sum `s'` gives
//!   `s <- s e^(m - max(m, m')) + s' e^(m' - max(m, m'))`), so the row is read from memory once and nothing but
//!   `lse` is stored. Logits stay in their storage dtype (bf16 is widened 512 values at a time into an L1
//!   buffer, never copied to an f32 matrix).
//! - [`cross_entropy_backward`] rebuilds the softmax from `lse` one element at a time.
//! - [`linear_cross_entropy_fused`] takes `hidden [N, H]` and the `weight [V, H]` of the output projection and
//!   returns the loss with both gradients; see its doc for the algorithm and its memory.

use super::attention::TileGemm;
use super::vector_math::SoftmaxFloat;
use crate::cpu::gemm::{MatMut, MatRef};
use crate::element::{Element, Float};
use crate::{bail, Error, Result};
use half::{bf16, f16};
use rayon::prelude::*;

/// Columns per online log-sum-exp step: 16 KiB of f32, so each step's two sweeps (max, then exp-sum) hit L1.
pub const CROSS_ENTROPY_VOCAB_CHUNK: usize = 4096;

/// Below this many logits a call runs on the calling thread.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// Logits are widened to the compute type in pieces of this many (2 KiB of f32, in L1) so the row primitives
/// of [`SoftmaxFloat`] run on contiguous compute-type data whatever the storage type.
const WIDEN_PIECE: usize = 512;

#[inline]
fn widen_into<T: LogitElement<F>, F: Float>(src: &[T], dst: &mut [F]) {
    dst.iter_mut().zip(src).for_each(|(d, &x)| *d = x.widen());
}

/// A logits storage type and the compute type `F` it is read and written in (bf16 and f16 compute in f32).
pub trait LogitElement<F: Float>: Element {
    fn widen(self) -> F;
    fn narrow(v: F) -> Self;
}

impl LogitElement<f32> for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[inline(always)]
    fn narrow(v: f32) -> f32 {
        v
    }
}
impl LogitElement<f64> for f64 {
    #[inline(always)]
    fn widen(self) -> f64 {
        self
    }
    #[inline(always)]
    fn narrow(v: f64) -> f64 {
        v
    }
}
impl LogitElement<f32> for bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn narrow(v: f32) -> bf16 {
        bf16::from_f32(v)
    }
}
impl LogitElement<f32> for f16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn narrow(v: f32) -> f16 {
        f16::from_f32(v)
    }
}

/// A `[rows, cols]` matrix with unit column stride and any row stride (e.g. a narrow of `[B, T, V]` logits).
#[derive(Clone, Copy, Debug)]
pub struct RowMajor<'a, T> {
    data: &'a [T],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a, T> RowMajor<'a, T> {
    pub fn new(data: &'a [T], offset: usize, rows: usize, cols: usize, row_stride: usize) -> Result<Self> {
        if rows > 0 && cols > 0 && offset + (rows - 1) * row_stride + cols > data.len() {
            bail!("cross_entropy: a {rows}x{cols} view (row stride {row_stride}, offset {offset}) reaches past a buffer of {}", data.len());
        }
        Ok(RowMajor { data, offset, rows, cols, row_stride })
    }

    #[inline]
    fn row(&self, r: usize) -> &'a [T] {
        let start = self.offset + r * self.row_stride;
        &self.data[start..start + self.cols]
    }
}

/// The class index each row is scored against, or `None` for an ignored row. Targets outside `[0, vocab)` that
/// are not `ignore_index` are an error.
pub fn resolve_targets(op: &'static str, targets: &[i64], ignore_index: i64, vocab: usize) -> Result<Vec<Option<usize>>> {
    targets
        .iter()
        .map(|&t| match t {
            t if t == ignore_index => Ok(None),
            t if t >= 0 && (t as usize) < vocab => Ok(Some(t as usize)),
            t => Err(Error::IndexOutOfRange { op, index: t, size: vocab }),
        })
        .collect()
}

/// Online `(max, sum exp(x - max))` state of a log-sum-exp.
#[derive(Clone, Copy, Debug)]
struct OnlineLse<F> {
    max: F,
    sum: F,
}

impl<F: SoftmaxFloat> OnlineLse<F> {
    const EMPTY: Self = OnlineLse { max: F::NEG_INFINITY, sum: F::ZERO };

    /// The state of one chunk: two sweeps (max, then exp-sum) over data that is in L1.
    fn of_chunk<T: LogitElement<F>>(chunk: &[T]) -> Self {
        let mut buf = [F::ZERO; WIDEN_PIECE];
        let mut max = F::NEG_INFINITY;
        for piece in chunk.chunks(WIDEN_PIECE) {
            let wide = &mut buf[..piece.len()];
            widen_into(piece, wide);
            max = max.max(F::row_max(wide));
        }
        if max == F::NEG_INFINITY {
            return Self::EMPTY;
        }
        let mut sum = F::ZERO;
        for piece in chunk.chunks(WIDEN_PIECE) {
            let wide = &mut buf[..piece.len()];
            widen_into(piece, wide);
            sum += F::exp_shifted(wide, max);
        }
        OnlineLse { max, sum }
    }

    /// `(m1, s1) + (m2, s2) = (m, s1 e^(m1 - m) + s2 e^(m2 - m))` with `m = max(m1, m2)`. An empty side (max
    /// -inf, every exp 0) is skipped so that exp(-inf - -inf) = NaN never appears.
    #[inline]
    fn merge(self, other: Self) -> Self {
        if other.max == F::NEG_INFINITY {
            return self;
        }
        if self.max == F::NEG_INFINITY {
            return other;
        }
        let max = self.max.max(other.max);
        OnlineLse { max, sum: self.sum * (self.max - max).exp() + other.sum * (other.max - max).exp() }
    }

    fn lse(self) -> F {
        self.max + self.sum.ln()
    }
}

/// Forward over rows: returns `(lse [N], sum of the valid rows' losses (in f64), number of valid rows)`.
/// `vocab_chunk` is the online-lse step ([`CROSS_ENTROPY_VOCAB_CHUNK`] in the op).
pub fn cross_entropy_forward<T: LogitElement<F>, F: SoftmaxFloat>(
    logits: RowMajor<T>,
    targets: &[i64],
    ignore_index: i64,
    vocab_chunk: usize,
) -> Result<(Vec<F>, f64, usize)> {
    if targets.len() != logits.rows || vocab_chunk == 0 {
        bail!("cross_entropy: {} targets for {} rows (vocab chunk {vocab_chunk})", targets.len(), logits.rows);
    }
    let targets = resolve_targets("cross_entropy", targets, ignore_index, logits.cols)?;
    let row_lse = |r: usize| -> F {
        logits.row(r).chunks(vocab_chunk).map(OnlineLse::of_chunk).fold(OnlineLse::EMPTY, OnlineLse::merge).lse()
    };
    let lse: Vec<F> = if logits.rows * logits.cols >= PAR_MIN_ELEMS {
        (0..logits.rows).into_par_iter().map(row_lse).collect()
    } else {
        (0..logits.rows).map(row_lse).collect()
    };
    let mut loss_sum = 0.0;
    let mut n_valid = 0;
    for (r, target) in targets.iter().enumerate() {
        if let Some(y) = *target {
            loss_sum += lse[r].to_f64() - logits.row(r)[y].widen().to_f64();
            n_valid += 1;
        }
    }
    Ok((lse, loss_sum, n_valid))
}

/// Backward over rows: `grad_logits [N, V]` (contiguous, in the logits dtype) with
/// `grad_nv = row_weight * (exp(z_nv - lse_n) - [v == y_n])` for valid rows and 0 for ignored ones, where
/// `row_weight` is `grad_loss / n_valid` (mean) or `grad_loss` (sum).
pub fn cross_entropy_backward<T: LogitElement<F>, F: SoftmaxFloat>(
    logits: RowMajor<T>,
    targets: &[i64],
    lse: &[F],
    ignore_index: i64,
    row_weight: F,
) -> Result<Vec<T>> {
    if targets.len() != logits.rows || lse.len() != logits.rows {
        bail!("cross_entropy backward: {} targets and {} lse values for {} rows", targets.len(), lse.len(), logits.rows);
    }
    let targets = resolve_targets("cross_entropy_backward", targets, ignore_index, logits.cols)?;
    let mut grad = vec![T::narrow(F::ZERO); logits.rows * logits.cols];
    if grad.is_empty() {
        return Ok(grad);
    }
    let fill_row = |(r, out): (usize, &mut [T])| {
        let Some(y) = targets[r] else { return };
        let (z, row_lse) = (logits.row(r), lse[r]);
        let mut buf = [F::ZERO; WIDEN_PIECE];
        for (out, z) in out.chunks_mut(WIDEN_PIECE).zip(z.chunks(WIDEN_PIECE)) {
            let probs = &mut buf[..z.len()];
            widen_into(z, probs);
            F::exp_shifted(probs, row_lse);
            out.iter_mut().zip(probs.iter()).for_each(|(g, &p)| *g = T::narrow(row_weight * p));
        }
        out[y] = T::narrow(row_weight * ((z[y].widen() - row_lse).exp() - F::ONE));
    };
    if grad.len() >= PAR_MIN_ELEMS {
        grad.par_chunks_mut(logits.cols).enumerate().for_each(fill_row);
    } else {
        grad.chunks_mut(logits.cols).enumerate().for_each(fill_row);
    }
    Ok(grad)
}

/// Result of [`linear_cross_entropy_fused`]; the gradients already include `row_weight`.
#[derive(Debug)]
pub struct FusedLinearCrossEntropy<F> {
    /// Sum over valid rows of `lse_n - z_n,y_n`, accumulated in f64.
    pub loss_sum: f64,
    pub n_valid: usize,
    /// `[N, H]`, zero on ignored rows.
    pub grad_hidden: Vec<F>,
    /// `[V, H]` when asked for.
    pub grad_weight: Option<Vec<F>>,
}

/// Working-set sizes of [`linear_cross_entropy_fused`].
#[derive(Clone, Copy, Debug)]
pub struct LinearCrossEntropyBlocks {
    /// Most valid rows per block (blocks are balanced): the block's logits strip `[rows, V]` is the only large
    /// buffer the kernel makes.
    pub rows: usize,
    /// Vocab columns per parallel task.
    pub vocab_chunk: usize,
}

/// Per-row state of one vocab chunk of the logits strip, after step 1 of the fused kernel.
struct ChunkRows<F> {
    /// `(max, sum exp(z - max))` of each row over this chunk.
    lse: Vec<OnlineLse<F>>,
    /// `(row in block, z_y)` for the rows whose target falls in this chunk.
    target_logits: Vec<(usize, F)>,
}

/// Fused `loss = CE(hidden @ weight^T, targets)` with its gradients, never making the `[N, V]` logits.
///
/// `hidden [N, H]` in the compute type, `weight [V, H]` (HF's lm_head / tied-embedding layout) in the compute
/// type or, for f32, bf16/f16, which the GEMM widens while packing, so a bf16 lm_head is never copied to f32.
/// Both may have any strides. `row_weight` is the gradient of the reduced loss with respect to one valid row's
/// loss (`1 / n_valid` for a mean, 1 for a sum).
///
/// Algorithm. Ignored rows are dropped first: their logits are never computed (in SFT the prompt tokens are often
/// half the rows). The valid rows are processed in blocks of at most `blocks.rows`; for a block `X [n, H]` the
/// logits strip `Z = X W^T [n, V]` is held as vocab chunks of `blocks.vocab_chunk` columns:
/// 1. per chunk `c`, in parallel: `Z_c = X W_c^T` (GEMM), then per row the chunk max `m_c`, `Z_c <- exp(Z_c - m_c)`
///    in place while the chunk is in cache, and `s_c = rowsum`; the target logit is read before the exp;
/// 2. per row: `lse = log sum_c s_c e^(m_c)` by the online merge; `loss += lse - z_y`;
/// 3. per chunk, in parallel: `G_c = row_weight * (Z_c e^(m_c - lse) - onehot)` in place, which is `dL/dZ_c`
///    (softmax minus one-hot, see the module doc), then `grad_W_c += G_c^T X` (each chunk owns its rows of
///    `grad_W`, so no two tasks write the same row);
/// 4. per group of rows, in parallel: `grad_X = sum_c G_c W_c`, scattered back to the rows' places.
///
/// Three `n x H x V` GEMMs per block, the minimum (logits, grad_hidden, grad_weight); a two-pass vocab loop (the
/// lse first, then the gradients) would recompute the logits, a fourth. Only one exp per logit.
///
/// Peak memory besides inputs and outputs: the strip, `blocks.rows * V` compute elements, plus two `[rows, H]`
/// buffers (the gathered hidden rows and their gradient). Outputs: `grad_hidden [N, H]` and, when
/// `compute_grad_weight`, `grad_weight [V, H]`, both in the compute type.
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy_fused<F, W>(
    hidden: MatRef<F>,
    weight: MatRef<W>,
    targets: &[i64],
    ignore_index: i64,
    row_weight: F,
    compute_grad_weight: bool,
    blocks: LinearCrossEntropyBlocks,
) -> Result<FusedLinearCrossEntropy<F>>
where
    F: TileGemm<W> + TileGemm<F> + SoftmaxFloat,
    W: Element,
{
    let (n_rows, hidden_dim, vocab) = (hidden.rows, hidden.cols, weight.rows);
    if weight.cols != hidden_dim || targets.len() != n_rows || blocks.rows == 0 || blocks.vocab_chunk == 0 {
        bail!(
            "linear_cross_entropy: hidden [{n_rows}, {hidden_dim}], weight [{vocab}, {}], {} targets and {blocks:?} do not agree",
            weight.cols,
            targets.len()
        );
    }
    let targets = resolve_targets("linear_cross_entropy", targets, ignore_index, vocab)?;
    let valid_rows: Vec<usize> = (0..n_rows).filter(|&r| targets[r].is_some()).collect();
    let mut grad_hidden = vec![F::ZERO; n_rows * hidden_dim];
    let mut grad_weight = compute_grad_weight.then(|| vec![F::ZERO; vocab * hidden_dim]);
    if valid_rows.is_empty() || hidden_dim == 0 {
        // Nothing to score, or every logit is 0: then each valid row's loss is log V and no gradient flows.
        let loss_sum = if valid_rows.is_empty() { 0.0 } else { valid_rows.len() as f64 * (vocab as f64).ln() };
        return Ok(FusedLinearCrossEntropy { loss_sum, n_valid: valid_rows.len(), grad_hidden, grad_weight });
    }
    let mut loss_sum = 0.0;
    let chunk = blocks.vocab_chunk;
    let chunk_starts: Vec<usize> = (0..vocab).step_by(chunk).collect();
    let chunk_cols = |c: usize| chunk.min(vocab - chunk_starts[c]);
    // W_c [cols, H] and its transpose [H, cols], as GEMM operands (views, no copies).
    let weight_chunk = |c: usize, transposed: bool| -> Result<MatRef<W>> {
        let offset = weight.offset + chunk_starts[c] * weight.row_stride;
        let (rs, cs) = (weight.row_stride, weight.col_stride);
        if transposed {
            MatRef::new(weight.data, offset, hidden_dim, chunk_cols(c), cs, rs)
        } else {
            MatRef::new(weight.data, offset, chunk_cols(c), hidden_dim, rs, cs)
        }
    };
    let n_blocks = valid_rows.len().div_ceil(blocks.rows);
    let block_rows = valid_rows.len().div_ceil(n_blocks);
    let mut strips: Vec<Vec<F>> = (0..chunk_starts.len()).map(|c| vec![F::ZERO; block_rows * chunk_cols(c)]).collect();
    let mut x_block = vec![F::ZERO; block_rows * hidden_dim];
    let mut gx_block = vec![F::ZERO; block_rows * hidden_dim];
    for rows in valid_rows.chunks(block_rows) {
        let n = rows.len();
        let x_block = &mut x_block[..n * hidden_dim];
        for (dst, &r) in x_block.chunks_mut(hidden_dim).zip(rows) {
            dst.iter_mut().enumerate().for_each(|(j, x)| *x = *hidden.at(r, j));
        }
        let x = MatRef::new(&x_block[..], 0, n, hidden_dim, hidden_dim, 1)?;
        let targets_in_block: Vec<usize> = rows.iter().map(|&r| targets[r].unwrap_or(0)).collect();

        // 1. Z_c = X W_c^T, then exp(Z_c - m_c) in place.
        let chunk_rows: Vec<ChunkRows<F>> = strips
            .par_iter_mut()
            .enumerate()
            .map(|(c, strip)| -> Result<ChunkRows<F>> {
                let (c0, cols) = (chunk_starts[c], chunk_cols(c));
                let z = &mut strip[..n * cols];
                <F as TileGemm<W>>::gemm(F::ONE, x, weight_chunk(c, true)?, F::ZERO, MatMut::new(&mut z[..], 0, n, cols, cols)?);
                let mut target_logits = Vec::new();
                let lse = z
                    .chunks_mut(cols)
                    .enumerate()
                    .map(|(i, row)| {
                        let y = targets_in_block[i];
                        if (c0..c0 + cols).contains(&y) {
                            target_logits.push((i, row[y - c0]));
                        }
                        exp_shifted_in_place(row)
                    })
                    .collect();
                Ok(ChunkRows { lse, target_logits })
            })
            .collect::<Result<_>>()?;

        // 2. lse of each row, and the loss.
        let lse: Vec<F> =
            (0..n).map(|i| chunk_rows.iter().map(|c| c.lse[i]).fold(OnlineLse::EMPTY, OnlineLse::merge).lse()).collect();
        for &(i, z_y) in chunk_rows.iter().flat_map(|c| &c.target_logits) {
            loss_sum += lse[i].to_f64() - z_y.to_f64();
        }

        // 3. G_c = dL/dZ_c in place, and grad_W_c += G_c^T X.
        let grad_chunk = |c: usize, strip: &mut Vec<F>, grad_w: Option<&mut [F]>| -> Result<()> {
            let (c0, cols) = (chunk_starts[c], chunk_cols(c));
            let g = &mut strip[..n * cols];
            for (i, row) in g.chunks_mut(cols).enumerate() {
                let to_probs = row_weight * (chunk_rows[c].lse[i].max - lse[i]).exp();
                row.iter_mut().for_each(|p| *p *= to_probs);
                let y = targets_in_block[i];
                if (c0..c0 + cols).contains(&y) {
                    row[y - c0] -= row_weight;
                }
            }
            if let Some(grad_w) = grad_w {
                let g_t = MatRef::new(&g[..], 0, cols, n, 1, cols)?;
                <F as TileGemm<F>>::gemm(F::ONE, g_t, x, F::ONE, MatMut::new(grad_w, 0, cols, hidden_dim, hidden_dim)?);
            }
            Ok(())
        };
        match grad_weight.as_mut() {
            Some(gw) => strips
                .par_iter_mut()
                .zip(gw.par_chunks_mut(chunk * hidden_dim))
                .enumerate()
                .try_for_each(|(c, (strip, grad_w))| grad_chunk(c, strip, Some(grad_w)))?,
            None => strips.par_iter_mut().enumerate().try_for_each(|(c, strip)| grad_chunk(c, strip, None))?,
        }

        // 4. grad_X = sum_c G_c W_c, rows split across threads.
        let gx_block = &mut gx_block[..n * hidden_dim];
        let rows_per_task = n.div_ceil(rayon::current_num_threads()).max(16);
        let strips = &strips;
        gx_block.par_chunks_mut(rows_per_task * hidden_dim).enumerate().try_for_each(|(task, gx)| -> Result<()> {
            let (i0, m) = (task * rows_per_task, gx.len() / hidden_dim);
            for (c, strip) in strips.iter().enumerate() {
                let cols = chunk_cols(c);
                let g = MatRef::new(&strip[..], i0 * cols, m, cols, cols, 1)?;
                let beta = if c == 0 { F::ZERO } else { F::ONE };
                let out = MatMut::new(&mut gx[..], 0, m, hidden_dim, hidden_dim)?;
                <F as TileGemm<W>>::gemm(F::ONE, g, weight_chunk(c, false)?, beta, out);
            }
            Ok(())
        })?;
        for (src, &r) in gx_block.chunks(hidden_dim).zip(rows) {
            grad_hidden[r * hidden_dim..(r + 1) * hidden_dim].copy_from_slice(src);
        }
    }
    Ok(FusedLinearCrossEntropy { loss_sum, n_valid: valid_rows.len(), grad_hidden, grad_weight })
}

/// `row <- exp(row - max(row))`, returning `(max, sum)`. A row of -inf becomes zeros with an empty state.
#[inline]
fn exp_shifted_in_place<F: SoftmaxFloat>(row: &mut [F]) -> OnlineLse<F> {
    let max = F::row_max(row);
    if max == F::NEG_INFINITY {
        row.fill(F::ZERO);
        return OnlineLse::EMPTY;
    }
    OnlineLse { max, sum: F::exp_shifted(row, max) }
}

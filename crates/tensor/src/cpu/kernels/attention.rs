//! Memory-light attention on the CPU: FlashAttention-2's algorithm with grouped-query heads, causal masking
//! aligned bottom-right (as flash-attn does with a KV cache) and optional segment ids for packed sequences.
//!
//! Queries and keys are walked in `ATTENTION_BLOCK_Q x ATTENTION_BLOCK_K` tiles. No `T x S` matrix is ever made:
//! the forward keeps a running row maximum and row sum (online softmax) and saves only the output and the
//! log-sum-exp of each query row; the backward recomputes the probabilities of each tile from that lse.
//!
//! Notation for one (batch, query head): `Q [T, D]`, `K, V [S, D]` (the kv head the query head maps to),
//! `S = scale * Q K^T`, `P = softmax_row(S + mask)`, `O = P V`, `lse_t = log sum_s exp(S_ts + mask_ts)`.
//!
//! Backward (given `dO`): with `P` rebuilt as `exp(S - lse)` on visible entries,
//! - `dV = P^T dO` (O is linear in V),
//! - `dP = dO V^T`,
//! - softmax: `dS_ts = P_ts (dP_ts - sum_s' P_ts' dP_ts')`, and `sum_s' P_ts' dP_ts' = sum_s' P_ts' (dO_t . V_s')
//!   = dO_t . O_t =: Delta_t`, so `dS = P * (dP - Delta)` needs only the per-row dot `Delta = rowsum(dO * O)`,
//! - `dQ = scale * dS K`, `dK = scale * dS^T Q`.
//!
//! Grouped-query attention sums `dK` and `dV` over the query heads that share a kv head.
//!
//! Parallelism: the forward runs one rayon task per (batch, query head, query block); the backward one task per
//! (batch, kv head), which owns the dK and dV of that kv head and the dQ of its query heads, so no two tasks
//! write the same gradient. Both compute head-major (`[B, H, T, D]`) buffers, which split into disjoint
//! per-task slices, and transpose to the token-major `[B, T, H, D]` layout once at the end.
//!
//! Memory besides inputs and outputs: the head-major copy of each output (same size), `lse` (`B * Hq * T`), one
//! `128 x 128` score tile per forward task and two per backward task, and the backward's `Delta` (`Hq/Hkv * T`
//! per task). Nothing grows with `T * S`.

use super::vector_math::SoftmaxFloat;
use crate::cpu::gemm::{dgemm, sgemm, GemmInput, MatMut, MatRef};
use crate::element::{Element, Float};
use crate::{bail, Result};
use rayon::prelude::*;

/// Query rows per tile. 128 x 128 tiles (64 KiB of f32 scores, in L2) keep the tile GEMMs efficient: measured
/// per core at T = 1024, fwd+bwd ran at 35 GFLOP/s with 64 x 64 tiles, 38 with 64 x 128, 47 with 128 x 64 and 48
/// with 128 x 128 (backward alone 59); smaller tiles waste less of the causal diagonal but that mattered less.
pub const ATTENTION_BLOCK_Q: usize = 128;
/// Key rows per tile.
pub const ATTENTION_BLOCK_K: usize = 128;

/// `C = alpha * A * B + beta * C` with A in the compute type and B in the compute type or a storage type it
/// widens from (f32 compute takes f32, bf16 or f16 for B; f64 takes f64): the tile products of the fused kernels.
pub trait TileGemm<B = Self>: Float {
    fn gemm(alpha: Self, a: MatRef<Self>, b: MatRef<B>, beta: Self, c: MatMut<Self>);
}

impl<B: GemmInput> TileGemm<B> for f32 {
    #[inline]
    fn gemm(alpha: f32, a: MatRef<f32>, b: MatRef<B>, beta: f32, c: MatMut<f32>) {
        sgemm(alpha, a, b, beta, c)
    }
}

impl TileGemm<f64> for f64 {
    #[inline]
    fn gemm(alpha: f64, a: MatRef<f64>, b: MatRef<f64>, beta: f64, c: MatMut<f64>) {
        dgemm(alpha, a, b, beta, c)
    }
}

/// A `[batch, seq, heads, head_dim]` tensor seen through its strides. `head_dim` must be unit-stride (so a head
/// vector is a slice and a tile is a GEMM operand); the other three strides are free, which lets q, k and v be
/// narrow views of a fused qkv projection without a copy.
#[derive(Clone, Copy, Debug)]
pub struct HeadsView<'a, F> {
    data: &'a [F],
    offset: usize,
    shape: [usize; 4],
    batch_stride: usize,
    seq_stride: usize,
    head_stride: usize,
}

impl<'a, F> HeadsView<'a, F> {
    /// `strides` are the batch, seq and head strides; checks that every element is inside `data`.
    pub fn new(data: &'a [F], offset: usize, shape: [usize; 4], strides: [usize; 3]) -> Result<Self> {
        let [batch, seq, heads, head_dim] = shape;
        if shape.iter().all(|&n| n > 0) {
            let last = offset + (batch - 1) * strides[0] + (seq - 1) * strides[1] + (heads - 1) * strides[2] + head_dim - 1;
            if last >= data.len() {
                bail!("attention: a {shape:?} view (strides {strides:?}, offset {offset}) reaches past a buffer of {}", data.len());
            }
        }
        Ok(HeadsView { data, offset, shape, batch_stride: strides[0], seq_stride: strides[1], head_stride: strides[2] })
    }

    /// A contiguous `[batch, seq, heads, head_dim]` buffer.
    pub fn contiguous(data: &'a [F], shape: [usize; 4]) -> Result<Self> {
        let [_, seq, heads, head_dim] = shape;
        if data.len() != shape.iter().product::<usize>() {
            bail!("attention: {} elements do not fill {shape:?}", data.len());
        }
        Self::new(data, 0, shape, [seq * heads * head_dim, heads * head_dim, head_dim])
    }

    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    #[inline]
    fn start(&self, b: usize, t: usize, h: usize) -> usize {
        self.offset + b * self.batch_stride + t * self.seq_stride + h * self.head_stride
    }

    /// The head vector of token `t`.
    #[inline]
    fn row(&self, b: usize, t: usize, h: usize) -> &'a [F] {
        let start = self.start(b, t, h);
        &self.data[start..start + self.shape[3]]
    }

    /// Tokens `t0..t0 + rows` of one head as a `[rows, head_dim]` GEMM operand.
    fn tile(&self, b: usize, t0: usize, rows: usize, h: usize) -> Result<MatRef<'a, F>> {
        MatRef::new(self.data, self.start(b, t0, h), rows, self.shape[3], self.seq_stride, 1)
    }

    /// The same tokens transposed: a `[head_dim, rows]` operand.
    fn tile_t(&self, b: usize, t0: usize, rows: usize, h: usize) -> Result<MatRef<'a, F>> {
        MatRef::new(self.data, self.start(b, t0, h), self.shape[3], rows, 1, self.seq_stride)
    }
}

/// Which keys a query may see, besides the kv length.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionMask<'a> {
    /// Query `t` sees key `s` only if `s <= t + (S - T)` (bottom-right alignment: with `S > T` the queries are the
    /// last `T` positions of the sequence, as when decoding with a KV cache).
    pub causal: bool,
    /// `[batch, T]` segment ids of packed sequences (requires `S == T`): query `t` sees key `s` only if
    /// `segment[s] == segment[t]`.
    pub segment_ids: Option<&'a [i64]>,
}

/// The geometry shared by every tile of one call.
#[derive(Clone, Copy, Debug)]
struct Problem<'a> {
    batch: usize,
    q_len: usize,
    kv_len: usize,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    causal: bool,
    segment_ids: Option<&'a [i64]>,
}

impl<'a> Problem<'a> {
    fn new<F>(q: &HeadsView<F>, k: &HeadsView<F>, v: &HeadsView<F>, mask: AttentionMask<'a>) -> Result<Self> {
        let [batch, q_len, q_heads, head_dim] = q.shape;
        let [kb, kv_len, kv_heads, kd] = k.shape;
        if k.shape != v.shape || kb != batch || kd != head_dim {
            bail!("attention: q {:?}, k {:?} and v {:?} do not agree ([B, T, Hq, D] and [B, S, Hkv, D])", q.shape, k.shape, v.shape);
        }
        if kv_heads == 0 || q_heads % kv_heads != 0 {
            bail!("attention: {q_heads} query heads are not a multiple of {kv_heads} kv heads");
        }
        if head_dim == 0 {
            bail!("attention: head_dim is 0");
        }
        if let Some(seg) = mask.segment_ids {
            if kv_len != q_len || seg.len() != batch * q_len {
                bail!("attention: segment ids need S == T and [B, T] ids; got T {q_len}, S {kv_len}, {} ids", seg.len());
            }
        }
        Ok(Problem { batch, q_len, kv_len, q_heads, kv_heads, head_dim, causal: mask.causal, segment_ids: mask.segment_ids })
    }

    fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }

    fn segments(&self, b: usize) -> Option<&'a [i64]> {
        self.segment_ids.map(|s| &s[b * self.q_len..(b + 1) * self.q_len])
    }

    /// One past the last key query `t` may see (causal bound only).
    #[inline]
    fn key_end(&self, t: usize) -> usize {
        if self.causal {
            (t + 1 + self.kv_len).saturating_sub(self.q_len).min(self.kv_len)
        } else {
            self.kv_len
        }
    }

    /// The first query that may see key `s` (causal bound only).
    fn first_query(&self, s: usize) -> usize {
        if self.causal {
            (s + self.q_len).saturating_sub(self.kv_len).min(self.q_len)
        } else {
            0
        }
    }
}

/// `(min, max)` segment id of each block of `block` positions; two blocks whose ranges do not overlap share no
/// segment, so their tile is skipped (with packed, sorted segments that skips most off-diagonal tiles).
fn segment_block_ranges(segments: Option<&[i64]>, block: usize) -> Option<Vec<(i64, i64)>> {
    segments.map(|s| {
        s.chunks(block).map(|c| c.iter().fold((i64::MAX, i64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)))).collect()
    })
}

fn ranges_overlap(q: Option<&Vec<(i64, i64)>>, k: Option<&Vec<(i64, i64)>>, qb: usize, kb: usize) -> bool {
    match (q, k) {
        (Some(q), Some(k)) => q[qb].0 <= k[kb].1 && k[kb].0 <= q[qb].1,
        _ => true,
    }
}

/// Mask one score row in place (invisible entries become -inf) and return how many leading keys can be visible.
/// `t` is the query, `s0` the first key of the tile.
#[inline]
fn mask_row<F: Float>(p: &Problem, segments: Option<&[i64]>, t: usize, s0: usize, row: &mut [F]) -> usize {
    let visible = p.key_end(t).saturating_sub(s0).min(row.len());
    row[visible..].fill(F::NEG_INFINITY);
    if let Some(seg) = segments {
        let own = seg[t];
        for (x, &other) in row[..visible].iter_mut().zip(&seg[s0..]) {
            if other != own {
                *x = F::NEG_INFINITY;
            }
        }
    }
    visible
}

/// Forward: returns `(out [B, T, Hq, D], lse [B, Hq, T])`. A query row that sees no key gets a zero output and
/// `lse = -inf`.
pub fn flash_attention_forward<F: TileGemm + SoftmaxFloat>(
    q: HeadsView<F>,
    k: HeadsView<F>,
    v: HeadsView<F>,
    scale: F,
    mask: AttentionMask,
) -> Result<(Vec<F>, Vec<F>)> {
    let p = Problem::new(&q, &k, &v, mask)?;
    let (t_len, d) = (p.q_len, p.head_dim);
    let mut out_heads = vec![F::ZERO; p.batch * p.q_heads * t_len * d];
    let mut lse = vec![F::NEG_INFINITY; p.batch * p.q_heads * t_len];
    if out_heads.is_empty() {
        return Ok((out_heads, lse));
    }
    let q_ranges: Vec<_> = (0..p.batch).map(|b| segment_block_ranges(p.segments(b), ATTENTION_BLOCK_Q)).collect();
    let k_ranges: Vec<_> = (0..p.batch).map(|b| segment_block_ranges(p.segments(b), ATTENTION_BLOCK_K)).collect();
    out_heads.par_chunks_mut(t_len * d).zip(lse.par_chunks_mut(t_len)).enumerate().try_for_each(|(bh, (out, lse))| {
        let (b, h) = (bh / p.q_heads, bh % p.q_heads);
        out.par_chunks_mut(ATTENTION_BLOCK_Q * d).zip(lse.par_chunks_mut(ATTENTION_BLOCK_Q)).enumerate().try_for_each(
            |(qb, (out, lse))| {
                let tile = ForwardTile { p: &p, q: &q, k: &k, v: &v, scale, b, h, qb };
                tile.run(out, lse, q_ranges[b].as_ref(), k_ranges[b].as_ref())
            },
        )
    })?;
    Ok((heads_to_tokens(&out_heads, p.batch, p.q_heads, t_len, d), lse))
}

/// One query block of one (batch, head): streams the visible key blocks through an online softmax.
struct ForwardTile<'a, 'p, F> {
    p: &'a Problem<'p>,
    q: &'a HeadsView<'a, F>,
    k: &'a HeadsView<'a, F>,
    v: &'a HeadsView<'a, F>,
    scale: F,
    b: usize,
    h: usize,
    qb: usize,
}

impl<F: TileGemm + SoftmaxFloat> ForwardTile<'_, '_, F> {
    /// `out` ([rows, D], zeroed) doubles as the unnormalised accumulator `sum_s exp(S_ts - m_t) V_s`.
    fn run(&self, out: &mut [F], lse: &mut [F], q_ranges: Option<&Vec<(i64, i64)>>, k_ranges: Option<&Vec<(i64, i64)>>) -> Result<()> {
        let (p, d) = (self.p, self.p.head_dim);
        let rows = lse.len();
        let t0 = self.qb * ATTENTION_BLOCK_Q;
        let kv_head = self.h / p.group();
        let segments = p.segments(self.b);
        let q_tile = self.q.tile(self.b, t0, rows, self.h)?;
        let mut running_max = vec![F::NEG_INFINITY; rows];
        let mut running_sum = vec![F::ZERO; rows];
        let mut scores = vec![F::ZERO; rows * ATTENTION_BLOCK_K];
        let key_end = p.key_end(t0 + rows - 1);
        for (kb, s0) in (0..key_end).step_by(ATTENTION_BLOCK_K).enumerate() {
            if !ranges_overlap(q_ranges, k_ranges, self.qb, kb) {
                continue;
            }
            let cols = ATTENTION_BLOCK_K.min(p.kv_len - s0);
            let scores = &mut scores[..rows * cols];
            let k_t = self.k.tile_t(self.b, s0, cols, kv_head)?;
            F::gemm(self.scale, q_tile, k_t, F::ZERO, MatMut::new(scores, 0, rows, cols, cols)?);
            for (i, row) in scores.chunks_mut(cols).enumerate() {
                let visible = mask_row(p, segments, t0 + i, s0, row);
                let new_max = running_max[i].max(F::row_max(&row[..visible]));
                if new_max == F::NEG_INFINITY {
                    // Nothing visible so far: this row contributes nothing yet (and exp(-inf - -inf) would be NaN).
                    row.fill(F::ZERO);
                    continue;
                }
                let tile_sum = F::exp_shifted(row, new_max);
                let correction = (running_max[i] - new_max).exp();
                running_sum[i] = running_sum[i] * correction + tile_sum;
                running_max[i] = new_max;
                if correction != F::ONE {
                    out[i * d..(i + 1) * d].iter_mut().for_each(|o| *o *= correction);
                }
            }
            let v_tile = self.v.tile(self.b, s0, cols, kv_head)?;
            let probs = MatRef::new(&scores[..], 0, rows, cols, cols, 1)?;
            F::gemm(F::ONE, probs, v_tile, F::ONE, MatMut::new(out, 0, rows, d, d)?);
        }
        for (i, out_row) in out.chunks_mut(d).enumerate() {
            if running_sum[i] > F::ZERO {
                let inv = running_sum[i].recip();
                out_row.iter_mut().for_each(|o| *o *= inv);
                lse[i] = running_max[i] + running_sum[i].ln();
            } else {
                out_row.fill(F::ZERO);
                lse[i] = F::NEG_INFINITY;
            }
        }
        Ok(())
    }
}

/// Backward: returns `(dq [B, T, Hq, D], dk [B, S, Hkv, D], dv [B, S, Hkv, D])`. `out` and `lse` are what the
/// forward returned for the same inputs and mask.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward<F: TileGemm + SoftmaxFloat>(
    q: HeadsView<F>,
    k: HeadsView<F>,
    v: HeadsView<F>,
    out: HeadsView<F>,
    lse: &[F],
    d_out: HeadsView<F>,
    scale: F,
    mask: AttentionMask,
) -> Result<(Vec<F>, Vec<F>, Vec<F>)> {
    let p = Problem::new(&q, &k, &v, mask)?;
    if out.shape != q.shape || d_out.shape != q.shape || lse.len() != p.batch * p.q_heads * p.q_len {
        bail!(
            "attention backward: out {:?} and grad_out {:?} must match q {:?}, and lse must hold B*Hq*T = {} values (got {})",
            out.shape,
            d_out.shape,
            q.shape,
            p.batch * p.q_heads * p.q_len,
            lse.len()
        );
    }
    let (t_len, s_len, d, group) = (p.q_len, p.kv_len, p.head_dim, p.group());
    let mut dq_heads = vec![F::ZERO; p.batch * p.q_heads * t_len * d];
    let mut dk_heads = vec![F::ZERO; p.batch * p.kv_heads * s_len * d];
    let mut dv_heads = vec![F::ZERO; p.batch * p.kv_heads * s_len * d];
    if !dq_heads.is_empty() && !dk_heads.is_empty() {
        let tasks = dq_heads
            .par_chunks_mut(group * t_len * d)
            .zip(dk_heads.par_chunks_mut(s_len * d))
            .zip(dv_heads.par_chunks_mut(s_len * d));
        tasks.enumerate().try_for_each(|(bg, ((dq, dk), dv))| {
            let (b, kv_head) = (bg / p.kv_heads, bg % p.kv_heads);
            let task = BackwardTask { p: &p, q: &q, k: &k, v: &v, out: &out, d_out: &d_out, lse, scale, b, kv_head };
            task.run(dq, dk, dv)
        })?;
    }
    Ok((
        heads_to_tokens(&dq_heads, p.batch, p.q_heads, t_len, d),
        heads_to_tokens(&dk_heads, p.batch, p.kv_heads, s_len, d),
        heads_to_tokens(&dv_heads, p.batch, p.kv_heads, s_len, d),
    ))
}

/// Everything one (batch, kv head) contributes to the gradients.
struct BackwardTask<'a, 'p, F> {
    p: &'a Problem<'p>,
    q: &'a HeadsView<'a, F>,
    k: &'a HeadsView<'a, F>,
    v: &'a HeadsView<'a, F>,
    out: &'a HeadsView<'a, F>,
    d_out: &'a HeadsView<'a, F>,
    lse: &'a [F],
    scale: F,
    b: usize,
    kv_head: usize,
}

impl<F: TileGemm + SoftmaxFloat> BackwardTask<'_, '_, F> {
    /// `dq` is `[group, T, D]` (this kv head's query heads), `dk` and `dv` are `[S, D]`; all start at zero.
    fn run(&self, dq: &mut [F], dk: &mut [F], dv: &mut [F]) -> Result<()> {
        let (p, b, d) = (self.p, self.b, self.p.head_dim);
        let (t_len, s_len, group) = (p.q_len, p.kv_len, p.group());
        let segments = p.segments(b);
        let q_ranges = segment_block_ranges(segments, ATTENTION_BLOCK_Q);
        let k_ranges = segment_block_ranges(segments, ATTENTION_BLOCK_K);
        let heads: Vec<usize> = (0..group).map(|r| self.kv_head * group + r).collect();
        // Delta_t = dO_t . O_t for every query row of every head in the group.
        let delta: Vec<Vec<F>> = heads
            .iter()
            .map(|&h| {
                (0..t_len).map(|t| self.d_out.row(b, t, h).iter().zip(self.out.row(b, t, h)).map(|(&g, &o)| g * o).sum()).collect()
            })
            .collect();
        // On the heap: two 128 x 128 tiles are 128 KiB (256 KiB in f64), too much for a rayon thread's stack frame.
        #[allow(clippy::useless_vec)]
        let (mut probs, mut d_scores) =
            (vec![F::ZERO; ATTENTION_BLOCK_Q * ATTENTION_BLOCK_K], vec![F::ZERO; ATTENTION_BLOCK_Q * ATTENTION_BLOCK_K]);
        for (kb, s0) in (0..s_len).step_by(ATTENTION_BLOCK_K).enumerate() {
            let cols = ATTENTION_BLOCK_K.min(s_len - s0);
            let k_tile = self.k.tile(b, s0, cols, self.kv_head)?;
            let k_t = self.k.tile_t(b, s0, cols, self.kv_head)?;
            let v_t = self.v.tile_t(b, s0, cols, self.kv_head)?;
            let first_block = p.first_query(s0) / ATTENTION_BLOCK_Q;
            for (r, &h) in heads.iter().enumerate() {
                let lse = &self.lse[(b * p.q_heads + h) * t_len..][..t_len];
                for qb in first_block..t_len.div_ceil(ATTENTION_BLOCK_Q) {
                    if !ranges_overlap(q_ranges.as_ref(), k_ranges.as_ref(), qb, kb) {
                        continue;
                    }
                    let t0 = qb * ATTENTION_BLOCK_Q;
                    let rows = ATTENTION_BLOCK_Q.min(t_len - t0);
                    let probs = &mut probs[..rows * cols];
                    let d_scores = &mut d_scores[..rows * cols];
                    let q_tile = self.q.tile(b, t0, rows, h)?;
                    let do_tile = self.d_out.tile(b, t0, rows, h)?;
                    // P = exp(scale Q K^T - lse) on visible entries, 0 elsewhere.
                    F::gemm(self.scale, q_tile, k_t, F::ZERO, MatMut::new(probs, 0, rows, cols, cols)?);
                    let mut any_visible = false;
                    for (i, row) in probs.chunks_mut(cols).enumerate() {
                        let t = t0 + i;
                        any_visible |= mask_row(p, segments, t, s0, row) > 0;
                        if lse[t] == F::NEG_INFINITY {
                            row.fill(F::ZERO); // the query sees no key at all
                        } else {
                            F::exp_shifted(row, lse[t]);
                        }
                    }
                    if !any_visible {
                        continue;
                    }
                    let probs = &probs[..];
                    // dV += P^T dO
                    let probs_t = MatRef::new(probs, 0, cols, rows, 1, cols)?;
                    F::gemm(F::ONE, probs_t, do_tile, F::ONE, MatMut::new(dv, s0 * d, cols, d, d)?);
                    // dP = dO V^T, then dS = P * (dP - Delta) in place.
                    F::gemm(F::ONE, do_tile, v_t, F::ZERO, MatMut::new(d_scores, 0, rows, cols, cols)?);
                    for (i, (ds_row, p_row)) in d_scores.chunks_mut(cols).zip(probs.chunks(cols)).enumerate() {
                        let row_delta = delta[r][t0 + i];
                        for (ds, &pr) in ds_row.iter_mut().zip(p_row) {
                            *ds = pr * (*ds - row_delta);
                        }
                    }
                    let d_scores = &d_scores[..];
                    // dQ += scale dS K ; dK += scale dS^T Q
                    let ds = MatRef::new(d_scores, 0, rows, cols, cols, 1)?;
                    let ds_t = MatRef::new(d_scores, 0, cols, rows, 1, cols)?;
                    F::gemm(self.scale, ds, k_tile, F::ONE, MatMut::new(dq, (r * t_len + t0) * d, rows, d, d)?);
                    F::gemm(self.scale, ds_t, q_tile, F::ONE, MatMut::new(dk, s0 * d, cols, d, d)?);
                }
            }
        }
        Ok(())
    }
}

/// `[B, H, T, D]` (the per-task layout) to `[B, T, H, D]` (the tensor layout).
fn heads_to_tokens<F: Element>(src: &[F], batch: usize, heads: usize, seq: usize, head_dim: usize) -> Vec<F> {
    let mut dst = vec![F::default(); src.len()];
    if dst.is_empty() {
        return dst;
    }
    debug_assert_eq!(src.len(), batch * heads * seq * head_dim);
    dst.par_chunks_mut(heads * head_dim).enumerate().for_each(|(bt, token)| {
        let (b, t) = (bt / seq, bt % seq);
        for (h, out) in token.chunks_mut(head_dim).enumerate() {
            let start = ((b * heads + h) * seq + t) * head_dim;
            out.copy_from_slice(&src[start..start + head_dim]);
        }
    });
    dst
}

//! Matrix-vector products (m == 1 or n == 1), without packing.
//!
//! With a single output row or column every input element is used once, so packing would copy as much data as
//! the product reads, and a 1-row product would waste all but one row of each MR-row micro-kernel call. Both
//! cases become `out = alpha * x · M + beta * out` for a vector `x` and a `k x len` matrix `M` (for n == 1, `M` is
//! Aᵀ and `x` the column of B), computed either as a sum of scaled rows of `M` (when its rows are contiguous)
//! or as dot products with its columns (when those are), in loops the compiler vectorises.

use super::pack::Widen;
use super::{MatMut, MatRef};
use crate::element::Float;
use rayon::prelude::*;

/// Below this many multiply-adds a matrix-vector product stays on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// A strided vector: element `i` at `offset + i * stride`.
#[derive(Clone, Copy)]
struct Strided {
    offset: usize,
    stride: usize,
}

/// Run the product if it is a matrix-vector one; false (having done nothing) otherwise.
pub(crate) fn try_gemv<T: Float, SA: Widen<T>, SB: Widen<T>>(
    alpha: T,
    a: &MatRef<SA>,
    b: &MatRef<SB>,
    beta: T,
    c: &mut MatMut<T>,
) -> bool {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let work = m.saturating_mul(n).saturating_mul(k);
    let threads = if work < PARALLEL_MIN_WORK { 1 } else { rayon::current_num_threads() };
    if m == 1 {
        // C row = A row · B.
        let x = Strided { offset: a.offset, stride: a.col_stride };
        let out = Strided { offset: c.offset, stride: 1 };
        vector_times_matrix(alpha, a.data, x, b.data, b.offset, b.row_stride, b.col_stride, k, n, beta, c.data, out, threads);
        true
    } else if n == 1 {
        // C column = A · B column, i.e. Cᵀ = B columnᵀ · Aᵀ.
        let x = Strided { offset: b.offset, stride: b.row_stride };
        let out = Strided { offset: c.offset, stride: c.row_stride };
        vector_times_matrix(alpha, b.data, x, a.data, a.offset, a.col_stride, a.row_stride, k, m, beta, c.data, out, threads);
        true
    } else {
        false
    }
}

/// `out[j] = alpha * sum_p x[p] * M[p, j] + beta * out[j]` for `j < len`, `p < k`, with
/// `M[p, j] = mat[mat_offset + p * row_stride + j * col_stride]`. `beta == 0` ignores `out`'s old values.
#[allow(clippy::too_many_arguments)]
fn vector_times_matrix<T: Float, SX: Widen<T>, SM: Widen<T>>(
    alpha: T,
    xs: &[SX],
    x: Strided,
    mat: &[SM],
    mat_offset: usize,
    row_stride: usize,
    col_stride: usize,
    k: usize,
    len: usize,
    beta: T,
    out_data: &mut [T],
    out: Strided,
    threads: usize,
) {
    let x: Vec<T> = (0..k).map(|p| xs[x.offset + p * x.stride].widen()).collect();
    let mut sums = vec![T::ZERO; len];
    // Outputs are computed in independent chunks small enough that a chunk's sums and one widened row of it
    // stay in L1 while all k rows stream past (and that give threads something to share).
    const CHUNK: usize = 512;
    let compute = |(index, sums): (usize, &mut [T])| {
        let j0 = index * CHUNK;
        if col_stride == 1 {
            // Rows of M are contiguous: add x[p] times row p, row after row.
            let mut row = [T::ZERO; CHUNK];
            let row = &mut row[..sums.len()];
            for (p, &xp) in x.iter().enumerate() {
                SM::widen_slice(&mat[mat_offset + p * row_stride + j0..][..sums.len()], row);
                for (s, &m) in sums.iter_mut().zip(row.iter()) {
                    *s += xp * m;
                }
            }
        } else if row_stride == 1 {
            // Columns of M are contiguous: one dot product each.
            let mut column = vec![T::ZERO; k];
            for (j, s) in sums.iter_mut().enumerate() {
                SM::widen_slice(&mat[mat_offset + (j0 + j) * col_stride..][..k], &mut column);
                *s = dot(&x, &column);
            }
        } else {
            for (j, s) in sums.iter_mut().enumerate() {
                let base = mat_offset + (j0 + j) * col_stride;
                *s = x.iter().enumerate().fold(T::ZERO, |acc, (p, &a)| acc + a * mat[base + p * row_stride].widen());
            }
        }
    };
    if threads > 1 && len > CHUNK {
        sums.par_chunks_mut(CHUNK).enumerate().for_each(compute);
    } else {
        sums.chunks_mut(CHUNK).enumerate().for_each(compute);
    }
    for (j, &s) in sums.iter().enumerate() {
        let dst = &mut out_data[out.offset + j * out.stride];
        *dst = if beta == T::ZERO { alpha * s } else { alpha * s + beta * *dst };
    }
}

/// Dot product with 16 independent partial sums, so the compiler can keep them in vector lanes (a single running
/// sum would serialise every addition). Also the inner product of the skinny kernels (`skinny.rs`).
#[inline(always)]
pub(super) fn dot<T: Float>(x: &[T], y: &[T]) -> T {
    const LANES: usize = 16;
    let mut partial = [T::ZERO; LANES];
    let (x_body, x_tail) = x.split_at(x.len() / LANES * LANES);
    let (y_body, y_tail) = y.split_at(x_body.len());
    for (xs, ys) in x_body.chunks_exact(LANES).zip(y_body.chunks_exact(LANES)) {
        for ((acc, &a), &b) in partial.iter_mut().zip(xs).zip(ys) {
            *acc += a * b;
        }
    }
    let tail = x_tail.iter().zip(y_tail).fold(T::ZERO, |acc, (&a, &b)| acc + a * b);
    partial.iter().fold(tail, |acc, &p| acc + p)
}

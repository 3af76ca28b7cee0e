//! Products with few rows or few columns (2 to [`MAX_SKINNY`]), without packing the large operand.
//!
//! LoRA's rank-r branches are made of such products: `x Aᵀ` (`[N, in] x [in, r]`), `G B` (`[N, out] x [out, r]`),
//! `Xᵀ G'` (`[in, N] x [N, r]`) and `(x Aᵀ)ᵀ G` (`[r, N] x [N, out]`), with r = 8 against N, in, out in the
//! hundreds or thousands. The packed path would copy the whole large operand into micro-panels to use it for r
//! rows or columns only (and run a 12 x 32 micro-kernel on an r-wide edge), so packing costs more than the
//! arithmetic. Here the few short vectors (`s` rows of A, or the `s` columns of B) are widened once into a small
//! buffer that stays in L1, and the large operand streams past once, read in whichever direction it is
//! contiguous:
//!
//! - rows of the large matrix `M` contiguous: `sums[i, j] += x[i, p] * M[p, j]` row after row (axpy form);
//! - columns of `M` contiguous: `sums[i, j] = x[i, :] · M[:, j]` (dot form).
//!
//! Few columns is the transposed problem, `Cᵀ = Bᵀ Aᵀ`, written back transposed. A large operand that is
//! contiguous in neither direction goes to the packed path. The loops are plain Rust compiled once per SIMD
//! level (AVX-512F, AVX2+FMA, baseline), chosen at run time like the micro-kernels.

use super::gemv::dot;
use super::pack::Widen;
use super::{GemmKernel, MatMut, MatRef};
use crate::element::Float;
use rayon::prelude::*;

/// The most rows (or columns) of C this path takes: up to LoRA rank 16; wider products repay packing.
pub(crate) const MAX_SKINNY: usize = 16;

/// Output columns per task: `s x CHUNK` running sums (16 KiB at s = 16) stay in L1 with one widened row.
const CHUNK: usize = 256;

/// Below this many multiply-adds the product stays on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// The large operand `M` (`k x len`): element `(p, j)` at `offset + p * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
struct Large<'a, S> {
    data: &'a [S],
    offset: usize,
    row_stride: usize,
    col_stride: usize,
}

/// Where output `(i, j)` (`i < s`, `j < len`) goes in C's storage.
#[derive(Clone, Copy)]
struct OutLayout {
    offset: usize,
    row_stride: usize,
    col_stride: usize,
}

/// Run the product here if C has 2 to [`MAX_SKINNY`] rows or columns and the large operand is contiguous in
/// one direction; false (having done nothing) otherwise.
pub(crate) fn try_skinny<T: Float, SA: Widen<T>, SB: Widen<T>>(
    kernel: GemmKernel,
    alpha: T,
    a: &MatRef<SA>,
    b: &MatRef<SB>,
    beta: T,
    c: &mut MatMut<T>,
) -> bool {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let one_way = |row_stride: usize, col_stride: usize| row_stride == 1 || col_stride == 1;
    let threads = if m.saturating_mul(n).saturating_mul(k) < PARALLEL_MIN_WORK { 1 } else { rayon::current_num_threads() };
    if (2..=MAX_SKINNY).contains(&m) && m <= n && one_way(b.row_stride, b.col_stride) {
        // C = A B: the m rows of A times B.
        let x = widen_vectors(a.data, a.offset, a.row_stride, a.col_stride, m, k);
        let large = Large { data: b.data, offset: b.offset, row_stride: b.row_stride, col_stride: b.col_stride };
        let out = OutLayout { offset: c.offset, row_stride: c.row_stride, col_stride: 1 };
        vectors_times_large(kernel, alpha, &x, m, k, large, n, beta, c.data, out, threads);
        true
    } else if (2..=MAX_SKINNY).contains(&n) && n <= m && one_way(a.row_stride, a.col_stride) {
        // Cᵀ = Bᵀ Aᵀ: the n columns of B times Aᵀ, written back transposed.
        let x = widen_vectors(b.data, b.offset, b.col_stride, b.row_stride, n, k);
        let large = Large { data: a.data, offset: a.offset, row_stride: a.col_stride, col_stride: a.row_stride };
        let out = OutLayout { offset: c.offset, row_stride: 1, col_stride: c.row_stride };
        vectors_times_large(kernel, alpha, &x, n, k, large, m, beta, c.data, out, threads);
        true
    } else {
        false
    }
}

/// `s` vectors of length `k` (vector `i`, step `p` at `offset + i * vector_stride + p * step_stride`), widened
/// into one row-major `s x k` buffer.
fn widen_vectors<T: Float, S: Widen<T>>(data: &[S], offset: usize, vector_stride: usize, step_stride: usize, s: usize, k: usize) -> Vec<T> {
    let mut x = vec![T::ZERO; s * k];
    for (i, row) in x.chunks_exact_mut(k.max(1)).enumerate().take(s) {
        let base = offset + i * vector_stride;
        if step_stride == 1 {
            <S as Widen<T>>::widen_slice(&data[base..][..k], row);
        } else {
            for (p, v) in row.iter_mut().enumerate() {
                *v = data[base + p * step_stride].widen();
            }
        }
    }
    x
}

/// `out(i, j) = alpha * sum_p x[i, p] * M[p, j] + beta * out(i, j)` for `i < s`, `j < len`; `beta == 0`
/// ignores out's old values.
#[allow(clippy::too_many_arguments)]
fn vectors_times_large<T: Float, S: Widen<T>>(
    kernel: GemmKernel,
    alpha: T,
    x: &[T],
    s: usize,
    k: usize,
    large: Large<'_, S>,
    len: usize,
    beta: T,
    out_data: &mut [T],
    out: OutLayout,
    threads: usize,
) {
    // Chunk-major running sums: chunk `c` holds `[i][j - c * CHUNK]` for its CHUNK output columns.
    let mut sums = vec![T::ZERO; len.div_ceil(CHUNK) * s * CHUNK];
    let level = kernel.resolve();
    let compute = |(index, block): (usize, &mut [T])| {
        let j0 = index * CHUNK;
        let width = CHUNK.min(len - j0);
        // SAFETY: `resolve` only returns a kernel whose CPU features are present.
        unsafe {
            match level {
                #[cfg(target_arch = "x86_64")]
                GemmKernel::Avx512 => chunk_avx512(x, s, k, &large, j0, width, block),
                #[cfg(target_arch = "x86_64")]
                GemmKernel::Avx2 => chunk_avx2(x, s, k, &large, j0, width, block),
                _ => chunk_portable(x, s, k, &large, j0, width, block),
            }
        }
    };
    if threads > 1 && len > CHUNK {
        sums.par_chunks_mut(s * CHUNK).enumerate().for_each(compute);
    } else {
        sums.chunks_mut(s * CHUNK).enumerate().for_each(compute);
    }
    for (index, block) in sums.chunks(s * CHUNK).enumerate() {
        let j0 = index * CHUNK;
        let width = CHUNK.min(len - j0);
        for i in 0..s {
            for (j, &v) in block[i * CHUNK..][..width].iter().enumerate() {
                let dst = &mut out_data[out.offset + i * out.row_stride + (j0 + j) * out.col_stride];
                *dst = if beta == T::ZERO { alpha * v } else { alpha * v + beta * *dst };
            }
        }
    }
}

/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chunk_avx512<T: Float, S: Widen<T>>(x: &[T], s: usize, k: usize, large: &Large<'_, S>, j0: usize, width: usize, block: &mut [T]) {
    chunk(x, s, k, large, j0, width, block)
}

/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chunk_avx2<T: Float, S: Widen<T>>(x: &[T], s: usize, k: usize, large: &Large<'_, S>, j0: usize, width: usize, block: &mut [T]) {
    chunk(x, s, k, large, j0, width, block)
}

/// # Safety
/// None (the same signature as the SIMD variants).
unsafe fn chunk_portable<T: Float, S: Widen<T>>(x: &[T], s: usize, k: usize, large: &Large<'_, S>, j0: usize, width: usize, block: &mut [T]) {
    chunk(x, s, k, large, j0, width, block)
}

/// The sums of output columns `j0..j0 + width` into `block` (`[i][j - j0]`, row stride CHUNK). Inlined into each
/// SIMD-level wrapper so the compiler vectorises it for that level.
#[inline(always)]
fn chunk<T: Float, S: Widen<T>>(x: &[T], s: usize, k: usize, large: &Large<'_, S>, j0: usize, width: usize, block: &mut [T]) {
    if large.col_stride == 1 {
        // Rows of M are contiguous: add x[i, p] times row p, row after row.
        let mut row = [T::ZERO; CHUNK];
        let row = &mut row[..width];
        for p in 0..k {
            <S as Widen<T>>::widen_slice(&large.data[large.offset + p * large.row_stride + j0..][..width], row);
            for i in 0..s {
                let xp = x[i * k + p];
                for (acc, &v) in block[i * CHUNK..][..width].iter_mut().zip(row.iter()) {
                    *acc += xp * v;
                }
            }
        }
    } else {
        // Columns of M are contiguous (row stride 1): one dot product per vector and column.
        let mut column = vec![T::ZERO; k];
        for j in 0..width {
            <S as Widen<T>>::widen_slice(&large.data[large.offset + (j0 + j) * large.col_stride..][..k], &mut column);
            for i in 0..s {
                block[i * CHUNK + j] = dot(&x[i * k..][..k], &column);
            }
        }
    }
}


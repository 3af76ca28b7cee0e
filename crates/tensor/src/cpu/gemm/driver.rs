//! The blocked loop nest around the micro-kernel, and how it is split across rayon threads.
//!
//! With `C` row-major, the micro-kernel's vectors run along n (`NR` columns of B) and it broadcasts `MR`
//! values of A per k. The loops, outermost first:
//!
//! ```text
//! for each row block of MB rows (bounds the packed-A buffer; one block for all but huge m*k)
//!     pack A[rows, 0..k] into MR x KC micro-panels, grouped by k block          (shared, read-only, ~L3)
//!     for each column tile of C (NR-aligned; one rayon task each)
//!         for each k block of KC
//!             pack B[k block, tile columns] into KC x NR micro-panels          (task-local, ~L2)
//!             for each A micro-panel (MR rows)                                  (~L1, reused across the tile)
//!                 for each B micro-panel (NR columns)                           (streams from L2)
//!                     micro-kernel: C[MR x NR] (+)= alpha * A_panel * B_panel
//! ```
//!
//! `KC` is chosen so that one A micro-panel plus one B micro-panel fit in L1 together (the A panel survives the
//! whole sweep over the tile's B panels), and `NC` (the widest tile) so that the `KC x NC` packed B block sits
//! comfortably in L2. The first k block applies `beta` to C (and never reads C when `beta == 0`); later k blocks
//! accumulate into it.
//!
//! Tiles: the n dimension is cut into about `n / NC` NR-aligned tiles, rounded up to a multiple of the thread
//! count so two threads get equal work; when n is too narrow for that, m is cut too (each such tile packs its
//! own copy of the small B block). Products too small to repay a fork run on the calling thread.

use super::pack::{self, PackScratch, Widen};
use super::{MatMut, MatRef};
use crate::element::Float;
use rayon::prelude::*;

/// `c (rows x cols, row stride ldc) = alpha * a_panel * b_panel + beta * c`, over `kc` packed k steps.
///
/// # Safety
/// `a` points to `kc * MR` readable values, `b` to `kc * NR`, and `c` to a `rows x cols` block with row stride
/// `ldc` that is valid for reads and writes, with `rows <= MR` and `cols <= NR`. When `beta == 0` the kernel
/// must not read C.
pub(crate) type KernelFn<T> =
    unsafe fn(kc: usize, a: *const T, b: *const T, c: *mut T, ldc: usize, rows: usize, cols: usize, alpha: T, beta: T);

/// A micro-kernel and the blocking tuned for it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MicroKernel<T> {
    /// Rows of C per call (values of A broadcast per k).
    pub mr: usize,
    /// Columns of C per call (the vector width times the vectors per row).
    pub nr: usize,
    /// Largest k block.
    pub kc: usize,
    /// Widest column tile (its packed B block is `kc x nc`).
    pub nc: usize,
    /// Pack with the AVX-512 packers (where the input type has one).
    pub avx512_packing: bool,
    pub run: KernelFn<T>,
}

/// Below this many multiply-adds (`m * n * k`) the product runs on the calling thread: a rayon fork costs a few
/// microseconds, about what 2^21 multiply-adds take on one core.
const PARALLEL_MIN_WORK: usize = 1 << 21;

/// Cap on the packed A block (elements): bounds the per-thread scratch memory for very large `m * k`.
const PACKED_A_MAX: usize = 1 << 22;

/// A column tile of C (and the row range of the row block it covers).
#[derive(Clone, Copy, Debug)]
struct Tile {
    row0: usize,
    rows: usize,
    col0: usize,
    cols: usize,
}

/// C's storage shared by the tasks. Each task writes only its own tile, and tiles do not overlap.
#[derive(Clone, Copy)]
struct SharedOut<T>(*mut T);
// SAFETY: the pointer is only dereferenced inside disjoint tiles (see `run_tile`), so sending it to other threads
// cannot create overlapping writes; `T` itself is Send.
unsafe impl<T: Send> Send for SharedOut<T> {}
unsafe impl<T: Send> Sync for SharedOut<T> {}

pub(crate) fn gemm<T, SA, SB>(mk: &MicroKernel<T>, alpha: T, a: MatRef<SA>, b: MatRef<SB>, beta: T, c: MatMut<T>)
where
    T: Float + PackScratch,
    SA: Widen<T>,
    SB: Widen<T>,
{
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        scale_output(beta, c);
        return;
    }
    let threads = if m.saturating_mul(n).saturating_mul(k) < PARALLEL_MIN_WORK { 1 } else { rayon::current_num_threads() };
    let k_blocks = split_even(k, mk.kc);
    let row_block = (PACKED_A_MAX / k).max(mk.mr) / mk.mr * mk.mr;
    let ldc = c.row_stride;
    // SAFETY (of every later use): MatMut::new proved that rows x cols with row stride ldc from `offset` lies
    // inside `data`; the tiles below partition exactly that region.
    let out = SharedOut(c.data[c.offset..].as_mut_ptr());

    let mut row0 = 0;
    while row0 < m {
        let rows = row_block.min(m - row0);
        let panels = rows.div_ceil(mk.mr);
        T::with_scratch_a(panels * mk.mr * k, |packed_a| {
            pack_a_block(mk, &a, row0, rows, &k_blocks, packed_a, threads);
            let packed_a: &[T] = packed_a;
            let tiles = plan_tiles(mk, row0, rows, n, threads);
            let run = |tile: &Tile| run_tile(mk, alpha, beta, &b, &k_blocks, packed_a, row0, panels * mk.mr, tile, out, ldc);
            if threads > 1 && tiles.len() > 1 {
                tiles.par_iter().with_max_len(1).for_each(run);
            } else {
                tiles.iter().for_each(run);
            }
        });
        row0 += rows;
    }
}

/// `(start, len)` blocks of at most `max` covering `0..len`, as equal as possible (so no block is a sliver).
fn split_even(len: usize, max: usize) -> Vec<(usize, usize)> {
    let count = len.div_ceil(max);
    let base = len / count;
    let extra = len % count;
    let mut start = 0;
    (0..count)
        .map(|i| {
            let size = base + usize::from(i < extra);
            let block = (start, size);
            start += size;
            block
        })
        .collect()
}

/// Pack rows `row0..row0+rows` of A, for every k block, into `packed` laid out as
/// `[k block][row panel][k within block][MR]`: k block `(p0, kc)` starts at `p0 * rows_padded`.
fn pack_a_block<T: Float, SA: Widen<T>>(
    mk: &MicroKernel<T>,
    a: &MatRef<SA>,
    row0: usize,
    rows: usize,
    k_blocks: &[(usize, usize)],
    packed: &mut [T],
    threads: usize,
) {
    let panels = rows.div_ceil(mk.mr);
    let rows_padded = panels * mk.mr;
    let pack_panel = |p0: usize, kc: usize, panel: usize, dst: &mut [T]| {
        let r = panel * mk.mr;
        let base = a.offset + (row0 + r) * a.row_stride + p0 * a.col_stride;
        pack::pack_panel(mk.avx512_packing, a.data, base, a.row_stride, a.col_stride, mk.mr.min(rows - r), kc, mk.mr, dst);
    };
    // Each k block is a run of `panels` equal-sized micro-panels; hand them out in groups when threaded.
    let mut rest = &mut packed[..rows_padded * a.cols];
    let mut jobs = Vec::with_capacity(k_blocks.len());
    for &(p0, kc) in k_blocks {
        let (block, tail) = rest.split_at_mut(rows_padded * kc);
        rest = tail;
        jobs.push((p0, kc, block));
    }
    if threads > 1 {
        let groups_per_block = (2 * threads).min(panels);
        let panels_per_group = panels.div_ceil(groups_per_block);
        jobs.into_par_iter().for_each(|(p0, kc, block)| {
            block.par_chunks_mut(panels_per_group * mk.mr * kc).enumerate().for_each(|(g, group)| {
                for (i, dst) in group.chunks_exact_mut(mk.mr * kc).enumerate() {
                    pack_panel(p0, kc, g * panels_per_group + i, dst);
                }
            });
        });
    } else {
        for (p0, kc, block) in jobs {
            for (panel, dst) in block.chunks_exact_mut(mk.mr * kc).enumerate() {
                pack_panel(p0, kc, panel, dst);
            }
        }
    }
}

/// Cut C's row block into tiles: NR-aligned column ranges of at most NC, their count rounded up to a multiple of
/// the thread count when the columns allow; if there are still fewer tiles than threads, rows are cut as well.
fn plan_tiles<T>(mk: &MicroKernel<T>, row0: usize, rows: usize, n: usize, threads: usize) -> Vec<Tile> {
    let col_panels = n.div_ceil(mk.nr);
    let mut col_parts = n.div_ceil(mk.nc);
    if threads > 1 {
        col_parts = col_parts.div_ceil(threads) * threads;
    }
    col_parts = col_parts.min(col_panels);
    let tile_cols = col_panels.div_ceil(col_parts) * mk.nr;
    let col_parts = n.div_ceil(tile_cols);

    let row_panels = rows.div_ceil(mk.mr);
    let row_parts = if col_parts >= threads { 1 } else { threads.div_ceil(col_parts).min(row_panels) };
    let tile_rows = row_panels.div_ceil(row_parts) * mk.mr;

    let mut tiles = Vec::new();
    for col0 in (0..n).step_by(tile_cols) {
        for r in (0..rows).step_by(tile_rows) {
            tiles.push(Tile { row0: row0 + r, rows: tile_rows.min(rows - r), col0, cols: tile_cols.min(n - col0) });
        }
    }
    tiles
}

/// One task: for each k block, pack the tile's B block and run the micro-kernel over the tile.
#[allow(clippy::too_many_arguments)]
fn run_tile<T: Float + PackScratch, SB: Widen<T>>(
    mk: &MicroKernel<T>,
    alpha: T,
    beta: T,
    b: &MatRef<SB>,
    k_blocks: &[(usize, usize)],
    packed_a: &[T],
    block_row0: usize,
    rows_padded: usize,
    tile: &Tile,
    out: SharedOut<T>,
    ldc: usize,
) {
    let (mr, nr) = (mk.mr, mk.nr);
    let col_panels = tile.cols.div_ceil(nr);
    let kc_max = k_blocks[0].1;
    T::with_scratch_b(col_panels * nr * kc_max, |packed_b| {
        for &(p0, kc) in k_blocks {
            for (panel, dst) in packed_b.chunks_exact_mut(nr * kc).take(col_panels).enumerate() {
                let j = tile.col0 + panel * nr;
                let base = b.offset + p0 * b.row_stride + j * b.col_stride;
                pack::pack_panel(mk.avx512_packing, b.data, base, b.col_stride, b.row_stride, nr.min(tile.col0 + tile.cols - j), kc, nr, dst);
            }
            let beta = if p0 == 0 { beta } else { T::ONE };
            let a_block = &packed_a[p0 * rows_padded..][..rows_padded * kc];
            let first_panel = (tile.row0 - block_row0) / mr;
            for i in 0..tile.rows.div_ceil(mr) {
                let a_panel = &a_block[(first_panel + i) * mr * kc..][..mr * kc];
                let r = tile.row0 + i * mr;
                let rows = mr.min(tile.row0 + tile.rows - r);
                for (panel, b_panel) in packed_b.chunks_exact(nr * kc).take(col_panels).enumerate() {
                    let j = tile.col0 + panel * nr;
                    let cols = nr.min(tile.col0 + tile.cols - j);
                    // SAFETY: the panels hold kc*MR and kc*NR values (sliced above); the C block rows r..r+rows,
                    // columns j..j+cols lies inside this task's tile, which lies inside the MatMut's checked
                    // region, and no other task touches it.
                    unsafe {
                        (mk.run)(kc, a_panel.as_ptr(), b_panel.as_ptr(), out.0.add(r * ldc + j), ldc, rows, cols, alpha, beta);
                    }
                }
            }
        }
    });
}

/// `C = beta * C` (the whole product when k == 0); `beta == 0` writes zeros without reading C.
fn scale_output<T: Float>(beta: T, c: MatMut<T>) {
    for r in 0..c.rows {
        let row = &mut c.data[c.offset + r * c.row_stride..][..c.cols];
        if beta == T::ZERO {
            row.fill(T::ZERO);
        } else {
            row.iter_mut().for_each(|x| *x = beta * *x);
        }
    }
}

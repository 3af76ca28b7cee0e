//! The blocked loop nest around the micro-kernel, and how it is split across rayon threads.
//!
//! With `C` row-major, the micro-kernel's vectors run along n (`NR` columns of B) and it broadcasts `MR`
//! values of A per k. The loops, outermost first:
//!
//! ```text
//! for each row block of up to MC rows                    (MC * KC bounds the packed-A scratch)
//!     for each k block of KC
//!         pack A[row block, k block] into MR x KC micro-panels        (shared by the threads, read-only, ~L3)
//!         for each column tile of C (NR-aligned, at most NC wide; one rayon task each)
//!             pack B[k block, tile columns] into KC x NR micro-panels  (task-local, ~L2 of that core)
//!             for each A micro-panel (MR rows)                         (reused across the tile: ~L1/L2)
//!                 for each B micro-panel (NR columns)                  (streams from L2)
//!                     micro-kernel: C[MR x NR] (+)= alpha * A_panel * B_panel
//! ```
//!
//! The `KC x NC` packed B block is sized to stay in the core's L2 while every A micro-panel of the row block
//! sweeps across it (each kernel's own blocking constants say how it was chosen); a large `KC` means C is read
//! and written fewer times (once per k block). The first k block applies `beta` to C (and never reads C when
//! `beta == 0`); later k blocks accumulate into it.
//!
//! Tiles: the column panels are dealt into one equal group per thread, each group cut into tiles of at most NC
//! columns, so two threads get equal shares; when n is too narrow for that, rows are dealt out too (each such
//! tile packs its own copy of the small B block). Products too small to repay a fork run on the calling thread.

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
    /// Most rows of A packed at once (a multiple of `mr`): bounds the packed-A scratch to `mc * kc` values;
    /// B is packed once per row block, so this should exceed the usual m.
    pub mc: usize,
    /// Widest column tile at a full `kc` k block; the packed B block, `kc x nc` values, is the L2 budget, so
    /// shorter k blocks get proportionally wider tiles (fewer sweeps over packed A).
    pub nc: usize,
    /// Pack with the AVX-512 packers (where the input type has one).
    pub avx512_packing: bool,
    pub run: KernelFn<T>,
}

/// Below this many multiply-adds (`m * n * k`) the product runs on the calling thread: 2^21 take ~30 µs on one
/// AVX-512 core, and the two fork-joins of a threaded product (pack A, then the tiles) cost several µs.
const PARALLEL_MIN_WORK: usize = 1 << 21;

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
    let mut c = c;
    if super::gemv::try_gemv(alpha, &a, &b, beta, &mut c) {
        return;
    }
    let threads = if m.saturating_mul(n).saturating_mul(k) < PARALLEL_MIN_WORK { 1 } else { rayon::current_num_threads() };
    let k_blocks = split_even(k, mk.kc);
    let kc_max = k_blocks[0].1;
    let ldc = c.row_stride;
    // SAFETY (of every later use): MatMut::new proved that rows x cols with row stride ldc from `offset` lies
    // inside `data`; the tiles below partition exactly that region.
    let out = SharedOut(c.data[c.offset..].as_mut_ptr());

    for (first_panel, panels) in split_even(m.div_ceil(mk.mr), (mk.mc / mk.mr).max(1)) {
        let row0 = first_panel * mk.mr;
        let rows = (panels * mk.mr).min(m - row0);
        let tiles = plan_tiles(mk, row0, rows, n, kc_max, threads);
        T::with_scratch_a(panels * mk.mr * kc_max, |packed_a| {
            for &(p0, kc) in &k_blocks {
                let packed_a = &mut packed_a[..panels * mk.mr * kc];
                pack_a_block(mk, &a, row0, rows, p0, kc, packed_a, threads);
                let packed_a: &[T] = packed_a;
                let beta = if p0 == 0 { beta } else { T::ONE };
                let run = |tile: &Tile| run_tile(mk, alpha, beta, &b, p0, kc, packed_a, row0, tile, out, ldc);
                if threads > 1 && tiles.len() > 1 {
                    tiles.par_iter().with_max_len(1).for_each(run);
                } else {
                    tiles.iter().for_each(run);
                }
            }
        });
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

/// Pack rows `row0..row0+rows`, k block `p0..p0+kc` of A into `packed` (`rows.div_ceil(MR)` micro-panels),
/// in parallel groups of panels when threaded.
#[allow(clippy::too_many_arguments)]
fn pack_a_block<T: Float, SA: Widen<T>>(
    mk: &MicroKernel<T>,
    a: &MatRef<SA>,
    row0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    packed: &mut [T],
    threads: usize,
) {
    let panel_len = mk.mr * kc;
    let pack_panels = |first_panel: usize, dst: &mut [T]| {
        let r = first_panel * mk.mr;
        let lines = (dst.len() / panel_len * mk.mr).min(rows - r);
        let base = a.offset + (row0 + r) * a.row_stride + p0 * a.col_stride;
        pack::pack_strip(mk.avx512_packing, a.data, base, a.row_stride, a.col_stride, lines, kc, mk.mr, dst);
    };
    let panels = packed.len() / panel_len;
    if threads > 1 && panels > 1 {
        let panels_per_job = panels.div_ceil(2 * threads);
        packed.par_chunks_mut(panels_per_job * panel_len).enumerate().for_each(|(job, dst)| pack_panels(job * panels_per_job, dst));
    } else {
        pack_panels(0, packed);
    }
}

/// Cut C's row block into tiles. The column panels are first dealt into one equal group per thread (so each
/// thread's share is the same however rayon halves the list), then each group is cut into tiles whose packed
/// B block (`kc` x tile columns) fits the kernel's L2 budget (`KC x NC`). If there are fewer column panels than threads, rows are dealt out as well.
fn plan_tiles<T>(mk: &MicroKernel<T>, row0: usize, rows: usize, n: usize, kc: usize, threads: usize) -> Vec<Tile> {
    let col_panels = n.div_ceil(mk.nr);
    let row_panels = rows.div_ceil(mk.mr);
    let col_groups = threads.min(col_panels);
    let row_groups = threads.div_ceil(col_groups).min(row_panels);
    let max_tile_panels = (mk.nc * mk.kc / kc / mk.nr).max(1);
    let mut tiles = Vec::new();
    for (group_start, group_panels) in split_even(col_panels, col_panels.div_ceil(col_groups)) {
        for (panel0, panels) in split_even(group_panels, max_tile_panels) {
            let col0 = (group_start + panel0) * mk.nr;
            let cols = (panels * mk.nr).min(n - col0);
            for (row_panel0, row_panel_count) in split_even(row_panels, row_panels.div_ceil(row_groups)) {
                let r = row_panel0 * mk.mr;
                tiles.push(Tile { row0: row0 + r, rows: (row_panel_count * mk.mr).min(rows - r), col0, cols });
            }
        }
    }
    tiles
}

/// One task: pack the tile's B block for k block `p0..p0+kc` and run the micro-kernel over the tile.
#[allow(clippy::too_many_arguments)]
fn run_tile<T: Float + PackScratch, SB: Widen<T>>(
    mk: &MicroKernel<T>,
    alpha: T,
    beta: T,
    b: &MatRef<SB>,
    p0: usize,
    kc: usize,
    packed_a: &[T],
    block_row0: usize,
    tile: &Tile,
    out: SharedOut<T>,
    ldc: usize,
) {
    let (mr, nr) = (mk.mr, mk.nr);
    let col_panels = tile.cols.div_ceil(nr);
    T::with_scratch_b(col_panels * nr * kc, |packed_b| {
        let base = b.offset + p0 * b.row_stride + tile.col0 * b.col_stride;
        pack::pack_strip(mk.avx512_packing, b.data, base, b.col_stride, b.row_stride, tile.cols, kc, nr, packed_b);
        let first_panel = (tile.row0 - block_row0) / mr;
        for i in 0..tile.rows.div_ceil(mr) {
            let a_panel = &packed_a[(first_panel + i) * mr * kc..][..mr * kc];
            let r = tile.row0 + i * mr;
            let rows = mr.min(tile.row0 + tile.rows - r);
            for (panel, b_panel) in packed_b.chunks_exact(nr * kc).enumerate() {
                let j = tile.col0 + panel * nr;
                let cols = nr.min(tile.col0 + tile.cols - j);
                // SAFETY: `mk` only holds a SIMD kernel the CPU supports (GemmKernel::resolve checks the
                // features); the panels hold kc*MR and kc*NR values (sliced above); the C block rows r..r+rows,
                // columns j..j+cols lies inside this task's tile, which lies inside the MatMut's checked
                // region, and no other task touches it.
                unsafe {
                    (mk.run)(kc, a_panel.as_ptr(), b_panel.as_ptr(), out.0.add(r * ldc + j), ldc, rows, cols, alpha, beta);
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

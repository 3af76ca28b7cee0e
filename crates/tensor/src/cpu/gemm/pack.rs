//! Packing: copy a strip of A or B into the unit-stride micro-panel layout the micro-kernel reads, converting
//! to the compute type on the way, and reusable scratch buffers to pack into.
//!
//! A strip is `lines` lines (rows of A, or columns of B) by `kc` steps along k, cut into micro-panels of
//! `width` lines (MR for A, NR for B). Panel `q` occupies `dst[q * kc * width ..][.. kc * width]` and is
//! k-major: `[p * width + i]` holds line `q * width + i` at step `p`. Lines past the strip's end are zero, so
//! edge tiles need no special case in the kernel. The source may have any strides: `line_stride` between
//! lines and `k_stride` between steps. Two layouts get fast paths:
//! - unit line stride (a row-major B, or Aᵀ): each step is one contiguous run across the whole strip, read
//!   once, step by step, for a group of panels at a time (see [`PANEL_GROUP`]);
//! - unit k stride (a row-major A, or Bᵀ): a transpose, done in 16 x 16 register blocks with AVX-512 when the
//!   CPU and the kernel allow it.

use super::GemmInput;
#[cfg(target_arch = "x86_64")]
use super::InputFormat;
use std::cell::Cell;

/// Conversion of a GEMM input element to the compute type `T`.
pub(crate) trait Widen<T>: Copy + Send + Sync {
    fn widen(self) -> T;
    /// Widen a contiguous run (same lengths).
    fn widen_slice(src: &[Self], dst: &mut [T]);
    /// Pack with a vectorised packer if one fits this type, CPU and layout (same arguments as
    /// [`pack_strip`]); false, having written nothing, if the caller must use the portable one.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn pack_vectorised(
        _src: &[Self],
        _base: usize,
        _line_stride: usize,
        _k_stride: usize,
        _lines: usize,
        _kc: usize,
        _width: usize,
        _dst: &mut [T],
    ) -> bool {
        false
    }
}

impl<S: GemmInput> Widen<f32> for S {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        S::widen_slice(src, dst);
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn pack_vectorised(
        src: &[Self],
        base: usize,
        line_stride: usize,
        k_stride: usize,
        lines: usize,
        kc: usize,
        width: usize,
        dst: &mut [f32],
    ) -> bool {
        if S::FORMAT == InputFormat::Other || !super::pack_avx512::available() {
            return false;
        }
        assert!(dst.len() >= lines.div_ceil(width) * kc * width);
        // SAFETY: the packer's CPU features were just checked; every index it reads,
        // base + i * line_stride + p * k_stride for i < lines, p < kc, is inside `src` because the MatRef this
        // strip comes from was bounds-checked at construction; dst holds every panel (asserted). The formats
        // other than `Other` are plain f32 / 16-bit floats, so reading their bytes is sound.
        unsafe {
            super::pack_avx512::pack_strip(
                S::FORMAT,
                src.as_ptr() as *const u8,
                std::mem::size_of::<S>(),
                base,
                line_stride,
                k_stride,
                lines,
                kc,
                width,
                dst.as_mut_ptr(),
            )
        }
    }
}

impl Widen<f64> for f64 {
    #[inline(always)]
    fn widen(self) -> f64 {
        self
    }
    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [f64]) {
        dst.copy_from_slice(src);
    }
}

/// Panels packed together, step by step, when lines are contiguous: each step then reads one run of up to
/// `PANEL_GROUP * width` values and writes to `PANEL_GROUP` panels. Fewer panels would read a new source page
/// per handful of values (each step of a wide matrix is a new row); more would scatter the writes over more
/// pages than the TLB holds.
pub(crate) const PANEL_GROUP: usize = 8;

/// Pack a strip of `lines` lines into `lines.div_ceil(width)` micro-panels (see the module doc); `dst` holds
/// exactly those panels. `vectorised` allows the AVX-512 packer (kernels that do not use AVX-512 pass false, so
/// a forced AVX2 or generic run behaves as it would on a CPU without it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_strip<S: Widen<T>, T: Copy + Default>(
    vectorised: bool,
    src: &[S],
    base: usize,
    line_stride: usize,
    k_stride: usize,
    lines: usize,
    kc: usize,
    width: usize,
    dst: &mut [T],
) {
    debug_assert_eq!(dst.len(), lines.div_ceil(width) * kc * width);
    if vectorised && S::pack_vectorised(src, base, line_stride, k_stride, lines, kc, width, dst) {
        return;
    }
    let panel_len = kc * width;
    if line_stride == 1 || lines == 1 {
        for (group, panels) in dst.chunks_mut(PANEL_GROUP * panel_len).enumerate() {
            let first_line = group * PANEL_GROUP * width;
            for p in 0..kc {
                let run = &src[base + p * k_stride + first_line..][..(lines - first_line).min(PANEL_GROUP * width)];
                for (q, panel) in panels.chunks_exact_mut(panel_len).enumerate() {
                    let live = (run.len() - q * width).min(width);
                    let out = &mut panel[p * width..][..width];
                    S::widen_slice(&run[q * width..][..live], &mut out[..live]);
                    out[live..].fill(T::default());
                }
            }
        }
        return;
    }
    for (q, panel) in dst.chunks_exact_mut(panel_len).enumerate() {
        let live = (lines - q * width).min(width);
        let panel_base = base + q * width * line_stride;
        if k_stride == 1 {
            // A transpose: read each line's contiguous run, scatter it down the panel's column.
            for i in 0..live {
                let line = &src[panel_base + i * line_stride..][..kc];
                for (p, &x) in line.iter().enumerate() {
                    panel[p * width + i] = x.widen();
                }
            }
        } else {
            for (p, out) in panel.chunks_exact_mut(width).enumerate() {
                let start = panel_base + p * k_stride;
                for (i, o) in out[..live].iter_mut().enumerate() {
                    *o = src[start + i * line_stride].widen();
                }
            }
        }
        if live < width {
            for out in panel.chunks_exact_mut(width) {
                out[live..].fill(T::default());
            }
        }
    }
}

/// Reusable per-thread packing buffers, 64-byte aligned (so the kernel's vector loads never split a cache line).
///
/// A buffer is taken out of its thread-local slot for the duration of a call and put back after, so a nested
/// GEMM on the same thread (rayon may run another task while this one waits) finds the slot empty and simply
/// allocates its own.
pub(crate) trait PackScratch: Copy + Default + Send + Sync + 'static {
    fn with_scratch_a<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
    fn with_scratch_b<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

const ALIGN_BYTES: usize = 64;

fn with_slot<T: Copy + Default, R>(slot: &'static std::thread::LocalKey<Cell<Vec<T>>>, len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    let pad = ALIGN_BYTES / std::mem::size_of::<T>();
    let mut buf = slot.with(Cell::take);
    if buf.len() < len + pad {
        buf.resize(len + pad, T::default());
    }
    let skip = buf.as_ptr().align_offset(ALIGN_BYTES).min(pad);
    let result = f(&mut buf[skip..skip + len]);
    slot.with(|s| s.set(buf));
    result
}

macro_rules! pack_scratch {
    ($t:ty, $a:ident, $b:ident) => {
        thread_local! {
            static $a: Cell<Vec<$t>> = const { Cell::new(Vec::new()) };
            static $b: Cell<Vec<$t>> = const { Cell::new(Vec::new()) };
        }
        impl PackScratch for $t {
            fn with_scratch_a<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                with_slot(&$a, len, f)
            }
            fn with_scratch_b<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                with_slot(&$b, len, f)
            }
        }
    };
}
pack_scratch!(f32, SCRATCH_A_F32, SCRATCH_B_F32);
pack_scratch!(f64, SCRATCH_A_F64, SCRATCH_B_F64);

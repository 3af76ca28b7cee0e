//! Packing: copy a strip of A or B into the unit-stride micro-panel layout the micro-kernel reads, converting
//! to the compute type on the way, and reusable scratch buffers to pack into.
//!
//! A strip is `lines` lines (rows of A, or columns of B) by `kc` steps along k. The packed micro-panel is
//! k-major: `dst[p * width + i]` holds line `i` at step `p`, and lines `lines..width` are zero so edge tiles
//! need no special case in the kernel. The source may have any strides: `line_stride` between lines and
//! `k_stride` between steps. Two layouts get fast paths: unit line stride (a row-major B, or A^T) copies runs
//! of `lines` values; unit k stride (a row-major A, or B^T) is a transpose, done in 16 x 16 blocks with AVX-512
//! for f32 when available.

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
    /// [`pack_panel`]); false if the caller must use the portable one.
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
        debug_assert!(dst.len() >= kc * width && lines <= width);
        // SAFETY: the packer's CPU features were just checked; every index it reads,
        // base + i * line_stride + p * k_stride for i < lines, p < kc, is inside `src` because the MatRef this
        // strip comes from was bounds-checked at construction; dst holds kc * width values. The formats other
        // than `Other` are plain f32 / 16-bit floats, so reading their bytes is sound.
        unsafe {
            super::pack_avx512::pack_panel(
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

/// Pack one micro-panel (see the module doc). `dst.len()` must be `kc * width`; `lines <= width`.
/// `vectorised` allows the SIMD packer (the portable one always works; kernels without AVX-512 use it, so a
/// forced AVX2 or generic run behaves as it would on a CPU without AVX-512).
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn pack_panel<S: Widen<T>, T: Copy + Default>(
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
    debug_assert!(lines <= width && dst.len() == kc * width);
    if vectorised && S::pack_vectorised(src, base, line_stride, k_stride, lines, kc, width, dst) {
        return;
    }
    if line_stride == 1 || lines == 1 {
        for (p, out) in dst.chunks_exact_mut(width).enumerate() {
            let start = base + p * k_stride;
            S::widen_slice(&src[start..start + lines], &mut out[..lines]);
            out[lines..].fill(T::default());
        }
        return;
    }
    if k_stride == 1 {
        if lines < width {
            // Zero the padding lines first; the transposes below only write the real ones.
            for out in dst.chunks_exact_mut(width) {
                out[lines..].fill(T::default());
            }
        }
        transpose_into(src, base, line_stride, lines, kc, width, dst);
        return;
    }
    for (p, out) in dst.chunks_exact_mut(width).enumerate() {
        let start = base + p * k_stride;
        for (i, o) in out[..lines].iter_mut().enumerate() {
            *o = src[start + i * line_stride].widen();
        }
        out[lines..].fill(T::default());
    }
}

/// `dst[p * width + i] = src[base + i * line_stride + p]` for `i < lines`, `p < kc`: lines are contiguous runs of
/// k, so this is a transpose.
fn transpose_into<S: Widen<T>, T: Copy>(
    src: &[S],
    base: usize,
    line_stride: usize,
    lines: usize,
    kc: usize,
    width: usize,
    dst: &mut [T],
) {
    for i in 0..lines {
        let line = &src[base + i * line_stride..][..kc];
        for (p, &x) in line.iter().enumerate() {
            dst[p * width + i] = x.widen();
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

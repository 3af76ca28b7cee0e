//! General matrix multiply, written here: `C = alpha * A * B + beta * C`.
//!
//! A and B are strided views (any row and column stride, so transposes cost nothing); C is row-major with a row
//! stride. f32 products take f32, bf16 or f16 inputs (the half types are widened while packing) and accumulate
//! in f32; f64 products exist for reference checks.
//!
//! # Design (BLIS-style, see `driver` for the loop nest)
//!
//! - **Packing** (`pack`): A is copied into `MR x KC` micro-panels (k-major: the `MR` values of one k are
//!   adjacent) and B into `KC x NR` micro-panels (the `NR` values of one k adjacent), from any strides, with
//!   zero padding at the edges. The micro-kernel then reads both with unit stride whatever the caller's
//!   layout was; bf16/f16 are widened to f32 here, once per element.
//! - **Micro-kernel** (`kernel_*`): an `MR x NR` tile of C held in registers, updated by `KC` rank-1 updates
//!   (one broadcast of A times a vector row of B per k). AVX-512F `12 x 32` (24 zmm accumulators), AVX2+FMA
//!   `6 x 16` (12 ymm), and a portable `4 x 8` (f32) / `4 x 4` (f64) that the compiler vectorises.
//! - **Cache blocking** (`driver`): a `KC x NC` block of packed B stays in the core's L2 while every A
//!   micro-panel (`MR x KC`) of an `MC`-row block sweeps across it; packed A for one k block is shared by the
//!   threads.
//! - **Matrix-vector products** (`gemv`, m == 1 or n == 1) skip packing: each input is used once.
//! - **Skinny products** (`skinny`, f32, 2 to 16 rows or columns of C: LoRA's rank-r branches) skip packing
//!   the large operand, which they read once.
//! - **Threads**: the n dimension is cut into NR-aligned column blocks (the m dimension too when n is narrow),
//!   one rayon task each; each task packs its own B block into its own L2.
//!
//! The kernel is chosen at run time (`is_x86_feature_detected!`); `FERROTUNE_GEMM_KERNEL=avx512|avx2|generic`
//! forces one (a kernel the CPU lacks falls back to the best one it has), and [`selected_kernel`] says which
//! runs.

mod driver;
mod gemv;
#[cfg(target_arch = "x86_64")]
mod kernel_avx2;
#[cfg(target_arch = "x86_64")]
mod kernel_avx512;
mod kernel_generic;
mod pack;
mod skinny;
#[cfg(target_arch = "x86_64")]
mod pack_avx512;
#[cfg(test)]
mod tests;

use crate::element::{Element, Float};
use crate::{Error, Result};
use driver::MicroKernel;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use std::sync::OnceLock;

/// How a [`GemmInput`] is stored in memory, so the vectorised packers can load and widen it directly.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    F32,
    Bf16,
    F16,
    /// No vector loader: packed one element at a time through `to_f32`.
    Other,
}

/// Element types the f32 GEMM accepts as inputs; they are converted to f32 while packing.
pub trait GemmInput: Element {
    fn to_f32(self) -> f32;

    #[doc(hidden)]
    const FORMAT: InputFormat = InputFormat::Other;

    /// Widen a contiguous run into `dst` (same length). The packers call this on unit-stride runs; the half
    /// types override it with the `half` crate's vectorised slice conversion.
    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
}
impl GemmInput for f32 {
    const FORMAT: InputFormat = InputFormat::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}
impl GemmInput for bf16 {
    const FORMAT: InputFormat = InputFormat::Bf16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}
impl GemmInput for f16 {
    const FORMAT: InputFormat = InputFormat::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

/// A read-only strided matrix view. Construction checks that every element it can reach is inside `data`, so
/// the kernels may index without further checks.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> MatRef<'a, T> {
    pub fn new(data: &'a [T], offset: usize, rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Result<Self> {
        if rows > 0 && cols > 0 {
            let last = (rows - 1)
                .checked_mul(row_stride)
                .and_then(|r| (cols - 1).checked_mul(col_stride).and_then(|c| r.checked_add(c)))
                .and_then(|rc| rc.checked_add(offset));
            if last.is_none_or(|last| last >= data.len()) {
                return Err(Error::Msg(format!(
                    "gemm: a {rows}x{cols} view (strides {row_stride},{col_stride}, offset {offset}) reaches past a buffer of {}",
                    data.len()
                )));
            }
        }
        Ok(MatRef { data, offset, rows, cols, row_stride, col_stride })
    }

    #[inline(always)]
    pub fn at(&self, r: usize, c: usize) -> &T {
        &self.data[self.offset + r * self.row_stride + c * self.col_stride]
    }
}

/// A mutable row-major matrix view with a row stride (column stride 1).
#[derive(Debug)]
pub struct MatMut<'a, T> {
    pub data: &'a mut [T],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl<'a, T> MatMut<'a, T> {
    pub fn new(data: &'a mut [T], offset: usize, rows: usize, cols: usize, row_stride: usize) -> Result<Self> {
        let end = (rows.max(1) - 1).checked_mul(row_stride).and_then(|r| r.checked_add(offset)).and_then(|r| r.checked_add(cols));
        if rows > 0 && cols > 0 && (cols > row_stride && rows > 1 || end.is_none_or(|end| end > data.len())) {
            return Err(Error::Msg(format!(
                "gemm: a {rows}x{cols} output (row stride {row_stride}, offset {offset}) does not fit a buffer of {}",
                data.len()
            )));
        }
        Ok(MatMut { data, offset, rows, cols, row_stride })
    }
}

fn check_dims<A, B, C>(a: &MatRef<A>, b: &MatRef<B>, c: &MatMut<C>) {
    assert!(
        a.cols == b.rows && a.rows == c.rows && b.cols == c.cols,
        "gemm: [{}x{}] x [{}x{}] -> [{}x{}] do not agree",
        a.rows, a.cols, b.rows, b.cols, c.rows, c.cols
    );
}

/// Which micro-kernel runs. `Auto` means the `FERROTUNE_GEMM_KERNEL` override if set, else the best the CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernel {
    Auto,
    Avx512,
    Avx2,
    Generic,
}

impl GemmKernel {
    /// Parse `auto`, `avx512`, `avx2` or `generic`.
    pub fn from_name(name: &str) -> Option<GemmKernel> {
        match name.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(GemmKernel::Auto),
            "avx512" => Some(GemmKernel::Avx512),
            "avx2" => Some(GemmKernel::Avx2),
            "generic" => Some(GemmKernel::Generic),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::Auto => "auto",
            GemmKernel::Avx512 => "avx512",
            GemmKernel::Avx2 => "avx2",
            GemmKernel::Generic => "generic",
        }
    }

    /// The kernel that actually runs for this request: `Auto` reads the environment override, and a request
    /// the CPU cannot honour steps down to the best kernel it can run (never to one it cannot).
    pub fn resolve(self) -> GemmKernel {
        let wanted = match self {
            GemmKernel::Auto => env_override(),
            other => other,
        };
        let best = best_supported();
        match (wanted, best) {
            (GemmKernel::Auto, best) => best,
            (GemmKernel::Generic, _) => GemmKernel::Generic,
            (GemmKernel::Avx2, GemmKernel::Avx512 | GemmKernel::Avx2) => GemmKernel::Avx2,
            (GemmKernel::Avx512, GemmKernel::Avx512) => GemmKernel::Avx512,
            (_, best) => best,
        }
    }
}

/// `FERROTUNE_GEMM_KERNEL`, read once. Unknown values mean `Auto` (and [`selected_kernel`] shows the result).
fn env_override() -> GemmKernel {
    static CHOICE: OnceLock<GemmKernel> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        std::env::var("FERROTUNE_GEMM_KERNEL").ok().and_then(|v| GemmKernel::from_name(&v)).unwrap_or(GemmKernel::Auto)
    })
}

fn best_supported() -> GemmKernel {
    static BEST: OnceLock<GemmKernel> = OnceLock::new();
    *BEST.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return GemmKernel::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return GemmKernel::Avx2;
            }
        }
        GemmKernel::Generic
    })
}

/// The f32 micro-kernel `sgemm` uses: "avx512", "avx2" or "generic" (for `ferrotune env`).
pub fn selected_kernel() -> &'static str {
    GemmKernel::Auto.resolve().name()
}

/// The f32 micro-kernel and its blocking for a resolved kernel choice.
fn f32_kernel(kernel: GemmKernel) -> MicroKernel<f32> {
    match kernel.resolve() {
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx512 => kernel_avx512::MICRO_KERNEL,
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx2 => kernel_avx2::MICRO_KERNEL,
        _ => kernel_generic::F32_MICRO_KERNEL,
    }
}

/// f32 GEMM (inputs f32, bf16 or f16). Runs on the current rayon pool.
pub fn sgemm<A: GemmInput, B: GemmInput>(alpha: f32, a: MatRef<A>, b: MatRef<B>, beta: f32, c: MatMut<f32>) {
    sgemm_with_kernel(GemmKernel::Auto, alpha, a, b, beta, c);
}

/// [`sgemm`] with an explicit kernel choice (tests and benchmarks compare kernels in one process).
pub fn sgemm_with_kernel<A: GemmInput, B: GemmInput>(
    kernel: GemmKernel,
    alpha: f32,
    a: MatRef<A>,
    b: MatRef<B>,
    beta: f32,
    c: MatMut<f32>,
) {
    check_dims(&a, &b, &c);
    let mut c = c;
    if skinny::try_skinny(kernel, alpha, &a, &b, beta, &mut c) {
        return;
    }
    driver::gemm(&f32_kernel(kernel), alpha, a, b, beta, c);
}

/// f64 GEMM, for reference checks (finite differences, golden files): the portable packed path.
pub fn dgemm(alpha: f64, a: MatRef<f64>, b: MatRef<f64>, beta: f64, c: MatMut<f64>) {
    check_dims(&a, &b, &c);
    driver::gemm(&kernel_generic::F64_MICRO_KERNEL, alpha, a, b, beta, c);
}

/// The plain triple loop every fast path is tested against. `beta == 0` ignores C's old contents (NaN included).
pub fn gemm_reference<T: Float>(alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: MatMut<T>) {
    check_dims(&a, &b, &c);
    for i in 0..a.rows {
        for j in 0..b.cols {
            let mut acc = T::ZERO;
            for p in 0..a.cols {
                acc += *a.at(i, p) * *b.at(p, j);
            }
            let dst = &mut c.data[c.offset + i * c.row_stride + j];
            *dst = if beta == T::ZERO { alpha * acc } else { alpha * acc + beta * *dst };
        }
    }
}

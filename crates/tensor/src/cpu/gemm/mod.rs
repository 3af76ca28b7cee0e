//! General matrix multiply, written here: `C = alpha * A * B + beta * C`.
//!
//! A and B are strided views (any row and column stride, so transposes cost nothing); C is row-major with a row
//! stride. f32 products take f32, bf16 or f16 inputs (the half types are widened while packing) and accumulate
//! in f32; f64 products exist for reference checks.

use crate::element::{Element, Float};
use crate::{Error, Result};
use half::{bf16, f16};

/// Element types the f32 GEMM accepts as inputs; they are converted to f32 while packing.
pub trait GemmInput: Element {
    fn to_f32(self) -> f32;
}
impl GemmInput for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}
impl GemmInput for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}
impl GemmInput for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
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
            let last = offset + (rows - 1) * row_stride + (cols - 1) * col_stride;
            if last >= data.len() {
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
        if rows > 0 && cols > 0 && (cols > row_stride && rows > 1 || offset + (rows - 1) * row_stride + cols > data.len()) {
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

/// f32 GEMM (inputs f32, bf16 or f16). Runs on the current rayon pool.
pub fn sgemm<A: GemmInput, B: GemmInput>(alpha: f32, a: MatRef<A>, b: MatRef<B>, beta: f32, c: MatMut<f32>) {
    check_dims(&a, &b, &c);
    let a32 = |r, k| a.at(r, k).to_f32();
    let b32 = |k, n| b.at(k, n).to_f32();
    reference_loop(alpha, a.rows, b.cols, a.cols, a32, b32, beta, c);
}

/// f64 GEMM, for reference checks (finite differences, golden files).
pub fn dgemm(alpha: f64, a: MatRef<f64>, b: MatRef<f64>, beta: f64, c: MatMut<f64>) {
    check_dims(&a, &b, &c);
    reference_loop(alpha, a.rows, b.cols, a.cols, |r, k| *a.at(r, k), |k, n| *b.at(k, n), beta, c);
}

/// The plain triple loop every fast path is tested against. `beta == 0` ignores C's old contents (NaN included).
pub fn gemm_reference<T: Float>(alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: MatMut<T>) {
    check_dims(&a, &b, &c);
    reference_loop(alpha, a.rows, b.cols, a.cols, |r, k| *a.at(r, k), |k, n| *b.at(k, n), beta, c);
}

#[allow(clippy::too_many_arguments)]
fn reference_loop<T: Float>(
    alpha: T,
    m: usize,
    n: usize,
    k: usize,
    a: impl Fn(usize, usize) -> T,
    b: impl Fn(usize, usize) -> T,
    beta: T,
    c: MatMut<T>,
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = T::ZERO;
            for p in 0..k {
                acc += a(i, p) * b(p, j);
            }
            let dst = &mut c.data[c.offset + i * c.row_stride + j];
            *dst = if beta == T::ZERO { alpha * acc } else { alpha * acc + beta * *dst };
        }
    }
}

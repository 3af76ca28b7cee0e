//! The narrow interface every backend implements. `Storage` is an enum over the backends and dispatches each
//! call with a `match`; there are no trait objects on the hot path. Every method receives the `Layout` of its
//! operands, so strided views reach the backend as they are and each backend decides when it needs a copy.
//! Outputs are always fresh, contiguous (row-major) storage.

use crate::{DType, Device, Layout, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Recip,
    Sqr,
    Abs,
    Tanh,
    Sin,
    Cos,
    Sigmoid,
    /// x * sigmoid(x)
    Silu,
    Relu,
    /// 1 where x > 0, else 0 (the derivative of relu).
    Step,
    /// -1, 0 or 1 (the derivative of abs, 0 at 0 as in PyTorch).
    Sign,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

/// Sizes of a (batched) matrix product: `batch` independent `[m, k] x [k, n]` products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulDims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

pub trait BackendStorage: Sized {
    fn dtype(&self) -> DType;
    fn device(&self) -> Device;
    /// Cast to `dtype` (round to nearest even for the half types, truncation toward zero for float -> int).
    fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self>;
    /// A contiguous copy of the elements `layout` selects.
    fn copy_strided(&self, layout: &Layout) -> Result<Self>;
    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Self>;
    /// `x * mul + add`.
    fn affine(&self, layout: &Layout, mul: f64, add: f64) -> Result<Self>;
    fn powf(&self, layout: &Layout, exponent: f64) -> Result<Self>;
    /// Both layouts have the same shape (the caller broadcast them first, with stride-0 views).
    fn binary(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, op: BinaryOp) -> Result<Self>;
    /// Reduce over `dims`; the output keeps those dims with size 1.
    fn reduce(&self, layout: &Layout, dims: &[usize], op: ReduceOp) -> Result<Self>;
    /// Batched `[.., m, k] x [.., k, n]`; the last two dims of each layout may have any strides (transposes are
    /// free). The output dtype is the lhs dtype.
    fn matmul(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, dims: MatmulDims) -> Result<Self>;
    /// Rows of the 2-D table `self` picked by integer `ids`: output `[ids.., cols]` (embedding lookup).
    fn index_select(&self, layout: &Layout, ids: &Self, ids_layout: &Layout) -> Result<Self>;
    /// A `[rows, cols]` table of zeros with `src` rows added at `ids` (the embedding gradient; repeated ids sum).
    fn index_add(&self, layout: &Layout, ids: &Self, ids_layout: &Layout, rows: usize) -> Result<Self>;
}

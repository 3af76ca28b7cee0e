//! One error type for the whole engine. Every variant says what went wrong and, where a user can act, how to fix it.

use crate::{DType, Device};
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Two shapes that had to agree did not.
    ShapeMismatch { op: &'static str, lhs: Vec<usize>, rhs: Vec<usize> },
    /// A shape was invalid on its own (wrong rank, zero where not allowed, element count mismatch).
    BadShape { op: &'static str, msg: String },
    /// A dimension index past the tensor's rank.
    DimOutOfRange { op: &'static str, dim: usize, rank: usize },
    /// The op does not accept this dtype.
    UnsupportedDType { op: &'static str, dtype: DType },
    /// Two tensors of different dtypes met where one was needed.
    DTypeMismatch { op: &'static str, lhs: DType, rhs: DType },
    /// Two tensors on different devices met.
    DeviceMismatch { op: &'static str, lhs: Device, rhs: Device },
    /// The CUDA backend is not available (not compiled in yet, or no driver); the message says which.
    CudaUnavailable(String),
    /// An index (token id, position) outside its table.
    IndexOutOfRange { op: &'static str, index: i64, size: usize },
    /// Anything else, with a message that names the fix.
    Msg(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ShapeMismatch { op, lhs, rhs } => write!(f, "{op}: shape mismatch, {lhs:?} vs {rhs:?}"),
            Error::BadShape { op, msg } => write!(f, "{op}: {msg}"),
            Error::DimOutOfRange { op, dim, rank } => {
                write!(f, "{op}: dimension {dim} is out of range for a tensor of rank {rank}")
            }
            Error::UnsupportedDType { op, dtype } => write!(f, "{op}: dtype {dtype} is not supported"),
            Error::DTypeMismatch { op, lhs, rhs } => {
                write!(f, "{op}: dtype mismatch, {lhs} vs {rhs}; convert one side with to_dtype first")
            }
            Error::DeviceMismatch { op, lhs, rhs } => {
                write!(f, "{op}: tensors live on different devices ({lhs} vs {rhs}); move one with to_device")
            }
            Error::CudaUnavailable(why) => write!(f, "CUDA is not available: {why}"),
            Error::IndexOutOfRange { op, index, size } => {
                write!(f, "{op}: index {index} is out of range for a table of size {size}")
            }
            Error::Msg(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for `Err(Error::Msg(format!(...)))`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::Error::Msg(format!($($arg)*))) };
}

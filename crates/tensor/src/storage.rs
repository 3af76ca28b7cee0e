//! `Storage`: the enum over backends. Each method is one `match` that forwards to the backend.

use crate::backend::{BackendStorage, BinaryOp, MatmulDims, ReduceOp, UnaryOp};
use crate::cpu::CpuStorage;
use crate::cuda::CudaStorage;
use crate::{DType, Device, Error, Layout, Result};

#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Storage::Cpu($s) => Ok(Storage::Cpu($e?)),
            Storage::Cuda($s) => Ok(Storage::Cuda($e?)),
        }
    };
}

/// Match two storages that must be on the same backend.
macro_rules! dispatch2 {
    ($op:literal, $self:ident, $rhs:ident, ($a:ident, $b:ident) => $e:expr) => {
        match ($self, $rhs) {
            (Storage::Cpu($a), Storage::Cpu($b)) => Ok(Storage::Cpu($e?)),
            (Storage::Cuda($a), Storage::Cuda($b)) => Ok(Storage::Cuda($e?)),
            (a, b) => Err(Error::DeviceMismatch { op: $op, lhs: a.device(), rhs: b.device() }),
        }
    };
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(s) => s.device(),
            Storage::Cuda(s) => s.device(),
        }
    }

    pub fn as_cpu(&self) -> Option<&CpuStorage> {
        match self {
            Storage::Cpu(s) => Some(s),
            Storage::Cuda(_) => None,
        }
    }

    pub(crate) fn to_dtype(&self, l: &Layout, dtype: DType) -> Result<Storage> {
        dispatch!(self, s => s.to_dtype(l, dtype))
    }
    pub(crate) fn copy_strided(&self, l: &Layout) -> Result<Storage> {
        dispatch!(self, s => s.copy_strided(l))
    }
    pub(crate) fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Storage> {
        dispatch!(self, s => s.unary(l, op))
    }
    pub(crate) fn affine(&self, l: &Layout, mul: f64, add: f64) -> Result<Storage> {
        dispatch!(self, s => s.affine(l, mul, add))
    }
    pub(crate) fn powf(&self, l: &Layout, e: f64) -> Result<Storage> {
        dispatch!(self, s => s.powf(l, e))
    }
    pub(crate) fn reduce(&self, l: &Layout, dims: &[usize], op: ReduceOp) -> Result<Storage> {
        dispatch!(self, s => s.reduce(l, dims, op))
    }
    pub(crate) fn binary(&self, l: &Layout, rhs: &Storage, rl: &Layout, op: BinaryOp) -> Result<Storage> {
        dispatch2!("binary", self, rhs, (a, b) => a.binary(l, b, rl, op))
    }
    pub(crate) fn matmul(&self, l: &Layout, rhs: &Storage, rl: &Layout, dims: MatmulDims) -> Result<Storage> {
        dispatch2!("matmul", self, rhs, (a, b) => a.matmul(l, b, rl, dims))
    }
    pub(crate) fn index_select(&self, l: &Layout, ids: &Storage, il: &Layout) -> Result<Storage> {
        dispatch2!("index_select", self, ids, (a, b) => a.index_select(l, b, il))
    }
    pub(crate) fn index_add(&self, l: &Layout, ids: &Storage, il: &Layout, rows: usize) -> Result<Storage> {
        dispatch2!("index_add", self, ids, (a, b) => a.index_add(l, b, il, rows))
    }
}

//! The CUDA backend slot. Until the backend lands (see the CUDA issue), this is a stub with the same type names
//! whose every entry point returns `Error::CudaUnavailable`, so the CPU-only build compiles and runs exactly the
//! code paths the CUDA build will (the `Storage::Cuda` arms included).

use crate::backend::{BackendStorage, BinaryOp, MatmulDims, ReduceOp, UnaryOp};
use crate::{DType, Device, Error, Layout, Result};

const WHY: &str = "this build of ferrotune has no CUDA backend yet; run with device cpu";

pub fn unavailable<T>() -> Result<T> {
    Err(Error::CudaUnavailable(WHY.to_string()))
}

/// Whether a usable CUDA device exists, and if not, why not (printed by `ferrotune env`).
pub fn availability() -> std::result::Result<usize, String> {
    Err(WHY.to_string())
}

/// Device memory. No value of this type can be made by the stub: allocation fails first.
#[derive(Debug)]
pub struct CudaStorage {
    ordinal: usize,
    dtype: DType,
}

impl CudaStorage {
    /// Allocate `len` zeroed elements on GPU `ordinal`.
    pub fn zeros(_ordinal: usize, _len: usize, _dtype: DType) -> Result<CudaStorage> {
        unavailable()
    }
    /// Copy host data to GPU `ordinal`.
    pub fn from_cpu(_ordinal: usize, _cpu: &crate::cpu::CpuStorage) -> Result<CudaStorage> {
        unavailable()
    }
    /// Copy device data back to the host.
    pub fn to_cpu(&self) -> Result<crate::cpu::CpuStorage> {
        unavailable()
    }
}

impl BackendStorage for CudaStorage {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }
    fn to_dtype(&self, _: &Layout, _: DType) -> Result<Self> {
        unavailable()
    }
    fn copy_strided(&self, _: &Layout) -> Result<Self> {
        unavailable()
    }
    fn unary(&self, _: &Layout, _: UnaryOp) -> Result<Self> {
        unavailable()
    }
    fn affine(&self, _: &Layout, _: f64, _: f64) -> Result<Self> {
        unavailable()
    }
    fn powf(&self, _: &Layout, _: f64) -> Result<Self> {
        unavailable()
    }
    fn binary(&self, _: &Layout, _: &Self, _: &Layout, _: BinaryOp) -> Result<Self> {
        unavailable()
    }
    fn reduce(&self, _: &Layout, _: &[usize], _: ReduceOp) -> Result<Self> {
        unavailable()
    }
    fn matmul(&self, _: &Layout, _: &Self, _: &Layout, _: MatmulDims) -> Result<Self> {
        unavailable()
    }
    fn index_select(&self, _: &Layout, _: &Self, _: &Layout) -> Result<Self> {
        unavailable()
    }
    fn index_add(&self, _: &Layout, _: &Self, _: &Layout, _: usize) -> Result<Self> {
        unavailable()
    }
}

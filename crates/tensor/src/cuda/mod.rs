//! The CUDA backend slot. The kernels exist (kernels/*.cu, built and tested by `ferrotune-kernels`), and the
//! driver is probed at run time (libcuda loaded dynamically, so every build starts without one), but the tensor
//! ops on `Device::Cuda` are not wired to them yet: every entry point here returns `Error::CudaUnavailable`, so
//! the CPU-only path compiles and runs exactly the code the CUDA build will (the `Storage::Cuda` arms included).
//! What remains is listed in DEVELOPERS.md ("State of the CUDA backend").

use crate::backend::{BackendStorage, BinaryOp, MatmulDims, ReduceOp, UnaryOp};
use crate::{DType, Device, Error, Layout, Result};

const NOT_WIRED: &str = "ferrotune's CUDA kernels are built and tested, but tensor ops on device cuda are not wired to them yet";

pub fn unavailable<T>() -> Result<T> {
    Err(Error::CudaUnavailable(format!("{}; run with device cpu", why_off())))
}

/// Why CUDA cannot be used: no driver / no GPU / no compiled kernels, or, with all of those present, that the
/// tensor ops are not wired yet.
fn why_off() -> String {
    match ferrotune_kernels::cuda::driver_status() {
        Err(why) => why,
        Ok(_) if ferrotune_kernels::FATBINS.is_empty() => {
            "this build has no compiled CUDA kernels (nvcc was not found at build time; set NVCC or CUDA_HOME and rebuild)".to_string()
        }
        Ok(n) => format!("{n} GPU(s) found, but {NOT_WIRED}"),
    }
}

/// Whether a usable CUDA device exists, and if not, why not (printed by `ferrotune env`).
pub fn availability() -> std::result::Result<usize, String> {
    Err(why_off())
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

//! ferrotune's tensor engine.
//!
//! - [`Tensor`]: shared storage + strided [`Layout`]; views are free, ops return new tensors.
//! - [`Storage`]: an enum over backends ([`cpu::CpuStorage`], [`cuda::CudaStorage`]) dispatched by `match`.
//! - [`backend::BackendStorage`]: the narrow interface each backend implements.
//! - [`cpu`]: the CPU backend (rayon, hand-written SIMD GEMM, fused kernels) and reference for every other one.
//! - [`cuda`]: the CUDA slot (a stub that returns a typed error until the CUDA backend lands).

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod dtype;
pub mod device;
pub mod element;
pub mod error;
pub mod layout;
pub mod ops;
pub mod rng;
pub mod storage;
pub mod tensor;

pub use backend::{BinaryOp, ReduceOp, UnaryOp};
pub use device::Device;
pub use dtype::DType;
pub use element::{Element, Float};
pub use error::{Error, Result};
pub use layout::Layout;
pub use storage::Storage;
pub use tensor::Tensor;
pub use half::{bf16, f16};

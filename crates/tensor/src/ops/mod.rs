//! Fused neural-network ops on `Tensor` (RMSNorm, RoPE, SwiGLU, softmax, dropout, attention, cross-entropy).
//! Each op dispatches on the storage: the CPU arm calls `cpu::kernels`, the CUDA arm the CUDA backend (a typed
//! error naming the op until each is wired to its kernel). Inputs of any float dtype are accepted; bf16 and f16 compute in f32 and the result is
//! rounded back to the input dtype, f32 and f64 compute natively.

use crate::{DType, Error, Result, Storage, Tensor};

/// Make `t` ready for a CPU kernel: contiguous, in its compute dtype (f32, or f64 for f64 inputs).
/// Errors with `CudaUnavailable` for GPU tensors (the CUDA arms of each op take those).
pub(crate) fn cpu_compute_input(op: &'static str, t: &Tensor) -> Result<Tensor> {
    match t.storage() {
        Storage::Cpu(_) => {}
        Storage::Cuda(_) => return crate::cuda::unavailable(op),
    }
    if !t.dtype().is_float() {
        return Err(Error::UnsupportedDType { op, dtype: t.dtype() });
    }
    t.to_dtype(t.dtype().compute_dtype())?.contiguous()
}

/// Run `$body` with `$T` bound to `f32` or `f64` according to a compute dtype.
macro_rules! float_dispatch {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            dtype => return Err($crate::Error::UnsupportedDType { op: $op, dtype }),
        }
    };
}
pub(crate) use float_dispatch;

/// Round a compute-dtype result back to the dtype the caller passed in.
pub(crate) fn to_input_dtype(t: Tensor, dtype: DType) -> Result<Tensor> {
    t.to_dtype(dtype)
}

pub mod attention;
pub use attention::*;
pub mod cross_entropy;
pub use cross_entropy::*;

pub mod activation;
pub use activation::*;
pub mod dropout;
pub use dropout::*;
pub mod norm;
pub use norm::*;
pub mod rope;
pub use rope::*;
pub mod softmax;
pub use softmax::*;

//! Fused neural-network kernels on contiguous slices, forward and backward, generic over `Float` (f32 and f64).

pub mod attention;
pub use attention::*;
pub mod cross_entropy;
pub use cross_entropy::*;

pub mod dropout;
pub mod rms_norm;
pub mod rope;
pub mod softmax;
pub mod swiglu;
pub mod vector_math;

//! Fused neural-network kernels on contiguous slices, forward and backward, generic over `Float` (f32 and f64).

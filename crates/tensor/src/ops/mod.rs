//! Fused neural-network ops on `Tensor` (RMSNorm, RoPE, SwiGLU, attention, cross-entropy, ...). Each one
//! dispatches on the storage: the CPU arm calls `cpu::kernels`, the CUDA arm the CUDA backend.

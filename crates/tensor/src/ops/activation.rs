//! SwiGLU, the Llama MLP activation `silu(gate) * up`, fused. Kernel and backward derivation:
//! `cpu::kernels::swiglu`.

use super::{cpu_compute_input, to_input_dtype};
use crate::cpu::kernels::swiglu as kernel;
use crate::element::Float;
use crate::cuda::CudaStorage;
use crate::{Error, Result, Storage, Tensor};

/// `gate` and `up` must agree in shape and dtype (they come from two projections of the same activations).
fn check(op: &'static str, gate: &Tensor, up: &Tensor) -> Result<()> {
    if gate.shape() != up.shape() {
        return Err(Error::ShapeMismatch { op, lhs: gate.shape().to_vec(), rhs: up.shape().to_vec() });
    }
    if gate.dtype() != up.dtype() {
        return Err(Error::DTypeMismatch { op, lhs: gate.dtype(), rhs: up.dtype() });
    }
    Ok(())
}

/// `silu(gate) * up`, elementwise, in the dtype of the inputs (bf16/f16 computed in f32, rounded once).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    const OP: &str = "swiglu";
    check(OP, gate, up)?;
    if let (Storage::Cuda(g), Storage::Cuda(u)) = (gate.storage(), up.storage()) {
        let mut out = CudaStorage::fused_elementwise(OP, "swiglu_forward", &[(g, gate.layout()), (u, up.layout())], 1)?;
        return Ok(Tensor::from_storage(Storage::Cuda(out.remove(0)), gate.shape()));
    }
    let (gc, uc) = (cpu_compute_input(OP, gate)?, cpu_compute_input(OP, up)?);
    let out = super::float_dispatch!(OP, gc.dtype(), T => {
        let mut out = vec![T::ZERO; gc.elem_count()];
        kernel::swiglu_forward(gc.cpu_slice::<T>()?, uc.cpu_slice::<T>()?, &mut out);
        Tensor::from_vec(out, gate.shape())?
    });
    to_input_dtype(out, gate.dtype())
}

/// `(dL/dgate, dL/dup)` of [`swiglu`] given `grad_out` (same shape; any float dtype, converted to the compute
/// dtype of `gate`). Both gradients have the dtype of `gate`.
pub fn swiglu_backward(gate: &Tensor, up: &Tensor, grad_out: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "swiglu_backward";
    check(OP, gate, up)?;
    if grad_out.shape() != gate.shape() {
        return Err(Error::ShapeMismatch { op: OP, lhs: gate.shape().to_vec(), rhs: grad_out.shape().to_vec() });
    }
    if let (Storage::Cuda(g), Storage::Cuda(u)) = (gate.storage(), up.storage()) {
        let grad_out = grad_out.to_dtype(gate.dtype())?;
        let Storage::Cuda(o) = grad_out.storage() else { return crate::cuda::unavailable("swiglu_backward with grad_out on the cpu") };
        let inputs = [(g, gate.layout()), (u, up.layout()), (o, grad_out.layout())];
        let mut grads = CudaStorage::fused_elementwise(OP, "swiglu_backward", &inputs, 2)?.into_iter();
        let mut next = || Tensor::from_storage(Storage::Cuda(grads.next().expect("two outputs")), gate.shape());
        return Ok((next(), next()));
    }
    let (gc, uc) = (cpu_compute_input(OP, gate)?, cpu_compute_input(OP, up)?);
    let oc = cpu_compute_input(OP, grad_out)?.to_dtype(gc.dtype())?;
    let (grad_gate, grad_up) = super::float_dispatch!(OP, gc.dtype(), T => {
        let mut grad_gate = vec![T::ZERO; gc.elem_count()];
        let mut grad_up = vec![T::ZERO; gc.elem_count()];
        kernel::swiglu_backward(
            gc.cpu_slice::<T>()?,
            uc.cpu_slice::<T>()?,
            oc.cpu_slice::<T>()?,
            &mut grad_gate,
            &mut grad_up,
        );
        (Tensor::from_vec(grad_gate, gate.shape())?, Tensor::from_vec(grad_up, gate.shape())?)
    });
    Ok((to_input_dtype(grad_gate, gate.dtype())?, to_input_dtype(grad_up, gate.dtype())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Device};

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let a = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
        let b = Tensor::zeros(&[3, 2], DType::F32, Device::Cpu).unwrap();
        assert!(matches!(swiglu(&a, &b), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(swiglu(&a, &a.to_dtype(DType::BF16).unwrap()), Err(Error::DTypeMismatch { .. })));
        assert!(matches!(swiglu_backward(&a, &a, &b), Err(Error::ShapeMismatch { .. })));
        let ids = Tensor::from_vec(vec![0i32; 6], &[2, 3]).unwrap();
        assert!(matches!(swiglu(&ids, &ids), Err(Error::UnsupportedDType { .. })));
    }

    #[test]
    fn strided_views_and_bf16() {
        let gate = Tensor::randn(1, &[4, 6], 0.0, 2.0, DType::F64).unwrap();
        let up = Tensor::randn(2, &[6, 4], 0.0, 1.0, DType::F64).unwrap().t().unwrap();
        let want = swiglu(&gate, &up.contiguous().unwrap()).unwrap();
        assert_eq!(swiglu(&gate, &up).unwrap().max_abs_diff(&want).unwrap(), 0.0);
        let y = swiglu(&gate.to_dtype(DType::BF16).unwrap(), &up.to_dtype(DType::BF16).unwrap()).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        // Two rounded inputs and one rounded output, 2^-9 relative each: 2^-7 of the largest value bounds them.
        let scale = want.to_vec_f64().unwrap().iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(y.max_abs_diff(&want).unwrap() <= 2f64.powi(-7) * scale * 2.0);
    }
}

//! RMSNorm as HF `LlamaRMSNorm` computes it: normalise in f32 (f64 for f64 inputs), multiply by the weight.
//! Kernel and backward derivation: `cpu::kernels::rms_norm`.

use super::{cpu_compute_input, to_input_dtype};
use crate::cpu::kernels::rms_norm as kernel;
use crate::element::{Element, Float};
use crate::{Error, Result, Storage, Tensor};

/// Shapes and eps shared by forward and backward; returns the hidden size.
fn check(op: &'static str, x: &Tensor, weight: &Tensor, eps: f64) -> Result<usize> {
    let hidden = *x.shape().last().ok_or_else(|| Error::BadShape { op, msg: "x must have at least one dimension".into() })?;
    if weight.shape() != [hidden] {
        return Err(Error::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: weight.shape().to_vec() });
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::BadShape { op, msg: format!("eps must be finite and >= 0, got {eps}") });
    }
    Ok(hidden)
}

/// `y = x / sqrt(mean(x^2, last dim) + eps) * weight` for `x: [..., H]`, `weight: [H]`.
///
/// The computation runs in the compute dtype of `x` (f32 for bf16/f16/f32, f64 for f64); `weight` may have a
/// different float dtype (e.g. an f32 norm weight next to bf16 activations) and is converted to it. The result
/// has the dtype of `x`, rounded once (HF rounds the normalised value to the input dtype before the weight
/// multiply, so bf16 results can differ from HF by about one bf16 ulp).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    const OP: &str = "rms_norm";
    let hidden = check(OP, x, weight, eps)?;
    if x.elem_count() == 0 || hidden == 0 {
        return x.zeros_like();
    }
    if let Storage::Cuda(_) = x.storage() {
        return crate::cuda::fused::rms_norm(x, weight, eps);
    }
    let xc = cpu_compute_input(OP, x)?;
    let wc = cpu_compute_input(OP, weight)?.to_dtype(xc.dtype())?;
    let out = super::float_dispatch!(OP, xc.dtype(), T => {
        let mut out = vec![T::ZERO; xc.elem_count()];
        kernel::rms_norm_forward(xc.cpu_slice::<T>()?, wc.cpu_slice::<T>()?, T::from_f64(eps), &mut out);
        Tensor::from_vec(out, x.shape())?
    });
    to_input_dtype(out, x.dtype())
}

/// `(dL/dx, dL/dweight)` of [`rms_norm`] given `grad_out = dL/dy` (same shape as `x`, any float dtype; it is
/// converted to the compute dtype of `x`). `grad_x` has the dtype of `x`, `grad_weight` that of `weight`.
pub fn rms_norm_backward(x: &Tensor, weight: &Tensor, eps: f64, grad_out: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rms_norm_backward";
    let hidden = check(OP, x, weight, eps)?;
    if grad_out.shape() != x.shape() {
        return Err(Error::ShapeMismatch { op: OP, lhs: x.shape().to_vec(), rhs: grad_out.shape().to_vec() });
    }
    if x.elem_count() == 0 || hidden == 0 {
        return Ok((x.zeros_like()?, weight.zeros_like()?));
    }
    if let Storage::Cuda(_) = x.storage() {
        return crate::cuda::fused::rms_norm_backward(x, weight, eps, grad_out);
    }
    let xc = cpu_compute_input(OP, x)?;
    let wc = cpu_compute_input(OP, weight)?.to_dtype(xc.dtype())?;
    let gc = cpu_compute_input(OP, grad_out)?.to_dtype(xc.dtype())?;
    let (grad_x, grad_weight) = super::float_dispatch!(OP, xc.dtype(), T => {
        let mut grad_x = vec![T::ZERO; xc.elem_count()];
        let mut grad_weight = vec![T::ZERO; hidden];
        kernel::rms_norm_backward(
            xc.cpu_slice::<T>()?,
            wc.cpu_slice::<T>()?,
            T::from_f64(eps),
            gc.cpu_slice::<T>()?,
            &mut grad_x,
            &mut grad_weight,
        );
        (Tensor::from_vec(grad_x, x.shape())?, Tensor::from_vec(grad_weight, &[hidden])?)
    });
    Ok((to_input_dtype(grad_x, x.dtype())?, to_input_dtype(grad_weight, weight.dtype())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Device};

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let x = Tensor::zeros(&[2, 4], DType::F32, Device::Cpu).unwrap();
        let w3 = Tensor::ones(&[3], DType::F32, Device::Cpu).unwrap();
        let w4 = Tensor::ones(&[4], DType::F32, Device::Cpu).unwrap();
        assert!(matches!(rms_norm(&x, &w3, 1e-6), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(rms_norm(&x, &w4, -1.0), Err(Error::BadShape { .. })));
        assert!(matches!(rms_norm(&Tensor::scalar(1f32), &w4, 1e-6), Err(Error::BadShape { .. })));
        let ids = Tensor::from_vec(vec![1i64; 8], &[2, 4]).unwrap();
        assert!(matches!(rms_norm(&ids, &w4, 1e-6), Err(Error::UnsupportedDType { .. })));
        let g = Tensor::zeros(&[4, 2], DType::F32, Device::Cpu).unwrap();
        assert!(matches!(rms_norm_backward(&x, &w4, 1e-6, &g), Err(Error::ShapeMismatch { .. })));
    }

    #[test]
    fn strided_input_and_low_precision_dtypes() {
        let x = Tensor::randn(1, &[6, 5], 0.0, 1.0, DType::F64).unwrap();
        let w = Tensor::randn(2, &[6], 1.0, 0.1, DType::F64).unwrap();
        let xt = x.t().unwrap(); // [5, 6], strided
        let want = rms_norm(&xt.contiguous().unwrap(), &w, 1e-6).unwrap();
        assert!(rms_norm(&xt, &w, 1e-6).unwrap().max_abs_diff(&want).unwrap() == 0.0);
        for dtype in [DType::BF16, DType::F16] {
            let y = rms_norm(&xt.to_dtype(dtype).unwrap(), &w.to_dtype(dtype).unwrap(), 1e-6).unwrap();
            assert_eq!(y.dtype(), dtype);
            // Inputs rounded to 8 (bf16) or 11 (f16) bits, output rounded once more: 2^-7 relative covers both.
            let scale = want.to_vec_f64().unwrap().iter().fold(0f64, |m, v| m.max(v.abs()));
            assert!(y.max_abs_diff(&want).unwrap() <= 2f64.powi(-7) * scale * 2.0);
        }
        // Mixed: bf16 activations, f32 weight; grads come back in each input's dtype.
        let xb = xt.to_dtype(DType::BF16).unwrap();
        let w32 = w.to_dtype(DType::F32).unwrap();
        let (gx, gw) = rms_norm_backward(&xb, &w32, 1e-6, &xb).unwrap();
        assert_eq!((gx.dtype(), gw.dtype(), gw.shape()), (DType::BF16, DType::F32, &[6][..]));
    }
}

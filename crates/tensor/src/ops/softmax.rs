//! Softmax and log-softmax over the last dimension. Kernels and backward derivations: `cpu::kernels::softmax`.

use super::{cpu_compute_input, to_input_dtype};
use crate::cpu::kernels::softmax as kernel;
use crate::element::Float;
use crate::{Error, Result, Tensor};

#[derive(Clone, Copy)]
enum Kind {
    Softmax,
    LogSoftmax,
}

fn last_dim(op: &'static str, t: &Tensor) -> Result<usize> {
    t.shape().last().copied().ok_or_else(|| Error::BadShape { op, msg: "needs at least one dimension".into() })
}

fn forward(op: &'static str, x: &Tensor, kind: Kind) -> Result<Tensor> {
    let cols = last_dim(op, x)?;
    if x.elem_count() == 0 {
        return x.zeros_like();
    }
    let xc = cpu_compute_input(op, x)?;
    let out = super::float_dispatch!(op, xc.dtype(), T => {
        let mut out = vec![T::ZERO; xc.elem_count()];
        let input = xc.cpu_slice::<T>()?;
        match kind {
            Kind::Softmax => kernel::softmax_forward(input, cols, &mut out),
            Kind::LogSoftmax => kernel::log_softmax_forward(input, cols, &mut out),
        }
        Tensor::from_vec(out, x.shape())?
    });
    to_input_dtype(out, x.dtype())
}

fn backward(op: &'static str, y: &Tensor, grad_out: &Tensor, kind: Kind) -> Result<Tensor> {
    let cols = last_dim(op, y)?;
    if grad_out.shape() != y.shape() {
        return Err(Error::ShapeMismatch { op, lhs: y.shape().to_vec(), rhs: grad_out.shape().to_vec() });
    }
    if y.elem_count() == 0 {
        return y.zeros_like();
    }
    let yc = cpu_compute_input(op, y)?;
    let gc = cpu_compute_input(op, grad_out)?.to_dtype(yc.dtype())?;
    let grad_x = super::float_dispatch!(op, yc.dtype(), T => {
        let mut grad_x = vec![T::ZERO; yc.elem_count()];
        let (output, g) = (yc.cpu_slice::<T>()?, gc.cpu_slice::<T>()?);
        match kind {
            Kind::Softmax => kernel::softmax_backward(output, g, cols, &mut grad_x),
            Kind::LogSoftmax => kernel::log_softmax_backward(output, g, cols, &mut grad_x),
        }
        Tensor::from_vec(grad_x, y.shape())?
    });
    to_input_dtype(grad_x, y.dtype())
}

/// Softmax over the last dim, in the dtype of `x` (bf16/f16 computed in f32). A row of all `-inf` gives NaN,
/// as in PyTorch.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    forward("softmax_last", x, Kind::Softmax)
}

/// `dL/dx` of [`softmax_last`] from its output `y` and `grad_out` (same shape; any float dtype, converted to the
/// compute dtype of `y`). Returned in the dtype of `y`.
pub fn softmax_last_backward(y: &Tensor, grad_out: &Tensor) -> Result<Tensor> {
    backward("softmax_last_backward", y, grad_out, Kind::Softmax)
}

/// Log-softmax over the last dim, in the dtype of `x` (bf16/f16 computed in f32).
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    forward("log_softmax_last", x, Kind::LogSoftmax)
}

/// `dL/dx` of [`log_softmax_last`] from its output `y` and `grad_out` (same shape; any float dtype, converted to
/// the compute dtype of `y`). Returned in the dtype of `y`.
pub fn log_softmax_last_backward(y: &Tensor, grad_out: &Tensor) -> Result<Tensor> {
    backward("log_softmax_last_backward", y, grad_out, Kind::LogSoftmax)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Device};

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        assert!(matches!(softmax_last(&Tensor::scalar(1f32)), Err(Error::BadShape { .. })));
        let y = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
        let g = Tensor::zeros(&[3, 2], DType::F32, Device::Cpu).unwrap();
        assert!(matches!(softmax_last_backward(&y, &g), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(log_softmax_last_backward(&y, &g), Err(Error::ShapeMismatch { .. })));
        let ids = Tensor::from_vec(vec![0i64; 6], &[2, 3]).unwrap();
        assert!(matches!(log_softmax_last(&ids), Err(Error::UnsupportedDType { .. })));
        let empty = Tensor::zeros(&[0, 5], DType::F32, Device::Cpu).unwrap();
        assert_eq!(softmax_last(&empty).unwrap().shape(), &[0, 5]);
    }

    #[test]
    fn strided_rows_and_bf16() {
        let x = Tensor::randn(3, &[7, 4], 0.0, 2.0, DType::F64).unwrap().t().unwrap(); // [4, 7], strided
        let want = softmax_last(&x.contiguous().unwrap()).unwrap();
        assert_eq!(softmax_last(&x).unwrap().max_abs_diff(&want).unwrap(), 0.0);
        let rows = want.sum_keepdim(&[1]).unwrap().to_vec_f64().unwrap();
        assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-15));
        let y = softmax_last(&x.to_dtype(DType::BF16).unwrap()).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        // Probabilities lie in [0, 1]: the rounded input (|x| < 8, 2^-9 relative, so < 2^-6 absolute in the
        // exponent) and output rounding keep the absolute error under 2^-5 * p + 2^-9.
        assert!(y.max_abs_diff(&want).unwrap() < 0.04);
    }
}

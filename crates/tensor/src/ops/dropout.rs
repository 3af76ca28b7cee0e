//! Inverted dropout with a mask regenerated from `(seed, element index)`. Kernel: `cpu::kernels::dropout`.

use super::{cpu_compute_input, to_input_dtype};
use crate::cpu::kernels::dropout as kernel;
use crate::element::Float;
use crate::{Error, Result, Tensor};

fn apply(op: &'static str, x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Msg(format!("{op}: drop probability p must be in [0, 1), got {p}")));
    }
    if !x.dtype().is_float() {
        return Err(Error::UnsupportedDType { op, dtype: x.dtype() });
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    let xc = cpu_compute_input(op, x)?;
    let out = super::float_dispatch!(op, xc.dtype(), T => {
        let mut out = vec![T::ZERO; xc.elem_count()];
        kernel::dropout_apply(xc.cpu_slice::<T>()?, p, seed, &mut out);
        Tensor::from_vec(out, x.shape())?
    });
    to_input_dtype(out, x.dtype())
}

/// Inverted dropout: keep each element with probability `1 - p` and scale the kept ones by `1 / (1 - p)`.
/// The mask is a pure function of `(seed, element index in row-major order)`, so it does not depend on the
/// thread count, and [`dropout_backward`] with the same `(p, seed)` regenerates it. `p == 0` returns `x`.
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    apply("dropout", x, p, seed)
}

/// `dL/dx = grad_out * mask / (1 - p)`: the forward map applied to the gradient, with the same `(p, seed)`.
pub fn dropout_backward(grad_out: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    apply("dropout_backward", grad_out, p, seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn bad_p_is_an_error() {
        let x = Tensor::randn(0, &[4], 0.0, 1.0, DType::F32).unwrap();
        for p in [-0.1, 1.0, 1.5, f64::NAN] {
            assert!(dropout(&x, p, 0).is_err(), "p = {p}");
        }
        let ids = Tensor::from_vec(vec![1i64; 4], &[4]).unwrap();
        assert!(matches!(dropout(&ids, 0.5, 0), Err(Error::UnsupportedDType { .. })));
    }

    #[test]
    fn backward_uses_the_forward_mask_in_every_dtype() {
        let x = Tensor::randn(1, &[64, 48], 0.0, 1.0, DType::F32).unwrap().t().unwrap(); // strided
        let ones = Tensor::ones(&[48, 64], DType::F32, crate::Device::Cpu).unwrap();
        let y = dropout(&x, 0.25, 9).unwrap().to_vec_f64().unwrap();
        let g = dropout_backward(&ones, 0.25, 9).unwrap().to_vec_f64().unwrap();
        let xs = x.to_vec_f64().unwrap();
        for ((&y, &g), &x) in y.iter().zip(&g).zip(&xs) {
            // Kept: y = x / 0.75 and g = 1 / 0.75; dropped: both 0.
            assert!((y - x * g).abs() < 1e-6, "{y} vs {x} * {g}");
        }
        for dtype in [DType::F64, DType::BF16, DType::F16] {
            let yd = dropout(&x.to_dtype(dtype).unwrap(), 0.25, 9).unwrap();
            assert_eq!(yd.dtype(), dtype);
            let dropped = |v: &[f64]| v.iter().map(|&v| v == 0.0).collect::<Vec<_>>();
            assert_eq!(dropped(&yd.to_vec_f64().unwrap()), dropped(&g));
        }
    }
}

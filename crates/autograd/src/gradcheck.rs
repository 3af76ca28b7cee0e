//! Central finite differences in f64: the check every op's backward is held to.

use crate::{no_grad, Var};
use ferrotune_tensor::{DType, Result, Tensor};

/// The worst disagreement found by [`check_gradients`].
#[derive(Debug, Clone)]
pub struct GradCheckReport {
    /// Largest `|analytic - numeric| / max(1, |numeric|)` over all checked elements.
    pub max_error: f64,
    /// (input index, element index, analytic, numeric) of the worst element.
    pub worst: (usize, usize, f64, f64),
}

/// Compare the autograd gradients of `f` with central differences.
///
/// `f` maps input variables to any tensor; the check differentiates the scalar `sum(f(x) * w)` for a fixed
/// random `w`, so every output element contributes with a distinct weight. Inputs must be f64. `h` is the step
/// (1e-6 suits f64: truncation error ~h^2, rounding ~eps/h, both ~1e-10 relative).
pub fn check_gradients(inputs: &[Tensor], h: f64, f: impl Fn(&[Var]) -> Result<Var>) -> Result<GradCheckReport> {
    for t in inputs {
        if t.dtype() != DType::F64 {
            return Err(ferrotune_tensor::Error::UnsupportedDType { op: "check_gradients", dtype: t.dtype() });
        }
    }
    let params: Vec<Var> = inputs.iter().map(|t| Var::param(t.clone())).collect();
    let out = f(&params)?;
    let weights = Tensor::randn(0x5eed, out.shape(), 0.0, 1.0, DType::F64)?;
    out.mul(&Var::constant(weights.clone()))?.sum_all()?.backward()?;

    let objective = |xs: &[Tensor]| -> Result<f64> {
        no_grad(|| {
            let vars: Vec<Var> = xs.iter().map(|t| Var::constant(t.clone())).collect();
            f(&vars)?.value().mul(&weights)?.sum_all()?.to_scalar::<f64>()
        })
    };

    let mut report = GradCheckReport { max_error: 0.0, worst: (0, 0, 0.0, 0.0) };
    for (i, input) in inputs.iter().enumerate() {
        let analytic = match params[i].grad() {
            Some(g) => g.to_vec::<f64>()?,
            None => vec![0.0; input.elem_count()],
        };
        let base = input.to_vec::<f64>()?;
        for e in 0..base.len() {
            let mut shifted: Vec<Tensor> = inputs.to_vec();
            let mut plus = base.clone();
            plus[e] += h;
            shifted[i] = Tensor::from_vec(plus, input.shape())?;
            let f_plus = objective(&shifted)?;
            let mut minus = base.clone();
            minus[e] -= h;
            shifted[i] = Tensor::from_vec(minus, input.shape())?;
            let f_minus = objective(&shifted)?;
            let numeric = (f_plus - f_minus) / (2.0 * h);
            let error = (analytic[e] - numeric).abs() / numeric.abs().max(1.0);
            if error > report.max_error || error.is_nan() {
                report = GradCheckReport { max_error: error, worst: (i, e, analytic[e], numeric) };
            }
        }
    }
    Ok(report)
}

//! Softmax and log-softmax over the last dimension, forward and backward.
//!
//! Forward, for one row `x` (subtracting the row max `m` first, so `exp` never overflows):
//!
//! ```text
//! softmax:      y_i = exp(x_i - m) / sum_j exp(x_j - m)
//! log_softmax:  y_i = (x_i - m) - ln(sum_j exp(x_j - m))
//! ```
//!
//! Backward, given `g = dL/dy`. For softmax, `dy_i/dx_k = y_i (delta_ik - y_k)`, so
//!
//! ```text
//! dL/dx_k = sum_i g_i y_i (delta_ik - y_k) = y_k * (g_k - sum_i g_i y_i)
//! ```
//!
//! For log-softmax, `dy_i/dx_k = delta_ik - softmax_k = delta_ik - exp(y_k)`, so
//!
//! ```text
//! dL/dx_k = g_k - exp(y_k) * sum_i g_i
//! ```
//!
//! Both backwards need only the forward output, which is what the autograd tape keeps.
//! A row of all `-inf` gives NaN, as in PyTorch (callers that mask whole rows handle them before calling).

use super::vector_math::{dot, fast_exp, reduce_in_lanes, sum};
use crate::cpu::PAR_THRESHOLD;
use crate::element::Float;
use rayon::prelude::*;

/// Apply `f(out_row, in_row)` to every row, over rayon when the tensor is large.
fn for_each_row<T: Float>(input: &[T], cols: usize, out: &mut [T], f: impl Fn(&mut [T], &[T]) + Sync) {
    assert!(cols > 0 && input.len().is_multiple_of(cols) && out.len() == input.len(), "softmax: slice lengths");
    if input.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(cols).zip(input.par_chunks(cols)).for_each(|(o, i)| f(o, i));
    } else {
        out.chunks_mut(cols).zip(input.chunks(cols)).for_each(|(o, i)| f(o, i));
    }
}

/// Apply `f(out_row, a_row, b_row)` to every row, over rayon when the tensor is large.
fn for_each_row2<T: Float>(a: &[T], b: &[T], cols: usize, out: &mut [T], f: impl Fn(&mut [T], &[T], &[T]) + Sync) {
    assert!(cols > 0 && a.len().is_multiple_of(cols) && b.len() == a.len() && out.len() == a.len(), "softmax: slice lengths");
    if a.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(cols).zip(a.par_chunks(cols)).zip(b.par_chunks(cols)).for_each(|((o, a), b)| f(o, a, b));
    } else {
        out.chunks_mut(cols).zip(a.chunks(cols)).zip(b.chunks(cols)).for_each(|((o, a), b)| f(o, a, b));
    }
}

/// Max of a row, in eight lanes so it vectorises (`-inf` for an empty row).
#[inline]
fn row_max<T: Float>(row: &[T]) -> T {
    reduce_in_lanes::<T, 8>(row, T::NEG_INFINITY, T::max)
}

/// Softmax of every `cols`-long row of `x`.
pub fn softmax_forward<T: Float>(x: &[T], cols: usize, out: &mut [T]) {
    for_each_row(x, cols, out, |y, x| {
        let m = row_max(x);
        for (y, &x) in y.iter_mut().zip(x) {
            *y = fast_exp(x - m);
        }
        let inv_sum = sum(y).recip();
        for y in y.iter_mut() {
            *y *= inv_sum;
        }
    });
}

/// `dL/dx = y * (g - sum(g * y))` per row, from the softmax output `y`.
pub fn softmax_backward<T: Float>(y: &[T], grad_out: &[T], cols: usize, grad_x: &mut [T]) {
    for_each_row2(y, grad_out, cols, grad_x, |gx, y, g| {
        let gy = dot(g, y);
        for ((gx, &y), &g) in gx.iter_mut().zip(y).zip(g) {
            *gx = y * (g - gy);
        }
    });
}

/// Log-softmax of every `cols`-long row of `x`.
pub fn log_softmax_forward<T: Float>(x: &[T], cols: usize, out: &mut [T]) {
    for_each_row(x, cols, out, |y, x| {
        let m = row_max(x);
        for (y, &x) in y.iter_mut().zip(x) {
            *y = fast_exp(x - m);
        }
        let log_sum = sum(y).ln();
        for (y, &x) in y.iter_mut().zip(x) {
            *y = (x - m) - log_sum;
        }
    });
}

/// `dL/dx = g - exp(y) * sum(g)` per row, from the log-softmax output `y`.
pub fn log_softmax_backward<T: Float>(y: &[T], grad_out: &[T], cols: usize, grad_x: &mut [T]) {
    for_each_row2(y, grad_out, cols, grad_x, |gx, y, g| {
        let g_sum = sum(g);
        for ((gx, &y), &g) in gx.iter_mut().zip(y).zip(g) {
            *gx = g - fast_exp(y) * g_sum;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn normal(seed: u64, n: usize, scale: f64) -> Vec<f64> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| scale * rng.normal()).collect()
    }

    /// Softmax straight from the definition (no max subtraction: inputs here are small).
    fn reference_softmax(x: &[f64], cols: usize) -> Vec<f64> {
        let mut y = Vec::new();
        for row in x.chunks(cols) {
            let z: f64 = row.iter().map(|v| v.exp()).sum();
            y.extend(row.iter().map(|v| v.exp() / z));
        }
        y
    }

    fn reference_log_softmax(x: &[f64], cols: usize) -> Vec<f64> {
        reference_softmax(x, cols).iter().map(|p| p.ln()).collect()
    }

    fn assert_all_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}[{i}]: {a} vs {b}");
        }
    }

    #[test]
    fn forward_matches_reference() {
        for (rows, cols) in [(5, 11), (300, 129)] {
            let x = normal(1, rows * cols, 3.0);
            let mut y = vec![0.0; x.len()];
            softmax_forward(&x, cols, &mut y);
            assert_all_close("softmax", &y, &reference_softmax(&x, cols), 1e-14);
            log_softmax_forward(&x, cols, &mut y);
            assert_all_close("log_softmax", &y, &reference_log_softmax(&x, cols), 1e-13);
            // f32 (fast exp): input rounding (|x| < 15, 2^-24 relative) moves exp by < 1e-6, the rest is a few ulps.
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let x32_wide: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
            let mut y32 = vec![0f32; x.len()];
            softmax_forward(&x32, cols, &mut y32);
            let widened: Vec<f64> = y32.iter().map(|&v| v as f64).collect();
            assert_all_close("softmax f32", &widened, &reference_softmax(&x32_wide, cols), 1e-6);
            log_softmax_forward(&x32, cols, &mut y32);
            let widened: Vec<f64> = y32.iter().map(|&v| v as f64).collect();
            assert_all_close("log_softmax f32", &widened, &reference_log_softmax(&x32_wide, cols), 1e-6);
        }
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let x = [1000.0f32, 1001.0, -1e30, 999.0];
        let mut y = [0f32; 4];
        softmax_forward(&x, 4, &mut y);
        let z = 1.0 + 1f32.exp() + (-1f32).exp();
        let want = [1.0 / z, 1f32.exp() / z, 0.0, (-1f32).exp() / z];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        log_softmax_forward(&x, 4, &mut y);
        assert!((y[1] - (1.0 - z.ln())).abs() < 1e-6 && y.iter().all(|v| !v.is_nan()));
    }

    /// Central differences of L = sum(g * y) in f64, step 1e-6: truncation ~1e-12, rounding ~1e-10; a wrong
    /// gradient term is O(0.1), so the tolerance 1e-7 is safe on both sides.
    #[test]
    fn backward_matches_finite_differences() {
        let (rows, cols) = (3, 7);
        let (x, g) = (normal(2, rows * cols, 1.5), normal(3, rows * cols, 1.0));
        type Forward = fn(&[f64], usize, &mut [f64]);
        type Backward = fn(&[f64], &[f64], usize, &mut [f64]);
        let cases: [(&str, Forward, Backward); 2] = [
            ("softmax", softmax_forward::<f64>, softmax_backward::<f64>),
            ("log_softmax", log_softmax_forward::<f64>, log_softmax_backward::<f64>),
        ];
        for (name, forward, backward) in cases {
            let loss = |x: &[f64]| -> f64 {
                let mut y = vec![0.0; x.len()];
                forward(x, cols, &mut y);
                y.iter().zip(&g).map(|(y, g)| y * g).sum()
            };
            let mut y = vec![0.0; x.len()];
            forward(&x, cols, &mut y);
            let mut gx = vec![0.0; x.len()];
            backward(&y, &g, cols, &mut gx);
            let step = 1e-6;
            for i in 0..x.len() {
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[i] += step;
                xm[i] -= step;
                let fd = (loss(&xp) - loss(&xm)) / (2.0 * step);
                assert!((fd - gx[i]).abs() <= 1e-7 * (1.0 + fd.abs()), "{name} grad[{i}]: {} vs fd {fd}", gx[i]);
            }
        }
    }
}

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

use super::rms_norm::dot;
use crate::cpu::PAR_THRESHOLD;
use crate::element::Float;
use crate::DType;
use rayon::prelude::*;

/// e^x for the kernels' inner loops (softmax, SwiGLU's sigmoid).
///
/// f32: a branch-free Cephes-style `expf` that LLVM vectorises (libm's `expf` is one scalar call per element,
/// and dominates softmax and SwiGLU). Error within 2 ulp over the whole range (see the tests); returns 0 below
/// -87.34 (where e^x leaves the normal range; torch would return a denormal there) and saturates at
/// e^88 = 1.65e38 above 88, where torch returns up to 3.4e38 or inf. f64, the reference path, uses libm.
#[inline(always)]
pub(crate) fn fast_exp<T: Float>(x: T) -> T {
    if T::DTYPE == DType::F32 {
        T::from_f32(exp_f32(x.to_f32()))
    } else {
        x.exp()
    }
}

#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOWEST: f32 = -87.336_55; // ln(2^-126), the smallest normal
    // Adding 1.5 * 2^23 rounds to the nearest integer n and leaves n in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 = LN2_HI + LN2_LO with LN2_HI short enough that n * LN2_HI is exact (Cody-Waite reduction).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(LOWEST, 88.0);
    let t = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO; // |r| <= ln(2) / 2
    // Cephes expf minimax polynomial for e^r.
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2^n built in the exponent field: t's bits are (bits of 1.5 * 2^23) + n, whose high part shifts out.
    let two_to_n = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    if x < LOWEST {
        0.0
    } else {
        e_r * two_to_n
    }
}

/// Sum with eight independent accumulators (vectorisable; a single running float sum is not).
#[inline]
fn sum<T: Float>(a: &[T]) -> T {
    let (chunks, tail) = a.as_chunks::<8>();
    let mut lanes = [T::ZERO; 8];
    for c in chunks {
        for k in 0..8 {
            lanes[k] += c[k];
        }
    }
    lanes.iter().copied().sum::<T>() + tail.iter().copied().sum::<T>()
}

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

#[inline]
fn row_max<T: Float>(row: &[T]) -> T {
    let (chunks, tail) = row.as_chunks::<8>();
    let mut lanes = [T::NEG_INFINITY; 8];
    for c in chunks {
        for k in 0..8 {
            lanes[k] = lanes[k].max(c[k]);
        }
    }
    tail.iter().chain(&lanes).fold(T::NEG_INFINITY, |m, &v| m.max(v))
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
    fn fast_exp_f32_is_within_two_ulp() {
        let mut worst = 0f64;
        for i in 0..=1_000_000 {
            let x = -87.3 + 175.3 * i as f64 / 1e6;
            let (got, want) = (exp_f32(x as f32) as f64, (x as f32 as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        // One f32 ulp is 2^-23 = 1.19e-7 relative at worst.
        assert!(worst < 2.0 * 1.19e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(0.0), 1.0);
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

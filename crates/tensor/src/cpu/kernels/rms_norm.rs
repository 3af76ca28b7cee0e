//! RMSNorm over the last dimension (Zhang & Sennrich 2019; HF `LlamaRMSNorm`), forward and backward.
//!
//! Forward, for one row `x` of length `H` and a weight `w` of length `H`:
//!
//! ```text
//! r = 1 / sqrt(mean_j(x_j^2) + eps)      n = x * r      y = n * w
//! ```
//!
//! Backward, given `g = dL/dy`:
//!
//! ```text
//! dL/dw_j = sum over rows of g_j * n_j
//!
//! u_j = g_j * w_j                                  (the gradient reaching n)
//! dr/dx_k = -r^3 * x_k / H                         (from r = (mean(x^2) + eps)^(-1/2))
//! dL/dx_k = u_k * r + sum_j u_j * x_j * dr/dx_k
//!         = r * u_k - x_k * r^3 * (sum_j u_j x_j) / H
//!         = r * (u_k - n_k * mean_j(u_j n_j))
//! ```
//!
//! `r` is recomputed in backward rather than saved: it costs one sum of squares per row and keeps the autograd
//! tape down to the inputs.

use super::vector_math::dot;
use crate::cpu::PAR_THRESHOLD;
use crate::element::Float;
use rayon::prelude::*;

/// The weight gradient is summed over rows in this many fixed blocks (partial sums added in block order), so the
/// result is the same for any thread count and the partial buffers stay small (`blocks * H` elements).
const GRAD_WEIGHT_BLOCKS: usize = 64;

/// `1 / sqrt(mean(x^2) + eps)` for one row.
#[inline]
fn inverse_rms<T: Float>(row: &[T], eps: T) -> T {
    let mean_square = dot(row, row) / T::from_f64(row.len() as f64);
    (mean_square + eps).sqrt().recip()
}

/// `y = x / sqrt(mean(x^2) + eps) * weight` for every row of `x` (`weight.len()` columns).
pub fn rms_norm_forward<T: Float>(x: &[T], weight: &[T], eps: T, out: &mut [T]) {
    let hidden = weight.len();
    assert!(hidden > 0 && x.len().is_multiple_of(hidden) && out.len() == x.len(), "rms_norm_forward: slice lengths");
    let normalise_row = |(y, x): (&mut [T], &[T])| {
        let r = inverse_rms(x, eps);
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(weight) {
            *y = x * r * w;
        }
    };
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(hidden).zip(x.par_chunks(hidden)).for_each(normalise_row);
    } else {
        out.chunks_mut(hidden).zip(x.chunks(hidden)).for_each(normalise_row);
    }
}

/// Gradients of [`rms_norm_forward`] (derivation in the module docs). `grad_weight` is overwritten.
pub fn rms_norm_backward<T: Float>(
    x: &[T],
    weight: &[T],
    eps: T,
    grad_out: &[T],
    grad_x: &mut [T],
    grad_weight: &mut [T],
) {
    let hidden = weight.len();
    assert!(
        hidden > 0 && x.len().is_multiple_of(hidden) && grad_out.len() == x.len() && grad_x.len() == x.len() && grad_weight.len() == hidden,
        "rms_norm_backward: slice lengths"
    );
    let rows = x.len() / hidden;
    let block = rows.div_ceil(GRAD_WEIGHT_BLOCKS).max(1) * hidden;
    let inv_hidden = T::from_f64(1.0 / hidden as f64);
    // One block of rows: writes grad_x for those rows and returns their share of grad_weight.
    let backward_block = |((x, g), gx): ((&[T], &[T]), &mut [T])| -> Vec<T> {
        let mut partial_gw = vec![T::ZERO; hidden];
        for ((x, g), gx) in x.chunks_exact(hidden).zip(g.chunks_exact(hidden)).zip(gx.chunks_exact_mut(hidden)) {
            let r = inverse_rms(x, eps);
            // sum_j u_j n_j = r * sum_j g_j w_j x_j; the r is folded into `coeff` below.
            let (x_chunks, x_tail) = x.as_chunks::<8>();
            let (g_chunks, g_tail) = g.as_chunks::<8>();
            let (w_chunks, w_tail) = weight.as_chunks::<8>();
            let mut lanes = [T::ZERO; 8];
            for ((xc, gc), wc) in x_chunks.iter().zip(g_chunks).zip(w_chunks) {
                for k in 0..8 {
                    lanes[k] += gc[k] * wc[k] * xc[k];
                }
            }
            let mut gwx: T = x_tail.iter().zip(g_tail).zip(w_tail).map(|((&x, &g), &w)| g * w * x).sum();
            gwx += lanes.iter().copied().sum::<T>();
            // dL/dx_k = r * g_k w_k - x_k * (r^3 * gwx / H)
            let coeff = r * r * r * gwx * inv_hidden;
            for ((((gx, &x), &g), &w), gw) in gx.iter_mut().zip(x).zip(g).zip(weight).zip(partial_gw.iter_mut()) {
                *gx = r * g * w - x * coeff;
                *gw += g * x * r;
            }
        }
        partial_gw
    };
    let partials: Vec<Vec<T>> = if x.len() >= PAR_THRESHOLD {
        x.par_chunks(block).zip(grad_out.par_chunks(block)).zip(grad_x.par_chunks_mut(block)).map(backward_block).collect()
    } else {
        x.chunks(block).zip(grad_out.chunks(block)).zip(grad_x.chunks_mut(block)).map(backward_block).collect()
    };
    grad_weight.fill(T::ZERO);
    for partial in &partials {
        for (gw, &p) in grad_weight.iter_mut().zip(partial) {
            *gw += p;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn normal(seed: u64, n: usize) -> Vec<f64> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.normal()).collect()
    }

    /// The forward written as plainly as possible, in f64.
    fn reference(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
        let h = w.len();
        let mut y = Vec::new();
        for row in x.chunks(h) {
            let ms: f64 = row.iter().map(|v| v * v).sum::<f64>() / h as f64;
            for j in 0..h {
                y.push(row[j] / (ms + eps).sqrt() * w[j]);
            }
        }
        y
    }

    #[test]
    fn forward_matches_reference_f64_and_f32() {
        // 37 columns exercise both the 8-wide chunks and the tail; 1024 rows of 37 cross PAR_THRESHOLD.
        for rows in [3, 1024] {
            let h = 37;
            let (x, w) = (normal(1, rows * h), normal(2, h));
            let want = reference(&x, &w, 1e-6);
            let mut y = vec![0.0; x.len()];
            rms_norm_forward(&x, &w, 1e-6, &mut y);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-13 * (1.0 + b.abs()), "{a} vs {b}");
            }
            let (x32, w32): (Vec<f32>, Vec<f32>) = (x.iter().map(|&v| v as f32).collect(), w.iter().map(|&v| v as f32).collect());
            let mut y32 = vec![0f32; x.len()];
            rms_norm_forward(&x32, &w32, 1e-6, &mut y32);
            for (a, b) in y32.iter().zip(&want) {
                // f32 inputs are themselves rounded (2^-24 relative); the sum of 37 squares adds a few ulps.
                assert!((*a as f64 - b).abs() <= 2e-6 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    /// Central differences of L = sum(g * y) in f64. Truncation error is O(h^2 * f''') ~ 1e-12 and rounding
    /// error ~ 1e-16 * |L| / h ~ 1e-9, so 1e-7 (absolute + relative) separates a correct gradient from a wrong one
    /// (a wrong term is O(1)).
    #[test]
    fn backward_matches_finite_differences() {
        let (rows, h, eps) = (4, 13, 1e-5);
        let (x, w, g) = (normal(3, rows * h), normal(4, h), normal(5, rows * h));
        let loss = |x: &[f64], w: &[f64]| -> f64 { reference(x, w, eps).iter().zip(&g).map(|(y, g)| y * g).sum() };
        let (mut gx, mut gw) = (vec![0.0; x.len()], vec![0.0; h]);
        rms_norm_backward(&x, &w, eps, &g, &mut gx, &mut gw);
        let step = 1e-6;
        for i in 0..x.len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += step;
            xm[i] -= step;
            let fd = (loss(&xp, &w) - loss(&xm, &w)) / (2.0 * step);
            assert!((fd - gx[i]).abs() <= 1e-7 * (1.0 + fd.abs()), "grad_x[{i}]: {} vs fd {fd}", gx[i]);
        }
        for j in 0..h {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[j] += step;
            wm[j] -= step;
            let fd = (loss(&x, &wp) - loss(&x, &wm)) / (2.0 * step);
            assert!((fd - gw[j]).abs() <= 1e-7 * (1.0 + fd.abs()), "grad_w[{j}]: {} vs fd {fd}", gw[j]);
        }
    }

    #[test]
    fn weight_gradient_does_not_depend_on_thread_count() {
        let (rows, h) = (700, 64);
        let (x, w, g) = (normal(6, rows * h), normal(7, h), normal(8, rows * h));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let (mut gx, mut gw) = (vec![0.0; x.len()], vec![0.0; h]);
                rms_norm_backward(&x, &w, 1e-6, &g, &mut gx, &mut gw);
                (gx, gw)
            })
        };
        assert_eq!(run(1), run(3));
    }
}

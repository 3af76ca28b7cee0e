//! Rotary position embedding (Su et al. 2021) in the half-split layout of HF Llama / GPT-NeoX (`rotate_half`):
//! dimension `i` of the first half of a head pairs with dimension `i + D/2`.
//!
//! Forward, for a head `x = [x1, x2]` (halves of length `D/2`) at position `p`, with `c_i = a * cos(p * f_i)`,
//! `s_i = a * sin(p * f_i)` (`f` the inverse frequencies, `a` the attention scaling, 1 except for YaRN):
//!
//! ```text
//! out = x * [c, c] + rotate_half(x) * [s, s],   rotate_half(x) = [-x2, x1]
//! out1_i = x1_i * c_i - x2_i * s_i
//! out2_i = x2_i * c_i + x1_i * s_i
//! ```
//!
//! Each pair `(x1_i, x2_i)` is multiplied by the 2x2 matrix `R_i = [[c_i, -s_i], [s_i, c_i]]`, so the gradient
//! is the transpose applied to `g = dL/dout` (a rotation by the opposite angle):
//!
//! ```text
//! dL/dx1_i =  g1_i * c_i + g2_i * s_i
//! dL/dx2_i = -g1_i * s_i + g2_i * c_i
//! ```

use crate::cpu::PAR_THRESHOLD;
use crate::element::Float;
use rayon::prelude::*;

/// `cos` and `sin` tables (`[positions, inv_freq.len()]`, row-major, times `attention_scaling`) for positions
/// `0..positions`. Angles and their cos/sin are evaluated in f64 whatever `T` is, then rounded once.
pub fn cos_sin_tables<T: Float>(inv_freq: &[f64], attention_scaling: f64, positions: usize) -> (Vec<T>, Vec<T>) {
    let half = inv_freq.len();
    let (mut cos, mut sin) = (vec![T::ZERO; positions * half], vec![T::ZERO; positions * half]);
    let fill_row = |(position, (cos, sin)): (usize, (&mut [T], &mut [T]))| {
        for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
            let (sin_angle, cos_angle) = (position as f64 * f).sin_cos();
            *c = T::from_f64(cos_angle * attention_scaling);
            *s = T::from_f64(sin_angle * attention_scaling);
        }
    };
    if half == 0 {
        return (cos, sin);
    }
    if positions * half >= PAR_THRESHOLD {
        cos.par_chunks_mut(half).zip(sin.par_chunks_mut(half)).enumerate().for_each(fill_row);
    } else {
        cos.chunks_mut(half).zip(sin.chunks_mut(half)).enumerate().for_each(fill_row);
    }
    (cos, sin)
}

/// Rotate every head of every row. `x` is `[rows, n_heads * head_dim]` and row `r` uses table row
/// `positions[r]`. `INVERSE` applies the transposed rotation (the backward).
fn rotate<T: Float, const INVERSE: bool>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    positions: &[usize],
    head_dim: usize,
    out: &mut [T],
) {
    let half = head_dim / 2;
    let row_len = x.len() / positions.len().max(1);
    assert!(
        head_dim > 0 && head_dim.is_multiple_of(2) && row_len.is_multiple_of(head_dim) && row_len * positions.len() == x.len(),
        "rope: slice lengths"
    );
    assert!(out.len() == x.len() && cos.len() == sin.len() && cos.len().is_multiple_of(half), "rope: slice lengths");
    if x.is_empty() {
        return;
    }
    let rotate_row = |((out, x), &position): ((&mut [T], &[T]), &usize)| {
        let (c, s) = (&cos[position * half..][..half], &sin[position * half..][..half]);
        for (out, x) in out.chunks_exact_mut(head_dim).zip(x.chunks_exact(head_dim)) {
            let (x1, x2) = x.split_at(half);
            let (o1, o2) = out.split_at_mut(half);
            for ((((o1, o2), (&a, &b)), &c), &s) in o1.iter_mut().zip(o2.iter_mut()).zip(x1.iter().zip(x2)).zip(c).zip(s) {
                if INVERSE {
                    *o1 = a * c + b * s;
                    *o2 = b * c - a * s;
                } else {
                    *o1 = a * c - b * s;
                    *o2 = b * c + a * s;
                }
            }
        }
    };
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(row_len).zip(x.par_chunks(row_len)).zip(positions.par_iter()).for_each(rotate_row);
    } else {
        out.chunks_mut(row_len).zip(x.chunks(row_len)).zip(positions.iter()).for_each(rotate_row);
    }
}

/// RoPE forward: `x` is `[rows, n_heads * head_dim]`, `positions[r]` the table row of row `r` (checked by the
/// caller to be inside the tables).
pub fn rope_forward<T: Float>(x: &[T], cos: &[T], sin: &[T], positions: &[usize], head_dim: usize, out: &mut [T]) {
    rotate::<T, false>(x, cos, sin, positions, head_dim, out)
}

/// RoPE backward: the transposed rotation applied to `grad_out` (derivation in the module docs).
pub fn rope_backward<T: Float>(
    grad_out: &[T],
    cos: &[T],
    sin: &[T],
    positions: &[usize],
    head_dim: usize,
    grad_x: &mut [T],
) {
    rotate::<T, true>(grad_out, cos, sin, positions, head_dim, grad_x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn normal(seed: u64, n: usize) -> Vec<f64> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.normal()).collect()
    }

    /// HF's formula, literally: `x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)`, angles from scratch.
    fn reference(x: &[f64], inv_freq: &[f64], scaling: f64, positions: &[usize], head_dim: usize) -> Vec<f64> {
        let half = head_dim / 2;
        let row_len = x.len() / positions.len();
        let mut out = vec![0.0; x.len()];
        for (r, &p) in positions.iter().enumerate() {
            for h in 0..row_len / head_dim {
                let base = r * row_len + h * head_dim;
                for d in 0..head_dim {
                    let angle = p as f64 * inv_freq[d % half];
                    let rotated = if d < half { -x[base + d + half] } else { x[base + d - half] };
                    out[base + d] = x[base + d] * angle.cos() * scaling + rotated * angle.sin() * scaling;
                }
            }
        }
        out
    }

    fn setup() -> (Vec<f64>, Vec<usize>, usize, usize) {
        let (head_dim, heads) = (10, 3);
        // Packed rows: positions restart mid-batch.
        let positions = vec![0, 1, 2, 3, 0, 1, 7];
        (normal(1, positions.len() * heads * head_dim), positions, head_dim, heads)
    }

    /// `rope_forward` with tables for `table_positions` positions (theta 10000) against `reference`.
    fn assert_forward_matches_reference(x: &[f64], positions: &[usize], head_dim: usize, scaling: f64, table_positions: usize, tol: f64) {
        let inv_freq: Vec<f64> = (0..head_dim / 2).map(|i| 10_000f64.powf(-((2 * i) as f64) / head_dim as f64)).collect();
        let (cos, sin) = cos_sin_tables::<f64>(&inv_freq, scaling, table_positions);
        let mut out = vec![0.0; x.len()];
        rope_forward(x, &cos, &sin, positions, head_dim, &mut out);
        for (a, b) in out.iter().zip(reference(x, &inv_freq, scaling, positions, head_dim)) {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn forward_matches_reference() {
        let (x, positions, head_dim, _) = setup();
        assert_forward_matches_reference(&x, &positions, head_dim, 1.3, 8, 1e-14);
    }

    /// RoPE is linear in x, so central differences are exact up to rounding (~1e-10 at step 1e-6): tolerance 1e-8.
    #[test]
    fn backward_matches_finite_differences() {
        let (x, positions, head_dim, _) = setup();
        let inv_freq: Vec<f64> = (0..head_dim / 2).map(|i| 500f64.powf(-((2 * i) as f64) / head_dim as f64)).collect();
        let (cos, sin) = cos_sin_tables::<f64>(&inv_freq, 0.9, 8);
        let g = normal(2, x.len());
        let loss = |x: &[f64]| -> f64 {
            let mut y = vec![0.0; x.len()];
            rope_forward(x, &cos, &sin, &positions, head_dim, &mut y);
            y.iter().zip(&g).map(|(y, g)| y * g).sum()
        };
        let mut gx = vec![0.0; x.len()];
        rope_backward(&g, &cos, &sin, &positions, head_dim, &mut gx);
        let step = 1e-6;
        for i in 0..x.len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += step;
            xm[i] -= step;
            let fd = (loss(&xp) - loss(&xm)) / (2.0 * step);
            assert!((fd - gx[i]).abs() <= 1e-8 * (1.0 + fd.abs()), "grad[{i}]: {} vs fd {fd}", gx[i]);
        }
    }

    #[test]
    fn parallel_path_matches_sequential_reference() {
        let (head_dim, heads, rows) = (64, 8, 80); // 40_960 elements: over PAR_THRESHOLD
        let x = normal(3, rows * heads * head_dim);
        let positions: Vec<usize> = (0..rows).map(|r| r % 37).collect();
        assert_forward_matches_reference(&x, &positions, head_dim, 1.0, 37, 1e-13);
    }
}

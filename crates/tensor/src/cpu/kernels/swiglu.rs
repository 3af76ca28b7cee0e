//! SwiGLU (Shazeer 2020), the Llama MLP activation: `y = silu(gate) * up`, elementwise.
//!
//! With `s = sigmoid(a)` and `silu(a) = a * s`:
//!
//! ```text
//! d silu/da = s + a * s * (1 - s) = s * (1 + a * (1 - s))
//!
//! dL/dgate = g * up * s * (1 + gate * (1 - s))
//! dL/dup   = g * silu(gate)
//! ```
//!
//! Forward and backward are one pass each over the inputs (the unfused version reads `gate` three times and
//! writes two temporaries).

use super::vector_math::fast_exp;
use crate::cpu::PAR_THRESHOLD;
use crate::element::Float;
use rayon::prelude::*;

/// Elements per rayon task: large enough to amortise scheduling, small enough to balance across cores.
const CHUNK: usize = 1 << 13;

/// `1 / (1 + e^-a)`. Branch-free so the loops vectorise: for a very negative `a`, `e^-a` overflows to +inf and
/// the result is 0, where the branchy stable form gives a denormal or 0.
#[inline(always)]
fn sigmoid<T: Float>(a: T) -> T {
    T::ONE / (T::ONE + fast_exp(-a))
}

fn forward_chunk<T: Float>(gate: &[T], up: &[T], out: &mut [T]) {
    for ((y, &a), &b) in out.iter_mut().zip(gate).zip(up) {
        *y = a * sigmoid(a) * b;
    }
}

fn backward_chunk<T: Float>(gate: &[T], up: &[T], grad_out: &[T], grad_gate: &mut [T], grad_up: &mut [T]) {
    for ((((gg, gu), &a), &b), &g) in grad_gate.iter_mut().zip(grad_up.iter_mut()).zip(gate).zip(up).zip(grad_out) {
        let s = sigmoid(a);
        *gg = g * b * s * (T::ONE + a * (T::ONE - s));
        *gu = g * a * s;
    }
}

/// `out = silu(gate) * up`.
pub fn swiglu_forward<T: Float>(gate: &[T], up: &[T], out: &mut [T]) {
    assert!(up.len() == gate.len() && out.len() == gate.len(), "swiglu_forward: slice lengths");
    if gate.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
            let range = i * CHUNK..i * CHUNK + out.len();
            forward_chunk(&gate[range.clone()], &up[range], out);
        });
    } else {
        forward_chunk(gate, up, out);
    }
}

/// Gradients of [`swiglu_forward`] with respect to `gate` and `up` (derivation in the module docs).
pub fn swiglu_backward<T: Float>(gate: &[T], up: &[T], grad_out: &[T], grad_gate: &mut [T], grad_up: &mut [T]) {
    let n = gate.len();
    assert!(
        up.len() == n && grad_out.len() == n && grad_gate.len() == n && grad_up.len() == n,
        "swiglu_backward: slice lengths"
    );
    if n >= PAR_THRESHOLD {
        grad_gate.par_chunks_mut(CHUNK).zip(grad_up.par_chunks_mut(CHUNK)).enumerate().for_each(|(i, (gg, gu))| {
            let range = i * CHUNK..i * CHUNK + gg.len();
            backward_chunk(&gate[range.clone()], &up[range.clone()], &grad_out[range], gg, gu);
        });
    } else {
        backward_chunk(gate, up, grad_out, grad_gate, grad_up);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn normal(seed: u64, n: usize, scale: f64) -> Vec<f64> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| scale * rng.normal()).collect()
    }

    fn reference(gate: &[f64], up: &[f64]) -> Vec<f64> {
        gate.iter().zip(up).map(|(&a, &b)| a / (1.0 + (-a).exp()) * b).collect()
    }

    #[test]
    fn forward_matches_reference() {
        // 40_000 elements take the rayon path; gate spans about +-25, where e^-gate saturates in f32.
        for n in [17, 40_000] {
            let (gate, up) = (normal(1, n, 6.0), normal(2, n, 1.0));
            let want = reference(&gate, &up);
            let mut y = vec![0.0; n];
            swiglu_forward(&gate, &up, &mut y);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-14 * (1.0 + b.abs()), "{a} vs {b}");
            }
            // f32 (fast exp, within 2 ulp): a few f32 roundings, 1e-6 relative.
            let (gate32, up32): (Vec<f32>, Vec<f32>) = (gate.iter().map(|&v| v as f32).collect(), up.iter().map(|&v| v as f32).collect());
            let want32 = reference(&gate32.iter().map(|&v| v as f64).collect::<Vec<_>>(), &up32.iter().map(|&v| v as f64).collect::<Vec<_>>());
            let mut y32 = vec![0f32; n];
            swiglu_forward(&gate32, &up32, &mut y32);
            for (a, b) in y32.iter().zip(&want32) {
                assert!((*a as f64 - b).abs() <= 1e-6 * (1e-30 + b.abs()), "{a} vs {b}");
            }
        }
    }

    /// Central differences of L = sum(g * y) in f64, step 1e-6 (truncation ~1e-12, rounding ~1e-10); tolerance
    /// 1e-7. Each output depends on one gate and one up element, so the check runs elementwise.
    #[test]
    fn backward_matches_finite_differences() {
        let n = 50;
        let (gate, up, g) = (normal(3, n, 4.0), normal(4, n, 1.0), normal(5, n, 1.0));
        let (mut gg, mut gu) = (vec![0.0; n], vec![0.0; n]);
        swiglu_backward(&gate, &up, &g, &mut gg, &mut gu);
        let f = |a: f64, b: f64| reference(&[a], &[b])[0];
        let step = 1e-6;
        for i in 0..n {
            let fd_gate = g[i] * (f(gate[i] + step, up[i]) - f(gate[i] - step, up[i])) / (2.0 * step);
            let fd_up = g[i] * (f(gate[i], up[i] + step) - f(gate[i], up[i] - step)) / (2.0 * step);
            assert!((fd_gate - gg[i]).abs() <= 1e-7 * (1.0 + fd_gate.abs()), "grad_gate[{i}]: {} vs {fd_gate}", gg[i]);
            assert!((fd_up - gu[i]).abs() <= 1e-7 * (1.0 + fd_up.abs()), "grad_up[{i}]: {} vs {fd_up}", gu[i]);
        }
    }
}

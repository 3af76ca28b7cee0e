//! Inverted dropout with a counter-based mask.
//!
//! ```text
//! y_i = x_i * m_i / (1 - p)        m_i = 1 with probability 1 - p, else 0
//! dL/dx_i = g_i * m_i / (1 - p)    (the same map applied to the gradient)
//! ```
//!
//! `m_i` is a pure function of `(seed, i)`: element `i` reads the `i`-th value of a SplitMix64 stream keyed by
//! the seed, computed directly from `i` (no sequential generator state). So backward regenerates the mask
//! instead of storing it, and the mask does not depend on how rayon splits the work. Expect a different mask
//! than `torch.nn.functional.dropout` for the same seed: only the distribution matches PyTorch.

use crate::cpu::PAR_THRESHOLD;
use crate::element::Float;
use crate::rng::mix64;
use rayon::prelude::*;

/// The SplitMix64 increment (2^64 / golden ratio).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Elements per rayon task.
const CHUNK: usize = 1 << 13;

/// The keep/drop decision for every element index under one `(p, seed)`.
#[derive(Debug, Clone, Copy)]
pub struct DropoutMask {
    /// Start of the element stream; hashing the seed first makes nearby seeds give unrelated masks.
    key: u64,
    /// An element is kept when its 53 random bits, as an integer `k`, satisfy `k >= threshold`, i.e.
    /// `k / 2^53 >= p`: the exact integer form of `uniform >= p` (`p * 2^53` is exact in f64).
    threshold: u64,
}

impl DropoutMask {
    /// `p` must lie in `[0, 1)` (checked by the op layer).
    pub fn new(p: f64, seed: u64) -> DropoutMask {
        debug_assert!((0.0..1.0).contains(&p));
        DropoutMask { key: mix64(seed), threshold: (p * (1u64 << 53) as f64).ceil() as u64 }
    }

    #[inline]
    pub fn keep(&self, index: u64) -> bool {
        let bits = mix64(self.key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)));
        (bits >> 11) >= self.threshold
    }
}

/// `out_i = x_i / (1 - p)` where element `i` is kept, else 0. Forward and backward are both this map.
pub fn dropout_apply<T: Float>(x: &[T], p: f64, seed: u64, out: &mut [T]) {
    assert_eq!(x.len(), out.len(), "dropout_apply: slice lengths");
    let mask = DropoutMask::new(p, seed);
    let scale = T::from_f64(1.0 / (1.0 - p));
    let chunk = |(chunk_index, (out, x)): (usize, (&mut [T], &[T]))| {
        let base = (chunk_index * CHUNK) as u64;
        for (i, (y, &x)) in out.iter_mut().zip(x).enumerate() {
            *y = if mask.keep(base + i as u64) { x * scale } else { T::ZERO };
        }
    };
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).enumerate().for_each(chunk);
    } else {
        out.chunks_mut(CHUNK).zip(x.chunks(CHUNK)).enumerate().for_each(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_about_one_minus_p_and_scales_the_kept() {
        let n = 200_000;
        let x = vec![1.0f32; n];
        let mut y = vec![0f32; n];
        for p in [0.1, 0.5, 0.9] {
            dropout_apply(&x, p, 7, &mut y);
            let kept = y.iter().filter(|&&v| v != 0.0).count();
            let expected = (1.0 - p) * n as f64;
            // Binomial standard deviation sqrt(n p (1-p)) <= 224 here; 6 sigma leaves no room for flakes.
            assert!((kept as f64 - expected).abs() < 6.0 * (n as f64 * p * (1.0 - p)).sqrt(), "p={p}: kept {kept}");
            let scale = (1.0 / (1.0 - p)) as f32;
            assert!(y.iter().all(|&v| v == 0.0 || v == scale));
        }
    }

    #[test]
    fn zero_p_is_identity() {
        let x: Vec<f64> = (0..100).map(|i| i as f64 - 50.0).collect();
        let mut y = vec![0.0; 100];
        dropout_apply(&x, 0.0, 3, &mut y);
        assert_eq!(x, y);
    }

    #[test]
    fn mask_is_a_function_of_seed_and_index_only() {
        let n = 100_000;
        let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let run = |threads: usize, seed: u64| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut y = vec![0f32; n];
                dropout_apply(&x, 0.3, seed, &mut y);
                y
            })
        };
        let one = run(1, 11);
        assert_eq!(one, run(4, 11));
        // A prefix sees the same decisions as the whole (no hidden sequential state).
        let mut prefix = vec![0f32; 1000];
        dropout_apply(&x[..1000], 0.3, 11, &mut prefix);
        assert_eq!(prefix[..], one[..1000]);
        // Neighbouring seeds give unrelated masks: about (0.7^2 + 0.3^2) = 58% agreement, not 100%.
        let other = run(2, 12);
        let agree = one.iter().zip(&other).filter(|(a, b)| (**a == 0.0) == (**b == 0.0)).count() as f64 / n as f64;
        assert!((agree - 0.58).abs() < 0.02, "agreement {agree}");
    }
}

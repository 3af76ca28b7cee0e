//! Choosing the next token from logits, with transformers' `generate` semantics and order:
//!
//! 1. `repetition_penalty` (`RepetitionPenaltyLogitsProcessor`): every token id already in the sequence (prompt
//!    and generated) has its logit divided by the penalty if positive, multiplied by it if negative.
//! 2. Greedy (`do_sample = false`, or temperature 0): the first index of the largest logit (torch's argmax).
//! 3. Sampling: temperature (`logits / t`), then `top_k` (keep logits >= the k-th largest), then `top_p`
//!    (sort ascending, drop tokens whose cumulative probability is <= 1 - top_p, always keep the most likely),
//!    then one draw from the softmax of what is left.
//!
//! Draws use a SplitMix64 stream seeded per request, so a seed reproduces a generation exactly (the stream is
//! ours, not torch's: the same seed does not give torch's tokens).

use ferrotune_models::{bail, Result};
use ferrotune_tensor::rng::SplitMix64;

/// Decoding parameters (HF `GenerationConfig` names).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub do_sample: bool,
    pub temperature: f32,
    /// 1.0 keeps everything.
    pub top_p: f32,
    /// 0 keeps everything.
    pub top_k: usize,
    /// 1.0 is no penalty.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Greedy, no penalty.
    fn default() -> Self {
        SamplingParams { do_sample: false, temperature: 1.0, top_p: 1.0, top_k: 0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    /// Reject values transformers rejects (and ones that would make NaNs).
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!("temperature must be a finite number >= 0, got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top_p must be in (0, 1], got {}", self.top_p);
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            bail!("repetition_penalty must be a finite number > 0, got {}", self.repetition_penalty);
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        !self.do_sample || self.temperature == 0.0
    }
}

/// A request's sampler: its parameters and random stream.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// Scratch: (logit, token) candidates.
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        let rng = SplitMix64::new(ferrotune_tensor::rng::mix64(params.seed));
        Ok(Sampler { params, rng, candidates: Vec::new() })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token for `logits` (modified in place by the penalty) after the sequence `context`.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut seen = std::collections::HashSet::with_capacity(context.len());
            for &t in context {
                if let (true, Some(l)) = (seen.insert(t), logits.get_mut(t as usize)) {
                    *l = if *l < 0.0 { *l * p.repetition_penalty } else { *l / p.repetition_penalty };
                }
            }
        }
        if p.is_greedy() {
            return argmax(logits);
        }
        let t = p.temperature;
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (l / t, i as u32)));
        // Descending by logit (stable on ties by token id, so results do not depend on the sort algorithm).
        let desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, desc);
            let kth = c[p.top_k - 1].0;
            // HF keeps every logit >= the k-th largest (ties with it survive).
            let (head, tail) = c.split_at(p.top_k);
            let ties: Vec<(f32, u32)> = tail.iter().copied().filter(|x| x.0 >= kth).collect();
            let mut kept = head.to_vec();
            kept.extend(ties);
            *c = kept;
        }
        let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.0));
        let total: f64 = c.iter().map(|x| ((x.0 - max) as f64).exp()).sum();
        let prob = |x: &(f32, u32)| ((x.0 - max) as f64).exp() / total;
        let mut keep = c.len();
        if p.top_p < 1.0 {
            // Only the head of the distribution matters: sort the top PARTIAL candidates and fall back to a full
            // sort only when they do not reach top_p.
            const PARTIAL: usize = 256;
            if c.len() > PARTIAL {
                c.select_nth_unstable_by(PARTIAL - 1, desc);
                c[..PARTIAL].sort_unstable_by(desc);
                if c[..PARTIAL].iter().map(prob).sum::<f64>() < p.top_p as f64 {
                    c.sort_unstable_by(desc);
                }
            } else {
                c.sort_unstable_by(desc);
            }
            // Ascending cumulative probability <= 1 - top_p is dropped; walking down from the most likely, a
            // token is kept while the mass strictly before it is < top_p (and the first always is).
            let mut before = 0.0f64;
            keep = 0;
            for x in c.iter() {
                if keep > 0 && 1.0 - before <= 1.0 - p.top_p as f64 {
                    break;
                }
                before += prob(x);
                keep += 1;
            }
        }
        let kept = &c[..keep];
        let mass: f64 = kept.iter().map(prob).sum();
        let mut u = self.rng.uniform() * mass;
        for x in kept {
            let q = prob(x);
            if u < q {
                return x.1;
            }
            u -= q;
        }
        c[keep - 1].1
    }
}

/// First index of the maximum (NaNs never win).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(top_k: usize, top_p: f32, temperature: f32, seed: u64) -> Sampler {
        Sampler::new(SamplingParams { do_sample: true, temperature, top_p, top_k, repetition_penalty: 1.0, seed }).unwrap()
    }

    #[test]
    fn repetition_penalty_follows_hf() {
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..Default::default() }).unwrap();
        let mut logits = vec![4.0, -1.0, 3.0];
        // Token 0 penalised (4 -> 2), token 1 negative (-1 -> -2); token 2 now wins, repeated ids count once.
        assert_eq!(s.sample(&mut logits, &[0, 1, 0]), 2);
        assert_eq!(logits, vec![2.0, -2.0, 3.0]);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_reproduce() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 101) as f32 * 0.05).collect();
        let greedy = argmax(&logits);
        for seed in 0..20 {
            assert_eq!(sampler(1, 1.0, 0.7, seed).sample(&mut logits.clone(), &[]), greedy);
        }
        let draw = |seed| {
            let mut s = sampler(0, 0.9, 1.3, seed);
            (0..50).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // probs 0.5, 0.3, 0.2: top_p 0.6 keeps {0, 1}; 0.5 keeps {0} only (mass before token 1 is 0.5, not < 0.5).
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        for (top_p, allowed) in [(0.6, vec![0, 1]), (0.45, vec![0]), (0.85, vec![0, 1, 2])] {
            let mut seen = std::collections::BTreeSet::new();
            let mut s = sampler(0, top_p, 1.0, 1);
            for _ in 0..400 {
                seen.insert(s.sample(&mut logits.to_vec(), &[]));
            }
            assert_eq!(seen.into_iter().collect::<Vec<_>>(), allowed, "top_p {top_p}");
        }
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(Sampler::new(SamplingParams { top_p: 0.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingParams { temperature: f32::NAN, ..Default::default() }).is_err());
    }
}

//! numpy's `np.random.default_rng(seed).permutation(n)`, bit for bit: `SeedSequence` entropy mixing, the PCG64
//! (XSL-RR 128/64) generator, and `Generator.shuffle`'s Fisher-Yates over masked rejection sampling. This is
//! what `datasets.Dataset.train_test_split(test_size, seed=seed)` draws, so `val_size` splits pick the same
//! examples, in the same order, as LLaMA-Factory.

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const POOL_SIZE: usize = 4;
const PCG_MULT: u128 = 0x2360_ED05_1FC6_5DA4_4385_DF64_9FCC_F645;

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut v = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    v = v.wrapping_mul(*hash_const);
    v ^ (v >> 16)
}

fn mix(x: u32, y: u32) -> u32 {
    let r = MIX_MULT_L
        .wrapping_mul(x)
        .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    r ^ (r >> 16)
}

/// `SeedSequence(seed).generate_state(n_words, np.uint32)`.
fn seed_sequence_state(seed: u64, n_words: usize) -> Vec<u32> {
    // _coerce_to_uint32_array: little-endian 32-bit words, at least one.
    let entropy: Vec<u32> = if seed >> 32 == 0 {
        vec![seed as u32]
    } else {
        vec![seed as u32, (seed >> 32) as u32]
    };
    let mut pool = [0u32; POOL_SIZE];
    let mut hc = INIT_A;
    for (i, slot) in pool.iter_mut().enumerate() {
        *slot = hashmix(entropy.get(i).copied().unwrap_or(0), &mut hc);
    }
    for src in 0..POOL_SIZE {
        for dst in 0..POOL_SIZE {
            if src != dst {
                let h = hashmix(pool[src], &mut hc);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    for &e in entropy.iter().skip(POOL_SIZE) {
        for slot in pool.iter_mut() {
            let h = hashmix(e, &mut hc);
            *slot = mix(*slot, h);
        }
    }
    let mut hb = INIT_B;
    (0..n_words)
        .map(|i| {
            let mut v = pool[i % POOL_SIZE] ^ hb;
            hb = hb.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hb);
            v ^ (v >> 16)
        })
        .collect()
}

/// numpy's PCG64 bit generator as `default_rng(seed)` seeds it.
#[derive(Debug, Clone)]
pub struct Pcg64 {
    state: u128,
    inc: u128,
    buffered: Option<u32>,
}

impl Pcg64 {
    pub fn new(seed: u64) -> Pcg64 {
        let w = seed_sequence_state(seed, 8);
        let word = |i: usize| u64::from(w[2 * i]) | (u64::from(w[2 * i + 1]) << 32);
        let initstate = (u128::from(word(0)) << 64) | u128::from(word(1));
        let initseq = (u128::from(word(2)) << 64) | u128::from(word(3));
        let mut rng = Pcg64 {
            state: 0,
            inc: (initseq << 1) | 1,
            buffered: None,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(initstate);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let s = self.state;
        ((s >> 64) as u64 ^ s as u64).rotate_right((s >> 122) as u32)
    }

    pub fn next_u32(&mut self) -> u32 {
        if let Some(v) = self.buffered.take() {
            return v;
        }
        let next = self.next_u64();
        self.buffered = Some((next >> 32) as u32);
        next as u32
    }

    /// `random_interval(max)`: uniform in `0..=max` by masked rejection.
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> shift;
        }
        if max <= u64::from(u32::MAX) {
            loop {
                let v = u64::from(self.next_u32()) & mask;
                if v <= max {
                    return v;
                }
            }
        }
        loop {
            let v = self.next_u64() & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// `Generator.random()`: a double in `[0, 1)` from the top 53 bits of one draw.
    pub fn random(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// One `Generator.choice(len(p), p=p)` draw: the cumulative sums normalised by their total, searched
    /// (`side="right"`) for a uniform double.
    pub fn choice(&mut self, cdf: &[f64]) -> usize {
        let u = self.random();
        cdf.partition_point(|&c| c <= u)
            .min(cdf.len().saturating_sub(1))
    }

    /// The normalised cumulative distribution `choice` searches.
    pub fn cdf(p: &[f64]) -> Vec<f64> {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = p
            .iter()
            .map(|&x| {
                acc += x;
                acc
            })
            .collect();
        if let Some(&total) = cdf.last() {
            if total > 0.0 {
                cdf.iter_mut().for_each(|c| *c /= total);
            }
        }
        cdf
    }

    /// `Generator.permutation(n)`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u64) as usize;
            p.swap(i, j);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy() {
        // Values printed by numpy 2.4 (`np.random.default_rng(seed)`).
        assert_eq!(
            Pcg64::new(42).permutation(10),
            [5, 6, 0, 7, 3, 2, 4, 9, 1, 8]
        );
        assert_eq!(Pcg64::new(0).permutation(7), [2, 4, 3, 6, 5, 0, 1]);
        assert_eq!(
            Pcg64::new((1 << 40) + 5).permutation(12),
            [9, 5, 1, 2, 8, 3, 0, 10, 7, 4, 6, 11]
        );
        assert_eq!(
            Pcg64::new(42).permutation(1000)[..8],
            [978, 933, 859, 916, 127, 608, 856, 260]
        );
        let mut g = Pcg64::new(5);
        assert_eq!(
            [g.random(), g.random()],
            [0.8050029237453802, 0.8079407897364937]
        );
        let mut g = Pcg64::new(42); // .choice(3, size=12, p=[0.5, 0.3, 0.2])
        let cdf = Pcg64::cdf(&[0.5, 0.3, 0.2]);
        let draws: Vec<usize> = (0..12).map(|_| g.choice(&cdf)).collect();
        assert_eq!(draws, [1, 0, 2, 1, 0, 2, 1, 1, 0, 0, 0, 2]);
        let mut g = Pcg64::new(7); // .bit_generator.random_raw(3)
        assert_eq!(
            [g.next_u64(), g.next_u64(), g.next_u64()],
            [
                11530976094092348043,
                16550673365885938325,
                14308875409591826786
            ]
        );
    }
}

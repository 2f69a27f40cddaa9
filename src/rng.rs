//! Counter-based random streams.
//!
//! Every random decision in saln comes from a stream derived from the run seed and the
//! coordinates of the decision, never from shared mutable state: the augmentation of sample
//! `i` in epoch `e` uses `Rng::derive(seed, &[AUGMENT, e, i])`. That is what makes the output
//! identical whatever the number of worker threads and whatever order they finish in.
//!
//! The generator is SplitMix64: tiny, fast, statistically adequate for augmentation and
//! shuffling, and stable across platforms and crate versions (we own the code).

/// Stream tag: per-epoch shuffling of the training order.
pub const SHUFFLE: u64 = 0x5348_5546;
/// Stream tag: per-sample augmentation.
pub const AUGMENT: u64 = 0x4155_474d;
/// Stream tag: the learner / reference split of the training data.
pub const SPLIT: u64 = 0x5350_4c54;
/// Stream tag: random selection policies (uniform), per super-batch.
pub const SELECT: u64 = 0x5345_4c43;

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A SplitMix64 random stream.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A stream seeded directly.
    pub fn new(seed: u64) -> Self {
        Rng { state: mix(seed) }
    }

    /// A stream for the decision at `coords` (for example `[AUGMENT, epoch, sample]`).
    /// Different coordinates give independent-looking streams.
    ///
    /// ```
    /// use saln::rng::{Rng, AUGMENT};
    /// let mut a = Rng::derive(7, &[AUGMENT, 0, 42]);
    /// let mut b = Rng::derive(7, &[AUGMENT, 0, 42]);
    /// let mut c = Rng::derive(7, &[AUGMENT, 0, 43]);
    /// let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
    /// assert_eq!(x, y);
    /// assert_ne!(x, z);
    /// ```
    pub fn derive(seed: u64, coords: &[u64]) -> Self {
        let mut s = mix(seed ^ GOLDEN);
        for &c in coords {
            s = mix(s ^ mix(c.wrapping_add(GOLDEN)));
        }
        Rng { state: s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform integer in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Fisher-Yates shuffle in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_permutation_and_depends_on_seed() {
        let mut a: Vec<u32> = (0..1000).collect();
        let mut b = a.clone();
        Rng::new(1).shuffle(&mut a);
        Rng::new(2).shuffle(&mut b);
        assert_ne!(a, b);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn uniform_stays_in_range_and_has_the_right_mean() {
        let mut r = Rng::new(3);
        let xs: Vec<f64> = (0..20_000).map(|_| r.uniform(-2.0, 4.0)).collect();
        assert!(xs.iter().all(|&x| (-2.0..4.0).contains(&x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
    }

    #[test]
    fn below_covers_every_value() {
        let mut r = Rng::new(4);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[r.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }
}

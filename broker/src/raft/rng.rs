//! A tiny seeded PRNG (splitmix64): the core must be deterministic, so no global RNG.

/// splitmix64 (Steele, Lea, Flood 2014): one `u64` of state, good enough to spread
/// election timeouts.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next pseudo-random `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `[low, high)`; `high > low`.
    pub fn range_u32(&mut self, low: u32, high: u32) -> u32 {
        assert!(high > low, "empty range {low}..{high}");
        let span = u64::from(high - low);
        low + (self.next_u64() % span) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rng_is_deterministic_and_in_range() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..1000 {
            let x = a.range_u32(10, 20);
            assert_eq!(x, b.range_u32(10, 20));
            assert!((10..20).contains(&x));
        }
    }
}

//! A small deterministic random number generator (xorshift64, seeded through SplitMix64):
//! fault injection and back-off jitter must repeat from a seed, and need no more than this.

/// xorshift64 state (never zero).
#[derive(Clone, Debug)]
pub struct Rng(u64);

/// SplitMix64's finaliser: spreads `x` over all 64 bits (seeds, per-device hashes).
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Rng {
    /// A generator whose state is `state` (zero is replaced, xorshift would stay at zero).
    pub fn from_state(state: u64) -> Self {
        Rng(if state == 0 { 0x9e37_79b9_7f4a_7c15 } else { state })
    }

    /// The generator of stream `stream` under `seed` (e.g. one per device).
    pub fn seeded(seed: u64, stream: u64) -> Self {
        Self::from_state(mix(seed ^ mix(stream)))
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (never for `p` ≤ 0).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chance_hits_its_rate() {
        for p in [0.01, 0.05, 0.2, 0.5] {
            let mut r = Rng::seeded(42, 7);
            let n = 1_000_000;
            let hits = (0..n).filter(|_| r.chance(p)).count() as f64 / n as f64;
            assert!((hits - p).abs() < 0.002, "p {p}: rate {hits}");
        }
        let mut r = Rng::seeded(1, 1);
        assert!(!(0..10_000).any(|_| r.chance(0.0)));
        assert!((0..10_000).all(|_| r.chance(1.0)));
    }

    #[test]
    fn streams_repeat_and_differ() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::seeded(3, 1);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::seeded(3, 1);
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::seeded(3, 2);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut r = Rng::seeded(9, 9);
        assert!((0..10_000)
            .map(|_| r.uniform(1.0, 1.5))
            .all(|x| (1.0..1.5).contains(&x)));
    }
}

//! The one seeded pseudo-random generator of the tests and benchmarks:
//! xorshift64 (shifts 13, 7, 17), so a run repeats exactly from its seed and
//! no crate is needed for it.

/// A xorshift64 generator. Not for anything that must be unpredictable.
#[derive(Debug, Clone)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator from `seed`, which must not be 0 (xorshift's fixed point:
    /// every draw would be 0).
    pub fn new(seed: u64) -> XorShift64 {
        assert_ne!(seed, 0, "a xorshift seed of 0 only ever yields 0");
        XorShift64(seed)
    }

    /// The next state, which is the draw.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A draw in `0..n` (by remainder: the bias is far below what a test
    /// could notice).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A draw in `[0, 1)` from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::XorShift64;

    #[test]
    fn repeats_from_its_seed_and_takes_the_reference_steps() {
        let seed = 0x1234_5678_9abc_def1_u64;
        // The reference step by hand: x ^= x << 13; x ^= x >> 7; x ^= x << 17.
        let mut x = seed;
        let mut by_hand = Vec::new();
        for _ in 0..100 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            by_hand.push(x);
        }
        let mut a = XorShift64::new(seed);
        let drawn: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        assert_eq!(drawn, by_hand);
        let mut b = XorShift64::new(seed);
        assert_eq!(b.below(1000), by_hand[0] % 1000);
        let f = b.next_f64();
        assert_eq!(f, (by_hand[1] >> 11) as f64 / (1u64 << 53) as f64);
        assert!((0.0..1.0).contains(&f), "{f}");
    }
}

//! Which keys have lately arrived at a full shard of the counter table: a two-generation Bloom
//! filter that outlives the entries the table evicts, so that a key the table keeps forgetting
//! (it comes back slower than a flood turns the table over) is still known to come back, and
//! outranks keys seen once.
//!
//! Each generation holds up to `per_generation` keys at about ten bits each (a false "seen
//! before" about 1 % of the time at its fullest); a key is looked up in both and added to the
//! current one. When the current generation is full it becomes the previous one and a cleared
//! one takes its place, so a key is remembered for one to two generations of arrivals.

/// Bits per key a generation holds.
const BITS_PER_KEY: usize = 10;
/// Bits set per key: with ten bits per key, 1 % false positives at the fullest.
const HASHES: u64 = 6;

/// Two generations of a Bloom filter of arrivals.
pub struct Arrivals {
    current: Box<[u64]>,
    previous: Box<[u64]>,
    /// Bits per generation, a multiple of 64.
    bits: u64,
    added: usize,
    per_generation: usize,
}

impl Arrivals {
    /// Filters of `per_generation` keys each.
    pub fn new(per_generation: usize) -> Arrivals {
        let words = Arrivals::words_for(per_generation);
        Arrivals {
            current: vec![0; words].into_boxed_slice(),
            previous: vec![0; words].into_boxed_slice(),
            bits: words as u64 * 64,
            added: 0,
            per_generation: per_generation.max(1),
        }
    }

    fn words_for(per_generation: usize) -> usize {
        (per_generation.max(1) * BITS_PER_KEY).div_ceil(64)
    }

    /// Bytes the filters for `per_generation` keys take.
    pub fn bytes_for(per_generation: usize) -> usize {
        2 * 8 * Arrivals::words_for(per_generation)
    }

    /// Records an arrival of the key whose (uniform, independent) hashes are `one` and `two`;
    /// whether it had arrived before, within the last one to two generations.
    pub fn arrive(&mut self, one: u64, two: u64) -> bool {
        let positions = (0..HASHES).map(|i| one.wrapping_add(i.wrapping_mul(two | 1)) % self.bits);
        let bit = |words: &[u64], at: u64| words[(at / 64) as usize] & (1 << (at % 64)) != 0;
        let in_current = positions.clone().all(|at| bit(&self.current, at));
        let seen = in_current || positions.clone().all(|at| bit(&self.previous, at));
        if !in_current {
            for at in positions {
                self.current[(at / 64) as usize] |= 1 << (at % 64);
            }
            self.added += 1;
            if self.added >= self.per_generation {
                self.added = 0;
                std::mem::swap(&mut self.current, &mut self.previous);
                self.current.fill(0);
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::Arrivals;

    fn mix(i: u64) -> (u64, u64) {
        let a = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (
            a ^ (a >> 29),
            a.rotate_left(31).wrapping_mul(0xBF58_476D_1CE4_E5B9),
        )
    }

    #[test]
    fn a_key_is_known_for_one_to_two_generations() {
        let mut seen = Arrivals::new(1_000);
        let (one, two) = mix(u64::MAX);
        assert!(!seen.arrive(one, two), "first arrival");
        assert!(seen.arrive(one, two));
        for i in 0..1_500 {
            seen.arrive(mix(i).0, mix(i).1);
        }
        assert!(
            seen.arrive(one, two),
            "still known a generation and a half later"
        );
        for i in 10_000..12_500 {
            seen.arrive(mix(i).0, mix(i).1);
        }
        assert!(!seen.arrive(one, two), "forgotten after two generations");
    }

    #[test]
    fn keys_seen_once_are_seldom_taken_for_returning_ones() {
        let mut seen = Arrivals::new(10_000);
        let wrong = (0..9_000u64)
            .filter(|&i| seen.arrive(mix(i).0, mix(i).1))
            .count();
        assert!(wrong < 90, "{wrong} of 9,000 new keys taken as seen before");
    }
}

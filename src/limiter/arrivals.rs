//! How often keys have lately arrived at a full shard of the counter table: a count-min sketch
//! that outlives the entries the table evicts, so that a key the table keeps forgetting (it
//! comes back slower than a flood turns the table over) is still known to come back, and
//! outranks keys seen once.
//!
//! Four rows of one-byte counters; an arrival raises its counter in each row and reads the
//! least of the four, which is at least the true count since the last halving (counters of
//! other keys only ever add to it). Every `halve_after` arrivals every counter is halved, so
//! the sketch follows what arrives now rather than all that ever did.

/// Rows of counters; each takes its index from its own 16 bits of the key's hash.
const ROWS: usize = 4;

/// A count-min sketch of arrivals.
pub struct Arrivals {
    counts: Box<[u8]>,
    /// Counters per row, a power of two no larger than 2¹⁶.
    width: usize,
    added: usize,
    halve_after: usize,
}

impl Arrivals {
    /// A sketch of `ROWS` rows of `width` counters (rounded to a power of two, at most 2¹⁶),
    /// halved every `halve_after` arrivals.
    pub fn new(width: usize, halve_after: usize) -> Arrivals {
        let width = width.next_power_of_two().clamp(1, 1 << 16);
        Arrivals {
            counts: vec![0; ROWS * width].into_boxed_slice(),
            width,
            added: 0,
            halve_after: halve_after.max(1),
        }
    }

    /// Bytes a sketch of `width` counters per row takes.
    pub fn bytes_for(width: usize) -> usize {
        ROWS * width.next_power_of_two().clamp(1, 1 << 16)
    }

    /// Counts one arrival of the key whose (uniform) hash is `bits`; returns its estimate.
    ///
    /// Conservative update: only the counters at the least are raised (the others already
    /// count more than this key's arrivals), which keeps the noise from other keys low.
    pub fn add(&mut self, bits: u64) -> u8 {
        let columns: [usize; ROWS] = std::array::from_fn(|row| {
            row * self.width + ((bits >> (16 * row)) as usize & (self.width - 1))
        });
        let least = columns
            .iter()
            .map(|&i| self.counts[i])
            .min()
            .unwrap_or(0)
            .saturating_add(1);
        for &i in &columns {
            self.counts[i] = self.counts[i].max(least);
        }
        self.added += 1;
        if self.added >= self.halve_after {
            self.added = 0;
            for count in self.counts.iter_mut() {
                *count /= 2;
            }
        }
        least
    }
}

#[cfg(test)]
mod tests {
    use super::Arrivals;

    #[test]
    fn a_key_that_comes_back_outranks_keys_seen_once() {
        let mut sketch = Arrivals::new(1024, 1_000_000);
        let returning = 0x1234_5678_9abc_def0;
        for round in 1..=5u8 {
            assert_eq!(sketch.add(returning), round);
            // Keys seen once between its arrivals.
            for i in 0..200u64 {
                sketch.add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(round));
            }
        }
        assert_eq!(sketch.add(returning), 6);
        assert!(sketch.add(0xdead_beef_0bad_cafe) <= 2);
    }

    #[test]
    fn counts_are_halved_as_they_age() {
        let mut sketch = Arrivals::new(64, 10);
        for _ in 0..9 {
            sketch.add(7);
        }
        assert_eq!(sketch.add(7), 10, "the tenth arrival is counted, then halved");
        assert_eq!(sketch.add(7), 6);
    }
}

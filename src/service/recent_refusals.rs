//! Which encoded requests were refused lately, in Redis mode: a hint that the local over-limit
//! cache may refuse the same bytes again, so that they are decided at once, without the future
//! that waits for Redis (its allocation and moves cost about as much as the cache lookup itself).
//!
//! A client that keeps sending after its 429 sends the same bytes each time. The hint is only
//! that: the cache decides, and a hinted request the cache does not refuse loses its hint and
//! goes to Redis as any other. It is a fixed table of 16-bit fingerprints (a slot each,
//! overwritten when two share one), sized from the cache, so it costs a hash of the request when
//! it misses and never grows; its hash is seeded per process, so a client cannot aim its
//! requests at another's slot, and a slot taken over only costs its owner the future this saves.
//! Two bytes a slot: every request's lookup reads the table, so it should take as little of the
//! core's cache as it can (a quarter of what 8-byte slots took); a fingerprint shared by chance
//! (one miss in 32,768) only costs that request a look into the cache before it goes to Redis.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU16, Ordering};

/// One slot per this many counters of the local cache: the default cache (64 MiB, about 380,000
/// counters) gets 65,536 slots, 128 KiB, so that 10,000 clients hammering at once mostly keep
/// theirs (with 4,096 slots most hints of 10,000 keys were overwritten before they were used).
const COUNTERS_PER_SLOT: usize = 8;

/// The fewest slots of a table in use.
const MIN_SLOTS: usize = 1024;

pub struct RecentRefusals {
    /// A power of two of them; none when there is no cache to refuse from.
    slots: Box<[AtomicU16]>,
    hasher: foldhash::fast::RandomState,
}

impl RecentRefusals {
    /// Hints for a local over-limit cache of `counters` (0: no cache, no hints).
    pub fn for_cache(counters: usize) -> RecentRefusals {
        let slots = match counters {
            0 => 0,
            n => (n / COUNTERS_PER_SLOT).max(MIN_SLOTS).next_power_of_two(),
        };
        RecentRefusals {
            slots: (0..slots).map(|_| AtomicU16::new(0)).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Whether `message` was refused lately (and not found admitted since).
    pub fn contains(&self, message: &[u8]) -> bool {
        self.place(message)
            .is_some_and(|(slot, print)| slot.load(Ordering::Relaxed) == print)
    }

    /// `message` was refused (nothing, when there is no cache).
    pub fn remember(&self, message: &[u8]) {
        if let Some((slot, print)) = self.place(message) {
            slot.store(print, Ordering::Relaxed);
        }
    }

    /// `message` is not refused by the cache (any more).
    pub fn forget(&self, message: &[u8]) {
        if let Some((slot, print)) = self.place(message) {
            let _ = slot.compare_exchange(print, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The slot of `message` and its fingerprint there (never 0, which marks an empty slot).
    fn place(&self, message: &[u8]) -> Option<(&AtomicU16, u16)> {
        if self.slots.is_empty() {
            return None;
        }
        let hash = self.hasher.hash_one(message);
        let slot = &self.slots[(hash & (self.slots.len() as u64 - 1)) as usize];
        // The top bits, which the slot's number (the low bits) does not use.
        Some((slot, (hash >> 48) as u16 | 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_request_is_hinted_until_forgotten_and_others_are_not() {
        let hints = RecentRefusals::for_cache(380_000);
        assert_eq!(hints.slots.len(), 65_536);
        let refused = b"\n\x08mega-api\x12\x1a\n\x0f\n\x07api_key\x12\x04k-17";
        assert!(!hints.contains(refused));
        hints.remember(refused);
        assert!(hints.contains(refused));
        // Other bytes, however close, are not hinted (unless their fingerprint and slot are the
        // same by chance, one in 2^31 for each: the test takes the nearest that differs).
        let (slot, print) = hints.place(refused).unwrap();
        let other = (18..)
            .map(|i| format!("\n\x08mega-api\x12\x1a\n\x0f\n\x07api_key\x12\x04k-{i}").into_bytes())
            .find(|m| {
                let (s, p) = hints.place(m).unwrap();
                !std::ptr::eq(s, slot) || p != print
            })
            .unwrap();
        assert!(!hints.contains(&other));
        hints.forget(refused);
        assert!(!hints.contains(refused));
    }

    #[test]
    fn forgetting_one_request_leaves_the_one_that_took_its_slot() {
        let hints = RecentRefusals::for_cache(5);
        assert_eq!(hints.slots.len(), MIN_SLOTS);
        // Two messages that share a slot, found by trying: the later remembered holds it.
        let first = b"message 0".to_vec();
        let (slot, _) = hints.place(&first).unwrap();
        let second = (1..)
            .map(|i| format!("message {i}").into_bytes())
            .find(|m| std::ptr::eq(hints.place(m).unwrap().0, slot))
            .unwrap();
        hints.remember(&first);
        hints.remember(&second);
        assert!(!hints.contains(&first));
        hints.forget(&first);
        assert!(hints.contains(&second));
    }

    #[test]
    fn nothing_is_hinted_when_there_is_no_cache() {
        let hints = RecentRefusals::for_cache(0);
        assert!(hints.slots.is_empty());
        hints.remember(b"refused");
        assert!(!hints.contains(b"refused"));
    }
}

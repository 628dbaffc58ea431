//! Which encoded requests were refused lately, in Redis mode: a hint that the local over-limit
//! cache may refuse the same bytes again, so that they are decided at once, without the future
//! that waits for Redis (its allocation and moves cost about as much as the cache lookup itself).
//!
//! A client that keeps sending after its 429 sends the same bytes each time. The hint is only
//! that: the cache decides, and a hinted request the cache does not refuse loses its hint and
//! goes to Redis as any other. It is a fixed table of fingerprints (a slot each, overwritten
//! when two share one), so it costs a hash of the request when it misses and never grows; its
//! hash is seeded per process, so a client cannot aim its requests at another's slot, and a
//! slot taken over only costs its owner the future this saves.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots in the table: about as many clients hammering at once as it remembers, in 32 KiB.
const SLOTS: usize = 4096;

pub struct RecentRefusals {
    slots: Box<[AtomicU64]>,
    hasher: foldhash::fast::RandomState,
}

impl RecentRefusals {
    pub fn new() -> RecentRefusals {
        RecentRefusals {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Whether `message` was refused lately (and not found admitted since).
    pub fn contains(&self, message: &[u8]) -> bool {
        let (slot, print) = self.place(message);
        slot.load(Ordering::Relaxed) == print
    }

    /// `message` was refused.
    pub fn remember(&self, message: &[u8]) {
        let (slot, print) = self.place(message);
        slot.store(print, Ordering::Relaxed);
    }

    /// `message` is not refused by the cache (any more).
    pub fn forget(&self, message: &[u8]) {
        let (slot, print) = self.place(message);
        let _ = slot.compare_exchange(print, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The slot of `message` and its fingerprint there (never 0, which marks an empty slot).
    fn place(&self, message: &[u8]) -> (&AtomicU64, u64) {
        let hash = self.hasher.hash_one(message);
        let slot = &self.slots[(hash % SLOTS as u64) as usize];
        (slot, hash | 1)
    }
}

impl Default for RecentRefusals {
    fn default() -> Self {
        RecentRefusals::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_request_is_hinted_until_forgotten_and_others_are_not() {
        let hints = RecentRefusals::new();
        let refused = b"\n\x08mega-api\x12\x1a\n\x0f\n\x07api_key\x12\x04k-17";
        assert!(!hints.contains(refused));
        hints.remember(refused);
        assert!(hints.contains(refused));
        // Other bytes, however close, are not hinted.
        assert!(!hints.contains(b"\n\x08mega-api\x12\x1a\n\x0f\n\x07api_key\x12\x04k-18"));
        hints.forget(refused);
        assert!(!hints.contains(refused));
    }

    #[test]
    fn forgetting_one_request_leaves_the_one_that_took_its_slot() {
        let hints = RecentRefusals::new();
        // Two messages that share a slot, found by trying: the later remembered holds it.
        let first = b"message 0".to_vec();
        let (slot, _) = hints.place(&first);
        let second = (1..)
            .map(|i| format!("message {i}").into_bytes())
            .find(|m| std::ptr::eq(hints.place(m).0, slot))
            .unwrap();
        hints.remember(&first);
        hints.remember(&second);
        assert!(!hints.contains(&first));
        hints.forget(&first);
        assert!(hints.contains(&second));
    }
}

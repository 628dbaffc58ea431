//! Counters in process memory: the embedded default store.
//!
//! One slot per counter key in a sharded map (`DashMap`). A slot packs its window number and
//! its count into one `AtomicU64`, so moving to a new window and counting are a single
//! compare-and-swap: no lock is held across a decision and a hot key costs one atomic update,
//! or only a read once it is over its limit.
//!
//! Counting is all-or-nothing per request: each enforced counter is *reserved* (raised only if
//! the hits still fit), and if one does not fit the reservations already made are given back,
//! so a rejected request moves no counter. Because a counter is never raised past its limit,
//! concurrent requests on one key admit exactly `requests_per_unit` per window.
//!
//! Slots of windows that have ended are removed by [`MemoryStore::sweep`], which the server
//! runs on a timer, so memory follows the keys active now rather than all keys ever seen.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use super::key::CounterKey;
use super::window;

/// One counter's change in a request.
#[derive(Debug)]
pub struct Increment<'a> {
    pub key: &'a CounterKey,
    /// The window's length in seconds.
    pub window_seconds: u32,
    /// The window number that `now` falls in.
    pub window_index: u32,
    pub requests_per_unit: u32,
    /// 0 checks without counting: over when the counter has already reached its limit.
    pub hits: u64,
    /// `false` for shadow-mode limits: counted, never blocking.
    pub enforced: bool,
}

/// What one counter says after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// The count after this request (or, if the request was refused, the count it left alone).
    pub value: u64,
    /// This counter's limit is exceeded by the request.
    pub over_limit: bool,
}

/// Why a request could not be counted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("the counter table is full ({0} counters); raise --max-counters")]
    Full(usize),
}

/// The in-memory counter store.
pub struct MemoryStore {
    slots: DashMap<CounterKey, Slot>,
    /// Counted by hand because `DashMap::len` locks every shard.
    live: AtomicUsize,
    /// A bound on memory: past it, new keys are refused until windows end and are swept.
    max_counters: usize,
}

/// One counter: its window number in the high 32 bits and its count in the low 32.
struct Slot {
    state: AtomicU64,
    window_seconds: u32,
}

fn pack(index: u32, count: u64) -> u64 {
    (u64::from(index) << 32) | count.min(u64::from(u32::MAX))
}

fn unpack(state: u64) -> (u32, u64) {
    ((state >> 32) as u32, state & u64::from(u32::MAX))
}

impl Slot {
    /// The count in window `index`; a slot left from an earlier window counts 0. A slot
    /// already in a later window (another request read the clock a moment later) is used as is.
    fn count_in(state: u64, index: u32) -> (u32, u64) {
        let (stored, count) = unpack(state);
        if stored >= index {
            (stored, count)
        } else {
            (index, 0)
        }
    }

    fn peek(&self, index: u32) -> u64 {
        Slot::count_in(self.state.load(Ordering::Acquire), index).1
    }

    /// Adds `hits` if the result stays within `limit`; else returns the count untouched.
    fn reserve(&self, index: u32, hits: u64, limit: u32) -> Result<(u32, u64), u64> {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let (at, count) = Slot::count_in(state, index);
            let after = count.saturating_add(hits);
            let over = if hits == 0 {
                count >= u64::from(limit)
            } else {
                after > u64::from(limit)
            };
            if over {
                return Err(count);
            }
            if hits == 0 {
                return Ok((at, count));
            }
            match self.state.compare_exchange_weak(
                state,
                pack(at, after),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok((at, after)),
                Err(actual) => state = actual,
            }
        }
    }

    /// Adds `hits` whatever the limit (shadow mode), saturating.
    fn add(&self, index: u32, hits: u64) -> u64 {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let (at, count) = Slot::count_in(state, index);
            let next = pack(at, count.saturating_add(hits));
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return unpack(next).1,
                Err(actual) => state = actual,
            }
        }
    }

    /// Gives back a reservation made in window `index`; nothing if that window has ended.
    fn release(&self, index: u32, hits: u64) {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let (at, count) = unpack(state);
            if at != index {
                return;
            }
            let next = pack(at, count.saturating_sub(hits));
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => state = actual,
            }
        }
    }
}

impl MemoryStore {
    pub fn new(max_counters: usize) -> MemoryStore {
        MemoryStore {
            slots: DashMap::new(),
            live: AtomicUsize::new(0),
            max_counters,
        }
    }

    /// Live counters (slots not yet swept).
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts one request: all of its enforced counters move, or none do.
    ///
    /// Returns one [`Count`] per increment, in order, and whether the request was admitted.
    pub fn apply(&self, batch: &[Increment<'_>]) -> Result<(bool, Vec<Count>), StoreError> {
        let mut counts = Vec::with_capacity(batch.len());
        // (position in batch, window it was reserved in) of each reservation made so far.
        let mut reserved: Vec<(usize, u32)> = Vec::new();
        let mut admitted = true;
        for (i, inc) in batch.iter().enumerate() {
            if !inc.enforced {
                counts.push(Count {
                    value: 0,
                    over_limit: false,
                });
                continue;
            }
            if !admitted {
                counts.push(Count {
                    value: self.peek(inc),
                    over_limit: false,
                });
                continue;
            }
            let outcome = self.with_slot(inc, |slot| {
                slot.reserve(inc.window_index, inc.hits, inc.requests_per_unit)
            })?;
            match outcome {
                Ok((at, after)) => {
                    reserved.push((i, at));
                    counts.push(Count {
                        value: after,
                        over_limit: false,
                    });
                }
                Err(current) => {
                    admitted = false;
                    counts.push(Count {
                        value: current,
                        over_limit: true,
                    });
                }
            }
        }
        if !admitted {
            for (i, at) in reserved {
                let inc = &batch[i];
                if inc.hits > 0 {
                    if let Some(slot) = self.slots.get(inc.key.as_bytes()) {
                        slot.release(at, inc.hits);
                    }
                    counts[i].value = counts[i].value.saturating_sub(inc.hits);
                }
            }
        }
        // Shadow-mode counters count what was admitted; they never refuse.
        for (i, inc) in batch.iter().enumerate().filter(|(_, inc)| !inc.enforced) {
            let value = if admitted && inc.hits > 0 {
                self.with_slot(inc, |slot| slot.add(inc.window_index, inc.hits))?
            } else {
                self.peek(inc)
            };
            let over_limit = if inc.hits == 0 {
                value >= u64::from(inc.requests_per_unit)
            } else {
                value > u64::from(inc.requests_per_unit)
            };
            counts[i] = Count { value, over_limit };
        }
        Ok((admitted, counts))
    }

    fn peek(&self, inc: &Increment<'_>) -> u64 {
        self.slots
            .get(inc.key.as_bytes())
            .map_or(0, |slot| slot.peek(inc.window_index))
    }

    /// Runs `f` on the key's slot, creating the slot if the table has room.
    fn with_slot<R>(
        &self,
        inc: &Increment<'_>,
        f: impl FnOnce(&Slot) -> R,
    ) -> Result<R, StoreError> {
        if let Some(slot) = self.slots.get(inc.key.as_bytes()) {
            return Ok(f(&slot));
        }
        if self.len() >= self.max_counters {
            return Err(StoreError::Full(self.max_counters));
        }
        let slot = self.slots.entry(inc.key.clone()).or_insert_with(|| {
            self.live.fetch_add(1, Ordering::Relaxed);
            Slot {
                state: AtomicU64::new(pack(inc.window_index, 0)),
                window_seconds: inc.window_seconds,
            }
        });
        Ok(f(&slot))
    }

    /// Removes the counters whose window ended before `now`; returns how many.
    pub fn sweep(&self, now: Duration) -> usize {
        let mut removed = 0;
        self.slots.retain(|_, slot| {
            let current = window::position(now, slot.window_seconds).index;
            let (index, _) = unpack(slot.state.load(Ordering::Acquire));
            let keep = index >= current;
            if !keep {
                removed += 1;
            }
            keep
        });
        self.live.fetch_sub(removed, Ordering::Relaxed);
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, window: u32) -> CounterKey {
        CounterKey::new("d", [("k", name)].into_iter(), window)
    }

    fn inc<'a>(key: &'a CounterKey, limit: u32, hits: u64, index: u32) -> Increment<'a> {
        Increment {
            key,
            window_seconds: 60,
            window_index: index,
            requests_per_unit: limit,
            hits,
            enforced: true,
        }
    }

    #[test]
    fn counts_up_to_the_limit_then_refuses_without_counting() {
        let store = MemoryStore::new(100);
        let k = key("a", 60);
        for expected in 1..=3 {
            let (admitted, counts) = store.apply(&[inc(&k, 3, 1, 7)]).expect("room");
            assert!(admitted);
            assert_eq!(counts[0].value, expected);
        }
        let (admitted, counts) = store.apply(&[inc(&k, 3, 1, 7)]).expect("room");
        assert!(!admitted);
        assert_eq!(
            counts[0],
            Count {
                value: 3,
                over_limit: true
            }
        );
    }

    #[test]
    fn a_refused_request_gives_back_its_other_reservations() {
        let store = MemoryStore::new(100);
        let (minute, hour) = (key("m", 60), key("h", 3600));
        store.apply(&[inc(&hour, 2, 2, 1)]).expect("room");
        let (admitted, counts) = store
            .apply(&[inc(&minute, 10, 1, 1), inc(&hour, 2, 1, 1)])
            .expect("room");
        assert!(!admitted);
        assert_eq!(
            counts[0],
            Count {
                value: 0,
                over_limit: false
            }
        );
        assert_eq!(
            counts[1],
            Count {
                value: 2,
                over_limit: true
            }
        );
        let (_, counts) = store.apply(&[inc(&minute, 10, 0, 1)]).expect("room");
        assert_eq!(counts[0].value, 0, "the minute counter did not move");
    }

    #[test]
    fn a_new_window_starts_from_zero_and_old_windows_are_swept() {
        let store = MemoryStore::new(100);
        let k = key("a", 60);
        store.apply(&[inc(&k, 1, 1, 5)]).expect("room");
        let (admitted, _) = store.apply(&[inc(&k, 1, 1, 5)]).expect("room");
        assert!(!admitted);
        let (admitted, counts) = store.apply(&[inc(&k, 1, 1, 6)]).expect("room");
        assert!(admitted);
        assert_eq!(counts[0].value, 1);
        assert_eq!(store.sweep(Duration::from_secs(6 * 60 + 1)), 0);
        assert_eq!(store.sweep(Duration::from_secs(7 * 60)), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn a_full_table_refuses_new_keys_but_serves_known_ones() {
        let store = MemoryStore::new(1);
        let (a, b) = (key("a", 60), key("b", 60));
        store.apply(&[inc(&a, 5, 1, 1)]).expect("room");
        assert_eq!(store.apply(&[inc(&b, 5, 1, 1)]), Err(StoreError::Full(1)));
        assert!(store.apply(&[inc(&a, 5, 1, 1)]).is_ok());
    }

    #[test]
    fn check_only_is_over_once_the_limit_is_reached() {
        let store = MemoryStore::new(10);
        let k = key("a", 60);
        assert!(store.apply(&[inc(&k, 1, 0, 1)]).expect("room").0);
        store.apply(&[inc(&k, 1, 1, 1)]).expect("room");
        assert!(!store.apply(&[inc(&k, 1, 0, 1)]).expect("room").0);
    }
}

//! Counters in process memory: the embedded default store.
//!
//! One entry per descriptor key in a [`CounterTable`] (named by a keyed hash of the key,
//! within a budget of bytes, evicting what matters least when full), holding that descriptor's
//! counters, one per window length (the seed's default bucket has two). Keeping a descriptor's
//! windows together costs one entry and one lookup per descriptor instead of one per window.
//!
//! A counter packs its window number and its count into one `AtomicU64`, so moving to a new
//! window and counting are a single compare-and-swap: no lock is held across a decision, and a
//! hot key costs one atomic update, or only a read once it is over its limit.
//!
//! Counting is all-or-nothing per request: each enforced counter is *reserved* (raised only if
//! the hits still fit), and if one does not fit, the reservations already made are given back,
//! so a rejected request moves no counter. Because a counter is never raised past its limit,
//! concurrent requests on one key admit exactly `requests_per_unit` per window.
//!
//! A descriptor's refill counters (sliding windows, token buckets: `algorithm.rs`) share an entry
//! of their own, under the descriptor's refill key, one word each as fixed windows have: their
//! places are marked ([`REFILL`]), and `refill_cell.rs` reads and writes their words. Each moves
//! by one compare-and-swap as a fixed counter does.
//!
//! Entries whose windows have all ended are removed by [`MemoryStore::sweep`], which the server
//! runs on a timer, so memory follows the keys active now rather than all keys ever seen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::MappedRwLockReadGuard;
use smallvec::SmallVec;

use super::algorithm::Standing;
use super::counter_table::{self, CounterTable, Id, Kept};
use super::key::CounterKey;
use super::refill_cell::{self, Take};
use super::store::{Batch, Count, Counts, Increment, StoreError, is_over};
use super::window;

/// The in-memory counter store; `K` is what each entry keeps of its descriptor key besides its
/// hash (nothing, or the key itself where entries are read back: see [`MemoryStore::drain`]).
pub struct MemoryStore<K: Kept = ()> {
    entries: CounterTable<Counters, K>,
}

/// What a memory store holds, read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Descriptor keys with live counters.
    pub keys: usize,
    /// Bytes its table holds.
    pub bytes: usize,
    /// The most bytes its table may hold.
    pub budget_bytes: usize,
    /// Keys evicted to make room for new ones, so far.
    pub evictions: u64,
}

/// How much a memory store may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes of its table (`--max-counter-memory`).
    pub bytes: usize,
    /// Descriptor keys (`--max-counters`).
    pub max_keys: usize,
}

impl Budget {
    /// At most `max_keys` keys, whatever the bytes.
    pub fn keys(max_keys: usize) -> Budget {
        Budget {
            bytes: usize::MAX / 2,
            max_keys,
        }
    }
}

/// A descriptor's counters, one per window length. The first two (the seed's default bucket
/// has two windows) live inline, so an entry is 48 bytes with its key; more go to `more`.
#[derive(Default)]
struct Counters {
    /// Window lengths of `states`; 0 marks an unused place.
    seconds: [u32; 2],
    states: [Counter; 2],
    /// Boxed so that the rare overflow costs one pointer (8 bytes) in every entry, not a
    /// `Vec`'s 24.
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<(u32, Counter)>>>,
}

/// One counter: its window number in the high 32 bits and its count in the low 32.
#[derive(Default)]
struct Counter(AtomicU64);

fn pack(index: u32, count: u64) -> u64 {
    (u64::from(index) << 32) | count.min(u64::from(u32::MAX))
}

fn unpack(state: u64) -> (u32, u64) {
    ((state >> 32) as u32, state & u64::from(u32::MAX))
}

impl Counter {
    /// The count in window `index`; a counter left from an earlier window counts 0. One already
    /// in a later window (another request read the clock a moment later) is used as it is.
    fn count_in(state: u64, index: u32) -> (u32, u64) {
        let (stored, count) = unpack(state);
        if stored >= index {
            (stored, count)
        } else {
            (index, 0)
        }
    }

    fn peek(&self, index: u32) -> u64 {
        Counter::count_in(self.0.load(Ordering::Acquire), index).1
    }

    /// Adds `hits` if the result stays within `limit`; else returns the count untouched.
    fn reserve(&self, index: u32, hits: u64, limit: u32) -> Result<(u32, u64), u64> {
        let mut state = self.0.load(Ordering::Acquire);
        loop {
            let (at, count) = Counter::count_in(state, index);
            let after = count.saturating_add(hits);
            if is_over(after, hits, limit) {
                return Err(count);
            }
            if hits == 0 {
                return Ok((at, count));
            }
            match self.0.compare_exchange_weak(
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
        let mut state = self.0.load(Ordering::Acquire);
        loop {
            let (at, count) = Counter::count_in(state, index);
            let next = pack(at, count.saturating_add(hits));
            match self
                .0
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return unpack(next).1,
                Err(actual) => state = actual,
            }
        }
    }

    /// Raises the count in window `index` to at least `value` (what another store said).
    fn raise_to(&self, index: u32, value: u64) {
        let mut state = self.0.load(Ordering::Acquire);
        loop {
            let (at, count) = Counter::count_in(state, index);
            if at != index || count >= value {
                return;
            }
            let next = pack(at, value);
            match self
                .0
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => state = actual,
            }
        }
    }

    /// Gives back a reservation made in window `index`; nothing if that window has ended.
    fn release(&self, index: u32, hits: u64) {
        let mut state = self.0.load(Ordering::Acquire);
        loop {
            let (at, count) = unpack(state);
            if at != index {
                return;
            }
            let next = pack(at, count.saturating_sub(hits));
            match self
                .0
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => state = actual,
            }
        }
    }

    /// Whether the window this counter last counted in, of `seconds`, has ended by `now`.
    fn ended(&self, seconds: u32, now: Duration) -> bool {
        let (index, _) = unpack(self.0.load(Ordering::Acquire));
        index < window::position(now, seconds).index
    }
}

/// Marks a refill counter's place in [`Counters::seconds`] (window lengths are below 2^31).
const REFILL: u32 = 1 << 31;

/// The place of the increment's counter in its entry: the window length, marked if it refills.
fn slot(inc: &Increment) -> u32 {
    if inc.counting.refills() {
        inc.window_seconds | REFILL
    } else {
        inc.window_seconds
    }
}

impl Counters {
    /// The counter in place `slot` (see [`slot`]).
    fn get(&self, slot: u32) -> Option<&Counter> {
        if let Some(i) = self.seconds.iter().position(|&s| s == slot) {
            return self.states.get(i);
        }
        let more = self.more.as_deref()?;
        more.iter().find(|(s, _)| *s == slot).map(|(_, c)| c)
    }

    /// Adds a counter in place `slot` (which it does not have yet), holding `state`.
    fn add(&mut self, slot: u32, state: u64) {
        if let Some(i) = self.seconds.iter().position(|&s| s == 0) {
            self.seconds[i] = slot;
            self.states[i] = Counter(AtomicU64::new(state));
        } else {
            self.more
                .get_or_insert_with(Default::default)
                .push((slot, Counter(AtomicU64::new(state))));
        }
    }

    /// Each counter with its place.
    fn iter(&self) -> impl Iterator<Item = (u32, &Counter)> {
        let inline = self
            .seconds
            .iter()
            .zip(&self.states)
            .filter(|(s, _)| **s != 0)
            .map(|(s, c)| (*s, c));
        let more = self
            .more
            .as_deref()
            .into_iter()
            .flatten()
            .map(|(s, c)| (*s, c));
        inline.chain(more)
    }

    /// Each fixed window's counter as (window seconds, window index, count).
    fn each(&self) -> impl Iterator<Item = (u32, u32, u64)> {
        self.iter()
            .filter(|(slot, _)| slot & REFILL == 0)
            .map(|(seconds, counter)| {
                let (index, count) = unpack(counter.0.load(Ordering::Acquire));
                (seconds, index, count)
            })
    }

    /// Whether every counter's window has ended by `now` (a sliding window weighs until the
    /// window after its last hit ends; a bucket until it is full again).
    fn all_ended(&self, now: Duration) -> bool {
        self.iter().all(|(slot, c)| {
            if slot & REFILL == 0 {
                c.ended(slot, now)
            } else {
                refill_cell::ended(c.0.load(Ordering::Acquire), slot & !REFILL, now)
            }
        })
    }
}

/// What to do with one counter, once found.
enum Op {
    Reserve,
    Add,
    Peek,
}

/// A read-locked entry of the table.
type EntryRef<'a> = MappedRwLockReadGuard<'a, Counters>;

/// What an operation on one counter gave: the window it counted in and the count, or (for a
/// reservation that does not fit) the count left alone; and a refill counter's answer to the
/// client as the operation left it (`None` for a fixed window).
type Ran = (Result<(u32, u64), u64>, Option<Standing>);

/// Does `op` to the increment's counter in `entry`, if it has it (see [`Ran`]). A refill
/// counter's count is the requests it holds (`Count::value`).
fn run_in(inc: &Increment, entry: &Counters, op: &Op) -> Option<Ran> {
    let counter = entry.get(slot(inc))?;
    if !inc.counting.refills() {
        return Some((run(inc, counter, op), None));
    }
    let take = match op {
        Op::Reserve => Take::Reserve,
        Op::Add => Take::Add,
        Op::Peek => Take::Peek,
    };
    let (outcome, standing) = refill_cell::run(&counter.0, inc, take);
    Some((outcome, Some(standing)))
}

/// Does `op` to a fixed `counter` for `inc`.
fn run(inc: &Increment, counter: &Counter, op: &Op) -> Result<(u32, u64), u64> {
    match op {
        Op::Reserve => counter.reserve(inc.window_index, inc.hits, inc.requests_per_unit),
        Op::Add => Ok((inc.window_index, counter.add(inc.window_index, inc.hits))),
        Op::Peek => Ok((inc.window_index, counter.peek(inc.window_index))),
    }
}

impl MemoryStore {
    pub fn new(budget: Budget) -> MemoryStore {
        MemoryStore {
            entries: CounterTable::new(budget.bytes, budget.max_keys),
        }
    }
}

impl MemoryStore<Box<[u8]>> {
    /// A store whose entries keep their keys, so that [`MemoryStore::drain`] can give them back.
    pub fn keeping_keys(budget: Budget) -> MemoryStore<Box<[u8]>> {
        MemoryStore {
            entries: CounterTable::new(budget.bytes, budget.max_keys),
        }
    }
}

impl<K: Kept> MemoryStore<K> {
    /// How its budget is laid out: the most keys it holds, and the most bytes.
    pub fn layout(&self) -> counter_table::Layout {
        self.entries.layout()
    }

    /// Live descriptor keys (entries not yet swept); each holds a counter per window length.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys evicted to make room for new ones.
    pub fn evictions(&self) -> u64 {
        self.entries.evictions()
    }

    /// Bytes its table holds now.
    pub fn bytes(&self) -> usize {
        self.entries.bytes()
    }

    /// What it holds now, for the metrics.
    pub fn usage(&self) -> MemoryUsage {
        MemoryUsage {
            keys: self.len(),
            bytes: self.bytes(),
            budget_bytes: self.layout().bytes(),
            evictions: self.evictions(),
        }
    }

    /// Counts one request: all of its enforced counters move, or none do.
    ///
    /// Returns whether the request was admitted, and one [`Count`] per increment, in order.
    /// Never fails: a new key in a full table takes the place of one that matters less.
    pub fn apply(&self, batch: &Batch) -> (bool, Counts) {
        let ids: SmallVec<[Id; 2]> = batch
            .keys
            .iter()
            .map(|key| self.entries.id(key.as_bytes()))
            .collect();
        let mut counts = Counts::with_capacity(batch.increments.len());
        // (position in batch, window it was reserved in) of each reservation made so far.
        let mut reserved: SmallVec<[(usize, u32); 4]> = SmallVec::new();
        let mut admitted = true;
        // The entry of the key being worked on: a descriptor's windows are consecutive in the
        // batch and share one entry, so it is looked up once, not once per window. Dropped
        // before any other lookup, so that no shard lock is held twice.
        let mut current: Option<(usize, EntryRef<'_>)> = None;
        for (i, inc) in batch.increments.iter().enumerate() {
            if !inc.enforced {
                counts.push(Count::default());
                continue;
            }
            let op = if admitted { Op::Reserve } else { Op::Peek };
            if current.as_ref().map(|(key, _)| *key) != Some(inc.key) {
                drop(current.take());
                current = self.entries.get(ids[inc.key]).map(|e| (inc.key, e));
            }
            let found = current
                .as_ref()
                .and_then(|(_, entry)| run_in(inc, entry, &op));
            let (outcome, standing) = match found {
                Some(ran) => ran,
                None => {
                    current = None;
                    self.on_counter(batch, ids[inc.key], inc, op)
                }
            };
            let count = match (admitted, outcome) {
                (false, outcome) => {
                    // Only read: over if its hits would not have fitted either.
                    let value = outcome.map_or_else(|current| current, |(_, count)| count);
                    let after = value.saturating_add(inc.hits);
                    Count::fixed(value, is_over(after, inc.hits, inc.ceiling()))
                }
                (true, Ok((at, after))) => {
                    reserved.push((i, at));
                    Count::fixed(after, false)
                }
                (true, Err(current)) => {
                    admitted = false;
                    Count::fixed(current, true)
                }
            };
            counts.push(Count { standing, ..count });
        }
        drop(current);
        if !admitted {
            self.release(&ids, batch, &reserved, &mut counts);
            for &(i, _) in &reserved {
                let hits = batch.increments[i].hits;
                counts[i].value = counts[i].value.saturating_sub(hits);
            }
        }
        // Shadow-mode counters count what was admitted; they never refuse.
        for (i, inc) in batch.increments.iter().enumerate() {
            if inc.enforced {
                continue;
            }
            let op = if admitted && inc.hits > 0 {
                Op::Add
            } else {
                Op::Peek
            };
            let (outcome, standing) = self.on_counter(batch, ids[inc.key], inc, op);
            let value = outcome.unwrap_or_default().1;
            let over_limit = is_over(value, inc.hits, inc.ceiling());
            counts[i] = Count {
                standing,
                ..Count::fixed(value, over_limit)
            };
        }
        (admitted, counts)
    }

    /// Takes back the hits `reserved` for these increments of `batch` (index, window index);
    /// a refill counter's answer in `counts` becomes what it says once they are back.
    fn release(&self, ids: &[Id], batch: &Batch, reserved: &[(usize, u32)], counts: &mut Counts) {
        for &(i, at) in reserved {
            let inc = &batch.increments[i];
            if inc.hits == 0 {
                continue;
            }
            let Some(entry) = self.entries.get(ids[inc.key]) else {
                continue;
            };
            let Some(counter) = entry.get(slot(inc)) else {
                continue;
            };
            if inc.counting.refills() {
                counts[i].standing = Some(refill_cell::give_back(&counter.0, inc, at));
            } else {
                counter.release(at, inc.hits);
            }
        }
    }

    /// Runs `op` on the increment's counter (its key's entry is `id`), making the counter, and
    /// its entry, unless only peeking. A peek at a counter that does not exist reads 0.
    fn on_counter(&self, batch: &Batch, id: Id, inc: &Increment, op: Op) -> Ran {
        if let Some(entry) = self.entries.get(id)
            && let Some(ran) = run_in(inc, &entry, &op)
        {
            return ran;
        }
        if matches!(op, Op::Peek) {
            // Nothing counted yet: a refill counter is full.
            let standing = inc
                .counting
                .refills()
                .then(|| refill_cell::fresh_standing(inc));
            return (Ok((inc.window_index, 0)), standing);
        }
        // The key or this window is new: take the shard's write lock once to add it.
        let key = batch.keys[inc.key].as_bytes();
        let (mut entry, came_back) = self.entries.get_or_make(id, key, window_start(inc));
        if inc.counting.refills() {
            // A refill counter starts unused (a full bucket, empty sliding windows).
            if entry.get(slot(inc)).is_none() {
                entry.add(slot(inc), 0);
            }
            return run_in(inc, &entry, &op).unwrap_or((Ok((inc.window_index, 0)), None));
        }
        if came_back {
            // The key's earlier entry was evicted, and the hits it held with it: count its last
            // hit again, in each window this request counts for it, so that an eviction lets
            // through no request more (at worst one fewer, if that hit was in an earlier window).
            for window in batch.increments.iter().filter(|other| other.key == inc.key) {
                if window.counting.refills() {
                    continue;
                }
                if entry.get(window.window_seconds).is_none() {
                    entry.add(window.window_seconds, pack(window.window_index, 0));
                }
                if let Some(counter) = entry.get(window.window_seconds) {
                    counter.raise_to(window.window_index, 1);
                }
            }
        }
        if entry.get(inc.window_seconds).is_none() {
            entry.add(inc.window_seconds, pack(inc.window_index, 0));
        }
        let counter = entry.get(inc.window_seconds);
        (
            counter.map_or(Ok((inc.window_index, 0)), |c| run(inc, c, &op)),
            None,
        )
    }

    /// The count of one counter in window `index`; 0 when there is none.
    pub fn peek(&self, key: &CounterKey, window_seconds: u32, index: u32) -> u64 {
        self.entries
            .get(self.entries.id(key.as_bytes()))
            .and_then(|entry| entry.get(window_seconds).map(|c| c.peek(index)))
            .unwrap_or(0)
    }

    /// Raises each counter of `batch` to at least its count in `counts` (what Redis answered),
    /// making the counters it lacks.
    pub fn mirror(&self, batch: &Batch, counts: &[Count]) {
        // A key's windows come one after another: its id is worked out once.
        let mut last: Option<(usize, Id)> = None;
        for (inc, count) in batch.increments.iter().zip(counts) {
            if inc.counting.refills() {
                // Redis alone keeps refill counters: the local store counts them from full.
                continue;
            }
            let id = match last {
                Some((key, id)) if key == inc.key => id,
                _ => self.entries.id(batch.keys[inc.key].as_bytes()),
            };
            last = Some((inc.key, id));
            // Mostly the counter is there already (a later window included: raising moves it).
            let raised = self.entries.get(id).is_some_and(|entry| {
                entry
                    .get(inc.window_seconds)
                    .map(|counter| counter.raise_to(inc.window_index, count.value))
                    .is_some()
            });
            if raised {
                continue;
            }
            let mut peek = Increment { hits: 0, ..*inc };
            peek.enforced = false;
            // Makes the counter (an add of 0 hits), then raises it.
            let _ = self.on_counter(batch, id, &peek, Op::Add);
            if let Some(entry) = self.entries.get(id)
                && let Some(counter) = entry.get(inc.window_seconds)
            {
                counter.raise_to(inc.window_index, count.value);
            }
        }
    }

    /// Removes the keys whose windows have all ended before `now`, a shard at a time; returns
    /// how many were removed.
    pub fn sweep(&self, now: Duration) -> usize {
        self.entries.sweep(now)
    }
}

impl MemoryStore<Box<[u8]>> {
    /// Removes every counter, and gives back those of windows not ended by `now` as (key,
    /// window seconds, window index, count), counts above 0 only.
    pub fn drain(&self, now: Duration) -> Vec<(CounterKey, u32, u32, u64)> {
        let mut out = Vec::new();
        for (key, counters) in self.entries.drain() {
            for (seconds, index, count) in counters.each() {
                if count > 0 && index >= window::position(now, seconds).index {
                    out.push((CounterKey::from_bytes(&key), seconds, index, count));
                }
            }
        }
        out
    }
}

/// The start of the increment's window: a moment no later than now, which tells the table
/// which windows have surely ended.
fn window_start(inc: &Increment) -> Duration {
    Duration::from_secs(u64::from(inc.window_index) * u64::from(inc.window_seconds))
}

impl counter_table::Value for Counters {
    fn ended(&self, now: Duration) -> bool {
        self.all_ended(now)
    }

    fn weight(&self, now: Duration) -> u64 {
        self.iter()
            .map(|(slot, counter)| {
                let state = counter.0.load(Ordering::Acquire);
                if slot & REFILL != 0 {
                    return refill_cell::weight(state, slot & !REFILL, now);
                }
                let (index, count) = unpack(state);
                if index >= window::position(now, slot).index {
                    count
                } else {
                    0
                }
            })
            .max()
            .unwrap_or(0)
    }
}

impl<K: Kept> super::store::CounterStore for MemoryStore<K> {
    /// At once: nothing in memory waits.
    fn count(
        &self,
        batch: &Batch,
    ) -> impl std::future::Future<Output = Result<(bool, Counts), StoreError>> + Send {
        std::future::ready(Ok(self.apply(batch)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::CounterKey;
    use crate::limiter::Counting;

    /// A batch of one descriptor key with `windows` as (window seconds, limit, hits, index).
    fn batch(name: &str, windows: &[(u32, u32, u64, u32)]) -> Batch {
        Batch {
            keys: smallvec::smallvec![CounterKey::new("d", [("k", name)].into_iter())],
            increments: windows
                .iter()
                .map(
                    |&(window_seconds, requests_per_unit, hits, window_index)| Increment {
                        key: 0,
                        window_seconds,
                        window_index,
                        expires_in_ms: 60_000,
                        requests_per_unit,
                        hits,
                        enforced: true,
                        counting: Counting::Fixed,
                        now_us: 0,
                    },
                )
                .collect(),
        }
    }

    #[test]
    fn mirroring_makes_missing_counters_raises_never_lowers_and_follows_a_new_window() {
        let store = MemoryStore::new(Budget::keys(100));
        let key = CounterKey::new("d", [("k", "m")].into_iter());
        let seen = |value| Count::fixed(value, false);
        // Both windows of a new key are made at Redis's counts.
        store.mirror(
            &batch("m", &[(60, 10, 1, 7), (3600, 100, 1, 3)]),
            &[seen(4), seen(9)],
        );
        assert_eq!(store.peek(&key, 60, 7), 4);
        assert_eq!(store.peek(&key, 3600, 3), 9);
        // Raised, never lowered.
        store.mirror(
            &batch("m", &[(60, 10, 1, 7), (3600, 100, 1, 3)]),
            &[seen(6), seen(2)],
        );
        assert_eq!(store.peek(&key, 60, 7), 6);
        assert_eq!(store.peek(&key, 3600, 3), 9);
        // A later window starts at what Redis said of it, not on top of the last one.
        store.mirror(&batch("m", &[(60, 10, 1, 8)]), &[seen(1)]);
        assert_eq!(store.peek(&key, 60, 8), 1);
        // And counting locally goes on from there.
        let (admitted, counts) = store.apply(&batch("m", &[(60, 10, 1, 8)]));
        assert!(admitted);
        assert_eq!(counts[0].value, 2);
    }

    #[test]
    fn counts_up_to_the_limit_then_refuses_without_counting() {
        let store = MemoryStore::new(Budget::keys(100));
        for expected in 1..=3 {
            let (admitted, counts) = store.apply(&batch("a", &[(60, 3, 1, 7)]));
            assert!(admitted);
            assert_eq!(counts[0].value, expected);
        }
        let (admitted, counts) = store.apply(&batch("a", &[(60, 3, 1, 7)]));
        assert!(!admitted);
        assert_eq!(counts[0], Count::fixed(3, true));
    }

    #[test]
    fn each_window_length_of_a_key_has_its_own_counter() {
        let store = MemoryStore::new(Budget::keys(100));
        store.apply(&batch("a", &[(60, 10, 4, 1)]));
        let (_, counts) = store.apply(&batch("a", &[(60, 10, 1, 1), (3600, 10, 1, 1)]));
        assert_eq!(counts[0].value, 5);
        assert_eq!(counts[1].value, 1);
        assert_eq!(store.len(), 1, "one entry for the key");
        let (_, counts) = store.apply(&batch(
            "a",
            &[(1, 10, 1, 60), (60, 10, 1, 1), (86_400, 10, 1, 0)],
        ));
        let values: Vec<u64> = counts.iter().map(|c| c.value).collect();
        assert_eq!(values, [1, 6, 1], "a third window goes past the inline two");
        assert_eq!(
            store.sweep(Duration::from_secs(3_600)),
            0,
            "the day has not ended"
        );
        assert_eq!(store.sweep(Duration::from_secs(86_400)), 1);
    }

    #[test]
    fn a_refused_request_gives_back_its_other_reservations() {
        let store = MemoryStore::new(Budget::keys(100));
        store.apply(&batch("a", &[(3600, 2, 2, 1)]));
        let (admitted, counts) = store.apply(&batch("a", &[(60, 10, 1, 1), (3600, 2, 1, 1)]));
        assert!(!admitted);
        assert_eq!(counts[0], Count::fixed(0, false));
        assert_eq!(counts[1], Count::fixed(2, true));
        let (_, counts) = store.apply(&batch("a", &[(60, 10, 0, 1)]));
        assert_eq!(counts[0].value, 0, "the minute counter did not move");
    }

    #[test]
    fn a_new_window_starts_from_zero_and_ended_keys_are_swept() {
        let store = MemoryStore::new(Budget::keys(100));
        store.apply(&batch("a", &[(60, 1, 1, 5)]));
        let (admitted, _) = store.apply(&batch("a", &[(60, 1, 1, 5)]));
        assert!(!admitted);
        let (admitted, counts) = store.apply(&batch("a", &[(60, 1, 1, 6)]));
        assert!(admitted);
        assert_eq!(counts[0].value, 1);
        store.apply(&batch("b", &[(60, 1, 1, 6), (3600, 1, 1, 0)]));
        assert_eq!(store.sweep(Duration::from_secs(6 * 60 + 1)), 0);
        assert_eq!(
            store.sweep(Duration::from_secs(7 * 60)),
            1,
            "a: its only window ended"
        );
        assert_eq!(store.len(), 1, "b: its hour has not ended");
        assert_eq!(store.sweep(Duration::from_secs(3600)), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn a_full_table_evicts_the_least_counted_key_and_counts_the_new_one() {
        let store = MemoryStore::new(Budget::keys(2));
        for _ in 0..3 {
            store.apply(&batch("heavy", &[(60, 5, 1, 1)]));
        }
        store.apply(&batch("light", &[(60, 5, 1, 1)]));
        let (admitted, counts) = store.apply(&batch("new", &[(60, 5, 1, 1)]));
        assert!(admitted, "a full table still counts a new key");
        assert_eq!(counts[0].value, 1);
        assert_eq!((store.len(), store.evictions()), (2, 1));
        let heavy = CounterKey::new("d", [("k", "heavy")].into_iter());
        let light = CounterKey::new("d", [("k", "light")].into_iter());
        assert_eq!(store.peek(&heavy, 60, 1), 3, "the most counted key stays");
        assert_eq!(
            store.peek(&light, 60, 1),
            0,
            "the least counted key made room"
        );
    }

    #[test]
    fn a_key_evicted_and_back_counts_the_hit_it_lost() {
        let store = MemoryStore::new(Budget::keys(8));
        let one_hit = |name: &str| store.apply(&batch(name, &[(60, 5, 1, 1)])).1[0].value;
        for i in 0..8 {
            one_hit(&format!("first-{i}"));
        }
        assert_eq!(one_hit("k"), 1, "k arrives at a full table");
        for i in 0..20 {
            one_hit(&format!("flood-{i}"));
        }
        let k = CounterKey::new("d", [("k", "k")].into_iter());
        assert_eq!(store.peek(&k, 60, 1), 0, "k was evicted with its hit");
        assert_eq!(
            one_hit("k"),
            2,
            "back: its lost hit counts again, and this one"
        );
    }

    #[test]
    fn long_values_cost_no_more_than_short_ones() {
        let store = MemoryStore::new(Budget::keys(100));
        store.apply(&batch("short", &[(60, 5, 1, 1)]));
        let short = store.bytes();
        let long = "v".repeat(8192);
        for i in 0..50 {
            store.apply(&batch(&format!("{i}{long}"), &[(60, 5, 1, 1)]));
        }
        assert_eq!(store.len(), 51);
        assert!(
            store.bytes() <= 8 * short.max(1024),
            "{} bytes",
            store.bytes()
        );
    }

    #[test]
    fn a_drained_store_gives_back_the_keys_of_live_windows() {
        let store = MemoryStore::keeping_keys(Budget::keys(10));
        store.apply(&batch("live", &[(60, 5, 2, 1)]));
        store.apply(&batch("ended", &[(60, 5, 1, 0)]));
        let held = store.drain(Duration::from_secs(90));
        let live = CounterKey::new("d", [("k", "live")].into_iter());
        assert_eq!(held, [(live, 60, 1, 2)]);
        assert!(store.is_empty());
    }

    #[test]
    fn check_only_is_over_once_the_limit_is_reached() {
        let store = MemoryStore::new(Budget::keys(10));
        assert!(store.apply(&batch("a", &[(60, 1, 0, 1)])).0);
        store.apply(&batch("a", &[(60, 1, 1, 1)]));
        assert!(!store.apply(&batch("a", &[(60, 1, 0, 1)])).0);
    }

    /// One refill counter (its own key, as the limiter makes it) of `limit` per `seconds`,
    /// taking `hits` at `now`.
    fn refill(counting: Counting, seconds: u32, limit: u32, hits: u64, now: Duration) -> Batch {
        let position = window::position(now, seconds);
        Batch {
            keys: smallvec::smallvec![
                // One name per algorithm: a descriptor has one limit per window length.
                CounterKey::new("d", [("k", format!("{counting:?}").as_str())].into_iter())
                    .refill()
            ],
            increments: smallvec::smallvec![Increment {
                key: 0,
                window_seconds: seconds,
                window_index: position.index,
                expires_in_ms: position.reset_in.as_millis() as u64,
                requests_per_unit: limit,
                hits,
                enforced: true,
                counting,
                now_us: now.as_micros() as u64,
            }],
        }
    }

    #[test]
    fn a_token_bucket_admits_its_burst_and_says_when_to_retry() {
        let store = MemoryStore::new(Budget::keys(10));
        let now = Duration::from_secs(1_800_000_000);
        let bucket = Counting::Bucket { burst: 10 };
        let admitted = (0..15)
            .filter(|_| store.apply(&refill(bucket, 60, 10, 1, now)).0)
            .count();
        assert_eq!(admitted, 10);
        let (admitted, counts) = store.apply(&refill(bucket, 60, 10, 1, now));
        assert!(!admitted);
        assert!(counts[0].over_limit);
        let standing = counts[0].standing.expect("a refill counter's standing");
        assert_eq!(standing.retry_in_ms, 6_000);
        assert_eq!(standing.reset_in_ms, 60_000);
        let later = now + Duration::from_secs(6);
        assert!(store.apply(&refill(bucket, 60, 10, 1, later)).0);
        assert!(!store.apply(&refill(bucket, 60, 10, 1, later)).0);
        // Full again after a whole period: swept, as a fixed window that ended.
        assert_eq!(store.sweep(later + Duration::from_secs(61)), 1);
    }

    #[test]
    fn a_sliding_window_carries_the_previous_window_over() {
        let store = MemoryStore::new(Budget::keys(10));
        let sliding = Counting::Sliding;
        // Ten spent half a second before a window edge.
        let before_edge = Duration::from_millis(1_800_000_009_500);
        let spent = (0..12)
            .filter(|_| store.apply(&refill(sliding, 10, 10, 1, before_edge)).0)
            .count();
        assert_eq!(spent, 10);
        // Just after the edge the previous window still weighs almost all of it.
        let after_edge = before_edge + Duration::from_millis(700);
        let after = (0..10)
            .filter(|_| store.apply(&refill(sliding, 10, 10, 1, after_edge)).0)
            .count();
        assert_eq!(after, 0);
        let (_, counts) = store.apply(&refill(sliding, 10, 10, 1, after_edge));
        let standing = counts[0].standing.expect("a refill counter's standing");
        assert_eq!(
            standing.retry_in_ms, 800,
            "at a tenth of the window one fits"
        );
        // Halfway through, half of it has slid out.
        let halfway = before_edge + Duration::from_millis(5_500);
        let half = (0..10)
            .filter(|_| store.apply(&refill(sliding, 10, 10, 1, halfway)).0)
            .count();
        assert_eq!(half, 5);
    }

    #[test]
    fn sixteen_threads_on_one_key_admit_exactly_what_each_algorithm_allows() {
        let now = Duration::from_millis(1_800_000_000_250);
        for counting in [
            Counting::Fixed,
            Counting::Sliding,
            Counting::Bucket { burst: 500 },
        ] {
            let store = MemoryStore::new(Budget::keys(10));
            let admitted = std::sync::atomic::AtomicU64::new(0);
            std::thread::scope(|scope| {
                for _ in 0..16 {
                    scope.spawn(|| {
                        for _ in 0..100 {
                            if store.apply(&refill(counting, 60, 500, 1, now)).0 {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(admitted.into_inner(), 500, "{counting:?}");
        }
    }

    #[test]
    fn a_refused_request_gives_back_what_its_refill_counters_took() {
        let store = MemoryStore::new(Budget::keys(10));
        let now = Duration::from_secs(1_800_000_000);
        for counting in [Counting::Sliding, Counting::Bucket { burst: 5 }] {
            let mut both = refill(counting, 60, 5, 1, now);
            // A second descriptor whose fixed window of 0 refuses every request.
            both.keys
                .push(CounterKey::new("d", [("k", "closed")].into_iter()));
            both.increments.push(Increment {
                key: 1,
                requests_per_unit: 0,
                counting: Counting::Fixed,
                ..both.increments[0]
            });
            assert!(!store.apply(&both).0);
            let alone = (0..10)
                .filter(|_| store.apply(&refill(counting, 60, 5, 1, now)).0)
                .count();
            assert_eq!(alone, 5, "{counting:?}");
        }
    }
}

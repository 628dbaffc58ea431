//! The memory store's table: entries named by a keyed 128-bit hash of their descriptor key,
//! in shards, within a budget of bytes; when a shard is full, a new entry takes the place of
//! the one that matters least, so a full table never refuses a key.
//!
//! **Names, not keys.** An entry is found by [`Id`], a BLAKE3 hash of the descriptor key keyed
//! with a random key drawn when the table is made, so every entry costs the same whatever the
//! length of its descriptor's values (an 8 KiB value costs what a 3-byte one does), and a
//! client that does not know the key cannot choose descriptors that collide or that crowd one
//! shard. Two descriptors share an entry only if their 128-bit hashes are equal: with `n` live
//! entries the chance of any such pair is about `n² / 2¹²⁹`, below 10⁻²³ for 10⁸ entries.
//!
//! **A budget in bytes.** Each shard is a `hashbrown` table of fixed-size slots that may grow to
//! at most [`Layout::buckets`] buckets; the shards times that many buckets times the slot's size
//! is at most the budget. A shard holds at most 7/16 of its most buckets (half of hashbrown's
//! 7/8 load), so that the places emptied by evictions are reclaimed by rehashing in place,
//! never by growing the table past its budget.
//!
//! **Eviction.** A new entry in a full shard first removes one of [`SAMPLE`] entries drawn at
//! random from that shard: one whose windows have all ended if there is one, else the one of
//! least weight, the oldest of those. An entry's weight is its highest count in a live window
//! (evicting it can admit again at most the hits it forgets, so the fewest hits are forgotten),
//! and at least two if its key had arrived at the full shard before (a filter of [`Arrivals`]
//! that outlives evictions says so) and the shard has not turned over [`REMEMBERED`] times
//! since: a key that comes back slower than a flood turns the table over is evicted once, then
//! outranks the keys seen once. A flood of one-hit keys thus evicts its own kind, first in, first out, and a key
//! counting towards its limit, or coming back, outlives them.

use std::cmp::Reverse;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hashbrown::HashTable;

use super::arrivals::Arrivals;
use parking_lot::{
    MappedRwLockReadGuard, MappedRwLockWriteGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

/// An entry's name: a keyed 128-bit hash of its descriptor key, in two halves (one picks the
/// shard, the other the bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id {
    shard_bits: u64,
    table_bits: u64,
}

/// What an entry holds, as the table needs to know it to choose what to evict.
pub trait Value: Default + Send + Sync {
    /// Whether every window it counts in has ended by `now`: it can go at no cost.
    fn ended(&self, now: Duration) -> bool;
    /// The hits it would forget if evicted at `now` (its highest count in a live window).
    fn weight(&self, now: Duration) -> u64;
}

/// What else an entry keeps of its descriptor key: nothing (`()`), or the key's bytes, for a
/// table whose entries must be read back as keys (the hits counted during a Redis outage).
pub trait Kept: Send + Sync + Sized {
    fn keep(key: &[u8]) -> Self;
}

impl Kept for () {
    fn keep(_: &[u8]) {}
}

impl Kept for Box<[u8]> {
    fn keep(key: &[u8]) -> Self {
        Box::from(key)
    }
}

/// Entries drawn at random from a full shard, of which the one that matters least is evicted.
pub const SAMPLE: usize = 8;

/// Random buckets looked at to find [`SAMPLE`] entries: a full shard has at least 7/16 of its
/// buckets in use, so missing them all is a chance below 10⁻¹⁵.
const PROBES: usize = 64;

/// Most buckets a shard may grow to: a shard holds at most 7,167 entries (~0.9 MB), so no
/// walk of one shard (a sweep, a rehash) holds its lock for long.
const MAX_SHARD_BUCKETS: usize = 1 << 14;

/// Fewest buckets a shard may grow to (hashbrown's smallest table with a 7/8 load).
const MIN_SHARD_BUCKETS: usize = 16;

/// Bytes a hashbrown table allocates besides its buckets: a group of trailing control bytes
/// and the alignment of the slots.
const TABLE_OVERHEAD: usize = 32;

/// Shards wanted at the least, budget allowing: fewer entries per lock.
const TARGET_SHARDS: usize = 512;

/// Shards at the most: a budget past 65,536 full shards (~60 GB, 470 million counters) holds
/// no more, so a mistyped `--max-counter-memory 1PB` cannot make a billion locks at start.
const MAX_SHARDS: usize = 1 << 16;

/// Turnovers of a full shard (its entries, replaced) that a key's arrival is remembered for,
/// at the least: under a flood of 750,000 keys a second into room for 100,000, a turnover
/// lasts 0.14 s, so a key that comes back within half a second is known to.
const REMEMBERED: usize = 6;

/// Keys per generation of a shard's filter of arrivals (remembered for one to two of them).
fn generation(per_shard: usize) -> usize {
    REMEMBERED * per_shard
}

/// How a budget is split: `shards` tables of at most `buckets` buckets, each holding at most
/// `per_shard` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub shards: usize,
    pub buckets: usize,
    pub per_shard: usize,
    /// Bytes one bucket takes: a slot and its control byte.
    pub bucket_bytes: usize,
}

impl Layout {
    /// The layout of at most `bytes` and at most `max_entries` entries (rounded up to a whole
    /// number per shard), for buckets of `bucket_bytes`.
    pub fn new(bytes: usize, max_entries: usize, bucket_bytes: usize) -> Layout {
        let shard_bytes = |buckets: usize| {
            let sketch = Arrivals::bytes_for(generation(buckets * 7 / 16));
            let table = buckets.saturating_mul(bucket_bytes) + TABLE_OVERHEAD;
            table.saturating_add(sketch)
        };
        let mut buckets = MAX_SHARD_BUCKETS;
        while buckets > MIN_SHARD_BUCKETS && bytes / shard_bytes(buckets) < TARGET_SHARDS {
            buckets /= 2;
        }
        let most_per_shard = buckets * 7 / 16 - 1;
        let by_bytes = (bytes / shard_bytes(buckets)).clamp(1, MAX_SHARDS);
        let by_count = max_entries.div_ceil(most_per_shard).max(1);
        let shards = by_bytes.min(by_count);
        let per_shard = if by_count <= by_bytes {
            max_entries.div_ceil(shards).clamp(1, most_per_shard)
        } else {
            most_per_shard
        };
        Layout {
            shards,
            buckets,
            per_shard,
            bucket_bytes,
        }
    }

    /// The most entries.
    pub fn capacity(&self) -> usize {
        self.shards * self.per_shard
    }

    /// The most bytes the shards' tables and sketches take.
    pub fn bytes(&self) -> usize {
        let sketch = Arrivals::bytes_for(generation(self.per_shard));
        self.shards * (self.buckets * self.bucket_bytes + TABLE_OVERHEAD + sketch)
    }
}

/// Makes [`Id`]s: BLAKE3 in keyed mode, with a key drawn from the operating system.
struct Ids {
    key: [u8; blake3::KEY_LEN],
}

impl Ids {
    fn random() -> Ids {
        let mut key = [0u8; blake3::KEY_LEN];
        if getrandom::fill(&mut key).is_err() {
            // No system randomness: std's per-process random hash keys, four 64-bit draws.
            use std::hash::{BuildHasher, RandomState};
            for chunk in key.chunks_mut(8) {
                let draw = RandomState::new().hash_one(0u8).to_le_bytes();
                chunk.copy_from_slice(&draw[..chunk.len()]);
            }
        }
        Ids { key }
    }

    fn of(&self, key: &[u8]) -> Id {
        let hash = blake3::keyed_hash(&self.key, key);
        let bytes = hash.as_bytes();
        let half = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        Id {
            shard_bits: half(0),
            table_bits: half(8),
        }
    }
}

struct Slot<V, K> {
    id: Id,
    /// The shard's count of entries made when this one was: its age.
    born: u32,
    /// Whether its key had arrived at the full shard before, when it was made (see
    /// [`Arrivals`]).
    returning: bool,
    value: V,
    kept: K,
}

struct Shard<V, K> {
    slots: HashTable<Slot<V, K>>,
    /// Entries made so far (wrapping): the next one's `born`.
    made: u32,
    /// xorshift state for drawing buckets.
    dice: u64,
    /// Made when the shard is first full.
    arrivals: Option<Arrivals>,
}

fn slot_hash<V, K>(slot: &Slot<V, K>) -> u64 {
    slot.id.table_bits
}

impl<V: Value, K: Kept> Shard<V, K> {
    fn roll(&mut self) -> u64 {
        let mut x = self.dice;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.dice = x;
        x
    }

    /// Removes the entry that matters least among [`SAMPLE`] drawn at random; see the module
    /// documentation.
    fn evict_one(&mut self, now: Duration, per_shard: usize) {
        let buckets = self.slots.num_buckets();
        if buckets == 0 {
            return;
        }
        let mut victim: Option<(usize, (u64, Reverse<u32>))> = None;
        let mut seen = 0;
        // A small shard is looked at whole; a larger one at random buckets.
        let whole = buckets <= PROBES;
        for probe in 0..PROBES.min(buckets) {
            // `buckets` is a power of two.
            let index = if whole {
                probe
            } else {
                (self.roll() as usize) & (buckets - 1)
            };
            let Some(slot) = self.slots.get_bucket(index) else {
                continue;
            };
            if slot.value.ended(now) {
                victim = Some((index, (0, Reverse(u32::MAX))));
                break;
            }
            let age = self.made.wrapping_sub(slot.born);
            // A returning key weighs as two hits while the sketch remembers its arrival.
            let remembered = slot.returning && (age as usize) < REMEMBERED * per_shard;
            let weight = slot.value.weight(now).max(2 * u64::from(remembered));
            let rank = (weight, Reverse(age));
            if victim.is_none_or(|(_, least)| rank < least) {
                victim = Some((index, rank));
            }
            seen += 1;
            if seen == SAMPLE && !whole {
                break;
            }
        }
        let removed = match victim {
            Some((index, _)) => self.slots.get_bucket_entry(index).ok().map(|e| e.remove()),
            None => {
                // No entry met by chance: take any.
                let id = self.slots.iter().next().map(|slot| slot.id);
                id.and_then(|id| {
                    self.slots
                        .find_entry(id.table_bits, |slot| slot.id == id)
                        .ok()
                        .map(|e| e.remove())
                })
            }
        };
        drop(removed);
    }
}

/// The table: see the module documentation.
pub struct CounterTable<V, K = ()> {
    ids: Ids,
    shards: Box<[RwLock<Shard<V, K>>]>,
    layout: Layout,
    /// Entries now, counted by hand so that reading it takes no lock.
    live: AtomicUsize,
    evictions: AtomicU64,
}

impl<V: Value, K: Kept> CounterTable<V, K> {
    /// A table of at most `bytes` (its slots; see [`Layout`]) and at most `max_entries`.
    pub fn new(bytes: usize, max_entries: usize) -> CounterTable<V, K> {
        let layout = Layout::new(bytes, max_entries, Self::bucket_bytes());
        let ids = Ids::random();
        let seed = ids.of(b"dice").shard_bits | 1;
        let shards = (0..layout.shards)
            .map(|i| {
                RwLock::new(Shard {
                    slots: HashTable::new(),
                    made: 0,
                    dice: seed.wrapping_mul(i as u64 * 2 + 1) | 1,
                    arrivals: None,
                })
            })
            .collect();
        CounterTable {
            ids,
            shards,
            layout,
            live: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// What one bucket costs: a slot, and hashbrown's control byte.
    pub fn bucket_bytes() -> usize {
        std::mem::size_of::<Slot<V, K>>() + 1
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The name of `key`'s entry.
    pub fn id(&self, key: &[u8]) -> Id {
        self.ids.of(key)
    }

    fn shard(&self, id: Id) -> &RwLock<Shard<V, K>> {
        // The high bits of `shard_bits × shards`: a uniform pick for any shard count.
        let index = ((u128::from(id.shard_bits) * self.shards.len() as u128) >> 64) as usize;
        &self.shards[index]
    }

    /// The entry `id`, read-locked, if there is one.
    pub fn get(&self, id: Id) -> Option<MappedRwLockReadGuard<'_, V>> {
        let shard = self.shard(id).read();
        RwLockReadGuard::try_map(shard, |shard| {
            shard
                .slots
                .find(id.table_bits, |slot| slot.id == id)
                .map(|slot| &slot.value)
        })
        .ok()
    }

    /// The entry `id` (of `key`), write-locked, made if there is none; in a full shard, making
    /// it evicts another first. `now` (or a moment before it) tells which windows have ended.
    /// Also whether the entry was just made for a key that had arrived at the full shard before:
    /// its earlier entry was evicted, with what it had counted.
    pub fn get_or_make(
        &self,
        id: Id,
        key: &[u8],
        now: Duration,
    ) -> (MappedRwLockWriteGuard<'_, V>, bool) {
        let mut shard = self.shard(id).write();
        let absent = shard
            .slots
            .find(id.table_bits, |slot| slot.id == id)
            .is_none();
        let mut returning = false;
        if absent {
            if shard.slots.len() >= self.layout.per_shard {
                let per_shard = self.layout.per_shard;
                returning = shard
                    .arrivals
                    .get_or_insert_with(|| Arrivals::new(generation(per_shard)))
                    .arrive(id.table_bits, id.shard_bits);
                shard.evict_one(now, per_shard);
                self.evictions.fetch_add(1, Ordering::Relaxed);
            } else {
                self.live.fetch_add(1, Ordering::Relaxed);
            }
        }
        let born = shard.made;
        shard.made = born.wrapping_add(u32::from(absent));
        let entry = RwLockWriteGuard::map(shard, |shard| {
            let slot = shard
                .slots
                .entry(id.table_bits, |slot| slot.id == id, slot_hash)
                .or_insert_with(|| Slot {
                    id,
                    born,
                    returning,
                    value: V::default(),
                    kept: K::keep(key),
                });
            &mut slot.into_mut().value
        });
        (entry, absent && returning)
    }

    /// Entries now.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Entries evicted to make room, since the table was made.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Bytes the shards' tables (and sketches) hold now.
    pub fn bytes(&self) -> usize {
        let sketch = Arrivals::bytes_for(generation(self.layout.per_shard));
        self.shards
            .iter()
            .map(|shard| {
                let shard = shard.read();
                let arrivals = if shard.arrivals.is_some() { sketch } else { 0 };
                shard.slots.allocation_size() + arrivals
            })
            .sum()
    }

    /// Removes the entries whose windows have all ended by `now`, one shard at a time (each
    /// lock held for one shard's walk only), and gives a shard's spare room back once it is
    /// mostly empty; returns how many were removed.
    pub fn sweep(&self, now: Duration) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            let before = shard.slots.len();
            shard.slots.retain(|slot| !slot.value.ended(now));
            let after = shard.slots.len();
            removed += before - after;
            // Only when mostly empty: shrinking a table about to grow again rehashes it often.
            if shard.slots.capacity() > 4 * after.max(MIN_SHARD_BUCKETS) {
                shard.slots.shrink_to(after, slot_hash);
            }
            drop(shard);
        }
        self.live.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Removes every entry, giving back what each kept and held.
    pub fn drain(&self) -> Vec<(K, V)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            out.extend(shard.slots.drain().map(|slot| (slot.kept, slot.value)));
        }
        self.live.fetch_sub(out.len(), Ordering::Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value whose weight is set by hand; ended once `now` reaches `ends`.
    #[derive(Default)]
    struct Hits {
        count: u64,
        ends: u64,
    }

    impl Value for Hits {
        fn ended(&self, now: Duration) -> bool {
            self.ends != 0 && now.as_secs() >= self.ends
        }
        fn weight(&self, _: Duration) -> u64 {
            self.count
        }
    }

    fn table(max_entries: usize) -> CounterTable<Hits> {
        CounterTable::new(usize::MAX / 2, max_entries)
    }

    fn make(table: &CounterTable<Hits>, name: &str, count: u64) {
        let id = table.id(name.as_bytes());
        table
            .get_or_make(id, name.as_bytes(), Duration::ZERO)
            .0
            .count = count;
    }

    fn has(table: &CounterTable<Hits>, name: &str) -> bool {
        table.get(table.id(name.as_bytes())).is_some()
    }

    #[test]
    fn a_layout_stays_within_its_budget() {
        let bucket = CounterTable::<Hits>::bucket_bytes();
        for bytes in [1 << 20, 10 << 20, 100 << 20, 1 << 30, 3 << 30] {
            let layout = Layout::new(bytes, usize::MAX, bucket);
            assert!(layout.bytes() <= bytes, "{layout:?} for {bytes}");
            assert!(
                layout.bytes() * 2 > bytes,
                "uses most of {bytes}: {layout:?}"
            );
            assert!(layout.per_shard < layout.buckets * 7 / 16);
        }
        let huge = Layout::new(usize::MAX / 2, usize::MAX, bucket);
        assert_eq!(huge.shards, 1 << 16, "a bounded number of shards");
        let few = Layout::new(1 << 30, 100, bucket);
        assert_eq!((few.shards, few.capacity()), (1, 100));
        assert_eq!(Layout::new(1 << 30, 1, bucket).capacity(), 1);
    }

    #[test]
    fn a_full_table_evicts_the_lowest_count_and_keeps_counting() {
        let table = table(8);
        for i in 0..7 {
            make(&table, &format!("flood-{i}"), 1);
        }
        make(&table, "heavy", 50);
        assert_eq!(table.len(), 8);
        for i in 7..200 {
            make(&table, &format!("flood-{i}"), 1);
            assert!(has(&table, "heavy"), "the heavy key outlives the flood");
        }
        assert_eq!(table.len(), 8, "never more than the cap");
        assert_eq!(table.evictions(), 193);
        assert!(table.bytes() > 0);
    }

    #[test]
    fn a_key_evicted_that_comes_back_outlives_keys_seen_once() {
        let table = table(1_000);
        let mut flood = 0..;
        let mut flood_once = |n: usize| {
            for i in flood.by_ref().take(n) {
                make(&table, &format!("flood-{i}"), 1);
            }
        };
        flood_once(1_000);
        make(&table, "returning", 1);
        flood_once(2_000);
        assert!(
            !has(&table, "returning"),
            "seen once, it went with the flood"
        );
        make(&table, "returning", 1);
        flood_once(4_000);
        assert!(
            has(&table, "returning"),
            "seen twice, it outranks the flood"
        );
        make(&table, "returning", 2);
        flood_once(20_000);
        assert!(has(&table, "returning"), "counted twice, it stays");
    }

    #[test]
    fn among_equal_counts_the_oldest_goes_first() {
        let table = table(8);
        for i in 0..8 {
            make(&table, &format!("old-{i}"), 1);
        }
        make(&table, "new", 1);
        assert!(has(&table, "new"));
        assert_eq!(
            (0..8).filter(|i| has(&table, &format!("old-{i}"))).count(),
            7
        );
    }

    #[test]
    fn ended_entries_go_first_and_are_swept() {
        let table = table(4);
        let names = ["a", "b", "c", "d"];
        for name in names {
            make(&table, name, 100);
        }
        table
            .get_or_make(table.id(b"c"), b"c", Duration::ZERO)
            .0
            .ends = 10;
        let id = table.id(b"e");
        table.get_or_make(id, b"e", Duration::from_secs(10)).0.count = 100;
        assert!(!has(&table, "c"), "the ended entry made room");
        assert!(names.iter().filter(|n| **n != "c").all(|n| has(&table, n)));
        table
            .get_or_make(table.id(b"a"), b"a", Duration::ZERO)
            .0
            .ends = 5;
        assert_eq!(table.sweep(Duration::from_secs(6)), 1);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn a_drained_table_gives_back_its_keys_and_is_empty() {
        let table: CounterTable<Hits, Box<[u8]>> = CounterTable::new(1 << 20, 100);
        for name in ["x", "y"] {
            let id = table.id(name.as_bytes());
            table
                .get_or_make(id, name.as_bytes(), Duration::ZERO)
                .0
                .count = 3;
        }
        let mut keys: Vec<Box<[u8]>> = table.drain().into_iter().map(|(k, _)| k).collect();
        keys.sort();
        assert_eq!(keys, [Box::from(&b"x"[..]), Box::from(&b"y"[..])]);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn ids_depend_on_the_table_s_key() {
        let (one, two) = (table(1), table(1));
        assert_eq!(one.id(b"k"), one.id(b"k"));
        assert_ne!(one.id(b"k"), two.id(b"k"));
        assert_ne!(one.id(b"k"), one.id(b"l"));
    }
}

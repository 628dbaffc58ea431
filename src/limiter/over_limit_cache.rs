//! The local over-limit cache (`--local-cache-bytes`, envoyproxy/ratelimit's
//! `LOCAL_CACHE_SIZE_IN_BYTES`): in Redis mode, the counters of a request that Redis refused
//! (or that Redis filled) are remembered here, so that a client that keeps sending after its
//! 429 is refused in this process, without a round trip, until one of its requests could pass.
//!
//! A cached refusal is one Redis would give too. Each entry keeps what Redis said of a counter
//! as a bound that only tightens while the entry is used:
//!
//! - a fixed window's count: within its window a count only grows (a refused request is taken
//!   back in the same atomic script), so the count in Redis is at least the one kept, and a
//!   request whose hits do not fit on top of it would not fit in Redis either;
//! - a refill counter's earliest moment for one more hit (its `Retry-After` for a request of
//!   one, from the time the call was made, less the millisecond Redis rounds it to): until
//!   then no request passes, however many replicas share it, since nobody can be admitted on a
//!   counter that has no room.
//!
//! An entry holds the limit it was made under and answers only requests counted against the
//! same limit (a descriptor's `limit` override may differ from call to call); a rule reload
//! empties the cache. When a request's counters are not all in the cache, or none refuses, Redis
//! is asked as usual. Eviction only costs a Redis call. In a Cluster, a request refused by one
//! slot is taken back from the others in a second step, so a count read in between may hold
//! hits that are then taken back: there an entry is trusted for [`CLUSTER_TRUST`] only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quick_cache::sync::Cache;

use super::algorithm::Standing;
use super::redis::Tag;
use super::store::{Batch, Count, Counting, Counts, Increment, is_over};

/// How long an entry made from a Cluster's answer is trusted (see the module documentation).
pub const CLUSTER_TRUST: Duration = Duration::from_secs(1);

/// What one entry takes, key, value and the cache's own bookkeeping, in bytes: the capacity is
/// `--local-cache-bytes` divided by this (checked by a test against the cache's own account).
pub const ENTRY_BYTES: usize = 176;

/// Counters Redis said are full, for answering their refusals here.
pub struct OverLimitCache {
    /// `None` when the cache is off (`--local-cache-bytes 0`).
    entries: Option<Cache<Key, Entry>>,
    /// The rules the entries were made under ([`crate::rules::RuleSet::generation`]).
    generation: AtomicU64,
    /// How long an entry is trusted, in microseconds (`u64::MAX`: until it no longer refuses).
    trust_us: u64,
}

/// One counter: its descriptor's [`Tag`], its window's length and how it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    tag: Tag,
    window_seconds: u32,
    counting: u8,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The limit the counter was full under, and a bucket's burst (else the limit).
    requests_per_unit: u32,
    ceiling: u32,
    /// Past this (µs since the epoch, this process's clock), the entry is not used.
    trusted_until_us: u64,
    known: Known,
}

#[derive(Debug, Clone, Copy)]
enum Known {
    /// A fixed window's count in window `index`.
    Fixed { index: u32, count: u64 },
    /// A refill counter: the requests it held and what remained when Redis answered, the
    /// earliest moment a request of one hit passes, and when the limit is whole again (µs
    /// since the epoch, this process's clock).
    Refill {
        value: u64,
        remaining: u64,
        passes_at_us: u64,
        full_at_us: u64,
    },
}

impl OverLimitCache {
    /// A cache of about `bytes` (0: off); with `trust`, an entry is used for that long at most.
    pub fn new(bytes: usize, trust: Option<Duration>) -> OverLimitCache {
        let items = bytes / ENTRY_BYTES;
        OverLimitCache {
            entries: (items > 0).then(|| Cache::new(items)),
            generation: AtomicU64::new(0),
            trust_us: trust.map_or(u64::MAX, |t| {
                u64::try_from(t.as_micros()).unwrap_or(u64::MAX)
            }),
        }
    }

    /// How many entries it holds at most (0: off).
    pub fn capacity(&self) -> usize {
        self.entries
            .as_ref()
            .map_or(0, |e| usize::try_from(e.capacity()).unwrap_or(usize::MAX))
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, Cache::len)
    }

    /// The entries made under other rules than `generation` are dropped.
    fn follow(&self, entries: &Cache<Key, Entry>, generation: u64) {
        let held = self.generation.load(Ordering::Relaxed);
        if held != generation
            && self
                .generation
                .compare_exchange(held, generation, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            entries.clear();
        }
    }

    /// The counts of a refusal of `batch`, when the cache holds every one of its counters and
    /// one that is enforced has no room for its hits; `None`: ask Redis.
    pub fn refusal(&self, batch: &Batch, tags: &[Tag], generation: u64) -> Option<Counts> {
        let entries = self.entries.as_ref()?;
        self.follow(entries, generation);
        let mut refused = false;
        let mut counts = Counts::new();
        for inc in &batch.increments {
            let entry = entries.get(&key(tags, inc)?)?;
            let count = entry.count(inc)?;
            refused |= inc.enforced && count.over_limit;
            counts.push(count);
        }
        refused.then_some(counts)
    }

    /// Keeps what Redis answered for `batch` when its next request would be refused: when this
    /// one was, or when an enforced counter has no room left.
    pub fn remember(
        &self,
        batch: &Batch,
        tags: &[Tag],
        generation: u64,
        admitted: bool,
        counts: &[Count],
    ) {
        let Some(entries) = &self.entries else {
            return;
        };
        let full = |(inc, count): (&Increment, &Count)| {
            inc.enforced
                && match count.standing {
                    None => count.value >= u64::from(inc.ceiling()),
                    Some(standing) => standing.remaining == 0,
                }
        };
        if admitted && !batch.increments.iter().zip(counts).any(full) {
            return;
        }
        self.follow(entries, generation);
        for (inc, count) in batch.increments.iter().zip(counts) {
            if let Some(key) = key(tags, inc) {
                entries.insert(key, Entry::of(inc, count, self.trust_us));
            }
        }
    }
}

fn key(tags: &[Tag], inc: &Increment) -> Option<Key> {
    Some(Key {
        tag: *tags.get(inc.key)?,
        window_seconds: inc.window_seconds,
        counting: match inc.counting {
            Counting::Fixed => 0,
            Counting::Sliding => 1,
            Counting::Bucket { .. } => 2,
        },
    })
}

/// Rounds microseconds up to milliseconds.
fn ms(us: u64) -> u64 {
    us.div_ceil(1000)
}

impl Entry {
    /// What Redis said of `inc`'s counter, in a request made at `inc.now_us`.
    fn of(inc: &Increment, count: &Count, trust_us: u64) -> Entry {
        let now = inc.now_us;
        let known = match count.standing {
            None => Known::Fixed {
                index: inc.window_index,
                count: count.value,
            },
            Some(standing) => Known::Refill {
                value: count.value,
                remaining: standing.remaining,
                // Redis's time was read after `now`; its answer is rounded up to a millisecond.
                // A request of several hits says when those pass, not one: no bound from it.
                passes_at_us: if inc.hits <= 1 {
                    (now + standing.retry_in_ms * 1000).saturating_sub(999)
                } else {
                    now
                },
                full_at_us: now.saturating_add(standing.reset_in_ms.saturating_mul(1000)),
            },
        };
        Entry {
            requests_per_unit: inc.requests_per_unit,
            ceiling: inc.ceiling(),
            trusted_until_us: now.saturating_add(trust_us),
            known,
        }
    }

    /// The counter's count for `inc`, as Redis would at least say it; `None` when this entry
    /// does not speak for it (another limit, another window, or no longer trusted).
    fn count(&self, inc: &Increment) -> Option<Count> {
        let now = inc.now_us;
        if self.requests_per_unit != inc.requests_per_unit
            || self.ceiling != inc.ceiling()
            || now >= self.trusted_until_us
        {
            return None;
        }
        match self.known {
            Known::Fixed { index, count } => {
                if index != inc.window_index {
                    return None;
                }
                let limit = inc.requests_per_unit;
                let over_limit = if inc.enforced {
                    is_over(count.saturating_add(inc.hits), inc.hits, limit)
                } else {
                    is_over(count, inc.hits, limit)
                };
                Some(Count::fixed(count, over_limit))
            }
            Known::Refill {
                value,
                remaining,
                passes_at_us,
                full_at_us,
            } => {
                let over_limit = now < passes_at_us;
                Some(Count {
                    value,
                    over_limit,
                    standing: Some(Standing {
                        remaining: if over_limit { 0 } else { remaining },
                        reset_in_ms: ms(full_at_us.saturating_sub(now)),
                        retry_in_ms: if over_limit {
                            ms(passes_at_us - now)
                        } else {
                            0
                        },
                    }),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::limiter::CounterKey;
    use crate::limiter::redis::tags_of;

    const SECOND: u64 = 1_000_000;

    fn batch(counting: Counting, hits: u64, now_us: u64) -> Batch {
        Batch {
            keys: smallvec::smallvec![CounterKey::new("d", [("k", "v")].into_iter())],
            increments: smallvec::smallvec![Increment {
                key: 0,
                window_seconds: 60,
                window_index: u32::try_from(now_us / (60 * SECOND)).unwrap(),
                expires_in_ms: 1_000,
                requests_per_unit: 10,
                hits,
                enforced: true,
                counting,
                now_us,
            }],
        }
    }

    #[test]
    fn a_full_fixed_window_refuses_until_it_ends_and_only_what_does_not_fit() {
        let cache = OverLimitCache::new(1 << 20, None);
        let now = 600 * SECOND;
        let full = batch(Counting::Fixed, 1, now);
        let tags = tags_of(&full);
        // Admitted with room left: nothing kept.
        cache.remember(&full, &tags, 1, true, &[Count::fixed(9, false)]);
        assert_eq!(cache.len(), 0);
        assert!(cache.refusal(&full, &tags, 1).is_none());
        // The 10th of 10 filled it.
        cache.remember(&full, &tags, 1, true, &[Count::fixed(10, false)]);
        let refused = cache.refusal(&full, &tags, 1).unwrap();
        assert_eq!(refused[0], Count::fixed(10, true));
        // A check without hits is refused too; the next window is not known.
        assert!(
            cache
                .refusal(&batch(Counting::Fixed, 0, now), &tags, 1)
                .is_some()
        );
        assert!(
            cache
                .refusal(&batch(Counting::Fixed, 1, now + 60 * SECOND), &tags, 1)
                .is_none()
        );
        // Another limit (an override), or other rules: ask Redis.
        let mut raised = batch(Counting::Fixed, 1, now);
        raised.increments[0].requests_per_unit = 20;
        assert!(cache.refusal(&raised, &tags, 1).is_none());
        assert!(cache.refusal(&full, &tags, 2).is_none());
        assert_eq!(cache.len(), 0, "new rules empty the cache");
    }

    #[test]
    fn hits_that_fit_on_top_of_the_known_count_go_to_redis() {
        let cache = OverLimitCache::new(1 << 20, None);
        let now = 600 * SECOND;
        let five = batch(Counting::Fixed, 5, now);
        let tags = tags_of(&five);
        // Refused at 8 of 10 for 5 hits: 1 or 2 more would still fit.
        cache.remember(&five, &tags, 1, false, &[Count::fixed(8, true)]);
        assert!(cache.refusal(&five, &tags, 1).is_some());
        assert!(
            cache
                .refusal(&batch(Counting::Fixed, 2, now), &tags, 1)
                .is_none()
        );
        assert!(
            cache
                .refusal(&batch(Counting::Fixed, 3, now), &tags, 1)
                .is_some()
        );
    }

    #[test]
    fn a_refill_counter_refuses_until_one_hit_could_pass() {
        let cache = OverLimitCache::new(1 << 20, None);
        let now = 600 * SECOND;
        let bucket = Counting::Bucket { burst: 10 };
        let refused = batch(bucket, 1, now);
        let tags = tags_of(&refused);
        let standing = Standing {
            remaining: 0,
            reset_in_ms: 60_000,
            retry_in_ms: 6_000,
        };
        let count = Count {
            value: 10,
            over_limit: true,
            standing: Some(standing),
        };
        cache.remember(&refused, &tags, 1, false, &[count]);
        let later = cache
            .refusal(&batch(bucket, 1, now + 2 * SECOND), &tags, 1)
            .unwrap();
        let told = later[0].standing.unwrap();
        assert_eq!((told.remaining, told.retry_in_ms), (0, 4_000));
        assert_eq!(told.reset_in_ms, 58_000);
        // From the moment one hit could pass (less Redis's rounding), Redis is asked again.
        assert!(
            cache
                .refusal(&batch(bucket, 1, now + 6 * SECOND - 999), &tags, 1)
                .is_none()
        );
        // A refusal of several hits says nothing of one.
        let many = batch(bucket, 5, now);
        cache.remember(&many, &tags, 1, false, &[count]);
        assert!(cache.refusal(&refused, &tags, 1).is_none());
    }

    #[test]
    fn a_cluster_entry_is_trusted_for_a_while_only() {
        let cache = OverLimitCache::new(1 << 20, Some(CLUSTER_TRUST));
        let now = 600 * SECOND;
        let full = batch(Counting::Fixed, 1, now);
        let tags = tags_of(&full);
        cache.remember(&full, &tags, 1, false, &[Count::fixed(10, true)]);
        assert!(
            cache
                .refusal(&batch(Counting::Fixed, 1, now + SECOND / 2), &tags, 1)
                .is_some()
        );
        assert!(
            cache
                .refusal(&batch(Counting::Fixed, 1, now + SECOND), &tags, 1)
                .is_none()
        );
    }

    #[test]
    fn the_cache_stays_within_its_bytes() {
        for bytes in [1 << 20, 64 << 20] {
            let cache = OverLimitCache::new(bytes, None);
            let entries = cache.entries.as_ref().unwrap();
            let items = u32::try_from(bytes / ENTRY_BYTES * 2).unwrap();
            for i in 0..items {
                let mut tag = [0u8; 18];
                tag[..4].copy_from_slice(&i.to_le_bytes());
                let key = Key {
                    tag,
                    window_seconds: 60,
                    counting: 0,
                };
                let entry = Entry {
                    requests_per_unit: 1,
                    ceiling: 1,
                    trusted_until_us: u64::MAX,
                    known: Known::Fixed { index: 0, count: 1 },
                };
                entries.insert(key, entry);
            }
            let used = entries.memory_used().total();
            assert!(used <= bytes, "{used} bytes for a cache of {bytes}");
            assert!(
                used >= bytes * 3 / 4,
                "{used} bytes of {bytes}: ENTRY_BYTES is too large"
            );
            assert!(
                cache.len() >= bytes / ENTRY_BYTES * 9 / 10,
                "{}",
                cache.len()
            );
        }
    }
}

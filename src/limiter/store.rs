//! The store contract: what every counter store takes and answers, whatever it keeps its
//! counters in (process memory, one Redis, a Redis Cluster).
//!
//! A store takes one request's counters as a [`Batch`] and counts them all or nothing: if an
//! enforced counter has no room for its hits, none of the request's counters move, shadow ones
//! included, and the answer says which counter refused. It knows nothing of rules, matching or
//! answers; the window each counter counts in is given (time is the caller's), so a store is
//! tested with any instant (`tests/store_contract.rs` runs one suite against every store).
//!
//! "Is this count over its limit" is [`is_over`] here, and once more in Lua in the Redis
//! script (`redis_script.rs`); nowhere else.

use std::future::Future;

use smallvec::SmallVec;

use super::algorithm::{Bucket, Sliding, Standing};
use super::key::CounterKey;

/// One request's counters: the descriptor keys, and one increment per window. Inline for
/// requests of up to two descriptors and four windows, so a typical batch is not allocated.
#[derive(Debug, Default)]
pub struct Batch {
    pub keys: SmallVec<[CounterKey; 2]>,
    pub increments: SmallVec<[Increment; 4]>,
}

/// One [`Count`] per increment of a [`Batch`], in order.
pub type Counts = SmallVec<[Count; 4]>;

/// One counter's change in a request.
#[derive(Debug)]
pub struct Increment {
    /// Index of the descriptor's key in [`Batch::keys`].
    pub key: usize,
    /// The window's length in seconds: with the key, it names the counter.
    pub window_seconds: u32,
    /// The window number that `now` falls in.
    pub window_index: u32,
    /// How long the window has left, in milliseconds (at least 1): a store that expires
    /// counters (Redis) keeps this one that long. Relative, so that a caller whose clock is off
    /// cannot set an expiry in the past and lose the counter at once.
    pub expires_in_ms: u64,
    pub requests_per_unit: u32,
    /// 0 checks without counting: over when the counter has already reached its limit.
    pub hits: u64,
    /// `false` for limits that never refuse (shadow mode, quota mode across several groups):
    /// counted when the request is admitted, past their limit too.
    pub enforced: bool,
    /// How the counter counts; a refill counter's key is its own (see [`CounterKey::refill`]).
    pub counting: Counting,
    /// Now, in microseconds since the Unix epoch, by the caller's clock: a token bucket in
    /// memory refills by it (Redis reads its own `TIME`).
    pub now_us: u64,
}

impl Increment {
    /// The window's length in milliseconds.
    pub fn window_ms(&self) -> u64 {
        u64::from(self.window_seconds) * 1000
    }

    /// How far into its window `now` is, in milliseconds.
    pub fn elapsed_ms(&self) -> u64 {
        self.window_ms().saturating_sub(self.expires_in_ms)
    }

    /// The token bucket this increment counts in (`burst` from [`Counting::Bucket`]).
    pub fn bucket(&self, burst: u32) -> Bucket {
        Bucket {
            period_us: u64::from(self.window_seconds) * 1_000_000,
            rate: self.requests_per_unit,
            burst,
        }
    }

    /// The sliding window this increment counts in.
    pub fn sliding(&self) -> Sliding {
        Sliding {
            length_ms: self.window_ms(),
            limit: self.requests_per_unit,
        }
    }

    /// The most requests the counter holds: a bucket's burst, else the limit.
    pub fn ceiling(&self) -> u32 {
        match self.counting {
            Counting::Bucket { burst } => burst,
            Counting::Fixed | Counting::Sliding => self.requests_per_unit,
        }
    }
}

/// How one counter counts (see `algorithm.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Counting {
    /// From 0 in each window aligned to the epoch.
    #[default]
    Fixed,
    /// The two-window weighted estimate.
    Sliding,
    /// A token bucket holding `burst` at most.
    Bucket { burst: u32 },
}

impl Counting {
    /// Whether the counter refills as time passes (its own key, its own answer).
    pub fn refills(self) -> bool {
        self != Counting::Fixed
    }
}

/// What one counter says after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Count {
    /// The count after this request (or, if the request was refused, the count it left alone);
    /// for a refill counter, the requests it holds (its limit less what remains).
    pub value: u64,
    /// This counter's limit is exceeded by the request: an enforced counter whose hits do not
    /// fit (the one that refused, and any other that would not have taken its hits either); a
    /// counter that never refuses whose count is over its limit.
    pub over_limit: bool,
    /// A refill counter's own answer to the client; `None` for a fixed window, whose answer
    /// follows from its count and its window.
    pub standing: Option<Standing>,
}

impl Count {
    /// A fixed window's count.
    pub fn fixed(value: u64, over_limit: bool) -> Count {
        Count {
            value,
            over_limit,
            standing: None,
        }
    }
}

/// Whether a counter that reads `value` after a request's `hits` is over `limit`: past it, or,
/// for a check without hits, at it (one more hit would not pass).
pub fn is_over(value: u64, hits: u64, limit: u32) -> bool {
    if hits == 0 {
        value >= u64::from(limit)
    } else {
        value > u64::from(limit)
    }
}

/// Why a store could not count a request, classified by what the caller must do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// About this request only: the store could not count it, and counted nothing of it.
    #[error("{0}")]
    Refused(String),
    /// The store cannot count now (unreachable, too slow, a broken answer): retry later or fall
    /// back, whatever the request.
    #[error("{0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Whether the store itself failed, rather than this request: the failure policy applies.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Whether a request was admitted, and each counter's [`Count`].
pub type Counted = (bool, Counts);

/// A counter store: counts one request's [`Batch`], all or nothing.
pub trait CounterStore: Send + Sync {
    fn count(&self, batch: &Batch) -> impl Future<Output = Result<Counted, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::is_over;

    #[test]
    fn over_means_past_the_limit_or_at_it_for_a_check() {
        assert!(!is_over(10, 1, 10));
        assert!(is_over(11, 1, 10));
        assert!(is_over(12, 5, 10));
        assert!(!is_over(9, 0, 10));
        assert!(is_over(10, 0, 10));
        assert!(is_over(0, 0, 0), "a limit of 0 refuses even a check");
        assert!(is_over(1, 1, 0));
    }
}

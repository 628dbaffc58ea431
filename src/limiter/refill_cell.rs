//! A refill counter in one atomic word, as the memory store keeps it beside fixed windows.
//!
//! - A token bucket's word is its theoretical arrival time in microseconds (0: never used,
//!   full). Below 2^53, so its top bit is clear.
//! - A sliding window's word has its top bit set, then the number of its current window
//!   modulo 2^15, then the current and the previous window's counts, 24 bits each. Moving to a
//!   new window and counting are one compare-and-swap, as for a fixed window. A count stops at
//!   [`SLIDING_MAX`]: a sliding window never admits more than that in a window (16,777,215). The
//!   window number modulo 2^15 tells the window now from the one before; a word left untouched
//!   for 32,768 windows could be misread, but the sweep removes a sliding window two windows
//!   after its last hit.
//!
//! The arithmetic is `algorithm.rs`'s; this module only reads and writes the word.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::algorithm::{SlidingCounts, Standing};
use super::store::{Counting, Increment};
use super::window;

/// The most a sliding window counts in one window, in memory.
pub const SLIDING_MAX: u64 = (1 << 24) - 1;
const SLIDING: u64 = 1 << 63;
const INDEX_MASK: u32 = (1 << 15) - 1;

/// What to do with a refill counter (the memory store's reserve, add and peek).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Take the hits only if they fit.
    Reserve,
    /// Take them whatever the limit (shadow mode).
    Add,
    /// Only read.
    Peek,
}

/// The window counted in (for a give-back) and the requests held, or the requests held when
/// the hits do not fit; and the counter's answer to the client after it.
pub type Ran = (Result<(u32, u64), u64>, Standing);

/// A sliding window's counts in window `index`, and the window they are in: `index`, or the
/// one after when a caller whose clock is ahead moved the word on.
fn decode(word: u64, index: u32) -> (u64, u64, u32) {
    if word & SLIDING == 0 {
        return (0, 0, index);
    }
    let stored = (word >> 48) as u32 & INDEX_MASK;
    let current = (word >> 24) & SLIDING_MAX;
    let previous = word & SLIDING_MAX;
    match (index & INDEX_MASK).wrapping_sub(stored) & INDEX_MASK {
        0 => (current, previous, index),
        1 => (0, current, index),
        INDEX_MASK => (current, previous, index.wrapping_add(1)),
        _ => (0, 0, index),
    }
}

fn encode(index: u32, current: u64, previous: u64) -> u64 {
    SLIDING
        | u64::from(index & INDEX_MASK) << 48
        | current.min(SLIDING_MAX) << 24
        | previous.min(SLIDING_MAX)
}

/// The sliding window's counts at the increment's moment, and the window they are in.
fn sliding_counts(word: u64, inc: &Increment) -> (SlidingCounts, u32) {
    let (current, previous, at) = decode(word, inc.window_index);
    let elapsed_ms = if at == inc.window_index {
        inc.elapsed_ms()
    } else {
        0
    };
    let counts = SlidingCounts {
        previous,
        current,
        elapsed_ms,
    };
    (counts, at)
}

/// Does `take` to the refill counter `cell` for `inc` (which counts with a refill algorithm).
pub fn run(cell: &AtomicU64, inc: &Increment, take: Take) -> Ran {
    match inc.counting {
        Counting::Bucket { burst } => run_bucket(cell, inc, burst, take),
        Counting::Sliding | Counting::Fixed => run_sliding(cell, inc, take),
    }
}

fn run_sliding(cell: &AtomicU64, inc: &Increment, take: Take) -> Ran {
    let sliding = inc.sliding();
    let mut word = cell.load(Ordering::Acquire);
    loop {
        let (counts, at) = sliding_counts(word, inc);
        let used = sliding.used(&counts);
        let standing = sliding.standing(&counts, inc.hits);
        let fits =
            sliding.fits(&counts, inc.hits) && counts.current + inc.hits.max(1) <= SLIDING_MAX;
        match take {
            Take::Peek => return (Ok((at, used)), standing),
            Take::Reserve if !fits => return (Err(used), standing),
            Take::Reserve | Take::Add if inc.hits == 0 => return (Ok((at, used)), standing),
            Take::Reserve | Take::Add => {}
        }
        let after = SlidingCounts {
            current: counts.current.saturating_add(inc.hits).min(SLIDING_MAX),
            ..counts
        };
        let next = encode(at, after.current, after.previous);
        match cell.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                let standing = sliding.standing(&after, inc.hits);
                return (Ok((at, sliding.used(&after))), standing);
            }
            Err(actual) => word = actual,
        }
    }
}

fn run_bucket(cell: &AtomicU64, inc: &Increment, burst: u32, take: Take) -> Ran {
    let bucket = inc.bucket(burst);
    let mut tat = cell.load(Ordering::Acquire);
    loop {
        let used = bucket.used(tat, inc.now_us);
        let standing = bucket.standing(tat, inc.now_us, inc.hits);
        let step = bucket.take(tat, inc.now_us, inc.hits, take == Take::Reserve);
        match take {
            Take::Peek => return (Ok((0, used)), standing),
            Take::Reserve if !step.fits => return (Err(used), standing),
            Take::Reserve | Take::Add if inc.hits == 0 => return (Ok((0, used)), standing),
            Take::Reserve | Take::Add => {}
        }
        match cell.compare_exchange_weak(tat, step.tat, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                let standing = bucket.standing(step.tat, inc.now_us, inc.hits);
                return (Ok((0, bucket.used(step.tat, inc.now_us))), standing);
            }
            Err(actual) => tat = actual,
        }
    }
}

/// Gives back what a reservation made in window `at` took; the counter's answer then.
pub fn give_back(cell: &AtomicU64, inc: &Increment, at: u32) -> Standing {
    let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
        Some(match inc.counting {
            Counting::Bucket { burst } => inc.bucket(burst).give_back(word, inc.hits),
            Counting::Sliding | Counting::Fixed => {
                let (current, previous, now_at) = decode(word, at);
                if now_at == at {
                    encode(at, current.saturating_sub(inc.hits), previous)
                } else {
                    // The word moved on: those hits count in the previous window now.
                    encode(now_at, current, previous.saturating_sub(inc.hits))
                }
            }
        })
    });
    run(cell, inc, Take::Peek).1
}

/// What an unused refill counter tells a client: all of it is available.
pub fn fresh_standing(inc: &Increment) -> Standing {
    run(&AtomicU64::new(0), inc, Take::Peek).1
}

/// Whether the refill counter with word `word`, of a window of `seconds`, no longer weighs at
/// `now`: a bucket full again, a sliding window whose counts have both slid out.
pub fn ended(word: u64, seconds: u32, now: Duration) -> bool {
    if word & SLIDING == 0 {
        return word <= micros(now);
    }
    let (current, previous, _) = decode(word, window::position(now, seconds).index);
    current == 0 && previous == 0
}

/// What evicting the counter forgets, roughly: a sliding window's larger count, a bucket's debt
/// in seconds.
pub fn weight(word: u64, seconds: u32, now: Duration) -> u64 {
    if word & SLIDING == 0 {
        return word.saturating_sub(micros(now)) / 1_000_000;
    }
    let (current, previous, _) = decode(word, window::position(now, seconds).index);
    current.max(previous)
}

/// Microseconds since the epoch.
fn micros(now: Duration) -> u64 {
    u64::try_from(now.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sliding_word_tells_this_window_the_one_before_and_older_ones_apart() {
        let word = encode(70_000, 5, 3);
        assert_eq!(decode(word, 70_000), (5, 3, 70_000));
        assert_eq!(decode(word, 70_001), (0, 5, 70_001));
        assert_eq!(decode(word, 70_002), (0, 0, 70_002));
        assert_eq!(
            decode(word, 69_999),
            (5, 3, 70_000),
            "a caller one window behind"
        );
        assert_eq!(decode(0, 12), (0, 0, 12));
        assert_eq!(decode(encode(1, u64::MAX, 0), 1).0, SLIDING_MAX);
    }

    #[test]
    fn words_end_when_they_no_longer_weigh() {
        let seconds = 60;
        let word = encode(100, 1, 0);
        assert!(!ended(word, seconds, Duration::from_secs(100 * 60 + 5)));
        assert!(!ended(word, seconds, Duration::from_secs(101 * 60 + 5)));
        assert!(ended(word, seconds, Duration::from_secs(102 * 60)));
        assert!(ended(0, seconds, Duration::from_secs(5)));
        let tat = 10_000_000;
        assert!(!ended(tat, seconds, Duration::from_secs(9)));
        assert!(ended(tat, seconds, Duration::from_secs(10)));
        assert_eq!(weight(tat, seconds, Duration::from_secs(7)), 3);
    }
}

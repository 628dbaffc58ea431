//! The refill algorithms: when a counter's hits fit, and what the counter tells the client.
//!
//! A fixed window (envoyproxy/ratelimit's only algorithm) lives in `store.rs` and `window.rs`.
//! The two here refill as time passes, so a client that spent its limit may send again before
//! a whole window has gone by:
//!
//! - [`Bucket`], a token bucket in GCRA form: one number per counter, the *theoretical arrival
//!   time* (TAT, microseconds since the Unix epoch), how far the bucket's debt runs ahead of
//!   now. `requests_per_unit` per window refill it; it holds `burst` at most.
//! - [`Sliding`], the two-window weighted estimate: the count of the window now and of the one
//!   before, the latter weighted by how much of it still lies inside the last window-length of
//!   time. It admits at most the limit in any aligned window, and fewer than twice the limit in
//!   any window-long span (the worst case needs the previous window's hits all at its very
//!   end); with hits spread evenly the estimate is the true count.
//!
//! The sliding window is computed exactly, in integers. The bucket's interval (period / rate)
//! is a fraction: each request's cost is rounded up to a whole microsecond (`f64`, whose
//! integers are exact below 2^53; rule loading bounds a bucket's refill time, so every time in
//! microseconds stays below that: [`MAX_REFILL_US`]).

/// A bucket never takes longer than this to refill from empty (68 years, the longest window):
/// keeps every time in microseconds below 2^53.
pub const MAX_REFILL_US: f64 = crate::rules::MAX_WINDOW_SECONDS as f64 * 1e6;

/// What a counter tells the client after a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// Requests that would pass now.
    pub remaining: u64,
    /// Until the limit is fully available again, in milliseconds.
    pub reset_in_ms: u64,
    /// Until a request like this one would pass, in milliseconds (0 when it passed); never more
    /// than `reset_in_ms` (a request larger than the whole limit never passes: then Reset).
    pub retry_in_ms: u64,
}

/// A token bucket of `rate` requests per `period_us`, holding `burst` at most.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub period_us: u64,
    pub rate: u32,
    pub burst: u32,
}

/// What a bucket does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketStep {
    /// The request's hits fit (for a check without hits: one more would fit).
    pub fits: bool,
    /// The TAT to store: moved by the hits when they are taken, else as it was.
    pub tat: u64,
}

impl Bucket {
    /// Microseconds between two requests at the refill rate.
    fn interval(&self) -> f64 {
        self.period_us as f64 / f64::from(self.rate)
    }

    /// Whether the bucket refuses everything (a rate or a burst of 0).
    fn closed(&self) -> bool {
        self.rate == 0 || self.burst == 0
    }

    /// What `n` requests cost, in microseconds: n × interval, rounded up. Requests beyond the
    /// burst never fit, so they are counted as one more than the burst.
    fn cost(&self, n: u64) -> u64 {
        let n = n.min(u64::from(self.burst) + 1) as f64;
        (n * self.interval()).ceil() as u64
    }

    /// The debt a full burst makes: the most the TAT may run ahead of now.
    fn capacity(&self) -> u64 {
        self.cost(u64::from(self.burst))
    }

    /// `hits` (0: a check of one, counting nothing) at `now` (µs) against a bucket whose TAT is
    /// `tat` (0: never used, full). `enforced == false` (shadow mode) takes the hits whether or
    /// not they fit, its debt capped so that it cannot grow without bound.
    pub fn take(&self, tat: u64, now: u64, hits: u64, enforced: bool) -> BucketStep {
        if self.closed() {
            return BucketStep { fits: false, tat };
        }
        let base = tat.max(now);
        let need = base - now + self.cost(hits.max(1));
        let fits = need <= self.capacity();
        let tat = if hits == 0 {
            tat
        } else if fits {
            base + self.cost(hits)
        } else if !enforced {
            base.min(now + self.capacity()) + self.cost(hits)
        } else {
            tat
        };
        BucketStep { fits, tat }
    }

    /// Gives back what `hits` took (a request refused by another of its counters).
    pub fn give_back(&self, tat: u64, hits: u64) -> u64 {
        tat.saturating_sub(self.cost(hits))
    }

    /// What a bucket whose TAT is `tat` tells a client at `now`, for a request of `hits`.
    pub fn standing(&self, tat: u64, now: u64, hits: u64) -> Standing {
        if self.closed() {
            let period = self.period_us.div_ceil(1000);
            return Standing {
                remaining: 0,
                reset_in_ms: period,
                retry_in_ms: period,
            };
        }
        let debt = tat.saturating_sub(now);
        let capacity = self.capacity();
        let remaining = if debt >= capacity {
            0
        } else {
            (((capacity - debt) as f64 / self.interval()).floor() as u64).min(u64::from(self.burst))
        };
        let reset_in_ms = debt.div_ceil(1000);
        let need = debt + self.cost(hits.max(1));
        let retry_in_ms = if need <= capacity {
            0
        } else if hits > u64::from(self.burst) {
            reset_in_ms
        } else {
            (need - capacity).div_ceil(1000).min(reset_in_ms)
        };
        Standing {
            remaining,
            reset_in_ms,
            retry_in_ms,
        }
    }

    /// Requests the counter holds now (its debt in intervals, rounded up), for statistics and
    /// for shadow mode, whose debt may pass the burst.
    pub fn used(&self, tat: u64, now: u64) -> u64 {
        if self.closed() {
            return 0;
        }
        (tat.saturating_sub(now) as f64 / self.interval()).ceil() as u64
    }
}

/// A sliding window of `length_ms` that admits `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sliding {
    pub length_ms: u64,
    pub limit: u32,
}

/// A sliding window's counts at one moment: the window now and the one before, and how far
/// into the window now it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingCounts {
    pub previous: u64,
    pub current: u64,
    pub elapsed_ms: u64,
}

impl Sliding {
    /// The estimate of the hits within the last window-length, times the window's length:
    /// the previous window's count times what is left of it, plus the current one's count
    /// times the whole length. Exact: integers, in 128 bits.
    fn weighted(&self, c: &SlidingCounts) -> u128 {
        let left = self.length_ms.saturating_sub(c.elapsed_ms);
        u128::from(c.previous) * u128::from(left) + u128::from(c.current) * self.length()
    }

    fn length(&self) -> u128 {
        u128::from(self.length_ms.max(1))
    }

    /// What the limit weighs, in the units of [`Sliding::weighted`].
    fn ceiling(&self) -> u128 {
        u128::from(self.limit) * self.length()
    }

    /// Whether `hits` (0: a check of one) fit: estimate + hits ≤ limit.
    pub fn fits(&self, c: &SlidingCounts, hits: u64) -> bool {
        self.weighted(c) + u128::from(hits.max(1)) * self.length() <= self.ceiling()
    }

    /// What the counts tell a client, for a request of `hits`.
    pub fn standing(&self, c: &SlidingCounts, hits: u64) -> Standing {
        let length = self.length();
        let remaining = self.ceiling().saturating_sub(self.weighted(c)) / length;
        let to_next = self.length_ms.saturating_sub(c.elapsed_ms);
        let reset_in_ms = if c.current > 0 {
            to_next + self.length_ms
        } else if c.previous > 0 {
            to_next
        } else {
            0
        };
        let n = hits.max(1);
        let limit = u64::from(self.limit);
        // When, into a window, a count `weighing` from the window before has slid out enough to
        // leave room for `room` requests: weighing × (length − t) ≤ room × length.
        let slid_out_at = |room: u64, weighing: u64| {
            let left = u128::from(room) * length / u128::from(weighing);
            u64::try_from(length.saturating_sub(left)).unwrap_or(u64::MAX)
        };
        let retry_in_ms = if self.fits(c, hits) {
            0
        } else if c.current + n <= limit && c.previous > 0 {
            // Later in this window, once enough of the previous one has slid out.
            slid_out_at(limit - c.current - n, c.previous).saturating_sub(c.elapsed_ms)
        } else if n <= limit && c.current > 0 {
            // In the next window, once enough of this one has slid out.
            to_next.saturating_add(slid_out_at(limit - n, c.current))
        } else {
            reset_in_ms
        };
        Standing {
            remaining: u64::try_from(remaining).unwrap_or(u64::MAX),
            reset_in_ms,
            retry_in_ms: retry_in_ms.min(reset_in_ms),
        }
    }

    /// Requests the counter holds now, for statistics: the estimate, rounded up.
    pub fn used(&self, c: &SlidingCounts) -> u64 {
        u64::try_from(self.weighted(c).div_ceil(self.length())).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE_US: u64 = 60_000_000;

    fn ten_a_minute() -> Bucket {
        Bucket {
            period_us: MINUTE_US,
            rate: 10,
            burst: 10,
        }
    }

    /// Takes `n` single requests at `now`; how many fit.
    fn spend(bucket: &Bucket, tat: &mut u64, now: u64, n: u64) -> u64 {
        let mut admitted = 0;
        for _ in 0..n {
            let step = bucket.take(*tat, now, 1, true);
            *tat = step.tat;
            admitted += u64::from(step.fits);
        }
        admitted
    }

    #[test]
    fn a_bucket_admits_its_burst_then_one_per_interval() {
        let bucket = ten_a_minute();
        let now = 1_800_000_000_000_000;
        let mut tat = 0;
        assert_eq!(spend(&bucket, &mut tat, now, 15), 10);
        let s = bucket.standing(tat, now, 1);
        assert_eq!(
            (s.remaining, s.reset_in_ms, s.retry_in_ms),
            (0, 60_000, 6_000)
        );
        // One interval later exactly one more passes.
        assert_eq!(spend(&bucket, &mut tat, now + 5_999_999, 1), 0);
        assert_eq!(spend(&bucket, &mut tat, now + 6_000_000, 2), 1);
        // After a whole period it is full again.
        let later = now + 6_000_000 + MINUTE_US;
        assert_eq!(bucket.standing(tat, later, 1).remaining, 10);
        assert_eq!(bucket.standing(tat, later, 1).reset_in_ms, 0);
        assert_eq!(spend(&bucket, &mut tat, later, 11), 10);
    }

    #[test]
    fn a_burst_larger_than_the_rate_admits_the_burst_and_refills_at_the_rate() {
        let bucket = Bucket {
            period_us: 1_000_000,
            rate: 2,
            burst: 6,
        };
        let now = 1_000_000_000;
        let mut tat = 0;
        assert_eq!(spend(&bucket, &mut tat, now, 10), 6);
        assert_eq!(bucket.standing(tat, now, 1).reset_in_ms, 3_000);
        assert_eq!(spend(&bucket, &mut tat, now + 1_000_000, 10), 2);
    }

    #[test]
    fn a_request_larger_than_the_burst_never_fits_and_waits_for_the_reset() {
        let bucket = ten_a_minute();
        let now = 5_000_000;
        let step = bucket.take(0, now, 11, true);
        assert!(!step.fits);
        assert_eq!(step.tat, 0);
        let mut tat = 0;
        spend(&bucket, &mut tat, now, 1);
        let s = bucket.standing(tat, now, 11);
        assert_eq!(s.retry_in_ms, s.reset_in_ms);
        assert_eq!(s.reset_in_ms, 6_000);
    }

    #[test]
    fn a_check_counts_nothing_and_a_refusal_moves_nothing() {
        let bucket = ten_a_minute();
        let now = 7_000_000;
        let mut tat = 0;
        assert!(bucket.take(tat, now, 0, true).fits);
        assert_eq!(bucket.take(tat, now, 0, true).tat, 0);
        spend(&bucket, &mut tat, now, 10);
        let refused = bucket.take(tat, now, 1, true);
        assert!(!refused.fits);
        assert_eq!(refused.tat, tat);
        assert!(!bucket.take(tat, now, 0, true).fits);
        // Shadow mode takes the hits anyway, its debt bounded.
        let shadow = bucket.take(tat, now, 1, false);
        assert!(!shadow.fits);
        assert_eq!(shadow.tat, tat + 6_000_000);
        assert_eq!(bucket.give_back(shadow.tat, 1), tat);
    }

    #[test]
    fn a_closed_bucket_refuses_everything() {
        let zero = Bucket {
            period_us: 1_000_000,
            rate: 0,
            burst: 10,
        };
        assert!(!zero.take(0, 1, 0, true).fits);
        assert_eq!(zero.standing(0, 1, 1).remaining, 0);
        assert!(zero.standing(0, 1, 1).retry_in_ms >= 1);
    }

    fn ten_per_ten_seconds() -> Sliding {
        Sliding {
            length_ms: 10_000,
            limit: 10,
        }
    }

    #[test]
    fn a_sliding_window_weighs_the_previous_window_by_what_is_left_of_it() {
        let w = ten_per_ten_seconds();
        // Ten spent at the end of the previous window; a moment into this one none fits.
        let just_after = SlidingCounts {
            previous: 10,
            current: 0,
            elapsed_ms: 200,
        };
        assert!(!w.fits(&just_after, 1));
        let s = w.standing(&just_after, 1);
        assert_eq!(s.remaining, 0);
        assert_eq!(s.reset_in_ms, 9_800);
        // One fits once a tenth of the previous window has slid out: at 1,000 ms.
        assert_eq!(s.retry_in_ms, 800);
        let halfway = SlidingCounts {
            elapsed_ms: 5_000,
            ..just_after
        };
        assert_eq!(w.standing(&halfway, 1).remaining, 5);
        assert!(w.fits(&halfway, 5));
        assert!(!w.fits(&halfway, 6));
    }

    #[test]
    fn a_full_current_window_waits_into_the_next() {
        let w = ten_per_ten_seconds();
        let full = SlidingCounts {
            previous: 0,
            current: 10,
            elapsed_ms: 9_000,
        };
        let s = w.standing(&full, 1);
        assert_eq!(s.reset_in_ms, 11_000);
        // In the next window 10 × (1 − t) + 1 ≤ 10 from t = 0.1: 1,000 ms + 1,000 ms.
        assert_eq!(s.retry_in_ms, 2_000);
        assert_eq!(w.standing(&full, 11).retry_in_ms, s.reset_in_ms);
    }

    /// The stated bound: at most the limit in any aligned window, fewer than twice the limit in
    /// any window-long span. A client sends a request every 10 ms during one twentieth of each
    /// window: twentieth `a` in even windows, `b` in odd ones, every pair, for six windows.
    #[test]
    fn a_sliding_window_admits_under_twice_its_limit_in_any_window_long_span() {
        let w = ten_per_ten_seconds();
        let length = w.length_ms;
        let mut worst = 0;
        for (a, b) in (0..20).flat_map(|a| (0..20).map(move |b| (a, b))) {
            let mut admitted = Vec::new();
            let (mut index, mut previous, mut current) = (0, 0, 0);
            for t in (0..6 * length).step_by(10) {
                let wanted = if (t / length).is_multiple_of(2) { a } else { b };
                if (t % length) * 20 / length != wanted {
                    continue;
                }
                if t / length != index {
                    previous = if t / length == index + 1 { current } else { 0 };
                    (index, current) = (t / length, 0);
                }
                let counts = SlidingCounts {
                    previous,
                    current,
                    elapsed_ms: t % length,
                };
                if w.fits(&counts, 1) {
                    current += 1;
                    admitted.push(t);
                }
            }
            for window in 0..6 {
                let inside = admitted.iter().filter(|&&t| t / length == window).count();
                assert!(inside <= 10, "{a},{b}: window {window}: {inside}");
            }
            // The fullest span starts at an admitted request.
            for (i, &start) in admitted.iter().enumerate() {
                let span = admitted[i..]
                    .iter()
                    .take_while(|&&t| t < start + length)
                    .count();
                assert!(span < 20, "{a},{b}: from {start} ms: {span}");
                worst = worst.max(span);
            }
        }
        assert!(
            worst > 10,
            "the estimate does over-admit some patterns: {worst}"
        );
    }

    #[test]
    fn retry_after_is_when_the_request_fits() {
        let w = ten_per_ten_seconds();
        for previous in 0..=10 {
            for current in 0..=10 {
                for elapsed_ms in (0..10_000).step_by(700) {
                    let c = SlidingCounts {
                        previous,
                        current,
                        elapsed_ms,
                    };
                    let s = w.standing(&c, 1);
                    assert!(s.retry_in_ms <= s.reset_in_ms);
                    if s.retry_in_ms == 0 {
                        assert!(w.fits(&c, 1));
                        continue;
                    }
                    // Where it waits to: the counts as the windows slide.
                    let at = elapsed_ms + s.retry_in_ms;
                    let then = if at < 10_000 {
                        SlidingCounts {
                            elapsed_ms: at,
                            ..c
                        }
                    } else {
                        SlidingCounts {
                            previous: current,
                            current: 0,
                            elapsed_ms: at - 10_000,
                        }
                    };
                    assert!(w.fits(&then, 1), "{c:?} {s:?}");
                    let before = SlidingCounts {
                        elapsed_ms: then.elapsed_ms.saturating_sub(1),
                        ..then
                    };
                    assert!(then.elapsed_ms == 0 || !w.fits(&before, 1), "{c:?} {s:?}");
                }
            }
        }
    }
}

//! The time decisions are made at: the wall clock, read once when the process starts, carried
//! forward by a clock that never steps (`Instant`, the monotonic clock).
//!
//! Windows are numbered from the Unix epoch so that replicas agree on them without talking,
//! which needs the wall clock; but read on every decision, a wall clock that is stepped (by an
//! operator, or NTP correcting a large error) moves every window at once: set back an hour, an
//! exhausted key stays refused for an hour past its `Retry-After`; set forward, every counter
//! starts again from zero. Read once and carried forward, a step after start changes nothing,
//! and time only moves on. The price: a replica started while its clock was wrong keeps that
//! error until it restarts (NTP's slow slewing of a small error is ignored the same way);
//! replicas agree on windows as long as their clocks agreed when they started.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The wall-clock time at one instant, and the monotonic clock from there.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Time since the Unix epoch at `start`.
    wall_at_start: Duration,
    start: Instant,
}

impl Clock {
    /// Anchored now: the wall clock read once (0 if it is before 1970).
    pub fn start() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock::anchored(wall, Instant::now())
    }

    /// A clock that says `wall` (since the epoch) at `start`.
    pub fn anchored(wall: Duration, start: Instant) -> Clock {
        Clock {
            wall_at_start: wall,
            start,
        }
    }

    /// The time now, since the Unix epoch.
    pub fn now(&self) -> Duration {
        self.at(Instant::now())
    }

    /// The time at `instant`, since the Unix epoch; never before the anchor.
    pub fn at(&self, instant: Instant) -> Duration {
        self.wall_at_start + instant.saturating_duration_since(self.start)
    }
}

/// The process's clock, anchored at its first use (the server uses it at start).
pub fn now() -> Duration {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(Clock::start).now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_moves_on_from_the_anchor_and_never_back() {
        let start = Instant::now();
        let clock = Clock::anchored(Duration::from_secs(1_000_000), start);
        let later = start + Duration::from_millis(61_500);
        assert_eq!(clock.at(start), Duration::from_secs(1_000_000));
        assert_eq!(clock.at(later), Duration::from_millis(1_000_061_500));
        // An instant from before the anchor (no such reading is made, but it must not panic
        // nor go back).
        let before = start.checked_sub(Duration::from_secs(5)).unwrap_or(start);
        assert_eq!(clock.at(before), Duration::from_secs(1_000_000));
    }

    #[test]
    fn the_process_clock_is_monotonic() {
        let mut last = now();
        for _ in 0..1_000 {
            let next = now();
            assert!(next >= last);
            last = next;
        }
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        assert!(
            wall.abs_diff(last) < Duration::from_secs(5),
            "anchored to the wall clock"
        );
    }
}

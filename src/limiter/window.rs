//! Fixed windows aligned to the Unix epoch.
//!
//! A window of `L` seconds that contains instant `now` is number `now / L` since the epoch, as
//! envoyproxy/ratelimit counts it. Aligning to the epoch rather than to a key's first hit means
//! every replica, and Redis, agree on where a window starts without sharing any state.

use std::time::Duration;

/// Where `now` falls in a window of `seconds` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPosition {
    /// The window's number since the epoch; fits in 32 bits until the year 2106.
    pub index: u32,
    /// Time left until the window ends and its counter starts again from 0.
    pub reset_in: Duration,
}

/// The position of `now` (time since the Unix epoch) in a window of `seconds` (> 0) seconds.
pub fn position(now: Duration, seconds: u32) -> WindowPosition {
    let length = u64::from(seconds.max(1));
    let index = now.as_secs() / length;
    let end = Duration::from_secs((index + 1) * length);
    WindowPosition {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        reset_in: end.saturating_sub(now),
    }
}

/// Whole seconds, rounded up: what a client can wait for (`RateLimit-Reset`, `Retry-After`).
pub fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_the_epoch() {
        let now = Duration::from_millis(125_500);
        assert_eq!(
            position(now, 60),
            WindowPosition {
                index: 2,
                reset_in: Duration::from_millis(54_500)
            }
        );
        assert_eq!(position(now, 1).index, 125);
        assert_eq!(position(now, 1).reset_in, Duration::from_millis(500));
    }

    #[test]
    fn a_window_boundary_starts_a_whole_window() {
        let at_boundary = Duration::from_secs(3_600);
        let p = position(at_boundary, 3_600);
        assert_eq!(p.index, 1);
        assert_eq!(p.reset_in, Duration::from_secs(3_600));
    }

    #[test]
    fn months_and_years_are_30_and_365_days() {
        use crate::rules::Unit;
        assert_eq!(Unit::Month.seconds(), 30 * 86_400);
        assert_eq!(Unit::Year.seconds(), 365 * 86_400);
    }

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!(whole_seconds(Duration::from_millis(54_500)), 55);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
    }
}

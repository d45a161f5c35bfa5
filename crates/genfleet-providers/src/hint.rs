//! Time arithmetic on values a provider sends: `Retry-After`,
//! `x-ratelimit-reset`, "resets in ~30s", `retryDelay`, `expires_in`.
//!
//! Such a value is whatever the provider (or anyone in between) wrote:
//! `u64::MAX`, `1e300`, `-5`, `NaN`. The std conversions panic on some of
//! them (`Duration::from_secs_f64` on a huge, negative or NaN value,
//! `Instant + Duration` and `SystemTime + Duration` on overflow), so every
//! hint goes through here: checked conversions, clamped to [`MAX_HINT`].

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Longest wait any provider hint is taken for. A provider asking for more
/// is either broken or down for longer than any job waits; the job's
/// deadline ends it sooner anyway.
pub(crate) const MAX_HINT: Duration = Duration::from_secs(3600);

/// `hint` clamped to [`MAX_HINT`].
pub(crate) fn clamp(hint: Duration) -> Duration {
    hint.min(MAX_HINT)
}

/// A wait of `seconds` from a provider, or `None` when it is not a wait
/// (NaN, negative); huge values are clamped to [`MAX_HINT`], never a panic.
pub(crate) fn from_secs_f64(seconds: f64) -> Option<Duration> {
    if seconds.is_nan() || seconds < 0.0 {
        return None;
    }
    Some(clamp(
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX),
    ))
}

/// The wait until Unix time `at` (seconds) from `now`: zero when it has
/// passed, clamped to [`MAX_HINT`], never a panic for a time beyond what
/// [`SystemTime`] can hold.
pub(crate) fn until_unix(at: u64, now: SystemTime) -> Duration {
    match SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(at)) {
        Some(at) => clamp(at.duration_since(now).unwrap_or(Duration::ZERO)),
        None => MAX_HINT,
    }
}

/// `base + wait`, or, where that overflows, the latest instant reachable
/// (a year on, else `base` itself): never a panic.
pub(crate) fn after(base: Instant, wait: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(365 * 24 * 3600);
    base.checked_add(wait)
        .or_else(|| base.checked_add(FAR))
        .unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_from_a_float_never_panic() {
        assert_eq!(from_secs_f64(2.5), Some(Duration::from_millis(2500)));
        assert_eq!(from_secs_f64(0.0), Some(Duration::ZERO));
        assert_eq!(from_secs_f64(1e300), Some(MAX_HINT));
        assert_eq!(from_secs_f64(f64::MAX), Some(MAX_HINT));
        assert_eq!(from_secs_f64(f64::INFINITY), Some(MAX_HINT));
        assert_eq!(from_secs_f64(-1.0), None);
        assert_eq!(from_secs_f64(-0.0), Some(Duration::ZERO));
        assert_eq!(from_secs_f64(f64::NEG_INFINITY), None);
        assert_eq!(from_secs_f64(f64::NAN), None);
    }

    #[test]
    fn unix_times_never_panic() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(until_unix(1_800_000_030, now), Duration::from_secs(30));
        assert_eq!(until_unix(1_000_000_000, now), Duration::ZERO);
        assert_eq!(until_unix(u64::MAX, now), MAX_HINT);
        assert_eq!(until_unix(u64::MAX / 2, now), MAX_HINT);
    }

    #[test]
    fn instants_never_overflow() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(after(now, Duration::MAX) > now);
        assert!(after(now, Duration::from_secs(u64::MAX)) > now);
        assert_eq!(clamp(Duration::MAX), MAX_HINT);
    }
}

//! The per-provider adaptive token bucket behind the rate limit.

use std::time::Duration;

use tokio::time::Instant;

use super::{
    CUT_INTERVAL, MAX_RATE_LIMIT_HOLD, MAX_TOKEN_WAIT_SECS, MIN_RATE, OBSERVED_RATE_WINDOW_SECS,
    RATE_RECOVERY,
};

/// A token bucket that hands out reservations: a caller that finds it empty
/// takes a token from the future (the count goes negative) and sleeps until
/// that token's time, so waiters are served in arrival order without a
/// queue. Adaptive: see the module docs.
pub(super) struct Bucket {
    /// The configured rate, calls/s; `None` is unlimited.
    configured: Option<f64>,
    capacity: f64,
    tokens: f64,
    /// Tokens are counted up to here; in the future during a hold, so that
    /// none accrue before it ends.
    pub(super) refilled_at: Instant,
    /// No call starts before this (the last rate-limit answer's hint).
    pub(super) hold_until: Instant,
    /// Set while slowed down by rate-limit answers.
    slowed: Option<Slowed>,
    /// Bumped by each cut, which wipes the reservations made before it.
    pub(super) epoch: u64,
    /// Calls reserved lately, decaying with [`OBSERVED_RATE_WINDOW_SECS`]:
    /// divided by it, the rate calls are actually made at.
    recent: f64,
    recent_at: Instant,
}

/// The additive recovery after a cut: the rate is `floor` until `since`,
/// then climbs by `step` calls/s every second up to `ceiling`, where the
/// slowdown ends.
#[derive(Debug, Clone, Copy)]
struct Slowed {
    floor: f64,
    since: Instant,
    ceiling: f64,
    step: f64,
    last_cut: Instant,
}

impl Slowed {
    fn rate_at(&self, at: Instant) -> f64 {
        let climbed = at.saturating_duration_since(self.since).as_secs_f64() * self.step;
        (self.floor + climbed).min(self.ceiling)
    }
}

impl Bucket {
    pub(super) fn new(configured: Option<f64>, burst: u32) -> Self {
        let capacity = f64::from(burst);
        let now = Instant::now();
        Self {
            configured,
            capacity,
            tokens: capacity,
            refilled_at: now,
            hold_until: now,
            slowed: None,
            epoch: 0,
            recent: 0.0,
            recent_at: now,
        }
    }

    /// The rate at `at`, calls/s; `None` while unlimited.
    pub(super) fn rate(&self, at: Instant) -> Option<f64> {
        match &self.slowed {
            Some(slowed) => Some(slowed.rate_at(at)),
            None => self.configured,
        }
    }

    /// Counts the tokens that accrued up to `now` and ends a slowdown whose
    /// recovery is complete.
    pub(super) fn settle(&mut self, now: Instant) {
        if now > self.refilled_at {
            if let Some(then) = self.rate(self.refilled_at) {
                let rate_now = self.rate(now).unwrap_or(then);
                // The rate is constant or climbs linearly: the trapezoid is
                // exact but where the climb meets its ceiling, and short
                // there (erring towards fewer calls).
                let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
                self.tokens = (self.tokens + elapsed * (then + rate_now) / 2.0).min(self.capacity);
            }
            self.refilled_at = now;
        }
        if let Some(slowed) = self.slowed {
            if now >= slowed.since && slowed.rate_at(now) >= slowed.ceiling {
                self.slowed = None;
                if self.configured.is_none() {
                    self.tokens = self.capacity;
                }
                tracing::info!(
                    rate_per_second = self.configured.unwrap_or(f64::INFINITY),
                    "provider rate recovered after rate-limit answers"
                );
            }
        }
    }

    /// The rate calls were made at lately, calls/s.
    fn observed(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.recent_at).as_secs_f64();
        self.recent * (-elapsed / OBSERVED_RATE_WINDOW_SECS).exp() / OBSERVED_RATE_WINDOW_SECS
    }

    fn observe(&mut self, now: Instant) {
        self.recent = self.observed(now) * OBSERVED_RATE_WINDOW_SECS + 1.0;
        self.recent_at = now;
    }

    /// Reserves one token and returns when it may be used, or `None`,
    /// reserving nothing, when that is at or after `deadline`.
    pub(super) fn reserve(&mut self, now: Instant, deadline: Option<Instant>) -> Option<Instant> {
        self.settle(now);
        let base = now.max(self.refilled_at).max(self.hold_until);
        let rate = self.rate(base);
        let ready_at = match rate {
            Some(rate) if self.tokens < 1.0 => {
                // Capped so that an absurdly low rate cannot overflow the
                // conversion; a rate below one call a day is a
                // misconfiguration.
                base + Duration::from_secs_f64(
                    ((1.0 - self.tokens) / rate).min(MAX_TOKEN_WAIT_SECS),
                )
            }
            _ => base,
        };
        if deadline.is_some_and(|deadline| ready_at >= deadline) {
            return None;
        }
        if rate.is_some() {
            self.tokens -= 1.0;
        }
        self.observe(now);
        Some(ready_at)
    }

    /// A rate-limit answer: holds calls until its hint (at most
    /// [`MAX_RATE_LIMIT_HOLD`]) and, unless the rate was cut within
    /// [`CUT_INTERVAL`], halves it (the lower of the current and the
    /// observed rate), wiping the reservations queued at the old rate.
    /// Returns the new rate when it cut.
    pub(super) fn on_rate_limited(
        &mut self,
        now: Instant,
        retry_after: Option<Duration>,
    ) -> Option<f64> {
        self.settle(now);
        let hold_until = now + retry_after.unwrap_or_default().min(MAX_RATE_LIMIT_HOLD);
        self.hold_until = self.hold_until.max(hold_until);
        self.refilled_at = self.refilled_at.max(self.hold_until);
        if let Some(slowed) = &mut self.slowed {
            if now < slowed.last_cut + CUT_INTERVAL {
                slowed.since = slowed.since.max(self.hold_until);
                return None;
            }
        }
        let observed = self.observed(now);
        let current = self.rate(now).unwrap_or(f64::INFINITY);
        let ceiling = match (self.configured, &self.slowed) {
            (Some(configured), _) => configured,
            // Unlimited: recover to the rate that drew the answer (or the
            // highest seen in this slowdown), then unlimited again.
            (None, Some(slowed)) => slowed.ceiling.max(observed),
            (None, None) => observed,
        }
        .max(MIN_RATE);
        let floor = (current.min(observed) / 2.0).max(MIN_RATE).min(ceiling);
        self.slowed = Some(Slowed {
            floor,
            since: self.hold_until,
            ceiling,
            step: ceiling / RATE_RECOVERY.as_secs_f64(),
            last_cut: now,
        });
        // No burst after the hold, and no debt: the waiters queued at the
        // old rate see the new epoch and queue again at the new one.
        self.tokens = 0.0;
        self.epoch += 1;
        Some(floor)
    }
}

//! Provider resilience: a circuit breaker per model, and a concurrency
//! limit and a token-bucket rate limit per provider, around any
//! [`Provider`], in [`Guarded`], which is itself a `Provider` so the worker
//! can wrap one without other changes.
//!
//! The breaker is kept per model (`request.model`; the empty string is a
//! model too) because models fail on their own: a customer's custom fal app
//! that always answers 503 must not refuse every other model on the same
//! provider. The concurrency and rate limits stay per provider, because what
//! they protect, the provider account and its quota, is shared by all of its
//! models.
//!
//! Order of a call: the model's breaker is asked first, so a model known to
//! be down is refused at once with [`ProviderError::Deferred`]
//! ([`DeferReason::CircuitOpen`], `retry_after` = the time to its next
//! probe: the worker fails over along the job's provider list, or puts the
//! job aside until then) without taking a slot or a token from the healthy
//! models; then a hold the provider asked for with a rate-limit answer is
//! waited out, before taking a slot; then a concurrency permit, waited for
//! at most [`GuardConfig::max_queue_wait`] (then
//! [`DeferReason::AtCapacity`]); then a rate token; every wait ends by
//! `request.deadline`. Then the breaker is asked again, because it may have
//! opened while the call waited. The token is taken last so that the rate
//! measures calls as they reach the provider, not as they queue.
//!
//! What counts against a model's breaker: `Unavailable` and `Malformed`
//! answers only. A rate-limit answer ([`ProviderError::RateLimited`]) is
//! backpressure, not a failure: it feeds the provider's token bucket
//! instead, which is adaptive (AIMD). Each rate-limit answer (at most one
//! cut a second, since calls sent together report the same congestion)
//! halves the rate the bucket lets through: half the configured rate or
//! half the rate calls were actually made at (a one-second estimate),
//! whichever is lower, never below 0.2 calls a second. It also holds every
//! call until the answer's Retry-After (at most two minutes). Then the rate
//! climbs back additively, from zero to the configured rate in 30 s, and
//! the bucket is as configured again. A provider with no configured limit
//! is slowed the same way, climbs back to the rate that drew the answer,
//! and is unlimited again. Each worker adapts on its own, so a fleet that
//! shares an account converges on the provider's limit the way TCP flows
//! share a link. Local failures ([`ProviderError::Local`], our own disk)
//! and deferrals say nothing about the provider and count nowhere.
//!
//! Memory is bounded: at most 1,024 models have a breaker.
//! When a new model arrives and the table is full, every breaker that is
//! closed with no failures is dropped first (it carries no state: a fresh
//! one is the same). If the table is still full, every entry being open,
//! half-open or on a failure streak, the new model is treated as closed
//! without being tracked: its calls go through and their outcomes are not
//! recorded, so it cannot open until room is made. The outcome of a call
//! whose model's breaker was dropped while it ran is ignored too.
//!
//! The limits are per process. A provider's account-wide limit is shared by
//! every worker, and per-worker limits cannot enforce it (see the "Lessons"
//! in `shared/PROVIDERS.md`): either divide it by the number of workers here
//! or put a shared limiter in front. The breakers are per process too; each
//! worker learns on its own that a model is down, at the cost of
//! `failure_threshold` calls each.
//!
//! This module only decides whether and when to call. It does not retry
//! ([`generate_with_retries`](crate::generate_with_retries) does) and does
//! not emit metrics: the worker reads [`Guarded::snapshot`],
//! [`Guarded::open_models`] and [`Guarded::rate_limit`].
//!
//! The rate limiter is a small token bucket written here rather than
//! governor: it runs on `tokio::time`, so paused-time tests drive it, and it
//! can say before waiting whether a token would arrive after the deadline.
//! governor reads its own clock and would need both adapted.

mod breaker;
mod bucket;
mod guarded;

use std::time::Duration;

pub use guarded::Guarded;

/// Longest a caller waits for one rate token, in seconds (a day).
const MAX_TOKEN_WAIT_SECS: f64 = 86_400.0;

/// Longest hold one rate-limit answer imposes, whatever its Retry-After
/// says: a bogus hint of hours must not stop a provider for hours (the
/// next answer holds again if the provider still means it).
const MAX_RATE_LIMIT_HOLD: Duration = Duration::from_secs(120);

/// Rate-limit answers closer together than this cut the rate once: the
/// calls in flight when the provider started refusing were all sent at the
/// old rate, and each of their answers reports the same congestion.
const CUT_INTERVAL: Duration = Duration::from_secs(1);

/// How long the additive recovery takes to climb from zero to the rate it
/// recovers to: from a halved rate, half as long.
const RATE_RECOVERY: Duration = Duration::from_secs(30);

/// No rate-limit answer slows a provider below this many calls a second
/// (unless its configured rate is lower still).
const MIN_RATE: f64 = 0.2;

/// Time constant of the estimate of the rate calls are made at, in seconds.
const OBSERVED_RATE_WINDOW_SECS: f64 = 1.0;

/// Bounds on the `retry_after` of an at-capacity deferral.
const MIN_AT_CAPACITY_RETRY: Duration = Duration::from_secs(1);
const MAX_AT_CAPACITY_RETRY: Duration = Duration::from_secs(30);

/// Most models whose breaker one [`Guarded`] keeps; see the module docs for
/// what happens past it.
pub(crate) const MAX_TRACKED_MODELS: usize = 1024;

/// How [`Guarded`] limits and trips.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Calls inside the provider at once; more wait for a slot, for at most
    /// `max_queue_wait`. 0 is treated as 1.
    pub max_concurrent: usize,
    /// Calls started per second, sustained; 0 (or anything not above 0)
    /// means unlimited. Rate-limit answers lower it for a while (see the
    /// module docs), whatever it is.
    pub rate_per_second: f64,
    /// Calls that may start back to back after an idle spell. 0 is treated
    /// as 1.
    pub burst: u32,
    /// Consecutive retryable failures (`Unavailable`, `Malformed`; never
    /// `RateLimited` or `Local`) of one model that open that model's
    /// breaker. 0 is treated as 1.
    pub failure_threshold: u32,
    /// How long a model's breaker stays open before one probe call for that
    /// model is let through.
    pub open_for: Duration,
    /// Longest a call waits for a free slot before it is deferred
    /// ([`DeferReason::AtCapacity`]) instead: a job should go back to a
    /// queue rather than hold a worker while the provider is full. The
    /// deadline cuts it shorter.
    pub max_queue_wait: Duration,
    /// Whether rate-limit answers slow the bucket down (see the module
    /// docs). Off, each call still waits out its own Retry-After in the
    /// retry loop, but the provider's other calls go on at full pace: for
    /// a provider whose 429s are per request rather than per account.
    pub adaptive_rate: bool,
}

impl Default for GuardConfig {
    /// 64 concurrent calls, no rate limit, breakers that open after 5
    /// consecutive retryable failures for 30 s (long enough to stop
    /// hammering a model that is down, short enough to notice its return
    /// quickly), and 2 s at most waiting for a slot (a slot frees within
    /// that on a provider that is merely busy; one that stays full is
    /// better waited for in a queue).
    fn default() -> Self {
        Self {
            max_concurrent: 64,
            rate_per_second: 0.0,
            burst: 1,
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
            max_queue_wait: Duration::from_secs(2),
            adaptive_rate: true,
        }
    }
}

/// Where one model's circuit breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls for the model are refused without reaching the provider.
    Open,
    /// `open_for` has passed: one probe call for the model may go through;
    /// its result closes or re-opens the breaker.
    HalfOpen,
}

/// A point-in-time view of one model on a [`Guarded`] provider, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardSnapshot {
    /// The model's breaker.
    pub state: BreakerState,
    /// Calls inside the wrapped provider now, for all models together (not
    /// those waiting for a slot or a token).
    pub in_flight: usize,
    /// The model's current streak of retryable failures.
    pub consecutive_failures: u32,
}

#[cfg(test)]
mod tests;

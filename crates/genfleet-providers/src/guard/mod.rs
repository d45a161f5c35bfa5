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

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::{DeferReason, GenerationOutput, GenerationRequest, Provider, ProviderError};

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

/// A [`Provider`] behind a circuit breaker per model, and a concurrency
/// limit and a rate limit per provider. See the module docs for the order in
/// which they apply.
pub struct Guarded<P> {
    inner: P,
    config: GuardConfig,
    permits: Semaphore,
    bucket: Mutex<Bucket>,
    breakers: Mutex<Breakers>,
    in_flight: AtomicUsize,
}

impl<P: Provider> Guarded<P> {
    pub fn new(inner: P, config: GuardConfig) -> Self {
        let configured = (config.rate_per_second > 0.0 && config.rate_per_second.is_finite())
            .then_some(config.rate_per_second);
        let bucket = Mutex::new(Bucket::new(configured, config.burst.max(1)));
        Self {
            permits: Semaphore::new(config.max_concurrent.clamp(1, Semaphore::MAX_PERMITS)),
            inner,
            bucket,
            breakers: Mutex::new(Breakers::default()),
            in_flight: AtomicUsize::new(0),
            config,
        }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// `model`'s breaker state now; `Open` reads as `HalfOpen` once
    /// `open_for` has passed, even before a call arrives to probe. A model
    /// not tracked (never seen, or dropped) reads as `Closed`.
    pub fn state(&self, model: &str) -> BreakerState {
        self.lock_breakers()
            .models
            .get(model)
            .map_or(BreakerState::Closed, |breaker| {
                breaker.state(Instant::now())
            })
    }

    /// `model`'s breaker state and failure streak, and the provider's calls
    /// in flight, read under one short lock.
    pub fn snapshot(&self, model: &str) -> GuardSnapshot {
        let breakers = self.lock_breakers();
        let (state, consecutive_failures) = breakers
            .models
            .get(model)
            .map_or((BreakerState::Closed, 0), |breaker| {
                (breaker.state(Instant::now()), breaker.consecutive_failures)
            });
        GuardSnapshot {
            state,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            consecutive_failures,
        }
    }

    /// The models whose breaker is `Open` or `HalfOpen` now, sorted.
    pub fn open_models(&self) -> Vec<String> {
        let now = Instant::now();
        let mut open: Vec<String> = self
            .lock_breakers()
            .models
            .iter()
            .filter(|(_, breaker)| breaker.state(now) != BreakerState::Closed)
            .map(|(model, _)| model.clone())
            .collect();
        open.sort_unstable();
        open
    }

    /// The calls per second the provider's bucket lets through now: the
    /// configured rate, lower while recovering from rate-limit answers, or
    /// `None` for unlimited.
    pub fn rate_limit(&self) -> Option<f64> {
        let now = Instant::now();
        let mut bucket = self.lock_bucket();
        bucket.settle(now);
        bucket.rate(now.max(bucket.refilled_at))
    }

    /// Until when the provider asked, with its last rate-limit answer, not
    /// to be called; `None` when no such hold is in effect.
    pub fn held_until(&self) -> Option<Instant> {
        let until = self.lock_bucket().hold_until;
        (until > Instant::now()).then_some(until)
    }

    fn lock_bucket(&self) -> MutexGuard<'_, Bucket> {
        // Never held across an await: a poisoned lock still holds a
        // consistent bucket.
        self.bucket.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many models have a breaker now.
    #[cfg(test)]
    pub(crate) fn tracked_models(&self) -> usize {
        self.lock_breakers().models.len()
    }

    fn lock_breakers(&self) -> MutexGuard<'_, Breakers> {
        // The lock is never held across an await or user code, so a poisoned
        // one still holds a consistent state.
        self.breakers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets a call for `model` through its breaker or defers it. A
    /// half-open breaker lets exactly one caller through as its probe. A
    /// model that cannot be tracked is let through untracked.
    fn admit<'a>(&'a self, model: &'a str) -> Result<Ticket<'a, P>, ProviderError> {
        let now = Instant::now();
        let mut breakers = self.lock_breakers();
        let Some(breaker) = breakers.track(model) else {
            return Ok(Ticket {
                guard: self,
                model,
                probe: false,
                generation: None,
                settled: false,
            });
        };
        if let Phase::Open { until } = breaker.phase {
            if now >= until {
                breaker.phase = Phase::HalfOpen {
                    probe_in_flight: false,
                };
            }
        }
        let probe = match breaker.phase {
            Phase::Closed => false,
            Phase::HalfOpen {
                probe_in_flight: false,
            } => {
                breaker.phase = Phase::HalfOpen {
                    probe_in_flight: true,
                };
                true
            }
            Phase::Open { until } => {
                return Err(self.open_error(model, breaker, until.saturating_duration_since(now)))
            }
            Phase::HalfOpen {
                probe_in_flight: true,
            } => {
                // The probe's answer is not known yet; a failed probe opens
                // the breaker for `open_for` again, so that is the honest
                // upper bound to hint at.
                return Err(self.open_error(model, breaker, self.config.open_for));
            }
        };
        Ok(Ticket {
            guard: self,
            model,
            probe,
            generation: Some(breaker.generation),
            settled: false,
        })
    }

    /// The refusal: a deferral until the breaker's next probe, not a
    /// failure (the provider was not called, and the job has lost nothing
    /// but time). The log names the provider and the model, never the
    /// request's prompt or parameters.
    fn open_error(&self, model: &str, breaker: &Breaker, retry_after: Duration) -> ProviderError {
        tracing::debug!(
            provider = self.inner.name(),
            model,
            consecutive_failures = breaker.consecutive_failures,
            retry_after_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
            "circuit open, deferring the call"
        );
        ProviderError::Deferred {
            reason: DeferReason::CircuitOpen,
            retry_after,
        }
    }

    /// Waits for a concurrency permit, for at most `max_queue_wait` and no
    /// later than `deadline`.
    async fn acquire_permit(
        &self,
        deadline: Option<Instant>,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, ProviderError> {
        let gave_up_at = Instant::now() + self.config.max_queue_wait;
        let deadline_first = deadline.is_some_and(|deadline| deadline <= gave_up_at);
        let until = match deadline {
            Some(deadline) if deadline_first => deadline,
            _ => gave_up_at,
        };
        // `timeout_at` polls the acquire before its timer, so a free slot is
        // taken even with a zero `max_queue_wait`.
        match tokio::time::timeout_at(until, self.permits.acquire()).await {
            // The semaphore is never closed.
            Ok(acquired) => acquired.map_err(|_| ProviderError::DeadlineExceeded),
            Err(_) if deadline_first => Err(ProviderError::DeadlineExceeded),
            Err(_) => {
                let retry_after = self
                    .config
                    .max_queue_wait
                    .clamp(MIN_AT_CAPACITY_RETRY, MAX_AT_CAPACITY_RETRY);
                tracing::debug!(
                    provider = self.inner.name(),
                    max_concurrent = self.config.max_concurrent,
                    "provider at capacity, deferring the call"
                );
                Err(ProviderError::Deferred {
                    reason: DeferReason::AtCapacity,
                    retry_after,
                })
            }
        }
    }

    /// Waits out a hold the provider asked for with a rate-limit answer,
    /// before the call takes a slot (a held call in a slot would only keep
    /// others from theirs). A hold longer than `max_queue_wait` defers the
    /// call ([`DeferReason::Throttled`]); one that outlasts `deadline`
    /// fails at once.
    async fn wait_for_hold(&self, deadline: Option<Instant>) -> Result<(), ProviderError> {
        let until = self.lock_bucket().hold_until;
        let now = Instant::now();
        if until <= now {
            return Ok(());
        }
        if until - now > self.config.max_queue_wait {
            return Err(ProviderError::Deferred {
                reason: DeferReason::Throttled,
                retry_after: until - now,
            });
        }
        if deadline.is_some_and(|deadline| until >= deadline) {
            return Err(ProviderError::DeadlineExceeded);
        }
        tokio::time::sleep_until(until).await;
        Ok(())
    }

    /// Takes a rate token, waiting for it when the bucket is empty. Fails at
    /// once, taking nothing, when the token would only arrive at or after
    /// `deadline`, and defers the call ([`DeferReason::Throttled`]) when it
    /// would only arrive after `max_queue_wait`: a job then waits in a
    /// queue, not in a worker slot.
    async fn take_token(&self, deadline: Option<Instant>) -> Result<(), ProviderError> {
        loop {
            let now = Instant::now();
            // A token ready now is always taken, even with a zero wait.
            let patience = now + self.config.max_queue_wait.max(Duration::from_millis(1));
            let (ready_at, epoch) = {
                let mut bucket = self.lock_bucket();
                let limit = deadline.map_or(patience, |deadline| deadline.min(patience));
                let Some(ready_at) = bucket.reserve(now, Some(limit)) else {
                    if deadline.is_some_and(|deadline| deadline <= patience) {
                        return Err(ProviderError::DeadlineExceeded);
                    }
                    return Err(ProviderError::Deferred {
                        reason: DeferReason::Throttled,
                        retry_after: self
                            .config
                            .max_queue_wait
                            .clamp(Duration::from_secs(1), Duration::from_secs(30)),
                    });
                };
                (ready_at, bucket.epoch)
            };
            if ready_at <= now {
                return Ok(());
            }
            tokio::time::sleep_until(ready_at).await;
            // A rate-limit answer while this call waited cut the rate and
            // wiped the queue's reservations: take a place in the new,
            // slower queue instead of going at the old pace.
            if self.lock_bucket().epoch == epoch {
                return Ok(());
            }
        }
    }

    /// Feeds a rate-limit answer to the bucket.
    fn rate_limited(&self, retry_after: Option<Duration>) {
        if !self.config.adaptive_rate {
            return;
        }
        let now = Instant::now();
        let cut = self.lock_bucket().on_rate_limited(now, retry_after);
        if let Some(rate) = cut {
            tracing::info!(
                provider = self.inner.name(),
                rate_per_second = rate,
                hold_ms =
                    u64::try_from(retry_after.unwrap_or_default().as_millis()).unwrap_or(u64::MAX),
                "provider rate-limited us, slowing down"
            );
        }
    }
}

#[async_trait::async_trait]
impl<P: Provider> Provider for Guarded<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The inner provider's queue face, unguarded: a parked request holds
    /// no slot (that is the point of parking), and its status checks are
    /// single cheap exchanges spread out by the park delay.
    fn resumable(&self) -> Option<&dyn crate::Resumable> {
        self.inner.resumable()
    }

    /// One attempt through the model's breaker and the provider's limits.
    ///
    /// # Errors
    ///
    /// The inner provider's error, or without calling it:
    /// [`ProviderError::Deferred`] with [`DeferReason::CircuitOpen`] and the
    /// time to the next probe while the model's breaker is open (or
    /// half-open with its probe already out: then `open_for`), or with
    /// [`DeferReason::AtCapacity`] when no slot freed within
    /// `max_queue_wait`; [`ProviderError::DeadlineExceeded`] when the
    /// deadline passes, or would pass, while waiting out a rate-limit hold,
    /// for a slot or for a rate token.
    ///
    /// # Cancel safety
    ///
    /// As for the inner provider. A dropped call counts as neither success
    /// nor failure; a dropped probe leaves the breaker half-open for the
    /// next caller. A rate token reserved by a dropped call is not given
    /// back, which errs towards calling less often, never more.
    async fn generate(
        &self,
        request: &GenerationRequest,
    ) -> Result<GenerationOutput, ProviderError> {
        if request
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return Err(ProviderError::DeadlineExceeded);
        }
        let model = request.model.as_str();
        let ticket = self.admit(model)?;
        self.wait_for_hold(request.deadline).await?;
        let _permit = self.acquire_permit(request.deadline).await?;
        self.take_token(request.deadline).await?;
        // The breaker may have opened while this call waited.
        let mut ticket = if ticket.probe {
            ticket
        } else {
            self.admit(model)?
        };

        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&self.in_flight);
        let result = self.inner.generate(request).await;
        if let Err(ProviderError::RateLimited { retry_after, .. }) = &result {
            self.rate_limited(*retry_after);
        }
        ticket.settle(result.as_ref().err());
        result
    }
}

/// Whether `error` is the model failing: a 5xx, a timeout, a dropped
/// connection, an answer it could not make sense of. Not a rate limit, a
/// deferral, a local failure, nor a permanent answer.
fn counts_against_model(error: &ProviderError) -> bool {
    matches!(
        error,
        ProviderError::Unavailable { .. } | ProviderError::Malformed { .. }
    )
}

/// Decrements the in-flight count however the call ends, drop included.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A call let through its model's breaker; reports its outcome back to it.
struct Ticket<'a, P: Provider> {
    guard: &'a Guarded<P>,
    model: &'a str,
    /// This call is the half-open breaker's one probe.
    probe: bool,
    /// The model's breaker's generation when the call was let through, or
    /// `None` when the model could not be tracked. Outcomes of calls let
    /// through before the breaker last opened, or before it was dropped and
    /// made anew, are ignored, so a late straggler can neither close an open
    /// breaker nor extend it.
    generation: Option<u64>,
    settled: bool,
}

impl<P: Provider> Ticket<'_, P> {
    /// Records the inner provider's outcome: `None` for success.
    fn settle(&mut self, error: Option<&ProviderError>) {
        self.settled = true;
        let Some(generation) = self.generation else {
            return;
        };
        let mut breakers = self.guard.lock_breakers();
        let opened_generation = breakers.next_generation;
        let Some(breaker) = breakers
            .models
            .get_mut(self.model)
            .filter(|breaker| breaker.generation == generation)
        else {
            return;
        };
        let name = self.guard.inner.name();
        let model = self.model;
        match error {
            None => {
                if breaker.phase != Phase::Closed {
                    tracing::info!(
                        provider = name,
                        model,
                        "model answered the probe, circuit closed"
                    );
                }
                breaker.phase = Phase::Closed;
                breaker.consecutive_failures = 0;
            }
            Some(error) if counts_against_model(error) => {
                breaker.consecutive_failures = breaker.consecutive_failures.saturating_add(1);
                let threshold = self.guard.config.failure_threshold.max(1);
                if self.probe || breaker.consecutive_failures >= threshold {
                    breaker.phase = Phase::Open {
                        until: Instant::now() + self.guard.config.open_for,
                    };
                    breaker.generation = opened_generation;
                    tracing::warn!(
                        provider = name,
                        model,
                        consecutive_failures = breaker.consecutive_failures,
                        open_for_ms = u64::try_from(self.guard.config.open_for.as_millis())
                            .unwrap_or(u64::MAX),
                        code = error.code(),
                        "model keeps failing, circuit opened"
                    );
                    breakers.next_generation += 1;
                }
            }
            // A permanent error says nothing about the model's health (a
            // customer's bad prompt must not open the breaker), nor does a
            // rate-limit answer (backpressure: the bucket slows down
            // instead) or a local failure (our disk), so none of them
            // counts or resets the streak. A probe that gets one leaves the
            // breaker half-open for the next caller to probe.
            Some(_) => self.release_probe(breaker),
        }
    }

    /// Hands the half-open probe back, when this call is it.
    fn release_probe(&self, breaker: &mut Breaker) {
        if self.probe && self.generation == Some(breaker.generation) {
            if let Phase::HalfOpen { .. } = breaker.phase {
                breaker.phase = Phase::HalfOpen {
                    probe_in_flight: false,
                };
            }
        }
    }
}

impl<P: Provider> Drop for Ticket<'_, P> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            let mut breakers = self.guard.lock_breakers();
            if let Some(breaker) = breakers.models.get_mut(self.model) {
                self.release_probe(breaker);
            }
        }
    }
}

/// The breakers of the models seen, at most [`MAX_TRACKED_MODELS`].
#[derive(Default)]
struct Breakers {
    models: HashMap<String, Breaker>,
    /// The generation the next breaker made or opened gets; unique across
    /// models and over time, so a breaker dropped and made anew never
    /// matches a ticket from before.
    next_generation: u64,
}

impl Breakers {
    /// `model`'s breaker, made closed if it has none, or `None` when the
    /// table is full even after dropping the breakers that carry no state.
    fn track(&mut self, model: &str) -> Option<&mut Breaker> {
        if !self.models.contains_key(model) {
            if self.models.len() >= MAX_TRACKED_MODELS {
                // All at once, so a stream of new models costs one sweep per
                // table's worth rather than one per call.
                self.models.retain(|_, breaker| !breaker.is_idle());
                if self.models.len() >= MAX_TRACKED_MODELS {
                    return None;
                }
            }
            let generation = self.next_generation;
            self.next_generation += 1;
            self.models.insert(
                model.to_owned(),
                Breaker {
                    phase: Phase::Closed,
                    consecutive_failures: 0,
                    generation,
                },
            );
        }
        self.models.get_mut(model)
    }
}

struct Breaker {
    phase: Phase,
    consecutive_failures: u32,
    /// Given anew each time the breaker opens.
    generation: u64,
}

impl Breaker {
    fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Closed with no failures: the same as a breaker made anew, so it may be
    /// dropped.
    fn is_idle(&self) -> bool {
        self.phase == Phase::Closed && self.consecutive_failures == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

/// A token bucket that hands out reservations: a caller that finds it empty
/// takes a token from the future (the count goes negative) and sleeps until
/// that token's time, so waiters are served in arrival order without a
/// queue. Adaptive: see the module docs.
struct Bucket {
    /// The configured rate, calls/s; `None` is unlimited.
    configured: Option<f64>,
    capacity: f64,
    tokens: f64,
    /// Tokens are counted up to here; in the future during a hold, so that
    /// none accrue before it ends.
    refilled_at: Instant,
    /// No call starts before this (the last rate-limit answer's hint).
    hold_until: Instant,
    /// Set while slowed down by rate-limit answers.
    slowed: Option<Slowed>,
    /// Bumped by each cut, which wipes the reservations made before it.
    epoch: u64,
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
    fn new(configured: Option<f64>, burst: u32) -> Self {
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
    fn rate(&self, at: Instant) -> Option<f64> {
        match &self.slowed {
            Some(slowed) => Some(slowed.rate_at(at)),
            None => self.configured,
        }
    }

    /// Counts the tokens that accrued up to `now` and ends a slowdown whose
    /// recovery is complete.
    fn settle(&mut self, now: Instant) {
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
    fn reserve(&mut self, now: Instant, deadline: Option<Instant>) -> Option<Instant> {
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
    fn on_rate_limited(&mut self, now: Instant, retry_after: Option<Duration>) -> Option<f64> {
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

#[cfg(test)]
mod tests;

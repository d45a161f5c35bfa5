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
//! be down is refused at once (the worker fails over along the job's
//! provider list, or retries after the error's `retry_after`) without
//! taking a slot or a token from the healthy models; then a concurrency
//! permit, then a rate token, both waited for no later than
//! `request.deadline`; then the breaker is asked again, because it may have
//! opened while the call waited. The token is taken last so that the rate
//! measures calls as they reach the provider, not as they queue.
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
//! not emit metrics: the worker reads [`Guarded::snapshot`] and
//! [`Guarded::open_models`].
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

use crate::{GenerationOutput, GenerationRequest, Provider, ProviderError};

/// Longest a caller waits for one rate token, in seconds (a day).
const MAX_TOKEN_WAIT_SECS: f64 = 86_400.0;

/// Most models whose breaker one [`Guarded`] keeps; see the module docs for
/// what happens past it.
pub(crate) const MAX_TRACKED_MODELS: usize = 1024;

/// How [`Guarded`] limits and trips.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Calls inside the provider at once; more wait for a slot. 0 is treated
    /// as 1.
    pub max_concurrent: usize,
    /// Calls started per second, sustained; 0 (or anything not above 0)
    /// means unlimited.
    pub rate_per_second: f64,
    /// Calls that may start back to back after an idle spell. 0 is treated
    /// as 1.
    pub burst: u32,
    /// Consecutive retryable failures (`Unavailable`, `Malformed`) of one
    /// model that open that model's breaker. 0 is treated as 1.
    pub failure_threshold: u32,
    /// How long a model's breaker stays open before one probe call for that
    /// model is let through.
    pub open_for: Duration,
}

impl Default for GuardConfig {
    /// 64 concurrent calls, no rate limit, and breakers that open after 5
    /// consecutive retryable failures for 30 s: long enough to stop hammering
    /// a model that is down, short enough to notice its return quickly.
    fn default() -> Self {
        Self {
            max_concurrent: 64,
            rate_per_second: 0.0,
            burst: 1,
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
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
    bucket: Option<Mutex<Bucket>>,
    breakers: Mutex<Breakers>,
    in_flight: AtomicUsize,
}

impl<P: Provider> Guarded<P> {
    pub fn new(inner: P, config: GuardConfig) -> Self {
        let bucket = (config.rate_per_second > 0.0 && config.rate_per_second.is_finite())
            .then(|| Mutex::new(Bucket::new(config.rate_per_second, config.burst.max(1))));
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

    /// Lets a call for `model` through its breaker or refuses it with the
    /// open error. A half-open breaker lets exactly one caller through as
    /// its probe. A model that cannot be tracked is let through untracked.
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

    /// The refusal: names the provider and the model, never the request's
    /// prompt or parameters.
    fn open_error(&self, model: &str, breaker: &Breaker, retry_after: Duration) -> ProviderError {
        ProviderError::Unavailable {
            message: format!(
                "circuit open for {} model {model} after {} consecutive failures",
                self.inner.name(),
                breaker.consecutive_failures
            ),
            retry_after: Some(retry_after),
        }
    }

    /// Waits for a concurrency permit, no later than `deadline`.
    async fn acquire_permit(
        &self,
        deadline: Option<Instant>,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, ProviderError> {
        let acquired = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.permits.acquire())
                .await
                .map_err(|_| ProviderError::DeadlineExceeded)?,
            None => self.permits.acquire().await,
        };
        // The semaphore is never closed.
        acquired.map_err(|_| ProviderError::DeadlineExceeded)
    }

    /// Takes a rate token, waiting for it when the bucket is empty. Fails at
    /// once, taking nothing, when the token would only arrive at or after
    /// `deadline`.
    async fn take_token(&self, deadline: Option<Instant>) -> Result<(), ProviderError> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        let now = Instant::now();
        let ready_at = bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reserve(now, deadline)
            .ok_or(ProviderError::DeadlineExceeded)?;
        if ready_at > now {
            tokio::time::sleep_until(ready_at).await;
        }
        Ok(())
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
    /// [`ProviderError::Unavailable`] with a `retry_after` while the
    /// model's breaker is open (or half-open with its probe already out),
    /// and [`ProviderError::DeadlineExceeded`] when the deadline passes, or
    /// would pass, while waiting for a slot or a rate token.
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
        ticket.settle(result.as_ref().err());
        result
    }
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
            Some(error) if error.is_retryable() => {
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
            // customer's bad prompt must not open the breaker), so it neither
            // counts nor resets the streak. A probe that gets one leaves the
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
/// queue.
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: u32) -> Self {
        let capacity = f64::from(burst);
        Self {
            rate,
            capacity,
            tokens: capacity,
            refilled_at: Instant::now(),
        }
    }

    /// Reserves one token and returns when it may be used, or `None`,
    /// reserving nothing, when that is at or after `deadline`.
    fn reserve(&mut self, now: Instant, deadline: Option<Instant>) -> Option<Instant> {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.capacity);
        self.refilled_at = now;
        let ready_at = if self.tokens >= 1.0 {
            now
        } else {
            // Capped so that an absurdly low rate cannot overflow the
            // conversion; a rate below one call a day is a misconfiguration.
            now + Duration::from_secs_f64(
                ((1.0 - self.tokens) / self.rate).min(MAX_TOKEN_WAIT_SECS),
            )
        };
        if deadline.is_some_and(|deadline| ready_at >= deadline) {
            return None;
        }
        self.tokens -= 1.0;
        Some(ready_at)
    }
}

#[cfg(test)]
mod tests;

//! [`Guarded`]: the wrapper that applies the breakers and limits around a
//! [`Provider`], in the order the module docs describe.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::breaker::{Breaker, Breakers, Phase, Ticket};
use super::bucket::Bucket;
use super::{
    BreakerState, GuardConfig, GuardSnapshot, MAX_AT_CAPACITY_RETRY, MIN_AT_CAPACITY_RETRY,
};
use crate::{DeferReason, GenerationOutput, GenerationRequest, Provider, ProviderError};

/// A [`Provider`] behind a circuit breaker per model, and a concurrency
/// limit and a rate limit per provider. See the module docs for the order in
/// which they apply.
pub struct Guarded<P> {
    pub(super) inner: P,
    pub(super) config: GuardConfig,
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

    pub(super) fn lock_breakers(&self) -> MutexGuard<'_, Breakers> {
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

/// Decrements the in-flight count however the call ends, drop included.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

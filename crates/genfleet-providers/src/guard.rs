//! Per-provider resilience: a circuit breaker, a concurrency limit and a
//! token-bucket rate limit around any [`Provider`], in [`Guarded`], which is
//! itself a `Provider` so the worker can wrap one without other changes.
//!
//! Order of a call: the breaker is asked first, so a provider known to be
//! down is refused at once (the worker fails over along the job's provider
//! list, or retries after the error's `retry_after`); then a concurrency
//! permit, then a rate token, both waited for no later than
//! `request.deadline`; then the breaker is asked again, because it may have
//! opened while the call waited. The token is taken last so that the rate
//! measures calls as they reach the provider, not as they queue.
//!
//! The limits are per process. A provider's account-wide limit is shared by
//! every worker, and per-worker limits cannot enforce it (see the "Lessons"
//! in `shared/PROVIDERS.md`): either divide it by the number of workers here
//! or put a shared limiter in front. The breaker is per process too; each
//! worker learns on its own that a provider is down, at the cost of
//! `failure_threshold` calls each.
//!
//! This module only decides whether and when to call. It does not retry
//! ([`generate_with_retries`](crate::generate_with_retries) does) and does
//! not emit metrics: the worker reads [`Guarded::snapshot`].
//!
//! The rate limiter is a small token bucket written here rather than
//! governor: it runs on `tokio::time`, so paused-time tests drive it, and it
//! can say before waiting whether a token would arrive after the deadline.
//! governor reads its own clock and would need both adapted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::{GenerationOutput, GenerationRequest, Provider, ProviderError};

/// Longest a caller waits for one rate token, in seconds (a day).
const MAX_TOKEN_WAIT_SECS: f64 = 86_400.0;

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
    /// Consecutive retryable failures (`Unavailable`, `Malformed`) that open
    /// the breaker. 0 is treated as 1.
    pub failure_threshold: u32,
    /// How long the breaker stays open before one probe call is let through.
    pub open_for: Duration,
}

impl Default for GuardConfig {
    /// 64 concurrent calls, no rate limit, and a breaker that opens after 5
    /// consecutive retryable failures for 30 s: long enough to stop hammering
    /// a provider that is down, short enough to notice its return quickly.
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

/// Where the circuit breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused without reaching the provider.
    Open,
    /// `open_for` has passed: one probe call may go through; its result
    /// closes or re-opens the breaker.
    HalfOpen,
}

/// A point-in-time view of a [`Guarded`] provider, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardSnapshot {
    pub state: BreakerState,
    /// Calls inside the wrapped provider now (not those waiting for a slot
    /// or a token).
    pub in_flight: usize,
    pub consecutive_failures: u32,
}

/// A [`Provider`] behind a circuit breaker, a concurrency limit and a rate
/// limit. See the module docs for the order in which they apply.
pub struct Guarded<P> {
    inner: P,
    config: GuardConfig,
    permits: Semaphore,
    bucket: Option<Mutex<Bucket>>,
    breaker: Mutex<Breaker>,
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
            breaker: Mutex::new(Breaker {
                phase: Phase::Closed,
                consecutive_failures: 0,
                generation: 0,
            }),
            in_flight: AtomicUsize::new(0),
            config,
        }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The breaker's state now; `Open` reads as `HalfOpen` once `open_for`
    /// has passed, even before a call arrives to probe.
    pub fn state(&self) -> BreakerState {
        self.lock_breaker().state(Instant::now())
    }

    /// The breaker's state, calls in flight and the failure streak, read
    /// under one short lock.
    pub fn snapshot(&self) -> GuardSnapshot {
        let breaker = self.lock_breaker();
        GuardSnapshot {
            state: breaker.state(Instant::now()),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            consecutive_failures: breaker.consecutive_failures,
        }
    }

    fn lock_breaker(&self) -> MutexGuard<'_, Breaker> {
        // The lock is never held across an await or user code, so a poisoned
        // one still holds a consistent state.
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets a call through the breaker or refuses it with the open error.
    /// A half-open breaker lets exactly one caller through as its probe.
    fn admit(&self) -> Result<Ticket<'_, P>, ProviderError> {
        let now = Instant::now();
        let mut breaker = self.lock_breaker();
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
                return Err(self.open_error(&breaker, until.saturating_duration_since(now)))
            }
            Phase::HalfOpen {
                probe_in_flight: true,
            } => {
                // The probe's answer is not known yet; a failed probe opens
                // the breaker for `open_for` again, so that is the honest
                // upper bound to hint at.
                return Err(self.open_error(&breaker, self.config.open_for));
            }
        };
        Ok(Ticket {
            guard: self,
            probe,
            generation: breaker.generation,
            settled: false,
        })
    }

    fn open_error(&self, breaker: &Breaker, retry_after: Duration) -> ProviderError {
        ProviderError::Unavailable {
            message: format!(
                "circuit open for {} after {} consecutive failures",
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

    /// One attempt through the breaker and the limits.
    ///
    /// # Errors
    ///
    /// The inner provider's error, or without calling it:
    /// [`ProviderError::Unavailable`] with a `retry_after` while the breaker
    /// is open (or half-open with its probe already out), and
    /// [`ProviderError::DeadlineExceeded`] when the deadline passes, or
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
        let ticket = self.admit()?;
        let _permit = self.acquire_permit(request.deadline).await?;
        self.take_token(request.deadline).await?;
        // The breaker may have opened while this call waited.
        let mut ticket = if ticket.probe { ticket } else { self.admit()? };

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

/// A call let through the breaker; reports its outcome back to it.
struct Ticket<'a, P: Provider> {
    guard: &'a Guarded<P>,
    /// This call is the half-open breaker's one probe.
    probe: bool,
    /// The breaker's generation when the call was let through; outcomes of
    /// calls let through before the breaker last opened are ignored, so a
    /// late straggler can neither close an open breaker nor extend it.
    generation: u64,
    settled: bool,
}

impl<P: Provider> Ticket<'_, P> {
    /// Records the inner provider's outcome: `None` for success.
    fn settle(&mut self, error: Option<&ProviderError>) {
        self.settled = true;
        let mut breaker = self.guard.lock_breaker();
        if breaker.generation != self.generation {
            return;
        }
        let name = self.guard.inner.name();
        match error {
            None => {
                if breaker.phase != Phase::Closed {
                    tracing::info!(
                        provider = name,
                        "provider answered the probe, circuit closed"
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
                    breaker.generation += 1;
                    tracing::warn!(
                        provider = name,
                        consecutive_failures = breaker.consecutive_failures,
                        open_for_ms = u64::try_from(self.guard.config.open_for.as_millis())
                            .unwrap_or(u64::MAX),
                        code = error.code(),
                        "provider keeps failing, circuit opened"
                    );
                }
            }
            // A permanent error says nothing about the provider's health (a
            // customer's bad prompt must not open the breaker), so it neither
            // counts nor resets the streak. A probe that gets one leaves the
            // breaker half-open for the next caller to probe.
            Some(_) => self.release_probe(&mut breaker),
        }
    }

    fn release_probe(&self, breaker: &mut Breaker) {
        if self.probe && breaker.generation == self.generation {
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
            let mut breaker = self.guard.lock_breaker();
            self.release_probe(&mut breaker);
        }
    }
}

struct Breaker {
    phase: Phase,
    consecutive_failures: u32,
    /// Bumped each time the breaker opens.
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

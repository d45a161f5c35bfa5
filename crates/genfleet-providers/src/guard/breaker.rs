//! The per-model circuit breakers, and the ticket through which a call
//! reports its outcome to its model's breaker.

use std::collections::HashMap;

use tokio::time::Instant;

use super::{BreakerState, Guarded, MAX_TRACKED_MODELS};
use crate::{Provider, ProviderError};

/// Whether `error` is the model failing: a 5xx, a timeout, a dropped
/// connection, an answer it could not make sense of. Not a rate limit, a
/// deferral, a local failure, nor a permanent answer.
fn counts_against_model(error: &ProviderError) -> bool {
    matches!(
        error,
        ProviderError::Unavailable { .. } | ProviderError::Malformed { .. }
    )
}

/// A call let through its model's breaker; reports its outcome back to it.
pub(super) struct Ticket<'a, P: Provider> {
    pub(super) guard: &'a Guarded<P>,
    pub(super) model: &'a str,
    /// This call is the half-open breaker's one probe.
    pub(super) probe: bool,
    /// The model's breaker's generation when the call was let through, or
    /// `None` when the model could not be tracked. Outcomes of calls let
    /// through before the breaker last opened, or before it was dropped and
    /// made anew, are ignored, so a late straggler can neither close an open
    /// breaker nor extend it.
    pub(super) generation: Option<u64>,
    pub(super) settled: bool,
}

impl<P: Provider> Ticket<'_, P> {
    /// Records the inner provider's outcome: `None` for success.
    pub(super) fn settle(&mut self, error: Option<&ProviderError>) {
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
pub(super) struct Breakers {
    pub(super) models: HashMap<String, Breaker>,
    /// The generation the next breaker made or opened gets; unique across
    /// models and over time, so a breaker dropped and made anew never
    /// matches a ticket from before.
    pub(super) next_generation: u64,
}

impl Breakers {
    /// `model`'s breaker, made closed if it has none, or `None` when the
    /// table is full even after dropping the breakers that carry no state.
    pub(super) fn track(&mut self, model: &str) -> Option<&mut Breaker> {
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

pub(super) struct Breaker {
    pub(super) phase: Phase,
    pub(super) consecutive_failures: u32,
    /// Given anew each time the breaker opens.
    pub(super) generation: u64,
}

impl Breaker {
    pub(super) fn state(&self, now: Instant) -> BreakerState {
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
pub(super) enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

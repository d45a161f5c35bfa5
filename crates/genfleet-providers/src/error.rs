//! The closed set of ways a provider call can fail.
//!
//! Each variant is decided where the failure is born (an HTTP status, a
//! transport error, a safety flag) and carries its class: retryable or
//! permanent, plus a stable code for metrics and job results. Nothing here
//! parses messages after the fact.
//!
//! Messages are built from provider error details and status codes only;
//! they never contain keys, prompts, image bytes or URLs, so they are safe
//! to log and to return to customers.

use std::time::Duration;

/// Why one provider attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A safety or content-policy outcome, or a request the provider refuses
    /// as invalid. Retrying would get the same answer.
    #[error("provider rejected the request: {message}")]
    Rejected { message: String },

    /// A 5xx, a timeout or a dropped connection: the same request may
    /// succeed later. Counts towards the model's circuit breaker.
    #[error("provider unavailable: {message}")]
    Unavailable {
        message: String,
        /// The provider's own hint for when to try again.
        retry_after: Option<Duration>,
    },

    /// 401/403: retrying cannot help; an operator must fix the key.
    #[error("provider credentials were refused: {message}")]
    Unauthorized { message: String },

    /// The provider answered 2xx with a body we could not understand.
    /// Usually a truncated or proxied response, so worth a retry or two, but
    /// [`generate_with_retries`](crate::generate_with_retries) caps how many
    /// because a persistent shape change will not fix itself.
    #[error("provider answered with a malformed body: {message}")]
    Malformed { message: String },

    /// The job's deadline passed (or the provider reported that the caller's
    /// own timeout expired).
    #[error("deadline exceeded while waiting for the provider")]
    DeadlineExceeded,

    /// The provider cannot do this kind of job, the request lacks an input
    /// the kind needs, or its parameters set what the worker owns (an input,
    /// the prompt, the output count, safety, delivery) or exceed their
    /// bounds: the job's own fault (`invalid_input`), refused before any
    /// call.
    #[error("{message}")]
    Unsupported { message: String },

    /// The provider asked us to slow down (HTTP 429, or an explicit
    /// rate-limit or full-queue answer): backpressure, not a failure of the
    /// model. It never counts towards a circuit breaker; [`Guarded`]
    /// feeds it to the provider's token bucket instead, and
    /// [`generate_with_retries`] waits it out for as long as the deadline
    /// allows.
    ///
    /// [`Guarded`]: crate::Guarded
    /// [`generate_with_retries`]: crate::generate_with_retries
    #[error("provider rate-limited the request: {message}")]
    RateLimited {
        message: String,
        /// The provider's own hint for when to try again.
        retry_after: Option<Duration>,
    },

    /// [`Guarded`] did not call the provider, and no call is worth making
    /// before `retry_after`: the caller should put the job aside (a retry
    /// queue, another provider) instead of holding a slot.
    /// [`generate_with_retries`] returns it at once, without retrying; it
    /// is no failure of the provider and counts towards no breaker.
    ///
    /// [`Guarded`]: crate::Guarded
    /// [`generate_with_retries`]: crate::generate_with_retries
    #[error("provider call deferred ({}): try again in {} ms", reason.label(), retry_after.as_millis())]
    Deferred {
        reason: DeferReason,
        /// When a call may be let through (the breaker's next probe) or is
        /// likely to find room.
        retry_after: Duration,
    },

    /// This machine failed, not the provider: a spooled input or output
    /// could not be read or written. Worth another attempt (the disk may
    /// have room again), never counted against the provider's circuit.
    #[error("local failure while calling the provider: {message}")]
    Local { message: String },
}

/// Why [`Guarded`](crate::Guarded) deferred a call instead of making it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeferReason {
    /// The model's circuit breaker is open: the provider keeps failing for
    /// it, and the next probe is `retry_after` away.
    CircuitOpen,
    /// The provider's concurrency limit stayed full for
    /// [`GuardConfig::max_queue_wait`](crate::GuardConfig::max_queue_wait).
    AtCapacity,
    /// The provider asked us to slow down (rate-limit answers), and this
    /// call's turn in the slowed bucket is more than
    /// [`GuardConfig::max_queue_wait`](crate::GuardConfig::max_queue_wait)
    /// away: better back in a queue than holding a worker while it waits.
    Throttled,
}

impl DeferReason {
    /// Stable label for metrics and logs: `circuit_open`, `at_capacity`,
    /// `throttled`.
    pub fn label(self) -> &'static str {
        match self {
            Self::CircuitOpen => "circuit_open",
            Self::AtCapacity => "at_capacity",
            Self::Throttled => "throttled",
        }
    }
}

impl ProviderError {
    /// Whether the same request may succeed if sent again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. }
                | Self::Malformed { .. }
                | Self::RateLimited { .. }
                | Self::Deferred { .. }
                | Self::Local { .. }
        )
    }

    /// The provider's requested wait before the next attempt, if it gave
    /// one (for [`Deferred`](Self::Deferred), [`Guarded`](crate::Guarded)'s).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } | Self::RateLimited { retry_after, .. } => {
                *retry_after
            }
            Self::Deferred { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Stable code for metric labels and `JobResult.error.code`.
    ///
    /// Unauthorized shares `provider_unavailable` with transient failures:
    /// from the customer's side the provider could not serve the job, and the
    /// distinction that matters to operators (alert, don't retry) is carried
    /// by [`is_retryable`](Self::is_retryable) and the log line. Rate
    /// limits and deferrals read the same to the customer; a local failure
    /// is ours (`internal`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "provider_rejected",
            Self::Unavailable { .. }
            | Self::Unauthorized { .. }
            | Self::Malformed { .. }
            | Self::RateLimited { .. }
            | Self::Deferred { .. } => "provider_unavailable",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Unsupported { .. } => "invalid_input",
            Self::Local { .. } => "internal",
        }
    }
}

/// The final failure of [`generate_with_retries`](crate::generate_with_retries).
#[derive(Debug, thiserror::Error)]
#[error("{error} (after {attempts} attempt(s))")]
pub struct Failed {
    /// The error that ended the retries.
    pub error: ProviderError,
    /// Provider calls made, counting the failed one; 0 when the deadline had
    /// already passed before the first call.
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_codes() {
        let check = |err: ProviderError, retryable: bool, code: &str| {
            assert_eq!(err.is_retryable(), retryable, "{err:?}");
            assert_eq!(err.code(), code, "{err:?}");
        };
        let msg = || "m".to_owned();
        check(
            ProviderError::Rejected { message: msg() },
            false,
            "provider_rejected",
        );
        check(
            ProviderError::Unavailable {
                message: msg(),
                retry_after: None,
            },
            true,
            "provider_unavailable",
        );
        check(
            ProviderError::Unauthorized { message: msg() },
            false,
            "provider_unavailable",
        );
        check(
            ProviderError::Malformed { message: msg() },
            true,
            "provider_unavailable",
        );
        check(ProviderError::DeadlineExceeded, false, "deadline_exceeded");
        check(
            ProviderError::Unsupported { message: msg() },
            false,
            "invalid_input",
        );
        check(
            ProviderError::RateLimited {
                message: msg(),
                retry_after: None,
            },
            true,
            "provider_unavailable",
        );
        for reason in [DeferReason::CircuitOpen, DeferReason::AtCapacity] {
            check(
                ProviderError::Deferred {
                    reason,
                    retry_after: Duration::from_secs(1),
                },
                true,
                "provider_unavailable",
            );
        }
        check(ProviderError::Local { message: msg() }, true, "internal");
    }

    #[test]
    fn defer_reasons_have_stable_labels() {
        assert_eq!(DeferReason::CircuitOpen.label(), "circuit_open");
        assert_eq!(DeferReason::AtCapacity.label(), "at_capacity");
        let err = ProviderError::Deferred {
            reason: DeferReason::CircuitOpen,
            retry_after: Duration::from_millis(1500),
        };
        assert_eq!(
            err.to_string(),
            "provider call deferred (circuit_open): try again in 1500 ms"
        );
    }

    #[test]
    fn retry_after_only_from_unavailable_rate_limited_and_deferred() {
        let hint = Some(Duration::from_secs(3));
        let err = ProviderError::Unavailable {
            message: "m".into(),
            retry_after: hint,
        };
        assert_eq!(err.retry_after(), hint);
        let err = ProviderError::RateLimited {
            message: "m".into(),
            retry_after: hint,
        };
        assert_eq!(err.retry_after(), hint);
        let err = ProviderError::Deferred {
            reason: DeferReason::AtCapacity,
            retry_after: Duration::from_secs(3),
        };
        assert_eq!(err.retry_after(), hint);
        assert_eq!(ProviderError::DeadlineExceeded.retry_after(), None);
        assert_eq!(
            ProviderError::Local {
                message: "m".into()
            }
            .retry_after(),
            None
        );
    }
}

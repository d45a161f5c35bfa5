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

    /// Rate limiting, a 5xx, a timeout or a dropped connection: the same
    /// request may succeed later.
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

    /// The provider cannot do this kind of job, or the request lacks an input
    /// the kind needs.
    #[error("{message}")]
    Unsupported { message: String },
}

impl ProviderError {
    /// Whether the same request may succeed if sent again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Malformed { .. })
    }

    /// The provider's requested wait before the next attempt, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Stable code for metric labels and `JobResult.error.code`.
    ///
    /// Unauthorized shares `provider_unavailable` with transient failures:
    /// from the customer's side the provider could not serve the job, and the
    /// distinction that matters to operators (alert, don't retry) is carried
    /// by [`is_retryable`](Self::is_retryable) and the log line.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "provider_rejected",
            Self::Unavailable { .. } | Self::Unauthorized { .. } | Self::Malformed { .. } => {
                "provider_unavailable"
            }
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Unsupported { .. } => "invalid_input",
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
    }

    #[test]
    fn retry_after_only_from_unavailable() {
        let hint = Some(Duration::from_secs(3));
        let err = ProviderError::Unavailable {
            message: "m".into(),
            retry_after: hint,
        };
        assert_eq!(err.retry_after(), hint);
        assert_eq!(ProviderError::DeadlineExceeded.retry_after(), None);
    }
}

//! How a job stops early. A [`JobFailure`] ends the job with a failed result
//! (the input or the provider said no); a [`Stop::Requeue`] hands the
//! delivery back to the broker because our own infrastructure failed (store,
//! ledger), so the job is retried rather than failed for something that was
//! not the customer's fault. The class is decided where the error is born.
//! A malware hit is a permanent failure (`malware`); a scanner that cannot
//! be reached is a requeue, never a pass.

use genfleet_proto::ErrorCode;

use crate::disposition::RequeueReason;

/// A terminal failure, published as the job's `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    pub code: ErrorCode,
    pub message: String,
    /// Whether publishing the same job again may succeed.
    pub retryable: bool,
}

impl JobFailure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> JobFailure {
        let retryable = matches!(
            code,
            ErrorCode::ProviderUnavailable | ErrorCode::Internal | ErrorCode::InsufficientCredits
        );
        JobFailure {
            code,
            message: message.into(),
            retryable,
        }
    }
}

/// Why processing stopped before a result.
#[derive(Debug)]
pub enum Stop {
    Fail(JobFailure),
    /// Return the delivery to the queue; `detail` is for the log.
    Requeue {
        reason: RequeueReason,
        detail: String,
    },
    /// The provider is rendering the job: park it in a retry queue for
    /// this long, then look again (any worker).
    Park(std::time::Duration),
    /// No provider could take the job now: back after at least this long.
    Delay(std::time::Duration),
}

impl From<JobFailure> for Stop {
    fn from(failure: JobFailure) -> Self {
        Stop::Fail(failure)
    }
}

impl Stop {
    pub(crate) fn requeue(reason: RequeueReason, detail: impl ToString) -> Stop {
        Stop::Requeue {
            reason,
            detail: detail.to_string(),
        }
    }
}

impl From<genfleet_imaging::ImagingError> for JobFailure {
    fn from(error: genfleet_imaging::ImagingError) -> Self {
        use genfleet_imaging::ImagingError as E;
        let code = match &error {
            E::UnsupportedType { .. } => ErrorCode::UnsupportedType,
            E::TooLarge(_) => ErrorCode::TooLarge,
            E::Invalid(_) => ErrorCode::InvalidInput,
            E::Internal(_) => ErrorCode::Internal,
        };
        JobFailure::new(code, error.to_string())
    }
}

impl From<genfleet_storage::StorageError> for Stop {
    fn from(error: genfleet_storage::StorageError) -> Self {
        use genfleet_storage::StorageError as E;
        match error {
            E::InvalidUri(_) | E::NotFound(_) | E::Forbidden(_) => {
                Stop::Fail(JobFailure::new(ErrorCode::InvalidInput, error.to_string()))
            }
            E::TooLarge { .. } => {
                Stop::Fail(JobFailure::new(ErrorCode::TooLarge, error.to_string()))
            }
            E::Unavailable(_) | E::InvalidConfig(_) => {
                Stop::requeue(RequeueReason::StorageUnavailable, error)
            }
        }
    }
}

impl From<genfleet_credits::CreditsError> for Stop {
    fn from(error: genfleet_credits::CreditsError) -> Self {
        use genfleet_credits::CreditsError as E;
        match error {
            // Only the job's own need is told: the available figure may
            // include what the account draws from its organisation.
            E::Insufficient {
                ref account,
                needed,
                ..
            } => Stop::Fail(JobFailure::new(
                ErrorCode::InsufficientCredits,
                format!("account {account} has too few credits available; the job needs {needed}"),
            )),
            E::Invalid(_) => {
                Stop::Fail(JobFailure::new(ErrorCode::InvalidInput, error.to_string()))
            }
            E::Unavailable(_) | E::Database(_) => {
                Stop::requeue(RequeueReason::LedgerUnavailable, error)
            }
        }
    }
}

impl From<genfleet_providers::ProviderError> for JobFailure {
    fn from(error: genfleet_providers::ProviderError) -> Self {
        let code = provider_error_code(&error);
        JobFailure {
            code,
            message: error.to_string(),
            retryable: error.is_retryable(),
        }
    }
}

/// A local model's failure outside the provider call (the
/// `remove_background` preset step): classified like the local provider's.
impl From<crate::local_models::ModelError> for JobFailure {
    fn from(error: crate::local_models::ModelError) -> Self {
        use crate::local_models::ModelError as E;
        match error {
            E::Unavailable(_) | E::Overloaded(_) | E::Failed(_) => {
                JobFailure::new(ErrorCode::ProviderUnavailable, error.to_string())
            }
            E::Invalid(_) => JobFailure::new(ErrorCode::InvalidInput, error.to_string()),
            E::DeadlineExceeded => JobFailure::new(ErrorCode::DeadlineExceeded, error.to_string()),
            E::Image(e) => JobFailure::from(e),
        }
    }
}

/// The result code of a provider's error. Bad credentials share
/// `provider_unavailable` with outages: to the customer the provider could
/// not serve the job; operators get their own attempt outcome.
pub(crate) fn provider_error_code(error: &genfleet_providers::ProviderError) -> ErrorCode {
    use genfleet_providers::ProviderError as E;
    match error {
        E::Rejected { .. } => ErrorCode::ProviderRejected,
        E::Unavailable { .. }
        | E::Unauthorized { .. }
        | E::Malformed { .. }
        | E::RateLimited { .. }
        | E::Deferred { .. } => ErrorCode::ProviderUnavailable,
        E::DeadlineExceeded => ErrorCode::DeadlineExceeded,
        E::Unsupported { .. } => ErrorCode::InvalidInput,
        // Our own disk (a spooled input or output), not the provider.
        E::Local { .. } => ErrorCode::Internal,
    }
}

/// How a scan that gave no verdict stops the job: clamd down or silent is
/// our outage (requeue: the job is never run unscanned, nor failed for it);
/// an input beyond clamd's stream limit is the input's (`too_large`); an
/// answer we cannot read fails the job as `internal`, retryable.
pub(crate) fn scan_stop(error: genfleet_scan::ScanError, index: usize) -> Stop {
    use genfleet_scan::ScanError as E;
    match error {
        E::Unavailable(_) => Stop::requeue(RequeueReason::ScannerUnavailable, error),
        E::LimitExceeded(_) => Stop::Fail(JobFailure::new(
            ErrorCode::TooLarge,
            format!("inputs[{index}]: {error}"),
        )),
        E::Protocol(_) => Stop::Fail(JobFailure::new(
            ErrorCode::Internal,
            format!("inputs[{index}]: {error}"),
        )),
    }
}

/// A hit of the malware scanner: permanent, the same bytes match again.
pub(crate) fn malware_found(signature: &str, index: usize) -> JobFailure {
    JobFailure::new(
        ErrorCode::Malware,
        format!("inputs[{index}]: malware found by the scanner: {signature}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use genfleet_providers::ProviderError;

    /// The worker's typed mapping must agree with the code each crate
    /// states for its own errors (they share the contract's names).
    #[test]
    fn typed_codes_agree_with_the_crates_own_codes() {
        let provider_errors = [
            ProviderError::Rejected {
                message: "nsfw".into(),
            },
            ProviderError::Unavailable {
                message: "503".into(),
                retry_after: None,
            },
            ProviderError::Unauthorized {
                message: "401".into(),
            },
            ProviderError::Malformed {
                message: "{".into(),
            },
            ProviderError::DeadlineExceeded,
            ProviderError::Unsupported {
                message: "mask".into(),
            },
            ProviderError::RateLimited {
                message: "429".into(),
                retry_after: None,
            },
            ProviderError::Deferred {
                reason: genfleet_providers::DeferReason::CircuitOpen,
                retry_after: std::time::Duration::from_secs(5),
            },
            ProviderError::Local {
                message: "spool".into(),
            },
        ];
        for error in &provider_errors {
            assert_eq!(provider_error_code(error).as_str(), error.code(), "{error}");
        }
        use genfleet_imaging::ImagingError;
        let imaging_errors = [
            ImagingError::UnsupportedType {
                found: "svg".into(),
            },
            ImagingError::TooLarge("big".into()),
            ImagingError::Invalid("bad".into()),
            ImagingError::Internal("bug".into()),
        ];
        for error in imaging_errors {
            let code = error.code();
            assert_eq!(JobFailure::from(error).code.as_str(), code);
        }
    }
}

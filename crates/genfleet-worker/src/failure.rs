//! How a job stops early. A [`JobFailure`] ends the job with a failed result
//! (the input or the provider said no); a [`Stop::Requeue`] hands the
//! delivery back to the broker because our own infrastructure failed (store,
//! ledger), so the job is retried rather than failed for something that was
//! not the customer's fault. The class is decided where the error is born.
//! A malware hit is a permanent failure (`malware`); a scanner that cannot
//! be reached is a requeue, never a pass.

use genfleet_proto::ErrorCode;

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
    /// Return the delivery to the queue; the reason is for logs and metrics.
    Requeue {
        reason: &'static str,
        detail: String,
    },
    /// The provider is rendering the job: park it in a retry queue for
    /// this long, then look again (any worker).
    Park(std::time::Duration),
}

impl From<JobFailure> for Stop {
    fn from(failure: JobFailure) -> Self {
        Stop::Fail(failure)
    }
}

impl From<genfleet_imaging::ImagingError> for JobFailure {
    fn from(error: genfleet_imaging::ImagingError) -> Self {
        let code = match error.code() {
            "unsupported_type" => ErrorCode::UnsupportedType,
            "too_large" => ErrorCode::TooLarge,
            "invalid_input" => ErrorCode::InvalidInput,
            _ => ErrorCode::Internal,
        };
        JobFailure::new(code, error.to_string())
    }
}

impl From<genfleet_storage::StorageError> for Stop {
    fn from(error: genfleet_storage::StorageError) -> Self {
        use genfleet_storage::StorageError as E;
        match error {
            E::InvalidUri(_) | E::NotFound(_) => {
                Stop::Fail(JobFailure::new(ErrorCode::InvalidInput, error.to_string()))
            }
            E::TooLarge { .. } => {
                Stop::Fail(JobFailure::new(ErrorCode::TooLarge, error.to_string()))
            }
            E::Unavailable(_) => Stop::Requeue {
                reason: "storage_unavailable",
                detail: error.to_string(),
            },
        }
    }
}

impl From<genfleet_credits::CreditsError> for Stop {
    fn from(error: genfleet_credits::CreditsError) -> Self {
        use genfleet_credits::CreditsError as E;
        match error {
            E::Insufficient { .. } => Stop::Fail(JobFailure::new(
                ErrorCode::InsufficientCredits,
                error.to_string(),
            )),
            E::Invalid(_) => {
                Stop::Fail(JobFailure::new(ErrorCode::InvalidInput, error.to_string()))
            }
            E::Unavailable(_) | E::Database(_) => Stop::Requeue {
                reason: "ledger_unavailable",
                detail: error.to_string(),
            },
        }
    }
}

impl From<genfleet_providers::ProviderError> for JobFailure {
    fn from(error: genfleet_providers::ProviderError) -> Self {
        let code = ErrorCode::parse(error.code()).unwrap_or(ErrorCode::Internal);
        JobFailure {
            code,
            message: error.to_string(),
            retryable: error.is_retryable(),
        }
    }
}

/// How a scan that gave no verdict stops the job: clamd down or silent is
/// our outage (requeue: the job is never run unscanned, nor failed for it);
/// an input beyond clamd's stream limit is the input's (`too_large`); an
/// answer we cannot read fails the job as `internal`, retryable.
pub(crate) fn scan_stop(error: genfleet_scan::ScanError, index: usize) -> Stop {
    use genfleet_scan::ScanError as E;
    match error {
        E::Unavailable(_) => Stop::Requeue {
            reason: "scanner_unavailable",
            detail: error.to_string(),
        },
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

//! The one error type of this crate, classified where it is born: whether
//! the worker should give up on this job here ([`InferenceError::Unavailable`],
//! [`InferenceError::Invalid`]), try again elsewhere or later
//! ([`InferenceError::Overloaded`], [`InferenceError::DeadlineExceeded`]), or
//! report a runtime failure ([`InferenceError::Failed`]).
//!
//! Messages never carry image data: only sizes, paths, model names and the
//! runtime's own text.

use crate::batcher::BatchError;

/// Why an inference request did not produce pixels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferenceError {
    /// The runtime library or a model is missing, its sha256 does not match,
    /// or the execution provider failed to load: this worker cannot do it.
    #[error("inference unavailable: {message}")]
    Unavailable { message: String },
    /// The request itself is wrong (factor not 2 or 4, an image with a zero
    /// side, too many pixels for the operation): retrying will not help.
    #[error("invalid inference request: {message}")]
    Invalid { message: String },
    /// VRAM admission did not admit the work before the deadline: retryable
    /// on another worker or later.
    #[error("inference overloaded: {message}")]
    Overloaded { message: String },
    /// The caller's deadline passed while the request was queued or running.
    #[error("inference deadline exceeded")]
    DeadlineExceeded,
    /// The runtime failed a run (its message, never image data).
    #[error("inference failed: {message}")]
    Failed { message: String },
}

impl InferenceError {
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid {
            message: message.into(),
        }
    }

    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self::Failed {
            message: message.into(),
        }
    }

    /// A stable code from a closed set, for metric labels and
    /// `JobResult.error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "inference_unavailable",
            Self::Invalid { .. } => "inference_invalid",
            Self::Overloaded { .. } => "inference_overloaded",
            Self::DeadlineExceeded => "inference_deadline_exceeded",
            Self::Failed { .. } => "inference_failed",
        }
    }

    /// Whether the same request may succeed later or on another worker.
    /// `Unavailable` is permanent for this worker only (the worker decides
    /// whether to route elsewhere); `Failed` is not retryable because a
    /// runtime that failed on these pixels will most likely fail again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Overloaded { .. } | Self::DeadlineExceeded)
    }
}

impl From<BatchError> for InferenceError {
    fn from(error: BatchError) -> Self {
        match error {
            BatchError::DeadlineExceeded => Self::DeadlineExceeded,
            BatchError::Closed => Self::unavailable("the model's batcher has shut down"),
            other => Self::failed(other.to_string()),
        }
    }
}

//! Errors of a scan, each of a class decided where it is born: the worker
//! maps [`ScanError::Unavailable`] to a requeue (our outage) and the others
//! to a failed job.

/// Why a scan gave no verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The scanner could not be reached, reset the connection, closed it
    /// without an answer, or did not answer in time. The input was not
    /// scanned; scanning it again later may work.
    #[error("malware scanner unavailable: {0}")]
    Unavailable(String),
    /// The scanner refused the input for its size (clamd's
    /// `StreamMaxLength`): the same input will be refused again.
    #[error("the input is larger than the malware scanner accepts ({0})")]
    LimitExceeded(String),
    /// The scanner answered something that is not a verdict (another
    /// `ERROR`, or a reply that is not clamd's).
    #[error("malware scanner gave an unexpected answer: {0}")]
    Protocol(String),
}

impl ScanError {
    /// Whether the same scan may succeed later (the scanner was down), as
    /// opposed to an answer about this input.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ScanError::Unavailable(_))
    }
}

//! Malware scanning of uploads before anything decodes them.
//!
//! Owns the one outside thing the scan needs, clamd: [`ClamdScanner`] speaks
//! its `INSTREAM` protocol over TCP or a unix socket. The [`Scanner`] trait
//! is the seam the worker calls; a scan answers a [`Verdict`] or a
//! [`ScanError`] whose class says whose fault it is (our scanner is down:
//! try the job again later; the input is beyond what the scanner takes:
//! the input's fault).
//!
//! Architecture invariant: this crate knows bytes and clamd, not images,
//! jobs or the contract. It never decodes what it scans, and it never logs
//! or returns the bytes.
#![forbid(unsafe_code)]

mod clamd;
mod error;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use clamd::{ClamdAddress, ClamdConfig, ClamdScanner};
pub use error::ScanError;

/// What a scanner found in one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No signature matched.
    Clean,
    /// A signature matched; `signature` is the scanner's name for it
    /// (e.g. `Eicar-Test-Signature`).
    Infected { signature: String },
}

/// Scans whole inputs held in memory (uploads are size-capped before they
/// are fetched, so they fit).
#[async_trait::async_trait]
pub trait Scanner: Send + Sync {
    /// Scans `bytes`.
    ///
    /// # Errors
    /// [`ScanError::Unavailable`] when the scanner cannot be reached or does
    /// not answer in time (never a verdict: the input was not scanned);
    /// [`ScanError::LimitExceeded`] when the scanner refuses the input for
    /// its size; [`ScanError::Protocol`] for an answer it cannot read.
    async fn scan(&self, bytes: &[u8]) -> Result<Verdict, ScanError>;

    /// Whether the scanner answers at all (for readiness probes).
    ///
    /// # Errors
    /// As for [`Scanner::scan`], when it does not.
    async fn ping(&self) -> Result<(), ScanError>;
}

#[cfg(test)]
mod clamd_tests;

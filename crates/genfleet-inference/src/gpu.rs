//! GPU discovery and VRAM-aware admission.
//!
//! NVML sits behind [`GpuProbe`] so that everything above it (admission,
//! metrics, the engine's choice of execution provider) runs the same on a
//! machine without a driver, where [`discover`] hands out [`NoGpu`], and in
//! tests, where [`SimulatedGpu`] plays a device whose free memory changes
//! under load. [`VramAdmission`] makes GPU work wait for room instead of
//! failing with an out-of-memory error mid-run.

mod admission;
mod nvml;
mod simulated;

use std::sync::Arc;

pub use admission::{AdmissionError, VramAdmission, VramPermit, DEFAULT_POLL, DEFAULT_SETTLE};
pub use nvml::NvmlProbe;
pub use simulated::{SimulatedGpu, SimulatedOom};

/// One GPU as the probe last saw it. The optional readings are `None` where
/// the board or driver does not report them (power on some boards,
/// utilisation under MIG), so one missing sensor never hides the others.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuStatus {
    pub index: u32,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub memory_free_bytes: u64,
    pub utilisation_percent: Option<u32>,
    pub temperature_celsius: Option<u32>,
    pub power_watts: Option<f64>,
}

/// What a worker knows about its GPUs.
pub trait GpuProbe: Send + Sync + 'static {
    /// Every GPU that answers, with all readings it gives; for metrics, so it
    /// may cost a few driver calls per device.
    fn gpus(&self) -> Vec<GpuStatus>;
    /// Free memory of one GPU in bytes, or `None` when there is no such GPU
    /// or it did not answer. The cheap read that admission polls.
    fn free_memory(&self, index: u32) -> Option<u64>;
    /// One line for logs: which probe this is and what it found.
    fn describe(&self) -> &str;
}

/// Why NVML could not be opened or queried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// No NVML library could be loaded and initialised: no driver, no
    /// library, or no permission. Means "no GPU here", not a fault.
    #[error("NVML unavailable: {details}")]
    NvmlUnavailable { details: String },
    /// NVML initialised but a query every caller needs failed.
    #[error("NVML query failed: {message}")]
    Query { message: String },
}

/// The probe of a machine without a usable GPU: lists nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGpu;

impl GpuProbe for NoGpu {
    fn gpus(&self) -> Vec<GpuStatus> {
        Vec::new()
    }

    fn free_memory(&self, _index: u32) -> Option<u64> {
        None
    }

    fn describe(&self) -> &str {
        "no GPU"
    }
}

/// The probe for this machine: NVML when it opens and sees at least one
/// device, [`NoGpu`] otherwise. Logs one line saying which. Meant to be
/// called once at start-up; every call initialises NVML afresh.
pub fn discover() -> Arc<dyn GpuProbe> {
    match NvmlProbe::open() {
        Ok(probe) if probe.device_count() > 0 => {
            tracing::info!(probe = probe.describe(), "GPU discovery: using NVML");
            Arc::new(probe)
        }
        Ok(probe) => {
            tracing::info!(
                probe = probe.describe(),
                "GPU discovery: NVML opened but lists no device; running without a GPU"
            );
            Arc::new(NoGpu)
        }
        Err(error) => {
            tracing::info!(%error, "GPU discovery: no NVML; running without a GPU");
            Arc::new(NoGpu)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_gpu_lists_nothing() {
        let probe = NoGpu;
        assert!(probe.gpus().is_empty());
        assert_eq!(probe.free_memory(0), None);
        assert_eq!(probe.describe(), "no GPU");
    }

    #[test]
    fn discover_never_panics_and_agrees_with_the_probe() {
        // Here and on CI there is no driver, so this is NoGpu; on a GPU
        // machine NVML. Either way the list and the free reads must agree.
        let probe = discover();
        for gpu in probe.gpus() {
            assert!(gpu.memory_free_bytes <= gpu.memory_total_bytes);
            assert!(probe.free_memory(gpu.index).is_some());
        }
        assert!(!probe.describe().is_empty());
    }
}

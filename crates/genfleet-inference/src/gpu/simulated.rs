//! A GPU made of counters, for tests and the CPU twin of the GPU path.
//!
//! Like NVML it knows nothing of admission permits: memory shows as used
//! only when someone [`SimulatedGpu::allocate`]s it, so a test can model the
//! gap between a permit being granted and its work actually allocating.

use std::sync::Mutex;

use super::{GpuProbe, GpuStatus};

/// What [`SimulatedGpu::allocate`] refuses, as CUDA would with an
/// out-of-memory error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("simulated GPU out of memory: asked {requested} bytes, {free} free")]
pub struct SimulatedOom {
    pub requested: u64,
    pub free: u64,
}

#[derive(Debug, Default)]
struct Counters {
    external: u64,
    allocated: u64,
    peak_used: u64,
    refused: u64,
}

impl Counters {
    fn used(&self) -> u64 {
        self.external.saturating_add(self.allocated)
    }
}

/// One simulated GPU at index 0. All methods take `&self` and are safe to
/// call from any thread; each is one short critical section.
#[derive(Debug)]
pub struct SimulatedGpu {
    total: u64,
    counters: Mutex<Counters>,
}

impl SimulatedGpu {
    /// A device with `total_bytes` of memory, none of it used.
    pub fn new(total_bytes: u64) -> Self {
        Self {
            total: total_bytes,
            counters: Mutex::new(Counters::default()),
        }
    }

    // A test that panicked while holding the lock leaves plain integers
    // behind, still meaningful, so poisoning is ignored.
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Memory used by other processes; replaces the previous amount. May
    /// exceed what is free (others are not admitted by us): free reads 0.
    pub fn set_external_use(&self, bytes: u64) {
        let mut counters = self.counters();
        counters.external = bytes;
        counters.peak_used = counters.peak_used.max(counters.used());
    }

    /// Our own work allocating device memory. Refused, with nothing
    /// allocated, when it does not fit, as a real device would.
    pub fn allocate(&self, bytes: u64) -> Result<(), SimulatedOom> {
        let mut counters = self.counters();
        let free = self.total.saturating_sub(counters.used());
        if bytes > free {
            counters.refused += 1;
            return Err(SimulatedOom {
                requested: bytes,
                free,
            });
        }
        counters.allocated += bytes;
        counters.peak_used = counters.peak_used.max(counters.used());
        Ok(())
    }

    /// Our own work releasing memory it allocated; saturates at zero so a
    /// double free in a test shows as too little use, not a wrap-around.
    pub fn free(&self, bytes: u64) {
        let mut counters = self.counters();
        counters.allocated = counters.allocated.saturating_sub(bytes);
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// External use plus our allocations.
    pub fn used(&self) -> u64 {
        self.counters().used()
    }

    /// The most [`Self::used`] has ever been.
    pub fn peak_used(&self) -> u64 {
        self.counters().peak_used
    }

    /// How many allocations were refused for lack of memory.
    pub fn refused_allocations(&self) -> u64 {
        self.counters().refused
    }
}

impl GpuProbe for SimulatedGpu {
    fn gpus(&self) -> Vec<GpuStatus> {
        let used = self.used().min(self.total);
        vec![GpuStatus {
            index: 0,
            name: "simulated".to_owned(),
            memory_total_bytes: self.total,
            memory_used_bytes: used,
            memory_free_bytes: self.total - used,
            utilisation_percent: None,
            temperature_celsius: None,
            power_watts: None,
        }]
    }

    fn free_memory(&self, index: u32) -> Option<u64> {
        (index == 0).then(|| self.total.saturating_sub(self.used()))
    }

    fn describe(&self) -> &str {
        "simulated GPU"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_follows_external_use_and_allocations() {
        let gpu = SimulatedGpu::new(1000);
        assert_eq!(gpu.free_memory(0), Some(1000));
        assert_eq!(gpu.free_memory(1), None);
        gpu.set_external_use(300);
        assert_eq!(gpu.allocate(200), Ok(()));
        assert_eq!(gpu.free_memory(0), Some(500));
        assert_eq!(
            gpu.allocate(600),
            Err(SimulatedOom {
                requested: 600,
                free: 500
            })
        );
        assert_eq!(gpu.refused_allocations(), 1);
        gpu.free(200);
        gpu.set_external_use(0);
        assert_eq!(gpu.free_memory(0), Some(1000));
        assert_eq!(gpu.peak_used(), 500);
        gpu.set_external_use(5000);
        assert_eq!(gpu.free_memory(0), Some(0));
        let status = &gpu.gpus()[0];
        assert_eq!(status.memory_used_bytes + status.memory_free_bytes, 1000);
    }
}

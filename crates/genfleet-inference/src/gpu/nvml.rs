//! The NVML probe. nvml-wrapper opens the library with `dlopen` at run time,
//! so the same binary runs where there is no driver: opening fails and the
//! caller treats that as "no GPU".

use std::ffi::OsStr;

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::Nvml;

use super::{GpuError, GpuProbe, GpuStatus};

/// Libraries tried after nvml-wrapper's default (`libnvidia-ml.so`, which
/// only the driver's development package installs): the runtime soname, and
/// where the NVIDIA container toolkit mounts it in our GPU images, which is
/// not on the loader's search path there.
const FALLBACK_LIBRARIES: &[&str] = &[
    "libnvidia-ml.so.1",
    "/usr/local/nvidia/lib64/libnvidia-ml.so.1",
];

/// GPUs read through NVML.
pub struct NvmlProbe {
    nvml: Nvml,
    device_count: u32,
    description: String,
}

impl std::fmt::Debug for NvmlProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlProbe")
            .field("device_count", &self.device_count)
            .field("description", &self.description)
            .finish()
    }
}

impl NvmlProbe {
    /// Loads and initialises NVML, trying the default library name and then
    /// [`FALLBACK_LIBRARIES`]. Fails with [`GpuError::NvmlUnavailable`],
    /// listing every attempt, where there is no driver.
    pub fn open() -> Result<Self, GpuError> {
        let mut attempts = Vec::new();
        let nvml = match Nvml::init() {
            Ok(nvml) => Some(nvml),
            Err(error) => {
                attempts.push(format!("default library: {error}"));
                None
            }
        };
        let nvml = match nvml {
            Some(nvml) => nvml,
            None => FALLBACK_LIBRARIES
                .iter()
                .find_map(
                    |path| match Nvml::builder().lib_path(OsStr::new(path)).init() {
                        Ok(nvml) => Some(nvml),
                        Err(error) => {
                            attempts.push(format!("{path}: {error}"));
                            None
                        }
                    },
                )
                .ok_or_else(|| GpuError::NvmlUnavailable {
                    details: attempts.join("; "),
                })?,
        };
        Self::from_nvml(nvml)
    }

    fn from_nvml(nvml: Nvml) -> Result<Self, GpuError> {
        let device_count = nvml.device_count().map_err(|error| GpuError::Query {
            message: format!("device count: {error}"),
        })?;
        // The driver version is only for the log line; a driver too old to
        // report it still serves every reading admission needs.
        let driver = nvml
            .sys_driver_version()
            .unwrap_or_else(|_| "unknown".to_owned());
        let names: Vec<String> = (0..device_count)
            .map(|index| {
                nvml.device_by_index(index)
                    .and_then(|device| device.name())
                    .unwrap_or_else(|_| "unnamed".to_owned())
            })
            .collect();
        let description = format!(
            "NVML (driver {driver}, {device_count} GPU{}{}{})",
            if device_count == 1 { "" } else { "s" },
            if names.is_empty() { "" } else { ": " },
            names.join(", ")
        );
        Ok(Self {
            nvml,
            device_count,
            description,
        })
    }

    /// How many devices NVML listed when it was opened.
    pub fn device_count(&self) -> u32 {
        self.device_count
    }

    fn status(&self, index: u32) -> Option<GpuStatus> {
        let device = match self.nvml.device_by_index(index) {
            Ok(device) => device,
            Err(error) => {
                tracing::debug!(index, %error, "NVML: device did not answer");
                return None;
            }
        };
        // Memory is the one reading the status cannot do without: a device
        // that does not report it (fallen off the bus) is left out of the
        // list rather than reported as empty.
        let memory = match device.memory_info() {
            Ok(memory) => memory,
            Err(error) => {
                tracing::debug!(index, %error, "NVML: memory info failed");
                return None;
            }
        };
        Some(GpuStatus {
            index,
            name: device.name().unwrap_or_else(|_| "unnamed".to_owned()),
            memory_total_bytes: memory.total,
            memory_used_bytes: memory.used,
            memory_free_bytes: memory.free,
            utilisation_percent: device.utilization_rates().ok().map(|rates| rates.gpu),
            temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok(),
            // NVML reports milliwatts.
            power_watts: device
                .power_usage()
                .ok()
                .map(|milliwatts| f64::from(milliwatts) / 1000.0),
        })
    }
}

impl GpuProbe for NvmlProbe {
    fn gpus(&self) -> Vec<GpuStatus> {
        (0..self.device_count)
            .filter_map(|index| self.status(index))
            .collect()
    }

    fn free_memory(&self, index: u32) -> Option<u64> {
        if index >= self.device_count {
            return None;
        }
        self.nvml
            .device_by_index(index)
            .and_then(|device| device.memory_info())
            .map(|memory| memory.free)
            .ok()
    }

    fn describe(&self) -> &str {
        &self.description
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_without_a_driver_is_an_error_not_a_panic() {
        match NvmlProbe::open() {
            // A GPU machine: the probe must then be usable.
            Ok(probe) => {
                assert!(probe.describe().starts_with("NVML"));
                assert_eq!(probe.gpus().len() as u32, probe.device_count());
                assert_eq!(probe.free_memory(probe.device_count()), None);
            }
            Err(GpuError::NvmlUnavailable { details }) => {
                // Every library we tried is named, so a log says why.
                assert!(details.contains("default library"), "{details}");
                for path in FALLBACK_LIBRARIES {
                    assert!(details.contains(path), "{details}");
                }
            }
            Err(other) => panic!("unexpected error kind: {other}"),
        }
    }
}

//! The engine's and the GPUs' metrics: an [`InferenceObserver`] that feeds
//! the batch, admission and footprint series, the execution provider in
//! use, and the per-GPU gauges read from the probe right before each scrape
//! (a few NVML calls, cheaper than a timer that runs when nobody looks).
//! Labels are model names from the engine's registry and GPU indexes and
//! board names: closed sets.

use std::sync::Arc;

use genfleet_inference::gpu::GpuProbe;
use genfleet_inference::{ExecutionProvider, InferenceObserver};

use crate::metrics::Metrics;

struct MetricsObserver(Metrics);

impl InferenceObserver for MetricsObserver {
    fn batch_ran(&self, model: &str, size: usize, seconds: f64) {
        self.0
            .inference_batch_size
            .with_label_values(&[model])
            .observe(size as f64);
        self.0
            .inference_batch_seconds
            .with_label_values(&[model])
            .observe(seconds);
    }

    fn admission_waited(&self, model: &str, seconds: f64) {
        self.0
            .inference_admission_wait_seconds
            .with_label_values(&[model])
            .observe(seconds);
    }

    fn model_loaded(&self, model: &str, footprint_bytes: u64) {
        self.0
            .inference_model_footprint_bytes
            .with_label_values(&[model])
            .set(i64::try_from(footprint_bytes).unwrap_or(i64::MAX));
    }
}

/// The observer the engine reports to.
pub(super) fn observer(metrics: &Metrics) -> Arc<dyn InferenceObserver> {
    Arc::new(MetricsObserver(metrics.clone()))
}

/// `genfleet_inference_execution_provider{provider}`: 1 for the one in use,
/// 0 for the others, so a dashboard sees a worker fall back to the CPU.
pub(super) fn export_execution_provider(metrics: &Metrics, in_use: ExecutionProvider) {
    for provider in [ExecutionProvider::Cuda, ExecutionProvider::Cpu] {
        metrics
            .inference_execution_provider
            .with_label_values(&[provider.label()])
            .set(i64::from(provider == in_use));
    }
}

/// Reads every GPU of `gpus` into the `genfleet_gpu_*` gauges before each
/// scrape. A sensor a board does not report leaves its gauge unset rather
/// than showing a false 0.
pub(super) fn export_gpus(metrics: &Metrics, gpus: Arc<dyn GpuProbe>) {
    let m = metrics.clone();
    metrics.on_render(move || {
        for gpu in gpus.gpus() {
            let index = gpu.index.to_string();
            let labels = [index.as_str(), gpu.name.as_str()];
            let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
            m.gpu_memory_used_bytes
                .with_label_values(&labels)
                .set(bytes(gpu.memory_used_bytes));
            m.gpu_memory_total_bytes
                .with_label_values(&labels)
                .set(bytes(gpu.memory_total_bytes));
            if let Some(percent) = gpu.utilisation_percent {
                m.gpu_utilisation_ratio
                    .with_label_values(&labels)
                    .set(f64::from(percent) / 100.0);
            }
            if let Some(celsius) = gpu.temperature_celsius {
                m.gpu_temperature_celsius
                    .with_label_values(&labels)
                    .set(f64::from(celsius));
            }
            if let Some(watts) = gpu.power_watts {
                m.gpu_power_watts.with_label_values(&labels).set(watts);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use genfleet_inference::gpu::GpuStatus;

    struct OneGpu;

    impl GpuProbe for OneGpu {
        fn gpus(&self) -> Vec<GpuStatus> {
            vec![GpuStatus {
                index: 0,
                name: "NVIDIA H200".into(),
                memory_total_bytes: 1000,
                memory_used_bytes: 250,
                memory_free_bytes: 750,
                utilisation_percent: Some(40),
                temperature_celsius: Some(51),
                power_watts: None,
            }]
        }
        fn free_memory(&self, _index: u32) -> Option<u64> {
            Some(750)
        }
        fn describe(&self) -> &str {
            "one simulated GPU"
        }
    }

    #[test]
    fn gpus_batches_and_the_provider_reach_the_exposition() {
        let metrics = Metrics::new();
        export_gpus(&metrics, Arc::new(OneGpu));
        export_execution_provider(&metrics, ExecutionProvider::Cpu);
        let observer = observer(&metrics);
        observer.batch_ran("u2netp", 3, 0.2);
        observer.model_loaded("u2netp", 4_600_000);
        observer.admission_waited("u2netp", 0.0);
        let text = metrics.render();
        for line in [
            "genfleet_gpu_memory_used_bytes{gpu=\"0\",name=\"NVIDIA H200\"} 250",
            "genfleet_gpu_memory_total_bytes{gpu=\"0\",name=\"NVIDIA H200\"} 1000",
            "genfleet_gpu_utilisation_ratio{gpu=\"0\",name=\"NVIDIA H200\"} 0.4",
            "genfleet_gpu_temperature_celsius{gpu=\"0\",name=\"NVIDIA H200\"} 51",
            "genfleet_inference_execution_provider{provider=\"cpu\"} 1",
            "genfleet_inference_execution_provider{provider=\"cuda\"} 0",
            "genfleet_inference_batch_size_sum{model=\"u2netp\"} 3",
            "genfleet_inference_batch_seconds_count{model=\"u2netp\"} 1",
            "genfleet_inference_admission_wait_seconds_count{model=\"u2netp\"} 1",
            "genfleet_inference_model_footprint_bytes{model=\"u2netp\"} 4600000",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // No power reading: no series rather than a false 0.
        assert!(!text.contains("genfleet_gpu_power_watts{"), "{text}");
    }
}

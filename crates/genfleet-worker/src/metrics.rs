//! Every metric the worker exports, in one place. Names follow Prometheus
//! conventions: `genfleet_` prefix, base units in the name, `_total` only on
//! counters, a histogram's `_count` instead of a twin counter. Label values
//! come from closed sets (job kind, status, error code, stage, provider):
//! never a job, tenant or user id.

use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for whole jobs and provider calls: from a fast local resize to a
/// video render.
const JOB_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];
/// Items in one model run: the micro-batcher's sizes up to
/// `inference.max_batch`'s ceiling.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
const STAGE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Jobs by kind and terminal status; `_count` is the job counter.
    pub job_duration_seconds: HistogramVec,
    /// Failed jobs by stable error code.
    pub job_errors_total: IntCounterVec,
    pub stage_duration_seconds: HistogramVec,
    pub jobs_in_flight: IntGauge,
    /// Provider calls by provider and outcome (ok, or an error code).
    pub provider_attempts_total: IntCounterVec,
    /// Messages this worker dead-lettered, by error code.
    pub dead_letters_total: IntCounterVec,
    /// Deliveries handed back to the queue (infrastructure failure, panic).
    pub requeues_total: IntCounterVec,
    pub deliveries_total: IntCounterVec,
    pub jobs_delayed_total: IntCounterVec,
    /// Parks of long renders (first submit and every look that found the
    /// provider still rendering), by provider.
    pub jobs_parked_total: IntCounterVec,
    /// Provider requests a cancel reached, by provider and outcome
    /// (`cancelled`, `failed`).
    pub provider_cancels_total: IntCounterVec,
    /// Cancel requests taken off the cancel queue: `recorded` the first
    /// time, `repeated` for a job already cancelled.
    pub cancel_requests_total: IntCounterVec,
    pub credits_captured_total: IntCounterVec,
    pub credits_released_total: IntCounterVec,
    /// 1 while the worker holds a broker connection.
    pub broker_connected: IntGauge,
    /// Jobs moved one lane down because their workspace held its share.
    pub jobs_demoted_total: IntCounterVec,
    /// Jobs started, by lane: how the high lane is served under load.
    pub jobs_started_total: IntCounterVec,
    /// Deliveries taken from the broker that wait for a free slot here.
    pub jobs_waiting: IntGauge,
    /// Models whose circuit breaker is open or half-open, by provider.
    pub provider_breakers_open: IntGaugeVec,
    /// Calls inside a provider client now, by provider.
    pub provider_calls_in_flight: IntGaugeVec,
    pub provider_circuit_open: IntGaugeVec,
    pub provider_repeated_reads_total: IntCounterVec,
    /// Inputs scanned for malware, by outcome (`clean`, `infected`,
    /// `error`: no verdict, see the log and `genfleet_requeues_total`).
    pub scans_total: IntCounterVec,
    /// Time of one malware scan (connect, send, clamd's verdict), every
    /// outcome.
    pub scan_duration_seconds: Histogram,
    /// Inputs prepared for a provider, by how: `passed_through` (the
    /// upload's JPEG data, metadata stripped) or `reencoded`.
    pub provider_inputs_total: IntCounterVec,
    /// Source deletions (`delete_sources_after`) waiting in the ledger,
    /// fleet-wide, by state (`waiting`: not tried or not due yet;
    /// `failing`: the last attempt failed and will be retried).
    pub source_deletions_pending: IntGaugeVec,
    /// Source deletion attempts by this worker, by outcome (`deleted`,
    /// `failed`: retried later, `refused`: not the tenant's to delete).
    pub source_deletions_total: IntCounterVec,
    /// What retention purges run by this worker removed, by kind
    /// (`outputs`, `outcomes`, `provider_submissions`, `job_attempts`,
    /// `job_cancellations`, `dead_letters`).
    pub purged_total: IntCounterVec,
    /// 1 for the ONNX Runtime execution provider in use (`cuda`, `cpu`), 0
    /// for the others; absent without `[inference]`.
    pub inference_execution_provider: IntGaugeVec,
    /// Items in each model run, by model.
    pub inference_batch_size: HistogramVec,
    /// Time of each model run, by model.
    pub inference_batch_seconds: HistogramVec,
    /// Time a model load or batch waited for GPU memory, by model.
    pub inference_admission_wait_seconds: HistogramVec,
    /// Memory a loaded model took (VRAM on CUDA, resident on the CPU).
    pub inference_model_footprint_bytes: IntGaugeVec,
    /// Per GPU (index and board name), read right before each scrape.
    pub gpu_memory_used_bytes: IntGaugeVec,
    pub gpu_memory_total_bytes: IntGaugeVec,
    /// 0..1 of the last sample period the GPU was busy.
    pub gpu_utilisation_ratio: GaugeVec,
    pub gpu_temperature_celsius: GaugeVec,
    pub gpu_power_watts: GaugeVec,
    /// Read state into gauges right before each scrape.
    hooks: Arc<Mutex<Vec<RenderHook>>>,
}

type RenderHook = Box<dyn Fn() + Send + Sync>;

impl Metrics {
    /// # Panics
    /// Never at run time: registration fails only for duplicate or malformed
    /// names, which the constant names below rule out (covered by a test).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("valid histogram definition");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric name");
            h
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric name");
            g
        };
        let plain_histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .expect("valid histogram definition");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric name");
            h
        };
        let float_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric name");
            g
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric name");
            g
        };
        Metrics {
            job_duration_seconds: histogram(
                "genfleet_job_duration_seconds",
                "Time from delivery to published result, by job kind and terminal status",
                &["kind", "status"],
                JOB_BUCKETS,
            ),
            job_errors_total: counter(
                "genfleet_job_errors_total",
                "Jobs that ended with an error, by stable error code",
                &["code"],
            ),
            stage_duration_seconds: histogram(
                "genfleet_stage_duration_seconds",
                "Time spent in each lifecycle stage",
                &["stage"],
                STAGE_BUCKETS,
            ),
            jobs_in_flight: gauge("genfleet_jobs_in_flight", "Jobs being processed right now"),
            provider_attempts_total: counter(
                "genfleet_provider_attempts_total",
                "Calls to AI providers, by provider and outcome",
                &["provider", "outcome"],
            ),
            dead_letters_total: counter(
                "genfleet_dead_letters_total",
                "Messages dead-lettered by this worker, by error code",
                &["code"],
            ),
            requeues_total: counter(
                "genfleet_requeues_total",
                "Deliveries returned to their queue for another attempt, by reason",
                &["reason"],
            ),
            deliveries_total: counter(
                "genfleet_deliveries_total",
                "Deliveries settled with the broker, by disposition (ack, requeue, park, move_down, dead_letter, redeliver, channel_lost)",
                &["disposition"],
            ),
            jobs_delayed_total: counter(
                "genfleet_jobs_delayed_total",
                "Jobs sent back to a retry queue because no provider of their chain could take them now, by provider and reason (circuit_open, at_capacity)",
                &["provider", "reason"],
            ),
            jobs_parked_total: counter(
                "genfleet_jobs_parked_total",
                "Jobs parked in a retry queue while their provider renders, by provider",
                &["provider"],
            ),
            provider_cancels_total: counter(
                "genfleet_provider_cancels_total",
                "Provider requests a cancel request reached, by provider and outcome",
                &["provider", "outcome"],
            ),
            cancel_requests_total: counter(
                "genfleet_cancel_requests_total",
                "Cancel requests handled, by outcome (recorded, repeated, foreign)",
                &["outcome"],
            ),
            credits_captured_total: counter(
                "genfleet_credits_captured_total",
                "Credits captured for succeeded jobs, by job kind",
                &["kind"],
            ),
            credits_released_total: counter(
                "genfleet_credits_released_total",
                "Credits returned to accounts after failed jobs, by job kind",
                &["kind"],
            ),
            broker_connected: gauge(
                "genfleet_broker_connected",
                "1 while the worker holds a broker connection",
            ),
            jobs_demoted_total: counter(
                "genfleet_jobs_demoted_total",
                "Jobs moved one lane down because their workspace held its share of this worker, by class and the lane they left",
                &["class", "lane"],
            ),
            jobs_started_total: counter(
                "genfleet_jobs_started_total",
                "Jobs started, by class and lane",
                &["class", "lane"],
            ),
            jobs_waiting: gauge(
                "genfleet_jobs_waiting",
                "Deliveries held by this worker that wait for a free slot",
            ),
            provider_breakers_open: gauge_vec(
                "genfleet_provider_breakers_open",
                "Models whose circuit breaker is open or half-open, by provider",
                &["provider"],
            ),
            provider_calls_in_flight: gauge_vec(
                "genfleet_provider_calls_in_flight",
                "Calls inside a provider client now, by provider",
                &["provider"],
            ),
            provider_circuit_open: gauge_vec(
                "genfleet_provider_circuit_open",
                "1 while a model's circuit breaker is open or half-open, by provider and model",
                &["provider", "model"],
            ),
            provider_repeated_reads_total: counter(
                "genfleet_provider_repeated_reads_total",
                "Reads of an existing provider request (status, result, output) that failed and were made again on the same request, by provider",
                &["provider"],
            ),
            scans_total: counter(
                "genfleet_scans_total",
                "Inputs scanned for malware, by outcome (clean, infected, error)",
                &["outcome"],
            ),
            scan_duration_seconds: plain_histogram(
                "genfleet_scan_duration_seconds",
                "Time of one malware scan of an input",
                STAGE_BUCKETS,
            ),
            provider_inputs_total: counter(
                "genfleet_provider_inputs_total",
                "Inputs prepared for a provider, by how (passed_through, reencoded)",
                &["path"],
            ),
            source_deletions_pending: gauge_vec(
                "genfleet_source_deletions_pending",
                "Source deletions waiting in the ledger, fleet-wide, by state (waiting, failing)",
                &["state"],
            ),
            source_deletions_total: counter(
                "genfleet_source_deletions_total",
                "Source deletion attempts by this worker, by outcome (deleted, failed, refused)",
                &["outcome"],
            ),
            purged_total: counter(
                "genfleet_purged_total",
                "Objects, rows and dead letters removed by retention purges run here, by kind",
                &["kind"],
            ),
            inference_execution_provider: gauge_vec(
                "genfleet_inference_execution_provider",
                "1 for the ONNX Runtime execution provider local models run on (cuda, cpu)",
                &["provider"],
            ),
            inference_batch_size: histogram(
                "genfleet_inference_batch_size",
                "Requests (or tiles) in one model run, by model",
                &["model"],
                BATCH_SIZE_BUCKETS,
            ),
            inference_batch_seconds: histogram(
                "genfleet_inference_batch_seconds",
                "Time of one model run, by model",
                &["model"],
                STAGE_BUCKETS,
            ),
            inference_admission_wait_seconds: histogram(
                "genfleet_inference_admission_wait_seconds",
                "Time a model load or batch waited for GPU memory, by model",
                &["model"],
                STAGE_BUCKETS,
            ),
            inference_model_footprint_bytes: gauge_vec(
                "genfleet_inference_model_footprint_bytes",
                "Memory a loaded model took, measured at load, by model",
                &["model"],
            ),
            gpu_memory_used_bytes: gauge_vec(
                "genfleet_gpu_memory_used_bytes",
                "GPU memory in use, by GPU index and board name",
                &["gpu", "name"],
            ),
            gpu_memory_total_bytes: gauge_vec(
                "genfleet_gpu_memory_total_bytes",
                "GPU memory in all, by GPU index and board name",
                &["gpu", "name"],
            ),
            gpu_utilisation_ratio: float_gauge_vec(
                "genfleet_gpu_utilisation_ratio",
                "Share of the last sample period the GPU was busy (0..1)",
                &["gpu", "name"],
            ),
            gpu_temperature_celsius: float_gauge_vec(
                "genfleet_gpu_temperature_celsius",
                "GPU temperature",
                &["gpu", "name"],
            ),
            gpu_power_watts: float_gauge_vec(
                "genfleet_gpu_power_watts",
                "GPU power draw",
                &["gpu", "name"],
            ),
            hooks: Arc::default(),
            registry,
        }
    }

    /// Runs `hook` before every [`Metrics::render`], to copy state that
    /// lives elsewhere (a provider's breakers) into gauges.
    pub fn on_render(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(hook));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        for hook in self
            .hooks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            hook();
        }
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if encoder
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_renders() {
        let m = Metrics::new();
        m.job_errors_total.with_label_values(&["too_large"]).inc();
        m.job_duration_seconds
            .with_label_values(&["upscale", "failed"])
            .observe(0.2);
        m.scans_total.with_label_values(&["infected"]).inc();
        m.scan_duration_seconds.observe(0.01);
        let text = m.render();
        assert!(text.contains("genfleet_job_errors_total{code=\"too_large\"} 1"));
        assert!(text.contains("genfleet_scans_total{outcome=\"infected\"} 1"));
        assert!(text.contains("genfleet_scan_duration_seconds_count 1"));
        assert!(text
            .contains("genfleet_job_duration_seconds_count{kind=\"upscale\",status=\"failed\"} 1"));
    }

    #[test]
    fn hooks_run_before_each_render() {
        let m = Metrics::new();
        let calls = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let gauge = m.provider_breakers_open.clone();
        let counted = calls.clone();
        m.on_render(move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            gauge.with_label_values(&["fal"]).set(n);
        });
        assert!(m
            .render()
            .contains("genfleet_provider_breakers_open{provider=\"fal\"} 1"));
        assert!(m
            .render()
            .contains("genfleet_provider_breakers_open{provider=\"fal\"} 2"));
    }
}

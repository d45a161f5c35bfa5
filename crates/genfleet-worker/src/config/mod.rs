//! Worker configuration: compiled defaults, then an optional TOML file, then
//! `GENFLEET__SECTION__KEY` environment variables (e.g.
//! `GENFLEET__BROKER__URL`), then CLI flags. Validated once at start-up with
//! an error that names the key.
//!
//! Every field's doc comment is the configuration reference (README.md,
//! "Configuration").

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod inference;
mod providers;
mod retention;
mod storage;

pub use inference::*;
pub use providers::*;
pub use retention::*;
pub use storage::*;

/// A value that must never reach logs: `Debug` prints `[redacted]`.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub worker: WorkerSection,
    pub broker: BrokerSection,
    pub database: DatabaseSection,
    pub storage: StorageSection,
    pub limits: LimitsSection,
    pub http: HttpSection,
    pub providers: ProvidersSection,
    pub scanner: ScannerSection,
    pub retention: RetentionSection,
    pub inference: InferenceSection,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSection {
    /// Name reported in results and the broker's connection list; empty means
    /// `<hostname>-<pid>`.
    pub name: String,
    /// Jobs run at once; also the consumer prefetch, so the broker never
    /// hands this worker more than it can start.
    pub concurrency: u16,
    /// Job classes to consume: any of "cpu", "gpu", "remote".
    pub classes: Vec<String>,
    /// Seconds in-flight jobs get to finish after SIGTERM before the worker
    /// exits anyway (their deliveries then return to the queue).
    pub grace_period_seconds: u64,
    /// Image decode/resize/encode tasks run at once; 0 means one per CPU.
    pub imaging_threads: usize,
    /// Jobs of one workspace this worker holds (running or waiting for a
    /// slot) before it moves that workspace's further high/normal jobs one
    /// lane down, so a 10,000-image batch cannot starve another tenant's
    /// single job. 0 means half the concurrency (at least 1).
    pub max_in_flight_per_workspace: u16,
    /// Starts of one job that may end without a result (worker crashed,
    /// killed, job panicked) before its next start fails it with
    /// `internal` instead of running it.
    pub max_starts_per_job: u16,
    /// Times one job may go back to its queue because our infrastructure
    /// failed (ledger, store, broker, spool, scanner) before it fails with
    /// `internal`, its credits released and its message dead-lettered. A
    /// job that meets the same failure on every run (an input the store
    /// can never open) would otherwise circle forever.
    pub max_requeues_per_job: u16,
    /// Folder for image bytes that wait (inputs during a provider call,
    /// outputs until an imaging slot frees) beyond `spool_memory_bytes`;
    /// empty means `genfleet-spool` in the system's temporary folder. Each
    /// process uses its own subfolder and removes those of dead ones.
    pub spool_dir: String,
    /// Bytes of waiting inputs and outputs held in memory, all jobs
    /// together; the rest wait in `spool_dir`. 0 keeps everything on disk.
    pub spool_memory_bytes: u64,
    /// Bytes of request bodies with inline images (fal submits: base64
    /// data URIs) built and being sent at once, all jobs together; a submit
    /// waits for room. 0 means no bound.
    pub send_memory_bytes: u64,
    /// Jobs fetching, scanning and preparing their inputs at once. Each
    /// holds its uploads in memory until an imaging slot has prepared them;
    /// without this bound, 2,000 jobs starting together read 2,000 uploads
    /// at the same moment and hold them all while they queue for the CPU.
    pub max_concurrent_fetches: u16,
}

impl WorkerSection {
    /// The folder that holds every worker process's spool subfolder:
    /// `spool_dir`, or `genfleet-spool` in the temporary folder.
    pub fn spool_base(&self) -> PathBuf {
        if self.spool_dir.is_empty() {
            std::env::temp_dir().join("genfleet-spool")
        } else {
            PathBuf::from(&self.spool_dir)
        }
    }

    /// [`WorkerSection::max_in_flight_per_workspace`] with 0 resolved.
    pub fn workspace_cap(&self) -> usize {
        match self.max_in_flight_per_workspace {
            0 => usize::from(self.concurrency / 2).max(1),
            n => usize::from(n),
        }
    }
}

impl Default for WorkerSection {
    fn default() -> Self {
        WorkerSection {
            name: String::new(),
            concurrency: 8,
            classes: vec!["cpu".into(), "remote".into()],
            grace_period_seconds: 30,
            imaging_threads: 0,
            max_in_flight_per_workspace: 0,
            max_starts_per_job: 4,
            max_requeues_per_job: 20,
            spool_dir: String::new(),
            spool_memory_bytes: 64 * 1024 * 1024,
            send_memory_bytes: 32 * 1024 * 1024,
            max_concurrent_fetches: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// AMQP URL, `amqp://user:password@host:5672/vhost` (`%2f` is the default
    /// vhost). Treated as a secret: it may hold a password.
    pub url: Secret,
    /// The job queues' `x-delivery-limit`: a backstop above
    /// `worker.max_starts_per_job`, because a worker's death also counts
    /// against deliveries that only waited in its buffer. The worker fails
    /// the job itself on the last delivery, so the broker never drops one
    /// silently. Must be the same on every worker.
    pub delivery_limit: u32,
    /// Longest pause between reconnect attempts, in seconds.
    pub reconnect_max_delay_seconds: u64,
    /// Seconds a job waits in `genfleet.retry.<delay>` after an
    /// infrastructure failure (ledger, store, broker), by how many times it
    /// was already sent back; the last value repeats. Every value must be
    /// one of the retry queues' delays (5, 30, 300). The job's deadline
    /// still ends it.
    pub requeue_delays_seconds: Vec<u64>,
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            delivery_limit: 20,
            reconnect_max_delay_seconds: 30,
            requeue_delays_seconds: vec![5, 5, 30, 300],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// PostgreSQL URL of the credit ledger. Treated as a secret.
    pub url: Secret,
    /// Schema holding the ledger tables ([a-z0-9_]).
    pub schema: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Run the ledger migrations when the worker starts.
    pub migrate_on_start: bool,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        DatabaseSection {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/test"),
            schema: "genfleet".into(),
            pool_size: 8,
            migrate_on_start: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest input accepted, in bytes (checked before reading it).
    pub max_input_bytes: u64,
    /// Widest image accepted, in pixels (checked from the header).
    pub max_width: u32,
    /// Tallest image accepted, in pixels (checked from the header).
    pub max_height: u32,
    /// Most pixels accepted (width x height), checked from the header.
    pub max_pixels: u64,
    /// Most frames in an animated GIF, PNG or WebP (only the first is
    /// decoded; the count is read from the container).
    pub max_frames: u64,
    /// Largest provider output downloaded, in bytes.
    pub max_output_bytes: u64,
    /// A TOML file of output presets added to the built-in ones (a preset
    /// with a built-in's name replaces it); see the README's "Presets".
    pub presets_file: Option<PathBuf>,
    /// Input limits of one job class (`cpu`, `gpu`, `remote`) that differ
    /// from the ones above, e.g. `[limits.classes.gpu] max_pixels =
    /// 16000000`; any subset of `max_input_bytes`, `max_width`,
    /// `max_height` and `max_pixels`, the rest as above. A job's class is
    /// the queue it was delivered from.
    pub classes: std::collections::BTreeMap<String, ClassLimits>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_input_bytes: 50 * 1024 * 1024,
            max_width: 16384,
            max_height: 16384,
            max_pixels: 50_000_000,
            max_frames: 1000,
            max_output_bytes: 200 * 1024 * 1024,
            presets_file: None,
            classes: std::collections::BTreeMap::new(),
        }
    }
}

/// A job class's own input limits (`[limits.classes.<class>]`); a field
/// left out keeps the value of `[limits]`. Provider outputs keep the global
/// `max_output_bytes`: provider clients are shared by every class.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClassLimits {
    /// Largest input accepted for this class, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_input_bytes: Option<u64>,
    /// Widest image accepted for this class, in pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_width: Option<u32>,
    /// Tallest image accepted for this class, in pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_height: Option<u32>,
    /// Most pixels accepted for this class (width x height).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pixels: Option<u64>,
    /// Most frames accepted for this class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frames: Option<u64>,
}

/// The malware scan of every fetched input, before anything decodes it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScannerSection {
    /// Scan every input with clamd. When on, a job is never run unscanned:
    /// while clamd is unreachable its jobs go back to the queue (and
    /// `/readyz` fails).
    pub enabled: bool,
    /// clamd's address: `tcp:<host>:<port>` (clamd's `TCPSocket`) or
    /// `unix:<path>` (its `LocalSocket`, e.g. `unix:/run/clamav/clamd.ctl`).
    pub address: String,
    /// Seconds one scan may take, connecting and sending included, before
    /// clamd counts as unavailable.
    pub timeout_seconds: u64,
    /// Seconds connecting to clamd may take.
    pub connect_timeout_seconds: u64,
}

impl Default for ScannerSection {
    fn default() -> Self {
        ScannerSection {
            enabled: false,
            address: "tcp:127.0.0.1:3310".into(),
            timeout_seconds: 30,
            connect_timeout_seconds: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Address of the /metrics, /healthz and /readyz listener.
    pub listen: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "0.0.0.0:9090".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then `file` (if given), then `GENFLEET__*` variables.
    ///
    /// # Errors
    /// An unreadable file, an unknown key, a value of the wrong type, or a
    /// value out of range; the message names the key.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("GENFLEET__").split("__"));
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let from_env = |secret: &mut Secret, variable: &str| {
            if secret.is_empty() {
                if let Ok(value) = std::env::var(variable) {
                    *secret = Secret::new(value);
                }
            }
        };
        let moved = config.providers.adopt_legacy_fal_keys();
        if !moved.is_empty() {
            tracing::warn!(
                moved = ?moved,
                "[providers.fal] uses keys of an earlier release; they still apply, but move them"
            );
        }
        from_env(&mut config.providers.fal.key, "FAL_KEY");
        from_env(&mut config.providers.replicate.token, "REPLICATE_API_TOKEN");
        from_env(&mut config.providers.openai.api_key, "OPENAI_API_KEY");
        config.read_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        let read = |path: &Path, key: &str| -> Result<Secret, ConfigError> {
            std::fs::read_to_string(path)
                .map(|s| Secret::new(s.trim()))
                .map_err(|e| {
                    ConfigError::Invalid(format!("{key}: cannot read {}: {e}", path.display()))
                })
        };
        if let Some(path) = &self.providers.fal.key_file {
            self.providers.fal.key = read(path, "providers.fal.key_file")?;
        }
        if let Some(path) = &self.providers.replicate.token_file {
            self.providers.replicate.token = read(path, "providers.replicate.token_file")?;
        }
        if let Some(path) = &self.providers.openai.api_key_file {
            self.providers.openai.api_key = read(path, "providers.openai.api_key_file")?;
        }
        if let Some(path) = &self.storage.signing_key_file {
            self.storage.signing_key = read(path, "storage.signing_key_file")?;
        }
        self.storage.read_signing_key_files()?;
        let s3 = &mut self.storage.s3;
        if let Some(path) = &s3.access_key_id_file {
            s3.access_key_id = read(path, "storage.s3.access_key_id_file")?;
        }
        if let Some(path) = &s3.secret_access_key_file {
            s3.secret_access_key = read(path, "storage.s3.secret_access_key_file")?;
        }
        if let Some(path) = &s3.session_token_file {
            s3.session_token = read(path, "storage.s3.session_token_file")?;
        }
        Ok(())
    }

    /// # Errors
    /// The first key whose value is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        self.retention.validate()?;
        self.inference.validate()?;
        if self.worker.concurrency == 0 {
            return fail("worker.concurrency must be at least 1".into());
        }
        if self.worker.classes.is_empty() {
            return fail("worker.classes must name at least one of cpu, gpu, remote".into());
        }
        for class in &self.worker.classes {
            if genfleet_broker::JobClass::parse(class).is_none() {
                return fail(format!(
                    "worker.classes: {class:?} is not a job class, expected cpu, gpu or remote"
                ));
            }
        }
        if self.broker.delivery_limit < 2 {
            return fail("broker.delivery_limit must be at least 2".into());
        }
        if self.worker.max_requeues_per_job == 0 {
            return fail("worker.max_requeues_per_job must be at least 1".into());
        }
        if self.worker.max_starts_per_job == 0 {
            return fail("worker.max_starts_per_job must be at least 1".into());
        }
        let retry_queues = genfleet_broker::Topology::default().retry_delays;
        if self.broker.requeue_delays_seconds.is_empty() {
            return fail("broker.requeue_delays_seconds must name at least one delay".into());
        }
        for delay in &self.broker.requeue_delays_seconds {
            if !retry_queues.iter().any(|d| d.as_secs() == *delay) {
                return fail(format!(
                    "broker.requeue_delays_seconds: {delay} has no retry queue, expected one of {:?}",
                    retry_queues.iter().map(|d| d.as_secs()).collect::<Vec<_>>()
                ));
            }
        }
        if self.providers.park.poll_delays_seconds.is_empty() {
            return fail("providers.park.poll_delays_seconds must name at least one delay".into());
        }
        for delay in &self.providers.park.poll_delays_seconds {
            if !retry_queues.iter().any(|d| d.as_secs() == *delay) {
                return fail(format!(
                    "providers.park.poll_delays_seconds: {delay} has no retry queue, expected one of {:?}",
                    retry_queues.iter().map(|d| d.as_secs()).collect::<Vec<_>>()
                ));
            }
        }
        for kind in &self.providers.park.kinds {
            if crate::kinds::kind_from_label(kind).is_none() {
                return fail(format!(
                    "providers.park.kinds: {kind:?} is not a job kind, expected e.g. image_to_video"
                ));
            }
        }
        if self.database.pool_size == 0 {
            return fail("database.pool_size must be at least 1".into());
        }
        if !self.storage.public_base_url.is_empty()
            && url::Url::parse(&self.storage.public_base_url).is_err()
        {
            return fail(format!(
                "storage.public_base_url: {:?} is not a URL",
                self.storage.public_base_url
            ));
        }
        self.storage.validate_signing()?;
        if url::Url::parse(&self.providers.fal.base_url).is_err() {
            return fail(format!(
                "providers.fal.base_url: {:?} is not a URL",
                self.providers.fal.base_url
            ));
        }
        let urls = [
            (
                "providers.replicate.base_url",
                &self.providers.replicate.base_url,
            ),
            ("providers.openai.base_url", &self.providers.openai.base_url),
            ("providers.kserve.base_url", &self.providers.kserve.base_url),
        ];
        for (key, value) in urls {
            if url::Url::parse(value).is_err() {
                return fail(format!("{key}: {value:?} is not a URL"));
            }
        }
        for (key, value) in [
            ("providers.vertex.base_url", &self.providers.vertex.base_url),
            (
                "providers.vertex.token_url",
                &self.providers.vertex.token_url,
            ),
        ] {
            if !value.is_empty() && url::Url::parse(value).is_err() {
                return fail(format!("{key}: {value:?} is not a URL"));
            }
        }
        if self.providers.vertex.enabled && self.providers.vertex.project.is_empty() {
            return fail(
                "providers.vertex.project is required when providers.vertex.enabled".into(),
            );
        }
        for (provider, models) in [
            ("fal", &self.providers.fal.models),
            ("replicate", &self.providers.replicate.models),
            ("vertex", &self.providers.vertex.models),
            ("openai", &self.providers.openai.models),
            ("kserve", &self.providers.kserve.models),
        ] {
            for kind in models.keys() {
                if crate::kinds::kind_from_label(kind).is_none() {
                    return fail(format!(
                        "providers.{provider}.models: {kind:?} is not a job kind, expected e.g. product_photo"
                    ));
                }
            }
        }
        if self.providers.retry.max_attempts == 0 {
            return fail("providers.retry.max_attempts must be at least 1".into());
        }
        if self.limits.max_pixels == 0 || self.limits.max_input_bytes == 0 {
            return fail("limits.max_pixels and limits.max_input_bytes must be above 0".into());
        }
        for (class, limits) in &self.limits.classes {
            if genfleet_broker::JobClass::parse(class).is_none() {
                return fail(format!(
                    "limits.classes: {class:?} is not a job class, expected cpu, gpu or remote"
                ));
            }
            let zero = [
                ("max_input_bytes", limits.max_input_bytes == Some(0)),
                ("max_width", limits.max_width == Some(0)),
                ("max_height", limits.max_height == Some(0)),
                ("max_pixels", limits.max_pixels == Some(0)),
            ];
            if let Some((key, _)) = zero.iter().find(|(_, zero)| *zero) {
                return fail(format!("limits.classes.{class}.{key} must be above 0"));
            }
        }
        if self.scanner.enabled {
            if let Err(e) = self.scanner.address.parse::<genfleet_scan::ClamdAddress>() {
                return fail(format!("scanner.address: {e}"));
            }
            if self.scanner.timeout_seconds == 0 || self.scanner.connect_timeout_seconds == 0 {
                return fail(
                    "scanner.timeout_seconds and scanner.connect_timeout_seconds must be above 0"
                        .into(),
                );
            }
        }
        Ok(())
    }

    pub fn worker_name(&self) -> String {
        if !self.worker.name.is_empty() {
            return self.worker.name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "worker".into());
        format!("{host}-{}", std::process::id())
    }

    /// The input limits of `[limits]`.
    pub fn imaging_limits(&self) -> genfleet_imaging::Limits {
        genfleet_imaging::Limits {
            max_bytes: self.limits.max_input_bytes,
            max_width: self.limits.max_width,
            max_height: self.limits.max_height,
            max_pixels: self.limits.max_pixels,
            max_frames: self.limits.max_frames,
            ..genfleet_imaging::Limits::default()
        }
    }

    /// The input limits of jobs of `class`: `[limits]` with the class's
    /// overrides from `[limits.classes.<class>]`.
    pub fn imaging_limits_for(&self, class: genfleet_broker::JobClass) -> genfleet_imaging::Limits {
        let base = self.imaging_limits();
        let Some(o) = self.limits.classes.get(class.routing_key()) else {
            return base;
        };
        genfleet_imaging::Limits {
            max_bytes: o.max_input_bytes.unwrap_or(base.max_bytes),
            max_width: o.max_width.unwrap_or(base.max_width),
            max_height: o.max_height.unwrap_or(base.max_height),
            max_pixels: o.max_pixels.unwrap_or(base.max_pixels),
            max_frames: o.max_frames.unwrap_or(base.max_frames),
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn defaults_are_valid_and_secrets_are_redacted() {
        let config = Config::default();
        config.validate().unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("guest:guest"), "{debug}");
        assert!(debug.contains("[redacted]"));
    }

    #[test]
    fn fal_is_configured_like_every_provider_and_old_flat_keys_still_apply() {
        let dir = std::env::temp_dir().join(format!("genfleet-config-fal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let current = dir.join("current.toml");
        std::fs::write(
            &current,
            "[providers]\nmax_wait_seconds = 90\n[providers.fal.limits]\nmax_concurrent = 7\n\
             [providers.fal.models]\nupscale = \"fal-ai/esrgan\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&current)).unwrap();
        assert_eq!(config.providers.max_wait_seconds, 90);
        assert_eq!(config.providers.fal.limits.max_concurrent, 7);
        assert_eq!(config.providers.fal.models["upscale"], "fal-ai/esrgan");
        // The other kinds keep their defaults.
        assert_eq!(
            config.providers.fal.models["inpaint"],
            "fal-ai/flux-pro/v1/fill"
        );
        assert!(config.providers.fal.enabled);
        assert_eq!(
            config.providers.request_timeout("fal"),
            Duration::from_secs(60)
        );
        assert_eq!(
            config.providers.request_timeout("vertex"),
            Duration::from_secs(120)
        );

        let legacy = dir.join("legacy.toml");
        std::fs::write(
            &legacy,
            "[providers.fal]\nmax_wait_seconds = 30\nmax_concurrent = 9\nrate_per_second = 2.5\n\
             burst = 3\nbreaker_failure_threshold = 1000\nbreaker_open_seconds = 7\n",
        )
        .unwrap();
        let config = Config::load(Some(&legacy)).unwrap();
        assert_eq!(config.providers.max_wait_seconds, 30);
        let limits = &config.providers.fal.limits;
        assert_eq!(limits.max_concurrent, 9);
        assert_eq!(limits.rate_per_second, 2.5);
        assert_eq!(limits.burst, 3);
        assert_eq!(limits.breaker_failure_threshold, 1000);
        assert_eq!(limits.breaker_open_seconds, 7);

        let bad_kind = dir.join("bad_kind.toml");
        std::fs::write(&bad_kind, "[providers.fal.models]\nvideo = \"x\"\n").unwrap();
        let err = Config::load(Some(&bad_kind)).unwrap_err().to_string();
        assert!(err.contains("providers.fal.models"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn file_and_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("genfleet-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "[worker]\nconcurrency = 3\nclasses = [\"gpu\"]\n").unwrap();
        let config = Config::load(Some(&good)).unwrap();
        assert_eq!(config.worker.concurrency, 3);
        assert_eq!(config.worker.classes, vec!["gpu".to_string()]);

        let unknown = dir.join("unknown.toml");
        std::fs::write(&unknown, "[worker]\nconcurency = 3\n").unwrap();
        let err = Config::load(Some(&unknown)).unwrap_err().to_string();
        assert!(err.contains("concurency"), "{err}");

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[worker]\nclasses = [\"fpga\"]\n").unwrap();
        let err = Config::load(Some(&bad)).unwrap_err().to_string();
        assert!(err.contains("worker.classes"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn class_limits_override_only_their_class_and_fields() {
        use genfleet_broker::JobClass;
        let dir = std::env::temp_dir().join(format!("genfleet-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("limits.toml");
        std::fs::write(
            &file,
            "[limits]\nmax_pixels = 40000000\n\n\
             [limits.classes.gpu]\nmax_pixels = 16000000\nmax_width = 4096\n",
        )
        .unwrap();
        let config = Config::load(Some(&file)).unwrap();
        let gpu = config.imaging_limits_for(JobClass::Gpu);
        assert_eq!(gpu.max_pixels, 16_000_000);
        assert_eq!(gpu.max_width, 4096);
        // Fields the class leaves out keep [limits]' values.
        assert_eq!(gpu.max_height, 16384);
        assert_eq!(gpu.max_bytes, 50 * 1024 * 1024);
        // Other classes keep [limits] whole.
        for class in [JobClass::Cpu, JobClass::Remote] {
            let limits = config.imaging_limits_for(class);
            assert_eq!(limits.max_pixels, 40_000_000, "{class:?}");
            assert_eq!(limits.max_width, 16384, "{class:?}");
        }

        // Errors name the key.
        for (toml, key) in [
            ("[limits.classes.fpga]\nmax_pixels = 1\n", "limits.classes"),
            ("[limits.classes.cpu]\nmax_pixel = 1\n", "max_pixel"),
            (
                "[limits.classes.cpu]\nmax_pixels = 0\n",
                "limits.classes.cpu.max_pixels",
            ),
            (
                "[scanner]\nenabled = true\naddress = \"127.0.0.1:3310\"\n",
                "scanner.address",
            ),
            ("[scanner]\nenabld = true\n", "enabld"),
        ] {
            std::fs::write(&file, toml).unwrap();
            let err = Config::load(Some(&file)).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn inference_reads_from_the_file_and_the_environment_and_names_bad_keys() {
        let dir = std::env::temp_dir().join(format!("genfleet-inference-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("inference.toml");
        std::fs::write(
            &file,
            "[worker]\nclasses = [\"gpu\"]\n[inference]\nenabled = true\n\
             models_dir = \"/srv/models\"\nexecution_providers = [\"cpu\"]\n\
             preload = [\"u2netp\"]\nvram_headroom_mb = 1024\n",
        )
        .unwrap();
        // No other test reads this key, so the variable cannot disturb them.
        std::env::set_var("GENFLEET__INFERENCE__TILE_OVERLAP", "24");
        let loaded = Config::load(Some(&file));
        std::env::remove_var("GENFLEET__INFERENCE__TILE_OVERLAP");
        let config = loaded.unwrap();
        let inference = &config.inference;
        assert!(inference.enabled);
        assert_eq!(inference.models_dir, PathBuf::from("/srv/models"));
        assert_eq!(inference.execution_providers, ["cpu"]);
        assert_eq!(inference.preload, ["u2netp"]);
        assert_eq!(inference.vram_headroom_mb, 1024);
        assert_eq!(inference.tile_overlap, 24);
        for (toml, key) in [
            (
                "[inference]\nexecution_providers = [\"rocm\"]\n",
                "inference.execution_providers",
            ),
            ("[inference]\nmax_batch = 0\n", "inference.max_batch"),
            ("[inference]\nenable = true\n", "enable"),
        ] {
            std::fs::write(&file, toml).unwrap();
            let err = Config::load(Some(&file)).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_scanner_is_off_by_default_and_takes_both_address_kinds() {
        let config = Config::default();
        assert!(!config.scanner.enabled);
        let mut config = Config::default();
        config.scanner.enabled = true;
        for address in ["tcp:127.0.0.1:3310", "unix:/run/clamav/clamd.ctl"] {
            config.scanner.address = address.into();
            config.validate().unwrap();
        }
    }
}

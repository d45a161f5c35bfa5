//! Everything a job needs from the outside, built once at start-up and
//! shared by all jobs: store, ledger, providers, the malware scanner,
//! limits, metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use genfleet_credits::Ledger;
use genfleet_imaging::{Limits, Presets};
use genfleet_providers::{DownloadError, Downloads};
use genfleet_providers::{
    FalConfig, FalProvider, GuardConfig, Guarded, KServeConfig, KServeProvider, OpenAiConfig,
    OpenAiProvider, Provider, ReplicateConfig, ReplicateProvider, RetryPolicy, Spool, TokenSource,
    VertexConfig, VertexProvider,
};
use genfleet_scan::{ClamdConfig, ClamdScanner, Scanner};
use genfleet_storage::fetch::{FetchConfig, FetchError, Fetcher};
use genfleet_storage::{InputPolicy, S3StoreConfig, Store, StoreConfig, UrlSigner};

/// Each provider's model per job kind.
pub type DefaultModels = HashMap<String, HashMap<genfleet_proto::v1::JobKind, String>>;

use crate::config::Config;
use crate::cpu::CpuPool;
use crate::local_models::LocalModels;
use crate::local_provider::LocalProvider;
use crate::metrics::Metrics;
use crate::WorkerError;

pub struct Services {
    pub config: Config,
    pub worker_name: String,
    pub store: Store,
    pub signer: Option<UrlSigner>,
    pub ledger: Ledger,
    pub providers: HashMap<String, Arc<dyn Provider>>,
    /// Each provider's model per job kind, for jobs that name none.
    pub default_models: DefaultModels,
    pub retry: RetryPolicy,
    pub metrics: Metrics,
    pub cpu: CpuPool,
    /// Scans every fetched input before it is decoded; `None` when
    /// `scanner.enabled` is off.
    pub scanner: Option<Arc<dyn Scanner>>,
    /// `[limits]`, for jobs whose class has no overrides (and for the local
    /// provider); see [`Services::input_limits_for`].
    pub input_limits: Limits,
    /// Provider outputs are untrusted too; same pixel limits, own byte cap.
    pub output_limits: Limits,
    /// Output presets: the built-ins plus `limits.presets_file`.
    pub presets: Presets,
    /// Where inputs and downloaded outputs wait: `worker.spool_memory_bytes`
    /// in memory, the rest in this process's folder under
    /// `worker.spool_dir`.
    pub spool: Spool,
    /// `worker.max_concurrent_fetches` permits: held while a job fetches
    /// and scans its inputs.
    pub fetches: Arc<tokio::sync::Semaphore>,
    /// The local models of `[inference]`, or why there are none: the
    /// local provider and the `remove_background` preset step ask it.
    pub models: LocalModels,
}

impl Services {
    /// # Errors
    /// The ledger or the store cannot be opened, or migrations fail.
    pub async fn build(config: Config, metrics: Metrics) -> Result<Services, WorkerError> {
        let ledger = Ledger::connect(
            config.database.url.expose(),
            &config.database.schema,
            config.database.pool_size,
        )
        .await
        .map_err(|e| WorkerError::Startup(format!("ledger: {e}")))?;
        if config.database.migrate_on_start {
            ledger
                .migrate()
                .await
                .map_err(|e| WorkerError::Startup(format!("ledger migrations: {e}")))?;
        }
        let inputs = InputPolicy::new(
            &config.storage.input_prefixes,
            config.storage.file_input_root.clone(),
        )
        .map_err(|e| WorkerError::Startup(format!("storage.input_prefixes: {e}")))?
        .with_url_fetcher(url_fetcher(
            &config,
            &config.storage.fetch_allow,
            "storage.fetch_allow",
            Duration::from_secs(config.storage.fetch_timeout_seconds.max(1)),
        )?);
        let store = open_store(&config.storage, inputs)?;
        // Every configured key (rotation): the current one signs.
        let signer = config
            .storage
            .url_signer()
            .map_err(|e| WorkerError::Startup(e.to_string()))?;

        let presets = load_presets(config.limits.presets_file.as_deref())?;
        let cpu = CpuPool::new(config.worker.imaging_threads);
        let input_limits = config.imaging_limits();
        let output_limits = Limits {
            max_bytes: config.limits.max_output_bytes,
            ..input_limits.clone()
        };

        let spool = open_spool(&config.worker)?;
        let http = reqwest_client()?;
        let mut providers: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        export_repeated_reads(&metrics);
        let mut default_models = HashMap::new();
        add_remote_providers(
            &config,
            &http,
            &spool,
            &ledger,
            &metrics,
            &mut providers,
            &mut default_models,
        )?;
        warn_gpu_class_without_inference(&config);
        let models = LocalModels::open(&config.inference, &metrics).await;
        providers.insert(
            "local".into(),
            Arc::new(LocalProvider::new(
                input_limits.clone(),
                cpu.clone(),
                models.clone(),
            )),
        );
        let scanner = scanner(&config)?;
        let retry = RetryPolicy {
            max_attempts: config.providers.retry.max_attempts,
            initial_delay: Duration::from_millis(config.providers.retry.initial_delay_ms),
            max_delay: Duration::from_millis(config.providers.retry.max_delay_ms),
        };
        let config_fetches = config.worker.max_concurrent_fetches;
        Ok(Services {
            worker_name: config.worker_name(),
            config,
            store,
            signer,
            ledger,
            providers,
            default_models,
            retry,
            metrics,
            cpu,
            scanner,
            input_limits,
            output_limits,
            presets,
            spool,
            fetches: Arc::new(tokio::sync::Semaphore::new(usize::from(
                config_fetches.max(1),
            ))),
            models,
        })
    }

    /// Input limits of a job delivered from `class`'s queues: `[limits]`
    /// with `[limits.classes.<class>]` on top.
    pub fn input_limits_for(&self, class: genfleet_broker::JobClass) -> Limits {
        self.config.imaging_limits_for(class)
    }

    /// Runs CPU-bound work on the [`CpuPool`].
    pub async fn cpu_bound<T, F>(&self, work: F) -> Result<T, crate::failure::JobFailure>
    where
        F: FnOnce() -> Result<T, crate::failure::JobFailure> + Send + 'static,
        T: Send + 'static,
    {
        self.cpu.run(work).await.map_err(|message| {
            crate::failure::JobFailure::new(genfleet_proto::ErrorCode::Internal, message)
        })?
    }
}

/// A worker that consumes `gpu` without `[inference]` starts, with a
/// warning: the class existed before it had models, so refusing would stop
/// workers configured that way on upgrade; a `gpu` job that needs no model
/// (a Lanczos upscale, a classical matte) is still served; and a worker
/// whose runtime fails to load is in the same position and must start
/// anyway. Its model jobs fail `provider_unavailable`, saying why.
fn warn_gpu_class_without_inference(config: &Config) {
    if !config.inference.enabled && config.worker.classes.iter().any(|c| c == "gpu") {
        tracing::warn!(
            "worker.classes includes gpu but [inference] is disabled: gpu jobs that need a \
             model will fail provider_unavailable on this worker; set inference.enabled = true"
        );
    }
}

/// The clamd client of `[scanner]`, when enabled. Not connected here: a
/// clamd that starts after the worker is fine (`/readyz` waits for it).
fn scanner(config: &Config) -> Result<Option<Arc<dyn Scanner>>, WorkerError> {
    let section = &config.scanner;
    if !section.enabled {
        return Ok(None);
    }
    let address = section
        .address
        .parse()
        .map_err(|e| WorkerError::Startup(format!("scanner.address: {e}")))?;
    Ok(Some(Arc::new(ClamdScanner::new(ClamdConfig {
        address,
        connect_timeout: Duration::from_secs(section.connect_timeout_seconds),
        timeout: Duration::from_secs(section.timeout_seconds),
    }))))
}

/// Wraps `provider` in a breaker per model and this worker's limits for
/// its account, and exports its open breakers and calls in flight.
fn guarded<P: Provider + 'static>(
    provider: P,
    limits: &crate::config::ProviderLimits,
    metrics: &Metrics,
) -> Arc<dyn Provider> {
    let guarded = Arc::new(Guarded::new(
        provider,
        GuardConfig {
            max_concurrent: limits.max_concurrent,
            rate_per_second: limits.rate_per_second,
            burst: limits.burst,
            failure_threshold: limits.breaker_failure_threshold,
            open_for: Duration::from_secs(limits.breaker_open_seconds),
            max_queue_wait: Duration::from_millis(limits.max_queue_wait_ms),
            adaptive_rate: limits.adaptive_rate,
        },
    ));
    let watched = guarded.clone();
    let open = metrics.provider_breakers_open.clone();
    let in_flight = metrics.provider_calls_in_flight.clone();
    let circuit_open = metrics.provider_circuit_open.clone();
    // Models shown open at the last scrape, so a closed one drops back to 0
    // (the breaker table is bounded, so this is too).
    let shown_open = std::sync::Mutex::new(Vec::<String>::new());
    metrics.on_render(move || {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let name = watched.name();
        let now_open = watched.open_models();
        open.with_label_values(&[name]).set(gauge(now_open.len()));
        in_flight
            .with_label_values(&[name])
            .set(gauge(watched.snapshot("").in_flight));
        let mut shown = shown_open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for model in shown.iter().filter(|m| !now_open.contains(m)) {
            circuit_open.with_label_values(&[name, model]).set(0);
        }
        for model in &now_open {
            circuit_open.with_label_values(&[name, model]).set(1);
        }
        *shown = now_open;
    });
    guarded
}

/// Exports the provider crate's process-wide count of reads made again on
/// an existing request, as a counter (the increase since the last scrape).
fn export_repeated_reads(metrics: &Metrics) {
    let counter = metrics.provider_repeated_reads_total.clone();
    let exported = std::sync::Mutex::new(HashMap::<&'static str, u64>::new());
    metrics.on_render(move || {
        let mut exported = exported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (provider, total) in genfleet_providers::repeated_reads() {
            let before = exported.insert(provider, total).unwrap_or(0);
            counter
                .with_label_values(&[provider])
                .inc_by(total.saturating_sub(before));
        }
    });
}

/// This process's spool: its own subfolder of `worker.spool_dir`, after
/// removing the subfolders of processes that died without cleaning up
/// (a kill -9 leaves its spool files behind).
fn open_spool(worker: &crate::config::WorkerSection) -> Result<Spool, WorkerError> {
    let base = worker.spool_base();
    let failed = |e: std::io::Error| {
        WorkerError::Startup(format!("worker.spool_dir {}: {e}", base.display()))
    };
    std::fs::create_dir_all(&base).map_err(failed)?;
    remove_stale_spools(&base);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let own = base.join(format!("run-{}-{started}", std::process::id()));
    let spool = Spool::new(own, worker.spool_memory_bytes).map_err(failed)?;
    Ok(match worker.send_memory_bytes {
        0 => spool,
        bytes => spool.with_send_budget(bytes),
    })
}

/// The pid in a spool folder's name (`run-<pid>-<started>`, one per
/// worker process); `None` for anything else in the spool's base folder.
pub fn spool_folder_pid(name: &std::ffi::OsStr) -> Option<u32> {
    name.to_str()
        .and_then(|n| n.strip_prefix("run-"))
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
}

/// Whether a process with `pid` runs on this machine (Linux `/proc`).
pub fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes `run-<pid>-*` folders whose process is gone, and those carrying
/// this process's own pid (a restarted container is pid 1 again).
fn remove_stale_spools(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let own_pid = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = spool_folder_pid(&entry.file_name()) else {
            continue;
        };
        if pid == own_pid || !process_alive(pid) {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(error = %e, "could not remove a dead worker's spool folder");
            }
        }
    }
}

/// Registers every enabled remote provider, each with its own limits and
/// default models per job kind.
fn add_remote_providers(
    config: &Config,
    http: &reqwest::Client,
    spool: &Spool,
    ledger: &Ledger,
    metrics: &Metrics,
    providers: &mut HashMap<String, Arc<dyn Provider>>,
    default_models: &mut DefaultModels,
) -> Result<(), WorkerError> {
    let url = |key: &str, value: &str| {
        url::Url::parse(value).map_err(|e| WorkerError::Startup(format!("{key}: {e}")))
    };
    let downloads: Arc<dyn Downloads> = Arc::new(GuardedDownloads(url_fetcher(
        config,
        &config.providers.download_allow,
        "providers.download_allow",
        // Each provider's own request timeout bounds its downloads.
        genfleet_storage::fetch::MAX_FETCH_TIME,
    )?));
    let max_output_bytes = config.limits.max_output_bytes;
    let mut add = |name: &str, provider: Arc<dyn Provider>, models: &crate::config::KindModels| {
        providers.insert(name.to_string(), provider);
        let by_kind = models
            .iter()
            .filter_map(|(kind, model)| {
                crate::kinds::kind_from_label(kind).map(|kind| (kind, model.clone()))
            })
            .collect();
        default_models.insert(name.to_string(), by_kind);
    };

    let section = &config.providers.fal;
    if section.enabled {
        let fal = FalProvider::new(
            FalConfig {
                base_url: url("providers.fal.base_url", &section.base_url)?,
                key: section.key.expose().to_string(),
                request_timeout: Duration::from_secs(section.request_timeout_seconds),
                poll_interval: Duration::from_millis(section.poll_interval_ms),
                max_output_bytes,
            },
            http.clone(),
        )
        .with_submission_log(Arc::new(LedgerSubmissions(ledger.clone())))
        .with_spool(spool.clone())
        .with_downloads(downloads.clone());
        add(
            "fal",
            guarded(fal, &section.limits, metrics),
            &section.models,
        );
    }

    let section = &config.providers.replicate;
    if section.enabled {
        let replicate = ReplicateProvider::new(
            ReplicateConfig {
                base_url: url("providers.replicate.base_url", &section.base_url)?,
                token: section.token.expose().to_string(),
                request_timeout: Duration::from_secs(section.request_timeout_seconds),
                poll_interval: Duration::from_millis(section.poll_interval_ms),
                wait_seconds: section.wait_seconds,
                max_output_bytes,
            },
            http.clone(),
        )
        .with_submission_log(Arc::new(LedgerSubmissions(ledger.clone())))
        .with_spool(spool.clone())
        .with_downloads(downloads.clone());
        add(
            "replicate",
            guarded(replicate, &section.limits, metrics),
            &section.models,
        );
    }

    let section = &config.providers.vertex;
    if section.enabled {
        let token = match (&section.token_file, section.token_url.as_str()) {
            (Some(path), _) => TokenSource::file(path.clone()),
            (None, "") => TokenSource::gce_metadata(http.clone()),
            (None, token_url) => {
                TokenSource::endpoint(url("providers.vertex.token_url", token_url)?, http.clone())
            }
        };
        let mut vertex = VertexConfig::new(section.project.clone(), token);
        vertex.region = section.region.clone();
        if !section.base_url.is_empty() {
            vertex.base_url = Some(url("providers.vertex.base_url", &section.base_url)?);
        }
        vertex.request_timeout = Duration::from_secs(section.request_timeout_seconds);
        vertex.max_output_bytes = max_output_bytes;
        add(
            "vertex",
            guarded(
                VertexProvider::new(vertex, http.clone()),
                &section.limits,
                metrics,
            ),
            &section.models,
        );
    }

    let section = &config.providers.openai;
    if section.enabled {
        let openai = OpenAiProvider::new(
            OpenAiConfig {
                base_url: url("providers.openai.base_url", &section.base_url)?,
                api_key: section.api_key.expose().to_string(),
                organization: (!section.organization.is_empty())
                    .then(|| section.organization.clone()),
                request_timeout: Duration::from_secs(section.request_timeout_seconds),
                max_output_bytes,
            },
            http.clone(),
        )
        .with_spool(spool.clone())
        .with_downloads(downloads.clone());
        add(
            "openai",
            guarded(openai, &section.limits, metrics),
            &section.models,
        );
    }

    let section = &config.providers.kserve;
    if section.enabled {
        let kserve = KServeProvider::new(
            KServeConfig {
                base_url: url("providers.kserve.base_url", &section.base_url)?,
                request_timeout: Duration::from_secs(section.request_timeout_seconds),
                max_output_bytes,
                binary: section.binary,
                bearer: (!section.bearer.is_empty()).then(|| section.bearer.expose().to_string()),
                ..KServeConfig::default()
            },
            http.clone(),
        );
        add(
            "kserve",
            guarded(kserve, &section.limits, metrics),
            &section.models,
        );
    }
    Ok(())
}

/// One HTTP client per process (connection pools, TLS sessions). TLS via
/// rustls with the ring provider: no C toolchain beyond cc, no cmake.
fn reqwest_client() -> Result<reqwest::Client, WorkerError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| WorkerError::Startup(format!("http client: {e}")))
}

/// Provider submissions recorded in the ledger's database, beside the job's
/// hold and outcome.
struct LedgerSubmissions(Ledger);

#[async_trait::async_trait]
impl genfleet_providers::SubmissionLog for LedgerSubmissions {
    async fn recall(&self, job_id: &str, provider: &str) -> Result<Option<String>, String> {
        self.0
            .recall_submission(job_id, provider)
            .await
            .map_err(|e| e.to_string())
    }

    async fn remember(&self, job_id: &str, provider: &str, submission: &str) -> Result<(), String> {
        self.0
            .remember_submission(job_id, provider, submission)
            .await
            .map_err(|e| e.to_string())
    }

    async fn forget(&self, job_id: &str, provider: &str) -> Result<(), String> {
        self.0
            .forget_submission(job_id, provider)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The built-in presets with those of `file` over them; a bad file stops
/// the worker at start-up, naming the file and the preset.
///
/// # Errors
/// The file cannot be read or is not a valid presets file.
pub fn load_presets(file: Option<&std::path::Path>) -> Result<Presets, WorkerError> {
    let builtin = Presets::builtin();
    let Some(file) = file else {
        return Ok(builtin);
    };
    let text = std::fs::read_to_string(file).map_err(|e| {
        WorkerError::Startup(format!("limits.presets_file {}: {e}", file.display()))
    })?;
    let extra = Presets::parse(&text).map_err(|e| {
        WorkerError::Startup(format!("limits.presets_file {}: {e}", file.display()))
    })?;
    Ok(builtin.merged(extra))
}

/// The configured object store: the local folder or the S3 bucket.
///
/// # Errors
/// An unusable storage configuration.
pub fn open_store(
    storage: &crate::config::StorageSection,
    inputs: InputPolicy,
) -> Result<Store, WorkerError> {
    let store = match storage.backend {
        crate::config::StorageBackend::Local => Store::open_local(StoreConfig {
            root: storage.root.clone(),
            bucket: storage.bucket.clone(),
            inputs,
        }),
        crate::config::StorageBackend::S3 => Store::open_s3(S3StoreConfig {
            bucket: storage.bucket.clone(),
            region: storage.s3.region.clone(),
            endpoint: (!storage.s3.endpoint.is_empty()).then(|| storage.s3.endpoint.clone()),
            path_style: storage.s3.path_style,
            allow_http: storage.s3.allow_http,
            credentials: storage.s3.credentials(),
            inputs,
        }),
    };
    store.map_err(|e| WorkerError::Startup(format!("storage: {e}")))
}

/// The SSRF-guarded fetcher of URLs, with `allow` (named `key` in errors),
/// the `storage.fetch_*` connect and redirect bounds and `timeout`: inputs
/// use it with `storage.fetch_allow`, provider downloads with
/// `providers.download_allow`.
fn url_fetcher(
    config: &Config,
    allow: &[String],
    key: &str,
    timeout: Duration,
) -> Result<Fetcher, WorkerError> {
    let storage = &config.storage;
    Fetcher::new(FetchConfig {
        allow: allow.to_vec(),
        connect_timeout: Duration::from_secs(storage.fetch_connect_timeout_seconds.max(1)),
        timeout,
        max_redirects: storage.fetch_max_redirects,
    })
    .map_err(|e| WorkerError::Startup(format!("{key}: {e}")))
}

/// Provider output downloads through the storage crate's SSRF guard: the
/// providers crate cannot depend on storage (DESIGN.md's one-way rule), so
/// the worker, which knows both, hands this to each client.
#[derive(Debug, Clone)]
pub struct GuardedDownloads(pub Fetcher);

#[async_trait::async_trait]
impl Downloads for GuardedDownloads {
    async fn get(
        &self,
        url: &url::Url,
        timeout: Duration,
    ) -> Result<reqwest::Response, DownloadError> {
        self.0
            .get(url.as_str(), timeout)
            .await
            .map_err(|error| match error {
                FetchError::Timeout(_) => DownloadError::Failed {
                    message: format!("output download failed: {error}"),
                    timed_out: true,
                },
                FetchError::Unavailable(_) => DownloadError::Failed {
                    message: format!("output download failed: {error}"),
                    timed_out: false,
                },
                // Refused, unusable or redirecting without end: the URL
                // the provider handed back, not a passing failure.
                FetchError::Refused(_)
                | FetchError::Invalid(_)
                | FetchError::TooManyRedirects(_)
                | FetchError::Status { .. }
                | FetchError::TooLarge { .. } => DownloadError::Refused(error.to_string()),
            })
    }
}

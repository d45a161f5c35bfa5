//! `[providers]`: the remote AI providers, their limits, retries and
//! parking.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersSection {
    /// Longest a job waits on its provider chain (calls and retry sleeps)
    /// when it has no earlier deadline, in seconds. Parked jobs have their
    /// own bound, `providers.park.max_wait_seconds`.
    pub max_wait_seconds: u64,
    /// How long a job without a deadline may keep waiting for a provider
    /// that cannot take it (an open circuit, a full concurrency limit),
    /// counted from the first time it was sent back, in seconds; then it
    /// fails `provider_unavailable`.
    pub defer_horizon_seconds: u64,
    /// Hosts a provider's output URL may point at although they resolve to
    /// a non-public address, and over plain `http://`; every output URL
    /// (and each of its redirects) goes through the same SSRF guard as
    /// input URLs, with this list instead of `storage.fetch_allow` (a
    /// provider's URLs and a customer's are trusted apart). Same entry
    /// syntax as `storage.fetch_allow`; e.g. an in-cluster model server's
    /// file host. Empty by default.
    pub download_allow: Vec<String>,
    pub fal: FalSection,
    pub replicate: ReplicateSection,
    pub vertex: VertexSection,
    pub openai: OpenAiSection,
    pub kserve: KServeSection,
    pub retry: RetrySection,
    pub park: ParkSection,
}

impl Default for ProvidersSection {
    fn default() -> Self {
        ProvidersSection {
            max_wait_seconds: 600,
            defer_horizon_seconds: 1800,
            download_allow: Vec::new(),
            fal: FalSection::default(),
            replicate: ReplicateSection::default(),
            vertex: VertexSection::default(),
            openai: OpenAiSection::default(),
            kserve: KServeSection::default(),
            retry: RetrySection::default(),
            park: ParkSection::default(),
        }
    }
}

/// Circuit breaker and limits of one provider on this worker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderLimits {
    /// Calls in flight at once from this worker.
    pub max_concurrent: usize,
    /// Calls per second from this worker; 0 means no limit. A provider's
    /// account limit is global: divide it by the number of workers.
    pub rate_per_second: f64,
    /// Calls allowed back to back before the rate applies.
    pub burst: u32,
    /// Consecutive retryable failures of one model that open its breaker.
    pub breaker_failure_threshold: u32,
    /// Seconds an open breaker waits before letting one probe call through.
    pub breaker_open_seconds: u64,
    /// Longest a call waits for room under `max_concurrent`, in
    /// milliseconds; then the job goes back to a retry queue instead of
    /// holding a worker slot while it waits.
    pub max_queue_wait_ms: u64,
    /// Rate-limit answers (429) slow every call to the provider down, then
    /// the rate recovers over 30 s: how a fleet converges on an account's
    /// limit. Off only for a provider whose 429s concern single requests.
    pub adaptive_rate: bool,
}

impl Default for ProviderLimits {
    fn default() -> Self {
        ProviderLimits {
            max_concurrent: 64,
            rate_per_second: 0.0,
            burst: 1,
            breaker_failure_threshold: 5,
            breaker_open_seconds: 30,
            max_queue_wait_ms: 2000,
            adaptive_rate: true,
        }
    }
}

/// Default model per job kind label (`product_photo`, `inpaint`, ...), for
/// jobs that name none or fail over to this provider.
pub type KindModels = std::collections::BTreeMap<String, String>;

fn kind_models(pairs: &[(&str, &str)]) -> KindModels {
    pairs
        .iter()
        .map(|(kind, model)| ((*kind).to_string(), (*model).to_string()))
        .collect()
}

/// Replicate predictions. Registered as provider `replicate` when enabled.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicateSection {
    pub enabled: bool,
    /// API root.
    pub base_url: String,
    /// API token (`Authorization: Bearer`). Also read from `REPLICATE_API_TOKEN`.
    pub token: Secret,
    /// File holding the token (a mounted secret); wins over `token`.
    pub token_file: Option<PathBuf>,
    /// Timeout of one HTTP request, in seconds.
    pub request_timeout_seconds: u64,
    /// Pause between status polls, in milliseconds.
    pub poll_interval_ms: u64,
    /// `Prefer: wait=N` on create (0: none), in seconds.
    pub wait_seconds: u32,
    pub limits: ProviderLimits,
    pub models: KindModels,
}

impl Default for ReplicateSection {
    fn default() -> Self {
        ReplicateSection {
            enabled: false,
            base_url: "https://api.replicate.com/".into(),
            token: Secret::default(),
            token_file: None,
            request_timeout_seconds: 60,
            poll_interval_ms: 1000,
            wait_seconds: 60,
            limits: ProviderLimits::default(),
            models: kind_models(&[
                ("product_photo", "black-forest-labs/flux-kontext-pro"),
                ("batch_edit", "black-forest-labs/flux-kontext-pro"),
                ("background_removal", "851-labs/background-remover"),
                ("upscale", "nightmareai/real-esrgan"),
                ("inpaint", "black-forest-labs/flux-fill-pro"),
                ("virtual_try_on", "cuuupid/idm-vton"),
                ("image_to_video", "kwaivgi/kling-v2.1"),
            ]),
        }
    }
}

/// Google Vertex AI (Imagen, virtual try-on, Gemini image). Registered as
/// provider `vertex` when enabled.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VertexSection {
    pub enabled: bool,
    /// Google Cloud project id.
    pub project: String,
    /// Region of the endpoint, e.g. `us-central1`.
    pub region: String,
    /// API root; empty means `https://<region>-aiplatform.googleapis.com/`.
    pub base_url: String,
    /// File holding a current OAuth access token, refreshed by a sidecar or
    /// workload-identity agent; re-read when it changes. Wins over `token_url`.
    pub token_file: Option<PathBuf>,
    /// Metadata-style token endpoint (`Metadata-Flavor: Google`, answering
    /// `{access_token, expires_in}`); empty means the GCE metadata server.
    pub token_url: String,
    /// Timeout of one HTTP request, in seconds.
    pub request_timeout_seconds: u64,
    pub limits: ProviderLimits,
    pub models: KindModels,
}

impl Default for VertexSection {
    fn default() -> Self {
        VertexSection {
            enabled: false,
            project: String::new(),
            region: "us-central1".into(),
            base_url: String::new(),
            token_file: None,
            token_url: String::new(),
            request_timeout_seconds: 120,
            limits: ProviderLimits::default(),
            models: kind_models(&[
                ("product_photo", "imagen-4.0-generate-001"),
                ("batch_edit", "imagen-3.0-capability-001"),
                ("background_removal", "imagen-3.0-capability-001"),
                ("inpaint", "imagen-3.0-capability-001"),
                ("upscale", "imagen-4.0-upscale-preview"),
                ("virtual_try_on", "virtual-try-on-preview-08-04"),
            ]),
        }
    }
}

/// OpenAI-compatible image API (generations, masked edits). Registered as
/// provider `openai` when enabled.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiSection {
    pub enabled: bool,
    /// API root of OpenAI or a compatible server.
    pub base_url: String,
    /// API key (`Authorization: Bearer`). Also read from `OPENAI_API_KEY`.
    pub api_key: Secret,
    /// File holding the key (a mounted secret); wins over `api_key`.
    pub api_key_file: Option<PathBuf>,
    /// `OpenAI-Organization` header; empty: none.
    pub organization: String,
    /// Timeout of one HTTP request, in seconds (edits take a while).
    pub request_timeout_seconds: u64,
    pub limits: ProviderLimits,
    pub models: KindModels,
}

impl Default for OpenAiSection {
    fn default() -> Self {
        OpenAiSection {
            enabled: false,
            base_url: "https://api.openai.com/".into(),
            api_key: Secret::default(),
            api_key_file: None,
            organization: String::new(),
            request_timeout_seconds: 120,
            limits: ProviderLimits::default(),
            models: kind_models(&[
                ("product_photo", "gpt-image-1"),
                ("batch_edit", "gpt-image-1"),
                ("inpaint", "gpt-image-1"),
            ]),
        }
    }
}

/// A co-located Open Inference Protocol server (KServe v2, Triton) with
/// the GPU pool's own models. Registered as provider `kserve` when enabled.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KServeSection {
    pub enabled: bool,
    /// Server root, e.g. `http://127.0.0.1:8000/`.
    pub base_url: String,
    /// Bearer token for a server behind an auth proxy; empty: none.
    pub bearer: Secret,
    /// Use Triton's binary tensor extension (image bytes not in JSON).
    pub binary: bool,
    /// Timeout of one inference request, in seconds.
    pub request_timeout_seconds: u64,
    pub limits: ProviderLimits,
    pub models: KindModels,
}

impl Default for KServeSection {
    fn default() -> Self {
        KServeSection {
            enabled: false,
            base_url: "http://127.0.0.1:8000/".into(),
            bearer: Secret::default(),
            binary: true,
            request_timeout_seconds: 60,
            // A GPU saturates at a few concurrent requests per model;
            // Triton queues the rest.
            limits: ProviderLimits {
                max_concurrent: 16,
                ..ProviderLimits::default()
            },
            models: kind_models(&[
                ("background_removal", "matting"),
                ("upscale", "upscale"),
                ("inpaint", "inpaint"),
                ("virtual_try_on", "tryon"),
            ]),
        }
    }
}

/// Long renders wait in the broker, not in a worker slot: the job is
/// submitted to a queue-style provider (fal, Replicate), then parked as a message in a
/// retry queue; when it comes back, any worker looks at the request once and
/// parks it again until the provider has finished.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParkSection {
    /// Job kinds that are parked (snake_case, e.g. "image_to_video"); other
    /// kinds wait for their provider inside the worker.
    pub kinds: Vec<String>,
    /// Waits between looks at a parked request, in seconds; the last one
    /// repeats. Each must be one of the broker's retry queues (5, 30, 300).
    pub poll_delays_seconds: Vec<u64>,
    /// Longest a parked job waits for its provider when the job has no
    /// earlier deadline, in seconds; then its request is cancelled and the
    /// job fails with `deadline_exceeded`.
    pub max_wait_seconds: u64,
}

impl Default for ParkSection {
    fn default() -> Self {
        ParkSection {
            kinds: vec!["image_to_video".into()],
            // A minute of quick looks (short videos), then every 30 s.
            poll_delays_seconds: vec![5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 30],
            max_wait_seconds: 3600,
        }
    }
}

/// fal's queue API. Registered as provider `fal` when enabled (the
/// default provider of the provider-bound kinds, so on by default).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FalSection {
    pub enabled: bool,
    /// fal queue API base URL.
    pub base_url: String,
    /// fal API key (`Authorization: Key ...`). Also read from `FAL_KEY`.
    pub key: Secret,
    /// File holding the key (a mounted secret); wins over `key`.
    pub key_file: Option<PathBuf>,
    /// Timeout of one HTTP request, in seconds.
    pub request_timeout_seconds: u64,
    /// Pause between status polls, in milliseconds.
    pub poll_interval_ms: u64,
    pub limits: ProviderLimits,
    pub models: KindModels,
    // Earlier releases' flat keys, still read (with a warning) so that
    // existing configuration files keep their meaning: `max_wait_seconds`
    // is now `providers.max_wait_seconds`, the others live under
    // `providers.fal.limits`. Never written back.
    #[serde(skip_serializing)]
    max_wait_seconds: Option<u64>,
    #[serde(skip_serializing)]
    max_concurrent: Option<usize>,
    #[serde(skip_serializing)]
    rate_per_second: Option<f64>,
    #[serde(skip_serializing)]
    burst: Option<u32>,
    #[serde(skip_serializing)]
    breaker_failure_threshold: Option<u32>,
    #[serde(skip_serializing)]
    breaker_open_seconds: Option<u64>,
}

impl Default for FalSection {
    fn default() -> Self {
        FalSection {
            enabled: true,
            base_url: "https://queue.fal.run".into(),
            key: Secret::default(),
            key_file: None,
            request_timeout_seconds: 60,
            poll_interval_ms: 500,
            limits: ProviderLimits::default(),
            models: kind_models(&[
                ("product_photo", "fal-ai/flux-pro/kontext"),
                ("background_removal", "fal-ai/birefnet/v2"),
                ("upscale", "fal-ai/clarity-upscaler"),
                ("inpaint", "fal-ai/flux-pro/v1/fill"),
                ("virtual_try_on", "fal-ai/kling/v1-5/kolors-virtual-try-on"),
                (
                    "image_to_video",
                    "fal-ai/kling-video/v2.1/standard/image-to-video",
                ),
                ("batch_edit", "fal-ai/flux-pro/kontext"),
            ]),
            max_wait_seconds: None,
            max_concurrent: None,
            rate_per_second: None,
            burst: None,
            breaker_failure_threshold: None,
            breaker_open_seconds: None,
        }
    }
}

impl ProvidersSection {
    /// Moves the earlier releases' flat `[providers.fal]` keys to where
    /// they live now; returns the keys moved, for a warning.
    pub(super) fn adopt_legacy_fal_keys(&mut self) -> Vec<&'static str> {
        let fal = &mut self.fal;
        let limits = &mut fal.limits;
        let mut moved = Vec::new();
        if let Some(v) = fal.max_wait_seconds.take() {
            self.max_wait_seconds = v;
            moved.push("max_wait_seconds -> providers.max_wait_seconds");
        }
        if let Some(v) = fal.max_concurrent.take() {
            limits.max_concurrent = v;
            moved.push("max_concurrent -> providers.fal.limits.max_concurrent");
        }
        if let Some(v) = fal.rate_per_second.take() {
            limits.rate_per_second = v;
            moved.push("rate_per_second -> providers.fal.limits.rate_per_second");
        }
        if let Some(v) = fal.burst.take() {
            limits.burst = v;
            moved.push("burst -> providers.fal.limits.burst");
        }
        if let Some(v) = fal.breaker_failure_threshold.take() {
            limits.breaker_failure_threshold = v;
            moved.push(
                "breaker_failure_threshold -> providers.fal.limits.breaker_failure_threshold",
            );
        }
        if let Some(v) = fal.breaker_open_seconds.take() {
            limits.breaker_open_seconds = v;
            moved.push("breaker_open_seconds -> providers.fal.limits.breaker_open_seconds");
        }
        moved
    }

    /// Timeout of one HTTP request to provider `name` (its own setting; 60
    /// seconds for one without, such as `local`).
    pub fn request_timeout(&self, name: &str) -> Duration {
        let seconds = match name {
            "fal" => self.fal.request_timeout_seconds,
            "replicate" => self.replicate.request_timeout_seconds,
            "vertex" => self.vertex.request_timeout_seconds,
            "openai" => self.openai.request_timeout_seconds,
            "kserve" => self.kserve.request_timeout_seconds,
            _ => 60,
        };
        Duration::from_secs(seconds)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySection {
    /// Calls to one provider for one job, first included.
    pub max_attempts: u32,
    /// First backoff delay, in milliseconds; doubles per attempt, with full jitter.
    pub initial_delay_ms: u64,
    /// Cap of one backoff delay (and of a provider's Retry-After), in milliseconds.
    pub max_delay_ms: u64,
}

impl Default for RetrySection {
    fn default() -> Self {
        RetrySection {
            max_attempts: 4,
            initial_delay_ms: 500,
            max_delay_ms: 30_000,
        }
    }
}

//! [`FalProvider`]: its configuration, the provider face and the records
//! kept of a request. The work is split by stage:
//!
//! - [`attempt`]: one attempt through the queue API (submit, poll, fetch
//!   the result, cancel, download);
//! - [`classify`]: what each answer means;
//! - [`input`]: the model input a job becomes and the keys parameters may
//!   not set.

use std::fmt;
use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use crate::http::{self, Secrets};
use crate::resume::{SubmissionRecord, Submissions};
use crate::{
    GenerationOutput, GenerationRequest, Provider, ProviderError, Resumable, Spool, SubmissionLog,
};

mod attempt;
mod classify;
mod input;
#[cfg(test)]
mod tests;

pub(in crate::fal) use classify::{check_status, output_files};
pub(in crate::fal) use input::body_estimate;
pub(crate) use input::{build_input, OWNED};

/// The name in logs, metric labels and the submission log.
const PROVIDER: &str = "fal";

/// Above this an `x-ratelimit-reset` value is a Unix time, not seconds.
const UNIX_TIME_THRESHOLD: u64 = 1_000_000_000;

/// Connection settings for fal.
#[derive(Clone)]
pub struct FalConfig {
    /// Queue API root; `https://queue.fal.run` in production.
    pub base_url: Url,
    /// API key, sent as `Authorization: Key <key>`. Never logged; `Debug`
    /// prints `[redacted]`.
    pub key: String,
    /// Upper bound on any single HTTP exchange (submit, one status poll,
    /// result, one download), body included. The job deadline may cut it
    /// shorter.
    pub request_timeout: Duration,
    /// Wait between status polls.
    pub poll_interval: Duration,
    /// Largest output file accepted; bigger ones fail the attempt rather
    /// than exhaust worker memory.
    pub max_output_bytes: u64,
}

impl FalConfig {
    /// fal's production queue endpoint.
    pub const DEFAULT_BASE_URL: &'static str = "https://queue.fal.run";
}

impl Default for FalConfig {
    /// Production endpoint, no key, 60 s per exchange (result bodies and
    /// video downloads can be tens of MB), a 500 ms poll (image models finish
    /// in seconds, and the status endpoint is not billed) and a 200 MB output
    /// cap (short videos fit, a runaway body does not).
    fn default() -> Self {
        Self {
            base_url: Url::parse(Self::DEFAULT_BASE_URL)
                .expect("the default fal base URL is a valid URL literal"),
            key: String::new(),
            request_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            max_output_bytes: 200 * 1024 * 1024,
        }
    }
}

impl fmt::Debug for FalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FalConfig")
            .field("base_url", &self.base_url.as_str())
            .field("key", &"[redacted]")
            .field("request_timeout", &self.request_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("max_output_bytes", &self.max_output_bytes)
            .finish()
    }
}

/// A [`Provider`] for models hosted on fal, through its queue API.
pub struct FalProvider {
    config: FalConfig,
    pub(super) client: reqwest::Client,
    /// Built once; an unusable key is reported on every call rather than
    /// panicking at start-up, since `new` cannot fail.
    authorization: Result<HeaderValue, String>,
    pub(super) submissions: Submissions,
    pub(super) spool: Spool,
    /// How output URLs are fetched.
    downloads: std::sync::Arc<dyn http::Downloads>,
}

impl fmt::Debug for FalProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FalProvider")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl FalProvider {
    /// `client` should be the process-wide client (connection pooling);
    /// per-exchange timeouts come from `config`.
    pub fn new(config: FalConfig, client: reqwest::Client) -> Self {
        let authorization = http::credential_header(&format!("Key {}", config.key), "fal key");
        Self {
            config,
            downloads: std::sync::Arc::new(http::DirectDownloads::new(client.clone())),
            client,
            authorization,
            submissions: Submissions::new(PROVIDER),
            spool: Spool::memory_only(),
        }
    }

    /// Fetches output URLs through `downloads` (the worker's SSRF-guarded
    /// fetcher) instead of this client's own [`http::DirectDownloads`].
    #[must_use]
    pub fn with_downloads(mut self, downloads: std::sync::Arc<dyn http::Downloads>) -> Self {
        self.downloads = downloads;
        self
    }

    /// Copies outputs into `spool` (memory within its budget, files beyond)
    /// instead of holding each in memory until the caller is done with it.
    #[must_use]
    pub fn with_spool(mut self, spool: Spool) -> Self {
        self.spool = spool;
        self
    }

    /// What an error message must not echo: the key and, with a request,
    /// its prompts.
    pub(super) fn secrets<'a>(&'a self, request: Option<&'a GenerationRequest>) -> Secrets<'a> {
        Secrets::new(Some(&self.config.key), request)
    }

    /// The built `Authorization` header, or why there is none.
    pub(super) fn authorization(&self) -> Result<HeaderValue, ProviderError> {
        self.authorization
            .clone()
            .map_err(|message| ProviderError::Unauthorized { message })
    }

    /// Records submissions in `log` and resumes recorded ones.
    #[must_use]
    pub fn with_submission_log(mut self, log: std::sync::Arc<dyn SubmissionLog>) -> Self {
        self.submissions.set_log(log);
        self
    }
}

#[async_trait::async_trait]
impl Provider for FalProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn resumable(&self) -> Option<&dyn Resumable> {
        Some(self)
    }

    async fn generate(
        &self,
        request: &GenerationRequest,
    ) -> Result<GenerationOutput, ProviderError> {
        let generated = self.generate_once(request).await;
        self.submissions.settle(&request.job_id, generated).await
    }
}

/// `POST {base}/{model}` answer, and the submission record: it holds no key.
#[derive(Debug, Deserialize, serde::Serialize)]
pub(super) struct Submitted {
    pub(super) request_id: String,
    pub(super) status_url: String,
    pub(super) response_url: String,
    #[serde(default)]
    pub(super) cancel_url: Option<String>,
}

impl SubmissionRecord for Submitted {
    fn id(&self) -> &str {
        &self.request_id
    }
}

/// `GET .../requests/{id}/status` answer.
#[derive(Debug, Deserialize)]
pub(super) struct QueueStatus {
    pub(super) status: String,
    #[serde(default)]
    pub(super) response_url: Option<String>,
}

/// The parts of a model's output this crate understands.
#[derive(Debug, Deserialize)]
pub(super) struct ModelOutput {
    #[serde(default)]
    images: Vec<OutputFile>,
    #[serde(default)]
    image: Option<OutputFile>,
    #[serde(default)]
    video: Option<OutputFile>,
    /// One flag per image; values other than booleans are ignored.
    #[serde(default)]
    has_nsfw_concepts: Vec<Value>,
    /// The older Stable Diffusion apps' spelling of the same flags.
    #[serde(default)]
    nsfw_content_detected: Vec<Value>,
}

#[derive(Debug, Deserialize)]
pub(super) struct OutputFile {
    url: String,
    #[serde(default)]
    content_type: Option<String>,
}

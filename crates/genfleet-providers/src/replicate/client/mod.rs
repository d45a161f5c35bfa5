//! [`ReplicateProvider`]: its configuration, the provider face and the
//! records kept of a prediction. The work is split by stage:
//!
//! - [`attempt`]: one attempt through the predictions API (create, poll,
//!   cancel, download);
//! - [`classify`]: what each answer and end state means;
//! - [`input`]: the prediction input a job becomes and the keys parameters
//!   may not set.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::http::{self};
use crate::resume::{SubmissionRecord, Submissions};
use crate::{
    GenerationOutput, GenerationRequest, Provider, ProviderError, Resumable, Spool, SubmissionLog,
};

mod attempt;
mod classify;
mod input;
#[cfg(test)]
mod tests;

pub(in crate::replicate) use classify::{finished, status_error};
pub(crate) use input::{build_input, OWNED};

/// The name in logs, metric labels and the submission log.
pub(super) const PROVIDER: &str = "replicate";
/// Replicate holds a `Prefer: wait` request at most this long.
const MAX_WAIT_SECONDS: u32 = 60;
/// Room beyond the `Prefer: wait` hold for the create exchange itself.
const WAIT_SLACK: Duration = Duration::from_secs(10);
/// Shortest `Cancel-After` sent. Replicate's minimum is not documented;
/// asking for less than a few seconds could be refused (failing the job),
/// and the client cancels at the deadline itself anyway.
const MIN_CANCEL_AFTER_SECONDS: u64 = 5;
/// A rate-limit reset further out than this is not a hint worth honouring.
const MAX_RESET_HINT: Duration = Duration::from_secs(3600);

/// Connection settings for Replicate.
#[derive(Clone)]
pub struct ReplicateConfig {
    /// API root; `https://api.replicate.com/` in production.
    pub base_url: Url,
    /// API token, sent as `Authorization: Bearer <token>`. Never logged;
    /// `Debug` prints `[redacted]`.
    pub token: String,
    /// Upper bound on any single HTTP exchange (one poll, one download),
    /// body included; a create with `Prefer: wait` gets at least the wait
    /// plus 10 s. The job deadline may cut any of them shorter.
    pub request_timeout: Duration,
    /// Wait between polls of a prediction that create did not see finish.
    pub poll_interval: Duration,
    /// Seconds create asks Replicate to hold the request while the
    /// prediction runs (`Prefer: wait=N`, at most 60), cut to the time left
    /// before the deadline; 0 sends no `Prefer` header and polls at once.
    pub wait_seconds: u32,
    /// Largest output file accepted; bigger ones fail the attempt rather
    /// than exhaust worker memory.
    pub max_output_bytes: u64,
}

impl ReplicateConfig {
    /// Replicate's production API.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.replicate.com/";
}

impl Default for ReplicateConfig {
    /// Production endpoint, no token, 60 s per exchange, a 1 s poll
    /// (Replicate's own clients poll about that often; most image models
    /// finish inside the 60 s `Prefer: wait` hold anyway) and a 200 MB
    /// output cap (short videos fit, a runaway body does not).
    fn default() -> Self {
        Self {
            base_url: Url::parse(Self::DEFAULT_BASE_URL)
                .expect("the default Replicate base URL is a valid URL literal"),
            token: String::new(),
            request_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            wait_seconds: MAX_WAIT_SECONDS,
            max_output_bytes: 200 * 1024 * 1024,
        }
    }
}

impl fmt::Debug for ReplicateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicateConfig")
            .field("base_url", &self.base_url.as_str())
            .field("token", &"[redacted]")
            .field("request_timeout", &self.request_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("wait_seconds", &self.wait_seconds)
            .field("max_output_bytes", &self.max_output_bytes)
            .finish()
    }
}

/// A [`Provider`] (and [`Resumable`]) for models hosted on Replicate.
pub struct ReplicateProvider {
    pub(super) config: ReplicateConfig,
    pub(super) client: reqwest::Client,
    /// Built once; an unusable token is reported on every call rather than
    /// panicking at start-up, since `new` cannot fail.
    authorization: Result<HeaderValue, String>,
    pub(super) submissions: Submissions,
    spool: Spool,
    /// How output URLs are fetched.
    downloads: Arc<dyn http::Downloads>,
}

impl fmt::Debug for ReplicateProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicateProvider")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ReplicateProvider {
    /// `client` should be the process-wide client (connection pooling);
    /// per-exchange timeouts come from `config`.
    pub fn new(config: ReplicateConfig, client: reqwest::Client) -> Self {
        let authorization =
            http::credential_header(&format!("Bearer {}", config.token), "replicate token");
        Self {
            config,
            downloads: Arc::new(http::DirectDownloads::new(client.clone())),
            client,
            authorization,
            submissions: Submissions::new(PROVIDER),
            spool: Spool::memory_only(),
        }
    }

    /// Fetches output URLs through `downloads` (the worker's SSRF-guarded
    /// fetcher) instead of this client's own [`http::DirectDownloads`].
    #[must_use]
    pub fn with_downloads(mut self, downloads: Arc<dyn http::Downloads>) -> Self {
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

    /// Records predictions in `log` and resumes recorded ones.
    #[must_use]
    pub fn with_submission_log(mut self, log: Arc<dyn SubmissionLog>) -> Self {
        self.submissions.set_log(log);
        self
    }
}

#[async_trait::async_trait]
impl Provider for ReplicateProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    async fn generate(
        &self,
        request: &GenerationRequest,
    ) -> Result<GenerationOutput, ProviderError> {
        let generated = self.generate_once(request).await;
        self.submissions.settle(&request.job_id, generated).await
    }

    fn resumable(&self) -> Option<&dyn Resumable> {
        Some(self)
    }
}

/// Where a create goes and what it carries.
pub(super) struct CreateTarget {
    url: Url,
    body: Value,
}

/// A prediction's resume data, as kept in the submission log or handed to
/// [`Resumable`] callers. Holds no token.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub(super) struct Record {
    pub(super) id: String,
    pub(super) urls: RecordUrls,
}

impl SubmissionRecord for Record {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub(super) struct RecordUrls {
    pub(super) get: String,
    pub(super) cancel: String,
}

/// The parts of a prediction this client reads. `input` (which echoes the
/// prompt) is deliberately not among them.
#[derive(Debug, Deserialize)]
pub(super) struct Prediction {
    id: String,
    status: String,
    #[serde(default)]
    output: Value,
    #[serde(default)]
    error: Value,
    #[serde(default)]
    urls: PredictionUrls,
}

#[derive(Debug, Default, Deserialize)]
struct PredictionUrls {
    #[serde(default)]
    get: Option<String>,
    #[serde(default)]
    cancel: Option<String>,
}

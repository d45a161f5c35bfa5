//! [`ReplicateProvider`]: its configuration, one attempt through the
//! predictions API and the classification of each answer and end state.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;
use url::Url;

use crate::http::{self, data_uri, describe_transport, Secrets};
use crate::params::{self, Owned, COUNT_KEYS, DELIVERY_KEYS, PROMPT_KEYS, SAFETY_KEYS};
use crate::reread::{read_again, Failure, ReadError};
use crate::resume::{SubmissionRecord, Submissions, CANCEL_TIMEOUT};
use crate::{
    Artifact, GenerationOutput, GenerationRequest, InputImage, InputRole, JobKind, Provider,
    ProviderError, Resumable, Spool, SubmissionLog,
};

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

/// The request's framing: what `input` sits in.
const FRAME_KEYS: &[&str] = &["input", "version", "model"];
/// The input image fields [`build_input`] fills.
const INPUT_KEYS: &[&str] = &["image", "mask", "human_img", "garm_img"];

/// What `request.parameters` may not set on Replicate (see the module
/// docs).
pub(crate) const OWNED: Owned = Owned {
    provider: PROVIDER,
    groups: &[
        FRAME_KEYS,
        PROMPT_KEYS,
        INPUT_KEYS,
        COUNT_KEYS,
        SAFETY_KEYS,
        DELIVERY_KEYS,
    ],
};

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

impl ReplicateProvider {
    #[tracing::instrument(
        name = "replicate_generate",
        skip_all,
        fields(provider = PROVIDER, job_id = %request.job_id, prediction_id = tracing::field::Empty)
    )]
    async fn generate_once(
        &self,
        request: &GenerationRequest,
    ) -> Result<GenerationOutput, Failure> {
        // A job that tries to set what the worker owns is not run at all,
        // resumed or not.
        params::check(&request.parameters, &OWNED, &[])?;
        let authorization = &self.authorization()?;
        // Built first: a request this client cannot send fails before any
        // exchange, resumed or not.
        let target = self.create_target(&*request.load_inputs().await?)?;

        let (record, prediction) = self
            .submissions
            .resume_or_submit(
                &request.job_id,
                |recorded| self.parse_record(recorded),
                |earlier| async move {
                    tracing::Span::current().record("prediction_id", earlier.id.as_str());
                    let prediction = self
                        .wait_until_finished(&earlier, authorization, request, true)
                        .await?;
                    // Stopped rather than judged (a `Cancel-After` of the
                    // dead attempt, an infrastructure abort): run it again.
                    // Succeeded, or failed on its input, is this job's
                    // outcome: running it again would be billed.
                    if matches!(prediction.status.as_str(), "canceled" | "aborted") {
                        tracing::warn!(
                            prediction_id = %earlier.id,
                            status = %prediction.status,
                            "the recorded replicate prediction was stopped; creating again"
                        );
                        return Ok(None);
                    }
                    Ok(Some((earlier, prediction)))
                },
                || self.create_and_wait(target, authorization, request),
            )
            .await?;
        self.collect(&record, &prediction, request).await
    }

    /// The outputs of a finished prediction, each download repeated on the
    /// same file until it answers, the file host says it is gone, or the
    /// deadline passes: the prediction is done and paid for. An end state
    /// that allows another try (`aborted`) is logged with Replicate's word
    /// for it, since the next attempt creates anew.
    async fn collect(
        &self,
        record: &Record,
        prediction: &Prediction,
        request: &GenerationRequest,
    ) -> Result<GenerationOutput, Failure> {
        let urls = outcome(prediction, request, &self.secrets(Some(request))).inspect_err(|err| {
            if err.is_retryable() {
                tracing::warn!(
                    prediction_id = %record.id,
                    status = %http::label(&prediction.status),
                    code = err.code(),
                    reason = %err,
                    "replicate ended the prediction without output; the next attempt creates anew"
                );
            }
        })?;
        let deadline = request.deadline;
        let pace = self.config.poll_interval;
        let mut artifacts = Vec::with_capacity(urls.len());
        for url in urls {
            let artifact = read_again(PROVIDER, &record.id, "output", deadline, pace, || {
                self.fetch_file(url, deadline)
            })
            .await?;
            artifacts.push(artifact);
        }
        tracing::debug!(
            prediction_id = %record.id,
            artifacts = artifacts.len(),
            "replicate prediction succeeded"
        );
        Ok(GenerationOutput {
            artifacts,
            attempts: 1,
            request_id: Some(record.id.clone()),
        })
    }

    /// What an error message must not echo: the token and, with a
    /// request, its prompts.
    pub(super) fn secrets<'a>(&'a self, request: Option<&'a GenerationRequest>) -> Secrets<'a> {
        Secrets::new(Some(&self.config.token), request)
    }

    /// The built `Authorization` header, or why there is none.
    pub(super) fn authorization(&self) -> Result<HeaderValue, ProviderError> {
        self.authorization
            .clone()
            .map_err(|message| ProviderError::Unauthorized { message })
    }

    /// The outputs of a finished prediction, downloaded, or the error its
    /// end state means.
    pub(super) async fn finish(
        &self,
        record: &Record,
        prediction: &Prediction,
        request: &GenerationRequest,
    ) -> Result<GenerationOutput, ProviderError> {
        let urls = outcome(prediction, request, &self.secrets(Some(request)))?;
        let mut artifacts = Vec::with_capacity(urls.len());
        for url in urls {
            artifacts.push(self.download(url, request.deadline).await?);
        }
        tracing::debug!(
            prediction_id = %record.id,
            artifacts = artifacts.len(),
            "replicate prediction succeeded"
        );
        Ok(GenerationOutput {
            artifacts,
            attempts: 1,
            request_id: Some(record.id.clone()),
        })
    }

    async fn create_and_wait(
        &self,
        target: CreateTarget,
        authorization: &HeaderValue,
        request: &GenerationRequest,
    ) -> Result<(Record, Prediction), Failure> {
        // With a submission log, the prediction must be on record before
        // anyone waits on it: a worker that died inside a `Prefer: wait`
        // hold would leave no id behind, and the job's next attempt would
        // create (and pay for) the prediction again. So create answers at
        // once, the id is recorded, and the poll loop waits instead.
        let wait = !self.submissions.has_log();
        let (record, prediction) = self.create(target, authorization, request, wait).await?;
        tracing::Span::current().record("prediction_id", record.id.as_str());
        tracing::debug!(prediction_id = %record.id, status = %prediction.status, "created a replicate prediction");
        self.submissions.remember(&request.job_id, &record).await;
        // A status this client does not know is read again by the poll
        // loop rather than judged: the prediction exists.
        if matches!(finished(&prediction), Ok(true)) {
            return Ok((record, prediction));
        }
        let prediction = self
            .wait_until_finished(&record, authorization, request, false)
            .await?;
        Ok((record, prediction))
    }

    /// The create URL and body for `request`, after checking that the model
    /// is `owner/name` or `owner/name:version` so a model name cannot point
    /// the token elsewhere.
    pub(super) fn create_target(
        &self,
        request: &GenerationRequest,
    ) -> Result<CreateTarget, ProviderError> {
        let input = build_input(request)?;
        let model = request.model.as_str();
        let invalid = || {
            ProviderError::Unsupported {
            message: format!(
                "model {model:?} is not a replicate model (expected owner/name or owner/name:version)"
            ),
        }
        };
        let (path, version) = match model.split_once(':') {
            Some((path, version)) => (path, Some(version)),
            None => (model, None),
        };
        let segments: Vec<&str> = path.split('/').collect();
        let [owner, name] = segments.as_slice() else {
            return Err(invalid());
        };
        if !valid_segment(owner) || !valid_segment(name) || !version.is_none_or(valid_segment) {
            return Err(invalid());
        }
        let (path, body) = match version {
            Some(version) => (
                "v1/predictions".to_owned(),
                serde_json::json!({"version": version, "input": input}),
            ),
            None => (
                format!("v1/models/{owner}/{name}/predictions"),
                serde_json::json!({"input": input}),
            ),
        };
        let url = self.endpoint(&path).map_err(|_| invalid())?;
        Ok(CreateTarget { url, body })
    }

    /// `{base}/{path}`; `path` has been checked to hold plain segments only.
    fn endpoint(&self, path: &str) -> Result<Url, url::ParseError> {
        let base = self.config.base_url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/{path}"))
    }

    /// Parses a URL Replicate handed back and refuses one off the base
    /// URL's origin: the token is attached to it.
    pub(super) fn api_url(&self, raw: &str, what: &str) -> Result<Url, ProviderError> {
        let url = Url::parse(raw).map_err(|_| ProviderError::Malformed {
            message: format!("{what} is not a valid URL"),
        })?;
        if url.origin() != self.config.base_url.origin() {
            return Err(ProviderError::Malformed {
                message: format!("{what} points outside the configured replicate base URL"),
            });
        }
        Ok(url)
    }

    /// Creates the prediction; with `wait`, asks Replicate to hold the
    /// answer until it finishes (or the hold ends).
    pub(super) async fn create(
        &self,
        target: CreateTarget,
        authorization: &HeaderValue,
        request: &GenerationRequest,
        wait: bool,
    ) -> Result<(Record, Prediction), ProviderError> {
        let deadline = request.deadline;
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let mut builder = self
            .client
            .post(target.url)
            .header(AUTHORIZATION, authorization.clone())
            .json(&target.body);
        let mut timeout = self.config.request_timeout;
        let hold = if wait {
            let mut hold = u64::from(self.config.wait_seconds.min(MAX_WAIT_SECONDS));
            if let Some(left) = left {
                // Whole seconds only: never hold past the deadline.
                hold = hold.min(left.as_secs());
            }
            hold
        } else {
            0
        };
        if hold > 0 {
            builder = builder.header("Prefer", format!("wait={hold}"));
            timeout = timeout.max(Duration::from_secs(hold) + WAIT_SLACK);
        }
        if let Some(left) = left {
            // Lets Replicate stop the prediction itself if nobody is left to
            // collect it (this worker dies, the poll loop is dropped).
            let seconds = (left.as_secs_f64().ceil() as u64).max(MIN_CANCEL_AFTER_SECONDS);
            builder = builder.header("Cancel-After", format!("{seconds}s"));
        }
        let response = http::send(builder, timeout, deadline).await?;
        let response = check_status(response, "create", &self.secrets(Some(request))).await?;
        let prediction: Prediction = http::read_json(
            response,
            self.prediction_limit(request),
            deadline,
            "create answer",
        )
        .await?;
        let record = self.record_of(&prediction)?;
        Ok((record, prediction))
    }

    /// The resume record of a prediction Replicate answered with. Its URLs
    /// must stay on our origin; missing ones are built from the id as
    /// Replicate documents them.
    fn record_of(&self, prediction: &Prediction) -> Result<Record, ProviderError> {
        if !valid_segment(&prediction.id) {
            return Err(ProviderError::Malformed {
                message: "the prediction id is not a plain identifier".into(),
            });
        }
        let built = |suffix: &str| {
            self.endpoint(&format!("v1/predictions/{}{suffix}", prediction.id))
                .map(String::from)
                .map_err(|_| ProviderError::Malformed {
                    message: "the prediction id does not form a valid URL".into(),
                })
        };
        let get = match &prediction.urls.get {
            Some(raw) => raw.clone(),
            None => built("")?,
        };
        let cancel = match &prediction.urls.cancel {
            Some(raw) => raw.clone(),
            None => built("/cancel")?,
        };
        self.api_url(&get, "urls.get")?;
        self.api_url(&cancel, "urls.cancel")?;
        Ok(Record {
            id: prediction.id.clone(),
            urls: RecordUrls { get, cancel },
        })
    }

    /// Largest prediction body read: it echoes the input (inline images as
    /// base64, 4 bytes per 3) and may carry outputs inline as data URIs.
    fn prediction_limit(&self, request: &GenerationRequest) -> u64 {
        let inputs = request
            .inputs
            .iter()
            .fold(0u64, |sum, input| sum.saturating_add(input.bytes.len()));
        http::inline_answer_limit(self.config.max_output_bytes, u64::from(request.count))
            .saturating_add(inputs.saturating_mul(4).div_ceil(3))
    }

    /// Polls until the prediction reaches an end state and returns it.
    /// `poll_now`: look before the first wait (a resumed prediction). A
    /// failed poll (reset, truncated or malformed body, 5xx, 429, timeout)
    /// is polled again with backoff: the prediction exists, and giving up on
    /// it would make the next attempt create (and pay for) another.
    ///
    /// # Errors
    ///
    /// [`ProviderError::DeadlineExceeded`] (after a best-effort cancel) when
    /// the deadline passes first; a permanent answer (an unknown
    /// prediction) at once; [`Failure::Unread`] when, without a deadline,
    /// polls kept failing for too long (the prediction is cancelled then
    /// only if no submission log keeps it for the job's next attempt).
    async fn wait_until_finished(
        &self,
        record: &Record,
        authorization: &HeaderValue,
        request: &GenerationRequest,
        poll_now: bool,
    ) -> Result<Prediction, Failure> {
        let deadline = request.deadline;
        let pace = self.config.poll_interval;
        let mut sleep_first = !poll_now;
        loop {
            if sleep_first {
                let wake = crate::hint::after(Instant::now(), self.config.poll_interval);
                tokio::time::sleep_until(deadline.map_or(wake, |d| wake.min(d))).await;
            }
            sleep_first = true;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.cancel_quietly(record, authorization).await;
                return Err(ProviderError::DeadlineExceeded.into());
            }
            let polled = read_again(PROVIDER, &record.id, "status", deadline, pace, || async {
                let prediction = self.poll(record, authorization, request).await?;
                // A status Replicate does not document reads as malformed:
                // looked at again, not judged.
                let done = finished(&prediction).map_err(ReadError::from)?;
                Ok((done, prediction))
            })
            .await;
            match polled {
                Ok((true, prediction)) => return Ok(prediction),
                Ok((false, _)) => {}
                Err(Failure::Judged(ProviderError::DeadlineExceeded)) => {
                    self.cancel_quietly(record, authorization).await;
                    return Err(ProviderError::DeadlineExceeded.into());
                }
                Err(Failure::Unread(err)) => {
                    if !self.submissions.has_log() {
                        // Nobody will come back for it: the next attempt
                        // creates another, so stop this one.
                        self.cancel_quietly(record, authorization).await;
                    }
                    return Err(Failure::Unread(err));
                }
                Err(failure) => return Err(failure),
            }
        }
    }

    /// One `GET urls.get`.
    pub(super) async fn poll(
        &self,
        record: &Record,
        authorization: &HeaderValue,
        request: &GenerationRequest,
    ) -> Result<Prediction, ProviderError> {
        let url = self.api_url(&record.urls.get, "urls.get")?;
        let builder = self
            .client
            .get(url)
            .header(AUTHORIZATION, authorization.clone());
        let response = self.send(builder, request.deadline).await?;
        let response = check_status(response, "status", &self.secrets(Some(request))).await?;
        http::read_json(
            response,
            self.prediction_limit(request),
            request.deadline,
            "status answer",
        )
        .await
    }

    /// Asks Replicate to stop a prediction we no longer wait for, so it is
    /// not run and billed for nothing. Failures are logged and otherwise
    /// ignored.
    async fn cancel_quietly(&self, record: &Record, authorization: &HeaderValue) {
        let url = match self.api_url(&record.urls.cancel, "urls.cancel") {
            Ok(url) => url,
            Err(err) => {
                tracing::warn!(prediction_id = %record.id, error = %err, "not cancelling the replicate prediction");
                return;
            }
        };
        let sent = self
            .client
            .post(url)
            .header(AUTHORIZATION, authorization.clone())
            .timeout(self.config.request_timeout.min(CANCEL_TIMEOUT))
            .send()
            .await;
        match sent {
            Ok(response) => tracing::info!(
                prediction_id = %record.id,
                status = response.status().as_u16(),
                "asked replicate to cancel a prediction we stopped waiting for"
            ),
            Err(err) => tracing::warn!(
                prediction_id = %record.id,
                error = %describe_transport(err),
                "could not cancel a replicate prediction we stopped waiting for"
            ),
        }
    }

    /// Copies one output out of Replicate's short-lived URL (or data URI).
    /// No Authorization header: the file host is not the API.
    async fn download(
        &self,
        url: &str,
        deadline: Option<Instant>,
    ) -> Result<Artifact, ProviderError> {
        self.fetch_file(url, deadline)
            .await
            .map_err(|failed| failed.error)
    }

    /// [`download`](Self::download), saying whether fetching again may help.
    async fn fetch_file(
        &self,
        url: &str,
        deadline: Option<Instant>,
    ) -> Result<Artifact, ReadError> {
        http::fetch_output(
            self.downloads.as_ref(),
            &self.spool,
            url,
            None,
            self.config.request_timeout,
            self.config.max_output_bytes,
            deadline,
        )
        .await
    }

    async fn send(
        &self,
        builder: RequestBuilder,
        deadline: Option<Instant>,
    ) -> Result<Response, ProviderError> {
        http::send(builder, self.config.request_timeout, deadline).await
    }
}

/// A model, name or version segment: no path tricks, no query, no host.
fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Whether the prediction reached an end state.
///
/// # Errors
///
/// [`ProviderError::Malformed`] for a status Replicate does not document:
/// polling on would never end.
pub(super) fn finished(prediction: &Prediction) -> Result<bool, ProviderError> {
    match prediction.status.as_str() {
        "starting" | "processing" => Ok(false),
        "succeeded" | "failed" | "canceled" | "aborted" => Ok(true),
        other => Err(ProviderError::Malformed {
            message: format!(
                "prediction status {:?} is not starting, processing, succeeded, failed, canceled or aborted",
                http::label(other)
            ),
        }),
    }
}

/// The output URLs of a finished prediction (at most `request.count`), or
/// the error its end state means.
fn outcome<'a>(
    prediction: &'a Prediction,
    request: &GenerationRequest,
    secrets: &Secrets<'_>,
) -> Result<Vec<&'a str>, ProviderError> {
    match prediction.status.as_str() {
        "succeeded" => output_urls(&prediction.output)
            .map(|urls| http::keep_asked(PROVIDER, urls, request.count)),
        "failed" => Err(failure(&prediction.error, secrets)),
        "canceled" => Err(ProviderError::Rejected {
            message: "canceled at the provider".into(),
        }),
        "aborted" => Err(ProviderError::Unavailable {
            message: "the prediction was aborted at the provider before it ran".into(),
            retry_after: None,
        }),
        _ => finished(prediction).and_then(|_| {
            Err(ProviderError::Malformed {
                message: "prediction has not finished".into(),
            })
        }),
    }
}

/// The files a succeeded prediction names: `output` is one URL, a list of
/// them, or null (a model that produced nothing).
fn output_urls(output: &Value) -> Result<Vec<&str>, ProviderError> {
    let urls: Vec<&str> = match output {
        Value::String(url) => vec![url.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if urls.is_empty() {
        return Err(ProviderError::Malformed {
            message: "prediction succeeded, expected output files, found none".into(),
        });
    }
    Ok(urls)
}

/// Classifies a `failed` prediction. Both kinds are `Rejected`:
/// - a safety outcome (Replicate's and the models' messages say NSFW,
///   safety or "sensitive"): retrying the same prompt would be billed and
///   flagged again;
/// - any other failure: the model ran and raised on this input (a bad
///   image, an out-of-range parameter). Infrastructure trouble shows as
///   `aborted` or an HTTP 5xx instead, so a retry would likely be billed
///   for the same exception.
fn failure(error: &Value, secrets: &Secrets<'_>) -> ProviderError {
    let text = match error {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let lower = text.to_ascii_lowercase();
    let safety = ["nsfw", "safety", "sensitive"]
        .iter()
        .any(|word| lower.contains(word));
    let detail = http::summary(&text, secrets);
    let message = match (safety, detail.is_empty()) {
        (true, true) => "the prediction was flagged by a safety check".to_owned(),
        (true, false) => format!("the prediction was flagged by a safety check: {detail}"),
        (false, true) => "the model failed on this input".to_owned(),
        (false, false) => format!("the model failed on this input: {detail}"),
    };
    ProviderError::Rejected { message }
}

/// Builds the prediction input for `request`; see the module table.
///
/// # Errors
///
/// [`ProviderError::Unsupported`] when the job kind needs an input image
/// the request lacks.
pub(crate) fn build_input(
    request: &GenerationRequest,
) -> Result<Map<String, Value>, ProviderError> {
    params::check(&request.parameters, &OWNED, &[])?;
    let kind = request.kind;
    let mut input = Map::new();
    if !matches!(kind, JobKind::BackgroundRemoval | JobKind::Upscale) {
        if !request.prompt.is_empty() {
            input.insert("prompt".into(), request.prompt.clone().into());
        }
        if !request.negative_prompt.is_empty() {
            input.insert(
                "negative_prompt".into(),
                request.negative_prompt.clone().into(),
            );
        }
        if let Some(seed) = request.seed {
            input.insert("seed".into(), seed.into());
        }
        if matches!(
            kind,
            JobKind::ProductPhoto | JobKind::BatchEdit | JobKind::Inpaint
        ) {
            // A count of 0 means "the default": one.
            input.insert("num_outputs".into(), request.count.max(1).into());
        }
        if !request.aspect_ratio.is_empty() && kind != JobKind::VirtualTryOn {
            input.insert("aspect_ratio".into(), request.aspect_ratio.clone().into());
        }
    }

    let first = |role: InputRole| request.inputs.iter().find(|input| input.role == role);
    let missing = |what: &str| ProviderError::Unsupported {
        message: format!("a {kind:?} job needs {what}, and the request has none"),
    };
    if kind == JobKind::VirtualTryOn {
        let person = first(InputRole::Person).ok_or_else(|| missing("a person image"))?;
        let garment = first(InputRole::Garment).ok_or_else(|| missing("a garment image"))?;
        input.insert("human_img".into(), data_uri(person)?.into());
        input.insert("garm_img".into(), data_uri(garment)?.into());
    } else {
        match primary_image(request) {
            Some(image) => {
                input.insert("image".into(), data_uri(image)?.into());
            }
            None if kind != JobKind::ProductPhoto => return Err(missing("an input image")),
            None => {}
        }
        if kind == JobKind::Inpaint {
            let mask = first(InputRole::Mask).ok_or_else(|| missing("a mask image"))?;
            input.insert("mask".into(), data_uri(mask)?.into());
        }
    }

    // Model-specific knobs; they may replace the seed or aspect ratio, never
    // a field the worker owns (refused above).
    for (key, value) in &request.parameters {
        input.insert(key.clone(), value.clone());
    }
    Ok(input)
}

/// The image a single-image model works on: the product or person, else a
/// reference.
fn primary_image(request: &GenerationRequest) -> Option<&InputImage> {
    request
        .inputs
        .iter()
        .find(|input| matches!(input.role, InputRole::Product | InputRole::Person))
        .or_else(|| {
            request
                .inputs
                .iter()
                .find(|input| input.role == InputRole::Reference)
        })
}

/// Passes 2xx answers through and turns any other into its error.
async fn check_status(
    response: Response,
    stage: &str,
    secrets: &Secrets<'_>,
) -> Result<Response, ProviderError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let body = http::error_body(response).await;
    Err(status_error(stage, status, &headers, &body, secrets))
}

/// Classifies a non-2xx answer from the API: 401/403 credentials; 429 and
/// 5xx transient (429 with the body's "resets in ~Ns" when no Retry-After
/// header says when); 400, 404, 422 and other 4xx permanent.
pub(super) fn status_error(
    stage: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &Secrets<'_>,
) -> ProviderError {
    let detail = error_detail(body, secrets);
    let mut message = format!("{stage} answered HTTP {}", status.as_u16());
    if let Some(detail) = &detail {
        message.push_str(": ");
        message.push_str(detail);
    }
    let mut retry_after = http::retry_after_header(headers);
    if status == StatusCode::TOO_MANY_REQUESTS && retry_after.is_none() {
        retry_after = detail.as_deref().and_then(parse_reset_hint);
    }
    http::classify_status(status, message, retry_after)
}

/// Replicate's error body is `{"detail": "...", "title"?, "status"?}`;
/// `detail` (else `title`) is the message. Other fields (`invalid_fields`)
/// are not used; the text is reduced to a [`summary`](http::summary).
fn error_detail(body: &[u8], secrets: &Secrets<'_>) -> Option<String> {
    let json: Value = serde_json::from_slice(body).ok()?;
    let text = ["detail", "title"]
        .iter()
        .find_map(|field| json.get(field).and_then(Value::as_str))?;
    let text = http::summary(text, secrets);
    (!text.is_empty()).then_some(text)
}

/// The wait in "Request was throttled. Your rate limit resets in ~30s.":
/// a number after "resets in" and an optional `~`, in s (the default), ms,
/// m or h.
pub(crate) fn parse_reset_hint(detail: &str) -> Option<Duration> {
    let lower = detail.to_ascii_lowercase();
    let (_, rest) = lower.split_once("resets in")?;
    let rest = rest.trim_start().trim_start_matches('~').trim_start();
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let value: f64 = rest[..number_len].parse().ok()?;
    let unit = rest[number_len..].trim_start();
    let seconds = if unit.starts_with("ms") {
        value / 1000.0
    } else if unit.starts_with("min") || unit.starts_with('m') {
        value * 60.0
    } else if unit.starts_with('h') {
        value * 3600.0
    } else {
        value
    };
    // Checked: `Duration::from_secs_f64` panics on a huge value, and the
    // digits are the provider's ("resets in 99999...9s").
    let delay = Duration::try_from_secs_f64(seconds).ok()?;
    (delay <= MAX_RESET_HINT).then_some(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "r8_client_test_token_0123";

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    fn request(model: &str) -> GenerationRequest {
        GenerationRequest {
            prompt: "a blue teapot".into(),
            ..crate::scripted::request_for(model, None)
        }
    }

    #[test]
    fn reads_the_reset_hint() {
        let check = |text: &str, expected: Option<Duration>| {
            assert_eq!(parse_reset_hint(text), expected, "{text}");
        };
        check(
            "Request was throttled. Your rate limit resets in ~30s.",
            Some(Duration::from_secs(30)),
        );
        check("resets in 2.5s", Some(Duration::from_millis(2500)));
        check("resets in ~500ms", Some(Duration::from_millis(500)));
        check("resets in ~2m.", Some(Duration::from_secs(120)));
        check("resets in ~7", Some(Duration::from_secs(7)));
        check("resets in ~2h", None);
        check("Request was throttled.", None);
        check("resets in soon", None);
        // Used to panic in `Duration::from_secs_f64` (a finite 1e300).
        check(&format!("resets in ~{}s", "9".repeat(301)), None);
        check(&format!("resets in ~{}h", "9".repeat(400)), None);
        check("resets in ~NaNs", None);
        check("resets in ~-5s", None);
        check("resets in ~18446744073709551615s", None);
    }

    #[test]
    fn error_details_never_echo_the_token() {
        let body = format!(r#"{{"detail":"Invalid token {TOKEN}: authentication failed"}}"#);
        let err = status_error(
            "create",
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            body.as_bytes(),
            &Secrets::new(Some(TOKEN), None),
        );
        assert_eq!(
            err.to_string(),
            "provider credentials were refused: create answered HTTP 401: Invalid token [redacted]: authentication failed"
        );
    }

    #[test]
    fn classifies_status_codes() {
        let none = HeaderMap::new();
        let check = |code: u16, body: &str, expected: &str| {
            let err = status_error(
                "create",
                StatusCode::from_u16(code).unwrap(),
                &none,
                body.as_bytes(),
                &Secrets::default(),
            );
            assert_eq!(
                format!("{err:?}").split([' ', '{']).next().unwrap(),
                expected,
                "{code}: {err}"
            );
            err
        };
        check(401, "", "Unauthorized");
        check(403, "", "Unauthorized");
        check(400, "", "Rejected");
        check(404, "", "Rejected");
        check(
            422,
            r#"{"detail":"- input: prompt is required\n"}"#,
            "Rejected",
        );
        check(500, "", "Unavailable");
        check(503, "", "Unavailable");
        let err = check(
            429,
            r#"{"title":"Request was throttled","detail":"Request was throttled. Your rate limit resets in ~30s.","status":429}"#,
            "RateLimited",
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
        assert_eq!(
            err.to_string(),
            "provider rate-limited the request: create answered HTTP 429: Request was throttled. Your rate limit resets in ~30s."
        );
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("4"));
        let err = status_error(
            "create",
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            br#"{"detail":"resets in ~30s"}"#,
            &Secrets::default(),
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(4)));
    }

    #[test]
    fn error_details_never_echo_the_prompt() {
        let request = request("a/b");
        let err = status_error(
            "create",
            StatusCode::UNPROCESSABLE_ENTITY,
            &HeaderMap::new(),
            br#"{"detail":"prompt 'a blue teapot' is too long","input":{"prompt":"a blue teapot"}}"#,
            &Secrets::new(Some(TOKEN), Some(&request)),
        );
        assert_eq!(
            err.to_string(),
            "provider rejected the request: create answered HTTP 422: prompt '[prompt]' is too long"
        );
    }

    #[test]
    fn classifies_failures() {
        let request = request("a/b");
        let check = |error: Value, expected: &str| {
            let err = failure(&error, &Secrets::new(Some(TOKEN), Some(&request)));
            assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
            assert_eq!(err.to_string(), expected);
        };
        check(
            Value::from("NSFW content detected. Try a different prompt."),
            "provider rejected the request: the prediction was flagged by a safety check: NSFW content detected. Try a different prompt.",
        );
        check(
            Value::from("The input or output was flagged as sensitive. (E005)"),
            "provider rejected the request: the prediction was flagged by a safety check: The input or output was flagged as sensitive. (E005)",
        );
        check(
            Value::from("Traceback:\n  ValueError: bad image\n"),
            "provider rejected the request: the model failed on this input: Traceback: ValueError: bad image",
        );
        check(
            Value::Null,
            "provider rejected the request: the model failed on this input",
        );
    }

    #[test]
    fn reads_outputs() {
        assert_eq!(
            output_urls(&Value::from("https://x/a.mp4")).unwrap(),
            vec!["https://x/a.mp4"]
        );
        assert_eq!(
            output_urls(&serde_json::json!([
                "https://x/1.png",
                3,
                "https://x/2.png"
            ]))
            .unwrap(),
            vec!["https://x/1.png", "https://x/2.png"]
        );
        for empty in [
            Value::Null,
            serde_json::json!([]),
            serde_json::json!({"a": 1}),
        ] {
            assert!(matches!(
                output_urls(&empty),
                Err(ProviderError::Malformed { .. })
            ));
        }
    }

    #[test]
    fn rejects_models_that_leave_the_api() {
        let provider = ReplicateProvider::new(ReplicateConfig::default(), client());
        let target = provider
            .create_target(&request("stability-ai/sdxl"))
            .unwrap();
        assert_eq!(
            target.url.as_str(),
            "https://api.replicate.com/v1/models/stability-ai/sdxl/predictions"
        );
        assert_eq!(target.body["input"]["prompt"], "a blue teapot");
        assert!(target.body.get("version").is_none());
        let target = provider
            .create_target(&request("stability-ai/sdxl:39ed52f2a78e"))
            .unwrap();
        assert_eq!(
            target.url.as_str(),
            "https://api.replicate.com/v1/predictions"
        );
        assert_eq!(target.body["version"], "39ed52f2a78e");
        for bad in [
            "sdxl",
            "a/b/c",
            "a/../b",
            "../b",
            "a//b",
            "//evil.example/x",
            "a/b?c=d",
            "a/b#x",
            "a/b:",
            "a/b:v/../../x",
            "a/b:v:w",
            "",
        ] {
            assert!(
                matches!(
                    provider.create_target(&request(bad)),
                    Err(ProviderError::Unsupported { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn records_refuse_urls_off_the_origin() {
        let provider = ReplicateProvider::new(ReplicateConfig::default(), client());
        let good = r#"{"id":"p1","urls":{"get":"https://api.replicate.com/v1/predictions/p1","cancel":"https://api.replicate.com/v1/predictions/p1/cancel"}}"#;
        assert_eq!(provider.parse_record(good).unwrap().id, "p1");
        for bad in [
            r#"{"id":"p1","urls":{"get":"https://evil.example/v1/predictions/p1","cancel":"https://api.replicate.com/v1/predictions/p1/cancel"}}"#,
            r#"{"id":"p1","urls":{"get":"https://api.replicate.com/v1/predictions/p1","cancel":"http://api.replicate.com/x"}}"#,
            r#"{"id":"p1"}"#,
            r#"{"id":"p1","urls":"https://api.replicate.com/SIGNED"}"#,
            "not json",
        ] {
            let err = provider.parse_record(bad).unwrap_err();
            assert!(matches!(err, ProviderError::Unsupported { .. }), "{bad}");
            assert!(!err.to_string().contains("SIGNED"), "{err}");
        }
    }

    #[test]
    fn debug_redacts_the_token() {
        let config = ReplicateConfig {
            token: "r8_secret_token_123".into(),
            ..ReplicateConfig::default()
        };
        let provider = ReplicateProvider::new(config.clone(), client());
        for text in [format!("{config:?}"), format!("{provider:?}")] {
            assert!(!text.contains("r8_secret"), "{text}");
            assert!(text.contains("[redacted]"), "{text}");
        }
    }
}

//! [`FalProvider`]: its configuration, one attempt through the queue API
//! and the classification of each answer.

use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::time::Instant;
use url::Url;

use crate::http::{
    self, data_uri, describe_transport, json_problem, oversized, read_body, Secrets,
    CONTROL_BODY_LIMIT,
};
use crate::params::{self, Owned, COUNT_KEYS, DELIVERY_KEYS, PROMPT_KEYS, SAFETY_KEYS};
use crate::reread::{read_again, Failure, ReadError};
use crate::resume::{SubmissionRecord, Submissions, CANCEL_TIMEOUT};
use crate::retry::parse_retry_after;
use crate::{
    Artifact, GenerationOutput, GenerationRequest, InputImage, InputRole, JobKind, Provider,
    ProviderError, Resumable, Spool, SubmissionLog,
};

/// The name in logs, metric labels and the submission log.
const PROVIDER: &str = "fal";

/// Above this an `x-ratelimit-reset` value is a Unix time, not seconds.
const UNIX_TIME_THRESHOLD: u64 = 1_000_000_000;

/// The input image fields [`build_input`] fills.
const INPUT_KEYS: &[&str] = &[
    "image_url",
    "image_urls",
    "mask_url",
    "human_image_url",
    "garment_image_url",
];

/// What `request.parameters` may not set on fal (see the module docs).
pub(crate) const OWNED: Owned = Owned {
    provider: PROVIDER,
    groups: &[
        PROMPT_KEYS,
        INPUT_KEYS,
        COUNT_KEYS,
        SAFETY_KEYS,
        DELIVERY_KEYS,
    ],
};

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

impl FalProvider {
    #[tracing::instrument(
        name = "fal_generate",
        skip_all,
        fields(provider = "fal", job_id = %request.job_id, request_id = tracing::field::Empty)
    )]
    async fn generate_once(
        &self,
        request: &GenerationRequest,
    ) -> Result<GenerationOutput, Failure> {
        // Before anything else, a resumed request included: a job that
        // tries to set what the worker owns is not run at all.
        params::check(&request.parameters, &OWNED, &[])?;
        let authorization = &self.authorization()?;
        let submit_url = self.submit_url(&request.model)?;
        let deadline = request.deadline;

        let (submitted, response_url) = self
            .submissions
            .resume_or_submit(
                &request.job_id,
                |recorded| self.parse_record(recorded),
                |earlier| async move {
                    tracing::Span::current().record("request_id", earlier.request_id.as_str());
                    let url = self
                        .wait_until_completed(&earlier, authorization, deadline)
                        .await?;
                    Ok(Some((earlier, url)))
                },
                || self.submit_and_wait(submit_url, authorization, request),
            )
            .await?;
        let artifacts = self
            .collect(&submitted, &response_url, authorization, request)
            .await?;
        tracing::debug!(
            request_id = %submitted.request_id,
            artifacts = artifacts.len(),
            "fal request completed"
        );
        Ok(GenerationOutput {
            artifacts,
            attempts: 1,
            request_id: Some(submitted.request_id),
        })
    }

    /// Reads the completed request's result and copies its outputs, each
    /// read repeated on the same request until it answers, fal judges the
    /// request, or the deadline passes: the render is done and paid for,
    /// and only reading it is left.
    async fn collect(
        &self,
        submitted: &Submitted,
        response_url: &Url,
        authorization: &HeaderValue,
        request: &GenerationRequest,
    ) -> Result<Vec<Artifact>, Failure> {
        let id = submitted.request_id.as_str();
        let deadline = request.deadline;
        let pace = self.config.poll_interval;
        let output = read_again(PROVIDER, id, "result", deadline, pace, || {
            self.read_result(response_url, authorization, request)
        })
        .await?;
        let files = output_files(output, request.count).inspect_err(|err| {
            if err.is_retryable() {
                tracing::warn!(
                    request_id = %id,
                    code = err.code(),
                    reason = %err,
                    "fal's result for the request is unusable; the next attempt submits anew"
                );
            }
        })?;
        let mut artifacts = Vec::with_capacity(files.len());
        for file in &files {
            let artifact = read_again(PROVIDER, id, "output", deadline, pace, || {
                self.fetch_file(file, deadline)
            })
            .await?;
            artifacts.push(artifact);
        }
        Ok(artifacts)
    }

    async fn submit_and_wait(
        &self,
        submit_url: Url,
        authorization: &HeaderValue,
        request: &GenerationRequest,
    ) -> Result<(Submitted, Url), Failure> {
        let deadline = request.deadline;
        // Built (and the inputs read back from the spool) only to send, and
        // only while the spool's send budget has room: the body, data URIs
        // and all, is gone once fal answers the submit, which it does at
        // once (the render runs after).
        let submitted = {
            let _room = self
                .spool
                .room_to_send(body_estimate(request), deadline)
                .await?;
            let input = build_input(&*request.load_inputs().await?)?;
            self.submit(
                submit_url,
                authorization,
                input,
                deadline,
                &self.secrets(Some(request)),
            )
            .await?
        };
        tracing::Span::current().record("request_id", submitted.request_id.as_str());
        tracing::debug!(request_id = %submitted.request_id, "submitted to the fal queue");
        self.submissions.remember(&request.job_id, &submitted).await;
        let response_url = self
            .wait_until_completed(&submitted, authorization, deadline)
            .await?;
        Ok((submitted, response_url))
    }

    /// `{base}/{model}` after checking that `model` is an `owner/app[/path]`
    /// path, so a model name cannot point the key elsewhere.
    pub(super) fn submit_url(&self, model: &str) -> Result<Url, ProviderError> {
        let valid_segment = |segment: &str| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        let segments: Vec<&str> = model.split('/').collect();
        if segments.len() < 2 || !segments.iter().all(|s| valid_segment(s)) {
            return Err(ProviderError::Unsupported {
                message: format!("model {model:?} is not a fal model path (owner/app[/path])"),
            });
        }
        let base = self.config.base_url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/{model}")).map_err(|_| ProviderError::Unsupported {
            message: format!("model {model:?} does not form a valid URL with the fal base URL"),
        })
    }

    /// Parses a URL fal handed back and refuses one off the base URL's
    /// origin: the key is attached to it.
    pub(super) fn queue_url(&self, raw: &str, what: &str) -> Result<Url, ProviderError> {
        let url = Url::parse(raw).map_err(|_| ProviderError::Malformed {
            message: format!("{what} is not a valid URL"),
        })?;
        if url.origin() != self.config.base_url.origin() {
            return Err(ProviderError::Malformed {
                message: format!("{what} points outside the configured fal base URL"),
            });
        }
        Ok(url)
    }

    pub(super) async fn submit(
        &self,
        url: Url,
        authorization: &HeaderValue,
        input: Map<String, Value>,
        deadline: Option<Instant>,
        secrets: &Secrets<'_>,
    ) -> Result<Submitted, ProviderError> {
        let mut builder = self
            .client
            .post(url)
            .header(AUTHORIZATION, authorization.clone())
            .json(&Value::Object(input));
        if let Some(deadline) = deadline {
            // Lets fal drop the request itself if no runner picks it up in
            // time (answering 504 with the `user` timeout type), instead of
            // running and billing a result nobody will collect.
            let seconds = deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
                .ceil()
                .max(1.0);
            builder = builder.header("X-Fal-Request-Timeout", format!("{seconds:.0}"));
        }
        let response = self.send(builder, deadline).await?;
        let response = check_status(response, "submit", secrets).await?;
        let body = read_body(
            response,
            CONTROL_BODY_LIMIT,
            deadline,
            oversized("submit answer", CONTROL_BODY_LIMIT),
        )
        .await?;
        serde_json::from_slice(&body).map_err(|err| ProviderError::Malformed {
            message: format!(
                "submit answer is not the expected JSON: {}",
                json_problem(&err)
            ),
        })
    }

    /// Polls the status URL until fal reports the request finished, and
    /// returns the URL of its result. A failed poll (reset, truncated,
    /// 5xx, 429, timeout) is polled again with backoff: the request exists,
    /// and giving up on it would make the next attempt submit (and pay
    /// for) it again.
    ///
    /// # Errors
    ///
    /// [`ProviderError::DeadlineExceeded`] (after a best-effort cancel) when
    /// the deadline passes first; a permanent answer (an unknown request)
    /// at once; [`Failure::Unread`] when, without a deadline, polls kept
    /// failing for too long.
    async fn wait_until_completed(
        &self,
        submitted: &Submitted,
        authorization: &HeaderValue,
        deadline: Option<Instant>,
    ) -> Result<Url, Failure> {
        let status_url = self.queue_url(&submitted.status_url, "status_url")?;
        let id = submitted.request_id.as_str();
        let pace = self.config.poll_interval;
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.cancel(submitted, authorization).await;
                return Err(ProviderError::DeadlineExceeded.into());
            }
            let polled = read_again(PROVIDER, id, "status", deadline, pace, || async {
                self.poll_status(&status_url, authorization, deadline)
                    .await
                    .map_err(ReadError::from)
            })
            .await;
            match polled {
                Ok(status) if matches!(status.status.as_str(), "IN_QUEUE" | "IN_PROGRESS") => {}
                // COMPLETED, or a status this client does not know: either
                // way the result URL says what happened (fal never reports
                // FAILED; a failed request reads COMPLETED).
                Ok(status) => {
                    if status.status != "COMPLETED" {
                        tracing::warn!(
                            request_id = %submitted.request_id,
                            status = %http::label(&status.status),
                            "unknown fal queue status, fetching the result"
                        );
                    }
                    let raw = status
                        .response_url
                        .as_deref()
                        .unwrap_or(&submitted.response_url);
                    return Ok(self.queue_url(raw, "response_url")?);
                }
                Err(Failure::Judged(ProviderError::DeadlineExceeded)) => {
                    self.cancel(submitted, authorization).await;
                    return Err(ProviderError::DeadlineExceeded.into());
                }
                Err(failure) => return Err(failure),
            }
            let wake = crate::hint::after(Instant::now(), self.config.poll_interval);
            tokio::time::sleep_until(deadline.map_or(wake, |d| wake.min(d))).await;
        }
    }

    pub(super) async fn poll_status(
        &self,
        url: &Url,
        authorization: &HeaderValue,
        deadline: Option<Instant>,
    ) -> Result<QueueStatus, ProviderError> {
        let builder = self
            .client
            .get(url.clone())
            .header(AUTHORIZATION, authorization.clone());
        let response = self.send(builder, deadline).await?;
        // 202 while queued or running, 200 once completed: both are answers.
        let response = check_status(response, "status", &self.secrets(None)).await?;
        let body = read_body(
            response,
            CONTROL_BODY_LIMIT,
            deadline,
            oversized("status answer", CONTROL_BODY_LIMIT),
        )
        .await?;
        serde_json::from_slice(&body).map_err(|err| ProviderError::Malformed {
            message: format!(
                "status answer is not the expected JSON: {}",
                json_problem(&err)
            ),
        })
    }

    /// Asks fal to drop a request we no longer wait for, so it is not run
    /// and billed for nothing. Failures are logged and otherwise ignored.
    async fn cancel(&self, submitted: &Submitted, authorization: &HeaderValue) {
        let Some(raw) = submitted.cancel_url.as_deref() else {
            return;
        };
        let url = match self.queue_url(raw, "cancel_url") {
            Ok(url) => url,
            Err(err) => {
                tracing::warn!(request_id = %submitted.request_id, error = %err, "not cancelling the fal request");
                return;
            }
        };
        let timeout = self.config.request_timeout.min(CANCEL_TIMEOUT);
        let sent = self
            .client
            .request(Method::PUT, url)
            .header(AUTHORIZATION, authorization.clone())
            .timeout(timeout)
            .send()
            .await;
        match sent {
            Ok(response) => tracing::info!(
                request_id = %submitted.request_id,
                status = response.status().as_u16(),
                "asked fal to cancel a request past its deadline"
            ),
            Err(err) => tracing::warn!(
                request_id = %submitted.request_id,
                error = %describe_transport(err),
                "could not cancel a fal request past its deadline"
            ),
        }
    }

    /// One read of the result, as [`read_result`](Self::read_result)
    /// without its read-again class.
    pub(super) async fn fetch_result(
        &self,
        url: &Url,
        authorization: &HeaderValue,
        request: &GenerationRequest,
    ) -> Result<ModelOutput, ProviderError> {
        self.read_result(url, authorization, request)
            .await
            .map_err(|failed| failed.error)
    }

    /// One read of a completed request's result, and whether another read
    /// may do better.
    ///
    /// The trap: a failed request reads COMPLETED, and only the result's
    /// status code tells that it failed, with fal's error body (`detail`,
    /// `error_type` or `X-Fal-Error-Type`). That is fal's verdict on the
    /// request: final. A 5xx without fal's error body (a proxy or gateway
    /// in trouble, an outage), a 408 or 429, a reset and a truncated or
    /// malformed body are failures to read a result that may be fine: read
    /// it again.
    pub(super) async fn read_result(
        &self,
        url: &Url,
        authorization: &HeaderValue,
        request: &GenerationRequest,
    ) -> Result<ModelOutput, ReadError> {
        let deadline = request.deadline;
        let builder = self
            .client
            .get(url.clone())
            .header(AUTHORIZATION, authorization.clone());
        let response = self.send(builder, deadline).await?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = http::error_body(response).await;
            let error = status_error(
                "result",
                status,
                &headers,
                &body,
                &self.secrets(Some(request)),
            );
            let again = match status.as_u16() {
                408 | 429 => true,
                500..=599 => {
                    let (detail, error_type) = error_detail(&body, &headers);
                    detail.is_none() && error_type.is_none()
                }
                _ => false,
            };
            return Err(ReadError::new(error, again));
        }
        // Outputs may come inline as base64 data URIs (4 bytes per 3), one
        // per requested output, within the JSON around them.
        let limit = http::inline_answer_limit(
            self.config.max_output_bytes,
            u64::from(request.count.max(1)),
        );
        let body = read_body(response, limit, deadline, oversized("result", limit))
            .await
            .map_err(|error| {
                // Over the limit: the same result would be as large again.
                let again = !matches!(error, ProviderError::Malformed { .. });
                ReadError::new(error, again)
            })?;
        serde_json::from_slice(&body).map_err(|err| {
            // A body cut short with a valid frame (a proxy's truncation):
            // the result itself may be fine.
            ReadError::new(
                ProviderError::Malformed {
                    message: format!(
                        "result is not the expected JSON: {}",
                        http::json_problem(&err)
                    ),
                },
                true,
            )
        })
    }

    /// Copies one output out of fal's short-lived URL (or data URI). No
    /// Authorization header: the file host is not the queue API.
    pub(super) async fn download(
        &self,
        file: &OutputFile,
        deadline: Option<Instant>,
    ) -> Result<Artifact, ProviderError> {
        self.fetch_file(file, deadline)
            .await
            .map_err(|failed| failed.error)
    }

    /// [`download`](Self::download), saying whether fetching again may help.
    async fn fetch_file(
        &self,
        file: &OutputFile,
        deadline: Option<Instant>,
    ) -> Result<Artifact, ReadError> {
        http::fetch_output(
            self.downloads.as_ref(),
            &self.spool,
            &file.url,
            file.content_type.clone(),
            self.config.request_timeout,
            self.config.max_output_bytes,
            deadline,
        )
        .await
    }

    /// Sends with a timeout of `request_timeout`, cut short by the deadline.
    pub(super) async fn send(
        &self,
        builder: RequestBuilder,
        deadline: Option<Instant>,
    ) -> Result<Response, ProviderError> {
        http::send(builder, self.config.request_timeout, deadline).await
    }
}

/// Memory a submit of `request` holds while it is built and sent: each input
/// as base64 (4/3) twice, in the JSON value and in the serialised body, and
/// the primary picture once more in `image_urls` of a multi-image edit.
pub(super) fn body_estimate(request: &GenerationRequest) -> u64 {
    let inputs: u64 = request.inputs.iter().map(|input| input.bytes.len()).sum();
    let repeated = if request.inputs.len() > 1 {
        request
            .inputs
            .iter()
            .map(|input| input.bytes.len())
            .max()
            .unwrap_or(0)
    } else {
        0
    };
    (inputs + repeated).saturating_mul(8) / 3 + 4096
}

/// Builds the model input JSON for `request`.
///
/// # Errors
///
/// [`ProviderError::Unsupported`] when the job kind needs an input image
/// the request lacks.
pub(crate) fn build_input(
    request: &GenerationRequest,
) -> Result<Map<String, Value>, ProviderError> {
    params::check(&request.parameters, &OWNED, &[])?;
    let mut input = Map::new();
    input.insert("prompt".into(), request.prompt.clone().into());
    if !request.negative_prompt.is_empty() {
        input.insert(
            "negative_prompt".into(),
            request.negative_prompt.clone().into(),
        );
    }
    if let Some(seed) = request.seed {
        input.insert("seed".into(), seed.into());
    }
    // fal models reject num_images 0 with a 422; a count of 0 means "the default".
    input.insert("num_images".into(), request.count.max(1).into());
    if !request.aspect_ratio.is_empty() {
        input.insert("aspect_ratio".into(), request.aspect_ratio.clone().into());
    }

    let first = |role: InputRole| request.inputs.iter().find(|input| input.role == role);
    let missing = |what: &str| ProviderError::Unsupported {
        message: format!(
            "a {kind:?} job needs {what}, and the request has none",
            kind = request.kind
        ),
    };
    if request.kind == JobKind::VirtualTryOn {
        let person = first(InputRole::Person).ok_or_else(|| missing("a person image"))?;
        let garment = first(InputRole::Garment).ok_or_else(|| missing("a garment image"))?;
        input.insert("human_image_url".into(), data_uri(person)?.into());
        input.insert("garment_image_url".into(), data_uri(garment)?.into());
    } else {
        let pictures: Vec<&InputImage> = request
            .inputs
            .iter()
            .filter(|input| {
                matches!(
                    input.role,
                    InputRole::Product | InputRole::Person | InputRole::Reference
                )
            })
            .collect();
        let primary = pictures
            .iter()
            .find(|input| matches!(input.role, InputRole::Product | InputRole::Person))
            .or_else(|| pictures.first());
        let needs_image = !matches!(request.kind, JobKind::ProductPhoto);
        match primary {
            Some(primary) => {
                input.insert("image_url".into(), data_uri(primary)?.into());
            }
            None if needs_image => return Err(missing("an input image")),
            None => {}
        }
        // Multi-image edit models take the whole set as `image_urls`.
        if pictures.len() > 1 {
            let urls = pictures
                .iter()
                .map(|input| data_uri(input).map(Value::from))
                .collect::<Result<_, _>>()?;
            input.insert("image_urls".into(), Value::Array(urls));
        }
        if request.kind == JobKind::Inpaint {
            let mask = first(InputRole::Mask).ok_or_else(|| missing("a mask image"))?;
            input.insert("mask_url".into(), data_uri(mask)?.into());
        }
    }

    // Model-specific knobs; they may replace the seed or aspect ratio, never
    // a field the worker owns (refused above).
    for (key, value) in &request.parameters {
        input.insert(key.clone(), value.clone());
    }
    Ok(input)
}

/// The files a model output names, in order, at most `count` of them, or
/// why there are none to take.
pub(super) fn output_files(
    output: ModelOutput,
    count: u32,
) -> Result<Vec<OutputFile>, ProviderError> {
    let flagged = output
        .has_nsfw_concepts
        .iter()
        .chain(&output.nsfw_content_detected)
        .any(|flag| flag == &Value::Bool(true));
    if flagged {
        // A safety outcome, not a failure: retrying the same prompt would
        // be billed and likely flagged again.
        return Err(ProviderError::Rejected {
            message: "provider flagged the output as unsafe".into(),
        });
    }
    let mut files = output.images;
    files.extend(output.image);
    files.extend(output.video);
    if files.is_empty() {
        return Err(ProviderError::Malformed {
            message: "result has no images, image or video".into(),
        });
    }
    Ok(http::keep_asked(PROVIDER, files, count))
}

/// Passes 2xx answers through and turns any other into its error.
pub(super) async fn check_status(
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

/// Classifies a non-2xx answer from the queue API. The message holds fal's
/// error type and a [`summary`](http::summary) of its detail, never the
/// key or the prompts.
fn status_error(
    stage: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &Secrets<'_>,
) -> ProviderError {
    let code = status.as_u16();
    let (detail, error_type) = error_detail(body, headers);
    let detail = detail
        .map(|detail| http::summary(&detail, secrets))
        .filter(|detail| !detail.is_empty());
    let error_type = error_type
        .map(|kind| http::label(&kind))
        .filter(|kind| !kind.is_empty());
    let mut message = format!("{stage} answered HTTP {code}");
    if let Some(error_type) = &error_type {
        message.push_str(&format!(" ({error_type})"));
    }
    if let Some(detail) = &detail {
        message.push_str(": ");
        message.push_str(detail);
    }
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    match code {
        // The timeout we asked for with X-Fal-Request-Timeout expired: our
        // own deadline, not fal's fault, and retrying cannot beat it.
        504 if header("x-fal-request-timeout-type")
            .is_some_and(|v| v.eq_ignore_ascii_case("user")) =>
        {
            ProviderError::DeadlineExceeded
        }
        _ => http::classify_status(status, message, retry_after(headers)),
    }
}

/// The wait a rate-limited or overloaded answer asks for: `Retry-After`,
/// else fal's `x-ratelimit-reset` (seconds, or a Unix time when large),
/// at most [`MAX_HINT`](crate::hint::MAX_HINT) whatever the header says.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

fn retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(delay) = header("retry-after").and_then(|value| parse_retry_after(value, now)) {
        return Some(crate::hint::clamp(delay));
    }
    let reset: u64 = header("x-ratelimit-reset")?.trim().parse().ok()?;
    if reset < UNIX_TIME_THRESHOLD {
        return Some(crate::hint::clamp(Duration::from_secs(reset)));
    }
    Some(crate::hint::until_unix(reset, now))
}

/// fal's `detail` (a string, or validation errors as `[{loc, msg, type}]`)
/// and `error_type` (body, else the `X-Fal-Error-Type` header). Only these
/// fields are used: validation errors may also echo the input, which can
/// hold the prompt.
fn error_detail(body: &[u8], headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let detail = match json.get("detail") {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Array(items)) => {
            let messages: Vec<String> = items.iter().filter_map(validation_message).collect();
            (!messages.is_empty()).then(|| messages.join("; "))
        }
        _ => None,
    };
    let error_type = json
        .get("error_type")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get("x-fal-error-type")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        });
    (detail, error_type)
}

/// `"prompt: prompt is too long"` from `{loc: ["body", "prompt"], msg, ..}`.
fn validation_message(item: &Value) -> Option<String> {
    let msg = item.get("msg")?.as_str()?;
    let location: Vec<String> = item
        .get("loc")
        .and_then(Value::as_array)
        .map(|loc| {
            loc.iter()
                .filter(|part| part.as_str() != Some("body"))
                .map(|part| match part {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    if location.is_empty() {
        Some(msg.to_owned())
    } else {
        Some(format!("{}: {msg}", location.join(".")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn classifies_status_codes() {
        let none = HeaderMap::new();
        let check = |code: u16, headers: &HeaderMap, body: &str, expected: &str| {
            let err = status_error(
                "submit",
                StatusCode::from_u16(code).unwrap(),
                headers,
                body.as_bytes(),
                &Secrets::default(),
            );
            assert_eq!(
                format!("{err:?}").split([' ', '{']).next().unwrap(),
                expected,
                "{code}: {err}"
            );
        };
        check(401, &none, "", "Unauthorized");
        check(403, &none, "", "Unauthorized");
        check(408, &none, "", "Unavailable");
        check(429, &none, "", "RateLimited");
        check(500, &none, "", "Unavailable");
        check(
            503,
            &none,
            r#"{"detail":"x","error_type":"runner_scheduling_failure"}"#,
            "Unavailable",
        );
        check(504, &none, "", "Unavailable");
        check(
            504,
            &headers(&[("x-fal-request-timeout-type", "user")]),
            "",
            "DeadlineExceeded",
        );
        check(400, &none, "", "Rejected");
        check(404, &none, "", "Rejected");
        check(422, &none, "", "Rejected");
    }

    #[test]
    fn builds_messages_from_fal_details() {
        let body = r#"{"detail":[{"loc":["body","prompt"],"msg":"prompt is too long","type":"value_error"},
                      {"loc":["body","image_size",0],"msg":"bad size","input":"SECRET PROMPT"}]}"#;
        let err = status_error(
            "submit",
            StatusCode::UNPROCESSABLE_ENTITY,
            &HeaderMap::new(),
            body.as_bytes(),
            &Secrets::default(),
        );
        assert_eq!(
            err.to_string(),
            "provider rejected the request: submit answered HTTP 422: prompt: prompt is too long; image_size.0: bad size"
        );
        let err = status_error(
            "result",
            StatusCode::SERVICE_UNAVAILABLE,
            &headers(&[("x-fal-error-type", "runner_disconnected")]),
            br#"{"detail":"runner went away"}"#,
            &Secrets::default(),
        );
        assert_eq!(
            err.to_string(),
            "provider unavailable: result answered HTTP 503 (runner_disconnected): runner went away"
        );
        let err = status_error(
            "result",
            StatusCode::BAD_GATEWAY,
            &HeaderMap::new(),
            b"<html>oops</html>",
            &Secrets::default(),
        );
        assert_eq!(
            err.to_string(),
            "provider unavailable: result answered HTTP 502"
        );
    }

    #[test]
    fn reads_rate_limit_hints() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&headers(&[("x-ratelimit-reset", "12")])),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            retry_after(&headers(&[("x-ratelimit-reset", "1000000000")])),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    /// Used to panic: `UNIX_EPOCH + Duration::from_secs(u64::MAX)`.
    #[test]
    fn hostile_rate_limit_hints_are_clamped_not_panics() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let max = crate::hint::MAX_HINT;
        for (name, value, expected) in [
            ("x-ratelimit-reset", "18446744073709551615", Some(max)),
            ("x-ratelimit-reset", "9223372036854775807", Some(max)),
            ("x-ratelimit-reset", "999999999", Some(max)),
            (
                "x-ratelimit-reset",
                "1800000030",
                Some(Duration::from_secs(30)),
            ),
            ("x-ratelimit-reset", "99999999999999999999999", None),
            ("x-ratelimit-reset", "-5", None),
            ("x-ratelimit-reset", "1e300", None),
            ("x-ratelimit-reset", "NaN", None),
            ("retry-after", "18446744073709551615", Some(max)),
            ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT", Some(max)),
            ("retry-after", "-1", None),
        ] {
            assert_eq!(
                retry_after_at(&headers(&[(name, value)]), now),
                expected,
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn error_messages_never_echo_the_key_or_the_prompt() {
        let request = GenerationRequest {
            prompt: "a secret product launch photo".into(),
            ..crate::scripted::request_for("a/b", None)
        };
        let key = "key-id-1234:abcdef0123456789abcdef";
        let secrets = Secrets::new(Some(key), Some(&request));
        let body = serde_json::json!({
            "detail": format!("key {key} cannot run 'a secret product launch photo' now"),
            "error_type": format!("bad_{key}"),
        });
        let err = status_error(
            "submit",
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            body.to_string().as_bytes(),
            &secrets,
        );
        let text = err.to_string();
        crate::hostile_table::assert_sanitised(&text, &["abcdef0123456789", "secret product"]);
        assert!(text.contains("submit answered HTTP 400"), "{text}");
    }

    #[test]
    fn debug_redacts_the_key() {
        let config = FalConfig {
            key: "fal-secret-key-123".into(),
            ..FalConfig::default()
        };
        let provider = FalProvider::new(config.clone(), client());
        for text in [format!("{config:?}"), format!("{provider:?}")] {
            assert!(!text.contains("fal-secret-key-123"), "{text}");
            assert!(text.contains("[redacted]"), "{text}");
        }
    }

    #[test]
    fn rejects_model_paths_that_leave_the_queue() {
        let provider = FalProvider::new(FalConfig::default(), client());
        assert_eq!(
            provider.submit_url("fal-ai/flux/dev").unwrap().as_str(),
            "https://queue.fal.run/fal-ai/flux/dev"
        );
        for bad in [
            "flux",
            "fal-ai/../x",
            "fal-ai//dev",
            "//evil.example/x",
            "a/b?c=d",
            "a/b#x",
            "",
        ] {
            assert!(
                matches!(
                    provider.submit_url(bad),
                    Err(ProviderError::Unsupported { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn decodes_data_uris() {
        let (mime, bytes) = crate::http::decode_data_uri("image/png;base64,AAEC").unwrap();
        assert_eq!((mime.as_str(), &bytes[..]), ("image/png", &[0u8, 1, 2][..]));
        assert!(crate::http::decode_data_uri("image/png,AAEC").is_err());
        assert!(crate::http::decode_data_uri("image/png;base64,@@").is_err());
    }
}

//! One attempt through the predictions API: create (holding the request
//! open with `Prefer: wait` when no submission log is kept), record, poll
//! until an end state, cancel on the way out, then download the outputs.
//! The answers themselves are classified in [`super::classify`].

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{RequestBuilder, Response};
use tokio::time::Instant;
use url::Url;

use crate::http::{self, describe_transport, Secrets};
use crate::params;
use crate::reread::{read_again, Failure, ReadError};
use crate::resume::CANCEL_TIMEOUT;
use crate::{Artifact, GenerationOutput, GenerationRequest, ProviderError};

use super::classify::*;
use super::*;

impl ReplicateProvider {
    #[tracing::instrument(
        name = "replicate_generate",
        skip_all,
        fields(provider = PROVIDER, job_id = %request.job_id, prediction_id = tracing::field::Empty)
    )]
    pub(super) async fn generate_once(
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
    pub(in crate::replicate) fn secrets<'a>(
        &'a self,
        request: Option<&'a GenerationRequest>,
    ) -> Secrets<'a> {
        Secrets::new(Some(&self.config.token), request)
    }

    /// The built `Authorization` header, or why there is none.
    pub(in crate::replicate) fn authorization(&self) -> Result<HeaderValue, ProviderError> {
        self.authorization
            .clone()
            .map_err(|message| ProviderError::Unauthorized { message })
    }

    /// The outputs of a finished prediction, downloaded, or the error its
    /// end state means.
    pub(in crate::replicate) async fn finish(
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
    pub(in crate::replicate) fn create_target(
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
    pub(in crate::replicate) fn api_url(
        &self,
        raw: &str,
        what: &str,
    ) -> Result<Url, ProviderError> {
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
    pub(in crate::replicate) async fn create(
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
    pub(in crate::replicate) async fn poll(
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

//! One attempt through the queue API: submit, record, poll the status URL
//! until the request completes, fetch and read the result, cancel on the
//! way out, then download the output files. The answers themselves are
//! classified in [`super::classify`].

use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Map, Value};
use tokio::time::Instant;
use url::Url;

use crate::http::{
    self, describe_transport, json_problem, oversized, read_body, Secrets, CONTROL_BODY_LIMIT,
};
use crate::params;
use crate::reread::{read_again, Failure, ReadError};
use crate::resume::CANCEL_TIMEOUT;
use crate::{Artifact, GenerationOutput, GenerationRequest, ProviderError};

use super::classify::*;
use super::input::*;
use super::*;

impl FalProvider {
    #[tracing::instrument(
        name = "fal_generate",
        skip_all,
        fields(provider = "fal", job_id = %request.job_id, request_id = tracing::field::Empty)
    )]
    pub(super) async fn generate_once(
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
    pub(in crate::fal) fn submit_url(&self, model: &str) -> Result<Url, ProviderError> {
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
    pub(in crate::fal) fn queue_url(&self, raw: &str, what: &str) -> Result<Url, ProviderError> {
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

    pub(in crate::fal) async fn submit(
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

    pub(in crate::fal) async fn poll_status(
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
    pub(in crate::fal) async fn fetch_result(
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
    pub(in crate::fal) async fn read_result(
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
    pub(in crate::fal) async fn download(
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
    pub(in crate::fal) async fn send(
        &self,
        builder: RequestBuilder,
        deadline: Option<Instant>,
    ) -> Result<Response, ProviderError> {
        http::send(builder, self.config.request_timeout, deadline).await
    }
}

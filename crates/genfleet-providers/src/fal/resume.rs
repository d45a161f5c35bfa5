//! fal's [`Resumable`] face, and the records both it and a resumed
//! [`generate`](crate::Provider::generate) follow.

use reqwest::header::AUTHORIZATION;
use reqwest::Method;

use super::client::{body_estimate, build_input, check_status, output_files, Submitted};
use super::FalProvider;
use crate::{Checked, GenerationOutput, GenerationRequest, ProviderError, Resumable};

/// The parking face of fal's queue API: submit once, look at the status
/// now and then (any worker), fetch and copy the result when completed.
#[async_trait::async_trait]
impl Resumable for FalProvider {
    async fn submit(&self, request: &GenerationRequest) -> Result<String, ProviderError> {
        let authorization = self.authorization()?;
        let submit_url = self.submit_url(&request.model)?;
        // Refused before the spool's room is taken or anything is sent.
        crate::params::check(&request.parameters, &super::client::OWNED, &[])?;
        let _room = self
            .spool
            .room_to_send(body_estimate(request), request.deadline)
            .await?;
        let input = build_input(&*request.load_inputs().await?)?;
        // No request timeout for fal: a parked render waits as long as the
        // caller's polls allow, and the caller cancels it past its deadline.
        let submitted = self
            .submit(
                submit_url,
                &authorization,
                input,
                None,
                &self.secrets(Some(request)),
            )
            .await?;
        tracing::debug!(request_id = %submitted.request_id, "submitted to the fal queue for parking");
        self.submissions.encode(&submitted)
    }

    async fn check(
        &self,
        request: &GenerationRequest,
        submission: &str,
    ) -> Result<Checked, ProviderError> {
        let authorization = self.authorization()?;
        let submitted = self.parse_record(submission)?;
        let status_url = self.queue_url(&submitted.status_url, "status_url")?;
        let deadline = request.deadline;
        let status = self
            .poll_status(&status_url, &authorization, deadline)
            .await?;
        if matches!(status.status.as_str(), "IN_QUEUE" | "IN_PROGRESS") {
            return Ok(Checked::Running);
        }
        let raw = status
            .response_url
            .as_deref()
            .unwrap_or(&submitted.response_url);
        let response_url = self.queue_url(raw, "response_url")?;
        let output = self
            .fetch_result(&response_url, &authorization, request)
            .await?;
        let mut artifacts = Vec::new();
        for file in &output_files(output, request.count)? {
            artifacts.push(self.download(file, deadline).await?);
        }
        Ok(Checked::Done(GenerationOutput {
            artifacts,
            attempts: 1,
            request_id: Some(submitted.request_id),
        }))
    }

    async fn cancel(&self, submission: &str) -> Result<(), ProviderError> {
        let authorization = self.authorization()?;
        let submitted = self.parse_record(submission)?;
        let Some(raw) = submitted.cancel_url.as_deref() else {
            return Err(ProviderError::Unsupported {
                message: "the fal submission has no cancel_url".into(),
            });
        };
        let url = self.queue_url(raw, "cancel_url")?;
        let builder = self
            .client
            .request(Method::PUT, url)
            .header(AUTHORIZATION, authorization);
        let response = self.send(builder, None).await?;
        // fal answers the outcome in the body (CANCELLATION_REQUESTED,
        // ALREADY_COMPLETED, NOT_FOUND); a 4xx for an unknown or finished
        // request means there is nothing left to stop.
        if response.status().is_server_error() || response.status().as_u16() == 429 {
            return Err(check_status(response, "cancel", &self.secrets(None))
                .await
                .err()
                .unwrap_or(ProviderError::Malformed {
                    message: "cancel answered an error status".into(),
                }));
        }
        tracing::info!(
            request_id = %submitted.request_id,
            status = response.status().as_u16(),
            "asked fal to cancel a request"
        );
        Ok(())
    }
}

impl FalProvider {
    /// A submission record this client wrote, refusing one whose URLs
    /// leave the configured origin (the key would follow them).
    pub(super) fn parse_record(&self, submission: &str) -> Result<Submitted, ProviderError> {
        let submitted: Submitted =
            serde_json::from_str(submission).map_err(|_| ProviderError::Rejected {
                message: "the recorded fal submission is unreadable".into(),
            })?;
        self.queue_url(&submitted.status_url, "status_url")
            .map_err(|_| ProviderError::Rejected {
                message: "the recorded fal submission points outside the fal base URL".into(),
            })?;
        Ok(submitted)
    }
}

//! Replicate's [`Resumable`] face, and the records both it and a resumed
//! [`generate`](crate::Provider::generate) follow.

use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;

use super::client::{finished, status_error, Record, PROVIDER};
use super::ReplicateProvider;
use crate::http;
use crate::{Checked, GenerationRequest, ProviderError, Resumable};

/// The queue-style face: `submit` creates without `Prefer: wait` and returns
/// the prediction's record (`{"id", "urls": {"get", "cancel"}}`, never the
/// token); `check` is one poll; `cancel` one cancel.
///
/// A record that is not JSON of that shape, or whose URLs leave the
/// configured origin, fails as [`ProviderError::Unsupported`]: permanent,
/// since looking again cannot make it readable.
#[async_trait::async_trait]
impl Resumable for ReplicateProvider {
    #[tracing::instrument(
        name = "replicate_submit",
        skip_all,
        fields(provider = PROVIDER, job_id = %request.job_id, prediction_id = tracing::field::Empty)
    )]
    async fn submit(&self, request: &GenerationRequest) -> Result<String, ProviderError> {
        let authorization = self.authorization()?;
        let target = self.create_target(&*request.load_inputs().await?)?;
        let (record, _) = self.create(target, &authorization, request, false).await?;
        tracing::Span::current().record("prediction_id", record.id.as_str());
        self.submissions.encode(&record)
    }

    #[tracing::instrument(
        name = "replicate_check",
        skip_all,
        fields(provider = PROVIDER, job_id = %request.job_id)
    )]
    async fn check(
        &self,
        request: &GenerationRequest,
        submission: &str,
    ) -> Result<Checked, ProviderError> {
        let authorization = self.authorization()?;
        let record = self.parse_record(submission)?;
        let prediction = self.poll(&record, &authorization, request).await?;
        if !finished(&prediction)? {
            return Ok(Checked::Running);
        }
        let output = self.finish(&record, &prediction, request).await?;
        Ok(Checked::Done(output))
    }

    async fn cancel(&self, submission: &str) -> Result<(), ProviderError> {
        let authorization = self.authorization()?;
        let record = self.parse_record(submission)?;
        let url = self.api_url(&record.urls.cancel, "urls.cancel")?;
        let builder = self.client.post(url).header(AUTHORIZATION, authorization);
        let response = http::send(builder, self.config.request_timeout, None).await?;
        let status = response.status();
        // 404: Replicate no longer knows it (finished long ago, expired):
        // nothing is running to stop.
        if status.is_success() || status == StatusCode::NOT_FOUND {
            tracing::info!(prediction_id = %record.id, status = status.as_u16(), "asked replicate to cancel a prediction");
            return Ok(());
        }
        let headers = response.headers().clone();
        let body = http::error_body(response).await;
        Err(status_error(
            "cancel",
            status,
            &headers,
            &body,
            &self.secrets(None),
        ))
    }
}

impl ReplicateProvider {
    /// A record from the log or a [`Resumable`] caller, refused when its
    /// URLs leave the configured origin: the token is attached to them.
    pub(super) fn parse_record(&self, raw: &str) -> Result<Record, ProviderError> {
        let record: Record =
            serde_json::from_str(raw).map_err(|err| ProviderError::Unsupported {
                message: format!(
                    "the submission record is not a replicate prediction record (id, urls.get, urls.cancel): {}",
                    http::json_problem(&err)
                ),
            })?;
        for (raw, what) in [
            (&record.urls.get, "urls.get"),
            (&record.urls.cancel, "urls.cancel"),
        ] {
            self.api_url(raw, what)
                .map_err(|err| ProviderError::Unsupported {
                    message: format!("the submission record is unusable: {err}"),
                })?;
        }
        Ok(record)
    }
}

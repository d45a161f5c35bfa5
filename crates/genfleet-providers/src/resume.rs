//! Requests that live at the provider between calls, for the queue-style
//! providers (fal, Replicate): their [`Resumable`] face, the
//! [`SubmissionLog`] a job's request is recorded in, and [`Submissions`],
//! the one place that reads and writes that log for them.
//!
//! Neither provider has an idempotency key, so a second submit of the same
//! job may be billed twice. An attempt therefore records its request right
//! after the submit, and a later attempt of the same job (its worker died)
//! follows the record instead of submitting again. Each client supplies only
//! what is its own: the record's shape, how a recalled one is checked (its
//! URLs must stay on the configured origin, the credential follows them) and
//! how it is waited on.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::reread::Failure;
use crate::{GenerationOutput, GenerationRequest, ProviderError};

/// Remembers which provider request a job's generation is waiting on, so a
/// job redelivered after its worker died resumes that request instead of
/// submitting (and paying for) it again. A record lives while some worker
/// waits on the request or died waiting: a provider forgets it when the
/// request failed at the provider or its deadline passed (the next attempt
/// must submit anew), and keeps it while only reading it failed (the next
/// attempt reads it again).
///
/// `submission` is the provider's own opaque resume data (its request id and
/// the URLs to poll and cancel it). Errors are strings because a failing log
/// only costs idempotency, never the job: providers log them and go on.
#[async_trait::async_trait]
pub trait SubmissionLog: Send + Sync {
    async fn recall(&self, job_id: &str, provider: &str) -> Result<Option<String>, String>;
    async fn remember(&self, job_id: &str, provider: &str, submission: &str) -> Result<(), String>;
    async fn forget(&self, job_id: &str, provider: &str) -> Result<(), String>;
}

/// What one look at a submitted request found.
#[derive(Debug)]
pub enum Checked {
    /// Queued or rendering at the provider: look again later.
    Running,
    /// Finished; its outputs are already copied out of the provider.
    Done(GenerationOutput),
}

/// A provider whose requests live on its side between calls (a queue API),
/// so a long render need not hold a worker: the worker submits, parks the
/// job in a delay queue, and any worker later checks on the request.
///
/// A submission record is the provider's own resume data (JSON: request id
/// and the URLs to poll and cancel it), opaque to callers, who store it with
/// the job. It never holds a key. Every method makes at most one exchange
/// per step and never sleeps: waiting is the caller's business.
#[async_trait::async_trait]
pub trait Resumable: Send + Sync {
    /// Submits `request` and returns its submission record.
    ///
    /// # Errors
    ///
    /// As [`Provider::generate`](crate::Provider::generate); nothing was
    /// submitted unless the error is a transport failure after sending (the
    /// provider may then run it anyway, which is why callers store the
    /// record before anything else).
    async fn submit(&self, request: &GenerationRequest) -> Result<String, ProviderError>;

    /// Looks once at the request `submission` names; when it has finished,
    /// copies its outputs.
    ///
    /// # Errors
    ///
    /// A retryable error: the look failed, the request may still be fine.
    /// A permanent one: the request failed, was rejected (safety), or is
    /// unknown to the provider; it will not finish.
    async fn check(
        &self,
        request: &GenerationRequest,
        submission: &str,
    ) -> Result<Checked, ProviderError>;

    /// Asks the provider to stop the request, so it is not rendered and
    /// billed for nothing.
    ///
    /// # Errors
    ///
    /// When the provider could not be told; the request may then still run.
    async fn cancel(&self, submission: &str) -> Result<(), ProviderError>;
}

/// The cancel of a request nobody waits for any more is best-effort; it
/// must not hold the worker.
pub(crate) const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

/// A provider's resume data for one request, as its client records it.
pub(crate) trait SubmissionRecord: Serialize {
    /// The provider's id for the request, for logs.
    fn id(&self) -> &str;
}

/// One client's view of the [`SubmissionLog`]: the log, when there is one,
/// under the client's provider name. A failing log is only a warning, as
/// the log's contract says.
pub(crate) struct Submissions {
    provider: &'static str,
    log: Option<Arc<dyn SubmissionLog>>,
}

impl Submissions {
    /// No log: every attempt submits anew.
    pub(crate) fn new(provider: &'static str) -> Self {
        Self {
            provider,
            log: None,
        }
    }

    pub(crate) fn set_log(&mut self, log: Arc<dyn SubmissionLog>) {
        self.log = Some(log);
    }

    /// `record` as the JSON a [`Resumable`] caller stores.
    pub(crate) fn encode(&self, record: &impl SubmissionRecord) -> Result<String, ProviderError> {
        serde_json::to_string(record).map_err(|e| ProviderError::Malformed {
            message: format!(
                "the {} submission record could not be encoded: {e}",
                self.provider
            ),
        })
    }

    /// Whether submissions are recorded: a client that holds a request open
    /// while it renders (Replicate's `Prefer: wait`) must not, since the id
    /// is only known, and recorded, once that answer arrives.
    pub(crate) fn has_log(&self) -> bool {
        self.log.is_some()
    }

    /// Follows the request an earlier attempt of the job recorded, else (or
    /// when that request is gone) submits anew. `parse` reads a recorded
    /// record and refuses one this client must not follow; `follow` waits
    /// on a recalled request and answers `None` when it was stopped rather
    /// than judged (run it again); `submit` submits and waits, and records
    /// its request with [`remember`](Self::remember) before it waits.
    ///
    /// # Errors
    ///
    /// `submit`'s, and `follow`'s when it is retryable, the deadline's or
    /// [`Failure::Unread`]: the provider has not refused the recorded
    /// request for good, so this attempt does not pay for another.
    pub(crate) async fn resume_or_submit<R, T, Follow, Submit>(
        &self,
        job_id: &str,
        parse: impl FnOnce(&str) -> Result<R, ProviderError>,
        follow: impl FnOnce(R) -> Follow,
        submit: impl FnOnce() -> Submit,
    ) -> Result<(R, T), Failure>
    where
        R: SubmissionRecord,
        Follow: std::future::Future<Output = Result<Option<(R, T)>, Failure>>,
        Submit: std::future::Future<Output = Result<(R, T), Failure>>,
    {
        let provider = self.provider;
        if let Some(earlier) = self.recall(job_id, parse).await {
            let request_id = earlier.id().to_owned();
            match follow(earlier).await {
                Ok(Some(resumed)) => {
                    tracing::info!(
                        provider,
                        request_id = %request_id,
                        "resumed the {provider} request an earlier attempt of this job submitted"
                    );
                    return Ok(resumed);
                }
                // Stopped rather than judged: `follow` has said why.
                Ok(None) => {}
                Err(Failure::Judged(err))
                    if !err.is_retryable() && err.code() != "deadline_exceeded" =>
                {
                    // Gone (expired at the provider, unknown id): submit anew.
                    tracing::warn!(
                        provider,
                        request_id = %request_id,
                        code = err.code(),
                        reason = %err,
                        "the recorded {provider} request cannot be resumed; submitting again"
                    );
                }
                Err(failure) => return Err(failure),
            }
        }
        submit().await
    }

    /// The record an earlier attempt of `job_id` left, if any and if
    /// `parse` accepts it.
    async fn recall<R>(
        &self,
        job_id: &str,
        parse: impl FnOnce(&str) -> Result<R, ProviderError>,
    ) -> Option<R> {
        let log = self.log.as_ref()?;
        let provider = self.provider;
        let recorded = match log.recall(job_id, provider).await {
            Ok(recorded) => recorded?,
            Err(e) => {
                tracing::warn!(provider, error = %e, "could not read the {provider} submission log");
                return None;
            }
        };
        match parse(&recorded) {
            Ok(record) => Some(record),
            Err(_) => {
                tracing::warn!(
                    provider,
                    "ignoring an unreadable {provider} submission record"
                );
                None
            }
        }
    }

    /// Records `record` for `job_id`. Called before waiting on it: a worker
    /// that dies from there on leaves the request for the job's next
    /// attempt to resume.
    pub(crate) async fn remember(&self, job_id: &str, record: &impl SubmissionRecord) {
        let Some(log) = &self.log else {
            return;
        };
        let provider = self.provider;
        let recorded = match self.encode(record) {
            Ok(recorded) => recorded,
            Err(e) => {
                tracing::warn!(provider, error = %e, "could not record the {provider} submission");
                return;
            }
        };
        if let Err(e) = log.remember(job_id, provider, &recorded).await {
            tracing::warn!(provider, error = %e, "could not record the {provider} submission");
        }
    }

    /// Passes `attempt` through, forgetting the job's record when it ended
    /// in a [`Failure::Judged`]: that request is over (or there was none),
    /// and the next attempt must not resume it. A [`Failure::Unread`] keeps
    /// the record, so the next attempt reads the same request again.
    pub(crate) async fn settle<T>(
        &self,
        job_id: &str,
        attempt: Result<T, Failure>,
    ) -> Result<T, ProviderError> {
        match attempt {
            Ok(value) => Ok(value),
            Err(Failure::Unread(error)) => Err(error),
            Err(Failure::Judged(error)) => {
                if let Some(log) = &self.log {
                    let provider = self.provider;
                    if let Err(e) = log.forget(job_id, provider).await {
                        tracing::warn!(provider, error = %e, "could not forget the {provider} submission");
                    }
                }
                Err(error)
            }
        }
    }
}

/// A [`SubmissionLog`] in memory, as the ledger would keep it.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct MemoryLog(
    pub(crate) std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
);

#[cfg(test)]
#[async_trait::async_trait]
impl SubmissionLog for MemoryLog {
    async fn recall(&self, job_id: &str, provider: &str) -> Result<Option<String>, String> {
        let map = self.0.lock().unwrap();
        Ok(map
            .get(&(job_id.to_string(), provider.to_string()))
            .cloned())
    }
    async fn remember(&self, job_id: &str, provider: &str, submission: &str) -> Result<(), String> {
        let mut map = self.0.lock().unwrap();
        map.insert((job_id.into(), provider.into()), submission.into());
        Ok(())
    }
    async fn forget(&self, job_id: &str, provider: &str) -> Result<(), String> {
        let mut map = self.0.lock().unwrap();
        map.remove(&(job_id.to_string(), provider.to_string()));
        Ok(())
    }
}

#[cfg(test)]
impl MemoryLog {
    /// What an earlier attempt of `job-7` on `provider` would have recorded.
    pub(crate) fn plant(&self, provider: &str, record: &serde_json::Value) {
        let mut map = self.0.lock().unwrap();
        map.insert(("job-7".into(), provider.into()), record.to_string());
    }

    /// What `job-7` has recorded on `provider`.
    pub(crate) fn recorded(&self, provider: &str) -> Option<String> {
        let map = self.0.lock().unwrap();
        map.get(&("job-7".to_string(), provider.to_string()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Record {
        id: String,
    }

    impl SubmissionRecord for Record {
        fn id(&self) -> &str {
            &self.id
        }
    }

    fn unavailable() -> ProviderError {
        ProviderError::Unavailable {
            message: "reset".into(),
            retry_after: None,
        }
    }

    /// Reads that only failed keep the request on record for the job's
    /// next attempt; a verdict (or the deadline) forgets it.
    #[tokio::test]
    async fn only_a_judged_attempt_forgets_its_request() {
        let log = Arc::new(MemoryLog::default());
        let mut submissions = Submissions::new("test");
        submissions.set_log(log.clone());
        let record = Record { id: "r1".into() };

        submissions.remember("job-7", &record).await;
        let kept = submissions
            .settle::<()>("job-7", Err(Failure::Unread(unavailable())))
            .await;
        assert!(matches!(kept, Err(ProviderError::Unavailable { .. })));
        assert_eq!(log.recorded("test").as_deref(), Some(r#"{"id":"r1"}"#));

        let forgotten = submissions
            .settle::<()>("job-7", Err(Failure::Judged(unavailable())))
            .await;
        assert!(forgotten.is_err());
        assert_eq!(log.recorded("test"), None);

        submissions.remember("job-7", &record).await;
        submissions.settle("job-7", Ok(())).await.unwrap();
        assert!(log.recorded("test").is_some(), "a success keeps its record");
    }
}

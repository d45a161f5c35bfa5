//! The fault-table runs' shared part: jobs run at once through a
//! [`Guarded`] provider and [`generate_with_retries`], and a deferral
//! handled as the worker's retry queue handles it (come back after its
//! `retry_after`, while the deadline allows), so each provider's tests can
//! count what the fake saw per job.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::{
    generate_with_retries, GenerationOutput, GenerationRequest, GuardConfig, Guarded, Provider,
    ProviderError, RetryPolicy,
};

/// Jobs per fault-table run.
pub(crate) const JOBS: usize = 20;

/// The default guard, with a breaker that probes again soon, so a run that
/// opens it (503s) finishes in seconds.
pub(crate) fn guard_config() -> GuardConfig {
    GuardConfig {
        open_for: Duration::from_millis(300),
        ..GuardConfig::default()
    }
}

/// [`JOBS`] copies of `request`, each its own job (id, prompt, seed), all
/// due `deadline` from now.
pub(crate) fn jobs_of(request: &GenerationRequest, deadline: Duration) -> Vec<GenerationRequest> {
    let deadline = Instant::now() + deadline;
    (0..JOBS)
        .map(|i| GenerationRequest {
            job_id: format!("job-{i}"),
            prompt: format!("{}, take {i}", request.prompt),
            seed: Some(i as u64),
            deadline: Some(deadline),
            ..request.clone()
        })
        .collect()
}

/// How one job ended.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) result: Result<GenerationOutput, ProviderError>,
    /// Times the job was deferred and came back.
    pub(crate) deferrals: u32,
}

/// Retries enough for a fault table of 30 % (a job's submits can land on
/// the failing calls several times in a row when jobs interleave); short
/// waits, so the runs take seconds.
pub(crate) fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 10,
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
    }
}

/// Runs every request at once and returns how each ended, in order.
pub(crate) async fn run_jobs<P: Provider + 'static>(
    guarded: &Arc<Guarded<P>>,
    requests: Vec<GenerationRequest>,
) -> Vec<Ended> {
    let jobs: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let guarded = Arc::clone(guarded);
            tokio::spawn(async move { run_job(&*guarded, &request).await })
        })
        .collect();
    let mut ended = Vec::with_capacity(jobs.len());
    for job in jobs {
        ended.push(job.await.expect("a job task panicked"));
    }
    ended
}

/// One job: retried by policy, and put aside and brought back on a
/// deferral, as the worker would.
pub(crate) async fn run_job(provider: &dyn Provider, request: &GenerationRequest) -> Ended {
    let mut deferrals = 0;
    loop {
        let error = match generate_with_retries(provider, request, &policy()).await {
            Ok(output) => {
                return Ended {
                    result: Ok(output),
                    deferrals,
                }
            }
            Err(failed) => failed.error,
        };
        let ProviderError::Deferred { retry_after, .. } = error else {
            return Ended {
                result: Err(error),
                deferrals,
            };
        };
        let wake = Instant::now() + retry_after;
        if request.deadline.is_some_and(|deadline| wake >= deadline) {
            return Ended {
                result: Err(error),
                deferrals,
            };
        }
        deferrals += 1;
        tokio::time::sleep_until(wake).await;
    }
}

/// The codes of the jobs that failed, for assertion messages.
pub(crate) fn failures(ended: &[Ended]) -> Vec<String> {
    ended
        .iter()
        .filter_map(|job| job.result.as_ref().err())
        .map(|error| format!("{}: {error}", error.code()))
        .collect()
}

/// Runs the table's jobs through `provider` behind a [`Guarded`] of
/// [`guard_config`], asserts that every one succeeded, and returns the
/// guard and how each job ended, for the row's own checks.
pub(crate) async fn all_succeed<P: Provider + 'static>(
    provider: P,
    request: &GenerationRequest,
) -> (std::sync::Arc<crate::Guarded<P>>, Vec<Ended>) {
    let guarded = std::sync::Arc::new(crate::Guarded::new(provider, guard_config()));
    let ended = run_jobs(&guarded, jobs_of(request, Duration::from_secs(60))).await;
    let failed = failures(&ended);
    assert!(failed.is_empty(), "{failed:?}");
    (guarded, ended)
}

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

/// The four jobs of a row whose fault hits every second call of its kind
/// (a fraction of 0.5 hits calls 1, 3, 5, ... counted from 0), for a fault
/// on a call each attempt makes exactly once (its submit, or the download
/// of its one output): job 0, one attempt, is spared; job 1, one attempt,
/// is hit and its error returned; job 2, one attempt, is spared; job 3,
/// retried by [`policy`], is hit on its first attempt and spared on its
/// second, and its output returned (`attempts` 2). Four attempts spared,
/// two hit: five calls of that kind in all.
pub(crate) async fn every_second_call_hit(
    provider: &dyn Provider,
    request: &GenerationRequest,
) -> (ProviderError, GenerationOutput) {
    let job = |i: usize| GenerationRequest {
        job_id: format!("job-{i}"),
        prompt: format!("{}, take {i}", request.prompt),
        seed: Some(i as u64),
        deadline: Some(Instant::now() + Duration::from_secs(30)),
        ..request.clone()
    };
    let spared = provider.generate(&job(0)).await;
    assert!(spared.is_ok(), "job 0: {spared:?}");
    let hit = provider.generate(&job(1)).await;
    let Err(error) = hit else {
        panic!("job 1 was not hit: {hit:?}")
    };
    let spared = provider.generate(&job(2)).await;
    assert!(spared.is_ok(), "job 2: {spared:?}");
    let retried = generate_with_retries(provider, &job(3), &policy())
        .await
        .expect("job 3, retried");
    assert_eq!(retried.attempts, 2, "job 3: hit once, then spared");
    (error, retried)
}

/// What a lost submit answer costs, the same for every provider: the
/// attempt fails with a retryable `provider_unavailable` (the client saw
/// the connection drop, with no id or output), and the retry submits
/// again: a second render, billed. No provider here takes an idempotency
/// key, and none of these clients recovers the lost request (fal's queue
/// and Vertex, OpenAI and KServe have no way to find it; Replicate's
/// prediction list could, but the client does not look), so that second
/// render is unavoidable; what this pins is its bound: exactly one more
/// render per lost answer, never more, and no job lost.
///
/// `counts` reads the fake's counters; the fake must play
/// `submit_answer_lost: 0.5`, and is switched by `set_lost` to 0.3 for the
/// concurrent part.
pub(crate) async fn lost_answers_cost_one_render_each<P: Provider + 'static>(
    provider: P,
    request: &GenerationRequest,
    counts: impl Fn() -> crate::fake_faults::FaultCounts,
    set_lost: impl Fn(f64),
) {
    set_lost(0.5);
    let (error, output) = every_second_call_hit(&provider, request).await;
    assert!(
        matches!(error, ProviderError::Unavailable { .. }),
        "a lost answer is the provider unreachable: {error:?}"
    );
    assert_eq!(error.code(), "provider_unavailable");
    assert!(error.is_retryable());
    assert!(!output.artifacts.is_empty());
    let seen = counts();
    // Jobs 0 to 3: five renders (job 3 twice), two of them lost; every
    // render was a submit the provider accepted (and bills).
    assert_eq!(
        (
            seen.renders_started,
            seen.submits_accepted,
            seen.submit_answers_lost
        ),
        (5, 5, 2),
        "{seen:?}"
    );
    assert_eq!(seen.submits_refused, 0, "{seen:?}");

    // Many jobs at once, 30 % of answers lost: every job succeeds, and the
    // renders are the jobs plus one per lost answer, exactly.
    set_lost(0.3);
    all_succeed(provider, request).await;
    let after = counts();
    let lost = after.submit_answers_lost - seen.submit_answers_lost;
    let renders = after.renders_started - seen.renders_started;
    assert!(lost >= 6, "{after:?}");
    assert_eq!(renders, JOBS as u64 + lost, "{after:?}");
}

/// Whether `bytes` is a whole PNG: its signature, and its last chunk the
/// IEND chunk (a file cut short lacks it).
pub(crate) fn is_whole_png(bytes: &[u8]) -> bool {
    const IEND: &[u8] = b"\0\0\0\0IEND\xaeB`\x82";
    bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.ends_with(IEND)
}

/// Downloads reset or cut short (`Faults::download_reset` and
/// `download_truncated` at 0.3 each, set by the caller): every job
/// succeeds with whole files, nothing is rendered twice (the same URL is
/// fetched again), and every broken download was followed by exactly one
/// more.
pub(crate) async fn broken_downloads_are_fetched_again<P: Provider + 'static>(
    provider: P,
    request: &GenerationRequest,
    counts: impl Fn() -> crate::fake_faults::FaultCounts,
) {
    let (_, ended) = all_succeed(provider, request).await;
    let seen = counts();
    assert_eq!(seen.renders_started, JOBS as u64, "{seen:?}");
    assert!(seen.downloads_broken >= 6, "{seen:?}");
    assert_eq!(
        seen.downloads,
        JOBS as u64 + seen.downloads_broken,
        "{seen:?}"
    );
    for job in &ended {
        let output = job.result.as_ref().expect("succeeded");
        assert_eq!(output.attempts, 1, "a broken download cost an attempt");
        for artifact in &output.artifacts {
            let bytes = artifact.bytes.bytes().await.expect("the artifact reads");
            assert!(
                is_whole_png(&bytes),
                "a cut file was kept: {} bytes",
                bytes.len()
            );
        }
    }
}

/// An output URL that has expired (`Faults::download_expired` at 0.5, set
/// by the caller): the file host's verdict, so the attempt fails at once
/// (the same URL is not fetched again) with a retryable
/// `provider_unavailable`, and the retry renders again: the one way a
/// finished, billed render is paid for twice after its answer arrived.
pub(crate) async fn an_expired_download_fails_the_attempt<P: Provider + 'static>(
    provider: P,
    request: &GenerationRequest,
    counts: impl Fn() -> crate::fake_faults::FaultCounts,
) {
    let (error, output) = every_second_call_hit(&provider, request).await;
    assert!(
        matches!(error, ProviderError::Unavailable { .. }),
        "{error:?}"
    );
    assert_eq!(error.code(), "provider_unavailable");
    assert!(error.is_retryable());
    let bytes = output.artifacts[0].bytes.bytes().await.expect("reads");
    assert!(is_whole_png(&bytes));
    let seen = counts();
    // One download per render: an expired URL is never fetched twice.
    assert_eq!(
        (seen.renders_started, seen.downloads, seen.downloads_expired),
        (5, 5, 2),
        "{seen:?}"
    );
}

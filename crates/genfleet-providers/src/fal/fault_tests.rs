//! The fault table against the fake fal queue: many jobs at once through
//! [`Guarded`] and `generate_with_retries`, each row of faults at 30 %, and
//! the counts that say each job was rendered once: accepted submits equal
//! jobs, whatever was refused or failed to read.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::fake::{FakeFal, Faults};
use crate::fault_table::{failures, run_jobs, Ended};
use crate::resume::MemoryLog;
use crate::{
    FalConfig, FalProvider, GenerationRequest, GuardConfig, Guarded, JobKind, Provider,
    ProviderError,
};

const JOBS: usize = 20;

fn provider(fake: &FakeFal) -> FalProvider {
    let _ = rustls::crypto::ring::default_provider().install_default();
    FalProvider::new(
        FalConfig {
            base_url: fake.base_url.clone(),
            key: "test-key-0123".into(),
            request_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(10),
            max_output_bytes: 10 * 1024 * 1024,
        },
        reqwest::Client::new(),
    )
}

/// The default guard, with a breaker that probes again soon, so a run that
/// opens it (503s) finishes in seconds.
fn guarded(provider: FalProvider) -> Arc<Guarded<FalProvider>> {
    Arc::new(Guarded::new(
        provider,
        GuardConfig {
            open_for: Duration::from_millis(300),
            ..GuardConfig::default()
        },
    ))
}

fn requests(model: &str, deadline: Duration) -> Vec<GenerationRequest> {
    let deadline = Instant::now() + deadline;
    (0..JOBS)
        .map(|i| GenerationRequest {
            job_id: format!("job-{i}"),
            kind: JobKind::ProductPhoto,
            model: model.into(),
            prompt: format!("a red sneaker on marble, take {i}"),
            negative_prompt: String::new(),
            seed: Some(i as u64),
            count: 1,
            aspect_ratio: String::new(),
            parameters: serde_json::Map::new(),
            inputs: Vec::new(),
            deadline: Some(deadline),
        })
        .collect()
}

fn assert_all_succeeded(ended: &[Ended]) {
    let failed = failures(ended);
    assert!(
        failed.is_empty(),
        "{} jobs failed: {failed:?}",
        failed.len()
    );
    for job in ended {
        let output = job.result.as_ref().unwrap();
        assert_eq!(output.artifacts.len(), 1);
    }
}

/// 30 % of submits answered 429 with a Retry-After: every job succeeds, each
/// rendered once; the 429s never reach the breaker (no deferral, no
/// failure streak) and slow the bucket down instead.
#[tokio::test]
async fn rate_limited_submits_cost_no_job_and_never_open_the_breaker() {
    let fake = FakeFal::start().await.unwrap();
    fake.set_faults(Faults {
        submit_rate_limited: 0.3,
        retry_after_secs: 0,
        ..Faults::default()
    });
    let guarded = guarded(provider(&fake));
    let ended = run_jobs(&guarded, requests("test/ok", Duration::from_secs(60))).await;
    assert_all_succeeded(&ended);
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, JOBS as u64);
    assert_eq!(counts.renders_started, JOBS as u64);
    // 30 % of all submits were refused: 3 for every 7 accepted, give or
    // take the pattern's rounding.
    assert!((7..=9).contains(&counts.submits_refused), "{counts:?}");
    assert_eq!(ended.iter().map(|job| job.deferrals).sum::<u32>(), 0);
    assert!(guarded.open_models().is_empty());
    assert_eq!(guarded.snapshot("test/ok").consecutive_failures, 0);
    // No limit configured, yet the 429s slowed the bucket down.
    assert!(guarded.rate_limit().is_some(), "the bucket was not slowed");
}

/// 30 % of submits answered 503: every job succeeds, rendered once. The
/// 503s are the model failing, so they may open the breaker; a job that
/// meets it is deferred until the probe and comes back, not failed.
#[tokio::test]
async fn unavailable_submits_cost_no_job() {
    let fake = FakeFal::start().await.unwrap();
    fake.set_faults(Faults {
        submit_unavailable: 0.3,
        ..Faults::default()
    });
    let guarded = guarded(provider(&fake));
    let ended = run_jobs(&guarded, requests("test/ok", Duration::from_secs(60))).await;
    assert_all_succeeded(&ended);
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, JOBS as u64);
    assert!(counts.submits_refused >= 6, "{counts:?}");
}

/// 30 % of status and result reads reset mid-body: every job succeeds, and
/// no job is submitted twice: the same request is read again.
#[tokio::test]
async fn reset_reads_are_read_again_never_submitted_again() {
    let fake = FakeFal::start().await.unwrap();
    fake.set_faults(Faults {
        read_reset: 0.3,
        ..Faults::default()
    });
    let guarded = guarded(provider(&fake));
    let ended = run_jobs(&guarded, requests("test/ok", Duration::from_secs(60))).await;
    assert_all_succeeded(&ended);
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, JOBS as u64);
    assert_eq!(counts.submits_refused, 0);
    assert_eq!(fake.submissions(), JOBS as u64);
    // Some result reads were reset and read again.
    assert!(counts.result_reads > JOBS as u64, "{counts:?}");
    assert!(guarded.open_models().is_empty());
}

/// 30 % of result bodies truncated: read again, never submitted again.
#[tokio::test]
async fn truncated_results_are_read_again_never_submitted_again() {
    let fake = FakeFal::start().await.unwrap();
    fake.set_faults(Faults {
        result_truncated: 0.3,
        ..Faults::default()
    });
    let guarded = guarded(provider(&fake));
    let ended = run_jobs(&guarded, requests("test/ok", Duration::from_secs(60))).await;
    assert_all_succeeded(&ended);
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, JOBS as u64);
    assert_eq!(fake.submissions(), JOBS as u64);
    // A third of the reads were cut: about 20 / 0.7 in all.
    assert!(counts.result_reads >= 27, "{counts:?}");
}

/// An outage while the requests render: every read fails for a while, and
/// each job reads its own request again until fal is back.
#[tokio::test]
async fn an_outage_while_rendering_is_read_through() {
    let fake = FakeFal::start().await.unwrap();
    let guarded = guarded(provider(&fake));
    let jobs = {
        let guarded = Arc::clone(&guarded);
        tokio::spawn(async move {
            run_jobs(
                &guarded,
                requests("test/sleep-300", Duration::from_secs(60)),
            )
            .await
        })
    };
    while fake.fault_counts().submits_accepted < JOBS as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    fake.start_outage(Duration::from_millis(1500));
    let ended = jobs.await.unwrap();
    assert_all_succeeded(&ended);
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, JOBS as u64);
    assert_eq!(fake.submissions(), JOBS as u64);
    // Reads are not the model failing: the breaker saw only successes.
    assert!(guarded.open_models().is_empty());
    assert_eq!(guarded.snapshot("test/sleep-300").consecutive_failures, 0);
}

/// An outage before the jobs arrive: submits fail, the breaker opens and
/// defers the jobs until its probes find fal back; then every job
/// succeeds, rendered once.
#[tokio::test]
async fn an_outage_then_recovery_defers_jobs_and_loses_none() {
    let fake = FakeFal::start().await.unwrap();
    fake.start_outage(Duration::from_millis(1500));
    let guarded = guarded(provider(&fake));
    let ended = run_jobs(&guarded, requests("test/ok", Duration::from_secs(60))).await;
    assert_all_succeeded(&ended);
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, JOBS as u64);
    assert!(counts.submits_refused >= 5, "{counts:?}");
    assert!(
        ended.iter().any(|job| job.deferrals > 0),
        "no job met the open breaker"
    );
}

/// A deadline shorter than the outage: every job ends deadline_exceeded or
/// provider_unavailable, and nothing was rendered.
#[tokio::test]
async fn an_outage_longer_than_the_deadline_ends_the_jobs_unrendered() {
    let fake = FakeFal::start().await.unwrap();
    fake.start_outage(Duration::from_secs(30));
    let guarded = guarded(provider(&fake));
    let ended = run_jobs(&guarded, requests("test/ok", Duration::from_millis(1500))).await;
    for job in &ended {
        let code = job.result.as_ref().unwrap_err().code();
        assert!(
            matches!(code, "deadline_exceeded" | "provider_unavailable"),
            "{code}"
        );
    }
    assert_eq!(fake.fault_counts().submits_accepted, 0);
}

/// With a submission log, a request whose result reads keep failing stays
/// recorded through the re-reads, and the job's outcome is that request's.
#[tokio::test]
async fn reads_that_fail_keep_the_recorded_request() {
    let fake = FakeFal::start().await.unwrap();
    fake.set_faults(Faults {
        read_reset: 0.5,
        result_truncated: 0.5,
        ..Faults::default()
    });
    let log = Arc::new(MemoryLog::default());
    let provider = provider(&fake).with_submission_log(log.clone());
    let mut request = requests("test/ok", Duration::from_secs(30)).remove(7);
    request.job_id = "job-7".into();
    let output = provider.generate(&request).await.unwrap();
    assert_eq!(fake.submissions(), 1);
    let recorded = log.recorded("fal").unwrap();
    assert!(
        recorded.contains(output.request_id.as_deref().unwrap()),
        "{recorded}"
    );
}

/// A submit fal ran but whose answer was lost (the request exists, runs and
/// is billed; the client never got its id): the attempt fails
/// `provider_unavailable` and the retry submits again. fal has no
/// idempotency key and no way to find a request by anything but its id, so
/// the second render is unavoidable: exactly one more per lost answer.
#[tokio::test]
async fn lost_submit_answers_cost_exactly_one_more_render_each() {
    let fake = FakeFal::start().await.unwrap();
    let set_lost = |fraction| {
        fake.set_faults(Faults {
            submit_answer_lost: fraction,
            ..Faults::default()
        })
    };
    let template = requests("test/ok", Duration::from_secs(60)).remove(0);
    crate::fault_table::lost_answers_cost_one_render_each(
        provider(&fake),
        &template,
        || fake.fault_counts(),
        set_lost,
    )
    .await;
    // Every POST was accepted: none was refused, so each is a render.
    assert_eq!(fake.submissions(), fake.fault_counts().renders_started);
}

/// 30 % of status polls reset mid-body (results untouched): every job
/// succeeds, each polled again on its own request, never submitted again.
#[tokio::test]
async fn reset_status_polls_are_polled_again_never_submitted_again() {
    let fake = FakeFal::start().await.unwrap();
    fake.set_faults(Faults {
        status_reset: 0.3,
        ..Faults::default()
    });
    let guarded = guarded(provider(&fake));
    let ended = run_jobs(&guarded, requests("test/ok", Duration::from_secs(60))).await;
    assert_all_succeeded(&ended);
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, JOBS as u64);
    assert_eq!(fake.submissions(), JOBS as u64);
    // Each job polls at least twice (IN_PROGRESS, COMPLETED; the fake
    // counts a poll whose answer then broke), and a third of all polls
    // were reset.
    assert!(counts.status_reads_broken >= 6, "{counts:?}");
    assert!(counts.status_reads >= 2 * JOBS as u64, "{counts:?}");
    assert_eq!(counts.result_reads, JOBS as u64, "{counts:?}");
    assert!(guarded.open_models().is_empty());
}

/// Output downloads from fal's CDN reset or cut short (30 % each): the
/// same URL is fetched again, every file kept is whole, nothing is
/// submitted twice.
#[tokio::test]
async fn broken_downloads_are_fetched_again_never_submitted_again() {
    let fake = FakeFal::start().await.unwrap();
    fake.set_faults(Faults {
        download_reset: 0.3,
        download_truncated: 0.3,
        ..Faults::default()
    });
    let template = requests("test/ok", Duration::from_secs(60)).remove(0);
    crate::fault_table::broken_downloads_are_fetched_again(provider(&fake), &template, || {
        fake.fault_counts()
    })
    .await;
    assert_eq!(fake.submissions(), JOBS as u64);
}

/// An output URL that answers 403 (expired): the attempt fails
/// `provider_unavailable` at once, and the retry renders anew.
#[tokio::test]
async fn an_expired_output_url_fails_the_attempt_and_the_retry_renders_again() {
    let fake = FakeFal::start().await.unwrap();
    fake.set_faults(Faults {
        download_expired: 0.5,
        ..Faults::default()
    });
    let template = requests("test/ok", Duration::from_secs(60)).remove(0);
    crate::fault_table::an_expired_download_fails_the_attempt(provider(&fake), &template, || {
        fake.fault_counts()
    })
    .await;
    assert_eq!(fake.submissions(), 5);
}

/// A spooled input that cannot be read is our disk's failure: `Local`,
/// nothing submitted, and the breaker does not count it.
#[tokio::test]
async fn spool_failures_do_not_open_the_breaker() {
    let fake = FakeFal::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = crate::Spool::new(dir.path(), 0).unwrap();
    let guarded = Guarded::new(
        provider(&fake),
        GuardConfig {
            failure_threshold: 1,
            ..GuardConfig::default()
        },
    );
    let mut request = requests("test/ok", Duration::from_secs(30)).remove(0);
    request.kind = JobKind::BatchEdit;
    request.inputs = vec![crate::InputImage {
        role: crate::InputRole::Product,
        content_type: "image/png".into(),
        bytes: spool
            .keep(bytes::Bytes::from_static(b"a spooled input"))
            .await
            .unwrap(),
    }];
    // The disk loses the file.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for _ in 0..3 {
        let error = guarded.generate(&request).await.unwrap_err();
        assert!(matches!(error, ProviderError::Local { .. }), "{error:?}");
        assert_eq!(error.code(), "internal");
        assert!(error.is_retryable());
    }
    assert_eq!(fake.submissions(), 0);
    assert!(guarded.open_models().is_empty());
    assert_eq!(guarded.snapshot("test/ok").consecutive_failures, 0);
}

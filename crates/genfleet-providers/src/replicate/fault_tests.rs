//! The fault table against the fake Replicate API: many jobs at once
//! through [`Guarded`] and `generate_with_retries`, each row of faults at
//! 30 %, and the counts that say each job was rendered once: accepted
//! creates equal jobs. Also the `Prefer: wait` window: with a submission
//! log, a prediction is on record before anyone waits on it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::fake::{FakeReplicate, Faults};
use crate::fault_table::{failures, run_jobs, Ended};
use crate::resume::MemoryLog;
use crate::{
    GenerationRequest, GuardConfig, Guarded, JobKind, Provider, ReplicateConfig, ReplicateProvider,
};

const JOBS: usize = 20;

fn config(fake: &FakeReplicate) -> ReplicateConfig {
    ReplicateConfig {
        base_url: fake.base_url.clone(),
        token: "r8_test_token_0123".into(),
        request_timeout: Duration::from_secs(5),
        poll_interval: Duration::from_millis(10),
        wait_seconds: 0,
        max_output_bytes: 10 * 1024 * 1024,
    }
}

fn client() -> reqwest::Client {
    // reqwest is built without a crypto provider; the binary installs ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn provider(fake: &FakeReplicate) -> ReplicateProvider {
    ReplicateProvider::new(config(fake), client())
}

fn guarded(provider: ReplicateProvider) -> Arc<Guarded<ReplicateProvider>> {
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
        assert_eq!(job.result.as_ref().unwrap().artifacts.len(), 1);
    }
}

#[tokio::test]
async fn rate_limited_creates_cost_no_job_and_never_open_the_breaker() {
    let fake = FakeReplicate::start().await.unwrap();
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
    assert_eq!(
        fake.creates_for("test/ok"),
        JOBS as u64 + counts.submits_refused
    );
    assert!((7..=9).contains(&counts.submits_refused), "{counts:?}");
    assert_eq!(ended.iter().map(|job| job.deferrals).sum::<u32>(), 0);
    assert!(guarded.open_models().is_empty());
    assert_eq!(guarded.snapshot("test/ok").consecutive_failures, 0);
    assert!(guarded.rate_limit().is_some(), "the bucket was not slowed");
}

#[tokio::test]
async fn unavailable_creates_cost_no_job() {
    let fake = FakeReplicate::start().await.unwrap();
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

#[tokio::test]
async fn reset_polls_are_read_again_never_created_again() {
    let fake = FakeReplicate::start().await.unwrap();
    fake.set_faults(Faults {
        read_reset: 0.3,
        ..Faults::default()
    });
    let guarded = guarded(provider(&fake));
    let ended = run_jobs(&guarded, requests("test/ok", Duration::from_secs(60))).await;
    assert_all_succeeded(&ended);
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, JOBS as u64);
    assert_eq!(fake.creates(), JOBS as u64);
    // Two polls a job without faults; a third of them were reset.
    assert!(
        counts.status_reads + counts.result_reads > 2 * JOBS as u64,
        "{counts:?}"
    );
    assert!(guarded.open_models().is_empty());
}

#[tokio::test]
async fn truncated_results_are_read_again_never_created_again() {
    let fake = FakeReplicate::start().await.unwrap();
    fake.set_faults(Faults {
        result_truncated: 0.3,
        ..Faults::default()
    });
    let guarded = guarded(provider(&fake));
    let ended = run_jobs(&guarded, requests("test/ok", Duration::from_secs(60))).await;
    assert_all_succeeded(&ended);
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, JOBS as u64);
    assert_eq!(fake.creates(), JOBS as u64);
    assert!(counts.result_reads >= 27, "{counts:?}");
}

#[tokio::test]
async fn an_outage_while_rendering_is_read_through() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = ReplicateProvider::new(
        ReplicateConfig {
            // Predictions finish on their second poll: 300 ms in.
            poll_interval: Duration::from_millis(150),
            ..config(&fake)
        },
        client(),
    );
    let guarded = guarded(provider);
    let jobs = {
        let guarded = Arc::clone(&guarded);
        tokio::spawn(async move {
            run_jobs(&guarded, requests("test/ok", Duration::from_secs(60))).await
        })
    };
    while fake.fault_counts().submits_accepted < JOBS as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    fake.start_outage(Duration::from_millis(1500));
    let ended = jobs.await.unwrap();
    assert_all_succeeded(&ended);
    assert_eq!(fake.fault_counts().submits_accepted, JOBS as u64);
    assert_eq!(fake.creates(), JOBS as u64);
    assert!(guarded.open_models().is_empty());
    assert_eq!(guarded.snapshot("test/ok").consecutive_failures, 0);
}

#[tokio::test]
async fn an_outage_then_recovery_defers_jobs_and_loses_none() {
    let fake = FakeReplicate::start().await.unwrap();
    fake.start_outage(Duration::from_millis(1500));
    let guarded = guarded(provider(&fake));
    let ended = run_jobs(&guarded, requests("test/ok", Duration::from_secs(60))).await;
    assert_all_succeeded(&ended);
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, JOBS as u64);
    assert!(counts.submits_refused >= 5, "{counts:?}");
    assert!(ended.iter().any(|job| job.deferrals > 0));
}

#[tokio::test]
async fn an_outage_longer_than_the_deadline_ends_the_jobs_unrendered() {
    let fake = FakeReplicate::start().await.unwrap();
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

/// With a submission log, create asks for no `Prefer: wait` hold, however
/// long the config would hold: the prediction is recorded at once.
#[tokio::test]
async fn with_a_submission_log_create_does_not_hold_the_request_open() {
    let fake = FakeReplicate::start().await.unwrap();
    let log = Arc::new(MemoryLog::default());
    let provider = ReplicateProvider::new(
        ReplicateConfig {
            wait_seconds: 60,
            ..config(&fake)
        },
        client(),
    )
    .with_submission_log(log.clone());
    let request = requests("test/ok", Duration::from_secs(30)).remove(7);
    let output = provider.generate(&request).await.unwrap();
    assert_eq!(fake.last_create().unwrap().prefer, None);
    assert!(fake.polls() >= 1);
    let recorded = log.recorded("replicate").unwrap();
    assert!(
        recorded.contains(output.request_id.as_deref().unwrap()),
        "{recorded}"
    );
}

/// A worker that dies while its prediction runs (the attempt is dropped
/// mid-wait) leaves the prediction on record; the job's next attempt, on
/// another worker, follows it instead of creating another.
#[tokio::test]
async fn a_worker_dying_during_the_wait_creates_the_prediction_once() {
    let fake = FakeReplicate::start().await.unwrap();
    let log = Arc::new(MemoryLog::default());
    let slow = ReplicateConfig {
        wait_seconds: 60,
        poll_interval: Duration::from_millis(300),
        ..config(&fake)
    };
    let first = ReplicateProvider::new(slow.clone(), client()).with_submission_log(log.clone());
    let request = requests("test/ok", Duration::from_secs(30)).remove(7);
    let died = tokio::time::timeout(Duration::from_millis(100), first.generate(&request)).await;
    assert!(died.is_err(), "the attempt finished before it was dropped");
    assert_eq!(fake.creates_for("test/ok"), 1);
    assert!(log.recorded("replicate").is_some(), "nothing on record");

    let second = ReplicateProvider::new(slow, client()).with_submission_log(log.clone());
    let output = second.generate(&request).await.unwrap();
    assert_eq!(fake.creates_for("test/ok"), 1, "created twice");
    assert_eq!(
        output.request_id,
        fake.last_prediction_id(),
        "not the recorded prediction"
    );
}

/// A create Replicate ran but whose answer was lost (the prediction exists,
/// runs and is billed; the client never got its id): the attempt fails
/// `provider_unavailable` and the retry creates again. Replicate takes no
/// idempotency key; its prediction list could find the lost prediction, but
/// the client does not look, so the bound is exactly one more render per
/// lost answer.
#[tokio::test]
async fn lost_create_answers_cost_exactly_one_more_render_each() {
    let fake = FakeReplicate::start().await.unwrap();
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
    assert_eq!(fake.creates(), fake.fault_counts().renders_started);
}

/// 30 % of polls of running predictions reset mid-body: every job
/// succeeds, polled again on its own prediction, never created again.
#[tokio::test]
async fn reset_status_polls_are_polled_again_never_created_again() {
    let fake = FakeReplicate::start().await.unwrap();
    fake.set_faults(Faults {
        status_reset: 0.3,
        ..Faults::default()
    });
    let guarded = guarded(provider(&fake));
    let ended = run_jobs(&guarded, requests("test/ok", Duration::from_secs(60))).await;
    assert_all_succeeded(&ended);
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, JOBS as u64);
    assert_eq!(fake.creates(), JOBS as u64);
    assert!(counts.status_reads_broken >= 3, "{counts:?}");
    assert_eq!(counts.result_reads_broken, 0, "{counts:?}");
    assert!(guarded.open_models().is_empty());
}

/// Output downloads reset or cut short (30 % each): the same URL is
/// fetched again, every file kept is whole, nothing is created twice.
#[tokio::test]
async fn broken_downloads_are_fetched_again_never_created_again() {
    let fake = FakeReplicate::start().await.unwrap();
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
    assert_eq!(fake.creates(), JOBS as u64);
}

/// An output file Replicate has deleted (404): the attempt fails
/// `provider_unavailable` at once, and the retry creates anew.
#[tokio::test]
async fn a_deleted_output_file_fails_the_attempt_and_the_retry_renders_again() {
    let fake = FakeReplicate::start().await.unwrap();
    fake.set_faults(Faults {
        download_expired: 0.5,
        ..Faults::default()
    });
    let template = requests("test/ok", Duration::from_secs(60)).remove(0);
    crate::fault_table::an_expired_download_fails_the_attempt(provider(&fake), &template, || {
        fake.fault_counts()
    })
    .await;
    assert_eq!(fake.creates(), 5);
}

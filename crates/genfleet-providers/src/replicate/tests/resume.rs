//! The submission log and the [`Resumable`] face: a later attempt of a job
//! resumes, re-creates or ignores a recorded prediction, and the worker's
//! submit/check/cancel calls classify what they see.

use super::*;

fn logged_provider(fake: &FakeReplicate, log: &Arc<MemoryLog>) -> ReplicateProvider {
    provider(fake).with_submission_log(log.clone())
}

/// A record of prediction `id` on the fake, as the client writes them.
fn record(fake: &FakeReplicate, id: &str) -> Value {
    let base = fake.base_url.as_str().trim_end_matches('/');
    json!({
        "id": id,
        "urls": {
            "get": format!("{base}/v1/predictions/{id}"),
            "cancel": format!("{base}/v1/predictions/{id}/cancel"),
        },
    })
}

/// A worker dies while Replicate renders: the job's next attempt, on
/// another worker, finds the recorded prediction and resumes it.
#[tokio::test]
async fn a_later_attempt_of_the_job_resumes_the_recorded_prediction() {
    let fake = FakeReplicate::start().await.unwrap();
    let log = Arc::new(MemoryLog::default());
    let first = generate_with_retries(
        &logged_provider(&fake, &log),
        &request("test/ok"),
        &policy(),
    )
    .await
    .unwrap();
    let recorded = log.recorded("replicate").unwrap();
    assert!(!recorded.contains(TOKEN), "{recorded}");
    assert_eq!(
        serde_json::from_str::<Value>(&recorded).unwrap(),
        record(&fake, first.request_id.as_deref().unwrap())
    );
    let again = generate_with_retries(
        &logged_provider(&fake, &log),
        &request("test/ok"),
        &policy(),
    )
    .await
    .unwrap();
    assert_eq!(fake.creates_for("test/ok"), 1, "created twice");
    assert_eq!(again.request_id, first.request_id);
    assert_eq!(
        again.artifacts[0].bytes.resident(),
        first.artifacts[0].bytes.resident()
    );

    let mut other = request("test/ok");
    other.job_id = "job-8".into();
    generate_with_retries(&logged_provider(&fake, &log), &other, &policy())
        .await
        .unwrap();
    assert_eq!(fake.creates_for("test/ok"), 2);
}

/// A recorded prediction Replicate no longer knows is not an error for the
/// job: it is created anew.
#[tokio::test]
async fn an_unknown_recorded_prediction_is_created_again() {
    let fake = FakeReplicate::start().await.unwrap();
    let log = Arc::new(MemoryLog::default());
    log.plant("replicate", &record(&fake, "gone1"));
    let output = generate_with_retries(
        &logged_provider(&fake, &log),
        &request("test/ok"),
        &policy(),
    )
    .await
    .unwrap();
    assert_eq!(fake.creates_for("test/ok"), 1);
    assert_ne!(output.request_id.as_deref(), Some("gone1"));
}

/// A recorded prediction that was stopped (by the dead attempt's
/// Cancel-After) was never judged: it is created anew, not failed.
#[tokio::test]
async fn a_cancelled_recorded_prediction_is_created_again() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = provider(&fake);
    let stuck = provider.submit(&request("test/stuck")).await.unwrap();
    provider.cancel(&stuck).await.unwrap();
    let log = Arc::new(MemoryLog::default());
    log.plant("replicate", &serde_json::from_str(&stuck).unwrap());
    let output = generate_with_retries(
        &logged_provider(&fake, &log),
        &request("test/ok"),
        &policy(),
    )
    .await
    .unwrap();
    assert_eq!(output.artifacts.len(), 1);
    assert_eq!(fake.creates_for("test/ok"), 1);
}

/// A record whose URLs point anywhere but the configured origin is ignored:
/// a tampered row must not send the token elsewhere. The other origin is a
/// listener of ours (same host, another port), which must see nothing.
#[tokio::test]
async fn a_recorded_prediction_off_the_api_origin_is_ignored() {
    let fake = FakeReplicate::start().await.unwrap();
    let (elsewhere, reached) = hostile_table::listener_elsewhere().await;
    let log = Arc::new(MemoryLog::default());
    log.plant(
        "replicate",
        &json!({
            "id": "evil",
            "urls": {
                "get": format!("{elsewhere}/v1/predictions/evil"),
                "cancel": format!("{elsewhere}/v1/predictions/evil/cancel"),
            },
        }),
    );
    let output = hostile_table::answered_without_reaching(
        &reached,
        generate_with_retries(
            &logged_provider(&fake, &log),
            &request("test/ok"),
            &policy(),
        ),
    )
    .await
    .unwrap();
    assert_ne!(output.request_id.as_deref(), Some("evil"));
    assert_eq!(fake.creates_for("test/ok"), 1);
    assert_eq!(output.attempts, 1);
}

/// An attempt that ends in an error forgets its prediction, so a retry (or
/// the job's next delivery) creates anew instead of re-reading a failure.
#[tokio::test]
async fn a_failed_attempt_forgets_its_prediction() {
    let fake = FakeReplicate::start().await.unwrap();
    let log = Arc::new(MemoryLog::default());
    let failed = generate_with_retries(
        &logged_provider(&fake, &log),
        &request("test/nsfw"),
        &policy(),
    )
    .await;
    assert!(failed.is_err());
    assert_eq!(log.recorded("replicate"), None);
}

#[tokio::test]
async fn resumable_submit_check_until_done() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = provider(&fake);
    let resumable = provider.resumable().unwrap();
    let request = request("test/ok");
    let submission = resumable.submit(&request).await.unwrap();
    assert!(!submission.contains(TOKEN), "{submission}");
    let id = fake.last_prediction_id().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&submission).unwrap(),
        record(&fake, &id)
    );
    let seen = fake.last_create().unwrap();
    assert_eq!(seen.prefer, None, "submit must not hold the request");
    assert_eq!(fake.polls(), 0);

    let mut checks = 0;
    let output = loop {
        checks += 1;
        match resumable.check(&request, &submission).await.unwrap() {
            Checked::Running => assert!(checks < 5, "never finished"),
            Checked::Done(output) => break output,
        }
    };
    assert_eq!(checks, 2);
    assert_eq!(output.request_id.as_deref(), Some(id.as_str()));
    assert!(output.artifacts[0]
        .bytes
        .resident()
        .unwrap()
        .starts_with(PNG_SIGNATURE));
    assert_eq!(fake.creates(), 1);
    assert!(!fake.token_reached_file_host());
}

#[tokio::test]
async fn resumable_cancel_stops_a_prediction() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = provider(&fake);
    let request = request("test/stuck");
    let submission = provider.submit(&request).await.unwrap();
    assert!(matches!(
        provider.check(&request, &submission).await.unwrap(),
        Checked::Running
    ));
    provider.cancel(&submission).await.unwrap();
    assert_eq!(fake.cancels(), 1);
    let err = provider.check(&request, &submission).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "provider rejected the request: canceled at the provider"
    );

    // Unknown to Replicate: nothing to stop, not an error.
    provider
        .cancel(&record(&fake, "gone1").to_string())
        .await
        .unwrap();
    // But checking it is a permanent failure.
    let err = provider
        .check(&request, &record(&fake, "gone1").to_string())
        .await
        .unwrap_err();
    assert_eq!(class(&err), "Rejected");
}

#[tokio::test]
async fn resumable_check_classifies_end_states() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = provider(&fake);
    for (model, expected) in [
        ("test/nsfw", "Rejected"),
        ("test/failed", "Rejected"),
        ("test/aborted", "Unavailable"),
    ] {
        let request = request(model);
        let submission = provider.submit(&request).await.unwrap();
        let mut checks = 0;
        let err = loop {
            checks += 1;
            assert!(checks < 5, "{model} never finished");
            match provider.check(&request, &submission).await {
                Ok(Checked::Running) => {}
                Ok(Checked::Done(_)) => panic!("{model} succeeded"),
                Err(err) => break err,
            }
        };
        assert_eq!(class(&err), expected, "{model}: {err}");
    }
    let request = request("test/malformed");
    let submission = provider.submit(&request).await.unwrap();
    let err = provider.check(&request, &submission).await.unwrap_err();
    assert_eq!(class(&err), "Malformed");
}

#[tokio::test]
async fn resumable_refuses_tampered_records() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = provider(&fake);
    // Same host, another port: a listener of ours that must see nothing.
    let (elsewhere, reached) = hostile_table::listener_elsewhere().await;
    let tampered = json!({
        "id": "x",
        "urls": {
            "get": format!("{elsewhere}/v1/predictions/x"),
            "cancel": format!("{elsewhere}/v1/predictions/x/cancel"),
        },
    })
    .to_string();
    let err = provider
        .check(&request("test/ok"), &tampered)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_input");
    let err = provider.cancel(&tampered).await.unwrap_err();
    assert_eq!(err.code(), "invalid_input");
    let err = provider.cancel("{not json").await.unwrap_err();
    assert_eq!(err.code(), "invalid_input");
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(fake.polls() + fake.cancels(), 0);
}

#[tokio::test]
async fn resumable_submit_classifies_create_errors() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = provider(&fake);
    let err = provider.submit(&request("test/down")).await.unwrap_err();
    assert_eq!(class(&err), "Unavailable");
    let err = provider
        .submit(&request("test/throttled"))
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
}

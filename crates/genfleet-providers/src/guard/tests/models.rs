//! Breakers kept per model: independence, the table's bound, limits shared
//! by all models, and the real fal client against the fake server.

use super::*;

#[tokio::test(start_paused = true)]
async fn failing_model_opens_only_its_own_breaker() {
    let guarded = tripped(Duration::ZERO).await;
    assert_open_error(guarded.generate(&request(None)).await);
    assert_eq!(guarded.inner().calls(), 3);

    // Another model on the same provider still reaches it.
    for _ in 0..5 {
        guarded
            .generate(&request_for("acme/custom-app", None))
            .await
            .unwrap();
    }
    assert_eq!(guarded.inner().calls(), 8);
    assert_eq!(guarded.state("acme/custom-app"), BreakerState::Closed);
    assert_eq!(guarded.state(MODEL), BreakerState::Open);
    assert_eq!(guarded.open_models(), [MODEL]);
    // A model never called reads as closed.
    assert_eq!(
        guarded.snapshot("never/called"),
        GuardSnapshot {
            state: BreakerState::Closed,
            in_flight: 0,
            consecutive_failures: 0,
        }
    );
    // Half-open still counts as open for `open_models`.
    tokio::time::advance(OPEN_FOR).await;
    assert_eq!(guarded.state(MODEL), BreakerState::HalfOpen);
    assert_eq!(guarded.open_models(), [MODEL]);
}

#[tokio::test(start_paused = true)]
async fn failures_of_one_model_do_not_add_up_with_anothers() {
    let guarded = Guarded::new(
        Scripted::new(vec![
            unavailable(),
            unavailable(),
            unavailable(),
            unavailable(),
        ]),
        config(),
    );
    for model in ["a/one", "b/two", "a/one", "b/two"] {
        let _ = guarded.generate(&request_for(model, None)).await;
    }
    assert_eq!(guarded.snapshot("a/one").consecutive_failures, 2);
    assert_eq!(guarded.snapshot("b/two").consecutive_failures, 2);
    assert!(guarded.open_models().is_empty());
}

#[tokio::test(start_paused = true)]
async fn empty_model_has_its_own_breaker() {
    let guarded = Guarded::new(Scripted::default(), config());
    guarded.inner().take_down("");
    for _ in 0..3 {
        let _ = guarded.generate(&request_for("", None)).await;
    }
    assert_eq!(guarded.state(""), BreakerState::Open);
    assert_eq!(guarded.open_models(), [""]);
    let refused = guarded.generate(&request_for("", None)).await;
    assert_eq!(assert_open_error(refused), OPEN_FOR);
    guarded.generate(&request(None)).await.unwrap();
    assert_eq!(guarded.state(MODEL), BreakerState::Closed);
    assert_eq!(guarded.inner().calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn stale_success_does_not_close_a_freshly_opened_breaker() {
    // Four calls let through together; the answers are handed out in the
    // order the calls finish, and each is settled as it is handed out, so
    // the third failure opens the breaker before the success is settled.
    let guarded = Arc::new(Guarded::new(
        Scripted {
            hold: Duration::from_secs(1),
            ..Scripted::new(vec![unavailable(), unavailable(), unavailable(), Ok(())])
        },
        config(),
    ));
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let guarded = Arc::clone(&guarded);
            tokio::spawn(async move { guarded.generate(&request(None)).await })
        })
        .collect();
    let mut succeeded = 0;
    for call in calls {
        if call.await.unwrap().is_ok() {
            succeeded += 1;
        }
    }
    assert_eq!(succeeded, 1);
    assert_eq!(guarded.inner().calls(), 4);
    // The straggler's success was let through before the breaker opened.
    assert_eq!(guarded.state(MODEL), BreakerState::Open);
    assert_eq!(guarded.snapshot(MODEL).consecutive_failures, 3);
}

#[tokio::test(start_paused = true)]
async fn cap_eviction_keeps_open_breakers() {
    let guarded = tripped(Duration::ZERO).await;
    // One model on a failure streak: state that must survive too.
    guarded.inner().push(unavailable());
    let _ = guarded.generate(&request_for("streak/model", None)).await;
    // Fill the table with models that only succeeded.
    for i in 0..MAX_TRACKED_MODELS - 2 {
        guarded
            .generate(&request_for(&format!("ok/{i}"), None))
            .await
            .unwrap();
    }
    assert_eq!(guarded.tracked_models(), MAX_TRACKED_MODELS);

    // A new model drops the breakers that carry no state, and is tracked.
    guarded.inner().push(unavailable());
    let _ = guarded.generate(&request_for("new/model", None)).await;
    assert_eq!(guarded.tracked_models(), 3);
    assert_eq!(guarded.snapshot("new/model").consecutive_failures, 1);
    assert_eq!(guarded.snapshot("streak/model").consecutive_failures, 1);
    assert_eq!(guarded.state(MODEL), BreakerState::Open);
    assert_eq!(guarded.open_models(), [MODEL]);
    let calls = guarded.inner().calls();
    assert_open_error(guarded.generate(&request(None)).await);
    assert_eq!(guarded.inner().calls(), calls);
}

#[tokio::test(start_paused = true)]
async fn new_models_go_untracked_while_the_table_is_full_of_state() {
    let guarded = Guarded::new(Scripted::default(), config());
    // Every tracked model is on a failure streak: nothing can be dropped.
    for i in 0..MAX_TRACKED_MODELS {
        guarded.inner().push(unavailable());
        let _ = guarded
            .generate(&request_for(&format!("bad/{i}"), None))
            .await;
    }
    assert_eq!(guarded.tracked_models(), MAX_TRACKED_MODELS);

    // A new model is treated as closed: its calls reach the provider and
    // its failures are not recorded, so it never opens.
    guarded.inner().take_down("extra/model");
    for _ in 0..5 {
        let result = guarded.generate(&request_for("extra/model", None)).await;
        assert!(
            matches!(&result, Err(ProviderError::Unavailable { message, .. }) if message == "busy"),
            "{result:?}"
        );
    }
    assert_eq!(guarded.inner().calls(), 1029);
    assert_eq!(guarded.state("extra/model"), BreakerState::Closed);
    assert_eq!(guarded.tracked_models(), MAX_TRACKED_MODELS);

    // A success clears one streak, which makes room: the model is tracked
    // from its next call on and opens like any other.
    guarded.generate(&request_for("bad/0", None)).await.unwrap();
    for _ in 0..3 {
        let _ = guarded.generate(&request_for("extra/model", None)).await;
    }
    assert_eq!(guarded.state("extra/model"), BreakerState::Open);
    assert_eq!(guarded.open_models(), ["extra/model"]);
    assert_eq!(guarded.tracked_models(), MAX_TRACKED_MODELS);
}

#[tokio::test(start_paused = true)]
async fn limits_are_shared_by_all_models() {
    let guarded = Arc::new(Guarded::new(
        Scripted::holding(Duration::from_secs(1)),
        GuardConfig {
            max_concurrent: 1,
            rate_per_second: 10.0,
            burst: 1,
            max_queue_wait: Duration::from_secs(10),
            ..config()
        },
    ));
    let start = Instant::now();
    let calls: Vec<_> = ["a/one", "b/two", "c/three", ""]
        .into_iter()
        .map(|model| {
            let guarded = Arc::clone(&guarded);
            tokio::spawn(async move { guarded.generate(&request_for(model, None)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(guarded.snapshot("a/one").in_flight, 1);
    assert_eq!(guarded.snapshot("b/two").in_flight, 1);
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(guarded.inner().max_running.load(Ordering::SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::from_secs(4));
}

/// The real fal client against the fake's always-503 model: the breaker
/// opens inside one `generate_with_retries`, and later calls are refused
/// without reaching the server.
#[tokio::test]
async fn breaker_stops_calls_to_a_down_fal_model() {
    let fake = FakeFal::start().await.unwrap();
    // reqwest is built without a crypto provider; the binary installs ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fal = FalProvider::new(
        FalConfig {
            base_url: fake.base_url.clone(),
            key: "test-key-0123".into(),
            request_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(10),
            max_output_bytes: 1024 * 1024,
        },
        reqwest::Client::new(),
    );
    let guarded = Guarded::new(
        fal,
        GuardConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(60),
            ..GuardConfig::default()
        },
    );
    let policy = RetryPolicy {
        max_attempts: 4,
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    };

    let failed = generate_with_retries(&guarded, &request(None), &policy)
        .await
        .unwrap_err();
    // Three 503s open the breaker; the fourth attempt is deferred by it,
    // and the retries stop there.
    assert_eq!(failed.attempts, 4);
    assert!(
        matches!(
            failed.error,
            ProviderError::Deferred {
                reason: DeferReason::CircuitOpen,
                ..
            }
        ),
        "{failed}"
    );
    assert_eq!(fake.submissions_for("test/down"), 3);
    assert_eq!(guarded.state(MODEL), BreakerState::Open);

    // A later job is deferred at once, without reaching the server.
    let failed = generate_with_retries(&guarded, &request(None), &policy)
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(failed.error.is_retryable());
    let retry_after = failed.error.retry_after().unwrap();
    assert!(
        retry_after > Duration::from_secs(50) && retry_after <= Duration::from_secs(60),
        "{retry_after:?}"
    );
    assert_eq!(fake.submissions_for("test/down"), 3);

    // Other models on the same provider are untouched by it.
    generate_with_retries(&guarded, &request_for("test/ok", None), &policy)
        .await
        .unwrap();
    assert_eq!(fake.submissions_for("test/ok"), 1);
    assert_eq!(guarded.state("test/ok"), BreakerState::Closed);
    assert_eq!(guarded.open_models(), ["test/down"]);
}

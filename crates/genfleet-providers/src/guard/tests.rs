//! [`Guarded`] over a scripted provider in paused time (per-model breakers,
//! per-provider limits, deadlines), plus one run against the fake fal
//! server's `test/down` model through [`generate_with_retries`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::MAX_TRACKED_MODELS;
use crate::fal::fake::FakeFal;
use crate::scripted::{request_for, Scripted};
use crate::{
    generate_with_retries, BreakerState, DeferReason, FalConfig, FalProvider, GenerationOutput,
    GenerationRequest, GuardConfig, GuardSnapshot, Guarded, Provider, ProviderError, RetryPolicy,
};

/// The model most tests call.
const MODEL: &str = "test/down";

fn request(deadline: Option<Instant>) -> GenerationRequest {
    request_for(MODEL, deadline)
}

const OPEN_FOR: Duration = Duration::from_secs(30);

fn config() -> GuardConfig {
    GuardConfig {
        failure_threshold: 3,
        open_for: OPEN_FOR,
        ..GuardConfig::default()
    }
}

fn unavailable() -> Result<(), ProviderError> {
    Err(ProviderError::Unavailable {
        message: "busy".into(),
        retry_after: None,
    })
}

fn malformed() -> Result<(), ProviderError> {
    Err(ProviderError::Malformed {
        message: "truncated".into(),
    })
}

fn rejected() -> Result<(), ProviderError> {
    Err(ProviderError::Rejected {
        message: "nsfw".into(),
    })
}

/// Calls `guarded` once per scripted answer, ignoring the results.
async fn call_n(guarded: &Guarded<Scripted>, times: usize) {
    for _ in 0..times {
        let _ = guarded.generate(&request(None)).await;
    }
}

/// A guard over a provider that has just failed `config().failure_threshold`
/// times in a row.
async fn tripped(hold: Duration) -> Guarded<Scripted> {
    let provider = Scripted {
        hold,
        ..Scripted::new(vec![unavailable(), unavailable(), unavailable()])
    };
    let guarded = Guarded::new(provider, config());
    call_n(&guarded, 3).await;
    assert_eq!(guarded.state(MODEL), BreakerState::Open);
    guarded
}

/// Asserts the breaker's deferral, and returns its retry hint.
fn assert_open_error(result: Result<GenerationOutput, ProviderError>) -> Duration {
    match result {
        Err(ProviderError::Deferred {
            reason: DeferReason::CircuitOpen,
            retry_after,
        }) => retry_after,
        other => panic!("expected the open-circuit deferral, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn opens_after_threshold_retryable_failures() {
    let guarded = Guarded::new(
        Scripted::new(vec![unavailable(), malformed(), unavailable()]),
        config(),
    );
    call_n(&guarded, 2).await;
    assert_eq!(
        guarded.snapshot(MODEL),
        GuardSnapshot {
            state: BreakerState::Closed,
            in_flight: 0,
            consecutive_failures: 2,
        }
    );
    call_n(&guarded, 1).await;
    assert_eq!(guarded.state(MODEL), BreakerState::Open);
    assert_eq!(guarded.snapshot(MODEL).consecutive_failures, 3);
}

#[tokio::test(start_paused = true)]
async fn open_breaker_refuses_without_calling_the_provider() {
    let guarded = tripped(Duration::ZERO).await;
    let result = guarded.generate(&request(None)).await;
    let message = result.as_ref().unwrap_err().to_string();
    assert_eq!(
        message,
        "provider call deferred (circuit_open): try again in 30000 ms"
    );
    assert_eq!(result.as_ref().unwrap_err().code(), "provider_unavailable");
    assert_eq!(assert_open_error(result), OPEN_FOR);
    tokio::time::advance(Duration::from_secs(10)).await;
    for _ in 0..5 {
        let retry_after = assert_open_error(guarded.generate(&request(None)).await);
        assert_eq!(retry_after, Duration::from_secs(20));
    }
    assert_eq!(guarded.inner().calls(), 3);
    assert_eq!(guarded.state(MODEL), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_exactly_one_probe_through_and_success_closes() {
    let guarded = Arc::new(tripped(Duration::from_secs(1)).await);
    tokio::time::advance(OPEN_FOR).await;
    assert_eq!(guarded.state(MODEL), BreakerState::HalfOpen);

    let calls: Vec<_> = (0..5)
        .map(|_| {
            let guarded = Arc::clone(&guarded);
            tokio::spawn(async move { guarded.generate(&request(None)).await })
        })
        .collect();
    let mut succeeded = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => succeeded += 1,
            refused => {
                // The probe's answer is unknown, so the hint is a full period.
                assert_eq!(assert_open_error(refused), OPEN_FOR);
            }
        }
    }
    assert_eq!(succeeded, 1);
    assert_eq!(guarded.inner().calls(), 4);
    assert_eq!(guarded.inner().max_running.load(Ordering::SeqCst), 1);
    assert_eq!(guarded.state(MODEL), BreakerState::Closed);
    assert_eq!(guarded.snapshot(MODEL).consecutive_failures, 0);
    // Closed again: calls go through.
    guarded.generate(&request(None)).await.unwrap();
    assert_eq!(guarded.inner().calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn failed_probe_reopens_for_a_full_period() {
    let guarded = tripped(Duration::ZERO).await;
    tokio::time::advance(OPEN_FOR).await;
    guarded.inner().push(malformed());
    let probe = guarded.generate(&request(None)).await;
    assert!(
        matches!(probe, Err(ProviderError::Malformed { .. })),
        "{probe:?}"
    );
    assert_eq!(guarded.state(MODEL), BreakerState::Open);
    let retry_after = assert_open_error(guarded.generate(&request(None)).await);
    assert_eq!(retry_after, OPEN_FOR);
    assert_eq!(guarded.inner().calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_neither_open_nor_reset() {
    let guarded = Guarded::new(
        Scripted::new(vec![
            unavailable(),
            unavailable(),
            rejected(),
            rejected(),
            rejected(),
            rejected(),
            Err(ProviderError::Unauthorized {
                message: "bad key".into(),
            }),
            Err(ProviderError::Unsupported {
                message: "no video".into(),
            }),
            Err(ProviderError::DeadlineExceeded),
        ]),
        config(),
    );
    call_n(&guarded, 9).await;
    assert_eq!(guarded.state(MODEL), BreakerState::Closed);
    assert_eq!(guarded.snapshot(MODEL).consecutive_failures, 2);
    // The streak survived them: one more retryable failure opens it.
    guarded.inner().push(unavailable());
    call_n(&guarded, 1).await;
    assert_eq!(guarded.state(MODEL), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn success_resets_the_streak() {
    let guarded = Guarded::new(
        Scripted::new(vec![unavailable(), unavailable(), Ok(()), unavailable()]),
        config(),
    );
    call_n(&guarded, 4).await;
    assert_eq!(guarded.state(MODEL), BreakerState::Closed);
    assert_eq!(guarded.snapshot(MODEL).consecutive_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn permanent_error_on_the_probe_leaves_it_half_open() {
    let guarded = tripped(Duration::ZERO).await;
    tokio::time::advance(OPEN_FOR).await;
    guarded.inner().push(rejected());
    let probe = guarded.generate(&request(None)).await;
    assert!(
        matches!(probe, Err(ProviderError::Rejected { .. })),
        "{probe:?}"
    );
    assert_eq!(guarded.state(MODEL), BreakerState::HalfOpen);
    // The next caller is the new probe.
    guarded.generate(&request(None)).await.unwrap();
    assert_eq!(guarded.state(MODEL), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn dropped_probe_leaves_it_half_open() {
    let guarded = tripped(Duration::from_secs(10)).await;
    tokio::time::advance(OPEN_FOR).await;
    let probe = request(None);
    let dropped = tokio::time::timeout(Duration::from_secs(1), guarded.generate(&probe)).await;
    assert!(dropped.is_err());
    assert_eq!(guarded.state(MODEL), BreakerState::HalfOpen);
    assert_eq!(guarded.snapshot(MODEL).in_flight, 0);
    guarded.generate(&request(None)).await.unwrap();
    assert_eq!(guarded.state(MODEL), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_caps_calls_in_flight() {
    let guarded = Arc::new(Guarded::new(
        Scripted::holding(Duration::from_secs(1)),
        GuardConfig {
            max_concurrent: 3,
            // The last calls wait 3 s for a slot: no deferral here.
            max_queue_wait: Duration::from_secs(10),
            ..config()
        },
    ));
    let start = Instant::now();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let guarded = Arc::clone(&guarded);
            tokio::spawn(async move { guarded.generate(&request(None)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(guarded.snapshot(MODEL).in_flight, 3);
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(guarded.inner().calls(), 10);
    assert_eq!(guarded.inner().max_running.load(Ordering::SeqCst), 3);
    // Four rounds of one second: 3 + 3 + 3 + 1.
    assert_eq!(start.elapsed(), Duration::from_secs(4));
    assert_eq!(guarded.snapshot(MODEL).in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_spaces_calls() {
    let guarded = Arc::new(Guarded::new(
        Scripted::default(),
        GuardConfig {
            rate_per_second: 5.0,
            burst: 1,
            ..config()
        },
    ));
    let start = Instant::now();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let guarded = Arc::clone(&guarded);
            tokio::spawn(async move { guarded.generate(&request(None)).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1795) && elapsed <= Duration::from_millis(1805),
        "{elapsed:?}"
    );
    let mut times = guarded.inner().call_times();
    times.sort();
    assert_eq!(times[0], start);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(199) && gap <= Duration::from_millis(201),
            "{gap:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn burst_lets_calls_through_back_to_back() {
    let guarded = Guarded::new(
        Scripted::default(),
        GuardConfig {
            rate_per_second: 1.0,
            burst: 3,
            ..config()
        },
    );
    let start = Instant::now();
    call_n(&guarded, 4).await;
    let times = guarded.inner().call_times();
    assert_eq!(times[..3], [start, start, start]);
    assert_eq!(times[3] - start, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn deadline_bounds_the_wait_for_a_slot() {
    let guarded = Arc::new(Guarded::new(
        Scripted::holding(Duration::from_secs(10)),
        GuardConfig {
            max_concurrent: 1,
            ..config()
        },
    ));
    let holder = {
        let guarded = Arc::clone(&guarded);
        tokio::spawn(async move { guarded.generate(&request(None)).await })
    };
    tokio::task::yield_now().await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(1);
    let result = guarded.generate(&request(Some(deadline))).await;
    assert!(
        matches!(result, Err(ProviderError::DeadlineExceeded)),
        "{result:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(guarded.inner().calls(), 1);
    holder.await.unwrap().unwrap();
    // A deadline error is not a provider failure.
    assert_eq!(guarded.snapshot(MODEL).consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn deadline_bounds_the_wait_for_a_token() {
    let guarded = Guarded::new(
        Scripted::default(),
        GuardConfig {
            rate_per_second: 1.0,
            burst: 1,
            ..config()
        },
    );
    let start = Instant::now();
    guarded.generate(&request(None)).await.unwrap();
    // The next token comes at 1 s: a 500 ms deadline fails at once.
    let result = guarded
        .generate(&request(Some(start + Duration::from_millis(500))))
        .await;
    assert!(
        matches!(result, Err(ProviderError::DeadlineExceeded)),
        "{result:?}"
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    // ...and took no token: a later deadline still gets the 1 s one.
    guarded
        .generate(&request(Some(start + Duration::from_secs(2))))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(guarded.inner().calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn passed_deadline_makes_no_call() {
    let guarded = Guarded::new(Scripted::default(), config());
    let deadline = Instant::now();
    tokio::time::advance(Duration::from_millis(1)).await;
    let result = guarded.generate(&request(Some(deadline))).await;
    assert!(
        matches!(result, Err(ProviderError::DeadlineExceeded)),
        "{result:?}"
    );
    assert_eq!(guarded.inner().calls(), 0);
}

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

fn rate_limited(retry_after: Option<Duration>) -> Result<(), ProviderError> {
    Err(ProviderError::RateLimited {
        message: "429".into(),
        retry_after,
    })
}

/// Rate-limit answers are backpressure: however many, they neither open
/// the breaker nor add to (or reset) a failure streak.
#[tokio::test(start_paused = true)]
async fn rate_limits_never_open_the_breaker() {
    // Patient calls: this is about the breaker, not the deferral.
    let guarded = Guarded::new(
        Scripted::new(vec![unavailable(), unavailable()]),
        GuardConfig {
            max_queue_wait: Duration::from_secs(600),
            ..config()
        },
    );
    call_n(&guarded, 2).await;
    for _ in 0..20 {
        guarded.inner().push(rate_limited(None));
    }
    call_n(&guarded, 20).await;
    assert_eq!(guarded.inner().calls(), 22);
    assert_eq!(guarded.state(MODEL), BreakerState::Closed);
    assert_eq!(guarded.snapshot(MODEL).consecutive_failures, 2);
}

/// Local failures (our own disk) and deferrals say nothing of the model.
#[tokio::test(start_paused = true)]
async fn local_failures_never_open_the_breaker() {
    let local = || {
        Err(ProviderError::Local {
            message: "spool".into(),
        })
    };
    let guarded = Guarded::new(Scripted::new((0..10).map(|_| local()).collect()), config());
    call_n(&guarded, 10).await;
    assert_eq!(guarded.inner().calls(), 10);
    assert_eq!(guarded.state(MODEL), BreakerState::Closed);
    assert_eq!(guarded.snapshot(MODEL).consecutive_failures, 0);
}

/// A probe answered with a rate limit is no verdict on the model: the
/// breaker stays half-open for the next caller to probe.
#[tokio::test(start_paused = true)]
async fn a_rate_limited_probe_leaves_it_half_open() {
    let guarded = tripped(Duration::ZERO).await;
    tokio::time::advance(OPEN_FOR).await;
    guarded.inner().push(rate_limited(None));
    let probe = guarded.generate(&request(None)).await;
    assert!(
        matches!(probe, Err(ProviderError::RateLimited { .. })),
        "{probe:?}"
    );
    assert_eq!(guarded.state(MODEL), BreakerState::HalfOpen);
}

/// The open breaker defers with the time left to its next probe, at once
/// and without calling; once that time has passed, the probe goes through.
#[tokio::test(start_paused = true)]
async fn an_open_breaker_defers_until_its_next_probe() {
    let guarded = tripped(Duration::ZERO).await;
    tokio::time::advance(Duration::from_secs(12)).await;
    let start = Instant::now();
    let deferred = guarded.generate(&request(None)).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(
        matches!(
            deferred,
            ProviderError::Deferred {
                reason: DeferReason::CircuitOpen,
                retry_after,
            } if retry_after == OPEN_FOR - Duration::from_secs(12)
        ),
        "{deferred:?}"
    );
    assert!(deferred.is_retryable());
    assert_eq!(deferred.code(), "provider_unavailable");
    assert_eq!(guarded.inner().calls(), 3);
    // Not a failure: the streak is what opened it, no more.
    assert_eq!(guarded.snapshot(MODEL).consecutive_failures, 3);
    tokio::time::advance(deferred.retry_after().unwrap()).await;
    guarded.generate(&request(None)).await.unwrap();
    assert_eq!(guarded.state(MODEL), BreakerState::Closed);
}

/// A full concurrency limit defers a call after `max_queue_wait`, with a
/// small suggested delay, instead of holding it until the deadline.
#[tokio::test(start_paused = true)]
async fn a_full_concurrency_limit_defers_after_max_queue_wait() {
    let guarded = Arc::new(Guarded::new(
        Scripted::holding(Duration::from_secs(60)),
        GuardConfig {
            max_concurrent: 2,
            max_queue_wait: Duration::from_secs(2),
            ..config()
        },
    ));
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let guarded = Arc::clone(&guarded);
            tokio::spawn(async move { guarded.generate(&request(None)).await })
        })
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(guarded.snapshot(MODEL).in_flight, 2);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(600);
    let deferred = guarded
        .generate(&request(Some(deadline)))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(
        matches!(
            deferred,
            ProviderError::Deferred {
                reason: DeferReason::AtCapacity,
                retry_after,
            } if retry_after == Duration::from_secs(2)
        ),
        "{deferred:?}"
    );
    assert_eq!(guarded.inner().calls(), 2);
    // A deferral is no failure of the model.
    assert_eq!(guarded.snapshot(MODEL).consecutive_failures, 0);
    // A deadline sooner than max_queue_wait still wins.
    let start = Instant::now();
    let result = guarded
        .generate(&request(Some(start + Duration::from_millis(500))))
        .await;
    assert!(
        matches!(result, Err(ProviderError::DeadlineExceeded)),
        "{result:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    for holder in holders {
        holder.await.unwrap().unwrap();
    }
    // A free slot is taken at once, even with a zero wait.
    let guarded = Guarded::new(
        Scripted::default(),
        GuardConfig {
            max_queue_wait: Duration::ZERO,
            ..config()
        },
    );
    guarded.generate(&request(None)).await.unwrap();
}

/// Rate-limit answers slow the bucket (multiplicatively, and holding calls
/// until their Retry-After); then it climbs back additively to the
/// configured rate.
#[tokio::test(start_paused = true)]
async fn rate_limits_slow_the_bucket_and_it_recovers() {
    let guarded = Guarded::new(
        Scripted::default(),
        GuardConfig {
            rate_per_second: 10.0,
            burst: 1,
            ..config()
        },
    );
    // Ten calls a second, as configured.
    call_n(&guarded, 10).await;
    assert_eq!(guarded.rate_limit(), Some(10.0));
    guarded
        .inner()
        .push(rate_limited(Some(Duration::from_secs(2))));
    let _ = guarded.generate(&request(None)).await;
    let start = *guarded.inner().call_times().last().unwrap();
    // Held until the Retry-After, at half the rate.
    assert_eq!(guarded.held_until(), Some(start + Duration::from_secs(2)));
    // Half the rate calls were made at: the configured 10/s, as the
    // one-second estimate of the calls just made sees it (a little less,
    // after only a second of them).
    let cut = guarded.rate_limit().unwrap();
    assert!((2.0..=5.0).contains(&cut), "{cut}");
    let calls = guarded.inner().calls();
    guarded.generate(&request(None)).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(guarded.inner().calls(), calls + 1);
    // Calls after the hold are spaced at the cut rate, not the configured.
    let before = Instant::now();
    call_n(&guarded, 4).await;
    let spaced = before.elapsed();
    assert!(spaced >= Duration::from_millis(750), "{spaced:?}");

    // A second answer a while later halves it again.
    tokio::time::advance(Duration::from_secs(1)).await;
    guarded.inner().push(rate_limited(None));
    let _ = guarded.generate(&request(None)).await;
    let cut_again = guarded.rate_limit().unwrap();
    assert!(cut_again < cut, "{cut_again} !< {cut}");

    // Then it recovers gradually: higher after ten seconds, not yet all
    // the way; back to the configured rate within the recovery time.
    tokio::time::advance(Duration::from_secs(10)).await;
    let climbing = guarded.rate_limit().unwrap();
    assert!(climbing > cut_again && climbing < 10.0, "{climbing}");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(guarded.rate_limit(), Some(10.0));
}

/// With no configured limit, a rate-limit answer still slows the provider
/// down (to half the rate it was called at), and it recovers to unlimited.
#[tokio::test(start_paused = true)]
async fn an_unlimited_provider_backs_off_and_recovers_to_unlimited() {
    let guarded = Arc::new(Guarded::new(Scripted::default(), config()));
    assert_eq!(guarded.rate_limit(), None);
    // Twenty calls at once, then a 429.
    call_n(&guarded, 20).await;
    guarded.inner().push(rate_limited(None));
    let _ = guarded.generate(&request(None)).await;
    let cut = guarded.rate_limit().expect("no back-off after a 429");
    assert!((0.2..=11.0).contains(&cut), "{cut}");
    // Ten more calls take time now.
    let start = Instant::now();
    call_n(&guarded, 10).await;
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "{:?}",
        start.elapsed()
    );
    // And after the recovery, no limit again: calls back to back.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(guarded.rate_limit(), None);
    let start = Instant::now();
    call_n(&guarded, 10).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
}

/// Calls already waiting for a token when a rate-limit answer arrives
/// queue again at the new rate, behind the hold.
#[tokio::test(start_paused = true)]
async fn waiting_calls_respect_a_new_hold() {
    let guarded = Arc::new(Guarded::new(
        Scripted::default(),
        GuardConfig {
            rate_per_second: 2.0,
            burst: 1,
            max_concurrent: 64,
            // Patient calls: this is about the hold, not the deferral.
            max_queue_wait: Duration::from_secs(600),
            ..config()
        },
    ));
    guarded
        .inner()
        .push(rate_limited(Some(Duration::from_secs(5))));
    let start = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let guarded = Arc::clone(&guarded);
            tokio::spawn(async move { guarded.generate(&request(None)).await })
        })
        .collect();
    for call in calls {
        let _ = call.await.unwrap();
    }
    let times = guarded.inner().call_times();
    assert_eq!(times.len(), 4);
    // The first call drew the 429 at once; the three waiting at 0.5, 1.0
    // and 1.5 s were held until 5 s, then spaced at the cut rate.
    assert_eq!(times[0], start);
    for time in &times[1..] {
        assert!(
            *time >= start + Duration::from_secs(5),
            "{:?}",
            *time - start
        );
    }
}

/// A call whose turn in a slowed (or slow) bucket is further away than
/// `max_queue_wait` is deferred at once, taking no token, rather than
/// holding its caller; a later call after the wait gets through.
#[tokio::test(start_paused = true)]
async fn a_call_far_back_in_the_bucket_is_deferred_as_throttled() {
    let guarded = Guarded::new(
        Scripted::default(),
        GuardConfig {
            rate_per_second: 0.1,
            burst: 1,
            max_queue_wait: Duration::from_secs(1),
            ..config()
        },
    );
    guarded.generate(&request(None)).await.unwrap();
    let start = Instant::now();
    let deferred = guarded.generate(&request(None)).await;
    assert!(
        matches!(
            deferred,
            Err(ProviderError::Deferred {
                reason: DeferReason::Throttled,
                ..
            })
        ),
        "{deferred:?}"
    );
    assert_eq!(start.elapsed(), Duration::ZERO, "deferred without waiting");
    assert_eq!(guarded.inner().calls(), 1);
    // Ten seconds on, the next token is there.
    tokio::time::advance(Duration::from_secs(10)).await;
    guarded.generate(&request(None)).await.unwrap();
    assert_eq!(guarded.inner().calls(), 2);
}

//! One model's breaker: opening, the half-open probe, and what does and
//! does not count against it.

use super::*;

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

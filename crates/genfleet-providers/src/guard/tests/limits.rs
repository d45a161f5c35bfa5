//! The per-provider limits: concurrency, the rate bucket and its adaptive
//! slowdown, and deadlines.

use super::*;

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

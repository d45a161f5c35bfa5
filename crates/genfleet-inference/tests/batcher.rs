//! The micro-batcher with a fake run function (no ONNX Runtime): every
//! request gets its own result, batches respect `max_batch` and
//! `max_delay`, failures stay inside their batch, expired requests are
//! skipped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use genfleet_inference::batcher::{BatchConfig, BatchError, MicroBatcher};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq)]
enum TestError {
    Batch(BatchError),
    Boom,
}

impl From<BatchError> for TestError {
    fn from(e: BatchError) -> Self {
        Self::Batch(e)
    }
}

fn config(max_batch: usize, max_delay_ms: u64) -> BatchConfig {
    BatchConfig {
        max_batch,
        max_delay: Duration::from_millis(max_delay_ms),
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_gets_its_own_result_under_concurrent_load() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&sizes);
    let batcher = MicroBatcher::from_fn(config(8, 2), move |items: Vec<u64>| {
        seen.lock().unwrap().push(items.len());
        // Some work, so requests pile up behind a running batch.
        std::thread::sleep(Duration::from_micros(300));
        Ok::<_, TestError>(items.into_iter().map(|id| id * 3 + 1).collect())
    })
    .unwrap();
    let mut tasks = Vec::new();
    for id in 0..200u64 {
        let batcher = batcher.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(fastrand::u64(0..5_000))).await;
            (id, batcher.submit(id, far()).await)
        }));
    }
    for task in tasks {
        let (id, result) = task.await.unwrap();
        assert_eq!(
            result,
            Ok(id * 3 + 1),
            "request {id} got someone else's result"
        );
    }
    let sizes = sizes.lock().unwrap();
    assert_eq!(sizes.iter().sum::<usize>(), 200);
    assert!(sizes.iter().all(|&s| (1..=8).contains(&s)), "{sizes:?}");
    assert!(
        sizes.iter().any(|&s| s > 1),
        "nothing was batched: {sizes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lone_request_runs_after_max_delay() {
    let batcher =
        MicroBatcher::from_fn(config(8, 10), |items: Vec<u32>| Ok::<_, TestError>(items)).unwrap();
    let started = Instant::now();
    assert_eq!(batcher.submit(7, far()).await, Ok(7));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(10) && waited < Duration::from_millis(12),
        "waited {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_runs_without_waiting_for_the_delay() {
    let batcher = MicroBatcher::from_fn(config(4, 1_000), |items: Vec<u32>| {
        Ok::<_, TestError>(items)
    })
    .unwrap();
    let started = Instant::now();
    let calls: Vec<_> = (0..4).map(|i| batcher.submit(i, far())).collect();
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(results, vec![Ok(0), Ok(1), Ok(2), Ok(3)]);
    assert!(started.elapsed() < Duration::from_millis(1_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_fails_only_its_members() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let batcher = MicroBatcher::from_fn(config(4, 5), move |items: Vec<u32>| {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(TestError::Boom)
        } else {
            Ok(items)
        }
    })
    .unwrap();
    let first: Vec<_> = (0..4).map(|i| batcher.submit(i, far())).collect();
    let first = futures_util::future::join_all(first).await;
    assert!(
        first.iter().all(|r| *r == Err(TestError::Boom)),
        "{first:?}"
    );
    let second: Vec<_> = (10..14).map(|i| batcher.submit(i, far())).collect();
    let second = futures_util::future::join_all(second).await;
    assert_eq!(second, vec![Ok(10), Ok(11), Ok(12), Ok(13)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_run_fails_its_batch_and_the_batcher_lives_on() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let batcher = MicroBatcher::from_fn(config(1, 1), move |items: Vec<u32>| {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("fake run panics once");
        }
        Ok::<_, TestError>(items)
    })
    .unwrap();
    assert_eq!(
        batcher.submit(1, far()).await,
        Err(TestError::Batch(BatchError::Panicked))
    );
    assert_eq!(batcher.submit(2, far()).await, Ok(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_requests_are_skipped_and_withdrawn_ones_do_not_break_others() {
    let ran = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&ran);
    let batcher = MicroBatcher::from_fn(config(8, 1), move |items: Vec<u32>| {
        log.lock().unwrap().extend(items.iter().copied());
        // The first batch is slow, so the next requests queue behind it.
        if items.contains(&0) {
            std::thread::sleep(Duration::from_millis(150));
        }
        Ok::<_, TestError>(items)
    })
    .unwrap();
    let slow = {
        let b = batcher.clone();
        tokio::spawn(async move { b.submit(0, far()).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Expires while the first batch runs: never run.
    let short = batcher.submit(1, Instant::now() + Duration::from_millis(30));
    // Withdrawn (dropped) while queued.
    let withdrawn = {
        let b = batcher.clone();
        tokio::spawn(async move { b.submit(2, far()).await })
    };
    let kept = {
        let b = batcher.clone();
        tokio::spawn(async move { b.submit(3, far()).await })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    withdrawn.abort();
    assert_eq!(
        short.await,
        Err(TestError::Batch(BatchError::DeadlineExceeded))
    );
    assert_eq!(slow.await.unwrap(), Ok(0));
    assert_eq!(kept.await.unwrap(), Ok(3));
    let ran = ran.lock().unwrap();
    assert!(!ran.contains(&1), "an expired request ran: {ran:?}");
    assert!(!ran.contains(&2), "a withdrawn request ran: {ran:?}");
}

#[tokio::test]
async fn a_mismatched_result_count_fails_the_batch() {
    let batcher = MicroBatcher::from_fn(config(1, 1), |_items: Vec<u32>| {
        Ok::<Vec<u32>, TestError>(Vec::new())
    })
    .unwrap();
    assert_eq!(
        batcher.submit(1, far()).await,
        Err(TestError::Batch(BatchError::CountMismatch {
            expected: 1,
            got: 0
        }))
    );
}

#[test]
fn outside_a_runtime_the_batcher_says_so() {
    let result = MicroBatcher::from_fn(config(1, 1), |items: Vec<u32>| Ok::<_, TestError>(items));
    assert_eq!(result.err(), Some(BatchError::NoRuntime));
}

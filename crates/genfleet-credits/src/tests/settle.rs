//! One job's hold from reserve to settlement: idempotent reserves,
//! insufficient credits, captures, releases, expiry and first outcomes.

use std::time::Duration;

use super::{held, TestDb, TTL};
use crate::{CreditsError, HoldState, Settlement};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_is_idempotent() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    assert_eq!(l.grant("acct", 100, "test").await.unwrap(), 100);

    let first = l.reserve("job-1", "acct", 30, TTL).await.unwrap();
    assert_eq!(first, held("job-1", "acct", 30));
    let second = l.reserve("job-1", "acct", 30, TTL).await.unwrap();
    assert_eq!(second, first);
    // A different amount for the same job still returns the original hold.
    let third = l.reserve("job-1", "acct", 99, TTL).await.unwrap();
    assert_eq!(third, first);

    let balance = l.balance("acct").await.unwrap().unwrap();
    assert_eq!(
        (balance.available, balance.held, balance.captured),
        (70, 30, 0)
    );
    assert_eq!(l.hold("job-1").await.unwrap(), Some(first));
    assert_eq!(db.entry_kinds("job-1").await, vec![("hold".into(), 30)]);
    db.assert_conserved("acct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_credits_name_the_numbers_and_change_nothing() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    l.grant("acct", 5, "test").await.unwrap();

    let err = l.reserve("job-1", "acct", 8, TTL).await.unwrap_err();
    match &err {
        CreditsError::Insufficient {
            account,
            needed,
            available,
        } => assert_eq!((account.as_str(), *needed, *available), ("acct", 8, 5)),
        other => panic!("expected insufficient, got {other:?}"),
    }
    assert_eq!(err.code(), "insufficient_credits");
    assert!(!err.is_retryable());

    let balance = l.balance("acct").await.unwrap().unwrap();
    assert_eq!(
        (balance.available, balance.held, balance.captured),
        (5, 0, 0)
    );
    assert_eq!(l.hold("job-1").await.unwrap(), None);

    // An account that was never granted anything has 0 available.
    let err = l.reserve("job-2", "nobody", 1, TTL).await.unwrap_err();
    assert!(
        matches!(
            err,
            CreditsError::Insufficient {
                available: 0,
                needed: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(l.balance("nobody").await.unwrap(), None);
    db.assert_conserved("acct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_capture_returns_the_rest() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    l.grant("acct", 50, "test").await.unwrap();
    l.reserve("job-1", "acct", 10, TTL).await.unwrap();
    assert_eq!(l.balance("acct").await.unwrap().unwrap().available, 40);

    let hold = l
        .settle("job-1", Settlement::Capture { amount: 7 }, b"ok")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hold.state, HoldState::Captured);
    assert_eq!((hold.captured, hold.released), (7, 3));

    let balance = l.balance("acct").await.unwrap().unwrap();
    assert_eq!(
        (balance.available, balance.held, balance.captured),
        (43, 0, 7)
    );
    assert_eq!(
        db.entry_kinds("job-1").await,
        vec![
            ("hold".into(), 10),
            ("capture".into(), 7),
            ("release".into(), 3)
        ]
    );
    db.assert_conserved("acct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_is_clamped_to_the_hold() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    l.grant("acct", 50, "test").await.unwrap();
    // (job, hold, asked to capture, expected captured, expected released)
    let cases = [
        ("over", 10, 25, 10, 0),
        ("negative", 10, -4, 0, 10),
        ("zero", 10, 0, 0, 10),
        ("exact", 10, 10, 10, 0),
    ];
    for (job, amount, capture, captured, released) in cases {
        l.reserve(job, "acct", amount, TTL).await.unwrap();
        let hold = l
            .settle(job, Settlement::Capture { amount: capture }, b"")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (hold.state, hold.captured, hold.released),
            (HoldState::Captured, captured, released),
            "{job}"
        );
    }
    let balance = l.balance("acct").await.unwrap().unwrap();
    assert_eq!(
        (balance.available, balance.held, balance.captured),
        (30, 0, 20)
    );
    db.assert_conserved("acct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_twice_does_not_capture_twice() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    l.grant("acct", 20, "test").await.unwrap();
    l.reserve("job-1", "acct", 10, TTL).await.unwrap();

    let first = l
        .settle("job-1", Settlement::Capture { amount: 6 }, b"first")
        .await
        .unwrap();
    let again = l
        .settle("job-1", Settlement::Capture { amount: 10 }, b"second")
        .await
        .unwrap();
    let released = l
        .settle("job-1", Settlement::Release, b"third")
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(first, released);

    let balance = l.balance("acct").await.unwrap().unwrap();
    assert_eq!(
        (balance.available, balance.held, balance.captured),
        (14, 0, 6)
    );
    // The first stored outcome is the one kept.
    assert_eq!(l.outcome("job-1").await.unwrap(), Some(b"first".to_vec()));
    // Reserving a settled job again returns the settled hold, holds nothing.
    let hold = l.reserve("job-1", "acct", 10, TTL).await.unwrap();
    assert_eq!(hold.state, HoldState::Captured);
    assert_eq!(l.balance("acct").await.unwrap().unwrap().available, 14);
    db.assert_conserved("acct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_returns_everything() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    l.grant("acct", 20, "test").await.unwrap();
    l.reserve("job-1", "acct", 12, TTL).await.unwrap();

    let hold = l
        .settle("job-1", Settlement::Release, b"failed")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (hold.state, hold.captured, hold.released),
        (HoldState::Released, 0, 12)
    );
    let balance = l.balance("acct").await.unwrap().unwrap();
    assert_eq!(
        (balance.available, balance.held, balance.captured),
        (20, 0, 0)
    );
    assert_eq!(
        db.entry_kinds("job-1").await,
        vec![("hold".into(), 12), ("release".into(), 12)]
    );
    db.assert_conserved("acct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_without_hold_stores_the_outcome() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    assert_eq!(l.outcome("free-job").await.unwrap(), None);

    let outcome = [0u8, 159, 146, 150, 255];
    let hold = l
        .settle("free-job", Settlement::Capture { amount: 3 }, &outcome)
        .await
        .unwrap();
    assert_eq!(hold, None);
    assert_eq!(l.outcome("free-job").await.unwrap(), Some(outcome.to_vec()));
    assert_eq!(l.hold("free-job").await.unwrap(), None);
    assert!(db.entry_kinds("free-job").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_overdue_returns_credits() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    l.grant("acct", 100, "test").await.unwrap();
    l.reserve("zero-ttl", "acct", 10, Duration::ZERO)
        .await
        .unwrap();
    l.reserve("short-ttl", "acct", 20, Duration::from_millis(1))
        .await
        .unwrap();
    l.reserve("long-ttl", "acct", 30, TTL).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    assert_eq!(l.expire_overdue().await.unwrap(), 2);
    assert_eq!(l.expire_overdue().await.unwrap(), 0);

    let balance = l.balance("acct").await.unwrap().unwrap();
    assert_eq!(
        (balance.available, balance.held, balance.captured),
        (70, 30, 0)
    );
    let expired = l.hold("short-ttl").await.unwrap().unwrap();
    assert_eq!(
        (expired.state.clone(), expired.released),
        (HoldState::Expired, 20)
    );
    assert_eq!(
        db.entry_kinds("short-ttl").await,
        vec![("hold".into(), 20), ("expire".into(), 20)]
    );

    // A late worker settling an expired hold changes nothing but still
    // records its outcome.
    let late = l
        .settle("short-ttl", Settlement::Capture { amount: 20 }, b"late")
        .await
        .unwrap();
    assert_eq!(late, Some(expired));
    assert_eq!(
        l.outcome("short-ttl").await.unwrap(),
        Some(b"late".to_vec())
    );
    assert_eq!(l.balance("acct").await.unwrap().unwrap().available, 70);
    db.assert_conserved("acct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_outcome_wins_and_later_settles_are_told_so() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    l.grant("acct", 10, "test").await.unwrap();
    l.reserve("dup", "acct", 4, Duration::from_secs(60))
        .await
        .unwrap();
    // One delivery failed and released...
    let first = l
        .settle_outcome("dup", Settlement::Release, b"failed")
        .await
        .unwrap();
    assert_eq!(first.earlier_outcome, None);
    // ...while a duplicate delivery of the same job succeeded: it captures
    // nothing and learns the job's outcome is the failure.
    let second = l
        .settle_outcome("dup", Settlement::Capture { amount: 4 }, b"succeeded")
        .await
        .unwrap();
    assert_eq!(second.earlier_outcome.as_deref(), Some(&b"failed"[..]));
    let hold = second.hold.unwrap();
    assert_eq!((hold.captured, hold.released), (0, 4));
    assert_eq!(
        l.outcome("dup").await.unwrap().as_deref(),
        Some(&b"failed"[..])
    );
    // A free job too.
    let free = l
        .settle_outcome("free", Settlement::Release, b"a")
        .await
        .unwrap();
    assert_eq!((free.hold, free.earlier_outcome), (None, None));
    let again = l
        .settle_outcome("free", Settlement::Release, b"b")
        .await
        .unwrap();
    assert_eq!(again.earlier_outcome.as_deref(), Some(&b"a"[..]));
    db.assert_conserved("acct").await;
}

//! Retention: the purge of per-job rows with a clock the test sets, and the
//! pending source deletions that wait for a job's outcome.

use std::time::{Duration, SystemTime};

use super::{TestDb, TTL};
use crate::{RecordCutoffs, RecordsPurged, Settlement};

const DAY: Duration = Duration::from_secs(86_400);

/// Cutoffs as the purge computes them: `now` minus each window.
fn cutoffs(now: SystemTime, default_days: u64, orgs: &[(&str, u64)]) -> RecordCutoffs {
    RecordCutoffs {
        default: now - DAY * u32::try_from(default_days).unwrap(),
        orgs: orgs
            .iter()
            .map(|(org, days)| {
                (
                    (*org).to_string(),
                    now - DAY * u32::try_from(*days).unwrap(),
                )
            })
            .collect(),
    }
}

/// A job of `tenant` that was claimed, started, recorded a provider
/// request, got a cancel request, reserved and (unless `open`) settled.
async fn job(db: &TestDb, job_id: &str, tenant: &str, open: bool) {
    let l = &db.ledger;
    let account = tenant.split('/').next().unwrap();
    l.claim(job_id, tenant).await.unwrap();
    l.start(job_id, tenant).await.unwrap();
    l.remember_submission(job_id, "fal", "{\"request_id\":\"r\"}")
        .await
        .unwrap();
    l.request_cancellation(job_id, tenant, "user asked")
        .await
        .unwrap();
    l.reserve(job_id, account, 5, TTL).await.unwrap();
    if !open {
        l.settle_outcome(
            job_id,
            Settlement::Capture { amount: 3 },
            b"{\"signed\":\"url\"}",
        )
        .await
        .unwrap();
    }
}

async fn rows_of(db: &TestDb, job_id: &str) -> [i64; 4] {
    let client = db.ledger.pool.get().await.unwrap();
    let mut counts = [0; 4];
    for (i, table) in [
        "job_outcomes",
        "provider_submissions",
        "job_attempts",
        "job_cancellations",
    ]
    .iter()
    .enumerate()
    {
        let row = client
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE job_id = $1"),
                &[&job_id],
            )
            .await
            .unwrap();
        counts[i] = row.get(0);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_old_finished_jobs_rows_per_org_and_leaves_the_books() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    for account in ["acme", "globex"] {
        l.grant(account, 1_000, "test").await.unwrap();
    }
    // acme keeps 30 days, everyone else 180. Three finished acme jobs (more
    // than one batch of 2), one acme job still held, one globex job.
    for id in ["A1", "A2", "A3"] {
        job(&db, id, "acme/shop", false).await;
    }
    job(&db, "A-OPEN", "acme/shop", true).await;
    job(&db, "G1", "globex/shop", false).await;

    // Today nothing is old.
    let now = SystemTime::now();
    let today = cutoffs(now, 180, &[("acme", 30)]);
    assert_eq!(
        l.purge_records(&today, 2, false).await.unwrap(),
        RecordsPurged::default()
    );

    // 100 days on: acme's finished jobs are past 30 days, globex's are not.
    let later = cutoffs(now + DAY * 100, 180, &[("acme", 30)]);
    let expected = RecordsPurged {
        outcomes: 3,
        provider_submissions: 3,
        job_attempts: 3,
        job_cancellations: 3,
        unsettled_source_deletions: 0,
    };
    let dry = l.purge_records(&later, 2, true).await.unwrap();
    assert_eq!(dry, expected, "the dry run counts what the purge removes");
    assert_eq!(
        rows_of(&db, "A1").await,
        [1, 1, 1, 1],
        "a dry run removes nothing"
    );
    let done = l.purge_records(&later, 2, false).await.unwrap();
    assert_eq!(done, expected);
    for id in ["A1", "A2", "A3"] {
        assert_eq!(rows_of(&db, id).await, [0, 0, 0, 0], "{id}");
        // The id stays its tenant's: its hold is still keyed by it.
        assert_eq!(l.job_owner(id).await.unwrap().as_deref(), Some("acme/shop"));
        assert!(l.hold(id).await.unwrap().is_some(), "{id}: holds are books");
    }
    // The open job keeps everything, and its hold stays open.
    assert_eq!(rows_of(&db, "A-OPEN").await, [0, 1, 1, 1]);
    assert_eq!(
        l.hold("A-OPEN").await.unwrap().unwrap().state,
        crate::HoldState::Held
    );
    assert_eq!(rows_of(&db, "G1").await, [1, 1, 1, 1]);
    // Idempotent, and the books balance.
    assert_eq!(
        l.purge_records(&later, 2, false).await.unwrap(),
        RecordsPurged::default()
    );
    assert_eq!(l.check_invariants().await.unwrap(), Vec::<String>::new());
    db.assert_conserved("acme").await;

    // 200 days on, globex's go too.
    let much_later = cutoffs(now + DAY * 200, 180, &[("acme", 30)]);
    assert_eq!(
        l.purge_records(&much_later, 2, false)
            .await
            .unwrap()
            .outcomes,
        1
    );
    assert_eq!(rows_of(&db, "G1").await, [0, 0, 0, 0]);
    assert_eq!(l.check_invariants().await.unwrap(), Vec::<String>::new());
    assert!(l.purge_records(&much_later, 0, false).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_deletions_wait_for_the_outcome_and_are_retried() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    let uris = vec![
        "s3://b/uploads/acme/shop/a.jpg".to_string(),
        "s3://b/uploads/acme/shop/b.jpg".to_string(),
    ];
    l.record_source_deletions("J1", "acme", "shop", &uris)
        .await
        .unwrap();
    // Recorded twice (a redelivery): still two rows.
    l.record_source_deletions("J1", "acme", "shop", &uris)
        .await
        .unwrap();
    let now = SystemTime::now();
    let lease = now + Duration::from_secs(60);
    // No outcome yet: a redelivery must still find its inputs.
    assert!(l
        .claim_source_deletions(now, lease, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(l.pending_source_deletions().await.unwrap().pending, 2);

    l.settle_outcome("J1", Settlement::Release, b"{}")
        .await
        .unwrap();
    let claimed = l.claim_source_deletions(now, lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!((claimed[0].org.as_str(), claimed[0].attempts), ("acme", 1));
    // Leased: another sweeper at the same time gets nothing.
    assert!(l
        .claim_source_deletions(now, lease, 10)
        .await
        .unwrap()
        .is_empty());

    // One delete failed: it comes back at its retry time, not before.
    let retry_at = now + Duration::from_secs(120);
    l.source_deletion_failed("J1", &uris[0], "store down", retry_at)
        .await
        .unwrap();
    l.source_deleted("J1", &uris[1]).await.unwrap();
    let counts = l.pending_source_deletions().await.unwrap();
    assert_eq!((counts.pending, counts.failing), (1, 1));
    assert!(l
        .claim_source_deletions(now + Duration::from_secs(100), lease, 10)
        .await
        .unwrap()
        .is_empty());

    // While it waits, the purge keeps the job's outcome (the gate).
    let far = cutoffs(now + DAY * 400, 180, &[]);
    assert_eq!(l.purge_records(&far, 10, false).await.unwrap().outcomes, 0);
    let again = l
        .claim_source_deletions(retry_at, retry_at + Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);
    l.source_deleted("J1", &uris[0]).await.unwrap();
    assert_eq!(l.pending_source_deletions().await.unwrap().pending, 0);
    assert_eq!(l.purge_records(&far, 10, false).await.unwrap().outcomes, 1);

    // A job that recorded sources and never settled: its rows go with the
    // retention, since no outcome will ever release them.
    l.record_source_deletions("J2", "acme", "shop", &uris[..1])
        .await
        .unwrap();
    assert_eq!(
        l.purge_records(&far, 10, false)
            .await
            .unwrap()
            .unsettled_source_deletions,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_purge_at_a_time() {
    let db = TestDb::new().await;
    let first = db.ledger.try_purge_lock().await.unwrap().expect("free");
    assert!(db.ledger.try_purge_lock().await.unwrap().is_none());
    first.release().await;
    let again = db.ledger.try_purge_lock().await.unwrap().expect("released");
    // Dropped without release: the session closes and the lock with it.
    drop(again);
    let mut tries = 0;
    while db.ledger.try_purge_lock().await.unwrap().is_none() {
        tries += 1;
        assert!(tries < 50, "a dropped lock was never released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

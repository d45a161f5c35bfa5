//! Many tasks reserving, settling and sweeping at once on one account.

use std::time::Duration;

use super::{TestDb, TTL};
use crate::{CreditsError, Hold, Settlement};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reserves_conserve_credits() {
    const JOBS: usize = 50;
    const TASKS: usize = 16;
    const PRICE: i64 = 7;
    // Enough for 30 of the 50 jobs, and 3 credits that fit no job.
    const GRANT: i64 = 30 * PRICE + 3;

    let db = TestDb::new().await;
    db.ledger.grant("acct", GRANT, "test").await.unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let ledger = db.ledger.clone();
        tasks.spawn(async move {
            // Every task tries every job, in its own order, so each job id is
            // reserved by up to 16 tasks at once.
            let mut rng = fastrand::Rng::with_seed(task as u64);
            let mut jobs: Vec<usize> = (0..JOBS).collect();
            rng.shuffle(&mut jobs);
            let mut results = Vec::new();
            for job in jobs {
                let job_id = format!("job-{job}");
                match ledger.reserve(&job_id, "acct", PRICE, TTL).await {
                    Ok(hold) => results.push((job, Some(hold))),
                    Err(CreditsError::Insufficient { .. }) => results.push((job, None)),
                    Err(other) => panic!("reserve {job_id}: {other}"),
                }
            }
            results
        });
    }

    let mut granted_holds: Vec<Option<Hold>> = vec![None; JOBS];
    while let Some(results) = tasks.join_next().await {
        for (job, hold) in results.expect("reserve task") {
            if let Some(hold) = hold {
                // Every success for one job id must be the same hold.
                match &granted_holds[job] {
                    Some(seen) => assert_eq!(seen, &hold),
                    None => granted_holds[job] = Some(hold),
                }
            }
        }
    }

    let holds = granted_holds.iter().flatten().count();
    assert_eq!(holds, 30, "exactly as many holds as the grant covers");
    let balance = db.ledger.balance("acct").await.unwrap().unwrap();
    assert_eq!(balance.held, 30 * PRICE);
    assert_eq!(balance.available, 3);
    for (job, hold) in granted_holds.iter().enumerate() {
        assert_eq!(&db.ledger.hold(&format!("job-{job}")).await.unwrap(), hold);
    }
    db.assert_conserved("acct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_settle_and_sweep_never_double_count() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    l.grant("acct", 1_000, "test").await.unwrap();
    for job in 0..40 {
        // Half expire at once, half live long.
        let ttl = if job % 2 == 0 { Duration::ZERO } else { TTL };
        l.reserve(&format!("job-{job}"), "acct", 10, ttl)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8u64 {
        let ledger = l.clone();
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(task);
            let mut jobs: Vec<u32> = (0..40).collect();
            rng.shuffle(&mut jobs);
            let mut expired = ledger.expire_overdue().await.expect("sweep");
            for job in jobs {
                let settlement = if rng.bool() {
                    Settlement::Capture { amount: 6 }
                } else {
                    Settlement::Release
                };
                ledger
                    .settle(&format!("job-{job}"), settlement, b"done")
                    .await
                    .expect("settle");
            }
            expired += ledger.expire_overdue().await.expect("sweep");
            expired
        });
    }
    let mut expired = 0;
    while let Some(n) = tasks.join_next().await {
        expired += n.expect("task");
    }
    assert!(
        expired <= 20,
        "expired {expired} holds, only 20 were overdue"
    );

    let balance = l.balance("acct").await.unwrap().unwrap();
    assert_eq!(balance.held, 0);
    assert_eq!(balance.captured % 6, 0);
    db.assert_conserved("acct").await;
}

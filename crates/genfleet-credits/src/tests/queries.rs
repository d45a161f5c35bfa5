//! The operator queries: `statement`, `holds` and `check_invariants`,
//! including one tampered ledger per kind of violation the audit must name.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{held, TestDb, TTL};
use crate::{CreditsError, HoldState, Settlement};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_is_newest_first_and_limited() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    l.grant("acct", 100, "signup").await.unwrap();
    l.grant("other", 5, "unrelated").await.unwrap();
    l.reserve("job-1", "acct", 30, TTL).await.unwrap();
    l.settle("job-1", Settlement::Capture { amount: 20 }, b"")
        .await
        .unwrap();

    let entries = l.statement("acct", 10).await.unwrap();
    let summary: Vec<(Option<&str>, &str, i64, Option<&str>)> = entries
        .iter()
        .map(|e| {
            (
                e.job_id.as_deref(),
                e.kind.as_str(),
                e.amount,
                e.reason.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (Some("job-1"), "release", 10, None),
            (Some("job-1"), "capture", 20, None),
            (Some("job-1"), "hold", 30, None),
            (None, "grant", 100, Some("signup")),
        ]
    );
    assert!(entries.windows(2).all(|w| w[0].id > w[1].id), "{entries:?}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for entry in &entries {
        assert!(
            (now - 60..=now + 60).contains(&entry.created_at_unix),
            "{entry:?} is not from about {now}"
        );
    }

    // The limit keeps the newest.
    let newest = l.statement("acct", 2).await.unwrap();
    assert_eq!(newest, entries[..2]);
    assert!(l.statement("nobody", 10).await.unwrap().is_empty());
    for limit in [0, -1] {
        let err = l.statement("acct", limit).await.unwrap_err();
        assert!(matches!(err, CreditsError::Invalid(_)), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_lists_all_or_only_open() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    l.grant("acct", 100, "test").await.unwrap();
    l.grant("other", 100, "test").await.unwrap();
    for (job, amount) in [("job-a", 10), ("job-b", 20), ("job-c", 30)] {
        l.reserve(job, "acct", amount, TTL).await.unwrap();
    }
    l.reserve("job-x", "other", 5, TTL).await.unwrap();
    l.settle("job-b", Settlement::Release, b"").await.unwrap();

    let open = l.holds("acct", true).await.unwrap();
    assert_eq!(
        open,
        vec![held("job-a", "acct", 10), held("job-c", "acct", 30)]
    );
    let all = l.holds("acct", false).await.unwrap();
    let states: Vec<(&str, HoldState, i64)> = all
        .iter()
        .map(|h| (h.job_id.as_str(), h.state.clone(), h.released))
        .collect();
    assert_eq!(
        states,
        vec![
            ("job-a", HoldState::Held, 0),
            ("job-b", HoldState::Released, 20),
            ("job-c", HoldState::Held, 0),
        ]
    );
    assert_eq!(
        l.holds("other", false).await.unwrap(),
        vec![held("job-x", "other", 5)]
    );
    assert!(l.holds("nobody", false).await.unwrap().is_empty());
}

/// A small ledger that has been through every kind of write.
async fn busy_ledger() -> TestDb {
    let db = TestDb::new().await;
    let l = &db.ledger;
    l.grant("acct", 100, "test").await.unwrap();
    l.grant("other", 50, "test").await.unwrap();
    l.reserve("job-c", "acct", 10, TTL).await.unwrap();
    l.settle("job-c", Settlement::Capture { amount: 4 }, b"")
        .await
        .unwrap();
    l.reserve("job-r", "acct", 10, TTL).await.unwrap();
    l.settle("job-r", Settlement::Release, b"").await.unwrap();
    l.reserve("job-e", "other", 7, Duration::ZERO)
        .await
        .unwrap();
    l.reserve("job-open", "acct", 15, TTL).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(l.expire_overdue().await.unwrap(), 1);
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_ledger_has_no_violations() {
    let empty = TestDb::new().await;
    assert_eq!(
        empty.ledger.check_invariants().await.unwrap(),
        Vec::<String>::new()
    );
    let db = busy_ledger().await;
    assert_eq!(
        db.ledger.check_invariants().await.unwrap(),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_ledgers_name_the_violation() {
    // (what is broken, SQL that breaks it, a line the audit must contain)
    let cases = [
        (
            "granted out of thin air",
            "UPDATE accounts SET granted = granted + 1 WHERE account = 'acct'",
            "account acct: available 81 + held 15 + captured 4 = 100, expected granted 101",
        ),
        (
            "held without a hold",
            "UPDATE accounts SET held = held + 5, available = available - 5
             WHERE account = 'acct'",
            "account acct: held is 20, expected 15 from its open holds",
        ),
        (
            "captured without a hold",
            "UPDATE accounts SET captured = captured + 1, granted = granted + 1
             WHERE account = 'acct'",
            "account acct: captured is 5, expected 4 from its settled holds",
        ),
        (
            "negative balance",
            "ALTER TABLE accounts DROP CONSTRAINT accounts_available_check;
             UPDATE accounts SET available = -1, granted = granted - 82
             WHERE account = 'acct'",
            "account acct: available is -1, expected at least 0",
        ),
        (
            "row changed behind the entries' back",
            "UPDATE accounts SET available = available - 3, captured = captured + 3
             WHERE account = 'acct';
             UPDATE holds SET captured = 7, released = 3 WHERE job_id = 'job-c'",
            "account acct: available is 78, expected 81 from its ledger entries",
        ),
        (
            "hold settled twice",
            "INSERT INTO ledger_entries (account, job_id, kind, amount)
             VALUES ('acct', 'job-c', 'capture', 4)",
            "job job-c: 2 capture entries for 8 credits, expected at most 1",
        ),
        (
            "hold row out of step with its entries",
            "UPDATE holds SET captured = 5, released = 5 WHERE job_id = 'job-c'",
            "hold job-c of account acct: amount 10, state captured, captured 5, released 5; \
             its entries: 1 hold entries for 10, captured 4, released 6",
        ),
        (
            "open hold with a release",
            "UPDATE holds SET released = 1 WHERE job_id = 'job-open'",
            "hold job-open of account acct: amount 15, state held, captured 0, released 1",
        ),
        (
            "entries of an unknown account",
            "INSERT INTO ledger_entries (account, kind, amount) VALUES ('ghost', 'grant', 5)",
            "account ghost: has ledger entries but no account row",
        ),
        (
            "entry of a job that never held",
            "INSERT INTO ledger_entries (account, job_id, kind, amount)
             VALUES ('acct', 'nojob', 'release', 0)",
            "ledger entry 11 of account acct: release of 0 for job nojob, \
             expected a positive amount",
        ),
    ];
    for (what, sql, expected) in cases {
        let db = busy_ledger().await;
        let client = db.ledger.pool.get().await.unwrap();
        client.batch_execute(sql).await.expect(what);
        drop(client);
        let violations = db.ledger.check_invariants().await.unwrap();
        assert!(
            violations.iter().any(|v| v.starts_with(expected)),
            "{what}: expected a line starting {expected:?}, got {violations:#?}"
        );
    }
}

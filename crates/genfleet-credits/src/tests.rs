//! Tests against the real PostgreSQL on loopback.
//!
//! Each test works in its own freshly named schema, dropped (with CASCADE)
//! when the test ends, even when it panics, so parallel runs never see each
//! other. Set `GENFLEET_TEST_DATABASE_URL` to point elsewhere.
//!
//! Submodules: `queries` (operator queries, invariant audit), `parents`
//! (workspace accounts drawing on their organisation's), `model` (a
//! property test against an in-memory model), `stress` (many concurrent
//! tasks on shared accounts).

mod forget;
mod jobs;
mod model;
mod parents;
mod queries;
mod retention;
mod stress;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{CreditsError, Hold, HoldState, Ledger, Settlement};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const TTL: Duration = Duration::from_secs(600);

fn database_url() -> String {
    std::env::var("GENFLEET_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// `credits_test_<pid>_<nanos>_<n>`: unique across processes and within one.
fn unique_schema() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
        % 1_000_000_000_000_000;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("credits_test_{}_{nanos}_{n}", std::process::id())
}

/// A migrated ledger in a schema of its own; drops the schema on drop.
struct TestDb {
    ledger: Ledger,
    schema: String,
}

impl TestDb {
    async fn new() -> TestDb {
        let db = TestDb::unmigrated().await;
        db.ledger.migrate().await.expect("migrate test schema");
        db
    }

    async fn unmigrated() -> TestDb {
        let schema = unique_schema();
        let ledger = Ledger::connect(&database_url(), &schema, 8)
            .await
            .expect("connect to test database");
        TestDb { ledger, schema }
    }

    /// Checks the account invariant and that holds and ledger entries agree
    /// with the account row.
    async fn assert_conserved(&self, account: &str) {
        let client = self.ledger.pool.get().await.expect("pooled connection");
        let row = client
            .query_one(
                "SELECT available, held, captured, granted FROM accounts WHERE account = $1",
                &[&account],
            )
            .await
            .expect("account row");
        let (available, held, captured, granted): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert!(available >= 0, "available {available} is negative");
        assert_eq!(
            available + held + captured,
            granted,
            "available {available} + held {held} + captured {captured} != granted {granted}"
        );

        // The parts of holds taken from this account: its own holds' own
        // parts, and the parent parts of its children's holds.
        let row = client
            .query_one(
                "SELECT COALESCE(SUM(CASE WHEN account = $1 THEN amount - parent_amount
                                          ELSE parent_amount END)
                                 FILTER (WHERE state = 'held'), 0)::bigint,
                        COALESCE(SUM(CASE WHEN account = $1 THEN captured - parent_captured
                                          ELSE parent_captured END), 0)::bigint
                 FROM holds WHERE account = $1 OR parent_account = $1",
                &[&account],
            )
            .await
            .expect("hold sums");
        assert_eq!(row.get::<_, i64>(0), held, "open holds vs accounts.held");
        assert_eq!(row.get::<_, i64>(1), captured, "captured vs accounts");

        let row = client
            .query_one(
                "SELECT COALESCE(SUM(amount) FILTER (WHERE kind = 'grant'), 0)::bigint,
                        COALESCE(SUM(CASE kind WHEN 'hold' THEN amount
                                              WHEN 'grant' THEN 0
                                              ELSE -amount END), 0)::bigint,
                        COALESCE(SUM(amount) FILTER (WHERE kind = 'capture'), 0)::bigint
                 FROM ledger_entries WHERE account = $1",
                &[&account],
            )
            .await
            .expect("ledger sums");
        assert_eq!(row.get::<_, i64>(0), granted, "grant entries vs granted");
        assert_eq!(row.get::<_, i64>(1), held, "hold entries vs held");
        assert_eq!(
            row.get::<_, i64>(2),
            captured,
            "capture entries vs captured"
        );
    }

    /// (account, kind, amount) of the job's entries, in insertion order.
    async fn entries_of(&self, job_id: &str) -> Vec<(String, String, i64)> {
        let client = self.ledger.pool.get().await.expect("pooled connection");
        client
            .query(
                "SELECT account, kind, amount FROM ledger_entries WHERE job_id = $1 ORDER BY id",
                &[&job_id],
            )
            .await
            .expect("ledger entries")
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect()
    }

    async fn entry_kinds(&self, job_id: &str) -> Vec<(String, i64)> {
        let client = self.ledger.pool.get().await.expect("pooled connection");
        client
            .query(
                "SELECT kind, amount FROM ledger_entries WHERE job_id = $1 ORDER BY id",
                &[&job_id],
            )
            .await
            .expect("ledger entries")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.ledger.pool.close();
        let schema = self.schema.clone();
        // Drop cannot await, and the test's runtime may be unwinding, so the
        // cleanup gets a thread and a small runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async move {
                let (client, connection) =
                    tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
                        .await
                        .expect("cleanup connection");
                tokio::spawn(connection);
                client
                    .batch_execute(&format!(
                        "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    ))
                    .await
                    .expect("drop test schema");
            });
        });
        if cleanup.join().is_err() && !std::thread::panicking() {
            panic!("dropping test schema {} failed", self.schema);
        }
    }
}

fn held(job_id: &str, account: &str, amount: i64) -> Hold {
    Hold {
        job_id: job_id.into(),
        account: account.into(),
        amount,
        state: HoldState::Held,
        captured: 0,
        released: 0,
        parent_account: None,
        parent_amount: 0,
        parent_captured: 0,
        parent_released: 0,
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_twice_is_fine() {
    let db = TestDb::new().await;
    db.ledger.migrate().await.unwrap();
    db.ledger.migrate().await.unwrap();
    let client = db.ledger.pool.get().await.unwrap();
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrate_on_a_fresh_schema() {
    let db = TestDb::unmigrated().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        // Separate ledgers (separate pools), as separate workers would be.
        let ledger = Ledger::connect(&database_url(), &db.schema, 1)
            .await
            .unwrap();
        tasks.spawn(async move { ledger.migrate().await });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("migrate task").expect("concurrent migrate");
    }
    db.ledger.grant("acct", 1, "test").await.unwrap();
    db.ledger.ping().await.unwrap();

    // Every migration applied exactly once: one row per version, with its
    // name, and nothing else.
    let client = db.ledger.pool.get().await.unwrap();
    let applied: Vec<(i32, String)> = client
        .query(
            "SELECT version, name FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let known: Vec<(i32, String)> = crate::migrations::MIGRATIONS
        .iter()
        .map(|m| (m.version, m.name.to_string()))
        .collect();
    assert_eq!(applied, known);
    assert_eq!(applied.len(), 7, "{applied:?}");

    // The tables, each once, in this schema.
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = $1 ORDER BY table_name",
            &[&db.schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "accounts",
            "holds",
            "job_attempts",
            "job_cancellations",
            "job_outcomes",
            "job_owners",
            "ledger_entries",
            "pending_source_deletions",
            "provider_submissions",
            "schema_migrations",
        ]
    );

    // Columns, their types and the indexes: the same as one worker
    // migrating alone makes, so no migration's ALTERs went missing or ran
    // twice (a later migration's columns and keys included).
    let alone = TestDb::new().await;
    let shape = async |schema: &str| {
        let columns: Vec<String> = client
            .query(
                "SELECT table_name || '.' || column_name || ' ' || data_type \
                 FROM information_schema.columns WHERE table_schema = $1 \
                 ORDER BY table_name, column_name",
                &[&schema],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let indexes: Vec<String> = client
            .query(
                "SELECT tablename || ' ' || indexname FROM pg_indexes \
                 WHERE schemaname = $1 ORDER BY tablename, indexname",
                &[&schema],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        (columns, indexes)
    };
    let (columns, indexes) = shape(&db.schema).await;
    let reference = shape(&alone.schema).await;
    assert_eq!((columns.clone(), indexes.clone()), reference);
    for column in [
        "accounts.parent_cap bigint",
        "holds.parent_account text",
        "job_cancellations.tenant text",
        "pending_source_deletions.job_id text",
    ] {
        assert!(columns.iter().any(|c| c == column), "{column}: {columns:?}");
    }
    assert!(
        indexes
            .iter()
            .any(|i| i == "job_cancellations job_cancellations_pkey"),
        "{indexes:?}"
    );
}

#[tokio::test]
async fn invalid_requests_are_rejected_before_the_database() {
    for schema in ["", "Upper", "semi;colon", "a-b", "x\"y", &"a".repeat(49)] {
        let err = Ledger::connect(DEFAULT_URL, schema, 1).await.unwrap_err();
        assert!(
            matches!(err, CreditsError::Invalid(_)),
            "{schema:?}: {err:?}"
        );
        assert_eq!(err.code(), "invalid_input");
    }
    let err = Ledger::connect(DEFAULT_URL, "ok", 0).await.unwrap_err();
    assert!(matches!(err, CreditsError::Invalid(_)), "{err:?}");
    let err = Ledger::connect("postgres://[bad", "ok", 1)
        .await
        .unwrap_err();
    assert!(matches!(err, CreditsError::Invalid(_)), "{err:?}");

    // A ledger on an unreachable address: validation errors must come
    // first, and never touch the network.
    let l = Ledger::connect("postgres://postgres@127.0.0.1:1/test", "ok", 1)
        .await
        .unwrap();
    let cases = [
        l.reserve("job", "acct", 0, TTL).await,
        l.reserve("job", "acct", -5, TTL).await,
        l.reserve("", "acct", 5, TTL).await,
        l.reserve("job", "", 5, TTL).await,
        l.reserve("job", "acct", 5, Duration::from_secs(400 * 86_400))
            .await,
    ];
    for result in cases {
        let err = result.unwrap_err();
        assert!(matches!(err, CreditsError::Invalid(_)), "{err:?}");
    }
    for amount in [0, -1] {
        let err = l.grant("acct", amount, "test").await.unwrap_err();
        assert!(matches!(err, CreditsError::Invalid(_)), "{err:?}");
    }
}

#[tokio::test]
async fn unreachable_database_is_retryable() {
    // Port 1 on loopback refuses at once.
    let l = Ledger::connect("postgres://postgres@127.0.0.1:1/test", "ok", 1)
        .await
        .unwrap();
    let err = l.ping().await.unwrap_err();
    assert!(matches!(err, CreditsError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
    let err = l.balance("acct").await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_answers() {
    let db = TestDb::new().await;
    db.ledger.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_count_every_start_of_a_job() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    assert_eq!(l.begin_attempt("job-a").await.unwrap(), 1);
    assert_eq!(l.begin_attempt("job-a").await.unwrap(), 2);
    assert_eq!(l.begin_attempt("job-b").await.unwrap(), 1);
    // Concurrent starts of one job (a duplicate delivery) both count.
    let (x, y) = tokio::join!(l.begin_attempt("job-a"), l.begin_attempt("job-a"));
    let mut both = [x.unwrap(), y.unwrap()];
    both.sort_unstable();
    assert_eq!(both, [3, 4]);
    assert!(matches!(
        l.begin_attempt("").await,
        Err(CreditsError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_submissions_are_recalled_until_forgotten() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    assert_eq!(l.recall_submission("job-1", "fal").await.unwrap(), None);
    l.remember_submission("job-1", "fal", "{\"request_id\":\"a\"}")
        .await
        .unwrap();
    // A newer submission of the same job replaces the older one.
    l.remember_submission("job-1", "fal", "{\"request_id\":\"b\"}")
        .await
        .unwrap();
    assert_eq!(
        l.recall_submission("job-1", "fal")
            .await
            .unwrap()
            .as_deref(),
        Some("{\"request_id\":\"b\"}")
    );
    assert_eq!(
        l.recall_submission("job-1", "replicate").await.unwrap(),
        None
    );
    l.forget_submission("job-1", "fal").await.unwrap();
    l.forget_submission("job-1", "fal").await.unwrap();
    assert_eq!(l.recall_submission("job-1", "fal").await.unwrap(), None);
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

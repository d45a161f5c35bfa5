//! Tests against the real PostgreSQL on loopback.
//!
//! Each test works in its own freshly named schema, dropped (with CASCADE)
//! when the test ends, even when it panics, so parallel runs never see each
//! other. Set `GENFLEET_TEST_DATABASE_URL` to point elsewhere.
//!
//! Submodules: `settle` (one hold from reserve to settlement), `concurrency`
//! (concurrent reserves, settles and sweeps), `migrations`, `connection`
//! (validation, unreachable databases), `attempts` (attempts, provider
//! submissions), `queries` (operator queries, invariant audit), `parents`
//! (workspace accounts drawing on their organisation's), `model` (a
//! property test against an in-memory model), `stress` (many concurrent
//! tasks on shared accounts).

mod attempts;
mod concurrency;
mod connection;
mod forget;
mod jobs;
mod migrations;
mod model;
mod parents;
mod queries;
mod retention;
mod settle;
mod stress;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Hold, HoldState, Ledger};

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

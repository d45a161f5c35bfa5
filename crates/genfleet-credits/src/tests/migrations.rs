//! Schema migrations: repeated and concurrent runs.

use super::{database_url, TestDb};
use crate::Ledger;

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

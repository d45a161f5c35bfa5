//! Hold + capture throughput of the ledger on a real PostgreSQL, with
//! p50/p99 latency of `reserve` and of `settle`.
//!
//! A plain `harness = false` main rather than criterion: the figures wanted
//! are per-call latency percentiles and pairs per second under concurrency,
//! and every `reserve` consumes a fresh job id, which does not fit
//! criterion's "repeat one closure" sampling.
//!
//! Run: `cargo bench -p genfleet-credits --bench ledger`
//! (`GENFLEET_BENCH_DATABASE_URL` overrides the loopback database; `PAIRS`
//! changes the number of reserve+settle pairs per scenario.)
//!
//! Works in a schema of its own, `credits_bench_<pid>`, dropped at the end.

use std::time::{Duration, Instant};

use genfleet_credits::{Ledger, Settlement};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const DEFAULT_PAIRS: usize = 2_000;
const WARMUP_PAIRS: usize = 100;
const POOL_SIZE: usize = 8;
const TTL: Duration = Duration::from_secs(600);

/// Latencies of one scenario.
struct Run {
    name: String,
    pairs: usize,
    elapsed: Duration,
    reserve: Vec<Duration>,
    settle: Vec<Duration>,
}

/// `count` reserve+settle pairs, one after another, on `account`.
async fn pairs(
    ledger: &Ledger,
    prefix: &str,
    account: &str,
    count: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut reserve = Vec::with_capacity(count);
    let mut settle = Vec::with_capacity(count);
    for i in 0..count {
        let job = format!("{prefix}-{i}");
        let t = Instant::now();
        ledger
            .reserve(&job, account, 10, TTL)
            .await
            .expect("reserve");
        reserve.push(t.elapsed());
        let t = Instant::now();
        ledger
            .settle(&job, Settlement::Capture { amount: 7 }, b"ok")
            .await
            .expect("settle");
        settle.push(t.elapsed());
    }
    (reserve, settle)
}

/// Which accounts the tasks of a concurrent scenario reserve on.
#[derive(Clone, Copy)]
enum Accounts {
    /// One plain account each.
    OneEach,
    /// All on one plain account: reserves queue on its row lock.
    Shared,
    /// One workspace each, with no credits of its own, all drawing on one
    /// organisation: every hold locks the workspace and then the org.
    Workspaces,
}

/// `tasks` tasks sharing `total` pairs on the `accounts` given.
async fn concurrent(
    ledger: &Ledger,
    name: &str,
    tasks: usize,
    total: usize,
    accounts: Accounts,
) -> Run {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let ledger = ledger.clone();
        let prefix = format!("{name}-{task}");
        let account = match accounts {
            Accounts::OneEach => format!("acct-{task}"),
            Accounts::Shared => "acct-0".to_owned(),
            Accounts::Workspaces => format!("org/ws-{task}"),
        };
        let count = total / tasks + usize::from(task < total % tasks);
        set.spawn(async move { pairs(&ledger, &prefix, &account, count).await });
    }
    let (mut reserve, mut settle) = (Vec::new(), Vec::new());
    while let Some(result) = set.join_next().await {
        let (r, s) = result.expect("bench task");
        reserve.extend(r);
        settle.extend(s);
    }
    Run {
        name: name.to_owned(),
        pairs: total,
        elapsed: start.elapsed(),
        reserve,
        settle,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn report(run: &mut Run) {
    run.reserve.sort();
    run.settle.sort();
    println!(
        "{:<24} {:>6} {:>9.0} {:>9} {:>9} {:>9} {:>9}",
        run.name,
        run.pairs,
        run.pairs as f64 / run.elapsed.as_secs_f64(),
        ms(percentile(&run.reserve, 0.50)),
        ms(percentile(&run.reserve, 0.99)),
        ms(percentile(&run.settle, 0.50)),
        ms(percentile(&run.settle, 0.99)),
    );
}

async fn drop_schema(url: &str, schema: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("cleanup connection");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .expect("drop bench schema");
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let url =
        std::env::var("GENFLEET_BENCH_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let total: usize = std::env::var("PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_PAIRS);
    let schema = format!("credits_bench_{}", std::process::id());
    let ledger = Ledger::connect(&url, &schema, POOL_SIZE)
        .await
        .expect("connect");
    ledger.migrate().await.expect("migrate");
    for account in 0..8 {
        ledger
            .grant(&format!("acct-{account}"), 1_000_000_000, "bench")
            .await
            .expect("grant");
    }
    ledger
        .grant("org", 1_000_000_000, "bench")
        .await
        .expect("grant");
    for workspace in 0..8 {
        ledger
            .link(&format!("org/ws-{workspace}"), "org", None)
            .await
            .expect("link");
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("settings connection");
    tokio::spawn(connection);
    let setting = |row: tokio_postgres::Row| row.get::<_, String>(0);
    let version = setting(client.query_one("SHOW server_version", &[]).await.unwrap());
    let sync = setting(
        client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .unwrap(),
    );
    drop(client);

    pairs(&ledger, "warmup", "acct-0", WARMUP_PAIRS).await;

    println!(
        "genfleet-credits ledger bench: PostgreSQL {version}, synchronous_commit={sync}, \
         pool {POOL_SIZE}, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("latencies in ms; one pair = reserve (hold) + settle (capture 7 of 10)");
    println!(
        "{:<24} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "scenario", "pairs", "pairs/s", "res p50", "res p99", "set p50", "set p99"
    );

    let start = Instant::now();
    let (reserve, settle) = pairs(&ledger, "seq", "acct-0", total).await;
    report(&mut Run {
        name: "sequential".into(),
        pairs: total,
        elapsed: start.elapsed(),
        reserve,
        settle,
    });
    report(&mut concurrent(&ledger, "8-way-8-accounts", 8, total, Accounts::OneEach).await);
    report(&mut concurrent(&ledger, "8-way-1-account", 8, total, Accounts::Shared).await);
    report(&mut concurrent(&ledger, "8-way-8-ws-1-org", 8, total, Accounts::Workspaces).await);

    drop(ledger);
    drop_schema(&url, &schema).await;
}

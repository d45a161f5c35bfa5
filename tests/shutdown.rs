//! Graceful shutdown of the real worker binary: SIGTERM while jobs are in
//! flight. The worker stops taking jobs, finishes those it holds within the
//! grace period, exits 0, and leaves every other job in its queue: results
//! plus queued jobs always add up to what was enqueued.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use genfleet_credits::Ledger;
use genfleet_proto::v1;
use genfleet_providers::fake_fal::FakeFal;
use support::*;

const JOBS: usize = 40;
const CONCURRENCY: u16 = 4;

/// A result's `finished_at` as a time.
fn finished_at(result: &v1::JobResult) -> Option<SystemTime> {
    let at = result.finished_at.as_ref()?;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(at.seconds).unwrap_or(0),
                u32::try_from(at.nanos).unwrap_or(0),
            ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_jobs_and_loses_none() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-shutdown");
    let root = store_with_photo(&dir.0);
    photo_for(&root, "shop-1");
    let fake = FakeFal::start().await.unwrap();
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    ledger
        .grant("acme/shop-1", 1_000, "shutdown test")
        .await
        .unwrap();

    let (conn, results_queue) = results_queue(&vhost.url()).await;
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "shutdown-publisher")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    for i in 0..JOBS {
        let job = fal_product_job(
            "shop-1",
            "test/ok",
            &format!("slow job {i}"),
            1,
            v1::Priority::Normal,
        );
        publish(&publisher, "remote", &job).await;
    }

    let fal_url = fake.base_url.to_string();
    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &root,
            fal_base_url: &fal_url,
            concurrency: CONCURRENCY,
            grace_seconds: 20,
            http_port: 0,
            // Each job polls fal once before it completes: ~0.8 s a job.
            fal_poll_ms: 800,
        },
    );
    let mut worker = WorkerProcess::start(&config, dir.0.join("worker.log"));
    let port = wait_ready(&mut worker, Duration::from_secs(60)).await;

    // Let a few jobs finish, then ask the worker to stop while every one of
    // its slots runs a job (its own gauge says so), so that the jobs in
    // flight at the signal are several, not a lucky one or none.
    let first = collect_results(&conn, &results_queue, 2, Duration::from_secs(60)).await;
    assert_eq!(first.results.len(), 2, "{}", worker.log_tail());
    until(
        "every slot busy before SIGTERM",
        Duration::from_secs(30),
        async || metric(port, "genfleet_jobs_in_flight ").await == f64::from(CONCURRENCY),
    )
    .await;
    let signalled = Instant::now();
    let signalled_at = SystemTime::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = worker.terminate(Duration::from_secs(30));
        (status, worker)
    })
    .await
    .unwrap();
    let (status, worker) = status;
    let stopped_after = signalled.elapsed();
    let status = status.expect("worker exits within the grace period");
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        worker.log_tail()
    );

    let rest = collect_results(&conn, &results_queue, JOBS, Duration::from_secs(2)).await;
    let finished = first.results.len() + rest.results.len();
    // All 40 jobs are one workspace's: past its share of the worker they
    // were moved to the low lane, so count every lane.
    let queued = queued_in_lanes(&broker, genfleet_broker::JobClass::Remote).await as usize;
    println!(
        "shutdown: {finished} finished ({} read after SIGTERM), {queued} still queued, exited after {:?}",
        rest.results.len(),
        stopped_after
    );
    for (result, _) in first.results.values().chain(rest.results.values()) {
        assert_eq!(result.status, v1::JobStatus::Succeeded as i32, "{result:?}");
    }
    // Only jobs already held when SIGTERM came may finish after it. Judged
    // by each result's finished_at, not by when the test read it: jobs run
    // in lockstep here, so the ones that finished beside the first two
    // results are often read only after the signal.
    let finished_after_signal = first
        .results
        .values()
        .chain(rest.results.values())
        .filter(|(result, _)| finished_at(result).is_some_and(|at| at >= signalled_at))
        .count();
    assert!(
        finished_after_signal <= usize::from(CONCURRENCY) + 1,
        "{finished_after_signal} jobs finished after SIGTERM: the worker kept consuming"
    );
    assert!(
        queued > 0,
        "the test needs jobs left over to prove they stay queued"
    );
    assert_eq!(finished + queued, JOBS, "a job was lost or duplicated");
    // Jobs left in the queue never had credits held.
    let balance = ledger.balance("acme/shop-1").await.unwrap().unwrap();
    assert_eq!(balance.held, 0);
    assert_eq!(balance.captured, finished as i64);

    // The jobs in flight at the signal: those the worker had started (the
    // ledger counts every start, whatever the worker says of itself)
    // without a result finished before it. Each must have finished, not
    // gone back to the queue: succeeded, its credit captured once and
    // nothing released, and started only once. A worker that requeued
    // them (nack) and released their credits passes every check above.
    let results: HashMap<String, &v1::JobResult> = first
        .results
        .values()
        .chain(rest.results.values())
        .map(|(result, _)| (genfleet_proto::canonical_job_id(&result.job_id), result))
        .collect();
    let mut captures: HashMap<String, Vec<i64>> = HashMap::new();
    let mut releases: HashMap<String, i64> = HashMap::new();
    for entry in ledger.statement("acme/shop-1", 1_000).await.unwrap() {
        let Some(job) = entry.job_id else { continue };
        match entry.kind.as_str() {
            "capture" => captures.entry(job).or_default().push(entry.amount),
            "release" | "expire" => *releases.entry(job).or_default() += entry.amount,
            _ => {}
        }
    }
    let starts = job_starts(&schema.name);
    let mut in_flight_at_signal = 0;
    for (job, started) in &starts {
        let result = results.get(job);
        if result.is_some_and(|r| finished_at(r).is_some_and(|at| at < signalled_at)) {
            continue;
        }
        in_flight_at_signal += 1;
        let result = result.unwrap_or_else(|| {
            panic!(
                "job {job} was running at SIGTERM and has no result (requeued?), {} still queued:\n{}",
                queued,
                worker.log_tail()
            )
        });
        assert_eq!(
            result.status,
            v1::JobStatus::Succeeded as i32,
            "job {job} was running at SIGTERM: {result:?}"
        );
        assert_eq!(
            result.credits.unwrap_or_default().captured,
            1,
            "job {job}: {result:?}"
        );
        assert_eq!(
            captures.get(job),
            Some(&vec![1]),
            "job {job} was running at SIGTERM: its credit is not captured once in the ledger"
        );
        assert_eq!(
            releases.get(job),
            None,
            "job {job} was running at SIGTERM: credits released"
        );
        assert_eq!(*started, 1, "job {job} was started again");
    }
    println!("shutdown: {in_flight_at_signal} jobs in flight at SIGTERM, all finished");
    assert!(
        (1..=usize::from(CONCURRENCY)).contains(&in_flight_at_signal),
        "{in_flight_at_signal} jobs in flight at SIGTERM: the test needs some (at most {CONCURRENCY})"
    );
    // And no job was started that has no result: a started job either ran
    // before the signal or was one of those above.
    assert_eq!(starts.len(), finished, "started jobs vs results");
    broker.close().await;
}

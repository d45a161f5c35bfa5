//! Delivery guarantees of the real worker binary against the real broker and
//! ledger: priority lanes and per-workspace fairness, and poison messages
//! (a job that kills its worker on every delivery ends failed, with its
//! credits back and a dead letter, instead of looping or vanishing).

mod support;

use std::time::Duration;

use genfleet_credits::{HoldState, Ledger};
use genfleet_proto::v1;
use genfleet_providers::fake_fal::FakeFal;
use support::*;

fn fal_job(workspace: &str, model: &str, priority: v1::Priority) -> v1::Job {
    fal_product_job(workspace, model, "a bottle on a marble table", 1, priority)
}

struct Setup {
    vhost: Vhost,
    schema: Schema,
    dir: TempDir,
    fake: FakeFal,
    ledger: Ledger,
    broker: genfleet_broker::Broker,
    publisher: genfleet_broker::Publisher,
    results: (lapin::Connection, String),
}

async fn setup(prefix: &str, accounts: &[&str]) -> Setup {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new(prefix);
    let root = store_with_photo(&dir.0);
    let fake = FakeFal::start().await.unwrap();
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    for account in accounts {
        if let Some(("acme", workspace)) = account.split_once('/') {
            photo_for(&root, workspace);
        }
        ledger.grant(account, 1_000, prefix).await.unwrap();
    }
    let results = results_queue(&vhost.url()).await;
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "delivery-test")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    Setup {
        vhost,
        schema,
        dir,
        fake,
        ledger,
        broker,
        publisher,
        results,
    }
}

impl Setup {
    fn config(&self, concurrency: u16, http_port: u16, fal_poll_ms: u64) -> std::path::PathBuf {
        let fal_url = self.fake.base_url.to_string();
        write_config(
            &self.dir.0,
            &WorkerSettings {
                amqp_url: self.vhost.url(),
                schema: &self.schema.name,
                storage_root: &self.dir.0.join("store"),
                fal_base_url: &fal_url,
                concurrency,
                grace_seconds: 20,
                http_port,
                fal_poll_ms,
            },
        )
    }

    async fn publish(&self, job: &v1::Job) {
        let lane = genfleet_worker::lane_of(job.priority);
        let key = genfleet_broker::JobClass::Remote.lane_routing_key(lane);
        publish_job(
            &self.publisher,
            &key,
            &genfleet_proto::encode_json(job),
            Some(&job.job_id),
        )
        .await;
    }

    async fn queued(&self) -> usize {
        queued_in_lanes(&self.broker, genfleet_broker::JobClass::Remote).await as usize
    }
}

/// A 150-job batch of one workspace is queued before another workspace's
/// single job and a third one's high-priority job. Without fairness the
/// single job would finish 151st; with a share of 2 per workspace the batch
/// is moved to the low lane and both other jobs finish among the first few.
/// After SIGTERM, results plus queued jobs add up: moving lost nothing and
/// duplicated nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_batch_does_not_starve_other_workspaces() {
    const BATCH: usize = 150;
    let s = setup(
        "genfleet-fairness",
        &["acme/batch", "acme/single", "acme/vip"],
    )
    .await;
    let batch: Vec<v1::Job> = (0..BATCH)
        .map(|_| fal_job("batch", "test/ok", v1::Priority::Normal))
        .collect();
    for job in &batch {
        s.publish(job).await;
    }
    let single = fal_job("single", "test/ok", v1::Priority::Normal);
    s.publish(&single).await;
    let vip = fal_job("vip", "test/ok", v1::Priority::High);
    s.publish(&vip).await;

    // One fal poll of 300 ms: each job takes about half a second.
    let config = s.config(4, 0, 300);
    let mut worker = WorkerProcess::start_with_env(
        &config,
        s.dir.0.join("worker.log"),
        &[("GENFLEET__WORKER__MAX_IN_FLIGHT_PER_WORKSPACE", "2")],
    );
    let port = wait_ready(&mut worker, Duration::from_secs(60)).await;

    let (conn, queue) = &s.results;
    let first = collect_results(conn, queue, 16, Duration::from_secs(60)).await;
    let position = |id: &str| first.order.iter().position(|j| j == id);
    let single_at = position(&single.job_id);
    let vip_at = position(&vip.job_id);
    println!(
        "fairness: among the first {} results, the single job is #{:?}, the high-priority job #{:?}",
        first.order.len(),
        single_at.map(|p| p + 1),
        vip_at.map(|p| p + 1),
    );
    assert!(
        single_at.is_some_and(|p| p < 12),
        "the single job waited behind the batch: {:?}\n{}",
        single_at,
        worker.log_tail()
    );
    assert!(
        vip_at.is_some_and(|p| p < 8),
        "the high-priority job waited: {vip_at:?}\n{}",
        worker.log_tail()
    );
    let (_, metrics) = http_get(port, "/metrics").await.expect("metrics");
    let demoted: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("genfleet_jobs_demoted_total{class=\"remote\",lane=\"normal\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(demoted > 0, "no job was moved down a lane:\n{metrics}");
    assert!(metrics.contains("genfleet_jobs_started_total{class=\"remote\",lane=\"high\"} 1"));

    let status = tokio::task::spawn_blocking(move || {
        let status = worker.terminate(Duration::from_secs(30));
        (status, worker)
    })
    .await
    .unwrap();
    let (status, worker) = status;
    assert!(
        status.is_some_and(|s| s.success()),
        "worker did not exit cleanly:\n{}",
        worker.log_tail()
    );
    let rest = collect_results(conn, queue, BATCH + 2, Duration::from_secs(3)).await;
    let finished = first.results.len() + rest.results.len();
    let queued = s.queued().await;
    println!("fairness: {demoted} jobs moved down, {finished} finished, {queued} still queued");
    assert_eq!(first.duplicates + rest.duplicates, 0);
    assert_eq!(finished + queued, BATCH + 2, "a job was lost or duplicated");
    for (result, _) in first.results.values().chain(rest.results.values()) {
        assert_eq!(result.status, v1::JobStatus::Succeeded as i32, "{result:?}");
    }
    assert!(s.ledger.check_invariants().await.unwrap().is_empty());
    s.broker.close().await;
}

/// A job that is never finished because its worker dies on every delivery
/// (here: kill -9 while the job waits on a provider that never answers).
/// With `worker.max_starts_per_job` = 4 the first four deliveries start it;
/// the fifth finds four crashed starts in the ledger, so the worker fails it with `internal` instead of
/// running it: its credits are released, its result published, and the
/// message dead-lettered with the reason. Another job in the same queue is
/// unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_every_worker_is_failed_released_and_dead_lettered() {
    let s = setup("genfleet-poison", &["acme/shop"]).await;
    let poison = fal_job("shop", "test/stuck", v1::Priority::Normal);
    s.publish(&poison).await;

    let config = s.config(2, 0, 50);
    let env = [];
    let log = s.dir.0.join("worker.log");
    let mut kills = 0;
    for _ in 0..4 {
        let mut worker = WorkerProcess::start_with_env(&config, log.clone(), &env);
        wait_ready(&mut worker, Duration::from_secs(60)).await;
        // Wait until the job holds its credits: it is past reserve and
        // waiting on the provider, the worst place to die.
        let held = async {
            loop {
                if let Ok(Some(hold)) = s.ledger.hold(&poison.job_id).await {
                    if hold.state == HoldState::Held {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), held)
            .await
            .unwrap_or_else(|_| panic!("job never reserved:\n{}", worker.log_tail()));
        worker.child.kill().unwrap();
        worker.child.wait().unwrap();
        kills += 1;
    }
    let balance = s.ledger.balance("acme/shop").await.unwrap().unwrap();
    assert_eq!(balance.held, 1, "the killed worker's hold is still open");

    // The fifth delivery: given up, not run.
    let mut worker = WorkerProcess::start_with_env(&config, log.clone(), &env);
    wait_ready(&mut worker, Duration::from_secs(60)).await;
    let healthy = fal_job("shop", "test/ok", v1::Priority::Normal);
    s.publish(&healthy).await;
    let (conn, queue) = &s.results;
    let got = collect_results(conn, queue, 2, Duration::from_secs(30)).await;
    let (result, routing_key) = got
        .results
        .get(&poison.job_id)
        .unwrap_or_else(|| panic!("no result for the poison job:\n{}", worker.log_tail()));
    println!("poison: {kills} kills, result {result:?}");
    assert_eq!(result.status, v1::JobStatus::Failed as i32);
    assert_eq!(routing_key, "result.acme.shop.failed");
    let error = result.error.as_ref().unwrap();
    assert_eq!(error.code, "internal");
    assert!(!error.retryable);
    assert!(
        error.message.contains("started 4 times"),
        "{}",
        error.message
    );
    assert_eq!(result.attempts, 4);
    let credits = result.credits.as_ref().unwrap();
    assert_eq!(
        (credits.held, credits.captured, credits.released),
        (1, 0, 1)
    );
    let (healthy_result, _) = &got.results[&healthy.job_id];
    assert_eq!(healthy_result.status, v1::JobStatus::Succeeded as i32);

    let hold = s.ledger.hold(&poison.job_id).await.unwrap().unwrap();
    assert_eq!(hold.state, HoldState::Released);
    let balance = s.ledger.balance("acme/shop").await.unwrap().unwrap();
    assert_eq!(
        (balance.held, balance.captured, balance.available),
        (0, 1, 999)
    );

    let dead = drain_dead_letters(conn).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "internal");
    assert!(dead[0].1.starts_with("delivery_limit: "), "{}", dead[0].1);
    assert_eq!(s.queued().await, 0);
    let status = worker.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", worker.log_tail());
    s.broker.close().await;
}

/// The worker is killed while fal renders the job. The redelivered job
/// resumes the fal request the first delivery recorded (in the ledger's
/// database) instead of submitting and paying for it again, and the
/// customer is charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_job_resumes_its_provider_request_instead_of_resubmitting() {
    let s = setup("genfleet-resume", &["acme/shop"]).await;
    let job = fal_job("shop", "test/ok", v1::Priority::Normal);
    s.publish(&job).await;
    // Two polls 1.5 s apart: the job waits on fal long enough to be killed.
    let config = s.config(2, 0, 1_500);
    let log = s.dir.0.join("worker.log");
    let mut worker = WorkerProcess::start(&config, log.clone());
    wait_ready(&mut worker, Duration::from_secs(60)).await;
    let submitted = async {
        while s.fake.submissions_for("test/ok") == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), submitted)
        .await
        .unwrap_or_else(|_| panic!("never submitted:\n{}", worker.log_tail()));
    // Past the submit, and the record is written right after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.child.kill().unwrap();
    worker.child.wait().unwrap();

    let mut worker = WorkerProcess::start(&config, log.clone());
    wait_ready(&mut worker, Duration::from_secs(60)).await;
    let (conn, queue) = &s.results;
    let got = collect_results(conn, queue, 1, Duration::from_secs(30)).await;
    let (result, _) = got
        .results
        .get(&job.job_id)
        .unwrap_or_else(|| panic!("no result:\n{}", worker.log_tail()));
    assert_eq!(result.status, v1::JobStatus::Succeeded as i32, "{result:?}");
    assert_eq!(
        s.fake.submissions_for("test/ok"),
        1,
        "the redelivered job submitted to fal again:\n{}",
        worker.log_tail()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("resumed the fal request"),
        "{}",
        worker.log_tail()
    );
    let balance = s.ledger.balance("acme/shop").await.unwrap().unwrap();
    assert_eq!(
        (balance.held, balance.captured, balance.available),
        (0, 1, 999)
    );
    let status = worker.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", worker.log_tail());
    s.broker.close().await;
}

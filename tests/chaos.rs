//! Chaos: three real worker processes against a RabbitMQ node of the test's
//! own (so stopping it harms no other test) and the real PostgreSQL, with
//! the fake fal provider. While the jobs run, a random worker is killed with
//! SIGKILL and restarted every ~1.2 s, the broker's application is stopped
//! and started once (`rabbitmqctl stop_app` / `start_app`), and every ledger
//! connection of the workers is terminated once (`pg_terminate_backend`).
//!
//! Afterwards: every job has a terminal result (lost = 0), duplicate result
//! messages exist only as copies with the same `message_id` (the contract's
//! dedupe key; the collector dedupes on it and counts them), no job has more
//! than one capture entry (double charges = 0), every account is conserved
//! and holds nothing, the ledger audit is clean and the queues are empty.
//!
//! CI runs 300 jobs; `GENFLEET_CHAOS_JOBS=2000` runs the full size.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use genfleet_credits::Ledger;
use genfleet_proto::v1;
use genfleet_providers::fake_fal::FakeFal;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use support::rabbit_node::PrivateRabbit;
use support::*;

const WORKERS: usize = 3;
/// Job slots of each worker: a crash interrupts at most this many starts.
const CONCURRENCY: u16 = 8;
/// `worker.max_starts_per_job`, set explicitly (it is also the default):
/// the bound on jobs that may end `internal` follows from it.
const MAX_STARTS_PER_JOB: usize = 4;
const WORKSPACES: usize = 4;
const GRANT: i64 = 100_000;
const RESULTS_QUEUE: &str = "chaos.results";

fn jobs_wanted() -> usize {
    std::env::var("GENFLEET_CHAOS_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
}

/// What the results collector saw, deduplicated by message id.
#[derive(Default)]
struct Seen {
    results: HashMap<String, v1::JobResult>,
    duplicates: usize,
    reconnects: usize,
}

/// Consumes `chaos.results` until told to stop, reconnecting through broker
/// restarts. A result delivered but not yet acked when the broker goes away
/// comes again: that is a duplicate with the same message id.
async fn collect(url: String, seen: Arc<Mutex<Seen>>, stop: tokio_util_like::Stop) {
    while !stop.is_set() {
        let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let consumed = async {
            let channel = conn.create_channel().await?;
            channel
                .basic_qos(200, lapin::options::BasicQosOptions::default())
                .await?;
            let mut consumer = channel
                .basic_consume(
                    RESULTS_QUEUE.into(),
                    "chaos-collector".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            loop {
                let next = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await;
                let delivery = match next {
                    Err(_) if stop.is_set() => return Ok::<(), lapin::Error>(()),
                    Err(_) => continue,
                    Ok(Some(Ok(delivery))) => delivery,
                    Ok(Some(Err(e))) => return Err(e),
                    Ok(None) => return Ok(()),
                };
                let result: v1::JobResult =
                    serde_json::from_slice(&delivery.data).expect("result JSON");
                let message_id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.as_str().to_string());
                assert_eq!(message_id, Some(format!("{}.result", result.job_id)));
                {
                    let mut seen = seen.lock().unwrap();
                    if let Some(earlier) = seen.results.get(&result.job_id) {
                        // The same job must never get two different outcomes.
                        assert_eq!(earlier.status, result.status, "{}", result.job_id);
                        assert_eq!(earlier.outputs, result.outputs, "{}", result.job_id);
                        seen.duplicates += 1;
                    } else {
                        seen.results.insert(result.job_id.clone(), result);
                    }
                }
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
        }
        .await;
        let _ = conn.close(200, "collector done".into()).await;
        if consumed.is_err() {
            seen.lock().unwrap().reconnects += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Jobs waiting in the remote lanes now (0 if the broker cannot be reached).
async fn queued_jobs(amqp_url: &str) -> u32 {
    let Ok(broker) = genfleet_broker::Broker::connect(amqp_url, "chaos-depth").await else {
        return 0;
    };
    let queued = queued_in_lanes(&broker, genfleet_broker::JobClass::Remote).await;
    broker.close().await;
    queued
}

/// xorshift64: reproducible choices without another dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A tiny stop flag shared by the collector and the test.
mod tokio_util_like {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[derive(Clone, Default)]
    pub struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub fn set(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }
}

fn small_jpeg(path: &Path) {
    let image = image::RgbImage::from_fn(256, 256, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    });
    image.save(path).expect("test image written");
}

/// Terminates every ledger connection of the workers (they all connect with
/// `application_name`), like a database failover would.
fn drop_database_connections(application_name: &str) -> usize {
    let output = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-tAc",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = '{application_name}'"
            ),
        ])
        .output()
        .expect("psql runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

struct Fleet {
    config: PathBuf,
    dir: PathBuf,
    workers: Vec<Option<WorkerProcess>>,
    starts: Vec<usize>,
}

impl Fleet {
    /// The configuration's `http_port` is 0: each start binds a port of
    /// the system's choosing and logs it (see [`last_listening_port`]), so
    /// no restart can find its port taken.
    fn env() -> Vec<(String, String)> {
        vec![
            (
                "GENFLEET__BROKER__RECONNECT_MAX_DELAY_SECONDS".into(),
                "1".into(),
            ),
            (
                "GENFLEET__WORKER__MAX_STARTS_PER_JOB".into(),
                MAX_STARTS_PER_JOB.to_string(),
            ),
            // Short-lived holds would be expired by the sweeper while a job
            // waits in a retry queue; the default hour keeps them.
        ]
    }

    fn start(&mut self, i: usize) {
        self.starts[i] += 1;
        let env = Fleet::env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let log = self.log(i);
        self.workers[i] = Some(WorkerProcess::start_with_env(&self.config, log, &env));
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut worker) = self.workers[i].take() {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }

    /// Every worker's log, without the terminal colour codes.
    fn logs(&self) -> String {
        let raw = (0..self.workers.len())
            .map(|i| std::fs::read_to_string(self.log(i)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        without_colours(&raw)
    }

    /// Worker `i`'s log, which its restarts append to.
    fn log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("worker-{i}.log"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_killed_workers_a_broker_restart_and_a_database_drop() {
    let jobs_total = jobs_wanted();
    let started = Instant::now();
    let rabbit = tokio::task::spawn_blocking(PrivateRabbit::start)
        .await
        .unwrap();
    let rabbit = Arc::new(Mutex::new(rabbit));
    let amqp_url = rabbit.lock().unwrap().amqp_url();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-chaos");
    let root = dir.0.join("store");
    std::fs::create_dir_all(root.join("uploads")).unwrap();
    small_jpeg(&root.join("uploads/photo.jpg"));
    for w in 0..WORKSPACES {
        photo_for(&root, &format!("ws{w}"));
    }
    let fake = FakeFal::start().await.unwrap();
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    let accounts: Vec<String> = (0..WORKSPACES).map(|w| format!("acme/ws{w}")).collect();
    for account in &accounts {
        ledger.grant(account, GRANT, "chaos").await.unwrap();
    }

    // Topology and a durable results queue before anything is published.
    let broker = genfleet_broker::Broker::connect(&amqp_url, "chaos-setup")
        .await
        .unwrap();
    broker
        .declare(&genfleet_broker::Topology::default())
        .await
        .unwrap();
    {
        let conn = Connection::connect(&amqp_url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .queue_declare(
                RESULTS_QUEUE.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                RESULTS_QUEUE.into(),
                genfleet_broker::RESULTS_EXCHANGE.into(),
                "result.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = conn.close(200, "setup".into()).await;
    }

    // The jobs: fal product photos over four workspaces, a tenth of them
    // high priority, each holding 1 to 3 credits.
    let publisher = broker.publisher().await.unwrap();
    let mut rng = Rng(0xc4a0_5eed);
    let mut expected: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for i in 0..jobs_total {
        let workspace = rng.below(WORKSPACES);
        let amount = 1 + rng.below(3) as i64;
        let priority = if rng.below(10) == 0 {
            v1::Priority::High
        } else {
            v1::Priority::Normal
        };
        let job = fal_product_job(
            &format!("ws{workspace}"),
            "test/ok",
            &format!("chaos job {i}"),
            amount,
            priority,
        );
        let key = genfleet_broker::JobClass::Remote
            .lane_routing_key(genfleet_worker::lane_of(job.priority));
        publish_job(
            &publisher,
            &key,
            &genfleet_proto::encode_json(&job),
            Some(&job.job_id),
        )
        .await;
        expected.insert(job.job_id.clone(), (accounts[workspace].clone(), amount));
    }
    broker.close().await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = tokio_util_like::Stop::default();
    let collector = tokio::spawn(collect(amqp_url.clone(), seen.clone(), stop.clone()));

    let application_name = unique("chaos");
    let fal_url = fake.base_url.to_string();
    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: amqp_url.clone(),
            schema: &schema.name,
            storage_root: &root,
            fal_base_url: &fal_url,
            concurrency: CONCURRENCY,
            grace_seconds: 10,
            http_port: 0,
            // One 300 ms poll per job: jobs last long enough to be killed.
            fal_poll_ms: 300,
        },
    );
    let toml = std::fs::read_to_string(&config).unwrap().replace(
        &format!("url = \"{PG_URL}\""),
        &format!("url = \"{PG_URL}?application_name={application_name}\""),
    );
    std::fs::write(&config, toml).unwrap();
    let mut fleet = Fleet {
        config,
        dir: dir.0.clone(),
        workers: (0..WORKERS).map(|_| None).collect(),
        starts: vec![0; WORKERS],
    };
    for i in 0..WORKERS {
        fleet.start(i);
    }

    // The broker and database outages run in their own task, 3 s into the
    // run (timed, not counted from collected results: the collector is a
    // consumer too and may lag), so that workers keep being killed meanwhile
    // and both outages land while jobs are still queued.
    let within = Duration::from_secs(60 + jobs_total as u64 / 10);
    let chaos_started = Instant::now();
    let outages = {
        let rabbit = rabbit.clone();
        let logs: Vec<PathBuf> = (0..WORKERS).map(|i| fleet.log(i)).collect();
        let application_name = application_name.clone();
        let amqp_url = amqp_url.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let queued_at_restart = queued_jobs(&amqp_url).await;
            let node = rabbit.clone();
            tokio::task::spawn_blocking(move || node.lock().unwrap().stop_app())
                .await
                .unwrap();
            // While the broker is down, /readyz of a live worker says so.
            let mut readyz_saw_outage = false;
            let until = Instant::now() + Duration::from_secs(5);
            while !readyz_saw_outage && Instant::now() < until {
                // Each worker's latest start: a port of a killed one
                // answers nothing.
                for log in &logs {
                    let Some(port) = last_listening_port(log) else {
                        continue;
                    };
                    if let Some((503, _)) = http_get(port, "/readyz").await {
                        readyz_saw_outage = true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let node = rabbit.clone();
            tokio::task::spawn_blocking(move || node.lock().unwrap().start_app())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let dropped = drop_database_connections(&application_name);
            let queued_at_drop = queued_jobs(&amqp_url).await;
            (
                readyz_saw_outage,
                queued_at_restart,
                dropped,
                queued_at_drop,
            )
        })
    };
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_millis(1200);
    loop {
        let done = seen.lock().unwrap().results.len();
        if (done >= jobs_total && outages.is_finished()) || chaos_started.elapsed() > within {
            break;
        }
        if Instant::now() >= next_kill && done < jobs_total {
            let victim = rng.below(WORKERS);
            fleet.kill(victim);
            kills += 1;
            fleet.start(victim);
            next_kill = Instant::now() + Duration::from_millis(1200);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (readyz_saw_outage, queued_at_restart, db_connections_dropped, queued_at_drop) =
        outages.await.expect("outages ran");
    let chaos_time = chaos_started.elapsed();

    // Stop the fleet gracefully and let the collector take what is left.
    for i in 0..WORKERS {
        if let Some(mut worker) = fleet.workers[i].take() {
            let status =
                tokio::task::spawn_blocking(move || worker.terminate(Duration::from_secs(30)))
                    .await
                    .unwrap();
            assert!(
                status.is_some_and(|s| s.success()),
                "worker {i} did not stop cleanly"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.set();
    collector.await.unwrap();
    let seen = Arc::try_unwrap(seen)
        .ok()
        .expect("collector finished")
        .into_inner()
        .unwrap();
    let logs = fleet.logs();

    // Lost: a job without any terminal result.
    let lost: Vec<&String> = expected
        .keys()
        .filter(|id| !seen.results.contains_key(*id))
        .collect();
    // Every job succeeded, except the few the poison limit may have failed
    // because they were interrupted on every start: those failed with
    // `internal`, their credits went back, and the ledger counted their
    // starts (checked below, with how many there may be).
    let mut captured_by_account: HashMap<String, i64> = HashMap::new();
    let mut gave_up = 0;
    let mut gave_up_early = Vec::new();
    let starts = job_starts(&schema.name);
    for (id, (account, amount)) in &expected {
        let Some(result) = seen.results.get(id) else {
            continue;
        };
        let credits = result.credits.unwrap_or_default();
        if result.status == v1::JobStatus::Succeeded as i32 {
            assert_eq!(credits.captured, *amount, "{result:?}");
            assert_eq!(result.outputs.len(), 1, "{result:?}");
            *captured_by_account.entry(account.clone()).or_default() += amount;
        } else {
            let code = result.error.as_ref().map(|e| e.code.as_str());
            assert_eq!(code, Some("internal"), "{result:?}");
            assert_eq!(credits.captured, 0, "{result:?}");
            gave_up += 1;
            // Given up by the poison limit: `max_starts_per_job` starts
            // that never finished, then the start that gave up. Fewer
            // starts mean the worker gave up on a job it should have run.
            let started = starts
                .get(&genfleet_proto::canonical_job_id(id))
                .copied()
                .unwrap_or(0) as usize;
            if started < MAX_STARTS_PER_JOB + 1 {
                gave_up_early.push((id.clone(), started));
            }
        }
    }
    // How many jobs may legitimately end `internal`. Every job here is a
    // plain `test/ok` job (no poison job that crashes the worker by
    // itself), so a job is given up only when `MAX_STARTS_PER_JOB` of its
    // starts were interrupted: starts that ended in a retry queue (ledger
    // outage) or a park are subtracted by the worker, they do not count.
    // What interrupts a start here, and how many at once:
    // - each SIGKILL: the victim's running jobs, at most its CONCURRENCY
    //   slots (deliveries waiting in its buffer were never started);
    // - the broker restart: every worker's running jobs (their channel is
    //   gone, the run is aborted), at most WORKERS * CONCURRENCY;
    // - the database drop: a failed ledger call sends the job through a
    //   retry queue, which is not a crash, but count it like the broker
    //   restart to stay on the safe side.
    // So at most CONCURRENCY * (kills + 2 * WORKERS) interrupted starts,
    // and a given-up job used MAX_STARTS_PER_JOB of them. (The broker's
    // delivery limit, 20, would need one message returned 19 times from
    // dead workers' buffers; not plausible in one run, and such a job
    // would also fail the start count check above.) In practice the
    // figure is 0 or 1; a worker that gives up after the first crash
    // ends dozens of jobs `internal` per run.
    let may_give_up = usize::from(CONCURRENCY) * (kills + 2 * WORKERS) / MAX_STARTS_PER_JOB;

    // Double charges: more than one capture entry for one job.
    let mut captures_per_job: HashMap<String, usize> = HashMap::new();
    for account in &accounts {
        let balance = ledger.balance(account).await.unwrap().unwrap();
        assert_eq!(balance.held, 0, "{account}: credits still held");
        assert_eq!(
            balance.available + balance.held + balance.captured,
            GRANT,
            "{account}: not conserved"
        );
        assert_eq!(
            balance.captured,
            captured_by_account.get(account).copied().unwrap_or(0),
            "{account}: captured differs from the succeeded jobs' credits"
        );
        for entry in ledger.statement(account, 1_000_000).await.unwrap() {
            if entry.kind == "capture" {
                if let Some(job) = entry.job_id {
                    *captures_per_job.entry(job).or_default() += 1;
                }
            }
        }
    }
    let double_charges = captures_per_job.values().filter(|n| **n > 1).count();
    let violations = ledger.check_invariants().await.unwrap();

    // Redeliveries, as the workers logged them.
    let redelivered_jobs: std::collections::HashSet<&str> = logs
        .lines()
        .filter(|l| l.contains("redelivered=true"))
        .filter_map(|l| {
            let start = l.find("job_id=")? + "job_id=".len();
            l.get(start..start + 26)
        })
        .collect();
    let retried_after_infra_failure = logs.matches("job sent to a retry queue").count();
    let republished = logs
        .matches("job already settled, republishing its stored result")
        .count();

    let broker = genfleet_broker::Broker::connect(&amqp_url, "chaos-check")
        .await
        .unwrap();
    let queued = queued_in_lanes(&broker, genfleet_broker::JobClass::Remote).await;
    let dead = broker
        .queue_depth(genfleet_broker::DEAD_QUEUE)
        .await
        .unwrap();
    broker.close().await;

    println!(
        "chaos: jobs {jobs_total}, results {}, lost {}, double charges {double_charges}, \
         duplicate results {} (same message_id, deduped), gave up {gave_up} (at most {may_give_up}), \
         kills {kills}, worker starts {}, broker restart with {queued_at_restart} jobs queued, \
         {db_connections_dropped} database connections dropped with {queued_at_drop} jobs queued, \
         redelivered jobs {}, republished stored results {republished}, \
         retry-queue requeues {retried_after_infra_failure}, collector reconnects {}, \
         readyz saw the outage {readyz_saw_outage}, fal submissions {} for {jobs_total} jobs, \
         chaos phase {:.1} s, whole test {:.1} s",
        seen.results.len(),
        lost.len(),
        seen.duplicates,
        fleet.starts.iter().sum::<usize>(),
        redelivered_jobs.len(),
        seen.reconnects,
        fake.submissions(),
        chaos_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    let tail: String = logs
        .lines()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        lost.is_empty(),
        "{} jobs lost, e.g. {:?}\n{tail}",
        lost.len(),
        lost.first()
    );
    assert_eq!(double_charges, 0);
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(queued, 0, "jobs left in the queues");
    assert_eq!(
        dead as usize, gave_up,
        "dead letters other than given-up jobs"
    );
    assert!(
        gave_up_early.is_empty(),
        "jobs given up with fewer than {} starts (job, starts): {gave_up_early:?}",
        MAX_STARTS_PER_JOB + 1
    );
    assert!(
        gave_up <= may_give_up,
        "{gave_up} jobs ended `internal`; {kills} kills and the two outages explain at most {may_give_up}"
    );
    assert!(
        kills >= 3,
        "the chaos phase was too short to kill anyone: {kills}"
    );
    assert!(
        readyz_saw_outage,
        "no worker reported not-ready while the broker was down"
    );
    assert!(
        queued_at_restart > 0,
        "the broker restart came after the last job"
    );
    assert!(
        db_connections_dropped > 0,
        "no worker held a ledger connection"
    );
    assert!(
        !redelivered_jobs.is_empty(),
        "no job was redelivered: the chaos did not hit a job in flight"
    );
    drop(fake);
    drop(rabbit);
}

//! Long renders and cancellation with the real worker binary, broker,
//! ledger and fake fal:
//! - a video job is submitted once, parked in a retry queue while fal
//!   renders (no worker slot held), survives the death of the worker that
//!   parked it, and finishes on another worker;
//! - a cancel request reaches fal's cancel for a parked job and ends it
//!   `cancelled` with its credits released, and a job cancelled while still
//!   queued never reaches the provider.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use genfleet_credits::Ledger;
use genfleet_proto::v1;
use genfleet_providers::fake_fal::FakeFal;
use support::*;

struct Setup {
    vhost: Vhost,
    schema: Schema,
    dir: TempDir,
    fake: FakeFal,
    ledger: Ledger,
    publisher: genfleet_broker::Publisher,
    _broker: genfleet_broker::Broker,
    results: (lapin::Connection, String),
}

async fn setup(prefix: &str) -> Setup {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new(prefix);
    let root = store_with_photo(&dir.0);
    photo_for(&root, "video");
    let fake = FakeFal::start().await.unwrap();
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    ledger.grant("acme/video", 100, prefix).await.unwrap();
    let results = results_queue(&vhost.url()).await;
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "parking-test")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    Setup {
        vhost,
        schema,
        dir,
        fake,
        ledger,
        publisher,
        _broker: broker,
        results,
    }
}

impl Setup {
    /// Worker config: fal polled every 300 ms in-slot, parked jobs looked
    /// at every 5 s (the shortest retry queue).
    fn config(&self, http_port: u16) -> PathBuf {
        self.config_waiting(http_port, 120)
    }

    fn config_waiting(&self, http_port: u16, max_wait_seconds: u64) -> PathBuf {
        let fal_url = self.fake.base_url.to_string();
        let path = write_config(
            &self.dir.0,
            &WorkerSettings {
                amqp_url: self.vhost.url(),
                schema: &self.schema.name,
                storage_root: &self.dir.0.join("store"),
                fal_base_url: &fal_url,
                concurrency: 2,
                grace_seconds: 10,
                http_port,
                fal_poll_ms: 300,
            },
        );
        let mut toml = std::fs::read_to_string(&path).unwrap();
        toml.push_str(&format!(
            "\n[providers.park]\npoll_delays_seconds = [5]\nmax_wait_seconds = {max_wait_seconds}\n"
        ));
        std::fs::write(&path, toml).unwrap();
        path
    }

    fn video_job(&self, model: &str, credits: i64) -> v1::Job {
        let mut job = fal_product_job(
            "video",
            model,
            "the bottle turns slowly",
            credits,
            v1::Priority::Normal,
        );
        job.kind = v1::JobKind::ImageToVideo as i32;
        job
    }

    async fn publish(&self, job: &v1::Job) {
        publish(&self.publisher, "remote", job).await;
    }

    /// `genfleet cancel <job_id>` as a separate process, as an operator or
    /// a platform script would run it.
    fn cancel(&self, job_id: &str, config: &PathBuf) {
        let out = Command::new(env!("CARGO_BIN_EXE_genfleet"))
            .args(["--config"])
            .arg(config)
            .args([
                "cancel",
                job_id,
                "--tenant",
                "acme/video",
                "--reason",
                "customer closed the tab",
            ])
            .output()
            .expect("genfleet cancel runs");
        assert!(
            out.status.success(),
            "genfleet cancel failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A video job is submitted to fal once, then parked; the worker that
/// parked it is killed (-9) while fal renders, and a second worker picks
/// the poll message up, finds the render finished and completes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_render_holds_no_slot_and_finishes_on_another_worker() {
    let s = setup("genfleet-parking").await;
    let job = s.video_job("test/video", 3);
    s.publish(&job).await;
    let config = s.config(0);
    let log = s.dir.0.join("worker.log");

    let mut first = WorkerProcess::start(&config, log.clone());
    let port = wait_ready(&mut first, Duration::from_secs(60)).await;
    until("the job to park", Duration::from_secs(30), async || {
        metric(port, "genfleet_jobs_parked_total{provider=\"fal\"}").await >= 1.0
    })
    .await;
    // Parked: submitted once, credits held, and no job holds a slot.
    assert_eq!(s.fake.submissions_for("test/video"), 1);
    assert_eq!(metric(port, "genfleet_jobs_in_flight").await, 0.0);
    let balance = s.ledger.balance("acme/video").await.unwrap().unwrap();
    assert_eq!((balance.held, balance.captured), (3, 0));
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let mut second = WorkerProcess::start(&config, log.clone());
    wait_ready(&mut second, Duration::from_secs(60)).await;
    let (conn, queue) = &s.results;
    let got = collect_results(conn, queue, 1, Duration::from_secs(40)).await;
    let (result, _) = got
        .results
        .get(&job.job_id)
        .unwrap_or_else(|| panic!("no result:\n{}", second.log_tail()));
    println!("parked job: {result:?}");
    assert_eq!(result.status, v1::JobStatus::Succeeded as i32, "{result:?}");
    assert_eq!(result.provider, "fal");
    assert_eq!(result.outputs.len(), 1);
    assert_eq!(result.outputs[0].content_type, "video/mp4");
    assert_eq!(
        s.fake.submissions_for("test/video"),
        1,
        "the parked job was submitted again:\n{}",
        second.log_tail()
    );
    let balance = s.ledger.balance("acme/video").await.unwrap().unwrap();
    assert_eq!(
        (balance.held, balance.captured, balance.available),
        (0, 3, 97)
    );
    assert!(s.ledger.check_invariants().await.unwrap().is_empty());
    let status = second.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{}", second.log_tail());
}

/// A parked job whose render never finishes is cancelled by job id: fal's
/// cancel is called, and the job ends `cancelled`, nothing charged. A job
/// whose cancel request is queued beside it ends `cancelled` too, and
/// whatever the order it is handled in, it is never charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_reaches_the_provider_and_releases_the_credits() {
    let s = setup("genfleet-cancel").await;
    let config = s.config(0);
    let log = s.dir.0.join("worker.log");
    let stuck = s.video_job("test/stuck", 5);
    s.publish(&stuck).await;

    let mut worker = WorkerProcess::start(&config, log.clone());
    let port = wait_ready(&mut worker, Duration::from_secs(60)).await;
    until(
        "the stuck job to park",
        Duration::from_secs(30),
        async || metric(port, "genfleet_jobs_parked_total{provider=\"fal\"}").await >= 1.0,
    )
    .await;
    assert_eq!(s.fake.cancellations(), 0);
    s.cancel(&stuck.job_id, &config);
    // The cancel request reaches fal at once, not at the job's next look.
    until("fal's cancel", Duration::from_secs(3), async || {
        s.fake.cancellations() >= 1
    })
    .await;

    let queued = s.video_job("test/video", 2);
    s.cancel(&queued.job_id, &config);
    s.publish(&queued).await;

    let (conn, queue) = &s.results;
    let got = collect_results(conn, queue, 2, Duration::from_secs(30)).await;
    for job in [&stuck, &queued] {
        let (result, routing_key) = got
            .results
            .get(&job.job_id)
            .unwrap_or_else(|| panic!("no result for {}:\n{}", job.job_id, worker.log_tail()));
        println!("cancelled job: {result:?}");
        assert_eq!(result.status, v1::JobStatus::Cancelled as i32, "{result:?}");
        assert_eq!(routing_key, "result.acme.video.cancelled");
        let error = result.error.as_ref().unwrap();
        assert_eq!(error.code, "cancelled");
        assert!(!error.retryable);
        assert!(
            error.message.contains("customer closed the tab"),
            "{}",
            error.message
        );
        let credits = result.credits.as_ref().unwrap();
        assert_eq!(credits.captured, 0, "{result:?}");
        assert_eq!(credits.held, credits.released, "{result:?}");
    }
    // The job cancelled while queued never reached fal: no submit for its
    // model, one submit in all (the stuck job's). (fal's cancels, counted
    // for known requests only, are the stuck job's request's.)
    assert_eq!(s.fake.submissions_for("test/video"), 0);
    assert_eq!(s.fake.submissions(), 1);
    let balance = s.ledger.balance("acme/video").await.unwrap().unwrap();
    assert_eq!(
        (balance.held, balance.captured, balance.available),
        (0, 0, 100)
    );
    assert!(s.ledger.check_invariants().await.unwrap().is_empty());
    assert_eq!(
        metric(port, "genfleet_cancel_requests_total{outcome=\"recorded\"}").await,
        2.0
    );
    let status = worker.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{}", worker.log_tail());
}

/// A parked render that never finishes: once the parked job has waited
/// `providers.park.max_wait_seconds`, its next look cancels the fal request
/// and the job ends expired (`deadline_exceeded`), nothing charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_stuck_past_its_wait_is_cancelled_and_expires() {
    let s = setup("genfleet-stuck").await;
    let config = s.config_waiting(0, 4);
    let stuck = s.video_job("test/stuck", 4);
    s.publish(&stuck).await;
    let mut worker = WorkerProcess::start(&config, s.dir.0.join("worker.log"));
    wait_ready(&mut worker, Duration::from_secs(60)).await;
    let (conn, queue) = &s.results;
    let got = collect_results(conn, queue, 1, Duration::from_secs(30)).await;
    let (result, routing_key) = got
        .results
        .get(&stuck.job_id)
        .unwrap_or_else(|| panic!("no result:\n{}", worker.log_tail()));
    println!("stuck job: {result:?}");
    assert_eq!(result.status, v1::JobStatus::Expired as i32, "{result:?}");
    assert_eq!(routing_key, "result.acme.video.expired");
    let error = result.error.as_ref().unwrap();
    assert_eq!(error.code, "deadline_exceeded");
    let credits = result.credits.as_ref().unwrap();
    assert_eq!(
        (credits.held, credits.captured, credits.released),
        (4, 0, 4)
    );
    assert_eq!(s.fake.submissions_for("test/stuck"), 1);
    assert_eq!(
        s.fake.cancellations(),
        1,
        "the stuck request was not cancelled"
    );
    let balance = s.ledger.balance("acme/video").await.unwrap().unwrap();
    assert_eq!((balance.held, balance.available), (0, 100));
    let status = worker.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{}", worker.log_tail());
}

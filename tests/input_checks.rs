//! End to end: what the worker checks in an input before it holds credits,
//! with the real `genfleet worker` binary, RabbitMQ and PostgreSQL.
//!
//! - The malware scan, against a private clamd on the committed EICAR
//!   database: an infected input ends the job `malware` without a hold,
//!   clean jobs in the same run succeed, and while clamd is down jobs go
//!   back to the queue (never run unscanned, never failed) and finish once
//!   it is back.
//! - Input limits per job class: the same image passes on one class's
//!   queue and is `too_large` on another whose class has a smaller limit.

mod support;

use std::time::{Duration, Instant};

use genfleet_credits::Ledger;
use genfleet_proto::v1;
use genfleet_scan::testing::{PrivateClamd, EICAR, EICAR_SIGNATURE};
use support::*;

/// A local batch edit (resize to 512 px) of `acme/shop-1` on `inputs`
/// (keys under `uploads/acme/shop-1/`), holding `credits`.
fn local_job(inputs: &[&str], credits: i64) -> v1::Job {
    let uris: Vec<String> = inputs
        .iter()
        .map(|key| format!("s3://genfleet/uploads/acme/shop-1/{key}"))
        .collect();
    local_edit_job("acme", "shop-1", &uris, 512, credits)
}

/// A worker on its own vhost and schema with `extra` TOML appended to the
/// configuration of `support::write_config`.
struct Setup {
    vhost: Vhost,
    /// Dropped with the setup: the schema goes too.
    _schema: Schema,
    dir: TempDir,
    ledger: Ledger,
    config: std::path::PathBuf,
}

async fn setup(prefix: &str, extra: &str) -> Setup {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new(prefix);
    let root = store_with_photo(&dir.0);
    photo_for(&root, "shop-1");
    std::fs::copy(
        repo_path("tests/fixtures/hostile/eicar.jpg"),
        root.join("uploads/acme/shop-1/eicar.jpg"),
    )
    .unwrap();
    // A valid JPEG with EICAR after its end: it would decode and succeed.
    let mut polyglot = std::fs::read(root.join("uploads/photo.jpg")).unwrap();
    polyglot.extend_from_slice(EICAR);
    std::fs::write(root.join("uploads/acme/shop-1/polyglot.jpg"), polyglot).unwrap();

    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    ledger.grant("acme/shop-1", 1_000, "e2e").await.unwrap();

    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &root,
            // No job here calls fal.
            fal_base_url: "http://127.0.0.1:9/",
            concurrency: 4,
            grace_seconds: 5,
            http_port: 0,
            fal_poll_ms: 50,
        },
    );
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(extra);
    std::fs::write(&config, toml).unwrap();
    Setup {
        vhost,
        _schema: schema,
        dir,
        ledger,
        config,
    }
}

async fn publish_all(url: &str, jobs: &[(&v1::Job, &str)]) {
    let broker = genfleet_broker::Broker::connect(url, "e2e-publisher")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    for (job, class) in jobs {
        let body = genfleet_proto::encode_json(*job);
        publish_job(&publisher, class, &body, Some(&job.job_id)).await;
    }
    broker.close().await;
}

fn result_of<'a>(collected: &'a Collected, job: &v1::Job) -> &'a v1::JobResult {
    &collected
        .results
        .get(&job.job_id)
        .unwrap_or_else(|| panic!("no result for job {}", job.job_id))
        .0
}

fn credits(result: &v1::JobResult) -> (i64, i64, i64) {
    let c = result.credits.unwrap_or_default();
    (c.held, c.captured, c.released)
}

/// The value of one sample line of the Prometheus text, 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infected_inputs_end_as_malware_without_a_hold_and_clamd_outages_requeue() {
    let mut clamd = PrivateClamd::start();
    let s = setup(
        "genfleet-scan-e2e",
        &format!(
            "\n[scanner]\nenabled = true\naddress = \"{}\"\ntimeout_seconds = 10\n",
            clamd.unix_address()
        ),
    )
    .await;
    let (conn, queue) = results_queue(&s.vhost.url()).await;
    let mut worker = WorkerProcess::start(&s.config, s.dir.0.join("worker.log"));
    // /readyz asks clamd too.
    let http_port = wait_ready(&mut worker, Duration::from_secs(30)).await;

    let eicar = local_job(&["eicar.jpg"], 5);
    let polyglot = local_job(&["photo.jpg", "polyglot.jpg"], 5);
    let clean = local_job(&["photo.jpg"], 5);
    publish_all(
        &s.vhost.url(),
        &[(&eicar, "cpu"), (&polyglot, "cpu"), (&clean, "cpu")],
    )
    .await;
    let collected = collect_results(&conn, &queue, 3, Duration::from_secs(20)).await;
    assert_eq!(collected.results.len(), 3, "{}", worker.log_tail());

    for (job, index) in [(&eicar, 0), (&polyglot, 1)] {
        let result = result_of(&collected, job);
        assert_eq!(result.status, v1::JobStatus::Failed as i32, "{result:?}");
        let error = result.error.clone().unwrap();
        assert_eq!(error.code, "malware");
        assert_eq!(
            error.message,
            format!("inputs[{index}]: malware found by the scanner: {EICAR_SIGNATURE}")
        );
        assert!(!error.retryable);
        // Scanned before the reservation: credits never held.
        assert_eq!(credits(result), (0, 0, 0));
        assert!(s.ledger.hold(&job.job_id).await.unwrap().is_none());
        assert!(result.outputs.is_empty());
    }
    let result = result_of(&collected, &clean);
    assert_eq!(result.status, v1::JobStatus::Succeeded as i32, "{result:?}");
    assert_eq!(credits(result), (5, 5, 0));

    // clamd goes down: the worker is not ready, and a job that arrives is
    // neither run unscanned nor failed but sent to a retry queue.
    clamd.stop();
    let waiting = local_job(&["photo.jpg"], 5);
    publish_all(&s.vhost.url(), &[(&waiting, "cpu")]).await;
    let started = Instant::now();
    loop {
        let (_, metrics) = http_get(http_port, "/metrics").await.unwrap();
        if sample(
            &metrics,
            "genfleet_requeues_total{reason=\"scanner_unavailable\"}",
        ) >= 1.0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no requeue:\n{}",
            worker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = http_get(http_port, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("clamd"), "{body}");
    assert!(s.ledger.hold(&waiting.job_id).await.unwrap().is_none());

    // Back up: the job returns from the retry queue (5 s) and succeeds.
    clamd.restart();
    let collected = collect_results(&conn, &queue, 1, Duration::from_secs(20)).await;
    let result = result_of(&collected, &waiting);
    assert_eq!(result.status, v1::JobStatus::Succeeded as i32, "{result:?}");
    assert_eq!(credits(result), (5, 5, 0));
    assert_eq!(http_get(http_port, "/readyz").await.unwrap().0, 200);

    let (_, metrics) = http_get(http_port, "/metrics").await.unwrap();
    assert_eq!(
        sample(&metrics, "genfleet_scans_total{outcome=\"infected\"}"),
        2.0
    );
    // photo.jpg of the polyglot job, the clean job, the requeued job's
    // second delivery.
    assert_eq!(
        sample(&metrics, "genfleet_scans_total{outcome=\"clean\"}"),
        3.0
    );
    assert_eq!(
        sample(&metrics, "genfleet_scans_total{outcome=\"error\"}"),
        1.0
    );
    assert_eq!(
        sample(&metrics, "genfleet_scan_duration_seconds_count"),
        6.0
    );
    assert_eq!(
        sample(&metrics, "genfleet_job_errors_total{code=\"malware\"}"),
        2.0
    );

    // The scanner's verdicts never leak the bytes into the log.
    let log = std::fs::read_to_string(&worker.log).unwrap();
    assert!(!log.contains("EICAR-STANDARD"), "input bytes in the log");
    assert_eq!(
        worker
            .terminate(Duration::from_secs(15))
            .map(|s| s.success()),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_limits_apply_to_the_queue_the_job_came_from() {
    // photo.jpg is 1024x683 (~0.7 MP): within [limits], above remote's.
    let s = setup(
        "genfleet-class-limits",
        "\n[limits.classes.remote]\nmax_pixels = 100000\n",
    )
    .await;
    let (conn, queue) = results_queue(&s.vhost.url()).await;
    let mut worker = WorkerProcess::start(&s.config, s.dir.0.join("worker.log"));
    wait_ready(&mut worker, Duration::from_secs(30)).await;

    let on_cpu = local_job(&["photo.jpg"], 2);
    let on_remote = local_job(&["photo.jpg"], 2);
    let on_remote_low = local_job(&["photo.jpg"], 2);
    publish_all(
        &s.vhost.url(),
        &[
            (&on_cpu, "cpu"),
            (&on_remote, "remote"),
            (&on_remote_low, "remote.low"),
        ],
    )
    .await;
    let collected = collect_results(&conn, &queue, 3, Duration::from_secs(20)).await;
    assert_eq!(collected.results.len(), 3, "{}", worker.log_tail());

    let result = result_of(&collected, &on_cpu);
    assert_eq!(result.status, v1::JobStatus::Succeeded as i32, "{result:?}");
    assert_eq!(credits(result), (2, 2, 0));
    for job in [&on_remote, &on_remote_low] {
        let result = result_of(&collected, job);
        let error = result.error.clone().unwrap();
        assert_eq!(error.code, "too_large", "{result:?}");
        assert!(
            error.message.starts_with("inputs[0]: "),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("above the 0.1 megapixel limit"),
            "{}",
            error.message
        );
        assert_eq!(credits(result), (0, 0, 0));
    }
    assert_eq!(
        worker
            .terminate(Duration::from_secs(15))
            .map(|s| s.success()),
        Some(true)
    );
}

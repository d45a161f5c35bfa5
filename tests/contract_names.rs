//! The public names, pinned as literals: what publishers, consumers,
//! dashboards and alerts outside this repository are written against.
//!
//! Everywhere else the tests reach the broker through `genfleet_broker`'s
//! constants, so renaming `genfleet.dlx` or `x-genfleet-error` in the crate
//! would break every backend that publishes jobs or reads dead letters while
//! every test still passed. Here each name is spelled out as the contract
//! (`shared/DESIGN.md`, README "Publishing jobs", "Topology" and "Metrics")
//! spells it:
//! - the crate's constants must equal the literals;
//! - a real worker must declare exchanges and queues of those names and
//!   kinds, take jobs and cancel requests published to them by name, and
//!   put results, progress events and dead letters (headers by name) where
//!   the contract says;
//! - the metrics must be exactly the pinned list of names, types and label
//!   names, which is also exactly README's list, and a real worker's
//!   `/metrics` must serve them under those names.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt as _;
use genfleet_credits::Ledger;
use genfleet_proto::v1;
use genfleet_providers::fake_fal::FakeFal;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use support::*;

/// Every metric a worker exports: name, Prometheus type, label names (a
/// histogram's `le` aside). Dashboards and alerts query these; a rename is
/// a breaking change, to be made here, in README and in the release notes.
const METRICS: &[(&str, &str, &[&str])] = &[
    (
        "genfleet_job_duration_seconds",
        "histogram",
        &["kind", "status"],
    ),
    ("genfleet_job_errors_total", "counter", &["code"]),
    ("genfleet_stage_duration_seconds", "histogram", &["stage"]),
    ("genfleet_jobs_in_flight", "gauge", &[]),
    (
        "genfleet_provider_attempts_total",
        "counter",
        &["provider", "outcome"],
    ),
    ("genfleet_dead_letters_total", "counter", &["code"]),
    ("genfleet_requeues_total", "counter", &["reason"]),
    ("genfleet_deliveries_total", "counter", &["disposition"]),
    (
        "genfleet_jobs_delayed_total",
        "counter",
        &["provider", "reason"],
    ),
    ("genfleet_credits_captured_total", "counter", &["kind"]),
    ("genfleet_credits_released_total", "counter", &["kind"]),
    ("genfleet_broker_connected", "gauge", &[]),
    ("genfleet_jobs_started_total", "counter", &["class", "lane"]),
    ("genfleet_jobs_demoted_total", "counter", &["class", "lane"]),
    ("genfleet_jobs_waiting", "gauge", &[]),
    ("genfleet_provider_breakers_open", "gauge", &["provider"]),
    (
        "genfleet_provider_circuit_open",
        "gauge",
        &["provider", "model"],
    ),
    (
        "genfleet_provider_repeated_reads_total",
        "counter",
        &["provider"],
    ),
    ("genfleet_provider_calls_in_flight", "gauge", &["provider"]),
    ("genfleet_jobs_parked_total", "counter", &["provider"]),
    (
        "genfleet_provider_cancels_total",
        "counter",
        &["provider", "outcome"],
    ),
    ("genfleet_cancel_requests_total", "counter", &["outcome"]),
    ("genfleet_scans_total", "counter", &["outcome"]),
    ("genfleet_scan_duration_seconds", "histogram", &[]),
    ("genfleet_provider_inputs_total", "counter", &["path"]),
    ("genfleet_source_deletions_pending", "gauge", &["state"]),
    ("genfleet_source_deletions_total", "counter", &["outcome"]),
    ("genfleet_purged_total", "counter", &["kind"]),
    // Served only with `[inference] enabled` (tests/gpu_class.rs scrapes
    // them from a real worker); the GPU series only where NVML sees a GPU.
    (
        "genfleet_inference_execution_provider",
        "gauge",
        &["provider"],
    ),
    ("genfleet_inference_batch_size", "histogram", &["model"]),
    ("genfleet_inference_batch_seconds", "histogram", &["model"]),
    (
        "genfleet_inference_admission_wait_seconds",
        "histogram",
        &["model"],
    ),
    (
        "genfleet_inference_model_footprint_bytes",
        "gauge",
        &["model"],
    ),
    ("genfleet_gpu_memory_used_bytes", "gauge", &["gpu", "name"]),
    ("genfleet_gpu_memory_total_bytes", "gauge", &["gpu", "name"]),
    ("genfleet_gpu_utilisation_ratio", "gauge", &["gpu", "name"]),
    (
        "genfleet_gpu_temperature_celsius",
        "gauge",
        &["gpu", "name"],
    ),
    ("genfleet_gpu_power_watts", "gauge", &["gpu", "name"]),
];

type Families = BTreeMap<String, (String, BTreeSet<String>)>;

fn pinned() -> Families {
    METRICS
        .iter()
        .map(|(name, kind, labels)| {
            (
                (*name).to_string(),
                (
                    (*kind).to_string(),
                    labels.iter().map(|l| (*l).to_string()).collect(),
                ),
            )
        })
        .collect()
}

/// The families of a Prometheus text exposition: name -> (type, label
/// names). Panics when one family's samples disagree on their label names.
fn families(exposition: &str) -> Families {
    let mut found = Families::new();
    let mut kinds = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            kinds.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let series = line.rsplit_once(' ').expect("series value").0;
        let (sample, labels) = match series.split_once('{') {
            Some((sample, labels)) => (sample, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = kinds
            .keys()
            .filter(|f| {
                sample == f.as_str()
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| sample.strip_suffix(s) == Some(f.as_str()))
            })
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample {sample} has no # TYPE line"))
            .clone();
        // `name="value"` pairs; the values here come from closed sets
        // (no quotes or commas in them).
        let names: BTreeSet<String> = labels
            .split(',')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').expect("label=value").0.to_string())
            .filter(|name| name != "le")
            .collect();
        let kind = kinds[&family].clone();
        match found.get(&family) {
            Some((_, seen)) => assert_eq!(seen, &names, "label names of {family} differ"),
            None => {
                found.insert(family, (kind, names));
            }
        }
    }
    found
}

#[test]
fn broker_constants_are_the_contracts_names() {
    use genfleet_broker as b;
    for (constant, literal) in [
        (b::JOBS_EXCHANGE, "genfleet.jobs"),
        (b::RESULTS_EXCHANGE, "genfleet.results"),
        (b::EVENTS_EXCHANGE, "genfleet.events"),
        (b::DEAD_LETTER_EXCHANGE, "genfleet.dlx"),
        (b::DEAD_QUEUE, "genfleet.dead"),
        (b::RETRY_EXCHANGE, "genfleet.retry"),
        (b::CANCEL_EXCHANGE, "genfleet.cancel"),
        (b::CANCEL_QUEUE, "genfleet.cancellations"),
        (b::HEADER_ERROR, "x-genfleet-error"),
        (b::HEADER_REASON, "x-genfleet-reason"),
        (b::HEADER_DELAY, "genfleet-retry-delay"),
        (b::LEGACY_HEADER_DELAY, "x-genfleet-delay"),
        (b::HEADER_PARKS, "x-genfleet-parks"),
        (b::HEADER_PARKED_AT, "x-genfleet-parked-at"),
        // Not in the contract, but carried by messages waiting in queues
        // across a rolling upgrade: a rename would reset their counts.
        (b::HEADER_REQUEUES, "x-genfleet-requeues"),
        (b::HEADER_DEFERRED_AT, "x-genfleet-deferred-at"),
        (b::HEADER_DEAD_AT, "x-genfleet-dead-at"),
    ] {
        assert_eq!(constant, literal);
    }
    for (class, lane, queue, key) in [
        ("cpu", b::Lane::Normal, "genfleet.jobs.cpu", "cpu"),
        ("gpu", b::Lane::High, "genfleet.jobs.gpu.high", "gpu.high"),
        (
            "remote",
            b::Lane::Low,
            "genfleet.jobs.remote.low",
            "remote.low",
        ),
    ] {
        let class = b::JobClass::parse(class).expect("a class");
        assert_eq!(class.lane_queue(lane), queue);
        assert_eq!(class.lane_routing_key(lane), key);
    }
    assert_eq!(
        b::Topology::retry_queue(Duration::from_secs(30)),
        "genfleet.retry.30s"
    );
}

/// Every field of the worker's `Metrics` given one series, rendered: the
/// families must be the pinned list, no more, no fewer.
#[test]
fn the_worker_registers_exactly_the_pinned_metrics() {
    let m = genfleet_worker::metrics::Metrics::new();
    m.job_duration_seconds
        .with_label_values(&["a", "b"])
        .observe(1.0);
    m.job_errors_total.with_label_values(&["a"]).inc();
    m.stage_duration_seconds
        .with_label_values(&["a"])
        .observe(1.0);
    m.jobs_in_flight.set(0);
    m.provider_attempts_total
        .with_label_values(&["a", "b"])
        .inc();
    m.dead_letters_total.with_label_values(&["a"]).inc();
    m.requeues_total.with_label_values(&["a"]).inc();
    m.deliveries_total.with_label_values(&["a"]).inc();
    m.jobs_delayed_total.with_label_values(&["a", "b"]).inc();
    m.jobs_parked_total.with_label_values(&["a"]).inc();
    m.provider_cancels_total
        .with_label_values(&["a", "b"])
        .inc();
    m.cancel_requests_total.with_label_values(&["a"]).inc();
    m.credits_captured_total.with_label_values(&["a"]).inc();
    m.credits_released_total.with_label_values(&["a"]).inc();
    m.broker_connected.set(1);
    m.jobs_demoted_total.with_label_values(&["a", "b"]).inc();
    m.jobs_started_total.with_label_values(&["a", "b"]).inc();
    m.jobs_waiting.set(0);
    m.provider_breakers_open.with_label_values(&["a"]).set(0);
    m.provider_calls_in_flight.with_label_values(&["a"]).set(0);
    m.provider_circuit_open
        .with_label_values(&["a", "b"])
        .set(0);
    m.provider_repeated_reads_total
        .with_label_values(&["a"])
        .inc();
    m.scans_total.with_label_values(&["a"]).inc();
    m.scan_duration_seconds.observe(1.0);
    m.provider_inputs_total.with_label_values(&["a"]).inc();
    m.source_deletions_pending.with_label_values(&["a"]).set(0);
    m.source_deletions_total.with_label_values(&["a"]).inc();
    m.purged_total.with_label_values(&["a"]).inc();
    m.inference_execution_provider
        .with_label_values(&["a"])
        .set(1);
    m.inference_batch_size
        .with_label_values(&["a"])
        .observe(1.0);
    m.inference_batch_seconds
        .with_label_values(&["a"])
        .observe(1.0);
    m.inference_admission_wait_seconds
        .with_label_values(&["a"])
        .observe(1.0);
    m.inference_model_footprint_bytes
        .with_label_values(&["a"])
        .set(1);
    m.gpu_memory_used_bytes
        .with_label_values(&["a", "b"])
        .set(1);
    m.gpu_memory_total_bytes
        .with_label_values(&["a", "b"])
        .set(1);
    m.gpu_utilisation_ratio
        .with_label_values(&["a", "b"])
        .set(0.5);
    m.gpu_temperature_celsius
        .with_label_values(&["a", "b"])
        .set(1.0);
    m.gpu_power_watts.with_label_values(&["a", "b"]).set(1.0);
    assert_eq!(families(&m.render()), pinned());
}

/// README's "Metrics" section lists the same names and label names.
#[test]
fn readme_documents_exactly_the_pinned_metrics() {
    let readme = std::fs::read_to_string(repo_path("README.md")).expect("README");
    let section = readme
        .split_once("\n## Metrics\n")
        .expect("a Metrics section")
        .1;
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut documented = BTreeMap::new();
    for span in section.split('`').skip(1).step_by(2) {
        let Some(span) = span.strip_prefix("genfleet_").map(|_| span) else {
            continue;
        };
        let (name, labels) = match span.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (span, ""),
        };
        let labels: BTreeSet<String> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        documented.insert(name.to_string(), labels);
    }
    let pinned: BTreeMap<String, BTreeSet<String>> = pinned()
        .into_iter()
        .map(|(name, (_, labels))| (name, labels))
        .collect();
    assert_eq!(documented, pinned);
}

async fn channel(conn: &Connection) -> Channel {
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    channel
}

/// Publishes with a confirm; `headers` as long strings.
async fn publish(
    conn: &Connection,
    exchange: &str,
    key: &str,
    body: &[u8],
    message_id: Option<&str>,
    headers: &[(&str, &str)],
) {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert((*name).into(), AMQPValue::LongString((*value).into()));
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(table);
    if let Some(id) = message_id {
        properties = properties.with_message_id(id.into());
    }
    let confirm = channel(conn)
        .await
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            properties,
        )
        .await
        .unwrap_or_else(|e| panic!("publish to {exchange}: {e}"))
        .await
        .unwrap_or_else(|e| panic!("confirm from {exchange}: {e}"));
    assert!(confirm.is_ack(), "{exchange} {key}: {confirm:?}");
    assert!(
        confirm.take_message().is_none(),
        "{exchange} {key}: returned, no queue is bound there"
    );
}

/// Whether `exchange` exists (a passive declare), and then that a declare
/// of `kind` agrees with it (RabbitMQ refuses one of another kind).
async fn assert_exchange(conn: &Connection, exchange: &str, kind: ExchangeKind) {
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    conn.create_channel()
        .await
        .expect("channel")
        .exchange_declare(
            exchange.into(),
            kind.clone(),
            passive,
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("exchange {exchange} missing: {e}"));
    let same = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    conn.create_channel()
        .await
        .expect("channel")
        .exchange_declare(exchange.into(), kind, same, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("exchange {exchange} is of another kind: {e}"));
}

async fn queue_depth(conn: &Connection, queue: &str) -> u32 {
    conn.create_channel()
        .await
        .expect("channel")
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue {queue} missing: {e}"))
        .message_count()
}

/// A queue of the test's bound to `exchange` with `pattern`.
async fn capture(conn: &Connection, queue: &str, exchange: &str, pattern: &str) {
    let channel = conn.create_channel().await.expect("channel");
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("bind to {exchange}: {e}"));
}

fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        other => panic!("{name}: {other:?}"),
    }
}

/// A real worker against names spelled out: it declares them, takes jobs
/// and a cancel request published to them by name, answers on them, and
/// serves its metrics under the pinned names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_speaks_the_contract_by_its_literal_names() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-names");
    let store = store_with_photo(&dir.0);
    photo_for(&store, "names");
    let fal = FakeFal::start().await.unwrap();
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    ledger.grant("acme/names", 100, "test").await.unwrap();

    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &store,
            fal_base_url: fal.base_url.as_str(),
            concurrency: 2,
            grace_seconds: 10,
            http_port: 0,
            fal_poll_ms: 50,
        },
    );
    let mut worker = WorkerProcess::start(&config, dir.0.join("worker.log"));
    let port = wait_ready(&mut worker, Duration::from_secs(60)).await;

    // What the worker declared, by name and kind.
    let conn = Connection::connect(&vhost.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    for (exchange, kind) in [
        ("genfleet.jobs", ExchangeKind::Direct),
        ("genfleet.results", ExchangeKind::Topic),
        ("genfleet.events", ExchangeKind::Topic),
        ("genfleet.dlx", ExchangeKind::Fanout),
        ("genfleet.cancel", ExchangeKind::Fanout),
        ("genfleet.retry", ExchangeKind::Headers),
    ] {
        assert_exchange(&conn, exchange, kind).await;
    }
    for queue in [
        "genfleet.dead",
        "genfleet.cancellations",
        "genfleet.retry.5s",
        "genfleet.retry.30s",
        "genfleet.retry.300s",
    ] {
        queue_depth(&conn, queue).await;
    }
    for class in ["cpu", "remote"] {
        for lane in ["", ".high", ".low"] {
            queue_depth(&conn, &format!("genfleet.jobs.{class}{lane}")).await;
        }
    }
    // The retry exchange routes by the delay header to its queue.
    publish(
        &conn,
        "genfleet.retry",
        "gpu",
        b"{}",
        None,
        &[("genfleet-retry-delay", "300s")],
    )
    .await;
    assert_eq!(queue_depth(&conn, "genfleet.retry.300s").await, 1);

    capture(
        &conn,
        "names.results",
        "genfleet.results",
        "result.acme.names.*",
    )
    .await;
    capture(
        &conn,
        "names.events",
        "genfleet.events",
        "event.acme.names.#",
    )
    .await;

    // Jobs by the README's names: a fal photo, one fal refuses, a local
    // edit, and a message that is no job at all.
    let ok = fal_product_job("names", "test/ok", "a vase", 2, v1::Priority::Normal);
    let refused = fal_product_job("names", "test/nsfw", "a vase", 3, v1::Priority::High);
    let local = local_edit_job(
        "acme",
        "names",
        &["s3://genfleet/uploads/acme/names/photo.jpg".to_string()],
        256,
        1,
    );
    for (job, key) in [(&ok, "remote"), (&refused, "remote.high"), (&local, "cpu")] {
        let body = genfleet_proto::encode_json(job);
        publish(&conn, "genfleet.jobs", key, &body, Some(&job.job_id), &[]).await;
    }
    publish(&conn, "genfleet.jobs", "cpu", b"not a job", None, &[]).await;
    // A cancel request for a job the worker never saw: recorded all the same.
    let cancel = v1::CancelJob {
        job_id: new_job_id(),
        tenant: Some(v1::Tenant {
            org: "acme".into(),
            workspace: "names".into(),
            user: String::new(),
        }),
        reason: "names test".into(),
    };
    let body = genfleet_proto::encode_json(&cancel);
    publish(&conn, "genfleet.cancel", "", &body, None, &[]).await;

    // Results on genfleet.results under result.<org>.<workspace>.<status>.
    let results = conn.create_channel().await.expect("channel");
    let mut consumer = results
        .basic_consume(
            "names.results".into(),
            "names".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut got = BTreeMap::new();
    while got.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(60), consumer.next()).await;
        let Ok(Some(Ok(delivery))) = next else {
            panic!("results so far {got:?}:\n{}", worker.log_tail());
        };
        let result: v1::JobResult = serde_json::from_slice(&delivery.data).expect("JSON");
        got.insert(result.job_id, delivery.routing_key.to_string());
    }
    assert_eq!(got[&ok.job_id], "result.acme.names.succeeded");
    assert_eq!(got[&refused.job_id], "result.acme.names.failed");
    assert_eq!(got[&local.job_id], "result.acme.names.succeeded");

    // Progress on genfleet.events under event.<org>.<workspace>.<stage>.
    assert!(queue_depth(&conn, "names.events").await > 0);
    let event = conn
        .create_channel()
        .await
        .expect("channel")
        .basic_get("names.events".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("an event");
    assert!(
        event
            .delivery
            .routing_key
            .as_str()
            .starts_with("event.acme.names."),
        "{}",
        event.delivery.routing_key
    );

    // The dead letter in genfleet.dead, its reason under the contract's
    // header names.
    let dead_letter = conn
        .create_channel()
        .await
        .expect("channel")
        .basic_get("genfleet.dead".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("a dead letter in genfleet.dead");
    assert_eq!(
        header(&dead_letter.delivery, "x-genfleet-error").as_deref(),
        Some("invalid_input")
    );
    let reason = header(&dead_letter.delivery, "x-genfleet-reason").unwrap_or_default();
    assert!(!reason.is_empty(), "x-genfleet-reason is empty");
    assert_eq!(dead_letter.delivery.data, b"not a job");

    until("the cancel request", Duration::from_secs(20), async || {
        metric(port, "genfleet_cancel_requests_total{outcome=\"recorded\"}").await >= 1.0
    })
    .await;

    // The scrape: every family it shows is pinned, with the pinned type
    // and label names; those this run must have produced are all there.
    let (status, body) = http_get(port, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    let served = families(&body);
    let pinned = pinned();
    for (name, family) in &served {
        assert_eq!(
            Some(family),
            pinned.get(name),
            "{name} is served but not pinned (renamed?)"
        );
    }
    for name in [
        "genfleet_job_duration_seconds",
        "genfleet_job_errors_total",
        "genfleet_stage_duration_seconds",
        "genfleet_jobs_in_flight",
        "genfleet_provider_attempts_total",
        "genfleet_dead_letters_total",
        "genfleet_deliveries_total",
        "genfleet_credits_captured_total",
        "genfleet_credits_released_total",
        "genfleet_broker_connected",
        "genfleet_jobs_started_total",
        "genfleet_jobs_waiting",
        "genfleet_provider_breakers_open",
        "genfleet_provider_calls_in_flight",
        "genfleet_cancel_requests_total",
        "genfleet_scan_duration_seconds",
        "genfleet_provider_inputs_total",
    ] {
        assert!(served.contains_key(name), "{name} missing:\n{body}");
    }
    for series in [
        "genfleet_job_duration_seconds_count{kind=\"product_photo\",status=\"succeeded\"} 1",
        "genfleet_job_duration_seconds_count{kind=\"batch_edit\",status=\"succeeded\"} 1",
        "genfleet_job_errors_total{code=\"provider_rejected\"} 1",
        "genfleet_dead_letters_total{code=\"invalid_input\"} 1",
        "genfleet_credits_captured_total{kind=\"product_photo\"} 2",
        "genfleet_credits_released_total{kind=\"product_photo\"} 3",
        "genfleet_broker_connected 1",
    ] {
        assert!(body.contains(series), "{series} missing:\n{body}");
    }
    let _ = conn.close(200, "done".into()).await;
    let status = worker.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{}", worker.log_tail());
}

//! A hostile publisher's table: messages built to hold a worker, make it
//! allocate, overflow its time arithmetic or loop it, each through the real
//! worker binary. Every one gets its code (a failed result, a dead letter,
//! or both) within a bound, nothing panics, the worker's peak memory stays
//! bounded and it still serves a clean job afterwards.

mod support;

use std::time::{Duration, Instant};

use genfleet_credits::Ledger;
use genfleet_proto::{pbjson_types, v1};
use prost::Message as _;
use support::*;

const TENANT_WS: &str = "shop-1";
/// A tenant whose output folder cannot be created (a file is in its way):
/// every run of its job fails to store, for reasons that are ours.
const BLOCKED_WS: &str = "blocked";
/// Requeues allowed before a job fails `internal` (the config below).
const MAX_REQUEUES: u32 = 2;
/// The worker's peak resident memory over the whole table. A decoded 12 MP
/// photo alone is ~36 MB; what this bounds is a message or upload making
/// it allocate gigabytes.
const RSS_BOUND_MB: u64 = 768;

fn job(workspace: &str, credits: i64) -> v1::Job {
    local_edit_job(
        "acme",
        workspace,
        &[format!("s3://genfleet/uploads/acme/{workspace}/photo.jpg")],
        256,
        credits,
    )
}

fn upscale(factor: u32) -> v1::PreprocessStep {
    v1::PreprocessStep {
        step: Some(v1::preprocess_step::Step::Upscale(v1::Upscale { factor })),
    }
}

/// How a row's message is sent.
enum Body {
    Json,
    Protobuf,
    /// These bytes, as JSON, with the job's id as `message_id`.
    Raw(Vec<u8>),
    /// The job as JSON with this content type.
    ContentType(&'static str),
}

/// What a row must end as.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// A result with this status and error code, whose message contains
    /// the words; plus a dead letter when `dead` is set.
    Result {
        code: Option<&'static str>,
        words: &'static str,
        dead: bool,
    },
    /// No job id can be read: a dead letter with these words, no result.
    DeadOnly { words: &'static str },
}

struct Row {
    name: &'static str,
    job: v1::Job,
    body: Body,
    headers: Vec<(String, String)>,
    expect: Expect,
}

fn fails(code: &'static str, words: &'static str) -> Expect {
    Expect::Result {
        code: Some(code),
        words,
        dead: false,
    }
}

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add = |name, job, body, headers: Vec<(&str, String)>, expect| {
        rows.push(Row {
            name,
            job,
            body,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            expect,
        })
    };

    let mut j = job(TENANT_WS, 1);
    j.deadline = Some(pbjson_types::Timestamp {
        seconds: 1_900_000_000,
        nanos: 2_000_000_000,
    });
    add(
        "deadline with out-of-range nanos",
        j,
        Body::Protobuf,
        vec![],
        fails("invalid_input", "`deadline`"),
    );
    let mut j = job(TENANT_WS, 1);
    j.deadline = Some(pbjson_types::Timestamp {
        seconds: i64::MAX,
        nanos: 999_999_999,
    });
    add(
        "deadline at i64::MAX seconds",
        j,
        Body::Protobuf,
        vec![],
        fails("invalid_input", "`deadline`"),
    );
    let mut j = job(TENANT_WS, 1);
    j.credits = Some(v1::CreditRequest {
        amount: 1,
        hold_ttl: Some(pbjson_types::Duration {
            seconds: i64::MAX,
            nanos: 0,
        }),
        ..Default::default()
    });
    add(
        "hold TTL of i64::MAX seconds",
        j,
        Body::Protobuf,
        vec![],
        fails("invalid_input", "`credits.holdTtl`"),
    );
    let mut j = job(TENANT_WS, 0);
    j.credits = Some(v1::CreditRequest {
        amount: i64::MAX,
        ..Default::default()
    });
    add(
        "credits of i64::MAX",
        j,
        Body::Json,
        vec![],
        fails("insufficient_credits", "needs 9223372036854775807"),
    );
    let mut j = job(TENANT_WS, 1);
    j.preprocess = vec![upscale(2); 5];
    add(
        "five pre-processing steps",
        j,
        Body::Json,
        vec![],
        fails("invalid_input", "`preprocess`"),
    );
    let mut j = job(TENANT_WS, 1);
    j.preprocess = vec![upscale(4), upscale(4), upscale(4)];
    add(
        "three x4 upscales (a 1024 px photo to 65,536 px)",
        j,
        Body::Json,
        vec![],
        fails("too_large", "the steps would produce"),
    );
    let mut j = job(TENANT_WS, 1);
    j.generation.as_mut().unwrap().prompt = "p".repeat(9 * 1024);
    add(
        "9 KiB prompt",
        j,
        Body::Json,
        vec![],
        fails("invalid_input", "`generation.prompt`"),
    );
    let mut j = job(TENANT_WS, 1);
    let mut params = pbjson_types::Struct::default();
    params.fields.insert(
        "style".into(),
        pbjson_types::Value::from("s".repeat(20 * 1024)),
    );
    j.generation.as_mut().unwrap().parameters = Some(params);
    add(
        "20 KiB of parameters",
        j,
        Body::Json,
        vec![],
        fails("invalid_input", "`generation.parameters`"),
    );
    let mut j = job(TENANT_WS, 1);
    j.inputs = vec![j.inputs[0].clone(); 9];
    add(
        "nine inputs",
        j,
        Body::Json,
        vec![],
        fails("invalid_input", "`inputs`"),
    );
    let mut j = job(TENANT_WS, 1);
    j.inputs[0].uri = format!(
        "s3://genfleet/uploads/acme/{TENANT_WS}/{}.jpg",
        "a".repeat(3000)
    );
    add(
        "3 KB input URI",
        j,
        Body::Json,
        vec![],
        fails("invalid_input", "`inputs[0].uri`"),
    );
    let mut j = job(TENANT_WS, 1);
    j.generation.as_mut().unwrap().count = 1000;
    add(
        "a thousand outputs",
        j,
        Body::Json,
        vec![],
        fails("invalid_input", "`generation.count`"),
    );
    let j = job(TENANT_WS, 1);
    add(
        "HTML content type",
        j,
        Body::ContentType("text/html"),
        vec![],
        Expect::Result {
            code: Some("invalid_input"),
            words: "content type text/html",
            dead: true,
        },
    );
    let j = job(TENANT_WS, 1);
    let oversized = {
        let mut body = genfleet_proto::encode_json(&j);
        // Padding the parser never has to read: the size check comes first.
        body.extend(std::iter::repeat_n(b' ', 300 * 1024));
        body
    };
    add(
        "300 KiB message",
        j,
        Body::Raw(oversized),
        vec![],
        Expect::DeadOnly {
            words: "byte limit",
        },
    );
    let j = job(TENANT_WS, 1);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    add(
        "JSON nested 100,000 deep",
        j,
        Body::Raw(deep),
        vec![],
        Expect::DeadOnly {
            words: "not valid job JSON",
        },
    );
    // Headers only this fleet should write, forged at their extremes: the
    // job still runs once, as a new job, and nothing overflows.
    let j = job(TENANT_WS, 1);
    add(
        "forged park and defer headers at u64::MAX",
        j,
        Body::Json,
        vec![
            (genfleet_broker::HEADER_PARKS, "1".into()),
            (genfleet_broker::HEADER_PARKED_AT, u64::MAX.to_string()),
            (genfleet_broker::HEADER_DEFERRED_AT, u64::MAX.to_string()),
            (genfleet_broker::HEADER_REQUEUES, "0".into()),
        ],
        Expect::Result {
            code: None,
            words: "",
            dead: false,
        },
    );
    // Our own failure on every run: bounded, then `internal` with the
    // credits released and the message dead-lettered for an operator.
    let j = job(BLOCKED_WS, 3);
    add(
        "a job whose every run fails to store",
        j,
        Body::Json,
        vec![],
        Expect::Result {
            code: Some("internal"),
            words: "went back to its queue",
            dead: true,
        },
    );
    rows
}

/// Peak resident memory of a process (`VmHWM`), in MB.
fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_get_their_codes_and_the_worker_stays_bounded() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-hostile");
    let root = store_with_photo(&dir.0);
    photo_for(&root, TENANT_WS);
    photo_for(&root, BLOCKED_WS);
    // The blocked tenant's output folder cannot be made: a file is there.
    std::fs::create_dir_all(root.join("acme")).unwrap();
    std::fs::write(root.join("acme").join(BLOCKED_WS), b"in the way").unwrap();

    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    ledger.grant("acme/shop-1", 1_000, "hostile").await.unwrap();
    ledger.grant("acme/blocked", 100, "hostile").await.unwrap();
    let (conn, queue) = results_queue(&vhost.url()).await;

    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &root,
            fal_base_url: "http://127.0.0.1:9/",
            concurrency: 4,
            grace_seconds: 5,
            http_port: 0,
            fal_poll_ms: 50,
        },
    );
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml = toml.replace(
        "[worker]\n",
        &format!("[worker]\nmax_requeues_per_job = {MAX_REQUEUES}\n"),
    );
    toml = toml.replace("[broker]\n", "[broker]\nrequeue_delays_seconds = [5]\n");
    std::fs::write(&config, toml).unwrap();
    let mut worker = WorkerProcess::start(&config, dir.0.join("worker.log"));
    wait_ready(&mut worker, Duration::from_secs(60)).await;

    let rows = rows();
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "hostile-publisher")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    let started = Instant::now();
    for row in &rows {
        let (body, content_type) = match &row.body {
            Body::Json => (genfleet_proto::encode_json(&row.job), None),
            Body::Protobuf => (
                row.job.encode_to_vec(),
                Some("application/x-protobuf".to_string()),
            ),
            Body::Raw(bytes) => (bytes.clone(), None),
            Body::ContentType(ct) => (
                genfleet_proto::encode_json(&row.job),
                Some((*ct).to_string()),
            ),
        };
        let outgoing = genfleet_broker::Outgoing {
            content_type,
            message_id: Some(row.job.job_id.clone()),
            headers: row.headers.clone(),
            persistent: true,
            ..Default::default()
        };
        publisher
            .publish(genfleet_broker::JOBS_EXCHANGE, "cpu", &body, &outgoing)
            .await
            .unwrap();
    }

    let with_result = rows
        .iter()
        .filter(|r| matches!(r.expect, Expect::Result { .. }))
        .count();
    // Two requeues of 5 s for the blocked job, the rest at once.
    let collected = collect_results(&conn, &queue, with_result, Duration::from_secs(90)).await;
    let elapsed = started.elapsed();
    let dead = drain_dead_letters(&conn).await;
    println!(
        "{} rows answered in {elapsed:?}; dead letters: {dead:?}",
        rows.len()
    );
    for row in &rows {
        match row.expect {
            Expect::Result {
                code,
                words,
                dead: dead_too,
            } => {
                let (result, key) = collected
                    .results
                    .get(&row.job.job_id)
                    .unwrap_or_else(|| panic!("{}: no result in {elapsed:?}", row.name));
                match code {
                    None => {
                        assert_eq!(
                            result.status,
                            v1::JobStatus::Succeeded as i32,
                            "{}: {result:?}",
                            row.name
                        );
                    }
                    Some(code) => {
                        let error = result
                            .error
                            .as_ref()
                            .unwrap_or_else(|| panic!("{}: {result:?}", row.name));
                        assert_eq!(error.code, code, "{}: {}", row.name, error.message);
                        assert!(
                            error.message.contains(words),
                            "{}: {}",
                            row.name,
                            error.message
                        );
                        assert!(key.ends_with(".failed"), "{}: {key}", row.name);
                        // Nothing held stays held.
                        let c = result.credits.unwrap_or_default();
                        assert_eq!(c.captured, 0, "{}", row.name);
                        assert_eq!(c.held, c.released, "{}", row.name);
                    }
                }
                if dead_too {
                    assert!(
                        dead.iter().any(|(c, _)| Some(c.as_str()) == code),
                        "{}: no dead letter in {dead:?}",
                        row.name
                    );
                }
            }
            Expect::DeadOnly { words } => {
                assert!(
                    !collected.results.contains_key(&row.job.job_id),
                    "{}: a result without a readable id",
                    row.name
                );
                assert!(
                    dead.iter()
                        .any(|(c, reason)| c == "invalid_input" && reason.contains(words)),
                    "{}: no dead letter with {words:?} in {dead:?}",
                    row.name
                );
            }
        }
    }
    assert!(
        elapsed < Duration::from_secs(60),
        "the table took {elapsed:?}"
    );
    // The blocked job went round exactly as often as allowed.
    let requeue_limit = dead
        .iter()
        .filter(|(c, reason)| c == "internal" && reason.starts_with("requeue_limit"))
        .count();
    assert_eq!(requeue_limit, 1, "{dead:?}");
    // The i64::MAX and blocked jobs held nothing at the end; the ledger's
    // books balance.
    let blocked = ledger.balance("acme/blocked").await.unwrap().unwrap();
    assert_eq!((blocked.available, blocked.held), (100, 0));
    assert!(ledger.check_invariants().await.unwrap().is_empty());

    // Still serving, and no panic on the way.
    let clean = job(TENANT_WS, 1);
    publish(&publisher, "cpu", &clean).await;
    let after = collect_results(&conn, &queue, 1, Duration::from_secs(30)).await;
    assert_eq!(
        after.results.get(&clean.job_id).map(|(r, _)| r.status),
        Some(v1::JobStatus::Succeeded as i32),
        "a clean job after the table"
    );
    let peak = peak_rss_mb(worker.pid());
    println!("worker peak RSS over the table: {peak} MB (bound {RSS_BOUND_MB} MB)");
    assert!(peak > 0 && peak < RSS_BOUND_MB, "peak RSS {peak} MB");
    let log = std::fs::read_to_string(dir.0.join("worker.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "a panic in the worker log");
    broker.close().await;
    worker.terminate(Duration::from_secs(10));
}

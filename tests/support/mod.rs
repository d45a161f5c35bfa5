//! Shared plumbing of the end-to-end tests: an isolated RabbitMQ vhost and
//! PostgreSQL schema per test, a storage root with fixtures, the real
//! `genfleet` binary as a child process, and a results collector.

#![allow(dead_code)]

pub mod files;
pub mod rabbit_node;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt as _;
use genfleet_proto::v1;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};

pub const AMQP_BASE: &str = "amqp://guest:guest@127.0.0.1:5672";
pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

#[allow(unused_imports)] // not every test binary generates jobs
pub use genfleet_proto::new_job_id;

/// A RabbitMQ vhost of our own, deleted on drop.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn create() -> Vhost {
        let name = unique("genfleet-test");
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost { name }
    }

    pub fn url(&self) -> String {
        format!("{AMQP_BASE}/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL schema of our own, dropped on drop.
pub struct Schema {
    pub name: String,
}

impl Schema {
    pub fn new() -> Schema {
        Schema {
            name: unique("e2e").to_lowercase(),
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                PG_URL,
                "-q",
                "-c",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A temporary folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("GENFLEET_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub struct WorkerSettings<'a> {
    pub amqp_url: String,
    pub schema: &'a str,
    pub storage_root: &'a Path,
    pub fal_base_url: &'a str,
    pub concurrency: u16,
    pub grace_seconds: u64,
    pub http_port: u16,
    /// Pause between fal status polls: sets how long a fal job takes.
    pub fal_poll_ms: u64,
}

/// Writes the worker's TOML configuration.
pub fn write_config(dir: &Path, s: &WorkerSettings) -> PathBuf {
    let path = dir.join("worker.toml");
    let toml = format!(
        r#"[worker]
name = "e2e-worker"
concurrency = {concurrency}
classes = ["cpu", "remote"]
grace_period_seconds = {grace}

[broker]
url = "{amqp}"

[database]
url = "{pg}"
schema = "{schema}"
pool_size = 4

[storage]
root = "{root}"
bucket = "genfleet"
public_base_url = "https://cdn.example.test/files"
signing_key = "e2e-signing-key"

[http]
listen = "127.0.0.1:{port}"

[providers]
max_wait_seconds = 30
# The fakes serve their output files from loopback, which the SSRF guard
# refuses unless allowed.
download_allow = ["127.0.0.1"]

[providers.fal]
base_url = "{fal}"
key = "fal-test-key"
poll_interval_ms = {poll}
request_timeout_seconds = 10

[providers.fal.limits]
# The flaky fake fails every job's first two calls, so ten flaky jobs at
# once look like an outage of that model; here they test per-job retries,
# not the breaker (tested in genfleet-providers, also against the fake).
breaker_failure_threshold = 1000
# The same for the flaky model's 429s: each concerns one job, and slowing
# every call down for them is the adaptive bucket's test, not this one's.
adaptive_rate = false

[providers.retry]
max_attempts = 3
initial_delay_ms = 20
max_delay_ms = 300
"#,
        concurrency = s.concurrency,
        grace = s.grace_seconds,
        amqp = s.amqp_url,
        pg = PG_URL,
        schema = s.schema,
        root = s.storage_root.display(),
        port = s.http_port,
        fal = s.fal_base_url.trim_end_matches('/'),
        poll = s.fal_poll_ms,
    );
    std::fs::write(&path, toml).expect("config written");
    path
}

/// The real `genfleet worker` as a child process, killed on drop.
///
/// Its health listener's port is the one the worker itself bound and
/// logged, never one the test probed and let go (a busy machine may hand
/// such a port to someone else before the worker binds it): configure
/// `http_port: 0` and take the port from [`wait_ready`] or
/// [`WorkerProcess::listening_port`]. A configuration that names a port
/// anyway still works: if that port is taken, [`wait_ready`] starts the
/// worker again on a port of the system's choosing.
pub struct WorkerProcess {
    pub child: Child,
    pub log: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
    /// Where this process's lines start in `log` (earlier starts append
    /// to the same file).
    log_from: u64,
}

/// `http.listen` when the system picks the port: nothing to race for.
const ANY_PORT: &str = "127.0.0.1:0";

impl WorkerProcess {
    pub fn start(config: &Path, log: PathBuf) -> WorkerProcess {
        WorkerProcess::start_with_env(config, log, &[])
    }

    /// Starts with extra `GENFLEET__...` settings on top of the file, e.g.
    /// `("GENFLEET__BROKER__DELIVERY_LIMIT", "3")`. Appends to `log`, so a
    /// restarted worker keeps the earlier one's lines.
    pub fn start_with_env(config: &Path, log: PathBuf, env: &[(&str, &str)]) -> WorkerProcess {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, log_from) = WorkerProcess::spawn(config, &log, &env);
        WorkerProcess {
            child,
            log,
            config: config.to_path_buf(),
            env,
            log_from,
        }
    }

    fn spawn(config: &Path, log: &Path, env: &[(String, String)]) -> (Child, u64) {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let log_from = log_file.metadata().map(|m| m.len()).unwrap_or(0);
        let child = Command::new(env!("CARGO_BIN_EXE_genfleet"))
            .args(["--config", &config.display().to_string(), "worker"])
            .env("RUST_LOG", "info,lapin=warn")
            .env_remove("GENFLEET_CONFIG")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("worker starts");
        (child, log_from)
    }

    /// Starts the worker again, as before but on a port the system picks:
    /// for a worker that exited because its configured port was taken.
    fn respawn_on_any_port(&mut self) {
        self.env.retain(|(k, _)| k != "GENFLEET__HTTP__LISTEN");
        self.env
            .push(("GENFLEET__HTTP__LISTEN".into(), ANY_PORT.into()));
        let (child, log_from) = WorkerProcess::spawn(&self.config, &self.log, &self.env);
        self.child = child;
        self.log_from = log_from;
    }

    /// This process's part of the log.
    fn own_log(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let from = usize::try_from(self.log_from)
            .unwrap_or(usize::MAX)
            .min(text.len());
        String::from_utf8_lossy(&text[from..]).into_owned()
    }

    /// The port this process's health listener bound, once it has (from
    /// its "health and metrics listener up" line).
    pub fn listening_port(&self) -> Option<u16> {
        listening_port_in(&self.own_log())
    }

    /// Whether this process exited because its listener's port was taken.
    fn port_was_taken(&self) -> bool {
        let log = self.own_log();
        log.lines()
            .any(|l| l.contains("http.listen") && l.contains("Address already in use"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < within {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` without terminal colour codes (`ESC [ ... m`): the worker's log
/// colours field names, which splits `addr=` apart.
pub fn without_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The port of the last "health and metrics listener up" line in a
/// worker's log text.
pub fn listening_port_in(log: &str) -> Option<u16> {
    without_colours(log)
        .lines()
        .filter(|l| l.contains("health and metrics listener up"))
        .filter_map(|l| {
            let addr = l.split_once("addr=")?.1.split_whitespace().next()?;
            addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
        })
        .next_back()
}

/// The port of the latest worker that logged its listener to `log` (a log
/// restarted workers append to); it may since have been killed.
pub fn last_listening_port(log: &Path) -> Option<u16> {
    listening_port_in(&std::fs::read_to_string(log).unwrap_or_default())
}

pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Waits until the worker's /readyz answers 200 and returns its port. A
/// worker that exited because the port its configuration names was taken
/// meanwhile is started again on a port the system picks (up to twice).
pub async fn wait_ready(worker: &mut WorkerProcess, within: Duration) -> u16 {
    let started = Instant::now();
    let mut restarts = 0;
    while started.elapsed() < within {
        if let Ok(Some(status)) = worker.child.try_wait() {
            if restarts < 2 && worker.port_was_taken() {
                restarts += 1;
                worker.respawn_on_any_port();
                continue;
            }
            panic!("worker exited early with {status}:\n{}", worker.log_tail());
        }
        if let Some(port) = worker.listening_port() {
            if let Some((200, _)) = http_get(port, "/readyz").await {
                return port;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("worker not ready after {within:?}:\n{}", worker.log_tail());
}

/// Declares the topology (as the worker will) and a capture queue bound to
/// every result, so that no result published before the test listens is lost.
pub async fn results_queue(amqp_url: &str) -> (Connection, String) {
    let broker = genfleet_broker::Broker::connect(amqp_url, "e2e-setup")
        .await
        .expect("broker");
    broker
        .declare(&genfleet_broker::Topology::default())
        .await
        .expect("topology");
    broker.close().await;
    let conn = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .expect("lapin connect");
    let channel = conn.create_channel().await.expect("channel");
    let queue = "e2e.results".to_string();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    channel
        .queue_bind(
            queue.as_str().into(),
            // The contract's name, not the crate's constant (see
            // tests/contract_names.rs).
            "genfleet.results".into(),
            "result.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    (conn, queue)
}

/// Collects results until `expected` distinct jobs have one, deduplicating
/// by message id as the contract tells consumers to.
pub struct Collected {
    pub results: HashMap<String, (v1::JobResult, String)>,
    /// Job ids in the order their first result arrived.
    pub order: Vec<String>,
    pub duplicates: usize,
}

pub async fn collect_results(
    conn: &Connection,
    queue: &str,
    expected: usize,
    within: Duration,
) -> Collected {
    let channel = conn.create_channel().await.expect("channel");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "e2e-collector".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut collected = Collected {
        results: HashMap::new(),
        order: Vec::new(),
        duplicates: 0,
    };
    let deadline = tokio::time::Instant::now() + within;
    while collected.results.len() < expected {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let Ok(Some(Ok(delivery))) = next else { break };
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_string())
            .unwrap_or_default();
        let result: v1::JobResult = serde_json::from_slice(&delivery.data).expect("result JSON");
        assert_eq!(message_id, format!("{}.result", result.job_id));
        let key = delivery.routing_key.as_str().to_string();
        let job_id = result.job_id.clone();
        if collected
            .results
            .insert(job_id.clone(), (result, key))
            .is_some()
        {
            collected.duplicates += 1;
        } else {
            collected.order.push(job_id);
        }
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    collected
}

/// Reads every message in the dead-letter queue: (x-genfleet-error,
/// x-genfleet-reason). The names are the contract's, spelled out, so a
/// rename in the broker crate fails every test that reads dead letters.
pub async fn drain_dead_letters(conn: &Connection) -> Vec<(String, String)> {
    let channel = conn.create_channel().await.expect("channel");
    let mut found = Vec::new();
    while let Ok(Some(message)) = channel
        .basic_get(
            "genfleet.dead".into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
    {
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let get = |k: &str| match headers.inner().get(k) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            _ => String::new(),
        };
        found.push((get("x-genfleet-error"), get("x-genfleet-reason")));
    }
    found
}

pub async fn publish_job(
    publisher: &genfleet_broker::Publisher,
    class: &str,
    body: &[u8],
    message_id: Option<&str>,
) {
    let outgoing = genfleet_broker::Outgoing {
        content_type: None, // like Node's amqplib: no content type means JSON
        message_id: message_id.map(str::to_string),
        persistent: true,
        ..Default::default()
    };
    publisher
        .publish("genfleet.jobs", class, body, &outgoing)
        .await
        .expect("job published");
}

/// Publishes `job` as a backend does: its JSON, message id = its job id.
pub async fn publish(publisher: &genfleet_broker::Publisher, class: &str, job: &v1::Job) {
    publish_job(
        publisher,
        class,
        &genfleet_proto::encode_json(job),
        Some(&job.job_id),
    )
    .await;
}

/// A fal product-photo job of `acme/<workspace>` on the input
/// `s3://genfleet/uploads/acme/<workspace>/photo.jpg` (see [`photo_for`]),
/// holding `credits`.
pub fn fal_product_job(
    workspace: &str,
    model: &str,
    prompt: &str,
    credits: i64,
    priority: v1::Priority,
) -> v1::Job {
    v1::Job {
        job_id: new_job_id(),
        tenant: Some(v1::Tenant {
            org: "acme".into(),
            workspace: workspace.into(),
            user: String::new(),
        }),
        kind: v1::JobKind::ProductPhoto as i32,
        inputs: vec![v1::Input {
            role: v1::InputRole::Product as i32,
            uri: format!("s3://genfleet/uploads/acme/{workspace}/photo.jpg"),
            ..Default::default()
        }],
        generation: Some(v1::Generation {
            model: model.into(),
            prompt: prompt.into(),
            ..Default::default()
        }),
        credits: Some(v1::CreditRequest {
            amount: credits,
            ..Default::default()
        }),
        priority: priority as i32,
        ..Default::default()
    }
}

/// `<dir>/store` with `uploads/photo.jpg` (an example photo) in it: the
/// storage root the product-photo jobs above read from.
pub fn store_with_photo(dir: &Path) -> PathBuf {
    let root = dir.join("store");
    std::fs::create_dir_all(root.join("uploads")).expect("store folder");
    std::fs::copy(
        repo_path("examples/photos/dandelions_1024.jpg"),
        root.join("uploads/photo.jpg"),
    )
    .expect("photo copied");
    root
}

/// Copies the store's `uploads/photo.jpg` to where a job of
/// `acme/<workspace>` may read it (`uploads/acme/<workspace>/photo.jpg`):
/// a worker reads only the tenant's own uploads.
pub fn photo_for(root: &Path, workspace: &str) {
    let folder = root.join("uploads/acme").join(workspace);
    std::fs::create_dir_all(&folder).expect("tenant upload folder");
    std::fs::copy(root.join("uploads/photo.jpg"), folder.join("photo.jpg"))
        .expect("photo copied for the tenant");
}

/// Jobs waiting in every lane (high, normal, low) of `class`.
pub async fn queued_in_lanes(
    broker: &genfleet_broker::Broker,
    class: genfleet_broker::JobClass,
) -> u32 {
    let mut queued = 0;
    for lane in genfleet_broker::Lane::ALL {
        queued += broker
            .queue_depth(&class.lane_queue(lane))
            .await
            .expect("queue depth");
    }
    queued
}

/// The value of the first `/metrics` line that starts with `line_prefix`
/// (a series with its labels), 0 when absent.
pub async fn metric(port: u16, line_prefix: &str) -> f64 {
    let Some((_, body)) = http_get(port, "/metrics").await else {
        return 0.0;
    };
    body.lines()
        .find(|line| line.starts_with(line_prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `check` holds, failing the test after `within`.
pub async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let wait = async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// A local batch edit (resize to `long_side`, provider `local`) of
/// `org/workspace` on `uris`, holding `credits`: a job that needs no
/// provider fake.
pub fn local_edit_job(
    org: &str,
    workspace: &str,
    uris: &[String],
    long_side: u32,
    credits: i64,
) -> v1::Job {
    v1::Job {
        job_id: new_job_id(),
        tenant: Some(v1::Tenant {
            org: org.into(),
            workspace: workspace.into(),
            user: "e2e".into(),
        }),
        kind: v1::JobKind::BatchEdit as i32,
        inputs: uris
            .iter()
            .map(|uri| v1::Input {
                role: v1::InputRole::Product as i32,
                uri: uri.clone(),
                ..Default::default()
            })
            .collect(),
        preprocess: vec![v1::PreprocessStep {
            step: Some(v1::preprocess_step::Step::Resize(v1::Resize { long_side })),
        }],
        generation: Some(v1::Generation {
            providers: vec!["local".into()],
            ..Default::default()
        }),
        credits: Some(v1::CreditRequest {
            amount: credits,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every job some worker started, with how many times (the ledger's
/// `job_attempts` in `schema`): what a test compares results against to
/// know which jobs were running, rather than trusting the worker's logs.
pub fn job_starts(schema: &str) -> HashMap<String, u32> {
    let out = Command::new("psql")
        .args([
            PG_URL,
            "-At",
            "-F",
            " ",
            "-c",
            "SELECT job_id, started FROM job_attempts",
        ])
        .env("PGOPTIONS", format!("-c search_path={schema}"))
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "reading job_attempts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (job, started) = line.split_once(' ')?;
            Some((job.to_string(), started.parse().ok()?))
        })
        .collect()
}

/// `generation.parameters` of string values, e.g. `[("method", "model")]`.
pub fn string_parameters(pairs: &[(&str, &str)]) -> genfleet_proto::pbjson_types::Struct {
    use genfleet_proto::pbjson_types::{value::Kind, Struct, Value};
    Struct {
        fields: pairs
            .iter()
            .map(|(key, value)| {
                (
                    (*key).to_string(),
                    Value {
                        kind: Some(Kind::StringValue((*value).to_string())),
                    },
                )
            })
            .collect(),
    }
}

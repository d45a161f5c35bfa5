//! Every `genfleet_*` metric the Grafana dashboard (`k8s/grafana/genfleet.json`)
//! and the Prometheus rules (`k8s/prometheus/**.yaml`) name must exist on a
//! real worker's `/metrics`, so that renaming a metric breaks this test and
//! not, silently, a panel or an alert in production.
//!
//! - The names are found by a plain token scan of the files (every
//!   `genfleet_[a-z0-9_]+` not inside a longer identifier), so an expression,
//!   a variable query or an annotation that names a metric all count.
//! - They are compared with the *sample* names of the scrape (`# TYPE`
//!   families and their `_bucket`/`_sum`/`_count` series), so a `_bucket` of
//!   something that is no histogram is caught too.
//! - A worker exports a labelled family only once it has a series, so the
//!   test runs the jobs that give every name the dashboard and the rules use
//!   a series: a provider call, a refused one, a dead letter, an open
//!   breaker and a delayed job, a parked video, a lane move, a requeue, a
//!   malware scan.
//! - The GPU and inference names are served only by a worker with
//!   `[inference] enabled` on a GPU, which this test does not run: they are
//!   in [`INFERENCE_ONLY`] and checked against the names the code registers
//!   instead.
//! - RabbitMQ's own names (`rabbitmq_*`) are out of scope; recorded names
//!   (`genfleet:...`) used by the dashboard must be recorded by the rules.
//!
//! `a_renamed_metric_is_reported` proves the check can fail.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use genfleet_credits::Ledger;
use genfleet_proto::v1;
use genfleet_providers::fake_fal::FakeFal;
use genfleet_scan::testing::PrivateClamd;
use support::*;

const DASHBOARD: &str = "k8s/grafana/genfleet.json";
const PROMETHEUS_DIR: &str = "k8s/prometheus";
const RULE_FILE: &str = "k8s/prometheus/rules/genfleet.rules.yaml";
const PROMETHEUS_RULE: &str = "k8s/prometheus/prometheusrule.yaml";

/// Served only by a worker with `[inference] enabled` (the `gpu` pool):
/// NVML's readings of each GPU and the micro-batcher's. The test runs no
/// GPU worker, so these are checked against the names the code registers
/// (string literals in `crates/*/src`), not against a scrape.
const INFERENCE_ONLY: &[&str] = &[
    "genfleet_gpu_memory_used_bytes",
    "genfleet_gpu_memory_total_bytes",
    "genfleet_gpu_utilisation_ratio",
    "genfleet_gpu_temperature_celsius",
    "genfleet_gpu_power_watts",
    "genfleet_inference_batch_size",
    "genfleet_inference_batch_seconds",
    "genfleet_inference_admission_wait_seconds",
    "genfleet_inference_model_footprint_bytes",
    "genfleet_inference_execution_provider",
];

/// Histogram sample suffixes: a name in a query may carry one.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Every token `<prefix>[a-z0-9_...]+` of `text` that does not continue a
/// longer identifier (`__meta_..._genfleet_io_pool` is no metric). `extra`
/// are the further characters a token may hold (`:` for recorded names).
fn tokens(text: &str, prefix: &str, extra: &[char]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(prefix) {
        let start = from + at;
        from = start + prefix.len();
        if text[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &text[from..];
        let len = rest
            .find(|c: char| {
                !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || extra.contains(&c))
            })
            .unwrap_or(rest.len());
        if len > 0 {
            found.insert(format!("{prefix}{}", &rest[..len]));
        }
    }
    found
}

/// The `genfleet_*` metric names a file's text uses.
fn metric_names(text: &str) -> BTreeSet<String> {
    tokens(text, "genfleet_", &[])
}

/// Sample names of a Prometheus text exposition: each family of a `# TYPE`
/// line, a histogram's with its `_bucket`, `_sum` and `_count` series, and
/// the name of every sample line.
fn served_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                names.insert(name.to_string());
                if kind == "histogram" || kind == "summary" {
                    for suffix in HISTOGRAM_SUFFIXES {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The family a sample name belongs to (a histogram suffix removed).
fn family(name: &str) -> &str {
    HISTOGRAM_SUFFIXES
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// The metric names the code registers: every string literal that is
/// exactly a `genfleet_*` name in `crates/*/src/**.rs`.
fn registered_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![repo_path("crates")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("crates folder").flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs")
                && path.components().any(|c| c.as_os_str() == "src")
            {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for quoted in text.split('"').skip(1).step_by(2) {
                    if quoted.starts_with("genfleet_")
                        && quoted
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    {
                        names.insert(quoted.to_string());
                    }
                }
            }
        }
    }
    names
}

/// The files whose metric names are checked: the dashboard and every YAML
/// file under `k8s/prometheus` (rules, PrometheusRule, unit tests), as
/// (path, text).
fn checked_files() -> Vec<(String, String)> {
    let mut files = vec![(DASHBOARD.to_string(), read(DASHBOARD))];
    let mut stack = vec![repo_path(PROMETHEUS_DIR)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("k8s/prometheus").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let relative = path
                    .strip_prefix(repo_path(""))
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                files.push((
                    relative,
                    std::fs::read_to_string(&path).expect("readable YAML"),
                ));
            }
        }
    }
    files.sort();
    files
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The check itself: each `(file, name)` whose metric is neither served nor,
/// for an inference-only name, registered in the code. Empty when all exist.
fn missing_names(
    files: &[(String, String)],
    served: &BTreeSet<String>,
    registered: &BTreeSet<String>,
) -> Vec<(String, String)> {
    let mut missing = Vec::new();
    for (file, text) in files {
        for name in metric_names(text) {
            let exists = if INFERENCE_ONLY.contains(&family(&name)) {
                registered.contains(family(&name))
            } else {
                served.contains(&name)
            };
            if !exists {
                missing.push((file.clone(), name));
            }
        }
    }
    missing
}

/// Recorded names (`genfleet:...`) the dashboard uses that no rule records.
fn unrecorded_names(dashboard: &str, rules: &str) -> Vec<String> {
    let recorded: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|name| name.trim().to_string())
        .collect();
    tokens(dashboard, "genfleet:", &[':'])
        .into_iter()
        .filter(|name| !recorded.contains(name))
        .collect()
}

/// The dashboard's PromQL: every target's `expr`, each non-empty.
fn dashboard_exprs(dashboard: &str) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_str(dashboard).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    let panels = json["panels"].as_array().expect("panels");
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "panel {:?} has a target without an expression",
                panel["title"]
            );
            exprs.push(expr.to_string());
        }
    }
    exprs
}

#[test]
fn the_inference_only_names_are_the_dashboards_and_prefixed() {
    // The allow-list holds no name the dashboard does not use: a stale entry
    // would exempt a future metric of that name from the scrape.
    let used = metric_names(&read(DASHBOARD));
    for name in INFERENCE_ONLY {
        assert!(
            used.iter().any(|u| family(u) == *name),
            "{name} is allow-listed but not used by the dashboard"
        );
        assert!(
            name.starts_with("genfleet_gpu_") || name.starts_with("genfleet_inference_"),
            "{name}: only GPU and inference metrics may skip the scrape"
        );
    }
}

#[test]
fn the_dashboard_is_importable_json_with_its_variables() {
    let text = read(DASHBOARD);
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(json["__inputs"][0]["pluginId"], "prometheus");
    let variables: Vec<&str> = json["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "pool", "class"]);
    assert!(dashboard_exprs(&text).len() > 40);
    let unrecorded = unrecorded_names(&text, &read(RULE_FILE));
    assert!(
        unrecorded.is_empty(),
        "recorded names the rules do not record: {unrecorded:?}"
    );
}

/// The PrometheusRule carries exactly the groups of the rule file promtool
/// tests (indented under `spec:`); `k8s/prometheus/render.sh` writes it.
#[test]
fn the_prometheus_rule_is_the_rule_file() {
    let rules = read(RULE_FILE);
    let groups = &rules[rules.find("\ngroups:").expect("groups:") + 1..];
    let resource = read(PROMETHEUS_RULE);
    let spec = &resource[resource.find("\nspec:\n").expect("spec:") + "\nspec:\n".len()..];
    let unindented: Vec<&str> = spec
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect();
    let expected: Vec<&str> = groups.lines().collect();
    assert!(
        unindented == expected,
        "{PROMETHEUS_RULE} differs from {RULE_FILE}: run k8s/prometheus/render.sh"
    );
}

/// The check fails on a dashboard whose metric was renamed, naming it, and
/// on an inference name the code does not register. Served names here are
/// the code's registrations, so this runs without a worker.
#[test]
fn a_renamed_metric_is_reported() {
    let registered = registered_names();
    let mut served = BTreeSet::new();
    for name in &registered {
        served.insert(name.clone());
        for suffix in HISTOGRAM_SUFFIXES {
            served.insert(format!("{name}{suffix}"));
        }
    }
    let dashboard = read(DASHBOARD);
    assert!(dashboard.contains("genfleet_jobs_waiting"));
    let renamed = dashboard.replace("genfleet_jobs_waiting", "genfleet_jobs_queued_here");
    let missing = missing_names(&[(DASHBOARD.to_string(), renamed)], &served, &registered);
    assert_eq!(
        missing,
        [(
            DASHBOARD.to_string(),
            "genfleet_jobs_queued_here".to_string()
        )]
    );

    // A histogram suffix on a name that is served only as a gauge.
    let wrong_suffix = dashboard.replace(
        "genfleet_jobs_in_flight{",
        "genfleet_jobs_in_flight_bucket{",
    );
    let served_gauge_only: BTreeSet<String> =
        served_names("# TYPE genfleet_jobs_in_flight gauge\ngenfleet_jobs_in_flight 0\n");
    assert!(missing_names(
        &[(DASHBOARD.to_string(), wrong_suffix)],
        &served_gauge_only,
        &registered,
    )
    .contains(&(
        DASHBOARD.to_string(),
        "genfleet_jobs_in_flight_bucket".to_string()
    )));

    // An inference name is checked against the code's registrations.
    let no_registrations = BTreeSet::new();
    assert!(missing_names(
        &[(DASHBOARD.to_string(), dashboard.clone())],
        &served,
        &no_registrations,
    )
    .contains(&(
        DASHBOARD.to_string(),
        "genfleet_gpu_memory_used_bytes".to_string()
    )));

    // The scan skips identifiers that merely contain the prefix.
    assert_eq!(
        metric_names("__meta_kubernetes_pod_label_genfleet_io_pool genfleet_x{a=\"b\"} genfleet_*"),
        BTreeSet::from(["genfleet_x".to_string()])
    );
}

/// Inserts an outcome that is no `JobResult` for `job_id` into the ledger
/// in `schema`: the worker that meets the job requeues it
/// (`outcome_unreadable`), an infrastructure requeue without breaking any.
fn store_unreadable_outcome(schema: &str, job_id: &str) {
    let out = Command::new("psql")
        .args([
            PG_URL,
            "-q",
            "-c",
            &format!(
                "INSERT INTO job_outcomes (job_id, outcome) VALUES ('{job_id}', 'not a result'::bytea)"
            ),
        ])
        .env("PGOPTIONS", format!("-c search_path={schema}"))
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    body
}

/// Waits until the worker's `/metrics` has a series of `family`.
async fn until_served(port: u16, family: &str, worker: &WorkerProcess) {
    let within = Duration::from_secs(90);
    let wait = async {
        loop {
            if let Some((200, body)) = http_get(port, "/metrics").await {
                if served_names(&body).contains(family)
                    && body
                        .lines()
                        .any(|l| l.starts_with(family) && !l.starts_with('#'))
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    if tokio::time::timeout(within, wait).await.is_err() {
        panic!(
            "{family} not served after {within:?}:\n{}",
            worker.log_tail()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_the_rules_is_served_by_a_real_worker() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-dashboard");
    let store = store_with_photo(&dir.0);
    photo_for(&store, "dash");
    photo_for(&store, "video");
    let fal = FakeFal::start().await.unwrap();
    let clamd = PrivateClamd::start();
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    ledger.grant("acme/dash", 1000, "test").await.unwrap();
    ledger.grant("acme/video", 100, "test").await.unwrap();

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
            fal_poll_ms: 200,
        },
    );
    // One failure opens a model's breaker (the dashboard's breaker panels
    // and the delayed jobs); inputs are scanned; parked jobs come back after
    // 5 s.
    let toml = std::fs::read_to_string(&config).unwrap().replace(
        "breaker_failure_threshold = 1000",
        "breaker_failure_threshold = 1",
    );
    assert!(toml.contains("breaker_failure_threshold = 1\n"));
    let toml = format!(
        "{toml}\n[scanner]\nenabled = true\naddress = \"{}\"\ntimeout_seconds = 10\n\n[providers.park]\npoll_delays_seconds = [5]\n",
        clamd.unix_address()
    );
    std::fs::write(&config, toml).unwrap();

    let (_results, _queue) = results_queue(&vhost.url()).await;
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "dashboard-test")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    let mut worker = WorkerProcess::start(&config, dir.0.join("worker.log"));
    let port = wait_ready(&mut worker, Duration::from_secs(60)).await;

    // Three photos of one workspace at once: with 2 slots and a share of 1
    // per workspace, some move a lane down.
    for n in 0..3 {
        let job = fal_product_job(
            "dash",
            "test/ok",
            &format!("a vase {n}"),
            2,
            v1::Priority::Normal,
        );
        publish(&publisher, "remote", &job).await;
    }
    // Refused by the provider: provider_rejected, credits released.
    let refused = fal_product_job("dash", "test/nsfw", "a vase", 3, v1::Priority::High);
    publish(&publisher, "remote", &refused).await;
    // No job at all: a dead letter.
    publish_job(&publisher, "cpu", b"not a job", None).await;
    // A model that is down: its breaker opens, the next job is delayed.
    for n in 0..2 {
        let down = fal_product_job(
            "dash",
            "test/down",
            &format!("a vase {n}"),
            1,
            v1::Priority::Low,
        );
        publish(&publisher, "remote", &down).await;
    }
    // A video: submitted, then parked while fal renders.
    let mut video = fal_product_job(
        "video",
        "test/video",
        "the vase turns",
        3,
        v1::Priority::Normal,
    );
    video.kind = v1::JobKind::ImageToVideo as i32;
    publish(&publisher, "remote", &video).await;
    // A job whose stored outcome cannot be read: requeued.
    let unreadable = local_edit_job(
        "acme",
        "dash",
        &["s3://genfleet/uploads/acme/dash/photo.jpg".to_string()],
        128,
        1,
    );
    store_unreadable_outcome(&schema.name, &unreadable.job_id);
    publish(&publisher, "cpu", &unreadable).await;

    for family in [
        "genfleet_job_duration_seconds_count",
        "genfleet_job_errors_total",
        "genfleet_dead_letters_total",
        "genfleet_jobs_demoted_total",
        "genfleet_provider_circuit_open",
        "genfleet_jobs_delayed_total",
        "genfleet_jobs_parked_total",
        "genfleet_requeues_total",
        "genfleet_scans_total",
        "genfleet_credits_captured_total",
        "genfleet_credits_released_total",
    ] {
        until_served(port, family, &worker).await;
    }

    let body = scrape(port).await;
    let served = served_names(&body);
    let registered = registered_names();
    let files = checked_files();
    let missing = missing_names(&files, &served, &registered);
    assert!(
        missing.is_empty(),
        "metric names the dashboard or the rules use that the worker does not serve \
         (renamed? or an inference name the code does not register): {missing:?}\n\
         served:\n{}",
        served.iter().cloned().collect::<Vec<_>>().join("\n")
    );
    // Something was checked: the dashboard's and the rules' names.
    let used: BTreeSet<String> = files.iter().flat_map(|(_, t)| metric_names(t)).collect();
    assert!(used.len() > 25, "{used:?}");

    // The same check on a copy of the dashboard with a metric renamed,
    // against this real scrape, reports that name and no other.
    let renamed = read(DASHBOARD).replace("genfleet_jobs_parked_total", "genfleet_jobs_parked");
    assert_eq!(
        missing_names(&[(DASHBOARD.to_string(), renamed)], &served, &registered),
        [(DASHBOARD.to_string(), "genfleet_jobs_parked".to_string())]
    );

    let status = worker.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", worker.log_tail());
    drop(clamd);
}

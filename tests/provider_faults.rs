//! The provider fault table through the real worker: provider fakes that
//! refuse a share of submits with 429 or 503, break a share of status and
//! result reads mid-body, cut a share of result bodies short (fal and
//! Replicate, the providers with request ids to read), reset status polls
//! and output downloads or cut downloads short (fal and Replicate), lose
//! the answer of a share of submits they ran (all five), or go down for a
//! minute (all five). Every job with a deadline of a few minutes must
//! succeed, rendered once (accepted submits equal jobs, plus exactly one
//! per lost submit answer, the one double render nothing can avoid) and
//! charged once;
//! with a deadline shorter than the outage, the jobs end failed with their
//! credits released.

mod support;

use std::time::Duration;

use genfleet_credits::Ledger;
use genfleet_proto::v1;
use genfleet_providers::fake_fal::FakeFal;
use genfleet_providers::fake_faults::{FaultCounts, Faults};
use genfleet_providers::fake_kserve::FakeKServe;
use genfleet_providers::fake_openai::FakeOpenAi;
use genfleet_providers::fake_replicate::FakeReplicate;
use genfleet_providers::fake_vertex::FakeVertex;
use support::*;

/// Jobs per scenario.
const JOBS: usize = 50;
/// Credits each job holds.
const CREDITS: i64 = 2;
/// The outage of the last scenarios: as the issue has it, a minute.
const OUTAGE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fake {
    Fal,
    Replicate,
    Vertex,
    OpenAi,
    KServe,
}

impl Fake {
    fn name(self) -> &'static str {
        match self {
            Fake::Fal => "fal",
            Fake::Replicate => "replicate",
            Fake::Vertex => "vertex",
            Fake::OpenAi => "openai",
            Fake::KServe => "kserve",
        }
    }

    /// Whether the provider keeps requests to read later (a status, a
    /// result): only then do the read rows of the table apply.
    fn has_request_ids(self) -> bool {
        matches!(self, Fake::Fal | Fake::Replicate)
    }

    /// The kind and model of a job for this provider that its fake renders.
    fn kind_and_model(self) -> (v1::JobKind, &'static str) {
        match self {
            Fake::Fal | Fake::Replicate => (v1::JobKind::ProductPhoto, ""),
            Fake::Vertex => (v1::JobKind::ProductPhoto, "imagen-ok"),
            Fake::OpenAi => (v1::JobKind::ProductPhoto, "test/ok"),
            // The GPU pool's default background-removal model.
            Fake::KServe => (v1::JobKind::BackgroundRemoval, ""),
        }
    }
}

struct Fakes {
    fal: FakeFal,
    replicate: FakeReplicate,
    vertex: FakeVertex,
    openai: FakeOpenAi,
    kserve: FakeKServe,
}

impl Fakes {
    fn set_faults(&self, which: Fake, faults: Faults) {
        match which {
            Fake::Fal => self.fal.set_faults(faults),
            Fake::Replicate => self.replicate.set_faults(faults),
            Fake::Vertex => self.vertex.set_faults(faults),
            Fake::OpenAi => self.openai.set_faults(faults),
            Fake::KServe => self.kserve.set_faults(faults),
        }
    }

    fn start_outage(&self, which: Fake, length: Duration) {
        match which {
            Fake::Fal => self.fal.start_outage(length),
            Fake::Replicate => self.replicate.start_outage(length),
            Fake::Vertex => self.vertex.start_outage(length),
            Fake::OpenAi => self.openai.start_outage(length),
            Fake::KServe => self.kserve.start_outage(length),
        }
    }

    fn counts(&self, which: Fake) -> FaultCounts {
        match which {
            Fake::Fal => self.fal.fault_counts(),
            Fake::Replicate => self.replicate.fault_counts(),
            Fake::Vertex => self.vertex.fault_counts(),
            Fake::OpenAi => self.openai.fault_counts(),
            Fake::KServe => self.kserve.fault_counts(),
        }
    }
}

/// One row of the table.
struct Scenario {
    name: &'static str,
    /// A row of read faults: only for providers with request ids.
    reads: bool,
    faults: Faults,
    outage: bool,
    /// Each job's deadline, from its publication.
    deadline: Duration,
    /// Whether every job must succeed (else: every job must fail, released).
    all_succeed: bool,
}

fn table() -> Vec<Scenario> {
    let long = Duration::from_secs(300);
    vec![
        Scenario {
            reads: false,
            name: "rate-limited",
            faults: Faults {
                submit_rate_limited: 0.3,
                retry_after_secs: 1,
                ..Faults::default()
            },
            outage: false,
            deadline: long,
            all_succeed: true,
        },
        Scenario {
            reads: false,
            name: "unavailable",
            faults: Faults {
                submit_unavailable: 0.3,
                ..Faults::default()
            },
            outage: false,
            deadline: long,
            all_succeed: true,
        },
        Scenario {
            reads: true,
            name: "reset-reads",
            faults: Faults {
                read_reset: 0.3,
                ..Faults::default()
            },
            outage: false,
            deadline: long,
            all_succeed: true,
        },
        Scenario {
            reads: true,
            name: "truncated-results",
            faults: Faults {
                result_truncated: 0.3,
                ..Faults::default()
            },
            outage: false,
            deadline: long,
            all_succeed: true,
        },
        Scenario {
            reads: false,
            name: "lost-answers",
            faults: Faults {
                submit_answer_lost: 0.3,
                ..Faults::default()
            },
            outage: false,
            deadline: long,
            all_succeed: true,
        },
        Scenario {
            reads: true,
            name: "status-resets-and-broken-downloads",
            faults: Faults {
                status_reset: 0.3,
                download_reset: 0.2,
                download_truncated: 0.2,
                ..Faults::default()
            },
            outage: false,
            deadline: long,
            all_succeed: true,
        },
        Scenario {
            reads: false,
            name: "outage",
            faults: Faults::default(),
            outage: true,
            deadline: long,
            all_succeed: true,
        },
        Scenario {
            reads: false,
            name: "outage-past-deadline",
            faults: Faults::default(),
            outage: true,
            deadline: Duration::from_secs(20),
            all_succeed: false,
        },
    ]
}

fn job(which: Fake, workspace: &str, deadline: Duration) -> v1::Job {
    let (kind, model) = which.kind_and_model();
    let mut job = fal_product_job(
        workspace,
        model,
        "a bottle on marble",
        CREDITS,
        v1::Priority::Normal,
    );
    job.kind = kind as i32;
    if let Some(generation) = job.generation.as_mut() {
        generation.providers = vec![which.name().to_string()];
    }
    let at = std::time::SystemTime::now() + deadline;
    let since = at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch");
    job.deadline = Some(genfleet_proto::pbjson_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).expect("seconds fit"),
        nanos: 0,
    });
    job
}

async fn fault_table(which: Fake) {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new(&format!("genfleet-faults-{}", which.name()));
    let store = store_with_photo(&dir.0);
    let fakes = Fakes {
        fal: FakeFal::start().await.unwrap(),
        replicate: FakeReplicate::start().await.unwrap(),
        vertex: FakeVertex::start().await.unwrap(),
        openai: FakeOpenAi::start().await.unwrap(),
        kserve: FakeKServe::start().await.unwrap(),
    };
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    let scenarios: Vec<Scenario> = table()
        .into_iter()
        .filter(|row| !row.reads || which.has_request_ids())
        .collect();
    for scenario in &scenarios {
        let account = format!("acme/{}", scenario.name);
        ledger.grant(&account, 1000, "test").await.unwrap();
        photo_for(&store, scenario.name);
    }
    let (conn, queue) = results_queue(&vhost.url()).await;
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "faults-test")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();

    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &store,
            fal_base_url: fakes.fal.base_url.as_str(),
            concurrency: 8,
            grace_seconds: 10,
            http_port: 0,
            fal_poll_ms: 50,
        },
    );
    // A real breaker here (the shared test config turns it off): three
    // failures in a row open it, a probe every five seconds; from then on
    // jobs wait in the retry queues for the probe. A job may call its
    // provider ten times: with 30% of calls failing at random positions
    // among other jobs' calls, four attempts all fail for about one job in
    // 120 (0.3^4), which is the retry budget's verdict, not the fault this
    // table is about (that a breaker, a 429 or a bad read costs no job);
    // ten make it one in 170,000.
    let toml = std::fs::read_to_string(&config).unwrap().replace(
        "breaker_failure_threshold = 1000",
        "breaker_failure_threshold = 3\nbreaker_open_seconds = 5",
    );
    let toml = toml.replace("max_attempts = 3", "max_attempts = 10");
    // The adaptive bucket on, as in production: 429s slow fal down.
    let toml = toml.replace("adaptive_rate = false", "adaptive_rate = true");
    let toml = toml.replace("max_wait_seconds = 30", "max_wait_seconds = 60");
    let toml = format!(
        r#"{toml}
[providers.replicate]
enabled = true
base_url = "{replicate}"
token = "r8-test-token"
poll_interval_ms = 50

[providers.replicate.limits]
breaker_failure_threshold = 3
breaker_open_seconds = 5

[providers.vertex]
enabled = true
project = "shop-project"
region = "us-central1"
base_url = "{vertex}"
token_url = "{token_url}"

[providers.vertex.limits]
breaker_failure_threshold = 3
breaker_open_seconds = 5

[providers.openai]
enabled = true
base_url = "{openai}"
api_key = "sk-test-key"

[providers.openai.limits]
breaker_failure_threshold = 3
breaker_open_seconds = 5

[providers.kserve]
enabled = true
base_url = "{kserve}"

[providers.kserve.limits]
breaker_failure_threshold = 3
breaker_open_seconds = 5
"#,
        replicate = fakes.replicate.base_url,
        vertex = fakes.vertex.base_url,
        token_url = fakes.vertex.token_url(),
        openai = fakes.openai.base_url,
        kserve = fakes.kserve.base_url,
    );
    std::fs::write(&config, toml).unwrap();
    let mut worker = WorkerProcess::start(&config, dir.0.join("worker.log"));
    let port = wait_ready(&mut worker, Duration::from_secs(60)).await;

    let mut report = Vec::new();
    // GENFLEET_FAULT_SCENARIOS=outage,... runs only those rows (debugging).
    let only = std::env::var("GENFLEET_FAULT_SCENARIOS").ok();
    for scenario in &scenarios {
        if only
            .as_deref()
            .is_some_and(|only| !only.split(',').any(|name| name == scenario.name))
        {
            continue;
        }
        let before = fakes.counts(which);
        fakes.set_faults(which, scenario.faults.clone());
        if scenario.outage {
            fakes.start_outage(which, OUTAGE);
        }
        let jobs: Vec<v1::Job> = (0..JOBS)
            .map(|_| job(which, scenario.name, scenario.deadline))
            .collect();
        for job in &jobs {
            publish(&publisher, "remote", job).await;
        }
        let within = scenario.deadline + Duration::from_secs(60);
        let got = collect_results(&conn, &queue, JOBS, within).await;
        fakes.set_faults(which, Faults::default());
        let after = fakes.counts(which);
        let accepted = after.submits_accepted - before.submits_accepted;
        let refused = after.submits_refused - before.submits_refused;
        let lost = after.submit_answers_lost - before.submit_answers_lost;
        let rows = format!(
            "{} {}: {} results, accepted submits {accepted}, refused submits {refused}, \
             result reads {}, lost answers {lost}, broken downloads {}",
            which.name(),
            scenario.name,
            got.results.len(),
            after.result_reads - before.result_reads,
            after.downloads_broken - before.downloads_broken,
        );
        println!("{rows}");
        report.push(rows);
        assert_eq!(
            got.results.len(),
            JOBS,
            "{}: every job ends with a result\n{}",
            scenario.name,
            worker.log_tail()
        );
        let balance = ledger
            .balance(&format!("acme/{}", scenario.name))
            .await
            .unwrap()
            .unwrap();
        for job in &jobs {
            let (result, _) = &got.results[&job.job_id];
            let credits = result.credits.unwrap_or_default();
            if scenario.all_succeed {
                assert_eq!(
                    result.status,
                    v1::JobStatus::Succeeded as i32,
                    "{}: {result:?}\n{}",
                    scenario.name,
                    worker.log_tail()
                );
                assert_eq!(result.provider, which.name(), "{}", scenario.name);
                assert_eq!(
                    (credits.captured, credits.released),
                    (CREDITS, 0),
                    "{}",
                    scenario.name
                );
            } else {
                assert_ne!(
                    result.status,
                    v1::JobStatus::Succeeded as i32,
                    "{}: {result:?}",
                    scenario.name
                );
                let code = result.error.as_ref().map(|e| e.code.as_str());
                assert!(
                    matches!(code, Some("provider_unavailable" | "deadline_exceeded")),
                    "{}: {result:?}",
                    scenario.name
                );
                assert_eq!(credits.captured, 0, "{}: {result:?}", scenario.name);
            }
        }
        if scenario.all_succeed {
            // Rendered once: one accepted submit per job, whatever was
            // refused or failed to read in between; except that a submit
            // whose answer was lost ran (and is billed) without the worker
            // learning of it, and the retry submits again: no provider here
            // takes an idempotency key, and no client recovers the lost
            // request, so each lost answer costs exactly one more render,
            // never more (the customer is still charged once, below).
            assert_eq!(accepted, JOBS as u64 + lost, "{}", scenario.name);
            if scenario.name == "lost-answers" {
                assert!(lost > 0, "{}: no answer was lost", scenario.name);
            }
            // Charged once, and nothing left held.
            assert_eq!(
                (balance.captured, balance.held),
                (CREDITS * JOBS as i64, 0),
                "{}",
                scenario.name
            );
        } else {
            // At most the jobs that got through before the deadline were
            // rendered; none was charged.
            assert!(accepted <= JOBS as u64, "{}: {accepted}", scenario.name);
            assert_eq!(
                (balance.captured, balance.held),
                (0, 0),
                "{}",
                scenario.name
            );
        }
    }
    println!("{}", report.join("\n"));
    let metrics = http_get(port, "/metrics").await.map(|(_, body)| body);
    let metrics = metrics.unwrap_or_default();
    let mut expected = vec![
        "genfleet_jobs_delayed_total",
        "genfleet_deliveries_total{disposition=\"delay\"}",
    ];
    if which.has_request_ids() {
        expected.push("genfleet_provider_repeated_reads_total");
    }
    for name in expected {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let status = worker.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{}", worker.log_tail());
}

/// The five providers' tables run at once, each against its own worker,
/// vhost, schema and fakes: the rows mostly wait (retry queues, a minute's
/// outage), so together they take as long as the slowest one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_faults_cost_no_job_and_no_second_render() {
    let runs: Vec<_> = [
        Fake::Fal,
        Fake::Replicate,
        Fake::Vertex,
        Fake::OpenAi,
        Fake::KServe,
    ]
    .into_iter()
    .map(|which| (which, tokio::spawn(fault_table(which))))
    .collect();
    let mut failed = Vec::new();
    for (which, run) in runs {
        if let Err(e) = run.await {
            failed.push(format!("{}: {e}", which.name()));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

//! 2,000 slow provider calls in flight on one worker, beside Celery's gevent
//! pool doing the same HTTP exchanges.
//!
//! `cargo bench --bench inflight`. Four scenarios per run, in two pairs,
//! against the fake fal queue API answering `test/sleep-<ms>` requests after
//! `<ms>`:
//!
//! Workers (broker to ack; figures of the worker's process tree):
//!
//! - **genfleet worker**: the real `genfleet worker` binary (concurrency and
//!   `providers.fal.limits.max_concurrent` = the job count, fal's default 500 ms
//!   poll) consumes product-photo jobs from RabbitMQ, holds credits in
//!   PostgreSQL, calls the fake, stores the output, publishes results and
//!   acks; the fake runs in this process on its own runtime.
//! - **Celery gevent** (when `/var/tmp/genfleet-celery-venv` exists, or with
//!   `GENFLEET_INFLIGHT_CELERY=1`, which creates it from
//!   `benches/celery/requirements.txt`): `celery -A tasks worker -P gevent
//!   -c <jobs> --prefetch-multiplier 1` (acks late, a quorum queue) running
//!   `benches/celery/tasks.py` against the same in-process fake: the HTTP
//!   exchange only, no result.
//!
//! Bare calls (no broker; figures of the calling process):
//!
//! - **provider layer**: a child process (this binary, re-executed) makes
//!   the same number of concurrent `Guarded<FalProvider>::generate` calls
//!   against a fake served by another child.
//! - **gevent calls** (with the Celery venv): `benches/celery/calls.py`
//!   makes the same calls in as many greenlets, with the same Python code as
//!   the Celery task (`fal_exchange.py`), against the same kind of child.
//!
//! Ratios are taken within a pair only: a bare call loop does none of a
//! broker consumer's work (deliveries, acks, a log line per task, the input
//! read per job), so neither bare loop is set against a worker.
//!
//! Figures per run: wall time from the first publish (call) to the worker's
//! last job ack leaving it (the last call's return). Both workers' AMQP
//! connections go through a loopback relay in this process (`AckTap`) that
//! notes each `basic.ack` frame as it passes: genfleet acks a job after its
//! result is confirmed, Celery (acks late) after the task returns, and
//! neither says so in a way the bench could see otherwise. The worker's
//! idle RSS before publishing and its peak RSS (`VmHWM`), summed over its
//! process tree; its CPU time (utime + stime from `/proc/<pid>/stat`, the
//! same tree) over the same window, per job. The bare calls read the same
//! figures of their own process around the calls. Medians of the runs,
//! then the ratios.
//!
//! Knobs: `GENFLEET_INFLIGHT_JOBS` (2000), `GENFLEET_INFLIGHT_DELAY_MS`
//! (2000), `GENFLEET_INFLIGHT_RUNS` (3), `GENFLEET_INFLIGHT_INPUT` (`photo`:
//! the 100 kB 1024x683 example JPEG; `tiny`: a 64x64 JPEG; or a path),
//! `GENFLEET_INFLIGHT_CELERY` (`1`: create the venv if missing; `0`: skip
//! Celery and gevent), `GENFLEET_INFLIGHT_PERF=1` (one more genfleet run
//! under `perf record`, not in the medians, with the worker's CPU broken
//! down by library).
//!
//! Benchmarks print figures; nothing here asserts a time.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use genfleet_credits::Ledger;
use genfleet_proto::v1;
use genfleet_providers::fake_fal::FakeFal;
use genfleet_providers::{
    FalConfig, FalProvider, GenerationRequest, GuardConfig, Guarded, InputImage, InputRole,
    JobKind, Provider as _, Spool,
};
use support::*;

const VENV: &str = "/var/tmp/genfleet-celery-venv";
/// Jobs published at once: enough to keep the broker busy, few enough that
/// publishing stays a fraction of a second.
const PUBLISH_AHEAD: usize = 64;
/// Longest any scenario may take before it is reported as incomplete.
const RUN_LIMIT: Duration = Duration::from_secs(600);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--serve-fake") => serve_fake(),
        Some("--provider-calls") => provider_calls(&args[1..]),
        _ => bench(),
    }
}

/// What the environment asks for.
struct Knobs {
    jobs: usize,
    delay_ms: u64,
    runs: usize,
    input: PathBuf,
    input_label: String,
    celery: Option<PathBuf>,
    perf: bool,
    /// /proc's clock ticks per second.
    ticks_per_second: f64,
}

impl Knobs {
    fn model(&self) -> String {
        format!("test/sleep-{}", self.delay_ms)
    }

    fn ms_per_tick(&self) -> f64 {
        1000.0 / self.ticks_per_second
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}

fn bench() {
    let jobs: usize = env_number("GENFLEET_INFLIGHT_JOBS", 2000);
    assert!(
        (1..=usize::from(u16::MAX)).contains(&jobs),
        "GENFLEET_INFLIGHT_JOBS must be 1..=65535 (the worker's concurrency is a u16)"
    );
    let scratch = TempDir::new("genfleet-inflight");
    let (input, input_label) = input_file(&scratch.0);
    let knobs = Knobs {
        jobs,
        delay_ms: env_number("GENFLEET_INFLIGHT_DELAY_MS", 2000),
        runs: env_number("GENFLEET_INFLIGHT_RUNS", 3).max(1),
        input,
        input_label,
        celery: celery_venv(),
        perf: std::env::var("GENFLEET_INFLIGHT_PERF").is_ok_and(|v| v == "1"),
        ticks_per_second: clock_ticks_per_second(),
    };
    println!(
        "inflight: {} jobs of {} (fal poll 500 ms), input {}, {} run(s); Celery {}",
        knobs.jobs,
        knobs.model(),
        knobs.input_label,
        knobs.runs,
        if knobs.celery.is_some() {
            "included"
        } else {
            "skipped (GENFLEET_INFLIGHT_CELERY=1 creates its venv)"
        },
    );

    // The bench's own work (collecting results) on one thread; the fake on
    // two of its own, so neither waits on the other.
    let main_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("bench runtime");
    let fake_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fake-fal")
        .enable_all()
        .build()
        .expect("fake fal runtime");
    // The AMQP relay that times the workers' acks, on a thread of its own.
    let tap_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ack-tap")
        .enable_all()
        .build()
        .expect("relay runtime");

    let mut all = Scenarios::default();
    for run in 1..=knobs.runs {
        let figures = main_rt.block_on(genfleet_run(&knobs, &fake_rt, &tap_rt, None));
        print_row("genfleet worker", run, &figures, &knobs);
        all.genfleet.push(figures);
        settle();

        if let Some(venv) = &knobs.celery {
            let figures = main_rt.block_on(celery_run(&knobs, &fake_rt, &tap_rt, venv));
            print_row("Celery gevent", run, &figures, &knobs);
            all.celery.push(figures);
            settle();
        }

        let figures = provider_run(&knobs);
        print_row("provider layer", run, &figures, &knobs);
        all.provider.push(figures);
        settle();

        if let Some(venv) = &knobs.celery {
            let figures = gevent_run(&knobs, venv);
            print_row("gevent calls", run, &figures, &knobs);
            all.gevent.push(figures);
            settle();
        }
    }

    println!();
    print_table(&knobs, &all);

    if knobs.perf {
        let profile = std::env::temp_dir().join("genfleet-inflight-worker.perf.data");
        let figures = main_rt.block_on(genfleet_run(&knobs, &fake_rt, &tap_rt, Some(&profile)));
        println!();
        print_row("genfleet (perf)", 0, &figures, &knobs);
        perf_breakdown(&profile, &figures, &knobs);
    }
}

/// A pause between scenarios, so one's shutdown does not land in the next
/// one's figures.
fn settle() {
    std::thread::sleep(Duration::from_secs(2));
}

/// The input photo every job (and every Celery task) sends.
fn input_file(scratch: &Path) -> (PathBuf, String) {
    let choice = std::env::var("GENFLEET_INFLIGHT_INPUT").unwrap_or_else(|_| "photo".into());
    match choice.as_str() {
        "photo" => {
            let path = repo_path("examples/photos/dandelions_1024.jpg");
            let label = format!("photo ({} kB JPEG, 1024 px)", file_kb(&path));
            (path, label)
        }
        "tiny" => {
            let path = scratch.join("tiny.jpg");
            let image = image::RgbImage::from_fn(64, 64, |x, y| {
                image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8])
            });
            image
                .save_with_format(&path, image::ImageFormat::Jpeg)
                .expect("tiny JPEG written");
            let label = format!("tiny ({} kB JPEG, 64 px)", file_kb(&path));
            (path, label)
        }
        other => {
            let path = PathBuf::from(other);
            let label = format!("{other} ({} kB)", file_kb(&path));
            (path, label)
        }
    }
}

fn file_kb(path: &Path) -> u64 {
    let len = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("input {}: {e}", path.display()))
        .len();
    len.div_ceil(1024)
}

// ---------------------------------------------------------------------------
// Figures

/// One scenario's run.
#[derive(Debug, Clone, Default)]
struct Figures {
    /// First publish to the worker's last job ack leaving it (bare calls:
    /// first call to the last call's return).
    wall: Duration,
    /// First to last publish.
    publish: Duration,
    idle_rss_kb: u64,
    peak_rss_kb: u64,
    /// CPU clock ticks the measured processes spent from just before the
    /// first publish (call) to just after the last ack (return).
    cpu_ticks: u64,
    /// Jobs that finished as expected.
    ok: usize,
    /// The most jobs at the fake at once (submitted, output not yet
    /// downloaded); `None` where the fake runs in another process.
    at_provider: Option<u64>,
    /// Job acks the worker sent (`None` for the bare-calls scenarios,
    /// which have no broker).
    acks: Option<usize>,
    /// Processes in the measured set at the end (the worker's tree, or the
    /// calling process).
    processes: usize,
    /// A line on what went wrong, if anything.
    trouble: Option<String>,
}

impl Figures {
    fn cpu_ms(&self, knobs: &Knobs) -> f64 {
        self.cpu_ticks as f64 * knobs.ms_per_tick()
    }

    fn cpu_ms_per_job(&self, knobs: &Knobs) -> f64 {
        self.cpu_ms(knobs) / knobs.jobs as f64
    }

    /// Peak above idle, per job in flight.
    fn kb_per_job(&self, knobs: &Knobs) -> f64 {
        self.peak_rss_kb.saturating_sub(self.idle_rss_kb) as f64 / knobs.jobs as f64
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn print_row(name: &str, run: usize, f: &Figures, knobs: &Knobs) {
    println!(
        "{name:<16} run {run}: {:>6.2} s wall ({:.2} s publishing), idle {:>6.1} MB, peak {:>6.1} MB RSS ({:>5.1} kB/job), CPU {:>6.2} s = {:>6.3} ms/job ({} process(es)), {}/{} ok, acks {}, at the provider at once: {}{}",
        f.wall.as_secs_f64(),
        f.publish.as_secs_f64(),
        mb(f.idle_rss_kb),
        mb(f.peak_rss_kb),
        f.kb_per_job(knobs),
        f.cpu_ms(knobs) / 1000.0,
        f.cpu_ms_per_job(knobs),
        f.processes,
        f.ok,
        knobs.jobs,
        f.acks.map_or_else(|| "-".to_string(), |n| n.to_string()),
        f.at_provider
            .map_or_else(|| "-".to_string(), |n| n.to_string()),
        f.trouble
            .as_deref()
            .map(|t| format!(" -- {t}"))
            .unwrap_or_default(),
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Medians of one scenario: wall s, idle MB, peak MB, CPU ms/job.
struct Medians {
    wall_s: f64,
    idle_mb: f64,
    peak_mb: f64,
    cpu_ms_per_job: f64,
}

fn medians(runs: &[Figures], knobs: &Knobs) -> Medians {
    let of = |f: &dyn Fn(&Figures) -> f64| median(runs.iter().map(f).collect());
    Medians {
        wall_s: of(&|r| r.wall.as_secs_f64()),
        idle_mb: of(&|r| mb(r.idle_rss_kb)),
        peak_mb: of(&|r| mb(r.peak_rss_kb)),
        cpu_ms_per_job: of(&|r| r.cpu_ms_per_job(knobs)),
    }
}

/// Every run of each scenario.
#[derive(Default)]
struct Scenarios {
    genfleet: Vec<Figures>,
    celery: Vec<Figures>,
    provider: Vec<Figures>,
    gevent: Vec<Figures>,
}

/// Two tables of like against like: the two workers (broker to ack, each
/// worker's process tree), and the two bare call loops (no broker, the
/// calling process). No ratio crosses them: a bare call loop does none of
/// a broker consumer's work.
fn print_table(knobs: &Knobs, all: &Scenarios) {
    println!(
        "medians of {} run(s), {} jobs in flight, {} ms provider delay, input {}:",
        knobs.runs, knobs.jobs, knobs.delay_ms, knobs.input_label
    );
    let header = || {
        println!(
            "| {:<44} | {:>9} | {:>12} | {:>12} | {:>12} |",
            "scenario", "wall s", "idle RSS MB", "peak RSS MB", "CPU ms/job"
        );
        println!(
            "|{:-<46}|{:->11}|{:->14}|{:->14}|{:->14}|",
            "", "", "", "", ""
        );
    };
    let row = |name: &str, m: &Medians| {
        println!(
            "| {name:<44} | {:>9.2} | {:>12.1} | {:>12.1} | {:>12.3} |",
            m.wall_s, m.idle_mb, m.peak_mb, m.cpu_ms_per_job
        );
    };
    let ratio = |name: &str, theirs: &Medians, ours: &Medians| {
        println!(
            "| {name:<44} | {:>8.2}x | {:>11.2}x | {:>11.2}x | {:>11.2}x |",
            theirs.wall_s / ours.wall_s,
            theirs.idle_mb / ours.idle_mb,
            theirs.peak_mb / ours.peak_mb,
            theirs.cpu_ms_per_job / ours.cpu_ms_per_job
        );
    };

    println!("workers, first publish to last ack, the worker's process tree:");
    header();
    let g = medians(&all.genfleet, knobs);
    row("genfleet worker (whole job)", &g);
    let c = (!all.celery.is_empty()).then(|| medians(&all.celery, knobs));
    if let Some(c) = &c {
        row("Celery 5.6 gevent worker (HTTP exchange)", c);
        ratio("Celery / genfleet", c, &g);
    }

    println!("bare calls, first call to last return, the calling process:");
    header();
    let p = medians(&all.provider, knobs);
    row("genfleet provider layer", &p);
    if !all.gevent.is_empty() {
        let e = medians(&all.gevent, knobs);
        row("gevent + requests (same exchange)", &e);
        ratio("gevent / genfleet", &e, &p);
    }
    if c.is_none() {
        println!("(Celery and gevent skipped: GENFLEET_INFLIGHT_CELERY=1 creates {VENV})");
    }
}

// ---------------------------------------------------------------------------
// /proc

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid`, plus those of its children that it waited for.
fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields are counted after its `)`.
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11) // state ... majflt/cmajflt: utime is field 14
        .take(4) // utime, stime, cutime, cstime
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.iter().sum()
}

/// `pid` and its descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        next += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            tree.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    tree
}

/// A `status` figure summed over `pid`'s process tree.
fn tree_rss_kb(pid: u32, key: &str) -> u64 {
    process_tree(pid).iter().map(|&p| status_kb(p, key)).sum()
}

fn tree_cpu_ticks(pid: u32) -> u64 {
    process_tree(pid).iter().map(|&p| cpu_ticks(p)).sum()
}

// ---------------------------------------------------------------------------
// genfleet worker

/// A fresh fake fal on the fake's own runtime (its server task runs there,
/// not on the bench's).
async fn start_fake(fake_rt: &tokio::runtime::Runtime) -> FakeFal {
    fake_rt
        .spawn(FakeFal::start())
        .await
        .expect("fake fal task")
        .expect("fake fal starts")
}

/// `<dir>/store/uploads/acme/shop-1/photo.jpg` = the chosen input (the
/// jobs are `acme/shop-1`'s, and a worker reads only the tenant's uploads).
fn store_with_input(dir: &Path, input: &Path) -> PathBuf {
    let root = dir.join("store");
    let uploads = root.join("uploads/acme/shop-1");
    std::fs::create_dir_all(&uploads).expect("store folder");
    std::fs::copy(input, uploads.join("photo.jpg")).expect("input copied");
    root
}

fn product_job(knobs: &Knobs, i: usize) -> v1::Job {
    let mut job = fal_product_job(
        "shop-1",
        &knobs.model(),
        &format!("the mug on a marble counter, take {i}"),
        1,
        v1::Priority::Normal,
    );
    if let Some(generation) = job.generation.as_mut() {
        generation.count = 1;
    }
    job.outputs = Some(v1::OutputSpec {
        formats: vec![v1::OutputFormat::Jpeg as i32],
        presets: vec!["original".into()],
        ..Default::default()
    });
    job
}

/// One run of the real worker: start it, publish the jobs once it is ready,
/// collect every result and wait for every job's ack, stop it. With
/// `profile`, `perf record` watches the worker while the jobs run.
async fn genfleet_run(
    knobs: &Knobs,
    fake_rt: &tokio::runtime::Runtime,
    tap_rt: &tokio::runtime::Runtime,
    profile: Option<&Path>,
) -> Figures {
    let vhost = Vhost::create();
    let tap = AckTap::start(tap_rt, &vhost.url());
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-inflight-worker");
    let root = store_with_input(&dir.0, &knobs.input);
    let fake = start_fake(fake_rt).await;

    let ledger = Ledger::connect(PG_URL, &schema.name, 2)
        .await
        .expect("ledger");
    ledger.migrate().await.expect("migrations");
    ledger
        .grant("acme/shop-1", knobs.jobs as i64, "inflight bench")
        .await
        .expect("credits granted");
    let (conn, results) = results_queue(&vhost.url()).await;

    let fal_url = fake.base_url.to_string();
    let jobs = u16::try_from(knobs.jobs).expect("checked above");
    let config = write_config(
        &dir.0,
        &WorkerSettings {
            // The worker's connection goes through the relay; the bench's
            // own (publishing, reading results) straight to the broker.
            amqp_url: tap.url.clone(),
            schema: &schema.name,
            storage_root: &root,
            fal_base_url: &fal_url,
            concurrency: jobs,
            grace_seconds: 30,
            http_port: 0,
            fal_poll_ms: 500,
        },
    );
    let jobs_text = knobs.jobs.to_string();
    let env = [
        (
            "GENFLEET__PROVIDERS__FAL__LIMITS__MAX_CONCURRENT",
            jobs_text.as_str(),
        ),
        // One workspace publishes them all: without this, jobs past half the
        // concurrency would be moved to the low lane first (republished and
        // acked), which is fairness work the Celery side does not do.
        (
            "GENFLEET__WORKER__MAX_IN_FLIGHT_PER_WORKSPACE",
            jobs_text.as_str(),
        ),
        // The compiled defaults where the test configuration shortens them.
        ("GENFLEET__DATABASE__POOL_SIZE", "8"),
        ("GENFLEET__PROVIDERS__FAL__REQUEST_TIMEOUT_SECONDS", "60"),
        ("GENFLEET__PROVIDERS__MAX_WAIT_SECONDS", "600"),
    ];
    let mut worker = WorkerProcess::start_with_env(&config, dir.0.join("worker.log"), &env);
    wait_ready(&mut worker, Duration::from_secs(120)).await;
    // Start-up work (migrations, topology, first allocations) is done.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let bodies: Vec<(String, Vec<u8>)> = (0..knobs.jobs)
        .map(|i| {
            let job = product_job(knobs, i);
            (job.job_id.clone(), genfleet_proto::encode_json(&job))
        })
        .collect();
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "inflight-publisher")
        .await
        .expect("broker");
    let publisher = broker.publisher().await.expect("publisher");

    let pid = worker.pid();
    let mut perf = profile.map(|path| start_perf(pid, path));
    let idle_rss_kb = tree_rss_kb(pid, "VmRSS");
    let cpu_before = tree_cpu_ticks(pid);
    let started = Instant::now();
    futures_util::stream::iter(&bodies)
        .map(|(id, body)| publish_job(&publisher, "remote", body, Some(id)))
        .buffer_unordered(PUBLISH_AHEAD)
        .collect::<Vec<()>>()
        .await;
    let publish = started.elapsed();
    let collected = collect_results(&conn, &results, knobs.jobs, RUN_LIMIT).await;
    // The worker publishes a job's result (confirmed) before it acks the
    // job: the run ends at the last ack, as Celery's does.
    let last_ack = tap.wait_for(knobs.jobs, started + RUN_LIMIT).await;
    let cpu_after = tree_cpu_ticks(pid);
    let processes = process_tree(pid).len();
    let wall = last_ack.map_or_else(|| started.elapsed(), |at| at - started);
    // Each live process's own peak, summed (as for Celery): one process.
    let peak_rss_kb = tree_rss_kb(pid, "VmHWM");
    let acks = tap.acks();
    if let Some(perf) = perf.as_mut() {
        stop(perf, Duration::from_secs(60));
    }

    let ok = collected
        .results
        .values()
        .filter(|(result, _)| result.status == v1::JobStatus::Succeeded as i32)
        .count();
    let trouble = (ok < knobs.jobs || acks != knobs.jobs || tap.multiple() > 0).then(|| {
        let first_failure = collected
            .results
            .values()
            .find(|(result, _)| result.status != v1::JobStatus::Succeeded as i32)
            .and_then(|(result, _)| result.error.as_ref())
            .map(|e| format!("{}: {}", e.code, e.message))
            .unwrap_or_else(|| "no failed result".into());
        format!(
            "{} results, {acks} acks ({} multiple), first failure {first_failure}; worker log:\n{}",
            collected.results.len(),
            tap.multiple(),
            worker.log_tail()
        )
    });

    broker.close().await;
    drop(conn);
    tokio::task::spawn_blocking(move || {
        worker.terminate(Duration::from_secs(60));
    })
    .await
    .expect("worker stopped");
    drop(tap);
    let at_provider = Some(fake.max_outstanding());
    drop(fake);
    Figures {
        wall,
        publish,
        idle_rss_kb,
        peak_rss_kb,
        cpu_ticks: cpu_after.saturating_sub(cpu_before),
        ok,
        at_provider,
        acks: Some(acks),
        processes,
        trouble,
    }
}

// ---------------------------------------------------------------------------
// Bare calls: genfleet's provider layer and gevent

/// `--serve-fake`: serves a fake fal, prints `URL <base>` and runs until
/// stdin closes (the parent went away) or it is killed.
fn serve_fake() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("fake runtime");
    rt.block_on(async {
        let fake = FakeFal::start().await.expect("fake fal starts");
        println!("URL {}", fake.base_url);
        let _ = std::io::stdout().flush();
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await;
        drop(fake);
    });
}

/// A child process killed (and reaped) on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The provider layer's calls: this binary, re-executed.
fn provider_run(knobs: &Knobs) -> Figures {
    let exe = std::env::current_exe().expect("bench executable");
    let mut calls = Command::new(exe);
    calls.arg("--provider-calls");
    calls_run(knobs, calls)
}

/// The same calls in gevent greenlets: `benches/celery/calls.py` with the
/// Celery venv's Python.
fn gevent_run(knobs: &Knobs, venv: &Path) -> Figures {
    let mut calls = Command::new(venv.join("bin/python"));
    calls
        .arg("calls.py")
        .current_dir(repo_path("benches/celery"));
    calls_run(knobs, calls)
}

/// Serves a fake fal from a child of its own, runs `calls` with
/// `<base_url> <jobs> <model> <input>` appended, and reads the `RESULT`
/// line it prints: its own figures, taken inside it around the calls.
fn calls_run(knobs: &Knobs, mut calls: Command) -> Figures {
    let exe = std::env::current_exe().expect("bench executable");
    let mut fake = Reaped(
        Command::new(&exe)
            .arg("--serve-fake")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("fake fal child starts"),
    );
    let mut line = String::new();
    BufReader::new(fake.0.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("fake fal child answers");
    let base_url = line
        .trim()
        .strip_prefix("URL ")
        .unwrap_or_else(|| panic!("fake fal child printed {line:?}"))
        .to_owned();

    let output = calls
        .args([
            &base_url,
            &knobs.jobs.to_string(),
            &knobs.model(),
            &knobs.input.display().to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("calls child runs");
    drop(fake);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(result) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
        return Figures {
            trouble: Some(format!("the child printed no result: {stdout}")),
            ..Figures::default()
        };
    };
    let field = |name: &str| -> u64 {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let ok = usize::try_from(field("ok")).unwrap_or(0);
    Figures {
        wall: Duration::from_micros(field("wall_us")),
        publish: Duration::ZERO,
        idle_rss_kb: field("idle_rss_kb"),
        peak_rss_kb: field("peak_rss_kb"),
        cpu_ticks: field("cpu_ticks"),
        ok,
        at_provider: None,
        acks: None,
        processes: 1,
        trouble: (ok < knobs.jobs).then(|| result.to_owned()),
    }
}

/// `--provider-calls <base_url> <jobs> <model> <input>`: `jobs` concurrent
/// `Guarded<FalProvider>::generate` calls, configured as the worker
/// configures its fal client, then one `RESULT key=value...` line.
///
/// Every request carries the input photo, one shared copy: what a call
/// holds of it is the provider layer's cost, while a job's own copy of its
/// input belongs to the pipeline (the worker scenario has it).
fn provider_calls(args: &[String]) {
    let [base_url, jobs, model, input] = args else {
        panic!("usage: --provider-calls <base_url> <jobs> <model> <input>");
    };
    let base_url = url::Url::parse(base_url).expect("base URL");
    let jobs: usize = jobs.parse().expect("job count");
    let photo = bytes::Bytes::from(std::fs::read(input).expect("input photo"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("caller runtime");
    rt.block_on(async move {
        // As `genfleet_worker::services` builds the worker's client and
        // providers.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .expect("http client");
        // The worker's default spool: 64 MiB of waiting bytes in memory,
        // the rest in files, and 32 MiB of submit bodies at once.
        let spool_dir = std::env::temp_dir().join(format!("genfleet-bench-spool-{}", std::process::id()));
        let spool = Spool::new(&spool_dir, 64 * 1024 * 1024)
            .expect("spool folder")
            .with_send_budget(32 * 1024 * 1024);
        let fal = FalProvider::new(
            FalConfig {
                base_url,
                key: "bench-key".into(),
                ..FalConfig::default()
            },
            client,
        )
        .with_spool(spool.clone());
        let fal = Arc::new(Guarded::new(
            fal,
            GuardConfig {
                max_concurrent: jobs,
                ..GuardConfig::default()
            },
        ));
        let requests: Vec<GenerationRequest> = (0..jobs)
            .map(|i| GenerationRequest {
                job_id: new_job_id(),
                kind: JobKind::ProductPhoto,
                model: model.clone(),
                prompt: format!("the mug on a marble counter, take {i}"),
                negative_prompt: String::new(),
                seed: None,
                count: 1,
                aspect_ratio: String::new(),
                parameters: serde_json::Map::new(),
                inputs: vec![InputImage {
                    role: InputRole::Product,
                    content_type: "image/jpeg".into(),
                    bytes: photo.clone().into(),
                }],
                deadline: Some(tokio::time::Instant::now() + Duration::from_secs(600)),
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;

        let me = std::process::id();
        let idle_rss_kb = status_kb(me, "VmRSS");
        let cpu_before = cpu_ticks(me);
        let started = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for request in requests {
            let fal = Arc::clone(&fal);
            calls.spawn(async move {
                fal.generate(&request)
                    .await
                    .map(|output| output.artifacts.len())
            });
        }
        let mut ok = 0;
        let mut first_error = None;
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok(Ok(1)) => ok += 1,
                Ok(Ok(n)) => {
                    first_error.get_or_insert(format!("{n} artifacts"));
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e.to_string());
                }
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        let wall = started.elapsed();
        let cpu = cpu_ticks(me).saturating_sub(cpu_before);
        let peak_rss_kb = status_kb(me, "VmHWM");
        drop(fal);
        drop(spool);
        let _ = std::fs::remove_dir_all(&spool_dir);
        if let Some(error) = first_error {
            eprintln!("provider layer: first error: {error}");
        }
        println!(
            "RESULT wall_us={} idle_rss_kb={idle_rss_kb} peak_rss_kb={peak_rss_kb} cpu_ticks={cpu} ok={ok}",
            wall.as_micros()
        );
    });
}

// ---------------------------------------------------------------------------
// Celery

/// The venv's folder when the Celery scenario should run, creating the
/// venv first if `GENFLEET_INFLIGHT_CELERY=1` and it is missing.
fn celery_venv() -> Option<PathBuf> {
    let asked = std::env::var("GENFLEET_INFLIGHT_CELERY").ok();
    if asked.as_deref() == Some("0") {
        return None;
    }
    let venv = PathBuf::from(VENV);
    if venv.join("bin/celery").exists() {
        return Some(venv);
    }
    if asked.as_deref() != Some("1") {
        return None;
    }
    println!("creating {VENV} (pip install -r benches/celery/requirements.txt)");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let created = Command::new(&python)
        .args(["-m", "venv", VENV])
        .status()
        .expect("python3 runs");
    assert!(created.success(), "{python} -m venv {VENV} failed");
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "-r"])
        .arg(repo_path("benches/celery/requirements.txt"))
        .status()
        .expect("pip runs");
    assert!(installed.success(), "pip install into {VENV} failed");
    Some(venv)
}

async fn celery_run(
    knobs: &Knobs,
    fake_rt: &tokio::runtime::Runtime,
    tap_rt: &tokio::runtime::Runtime,
    venv: &Path,
) -> Figures {
    let vhost = Vhost::create();
    let tap = AckTap::start(tap_rt, &vhost.url());
    let dir = TempDir::new("genfleet-inflight-celery");
    let fake = start_fake(fake_rt).await;
    let ready_file = dir.0.join("ready");
    let log = dir.0.join("celery.log");
    let log_file = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("celery log")
    };
    let env = [
        ("GENFLEET_FAKE_FAL_URL", fake.base_url.to_string()),
        ("GENFLEET_FAL_MODEL", knobs.model()),
        ("GENFLEET_FAL_KEY", "bench-key".into()),
        (
            "GENFLEET_INFLIGHT_INPUT_FILE",
            knobs.input.display().to_string(),
        ),
        ("GENFLEET_FAL_POLL_SECONDS", "0.5".into()),
        ("GENFLEET_CELERY_HTTP_POOL", knobs.jobs.to_string()),
        (
            "GENFLEET_CELERY_READY_FILE",
            ready_file.display().to_string(),
        ),
    ];
    let celery_dir = repo_path("benches/celery");
    let mut worker = Reaped(
        Command::new(venv.join("bin/celery"))
            .args(["-A", "tasks", "worker", "-P", "gevent", "-c"])
            .arg(knobs.jobs.to_string())
            .args([
                "--prefetch-multiplier",
                "1",
                "--loglevel",
                "INFO",
                // No broadcast chatter between workers: there is one.
                "--without-gossip",
                "--without-mingle",
                "-n",
                "inflight@%h",
            ])
            .current_dir(&celery_dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            // The worker's connections go through the relay, the
            // publisher's straight to the broker (as genfleet's).
            .env("GENFLEET_CELERY_BROKER", &tap.url)
            .stdout(log_file())
            .stderr(log_file())
            .spawn()
            .expect("celery worker starts"),
    );
    let pid = worker.0.id();
    let waited = Instant::now();
    while !ready_file.exists() {
        if let Ok(Some(status)) = worker.0.try_wait() {
            panic!(
                "celery worker exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "celery worker not ready after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let idle_rss_kb = tree_rss_kb(pid, "VmRSS");
    let cpu_before = tree_cpu_ticks(pid);
    let mut publisher = Reaped(
        Command::new(venv.join("bin/python"))
            .arg("publish.py")
            .arg(knobs.jobs.to_string())
            .current_dir(&celery_dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("GENFLEET_CELERY_BROKER", vhost.url())
            .stdout(Stdio::piped())
            .stderr(log_file())
            .spawn()
            .expect("celery publisher starts"),
    );
    let stdout = publisher.0.stdout.take().expect("piped stdout");
    let (said, mut heard) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = said.send((line, Instant::now()));
        }
    });
    let started = loop {
        match heard.recv().await {
            Some((line, at)) if line == "publishing" => break at,
            Some(_) => {}
            None => panic!(
                "celery publisher stopped before publishing:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    };
    let mut publish = None;
    let deadline = started + RUN_LIMIT;
    // The task's last step is the download, then Celery acks it (acks
    // late): the run ends at the last ack leaving the worker. A failed
    // task is acked too, so the fake's downloads count the good ones.
    while tap.acks() < knobs.jobs && Instant::now() < deadline {
        while let Ok((line, at)) = heard.try_recv() {
            if line == "published" {
                publish = Some(at - started);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu_after = tree_cpu_ticks(pid);
    let processes = process_tree(pid).len();
    let wall = tap
        .last_ack()
        .map_or_else(|| started.elapsed(), |at| at - started);
    // Each live process's own peak, summed: an upper bound of the tree's
    // peak (the gevent pool is one process, so here it is exact).
    let peak_rss_kb = tree_rss_kb(pid, "VmHWM");
    let acks = tap.acks();
    let ok = usize::try_from(fake.downloads()).unwrap_or(usize::MAX);
    let errors = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ERROR/"))
        .count();
    let trouble =
        (ok < knobs.jobs || errors > 0 || acks != knobs.jobs || tap.multiple() > 0).then(|| {
            format!(
                "{errors} task errors in {}, {acks} acks ({} multiple)",
                log.display(),
                tap.multiple()
            )
        });

    // Warm shutdown (every task is acked by now).
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let stopping = Instant::now();
    while stopping.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(_)) = worker.0.try_wait() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(publisher);
    drop(worker);
    drop(tap);
    if trouble.is_some() {
        // Keep the log for a look.
        let kept = std::env::temp_dir().join(format!("{}.log", unique("genfleet-inflight-celery")));
        let _ = std::fs::copy(&log, &kept);
        println!("celery log kept in {}", kept.display());
    }
    let at_provider = Some(fake.max_outstanding());
    drop(fake);
    Figures {
        wall,
        publish: publish.unwrap_or(wall),
        idle_rss_kb,
        peak_rss_kb,
        cpu_ticks: cpu_after.saturating_sub(cpu_before),
        ok: ok.min(knobs.jobs),
        at_provider,
        acks: Some(acks),
        processes,
        trouble,
    }
}

// ---------------------------------------------------------------------------
// Acks on the wire

/// Where RabbitMQ listens (the tests' `AMQP_BASE`).
const BROKER_ADDR: &str = "127.0.0.1:5672";

/// A loopback TCP relay between one worker and RabbitMQ that notes every
/// `basic.ack` frame the worker sends, as it passes. Both workers' runs end
/// at their last ack this way, whatever language they are written in and
/// without the management plugin (whose queue figures lag by seconds) or a
/// hook inside either worker: Celery has no signal after its late ack
/// (`task_postrun` fires before it), genfleet publishes its result before
/// acking. The relay runs in the bench process on its own thread; its CPU
/// is counted for neither side, and its latency (one more loopback hop per
/// AMQP frame) is paid by both.
struct AckTap {
    /// The vhost's AMQP URL through the relay.
    url: String,
    seen: Arc<std::sync::Mutex<AcksSeen>>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct AcksSeen {
    /// When each `basic.ack` left the worker, in order.
    at: Vec<Instant>,
    /// Acks with the `multiple` bit (one frame for several deliveries);
    /// neither worker sends them, and counting frames would miss them.
    multiple: usize,
}

impl AckTap {
    fn start(rt: &tokio::runtime::Runtime, vhost_url: &str) -> AckTap {
        // Bound here and kept until dropped: no other process can take the
        // port between choosing it and listening on it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("relay listens");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("relay address");
        let seen = Arc::new(std::sync::Mutex::new(AcksSeen::default()));
        let accept = {
            let seen = seen.clone();
            rt.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                // Dropped with the accept task: the relays end with it.
                let mut relays = tokio::task::JoinSet::new();
                loop {
                    if let Ok((worker, _)) = listener.accept().await {
                        relays.spawn(relay(worker, seen.clone()));
                    }
                    while relays.try_join_next().is_some() {}
                }
            })
        };
        let url = vhost_url.replacen(BROKER_ADDR, &addr.to_string(), 1);
        assert_ne!(url, vhost_url, "the vhost URL names {BROKER_ADDR}");
        AckTap { url, seen, accept }
    }

    fn acks(&self) -> usize {
        self.seen.lock().expect("ack log").at.len()
    }

    fn last_ack(&self) -> Option<Instant> {
        self.seen.lock().expect("ack log").at.last().copied()
    }

    fn multiple(&self) -> usize {
        self.seen.lock().expect("ack log").multiple
    }

    /// Waits until `count` acks have passed (or `deadline`); returns the
    /// last one's time.
    async fn wait_for(&self, count: usize, deadline: Instant) -> Option<Instant> {
        while self.acks() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.last_ack()
    }
}

impl Drop for AckTap {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies one worker connection both ways, reading the frames of the
/// worker's direction.
async fn relay(worker: tokio::net::TcpStream, seen: Arc<std::sync::Mutex<AcksSeen>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(broker) = tokio::net::TcpStream::connect(BROKER_ADDR).await else {
        return;
    };
    // Both workers' clients turn Nagle off; so does the relay, or it would
    // hold their small frames back.
    let _ = worker.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let (mut from_worker, mut to_worker) = worker.into_split();
    let (mut from_broker, mut to_broker) = broker.into_split();
    let down = async {
        let _ = tokio::io::copy(&mut from_broker, &mut to_worker).await;
        let _ = to_worker.shutdown().await;
    };
    let up = async {
        let mut frames = FrameReader::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_worker.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if to_broker.write_all(&buf[..n]).await.is_err() {
                break;
            }
            let (acks, multiple) = frames.feed(&buf[..n]);
            if acks > 0 {
                let now = Instant::now();
                let mut seen = seen.lock().expect("ack log");
                seen.at.extend(std::iter::repeat_n(now, acks));
                seen.multiple += multiple;
            }
        }
        let _ = to_broker.shutdown().await;
    };
    tokio::join!(up, down);
}

/// AMQP 0-9-1 frames from a client: the 8-byte protocol header, then
/// frames of type (1 byte), channel (2), payload size (4), payload, 0xCE.
#[derive(Default)]
struct FrameReader {
    header_skipped: bool,
    pending: Vec<u8>,
}

impl FrameReader {
    /// Feeds bytes as read; returns the `basic.ack` frames completed by
    /// them, and how many of those have the `multiple` bit.
    fn feed(&mut self, bytes: &[u8]) -> (usize, usize) {
        const HEADER: usize = 8;
        const FRAME_HEAD: usize = 7;
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        if !self.header_skipped {
            if self.pending.len() < HEADER {
                return (0, 0);
            }
            self.header_skipped = true;
            at = HEADER;
        }
        let (mut acks, mut multiple) = (0, 0);
        while self.pending.len() - at >= FRAME_HEAD {
            let frame = &self.pending[at..];
            let size = u32::from_be_bytes([frame[3], frame[4], frame[5], frame[6]]) as usize;
            let whole = FRAME_HEAD + size + 1;
            if frame.len() < whole {
                break;
            }
            // A method frame of class 60 (basic), method 80 (ack): then
            // the delivery tag (8 bytes) and the `multiple` bit.
            let payload = &frame[FRAME_HEAD..FRAME_HEAD + size];
            if frame[0] == 1 && payload.len() >= 13 && payload[..4] == [0, 60, 0, 80] {
                acks += 1;
                multiple += usize::from(payload[12] & 1);
            }
            at += whole;
        }
        self.pending.drain(..at);
        (acks, multiple)
    }
}

// ---------------------------------------------------------------------------
// perf

fn start_perf(pid: u32, path: &Path) -> Child {
    Command::new("perf")
        .args(["record", "-F", "999", "-o"])
        .arg(path)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf record starts (is perf installed?)")
}

/// SIGINT, as Ctrl-C: perf writes its file and exits.
fn stop(child: &mut Child, within: Duration) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let started = Instant::now();
    while started.elapsed() < within {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Where a sample's time goes: kernel samples (`[k]`) by what their symbol
/// names, the others by the library their symbol belongs to; the first
/// pattern found in `dso [.] symbol` wins. Self time only (no call graphs:
/// the release build has no frame pointers), so a kernel copy or a memcpy
/// counts where it ran, not for the stage that asked for it.
const KERNEL: &[(&str, &[&str])] = &[
    (
        "kernel: loopback TCP (HTTP, AMQP, PostgreSQL)",
        &[
            "tcp", "ip_", "ipv4", "skb", "sock", "inet", "net_", "netif", "napi", "loopback",
            "__dev_",
        ],
    ),
    (
        "kernel: files (output store, logs)",
        &[
            "ext4",
            "jbd2",
            "vfs_",
            "find_get_block",
            "recently_deleted",
            "dentry",
            "inode",
            "filemap",
            "path_",
            "d_alloc",
            "__d_",
        ],
    ),
    (
        "kernel: memory (page faults, zeroing, mmap)",
        &[
            "page", "folio", "mmap", "unmap", "zap_", "lru", "pte", "pmd", "vma", "anon",
        ],
    ),
    ("kernel: scheduling, futex, epoll, other syscalls", &[""]),
];

const LIBRARIES: &[(&str, &[&str])] = &[
    (
        "image decode / encode (input + output)",
        &[
            "zune_",
            "jpeg_encoder",
            "png::",
            "fdeflate",
            "miniz_oxide",
            "simd_adler32",
            "crc32fast",
            "image::",
            "genfleet_imaging",
            "fast_image_resize",
            "moxcms",
            "pxfm",
            "weezl",
            "flate2",
            // image's JPEG encoder quantises every coefficient with
            // `f32::round`, a call to compiler-builtins' roundf.
            "roundf",
        ],
    ),
    ("base64 (data URI of the input)", &["base64"]),
    (
        "sha256 / hmac (output hash, signed URL)",
        &["sha2", "hmac", "ring::", "ring_core"],
    ),
    (
        "HTTP client (reqwest, hyper)",
        &[
            "hyper", "reqwest", "h2::", "httparse", "http::", "tower", "url::", "idna",
        ],
    ),
    (
        "AMQP (lapin)",
        &[
            "lapin",
            "amq_protocol",
            "async_io",
            "async_executor",
            "async_global",
            "flume",
            "polling",
            "async_rs",
            "executor_trait",
        ],
    ),
    (
        "PostgreSQL client",
        &[
            "tokio_postgres",
            "postgres_protocol",
            "postgres_types",
            "deadpool",
        ],
    ),
    (
        "JSON / protobuf",
        &["serde_json", "pbjson", "serde::", "prost", "genfleet_proto"],
    ),
    ("tokio runtime", &["tokio::", "mio::"]),
    (
        "tracing / formatting",
        &["tracing", "core::fmt", "alloc::fmt"],
    ),
    (
        "malloc / memcpy (libc)",
        &[
            "malloc", "free", "realloc", "memcpy", "memmove", "memset", "_int_", "libc.so",
        ],
    ),
    ("genfleet worker / other Rust", &["genfleet"]),
];

/// The category of one `perf report` line (`dso [.] symbol`).
fn category(line: &str) -> &'static str {
    let table = if line.contains("[k]") {
        KERNEL
    } else {
        LIBRARIES
    };
    table
        .iter()
        .find(|(_, patterns)| patterns.iter().any(|p| line.contains(p)))
        .map_or("other", |(name, _)| *name)
}

fn perf_breakdown(profile: &Path, figures: &Figures, knobs: &Knobs) {
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "-q",
            "--sort",
            "dso,sym",
            "-i",
        ])
        .arg(profile)
        .output();
    let Ok(report) = report else {
        println!("perf report did not run");
        return;
    };
    let text = String::from_utf8_lossy(&report.stdout);
    let mut shares: Vec<(&str, f64)> = Vec::new();
    let mut top = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some((percent, rest)) = line.split_once('%') else {
            continue;
        };
        let Ok(percent) = percent.trim().parse::<f64>() else {
            continue;
        };
        let rest = rest.trim();
        let name = category(rest);
        match shares.iter_mut().find(|(n, _)| *n == name) {
            Some((_, share)) => *share += percent,
            None => shares.push((name, percent)),
        }
        if top.len() < 25 {
            top.push((percent, rest.to_owned()));
        }
    }
    let total_ms = figures.cpu_ms_per_job(knobs);
    println!("where the worker's {total_ms:.2} ms of CPU per job goes (perf, self time):");
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, share) in shares {
        println!(
            "  {share:>5.1}%  {:>6.3} ms/job  {name}",
            share / 100.0 * total_ms
        );
    }
    println!("top symbols:");
    for (percent, symbol) in top {
        println!("  {percent:>5.2}%  {symbol}");
    }
    println!("profile: {} (perf report -i ...)", profile.display());
}

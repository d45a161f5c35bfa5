//! The `genfleet` command: parse, load configuration, call a crate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use genfleet_broker::{Broker, DeadLetter, JobClass, Lane, Outgoing, Selector, Topology};
use genfleet_imaging::Encoding;
use genfleet_proto::{v1, ContentType};
use genfleet_worker::batch::{self, BatchOptions};
use genfleet_worker::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "genfleet",
    version,
    about = "Workers for AI image and video generation jobs"
)]
struct Cli {
    /// TOML configuration file; `GENFLEET__SECTION__KEY` variables override it.
    #[arg(long, global = true, env = "GENFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(
        long,
        global = true,
        env = "GENFLEET_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Consume jobs from RabbitMQ and run them until SIGTERM.
    Worker,
    /// Publish jobs to RabbitMQ: JSON job files, or generated jobs.
    Enqueue {
        /// Job JSON files (proto3 JSON of genfleet.v1.Job).
        files: Vec<PathBuf>,
        /// Generate this many jobs instead of reading files.
        #[arg(long)]
        generate: Option<u32>,
        /// Input URI of generated jobs.
        #[arg(long, default_value = "s3://genfleet/uploads/example.jpg")]
        input: String,
        /// Kind of generated jobs, e.g. upscale, batch_edit, product_photo.
        #[arg(long, default_value = "batch_edit")]
        kind: String,
        /// org/workspace of generated jobs.
        #[arg(long, default_value = "acme/shop-1")]
        tenant: String,
        /// Credits each generated job holds.
        #[arg(long, default_value_t = 0)]
        credits: i64,
        /// Priority of generated jobs: high, normal or low (its lane).
        #[arg(long, default_value = "normal")]
        priority: String,
    },
    /// Cancel jobs by id: publishes a CancelJob to genfleet.cancel. A job
    /// still queued or parked ends `cancelled` with its credits released and
    /// its provider request cancelled; a finished job keeps its result.
    Cancel {
        #[arg(required = true)]
        job_ids: Vec<String>,
        /// Why, for the job's result (at most 200 characters are kept).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Validate, sanitise and resize a folder of images locally (no broker,
    /// database or network).
    Batch {
        /// Folder of input images (searched recursively).
        input: PathBuf,
        /// Folder for the outputs.
        #[arg(long)]
        out: PathBuf,
        /// Long side of the outputs in pixels; smaller images are not
        /// enlarged. Default 2048, or none with --preset (the preset sizes).
        #[arg(long)]
        long_side: Option<u32>,
        /// Output format; default JPEG, or the preset's own with --preset.
        #[arg(long, value_enum)]
        format: Option<OutputFormat>,
        /// JPEG / lossy WebP quality 1..=100.
        #[arg(long, default_value_t = 85)]
        quality: u8,
        /// Render with this preset: amazon-main, shopify-square, etsy,
        /// thumbnail-256, thumbnail-512, original, or one from --presets.
        #[arg(long)]
        preset: Option<String>,
        /// A TOML file of extra presets (same shape as the built-ins).
        #[arg(long)]
        presets: Option<PathBuf>,
        /// Overlay the free-tier watermark.
        #[arg(long)]
        watermark: bool,
        /// Threads; 0 means one per CPU.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Check a job JSON file against the contract, or an image against the
    /// upload checks; prints what a worker would decide.
    Validate { file: PathBuf },
    /// Run the credit ledger's database migrations.
    Migrate,
    /// Credit accounts: grant credits, read a balance.
    Credits {
        #[command(subcommand)]
        command: CreditsCommand,
    },
    /// Dead letters in genfleet.dead: list, show, replay to their job queue,
    /// or purge.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Peek at dead letters without removing them.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One dead letter's headers and job; the body (which may hold a
    /// customer's prompt) only with --body.
    Show {
        message_id: String,
        /// Print the message body as well.
        #[arg(long)]
        body: bool,
    },
    /// Republish dead letters to genfleet.jobs under their original routing
    /// key; each is removed only after the broker confirmed its copy.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["message_ids", "all"])))]
    Replay {
        /// Message ids (job ids) to replay.
        message_ids: Vec<String>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters for good; without --yes, only say what would go.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["message_ids", "all"])))]
    Purge {
        /// Message ids (job ids) to delete.
        message_ids: Vec<String>,
        /// Delete every dead letter.
        #[arg(long)]
        all: bool,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum CreditsCommand {
    /// Add credits to an account (created if new), e.g. `acme/shop-1 500`.
    Grant {
        account: String,
        amount: i64,
        /// Why, for the ledger entry.
        #[arg(long, default_value = "operator grant")]
        reason: String,
    },
    /// Show an account's available, held and captured credits (and for a
    /// workspace account its parent, cap, drawn and spendable credits).
    Balance { account: String },
    /// Let a workspace account draw on its organisation's credits, e.g.
    /// `acme/shop-1 --parent acme --cap 500` (created if new; run again to
    /// change the cap; without --cap there is no limit).
    Link {
        account: String,
        /// The organisation account to draw on; it must exist.
        #[arg(long)]
        parent: String,
        /// Most credits the account may draw from the parent in all.
        #[arg(long)]
        cap: Option<i64>,
    },
    /// An account's ledger entries, newest first.
    Statement {
        account: String,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// An account's holds (open ones only unless --all).
    Holds {
        account: String,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Jpeg,
    Png,
    /// Lossy WebP.
    Webp,
    WebpLossless,
    Avif,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,lapin=warn,amq_protocol=warn,tokio_postgres=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Batch {
            input,
            out,
            long_side,
            format,
            quality,
            preset,
            presets,
            watermark,
            threads,
        } => {
            let quality = quality.clamp(1, 100);
            let encoding = format.map(|format| match format {
                OutputFormat::Jpeg => Encoding::jpeg(quality),
                OutputFormat::Png => Encoding::Png,
                OutputFormat::Webp => Encoding::Webp { quality },
                OutputFormat::WebpLossless => Encoding::WebpLossless,
                OutputFormat::Avif => Encoding::Avif {
                    quality,
                    speed: genfleet_imaging::AVIF_SPEED,
                },
            });
            let known = genfleet_worker::services::load_presets(presets.as_deref())?;
            let (preset, long_side, encoding) = match preset {
                Some(name) => {
                    let preset = known.get(&name).cloned().with_context(|| {
                        let names: Vec<&str> = known.iter().map(|p| p.name.as_str()).collect();
                        format!(
                            "unknown preset {name:?}, expected one of {}",
                            names.join(", ")
                        )
                    })?;
                    (preset, long_side, encoding)
                }
                None => (
                    known.original(),
                    Some(long_side.unwrap_or(2048)),
                    Some(encoding.unwrap_or(Encoding::jpeg(quality))),
                ),
            };
            let options = BatchOptions {
                long_side,
                encoding,
                preset,
                watermark,
                threads,
                ..BatchOptions::default()
            };
            run_batch(&input, &out, &options)
        }
        Command::Validate { file } => validate(&file),
        command => {
            let config = Config::load(cli.config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async move {
                match command {
                    Command::Worker => run_worker(config).await,
                    Command::Migrate => migrate(config).await,
                    Command::Credits { command } => credits(config, command).await,
                    Command::Dlq { command } => dlq(config, command).await,
                    Command::Enqueue {
                        files,
                        generate,
                        input,
                        kind,
                        tenant,
                        credits,
                        priority,
                    } => {
                        let jobs = match generate {
                            Some(n) => {
                                generated_jobs(n, &input, &kind, &tenant, credits, &priority)?
                            }
                            None => read_jobs(&files)?,
                        };
                        enqueue(config, jobs).await
                    }
                    Command::Cancel { job_ids, reason } => cancel(config, job_ids, reason).await,
                    Command::Batch { .. } | Command::Validate { .. } => Ok(ExitCode::SUCCESS),
                }
            })
        }
    }
}

async fn run_worker(config: Config) -> Result<ExitCode> {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: no new jobs, finishing in-flight ones");
        signals.cancel();
    });
    genfleet_worker::run(config, shutdown).await?;
    tracing::info!("worker stopped");
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The ledger with its schema up to date: operator commands work on a fresh
/// database too.
async fn open_ledger(config: &Config) -> Result<genfleet_credits::Ledger> {
    let ledger =
        genfleet_credits::Ledger::connect(config.database.url.expose(), &config.database.schema, 1)
            .await?;
    ledger.migrate().await?;
    Ok(ledger)
}

async fn migrate(config: Config) -> Result<ExitCode> {
    open_ledger(&config).await?;
    println!("ledger schema {} is up to date", config.database.schema);
    Ok(ExitCode::SUCCESS)
}

async fn credits(config: Config, command: CreditsCommand) -> Result<ExitCode> {
    let ledger = open_ledger(&config).await?;
    match command {
        CreditsCommand::Grant {
            account,
            amount,
            reason,
        } => {
            let available = ledger.grant(&account, amount, &reason).await?;
            println!("{account}: granted {amount}, {available} available");
        }
        CreditsCommand::Balance { account } => match ledger.balance(&account).await? {
            Some(b) => print_balance(&b),
            None => {
                println!("{account}: no such account");
                return Ok(ExitCode::FAILURE);
            }
        },
        CreditsCommand::Link {
            account,
            parent,
            cap,
        } => {
            let b = ledger.link(&account, &parent, cap).await?;
            println!("{account}: linked to {parent}");
            print_balance(&b);
        }
        CreditsCommand::Statement { account, limit } => {
            for e in ledger.statement(&account, limit).await? {
                println!(
                    "{:>10} {:<8} {:>8} {:<26} {}",
                    e.created_at_unix,
                    e.kind,
                    e.amount,
                    e.job_id.as_deref().unwrap_or("-"),
                    e.reason.as_deref().unwrap_or("")
                );
            }
        }
        CreditsCommand::Holds { account, all } => {
            for h in ledger.holds(&account, !all).await? {
                let mut line = format!(
                    "{:<26} {:<9} amount {:>6} captured {:>6} released {:>6}",
                    h.job_id,
                    h.state.as_str(),
                    h.amount,
                    h.captured,
                    h.released
                );
                if h.account != account {
                    line.push_str(&format!(" of {}", h.account));
                }
                if let Some(parent) = &h.parent_account {
                    line.push_str(&format!(
                        " (from {parent}: {} held, {} captured, {} released)",
                        h.parent_amount, h.parent_captured, h.parent_released
                    ));
                }
                println!("{line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An account's balance; a workspace account also gets its parent, cap,
/// what it has drawn and what one job could reserve now.
fn print_balance(b: &genfleet_credits::Balance) {
    println!(
        "{}: {} available, {} held, {} captured",
        b.account, b.available, b.held, b.captured
    );
    if let Some(parent) = &b.parent {
        println!("  parent:    {parent}");
        match b.parent_cap {
            Some(cap) => println!("  cap:       {cap}"),
            None => println!("  cap:       none"),
        }
        println!("  drawn:     {}", b.parent_drawn);
        println!("  spendable: {}", b.spendable);
    }
}

/// A job to publish: its raw body (published as given) and what routing needs.
struct Enqueued {
    body: Vec<u8>,
    job_id: String,
    class: JobClass,
    lane: Lane,
}

fn read_jobs(files: &[PathBuf]) -> Result<Vec<Enqueued>> {
    if files.is_empty() {
        bail!("give job JSON files, or --generate N");
    }
    files
        .iter()
        .map(|file| {
            let body =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let job = genfleet_proto::decode_job(&body, &ContentType::Json)
                .and_then(|job| genfleet_proto::validate_job(job, None))
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            Ok(Enqueued {
                job_id: job.job_id().to_string(),
                class: genfleet_worker::default_class(job.kind()),
                lane: genfleet_worker::lane_of(job.job().priority),
                body,
            })
        })
        .collect()
}

fn generated_jobs(
    n: u32,
    input: &str,
    kind: &str,
    tenant: &str,
    credits: i64,
    priority: &str,
) -> Result<Vec<Enqueued>> {
    let priority =
        v1::Priority::from_str_name(&format!("PRIORITY_{}", priority.to_ascii_uppercase()))
            .with_context(|| format!("--priority {priority:?} is not high, normal or low"))?;
    let kind = v1::JobKind::from_str_name(&format!("JOB_KIND_{}", kind.to_ascii_uppercase()))
        .filter(|k| *k != v1::JobKind::Unspecified)
        .with_context(|| format!("--kind {kind:?} is not a job kind"))?;
    let (org, workspace) = tenant
        .split_once('/')
        .context("--tenant must be org/workspace")?;
    (0..n)
        .map(|_| {
            let job = v1::Job {
                job_id: genfleet_proto::new_job_id(),
                tenant: Some(v1::Tenant {
                    org: org.into(),
                    workspace: workspace.into(),
                    user: String::new(),
                }),
                kind: kind as i32,
                inputs: vec![v1::Input {
                    role: v1::InputRole::Product as i32,
                    uri: input.into(),
                    ..Default::default()
                }],
                credits: Some(v1::CreditRequest {
                    amount: credits,
                    ..Default::default()
                }),
                priority: priority as i32,
                ..Default::default()
            };
            let valid = genfleet_proto::validate_job(job, None)?;
            Ok(Enqueued {
                job_id: valid.job_id().to_string(),
                class: genfleet_worker::default_class(valid.kind()),
                lane: genfleet_worker::lane_of(valid.job().priority),
                body: genfleet_proto::encode_json(valid.job()),
            })
        })
        .collect()
}

async fn enqueue(config: Config, jobs: Vec<Enqueued>) -> Result<ExitCode> {
    let broker = Broker::connect(config.broker.url.expose(), "genfleet-enqueue").await?;
    broker
        .declare(&Topology {
            delivery_limit: config.broker.delivery_limit,
            ..Topology::default()
        })
        .await?;
    let publisher = broker.publisher().await?;
    for job in &jobs {
        let outgoing = Outgoing {
            content_type: Some("application/json".into()),
            message_id: Some(job.job_id.clone()),
            persistent: true,
            ..Default::default()
        };
        publisher
            .publish(
                genfleet_broker::JOBS_EXCHANGE,
                &job.class.lane_routing_key(job.lane),
                &job.body,
                &outgoing,
            )
            .await?;
        println!("{} -> {}", job.job_id, job.class.lane_queue(job.lane));
    }
    broker.close().await;
    eprintln!(
        "published {} job(s), all confirmed by the broker",
        jobs.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn cancel(config: Config, job_ids: Vec<String>, reason: String) -> Result<ExitCode> {
    if let Some(bad) = job_ids
        .iter()
        .find(|id| !genfleet_proto::is_valid_job_id(id))
    {
        anyhow::bail!("{bad:?} is not a valid job id");
    }
    let broker = Broker::connect(config.broker.url.expose(), "genfleet-cancel").await?;
    broker
        .declare(&Topology {
            delivery_limit: config.broker.delivery_limit,
            ..Topology::default()
        })
        .await?;
    let publisher = broker.publisher().await?;
    for job_id in &job_ids {
        let request = genfleet_proto::v1::CancelJob {
            job_id: job_id.clone(),
            reason: reason.clone(),
        };
        let outgoing = Outgoing {
            content_type: Some("application/json".into()),
            message_id: Some(format!("{job_id}.cancel")),
            persistent: true,
            ..Default::default()
        };
        publisher
            .publish(
                genfleet_broker::CANCEL_EXCHANGE,
                "",
                &genfleet_proto::encode_json(&request),
                &outgoing,
            )
            .await?;
        println!("{job_id}: cancel requested");
    }
    broker.close().await;
    Ok(ExitCode::SUCCESS)
}

fn selector(message_ids: Vec<String>, all: bool) -> Selector {
    if all {
        Selector::All
    } else {
        Selector::Ids(message_ids)
    }
}

async fn dlq(config: Config, command: DlqCommand) -> Result<ExitCode> {
    let broker = Broker::connect(config.broker.url.expose(), "genfleet-dlq").await?;
    // Declared like the worker does, so that a fresh broker answers "empty"
    // rather than "no such queue".
    broker
        .declare(&Topology {
            delivery_limit: config.broker.delivery_limit,
            ..Topology::default()
        })
        .await?;
    let result = dlq_command(&broker, command).await;
    broker.close().await;
    result
}

async fn dlq_command(broker: &Broker, command: DlqCommand) -> Result<ExitCode> {
    let dead = genfleet_broker::DEAD_QUEUE;
    match command {
        DlqCommand::List { limit } => {
            let depth = broker.queue_depth(dead).await?;
            let letters = broker.dead_letters(&Selector::All, limit).await?;
            for (i, d) in letters.iter().enumerate() {
                println!(
                    "{:>3}  {:<26}  {:<20}  {:<18}  {:>7} B  {}",
                    i + 1,
                    d.message_id.as_deref().unwrap_or("-"),
                    d.queue.as_deref().unwrap_or(&d.routing_key),
                    d.error,
                    d.body.len(),
                    one_line(&d.reason, 80)
                );
            }
            println!(
                "{} of {depth} dead letter(s) in {dead} shown; none removed",
                letters.len()
            );
        }
        DlqCommand::Show { message_id, body } => {
            let letters = broker
                .dead_letters(&Selector::Ids(vec![message_id.clone()]), usize::MAX)
                .await?;
            if letters.is_empty() {
                println!("no dead letter with message id {message_id} in {dead}");
                return Ok(ExitCode::FAILURE);
            }
            for (i, d) in letters.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                show_dead_letter(d, body);
            }
        }
        DlqCommand::Replay { message_ids, all } => {
            let report = broker
                .replay_dead_letters(&selector(message_ids, all))
                .await?;
            for id in &report.replayed {
                println!("replayed {id}");
            }
            for r in &report.refused {
                println!(
                    "left {} in {dead}: {}",
                    r.message_id.as_deref().unwrap_or("-"),
                    r.why
                );
            }
            for id in &report.missing {
                println!("no dead letter with message id {id}");
            }
            println!(
                "replayed {} dead letter(s) to {}, each confirmed before removal",
                report.replayed.len(),
                genfleet_broker::JOBS_EXCHANGE
            );
            if let Some(e) = report.stopped {
                bail!("replay stopped early, the rest stays in {dead}: {e}");
            }
            if !report.refused.is_empty() || !report.missing.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        DlqCommand::Purge {
            message_ids,
            all,
            yes,
        } => {
            let selector = selector(message_ids, all);
            if !yes {
                let letters = broker.dead_letters(&selector, usize::MAX).await?;
                for d in &letters {
                    println!(
                        "would delete {} ({}, from {})",
                        d.message_id.as_deref().unwrap_or("-"),
                        d.error,
                        d.queue.as_deref().unwrap_or(&d.routing_key)
                    );
                }
                println!(
                    "refusing to delete {} dead letter(s) without --yes; nothing deleted",
                    letters.len()
                );
                return Ok(ExitCode::FAILURE);
            }
            let report = broker.purge_dead_letters(&selector).await?;
            for id in &report.missing {
                println!("no dead letter with message id {id}");
            }
            println!("deleted {} dead letter(s) from {dead}", report.purged);
            if !report.missing.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show_dead_letter(d: &DeadLetter, with_body: bool) {
    println!("message_id    {}", d.message_id.as_deref().unwrap_or("-"));
    println!("routing_key   {}", d.routing_key);
    if let Some(queue) = &d.queue {
        println!("queue         {queue}");
    }
    println!("error         {}", d.error);
    println!("reason        {}", d.reason);
    println!("content_type  {}", d.content_type.as_deref().unwrap_or("-"));
    println!("headers");
    for (k, v) in &d.headers {
        println!("  {k}: {v}");
    }
    // Lenient on purpose: a dead letter may be a job the contract refused.
    let job: Option<serde_json::Value> = serde_json::from_slice(&d.body).ok();
    let field = |path: &[&str]| -> String {
        let mut v = job.as_ref();
        for key in path {
            v = v.and_then(|v| v.get(key));
        }
        v.and_then(serde_json::Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    if job.is_some() {
        println!(
            "job           {} kind {} tenant {}/{}",
            field(&["jobId"]),
            field(&["kind"]),
            field(&["tenant", "org"]),
            field(&["tenant", "workspace"])
        );
    } else {
        println!("job           body is not JSON");
    }
    if with_body {
        println!("body ({} bytes)", d.body.len());
        println!("{}", String::from_utf8_lossy(&d.body));
    } else {
        println!(
            "body          {} bytes, not shown: it may hold a customer prompt (--body prints it)",
            d.body.len()
        );
    }
}

/// `text` on one line, cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn run_batch(input: &Path, out: &Path, options: &BatchOptions) -> Result<ExitCode> {
    let total = batch::list_inputs(input)
        .with_context(|| format!("reading {}", input.display()))?
        .len() as u64;
    let bar = indicatif::ProgressBar::new(total);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let items = batch::run(input, out, options, &|item| {
        bar.set_message(item.input.display().to_string());
        bar.inc(1);
    })?;
    bar.finish_and_clear();

    let mut rejected = Vec::new();
    let mut converted = 0usize;
    let mut elapsed = Duration::ZERO;
    for item in &items {
        elapsed += item.elapsed;
        match &item.outcome {
            Ok(done) => {
                converted += 1;
                println!(
                    "ok        {:<48} -> {} ({}x{}, {} bytes, {} ms)",
                    item.input.display(),
                    done.output.display(),
                    done.width,
                    done.height,
                    done.bytes,
                    item.elapsed.as_millis()
                );
            }
            Err(failure) => rejected.push((item, failure)),
        }
    }
    for (item, failure) in &rejected {
        println!(
            "rejected  {:<48} {}: {}",
            item.input.display(),
            failure.code,
            failure.message
        );
    }
    println!(
        "\n{} file(s): {} converted, {} rejected; {} ms of image work",
        items.len(),
        converted,
        rejected.len(),
        elapsed.as_millis()
    );
    Ok(if converted == 0 && !items.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn validate(file: &Path) -> Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let looks_like_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if looks_like_json {
        return match genfleet_proto::decode_job(&bytes, &ContentType::Json)
            .and_then(|job| genfleet_proto::validate_job(job, None))
        {
            Ok(job) => {
                println!(
                    "valid job {} ({}), queue {}",
                    job.job_id(),
                    job.kind().label(),
                    genfleet_worker::default_class(job.kind())
                        .lane_queue(genfleet_worker::lane_of(job.job().priority))
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                println!("invalid_input: {e}");
                Ok(ExitCode::FAILURE)
            }
        };
    }
    match genfleet_worker::pipeline::prepare(&bytes, &genfleet_imaging::Limits::default(), &[]) {
        Ok(prepared) => {
            println!(
                "accepted {} image, {}x{} stored, {}x{} upright",
                prepared.source.format.name(),
                prepared.source.width,
                prepared.source.height,
                prepared.image.width(),
                prepared.image.height()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            println!("{}: {}", failure.code, failure.message);
            Ok(ExitCode::FAILURE)
        }
    }
}

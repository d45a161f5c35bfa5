//! `genfleet enqueue`: publish job files, or generated jobs, to RabbitMQ.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use genfleet_broker::{JobClass, Lane, Outgoing};
use genfleet_proto::{v1, ContentType};
use genfleet_worker::Config;

use super::shared::open_broker;

#[derive(Args)]
pub(crate) struct EnqueueArgs {
    /// Job JSON files (proto3 JSON of genfleet.v1.Job).
    files: Vec<PathBuf>,
    /// Generate this many jobs instead of reading files.
    #[arg(long)]
    generate: Option<u32>,
    /// Input URI of generated jobs; it must lie under the tenant's
    /// prefixes (`uploads/<org>/<workspace>/` by default).
    #[arg(long, default_value = "s3://genfleet/uploads/acme/shop-1/example.jpg")]
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
}

/// Every job is read and checked before the broker is contacted, so a bad
/// file publishes nothing.
pub(crate) async fn run(config: Config, args: EnqueueArgs) -> Result<ExitCode> {
    let jobs = match args.generate {
        Some(n) => generated_jobs(
            n,
            &args.input,
            &args.kind,
            &args.tenant,
            args.credits,
            &args.priority,
        )?,
        None => read_jobs(&args.files)?,
    };
    enqueue(config, jobs).await
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
                class: genfleet_worker::default_class_of(job.job()),
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
                class: genfleet_worker::default_class_of(valid.job()),
                lane: genfleet_worker::lane_of(valid.job().priority),
                body: genfleet_proto::encode_json(valid.job()),
            })
        })
        .collect()
}

async fn enqueue(config: Config, jobs: Vec<Enqueued>) -> Result<ExitCode> {
    let broker = open_broker(&config, "genfleet-enqueue").await?;
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

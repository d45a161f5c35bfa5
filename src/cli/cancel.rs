//! `genfleet cancel`: ask the workers to cancel jobs by id.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use genfleet_broker::Outgoing;
use genfleet_worker::Config;

use super::shared::open_broker;

#[derive(Args)]
pub(crate) struct CancelArgs {
    #[arg(required = true)]
    job_ids: Vec<String>,
    /// The jobs' tenant, `<org>/<workspace>`: a cancel reaches only that
    /// tenant's job with the id.
    #[arg(long)]
    tenant: String,
    /// Why, for the job's result (at most 200 characters are kept).
    #[arg(long, default_value = "")]
    reason: String,
}

pub(crate) async fn run(config: Config, args: CancelArgs) -> Result<ExitCode> {
    let CancelArgs {
        job_ids,
        tenant,
        reason,
    } = args;
    let (org, workspace) = tenant
        .split_once('/')
        .filter(|(o, w)| {
            genfleet_proto::is_valid_tenant_id(o) && genfleet_proto::is_valid_tenant_id(w)
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--tenant must be <org>/<workspace>, each 1 to 64 characters of [A-Za-z0-9_-]"
            )
        })?;
    // Checked before connecting: one typo publishes none of the requests.
    if let Some(bad) = job_ids
        .iter()
        .find(|id| !genfleet_proto::is_valid_job_id(id))
    {
        anyhow::bail!("{bad:?} is not a valid job id");
    }
    let broker = open_broker(&config, "genfleet-cancel").await?;
    let publisher = broker.publisher().await?;
    for job_id in &job_ids {
        let request = genfleet_proto::v1::CancelJob {
            job_id: job_id.clone(),
            reason: reason.clone(),
            tenant: Some(genfleet_proto::v1::Tenant {
                org: org.to_string(),
                workspace: workspace.to_string(),
                user: String::new(),
            }),
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

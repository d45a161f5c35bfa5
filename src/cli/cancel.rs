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
    /// Why, for the job's result (at most 200 characters are kept).
    #[arg(long, default_value = "")]
    reason: String,
}

pub(crate) async fn run(config: Config, args: CancelArgs) -> Result<ExitCode> {
    let CancelArgs { job_ids, reason } = args;
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

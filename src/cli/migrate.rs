//! `genfleet migrate`: bring the ledger's schema up to date.

use std::process::ExitCode;

use anyhow::Result;
use genfleet_worker::Config;

use super::shared::open_ledger;

pub(crate) async fn run(config: Config) -> Result<ExitCode> {
    open_ledger(&config).await?;
    println!("ledger schema {} is up to date", config.database.schema);
    Ok(ExitCode::SUCCESS)
}

//! What several commands open the same way.

use anyhow::Result;
use genfleet_broker::{Broker, Topology};
use genfleet_worker::Config;

/// The ledger with its schema up to date: operator commands work on a fresh
/// database too.
pub(crate) async fn open_ledger(config: &Config) -> Result<genfleet_credits::Ledger> {
    let ledger =
        genfleet_credits::Ledger::connect(config.database.url.expose(), &config.database.schema, 1)
            .await?;
    ledger.migrate().await?;
    Ok(ledger)
}

/// A broker connection with the topology declared as the worker declares it,
/// so that a fresh broker has the exchanges to publish to and answers "empty"
/// rather than "no such queue".
pub(crate) async fn open_broker(config: &Config, connection_name: &str) -> Result<Broker> {
    let broker = Broker::connect(config.broker.url.expose(), connection_name).await?;
    broker
        .declare(&Topology {
            delivery_limit: config.broker.delivery_limit,
            ..Topology::default()
        })
        .await?;
    Ok(broker)
}

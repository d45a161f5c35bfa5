//! RabbitMQ for genfleet, through lapin: the topology of DESIGN.md, a
//! publisher that waits for broker confirms, and a manual-ack consumer.
//!
//! Only this crate knows lapin. It deals in bytes and header strings: it does
//! not know the contract's message types, which the worker encodes.
#![forbid(unsafe_code)]

mod consumer;
mod dlq;
mod publisher;
mod topology;

use lapin::{Connection, ConnectionProperties};

pub use consumer::{Incoming, JobConsumer};
pub use dlq::{
    dead_at, AgePurgeReport, DeadLetter, PurgeReport, Refused, ReplayReport, Selector,
    HEADER_DEAD_AT,
};
pub use publisher::{Outgoing, Publisher};
pub use topology::{declare, JobClass, Lane, Topology};

/// Exchange that routes jobs by resource class (`cpu`, `gpu`, `remote`).
pub const JOBS_EXCHANGE: &str = "genfleet.jobs";
/// Topic exchange for results: `result.<org>.<workspace>.<status>`.
pub const RESULTS_EXCHANGE: &str = "genfleet.results";
/// Topic exchange for progress: `event.<org>.<workspace>.<stage>`.
pub const EVENTS_EXCHANGE: &str = "genfleet.events";
/// Fanout exchange for dead letters; bound to [`DEAD_QUEUE`].
pub const DEAD_LETTER_EXCHANGE: &str = "genfleet.dlx";
pub const DEAD_QUEUE: &str = "genfleet.dead";
/// Headers exchange in front of the `genfleet.retry.<delay>` queues.
pub const RETRY_EXCHANGE: &str = "genfleet.retry";
/// Header that picks the retry queue on [`RETRY_EXCHANGE`], e.g. `5s`.
/// Not `x-` prefixed: a headers exchange ignores `x-` headers when it
/// matches, so a binding on one would match every message (each retry
/// would go to every retry queue, and the job return three times).
pub const HEADER_DELAY: &str = "genfleet-retry-delay";
/// The earlier name of [`HEADER_DELAY`], whose bindings matched every
/// message; [`Topology`]'s declare removes them.
pub const LEGACY_HEADER_DELAY: &str = "x-genfleet-delay";
/// Header counting how often infrastructure failures sent a job through a
/// retry queue (set by the worker on each such requeue).
pub const HEADER_REQUEUES: &str = "x-genfleet-requeues";
/// Header counting how often a job was parked in a retry queue while a
/// provider rendered it (set by the worker on each park).
pub const HEADER_PARKS: &str = "x-genfleet-parks";
/// Header with the Unix time (seconds) a job was first parked, so every
/// later poll knows how long the provider has had it.
pub const HEADER_PARKED_AT: &str = "x-genfleet-parked-at";
/// Header with the Unix time (seconds) a job was first sent back to wait
/// for a provider that could not take it (an open circuit, a full
/// concurrency limit), so later returns know how long it has waited.
pub const HEADER_DEFERRED_AT: &str = "x-genfleet-deferred-at";
/// Fanout exchange for cancel requests (`CancelJob` messages by job id),
/// bound to [`CANCEL_QUEUE`].
pub const CANCEL_EXCHANGE: &str = "genfleet.cancel";
/// Quorum queue of cancel requests; any worker takes each one, records it
/// in the ledger and cancels the job's provider request.
pub const CANCEL_QUEUE: &str = "genfleet.cancellations";

/// Whether `name` is one of the fleet's own exchanges or queues (every one
/// is `genfleet.*`): a publisher's `reply_to` may not name one, or a result
/// would be read as a job, a cancel request or a dead letter.
pub fn is_fleet_name(name: &str) -> bool {
    name == "genfleet" || name.starts_with("genfleet.")
}
/// Header naming the stable error code of a dead letter.
pub const HEADER_ERROR: &str = "x-genfleet-error";
/// Header with the human reason of a dead letter.
pub const HEADER_REASON: &str = "x-genfleet-reason";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to the broker: {0}")]
    Connect(String),
    #[error("broker channel error: {0}")]
    Channel(String),
    #[error("broker refused the publish to {exchange} (negative confirm)")]
    Nacked { exchange: String },
    #[error("no queue is bound to {exchange} with routing key {routing_key:?}: the broker returned the message")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
}

impl From<lapin::Error> for BrokerError {
    fn from(error: lapin::Error) -> Self {
        BrokerError::Channel(error.to_string())
    }
}

/// One AMQP connection. Channels for publishing and consuming are created
/// from it; when it dies the worker drops it and connects anew.
pub struct Broker {
    connection: Connection,
}

impl Broker {
    /// Connects to `url` (`amqp://user:pass@host:port/vhost`). `name` shows
    /// in the management UI's connection list.
    ///
    /// # Errors
    /// [`BrokerError::Connect`] when the broker cannot be reached or refuses
    /// the credentials. The URL is not included: it may hold a password.
    pub async fn connect(url: &str, name: &str) -> Result<Broker, BrokerError> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = Connection::connect(url, properties)
            .await
            .map_err(|e| BrokerError::Connect(e.to_string()))?;
        Ok(Broker { connection })
    }

    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// A channel in confirm mode for publishing results, events and dead
    /// letters.
    ///
    /// # Errors
    /// The channel cannot be opened.
    pub async fn publisher(&self) -> Result<Publisher, BrokerError> {
        Publisher::open(&self.connection).await
    }

    /// A consumer on `queue` with manual acks and `prefetch` unacked
    /// deliveries at most (set before consuming, so the broker never sends
    /// more than the worker can run at once).
    ///
    /// # Errors
    /// The channel cannot be opened or the queue does not exist.
    pub async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
        consumer_tag: &str,
    ) -> Result<JobConsumer, BrokerError> {
        JobConsumer::open(&self.connection, queue, prefetch, consumer_tag).await
    }

    /// Declares the topology on a short-lived channel.
    ///
    /// # Errors
    /// A declaration conflicts with an existing queue or exchange of other
    /// arguments, or the channel fails.
    pub async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        let channel = self.connection.create_channel().await?;
        declare(&channel, topology).await?;
        let _ = channel.close(200, "topology declared".into()).await;
        Ok(())
    }

    /// Number of messages ready in `queue` (passive declare), for tests,
    /// `/readyz` and the enqueue command.
    ///
    /// # Errors
    /// The queue does not exist or the channel fails.
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let channel = self.connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?;
        let _ = channel.close(200, "depth read".into()).await;
        Ok(declared.message_count())
    }

    /// Closes the connection; unacked deliveries go back to their queues.
    pub async fn close(&self) {
        let _ = self
            .connection
            .close(200, "worker shutting down".into())
            .await;
    }
}

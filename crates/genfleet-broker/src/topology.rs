//! The queues and exchanges of DESIGN.md, declared idempotently by every
//! worker at start and after every reconnect.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::{
    BrokerError, DEAD_LETTER_EXCHANGE, DEAD_QUEUE, EVENTS_EXCHANGE, JOBS_EXCHANGE, RESULTS_EXCHANGE,
};

/// Resource class of a job queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobClass {
    /// Image work on the worker's CPUs.
    Cpu,
    /// Models on the worker's own GPU.
    Gpu,
    /// Provider-bound: mostly waiting on remote APIs.
    Remote,
}

impl JobClass {
    pub const ALL: [JobClass; 3] = [JobClass::Cpu, JobClass::Gpu, JobClass::Remote];

    /// Routing key on [`JOBS_EXCHANGE`].
    pub fn routing_key(self) -> &'static str {
        match self {
            JobClass::Cpu => "cpu",
            JobClass::Gpu => "gpu",
            JobClass::Remote => "remote",
        }
    }

    pub fn queue(self) -> String {
        format!("genfleet.jobs.{}", self.routing_key())
    }

    pub fn parse(name: &str) -> Option<JobClass> {
        JobClass::ALL.into_iter().find(|c| c.routing_key() == name)
    }
}

/// Tunables of the topology. Every worker must declare the same values:
/// RabbitMQ refuses a redeclaration with other arguments.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Deliveries after which a quorum queue dead-letters a message that
    /// keeps crashing workers. RabbitMQ 3.10 has no default, so without it a
    /// poison message would loop forever.
    pub delivery_limit: u32,
    /// Delays of the `genfleet.retry.<delay>` queues.
    pub retry_delays: Vec<Duration>,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            delivery_limit: 5,
            retry_delays: vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(300),
            ],
        }
    }
}

impl Topology {
    /// Name of the retry queue for `delay`, e.g. `genfleet.retry.30s`.
    pub fn retry_queue(delay: Duration) -> String {
        format!("genfleet.retry.{}s", delay.as_secs())
    }
}

fn durable() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Declares every exchange, queue and binding.
///
/// # Errors
/// A conflicting existing declaration or a channel failure.
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), BrokerError> {
    for (name, kind) in [
        (JOBS_EXCHANGE, ExchangeKind::Direct),
        (RESULTS_EXCHANGE, ExchangeKind::Topic),
        (EVENTS_EXCHANGE, ExchangeKind::Topic),
        (DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout),
    ] {
        channel
            .exchange_declare(name.into(), kind, durable(), FieldTable::default())
            .await?;
    }

    let mut dead_args = FieldTable::default();
    dead_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(DEAD_QUEUE.into(), durable_queue(), dead_args)
        .await?;
    channel
        .queue_bind(
            DEAD_QUEUE.into(),
            DEAD_LETTER_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    for class in JobClass::ALL {
        let mut args = FieldTable::default();
        // Quorum queues: replicated, and they count deliveries, which is
        // what lets x-delivery-limit stop poison messages.
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(topology.delivery_limit)),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
        );
        channel
            .queue_declare(class.queue().as_str().into(), durable_queue(), args)
            .await?;
        channel
            .queue_bind(
                class.queue().as_str().into(),
                JOBS_EXCHANGE.into(),
                class.routing_key().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }

    // Delayed retry without plugins: a message published here waits out the
    // TTL, then dead-letters back to genfleet.jobs under its original
    // routing key. Classic queues: per-queue TTL with dead-lettering is what
    // every supported RabbitMQ version does the same way.
    for delay in &topology.retry_delays {
        let mut args = FieldTable::default();
        let ttl_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(JOBS_EXCHANGE.into()),
        );
        channel
            .queue_declare(
                Topology::retry_queue(*delay).as_str().into(),
                durable_queue(),
                args,
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(JobClass::Remote.queue(), "genfleet.jobs.remote");
        assert_eq!(JobClass::parse("gpu"), Some(JobClass::Gpu));
        assert_eq!(JobClass::parse("GPU"), None);
        assert_eq!(
            Topology::retry_queue(Duration::from_secs(30)),
            "genfleet.retry.30s"
        );
    }
}

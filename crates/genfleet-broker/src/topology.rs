//! The queues and exchanges of DESIGN.md, declared idempotently by every
//! worker at start and after every reconnect.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::{
    BrokerError, CANCEL_EXCHANGE, CANCEL_QUEUE, DEAD_LETTER_EXCHANGE, DEAD_QUEUE, EVENTS_EXCHANGE,
    HEADER_DELAY, JOBS_EXCHANGE, LEGACY_HEADER_DELAY, RESULTS_EXCHANGE, RETRY_EXCHANGE,
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

    /// Routing key of one lane of this class: `cpu`, `cpu.high`, `cpu.low`.
    pub fn lane_routing_key(self, lane: Lane) -> String {
        match lane.suffix() {
            None => self.routing_key().to_string(),
            Some(suffix) => format!("{}.{suffix}", self.routing_key()),
        }
    }

    /// Queue of one lane: `genfleet.jobs.cpu`, `genfleet.jobs.cpu.high`, ...
    pub fn lane_queue(self, lane: Lane) -> String {
        format!("genfleet.jobs.{}", self.lane_routing_key(lane))
    }

    /// The class and lane a job routing key names, e.g. `remote.high`.
    pub fn parse_routing_key(key: &str) -> Option<(JobClass, Lane)> {
        let (class, lane) = match key.split_once('.') {
            None => (key, Lane::Normal),
            Some((class, suffix)) => (
                class,
                Lane::ALL.into_iter().find(|l| l.suffix() == Some(suffix))?,
            ),
        };
        Some((JobClass::parse(class)?, lane))
    }
}

/// Priority lane within a class. RabbitMQ 3.10's quorum queues have no
/// message priorities, so each lane is its own queue and the worker takes
/// from the higher lane first. `Low` is also where the worker moves the
/// surplus of a workspace that holds more than its share (see the worker's
/// dispatcher), so a bulk batch never starves another tenant's single job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    High,
    Normal,
    Low,
}

impl Lane {
    /// In the order the worker serves them.
    pub const ALL: [Lane; 3] = [Lane::High, Lane::Normal, Lane::Low];

    fn suffix(self) -> Option<&'static str> {
        match self {
            Lane::High => Some("high"),
            Lane::Normal => None,
            Lane::Low => Some("low"),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Lane::High => "high",
            Lane::Normal => "normal",
            Lane::Low => "low",
        }
    }

    /// The next lane down; `None` for the lowest.
    pub fn below(self) -> Option<Lane> {
        match self {
            Lane::High => Some(Lane::Normal),
            Lane::Normal => Some(Lane::Low),
            Lane::Low => None,
        }
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
            delivery_limit: 20,
            retry_delays: vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(300),
            ],
        }
    }
}

impl Topology {
    /// The shortest of this topology's retry delays that is at least
    /// `wanted`, else the longest: a wait that must go through a retry
    /// queue, which exist only for a few fixed delays (a delay without its
    /// queue would route nowhere).
    pub fn retry_delay_at_least(&self, wanted: Duration) -> Duration {
        let mut delays = self.retry_delays.clone();
        delays.sort_unstable();
        delays
            .iter()
            .find(|d| **d >= wanted)
            .or(delays.last())
            .copied()
            .unwrap_or(wanted)
    }

    /// Name of the retry queue for `delay`, e.g. `genfleet.retry.30s`.
    pub fn retry_queue(delay: Duration) -> String {
        format!("genfleet.retry.{}", Topology::delay_label(delay))
    }

    /// Value of [`HEADER_DELAY`] that routes a message to the retry queue of
    /// `delay` through [`RETRY_EXCHANGE`], e.g. `30s`.
    pub fn delay_label(delay: Duration) -> String {
        format!("{}s", delay.as_secs())
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
        (CANCEL_EXCHANGE, ExchangeKind::Fanout),
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

    // Cancel requests outlive worker restarts: a quorum queue, dead letters
    // (unreadable requests) to the same DLX as jobs.
    let mut cancel_args = FieldTable::default();
    cancel_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    cancel_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
    );
    channel
        .queue_declare(CANCEL_QUEUE.into(), durable_queue(), cancel_args)
        .await?;
    channel
        .queue_bind(
            CANCEL_QUEUE.into(),
            CANCEL_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    for class in JobClass::ALL {
        for lane in Lane::ALL {
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
            let queue = class.lane_queue(lane);
            channel
                .queue_declare(queue.as_str().into(), durable_queue(), args)
                .await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    JOBS_EXCHANGE.into(),
                    class.lane_routing_key(lane).as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }

    // Delayed retry without plugins: a message published to the headers
    // exchange genfleet.retry with `genfleet-retry-delay: 30s` and its job
    // routing key waits out the queue's TTL, then dead-letters back to
    // genfleet.jobs under that same routing key, so it returns to its class
    // and lane. Classic queues: per-queue TTL with dead-lettering is what
    // every supported RabbitMQ version does the same way.
    channel
        .exchange_declare(
            RETRY_EXCHANGE.into(),
            ExchangeKind::Headers,
            durable(),
            FieldTable::default(),
        )
        .await?;
    for delay in &topology.retry_delays {
        let mut args = FieldTable::default();
        let ttl_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(JOBS_EXCHANGE.into()),
        );
        let queue = Topology::retry_queue(*delay);
        channel
            .queue_declare(queue.as_str().into(), durable_queue(), args)
            .await?;
        let mut binding = FieldTable::default();
        binding.insert("x-match".into(), AMQPValue::LongString("all".into()));
        binding.insert(
            HEADER_DELAY.into(),
            AMQPValue::LongString(Topology::delay_label(*delay).into()),
        );
        channel
            .queue_bind(
                queue.as_str().into(),
                RETRY_EXCHANGE.into(),
                "".into(),
                QueueBindOptions::default(),
                binding,
            )
            .await?;
        // Brokers declared by earlier releases keep a binding on the old
        // `x-` header, which matches every message: remove it (unbinding a
        // binding that is not there is a no-op).
        let mut legacy = FieldTable::default();
        legacy.insert("x-match".into(), AMQPValue::LongString("all".into()));
        legacy.insert(
            LEGACY_HEADER_DELAY.into(),
            AMQPValue::LongString(Topology::delay_label(*delay).into()),
        );
        channel
            .queue_unbind(
                queue.as_str().into(),
                RETRY_EXCHANGE.into(),
                "".into(),
                legacy,
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn waits_round_up_to_an_existing_retry_queue() {
        let topology = Topology::default();
        for (wanted, got) in [
            (0, 5),
            (1, 5),
            (5, 5),
            (6, 30),
            (30, 30),
            (31, 300),
            (299, 300),
            (301, 300),
            (u64::MAX, 300),
        ] {
            assert_eq!(
                topology.retry_delay_at_least(Duration::from_secs(wanted)),
                Duration::from_secs(got),
                "{wanted}"
            );
        }
    }

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
        assert_eq!(JobClass::Cpu.lane_queue(Lane::Normal), "genfleet.jobs.cpu");
        assert_eq!(
            JobClass::Cpu.lane_queue(Lane::High),
            "genfleet.jobs.cpu.high"
        );
        assert_eq!(JobClass::Remote.lane_routing_key(Lane::Low), "remote.low");
    }

    #[test]
    fn routing_keys_name_class_and_lane() {
        for class in JobClass::ALL {
            for lane in Lane::ALL {
                let key = class.lane_routing_key(lane);
                assert_eq!(JobClass::parse_routing_key(&key), Some((class, lane)));
            }
        }
        for bad in ["", "cpu.", "cpu.urgent", "disk", "cpu.high.x", "high"] {
            assert_eq!(JobClass::parse_routing_key(bad), None, "{bad}");
        }
    }
}

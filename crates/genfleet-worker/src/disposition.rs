//! Every way a delivery can end, as one type. The job stages return a
//! [`Disposition`]; [`crate::delivery::settle`] carries it out with the
//! broker and counts it, in one place, so no ending is handled (or
//! forgotten in a metric) anywhere else.

use std::time::Duration;

use genfleet_broker::Lane;
use genfleet_proto::ErrorCode;

/// What becomes of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done: its result (or dead letter) is confirmed by the broker.
    Ack,
    /// Our infrastructure failed, not the job: through a retry queue and
    /// back, without counting as a crashed start.
    Requeue(RequeueReason),
    /// The provider is rendering the job: a poll message in the retry queue
    /// of this delay, then ack.
    Park(Duration),
    /// No provider of its chain could take the job now (an open circuit, a
    /// full concurrency limit) but its deadline leaves time: through the
    /// retry queue of at least this delay and back, holding no slot, not
    /// counted as a crashed start.
    Delay(Duration),
    /// Its workspace holds its share of this worker: republished one lane
    /// down, then acked.
    MoveDown(Lane),
    /// The message itself goes to `genfleet.dlx` with the code and reason
    /// in headers (confirmed), then is acked. Any result was published
    /// before.
    DeadLetter(DeadLetter),
    /// Handed straight back to its queue (nack): the run died in a way the
    /// broker should count against the message.
    Redeliver(RedeliverReason),
    /// The delivery's channel is gone: nothing can be acked, and the broker
    /// has the message back already.
    ChannelLost,
}

impl Disposition {
    /// Low-cardinality label for `genfleet_deliveries_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Disposition::Ack => "ack",
            Disposition::Requeue(_) => "requeue",
            Disposition::Park(_) => "park",
            Disposition::Delay(_) => "delay",
            Disposition::MoveDown(_) => "move_down",
            Disposition::DeadLetter(_) => "dead_letter",
            Disposition::Redeliver(_) => "redeliver",
            Disposition::ChannelLost => "channel_lost",
        }
    }
}

/// A message bound for the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub code: ErrorCode,
    /// For `x-genfleet-reason`: what an operator reads in `genfleet dlq show`.
    pub reason: String,
    /// The job's id, when it is known (`x-genfleet-job-id`).
    pub job_id: Option<String>,
}

/// Why a delivery went back for another attempt: always something of ours,
/// never the job's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequeueReason {
    LedgerUnavailable,
    StorageUnavailable,
    ScannerUnavailable,
    SpoolUnavailable,
    /// A stored outcome that does not parse: a later run may read it (or
    /// an operator must look).
    OutcomeUnreadable,
    /// A result, dead letter or forward the broker did not confirm.
    PublishFailed,
}

impl RequeueReason {
    pub const ALL: [RequeueReason; 6] = [
        RequeueReason::LedgerUnavailable,
        RequeueReason::StorageUnavailable,
        RequeueReason::ScannerUnavailable,
        RequeueReason::SpoolUnavailable,
        RequeueReason::OutcomeUnreadable,
        RequeueReason::PublishFailed,
    ];

    /// The `reason` label of `genfleet_requeues_total`.
    pub fn label(self) -> &'static str {
        match self {
            RequeueReason::LedgerUnavailable => "ledger_unavailable",
            RequeueReason::StorageUnavailable => "storage_unavailable",
            RequeueReason::ScannerUnavailable => "scanner_unavailable",
            RequeueReason::SpoolUnavailable => "spool_unavailable",
            RequeueReason::OutcomeUnreadable => "outcome_unreadable",
            RequeueReason::PublishFailed => "publish_failed",
        }
    }
}

/// Why a delivery was handed straight back to its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeliverReason {
    /// The job's task panicked: counted by the ledger as a crashed start
    /// and by the broker as a failed delivery.
    Panic,
    /// Shut down or lost the connection before a slot freed: it never ran.
    NeverStarted,
}

impl RedeliverReason {
    /// The `reason` label of `genfleet_requeues_total`.
    pub fn label(self) -> &'static str {
        match self {
            RedeliverReason::Panic => "panic",
            RedeliverReason::NeverStarted => "never_started",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_labels_are_distinct_and_snake_case() {
        let labels: std::collections::BTreeSet<&str> =
            RequeueReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), RequeueReason::ALL.len());
        for label in labels {
            assert!(
                label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
        }
    }
}

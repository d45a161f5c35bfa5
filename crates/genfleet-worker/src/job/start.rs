//! Before any work: the job's id is claimed for its tenant (an id another
//! tenant's job already has is refused, touching nothing of that job), a
//! job already settled is only republished, a job with a cancel request
//! ends cancelled, and a job whose earlier starts all crashed is not run
//! again. Each start is counted in the ledger.

use genfleet_broker::Incoming;
use genfleet_credits::Claim;
use genfleet_proto::{v1, ValidJob};
use tracing::warn;

use super::settle;
use crate::disposition::RequeueReason;
use crate::failure::Stop;
use crate::services::Services;

/// What the ledger says of a delivered job.
pub(crate) enum Start {
    /// Run it.
    Run,
    /// Settled by an earlier delivery: publish its stored result again
    /// instead of doing (and charging for) the work twice.
    Republish(Box<v1::JobResult>),
    /// Another tenant's job has this id: its stored result, hold, provider
    /// request and start count are none of this job's business.
    Foreign,
    /// A cancel request is waiting for it.
    Cancelled { reason: String },
    /// Started `crashed` times before and never finished: running it again
    /// would most likely end the same way.
    Abandon { crashed: u32 },
}

pub(crate) async fn start(
    services: &Services,
    incoming: &Incoming,
    job: &ValidJob,
) -> Result<Start, Stop> {
    let owner = job.owner();
    let claim = services
        .ledger
        .claim(job.job_id(), &owner)
        .await
        .map_err(|e| ledger_down(e, "claiming the job id"))?;
    let stored = match claim {
        Claim::Own { outcome } => outcome,
        Claim::Foreign => return Ok(Start::Foreign),
    };
    if let Some(stored) = stored {
        match settle::parse_outcome(&stored) {
            Ok(mut result) => {
                // The stored result answers with the id as this delivery
                // wrote it (the key is case-insensitive).
                result.job_id = job.job_id_as_sent().to_string();
                return Ok(Start::Republish(Box::new(result)));
            }
            Err(_) => warn!("stored outcome is unreadable; processing again"),
        }
    }
    let attempt = services
        .ledger
        .start(job.job_id(), &owner)
        .await
        .map_err(|e| ledger_down(e, "recording the job's start"))?;
    if let Some(reason) = attempt.cancel_reason {
        return Ok(Start::Cancelled { reason });
    }
    // Starts that never finished, before this one. The broker's delivery
    // count cannot tell those from deliveries that only waited in a dead
    // worker's buffer, so it is only the backstop: its last delivery is
    // never run either, or the broker would drop the job without a result.
    // Orderly returns (our infrastructure failed) went through a retry
    // queue, which counts them in a header: those starts did not crash.
    // Parked returns did not crash either.
    let crashed = attempt
        .starts
        .saturating_sub(1)
        .saturating_sub(incoming.requeues())
        .saturating_sub(incoming.parks());
    let last_delivery =
        incoming.delivery_count() + 1 >= u64::from(services.config.broker.delivery_limit);
    if crashed >= u32::from(services.config.worker.max_starts_per_job) || last_delivery {
        warn!(
            starts = attempt.starts,
            requeues = incoming.requeues(),
            parks = incoming.parks(),
            delivery_count = incoming.delivery_count(),
            "job crashed or was interrupted on every start; failing and dead-lettering it"
        );
        return Ok(Start::Abandon { crashed });
    }
    Ok(Start::Run)
}

fn ledger_down(error: genfleet_credits::CreditsError, doing: &str) -> Stop {
    warn!(error = %error, "ledger unavailable while {doing}");
    Stop::requeue(RequeueReason::LedgerUnavailable, error)
}

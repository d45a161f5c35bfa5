//! Settle: the job's credits are captured (success) or released (failure,
//! cancel) in the same transaction that stores its outcome, so a
//! redelivery republishes that outcome instead of working or charging
//! again; only then may the sources be deleted.

use std::time::SystemTime;

use genfleet_credits::Settlement;
use genfleet_proto::{v1, ValidJob};
use tracing::warn;

use super::progress::{system_time_to_timestamp, Tracker};
use super::reply;
use crate::disposition::RequeueReason;
use crate::failure::Stop;
use crate::services::Services;

/// What settling left to publish.
pub(crate) enum Settled {
    /// This run's result, with its credits filled in.
    Own(v1::JobResult),
    /// Another delivery of the job ran at the same time and settled first:
    /// its outcome is the job's one result, whatever this run got.
    Earlier(v1::JobResult),
}

impl Settled {
    pub(crate) fn into_result(self) -> v1::JobResult {
        match self {
            Settled::Own(result) | Settled::Earlier(result) => result,
        }
    }
}

/// Settles a finished run: `settlement` with `result` stored as the
/// outcome. A cancel that arrived while the job ran wins over its outcome:
/// no charge, and nothing of it stays stored.
pub(crate) async fn settle_run(
    services: &Services,
    job: &ValidJob,
    tracker: &mut Tracker<'_>,
    mut result: v1::JobResult,
    mut settlement: Settlement,
) -> Result<Settled, Stop> {
    let amount = job.credit_amount();
    if let Some(reason) = services
        .ledger
        .cancellation(job.job_id(), &job.owner())
        .await?
    {
        for output in &result.outputs {
            if let Err(e) = services.store.delete(&output.uri).await {
                warn!(error = %e, "could not delete an output of a cancelled job");
            }
        }
        let provider = std::mem::take(&mut result.provider);
        let attempts = result.attempts;
        result = reply::cancelled_result(services, job, &reason);
        result.provider = provider;
        result.attempts = attempts;
        result.credits = Some(v1::CreditSummary {
            held: amount,
            captured: 0,
            released: amount,
        });
        settlement = Settlement::Release;
    }

    tracker.begin(v1::Stage::Settle, 0.95).await;
    result.finished_at = Some(system_time_to_timestamp(SystemTime::now()));
    let stored = genfleet_proto::encode_json(&result);
    record_sources(services, job).await?;
    let settled = services
        .ledger
        .settle_outcome(job.job_id(), settlement, &stored)
        .await?;
    // Only now, with the outcome recorded, may the sources go, whatever the
    // job's status: a redelivery before this point must still find them.
    delete_sources(services, job).await;
    if let Some(earlier) = settled.earlier_outcome {
        warn!("another delivery of this job settled first; publishing its result");
        return parse_outcome(&earlier).map(Settled::Earlier);
    }
    if let Some(hold) = settled.hold {
        let kind = job.kind().label();
        services
            .metrics
            .credits_captured_total
            .with_label_values(&[kind])
            .inc_by(u64::try_from(hold.captured).unwrap_or(0));
        services
            .metrics
            .credits_released_total
            .with_label_values(&[kind])
            .inc_by(u64::try_from(hold.released).unwrap_or(0));
        result.credits = Some(v1::CreditSummary {
            held: hold.amount,
            captured: hold.captured,
            released: hold.released,
        });
    }
    Ok(Settled::Own(result))
}

/// Ends a job that will not run, without a charge: its hold (if any) is
/// released with `result` (its credits filled in) stored as the outcome.
pub(crate) async fn release_with_result(
    services: &Services,
    job: &ValidJob,
    mut result: v1::JobResult,
) -> Result<Settled, Stop> {
    let held = services
        .ledger
        .hold(job.job_id())
        .await
        .map_err(ledger_down)?;
    if let Some(hold) = &held {
        result.credits = Some(v1::CreditSummary {
            held: hold.amount,
            captured: 0,
            released: hold.amount,
        });
    }
    result.finished_at = Some(system_time_to_timestamp(SystemTime::now()));
    let stored = genfleet_proto::encode_json(&result);
    record_sources(services, job).await?;
    let settled = services
        .ledger
        .settle_outcome(job.job_id(), Settlement::Release, &stored)
        .await
        .map_err(ledger_down)?;
    // The outcome is stored (this one or an earlier delivery's): the job
    // is over, whatever ended it, so its sources may go.
    delete_sources(services, job).await;
    if let Some(earlier) = settled.earlier_outcome {
        return parse_outcome(&earlier).map(Settled::Earlier);
    }
    if let Some(hold) = settled.hold {
        services
            .metrics
            .credits_released_total
            .with_label_values(&[job.kind().label()])
            .inc_by(u64::try_from(hold.released).unwrap_or(0));
    }
    Ok(Settled::Own(result))
}

/// Any ledger error while releasing is the ledger's outage, not the job's.
fn ledger_down(error: genfleet_credits::CreditsError) -> Stop {
    warn!(error = %error, "ledger unavailable while releasing a job's credits");
    Stop::requeue(RequeueReason::LedgerUnavailable, error)
}

/// A stored outcome, read back.
pub(crate) fn parse_outcome(stored: &[u8]) -> Result<v1::JobResult, Stop> {
    serde_json::from_slice::<v1::JobResult>(stored)
        .map_err(|e| Stop::requeue(RequeueReason::OutcomeUnreadable, e))
}

/// The job's sources that are ours to delete when it asked for that:
/// objects of the store and `file://` inputs (`https://` inputs belong to
/// whoever serves them).
fn deletable_sources(job: &ValidJob) -> Vec<String> {
    if !job.job().delete_sources_after {
        return Vec::new();
    }
    let mut uris: Vec<String> = job
        .job()
        .inputs
        .iter()
        .map(|input| input.uri.clone())
        .filter(|uri| crate::retention::is_deletable_source(uri))
        .collect();
    uris.sort();
    uris.dedup();
    uris
}

/// Records in the ledger, before the outcome is stored, which sources the
/// job will delete once it is: a delete that fails later, or a worker
/// that dies before it, leaves a row that the sweeper retries.
///
/// # Errors
/// The ledger is down: the job waits in its queue like any settlement.
pub(crate) async fn record_sources(services: &Services, job: &ValidJob) -> Result<(), Stop> {
    let uris = deletable_sources(job);
    if uris.is_empty() {
        return Ok(());
    }
    let tenant = job.tenant();
    services
        .ledger
        .record_source_deletions(job.job_id(), &tenant.org, &tenant.workspace, &uris)
        .await
        .map_err(ledger_down)
}

/// Deletes the job's sources when it asked for it, only those its tenant
/// may delete (the rule the fetch applied), each recorded in the ledger
/// first ([`record_sources`]): a failed delete is retried by the sweeper,
/// not only logged. Idempotent: a source already gone counts as deleted.
pub(crate) async fn delete_sources(services: &Services, job: &ValidJob) {
    let now = SystemTime::now();
    let tenant = job.tenant();
    for uri in deletable_sources(job) {
        let source = genfleet_credits::SourceDeletion {
            job_id: job.job_id().to_string(),
            uri,
            org: tenant.org.clone(),
            workspace: tenant.workspace.clone(),
            attempts: 1,
        };
        crate::retention::delete_source(
            &services.store,
            &services.ledger,
            Some(&services.metrics),
            &source,
            now,
        )
        .await;
    }
}

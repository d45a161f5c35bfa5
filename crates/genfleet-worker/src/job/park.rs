//! A parked job's returns. A job of a parked kind (video, by default) was
//! submitted to a queue-style provider, its request recorded in the ledger,
//! and its message parked in a retry queue (see [`super::generate`]). When
//! it comes back, any worker looks at the request once: still rendering
//! parks it again; finished goes on to render, store and settle like any
//! job; failed settles as a failure.
//!
//! No worker slot, prefetch slot or consumer timeout is held while the
//! provider renders, and a worker that dies between looks loses nothing:
//! the poll message is in the broker, the request id in the ledger, the
//! credits on hold.

use std::time::{Duration, SystemTime};

use genfleet_proto::{v1, ErrorCode, ValidJob};
use genfleet_providers::Checked;
use tracing::{info, warn};

use super::generate::{
    count_attempts, generation_request, model_for, poll_delay, AttemptOutcome, GenStop, Generated,
    GenerationFailure,
};
use super::progress::Tracker;
use crate::failure::{JobFailure, Stop};
use crate::services::Services;

/// A parked job's recorded provider request.
pub(crate) struct Recorded {
    provider: String,
    submission: String,
}

/// The request a parked job waits on: the first provider of its chain that
/// has one recorded. `None` sends the job down the normal path (it submits
/// again), which only happens if the record was lost.
pub(crate) async fn recorded(
    services: &Services,
    job: &ValidJob,
    providers: &[String],
) -> Result<Option<Recorded>, Stop> {
    for name in providers {
        let resumable = services
            .providers
            .get(name)
            .is_some_and(|p| p.resumable().is_some());
        if !resumable {
            continue;
        }
        if let Some(submission) = services
            .ledger
            .recall_submission(job.job_id(), name)
            .await?
        {
            return Ok(Some(Recorded {
                provider: name.clone(),
                submission,
            }));
        }
    }
    warn!("a parked job has no recorded provider request; starting it again");
    Ok(None)
}

/// One look at a parked job's request: park again, finished, or failed.
pub(crate) async fn resume(
    services: &Services,
    job: &ValidJob,
    tracker: &mut Tracker<'_>,
    recorded: Recorded,
    (parks, parked_at): (u32, Option<u64>),
    deadline: Option<SystemTime>,
) -> Result<Generated, GenStop> {
    tracker.begin(v1::Stage::Generate, 0.5).await;
    let Recorded {
        provider: name,
        submission,
    } = recorded;
    let fail = |failure: JobFailure| {
        GenStop::Fail(GenerationFailure {
            failure,
            provider: name.clone(),
            attempts: 1,
        })
    };
    let Some(resumable) = services.providers.get(&name).and_then(|p| p.resumable()) else {
        return Err(fail(JobFailure::new(
            ErrorCode::Internal,
            format!("the parked job's provider {name:?} cannot be resumed by this worker"),
        )));
    };

    // The provider's time runs from the first park; the job's deadline, if
    // sooner, wins.
    let max_wait = Duration::from_secs(services.config.providers.park.max_wait_seconds);
    let give_up_at = parked_at
        .map(|at| {
            let first_parked = super::progress::header_time(at);
            first_parked.checked_add(max_wait).unwrap_or(first_parked)
        })
        .into_iter()
        .chain(deadline)
        .min();
    if give_up_at.is_some_and(|at| at <= SystemTime::now()) {
        if let Err(e) = resumable.cancel(&submission).await {
            warn!(error = %e, provider = %name, "could not cancel a request past its deadline");
        }
        return Err(fail(JobFailure::new(
            ErrorCode::DeadlineExceeded,
            format!(
                "the provider did not finish the job in time (looked {parks} times while it was parked)"
            ),
        )));
    }

    // A look is a couple of exchanges: bound it by the provider's request
    // timeout, not by the parked job's whole budget.
    let look_budget = services.config.providers.request_timeout(&name);
    let mut request = generation_request(job, Vec::new(), deadline, look_budget);
    request.model = model_for(services, job, &name, true);
    match resumable.check(&request, &submission).await {
        Ok(Checked::Running) => {
            services
                .metrics
                .jobs_parked_total
                .with_label_values(&[&name])
                .inc();
            Err(GenStop::Park(poll_delay(services, parks)))
        }
        Ok(Checked::Done(output)) => {
            count_attempts(services, &name, AttemptOutcome::Ok, 1);
            info!(provider = %name, looks = parks, "the parked job's render finished");
            Ok(Generated {
                output,
                provider: name,
                attempts: 1,
            })
        }
        Err(error) if error.is_retryable() => {
            warn!(
                provider = %name,
                code = error.code(),
                error = %error,
                "could not look at a parked request; parking the job again"
            );
            Err(GenStop::Park(poll_delay(services, parks)))
        }
        Err(error) => {
            count_attempts(services, &name, AttemptOutcome::of_error(&error), 1);
            Err(fail(JobFailure::from(error)))
        }
    }
}

/// Asks every queue-style provider that has a request recorded for
/// `job_id` to stop it. Returns how many requests were cancelled.
pub(crate) async fn cancel_requests(services: &Services, job_id: &str) -> Result<u32, Stop> {
    let mut cancelled = 0;
    let mut names: Vec<&String> = services.providers.keys().collect();
    names.sort_unstable();
    for name in names {
        let Some(resumable) = services.providers.get(name).and_then(|p| p.resumable()) else {
            continue;
        };
        let Some(submission) = services.ledger.recall_submission(job_id, name).await? else {
            continue;
        };
        let outcome = match resumable.cancel(&submission).await {
            Ok(()) => {
                cancelled += 1;
                "cancelled"
            }
            Err(e) => {
                warn!(error = %e, provider = %name, "could not cancel the job's provider request");
                "failed"
            }
        };
        services
            .metrics
            .provider_cancels_total
            .with_label_values(&[name, outcome])
            .inc();
    }
    Ok(cancelled)
}

//! Long renders without a held slot: a job of a parked kind (video, by
//! default) is submitted to a queue-style provider, its request is recorded
//! in the ledger, and the job message is parked in a retry queue (a poll
//! message) and acked. When it comes back, any worker looks at the request
//! once: still rendering parks it again; finished goes on to post-process,
//! store and settle like any job; failed settles as a failure.
//!
//! No worker slot, prefetch slot or consumer timeout is held while the
//! provider renders, and a worker that dies between looks loses nothing:
//! the poll message is in the broker, the request id in the ledger, the
//! credits on hold.

use std::time::{Duration, SystemTime};

use genfleet_proto::{v1, ErrorCode, ValidJob};
use genfleet_providers::{Checked, Failed, GenerationRequest, Resumable};
use tracing::{info, warn};

use crate::failure::{JobFailure, Stop};
use crate::lifecycle::{self, GenStop, GenerationFailure, Tracker};
use crate::pipeline::RenderSpec;
use crate::services::Services;

/// Whether jobs of `kind` are parked while their provider renders.
pub(crate) fn parks_kind(services: &Services, kind: v1::JobKind) -> bool {
    services
        .config
        .providers
        .park
        .kinds
        .iter()
        .any(|k| k == kind.label())
}

/// The wait before look number `parks + 1`: the configured delays in
/// order, the last one repeating.
pub(crate) fn poll_delay(services: &Services, parks: u32) -> Duration {
    let delays = &services.config.providers.park.poll_delays_seconds;
    let index = usize::try_from(parks).unwrap_or(usize::MAX);
    let seconds = delays.get(index).or(delays.last()).copied().unwrap_or(30);
    Duration::from_secs(seconds)
}

/// Why a submit did not end with a parked job.
pub(crate) enum SubmitStop {
    /// The provider refused or could not be reached (after retries).
    Failed(Failed),
    /// The request went out but could not be recorded; the caller requeues.
    Requeue(String),
}

/// Submits `request` (with the usual retry policy), records the request in
/// the ledger, and returns the wait before the first look.
///
/// A request recorded by an earlier delivery that died before parking is
/// not submitted again: the job parks on it.
pub(crate) async fn submit(
    services: &Services,
    provider: &str,
    resumable: &dyn Resumable,
    request: &GenerationRequest,
) -> Result<Duration, SubmitStop> {
    let first_look = poll_delay(services, 0);
    match services
        .ledger
        .recall_submission(&request.job_id, provider)
        .await
    {
        Ok(Some(_)) => {
            info!(
                provider,
                "the job's provider request was already submitted; parking it"
            );
            return Ok(first_look);
        }
        Ok(None) => {}
        Err(e) => return Err(SubmitStop::Requeue(e.to_string())),
    }
    let (submission, attempts) =
        genfleet_providers::call_with_retries(provider, request, &services.retry, || {
            resumable.submit(request)
        })
        .await
        .map_err(SubmitStop::Failed)?;
    if let Err(e) = services
        .ledger
        .remember_submission(&request.job_id, provider, &submission)
        .await
    {
        // Unrecorded, the request would be submitted (and paid for) again by
        // the redelivery: stop it first.
        warn!(error = %e, provider, "could not record a parked request; cancelling it");
        if let Err(cancel) = resumable.cancel(&submission).await {
            warn!(error = %cancel, provider, "could not cancel an unrecorded request");
        }
        return Err(SubmitStop::Requeue(e.to_string()));
    }
    services
        .metrics
        .provider_attempts_total
        .with_label_values(&[provider, "submitted"])
        .inc_by(u64::from(attempts));
    services
        .metrics
        .jobs_parked_total
        .with_label_values(&[provider])
        .inc();
    info!(
        provider,
        poll_in_s = first_look.as_secs(),
        "submitted; parking the job while the provider renders"
    );
    Ok(first_look)
}

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

/// One look at a parked job's request: park again, finish, or fail.
pub(crate) async fn resume(
    services: &Services,
    job: &ValidJob,
    tracker: &mut Tracker<'_>,
    recorded: Recorded,
    (parks, parked_at): (u32, Option<u64>),
    render_spec: &RenderSpec,
    deadline: Option<SystemTime>,
) -> Result<(Vec<v1::Output>, String, u32), GenStop> {
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
        .map(|at| SystemTime::UNIX_EPOCH + Duration::from_secs(at) + max_wait)
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

    // A look is a couple of exchanges: bound it by the request timeout, not
    // by the parked job's whole budget.
    let look_budget = Duration::from_secs(services.config.providers.fal.request_timeout_seconds);
    let mut request = lifecycle::generation_request(job, Vec::new(), deadline, look_budget);
    request.model = lifecycle::model_for(services, job, &name, true);
    match resumable.check(&request, &submission).await {
        Ok(Checked::Running) => {
            let delay = poll_delay(services, parks);
            services
                .metrics
                .jobs_parked_total
                .with_label_values(&[&name])
                .inc();
            Err(GenStop::Park(delay))
        }
        Ok(Checked::Done(output)) => {
            services
                .metrics
                .provider_attempts_total
                .with_label_values(&[&name, "ok"])
                .inc();
            info!(provider = %name, looks = parks, "the parked job's render finished");
            lifecycle::render_and_store(services, job, tracker, (name, 1), output, render_spec)
                .await
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
            services
                .metrics
                .provider_attempts_total
                .with_label_values(&[&name, lifecycle::attempt_outcome(&error)])
                .inc();
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

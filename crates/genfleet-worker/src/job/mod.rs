//! One job delivery, start to finish, as the stages of DESIGN.md:
//!
//! ```text
//! decode     the message, checked against the contract (at admission)
//! start      stored outcome? cancel request? crashed too often?
//! inputs     fetch, scan, validate, sanitise, pre-process
//! reserve    hold the job's credits
//! generate   the provider chain (or submit and park; park: a parked job's return)
//! render     post-process the outputs and store them
//! settle     capture or release the credits with the outcome stored
//! reply      publish the result (confirmed)
//! ```
//!
//! [`handle`] reads top to bottom and returns the delivery's
//! [`Disposition`]; [`crate::delivery::settle`] carries it out. Stages
//! never call back up: parking and cancellation call stages, not the other
//! way round.
//!
//! Every side effect before the ack is idempotent on `job_id`: the credit
//! hold (`ON CONFLICT`), the output keys (deterministic names), the settled
//! outcome (stored with the settlement, republished on redelivery), and the
//! result's message id (`<job_id>.result`).

pub(crate) mod decode;
mod generate;
mod inputs;
pub(crate) mod park;
pub(crate) mod progress;
mod render;
pub(crate) mod reply;
mod reserve;
pub(crate) mod settle;
mod start;

use std::time::{Instant, SystemTime};

use genfleet_broker::{Incoming, JobClass, Lane, Publisher};
use genfleet_credits::Settlement;
use genfleet_proto::{v1, ErrorCode, ValidJob};
use tracing::{debug, info, warn, Instrument};

use self::decode::Decoded;
use self::generate::{GenStop, GenerationFailure};
use self::progress::{timestamp_to_system_time, InFlight, Tracker};
use self::render::Stored;
use self::settle::Settled;
use self::start::Start;
use crate::disposition::Disposition;
use crate::failure::{JobFailure, Stop};
use crate::services::Services;

/// A delivery of a job queue, decoded once when the consumer took it.
pub(crate) struct Delivery {
    pub(crate) incoming: Incoming,
    pub(crate) decoded: Decoded,
    /// The class of the queue it came from (its input limits).
    pub(crate) class: JobClass,
    pub(crate) lane: Lane,
}

impl Delivery {
    pub(crate) fn new(incoming: Incoming, class: JobClass, lane: Lane) -> Delivery {
        let decoded = decode::decode(&incoming);
        Delivery {
            incoming,
            decoded,
            class,
            lane,
        }
    }
}

/// Handles one delivery; the caller settles the returned disposition.
pub(crate) async fn handle(
    services: &Services,
    publisher: &Publisher,
    delivery: &Delivery,
) -> Disposition {
    let incoming = &delivery.incoming;
    let job = match &delivery.decoded {
        Ok(job) => job,
        Err(rejected) => {
            return reply::reject_message(services, publisher, incoming, rejected).await;
        }
    };
    let span = tracing::info_span!(
        "job",
        job_id = %job.job_id(),
        kind = job.kind().label(),
        redelivered = incoming.redelivered(),
        delivery_count = incoming.delivery_count(),
    );
    async {
        let disposition = run(services, publisher, delivery, job).await;
        match disposition {
            Disposition::Requeue(reason)
                if incoming.requeues()
                    >= u32::from(services.config.worker.max_requeues_per_job) =>
            {
                end_requeued_too_often(services, publisher, incoming, job, reason).await
            }
            other => other,
        }
    }
    .instrument(span)
    .await
}

async fn run(
    services: &Services,
    publisher: &Publisher,
    delivery: &Delivery,
    job: &ValidJob,
) -> Disposition {
    let started = Instant::now();
    let incoming = &delivery.incoming;
    if incoming
        .reply_to()
        .is_some_and(genfleet_broker::is_fleet_name)
    {
        return refuse(
            services,
            publisher,
            incoming,
            job,
            "`reply_to` names one of the fleet's own queues (genfleet.*); results go to \
             genfleet.results and to a queue of the publisher's own",
        )
        .await;
    }
    match start::start(services, incoming, job).await {
        Ok(Start::Run) => {}
        Ok(Start::Foreign) => {
            warn!("job id already belongs to another tenant's job; refusing this one");
            return refuse(
                services,
                publisher,
                incoming,
                job,
                "field `job_id`: this id is already used by another job; every job needs a \
                 fresh id (a ULID or UUID)",
            )
            .await;
        }
        Ok(Start::Republish(result)) => {
            info!("job already settled, republishing its stored result");
            // The earlier delivery may have died before deleting them (or
            // before recording them, if an older worker settled it).
            if let Err(stop) = settle::record_sources(services, job).await {
                return stopped(stop);
            }
            settle::delete_sources(services, job).await;
            return reply::publish_result(publisher, incoming, &result).await;
        }
        Ok(Start::Cancelled { reason }) => {
            return end_cancelled(services, publisher, incoming, job, &reason).await;
        }
        Ok(Start::Abandon { crashed }) => {
            return end_abandoned(services, publisher, incoming, job, crashed).await;
        }
        Err(stop) => return stopped(stop),
    }

    let in_flight = InFlight::enter(&services.metrics.jobs_in_flight);
    let mut tracker = Tracker::new(services, publisher, job);
    let outcome = execute(services, delivery, job, &mut tracker).await;
    let timings = tracker.take_timings();
    drop(in_flight);

    let mut result = match outcome {
        Ok(result) => result,
        // Failures after the reservation were settled inside execute();
        // these came before this run reserved anything. A job that comes
        // back (a delay, a requeue, a park, a redelivery) may still hold
        // credits from an earlier run, though: release them with the
        // result, or they stay held until the hold expires.
        Err(Stop::Fail(failure)) => {
            let result =
                reply::failed_result(services, job.job_id_as_sent(), Some(job.tenant()), &failure);
            // A first run that failed here holds no credits and stores no
            // outcome, unless it must delete its sources: those may go
            // only once the outcome is stored (a redelivery then republishes
            // it instead of failing anew on inputs that are gone).
            if !came_back(incoming) && !job.job().delete_sources_after {
                result
            } else {
                match settle::release_with_result(services, job, result).await {
                    Ok(Settled::Own(result)) => result,
                    Ok(Settled::Earlier(earlier)) => {
                        return reply::publish_result(publisher, incoming, &earlier).await
                    }
                    Err(stop) => return stopped(stop),
                }
            }
        }
        Err(stop) => return stopped(stop),
    };
    result.timings = timings;
    let status = v1::JobStatus::try_from(result.status).unwrap_or(v1::JobStatus::Unspecified);
    if let Some(error) = &result.error {
        services
            .metrics
            .job_errors_total
            .with_label_values(&[&error.code])
            .inc();
        info!(status = status.label(), code = %error.code, "job failed");
    } else {
        info!(outputs = result.outputs.len(), "job succeeded");
    }
    let disposition = reply::publish_result(publisher, incoming, &result).await;
    services
        .metrics
        .job_duration_seconds
        .with_label_values(&[job.kind().label(), status.label()])
        .observe(started.elapsed().as_secs_f64());
    disposition
}

/// The work itself: a settled result, or a failure from before credits
/// were reserved, or a requeue, or a park.
async fn execute(
    services: &Services,
    delivery: &Delivery,
    job: &ValidJob,
    tracker: &mut Tracker<'_>,
) -> Result<v1::JobResult, Stop> {
    let incoming = &delivery.incoming;
    let contract = job.job();
    let deadline = contract.deadline.as_ref().map(timestamp_to_system_time);
    let mut render_spec =
        crate::pipeline::RenderSpec::from_contract(contract.outputs.as_ref(), &services.presets)?;
    // Checked before anything is reserved: a method the worker refuses is
    // the job's fault whatever the provider.
    render_spec.matte = crate::methods::MatteMethod::of_job(contract)
        .map_err(|message| JobFailure::new(ErrorCode::InvalidInput, message))?;
    let providers = generate::provider_chain(services, job)?;

    // A parked job comes back with its inputs checked and its credits held:
    // only its provider request is left to look at.
    let parked = if incoming.parks() > 0 {
        park::recorded(services, job, &providers).await?
    } else {
        None
    };
    let generated = match parked {
        Some(recorded) => {
            let parks = (incoming.parks(), incoming.parked_at());
            park::resume(services, job, tracker, recorded, parks, deadline).await
        }
        None => {
            if deadline.is_some_and(|d| d <= SystemTime::now()) {
                return Err(Stop::Fail(JobFailure::new(
                    ErrorCode::DeadlineExceeded,
                    "the job's deadline passed before a worker could start it",
                )));
            }
            let limits = services.input_limits_for(delivery.class);
            let inputs = inputs::prepare(services, job, &limits, tracker).await?;
            reserve::reserve(services, job, tracker).await?;
            let deferred_at = incoming.deferred_at();
            generate::generate(
                services,
                job,
                tracker,
                &providers,
                inputs,
                (deadline, deferred_at),
            )
            .await
        }
    };
    let stored = match generated {
        Ok(generated) => {
            render::render_and_store(services, job, tracker, generated, &render_spec).await
        }
        Err(stop) => Err(stop),
    };

    let amount = job.credit_amount();
    let (result, settlement) = match stored {
        Ok(Stored {
            outputs,
            provider,
            attempts,
        }) => {
            let mut result = reply::base_result(
                services,
                job.job_id_as_sent(),
                Some(job.tenant()),
                v1::JobStatus::Succeeded,
            );
            result.outputs = outputs;
            result.provider = provider;
            result.attempts = attempts;
            result.credits = Some(v1::CreditSummary {
                held: amount,
                captured: amount,
                released: 0,
            });
            (result, Settlement::Capture { amount })
        }
        Err(GenStop::Fail(GenerationFailure {
            failure,
            provider,
            attempts,
        })) => {
            let mut result =
                reply::failed_result(services, job.job_id_as_sent(), Some(job.tenant()), &failure);
            result.provider = provider;
            result.attempts = attempts;
            result.credits = Some(v1::CreditSummary {
                held: amount,
                captured: 0,
                released: amount,
            });
            (result, Settlement::Release)
        }
        Err(GenStop::Requeue { reason, detail }) => return Err(Stop::Requeue { reason, detail }),
        Err(GenStop::Park(delay)) => return Err(Stop::Park(delay)),
        Err(GenStop::Delay(delay)) => return Err(Stop::Delay(delay)),
    };
    settle::settle_run(services, job, tracker, result, settlement)
        .await
        .map(Settled::into_result)
}

/// Whether an earlier run of this job may have reserved its credits.
fn came_back(incoming: &Incoming) -> bool {
    incoming.redelivered() || incoming.requeues() > 0 || incoming.parks() > 0
}

/// The disposition of a job that stopped without a result.
fn stopped(stop: Stop) -> Disposition {
    match stop {
        Stop::Requeue { reason, detail } => {
            warn!(
                reason = reason.label(),
                %detail,
                "infrastructure failure; returning the job to its queue"
            );
            Disposition::Requeue(reason)
        }
        Stop::Park(delay) => {
            debug!(
                poll_in_s = delay.as_secs(),
                "provider still rendering; parking the job"
            );
            Disposition::Park(delay)
        }
        Stop::Delay(delay) => Disposition::Delay(delay),
        // Callers turn failures into results before they get here; a
        // failure that reaches this point has no result to publish, and
        // must not be lost silently: back to the queue, and a loud log.
        Stop::Fail(failure) => {
            tracing::error!(code = failure.code.as_str(), message = %failure.message, "a failure without a result; requeueing the job");
            Disposition::Requeue(crate::disposition::RequeueReason::OutcomeUnreadable)
        }
    }
}

/// Refuses a job before anything of it ran or was stored: a failed
/// `invalid_input` result, published, and nothing else (no outcome is
/// stored, no credits are touched: the job id may be another tenant's).
async fn refuse(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    job: &ValidJob,
    message: &str,
) -> Disposition {
    let mut failure = JobFailure::new(ErrorCode::InvalidInput, message);
    failure.retryable = false;
    let result = reply::failed_result(services, job.job_id_as_sent(), Some(job.tenant()), &failure);
    services
        .metrics
        .job_errors_total
        .with_label_values(&[ErrorCode::InvalidInput.as_str()])
        .inc();
    reply::publish_result(publisher, incoming, &result).await
}

/// Ends a delivered job that has a cancel request: its provider requests
/// are stopped, its credits released, its result published.
pub(crate) async fn end_cancelled(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    job: &ValidJob,
    reason: &str,
) -> Disposition {
    if let Err(stop @ Stop::Requeue { .. }) = park::cancel_requests(services, job.job_id()).await {
        return stopped(stop);
    }
    let result = reply::cancelled_result(services, job, reason);
    let result = match settle::release_with_result(services, job, result).await {
        Ok(Settled::Own(result)) => result,
        Ok(Settled::Earlier(earlier)) => {
            return reply::publish_result(publisher, incoming, &earlier).await
        }
        Err(stop) => return stopped(stop),
    };
    services
        .metrics
        .job_errors_total
        .with_label_values(&[ErrorCode::Cancelled.as_str()])
        .inc();
    info!("job cancelled before it finished");
    reply::publish_result(publisher, incoming, &result).await
}

/// A job that went back to its queue `worker.max_requeues_per_job` times
/// because of our infrastructure, and would again: it ends failed with
/// `internal` (retryable: a later job may find the fault fixed), its
/// credits released, its result published, and the message dead-lettered
/// with the reason for an operator.
async fn end_requeued_too_often(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    job: &ValidJob,
    reason: crate::disposition::RequeueReason,
) -> Disposition {
    let failure = JobFailure::new(
        ErrorCode::Internal,
        format!(
            "the job went back to its queue {} times ({}) and was not run again",
            incoming.requeues().saturating_add(1),
            reason.label()
        ),
    );
    warn!(
        requeues = incoming.requeues(),
        reason = reason.label(),
        "job requeued too often; failing and dead-lettering it"
    );
    let result = reply::failed_result(services, job.job_id_as_sent(), Some(job.tenant()), &failure);
    // Only a job whose id is its tenant's has credits and an outcome to
    // settle here; another tenant's (a refused job whose result could not
    // be published) must stay untouched.
    let own = match services.ledger.job_owner(job.job_id()).await {
        Ok(owner) => owner.as_deref() == Some(job.owner().as_str()),
        // The ledger itself is down: the job waits for it in its queue.
        Err(e) => {
            return stopped(Stop::requeue(
                crate::disposition::RequeueReason::LedgerUnavailable,
                e,
            ))
        }
    };
    let reason = format!("requeue_limit: {}", failure.message);
    release_then_dead_letter(services, publisher, incoming, job, result, own, &reason).await
}

/// Ends a job that will not be run again: its credits released with
/// `result` stored (when `settle` is set: the job's id is its tenant's),
/// the result published, then the message dead-lettered with `reason`.
async fn release_then_dead_letter(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    job: &ValidJob,
    result: v1::JobResult,
    settle: bool,
    reason: &str,
) -> Disposition {
    let result = if settle {
        match settle::release_with_result(services, job, result).await {
            Ok(Settled::Own(result)) => result,
            Ok(Settled::Earlier(earlier)) => {
                return reply::publish_result(publisher, incoming, &earlier).await
            }
            Err(stop) => return stopped(stop),
        }
    } else {
        result
    };
    reply::publish_failure_then_dead_letter(
        services,
        publisher,
        incoming,
        &result,
        ErrorCode::Internal,
        reason,
    )
    .await
}

/// A job that no worker finished although it was started `crashed` times:
/// every start ended without a result (the worker crashed, was killed, or
/// the job panicked). It ends here: failed with `internal`, its credits
/// released, its result published, and the message dead-lettered with the
/// reason for an operator to look at (`genfleet dlq show`).
async fn end_abandoned(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    job: &ValidJob,
    crashed: u32,
) -> Disposition {
    let mut failure = JobFailure::new(
        ErrorCode::Internal,
        format!(
            "the job was started {crashed} times and no worker finished it (each run crashed \
             or was interrupted); it was not run again"
        ),
    );
    // The same job would most likely crash a worker again.
    failure.retryable = false;
    let mut result =
        reply::failed_result(services, job.job_id_as_sent(), Some(job.tenant()), &failure);
    result.attempts = crashed;
    let reason = format!("delivery_limit: {}", failure.message);
    release_then_dead_letter(services, publisher, incoming, job, result, true, &reason).await
}

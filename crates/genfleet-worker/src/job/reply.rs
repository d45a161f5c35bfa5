//! The last stage: the job's `JobResult`, built and published (to
//! `genfleet.results` and, when asked, the job's `reply_to` queue), both
//! confirmed before the delivery may be acked. Also the result of a message
//! that is not a valid job, which then goes to the dead letters.

use std::time::SystemTime;

use genfleet_broker::{Incoming, Outgoing, Publisher};
use genfleet_proto::{v1, ErrorCode, ValidJob};
use tracing::warn;

use super::decode::Rejected;
use super::progress::system_time_to_timestamp;
use crate::disposition::{DeadLetter, Disposition, RequeueReason};
use crate::failure::JobFailure;
use crate::services::Services;

pub(crate) fn base_result(
    services: &Services,
    job_id: &str,
    tenant: Option<&v1::Tenant>,
    status: v1::JobStatus,
) -> v1::JobResult {
    v1::JobResult {
        job_id: job_id.to_string(),
        status: status as i32,
        outputs: Vec::new(),
        error: None,
        credits: Some(v1::CreditSummary::default()),
        timings: Vec::new(),
        provider: String::new(),
        attempts: 0,
        worker: services.worker_name.clone(),
        tenant: tenant.cloned(),
        finished_at: Some(system_time_to_timestamp(SystemTime::now())),
    }
}

/// A failed (or expired, or cancelled) result: `deadline_exceeded` ends as
/// EXPIRED and `cancelled` as CANCELLED, as the contract says.
pub(crate) fn failed_result(
    services: &Services,
    job_id: &str,
    tenant: Option<&v1::Tenant>,
    failure: &JobFailure,
) -> v1::JobResult {
    let status = match failure.code {
        ErrorCode::DeadlineExceeded => v1::JobStatus::Expired,
        ErrorCode::Cancelled => v1::JobStatus::Cancelled,
        _ => v1::JobStatus::Failed,
    };
    let mut result = base_result(services, job_id, tenant, status);
    result.error = Some(v1::Error {
        code: failure.code.as_str().to_string(),
        message: failure.message.clone(),
        retryable: failure.retryable,
    });
    result
}

/// The result of a job cancelled before it finished.
pub(crate) fn cancelled_result(services: &Services, job: &ValidJob, reason: &str) -> v1::JobResult {
    let mut failure = JobFailure::new(ErrorCode::Cancelled, format!("cancelled: {reason}"));
    failure.retryable = false;
    failed_result(services, job.job_id_as_sent(), Some(job.tenant()), &failure)
}

/// Publishes the result to `genfleet.results` and, when asked, to the
/// job's `reply_to` queue; [`Disposition::Ack`] only when both are
/// confirmed.
pub(crate) async fn publish_result(
    publisher: &Publisher,
    incoming: &Incoming,
    result: &v1::JobResult,
) -> Disposition {
    let status = v1::JobStatus::try_from(result.status).unwrap_or(v1::JobStatus::Unspecified);
    let body = genfleet_proto::encode_json(result);
    let outgoing = Outgoing {
        content_type: Some("application/json".into()),
        message_id: Some(format!("{}.result", result.job_id)),
        correlation_id: Some(result.job_id.clone()),
        persistent: true,
        ..Default::default()
    };
    let key = genfleet_proto::result_routing_key(result.tenant.as_ref(), status);
    if let Err(e) = publisher
        .publish(genfleet_broker::RESULTS_EXCHANGE, &key, &body, &outgoing)
        .await
    {
        warn!(error = %e, "result publish not confirmed; the job will be redelivered");
        return Disposition::Requeue(RequeueReason::PublishFailed);
    }
    // Never into the fleet's own queues: a result there would be read as a
    // job, a cancel request or a dead letter.
    if let Some(reply_to) = incoming
        .reply_to()
        .filter(|r| !genfleet_broker::is_fleet_name(r))
    {
        if let Err(e) = publisher.publish("", reply_to, &body, &outgoing).await {
            warn!(error = %e, "reply_to publish not confirmed; the job will be redelivered");
            return Disposition::Requeue(RequeueReason::PublishFailed);
        }
    }
    Disposition::Ack
}

/// A failed job whose message must also go to the dead letters: its
/// result first (confirmed), then the message with the code and reason.
pub(crate) async fn publish_failure_then_dead_letter(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    result: &v1::JobResult,
    code: ErrorCode,
    reason: &str,
) -> Disposition {
    services
        .metrics
        .job_errors_total
        .with_label_values(&[code.as_str()])
        .inc();
    match publish_result(publisher, incoming, result).await {
        Disposition::Ack => Disposition::DeadLetter(DeadLetter {
            code,
            reason: reason.to_string(),
            job_id: Some(result.job_id.clone()),
        }),
        not_confirmed => not_confirmed,
    }
}

/// A message that is not a valid job: a failed result when its id is known,
/// then the message itself to the dead letters with the reason.
pub(crate) async fn reject_message(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    rejected: &Rejected,
) -> Disposition {
    let code = ErrorCode::InvalidInput;
    let error = &rejected.error;
    warn!(
        job_id = error.job_id.as_deref().unwrap_or(""),
        reason = %error.message,
        "message is not a valid job; dead-lettering it"
    );
    if let Some(job_id) = &error.job_id {
        let failure = JobFailure::new(code, format!("invalid job message: {}", error.message));
        let result = failed_result(services, job_id, rejected.valid_tenant(), &failure);
        return publish_failure_then_dead_letter(
            services,
            publisher,
            incoming,
            &result,
            code,
            &error.message,
        )
        .await;
    }
    Disposition::DeadLetter(DeadLetter {
        code,
        reason: error.message.clone(),
        job_id: None,
    })
}

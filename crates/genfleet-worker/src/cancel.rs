//! Cancel requests by job id (`CancelJob` on the `genfleet.cancel`
//! exchange).
//!
//! Any worker takes a request off `genfleet.cancellations`, records it in
//! the ledger (durable: the job meets it wherever it runs next), and asks
//! the provider to stop the job's recorded request, so a parked or running
//! render stops being rendered and billed at once. The job itself ends
//! `cancelled` with its credits released:
//! - still queued: when it is delivered, before anything runs;
//! - parked: at its next look (the provider request is already cancelled);
//! - running on some worker: when its run reaches settlement, which wins
//!   over whatever the run produced (its outputs are deleted); a cancelled
//!   provider request makes that run end early.
//!
//! A job that was already settled keeps its result: a cancel cannot undo a
//! delivered generation or refund a captured charge.

use genfleet_broker::{Incoming, Publisher};
use genfleet_proto::{v1, ContentType, ErrorCode, ValidJob};
use tracing::{info, warn};

use crate::failure::{JobFailure, Stop};
use crate::lifecycle::{self, Disposition};
use crate::services::Services;

/// Longest cancel reason kept (it reaches the job's result).
const REASON_CHARS: usize = 200;

/// Handles one delivery of the cancel queue.
pub async fn handle_request(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
) -> Disposition {
    let content_type = ContentType::from_header(incoming.content_type());
    let request = match genfleet_proto::decode_cancel(incoming.body(), &content_type) {
        Ok(request) => request,
        Err(error) => {
            warn!(reason = %error.message, "message is not a valid cancel request; dead-lettering it");
            return lifecycle::dead_letter(
                services,
                publisher,
                incoming,
                ErrorCode::InvalidInput,
                &error.message,
                None,
            )
            .await;
        }
    };
    let reason: String = request
        .reason
        .chars()
        .filter(|c| !c.is_control())
        .take(REASON_CHARS)
        .collect();
    let reason = if reason.trim().is_empty() {
        "cancel requested".to_string()
    } else {
        reason
    };
    let job_id = request.job_id.as_str();
    let recorded = match services.ledger.request_cancellation(job_id, &reason).await {
        Ok(first) => first,
        Err(e) => {
            warn!(job_id, error = %e, "ledger unavailable while recording a cancel request");
            return Disposition::Requeue("ledger_unavailable");
        }
    };
    let cancelled = match crate::parking::cancel_requests(services, job_id).await {
        Ok(n) => n,
        Err(Stop::Requeue { reason, .. }) => return Disposition::Requeue(reason),
        Err(_) => 0,
    };
    services
        .metrics
        .cancel_requests_total
        .with_label_values(&[if recorded { "recorded" } else { "repeated" }])
        .inc();
    info!(
        job_id,
        provider_requests_cancelled = cancelled,
        "cancel request recorded"
    );
    Disposition::Ack
}

/// The result of a job cancelled before it finished.
pub(crate) fn cancelled_result(services: &Services, job: &ValidJob, reason: &str) -> v1::JobResult {
    let mut failure = JobFailure::new(ErrorCode::Cancelled, format!("cancelled: {reason}"));
    failure.retryable = false;
    lifecycle::failed_result(services, job.job_id(), Some(job.tenant()), &failure)
}

/// Ends a delivered job that has a cancel request: its provider requests
/// are stopped, its credits released, its result published.
pub(crate) async fn finish_cancelled(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    job: &ValidJob,
    reason: &str,
) -> Disposition {
    if let Err(Stop::Requeue { reason, .. }) =
        crate::parking::cancel_requests(services, job.job_id()).await
    {
        return Disposition::Requeue(reason);
    }
    let mut result = cancelled_result(services, job, reason);
    if let Err(stop) =
        lifecycle::release_with_result(services, publisher, incoming, job, &mut result).await
    {
        return stop;
    }
    services
        .metrics
        .job_errors_total
        .with_label_values(&[ErrorCode::Cancelled.as_str()])
        .inc();
    info!("job cancelled before it finished");
    lifecycle::publish_result(services, publisher, incoming, &result).await
}

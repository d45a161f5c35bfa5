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
//!
//! A request names its tenant and reaches only that tenant's job: one for
//! an id another tenant's job has is dead-lettered and changes nothing; one
//! for an id not delivered yet waits for that tenant's job with that id.

use genfleet_broker::Incoming;
use genfleet_credits::CancelRequest;
use genfleet_proto::{ContentType, ErrorCode};
use tracing::{info, warn};

use crate::disposition::{DeadLetter, Disposition, RequeueReason};
use crate::failure::Stop;
use crate::job::park;
use crate::services::Services;

/// Longest cancel reason kept (it reaches the job's result).
const REASON_CHARS: usize = 200;

/// Handles one delivery of the cancel queue; the caller settles the
/// disposition.
pub(crate) async fn handle_request(services: &Services, incoming: &Incoming) -> Disposition {
    let content_type = ContentType::from_header(incoming.content_type());
    let request = match genfleet_proto::decode_cancel(incoming.body(), &content_type) {
        Ok(request) => request,
        Err(error) => {
            warn!(reason = %error.message, "message is not a valid cancel request; dead-lettering it");
            return Disposition::DeadLetter(DeadLetter {
                code: ErrorCode::InvalidInput,
                reason: error.message,
                job_id: None,
            });
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
    // decode_cancel checked the tenant is there and valid.
    let owner = request
        .tenant
        .as_ref()
        .map(|t| format!("{}/{}", t.org, t.workspace))
        .unwrap_or_default();
    let recorded = match services
        .ledger
        .request_cancellation(job_id, &owner, &reason)
        .await
    {
        Ok(recorded) => recorded,
        Err(genfleet_credits::CreditsError::Invalid(message)) => {
            return Disposition::DeadLetter(DeadLetter {
                code: ErrorCode::InvalidInput,
                reason: message,
                job_id: Some(job_id.to_string()),
            });
        }
        Err(e) => {
            warn!(job_id, error = %e, "ledger unavailable while recording a cancel request");
            return Disposition::Requeue(RequeueReason::LedgerUnavailable);
        }
    };
    let (label, job_known) = match recorded {
        CancelRequest::Recorded { job_known } => ("recorded", job_known),
        CancelRequest::Repeated { job_known } => ("repeated", job_known),
        CancelRequest::Foreign => {
            services
                .metrics
                .cancel_requests_total
                .with_label_values(&["foreign"])
                .inc();
            warn!(
                job_id,
                "cancel request for another tenant's job; dead-lettering it"
            );
            return Disposition::DeadLetter(DeadLetter {
                code: ErrorCode::InvalidInput,
                reason: "cancel request: the job id belongs to another tenant's job".into(),
                job_id: Some(job_id.to_string()),
            });
        }
    };
    // Only a delivered job can have provider requests to stop.
    let cancelled = if job_known {
        match park::cancel_requests(services, job_id).await {
            Ok(n) => n,
            Err(Stop::Requeue { reason, .. }) => return Disposition::Requeue(reason),
            Err(_) => 0,
        }
    } else {
        0
    };
    services
        .metrics
        .cancel_requests_total
        .with_label_values(&[label])
        .inc();
    info!(
        job_id,
        provider_requests_cancelled = cancelled,
        "cancel request recorded"
    );
    Disposition::Ack
}

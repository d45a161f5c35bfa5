//! Settling a delivery with the broker: the one place where a
//! [`Disposition`] becomes an ack, a retry-queue publish, a park, a lane
//! move, a dead letter or a nack, and where each ending is counted
//! (`genfleet_deliveries_total`, `genfleet_requeues_total`,
//! `genfleet_dead_letters_total`, `genfleet_jobs_demoted_total`).

use std::time::Duration;

use genfleet_broker::{BrokerError, Incoming, JobClass, Lane, Outgoing, Publisher, Topology};
use tracing::{info, warn};

use crate::disposition::{DeadLetter, Disposition, RequeueReason};
use crate::services::Services;

/// Which consumer a delivery came from: job queues go through the retry
/// queues, which route back to `genfleet.jobs`; cancel requests do not.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    Job { class: JobClass, lane: Lane },
    CancelRequest,
}

/// Carries out `disposition` for `incoming` and counts it. Failures to
/// reach the broker are logged: the broker then redelivers the message,
/// which job id idempotency absorbs.
pub(crate) async fn settle(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    source: Source,
    disposition: Disposition,
) {
    services
        .metrics
        .deliveries_total
        .with_label_values(&[disposition.label()])
        .inc();
    let settled = match disposition {
        Disposition::Ack => incoming.ack().await,
        Disposition::Requeue(reason) => {
            services
                .metrics
                .requeues_total
                .with_label_values(&[reason.label()])
                .inc();
            retry_later(services, publisher, incoming, source).await
        }
        Disposition::Park(delay) => park(publisher, incoming, delay).await,
        Disposition::Delay(delay) => match source {
            Source::Job { .. } => delay_job(publisher, incoming, delay).await,
            Source::CancelRequest => incoming.nack(true).await,
        },
        Disposition::MoveDown(below) => match source {
            Source::Job { class, lane } => {
                move_down(services, publisher, incoming, class, lane, below).await
            }
            Source::CancelRequest => incoming.nack(true).await,
        },
        Disposition::DeadLetter(dead) => {
            let code = dead.code;
            match publish_dead_letter(publisher, incoming, dead).await {
                Ok(()) => {
                    services
                        .metrics
                        .dead_letters_total
                        .with_label_values(&[code.as_str()])
                        .inc();
                    incoming.ack().await
                }
                Err(e) => {
                    warn!(error = %e, "dead letter not confirmed; the message will be redelivered");
                    services
                        .metrics
                        .requeues_total
                        .with_label_values(&[RequeueReason::PublishFailed.label()])
                        .inc();
                    retry_later(services, publisher, incoming, source).await
                }
            }
        }
        Disposition::Redeliver(reason) => {
            services
                .metrics
                .requeues_total
                .with_label_values(&[reason.label()])
                .inc();
            incoming.nack(true).await
        }
        Disposition::ChannelLost => {
            info!("broker connection lost; the broker redelivers the job");
            Ok(())
        }
    };
    if let Err(e) = settled {
        warn!(error = %e, "ack/nack failed; the broker will redeliver the message");
    }
}

/// Hands a delivery back for another attempt after a pause.
async fn retry_later(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    source: Source,
) -> Result<(), BrokerError> {
    match source {
        Source::Job { .. } => requeue_later(services, publisher, incoming).await,
        Source::CancelRequest => {
            // Retry queues route to the job queues, not to the cancel
            // queue: pause, then hand it back.
            tokio::time::sleep(Duration::from_secs(1)).await;
            incoming.nack(true).await
        }
    }
}

/// Our infrastructure failed (ledger, store, broker), not the job: send it
/// through a retry queue, so it comes back after a pause without counting
/// as a failed delivery towards the poison limit. Only if that publish is
/// not confirmed does the delivery go back to its queue directly.
async fn requeue_later(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
) -> Result<(), BrokerError> {
    let requeues = usize::try_from(incoming.requeues()).unwrap_or(usize::MAX);
    let delays = &services.config.broker.requeue_delays_seconds;
    let delay = delays.get(requeues).or(delays.last()).copied().unwrap_or(5);
    let forwarded = publisher
        .forward(
            genfleet_broker::RETRY_EXCHANGE,
            incoming.routing_key(),
            incoming,
            &[
                (
                    genfleet_broker::HEADER_DELAY,
                    Topology::delay_label(Duration::from_secs(delay)),
                ),
                (genfleet_broker::HEADER_REQUEUES, (requeues + 1).to_string()),
            ],
        )
        .await;
    match forwarded {
        Ok(()) => {
            info!(
                retry_in_s = delay,
                requeues = requeues + 1,
                "job sent to a retry queue"
            );
            incoming.ack().await
        }
        Err(e) => {
            warn!(error = %e, "retry queue publish not confirmed; returning the job to its queue");
            // A short pause so an outage does not become a hot redelivery loop.
            tokio::time::sleep(Duration::from_millis(500)).await;
            incoming.nack(true).await
        }
    }
}

/// Sends a job that no provider could take now through the retry queue of
/// at least `delay`, counted as an orderly return
/// ([`genfleet_broker::HEADER_REQUEUES`], so not as a crashed start), with
/// the time it was first deferred ([`genfleet_broker::HEADER_DEFERRED_AT`]),
/// then acks it. Unconfirmed, the delivery goes back to its queue instead.
async fn delay_job(
    publisher: &Publisher,
    incoming: &Incoming,
    delay: Duration,
) -> Result<(), BrokerError> {
    // The retry queues are the default topology's (the runner declares no
    // others).
    let delay = Topology::default().retry_delay_at_least(delay);
    // A publisher may have written the header too: never later than now.
    let now = unix_now();
    let deferred_at = incoming.deferred_at().map_or(now, |at| at.min(now));
    let forwarded = publisher
        .forward(
            genfleet_broker::RETRY_EXCHANGE,
            incoming.routing_key(),
            incoming,
            &[
                (genfleet_broker::HEADER_DELAY, Topology::delay_label(delay)),
                (
                    genfleet_broker::HEADER_REQUEUES,
                    incoming.requeues().saturating_add(1).to_string(),
                ),
                (genfleet_broker::HEADER_DEFERRED_AT, deferred_at.to_string()),
            ],
        )
        .await;
    match forwarded {
        Ok(()) => {
            info!(
                retry_in_s = delay.as_secs(),
                "no provider could take the job now; it waits in a retry queue"
            );
            incoming.ack().await
        }
        Err(e) => {
            warn!(error = %e, "delay publish not confirmed; returning the job to its queue");
            tokio::time::sleep(Duration::from_millis(500)).await;
            incoming.nack(true).await
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parks a job whose provider is rendering: the same message goes to the
/// retry queue of `delay` (it returns to its own queue and lane after it),
/// counted in [`genfleet_broker::HEADER_PARKS`], then the delivery is
/// acked. If the publish is not confirmed the delivery goes back to its
/// queue instead, and the next worker finds the recorded request.
async fn park(
    publisher: &Publisher,
    incoming: &Incoming,
    delay: Duration,
) -> Result<(), BrokerError> {
    let parked_at = incoming.parked_at().unwrap_or_else(unix_now);
    let forwarded = publisher
        .forward(
            genfleet_broker::RETRY_EXCHANGE,
            incoming.routing_key(),
            incoming,
            &[
                (genfleet_broker::HEADER_DELAY, Topology::delay_label(delay)),
                (
                    genfleet_broker::HEADER_PARKS,
                    incoming.parks().saturating_add(1).to_string(),
                ),
                (genfleet_broker::HEADER_PARKED_AT, parked_at.to_string()),
            ],
        )
        .await;
    match forwarded {
        Ok(()) => incoming.ack().await,
        Err(e) => {
            warn!(error = %e, "parking publish not confirmed; returning the job to its queue");
            tokio::time::sleep(Duration::from_millis(500)).await;
            incoming.nack(true).await
        }
    }
}

/// Header on a job moved down a lane: the lane it left.
const HEADER_MOVED_FROM: &str = "x-genfleet-moved-from";

/// Republishes a delivery one lane down (confirmed), then acks it. If the
/// publish is not confirmed the delivery goes back to its queue instead.
async fn move_down(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    class: JobClass,
    lane: Lane,
    below: Lane,
) -> Result<(), BrokerError> {
    let key = class.lane_routing_key(below);
    let moved = publisher
        .forward(
            genfleet_broker::JOBS_EXCHANGE,
            &key,
            incoming,
            &[(HEADER_MOVED_FROM, lane.label().to_string())],
        )
        .await;
    match moved {
        Ok(()) => {
            services
                .metrics
                .jobs_demoted_total
                .with_label_values(&[class.routing_key(), lane.label()])
                .inc();
            // If this ack is lost, the copy is queued and the original comes
            // back too: a duplicate that job_id idempotency absorbs.
            incoming.ack().await
        }
        Err(e) => {
            warn!(error = %e, "moving a job down a lane was not confirmed; returning it to its queue");
            incoming.nack(true).await
        }
    }
}

/// Publishes the message to the dead-letter exchange with the code and
/// reason in headers, confirmed.
async fn publish_dead_letter(
    publisher: &Publisher,
    incoming: &Incoming,
    dead: DeadLetter,
) -> Result<(), BrokerError> {
    let mut headers = vec![
        (
            genfleet_broker::HEADER_ERROR.to_string(),
            dead.code.as_str().to_string(),
        ),
        (genfleet_broker::HEADER_REASON.to_string(), dead.reason),
        // When it died: the retention purge drains dead letters by age.
        (
            genfleet_broker::HEADER_DEAD_AT.to_string(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string(),
        ),
    ];
    if let Some(id) = dead.job_id {
        headers.push(("x-genfleet-job-id".into(), id));
    }
    let outgoing = Outgoing {
        content_type: incoming.content_type().map(str::to_string),
        message_id: incoming.message_id().map(str::to_string),
        headers,
        persistent: true,
        ..Default::default()
    };
    publisher
        .publish(
            genfleet_broker::DEAD_LETTER_EXCHANGE,
            incoming.routing_key(),
            incoming.body(),
            &outgoing,
        )
        .await
}

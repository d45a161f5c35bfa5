//! The worker process: connect, declare, consume, run jobs concurrently,
//! reconnect after losing the broker, and drain on shutdown.
//!
//! Shutdown (SIGTERM/SIGINT cancel the root token): consumers are cancelled
//! first (basic.cancel, so the broker stops sending), in-flight jobs get the
//! grace period to finish and ack, then connections close; whatever was not
//! acked returns to the queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use genfleet_broker::{Broker, JobClass, Lane, Publisher, Topology};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::delivery::{self, Source};
use crate::dispatch::{Dispatcher, Waiting};
use crate::disposition::{Disposition, RedeliverReason};
use crate::job::{self, Delivery};
use crate::services::Services;
use crate::WorkerError;

/// State shared with the health endpoints.
#[derive(Default)]
pub struct Readiness {
    pub broker_connected: AtomicBool,
}

/// Runs until `shutdown` is cancelled.
///
/// # Errors
/// Only a failure to start (listener address taken); broker outages are
/// waited out with reconnects.
pub async fn run(
    services: Arc<Services>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let config = &services.config;
    let classes: Vec<JobClass> = config
        .worker
        .classes
        .iter()
        .filter_map(|c| JobClass::parse(c))
        .collect();
    let topology = Topology {
        delivery_limit: config.broker.delivery_limit,
        ..Topology::default()
    };
    let max_delay = Duration::from_secs(config.broker.reconnect_max_delay_seconds.max(1));
    // Bounds jobs in flight across all consumed classes.
    let slots = Arc::new(Semaphore::new(usize::from(config.worker.concurrency)));
    let jobs = TaskTracker::new();

    let mut delay = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match session(
            &services, &readiness, &topology, &classes, &slots, &jobs, &shutdown,
        )
        .await
        {
            Ok(()) => break,
            Err(e) => {
                readiness.broker_connected.store(false, Ordering::SeqCst);
                services.metrics.broker_connected.set(0);
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "broker session ended; reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(max_delay);
            }
        }
    }

    // In-flight jobs were drained by the session that was up at shutdown.
    // Jobs left from a session whose connection died cannot ack anyway:
    // the broker redelivers them, so there is nothing to wait for.
    Ok(())
}

/// Lets in-flight jobs finish, at most `grace`; what does not finish returns
/// to the queue when the connection closes.
async fn drain(jobs: &TaskTracker, grace: Duration) {
    info!(
        in_flight = jobs.len(),
        grace_s = grace.as_secs(),
        "draining in-flight jobs"
    );
    jobs.close();
    if tokio::time::timeout(grace, jobs.wait()).await.is_err() {
        warn!(
            in_flight = jobs.len(),
            "grace period over; unfinished jobs return to the queue"
        );
    }
}

/// One broker connection's life. Returns Ok on shutdown, Err when the
/// connection or a consumer fails.
async fn session(
    services: &Arc<Services>,
    readiness: &Arc<Readiness>,
    topology: &Topology,
    classes: &[JobClass],
    slots: &Arc<Semaphore>,
    jobs: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), WorkerError> {
    let config = &services.config;
    let broker = Broker::connect(config.broker.url.expose(), &services.worker_name).await?;
    broker.declare(topology).await?;
    let publisher = Arc::new(broker.publisher().await?);
    let prefetch = config.worker.concurrency;

    let mut consumers = Vec::with_capacity(classes.len() * Lane::ALL.len());
    for class in classes {
        for lane in Lane::ALL {
            let tag = format!("{}-{}", services.worker_name, class.lane_routing_key(lane));
            let consumer = broker
                .consume(&class.lane_queue(lane), prefetch, &tag)
                .await?;
            consumers.push((*class, lane, consumer));
        }
    }
    // Cancel requests: a few at a time, any worker.
    let cancel_tag = format!("{}-cancel", services.worker_name);
    let cancels = broker
        .consume(genfleet_broker::CANCEL_QUEUE, CANCEL_PREFETCH, &cancel_tag)
        .await?;
    readiness.broker_connected.store(true, Ordering::SeqCst);
    services.metrics.broker_connected.set(1);
    let workspace_cap = config.worker.workspace_cap();
    info!(classes = ?classes, prefetch, workspace_cap, "consuming");

    let dispatcher = Arc::new(Dispatcher::new(workspace_cap));
    let session_done = shutdown.child_token();
    // Cancelled only when the connection dies, not at shutdown (drain).
    let connection_lost = CancellationToken::new();
    let mut loops = JoinSet::new();
    for (class, lane, mut consumer) in consumers {
        let services = services.clone();
        let publisher = publisher.clone();
        let dispatcher = dispatcher.clone();
        let jobs = jobs.clone();
        let done = session_done.clone();
        // The loop hands its consumer back: its channel must outlive the
        // in-flight jobs, whose acks travel on it (dropping it closes it).
        loops.spawn(async move {
            let outcome = loop {
                tokio::select! {
                    () = done.cancelled() => {
                        consumer.cancel().await;
                        break Ok(());
                    }
                    next = consumer.next() => match next {
                        Some(Ok(incoming)) => {
                            let delivery = Delivery::new(incoming, class, lane);
                            let waiting = Waiting {
                                workspace: job::decode::workspace_of(&delivery.decoded),
                                item: delivery,
                                class,
                                lane,
                            };
                            if let Err((waiting, below)) = dispatcher.admit(waiting) {
                                let services = services.clone();
                                let publisher = publisher.clone();
                                jobs.spawn(async move {
                                    let source = Source::Job { class: waiting.class, lane: waiting.lane };
                                    delivery::settle(&services, &publisher, &waiting.item.incoming, source, Disposition::MoveDown(below)).await;
                                });
                            }
                            services.metrics.jobs_waiting.set(gauge_value(dispatcher.waiting_len()));
                        }
                        Some(Err(e)) => break Err(WorkerError::from(e)),
                        None => break Err(WorkerError::Broker("consumer stream ended".into())),
                    }
                }
            };
            (consumer, outcome)
        });
    }

    {
        let services = services.clone();
        let publisher = publisher.clone();
        let done = session_done.clone();
        let mut cancels = cancels;
        loops.spawn(async move {
            let outcome = loop {
                tokio::select! {
                    () = done.cancelled() => {
                        cancels.cancel().await;
                        break Ok(());
                    }
                    next = cancels.next() => match next {
                        Some(Ok(incoming)) => {
                            let disposition = crate::cancel::handle_request(&services, &incoming).await;
                            delivery::settle(&services, &publisher, &incoming, Source::CancelRequest, disposition).await;
                        }
                        Some(Err(e)) => break Err(WorkerError::from(e)),
                        None => break Err(WorkerError::Broker("cancel consumer stream ended".into())),
                    }
                }
            };
            (cancels, outcome)
        });
    }

    // Starts the best waiting delivery whenever a slot is free.
    let dispatch = {
        let services = services.clone();
        let publisher = publisher.clone();
        let dispatcher = dispatcher.clone();
        let slots = slots.clone();
        let jobs = jobs.clone();
        let done = session_done.clone();
        let connection_lost = connection_lost.clone();
        tokio::spawn(async move {
            loop {
                let permit = tokio::select! {
                    permit = slots.clone().acquire_owned() => permit,
                    () = done.cancelled() => break,
                };
                let Ok(permit) = permit else { break };
                let waiting = tokio::select! {
                    waiting = dispatcher.next() => waiting,
                    () = done.cancelled() => break,
                };
                services
                    .metrics
                    .jobs_started_total
                    .with_label_values(&[waiting.class.routing_key(), waiting.lane.label()])
                    .inc();
                services
                    .metrics
                    .jobs_waiting
                    .set(gauge_value(dispatcher.waiting_len()));
                let services = services.clone();
                let publisher = publisher.clone();
                let dispatcher = dispatcher.clone();
                let connection_lost = connection_lost.clone();
                jobs.spawn(async move {
                    let Waiting {
                        item, workspace, ..
                    } = waiting;
                    run_delivery(services, publisher, item, connection_lost).await;
                    dispatcher.finished(workspace.as_deref());
                    drop(permit);
                });
            }
        })
    };

    // The first consumer loop to end decides: shutdown or connection loss.
    let first = loops.join_next().await;
    session_done.cancel();
    let _ = dispatch.await;
    let mut stopped = Vec::new();
    let outcome = match first {
        Some(Ok((consumer, outcome))) => {
            stopped.push(consumer);
            outcome
        }
        Some(Err(e)) => Err(WorkerError::Broker(format!("consumer task failed: {e}"))),
        None => Ok(()),
    };
    while let Some(joined) = loops.join_next().await {
        if let Ok((consumer, _)) = joined {
            stopped.push(consumer);
        }
    }
    if outcome.is_err() {
        connection_lost.cancel();
    }
    // Deliveries that never got a slot go straight back to their queues for
    // another worker (on a dead connection the broker has them back already).
    let never_started = if outcome.is_err() {
        Disposition::ChannelLost
    } else {
        Disposition::Redeliver(RedeliverReason::NeverStarted)
    };
    for waiting in dispatcher.take_all_waiting() {
        let source = Source::Job {
            class: waiting.class,
            lane: waiting.lane,
        };
        delivery::settle(
            services,
            &publisher,
            &waiting.item.incoming,
            source,
            never_started.clone(),
        )
        .await;
    }
    services.metrics.jobs_waiting.set(0);
    if outcome.is_ok() && shutdown.is_cancelled() {
        // Drain while the connection is still up: results and acks need it.
        drain(
            jobs,
            Duration::from_secs(config.worker.grace_period_seconds),
        )
        .await;
        for consumer in &stopped {
            consumer.close().await;
        }
        publisher.close().await;
        broker.close().await;
    }
    outcome
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Cancel requests handled at once by one worker; each is a couple of
/// ledger queries and maybe one provider call.
const CANCEL_PREFETCH: u16 = 4;

/// Runs one delivery in its own task so that a panic in the job is caught
/// here: the delivery is handed back to the queue (the quorum queue's
/// delivery limit stops a job that always panics) and the worker goes on.
async fn run_delivery(
    services: Arc<Services>,
    publisher: Arc<Publisher>,
    delivery: Delivery,
    connection_lost: CancellationToken,
) {
    let delivery = Arc::new(delivery);
    let mut run = {
        let services = services.clone();
        let publisher = publisher.clone();
        let delivery = delivery.clone();
        tokio::spawn(async move { job::handle(&services, &publisher, &delivery).await })
    };
    let disposition = tokio::select! {
        joined = &mut run => match joined {
            Ok(disposition) => disposition,
            Err(e) => {
                // Counted as a start that crashed (the ledger's attempts), and
                // by the broker as a failed delivery, unlike a requeue.
                error!(error = %e, "job task panicked; returning the delivery to its queue");
                Disposition::Redeliver(RedeliverReason::Panic)
            }
        },
        () = connection_lost.cancelled() => {
            // The delivery's channel is gone, so this run can never ack: the
            // broker redelivers the job to a live session, which resumes from
            // the ledger (hold, outcome, provider submission). Running on
            // would only race that run. Every step is cancel safe (one
            // transaction per ledger call, atomic object writes).
            run.abort();
            Disposition::ChannelLost
        }
    };
    let source = Source::Job {
        class: delivery.class,
        lane: delivery.lane,
    };
    delivery::settle(
        &services,
        &publisher,
        &delivery.incoming,
        source,
        disposition,
    )
    .await;
}

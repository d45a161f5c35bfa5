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

use genfleet_broker::{Broker, Incoming, JobClass, Publisher, Topology};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::lifecycle::{self, Disposition};
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

    let mut consumers = Vec::with_capacity(classes.len());
    for class in classes {
        let tag = format!("{}-{}", services.worker_name, class.routing_key());
        consumers.push(broker.consume(&class.queue(), prefetch, &tag).await?);
    }
    readiness.broker_connected.store(true, Ordering::SeqCst);
    services.metrics.broker_connected.set(1);
    info!(classes = ?classes, prefetch, "consuming");

    let session_done = shutdown.child_token();
    let mut loops = JoinSet::new();
    for mut consumer in consumers {
        let services = services.clone();
        let publisher = publisher.clone();
        let slots = slots.clone();
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
                            // Wait for a free slot, but not past a shutdown:
                            // a delivery not yet started goes straight back
                            // to the queue for another worker.
                            let permit = tokio::select! {
                                permit = slots.clone().acquire_owned() => permit,
                                () = done.cancelled() => {
                                    let _ = incoming.nack(true).await;
                                    consumer.cancel().await;
                                    break Ok(());
                                }
                            };
                            let Ok(permit) = permit else {
                                break Ok(());
                            };
                            let services = services.clone();
                            let publisher = publisher.clone();
                            jobs.spawn(async move {
                                run_delivery(services, publisher, incoming).await;
                                drop(permit);
                            });
                        }
                        Some(Err(e)) => break Err(WorkerError::from(e)),
                        None => break Err(WorkerError::Broker("consumer stream ended".into())),
                    }
                }
            };
            (consumer, outcome)
        });
    }

    // The first consumer loop to end decides: shutdown or connection loss.
    let first = loops.join_next().await;
    session_done.cancel();
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

/// Runs one delivery in its own task so that a panic in the job is caught
/// here: the delivery is handed back to the queue (the quorum queue's
/// delivery limit stops a job that always panics) and the worker goes on.
async fn run_delivery(services: Arc<Services>, publisher: Arc<Publisher>, incoming: Incoming) {
    let incoming = Arc::new(incoming);
    let job = {
        let services = services.clone();
        let publisher = publisher.clone();
        let incoming = incoming.clone();
        tokio::spawn(async move { lifecycle::handle(&services, &publisher, &incoming).await })
    };
    let disposition = match job.await {
        Ok(d) => d,
        Err(e) => {
            error!(error = %e, "job task panicked; returning the delivery to its queue");
            services
                .metrics
                .requeues_total
                .with_label_values(&["panic"])
                .inc();
            Disposition::Requeue("panic")
        }
    };
    let acked = match disposition {
        Disposition::Ack => incoming.ack().await,
        Disposition::Requeue(_) => {
            // A short pause so an outage does not become a hot redelivery loop.
            tokio::time::sleep(Duration::from_millis(500)).await;
            incoming.nack(true).await
        }
    };
    if let Err(e) = acked {
        warn!(error = %e, "ack/nack failed; the broker will redeliver the job");
    }
}

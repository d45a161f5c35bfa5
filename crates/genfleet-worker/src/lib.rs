//! The genfleet worker: the job lifecycle of DESIGN.md, wiring the broker,
//! providers, credits, storage and imaging crates; concurrency, shutdown,
//! metrics and the health/metrics listener. Also the local `batch` pipeline.
//!
//! Architecture invariant: this is the only crate that knows all the others;
//! contract types are converted to domain calls here, once, and nowhere
//! else.
#![forbid(unsafe_code)]

pub mod batch;
mod cancel;
pub mod config;
pub mod cpu;
mod delivery;
mod dispatch;
pub mod disposition;
mod failure;
pub mod http;
mod job;
pub mod kinds;
pub mod local_models;
mod local_provider;
pub mod methods;
pub mod metrics;
pub mod pipeline;
pub mod retention;
pub mod runner;
pub mod services;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use config::{Config, Secret};
pub use failure::JobFailure;
pub use kinds::{default_class, default_class_of, default_provider, lane_of};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("start-up failed: {0}")]
    Startup(String),
    #[error("broker: {0}")]
    Broker(String),
}

impl From<genfleet_broker::BrokerError> for WorkerError {
    fn from(error: genfleet_broker::BrokerError) -> Self {
        WorkerError::Broker(error.to_string())
    }
}

/// Builds the services, starts the health/metrics listener, and runs the
/// consumer until `shutdown` is cancelled and in-flight jobs are drained.
///
/// # Errors
/// Start-up failures (ledger, store, listener); broker outages are retried.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let metrics = metrics::Metrics::new();
    let listen = config.http.listen.clone();
    let services = Arc::new(services::Services::build(config, metrics.clone()).await?);
    let readiness = Arc::new(runner::Readiness::default());
    let http_shutdown = CancellationToken::new();
    let addr = http::serve(
        &listen,
        metrics,
        readiness.clone(),
        services.ledger.clone(),
        services.scanner.clone(),
        http_shutdown.clone(),
    )
    .await?;
    tracing::info!(%addr, worker = %services.worker_name, "health and metrics listener up");
    let sweeper = tokio::spawn(sweep_expired_holds(services.clone(), http_shutdown.clone()));
    let retention = tokio::spawn(retention::run_periodic(
        services.clone(),
        http_shutdown.clone(),
    ));
    let outcome = runner::run(services, readiness, shutdown).await;
    http_shutdown.cancel();
    let _ = sweeper.await;
    let _ = retention.await;
    outcome
}

/// Returns the credits of holds whose worker died before settling them (the
/// hold's TTL passed). Every worker runs it; the ledger's `SKIP LOCKED` keeps
/// concurrent sweepers from colliding.
async fn sweep_expired_holds(services: Arc<services::Services>, stop: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match services.ledger.expire_overdue().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "returned the credits of overdue holds"),
            Err(e) => tracing::warn!(error = %e, "hold sweeper could not reach the ledger"),
        }
    }
}

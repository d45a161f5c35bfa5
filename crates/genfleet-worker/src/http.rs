//! The health and metrics listener: `/metrics` (Prometheus text),
//! `/healthz` (the process answers) and `/readyz` (broker and ledger
//! reachable, and clamd when the scanner is enabled; Kubernetes stops
//! routing work while it fails).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use genfleet_credits::Ledger;
use genfleet_scan::Scanner;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::runner::Readiness;
use crate::WorkerError;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    readiness: Arc<Readiness>,
    ledger: Ledger,
    scanner: Option<Arc<dyn Scanner>>,
}

/// Binds `listen` and serves until `shutdown`. Returns the bound address
/// (useful with port 0).
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    listen: &str,
    metrics: Metrics,
    readiness: Arc<Readiness>,
    ledger: Ledger,
    scanner: Option<Arc<dyn Scanner>>,
    shutdown: CancellationToken,
) -> Result<std::net::SocketAddr, WorkerError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| WorkerError::Startup(format!("http.listen {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| WorkerError::Startup(format!("http.listen {listen}: {e}")))?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState {
            metrics,
            readiness,
            ledger,
            scanner,
        });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(addr)
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn ready_handler(State(state): State<AppState>) -> impl IntoResponse {
    if !state.readiness.broker_connected.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "broker not connected\n");
    }
    if !matches!(
        tokio::time::timeout(Duration::from_secs(2), state.ledger.ping()).await,
        Ok(Ok(()))
    ) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "ledger database not reachable\n",
        );
    }
    // With the scanner on, a worker without clamd can only requeue jobs.
    if let Some(scanner) = &state.scanner {
        if !matches!(
            tokio::time::timeout(Duration::from_secs(2), scanner.ping()).await,
            Ok(Ok(()))
        ) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "malware scanner (clamd) not reachable\n",
            );
        }
    }
    (StatusCode::OK, "ready\n")
}

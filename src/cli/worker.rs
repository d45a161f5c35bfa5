//! `genfleet worker`: consume and run jobs until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use anyhow::Result;
use genfleet_worker::Config;
use tokio_util::sync::CancellationToken;

pub(crate) async fn run(config: Config) -> Result<ExitCode> {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: no new jobs, finishing in-flight ones");
        signals.cancel();
    });
    genfleet_worker::run(config, shutdown).await?;
    tracing::info!("worker stopped");
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

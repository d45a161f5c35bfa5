//! `genfleet serve-files`: serve the local store's outputs to the holders of
//! signed links (`storage.public_base_url`), until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use genfleet_storage::serve::FileServer;
use genfleet_worker::config::StorageBackend;
use genfleet_worker::Config;

#[derive(Args)]
pub(crate) struct ServeFilesArgs {
    /// Address to listen on; default `storage.serve_files_listen`.
    #[arg(long)]
    listen: Option<String>,
}

pub(crate) async fn run(config: Config, args: ServeFilesArgs) -> Result<ExitCode> {
    let storage = &config.storage;
    if storage.backend != StorageBackend::Local {
        bail!(
            "serve-files serves the local store (storage.backend = \"local\"); on S3, results carry the bucket's own presigned URLs"
        );
    }
    let signer = storage
        .url_signer()?
        .context("storage.public_base_url is not set: there are no links to serve")?;
    let listen = args
        .listen
        .unwrap_or_else(|| storage.serve_files_listen.clone());
    let server = FileServer::new(&storage.root, signer.clone())?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    // Key ids only: never a key, never a link.
    tracing::info!(
        listen = %listener.local_addr().map_or(listen.clone(), |a| a.to_string()),
        root = %storage.root.display(),
        path = signer.base().path(),
        signing_key = signer.keyring().current_id(),
        keys = ?signer.keyring().ids().collect::<Vec<_>>(),
        "serving signed links to the local store"
    );
    server
        .serve(listener, super::worker::wait_for_signal())
        .await
        .context("serving files")?;
    tracing::info!("file server stopped");
    Ok(ExitCode::SUCCESS)
}

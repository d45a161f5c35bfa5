//! `genfleet serve-files` as a child process, and a raw HTTP/1.1 GET that
//! sends a path exactly as given and returns the body's bytes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The real `genfleet serve-files`, killed on drop.
pub struct FilesProcess {
    pub child: Child,
    pub log: PathBuf,
    /// Where it listens: a port it bound itself (`--listen 127.0.0.1:0`)
    /// and logged, so no other process can have taken it in between.
    pub port: u16,
}

impl FilesProcess {
    /// Starts it with `config` on a loopback port of the system's choosing
    /// and waits until it says where it listens. Appends to `log`.
    pub async fn start(config: &Path, log: PathBuf) -> FilesProcess {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let log_from = log_file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut child = Command::new(env!("CARGO_BIN_EXE_genfleet"))
            .args([
                "--config",
                &config.display().to_string(),
                "serve-files",
                "--listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "info,genfleet_storage=debug")
            .env_remove("GENFLEET_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("serve-files starts");
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "serve-files exited with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Some(port) = files_port_in(&log, log_from) {
                return FilesProcess { child, log, port };
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "serve-files did not say where it listens:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops it and waits until it is gone.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FilesProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port in the "serving signed links" line written to `log` after
/// byte `from` (the line comes once the listener is bound).
fn files_port_in(log: &Path, from: u64) -> Option<u16> {
    let text = std::fs::read(log).ok()?;
    let from = usize::try_from(from).ok()?.min(text.len());
    let text = super::without_colours(&String::from_utf8_lossy(&text[from..]));
    let line = text
        .lines()
        .find(|l| l.contains("serving signed links to the local store"))?;
    let addr = line.split_once("listen=")?.1.split_whitespace().next()?;
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

/// An answer: status, headers, body bytes.
pub type Fetched = genfleet_storage::testing::RawAnswer;

/// `GET <path_and_query>` on `127.0.0.1:<port>`, read to the end.
pub async fn fetch(port: u16, path_and_query: &str) -> Fetched {
    genfleet_storage::testing::raw_request(port, "GET", path_and_query).await
}

/// The path and query of a URL: what a client sends for it.
pub fn target(url: &str) -> String {
    let url = url::Url::parse(url).expect("a URL");
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    }
}

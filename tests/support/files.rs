//! `genfleet serve-files` as a child process, and a raw HTTP/1.1 GET that
//! sends a path exactly as given and returns the body's bytes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The real `genfleet serve-files`, killed on drop.
pub struct FilesProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl FilesProcess {
    /// Starts it with `config` on `127.0.0.1:<port>` and waits until the
    /// port answers. Appends to `log`.
    pub async fn start(config: &Path, port: u16, log: PathBuf) -> FilesProcess {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_genfleet"))
            .args([
                "--config",
                &config.display().to_string(),
                "serve-files",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("RUST_LOG", "info,genfleet_storage=debug")
            .env_remove("GENFLEET_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("serve-files starts");
        let mut process = FilesProcess { child, log };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "serve-files exited with {status}:\n{}",
                    std::fs::read_to_string(&process.log).unwrap_or_default()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return process;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "serve-files did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops it and waits until it is gone, so its port can be bound again.
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

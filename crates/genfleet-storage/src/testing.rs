//! A private S3-protocol server for tests: `moto_server` (PyPI `moto[server]`,
//! installed by `tools/test`) as a child process on a loopback port, with
//! one bucket created. Dropping a [`MotoS3`] kills it. Its state lives in
//! the process's memory only, so nothing is left behind.
//!
//! moto checks requests' shape, not their signatures, and does not refuse
//! an expired presigned URL: tests that need expiry read the signed
//! `X-Amz-Date`/`X-Amz-Expires` instead (see the e2e storage test).
//!
//! Only behind the `testing` feature (and this crate's own tests).

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{InputPolicy, S3Credentials, S3StoreConfig};

/// moto imports a few hundred modules before it listens; a 2-core CI
/// machine compiling beside it is slow.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Fixed test credentials (moto accepts any).
pub const ACCESS_KEY_ID: &str = "AKIAGENFLEETTEST";
pub const SECRET_ACCESS_KEY: &str = "genfleet-test-secret";

/// The server binary: `GENFLEET_MOTO_SERVER`, else `moto_server` on PATH.
pub fn moto_binary() -> String {
    std::env::var("GENFLEET_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into())
}

pub struct MotoS3 {
    pub port: u16,
    pub bucket: String,
    child: Child,
}

impl MotoS3 {
    /// Starts moto and creates `bucket`.
    ///
    /// # Panics
    /// moto is not installed, or does not answer within a minute (after two
    /// more tries on fresh ports if it exits early: the port we probed may
    /// have been taken before moto bound it).
    pub fn start(bucket: &str) -> MotoS3 {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(moto_binary())
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start {} (pip install 'moto[server]'): {e}",
                        moto_binary()
                    )
                });
            let mut server = MotoS3 {
                port,
                bucket: bucket.to_string(),
                child,
            };
            match server.create_bucket() {
                Ok(()) => return server,
                Err(reason) => failures.push(reason),
            }
        }
        panic!("moto_server did not start:\n{}", failures.join("\n----\n"));
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A store configuration for this server's bucket.
    pub fn store_config(&self, inputs: InputPolicy) -> S3StoreConfig {
        S3StoreConfig {
            bucket: self.bucket.clone(),
            region: "us-east-1".into(),
            endpoint: Some(self.endpoint()),
            path_style: true,
            allow_http: true,
            credentials: S3Credentials {
                access_key_id: Some(ACCESS_KEY_ID.into()),
                secret_access_key: Some(SECRET_ACCESS_KEY.into()),
                session_token: None,
            },
            inputs,
        }
    }

    /// The worker's `[storage]` keys for this server, as TOML lines.
    pub fn worker_toml(&self) -> String {
        format!(
            "backend = \"s3\"\nbucket = \"{bucket}\"\n\n[storage.s3]\nendpoint = \"{endpoint}\"\n\
             region = \"us-east-1\"\npath_style = true\nallow_http = true\n\
             access_key_id = \"{ACCESS_KEY_ID}\"\nsecret_access_key = \"{SECRET_ACCESS_KEY}\"\n",
            bucket = self.bucket,
            endpoint = self.endpoint(),
        )
    }

    /// Writes `key` in the bucket (what a product's upload does), with an
    /// unsigned PUT: moto accepts it.
    ///
    /// # Panics
    /// moto does not answer 200.
    pub fn put_object(&self, key: &str, body: &[u8]) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(
            stream,
            "PUT /{}/{key} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.bucket,
            self.port,
            body.len()
        )
        .and_then(|()| stream.write_all(body))
        .expect("PUT sent");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("PUT answered");
        assert!(answer.starts_with("HTTP/1.1 200"), "PUT {key}: {answer}");
    }

    /// Creates the bucket, retrying until moto answers; a plain HTTP/1.1
    /// request, so the helper needs no HTTP client or TLS provider.
    fn create_bucket(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < READY_TIMEOUT {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return Err(format!("moto_server exited with {status}: {stderr}"));
            }
            match self.request("PUT", &format!("/{}", self.bucket)) {
                Ok(status) if status.starts_with("HTTP/1.1 200") => return Ok(()),
                Ok(status) => last = status,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        Err(format!(
            "moto_server not ready after {READY_TIMEOUT:?}: {last}"
        ))
    }

    /// Sends one bodiless request; returns the status line.
    fn request(&self, method: &str, path: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer.lines().next().unwrap_or_default().to_string())
    }
}

impl Drop for MotoS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `url` with its query parameter `name` set to `value` (the others kept,
/// in order): a tampered signed link.
///
/// # Panics
/// `url` is not a URL.
pub fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let mut url = url::Url::parse(url).expect("a URL");
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.to_string()
}

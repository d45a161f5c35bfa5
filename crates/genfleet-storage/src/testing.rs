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

/// One HTTP answer read raw: status, headers as sent, body (de-chunked).
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// A header's value, its name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request to `127.0.0.1:<port>` with the target sent exactly
/// as given (no client-side normalisation of `..` or `%2e`), read to the
/// end of the connection.
///
/// # Panics
/// No server there, or an answer that is not HTTP.
pub async fn raw_request(port: u16, method: &str, path_and_query: &str) -> RawAnswer {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("server reachable");
    let request = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("answer read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v == "chunked")
    {
        body = dechunk(&body);
    }
    RawAnswer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..line_end])
            .ok()
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .expect("a chunk size");
        data = &data[line_end + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// Reads a request's head (up to the blank line, at most 16 KiB) from a
/// raw test server's connection; `None` when the peer stops first.
pub async fn read_request_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).to_string())
}

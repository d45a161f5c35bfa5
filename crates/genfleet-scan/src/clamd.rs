//! A clamd client: `zINSTREAM` over TCP or a unix socket.
//!
//! Owns the wire protocol (clamd(8), "INSTREAM"): the command
//! `zINSTREAM\0`, then the input as chunks of a 4-byte big-endian length
//! followed by that many bytes, then a zero-length chunk; clamd answers one
//! NUL-terminated line (`stream: OK`, `stream: <signature> FOUND`, or
//! `<message> ERROR`) and closes the connection. Also `zPING\0` → `PONG`
//! for readiness. One connection per scan: clamd closes it after the
//! answer anyway, and a fresh connection cannot carry a half-read reply of
//! an earlier scan.
//!
//! Does not know what it scans (no decoding, no logging of bytes), and does
//! not know clamd's configuration beyond what its answers say.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{ScanError, Scanner, Verdict};

/// Bytes per INSTREAM chunk. clamd takes chunks of any size up to its
/// `StreamMaxLength`; 64 KiB keeps each write one socket buffer's worth.
const CHUNK: usize = 64 * 1024;
/// Longest reply read: a verdict line is a signature name long at most.
const MAX_REPLY: usize = 4096;

/// Where clamd listens: `tcp:<host>:<port>` or `unix:<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    Tcp(String),
    Unix(PathBuf),
}

impl FromStr for ClamdAddress {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if let Some(addr) = value.strip_prefix("tcp:") {
            if addr.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
            }) {
                return Ok(ClamdAddress::Tcp(addr.to_string()));
            }
        } else if let Some(path) = value.strip_prefix("unix:") {
            if !path.is_empty() {
                return Ok(ClamdAddress::Unix(PathBuf::from(path)));
            }
        }
        Err(format!(
            "{value:?} is not a clamd address, expected tcp:<host>:<port> or unix:<path>"
        ))
    }
}

impl std::fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClamdAddress::Tcp(addr) => write!(f, "tcp:{addr}"),
            ClamdAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClamdConfig {
    pub address: ClamdAddress,
    /// Connecting alone: a clamd that is down is refused at once, one that
    /// is unreachable would otherwise hang until the TCP timeout.
    pub connect_timeout: Duration,
    /// The whole scan, connect included: sending, clamd scanning, the reply.
    pub timeout: Duration,
}

impl ClamdConfig {
    pub fn new(address: ClamdAddress) -> ClamdConfig {
        ClamdConfig {
            address,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }
}

/// [`Scanner`] backed by a clamd daemon.
#[derive(Debug, Clone)]
pub struct ClamdScanner {
    config: ClamdConfig,
}

impl ClamdScanner {
    pub fn new(config: ClamdConfig) -> ClamdScanner {
        ClamdScanner { config }
    }

    pub fn address(&self) -> &ClamdAddress {
        &self.config.address
    }

    /// Connects to clamd within the connect timeout.
    async fn open(&self) -> Result<Box<dyn Stream>, ScanError> {
        let within = self.config.connect_timeout;
        Ok(match &self.config.address {
            ClamdAddress::Tcp(addr) => {
                let stream = connect(within, tokio::net::TcpStream::connect(addr.as_str())).await?;
                // Small writes (the command, chunk headers) go out at once.
                let _ = stream.set_nodelay(true);
                Box::new(stream)
            }
            ClamdAddress::Unix(path) => {
                Box::new(connect(within, tokio::net::UnixStream::connect(path)).await?)
            }
        })
    }

    /// Runs `exchange` within the overall timeout.
    async fn bounded<T>(
        &self,
        exchange: impl std::future::Future<Output = Result<T, ScanError>>,
    ) -> Result<T, ScanError> {
        let overall = self.config.timeout;
        tokio::time::timeout(overall, exchange).await.map_err(|_| {
            ScanError::Unavailable(format!(
                "clamd at {} gave no answer within {overall:?}",
                self.config.address
            ))
        })?
    }
}

/// A stream of either transport.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connect<S>(
    within: Duration,
    connecting: impl std::future::Future<Output = std::io::Result<S>>,
) -> Result<S, ScanError> {
    match tokio::time::timeout(within, connecting).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(ScanError::Unavailable(format!(
            "cannot connect to clamd: {e}"
        ))),
        Err(_) => Err(ScanError::Unavailable(format!(
            "cannot connect to clamd within {within:?}"
        ))),
    }
}

#[async_trait::async_trait]
impl Scanner for ClamdScanner {
    async fn scan(&self, bytes: &[u8]) -> Result<Verdict, ScanError> {
        self.bounded(async { instream(self.open().await?, bytes).await })
            .await
    }

    async fn ping(&self) -> Result<(), ScanError> {
        self.bounded(async { ping(self.open().await?).await }).await
    }
}

/// Sends `bytes` as an INSTREAM and reads the verdict.
async fn instream(mut stream: Box<dyn Stream>, bytes: &[u8]) -> Result<Verdict, ScanError> {
    let sent = send_stream(&mut stream, bytes).await;
    // clamd answers (and closes) as soon as the stream passes its
    // StreamMaxLength, while we are still sending: a failed write is
    // followed by a read of that answer before it counts as an outage.
    let reply = read_reply(&mut stream).await;
    match (sent, reply) {
        (_, Ok(reply)) if !reply.is_empty() => parse_verdict(&reply),
        (Err(e), _) => Err(ScanError::Unavailable(format!(
            "clamd connection failed while sending: {e}"
        ))),
        (Ok(()), Err(e)) => Err(ScanError::Unavailable(format!(
            "clamd connection failed before its answer: {e}"
        ))),
        (Ok(()), Ok(_)) => Err(ScanError::Unavailable(
            "clamd closed the connection without an answer".into(),
        )),
    }
}

async fn send_stream(stream: &mut Box<dyn Stream>, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(b"zINSTREAM\0").await?;
    for chunk in bytes.chunks(CHUNK) {
        // CHUNK fits in a u32.
        let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(chunk).await?;
    }
    stream.write_all(&0u32.to_be_bytes()).await?;
    stream.flush().await
}

async fn ping(mut stream: Box<dyn Stream>) -> Result<(), ScanError> {
    stream
        .write_all(b"zPING\0")
        .await
        .map_err(|e| ScanError::Unavailable(format!("clamd connection failed: {e}")))?;
    let reply = read_reply(&mut stream)
        .await
        .map_err(|e| ScanError::Unavailable(format!("clamd connection failed: {e}")))?;
    match reply.as_str() {
        "PONG" => Ok(()),
        "" => Err(ScanError::Unavailable(
            "clamd closed the connection without answering PING".into(),
        )),
        other => Err(ScanError::Protocol(format!(
            "expected PONG, found {:?}",
            shorten(other)
        ))),
    }
}

/// Reads up to the terminating NUL (or the end of the stream, or a reset
/// after some of the answer), at most [`MAX_REPLY`] bytes; returns the line
/// without the NUL, trimmed.
async fn read_reply(stream: &mut Box<dyn Stream>) -> std::io::Result<String> {
    let mut reply = Vec::with_capacity(64);
    let mut buf = [0u8; 512];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            // A server that answers and closes while our bytes are still
            // unread resets the connection after its answer: keep what came.
            Err(_) if !reply.is_empty() => break,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if let Some(end) = chunk.iter().position(|&b| b == 0) {
            reply.extend_from_slice(&chunk[..end]);
            break;
        }
        reply.extend_from_slice(chunk);
        if reply.len() > MAX_REPLY {
            break;
        }
    }
    reply.truncate(MAX_REPLY);
    Ok(String::from_utf8_lossy(&reply).trim().to_string())
}

/// Reads clamd's answer to an INSTREAM.
pub(crate) fn parse_verdict(reply: &str) -> Result<Verdict, ScanError> {
    if let Some(error) = reply.strip_suffix(" ERROR") {
        let error = error.strip_prefix("stream: ").unwrap_or(error);
        if error.contains("size limit exceeded") {
            return Err(ScanError::LimitExceeded(format!("clamd: {error}")));
        }
        return Err(ScanError::Protocol(format!("clamd: {}", shorten(error))));
    }
    let Some(result) = reply.strip_prefix("stream: ") else {
        return Err(ScanError::Protocol(format!(
            "expected a verdict, found {:?}",
            shorten(reply)
        )));
    };
    if result == "OK" {
        return Ok(Verdict::Clean);
    }
    match result.strip_suffix(" FOUND") {
        Some(signature) if !signature.trim().is_empty() => Ok(Verdict::Infected {
            signature: signature.trim().to_string(),
        }),
        _ => Err(ScanError::Protocol(format!(
            "expected a verdict, found {:?}",
            shorten(reply)
        ))),
    }
}

/// At most 200 characters of a reply, for messages.
fn shorten(text: &str) -> String {
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_from_clamd_replies() {
        let check = |reply: &str, expected: Result<Verdict, ScanError>| {
            assert_eq!(parse_verdict(reply), expected, "{reply:?}");
        };
        check("stream: OK", Ok(Verdict::Clean));
        check(
            "stream: Eicar-Test-Signature FOUND",
            Ok(Verdict::Infected {
                signature: "Eicar-Test-Signature".into(),
            }),
        );
        check(
            "stream: Eicar-Test-Signature.UNOFFICIAL FOUND",
            Ok(Verdict::Infected {
                signature: "Eicar-Test-Signature.UNOFFICIAL".into(),
            }),
        );
        check(
            "INSTREAM size limit exceeded. ERROR",
            Err(ScanError::LimitExceeded(
                "clamd: INSTREAM size limit exceeded.".into(),
            )),
        );
        check(
            "stream: Can't allocate memory ERROR",
            Err(ScanError::Protocol("clamd: Can't allocate memory".into())),
        );
        assert!(matches!(
            parse_verdict("HTTP/1.1 400 Bad Request"),
            Err(ScanError::Protocol(_))
        ));
        assert!(matches!(
            parse_verdict("stream:  FOUND"),
            Err(ScanError::Protocol(_))
        ));
    }

    #[test]
    fn addresses_parse_or_say_what_is_expected() {
        assert_eq!(
            "tcp:127.0.0.1:3310".parse::<ClamdAddress>(),
            Ok(ClamdAddress::Tcp("127.0.0.1:3310".into()))
        );
        assert_eq!(
            "unix:/run/clamav/clamd.ctl".parse::<ClamdAddress>(),
            Ok(ClamdAddress::Unix("/run/clamav/clamd.ctl".into()))
        );
        for bad in ["127.0.0.1:3310", "tcp:127.0.0.1", "tcp:host:0", "unix:", ""] {
            let err = bad.parse::<ClamdAddress>().unwrap_err();
            assert!(err.contains("tcp:<host>:<port>"), "{bad}: {err}");
        }
    }
}

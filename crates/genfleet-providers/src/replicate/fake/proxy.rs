//! The front listener relaying each connection to the axum backend, so a
//! fault can cut a body short or reset the connection mid-transfer.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// The front listener: one task per connection.
pub(super) async fn accept(listener: TcpListener, backend: SocketAddr, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors or the like: don't spin.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(err) = relay(stream, backend, &shared).await {
                tracing::debug!(error = %err, "fake replicate relay connection ended");
            }
        });
    }
}

/// Reads one request head; answers a `test/reset` create with a broken
/// response, and hands anything else to the axum server with
/// `connection: close` added, so that every request comes through here
/// on a connection of its own.
pub(super) async fn relay(
    mut client: TcpStream,
    backend: SocketAddr,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(4096);
    let head_end = loop {
        let mut buf = [0u8; 4096];
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = find(&head, b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > MAX_HEAD {
            return Ok(());
        }
    };
    let text = String::from_utf8_lossy(&head[..head_end]).into_owned();
    if text.starts_with("POST /v1/models/test/reset/predictions ") {
        return reset(client, &text, head.len() - head_end, shared).await;
    }
    let mut upstream = TcpStream::connect(backend).await?;
    // Last, so no keep-alive line of the client's can come after it.
    upstream.write_all(&head[..head_end - 2]).await?;
    upstream.write_all(b"connection: close\r\n\r\n").await?;
    upstream.write_all(&head[head_end..]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Counts the create (when authorized), reads the rest of its body, then
/// answers 201 with a content-length far beyond the few bytes it sends,
/// and closes: the client sees the connection drop mid-body.
pub(super) async fn reset(
    mut client: TcpStream,
    head: &str,
    body_read: usize,
    shared: &Shared,
) -> std::io::Result<()> {
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let authorized = header("authorization")
        .and_then(|value| value.strip_prefix("Bearer ").map(str::to_owned))
        .is_some_and(|token| !token.trim().is_empty());
    if authorized {
        *shared
            .lock()
            .creates
            .entry("test/reset".into())
            .or_default() += 1;
    }
    let length: usize = header("content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let mut left = length.saturating_sub(body_read);
    let mut buf = [0u8; 4096];
    while left > 0 {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        left = left.saturating_sub(n);
    }
    client
        .write_all(
            b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 4096\r\n\r\n{\"id\": \"rpreset\", \"status\": \"sta",
        )
        .await?;
    client.flush().await?;
    client.shutdown().await
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

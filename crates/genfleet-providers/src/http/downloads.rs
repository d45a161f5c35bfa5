//! Copying outputs out of short-lived URLs or data URIs into the spool.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use reqwest::Response;
use tokio::time::Instant;
use url::Url;

use super::{
    check_size, decode_data_uri, describe_transport, retry_after_header, too_large_output,
    transport_error,
};
use crate::reread::ReadError;
use crate::{Artifact, Blob, ProviderError, Spool};

/// How output URLs are fetched: a plain GET of a URL, without
/// credentials, within a time bound. The worker injects one behind its SSRF
/// guard (every hop resolved and checked, private and metadata addresses
/// refused, the connection made to the address checked); without one, a
/// client's outputs are fetched with [`DirectDownloads`].
#[async_trait::async_trait]
pub trait Downloads: Send + Sync {
    /// GETs `url`, redirects followed, within `timeout`; returns the first
    /// answer that is not a redirect, whatever its status, body unread.
    async fn get(&self, url: &Url, timeout: Duration) -> Result<Response, DownloadError>;
}

/// Why [`Downloads::get`] got no answer. Messages name at most the host.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The URL's destination is refused by the worker's policy (a private,
    /// loopback or metadata address, plain http, too many redirects):
    /// nothing was connected to, and fetching it again cannot help.
    #[error("{0}")]
    Refused(String),
    /// Connecting or answering failed or timed out: worth another read.
    #[error("{message}")]
    Failed { message: String, timed_out: bool },
}

/// [`Downloads`] with a plain client: its own redirect policy, no address
/// check. For tests against the fakes and callers that check nothing.
#[derive(Clone, Debug)]
pub struct DirectDownloads(reqwest::Client);

impl DirectDownloads {
    pub fn new(client: reqwest::Client) -> DirectDownloads {
        DirectDownloads(client)
    }
}

#[async_trait::async_trait]
impl Downloads for DirectDownloads {
    async fn get(&self, url: &Url, timeout: Duration) -> Result<Response, DownloadError> {
        self.0
            .get(url.clone())
            .timeout(timeout)
            .send()
            .await
            .map_err(|err| DownloadError::Failed {
                timed_out: err.is_timeout(),
                message: format!("output download failed: {}", describe_transport(err)),
            })
    }
}

/// Copies one output out of a provider's short-lived URL (http or https,
/// fetched through `downloads`, without credentials: the file host must
/// never see a key) or out of a `data:` URI, saying whether fetching the
/// same URL again may help: it
/// may after a transport failure, a 408, 429 or 5xx, or a local spool
/// failure; it may not for a URL this client cannot fetch, a URL whose
/// destination `downloads` refuses, an output over the cap, or any other
/// 4xx (the file expired or is unknown: only a new request makes a new
/// one).
///
/// # Errors
///
/// [`ProviderError::Malformed`] for a URL that is not http(s), a broken
/// data URI, or a URL whose destination is refused (a provider that hands
/// back a private address: its fault, `provider_unavailable`, never the
/// customer's); [`ProviderError::Unavailable`] for a failed download;
/// [`ProviderError::Local`] when the spool cannot take it; the size cap as
/// a rejection.
pub(crate) async fn fetch_output(
    downloads: &dyn Downloads,
    spool: &Spool,
    raw_url: &str,
    content_type: Option<String>,
    request_timeout: Duration,
    limit: u64,
    deadline: Option<Instant>,
) -> Result<Artifact, ReadError> {
    if let Some(rest) = raw_url.strip_prefix("data:") {
        let (mime, bytes) = decode_data_uri(rest).map_err(ReadError::verdict)?;
        check_size(bytes.len() as u64, limit).map_err(ReadError::verdict)?;
        return Ok(Artifact {
            content_type: content_type.unwrap_or(mime),
            bytes: keep(spool, bytes).await?,
        });
    }
    let url = Url::parse(raw_url).map_err(|_| {
        ReadError::verdict(ProviderError::Malformed {
            message: "an output URL is not a valid URL".into(),
        })
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ReadError::verdict(ProviderError::Malformed {
            message: format!(
                "an output URL has the unsupported scheme {:?}",
                url.scheme()
            ),
        }));
    }
    let _slot = spool.download_slot(deadline).await?;
    let timeout = match deadline {
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProviderError::DeadlineExceeded.into());
            }
            request_timeout.min(left)
        }
        None => request_timeout,
    };
    let response = match downloads.get(&url, timeout).await {
        Ok(response) => response,
        Err(DownloadError::Refused(reason)) => {
            return Err(ReadError::verdict(ProviderError::Malformed {
                message: format!("an output URL was refused: {reason}"),
            }))
        }
        Err(DownloadError::Failed { timed_out, .. })
            if timed_out && deadline.is_some_and(|d| Instant::now() >= d) =>
        {
            return Err(ProviderError::DeadlineExceeded.into())
        }
        Err(DownloadError::Failed { message, .. }) => {
            return Err(ProviderError::Unavailable {
                message,
                retry_after: None,
            }
            .into())
        }
    };
    let status = response.status();
    if !status.is_success() {
        let error = ProviderError::Unavailable {
            message: format!("output download answered HTTP {}", status.as_u16()),
            retry_after: retry_after_header(response.headers()),
        };
        // A file host in trouble may serve the file later; a 404, 403 or
        // 410 says it is gone (expired), and only a new request makes a
        // new one, so that is worth another attempt, not another read.
        let again = matches!(status.as_u16(), 408 | 429 | 500..=599);
        return Err(ReadError::new(error, again));
    }
    let header_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let bytes = receive(spool, response, limit, deadline).await?;
    let content_type = content_type
        .or(header_type)
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    Ok(Artifact {
        content_type,
        bytes,
    })
}

/// Keeps an output already in memory (decoded from an answer) in `spool`.
///
/// # Errors
/// [`ProviderError::Local`] when the spool file cannot be written: this
/// machine's disk, not the provider, and a new attempt may find room.
pub(crate) async fn keep(spool: &Spool, bytes: Bytes) -> Result<Blob, ProviderError> {
    spool.keep(bytes).await.map_err(spool_failed)
}

/// A spool write that failed: our disk, so [`ProviderError::Local`], which
/// no breaker counts against the provider.
fn spool_failed(err: std::io::Error) -> ProviderError {
    ProviderError::Local {
        message: format!("an output could not be spooled: {err}"),
    }
}

/// Streams an output body into `spool`, failing as soon as it passes
/// `limit`: no output is ever held in memory beyond the spool's budget.
async fn receive(
    spool: &Spool,
    mut response: Response,
    limit: u64,
    deadline: Option<Instant>,
) -> Result<Blob, ProviderError> {
    let expected = response.content_length();
    if expected.is_some_and(|len| len > limit) {
        return Err(too_large_output(limit));
    }
    let mut receiver = spool.receiver(expected);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| transport_error(err, deadline))?
    {
        if receiver.len() + chunk.len() as u64 > limit {
            return Err(too_large_output(limit));
        }
        receiver.push(&chunk).await.map_err(spool_failed)?;
    }
    receiver.finish().await.map_err(spool_failed)
}

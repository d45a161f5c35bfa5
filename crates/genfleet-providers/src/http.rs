//! HTTP plumbing every provider client shares: sending with a timeout cut
//! short by the job's deadline, reading bodies with a size cap, classifying
//! transport failures and generic status codes, copying outputs out of
//! short-lived URLs or data URIs, and the base64 data URIs inputs travel in.
//!
//! Nothing here ever puts a URL, key or body into an error message: URLs
//! may carry signed query strings, bodies may echo a prompt.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::time::Instant;
use url::Url;

use crate::reread::ReadError;
use crate::retry::parse_retry_after;
use crate::{Artifact, Blob, InputImage, ProviderError, Spool};

/// Error bodies are small JSON documents; anything longer is not worth
/// reading into memory just to build a message.
pub(crate) const ERROR_BODY_LIMIT: u64 = 64 * 1024;
/// Submit, status and other control-plane answers are a few KB.
pub(crate) const CONTROL_BODY_LIMIT: u64 = 1024 * 1024;
/// Longest provider detail kept in an error message.
pub(crate) const DETAIL_CHARS: usize = 500;

/// Sends with a timeout of `request_timeout`, cut short by the deadline.
///
/// # Errors
///
/// [`ProviderError::DeadlineExceeded`] when the deadline has passed before
/// sending (or the deadline's own timeout fired), else the classified
/// transport failure.
pub(crate) async fn send(
    builder: RequestBuilder,
    request_timeout: Duration,
    deadline: Option<Instant>,
) -> Result<Response, ProviderError> {
    let timeout = match deadline {
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProviderError::DeadlineExceeded);
            }
            request_timeout.min(left)
        }
        None => request_timeout,
    };
    builder
        .timeout(timeout)
        .send()
        .await
        .map_err(|err| transport_error(err, deadline))
}

/// Reads a JSON answer of at most `limit` bytes into `T`; `what` names the
/// answer in the error ("status answer").
///
/// # Errors
///
/// [`ProviderError::Malformed`] for an oversized body or one that is not
/// the expected JSON; a transport error while reading.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    response: Response,
    limit: u64,
    deadline: Option<Instant>,
    what: &'static str,
) -> Result<T, ProviderError> {
    let body = read_body(response, limit, deadline, oversized(what, limit)).await?;
    serde_json::from_slice(&body).map_err(|err| ProviderError::Malformed {
        message: format!("{what} is not the expected JSON: {err}"),
    })
}

/// The class of a non-2xx status by the codes every provider shares:
/// 401/403 credentials, 429 rate-limited (backpressure, not a failure),
/// 408/5xx transient, other 4xx permanent. Callers handle their provider's
/// special cases (a safety code, a user-timeout 504) before falling back to
/// this.
pub(crate) fn classify_status(
    status: StatusCode,
    message: String,
    retry_after: Option<Duration>,
) -> ProviderError {
    match status.as_u16() {
        401 | 403 => ProviderError::Unauthorized { message },
        429 => ProviderError::RateLimited {
            message,
            retry_after,
        },
        408 | 500..=599 => ProviderError::Unavailable {
            message,
            retry_after,
        },
        400..=499 => ProviderError::Rejected { message },
        // 1xx/3xx reach here only if redirects are disabled on the client.
        _ => ProviderError::Malformed { message },
    }
}

/// The standard `Retry-After` header (seconds or an HTTP date).
pub(crate) fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, SystemTime::now()))
}

/// Reads the (capped) body of a non-2xx answer; an unreadable body is
/// empty, since the status code alone still classifies the answer.
pub(crate) async fn error_body(response: Response) -> Bytes {
    read_body(
        response,
        ERROR_BODY_LIMIT,
        None,
        oversized("error body", ERROR_BODY_LIMIT),
    )
    .await
    .unwrap_or_default()
}

/// Copies one output out of a provider's short-lived URL (http or https,
/// fetched without credentials: the file host must never see a key) or
/// out of a `data:` URI.
///
/// # Errors
///
/// As [`fetch_output`], whose read-again class is dropped.
pub(crate) async fn download(
    client: &reqwest::Client,
    spool: &Spool,
    raw_url: &str,
    content_type: Option<String>,
    request_timeout: Duration,
    limit: u64,
    deadline: Option<Instant>,
) -> Result<Artifact, ProviderError> {
    fetch_output(
        client,
        spool,
        raw_url,
        content_type,
        request_timeout,
        limit,
        deadline,
    )
    .await
    .map_err(|failed| failed.error)
}

/// [`download`], saying whether fetching the same URL again may help: it
/// may after a transport failure, a 408, 429 or 5xx, or a local spool
/// failure; it may not for a URL this client cannot fetch, an output over
/// the cap, or any other 4xx (the file expired or is unknown: only a new
/// request makes a new one).
///
/// # Errors
///
/// [`ProviderError::Malformed`] for a URL that is not http(s) or a broken
/// data URI; [`ProviderError::Unavailable`] for a failed download;
/// [`ProviderError::Local`] when the spool cannot take it; the size cap as
/// a rejection.
pub(crate) async fn fetch_output(
    client: &reqwest::Client,
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
    let response = send(client.get(url), request_timeout, deadline).await?;
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

/// Decodes standard base64 from a provider answer (an inline image).
pub(crate) fn decode_base64(data: &str, what: &str) -> Result<Bytes, ProviderError> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map(Bytes::from)
        .map_err(|_| ProviderError::Malformed {
            message: format!("{what} holds invalid base64"),
        })
}

/// A credential header value (`Key ...`, `Bearer ...`) marked sensitive,
/// which keeps it out of hyper's and reqwest's debug output. The error says
/// which setting holds characters a header cannot carry, never the value.
pub(crate) fn credential_header(value: &str, what: &str) -> Result<HeaderValue, String> {
    let mut header = HeaderValue::from_str(value).map_err(|_| {
        format!("the configured {what} contains characters not allowed in an HTTP header")
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// Encodes bytes as standard base64 for a request body.
pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An input's bytes, loaded by [`crate::GenerationRequest::load_inputs`].
///
/// # Errors
/// [`ProviderError::Local`] for an input still in its spool file: a client
/// built a body without loading the request first (our bug, not the
/// provider's failure).
pub(crate) fn input_bytes(image: &InputImage) -> Result<&Bytes, ProviderError> {
    image.bytes.resident().ok_or_else(|| ProviderError::Local {
        message: "an input was not loaded from the spool before the request was built".into(),
    })
}

/// `data:<type>;base64,<bytes>` for an input image.
///
/// # Errors
/// As [`input_bytes`].
pub(crate) fn data_uri(image: &InputImage) -> Result<String, ProviderError> {
    let content_type = if image.content_type.is_empty() {
        "application/octet-stream"
    } else {
        image.content_type.as_str()
    };
    let bytes = input_bytes(image)?;
    let prefix_len = "data:;base64,".len() + content_type.len();
    let mut uri = String::with_capacity(prefix_len + bytes.len().div_ceil(3) * 4);
    uri.push_str("data:");
    uri.push_str(content_type);
    uri.push_str(";base64,");
    base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut uri);
    Ok(uri)
}

/// Decodes the part of a `data:` URI after the scheme.
pub(crate) fn decode_data_uri(rest: &str) -> Result<(String, Bytes), ProviderError> {
    let malformed = |message: &str| ProviderError::Malformed {
        message: message.to_owned(),
    };
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| malformed("an output data URI has no ','"))?;
    let mime = meta
        .strip_suffix(";base64")
        .ok_or_else(|| malformed("an output data URI is not base64-encoded"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| malformed("an output data URI holds invalid base64"))?;
    let mime = if mime.is_empty() {
        "application/octet-stream"
    } else {
        mime
    };
    Ok((mime.to_owned(), bytes.into()))
}

pub(crate) fn check_size(len: u64, limit: u64) -> Result<(), ProviderError> {
    if len > limit {
        return Err(too_large_output(limit));
    }
    Ok(())
}

/// Permanent: the same request would produce an output as large.
pub(crate) fn too_large_output(limit: u64) -> ProviderError {
    ProviderError::Rejected {
        message: format!("an output is larger than the {limit} byte limit"),
    }
}

/// Reads a body in chunks, failing as soon as it passes `limit` instead of
/// buffering whatever the server sends.
pub(crate) async fn read_body(
    mut response: Response,
    limit: u64,
    deadline: Option<Instant>,
    too_large: impl FnOnce() -> ProviderError,
) -> Result<Bytes, ProviderError> {
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    // Sized from Content-Length (already checked against the limit), so a
    // body is not copied as the buffer doubles.
    let mut body = BytesMut::with_capacity(
        response
            .content_length()
            .and_then(|len| usize::try_from(len).ok())
            .unwrap_or(0),
    );
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| transport_error(err, deadline))?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A control-plane body over its limit: not what the API documents.
pub(crate) fn oversized(what: &'static str, limit: u64) -> impl FnOnce() -> ProviderError {
    move || ProviderError::Malformed {
        message: format!("{what} is larger than {limit} bytes"),
    }
}

pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Classifies a failure to get an answer at all. Every such failure
/// (refused or reset connection, timeout, broken body) is worth retrying,
/// except a timeout that the job deadline itself imposed.
pub(crate) fn transport_error(err: reqwest::Error, deadline: Option<Instant>) -> ProviderError {
    if err.is_timeout() && deadline.is_some_and(|d| Instant::now() >= d) {
        return ProviderError::DeadlineExceeded;
    }
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else if err.is_body() || err.is_decode() {
        "failed while reading the body"
    } else {
        "failed"
    };
    ProviderError::Unavailable {
        message: format!("request {kind}: {}", describe_transport(err)),
        retry_after: None,
    }
}

/// The error and its causes, without the URL (which may carry a signed
/// query string).
pub(crate) fn describe_transport(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `text` (a provider's error detail, about to go into an error message)
/// with any copy of the request's prompt or negative prompt replaced by
/// `[prompt]`: some models echo their input in their errors, and prompts
/// must never reach logs or job results. Prompts shorter than 4 characters
/// are left alone, since matching them would mangle ordinary words.
pub(crate) fn scrub_prompts(text: &str, request: &crate::GenerationRequest) -> String {
    let mut text = text.to_owned();
    for prompt in [&request.prompt, &request.negative_prompt] {
        let prompt = prompt.trim();
        if prompt.chars().count() >= 4 && text.contains(prompt) {
            text = text.replace(prompt, "[prompt]");
        }
    }
    text
}

/// What is wrong with a JSON document, without serde's own message: that
/// can quote a value from the document (an output URL, an echoed prompt).
pub(crate) fn json_problem(err: &serde_json::Error) -> String {
    let what = match err.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Eof => "truncated",
        serde_json::error::Category::Data => "JSON of another shape",
    };
    format!("{what} (line {}, column {})", err.line(), err.column())
}

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
/// Room for the JSON around the outputs of an answer (or around the
/// output URLs and the echoed input of one): what is not image bytes is
/// never more than this.
pub(crate) const JSON_BODY_LIMIT: u64 = 16 * 1024 * 1024;
/// Most outputs any answer's limit is sized for, whatever a request says
/// (the contract allows 8 a job): an answer's limit never grows without
/// bound with a count.
const MAX_SIZED_OUTPUTS: u64 = 16;
/// Longest provider detail kept in an error message (see [`summary`]).
pub(crate) const DETAIL_CHARS: usize = 200;
/// Longest provider text [`summary`] looks at.
const SUMMARY_INPUT_CHARS: usize = 4096;

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
        message: format!("{what} is not the expected JSON: {}", json_problem(&err)),
    })
}

/// The largest answer that may carry `outputs` images of at most
/// `max_output_bytes` each inline as base64 (4 bytes per 3), plus
/// [`JSON_BODY_LIMIT`] for everything else in it. `outputs` counts at least
/// 1 and at most 16, so no request can make the limit unbounded.
pub(crate) fn inline_answer_limit(max_output_bytes: u64, outputs: u64) -> u64 {
    max_output_bytes
        .saturating_mul(4)
        .div_ceil(3)
        .saturating_mul(outputs.clamp(1, MAX_SIZED_OUTPUTS))
        .saturating_add(JSON_BODY_LIMIT)
}

/// The first `count` (at least 1) of `outputs`: a provider that answers
/// more than was asked for gets the extra ones dropped before they are
/// downloaded or decoded, with a warning that says only how many.
pub(crate) fn keep_asked<T>(provider: &'static str, mut outputs: Vec<T>, count: u32) -> Vec<T> {
    let asked = usize::try_from(count.max(1)).unwrap_or(usize::MAX);
    if outputs.len() > asked {
        tracing::warn!(
            provider,
            asked,
            returned = outputs.len(),
            "the provider returned more outputs than asked for; dropping the extra ones"
        );
        outputs.truncate(asked);
    }
    outputs
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

/// The standard `Retry-After` header (seconds or an HTTP date), at most
/// [`hint::MAX_HINT`](crate::hint::MAX_HINT).
pub(crate) fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, SystemTime::now()))
        .map(crate::hint::clamp)
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

/// What a provider's text may echo of ours: the credential sent with the
/// request and the prompts. Some providers quote part of a refused key or
/// the input in their error messages, and those messages end up in a job's
/// result.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Secrets<'a> {
    pub(crate) credential: Option<&'a str>,
    pub(crate) prompts: [&'a str; 2],
}

impl<'a> Secrets<'a> {
    /// The credential, and the prompts of `request` when there is one.
    pub(crate) fn new(
        credential: Option<&'a str>,
        request: Option<&'a crate::GenerationRequest>,
    ) -> Secrets<'a> {
        Secrets {
            credential,
            prompts: request.map_or(["", ""], |request| {
                [request.prompt.as_str(), request.negative_prompt.as_str()]
            }),
        }
    }
}

/// A provider's free text (an error message, a failure reason) made fit
/// for an error message that customers and logs see: one line of printable
/// characters, at most [`DETAIL_CHARS`] of them, with
/// - the credential (whole, its `:`-separated parts, or any echo of its
///   first 8 characters on) replaced by `[redacted]`;
/// - the prompts (whole, or any echo of their first 20 characters on)
///   replaced by `[prompt]`;
/// - what looks like a secret replaced by `[redacted]`: the word after
///   `Bearer` or `Basic`, `name=value` and `"name": value` where the name
///   ends in key, token, secret, signature, sig, password or credential,
///   words starting like well-known keys (`sk-`, `r8_`, `ya29.`, `AIza`,
///   `ghp_`, `xox`), and long runs of base64 or hex (20 characters with
///   letters and digits, or 32 with both cases);
/// - URLs (they may be signed) replaced by `[url]`;
/// - quoted text longer than 24 characters (an echoed input) replaced by
///   `[quoted]`.
pub(crate) fn summary(text: &str, secrets: &Secrets<'_>) -> String {
    let mut chars = one_line(text, SUMMARY_INPUT_CHARS);
    if let Some(credential) = secrets.credential {
        let whole = one_line(credential, SUMMARY_INPUT_CHARS);
        redact_echoes(&mut chars, &whole, 8, "[redacted]");
        for part in credential.split(':') {
            let part = one_line(part, SUMMARY_INPUT_CHARS);
            if part.len() >= 8 {
                redact_echoes(&mut chars, &part, 8, "[redacted]");
            }
        }
    }
    for prompt in secrets.prompts {
        let prompt = one_line(prompt, SUMMARY_INPUT_CHARS);
        redact_echoes(&mut chars, &prompt, 20, "[prompt]");
    }
    let text: String = chars.into_iter().collect();
    let text = redact_words(&text);
    let text = redact_quoted(&text);
    truncate(text.trim(), DETAIL_CHARS)
}

/// A provider's code or type field (`RESOURCE_EXHAUSTED`,
/// `runner_scheduling_failure`) for an error message: letters, digits and
/// `_.:-` only, at most 64 characters, and `[redacted]` if it looks like a
/// secret.
pub(crate) fn label(text: &str) -> String {
    let kept: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_.:-".contains(*c))
        .take(64)
        .collect();
    if secret_like(&kept) {
        "[redacted]".to_owned()
    } else {
        kept
    }
}

/// At most `max` characters of `text`, control characters and runs of
/// whitespace folded into single spaces.
fn one_line(text: &str, max: usize) -> Vec<char> {
    let mut out = Vec::with_capacity(text.len().min(max));
    let mut space = false;
    for c in text.chars().take(max) {
        if c.is_whitespace() || c.is_control() {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push(c);
    }
    out
}

/// Replaces in `text` every echo of `secret`: a run that matches its first
/// `prefix` characters (ASCII case aside), or all of it when shorter, and
/// as much of the rest as follows. Secrets under 4 characters are left
/// alone: matching them would mangle ordinary words.
fn redact_echoes(text: &mut Vec<char>, secret: &[char], prefix: usize, mark: &str) {
    if secret.len() < 4 {
        return;
    }
    let need = prefix.min(secret.len());
    let same = |a: char, b: char| a.eq_ignore_ascii_case(&b);
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let matches_prefix = text.len() - i >= need
            && text[i..i + need]
                .iter()
                .zip(&secret[..need])
                .all(|(a, b)| same(*a, *b));
        if matches_prefix {
            let mut len = need;
            while i + len < text.len() && len < secret.len() && same(text[i + len], secret[len]) {
                len += 1;
            }
            out.extend(mark.chars());
            i += len;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    *text = out;
}

/// Names whose value is a secret in `name=value` or `"name": value`.
const SECRET_NAMES: [&str; 7] = [
    "key",
    "token",
    "secret",
    "signature",
    "sig",
    "password",
    "credential",
];

/// Starts of well-known key formats.
const KEY_PREFIXES: [&str; 7] = ["sk-", "sk_", "r8_", "ya29.", "aiza", "ghp_", "xox"];

fn redact_words(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    // The previous word says this one is a secret: `Bearer x`, `key: x`.
    let mut next_is_secret = false;
    for word in text.split(' ') {
        let bare = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        let lower = bare.to_ascii_lowercase();
        let mut value_follows = false;
        let redacted = if next_is_secret && !bare.is_empty() {
            "[redacted]".to_owned()
        } else if word.contains("://") {
            "[url]".to_owned()
        } else if KEY_PREFIXES.iter().any(|p| {
            word.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_ascii_lowercase()
                .starts_with(p)
        }) {
            "[redacted]".to_owned()
        } else if let Some((kept, empty)) = named_secret(word) {
            value_follows = empty;
            kept
        } else {
            redact_runs(word)
        };
        next_is_secret = value_follows || matches!(lower.as_str(), "bearer" | "basic");
        out.push(redacted);
    }
    out.join(" ")
}

/// For `name=value` (or `"name": value`) whose name is one of
/// [`SECRET_NAMES`] (or ends in one after `_`, `-` or `.`): the word with
/// its value redacted, and whether the value is the next word instead.
fn named_secret(word: &str) -> Option<(String, bool)> {
    let at = word.find(['=', ':'])?;
    let name = word[..at]
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_ascii_lowercase();
    let last = name.rsplit(['_', '-', '.']).next().unwrap_or_default();
    let secret = SECRET_NAMES.contains(&last)
        || SECRET_NAMES
            .iter()
            .any(|s| name.ends_with(&format!("api{s}")));
    if !secret {
        return None;
    }
    let value = word[at + 1..].trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if value.is_empty() {
        return Some((word.to_owned(), true));
    }
    Some((format!("{}[redacted]", &word[..=at]), false))
}

/// `word` with its long runs of base64 or hex characters redacted.
fn redact_runs(word: &str) -> String {
    let is_run = |c: char| c.is_ascii_alphanumeric() || "+/=_-.".contains(c);
    let mut out = String::with_capacity(word.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if secret_like(run) {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in word.chars() {
        if is_run(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// 20 characters or more with letters and digits, or 32 with upper and
/// lower case letters: a key, a token, a signature or base64 data rather
/// than a word or a host name.
fn secret_like(run: &str) -> bool {
    let len = run.chars().count();
    let digits = run.chars().any(|c| c.is_ascii_digit());
    let letters = run.chars().any(|c| c.is_ascii_alphabetic());
    let upper = run.chars().any(|c| c.is_ascii_uppercase());
    let lower = run.chars().any(|c| c.is_ascii_lowercase());
    (len >= 20 && digits && letters) || (len >= 32 && upper && lower)
}

/// `text` with the inside of long quotations replaced by `[quoted]`.
fn redact_quoted(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let close = match c {
            '"' | '`' => Some(c),
            '\'' => Some('\''),
            '“' => Some('”'),
            '‘' => Some('’'),
            _ => None,
        };
        // A single quote opens a quotation only at a word's start, not
        // as an apostrophe inside one ("can't").
        let opens = close.is_some() && (c != '\'' || i == 0 || !chars[i - 1].is_alphanumeric());
        if let (true, Some(close)) = (opens, close) {
            if let Some(end) = chars[i + 1..].iter().position(|x| *x == close) {
                let inner = &chars[i + 1..i + 1 + end];
                out.push(c);
                if inner.len() > 24 {
                    out.push_str("[quoted]");
                } else {
                    out.extend(inner);
                }
                out.push(close);
                i += end + 2;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

#[cfg(test)]
mod summary_tests {
    use super::*;

    const KEY: &str = "fal-key-id:0123456789abcdef0123456789abcdef";
    const PROMPT: &str = "a red sneaker on white marble, studio light";

    fn secrets() -> Secrets<'static> {
        Secrets {
            credential: Some(KEY),
            prompts: [PROMPT, "blurry"],
        }
    }

    fn clean(text: &str) -> String {
        let out = summary(text, &secrets());
        assert!(!out.contains("0123456789abcdef"), "{out}");
        assert!(!out.to_lowercase().contains("white marble"), "{out}");
        assert!(out.chars().count() <= DETAIL_CHARS + 1, "{out}");
        out
    }

    #[test]
    fn keys_and_prompts_are_redacted() {
        assert_eq!(
            clean(&format!("invalid key {KEY} for prompt {PROMPT}")),
            "invalid key [redacted] for prompt [prompt]"
        );
        // The secret part alone, a cut-off echo, another case.
        assert_eq!(
            clean("key 0123456789abcdef0123… is revoked"),
            "key [redacted]… is revoked"
        );
        assert_eq!(
            clean("prompt 'A RED SNEAKER ON WHITE MAR' is unsafe"),
            "prompt '[prompt]' is unsafe"
        );
        assert_eq!(clean("too blurry"), "too [prompt]");
        // A short negative prompt is only replaced whole.
        let out = summary(
            "negative prompt: blurry",
            &Secrets {
                credential: None,
                prompts: ["", "blurry"],
            },
        );
        assert_eq!(out, "negative prompt: [prompt]");
    }

    #[test]
    fn secret_shapes_are_redacted() {
        let out = clean(
            "Incorrect API key provided: sk-proj-abcdefgh1234. Authorization: Bearer ya29_abc \
             api_key=hunter2 \"token\": \"opaque\" see https://files.example/x?sig=1 \
             id 4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c",
        );
        assert_eq!(
            out,
            "Incorrect API key provided: [redacted] Authorization: Bearer [redacted] \
             api_key=[redacted] \"token\": [redacted] see [url] id [redacted]"
        );
    }

    #[test]
    fn ordinary_messages_are_kept() {
        for text in [
            "runner_scheduling_failure: no runner could be scheduled",
            "prompt: prompt is too long; image_size.0: bad size",
            "The model can't process images larger than 4096 pixels",
            "Quota exceeded for aiplatform.googleapis.com/generate_requests_per_minute",
        ] {
            assert_eq!(summary(text, &secrets()), text);
        }
    }

    #[test]
    fn long_quotes_are_dropped_and_text_is_one_bounded_line() {
        assert_eq!(
            clean("input \"some very long echoed user input here\" rejected"),
            "input \"[quoted]\" rejected"
        );
        let out = clean(&format!("line one\n\tline\u{7}two {}", "word ".repeat(500)));
        assert!(out.starts_with("line one line two word"), "{out}");
        assert!(out.ends_with('…'), "{out}");
    }

    #[test]
    fn labels_are_plain() {
        assert_eq!(label("RESOURCE_EXHAUSTED"), "RESOURCE_EXHAUSTED");
        assert_eq!(label("bad\ntype<script>"), "badtypescript");
        assert_eq!(label("sk0123456789abcdefghij"), "[redacted]");
        assert_eq!(label(&"x".repeat(100)).len(), 64);
    }
}

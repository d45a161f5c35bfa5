//! Sending requests and classifying what comes back: statuses and transport failures.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::time::Instant;

use super::{oversized, read_body, ERROR_BODY_LIMIT, JSON_BODY_LIMIT, MAX_SIZED_OUTPUTS};
use crate::retry::parse_retry_after;
use crate::ProviderError;

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

//! The meaning of fal's answers: the output files a result names, and the
//! status code, rate-limit headers and error body of any other answer.
//! Kept apart from the HTTP exchange in [`super::attempt`] so each verdict
//! is read in one place.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::http::{self, Secrets};
use crate::retry::parse_retry_after;
use crate::ProviderError;

use super::*;

/// The files a model output names, in order, at most `count` of them, or
/// why there are none to take.
pub(in crate::fal) fn output_files(
    output: ModelOutput,
    count: u32,
) -> Result<Vec<OutputFile>, ProviderError> {
    let flagged = output
        .has_nsfw_concepts
        .iter()
        .chain(&output.nsfw_content_detected)
        .any(|flag| flag == &Value::Bool(true));
    if flagged {
        // A safety outcome, not a failure: retrying the same prompt would
        // be billed and likely flagged again.
        return Err(ProviderError::Rejected {
            message: "provider flagged the output as unsafe".into(),
        });
    }
    let mut files = output.images;
    files.extend(output.image);
    files.extend(output.video);
    if files.is_empty() {
        return Err(ProviderError::Malformed {
            message: "result has no images, image or video".into(),
        });
    }
    Ok(http::keep_asked(PROVIDER, files, count))
}

/// Passes 2xx answers through and turns any other into its error.
pub(in crate::fal) async fn check_status(
    response: Response,
    stage: &str,
    secrets: &Secrets<'_>,
) -> Result<Response, ProviderError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let body = http::error_body(response).await;
    Err(status_error(stage, status, &headers, &body, secrets))
}

/// Classifies a non-2xx answer from the queue API. The message holds fal's
/// error type and a [`summary`](http::summary) of its detail, never the
/// key or the prompts.
pub(super) fn status_error(
    stage: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &Secrets<'_>,
) -> ProviderError {
    let code = status.as_u16();
    let (detail, error_type) = error_detail(body, headers);
    let detail = detail
        .map(|detail| http::summary(&detail, secrets))
        .filter(|detail| !detail.is_empty());
    let error_type = error_type
        .map(|kind| http::label(&kind))
        .filter(|kind| !kind.is_empty());
    let mut message = format!("{stage} answered HTTP {code}");
    if let Some(error_type) = &error_type {
        message.push_str(&format!(" ({error_type})"));
    }
    if let Some(detail) = &detail {
        message.push_str(": ");
        message.push_str(detail);
    }
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    match code {
        // The timeout we asked for with X-Fal-Request-Timeout expired: our
        // own deadline, not fal's fault, and retrying cannot beat it.
        504 if header("x-fal-request-timeout-type")
            .is_some_and(|v| v.eq_ignore_ascii_case("user")) =>
        {
            ProviderError::DeadlineExceeded
        }
        _ => http::classify_status(status, message, retry_after(headers)),
    }
}

/// The wait a rate-limited or overloaded answer asks for: `Retry-After`,
/// else fal's `x-ratelimit-reset` (seconds, or a Unix time when large),
/// at most [`MAX_HINT`](crate::hint::MAX_HINT) whatever the header says.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

pub(super) fn retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(delay) = header("retry-after").and_then(|value| parse_retry_after(value, now)) {
        return Some(crate::hint::clamp(delay));
    }
    let reset: u64 = header("x-ratelimit-reset")?.trim().parse().ok()?;
    if reset < UNIX_TIME_THRESHOLD {
        return Some(crate::hint::clamp(Duration::from_secs(reset)));
    }
    Some(crate::hint::until_unix(reset, now))
}

/// fal's `detail` (a string, or validation errors as `[{loc, msg, type}]`)
/// and `error_type` (body, else the `X-Fal-Error-Type` header). Only these
/// fields are used: validation errors may also echo the input, which can
/// hold the prompt.
pub(super) fn error_detail(body: &[u8], headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let detail = match json.get("detail") {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Array(items)) => {
            let messages: Vec<String> = items.iter().filter_map(validation_message).collect();
            (!messages.is_empty()).then(|| messages.join("; "))
        }
        _ => None,
    };
    let error_type = json
        .get("error_type")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get("x-fal-error-type")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        });
    (detail, error_type)
}

/// `"prompt: prompt is too long"` from `{loc: ["body", "prompt"], msg, ..}`.
pub(super) fn validation_message(item: &Value) -> Option<String> {
    let msg = item.get("msg")?.as_str()?;
    let location: Vec<String> = item
        .get("loc")
        .and_then(Value::as_array)
        .map(|loc| {
            loc.iter()
                .filter(|part| part.as_str() != Some("body"))
                .map(|part| match part {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    if location.is_empty() {
        Some(msg.to_owned())
    } else {
        Some(format!("{}: {msg}", location.join(".")))
    }
}

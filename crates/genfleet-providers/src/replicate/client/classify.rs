//! The meaning of Replicate's answers: a prediction's end state and its
//! outputs, a `failed` prediction's error, and the status code (and error
//! body) of any other answer. Kept apart from the HTTP exchange in
//! [`super::attempt`] so each verdict is read in one place.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::http::{self, Secrets};
use crate::{GenerationRequest, ProviderError};

use super::*;

/// A model, name or version segment: no path tricks, no query, no host.
pub(super) fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Whether the prediction reached an end state.
///
/// # Errors
///
/// [`ProviderError::Malformed`] for a status Replicate does not document:
/// polling on would never end.
pub(in crate::replicate) fn finished(prediction: &Prediction) -> Result<bool, ProviderError> {
    match prediction.status.as_str() {
        "starting" | "processing" => Ok(false),
        "succeeded" | "failed" | "canceled" | "aborted" => Ok(true),
        other => Err(ProviderError::Malformed {
            message: format!(
                "prediction status {:?} is not starting, processing, succeeded, failed, canceled or aborted",
                http::label(other)
            ),
        }),
    }
}

/// The output URLs of a finished prediction (at most `request.count`), or
/// the error its end state means.
pub(super) fn outcome<'a>(
    prediction: &'a Prediction,
    request: &GenerationRequest,
    secrets: &Secrets<'_>,
) -> Result<Vec<&'a str>, ProviderError> {
    match prediction.status.as_str() {
        "succeeded" => output_urls(&prediction.output)
            .map(|urls| http::keep_asked(PROVIDER, urls, request.count)),
        "failed" => Err(failure(&prediction.error, secrets)),
        "canceled" => Err(ProviderError::Rejected {
            message: "canceled at the provider".into(),
        }),
        "aborted" => Err(ProviderError::Unavailable {
            message: "the prediction was aborted at the provider before it ran".into(),
            retry_after: None,
        }),
        _ => finished(prediction).and_then(|_| {
            Err(ProviderError::Malformed {
                message: "prediction has not finished".into(),
            })
        }),
    }
}

/// The files a succeeded prediction names: `output` is one URL, a list of
/// them, or null (a model that produced nothing).
pub(super) fn output_urls(output: &Value) -> Result<Vec<&str>, ProviderError> {
    let urls: Vec<&str> = match output {
        Value::String(url) => vec![url.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if urls.is_empty() {
        return Err(ProviderError::Malformed {
            message: "prediction succeeded, expected output files, found none".into(),
        });
    }
    Ok(urls)
}

/// Classifies a `failed` prediction. Both kinds are `Rejected`:
/// - a safety outcome (Replicate's and the models' messages say NSFW,
///   safety or "sensitive"): retrying the same prompt would be billed and
///   flagged again;
/// - any other failure: the model ran and raised on this input (a bad
///   image, an out-of-range parameter). Infrastructure trouble shows as
///   `aborted` or an HTTP 5xx instead, so a retry would likely be billed
///   for the same exception.
pub(super) fn failure(error: &Value, secrets: &Secrets<'_>) -> ProviderError {
    let text = match error {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let lower = text.to_ascii_lowercase();
    let safety = ["nsfw", "safety", "sensitive"]
        .iter()
        .any(|word| lower.contains(word));
    let detail = http::summary(&text, secrets);
    let message = match (safety, detail.is_empty()) {
        (true, true) => "the prediction was flagged by a safety check".to_owned(),
        (true, false) => format!("the prediction was flagged by a safety check: {detail}"),
        (false, true) => "the model failed on this input".to_owned(),
        (false, false) => format!("the model failed on this input: {detail}"),
    };
    ProviderError::Rejected { message }
}
/// Passes 2xx answers through and turns any other into its error.
pub(super) async fn check_status(
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

/// Classifies a non-2xx answer from the API: 401/403 credentials; 429 and
/// 5xx transient (429 with the body's "resets in ~Ns" when no Retry-After
/// header says when); 400, 404, 422 and other 4xx permanent.
pub(in crate::replicate) fn status_error(
    stage: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &Secrets<'_>,
) -> ProviderError {
    let detail = error_detail(body, secrets);
    let mut message = format!("{stage} answered HTTP {}", status.as_u16());
    if let Some(detail) = &detail {
        message.push_str(": ");
        message.push_str(detail);
    }
    let mut retry_after = http::retry_after_header(headers);
    if status == StatusCode::TOO_MANY_REQUESTS && retry_after.is_none() {
        retry_after = detail.as_deref().and_then(parse_reset_hint);
    }
    http::classify_status(status, message, retry_after)
}

/// Replicate's error body is `{"detail": "...", "title"?, "status"?}`;
/// `detail` (else `title`) is the message. Other fields (`invalid_fields`)
/// are not used; the text is reduced to a [`summary`](http::summary).
pub(super) fn error_detail(body: &[u8], secrets: &Secrets<'_>) -> Option<String> {
    let json: Value = serde_json::from_slice(body).ok()?;
    let text = ["detail", "title"]
        .iter()
        .find_map(|field| json.get(field).and_then(Value::as_str))?;
    let text = http::summary(text, secrets);
    (!text.is_empty()).then_some(text)
}

/// The wait in "Request was throttled. Your rate limit resets in ~30s.":
/// a number after "resets in" and an optional `~`, in s (the default), ms,
/// m or h.
pub(crate) fn parse_reset_hint(detail: &str) -> Option<Duration> {
    let lower = detail.to_ascii_lowercase();
    let (_, rest) = lower.split_once("resets in")?;
    let rest = rest.trim_start().trim_start_matches('~').trim_start();
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let value: f64 = rest[..number_len].parse().ok()?;
    let unit = rest[number_len..].trim_start();
    let seconds = if unit.starts_with("ms") {
        value / 1000.0
    } else if unit.starts_with("min") || unit.starts_with('m') {
        value * 60.0
    } else if unit.starts_with('h') {
        value * 3600.0
    } else {
        value
    };
    // Checked: `Duration::from_secs_f64` panics on a huge value, and the
    // digits are the provider's ("resets in 99999...9s").
    let delay = Duration::try_from_secs_f64(seconds).ok()?;
    (delay <= MAX_RESET_HINT).then_some(delay)
}

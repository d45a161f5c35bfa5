//! The meaning of a non-2xx answer from the images API: its status code,
//! error code (policy, quota) and `retry-after-ms` header. Kept apart from
//! the exchange in [`super`] so each verdict is read in one place.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::http::{self, Secrets};
use crate::ProviderError;

use super::*;

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

/// Classifies a non-2xx answer:
/// - a 4xx whose code is a content-policy one (or whose type mentions
///   policy or safety) → `Rejected`, whatever the status, so a refusal is
///   never mistaken for a bad key;
/// - 429 with a quota or billing code → `Unauthorized`: an account problem
///   that retrying would only hammer;
/// - 429 → `RateLimited` after `retry-after-ms`, else `retry-after`;
/// - otherwise by status: 401/403 `Unauthorized`, 408/5xx `Unavailable`,
///   other 4xx (400 included) `Rejected`.
pub(crate) fn status_error(
    stage: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &Secrets<'_>,
) -> ProviderError {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = json.get("error").unwrap_or(&Value::Null);
    let field = |name: &str| {
        error
            .get(name)
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
    };
    let code = field("code");
    let error_type = field("type");
    let detail = field("message")
        .map(|text| http::summary(text, secrets))
        .filter(|text| !text.is_empty());
    let mut message = format!("{stage} answered HTTP {}", status.as_u16());
    if let Some(label) = code.or(error_type).map(http::label) {
        if !label.is_empty() {
            message.push_str(&format!(" ({label})"));
        }
    }
    if let Some(detail) = &detail {
        message.push_str(": ");
        message.push_str(detail);
    }
    let is_one_of = |set: &[&str]| {
        code.is_some_and(|code| set.contains(&code))
            || error_type.is_some_and(|kind| set.contains(&kind))
    };
    let policy = code.is_some_and(|code| POLICY_CODES.contains(&code))
        || error_type.is_some_and(|kind| {
            let kind = kind.to_ascii_lowercase();
            kind.contains("policy") || kind.contains("safety")
        });
    if status == StatusCode::TOO_MANY_REQUESTS {
        if is_one_of(&QUOTA_CODES) {
            return ProviderError::Unauthorized { message };
        }
        return ProviderError::RateLimited {
            message,
            retry_after: retry_after_ms(headers).or_else(|| http::retry_after_header(headers)),
        };
    }
    if policy && status.is_client_error() {
        return ProviderError::Rejected { message };
    }
    http::classify_status(status, message, http::retry_after_header(headers))
}

/// OpenAI's `retry-after-ms` header (milliseconds, possibly fractional),
/// at most [`MAX_HINT`](crate::hint::MAX_HINT); never a panic for a huge
/// value (`Duration::from_secs_f64` used to panic on `1e300`).
pub(super) fn retry_after_ms(headers: &HeaderMap) -> Option<Duration> {
    let value: f64 = headers
        .get("retry-after-ms")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    crate::hint::from_secs_f64(value / 1000.0)
}

//! Classifying a failed call: the HTTP status and Triton's error body
//! into a [`ProviderError`].

use super::*;

/// Passes 2xx answers through and turns any other into its error.
pub(super) async fn check_status(
    response: Response,
    stage: &str,
    timeout_from_deadline: bool,
    secrets: &Secrets<'_>,
) -> Result<Response, ProviderError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let body = http::error_body(response).await;
    Err(status_error(
        stage,
        status,
        &headers,
        &body,
        timeout_from_deadline,
        secrets,
    ))
}

/// Classifies a non-2xx answer (see the module docs).
pub(crate) fn status_error(
    stage: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    timeout_from_deadline: bool,
    secrets: &Secrets<'_>,
) -> ProviderError {
    let code = status.as_u16();
    let raw = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|json| json.get("error")?.as_str().map(str::to_owned));
    let mut message = format!("{stage} answered HTTP {code}");
    if let Some(detail) = raw.as_deref().map(|raw| http::summary(raw, secrets)) {
        if !detail.is_empty() {
            message.push_str(": ");
            message.push_str(&detail);
        }
    }
    // Triton's markers are looked for in its own words, not the summary.
    let lower = raw
        .map(|raw| http::truncate(&raw, 4096).to_lowercase())
        .unwrap_or_default();
    if lower.contains("exceeds maximum queue size") {
        // Backpressure, not a failing model: the breaker must not open on
        // a busy server, and the guard's bucket slows down instead. Triton
        // sends no Retry-After; the retry policy's jittered backoff
        // spreads the workers out.
        return ProviderError::RateLimited {
            message,
            retry_after: None,
        };
    }
    if lower.contains("timeout expired") {
        return if timeout_from_deadline {
            ProviderError::DeadlineExceeded
        } else {
            ProviderError::Unavailable {
                message,
                retry_after: None,
            }
        };
    }
    match code {
        401 | 403 => ProviderError::Unauthorized { message },
        // The model is missing from our own server: an operator's problem,
        // and retryable so the job can fail over to a remote provider.
        404 => ProviderError::Unavailable {
            message,
            retry_after: retry_after_header(headers),
        },
        400 if MODEL_UNAVAILABLE
            .iter()
            .any(|marker| lower.contains(marker)) =>
        {
            ProviderError::Unavailable {
                message,
                retry_after: retry_after_header(headers),
            }
        }
        _ => http::classify_status(status, message, retry_after_header(headers)),
    }
}

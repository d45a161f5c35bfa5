//! Classifying a failed call: Google's error envelope, its RetryInfo
//! delay and the HTTP status into a [`ProviderError`].

use super::*;

/// Google's error envelope.
#[derive(Deserialize)]
pub(super) struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
pub(super) struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    details: Vec<Value>,
}

pub(super) fn parse_error(body: &[u8]) -> Option<ErrorBody> {
    serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .map(|envelope| envelope.error)
}

/// `predict answered HTTP 429 RESOURCE_EXHAUSTED: Quota exceeded...`.
pub(super) fn status_message(
    stage: &str,
    status: StatusCode,
    body: &[u8],
    secrets: &Secrets<'_>,
) -> String {
    describe(stage, status, parse_error(body).as_ref(), secrets)
}

/// The status, Google's status name and a [`summary`](http::summary) of
/// its message: never the token or the prompts.
pub(super) fn describe(
    stage: &str,
    status: StatusCode,
    error: Option<&ErrorBody>,
    secrets: &Secrets<'_>,
) -> String {
    let mut message = format!("{stage} answered HTTP {}", status.as_u16());
    if let Some(error) = error {
        if let Some(name) = error.status.as_deref().map(http::label) {
            if !name.is_empty() {
                message.push(' ');
                message.push_str(&name);
            }
        }
        if let Some(detail) = error.message.as_deref().map(|m| http::summary(m, secrets)) {
            if !detail.is_empty() {
                message.push_str(": ");
                message.push_str(&detail);
            }
        }
    }
    message
}

/// Classifies a non-2xx answer other than 401 (which depends on the token;
/// see [`VertexProvider::generate`]).
pub(crate) fn status_error(
    stage: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &Secrets<'_>,
) -> ProviderError {
    let error = parse_error(body);
    let message = describe(stage, status, error.as_ref(), secrets);
    match status.as_u16() {
        // RESOURCE_EXHAUSTED: the project's quota, i.e. backpressure.
        429 => ProviderError::RateLimited {
            message,
            retry_after: error
                .as_ref()
                .and_then(|e| retry_info(&e.details))
                .or_else(|| http::retry_after_header(headers))
                .or(Some(QUOTA_RETRY_FLOOR)),
        },
        // 403 PERMISSION_DENIED (no role, API disabled), 400
        // INVALID_ARGUMENT (including Imagen's prompt safety refusals) and
        // 404 (unknown model) fall under the shared classes.
        _ => http::classify_status(status, message, http::retry_after_header(headers)),
    }
}

/// The `retryDelay` of a `google.rpc.RetryInfo` entry in `details`.
pub(super) fn retry_info(details: &[Value]) -> Option<Duration> {
    details
        .iter()
        .filter(|d| {
            d.get("@type").and_then(Value::as_str)
                == Some("type.googleapis.com/google.rpc.RetryInfo")
        })
        .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .and_then(parse_proto_duration)
}

/// A protobuf JSON duration: `"30s"`, `"1.5s"`, `"0.200s"`.
pub(crate) fn parse_proto_duration(text: &str) -> Option<Duration> {
    let seconds: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    if !seconds.is_finite() {
        return None;
    }
    crate::hint::from_secs_f64(seconds).map(|d| d.min(MAX_RETRY_DELAY))
}

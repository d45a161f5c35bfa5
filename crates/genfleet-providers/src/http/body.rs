//! Reading bodies with a size cap.

use bytes::{Bytes, BytesMut};
use reqwest::Response;
use tokio::time::Instant;

use super::transport_error;
use crate::ProviderError;

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

//! Base64 and data URIs: decoding answers, encoding inputs, credential headers.

use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::HeaderValue;

use crate::{InputImage, ProviderError};

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

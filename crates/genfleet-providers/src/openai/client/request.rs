//! What a job becomes on the images API: the [`Call`] per job kind, its
//! fields, and the hand-built multipart body of an edit; plus the keys
//! `request.parameters` may not set (see [`crate::openai`]).

use std::fmt;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::http::input_bytes;
use crate::params::{self, Owned, COUNT_KEYS, DELIVERY_KEYS, PROMPT_KEYS, SAFETY_KEYS};
use crate::{GenerationRequest, InputImage, InputRole, JobKind, ProviderError};

use super::*;

/// The fields [`plan`] fills from the request and its inputs, and the
/// streaming switch that would change the answer's shape.
const BUILT_KEYS: &[&str] = &["model", "image", "mask", "partial_images"];

/// What `request.parameters` may not set on the images API (see the
/// module docs).
pub(crate) const OWNED: Owned = Owned {
    provider: PROVIDER,
    groups: &[
        BUILT_KEYS,
        PROMPT_KEYS,
        COUNT_KEYS,
        SAFETY_KEYS,
        DELIVERY_KEYS,
    ],
};

/// What one request turns into.
pub(crate) enum Call {
    Generations(Map<String, Value>),
    Edits(Vec<Part>),
}

// The body holds the prompt: keys and part sizes only.
impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Generations(body) => f
                .debug_tuple("Generations")
                .field(&body.keys().collect::<Vec<_>>())
                .finish(),
            Self::Edits(parts) => f.debug_tuple("Edits").field(parts).finish(),
        }
    }
}

/// One part of a multipart/form-data body.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) name: String,
    pub(crate) body: PartBody,
}

#[derive(Clone)]
pub(crate) enum PartBody {
    Text(String),
    File {
        filename: String,
        content_type: String,
        bytes: Bytes,
    },
}

// Text parts hold the prompt and file parts customer images: sizes only.
impl fmt::Debug for PartBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(text) => f.debug_struct("Text").field("len", &text.len()).finish(),
            Self::File {
                content_type,
                bytes,
                ..
            } => f
                .debug_struct("File")
                .field("content_type", content_type)
                .field("len", &bytes.len())
                .finish(),
        }
    }
}

/// Chooses the endpoint for `request` and builds its body; see the module
/// table.
///
/// # Errors
///
/// [`ProviderError::Unsupported`] for a kind this API cannot do or a
/// missing input image or mask.
pub(crate) fn plan(request: &GenerationRequest) -> Result<Call, ProviderError> {
    params::check(&request.parameters, &OWNED, &[])?;
    let kind = request.kind;
    let missing = |what: &str| ProviderError::Unsupported {
        message: format!("a {kind:?} job needs {what}, and the request has none"),
    };
    let image = primary_image(request);
    let mask = request
        .inputs
        .iter()
        .find(|input| input.role == InputRole::Mask);
    match kind {
        JobKind::ProductPhoto if image.is_none() => {
            let mut body = Map::new();
            for (name, value) in common_fields(request) {
                body.insert(name.into(), value);
            }
            for (key, value) in &request.parameters {
                if value.is_null() {
                    body.remove(key);
                } else {
                    body.insert(key.clone(), value.clone());
                }
            }
            Ok(Call::Generations(body))
        }
        JobKind::ProductPhoto | JobKind::BatchEdit | JobKind::Inpaint => {
            let image = image.ok_or_else(|| missing("an input image"))?;
            let mut parts: Vec<Part> = common_fields(request)
                .into_iter()
                .map(|(name, value)| Part {
                    name: name.into(),
                    body: PartBody::Text(text_of(&value)),
                })
                .collect();
            parts.push(file_part("image", image)?);
            if kind == JobKind::Inpaint {
                let mask = mask.ok_or_else(|| missing("a mask image"))?;
                parts.push(file_part("mask", mask)?);
            }
            for (key, value) in &request.parameters {
                let position = parts.iter().position(|part| &part.name == key);
                match (value.is_null(), position) {
                    (true, Some(at)) => {
                        parts.remove(at);
                    }
                    (true, None) => {}
                    (false, Some(at)) => parts[at].body = PartBody::Text(text_of(value)),
                    (false, None) => parts.push(Part {
                        name: key.clone(),
                        body: PartBody::Text(text_of(value)),
                    }),
                }
            }
            Ok(Call::Edits(parts))
        }
        _ => Err(ProviderError::Unsupported {
            message: format!(
                "openai images cannot do a {kind:?} job, expected ProductPhoto, BatchEdit or Inpaint"
            ),
        }),
    }
}

/// The fields both endpoints take, in order.
pub(super) fn common_fields(request: &GenerationRequest) -> Vec<(&'static str, Value)> {
    let mut fields = vec![
        ("model", Value::from(request.model.clone())),
        ("prompt", Value::from(request.prompt.clone())),
        // A count of 0 means "the default": one.
        ("n", Value::from(request.count.max(1))),
    ];
    if let Some(size) = size_for(&request.aspect_ratio) {
        fields.push(("size", Value::from(size)));
    }
    // gpt-image models always answer base64 and refuse the field.
    if !request.model.starts_with("gpt-image") {
        fields.push(("response_format", Value::from("b64_json")));
    }
    fields
}

/// The image size for an aspect ratio, or none (the model's default).
pub(crate) fn size_for(aspect_ratio: &str) -> Option<&'static str> {
    match aspect_ratio.trim() {
        "1:1" => Some("1024x1024"),
        "16:9" | "3:2" | "4:3" => Some("1536x1024"),
        "9:16" | "2:3" | "3:4" => Some("1024x1536"),
        _ => None,
    }
}

/// A parameter value as a form field: strings bare, anything else as JSON.
pub(super) fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

pub(super) fn file_part(name: &str, image: &InputImage) -> Result<Part, ProviderError> {
    let content_type = if image.content_type.is_empty() {
        "application/octet-stream".to_owned()
    } else {
        image.content_type.clone()
    };
    // The API tells formats apart by the part's type and file name.
    let extension = match content_type.as_str() {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        _ => "bin",
    };
    Ok(Part {
        name: name.to_owned(),
        body: PartBody::File {
            filename: format!("{name}.{extension}"),
            content_type,
            bytes: input_bytes(image)?.clone(),
        },
    })
}

/// The image an edit works on: the product or person, else a reference.
pub(super) fn primary_image(request: &GenerationRequest) -> Option<&InputImage> {
    request
        .inputs
        .iter()
        .find(|input| matches!(input.role, InputRole::Product | InputRole::Person))
        .or_else(|| {
            request
                .inputs
                .iter()
                .find(|input| input.role == InputRole::Reference)
        })
}

/// A multipart/form-data body (RFC 7578). `boundary` must not occur in any
/// part: it is random (128 bits) so that it does not by chance.
pub(crate) fn encode_multipart(parts: &[Part], boundary: &str) -> Vec<u8> {
    let size: usize = parts
        .iter()
        .map(|part| match &part.body {
            PartBody::Text(text) => text.len(),
            PartBody::File { bytes, .. } => bytes.len(),
        })
        .sum();
    let mut body = Vec::with_capacity(size + parts.len() * 160 + boundary.len() + 8);
    for part in parts {
        body.extend_from_slice(b"--");
        body.extend_from_slice(boundary.as_bytes());
        body.extend_from_slice(b"\r\nContent-Disposition: form-data; name=\"");
        body.extend_from_slice(quote(&part.name).as_bytes());
        body.push(b'"');
        match &part.body {
            PartBody::Text(text) => {
                body.extend_from_slice(b"\r\n\r\n");
                body.extend_from_slice(text.as_bytes());
            }
            PartBody::File {
                filename,
                content_type,
                bytes,
            } => {
                body.extend_from_slice(b"; filename=\"");
                body.extend_from_slice(quote(filename).as_bytes());
                body.extend_from_slice(b"\"\r\nContent-Type: ");
                body.extend_from_slice(quote(content_type).as_bytes());
                body.extend_from_slice(b"\r\n\r\n");
                body.extend_from_slice(bytes);
            }
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--");
    body.extend_from_slice(boundary.as_bytes());
    body.extend_from_slice(b"--\r\n");
    body
}

/// Escapes a name for a quoted header parameter the way browsers do, so a
/// parameter key cannot break out of its part header.
pub(super) fn quote(text: &str) -> String {
    text.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

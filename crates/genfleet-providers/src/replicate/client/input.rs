//! The prediction input a job becomes (see the module table in
//! [`crate::replicate`]) and the keys `request.parameters` may not set.

use serde_json::{Map, Value};

use crate::http::data_uri;
use crate::params::{self, Owned, COUNT_KEYS, DELIVERY_KEYS, PROMPT_KEYS, SAFETY_KEYS};
use crate::{GenerationRequest, InputImage, InputRole, JobKind, ProviderError};

use super::*;

/// The request's framing: what `input` sits in.
const FRAME_KEYS: &[&str] = &["input", "version", "model"];
/// The input image fields [`build_input`] fills.
const INPUT_KEYS: &[&str] = &["image", "mask", "human_img", "garm_img"];

/// What `request.parameters` may not set on Replicate (see the module
/// docs).
pub(crate) const OWNED: Owned = Owned {
    provider: PROVIDER,
    groups: &[
        FRAME_KEYS,
        PROMPT_KEYS,
        INPUT_KEYS,
        COUNT_KEYS,
        SAFETY_KEYS,
        DELIVERY_KEYS,
    ],
};

/// Builds the prediction input for `request`; see the module table.
///
/// # Errors
///
/// [`ProviderError::Unsupported`] when the job kind needs an input image
/// the request lacks.
pub(crate) fn build_input(
    request: &GenerationRequest,
) -> Result<Map<String, Value>, ProviderError> {
    params::check(&request.parameters, &OWNED, &[])?;
    let kind = request.kind;
    let mut input = Map::new();
    if !matches!(kind, JobKind::BackgroundRemoval | JobKind::Upscale) {
        if !request.prompt.is_empty() {
            input.insert("prompt".into(), request.prompt.clone().into());
        }
        if !request.negative_prompt.is_empty() {
            input.insert(
                "negative_prompt".into(),
                request.negative_prompt.clone().into(),
            );
        }
        if let Some(seed) = request.seed {
            input.insert("seed".into(), seed.into());
        }
        if matches!(
            kind,
            JobKind::ProductPhoto | JobKind::BatchEdit | JobKind::Inpaint
        ) {
            // A count of 0 means "the default": one.
            input.insert("num_outputs".into(), request.count.max(1).into());
        }
        if !request.aspect_ratio.is_empty() && kind != JobKind::VirtualTryOn {
            input.insert("aspect_ratio".into(), request.aspect_ratio.clone().into());
        }
    }

    let first = |role: InputRole| request.inputs.iter().find(|input| input.role == role);
    let missing = |what: &str| ProviderError::Unsupported {
        message: format!("a {kind:?} job needs {what}, and the request has none"),
    };
    if kind == JobKind::VirtualTryOn {
        let person = first(InputRole::Person).ok_or_else(|| missing("a person image"))?;
        let garment = first(InputRole::Garment).ok_or_else(|| missing("a garment image"))?;
        input.insert("human_img".into(), data_uri(person)?.into());
        input.insert("garm_img".into(), data_uri(garment)?.into());
    } else {
        match primary_image(request) {
            Some(image) => {
                input.insert("image".into(), data_uri(image)?.into());
            }
            None if kind != JobKind::ProductPhoto => return Err(missing("an input image")),
            None => {}
        }
        if kind == JobKind::Inpaint {
            let mask = first(InputRole::Mask).ok_or_else(|| missing("a mask image"))?;
            input.insert("mask".into(), data_uri(mask)?.into());
        }
    }

    // Model-specific knobs; they may replace the seed or aspect ratio, never
    // a field the worker owns (refused above).
    for (key, value) in &request.parameters {
        input.insert(key.clone(), value.clone());
    }
    Ok(input)
}

/// The image a single-image model works on: the product or person, else a
/// reference.
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

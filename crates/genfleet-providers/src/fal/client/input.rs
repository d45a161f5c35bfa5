//! The model input a job becomes, the memory its submit holds, and the keys
//! `request.parameters` may not set (see [`crate::fal`]).

use serde_json::{Map, Value};

use crate::http::data_uri;
use crate::params::{self, Owned, COUNT_KEYS, DELIVERY_KEYS, PROMPT_KEYS, SAFETY_KEYS};
use crate::{GenerationRequest, InputImage, InputRole, JobKind, ProviderError};

use super::*;

/// The input image fields [`build_input`] fills.
const INPUT_KEYS: &[&str] = &[
    "image_url",
    "image_urls",
    "mask_url",
    "human_image_url",
    "garment_image_url",
];

/// What `request.parameters` may not set on fal (see the module docs).
pub(crate) const OWNED: Owned = Owned {
    provider: PROVIDER,
    groups: &[
        PROMPT_KEYS,
        INPUT_KEYS,
        COUNT_KEYS,
        SAFETY_KEYS,
        DELIVERY_KEYS,
    ],
};

/// Memory a submit of `request` holds while it is built and sent: each input
/// as base64 (4/3) twice, in the JSON value and in the serialised body, and
/// the primary picture once more in `image_urls` of a multi-image edit.
pub(in crate::fal) fn body_estimate(request: &GenerationRequest) -> u64 {
    let inputs: u64 = request.inputs.iter().map(|input| input.bytes.len()).sum();
    let repeated = if request.inputs.len() > 1 {
        request
            .inputs
            .iter()
            .map(|input| input.bytes.len())
            .max()
            .unwrap_or(0)
    } else {
        0
    };
    (inputs + repeated).saturating_mul(8) / 3 + 4096
}

/// Builds the model input JSON for `request`.
///
/// # Errors
///
/// [`ProviderError::Unsupported`] when the job kind needs an input image
/// the request lacks.
pub(crate) fn build_input(
    request: &GenerationRequest,
) -> Result<Map<String, Value>, ProviderError> {
    params::check(&request.parameters, &OWNED, &[])?;
    let mut input = Map::new();
    input.insert("prompt".into(), request.prompt.clone().into());
    if !request.negative_prompt.is_empty() {
        input.insert(
            "negative_prompt".into(),
            request.negative_prompt.clone().into(),
        );
    }
    if let Some(seed) = request.seed {
        input.insert("seed".into(), seed.into());
    }
    // fal models reject num_images 0 with a 422; a count of 0 means "the default".
    input.insert("num_images".into(), request.count.max(1).into());
    if !request.aspect_ratio.is_empty() {
        input.insert("aspect_ratio".into(), request.aspect_ratio.clone().into());
    }

    let first = |role: InputRole| request.inputs.iter().find(|input| input.role == role);
    let missing = |what: &str| ProviderError::Unsupported {
        message: format!(
            "a {kind:?} job needs {what}, and the request has none",
            kind = request.kind
        ),
    };
    if request.kind == JobKind::VirtualTryOn {
        let person = first(InputRole::Person).ok_or_else(|| missing("a person image"))?;
        let garment = first(InputRole::Garment).ok_or_else(|| missing("a garment image"))?;
        input.insert("human_image_url".into(), data_uri(person)?.into());
        input.insert("garment_image_url".into(), data_uri(garment)?.into());
    } else {
        let pictures: Vec<&InputImage> = request
            .inputs
            .iter()
            .filter(|input| {
                matches!(
                    input.role,
                    InputRole::Product | InputRole::Person | InputRole::Reference
                )
            })
            .collect();
        let primary = pictures
            .iter()
            .find(|input| matches!(input.role, InputRole::Product | InputRole::Person))
            .or_else(|| pictures.first());
        let needs_image = !matches!(request.kind, JobKind::ProductPhoto);
        match primary {
            Some(primary) => {
                input.insert("image_url".into(), data_uri(primary)?.into());
            }
            None if needs_image => return Err(missing("an input image")),
            None => {}
        }
        // Multi-image edit models take the whole set as `image_urls`.
        if pictures.len() > 1 {
            let urls = pictures
                .iter()
                .map(|input| data_uri(input).map(Value::from))
                .collect::<Result<_, _>>()?;
            input.insert("image_urls".into(), Value::Array(urls));
        }
        if request.kind == JobKind::Inpaint {
            let mask = first(InputRole::Mask).ok_or_else(|| missing("a mask image"))?;
            input.insert("mask_url".into(), data_uri(mask)?.into());
        }
    }

    // Model-specific knobs; they may replace the seed or aspect ratio, never
    // a field the worker owns (refused above).
    for (key, value) in &request.parameters {
        input.insert(key.clone(), value.clone());
    }
    Ok(input)
}

//! The request body per job kind and method: Imagen predict bodies
//! (generation and edits) and Gemini bodies.

use super::*;

/// `count` clamped to what one predict request may ask for.
pub(super) fn sample_count(request: &GenerationRequest) -> u32 {
    match request.kind {
        JobKind::Upscale => 1,
        _ => request.count.clamp(1, MAX_SAMPLES),
    }
}

/// The method and JSON body for `request`.
///
/// # Errors
///
/// [`ProviderError::Unsupported`] for ImageToVideo, a missing input the
/// kind needs, or an upscale factor other than 2 or 4.
pub(crate) fn build_body(request: &GenerationRequest) -> Result<(Method, Value), ProviderError> {
    params::check(&request.parameters, &OWNED, &[])?;
    if request.kind == JobKind::ImageToVideo {
        return Err(ProviderError::Unsupported {
            message: "vertex video (veo) is a long-running operation this client does not run; \
                      ImageToVideo needs another provider"
                .into(),
        });
    }
    let method = Method::for_model(&request.model);
    let body = match method {
        Method::Predict => predict_body(request)?,
        Method::GenerateContent => gemini_body(request)?,
    };
    Ok((method, body))
}

pub(super) fn missing(request: &GenerationRequest, what: &str) -> ProviderError {
    ProviderError::Unsupported {
        message: format!(
            "a {kind:?} job needs {what}, and the request has none",
            kind = request.kind
        ),
    }
}

pub(super) fn first(request: &GenerationRequest, role: InputRole) -> Option<&InputImage> {
    request.inputs.iter().find(|input| input.role == role)
}

/// The picture a single-image kind works on: Product, else Person, else
/// Reference.
pub(super) fn primary(request: &GenerationRequest) -> Option<&InputImage> {
    first(request, InputRole::Product)
        .or_else(|| first(request, InputRole::Person))
        .or_else(|| first(request, InputRole::Reference))
}

pub(super) fn inline_image(image: &InputImage) -> Result<Value, ProviderError> {
    Ok(json!({"bytesBase64Encoded": encode_base64(input_bytes(image)?)}))
}

pub(super) fn predict_body(request: &GenerationRequest) -> Result<Value, ProviderError> {
    let mut parameters = Map::new();
    let mut overrides = request.parameters.clone();
    let instance = match request.kind {
        JobKind::VirtualTryOn => {
            let person = first(request, InputRole::Person)
                .ok_or_else(|| missing(request, "a person image"))?;
            let garment = first(request, InputRole::Garment)
                .or_else(|| first(request, InputRole::Product))
                .ok_or_else(|| missing(request, "a garment image"))?;
            json!({
                "personImage": {"image": inline_image(person)?},
                "productImages": [{"image": inline_image(garment)?}],
            })
        }
        JobKind::Upscale => {
            let image = primary(request).ok_or_else(|| missing(request, "an input image"))?;
            let factor = upscale_factor(overrides.remove("scale").as_ref())?;
            parameters.insert("mode".into(), "upscale".into());
            parameters.insert("upscaleConfig".into(), json!({"upscaleFactor": factor}));
            json!({"prompt": request.prompt, "image": inline_image(image)?})
        }
        JobKind::ProductPhoto if primary(request).is_none() => {
            if !request.aspect_ratio.is_empty() {
                parameters.insert("aspectRatio".into(), request.aspect_ratio.clone().into());
            }
            json!({"prompt": request.prompt})
        }
        JobKind::ProductPhoto
        | JobKind::BatchEdit
        | JobKind::BackgroundRemoval
        | JobKind::Inpaint => {
            let image = primary(request).ok_or_else(|| missing(request, "an input image"))?;
            let user_mask = first(request, InputRole::Mask);
            let (edit_mode, mask, prompt) = match request.kind {
                JobKind::Inpaint => (
                    "EDIT_MODE_INPAINT_INSERTION",
                    Some(user_mask.ok_or_else(|| missing(request, "a mask image"))?),
                    request.prompt.as_str(),
                ),
                JobKind::BackgroundRemoval => (
                    "EDIT_MODE_BGSWAP",
                    None,
                    if request.prompt.trim().is_empty() {
                        PLAIN_BACKGROUND_PROMPT
                    } else {
                        request.prompt.as_str()
                    },
                ),
                _ => ("EDIT_MODE_BGSWAP", user_mask, request.prompt.as_str()),
            };
            let mask_reference = match mask {
                Some(mask) => json!({
                    "referenceType": "REFERENCE_TYPE_MASK",
                    "referenceId": 2,
                    "referenceImage": inline_image(mask)?,
                    "maskImageConfig": {"maskMode": "MASK_MODE_USER_PROVIDED"},
                }),
                None => json!({
                    "referenceType": "REFERENCE_TYPE_MASK",
                    "referenceId": 2,
                    "maskImageConfig": {"maskMode": "MASK_MODE_BACKGROUND"},
                }),
            };
            parameters.insert("editMode".into(), edit_mode.into());
            json!({
                "prompt": prompt,
                "referenceImages": [
                    {
                        "referenceType": "REFERENCE_TYPE_RAW",
                        "referenceId": 1,
                        "referenceImage": inline_image(image)?,
                    },
                    mask_reference,
                ],
            })
        }
        // Refused by build_body before reaching here.
        JobKind::ImageToVideo => return Err(missing(request, "a video-capable provider")),
    };
    if request.kind != JobKind::Upscale {
        parameters.insert("sampleCount".into(), sample_count(request).into());
        if !request.negative_prompt.is_empty() && request.kind != JobKind::VirtualTryOn {
            parameters.insert(
                "negativePrompt".into(),
                request.negative_prompt.clone().into(),
            );
        }
        if let Some(seed) = request.seed {
            parameters.insert("seed".into(), seed.into());
            // Vertex refuses a seed on watermarked output.
            parameters.insert("addWatermark".into(), false.into());
        }
    }
    // Model-specific knobs; they may replace the seed or aspect ratio, never
    // a field the worker owns (refused in `build_body`).
    parameters.extend(overrides);
    Ok(json!({"instances": [instance], "parameters": parameters}))
}

/// `x2` or `x4` from `parameters.scale` (2, 4, "2", "x4"...); x2 when absent.
pub(super) fn upscale_factor(scale: Option<&Value>) -> Result<&'static str, ProviderError> {
    let text = match scale {
        None | Some(Value::Null) => return Ok("x2"),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.trim().trim_start_matches(['x', 'X']).to_owned(),
        Some(_) => String::new(),
    };
    match text.as_str() {
        "2" | "2.0" => Ok("x2"),
        "4" | "4.0" => Ok("x4"),
        _ => Err(ProviderError::Unsupported {
            message: format!(
                "upscale scale must be 2 or 4, found {}",
                match scale {
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::String(s)) => format!("{:?}", truncate(s, 16)),
                    _ => "a value that is not a number".to_owned(),
                }
            ),
        }),
    }
}

pub(super) fn gemini_body(request: &GenerationRequest) -> Result<Value, ProviderError> {
    match request.kind {
        JobKind::VirtualTryOn => {
            first(request, InputRole::Person).ok_or_else(|| missing(request, "a person image"))?;
            first(request, InputRole::Garment)
                .or_else(|| first(request, InputRole::Product))
                .ok_or_else(|| missing(request, "a garment image"))?;
        }
        JobKind::ProductPhoto => {}
        _ => {
            primary(request).ok_or_else(|| missing(request, "an input image"))?;
        }
    }
    let mut parts = Vec::with_capacity(request.inputs.len() + 1);
    if !request.prompt.is_empty() {
        parts.push(json!({"text": request.prompt}));
    }
    for input in &request.inputs {
        let mime = if input.content_type.is_empty() {
            "image/png"
        } else {
            input.content_type.as_str()
        };
        parts.push(
            json!({"inlineData": {"mimeType": mime, "data": encode_base64(input_bytes(input)?)}}),
        );
    }
    let mut config = Map::new();
    config.insert("responseModalities".into(), json!(["TEXT", "IMAGE"]));
    if let Some(seed) = request.seed {
        config.insert("seed".into(), seed.into());
    }
    if !request.aspect_ratio.is_empty() {
        config.insert(
            "imageConfig".into(),
            json!({"aspectRatio": request.aspect_ratio}),
        );
    }
    config.extend(request.parameters.clone());
    Ok(json!({
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": config,
    }))
}

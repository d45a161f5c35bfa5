//! The model routes' answers: `:predict` (Imagen) and `:generateContent`
//! (Gemini) per behaviour, the checks on their bodies, and Google's error
//! envelope.

use super::*;

pub(super) async fn predict(
    shared: &Shared,
    behaviour: Behaviour,
    model: &str,
    request: &Value,
) -> Response {
    let samples = match sample_count(request) {
        Ok(samples) => samples,
        Err(message) => return invalid(message),
    };
    match behaviour {
        Behaviour::Down => {
            return google_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "The service is currently unavailable.",
            )
        }
        Behaviour::Invalid => {
            return invalid("Request contains an invalid argument.");
        }
        Behaviour::Forbidden => return google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Permission 'aiplatform.endpoints.predict' denied on resource (or it may not exist).",
        ),
        Behaviour::Quota if shared.lock().calls.get(model).copied().unwrap_or(0) <= 1 => {
            return quota_exceeded();
        }
        Behaviour::Slow => {
            let delay = shared.lock().slow_delay;
            tokio::time::sleep(delay).await;
        }
        _ => {}
    }
    if let Err(message) = check_predict(behaviour, request) {
        return invalid(message);
    }
    let filtered = || json!({"raiFilteredReason": "Unable to show generated images. All images were filtered out because they violated Vertex AI's usage guidelines. You will not be charged for blocked images. Try rephrasing the prompt. If you think this was an error, send feedback. Support codes: 39322892"});
    let upscale = request
        .pointer("/parameters/upscaleConfig/upscaleFactor")
        .and_then(Value::as_str);
    let predictions: Vec<Value> = match behaviour {
        Behaviour::Filtered => (0..samples).map(|_| filtered()).collect(),
        Behaviour::Partial => vec![filtered(), png_prediction(IMAGE_SIDE, 0)],
        Behaviour::Empty => return (StatusCode::OK, axum::Json(json!({}))).into_response(),
        _ => match upscale {
            Some(factor) => {
                let scale = if factor == "x4" { 4 } else { 2 };
                vec![png_prediction(IMAGE_SIDE * scale, 0)]
            }
            None => {
                let extra = if behaviour == Behaviour::Extra { 2 } else { 0 };
                (0..samples + extra)
                    .map(|i| png_prediction(IMAGE_SIDE, i))
                    .collect()
            }
        },
    };
    (
        StatusCode::OK,
        axum::Json(json!({"predictions": predictions})),
    )
        .into_response()
}

pub(super) fn png_prediction(side: u32, variant: u32) -> Value {
    json!({
        "mimeType": "image/png",
        "bytesBase64Encoded": encode(&gradient_png(side, side, variant)),
    })
}

/// `parameters.sampleCount`, 1 when absent; Vertex refuses more than 4.
pub(super) fn sample_count(request: &Value) -> Result<u32, &'static str> {
    match request.pointer("/parameters/sampleCount") {
        None => Ok(1),
        Some(value) => match value.as_u64() {
            Some(n @ 1..=4) => Ok(n as u32),
            _ => Err("sampleCount must be an integer between 1 and 4."),
        },
    }
}

/// The checks Vertex makes before generating anything; the error is an
/// INVALID_ARGUMENT message.
pub(super) fn check_predict(behaviour: Behaviour, request: &Value) -> Result<(), &'static str> {
    let Some(instance) = request
        .get("instances")
        .and_then(Value::as_array)
        .and_then(|instances| instances.first())
        .filter(|instance| instance.is_object())
    else {
        return Err("instances must hold at least one instance.");
    };
    let parameters = request.get("parameters").cloned().unwrap_or(json!({}));
    if parameters.get("seed").is_some()
        && parameters.get("addWatermark").and_then(Value::as_bool) != Some(false)
    {
        return Err(
            "Seed is not supported when addWatermark is enabled; set addWatermark to false.",
        );
    }
    if behaviour == Behaviour::VtoOk || instance.get("personImage").is_some() {
        if !is_inline_image(instance.pointer("/personImage/image")) {
            return Err("personImage.image must hold a base64-encoded image.");
        }
        let products = instance
            .get("productImages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if products.is_empty() || !products.iter().all(|p| is_inline_image(p.get("image"))) {
            return Err("productImages must hold at least one base64-encoded image.");
        }
        return Ok(());
    }
    if parameters.get("mode").and_then(Value::as_str) == Some("upscale") {
        if !is_inline_image(instance.get("image")) {
            return Err("image must hold a base64-encoded image to upscale.");
        }
        let factor = parameters
            .pointer("/upscaleConfig/upscaleFactor")
            .and_then(Value::as_str);
        if !matches!(factor, Some("x2" | "x4")) {
            return Err("upscaleConfig.upscaleFactor must be x2 or x4.");
        }
        return Ok(());
    }
    if let Some(references) = instance.get("referenceImages") {
        let Some(references) = references.as_array().filter(|r| !r.is_empty()) else {
            return Err("referenceImages must not be empty.");
        };
        for reference in references {
            if let Some(image) = reference.get("referenceImage") {
                if !is_inline_image(Some(image)) {
                    return Err("referenceImage must hold a base64-encoded image.");
                }
            }
        }
        return Ok(());
    }
    match instance.get("prompt").and_then(Value::as_str) {
        Some(prompt) if !prompt.trim().is_empty() => Ok(()),
        _ => Err("prompt is required."),
    }
}

/// `{bytesBase64Encoded}` holding a PNG, JPEG or WebP.
pub(super) fn is_inline_image(image: Option<&Value>) -> bool {
    image
        .and_then(|image| image.get("bytesBase64Encoded"))
        .and_then(Value::as_str)
        .and_then(decode)
        .is_some_and(|bytes| is_image(&bytes))
}

pub(super) fn is_image(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
        || bytes.starts_with(&[0xFF, 0xD8, 0xFF])
        || (bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP")
}

pub(super) async fn generate_content(
    shared: &Shared,
    behaviour: Behaviour,
    request: &Value,
) -> Response {
    let Some(parts) = request
        .pointer("/contents/0/parts")
        .and_then(Value::as_array)
        .filter(|parts| !parts.is_empty())
    else {
        return invalid("contents[0].parts must not be empty.");
    };
    for part in parts {
        if let Some(inline) = part.get("inlineData") {
            let image = inline
                .get("data")
                .and_then(Value::as_str)
                .and_then(decode)
                .is_some_and(|bytes| is_image(&bytes));
            let mime = inline.get("mimeType").and_then(Value::as_str).unwrap_or("");
            if !image || !mime.starts_with("image/") {
                return invalid("inlineData must hold a base64-encoded image with its mimeType.");
            }
        } else if part.get("text").and_then(Value::as_str).is_none() {
            return invalid("each part must hold text or inlineData.");
        }
    }
    if behaviour == Behaviour::Slow {
        let delay = shared.lock().slow_delay;
        tokio::time::sleep(delay).await;
    }
    let response_id = format!(
        "fake-response-{}",
        shared.next_response.fetch_add(1, Ordering::Relaxed)
    );
    let text = json!({"text": "Here is the image you asked for."});
    let answer = match behaviour {
        Behaviour::GeminiBlocked => json!({
            "promptFeedback": {
                "blockReason": "PROHIBITED_CONTENT",
                "blockReasonMessage": "The prompt was blocked due to prohibited content.",
            },
            "responseId": response_id,
        }),
        Behaviour::GeminiImageSafety => json!({
            "candidates": [{
                "content": {"role": "model"},
                "finishReason": "IMAGE_SAFETY",
                "finishMessage": "Unable to show the generated image because it may violate Google's Generative AI Prohibited Use policy.",
                "index": 0,
            }],
            "responseId": response_id,
        }),
        Behaviour::GeminiMalformed => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"candidates": [{"content": {"role": "model", "parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo"#,
            )
                .into_response()
        }
        Behaviour::GeminiTextOnly => json!({
            "candidates": [{
                "content": {"role": "model", "parts": [text]},
                "finishReason": "STOP",
                "index": 0,
            }],
            "responseId": response_id,
        }),
        _ => json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    text,
                    {"inlineData": {"mimeType": "image/png", "data": encode(&gradient_png(IMAGE_SIDE, IMAGE_SIDE, 0))}},
                ]},
                "finishReason": "STOP",
                "index": 0,
            }],
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302},
            "modelVersion": "gemini-2.5-flash-image",
            "responseId": response_id,
        }),
    };
    (StatusCode::OK, axum::Json(answer)).into_response()
}

/// 429 with the RetryInfo and QuotaFailure details Google sends.
pub(super) fn quota_exceeded() -> Response {
    error_with_details(
        StatusCode::TOO_MANY_REQUESTS,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model with base model: imagen. Please submit a quota increase request.",
        json!([
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"subject": "online_prediction_requests_per_base_model"}],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.2s"},
        ]),
    )
}

pub(super) fn invalid(message: &str) -> Response {
    google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
}

pub(super) fn google_error(code: StatusCode, status: &str, message: &str) -> Response {
    error_with_details(code, status, message, json!([]))
}

/// Google's `{"error": {code, message, status, details}}`.
pub(super) fn error_with_details(
    code: StatusCode,
    status: &str,
    message: &str,
    details: Value,
) -> Response {
    let body = json!({
        "error": {
            "code": code.as_u16(),
            "message": message,
            "status": status,
            "details": details,
        }
    });
    (code, axum::Json(body)).into_response()
}

pub(super) fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(super) fn decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

//! Reading a predict or Gemini answer into images, and what a filtered
//! or empty answer means.

use super::*;

/// A JSON answer that did not parse: where, never what (serde's message may
/// quote base64 image data or text).
pub(super) fn not_json(what: &str, err: &serde_json::Error) -> ProviderError {
    let problem = match err.classify() {
        serde_json::error::Category::Eof => "ends early",
        serde_json::error::Category::Syntax => "is not valid json",
        serde_json::error::Category::Data | serde_json::error::Category::Io => {
            "does not have the expected shape"
        }
    };
    ProviderError::Malformed {
        message: format!(
            "{what} {problem} (line {}, column {})",
            err.line(),
            err.column()
        ),
    }
}

#[derive(Deserialize)]
pub(super) struct PredictAnswer {
    #[serde(default)]
    predictions: Vec<Prediction>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Prediction {
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    bytes_base64_encoded: Option<String>,
    #[serde(default)]
    rai_filtered_reason: Option<String>,
}

pub(super) fn decoded(
    data: &str,
    mime: Option<String>,
    what: &str,
    limit: u64,
) -> Result<Artifact, ProviderError> {
    let bytes = http::decode_base64(data, what)?;
    http::check_size(bytes.len() as u64, limit)?;
    Ok(Artifact {
        content_type: mime
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "image/png".to_owned()),
        bytes: bytes.into(),
    })
}

/// The images of a predict answer, the first `count` of them (the rest
/// are dropped undecoded), or why there are none (module docs).
pub(crate) fn predict_artifacts(
    body: &[u8],
    limit: u64,
    count: u32,
    secrets: &Secrets<'_>,
) -> Result<Vec<Artifact>, ProviderError> {
    let answer: PredictAnswer =
        serde_json::from_slice(body).map_err(|err| not_json("predict answer", &err))?;
    let mut images = Vec::new();
    let mut filtered = Vec::new();
    for prediction in answer.predictions {
        match (
            prediction.bytes_base64_encoded,
            prediction.rai_filtered_reason,
        ) {
            (Some(data), _) => images.push((data, prediction.mime_type)),
            (None, Some(reason)) => filtered.push(reason),
            // Safety attributes or other metadata: no image to take.
            (None, None) => {}
        }
    }
    let artifacts = http::keep_asked("vertex", images, count)
        .into_iter()
        .map(|(data, mime)| decoded(&data, mime, "a prediction", limit))
        .collect::<Result<Vec<_>, _>>()?;
    if artifacts.is_empty() {
        return Err(ProviderError::Rejected {
            message: match filtered.first() {
                Some(reason) => format!(
                    "vertex filtered every output ({} of {}): {}",
                    filtered.len(),
                    filtered.len(),
                    http::summary(reason, secrets)
                ),
                None => "no image returned: vertex answered no predictions, as it does when the prompt itself is filtered".to_owned(),
            },
        });
    }
    if !filtered.is_empty() {
        tracing::info!(
            kept = artifacts.len(),
            filtered = filtered.len(),
            "vertex filtered some outputs for safety; keeping the rest"
        );
    }
    Ok(artifacts)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GeminiAnswer {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    response_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Part {
    #[serde(default)]
    inline_data: Option<InlineData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct InlineData {
    #[serde(default)]
    mime_type: Option<String>,
    data: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

/// The images of a generateContent answer (the first `count`; the rest
/// are dropped undecoded) and its response id, or why there are none
/// (module docs).
pub(crate) fn gemini_artifacts(
    body: &[u8],
    limit: u64,
    count: u32,
) -> Result<(Vec<Artifact>, Option<String>), ProviderError> {
    let answer: GeminiAnswer =
        serde_json::from_slice(body).map_err(|err| not_json("generateContent answer", &err))?;
    let mut images = Vec::new();
    let mut finish_reasons = Vec::new();
    for candidate in answer.candidates {
        if let Some(reason) = candidate.finish_reason {
            finish_reasons.push(http::label(&reason));
        }
        let parts = candidate.content.map(|c| c.parts).unwrap_or_default();
        images.extend(parts.into_iter().filter_map(|part| part.inline_data));
    }
    let artifacts = http::keep_asked("vertex", images, count)
        .into_iter()
        .map(|inline| decoded(&inline.data, inline.mime_type, "an inlineData part", limit))
        .collect::<Result<Vec<_>, _>>()?;
    if !artifacts.is_empty() {
        let request_id = answer
            .response_id
            .map(|id| http::label(&truncate(&id, 128)));
        return Ok((artifacts, request_id));
    }
    let block = answer.prompt_feedback.and_then(|f| f.block_reason);
    if let Some(reason) = block {
        return Err(ProviderError::Rejected {
            message: format!("gemini blocked the prompt: {}", http::label(&reason)),
        });
    }
    if let Some(reason) = finish_reasons
        .iter()
        .find(|r| GEMINI_SAFETY_FINISH.contains(&r.as_str()))
    {
        return Err(ProviderError::Rejected {
            message: format!("gemini returned no image (finish reason {reason})"),
        });
    }
    Err(ProviderError::Malformed {
        message: if finish_reasons.is_empty() {
            "gemini answered without an image or a finish reason".to_owned()
        } else {
            format!(
                "gemini answered without an image, expected an inlineData part (finish reason {})",
                finish_reasons.join(", ")
            )
        },
    })
}

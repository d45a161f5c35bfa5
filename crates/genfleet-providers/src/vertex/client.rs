//! [`VertexProvider`]: its configuration, the request body per job kind and
//! method, and the reading and classification of each answer.

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use url::Url;

use super::auth::TokenSource;
use crate::http::{self, encode_base64, input_bytes, truncate, Secrets};
use crate::params::{self, Owned, COUNT_KEYS, DELIVERY_KEYS, PROMPT_KEYS, SAFETY_KEYS};
use crate::{
    Artifact, GenerationOutput, GenerationRequest, InputImage, InputRole, JobKind, Provider,
    ProviderError,
};

/// Imagen and Virtual Try-On produce at most this many images per request.
const MAX_SAMPLES: u32 = 4;
/// Gemini returns an unpredictable number of images; the answer cap allows
/// this many.
const GEMINI_MAX_IMAGES: u64 = 4;
/// Wait after a quota 429 that carries no hint: Google asks for "at least
/// ~30 s" (shared/PROVIDERS.md).
const QUOTA_RETRY_FLOOR: Duration = Duration::from_secs(30);
/// Upper bound on a `retryDelay` taken from an answer.
const MAX_RETRY_DELAY: Duration = crate::hint::MAX_HINT;
/// Prompt for a BackgroundRemoval job that has none.
const PLAIN_BACKGROUND_PROMPT: &str = "a plain white seamless studio background";
/// The request's framing, around the instance or the contents and the
/// parameters or generation config.
const FRAME_KEYS: &[&str] = &["instances", "parameters", "contents", "generation_config"];
/// The input image fields the bodies carry.
const INPUT_KEYS: &[&str] = &[
    "image",
    "reference_images",
    "reference_image",
    "person_image",
    "product_images",
    "mask",
    "inline_data",
    "file_data",
    "parts",
];
/// Other fields the bodies build: the edit or upscale mode, the watermark
/// (SynthID, off only when a seed forces it) and Gemini's output shape.
const BUILT_KEYS: &[&str] = &[
    "edit_mode",
    "mode",
    "upscale_config",
    "add_watermark",
    "response_modalities",
    "response_mime_type",
];

/// What `request.parameters` may not set on Vertex (see the module docs).
pub(crate) const OWNED: Owned = Owned {
    provider: "vertex",
    groups: &[
        FRAME_KEYS,
        PROMPT_KEYS,
        INPUT_KEYS,
        BUILT_KEYS,
        COUNT_KEYS,
        SAFETY_KEYS,
        DELIVERY_KEYS,
    ],
};

/// Finish reasons that mean Gemini withheld the image for policy reasons.
const GEMINI_SAFETY_FINISH: [&str; 5] = [
    "IMAGE_SAFETY",
    "SAFETY",
    "PROHIBITED_CONTENT",
    "NO_IMAGE",
    "RECITATION",
];

/// Connection settings for Vertex AI.
#[derive(Clone)]
pub struct VertexConfig {
    /// API root; `None` means `https://{region}-aiplatform.googleapis.com/`
    /// (`https://aiplatform.googleapis.com/` for the `global` region). Set
    /// it for tests or a private endpoint.
    pub base_url: Option<Url>,
    /// Google Cloud project id.
    pub project: String,
    /// Vertex location, such as `us-central1` or `global`.
    pub region: String,
    /// Where access tokens come from. `Debug` never shows a token.
    pub token: TokenSource,
    /// Upper bound on one exchange, body included; Imagen can take tens of
    /// seconds for 4 samples. The job deadline may cut it shorter.
    pub request_timeout: Duration,
    /// Largest decoded output image accepted; a bigger one fails the
    /// attempt (Rejected: the same request would produce it again).
    pub max_output_bytes: u64,
}

impl VertexConfig {
    /// Vertex's default location.
    pub const DEFAULT_REGION: &'static str = "us-central1";

    /// `project` with `token`, the production endpoint for
    /// [`DEFAULT_REGION`](Self::DEFAULT_REGION), a 120 s exchange timeout
    /// and a 64 MiB output cap (a 4096x4096 PNG from an x4 upscale fits).
    pub fn new(project: impl Into<String>, token: TokenSource) -> Self {
        Self {
            base_url: None,
            project: project.into(),
            region: Self::DEFAULT_REGION.to_owned(),
            token,
            request_timeout: Duration::from_secs(120),
            max_output_bytes: 64 * 1024 * 1024,
        }
    }
}

impl fmt::Debug for VertexConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VertexConfig")
            .field("base_url", &self.base_url.as_ref().map(Url::as_str))
            .field("project", &self.project)
            .field("region", &self.region)
            .field("token", &self.token)
            .field("request_timeout", &self.request_timeout)
            .field("max_output_bytes", &self.max_output_bytes)
            .finish()
    }
}

/// A [`Provider`] for Google's image models on Vertex AI.
pub struct VertexProvider {
    config: VertexConfig,
    client: reqwest::Client,
    /// `{base}/v1/projects/{project}/locations/{region}/publishers/google/models`,
    /// or why the configuration cannot form it (reported on every call,
    /// since `new` cannot fail).
    models_url: Result<String, String>,
}

impl fmt::Debug for VertexProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VertexProvider")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl VertexProvider {
    /// `client` should be the process-wide client (connection pooling);
    /// per-exchange timeouts come from `config`.
    pub fn new(config: VertexConfig, client: reqwest::Client) -> Self {
        let models_url = models_url(&config);
        Self {
            config,
            client,
            models_url,
        }
    }

    /// The URL for `model`'s `method`.
    pub(crate) fn url(&self, model: &str, method: Method) -> Result<Url, ProviderError> {
        let method = method.as_str();
        // A configuration an operator must fix: not retryable, alerting,
        // like a refused credential.
        let root = self
            .models_url
            .as_ref()
            .map_err(|message| ProviderError::Unauthorized {
                message: message.clone(),
            })?;
        Url::parse(&format!("{root}/{model}:{method}")).map_err(|_| ProviderError::Unsupported {
            message: format!("model {model:?} does not form a valid url with the vertex base url"),
        })
    }
}

fn is_id(text: &str, extra: &[u8]) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b) || extra.contains(&b))
}

fn models_url(config: &VertexConfig) -> Result<String, String> {
    // Legacy project ids may be domain-scoped (`example.com:project`).
    if !is_id(&config.project, b":") {
        return Err(format!(
            "vertex project {:?} is not a project id, expected [A-Za-z0-9.:_-]+",
            truncate(&config.project, 64)
        ));
    }
    if !is_id(&config.region, b"") {
        return Err(format!(
            "vertex region {:?} is not a location id, expected [A-Za-z0-9._-]+",
            truncate(&config.region, 64)
        ));
    }
    let base = match &config.base_url {
        Some(url) => url.as_str().trim_end_matches('/').to_owned(),
        None if config.region == "global" => "https://aiplatform.googleapis.com".to_owned(),
        None => format!("https://{}-aiplatform.googleapis.com", config.region),
    };
    Ok(format!(
        "{base}/v1/projects/{}/locations/{}/publishers/google/models",
        config.project, config.region
    ))
}

/// Which Vertex method serves a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Predict,
    GenerateContent,
}

impl Method {
    fn for_model(model: &str) -> Method {
        if model.starts_with("gemini") {
            Method::GenerateContent
        } else {
            Method::Predict
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Method::Predict => "predict",
            Method::GenerateContent => "generateContent",
        }
    }
}

#[async_trait::async_trait]
impl Provider for VertexProvider {
    fn name(&self) -> &str {
        "vertex"
    }

    async fn generate(
        &self,
        request: &GenerationRequest,
    ) -> Result<GenerationOutput, ProviderError> {
        self.generate_once(request).await
    }
}

impl VertexProvider {
    #[tracing::instrument(
        name = "vertex_generate",
        skip_all,
        fields(provider = "vertex", job_id = %request.job_id, model = tracing::field::Empty)
    )]
    async fn generate_once(
        &self,
        request: &GenerationRequest,
    ) -> Result<GenerationOutput, ProviderError> {
        params::check(&request.parameters, &OWNED, &[])?;
        let model = request.model.as_str();
        if !is_id(model, b"") {
            return Err(ProviderError::Unsupported {
                message: format!(
                    "model {:?} is not a vertex model id, expected [A-Za-z0-9._-]+",
                    truncate(model, 64)
                ),
            });
        }
        tracing::Span::current().record("model", model);
        let (method, body) = build_body(&*request.load_inputs().await?)?;
        let url = self.url(model, method)?;
        let deadline = request.deadline;

        let token = self.config.token.token(deadline).await?;
        let builder = self
            .client
            .post(url)
            .header(AUTHORIZATION, token.authorization.clone())
            .json(&body);
        let response = http::send(builder, self.config.request_timeout, deadline).await?;
        let status = response.status();
        let stage = method.as_str();
        // The access token, as an error message must not echo it.
        let credential = token
            .authorization
            .to_str()
            .ok()
            .map(|value| value.strip_prefix("Bearer ").unwrap_or(value));
        let secrets = Secrets::new(credential, Some(request));
        if status == StatusCode::UNAUTHORIZED {
            let body = http::error_body(response).await;
            let detail = status_message(stage, status, &body, &secrets);
            return Err(if self.config.token.rejected(token.generation) {
                // The next attempt fetches a new token; no reason to wait.
                ProviderError::Unavailable {
                    message: format!(
                        "{detail} (dropped the access token; the next attempt refreshes it)"
                    ),
                    retry_after: Some(Duration::ZERO),
                }
            } else {
                ProviderError::Unauthorized { message: detail }
            });
        }
        self.config.token.accepted(token.generation);
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = http::error_body(response).await;
            tracing::debug!(status = status.as_u16(), "vertex answered an error");
            return Err(status_error(stage, status, &headers, &body, &secrets));
        }

        let images = match method {
            Method::Predict => sample_count(request),
            Method::GenerateContent => request.count.max(1),
        };
        // Base64 is 4 bytes per 3, within the JSON around the images;
        // Gemini's answer is sized for the images it may add.
        let limit = http::inline_answer_limit(
            self.config.max_output_bytes,
            u64::from(images).max(match method {
                Method::Predict => 1,
                Method::GenerateContent => GEMINI_MAX_IMAGES,
            }),
        );
        let max_output = self.config.max_output_bytes;
        let answer = http::read_body(response, limit, deadline, || {
            http::too_large_output(max_output)
        })
        .await?;
        let (artifacts, request_id) = match method {
            Method::Predict => (
                predict_artifacts(&answer, max_output, images, &secrets)?,
                None,
            ),
            Method::GenerateContent => gemini_artifacts(&answer, max_output, images)?,
        };
        tracing::debug!(artifacts = artifacts.len(), "vertex request completed");
        Ok(GenerationOutput {
            artifacts,
            attempts: 1,
            request_id,
        })
    }
}

/// `count` clamped to what one predict request may ask for.
fn sample_count(request: &GenerationRequest) -> u32 {
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

fn missing(request: &GenerationRequest, what: &str) -> ProviderError {
    ProviderError::Unsupported {
        message: format!(
            "a {kind:?} job needs {what}, and the request has none",
            kind = request.kind
        ),
    }
}

fn first(request: &GenerationRequest, role: InputRole) -> Option<&InputImage> {
    request.inputs.iter().find(|input| input.role == role)
}

/// The picture a single-image kind works on: Product, else Person, else
/// Reference.
fn primary(request: &GenerationRequest) -> Option<&InputImage> {
    first(request, InputRole::Product)
        .or_else(|| first(request, InputRole::Person))
        .or_else(|| first(request, InputRole::Reference))
}

fn inline_image(image: &InputImage) -> Result<Value, ProviderError> {
    Ok(json!({"bytesBase64Encoded": encode_base64(input_bytes(image)?)}))
}

fn predict_body(request: &GenerationRequest) -> Result<Value, ProviderError> {
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
fn upscale_factor(scale: Option<&Value>) -> Result<&'static str, ProviderError> {
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

fn gemini_body(request: &GenerationRequest) -> Result<Value, ProviderError> {
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

/// A JSON answer that did not parse: where, never what (serde's message may
/// quote base64 image data or text).
fn not_json(what: &str, err: &serde_json::Error) -> ProviderError {
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
struct PredictAnswer {
    #[serde(default)]
    predictions: Vec<Prediction>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Prediction {
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    bytes_base64_encoded: Option<String>,
    #[serde(default)]
    rai_filtered_reason: Option<String>,
}

fn decoded(
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
struct GeminiAnswer {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    response_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default)]
    inline_data: Option<InlineData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InlineData {
    #[serde(default)]
    mime_type: Option<String>,
    data: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
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

/// Google's error envelope.
#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    details: Vec<Value>,
}

fn parse_error(body: &[u8]) -> Option<ErrorBody> {
    serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .map(|envelope| envelope.error)
}

/// `predict answered HTTP 429 RESOURCE_EXHAUSTED: Quota exceeded...`.
fn status_message(stage: &str, status: StatusCode, body: &[u8], secrets: &Secrets<'_>) -> String {
    describe(stage, status, parse_error(body).as_ref(), secrets)
}

/// The status, Google's status name and a [`summary`](http::summary) of
/// its message: never the token or the prompts.
fn describe(
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
fn retry_info(details: &[Value]) -> Option<Duration> {
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

//! [`VertexProvider`]: its configuration, the request body per job kind and
//! method, and the reading and classification of each answer.
//!
//! This file holds the configuration and the provider's call; `body`
//! builds the request body per job kind, `answer` reads predict and Gemini
//! answers, `status` classifies failed calls.

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

mod answer;
mod body;
mod status;

pub(crate) use self::answer::*;
pub(crate) use self::body::*;
pub(crate) use self::status::*;

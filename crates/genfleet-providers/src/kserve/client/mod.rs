//! [`KServeProvider`]: its configuration, the model contract check, the
//! request in binary or JSON form and the classification of each answer.
//!
//! This file holds the configuration, the metadata types and the provider
//! itself; `request` builds the infer body, `answer` reads what comes back,
//! `contract` checks a model's metadata and `status` classifies failures.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use url::Url;

use super::tensor::{
    decode_bytes_elements, encode_bytes_elements, encoded_len, sniff_content_type, split_body,
    take_sections,
};
use crate::http::{
    self, check_size, encode_base64, input_bytes, json_problem, read_body, retry_after_header,
    Secrets, CONTROL_BODY_LIMIT,
};
use crate::params::{self, Owned, COUNT_KEYS, DELIVERY_KEYS, PROMPT_KEYS, SAFETY_KEYS};
use crate::{
    Artifact, GenerationOutput, GenerationRequest, InputImage, InputRole, JobKind, Provider,
    ProviderError,
};

/// The binary extension's header giving the length of the JSON part.
pub(crate) const HEADER_LENGTH: &str = "inference-header-content-length";
/// Most images one answer may hold; a shape claiming more is not one of our
/// image models answering.
const MAX_OUTPUT_IMAGES: usize = 64;
/// The request's framing.
const FRAME_KEYS: &[&str] = &["id", "inputs", "outputs", "parameters"];
/// Request parameters the client sets itself (`timeout` from the deadline,
/// `priority` from the config), and Triton's per-request switches for the
/// answer's form and for shared memory.
const BUILT_KEYS: &[&str] = &[
    "timeout",
    "priority",
    "binary_data_output",
    "binary_data",
    "binary_data_size",
    "shared_memory_region",
    "shared_memory_byte_size",
    "shared_memory_offset",
];

/// What `request.parameters` may not set on KServe (see the module docs);
/// the configured tensor names are refused too.
pub(crate) const OWNED: Owned = Owned {
    provider: "kserve",
    groups: &[
        FRAME_KEYS,
        BUILT_KEYS,
        PROMPT_KEYS,
        COUNT_KEYS,
        SAFETY_KEYS,
        DELIVERY_KEYS,
    ],
};

/// The request parameter carrying the output count, sent when it is over 1.
const COUNT_PARAMETER: &str = "num_images";

/// Messages of a 400 that mean the model cannot serve right now, not that
/// the input is bad (Triton's wordings, lower-cased).
const MODEL_UNAVAILABLE: &[&str] = &[
    "unknown model",
    "not ready",
    "ready state",
    "no available versions",
    "is unavailable",
    "not loaded",
];

/// Connection settings and tensor names for a KServe v2 / Triton server.
#[derive(Clone)]
pub struct KServeConfig {
    /// Server root, e.g. `http://127.0.0.1:8000/` (a path prefix is kept,
    /// for a server behind a proxy).
    pub base_url: Url,
    /// Upper bound on one HTTP exchange, body included. The job deadline
    /// may cut it shorter.
    pub request_timeout: Duration,
    /// Largest output image accepted; a bigger one fails the attempt rather
    /// than exhaust worker memory.
    pub max_output_bytes: u64,
    /// Triton's binary tensor data extension (raw bytes after the JSON)
    /// rather than base64 text in JSON: see the module docs.
    pub binary: bool,
    /// Sent as `Authorization: Bearer <token>`, for a server behind an auth
    /// proxy. Never logged; `Debug` prints `[redacted]`.
    pub bearer: Option<String>,
    /// Triton request priority (1 is highest; 0 means the model's default).
    pub priority: Option<u32>,
    /// Input tensor for the main image (product, person or reference).
    pub image_input: String,
    /// Input tensor for the inpainting mask.
    pub mask_input: String,
    /// Input tensor for the second image (the try-on garment).
    pub second_image_input: String,
    /// Input tensor for the prompt, sent when it is non-empty.
    pub prompt_input: String,
    /// Output tensor holding the encoded result images.
    pub output: String,
}

impl KServeConfig {
    /// Triton's default HTTP endpoint on the same host.
    pub const DEFAULT_BASE_URL: &'static str = "http://127.0.0.1:8000/";
}

impl Default for KServeConfig {
    /// Local Triton, 60 s per exchange (a 4x upscale of a large image takes
    /// seconds, its PNG tens of MB), a 200 MB output cap, binary tensors, no
    /// bearer or priority, and the tensor names `INPUT_IMAGE`, `INPUT_MASK`,
    /// `INPUT_GARMENT`, `PROMPT` and `OUTPUT_IMAGE`.
    fn default() -> Self {
        Self {
            base_url: Url::parse(Self::DEFAULT_BASE_URL)
                .expect("the default KServe base URL is a valid URL literal"),
            request_timeout: Duration::from_secs(60),
            max_output_bytes: 200 * 1024 * 1024,
            binary: true,
            bearer: None,
            priority: None,
            image_input: "INPUT_IMAGE".into(),
            mask_input: "INPUT_MASK".into(),
            second_image_input: "INPUT_GARMENT".into(),
            prompt_input: "PROMPT".into(),
            output: "OUTPUT_IMAGE".into(),
        }
    }
}

impl fmt::Debug for KServeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KServeConfig")
            .field("base_url", &self.base_url.as_str())
            .field("request_timeout", &self.request_timeout)
            .field("max_output_bytes", &self.max_output_bytes)
            .field("binary", &self.binary)
            .field("bearer", &self.bearer.as_ref().map(|_| "[redacted]"))
            .field("priority", &self.priority)
            .field("image_input", &self.image_input)
            .field("mask_input", &self.mask_input)
            .field("second_image_input", &self.second_image_input)
            .field("prompt_input", &self.prompt_input)
            .field("output", &self.output)
            .finish()
    }
}

/// A model's metadata (`GET /v2/models/{m}`): what it takes and answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub platform: String,
    #[serde(default)]
    pub inputs: Vec<TensorMetadata>,
    #[serde(default)]
    pub outputs: Vec<TensorMetadata>,
}

/// One declared tensor; `-1` in `shape` is a variable dimension.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    #[serde(default)]
    pub shape: Vec<i64>,
}

/// What [`KServeProvider::check_contract`] found a model to take, beyond
/// the image input and the output every model must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    /// It takes the configured mask input (inpainting).
    pub mask: bool,
    /// It takes the configured second image input (try-on garment).
    pub second_image: bool,
    /// It takes the configured prompt input.
    pub prompt: bool,
    /// Inputs it declares that this client never sends. Unless they are
    /// optional in the model's configuration (metadata does not say), every
    /// request will fail: worth a warning at start-up.
    pub other_inputs: Vec<String>,
}

/// A [`Provider`] for models served by a KServe v2 / Triton server.
pub struct KServeProvider {
    config: KServeConfig,
    client: reqwest::Client,
    /// Built once; an unusable token is reported on every call rather than
    /// panicking at start-up, since `new` cannot fail.
    authorization: Result<Option<HeaderValue>, String>,
}

impl fmt::Debug for KServeProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KServeProvider")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KServeProvider {
    /// `client` should be the process-wide client (connection pooling);
    /// per-exchange timeouts come from `config`.
    pub fn new(config: KServeConfig, client: reqwest::Client) -> Self {
        let authorization = match &config.bearer {
            None => Ok(None),
            Some(token) => {
                http::credential_header(&format!("Bearer {token}"), "KServe bearer token").map(Some)
            }
        };
        Self {
            config,
            client,
            authorization,
        }
    }

    /// Whether the server and `model` (`name` or `name/version`) are ready
    /// to infer: `GET /v2/health/ready`, then the model's `/ready`. Any
    /// answer but 2xx (and 401/403) is "no".
    ///
    /// # Errors
    ///
    /// An invalid model name; refused credentials; no answer at all.
    #[tracing::instrument(name = "kserve_ready", skip_all, fields(provider = "kserve", model = %model))]
    pub async fn ready(&self, model: &str) -> Result<bool, ProviderError> {
        let path = model_path(model)?;
        if !self.probe("v2/health/ready").await? {
            return Ok(false);
        }
        self.probe(&format!("{path}/ready")).await
    }

    /// The model's declared inputs and outputs (`GET /v2/models/{m}`).
    ///
    /// # Errors
    ///
    /// As [`Provider::generate`] classifies answers (a missing model is
    /// [`ProviderError::Unavailable`]); a body that is not metadata is
    /// [`ProviderError::Malformed`].
    #[tracing::instrument(name = "kserve_metadata", skip_all, fields(provider = "kserve", model = %model))]
    pub async fn metadata(&self, model: &str) -> Result<ModelMetadata, ProviderError> {
        let path = model_path(model)?;
        let builder = self.client.get(self.url(&path)?);
        let response = self.send(builder, None).await?;
        let response = check_status(response, "model metadata", false, &self.secrets(None)).await?;
        http::read_json(response, CONTROL_BODY_LIMIT, None, "model metadata").await
    }

    /// Checks, for the worker's readiness probe, that `model` speaks this
    /// client's contract: the configured image input and output exist with
    /// datatype BYTES, each input takes shape `[1]`, and the optional
    /// inputs it declares are BYTES too.
    ///
    /// # Errors
    ///
    /// [`ProviderError::Malformed`] naming the tensor, what was expected
    /// and what was found; the errors of [`metadata`](Self::metadata).
    pub async fn check_contract(&self, model: &str) -> Result<Contract, ProviderError> {
        let metadata = self.metadata(model).await?;
        contract(&self.config, model, &metadata)
    }

    /// GETs a health path: true for 2xx, false for other answers.
    async fn probe(&self, path: &str) -> Result<bool, ProviderError> {
        let builder = self.client.get(self.url(path)?);
        let response = self.send(builder, None).await?;
        let status = response.status();
        match status.as_u16() {
            200..=299 => Ok(true),
            401 | 403 => Err(ProviderError::Unauthorized {
                message: format!("readiness check answered HTTP {}", status.as_u16()),
            }),
            code => {
                tracing::debug!(status = code, "readiness check answered not ready");
                Ok(false)
            }
        }
    }

    /// What an error message must not echo: the bearer and, with a
    /// request, its prompt.
    fn secrets<'a>(&'a self, request: Option<&'a GenerationRequest>) -> Secrets<'a> {
        Secrets::new(self.config.bearer.as_deref(), request)
    }

    /// `{base}/{path}`; `path` is built from a validated model name.
    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        let base = self.config.base_url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/{path}")).map_err(|_| ProviderError::Unsupported {
            message: "the model does not form a valid URL with the KServe base URL".into(),
        })
    }

    /// Sends with the bearer (if any) and the configured timeout, cut short
    /// by the deadline.
    async fn send(
        &self,
        builder: RequestBuilder,
        deadline: Option<Instant>,
    ) -> Result<Response, ProviderError> {
        let builder = match &self.authorization {
            Ok(Some(value)) => builder.header(AUTHORIZATION, value.clone()),
            Ok(None) => builder,
            Err(message) => {
                return Err(ProviderError::Unauthorized {
                    message: message.clone(),
                })
            }
        };
        http::send(builder, self.config.request_timeout, deadline).await
    }

    #[tracing::instrument(
        name = "kserve_generate",
        skip_all,
        fields(provider = "kserve", job_id = %request.job_id, model = %request.model)
    )]
    async fn infer(&self, request: &GenerationRequest) -> Result<GenerationOutput, ProviderError> {
        check_parameters(request, &self.config)?;
        let path = model_path(&request.model)?;
        let encoded = {
            let loaded = request.load_inputs().await?;
            let inputs = build_inputs(&loaded, &self.config)?;
            encode_request(&loaded, &inputs, &self.config)?
        };
        let url = self.url(&format!("{path}/infer"))?;
        let mut builder = self.client.post(url);
        builder = match encoded.header_len {
            Some(len) => builder
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(HEADER_LENGTH, len),
            None => builder.header(CONTENT_TYPE, "application/json"),
        };
        let deadline = request.deadline;
        let response = self.send(builder.body(encoded.body), deadline).await?;
        let response = check_status(
            response,
            "infer",
            encoded.timeout_from_deadline,
            &self.secrets(Some(request)),
        )
        .await?;
        let header_len = response
            .headers()
            .get(HEADER_LENGTH)
            .map(|value| value.to_str().unwrap_or("?").to_owned());
        // Base64 in JSON answers takes 4 bytes per 3, within the JSON
        // around it; binary answers take less.
        let limit =
            http::inline_answer_limit(self.config.max_output_bytes, u64::from(request.count));
        let body = read_body(response, limit, deadline, || ProviderError::Rejected {
            message: format!("infer answer is larger than the {limit} byte limit"),
        })
        .await?;
        let answer = parse_answer(&self.config, header_len.as_deref(), body)?;
        tracing::debug!(
            artifacts = answer.images.len(),
            binary = header_len.is_some(),
            "kserve infer completed"
        );
        let artifacts = http::keep_asked("kserve", answer.images, request.count)
            .into_iter()
            .map(|bytes| Artifact {
                content_type: sniff_content_type(&bytes).to_owned(),
                bytes: bytes.into(),
            })
            .collect();
        Ok(GenerationOutput {
            artifacts,
            attempts: 1,
            request_id: answer.id,
        })
    }
}

#[async_trait::async_trait]
impl Provider for KServeProvider {
    fn name(&self) -> &str {
        "kserve"
    }

    async fn generate(
        &self,
        request: &GenerationRequest,
    ) -> Result<GenerationOutput, ProviderError> {
        self.infer(request).await
    }
}

/// `v2/models/{name}[/versions/{version}]` after checking that `model` is
/// `name` or `name/version` of `[A-Za-z0-9._-]` segments, so a model name
/// cannot point a request (and the bearer) elsewhere.
fn model_path(model: &str) -> Result<String, ProviderError> {
    let valid = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    let segments: Vec<&str> = model.split('/').collect();
    match segments.as_slice() {
        [name] if valid(name) => Ok(format!("v2/models/{name}")),
        [name, version] if valid(name) && valid(version) => {
            Ok(format!("v2/models/{name}/versions/{version}"))
        }
        _ => Err(ProviderError::Unsupported {
            message: format!(
                "model {model:?} is not a KServe model name (name or name/version of [A-Za-z0-9._-])"
            ),
        }),
    }
}

mod answer;
mod contract;
mod request;
mod status;

pub(crate) use self::answer::*;
pub(crate) use self::contract::*;
pub(crate) use self::request::*;
pub(crate) use self::status::*;

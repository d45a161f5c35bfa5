//! [`KServeProvider`]: its configuration, the model contract check, the
//! request in binary or JSON form and the classification of each answer.

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

/// One input tensor: shape `[1]`, datatype BYTES, one element.
#[derive(Debug)]
pub(crate) struct Input<'a> {
    pub(crate) name: &'a str,
    pub(crate) element: Element<'a>,
}

/// The one element of an input tensor.
pub(crate) enum Element<'a> {
    Image(&'a [u8]),
    Text(&'a str),
}

// Image bytes and prompts are customer content: sizes only.
impl fmt::Debug for Element<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Image(bytes) => write!(f, "Image({} bytes)", bytes.len()),
            Self::Text(text) => write!(f, "Text({} bytes)", text.len()),
        }
    }
}

impl Element<'_> {
    /// The element's bytes in binary form.
    fn raw(&self) -> &[u8] {
        match self {
            Self::Image(bytes) => bytes,
            Self::Text(text) => text.as_bytes(),
        }
    }

    /// The element as a JSON string: base64 for an image (raw image bytes
    /// are not UTF-8), the text itself for the prompt.
    fn json(&self) -> Value {
        match self {
            Self::Image(bytes) => Value::String(encode_base64(bytes)),
            Self::Text(text) => Value::String((*text).to_owned()),
        }
    }
}

/// The input tensors for `request`, by job kind (see the module docs).
///
/// # Errors
///
/// [`ProviderError::Unsupported`] when the kind needs an input the request
/// lacks, or is not served by the GPU pool without one.
pub(crate) fn build_inputs<'a>(
    request: &'a GenerationRequest,
    config: &'a KServeConfig,
) -> Result<Vec<Input<'a>>, ProviderError> {
    let first = |role: InputRole| request.inputs.iter().find(|input| input.role == role);
    let missing = |what: &str| ProviderError::Unsupported {
        message: format!(
            "a {kind:?} job needs {what}, and the request has none",
            kind = request.kind
        ),
    };
    let image = |input: &'a InputImage, name: &'a str| -> Result<Input<'a>, ProviderError> {
        Ok(Input {
            name,
            element: Element::Image(input_bytes(input)?),
        })
    };
    let mut inputs = Vec::with_capacity(4);
    if request.kind == JobKind::VirtualTryOn {
        let person = first(InputRole::Person).ok_or_else(|| missing("a person image"))?;
        let garment = first(InputRole::Garment).ok_or_else(|| missing("a garment image"))?;
        inputs.push(image(person, &config.image_input)?);
        inputs.push(image(garment, &config.second_image_input)?);
    } else {
        let primary = request
            .inputs
            .iter()
            .find(|input| matches!(input.role, InputRole::Product | InputRole::Person))
            .or_else(|| first(InputRole::Reference));
        match (primary, request.kind) {
            (Some(primary), _) => inputs.push(image(primary, &config.image_input)?),
            (None, JobKind::ProductPhoto | JobKind::ImageToVideo) => {
                return Err(ProviderError::Unsupported {
                    message: format!(
                        "a {kind:?} job without an input image is not served by the GPU pool: its models only transform input images",
                        kind = request.kind
                    ),
                })
            }
            (None, _) => return Err(missing("an input image (product, person or reference)")),
        }
        if request.kind == JobKind::Inpaint {
            let mask = first(InputRole::Mask).ok_or_else(|| missing("a mask image"))?;
            inputs.push(image(mask, &config.mask_input)?);
        }
    }
    if !request.prompt.is_empty() {
        inputs.push(Input {
            name: &config.prompt_input,
            element: Element::Text(&request.prompt),
        });
    }
    Ok(inputs)
}

/// An infer request ready to send.
pub(crate) struct Encoded {
    pub(crate) body: Vec<u8>,
    /// The JSON header's length, for `Inference-Header-Content-Length`, in
    /// binary form; `None` for a JSON body.
    pub(crate) header_len: Option<usize>,
    /// The `timeout` parameter sent is the time left before the job's
    /// deadline (not `request_timeout`), so its expiry is the deadline's.
    pub(crate) timeout_from_deadline: bool,
}

/// Refuses parameters that set what the worker owns, the configured
/// tensor names included (see the module docs).
///
/// # Errors
///
/// [`ProviderError::Unsupported`] naming the key, or the bound exceeded.
pub(crate) fn check_parameters(
    request: &GenerationRequest,
    config: &KServeConfig,
) -> Result<(), ProviderError> {
    params::check(&request.parameters, &OWNED, &tensor_names(config))
}

/// The configured tensor names: owned too, though known only at run time.
pub(crate) fn tensor_names(config: &KServeConfig) -> [&str; 5] {
    [
        config.image_input.as_str(),
        config.mask_input.as_str(),
        config.second_image_input.as_str(),
        config.prompt_input.as_str(),
        config.output.as_str(),
    ]
}

/// Encodes the infer request in the configured form.
///
/// # Errors
///
/// [`ProviderError::Unsupported`] for parameters that set what the worker
/// owns, or an input too large for a BYTES element (4 GiB).
pub(crate) fn encode_request(
    request: &GenerationRequest,
    inputs: &[Input<'_>],
    config: &KServeConfig,
) -> Result<Encoded, ProviderError> {
    check_parameters(request, config)?;
    let mut parameters = request.parameters.clone();
    if let Some(priority) = config.priority {
        parameters.insert("priority".into(), Value::from(priority));
    }
    if request.count > 1 {
        parameters.insert(COUNT_PARAMETER.into(), Value::from(request.count));
    }
    let mut timeout_from_deadline = false;
    if let Some(deadline) = request.deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        timeout_from_deadline = left <= config.request_timeout;
        let micros = left.min(config.request_timeout).as_micros();
        let micros = u64::try_from(micros).unwrap_or(u64::MAX).max(1);
        parameters.insert("timeout".into(), micros.into());
    }

    let tensors: Vec<Value> = inputs
        .iter()
        .map(|input| {
            let mut tensor = json!({"name": input.name, "shape": [1], "datatype": "BYTES"});
            if config.binary {
                let size = encoded_len(&[input.element.raw()]);
                tensor["parameters"] = json!({ "binary_data_size": size });
            } else {
                tensor["data"] = json!([input.element.json()]);
            }
            tensor
        })
        .collect();
    let mut output = json!({ "name": config.output });
    if config.binary {
        output["parameters"] = json!({ "binary_data": true });
    }
    let mut header = Map::new();
    if !request.job_id.is_empty() {
        header.insert("id".into(), request.job_id.clone().into());
    }
    if !parameters.is_empty() {
        header.insert("parameters".into(), Value::Object(parameters));
    }
    header.insert("inputs".into(), Value::Array(tensors));
    header.insert("outputs".into(), Value::Array(vec![output]));
    let mut body =
        serde_json::to_vec(&Value::Object(header)).map_err(|err| ProviderError::Unsupported {
            message: format!("the infer request could not be encoded: {err}"),
        })?;
    if !config.binary {
        return Ok(Encoded {
            body,
            header_len: None,
            timeout_from_deadline,
        });
    }
    let header_len = body.len();
    for input in inputs {
        encode_bytes_elements(&[input.element.raw()], &mut body).map_err(|err| {
            ProviderError::Unsupported {
                message: format!("input {:?}: {err}", input.name),
            }
        })?;
    }
    Ok(Encoded {
        body,
        header_len: Some(header_len),
        timeout_from_deadline,
    })
}

/// The JSON part of an infer answer, as far as this client reads it.
#[derive(Debug, Deserialize)]
struct InferAnswer {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    outputs: Vec<OutputTensor>,
}

#[derive(Debug, Deserialize)]
struct OutputTensor {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

impl OutputTensor {
    fn binary_data_size(&self) -> Result<Option<u64>, String> {
        match self.parameters.get("binary_data_size") {
            None => Ok(None),
            Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                format!(
                    "output {:?} has binary_data_size {value}, expected a byte count",
                    self.name
                )
            }),
        }
    }
}

/// The images of an infer answer, and its id.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) id: Option<String>,
    pub(crate) images: Vec<Bytes>,
}

fn malformed(message: String) -> ProviderError {
    ProviderError::Malformed { message }
}

/// Reads an infer answer: JSON only, or (with `header_len`, the value of
/// `Inference-Header-Content-Length`) a JSON header followed by the binary
/// outputs in order. Takes the configured output's elements.
///
/// # Errors
///
/// [`ProviderError::Malformed`] for a body that does not add up or lacks
/// the output, a datatype other than BYTES, a shape other than `[1]`, `[N]`
/// or `[1, N]`, or elements that do not match it; an image above
/// `max_output_bytes` as a rejection.
pub(crate) fn parse_answer(
    config: &KServeConfig,
    header_len: Option<&str>,
    body: Bytes,
) -> Result<Answer, ProviderError> {
    let (json, sections) = match header_len {
        Some(raw) => {
            let len: usize = raw.trim().parse().map_err(|_| {
                malformed(format!(
                    "infer answer's Inference-Header-Content-Length is {raw:?}, expected a byte count"
                ))
            })?;
            split_body(&body, len).map_err(|err| malformed(format!("infer answer: {err}")))?
        }
        None => (body, Bytes::new()),
    };
    let answer: InferAnswer = serde_json::from_slice(&json).map_err(|err| {
        malformed(format!(
            "infer answer is not the expected JSON: {}",
            json_problem(&err)
        ))
    })?;
    let sizes = answer
        .outputs
        .iter()
        .map(|output| Ok((output.name.as_str(), output.binary_data_size()?)))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|err| malformed(format!("infer answer: {err}")))?;
    if header_len.is_none() {
        if let Some((name, _)) = sizes.iter().find(|(_, size)| size.is_some()) {
            return Err(malformed(format!(
                "infer answer: output {name:?} has a binary_data_size, but the answer has no Inference-Header-Content-Length"
            )));
        }
    }
    let parts = take_sections(&sections, &sizes)
        .map_err(|err| malformed(format!("infer answer: {err}")))?;

    let wanted = config.output.as_str();
    let Some((output, part)) = answer
        .outputs
        .iter()
        .zip(parts)
        .find(|(output, _)| output.name == wanted)
    else {
        let found: Vec<&str> = answer.outputs.iter().map(|o| o.name.as_str()).collect();
        return Err(malformed(format!(
            "infer answer has no output {wanted:?}; found {found:?}"
        )));
    };
    if output.datatype != "BYTES" {
        return Err(malformed(format!(
            "output {wanted:?} has datatype {}, expected BYTES",
            output.datatype
        )));
    }
    let count = image_count(wanted, &output.shape)?;
    let images = match part {
        Some(data) => decode_bytes_elements(&data, count)
            .map_err(|err| malformed(format!("output {wanted:?}: {err}")))?,
        None => json_elements(wanted, output.data.as_ref(), count)?,
    };
    for image in &images {
        check_size(image.len() as u64, config.max_output_bytes)?;
    }
    Ok(Answer {
        id: answer.id,
        images,
    })
}

/// The number of images a BYTES output of `shape` holds: `[N]` or `[1, N]`.
fn image_count(name: &str, shape: &[i64]) -> Result<usize, ProviderError> {
    let count = match shape {
        [n] | [1, n] => *n,
        _ => {
            return Err(malformed(format!(
                "output {name:?} has shape {shape:?}, expected [1], [N] or [1, N]"
            )))
        }
    };
    match usize::try_from(count) {
        Ok(count) if (1..=MAX_OUTPUT_IMAGES).contains(&count) => Ok(count),
        _ => Err(malformed(format!(
            "output {name:?} has shape {shape:?}, expected between 1 and {MAX_OUTPUT_IMAGES} images"
        ))),
    }
}

/// The elements of a BYTES output sent in JSON: base64 strings (see the
/// module docs), flat or nested once as for shape `[1, N]`.
fn json_elements(
    name: &str,
    data: Option<&Value>,
    expected: usize,
) -> Result<Vec<Bytes>, ProviderError> {
    let data = data.ok_or_else(|| {
        malformed(format!(
            "output {name:?} has neither data nor a binary_data_size"
        ))
    })?;
    let mut strings = Vec::new();
    collect_strings(data, 0, &mut strings)
        .map_err(|err| malformed(format!("output {name:?}: {err}")))?;
    if strings.len() != expected {
        return Err(malformed(format!(
            "output {name:?}: expected {expected} element(s) by its shape, found {}",
            strings.len()
        )));
    }
    strings
        .iter()
        .enumerate()
        .map(|(index, text)| http::decode_base64(text, &format!("output {name:?} element {index}")))
        .collect()
}

fn collect_strings<'a>(
    value: &'a Value,
    depth: usize,
    out: &mut Vec<&'a str>,
) -> Result<(), String> {
    match value {
        Value::String(text) => {
            out.push(text);
            Ok(())
        }
        Value::Array(items) if depth < 2 => items
            .iter()
            .try_for_each(|item| collect_strings(item, depth + 1, out)),
        Value::Array(_) => Err("data is nested deeper than its shape allows".into()),
        other => Err(format!(
            "expected string elements, found {}",
            json_kind(other)
        )),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks a model's metadata against the configured contract.
pub(crate) fn contract(
    config: &KServeConfig,
    model: &str,
    metadata: &ModelMetadata,
) -> Result<Contract, ProviderError> {
    let find = |list: &'_ [TensorMetadata], name: &str| {
        list.iter().find(|tensor| tensor.name == name).cloned()
    };
    let names = |list: &[TensorMetadata]| -> Vec<String> {
        list.iter().map(|tensor| tensor.name.clone()).collect()
    };
    let bytes = |kind: &str, tensor: &TensorMetadata| {
        if tensor.datatype == "BYTES" {
            Ok(())
        } else {
            Err(malformed(format!(
                "{kind} {:?} of model {model:?} has datatype {}, expected BYTES",
                tensor.name, tensor.datatype
            )))
        }
    };
    let input = |name: &str, required: bool| -> Result<bool, ProviderError> {
        let Some(tensor) = find(&metadata.inputs, name) else {
            if required {
                return Err(malformed(format!(
                    "model {model:?} has no input {name:?}; found inputs {:?}",
                    names(&metadata.inputs)
                )));
            }
            return Ok(false);
        };
        bytes("input", &tensor)?;
        if !matches!(tensor.shape.as_slice(), [1] | [-1]) {
            return Err(malformed(format!(
                "input {name:?} of model {model:?} has shape {:?}, expected [1] or [-1] (one element, no batch dimension)",
                tensor.shape
            )));
        }
        Ok(true)
    };
    input(&config.image_input, true)?;
    let sent = [
        config.image_input.as_str(),
        config.mask_input.as_str(),
        config.second_image_input.as_str(),
        config.prompt_input.as_str(),
    ];
    let contract = Contract {
        mask: input(&config.mask_input, false)?,
        second_image: input(&config.second_image_input, false)?,
        prompt: input(&config.prompt_input, false)?,
        other_inputs: metadata
            .inputs
            .iter()
            .map(|tensor| tensor.name.as_str())
            .filter(|name| !sent.contains(name))
            .map(str::to_owned)
            .collect(),
    };
    let output = find(&metadata.outputs, &config.output).ok_or_else(|| {
        malformed(format!(
            "model {model:?} has no output {:?}; found outputs {:?}",
            config.output,
            names(&metadata.outputs)
        ))
    })?;
    bytes("output", &output)?;
    if !matches!(output.shape.len(), 1 | 2) {
        return Err(malformed(format!(
            "output {:?} of model {model:?} has shape {:?}, expected [N] or [1, N]",
            output.name, output.shape
        )));
    }
    Ok(contract)
}

/// Passes 2xx answers through and turns any other into its error.
async fn check_status(
    response: Response,
    stage: &str,
    timeout_from_deadline: bool,
    secrets: &Secrets<'_>,
) -> Result<Response, ProviderError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let body = http::error_body(response).await;
    Err(status_error(
        stage,
        status,
        &headers,
        &body,
        timeout_from_deadline,
        secrets,
    ))
}

/// Classifies a non-2xx answer (see the module docs).
pub(crate) fn status_error(
    stage: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    timeout_from_deadline: bool,
    secrets: &Secrets<'_>,
) -> ProviderError {
    let code = status.as_u16();
    let raw = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|json| json.get("error")?.as_str().map(str::to_owned));
    let mut message = format!("{stage} answered HTTP {code}");
    if let Some(detail) = raw.as_deref().map(|raw| http::summary(raw, secrets)) {
        if !detail.is_empty() {
            message.push_str(": ");
            message.push_str(&detail);
        }
    }
    // Triton's markers are looked for in its own words, not the summary.
    let lower = raw
        .map(|raw| http::truncate(&raw, 4096).to_lowercase())
        .unwrap_or_default();
    if lower.contains("exceeds maximum queue size") {
        // Backpressure, not a failing model: the breaker must not open on
        // a busy server, and the guard's bucket slows down instead. Triton
        // sends no Retry-After; the retry policy's jittered backoff
        // spreads the workers out.
        return ProviderError::RateLimited {
            message,
            retry_after: None,
        };
    }
    if lower.contains("timeout expired") {
        return if timeout_from_deadline {
            ProviderError::DeadlineExceeded
        } else {
            ProviderError::Unavailable {
                message,
                retry_after: None,
            }
        };
    }
    match code {
        401 | 403 => ProviderError::Unauthorized { message },
        // The model is missing from our own server: an operator's problem,
        // and retryable so the job can fail over to a remote provider.
        404 => ProviderError::Unavailable {
            message,
            retry_after: retry_after_header(headers),
        },
        400 if MODEL_UNAVAILABLE
            .iter()
            .any(|marker| lower.contains(marker)) =>
        {
            ProviderError::Unavailable {
                message,
                retry_after: retry_after_header(headers),
            }
        }
        _ => http::classify_status(status, message, retry_after_header(headers)),
    }
}

//! [`OpenAiProvider`]: its configuration, the call per job kind, the
//! hand-built multipart body and the classification of each answer.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::time::Instant;
use url::Url;

use crate::http::{self, decode_base64, input_bytes, read_body, truncate, Secrets};
use crate::params::{self, Owned, COUNT_KEYS, DELIVERY_KEYS, PROMPT_KEYS, SAFETY_KEYS};
use crate::reread::{read_again, Failure};
use crate::{
    Artifact, GenerationOutput, GenerationRequest, InputImage, InputRole, JobKind, Provider,
    ProviderError, Spool,
};

/// The name in logs and metric labels.
const PROVIDER: &str = "openai";

/// First pause before fetching an output URL again after a failed
/// download (doubling, see `reread`): the image is rendered and billed, so
/// a reset or a transfer cut short is read again, not rendered again.
const OUTPUT_READ_PACE: Duration = Duration::from_millis(200);
/// Codes OpenAI gives a prompt or image its safety system refused.
const POLICY_CODES: [&str; 2] = ["content_policy_violation", "moderation_blocked"];
/// Codes of a 429 that is an account problem, not a rate: retrying cannot
/// help until someone pays or raises the limit.
const QUOTA_CODES: [&str; 2] = ["insufficient_quota", "billing_hard_limit_reached"];

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

/// Connection settings for an OpenAI-compatible images API.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// API root; `https://api.openai.com/` for OpenAI itself. Paths
    /// `v1/images/...` are appended.
    pub base_url: Url,
    /// API key, sent as `Authorization: Bearer <key>`. Never logged; `Debug`
    /// prints `[redacted]`.
    pub api_key: String,
    /// Sent as `OpenAI-Organization` when set.
    pub organization: Option<String>,
    /// Upper bound on one exchange (the generation or edit itself, or one
    /// download), body included. The job deadline may cut it shorter.
    pub request_timeout: Duration,
    /// Largest output image accepted; a bigger one fails the attempt.
    pub max_output_bytes: u64,
}

impl OpenAiConfig {
    /// OpenAI's production API.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.openai.com/";
}

impl Default for OpenAiConfig {
    /// Production endpoint, no key, 120 s per exchange (high-quality edits
    /// take a minute or more) and a 50 MB cap per image (the largest
    /// lossless 1536x1024 image is under 5 MB).
    fn default() -> Self {
        Self {
            base_url: Url::parse(Self::DEFAULT_BASE_URL)
                .expect("the default OpenAI base URL is a valid URL literal"),
            api_key: String::new(),
            organization: None,
            request_timeout: Duration::from_secs(120),
            max_output_bytes: 50 * 1024 * 1024,
        }
    }
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url.as_str())
            .field("api_key", &"[redacted]")
            .field("organization", &self.organization)
            .field("request_timeout", &self.request_timeout)
            .field("max_output_bytes", &self.max_output_bytes)
            .finish()
    }
}

/// A [`Provider`] for OpenAI's images API and services that copy its shape.
pub struct OpenAiProvider {
    config: OpenAiConfig,
    client: reqwest::Client,
    /// Built once; unusable values are reported on every call rather than
    /// panicking at start-up, since `new` cannot fail.
    headers: Result<HeaderMap, String>,
    spool: Spool,
    /// How output URLs are fetched.
    downloads: std::sync::Arc<dyn http::Downloads>,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// `client` should be the process-wide client (connection pooling);
    /// per-exchange timeouts come from `config`.
    pub fn new(config: OpenAiConfig, client: reqwest::Client) -> Self {
        let headers = auth_headers(&config);
        Self {
            config,
            downloads: std::sync::Arc::new(http::DirectDownloads::new(client.clone())),
            client,
            headers,
            spool: Spool::memory_only(),
        }
    }

    /// Fetches output URLs through `downloads` (the worker's SSRF-guarded
    /// fetcher) instead of this client's own [`http::DirectDownloads`].
    #[must_use]
    pub fn with_downloads(mut self, downloads: std::sync::Arc<dyn http::Downloads>) -> Self {
        self.downloads = downloads;
        self
    }

    /// Copies outputs into `spool` (memory within its budget, files beyond)
    /// instead of holding each in memory until the caller is done with it.
    #[must_use]
    pub fn with_spool(mut self, spool: Spool) -> Self {
        self.spool = spool;
        self
    }
}

fn auth_headers(config: &OpenAiConfig) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    let authorization =
        http::credential_header(&format!("Bearer {}", config.api_key), "openai api key")?;
    headers.insert(AUTHORIZATION, authorization);
    if let Some(organization) = &config.organization {
        let value = HeaderValue::from_str(organization).map_err(|_| {
            "the configured openai organization contains characters not allowed in an HTTP header"
                .to_owned()
        })?;
        headers.insert("openai-organization", value);
    }
    Ok(headers)
}

#[async_trait::async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    #[tracing::instrument(
        name = "openai_generate",
        skip_all,
        fields(provider = PROVIDER, job_id = %request.job_id, request_id = tracing::field::Empty)
    )]
    async fn generate(
        &self,
        request: &GenerationRequest,
    ) -> Result<GenerationOutput, ProviderError> {
        let headers = self
            .headers
            .clone()
            .map_err(|message| ProviderError::Unauthorized { message })?;
        // Before the inputs are read back from the spool.
        params::check(&request.parameters, &OWNED, &[])?;
        let call = plan(&*request.load_inputs().await?)?;
        let deadline = request.deadline;
        let (builder, stage) = match call {
            Call::Generations(body) => {
                let url = self.endpoint("v1/images/generations")?;
                (self.client.post(url).json(&body), "generations")
            }
            Call::Edits(parts) => {
                let boundary = format!(
                    "genfleet-{:016x}{:016x}",
                    fastrand::u64(..),
                    fastrand::u64(..)
                );
                let body = encode_multipart(&parts, &boundary);
                let url = self.endpoint("v1/images/edits")?;
                let builder = self
                    .client
                    .post(url)
                    .header(
                        CONTENT_TYPE,
                        format!("multipart/form-data; boundary={boundary}"),
                    )
                    .body(body);
                (builder, "edits")
            }
        };
        let response = http::send(
            builder.headers(headers),
            self.config.request_timeout,
            deadline,
        )
        .await?;
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .map(|value| truncate(value, 100));
        if let Some(id) = &request_id {
            tracing::Span::current().record("request_id", id.as_str());
        }
        let secrets = Secrets::new(Some(&self.config.api_key), Some(request));
        let response = check_status(response, stage, &secrets).await?;
        // Images come inline as base64 (4 bytes per 3), `n` (the count) of
        // them.
        let limit =
            http::inline_answer_limit(self.config.max_output_bytes, u64::from(request.count));
        let body = read_body(response, limit, deadline, http::oversized("answer", limit)).await?;
        let answer: ImagesAnswer =
            serde_json::from_slice(&body).map_err(|err| ProviderError::Malformed {
                message: format!(
                    "{stage} answer is not the expected images JSON: {}",
                    http::json_problem(&err)
                ),
            })?;
        drop(body);
        let artifacts = self
            .artifacts(answer, request.count, deadline, request_id.as_deref())
            .await?;
        tracing::debug!(artifacts = artifacts.len(), "openai images answered");
        Ok(GenerationOutput {
            artifacts,
            attempts: 1,
            request_id,
        })
    }
}

/// `{created, data: [{b64_json} | {url}], output_format?}`.
#[derive(Debug, Deserialize)]
struct ImagesAnswer {
    data: Vec<ImageData>,
    /// gpt-image models say which format the base64 holds.
    #[serde(default)]
    output_format: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ImageData {
    #[serde(default)]
    b64_json: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

impl OpenAiProvider {
    /// `{base}/{path}` for one of this module's fixed paths.
    fn endpoint(&self, path: &str) -> Result<Url, ProviderError> {
        let base = self.config.base_url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/{path}")).map_err(|_| ProviderError::Unsupported {
            message: "the configured openai base URL does not form a valid endpoint URL".into(),
        })
    }

    /// Decodes or downloads each image of the answer, in order, the first
    /// `count` only. A download that fails (reset, cut short, a 5xx of the
    /// file host, a timeout) is fetched again from the same URL until the
    /// deadline: the images are rendered and billed, and failing the
    /// attempt would make the caller render (and pay for) them again. Only
    /// the file host's verdict (a 403/404: the URL expired) fails it.
    async fn artifacts(
        &self,
        answer: ImagesAnswer,
        count: u32,
        deadline: Option<Instant>,
        request_id: Option<&str>,
    ) -> Result<Vec<Artifact>, ProviderError> {
        if answer.data.is_empty() {
            return Err(ProviderError::Malformed {
                message: "answer holds no images, expected at least one".into(),
            });
        }
        let declared = answer.output_format.as_deref().and_then(format_type);
        let data = http::keep_asked(PROVIDER, answer.data, count);
        let mut artifacts = Vec::with_capacity(data.len());
        for image in data {
            let artifact = match (image.b64_json, image.url) {
                (Some(data), _) => {
                    let bytes = decode_base64(&data, "an answer image")?;
                    http::check_size(bytes.len() as u64, self.config.max_output_bytes)?;
                    let content_type = declared
                        .or_else(|| sniff(&bytes))
                        .unwrap_or("image/png")
                        .to_owned();
                    Artifact {
                        content_type,
                        bytes: http::keep(&self.spool, bytes).await?,
                    }
                }
                // No Authorization header: the file host is not the API.
                (None, Some(url)) => {
                    let read = read_again(
                        PROVIDER,
                        request_id.unwrap_or("-"),
                        "output",
                        deadline,
                        OUTPUT_READ_PACE,
                        || {
                            http::fetch_output(
                                self.downloads.as_ref(),
                                &self.spool,
                                &url,
                                None,
                                self.config.request_timeout,
                                self.config.max_output_bytes,
                                deadline,
                            )
                        },
                    )
                    .await;
                    match read {
                        Ok(artifact) => artifact,
                        // No request to keep for a later attempt: an
                        // answer's URLs live only in this attempt.
                        Err(Failure::Judged(error) | Failure::Unread(error)) => return Err(error),
                    }
                }
                (None, None) => {
                    return Err(ProviderError::Malformed {
                        message: "an answer image has neither b64_json nor url".into(),
                    })
                }
            };
            artifacts.push(artifact);
        }
        Ok(artifacts)
    }
}

/// `image/…` for an `output_format` value.
fn format_type(format: &str) -> Option<&'static str> {
    match format.to_ascii_lowercase().as_str() {
        "png" => Some("image/png"),
        "jpeg" | "jpg" => Some("image/jpeg"),
        "webp" => Some("image/webp"),
        _ => None,
    }
}

/// The image type by its magic bytes.
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

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
fn common_fields(request: &GenerationRequest) -> Vec<(&'static str, Value)> {
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
fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn file_part(name: &str, image: &InputImage) -> Result<Part, ProviderError> {
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
fn primary_image(request: &GenerationRequest) -> Option<&InputImage> {
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
fn quote(text: &str) -> String {
    text.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Passes 2xx answers through and turns any other into its error.
async fn check_status(
    response: Response,
    stage: &str,
    secrets: &Secrets<'_>,
) -> Result<Response, ProviderError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let body = http::error_body(response).await;
    Err(status_error(stage, status, &headers, &body, secrets))
}

/// Classifies a non-2xx answer:
/// - a 4xx whose code is a content-policy one (or whose type mentions
///   policy or safety) → `Rejected`, whatever the status, so a refusal is
///   never mistaken for a bad key;
/// - 429 with a quota or billing code → `Unauthorized`: an account problem
///   that retrying would only hammer;
/// - 429 → `RateLimited` after `retry-after-ms`, else `retry-after`;
/// - otherwise by status: 401/403 `Unauthorized`, 408/5xx `Unavailable`,
///   other 4xx (400 included) `Rejected`.
pub(crate) fn status_error(
    stage: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &Secrets<'_>,
) -> ProviderError {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = json.get("error").unwrap_or(&Value::Null);
    let field = |name: &str| {
        error
            .get(name)
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
    };
    let code = field("code");
    let error_type = field("type");
    let detail = field("message")
        .map(|text| http::summary(text, secrets))
        .filter(|text| !text.is_empty());
    let mut message = format!("{stage} answered HTTP {}", status.as_u16());
    if let Some(label) = code.or(error_type).map(http::label) {
        if !label.is_empty() {
            message.push_str(&format!(" ({label})"));
        }
    }
    if let Some(detail) = &detail {
        message.push_str(": ");
        message.push_str(detail);
    }
    let is_one_of = |set: &[&str]| {
        code.is_some_and(|code| set.contains(&code))
            || error_type.is_some_and(|kind| set.contains(&kind))
    };
    let policy = code.is_some_and(|code| POLICY_CODES.contains(&code))
        || error_type.is_some_and(|kind| {
            let kind = kind.to_ascii_lowercase();
            kind.contains("policy") || kind.contains("safety")
        });
    if status == StatusCode::TOO_MANY_REQUESTS {
        if is_one_of(&QUOTA_CODES) {
            return ProviderError::Unauthorized { message };
        }
        return ProviderError::RateLimited {
            message,
            retry_after: retry_after_ms(headers).or_else(|| http::retry_after_header(headers)),
        };
    }
    if policy && status.is_client_error() {
        return ProviderError::Rejected { message };
    }
    http::classify_status(status, message, http::retry_after_header(headers))
}

/// OpenAI's `retry-after-ms` header (milliseconds, possibly fractional),
/// at most [`MAX_HINT`](crate::hint::MAX_HINT); never a panic for a huge
/// value (`Duration::from_secs_f64` used to panic on `1e300`).
fn retry_after_ms(headers: &HeaderMap) -> Option<Duration> {
    let value: f64 = headers
        .get("retry-after-ms")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    crate::hint::from_secs_f64(value / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn body(code: &str, kind: &str) -> String {
        serde_json::json!({"error": {"message": "m", "type": kind, "code": code, "param": null}})
            .to_string()
    }

    #[test]
    fn classifies_errors() {
        let none = HeaderMap::new();
        let check = |code: u16, headers: &HeaderMap, body: &str, expected: &str| {
            let err = status_error(
                "generations",
                StatusCode::from_u16(code).unwrap(),
                headers,
                body.as_bytes(),
                &Secrets::default(),
            );
            assert_eq!(
                format!("{err:?}").split([' ', '{']).next().unwrap(),
                expected,
                "{code} {body}: {err}"
            );
            err
        };
        check(
            400,
            &none,
            &body("content_policy_violation", "invalid_request_error"),
            "Rejected",
        );
        check(
            400,
            &none,
            &body("moderation_blocked", "image_generation_user_error"),
            "Rejected",
        );
        check(403, &none, &body("", "content_policy_error"), "Rejected");
        check(
            400,
            &none,
            &body("invalid_value", "invalid_request_error"),
            "Rejected",
        );
        check(
            404,
            &none,
            &body("model_not_found", "invalid_request_error"),
            "Rejected",
        );
        check(
            401,
            &none,
            &body("invalid_api_key", "invalid_request_error"),
            "Unauthorized",
        );
        check(403, &none, "", "Unauthorized");
        check(
            429,
            &none,
            &body("insufficient_quota", "insufficient_quota"),
            "Unauthorized",
        );
        check(
            429,
            &none,
            &body("billing_hard_limit_reached", "invalid_request_error"),
            "Unauthorized",
        );
        check(500, &none, &body("", "server_error"), "Unavailable");
        check(503, &none, "<html>", "Unavailable");
        let err = check(
            429,
            &headers(&[("retry-after-ms", "250"), ("retry-after", "1")]),
            &body("rate_limit_exceeded", "requests"),
            "RateLimited",
        );
        assert_eq!(err.retry_after(), Some(Duration::from_millis(250)));
        let err = check(429, &headers(&[("retry-after", "3")]), "", "RateLimited");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
        let err = check(429, &none, "", "RateLimited");
        assert_eq!(err.retry_after(), None);
    }

    /// `1e300` used to panic in `Duration::from_secs_f64`.
    #[test]
    fn hostile_retry_after_ms_is_clamped_not_a_panic() {
        let max = Some(crate::hint::MAX_HINT);
        for (value, expected) in [
            ("1e300", max),
            ("18446744073709551615", max),
            ("inf", max),
            ("-5", None),
            ("NaN", None),
            ("-inf", None),
            ("12.5", Some(Duration::from_micros(12_500))),
            ("soon", None),
        ] {
            assert_eq!(
                retry_after_ms(&headers(&[("retry-after-ms", value)])),
                expected,
                "{value}"
            );
        }
        assert_eq!(
            http::retry_after_header(&headers(&[("retry-after", "18446744073709551615")])),
            max
        );
    }

    #[test]
    fn builds_messages_from_the_error_body() {
        let err = status_error(
            "edits",
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"error":{"message":"Your request was rejected by the safety system.","type":"image_generation_user_error","code":"moderation_blocked"}}"#,
            &Secrets::default(),
        );
        assert_eq!(
            err.to_string(),
            "provider rejected the request: edits answered HTTP 400 (moderation_blocked): Your request was rejected by the safety system."
        );
    }

    #[test]
    fn maps_aspect_ratios_to_sizes() {
        assert_eq!(size_for("1:1"), Some("1024x1024"));
        for landscape in ["16:9", "3:2", "4:3"] {
            assert_eq!(size_for(landscape), Some("1536x1024"));
        }
        for portrait in ["9:16", "2:3", "3:4"] {
            assert_eq!(size_for(portrait), Some("1024x1536"));
        }
        assert_eq!(size_for("21:9"), None);
        assert_eq!(size_for(""), None);
    }

    #[test]
    fn frames_multipart_bodies() {
        let parts = vec![
            Part {
                name: "prompt".into(),
                body: PartBody::Text("erase \"it\"\r\nnow".into()),
            },
            Part {
                name: "we\"ird\r\nname".into(),
                body: PartBody::Text("1".into()),
            },
            Part {
                name: "image".into(),
                body: PartBody::File {
                    filename: "image.png".into(),
                    content_type: "image/png".into(),
                    bytes: Bytes::from_static(b"\x89PNG"),
                },
            },
        ];
        let body = encode_multipart(&parts, "XyZ");
        let expected = b"--XyZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nerase \"it\"\r\nnow\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"we%22ird%0D%0Aname\"\r\n\r\n1\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"image.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n\
--XyZ--\r\n";
        assert_eq!(body, expected.to_vec());
    }

    #[test]
    fn sniffs_image_types() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"GIF89a"), None);
    }

    #[test]
    fn debug_redacts_the_key() {
        let config = OpenAiConfig {
            api_key: "sk-secret-key-123".into(),
            ..OpenAiConfig::default()
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let provider = OpenAiProvider::new(config.clone(), reqwest::Client::new());
        for text in [format!("{config:?}"), format!("{provider:?}")] {
            assert!(!text.contains("sk-secret"), "{text}");
            assert!(text.contains("[redacted]"), "{text}");
        }
    }
}

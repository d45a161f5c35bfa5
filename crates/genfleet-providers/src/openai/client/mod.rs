//! [`OpenAiProvider`]: its configuration, the provider face and the
//! reading of a successful answer's images. The rest is split by concern:
//!
//! - [`request`]: the call per job kind and the hand-built multipart body;
//! - [`classify`]: what a non-2xx answer means.

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use crate::http::{self, decode_base64, read_body, truncate, Secrets};
use crate::params;
use crate::reread::{read_again, Failure};
use crate::{Artifact, GenerationOutput, GenerationRequest, Provider, ProviderError, Spool};

mod classify;
mod request;
#[cfg(test)]
mod tests;

use classify::check_status;
pub(crate) use request::{encode_multipart, plan, Call, OWNED};
#[cfg(test)]
pub(crate) use request::{Part, PartBody};

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

//! AI provider clients behind one [`Provider`] trait, plus the retry policy
//! that wraps them.
//!
//! This crate owns the providers' HTTP shapes: request bodies, status
//! polling, error bodies and the mapping of each failure to a
//! [`ProviderError`] class where it is born. It deliberately knows nothing of
//! the broker, billing or storage: a caller hands in a [`GenerationRequest`]
//! and gets back artifact bytes or a classified error.
//!
//! A [`Provider::generate`] call makes exactly one attempt; retries, backoff
//! and Retry-After handling live in [`generate_with_retries`] so that every
//! provider gets the same policy.
//!
//! [`Guarded`] wraps any provider in a circuit breaker per model, and a
//! concurrency limit and a per-process rate limit per provider, and is
//! itself a [`Provider`].
//!
//! Clients, one folder each (`fal/`, `replicate/`, `vertex/`, `openai/`,
//! `kserve/`: the client, its fake and its tests): [`FalProvider`] (fal's
//! queue API), [`ReplicateProvider`] (Replicate predictions, `Prefer:
//! wait`), [`VertexProvider`] (Imagen predict, virtual try-on, Gemini image
//! generation; OAuth tokens from a [`TokenSource`]), [`OpenAiProvider`]
//! (OpenAI-compatible image generations and masked edits) and
//! [`KServeProvider`] (Open Inference Protocol / KServe v2, Triton: the GPU
//! pool's own models). Each has a `Config` with the knobs they share where
//! they apply (`base_url`, a credential, `request_timeout`, `poll_interval`
//! for those that poll, `max_output_bytes`). The queue-style ones, fal and
//! Replicate, are also [`Resumable`]: the worker parks long renders on them
//! and cancels their requests, and a [`SubmissionLog`] lets a redelivered
//! job resume its request (see `resume`, which both share).
//!
//! With the `fake` feature, `fake_fal`, `fake_replicate`, `fake_vertex`,
//! `fake_openai` and `fake_kserve` serve real loopback HTTP servers shaped
//! like each provider's API, including its failure modes, for this crate's
//! and the workspace's tests.
#![forbid(unsafe_code)]

mod error;
mod guard;
mod hint;
mod http;
mod params;
mod reread;
mod resume;
mod retry;
mod spool;

mod fal;
mod kserve;
mod openai;
mod replicate;
mod vertex;

#[cfg(any(test, feature = "fake"))]
pub mod fake_faults;
#[cfg(any(test, feature = "fake"))]
mod fake_media;
#[cfg(test)]
mod fault_table;
#[cfg(test)]
mod hostile_table;
#[cfg(test)]
mod scripted;

// The fakes' public paths from before the providers had folders, which the
// workspace's tests and benches use.
#[cfg(any(test, feature = "fake"))]
pub use fal::fake as fake_fal;
#[cfg(any(test, feature = "fake"))]
pub use kserve::fake as fake_kserve;
#[cfg(any(test, feature = "fake"))]
pub use openai::fake as fake_openai;
#[cfg(any(test, feature = "fake"))]
pub use replicate::fake as fake_replicate;
#[cfg(any(test, feature = "fake"))]
pub use vertex::fake as fake_vertex;

use std::fmt;

pub use error::{DeferReason, Failed, ProviderError};
pub use fal::{FalConfig, FalProvider};
pub use guard::{BreakerState, GuardConfig, GuardSnapshot, Guarded};
pub use http::{DirectDownloads, DownloadError, Downloads};
pub use kserve::{Contract, KServeConfig, KServeProvider, ModelMetadata, TensorMetadata};
pub use openai::{OpenAiConfig, OpenAiProvider};
pub use replicate::{ReplicateConfig, ReplicateProvider};
pub use reread::repeated_reads;
pub use resume::{Checked, Resumable, SubmissionLog};
pub use retry::{call_with_retries, generate_with_retries, parse_retry_after, RetryPolicy};
pub use spool::{Blob, Spool, DOWNLOADS_AT_ONCE};
pub use vertex::{TokenSource, VertexConfig, VertexProvider};

/// What a job asks the provider to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    ProductPhoto,
    BackgroundRemoval,
    Upscale,
    Inpaint,
    VirtualTryOn,
    ImageToVideo,
    BatchEdit,
}

/// The part an input image plays in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputRole {
    Product,
    Person,
    Garment,
    Mask,
    Reference,
}

/// One input image, already fetched and validated by the caller.
#[derive(Clone)]
pub struct InputImage {
    pub role: InputRole,
    pub content_type: String,
    /// In memory or in the worker's spool: clients read it back through
    /// [`GenerationRequest::load_inputs`] right before building a request
    /// body, so a call that waits holds no image bytes.
    pub bytes: Blob,
}

impl InputImage {
    /// The image's bytes, read back from the spool if they wait there.
    ///
    /// # Errors
    /// [`ProviderError::Local`] when the spool file cannot be read (this
    /// machine's disk, not the provider: a later attempt may read it, and
    /// no breaker counts it).
    pub async fn load(&self) -> Result<bytes::Bytes, ProviderError> {
        self.bytes.bytes().await.map_err(|e| ProviderError::Local {
            message: format!("a spooled input could not be read: {e}"),
        })
    }
}

// Image bytes are never printed: they are large and may be customer content.
impl fmt::Debug for InputImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InputImage")
            .field("role", &self.role)
            .field("content_type", &self.content_type)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// One generation job, in provider-neutral terms.
#[derive(Clone)]
pub struct GenerationRequest {
    pub job_id: String,
    pub kind: JobKind,
    /// The provider's model name, in its own form: `owner/app[/path]` on fal
    /// (`fal-ai/flux/dev`), `owner/name[:version]` on Replicate, a bare model
    /// id on Vertex, OpenAI and KServe (`imagen-4.0-generate-001`).
    pub model: String,
    pub prompt: String,
    /// Sent only when non-empty.
    pub negative_prompt: String,
    pub seed: Option<u64>,
    /// Number of outputs to ask for.
    pub count: u32,
    /// Sent only when non-empty, e.g. `16:9`.
    pub aspect_ratio: String,
    /// Model-specific input fields, added to the fields a client builds.
    /// They may not set what the worker owns (inputs, prompt, output
    /// count, safety, delivery, the model): each client refuses such a key
    /// before sending anything, as it refuses parameters over 16 KiB or
    /// nested deeper than 8 levels (see each provider's module docs).
    pub parameters: serde_json::Map<String, serde_json::Value>,
    pub inputs: Vec<InputImage>,
    /// No provider call or retry sleep runs past this instant.
    pub deadline: Option<tokio::time::Instant>,
}

// Prompts are customer content and parameter values may be too, so Debug
// shows only their sizes and keys.
impl fmt::Debug for GenerationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parameter_keys: Vec<&str> = self.parameters.keys().map(String::as_str).collect();
        f.debug_struct("GenerationRequest")
            .field("job_id", &self.job_id)
            .field("kind", &self.kind)
            .field("model", &self.model)
            .field("prompt_len", &self.prompt.len())
            .field("negative_prompt_len", &self.negative_prompt.len())
            .field("seed", &self.seed)
            .field("count", &self.count)
            .field("aspect_ratio", &self.aspect_ratio)
            .field("parameter_keys", &parameter_keys)
            .field("inputs", &self.inputs)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl GenerationRequest {
    /// This request with every input's bytes in memory, for building a
    /// request body; borrowed as it is when none waits in a spool file.
    /// Callers drop the loaded copy as soon as the body is built.
    ///
    /// # Errors
    /// [`ProviderError::Local`] when a spool file cannot be read (this
    /// machine's disk: a later attempt may read it).
    pub async fn load_inputs(
        &self,
    ) -> Result<std::borrow::Cow<'_, GenerationRequest>, ProviderError> {
        if !self.inputs.iter().any(|input| input.bytes.is_spooled()) {
            return Ok(std::borrow::Cow::Borrowed(self));
        }
        let mut loaded = self.clone();
        for input in &mut loaded.inputs {
            if input.bytes.is_spooled() {
                input.bytes = Blob::from_bytes(input.load().await?);
            }
        }
        Ok(std::borrow::Cow::Owned(loaded))
    }
}

/// One produced file, already copied out of the provider's short-lived URL
/// (into the client's [`Spool`]: memory within its budget, else a file).
#[derive(Clone)]
pub struct Artifact {
    pub content_type: String,
    pub bytes: Blob,
}

impl fmt::Debug for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Artifact")
            .field("content_type", &self.content_type)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// A successful generation.
#[derive(Debug)]
pub struct GenerationOutput {
    pub artifacts: Vec<Artifact>,
    /// Provider calls made, counting the successful one.
    pub attempts: u32,
    /// The provider's id for the successful request, for support tickets.
    pub request_id: Option<String>,
}

/// One AI provider.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Stable, low-cardinality name used in logs and metric labels.
    fn name(&self) -> &str;

    /// Makes one attempt at `request` and returns its artifacts.
    ///
    /// # Errors
    ///
    /// A [`ProviderError`] classified where it was born: see
    /// [`ProviderError::is_retryable`] and [`ProviderError::code`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the attempt; work already submitted to
    /// the provider may still run (and be billed) there.
    async fn generate(
        &self,
        request: &GenerationRequest,
    ) -> Result<GenerationOutput, ProviderError>;

    /// The queue-style face of this provider, when it has one (fal and
    /// Replicate do): lets the worker park long renders and cancel requests.
    fn resumable(&self) -> Option<&dyn Resumable> {
        None
    }
}

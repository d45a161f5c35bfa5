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
//! Clients: [`FalProvider`] (fal's queue API), [`ReplicateProvider`]
//! (Replicate predictions, `Prefer: wait`), [`VertexProvider`] (Imagen
//! predict, virtual try-on, Gemini image generation; OAuth tokens from a
//! [`TokenSource`]), [`OpenAiProvider`] (OpenAI-compatible image generations
//! and masked edits) and [`KServeProvider`] (Open Inference Protocol / KServe
//! v2, Triton: the GPU pool's own models). fal and Replicate are also
//! [`Resumable`]: the worker parks long renders on them and cancels their
//! requests.
//!
//! With the `fake` feature, `fake_fal`, `fake_replicate`, `fake_vertex`,
//! `fake_openai` and `fake_kserve` serve real loopback HTTP servers shaped
//! like each provider's API, including its failure modes, for this crate's
//! and the workspace's tests.
#![forbid(unsafe_code)]

mod error;
mod fal;
mod guard;
mod http;
mod kserve;
mod kserve_tensor;
mod openai;
mod replicate;
mod retry;
mod spool;
mod vertex;
mod vertex_auth;

#[cfg(any(test, feature = "fake"))]
pub mod fake_fal;
#[cfg(any(test, feature = "fake"))]
pub mod fake_kserve;
#[cfg(any(test, feature = "fake"))]
pub mod fake_openai;
#[cfg(any(test, feature = "fake"))]
pub mod fake_replicate;
#[cfg(any(test, feature = "fake"))]
pub mod fake_vertex;
#[cfg(test)]
mod fal_resume_tests;
#[cfg(test)]
mod fal_tests;
#[cfg(test)]
mod guard_tests;
#[cfg(test)]
mod kserve_tests;
#[cfg(test)]
mod openai_tests;
#[cfg(test)]
mod replicate_tests;
#[cfg(test)]
mod scripted;
#[cfg(test)]
mod vertex_tests;

use std::fmt;

pub use error::{Failed, ProviderError};
pub use fal::{FalConfig, FalProvider};
pub use guard::{BreakerState, GuardConfig, GuardSnapshot, Guarded};
pub use kserve::{Contract, KServeConfig, KServeProvider, ModelMetadata, TensorMetadata};
pub use openai::{OpenAiConfig, OpenAiProvider};
pub use replicate::{ReplicateConfig, ReplicateProvider};
pub use retry::{call_with_retries, generate_with_retries, parse_retry_after, RetryPolicy};
pub use spool::{Blob, Spool, DOWNLOADS_AT_ONCE};
pub use vertex::{VertexConfig, VertexProvider};
pub use vertex_auth::TokenSource;

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
    /// [`ProviderError::Unavailable`] when the spool file cannot be read
    /// (this machine's disk: a later attempt may read it).
    pub async fn load(&self) -> Result<bytes::Bytes, ProviderError> {
        self.bytes
            .bytes()
            .await
            .map_err(|e| ProviderError::Unavailable {
                message: format!("a spooled input could not be read: {e}"),
                retry_after: None,
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
    /// Provider model path, for fal `owner/app[/path]` such as `fal-ai/flux/dev`.
    pub model: String,
    pub prompt: String,
    /// Sent only when non-empty.
    pub negative_prompt: String,
    pub seed: Option<u64>,
    /// Number of outputs to ask for.
    pub count: u32,
    /// Sent only when non-empty, e.g. `16:9`.
    pub aspect_ratio: String,
    /// Model-specific input fields, merged over the fields built here.
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
    /// [`ProviderError::Unavailable`] when a spool file cannot be read
    /// (this machine's disk: a later attempt may read it).
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
/// Remembers which provider request a job's generation is waiting on, so a
/// job redelivered after its worker died resumes that request instead of
/// submitting (and paying for) it again. A record lives while some worker
/// waits on the request or died waiting: a provider forgets it when it
/// returns an error (the next attempt must submit anew).
///
/// `submission` is the provider's own opaque resume data (for fal: the
/// request id and its status/result/cancel URLs). Errors are strings because
/// a failing log only costs idempotency, never the job: providers log them
/// and go on.
#[async_trait::async_trait]
pub trait SubmissionLog: Send + Sync {
    async fn recall(&self, job_id: &str, provider: &str) -> Result<Option<String>, String>;
    async fn remember(&self, job_id: &str, provider: &str, submission: &str) -> Result<(), String>;
    async fn forget(&self, job_id: &str, provider: &str) -> Result<(), String>;
}

/// What one look at a submitted request found.
#[derive(Debug)]
pub enum Checked {
    /// Queued or rendering at the provider: look again later.
    Running,
    /// Finished; its outputs are already copied out of the provider.
    Done(GenerationOutput),
}

/// A provider whose requests live on its side between calls (a queue API),
/// so a long render need not hold a worker: the worker submits, parks the
/// job in a delay queue, and any worker later checks on the request.
///
/// A submission record is the provider's own resume data (JSON: request id
/// and the URLs to poll and cancel it), opaque to callers, who store it with
/// the job. It never holds a key. Every method makes at most one exchange
/// per step and never sleeps: waiting is the caller's business.
#[async_trait::async_trait]
pub trait Resumable: Send + Sync {
    /// Submits `request` and returns its submission record.
    ///
    /// # Errors
    ///
    /// As [`Provider::generate`]; nothing was submitted unless the error is
    /// a transport failure after sending (the provider may then run it
    /// anyway, which is why callers store the record before anything else).
    async fn submit(&self, request: &GenerationRequest) -> Result<String, ProviderError>;

    /// Looks once at the request `submission` names; when it has finished,
    /// copies its outputs.
    ///
    /// # Errors
    ///
    /// A retryable error: the look failed, the request may still be fine.
    /// A permanent one: the request failed, was rejected (safety), or is
    /// unknown to the provider; it will not finish.
    async fn check(
        &self,
        request: &GenerationRequest,
        submission: &str,
    ) -> Result<Checked, ProviderError>;

    /// Asks the provider to stop the request, so it is not rendered and
    /// billed for nothing.
    ///
    /// # Errors
    ///
    /// When the provider could not be told; the request may then still run.
    async fn cancel(&self, submission: &str) -> Result<(), ProviderError>;
}

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

    /// The queue-style face of this provider, when it has one (fal,
    /// Replicate): lets the worker park long renders and cancel requests.
    fn resumable(&self) -> Option<&dyn Resumable> {
        None
    }
}

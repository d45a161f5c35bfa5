//! A fake KServe v2 / Triton server: a real HTTP server on 127.0.0.1
//! speaking the Open Inference Protocol (see `shared/PROVIDERS.md`): server
//! health, model ready, model metadata and infer, the latter in JSON and in
//! Triton's binary tensor data form, failure modes included.
//!
//! Used by this crate's tests and, through the `fake` feature, by the
//! workspace's end-to-end tests. The model name picks the behaviour; only
//! version `1` of each exists:
//!
//! | model       | behaviour                                                          |
//! |-------------|--------------------------------------------------------------------|
//! | `matting`   | answers PNGs ([`gradient_png`]) with shape `[1, N]`                 |
//! | `upscale`   | needs parameter `scale` 2 or 4 (PNGs `scale` times larger), else 400 with an error body |
//! | `inpaint`   | needs `INPUT_MASK`, else 400 naming the missing input              |
//! | `tryon`     | needs `INPUT_GARMENT`, else 400 naming the missing input           |
//! | `busy`      | infer answers 503 "Exceeds maximum queue size", no Retry-After     |
//! | `slow`      | answers like `matting` after [`SLOW_DELAY`] (past a short client timeout) |
//! | `lying`     | binary answer whose `binary_data_size` is larger than the body     |
//! | `json-only` | answers JSON (base64 elements) even when binary was asked for      |
//! | `not-ready` | model ready answers 400; infer answers 400 "... is not ready"      |
//! | `raw`       | declares and answers UINT8/FP32 pixel tensors, not our BYTES contract |
//! | `extra`     | like `matting`, with 2 more images than `num_images`              |
//! | `echo`      | infer answers 400 quoting the Authorization header and the prompt back |
//! | `endless`   | infer answers 200 with a body that never ends                      |
//! | anything else | 404 `{"error": "Request for unknown model: '...' is not found"}` |
//!
//! Every model declares `INPUT_IMAGE` and an optional `PROMPT` (plus
//! `INPUT_MASK` or `INPUT_GARMENT` where it needs one), all BYTES of shape
//! `[1]`, and the output `OUTPUT_IMAGE`, BYTES of shape `[-1]`. Infer
//! checks what Triton checks: known input and output names, BYTES inputs
//! whose elements match their shape, binary sections that add up. It
//! answers N images for parameter `num_images` N (1 to 8, default 1), in
//! binary form when an output asked for `binary_data` (or the request for
//! `binary_data_output`), else in JSON with base64 elements.
//!
//! Like Triton, a JSON BYTES input element is taken verbatim as its UTF-8
//! bytes. The fake counts infer calls per model and records every infer
//! request it could parse ([`FakeKServe::received`]) for assertions. Built
//! with [`FakeKServe::start_with_bearer`], every route needs
//! `Authorization: Bearer <token>` and answers 401 without it.
//!
//! [`FakeKServe::set_faults`] and [`FakeKServe::start_outage`] play the
//! submit rows of the fault table (see [`crate::fake_faults`]) on every
//! infer: calls refused with Triton's backpressure (503 "Exceeds maximum
//! queue size", which carries no Retry-After) or a plain 503 error, an
//! outage in which every infer answers a plain 503, and infers run (the
//! GPU time spent) whose answer is lost mid-body;
//! [`FakeKServe::fault_counts`] counts the infers accepted, refused and
//! lost.
//!
//! The binary tensor form is read and written by the fake's own [`wire`]
//! code, written from the protocol's text, never by the client's `tensor`
//! module: a bug in the client's encoding must fail a test here, not be
//! mirrored by a fake that decodes with the same bug.
//!
//! This file holds the server, its state and what it records; `routes`
//! answers each request, `body` reads request bodies and writes answers,
//! `wire` is the binary tensor form.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use url::Url;

use self::routes::handle;
use self::wire::HEADER_LENGTH;
use crate::fake_faults::{self, FaultState, SubmitFault};
pub use crate::fake_faults::{FaultCounts, Faults};
pub use crate::fake_media::gradient_png;
use crate::http::encode_base64;

/// How long `slow` takes to answer: well past the timeouts tests set, well
/// short of a test's patience if a client waits it out.
pub const SLOW_DELAY: Duration = Duration::from_secs(3);
/// Side of the square PNGs answered (before upscaling).
const IMAGE_SIDE: u32 = 32;
/// Most images one answer holds.
const MAX_IMAGES: u64 = 8;
/// Request bodies up to this size are read (axum's default is 2 MB).
const BODY_LIMIT: usize = 64 * 1024 * 1024;

const IMAGE: &str = "INPUT_IMAGE";
const MASK: &str = "INPUT_MASK";
const GARMENT: &str = "INPUT_GARMENT";
const PROMPT: &str = "PROMPT";
const OUTPUT: &str = "OUTPUT_IMAGE";

/// A running fake; the server stops when this is dropped.
pub struct FakeKServe {
    /// Root to put in `KServeConfig::base_url`, with a trailing slash.
    pub base_url: Url,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for FakeKServe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKServe")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

/// An infer request as the fake parsed it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub model: String,
    pub version: Option<String>,
    /// The request's `id`.
    pub id: Option<String>,
    /// Sent in binary form (with `Inference-Header-Content-Length`).
    pub binary: bool,
    /// Request-level parameters (`priority`, `timeout`, model knobs).
    pub parameters: Map<String, Value>,
    pub inputs: Vec<ReceivedTensor>,
    /// Requested outputs: name and whether binary data was asked for.
    pub outputs: Vec<(String, bool)>,
}

impl ReceivedRequest {
    /// The input called `name`, if it was sent.
    pub fn input(&self, name: &str) -> Option<&ReceivedTensor> {
        self.inputs.iter().find(|input| input.name == name)
    }
}

/// One input tensor as received.
#[derive(Clone)]
pub struct ReceivedTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    /// Bytes the tensor took: its binary section, or for JSON data what the
    /// same elements take in binary form.
    pub byte_size: usize,
    /// For BYTES tensors, the elements' bytes (for a JSON request, the
    /// strings' UTF-8 bytes, as Triton takes them).
    pub elements: Vec<Bytes>,
}

// Elements may be images or prompts: sizes only.
impl std::fmt::Debug for ReceivedTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lens: Vec<usize> = self.elements.iter().map(Bytes::len).collect();
        f.debug_struct("ReceivedTensor")
            .field("name", &self.name)
            .field("datatype", &self.datatype)
            .field("shape", &self.shape)
            .field("byte_size", &self.byte_size)
            .field("element_lens", &lens)
            .finish()
    }
}

impl FakeKServe {
    /// Binds 127.0.0.1 on a free port and serves until dropped, with no
    /// authentication.
    ///
    /// # Errors
    ///
    /// When the listener cannot be bound.
    pub async fn start() -> std::io::Result<FakeKServe> {
        Self::serve(None).await
    }

    /// As [`start`](Self::start), but every route needs
    /// `Authorization: Bearer <token>`.
    ///
    /// # Errors
    ///
    /// When the listener cannot be bound.
    pub async fn start_with_bearer(token: &str) -> std::io::Result<FakeKServe> {
        Self::serve(Some(token.to_owned())).await
    }

    async fn serve(bearer: Option<String>) -> std::io::Result<FakeKServe> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let base_url = Url::parse(&format!("http://{address}/")).map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            bearer,
            state: Mutex::new(FakeState::default()),
            faults: FaultState::default(),
        });
        let router = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(Arc::clone(&shared));
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    // A dropped sender also means stop.
                    let _ = stopped.await;
                })
                .await;
            if let Err(err) = served {
                tracing::warn!(error = %err, "fake kserve server stopped with an error");
            }
        });
        Ok(FakeKServe {
            base_url,
            shared,
            shutdown: Some(shutdown),
        })
    }

    /// Plays the submit rows of `faults` from now on, on every model (a
    /// synchronous API has no separate reads: `read_reset` and
    /// `result_truncated` are not played).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.set(faults);
    }

    /// Answers every model call with a plain 503 for `length` from now.
    pub fn start_outage(&self, length: Duration) {
        self.shared.faults.start_outage(length);
    }

    /// Calls accepted (answered 2xx) and refused (429 or 5xx) so far.
    pub fn fault_counts(&self) -> FaultCounts {
        self.shared.faults.counts()
    }

    /// Infer requests received (authorized), whatever they were answered.
    pub fn infer_calls(&self) -> u64 {
        self.shared.lock().infer_calls.values().sum()
    }

    /// Infer requests received for model `name` (any version).
    pub fn infer_calls_for(&self, name: &str) -> u64 {
        self.shared
            .lock()
            .infer_calls
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Every infer request the fake could parse, in order.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.shared.lock().received.clone()
    }

    /// The last infer request the fake could parse.
    pub fn last_received(&self) -> Option<ReceivedRequest> {
        self.shared.lock().received.last().cloned()
    }

    /// Makes `/v2/health/ready` answer 503 (false) or 200 (true).
    pub fn set_server_ready(&self, ready: bool) {
        self.shared.lock().server_not_ready = !ready;
    }
}

impl Drop for FakeKServe {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

struct Shared {
    bearer: Option<String>,
    state: Mutex<FakeState>,
    faults: FaultState,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock leaves records that
        // are still meaningful to the tests that follow.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct FakeState {
    infer_calls: HashMap<String, u64>,
    received: Vec<ReceivedRequest>,
    server_not_ready: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Matting,
    Upscale,
    Inpaint,
    TryOn,
    Busy,
    Slow,
    Lying,
    JsonOnly,
    NotReady,
    Raw,
    Extra,
    Echo,
    Endless,
}

impl Behaviour {
    fn for_name(name: &str) -> Option<Behaviour> {
        Some(match name {
            "matting" => Behaviour::Matting,
            "upscale" => Behaviour::Upscale,
            "inpaint" => Behaviour::Inpaint,
            "tryon" => Behaviour::TryOn,
            "busy" => Behaviour::Busy,
            "slow" => Behaviour::Slow,
            "lying" => Behaviour::Lying,
            "json-only" => Behaviour::JsonOnly,
            "not-ready" => Behaviour::NotReady,
            "raw" => Behaviour::Raw,
            "extra" => Behaviour::Extra,
            "echo" => Behaviour::Echo,
            "endless" => Behaviour::Endless,
            _ => return None,
        })
    }

    /// The inputs the model declares: (name, required).
    fn inputs(self) -> Vec<(&'static str, bool)> {
        let mut inputs = vec![(IMAGE, true)];
        match self {
            Behaviour::Inpaint => inputs.push((MASK, true)),
            Behaviour::TryOn => inputs.push((GARMENT, true)),
            _ => {}
        }
        inputs.push((PROMPT, false));
        inputs
    }
}

/// What a request path asks for.
enum Action {
    Metadata,
    Ready,
    Infer,
}

/// Triton's error shape: `{"error": "..."}`.
fn error(code: StatusCode, message: String) -> Response {
    (code, axum::Json(json!({ "error": message }))).into_response()
}

mod body;
mod routes;
#[cfg(test)]
mod tests;
mod wire;

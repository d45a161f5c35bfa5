//! A fake Vertex AI: a real HTTP server on 127.0.0.1 with the `:predict`
//! and `:generateContent` routes of
//! `/v1/projects/{project}/locations/{region}/publishers/google/models/{model}:{method}`,
//! Google's error envelope, and a metadata-style token endpoint, shaped
//! like `shared/PROVIDERS.md` says, failure modes included.
//!
//! Used by this crate's tests and, through the `fake` feature, by the
//! workspace's end-to-end tests. The model id picks the behaviour:
//!
//! | model                 | behaviour                                                          |
//! |-----------------------|--------------------------------------------------------------------|
//! | `imagen-ok`           | `sampleCount` 64x64 PNG predictions                                |
//! | `imagen-filtered`     | every prediction is `{raiFilteredReason}`                          |
//! | `imagen-partial`      | two predictions: one filtered, one PNG                             |
//! | `imagen-empty`        | `{}`: no predictions, as for a filtered prompt                     |
//! | `imagen-quota`        | first call 429 RESOURCE_EXHAUSTED with RetryInfo `"0.2s"`, then ok |
//! | `imagen-down`         | always 503 UNAVAILABLE                                             |
//! | `imagen-invalid`      | 400 INVALID_ARGUMENT                                               |
//! | `imagen-forbidden`    | 403 PERMISSION_DENIED                                              |
//! | `vto-ok`              | checks `personImage`/`productImages` are base64 images; PNGs       |
//! | `gemini-ok`           | a text part and an `inlineData` PNG, finishReason STOP             |
//! | `gemini-blocked`      | 200, no candidates, `promptFeedback.blockReason`                   |
//! | `gemini-image-safety` | a candidate with finishReason IMAGE_SAFETY and no image            |
//! | `gemini-malformed`    | 200 with truncated JSON                                            |
//! | `gemini-text-only`    | a text part only, finishReason STOP                                |
//! | `slow`                | answers as ok after [`FakeVertex::set_slow_delay`] (2 s)           |
//! | `imagen-extra`        | 2 more PNG predictions than `sampleCount`                          |
//! | `imagen-echo`         | 400 INVALID_ARGUMENT quoting the access token and the prompt back  |
//! | `imagen-endless`      | 200 with a body that never ends                                    |
//! | `missing*`            | 404 NOT_FOUND, as for an unknown publisher model                   |
//! | other `gemini*`       | like `gemini-ok`                                                   |
//! | any other id          | like `imagen-ok` (a `personImage` instance is checked as `vto-ok`) |
//!
//! Every ok predict answer first checks the request the way Vertex does:
//! `sampleCount` 1..4, `addWatermark: false` whenever `seed` is set, a
//! prompt for generation, decodable images in `referenceImages`, an
//! upscale `image` and an `x2`/`x4` factor. A gemini model called through
//! `:predict`, or another model through `:generateContent`, is a 400.
//!
//! Model routes need `Authorization: Bearer <token>` with a token this fake
//! issued and that has not expired or been revoked; anything else is 401
//! UNAUTHENTICATED. Tokens come from `GET /token` (also served at the
//! metadata server's path), which needs `Metadata-Flavor: Google` (403
//! without, as the metadata server answers) and answers
//! `{access_token, expires_in, token_type}`. Switches: expiry, a delay, a
//! failure status, revoking all tokens, refusing every token. Everything is
//! kept in memory; it is not meant to be fast or long-lived.
//!
//! [`FakeVertex::set_faults`] and [`FakeVertex::start_outage`] play the
//! submit rows of the fault table (see [`crate::fake_faults`]) on every
//! model: calls refused with 429 RESOURCE_EXHAUSTED (with a RetryInfo) or
//! 503, an outage in which every model call answers a plain 503, and
//! calls rendered (billed) whose answer is lost mid-body (Vertex answers
//! inline: no status to poll, no file to download);
//! [`FakeVertex::fault_counts`] counts the calls accepted, refused and
//! lost.
//!
//! This file holds the server, its state and the behaviour per model;
//! `routes` dispatches each request and serves the token endpoint,
//! `answers` writes the predict and generateContent answers and errors.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;
use url::Url;

use self::routes::handle;
use crate::fake_faults::{self, FaultState, SubmitFault};
pub use crate::fake_faults::{FaultCounts, Faults};
use crate::fake_media::gradient_png;

/// Side of the square PNGs served (small: they travel as base64 JSON).
const IMAGE_SIDE: u32 = 64;
/// The metadata server's token path, also served.
const METADATA_TOKEN_PATH: &str = "computeMetadata/v1/instance/service-accounts/default/token";

/// A running fake; the server stops when this is dropped.
pub struct FakeVertex {
    /// Root to put in `VertexConfig::base_url`, with a trailing slash.
    pub base_url: Url,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for FakeVertex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeVertex")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

/// One authorized model call as the fake received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub project: String,
    pub region: String,
    pub model: String,
    /// `predict` or `generateContent`.
    pub method: String,
    pub body: Value,
}

impl FakeVertex {
    /// Binds 127.0.0.1 on a free port and serves until dropped.
    ///
    /// # Errors
    ///
    /// When the listener cannot be bound.
    pub async fn start() -> std::io::Result<FakeVertex> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let base_url = Url::parse(&format!("http://{address}/")).map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            next_token: AtomicU64::new(1),
            next_response: AtomicU64::new(1),
            state: Mutex::new(FakeState {
                token_expires_in: Duration::from_secs(3599),
                slow_delay: Duration::from_secs(2),
                ..FakeState::default()
            }),
            faults: FaultState::default(),
        });
        let router = Router::new()
            .fallback(handle)
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
                tracing::warn!(error = %err, "fake vertex server stopped with an error");
            }
        });
        Ok(FakeVertex {
            base_url,
            shared,
            shutdown: Some(shutdown),
        })
    }

    /// The token endpoint, for `TokenSource::endpoint`.
    pub fn token_url(&self) -> Url {
        let mut url = self.base_url.clone();
        url.set_path("/token");
        url
    }

    /// Issues a token without a token request (it does not count in
    /// [`token_requests`](Self::token_requests)), for fixed and file
    /// token sources.
    pub fn issue_token(&self) -> String {
        self.shared.issue().0
    }

    /// Token endpoint requests received, whatever they were answered.
    pub fn token_requests(&self) -> u64 {
        self.shared.lock().token_requests
    }

    /// Lifetime of tokens issued from now on (3599 s by default, as the
    /// metadata server).
    pub fn set_token_expires_in(&self, expires_in: Duration) {
        self.shared.lock().token_expires_in = expires_in;
    }

    /// How long the token endpoint takes to answer (none by default).
    pub fn set_token_delay(&self, delay: Duration) {
        self.shared.lock().token_delay = delay;
    }

    /// Makes the token endpoint answer `status` (with no token) until
    /// called with `None`.
    pub fn fail_token_requests(&self, status: Option<StatusCode>) {
        self.shared.lock().token_failure = status;
    }

    /// Revokes every token issued so far; later ones are fine.
    pub fn revoke_tokens(&self) {
        self.shared.lock().issued.clear();
    }

    /// While set, every token is refused with 401, new ones included.
    pub fn refuse_all_tokens(&self, refuse: bool) {
        self.shared.lock().refuse_all = refuse;
    }

    /// How long the `slow` model takes to answer.
    pub fn set_slow_delay(&self, delay: Duration) {
        self.shared.lock().slow_delay = delay;
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

    /// Authorized model calls received, whatever they were answered.
    pub fn calls(&self) -> u64 {
        self.shared.lock().calls.values().sum()
    }

    /// Authorized calls received for `model`.
    pub fn calls_for(&self, model: &str) -> u64 {
        self.shared.lock().calls.get(model).copied().unwrap_or(0)
    }

    /// Model calls answered 401.
    pub fn unauthorized(&self) -> u64 {
        self.shared.lock().unauthorized
    }

    /// Every authorized model call so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// The body of the last authorized call for `model`.
    pub fn last_body(&self, model: &str) -> Option<Value> {
        self.shared
            .lock()
            .received
            .iter()
            .rev()
            .find(|r| r.model == model)
            .map(|r| r.body.clone())
    }
}

impl Drop for FakeVertex {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

struct Shared {
    next_token: AtomicU64,
    next_response: AtomicU64,
    state: Mutex<FakeState>,
    faults: FaultState,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock leaves counters that
        // are still meaningful to the tests that follow.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new token and its lifetime.
    fn issue(&self) -> (String, Duration) {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        let token = format!("ya29.fake-token-{n:04}");
        let mut state = self.lock();
        let life = state.token_expires_in;
        state.issued.insert(token.clone(), Instant::now() + life);
        (token, life)
    }
}

#[derive(Default)]
struct FakeState {
    /// Token → expiry.
    issued: HashMap<String, Instant>,
    token_requests: u64,
    token_expires_in: Duration,
    token_delay: Duration,
    token_failure: Option<StatusCode>,
    refuse_all: bool,
    slow_delay: Duration,
    calls: HashMap<String, u64>,
    unauthorized: u64,
    received: Vec<Received>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    ImagenOk,
    Filtered,
    Partial,
    Empty,
    Quota,
    Down,
    Invalid,
    Forbidden,
    VtoOk,
    GeminiOk,
    GeminiBlocked,
    GeminiImageSafety,
    GeminiMalformed,
    GeminiTextOnly,
    Slow,
    Missing,
    Extra,
    Echo,
    Endless,
}

impl Behaviour {
    fn for_model(model: &str) -> Behaviour {
        match model {
            "imagen-ok" => Behaviour::ImagenOk,
            "imagen-filtered" => Behaviour::Filtered,
            "imagen-partial" => Behaviour::Partial,
            "imagen-empty" => Behaviour::Empty,
            "imagen-quota" => Behaviour::Quota,
            "imagen-down" => Behaviour::Down,
            "imagen-invalid" => Behaviour::Invalid,
            "imagen-forbidden" => Behaviour::Forbidden,
            "vto-ok" => Behaviour::VtoOk,
            "gemini-ok" => Behaviour::GeminiOk,
            "gemini-blocked" => Behaviour::GeminiBlocked,
            "gemini-image-safety" => Behaviour::GeminiImageSafety,
            "gemini-malformed" => Behaviour::GeminiMalformed,
            "gemini-text-only" => Behaviour::GeminiTextOnly,
            "slow" => Behaviour::Slow,
            "imagen-extra" => Behaviour::Extra,
            "imagen-echo" => Behaviour::Echo,
            "imagen-endless" => Behaviour::Endless,
            m if m.starts_with("missing") => Behaviour::Missing,
            m if m.starts_with("gemini") => Behaviour::GeminiOk,
            _ => Behaviour::ImagenOk,
        }
    }

    /// Whether the model is a Gemini one (served by generateContent only).
    fn is_gemini(self, model: &str) -> bool {
        match self {
            Behaviour::GeminiOk
            | Behaviour::GeminiBlocked
            | Behaviour::GeminiImageSafety
            | Behaviour::GeminiMalformed
            | Behaviour::GeminiTextOnly => true,
            Behaviour::Slow | Behaviour::Missing => model.starts_with("gemini"),
            _ => false,
        }
    }
}

mod answers;
mod routes;

//! A fake Replicate predictions API: a real HTTP server on 127.0.0.1,
//! shaped like `api.replicate.com` (see `shared/PROVIDERS.md`), failure
//! modes included.
//!
//! Used by this crate's tests and, through the `fake` feature, by the
//! workspace's end-to-end tests. The model picks the behaviour:
//!
//! | model            | behaviour                                                             |
//! |------------------|-----------------------------------------------------------------------|
//! | `test/ok`        | `starting`, one `processing` poll, then `succeeded` with a list of 256x256 PNG URLs (`num_outputs` of them) |
//! | `test/throttled` | the fake's first create answers 429 with Replicate's "resets in ~30s" detail and no Retry-After; then like `test/ok` |
//! | `test/down`      | create always answers 503                                             |
//! | `test/nsfw`      | ends `failed` with "NSFW content detected..."                          |
//! | `test/failed`    | ends `failed` with a model exception that echoes the prompt            |
//! | `test/aborted`   | ends `aborted`                                                        |
//! | `test/stuck`     | `processing` until cancelled (then `canceled`)                         |
//! | `test/malformed` | create answers `starting`; every poll answers truncated JSON           |
//! | `test/reset`     | create drops the connection in the middle of the answer's body        |
//! | `test/video`     | ends `succeeded` with one MP4 URL as a plain string                    |
//! | `test/extra`     | like `test/ok`, with 2 more outputs than `num_outputs`                 |
//! | `test/echo`      | create answers 422 quoting the token and the prompt back              |
//! | `test/endless`   | create answers 201 with a body that never ends                         |
//! | `test/endless-file` | ends `succeeded` with one output file that never ends               |
//! | other `test/*`   | 404, as Replicate answers for an unknown model                         |
//! | any other owner  | like `test/ok`, so production model names work unchanged              |
//! | `owner/name:ver` | `POST /v1/predictions {version, input}`: like `test/ok`                |
//!
//! `Prefer: wait` is honoured: a prediction that would finish is answered
//! finished by create itself (`test/stuck` and `test/malformed` never are).
//! A cancel turns a prediction that has not finished into `canceled`.
//!
//! On top of the models' behaviours, [`FakeReplicate::set_faults`] and
//! [`FakeReplicate::start_outage`] play the fault table (see
//! [`crate::fake_faults`]) on every model: creates refused with 429 (with
//! `Retry-After` and the "resets in" detail) or 503, polls reset
//! mid-body, polls of a finished prediction (its result) truncated, an
//! outage in which every API call answers a plain 503, creates that start
//! a prediction (billed) whose answer is lost mid-body, polls of a running
//! prediction reset mid-body, and output downloads (`/files/*`) reset, cut
//! short or answered 404 as a file Replicate has deleted.
//! [`FakeReplicate::fault_counts`] counts accepted, refused and lost
//! creates, polls (status reads while running, result reads once
//! finished), downloads and renders.
//!
//! Every API route needs `Authorization: Bearer <token>` (401 otherwise);
//! `/files/*` (the stand-in for Replicate's file host) is served without
//! one and records any Authorization header that reaches it.
//!
//! `test/reset` needs to break a connection, which an axum handler cannot
//! do, so the listener in front is a small raw TCP relay: it answers that
//! one route itself with a partial response and passes every other
//! request to the axum server behind it, one request per connection. It
//! keeps everything in memory and is not meant to be fast or long-lived.
//!
//! This file holds the server, its configuration and state; `routes`
//! the handlers that answer each request; `proxy` the front listener
//! that cuts or resets connections.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use url::Url;

use crate::fake_faults::FaultState;
pub use crate::fake_faults::{FaultCounts, Faults};

/// Side of the square PNGs served for image outputs.
const IMAGE_SIDE: u32 = 256;
/// Upper bound on `num_outputs`, so a bad test cannot make the fake
/// allocate without limit.
const MAX_OUTPUTS: u64 = 16;
/// Largest request head the relay reads before giving up on a connection.
const MAX_HEAD: usize = 64 * 1024;
/// Polls a prediction answers `processing` before it finishes.
const PROCESSING_POLLS: u32 = 1;

/// A running fake; the server stops when this is dropped.
pub struct FakeReplicate {
    /// Root to put in `ReplicateConfig::base_url`, with a trailing slash.
    pub base_url: Url,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    relay: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeReplicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeReplicate")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

/// What one authorized create carried.
#[derive(Debug, Clone)]
pub struct SeenCreate {
    /// `owner/name`, or `version:<id>` for a versioned create.
    pub model: String,
    /// The `version` field of a versioned create.
    pub version: Option<String>,
    /// The `input` object.
    pub input: Value,
    /// The `Authorization` header, verbatim.
    pub authorization: String,
    /// The `Prefer` header, if any.
    pub prefer: Option<String>,
    /// The `Cancel-After` header, if any.
    pub cancel_after: Option<String>,
}

impl FakeReplicate {
    /// Binds 127.0.0.1 on a free port and serves until dropped.
    ///
    /// # Errors
    ///
    /// When a listener cannot be bound.
    pub async fn start() -> std::io::Result<FakeReplicate> {
        let front = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let behind = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = front.local_addr()?;
        let backend = behind.local_addr()?;
        let base_url = Url::parse(&format!("http://{address}/")).map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            origin: format!("http://{address}"),
            next_id: AtomicU64::new(1),
            state: Mutex::new(FakeState::default()),
            faults: FaultState::default(),
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let served = axum::serve(behind, router)
                .with_graceful_shutdown(async {
                    // A dropped sender also means stop.
                    let _ = stopped.await;
                })
                .await;
            if let Err(err) = served {
                tracing::warn!(error = %err, "fake replicate server stopped with an error");
            }
        });
        let relay = tokio::spawn(accept(front, backend, Arc::clone(&shared)));
        Ok(FakeReplicate {
            base_url,
            shared,
            shutdown: Some(shutdown),
            relay,
        })
    }

    /// Authorized creates received, whatever they were answered.
    pub fn creates(&self) -> u64 {
        self.shared.lock().creates.values().sum()
    }

    /// Authorized creates received for `model` (`owner/name`).
    pub fn creates_for(&self, model: &str) -> u64 {
        self.shared.lock().creates.get(model).copied().unwrap_or(0)
    }

    /// The last authorized create, if any.
    pub fn last_create(&self) -> Option<SeenCreate> {
        self.shared.lock().last_create.clone()
    }

    /// Authorized `GET /v1/predictions/{id}` polls received.
    pub fn polls(&self) -> u64 {
        self.shared.lock().polls
    }

    /// Authorized cancels received for known predictions.
    pub fn cancels(&self) -> u64 {
        self.shared.lock().cancels
    }

    /// API requests refused for a missing or malformed bearer token.
    pub fn unauthorized(&self) -> u64 {
        self.shared.lock().unauthorized
    }

    /// Requests served under `/files/`.
    pub fn downloads(&self) -> u64 {
        self.shared.lock().downloads
    }

    /// Whether any request to `/files/` carried an Authorization header:
    /// the file host must never see the token.
    pub fn token_reached_file_host(&self) -> bool {
        self.shared.lock().file_authorizations > 0
    }

    /// The id of the last prediction created, if any.
    pub fn last_prediction_id(&self) -> Option<String> {
        self.shared.lock().last_prediction_id.clone()
    }

    /// Plays `faults` from now on, on every model (replacing earlier ones).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.set(faults);
    }

    /// Answers every API call (create, poll, cancel) with a plain 503 for
    /// `length` from now; `/files/*` stays up.
    pub fn start_outage(&self, length: std::time::Duration) {
        self.shared.faults.start_outage(length);
    }

    /// Creates accepted and refused, polls and renders so far.
    pub fn fault_counts(&self) -> FaultCounts {
        self.shared.faults.counts()
    }

    /// The status of prediction `id`, as a poll would see it now (without
    /// counting as a poll).
    pub fn status_of(&self, id: &str) -> Option<String> {
        let state = self.shared.lock();
        state
            .predictions
            .get(id)
            .map(|prediction| prediction.status().to_owned())
    }
}

impl Drop for FakeReplicate {
    fn drop(&mut self) {
        self.relay.abort();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

struct Shared {
    /// `http://127.0.0.1:port` of the front listener, for the absolute URLs
    /// Replicate hands out.
    origin: String,
    next_id: AtomicU64,
    state: Mutex<FakeState>,
    faults: FaultState,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock leaves counters that
        // are still meaningful to the tests that follow.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct FakeState {
    /// Authorized creates per `owner/name`.
    creates: HashMap<String, u64>,
    last_create: Option<SeenCreate>,
    last_prediction_id: Option<String>,
    polls: u64,
    cancels: u64,
    unauthorized: u64,
    downloads: u64,
    file_authorizations: u64,
    predictions: HashMap<String, FakePrediction>,
}

struct FakePrediction {
    model: String,
    version: Option<String>,
    behaviour: Behaviour,
    polls: u32,
    canceled: bool,
    num_outputs: u64,
    prompt: String,
}

impl FakePrediction {
    fn status(&self) -> &'static str {
        if self.canceled {
            return "canceled";
        }
        let finishes = !matches!(self.behaviour, Behaviour::Stuck | Behaviour::Malformed);
        match self.polls {
            _ if finishes && self.polls > PROCESSING_POLLS => match self.behaviour {
                Behaviour::Nsfw | Behaviour::Failed => "failed",
                Behaviour::Aborted => "aborted",
                _ => "succeeded",
            },
            0 => "starting",
            _ => "processing",
        }
    }

    fn finished(&self) -> bool {
        !matches!(self.status(), "starting" | "processing")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Ok,
    Throttled,
    Down,
    Nsfw,
    Failed,
    Aborted,
    Stuck,
    Malformed,
    Video,
    Extra,
    Echo,
    Endless,
    EndlessFile,
}

impl Behaviour {
    fn for_model(owner: &str, name: &str) -> Option<Behaviour> {
        if owner != "test" {
            return Some(Behaviour::Ok);
        }
        Some(match name {
            "ok" => Behaviour::Ok,
            "throttled" => Behaviour::Throttled,
            "down" => Behaviour::Down,
            "nsfw" => Behaviour::Nsfw,
            "failed" => Behaviour::Failed,
            "aborted" => Behaviour::Aborted,
            "stuck" => Behaviour::Stuck,
            "malformed" => Behaviour::Malformed,
            "video" => Behaviour::Video,
            "extra" => Behaviour::Extra,
            "echo" => Behaviour::Echo,
            "endless" => Behaviour::Endless,
            "endless-file" => Behaviour::EndlessFile,
            _ => return None,
        })
    }
}

mod proxy;
mod routes;

use proxy::accept;
use routes::handle;

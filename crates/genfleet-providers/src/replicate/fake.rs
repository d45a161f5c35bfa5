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

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use url::Url;

use crate::fake_faults::{self, DownloadFault, FaultState, ReadFault, SubmitFault};
pub use crate::fake_faults::{FaultCounts, Faults};
use crate::fake_media::{gradient_png, mp4};

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

/// One handler for every route, matched by hand like the fal fake's.
async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    if method == Method::GET {
        if let ["files", name] = segments.as_slice() {
            return file(&shared, name, &headers);
        }
    }
    let Some(authorization) = bearer(&headers) else {
        shared.lock().unauthorized += 1;
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthenticated",
            "You did not pass a valid authentication token",
        );
    };
    match (method, segments.as_slice()) {
        (Method::POST, ["v1", "models", owner, name, "predictions"]) => {
            create(&shared, owner, name, None, &headers, authorization, &body)
        }
        (Method::POST, ["v1", "predictions"]) => {
            let version = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|json| {
                    json.get("version")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
            match version {
                Some(version) if !version.is_empty() => {
                    let model = format!("version:{version}");
                    create(
                        &shared,
                        "version",
                        &model,
                        Some(version),
                        &headers,
                        authorization,
                        &body,
                    )
                }
                _ => error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Input validation failed",
                    "- version: version is required",
                ),
            }
        }
        (Method::GET, ["v1", "predictions", id]) => poll(&shared, id),
        (Method::POST, ["v1", "predictions", id, "cancel"]) => cancel(&shared, id),
        _ => not_found(),
    }
}

/// The verbatim `Authorization` value when it is `Bearer <non-empty>`.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?;
    (!token.trim().is_empty()).then(|| value.to_owned())
}

fn create(
    shared: &Shared,
    owner: &str,
    name: &str,
    version: Option<String>,
    headers: &HeaderMap,
    authorization: String,
    body: &[u8],
) -> Response {
    let model = if version.is_some() {
        name.to_owned()
    } else {
        format!("{owner}/{name}")
    };
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let prefer = text(header::HeaderName::from_static("prefer"));
    let cancel_after = text(header::HeaderName::from_static("cancel-after"));
    let mut state = shared.lock();
    let seen = state.creates.entry(model.clone()).or_default();
    *seen += 1;
    let first = *seen == 1;
    let input = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|json| json.get("input").cloned());
    state.last_create = Some(SeenCreate {
        model: model.clone(),
        version: version.clone(),
        input: input.clone().unwrap_or(Value::Null),
        authorization,
        prefer: prefer.clone(),
        cancel_after,
    });
    let behaviour = if version.is_some() {
        Behaviour::Ok
    } else {
        match Behaviour::for_model(owner, name) {
            Some(behaviour) => behaviour,
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "The requested resource could not be found.",
                )
            }
        }
    };
    let Some(Value::Object(input)) = input else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Input validation failed",
            "- input: input is required",
        );
    };
    // The fault table comes before the model's own behaviour: a refused
    // create never starts a prediction.
    if let Some(fault) = shared.faults.submit() {
        return match fault {
            SubmitFault::Outage => fake_faults::outage(),
            SubmitFault::RateLimited(secs) => {
                let mut response = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Request was throttled",
                    &format!("Request was throttled. Your rate limit resets in ~{secs}s."),
                );
                if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            SubmitFault::Unavailable => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service unavailable",
                "The service is temporarily unavailable. Please try again later.",
            ),
        };
    }
    match behaviour {
        Behaviour::Echo => {
            // As a careless proxy might: the token and the input back.
            let prompt = input
                .get("prompt")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let authorization = state
                .last_create
                .as_ref()
                .map(|seen| seen.authorization.clone())
                .unwrap_or_default();
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Input validation failed",
                &format!("{authorization} may not run \"{prompt}\" on this model"),
            );
        }
        Behaviour::Endless => {
            return fake_faults::endless(
                StatusCode::CREATED,
                "application/json",
                r#"{"id": "rpendless", "status": "starting", "logs": ""#.to_owned(),
            )
        }
        Behaviour::Throttled if first => {
            shared.faults.refused();
            // Replicate documents no Retry-After here: the body is the hint.
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "Request was throttled",
                "Request was throttled. Your rate limit resets in ~30s.",
            );
        }
        Behaviour::Down => {
            shared.faults.refused();
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service unavailable",
                "The service is temporarily unavailable. Please try again later.",
            );
        }
        _ => {}
    }
    shared.faults.accepted();
    let id = format!("rp{:010}", shared.next_id.fetch_add(1, Ordering::Relaxed));
    let mut prediction = FakePrediction {
        model,
        version,
        behaviour,
        polls: 0,
        canceled: false,
        num_outputs: input
            .get("num_outputs")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, MAX_OUTPUTS)
            + if behaviour == Behaviour::Extra { 2 } else { 0 },
        prompt: input
            .get("prompt")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    };
    let wait = prefer.is_some_and(|value| value.trim().starts_with("wait"));
    if wait && !matches!(behaviour, Behaviour::Stuck | Behaviour::Malformed) {
        // Held until done: answered in its end state.
        prediction.polls = PROCESSING_POLLS + 1;
    }
    let answer = prediction_json(shared, &id, &prediction, &Value::Object(input));
    state.last_prediction_id = Some(id.clone());
    state.predictions.insert(id, prediction);
    // The prediction exists and runs (and is billed) whether or not its id
    // reaches the client.
    if shared.faults.answer_lost() {
        return fake_faults::lost_answer(StatusCode::CREATED, Bytes::from(answer.to_string()));
    }
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

fn poll(shared: &Shared, id: &str) -> Response {
    if shared.faults.outage() {
        // Counted as the read it would have been; the prediction does not
        // advance, since the API never saw the poll.
        let finished = shared
            .lock()
            .predictions
            .get(id)
            .is_some_and(FakePrediction::finished);
        let _ = if finished {
            shared.faults.result_read()
        } else {
            shared.faults.status_read()
        };
        return fake_faults::outage();
    }
    let mut state = shared.lock();
    state.polls += 1;
    let Some(prediction) = state.predictions.get_mut(id) else {
        return not_found();
    };
    prediction.polls = prediction.polls.saturating_add(1);
    if prediction.behaviour == Behaviour::Malformed {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"id": "{id}", "status": "proc"#),
        )
            .into_response();
    }
    let input = json!({"prompt": prediction.prompt});
    let finished = prediction.finished();
    let answer = prediction_json(shared, id, prediction, &input);
    drop(state);
    // A poll of a finished prediction is the read of its result.
    let fault = if finished {
        shared.faults.result_read()
    } else {
        shared.faults.status_read()
    };
    match fault {
        Some(ReadFault::Reset) => {
            fake_faults::reset(StatusCode::OK, Bytes::from(answer.to_string()))
        }
        Some(ReadFault::Truncated) => {
            fake_faults::truncated(StatusCode::OK, &Bytes::from(answer.to_string()))
        }
        _ => (StatusCode::OK, axum::Json(answer)).into_response(),
    }
}

fn cancel(shared: &Shared, id: &str) -> Response {
    if shared.faults.outage() {
        return fake_faults::outage();
    }
    let mut state = shared.lock();
    let Some(prediction) = state.predictions.get_mut(id) else {
        return not_found();
    };
    if !prediction.finished() {
        prediction.canceled = true;
    }
    let input = json!({"prompt": prediction.prompt});
    let answer = prediction_json(shared, id, prediction, &input);
    state.cancels += 1;
    (StatusCode::OK, axum::Json(answer)).into_response()
}

/// The prediction object Replicate answers create, get and cancel with,
/// `input` echoed as Replicate does.
fn prediction_json(shared: &Shared, id: &str, prediction: &FakePrediction, input: &Value) -> Value {
    let status = prediction.status();
    let files = format!("{}/files", shared.origin);
    let output = match (status, prediction.behaviour) {
        ("succeeded", Behaviour::Video) => json!(format!("{files}/{id}.mp4")),
        ("succeeded", Behaviour::EndlessFile) => json!([format!("{files}/{id}_0.bin")]),
        ("succeeded", _) => Value::Array(
            (0..prediction.num_outputs)
                .map(|i| json!(format!("{files}/{id}_{i}.png")))
                .collect(),
        ),
        _ => Value::Null,
    };
    let error = match (status, prediction.behaviour) {
        ("failed", Behaviour::Nsfw) => {
            json!("NSFW content detected. Try running it again, or try a different prompt.")
        }
        ("failed", _) => json!(format!(
            "Traceback (most recent call last):\n  File \"predict.py\", line 88, in predict\nValueError: cannot render {:?}: CUDA error: out of memory",
            prediction.prompt
        )),
        _ => Value::Null,
    };
    let api = format!("{}/v1/predictions/{id}", shared.origin);
    let done = !matches!(status, "starting" | "processing");
    json!({
        "id": id,
        "model": prediction.model,
        "version": prediction.version.clone().unwrap_or_else(|| "hidden".into()),
        "input": input,
        "logs": "",
        "output": output,
        "error": error,
        "status": status,
        "created_at": "2026-01-01T00:00:00.000Z",
        "started_at": if prediction.polls > 0 { json!("2026-01-01T00:00:01.000Z") } else { Value::Null },
        "completed_at": if done { json!("2026-01-01T00:00:02.000Z") } else { Value::Null },
        "metrics": if done { json!({"predict_time": 1.0, "total_time": 2.0}) } else { json!({}) },
        "urls": {
            "get": api,
            "cancel": format!("{api}/cancel"),
            "stream": format!("{}/stream/{id}", shared.origin),
            "web": format!("https://replicate.com/p/{id}"),
        },
    })
}

/// `/files/{id}_{i}.png` or `/files/{id}.mp4`, for known predictions only,
/// so a made-up URL answers 404 like an expired one.
fn file(shared: &Shared, name: &str, headers: &HeaderMap) -> Response {
    let mut state = shared.lock();
    state.downloads += 1;
    if headers.contains_key(header::AUTHORIZATION) {
        state.file_authorizations += 1;
    }
    let (stem, extension) = name.rsplit_once('.').unwrap_or((name, ""));
    let (id, index) = stem.split_once('_').unwrap_or((stem, "0"));
    if !state.predictions.contains_key(id) {
        return not_found();
    }
    drop(state);
    let (content_type, bytes) = match extension {
        "png" => {
            let variant = index.parse::<u32>().unwrap_or(0);
            (
                "image/png",
                Bytes::from(gradient_png(IMAGE_SIDE, IMAGE_SIDE, variant)),
            )
        }
        "mp4" => ("video/mp4", Bytes::from(mp4())),
        "bin" => return fake_faults::endless(StatusCode::OK, "image/png", String::new()),
        _ => return not_found(),
    };
    match shared.faults.download() {
        // Replicate deletes output files after about an hour: 404.
        Some(DownloadFault::Expired) => fake_faults::expired(StatusCode::NOT_FOUND),
        Some(DownloadFault::Reset) => fake_faults::reset_file(content_type, bytes),
        Some(DownloadFault::Truncated) => fake_faults::cut_file(content_type, bytes),
        None => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, content_type)],
            bytes,
        )
            .into_response(),
    }
}

/// Replicate's problem-details error body.
fn error(code: StatusCode, title: &str, detail: &str) -> Response {
    let body = json!({"title": title, "detail": detail, "status": code.as_u16()});
    let mut response = (code, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "Not found",
        "The requested resource could not be found.",
    )
}

/// The front listener: one task per connection.
async fn accept(listener: TcpListener, backend: SocketAddr, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors or the like: don't spin.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(err) = relay(stream, backend, &shared).await {
                tracing::debug!(error = %err, "fake replicate relay connection ended");
            }
        });
    }
}

/// Reads one request head; answers a `test/reset` create with a broken
/// response, and hands anything else to the axum server with
/// `connection: close` added, so that every request comes through here
/// on a connection of its own.
async fn relay(mut client: TcpStream, backend: SocketAddr, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(4096);
    let head_end = loop {
        let mut buf = [0u8; 4096];
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = find(&head, b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > MAX_HEAD {
            return Ok(());
        }
    };
    let text = String::from_utf8_lossy(&head[..head_end]).into_owned();
    if text.starts_with("POST /v1/models/test/reset/predictions ") {
        return reset(client, &text, head.len() - head_end, shared).await;
    }
    let mut upstream = TcpStream::connect(backend).await?;
    // Last, so no keep-alive line of the client's can come after it.
    upstream.write_all(&head[..head_end - 2]).await?;
    upstream.write_all(b"connection: close\r\n\r\n").await?;
    upstream.write_all(&head[head_end..]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Counts the create (when authorized), reads the rest of its body, then
/// answers 201 with a content-length far beyond the few bytes it sends,
/// and closes: the client sees the connection drop mid-body.
async fn reset(
    mut client: TcpStream,
    head: &str,
    body_read: usize,
    shared: &Shared,
) -> std::io::Result<()> {
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let authorized = header("authorization")
        .and_then(|value| value.strip_prefix("Bearer ").map(str::to_owned))
        .is_some_and(|token| !token.trim().is_empty());
    if authorized {
        *shared
            .lock()
            .creates
            .entry("test/reset".into())
            .or_default() += 1;
    }
    let length: usize = header("content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let mut left = length.saturating_sub(body_read);
    let mut buf = [0u8; 4096];
    while left > 0 {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        left = left.saturating_sub(n);
    }
    client
        .write_all(
            b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 4096\r\n\r\n{\"id\": \"rpreset\", \"status\": \"sta",
        )
        .await?;
    client.flush().await?;
    client.shutdown().await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

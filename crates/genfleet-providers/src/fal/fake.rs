//! A fake fal queue API: a real HTTP server on 127.0.0.1, shaped like
//! `queue.fal.run` (see `shared/PROVIDERS.md`), failure modes included.
//!
//! Used by this crate's tests and, through the `fake` feature, by the
//! workspace's end-to-end tests. The model path picks the behaviour:
//!
//! | model               | behaviour                                                   |
//! |---------------------|-------------------------------------------------------------|
//! | `test/ok`           | one IN_PROGRESS poll, then COMPLETED; 256x256 PNGs          |
//! | `test/flaky`        | per prompt+seed: 429 (Retry-After 1), then 503, then ok     |
//! | `test/nsfw`         | completes with `has_nsfw_concepts: [true]`                  |
//! | `test/reject`       | submit answers 422 with a validation `detail` list          |
//! | `test/down`         | submit always answers 503                                   |
//! | `test/failed-result`| reads COMPLETED, result answers 500 (fal's FAILED trap)     |
//! | `test/stuck`        | IN_PROGRESS forever                                         |
//! | `test/malformed`    | result body is truncated JSON                               |
//! | `test/video`        | completes with a small MP4 `video`                          |
//! | `test/sleep-<ms>`   | IN_QUEUE, then IN_PROGRESS until `<ms>` after its submit,   |
//! |                     | then COMPLETED like `test/ok` (e.g. `test/sleep-2000`)      |
//! | `test/extra`        | like `test/ok`, with 2 more images than `num_images`        |
//! | `test/echo`         | submit answers 422 quoting the key and the prompt back      |
//! | `test/endless`      | completes; its result body never ends                       |
//! | `test/endless-file` | completes; its output file never ends                       |
//! | other `test/*`      | 404, as fal answers for an unknown app                      |
//! | any other owner     | like `test/ok`, so production model names work unchanged    |
//!
//! On top of the models' behaviours, [`FakeFal::set_faults`] and
//! [`FakeFal::start_outage`] play the fault table (see
//! [`crate::fake_faults`]) on every model: submits refused with 429 (with
//! `Retry-After`) or 503 (`runner_scheduling_failure`), status and result
//! reads reset mid-body, result bodies truncated, and an outage in which
//! every API call answers a plain 503 as fal's edge would (not fal's error
//! body: an outage is no verdict on a request); submits run (and billed)
//! whose answer is lost mid-body, status polls reset mid-body, and output
//! downloads (`/files/*`, fal's CDN) reset, cut short or answered 403 as an
//! expired signed URL. [`FakeFal::fault_counts`] counts accepted, refused
//! and lost submits, reads, downloads and renders.
//!
//! Every route but `/files/*` needs an `Authorization: Key ...` header, and
//! `/files/*` (the stand-in for fal's CDN) is served without one, as the
//! real file host is. It keeps everything in memory and is not meant to be
//! long-lived. It does serve thousands of concurrent connections (the
//! in-flight bench holds 2,000 `test/sleep-2000` requests): its one lock is
//! never held across an await, nor while a body is parsed or a PNG made.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use url::Url;

use crate::fake_faults::{self, DownloadFault, FaultState, ReadFault, SubmitFault};
pub use crate::fake_faults::{FaultCounts, Faults};
pub use crate::fake_media::{gradient_png, mp4};

/// Side of the square PNGs served for image outputs.
const IMAGE_SIDE: u32 = 256;
/// Upper bound on `num_images`, so a bad test cannot make the fake allocate
/// without limit.
const MAX_IMAGES: u64 = 16;

/// A running fake; the server stops when this is dropped.
pub struct FakeFal {
    /// Root to put in `FalConfig::base_url`, with a trailing slash.
    pub base_url: Url,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for FakeFal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeFal")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl FakeFal {
    /// Binds 127.0.0.1 on a free port and serves until dropped.
    ///
    /// # Errors
    ///
    /// When the listener cannot be bound.
    pub async fn start() -> std::io::Result<FakeFal> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let base_url = Url::parse(&format!("http://{address}/")).map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            origin: format!("http://{address}"),
            next_id: AtomicU64::new(1),
            downloads: AtomicU64::new(0),
            max_outstanding: AtomicU64::new(0),
            state: Mutex::new(FakeState::default()),
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
                tracing::warn!(error = %err, "fake fal server stopped with an error");
            }
        });
        Ok(FakeFal {
            base_url,
            shared,
            shutdown: Some(shutdown),
        })
    }

    /// Authorized submit requests received, whatever they were answered.
    pub fn submissions(&self) -> u64 {
        self.shared.lock().submissions.values().sum()
    }

    /// Authorized submit requests received for `model` (`owner/app`; a
    /// sub-path is ignored, as fal ignores it for queue bookkeeping).
    pub fn submissions_for(&self, model: &str) -> u64 {
        let app = app_of(model);
        self.shared
            .lock()
            .submissions
            .get(&app)
            .copied()
            .unwrap_or(0)
    }

    /// The most requests accepted and not yet downloaded at one moment
    /// (each request counted as one output): for one-image jobs, the most
    /// a client had at this provider at once.
    pub fn max_outstanding(&self) -> u64 {
        self.shared.max_outstanding.load(Ordering::Relaxed)
    }

    /// The `image_url` field (a data URI for our inputs) of the last
    /// submit that carried one.
    pub fn last_image_url(&self) -> Option<String> {
        self.shared.lock().last_image_url.clone()
    }

    /// The model input of the last authorized submit that was JSON.
    pub fn last_input(&self) -> Option<serde_json::Map<String, Value>> {
        self.shared.lock().last_input.clone()
    }

    /// Cancel requests received for known requests.
    pub fn cancellations(&self) -> u64 {
        self.shared.lock().cancellations
    }

    /// Output files served (`/files/*` answered 200): the last step of a
    /// client's exchange, which lets a bench count finished calls of a
    /// client that reports nothing back.
    pub fn downloads(&self) -> u64 {
        self.shared.downloads.load(Ordering::Relaxed)
    }

    /// Plays `faults` from now on, on every model (replacing earlier ones).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.set(faults);
    }

    /// Answers every API call (submit, status, result, cancel) with a plain
    /// 503 for `length` from now; `/files/*` stays up.
    pub fn start_outage(&self, length: Duration) {
        self.shared.faults.start_outage(length);
    }

    /// Submits accepted and refused, reads and renders so far.
    pub fn fault_counts(&self) -> FaultCounts {
        self.shared.faults.counts()
    }

    /// Result reads received so far, whatever they were answered.
    pub fn result_reads(&self) -> u64 {
        self.shared.faults.counts().result_reads
    }
}

impl Drop for FakeFal {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

struct Shared {
    /// `http://127.0.0.1:port`, for the absolute URLs fal hands out.
    origin: String,
    next_id: AtomicU64,
    downloads: AtomicU64,
    /// The most accepted submits not yet matched by an output download.
    max_outstanding: AtomicU64,
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
    /// Submits per `owner/app`.
    submissions: HashMap<String, u64>,
    /// `test/flaky` submits per prompt+seed.
    flaky: HashMap<String, u32>,
    requests: HashMap<String, FakeRequest>,
    cancellations: u64,
    /// `image_url` of the last submit that had one.
    last_image_url: Option<String>,
    last_input: Option<serde_json::Map<String, Value>>,
}

struct FakeRequest {
    app: String,
    behaviour: Behaviour,
    polls: u32,
    num_images: u64,
    seed: Option<u64>,
    submitted: Instant,
}

impl FakeRequest {
    fn completed(&self) -> bool {
        match self.behaviour {
            Behaviour::Stuck => false,
            Behaviour::Sleep(delay) => self.submitted.elapsed() >= delay,
            // The first poll sees IN_PROGRESS, so clients must really poll.
            _ => self.polls >= 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Ok,
    Flaky,
    Nsfw,
    Reject,
    Down,
    FailedResult,
    Stuck,
    Malformed,
    Video,
    /// Completes this long after its submit, however often it is polled.
    Sleep(Duration),
    Extra,
    Echo,
    Endless,
    EndlessFile,
}

impl Behaviour {
    fn for_app(owner: &str, app: &str) -> Option<Behaviour> {
        if owner != "test" {
            return Some(Behaviour::Ok);
        }
        Some(match app {
            "ok" => Behaviour::Ok,
            "flaky" => Behaviour::Flaky,
            "nsfw" => Behaviour::Nsfw,
            "reject" => Behaviour::Reject,
            "down" => Behaviour::Down,
            "failed-result" => Behaviour::FailedResult,
            "stuck" => Behaviour::Stuck,
            "malformed" => Behaviour::Malformed,
            "video" => Behaviour::Video,
            "extra" => Behaviour::Extra,
            "echo" => Behaviour::Echo,
            "endless" => Behaviour::Endless,
            "endless-file" => Behaviour::EndlessFile,
            other => {
                let millis = other.strip_prefix("sleep-")?.parse::<u64>().ok()?;
                Behaviour::Sleep(Duration::from_millis(millis))
            }
        })
    }
}

fn app_of(model: &str) -> String {
    model
        .trim_matches('/')
        .split('/')
        .take(2)
        .collect::<Vec<_>>()
        .join("/")
}

/// One handler for every route: fal's paths overlap (`/{owner}/{app}`
/// with optional sub-paths), which is clearer matched by hand than by a
/// router.
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
            return file(&shared, name);
        }
    }
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Key "))
        .filter(|key| !key.trim().is_empty());
    let Some(key) = key else {
        return error(
            StatusCode::UNAUTHORIZED,
            json!({"detail": "Missing or invalid Authorization header"}),
        );
    };
    match (method, segments.as_slice()) {
        (Method::GET, [owner, app, "requests", id, "status"]) => status(&shared, owner, app, id),
        (Method::GET, [owner, app, "requests", id]) => result(&shared, owner, app, id),
        (Method::PUT, [owner, app, "requests", id, "cancel"]) => cancel(&shared, owner, app, id),
        (Method::POST, [owner, app, ..]) if !owner.is_empty() && !app.is_empty() => {
            submit(&shared, owner, app, key, &body)
        }
        _ => error(StatusCode::NOT_FOUND, json!({"detail": "Not Found"})),
    }
}

fn submit(shared: &Shared, owner: &str, app: &str, key: &str, body: &[u8]) -> Response {
    let model = format!("{owner}/{app}");
    // Parsed before the lock is taken: a body with a data-URI image is
    // hundreds of kB, and thousands of submits at once must not queue on it.
    let parsed = serde_json::from_slice::<serde_json::Map<String, Value>>(body);
    let mut state = shared.lock();
    *state.submissions.entry(model.clone()).or_default() += 1;
    let Some(behaviour) = Behaviour::for_app(owner, app) else {
        return error(
            StatusCode::NOT_FOUND,
            json!({"detail": format!("Application '{app}' not found")}),
        );
    };
    let input = match parsed {
        Ok(input) => input,
        Err(_) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"detail": [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]}),
            )
        }
    };
    if let Some(url) = input.get("image_url").and_then(Value::as_str) {
        state.last_image_url = Some(url.to_owned());
    }
    state.last_input = Some(input.clone());
    let seed = input.get("seed").and_then(Value::as_u64);
    // The fault table comes before the model's own behaviour: a refused
    // submit never reaches a runner.
    if let Some(fault) = shared.faults.submit() {
        return match fault {
            SubmitFault::Outage => fake_faults::outage(),
            SubmitFault::RateLimited(secs) => {
                fake_faults::rate_limited(secs, json!({"detail": "Rate limit exceeded"}))
            }
            SubmitFault::Unavailable => {
                infrastructure_error("runner_scheduling_failure", "no runner could be scheduled")
            }
        };
    }
    match behaviour {
        Behaviour::Echo => {
            // As a careless model server might: the key and the input back.
            let prompt = input
                .get("prompt")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "detail": format!("key {key} may not run the prompt '{prompt}' (Authorization: Key {key})"),
                    "error_type": format!("invalid_key_{key}"),
                }),
            );
        }
        Behaviour::Reject => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"detail": [{"loc": ["body", "prompt"], "msg": "prompt is too long", "type": "value_error"}]}),
            )
        }
        Behaviour::Down => {
            shared.faults.refused();
            return infrastructure_error("runner_scheduling_failure", "no runners are available");
        }
        Behaviour::Flaky => {
            let prompt = input
                .get("prompt")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let seen = state
                .flaky
                .entry(format!("{prompt}\u{0}{seed:?}"))
                .or_default();
            *seen += 1;
            match *seen {
                1 => {
                    shared.faults.refused();
                    let mut response = error(
                        StatusCode::TOO_MANY_REQUESTS,
                        json!({"detail": "Rate limit exceeded"}),
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return response;
                }
                2 => {
                    shared.faults.refused();
                    return infrastructure_error(
                        "runner_scheduling_failure",
                        "no runner could be scheduled",
                    );
                }
                _ => {}
            }
        }
        _ => {}
    }
    shared.faults.accepted();
    let number = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let outstanding = number.saturating_sub(shared.downloads.load(Ordering::Relaxed));
    shared
        .max_outstanding
        .fetch_max(outstanding, Ordering::Relaxed);
    let id = format!("req{number:08}");
    let mut num_images = input
        .get("num_images")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, MAX_IMAGES);
    if behaviour == Behaviour::Extra {
        num_images += 2;
    }
    state.requests.insert(
        id.clone(),
        FakeRequest {
            app: model.clone(),
            behaviour,
            polls: 0,
            num_images,
            seed,
            submitted: Instant::now(),
        },
    );
    let base = format!("{}/{model}/requests/{id}", shared.origin);
    let answer = json!({
        "request_id": id,
        "response_url": base,
        "status_url": format!("{base}/status"),
        "cancel_url": format!("{base}/cancel"),
        "queue_position": 0,
    });
    // The request exists and will run (and be billed) whether or not its
    // id reaches the client.
    if shared.faults.answer_lost() {
        return fake_faults::lost_answer(StatusCode::OK, Bytes::from(answer.to_string()));
    }
    (StatusCode::OK, axum::Json(answer)).into_response()
}

fn status(shared: &Shared, owner: &str, app: &str, id: &str) -> Response {
    let fault = shared.faults.status_read();
    if fault == Some(ReadFault::Outage) {
        return fake_faults::outage();
    }
    let mut state = shared.lock();
    let Some(request) = known_request(&mut state, owner, app, id) else {
        return not_found();
    };
    request.polls = request.polls.saturating_add(1);
    let (code, status) = if request.completed() {
        (StatusCode::OK, "COMPLETED")
    } else if matches!(request.behaviour, Behaviour::Sleep(_)) && request.polls == 1 {
        // As fal answers while no runner has picked the request up yet.
        (StatusCode::ACCEPTED, "IN_QUEUE")
    } else {
        (StatusCode::ACCEPTED, "IN_PROGRESS")
    };
    let answer = json!({
        "status": status,
        "queue_position": 0,
        "response_url": format!("{}/{}/requests/{id}", shared.origin, request.app),
        "logs": [],
    });
    drop(state);
    faulty(fault, code, &answer)
}

fn result(shared: &Shared, owner: &str, app: &str, id: &str) -> Response {
    let fault = shared.faults.result_read();
    if fault == Some(ReadFault::Outage) {
        return fake_faults::outage();
    }
    let (code, answer) = match result_answer(shared, owner, app, id) {
        Ok(answer) => answer,
        Err(RawAnswer::NotFound) => return not_found(),
        Err(RawAnswer::Endless) => {
            return fake_faults::endless(
                StatusCode::OK,
                "application/json",
                r#"{"images": [], "padding": ""#.to_owned(),
            )
        }
        Err(RawAnswer::Truncated) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"images": ["#,
            )
                .into_response()
        }
    };
    faulty(fault, code, &answer)
}

/// A result answer that is not a JSON document.
enum RawAnswer {
    /// The request is unknown.
    NotFound,
    /// `test/malformed`'s result: JSON cut short.
    Truncated,
    /// `test/endless`'s result: a body that never ends.
    Endless,
}

/// The result of request `id` as fal answers it, or the answer that is
/// not a JSON document.
fn result_answer(
    shared: &Shared,
    owner: &str,
    app: &str,
    id: &str,
) -> Result<(StatusCode, Value), RawAnswer> {
    let mut state = shared.lock();
    let Some(request) = known_request(&mut state, owner, app, id) else {
        return Err(RawAnswer::NotFound);
    };
    if !request.completed() {
        return Ok((
            StatusCode::BAD_REQUEST,
            json!({"detail": "Request is still in progress"}),
        ));
    }
    let files = format!("{}/files", shared.origin);
    let images = || -> Vec<Value> {
        (0..request.num_images)
            .map(|i| {
                json!({
                    "url": format!("{files}/{id}_{i}.png"),
                    "content_type": "image/png",
                    "width": IMAGE_SIDE,
                    "height": IMAGE_SIDE,
                })
            })
            .collect()
    };
    let flags = |flag: bool| vec![Value::Bool(flag); images().len()];
    let seed = request.seed.unwrap_or(42);
    let answer = match request.behaviour {
        Behaviour::Ok | Behaviour::Flaky | Behaviour::Sleep(_) | Behaviour::Extra => {
            json!({"images": images(), "has_nsfw_concepts": flags(false), "seed": seed})
        }
        Behaviour::Endless => return Err(RawAnswer::Endless),
        Behaviour::EndlessFile => json!({
            "images": [{"url": format!("{files}/{id}_0.bin"), "content_type": "image/png"}],
            "has_nsfw_concepts": [false],
        }),
        Behaviour::Nsfw => {
            json!({"images": images(), "has_nsfw_concepts": flags(true), "seed": seed})
        }
        Behaviour::FailedResult => {
            return Ok((
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"detail": "runner crashed"}),
            ))
        }
        Behaviour::Malformed => return Err(RawAnswer::Truncated),
        Behaviour::Video => json!({
            "video": {
                "url": format!("{files}/{id}.mp4"),
                "content_type": "video/mp4",
                "file_name": format!("{id}.mp4"),
                "file_size": mp4().len(),
            },
            "seed": seed,
        }),
        // Never completed, never reaches here; answer as fal would.
        Behaviour::Stuck | Behaviour::Reject | Behaviour::Down | Behaviour::Echo => {
            return Ok((
                StatusCode::BAD_REQUEST,
                json!({"detail": "Request is still in progress"}),
            ))
        }
    };
    Ok((StatusCode::OK, answer))
}

/// `answer` as JSON with `code`, broken as `fault` says: reset mid-body, or
/// (a 200 only) cut short.
fn faulty(fault: Option<ReadFault>, code: StatusCode, answer: &Value) -> Response {
    match fault {
        Some(ReadFault::Reset) => fake_faults::reset(code, Bytes::from(answer.to_string())),
        Some(ReadFault::Truncated) if code == StatusCode::OK => {
            fake_faults::truncated(code, &Bytes::from(answer.to_string()))
        }
        _ => (code, axum::Json(answer)).into_response(),
    }
}

fn cancel(shared: &Shared, owner: &str, app: &str, id: &str) -> Response {
    if shared.faults.outage() {
        return fake_faults::outage();
    }
    let mut state = shared.lock();
    let Some(request) = known_request(&mut state, owner, app, id) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"status": "NOT_FOUND"})),
        )
            .into_response();
    };
    let status = if request.completed() {
        "ALREADY_COMPLETED"
    } else {
        "CANCELLATION_REQUESTED"
    };
    state.cancellations += 1;
    (StatusCode::ACCEPTED, axum::Json(json!({"status": status}))).into_response()
}

/// The request `id`, if it was submitted to `owner/app`.
fn known_request<'a>(
    state: &'a mut FakeState,
    owner: &str,
    app: &str,
    id: &str,
) -> Option<&'a mut FakeRequest> {
    let model = format!("{owner}/{app}");
    state
        .requests
        .get_mut(id)
        .filter(|request| request.app == model)
}

/// `/files/{id}_{i}.png` or `/files/{id}.mp4`, for known requests only, so a
/// made-up URL answers 404 like an expired one.
fn file(shared: &Shared, name: &str) -> Response {
    let (stem, extension) = name.rsplit_once('.').unwrap_or((name, ""));
    let (id, index) = stem.split_once('_').unwrap_or((stem, "0"));
    if !shared.lock().requests.contains_key(id) {
        return not_found();
    }
    let served = |response: Response| {
        shared.downloads.fetch_add(1, Ordering::Relaxed);
        response
    };
    let (content_type, bytes) = match extension {
        "png" => {
            let variant = index.parse::<u32>().unwrap_or(0);
            ("image/png", served_png(variant))
        }
        "mp4" => ("video/mp4", Bytes::from(mp4())),
        "bin" => {
            return served(fake_faults::endless(
                StatusCode::OK,
                "image/png",
                String::new(),
            ))
        }
        _ => return not_found(),
    };
    match shared.faults.download() {
        // fal's CDN serves signed URLs: past their expiry, 403.
        Some(DownloadFault::Expired) => fake_faults::expired(StatusCode::FORBIDDEN),
        Some(DownloadFault::Reset) => fake_faults::reset_file(content_type, bytes),
        Some(DownloadFault::Truncated) => fake_faults::cut_file(content_type, bytes),
        None => served(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, content_type)],
                bytes,
            )
                .into_response(),
        ),
    }
}

/// The PNG served for output `variant`, made once: `gradient_png`'s CRC and
/// Adler sums are bitwise and take milliseconds per image, too slow for
/// thousands of downloads. `gradient_png` shifts blue by `variant * 64`
/// modulo 256, so four images cover every variant.
fn served_png(variant: u32) -> Bytes {
    static PNGS: OnceLock<Vec<Bytes>> = OnceLock::new();
    let pngs = PNGS.get_or_init(|| {
        (0..4)
            .map(|v| Bytes::from(gradient_png(IMAGE_SIDE, IMAGE_SIDE, v)))
            .collect()
    });
    pngs[(variant % 4) as usize].clone()
}

fn error(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        json!({"detail": "Request not found"}),
    )
}

/// fal's infrastructure failure: 503, the type in body and header.
fn infrastructure_error(error_type: &'static str, detail: &str) -> Response {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"detail": detail, "error_type": error_type}),
    );
    response.headers_mut().insert(
        HeaderName::from_static("x-fal-error-type"),
        HeaderValue::from_static(error_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_pngs_are_the_gradients() {
        for variant in [0, 1, 2, 3, 4, 7, 13] {
            assert_eq!(
                served_png(variant),
                gradient_png(IMAGE_SIDE, IMAGE_SIDE, variant),
                "variant {variant}"
            );
        }
    }

    #[test]
    fn sleep_models_parse_their_delay() {
        assert_eq!(
            Behaviour::for_app("test", "sleep-2000"),
            Some(Behaviour::Sleep(Duration::from_secs(2)))
        );
        assert_eq!(Behaviour::for_app("test", "sleep-"), None);
        assert_eq!(Behaviour::for_app("test", "sleep-2s"), None);
    }
}

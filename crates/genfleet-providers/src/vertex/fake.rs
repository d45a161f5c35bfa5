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

/// One handler for every route: the model segment carries `:method`,
/// clearer split by hand than matched by a router.
async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_matches('/');
    if path == "token" || path == METADATA_TOKEN_PATH {
        if method != Method::GET {
            return google_error(StatusCode::METHOD_NOT_ALLOWED, "", "method not allowed");
        }
        return token(&shared, &headers).await;
    }
    let segments: Vec<&str> = path.split('/').collect();
    let ["v1", "projects", project, "locations", region, "publishers", "google", "models", target] =
        segments.as_slice()
    else {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested URL was not found on this server.",
        );
    };
    if method != Method::POST {
        return google_error(StatusCode::METHOD_NOT_ALLOWED, "", "method not allowed");
    }
    let Some((model, rpc)) = target.split_once(':') else {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested URL was not found on this server.",
        );
    };
    if !authorized(&shared, &headers) {
        shared.lock().unauthorized += 1;
        return google_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        );
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return invalid("Invalid JSON payload received.");
    };
    {
        let mut state = shared.lock();
        *state.calls.entry((*model).to_owned()).or_default() += 1;
        state.received.push(Received {
            project: (*project).to_owned(),
            region: (*region).to_owned(),
            model: (*model).to_owned(),
            method: (*rpc).to_owned(),
            body: request.clone(),
        });
    }
    let behaviour = Behaviour::for_model(model);
    if behaviour == Behaviour::Missing {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Publisher Model `projects/{project}/locations/{region}/publishers/google/models/{model}` was not found or your project does not have access to it."),
        );
    }
    // The fault table comes before the model's own behaviour: a refused
    // call renders nothing.
    if let Some(fault) = shared.faults.submit() {
        return match fault {
            SubmitFault::Outage => fake_faults::outage(),
            SubmitFault::RateLimited(secs) => {
                let mut response = error_with_details(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RESOURCE_EXHAUSTED",
                    "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model.",
                    json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{secs}s")}]),
                );
                if let Ok(value) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            SubmitFault::Unavailable => google_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "The service is currently unavailable.",
            ),
        };
    }
    if behaviour == Behaviour::Echo {
        // As a careless gateway might: the token and the input back.
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let prompt = request
            .pointer("/instances/0/prompt")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return invalid(&format!(
            "Request with {authorization} has an invalid prompt \"{prompt}\"."
        ));
    }
    if behaviour == Behaviour::Endless {
        return fake_faults::endless(
            StatusCode::OK,
            "application/json",
            r#"{"predictions": [{"mimeType": "image/png", "bytesBase64Encoded": ""#.to_owned(),
        );
    }
    let response = match (rpc, behaviour.is_gemini(model)) {
        ("generateContent", true) => generate_content(&shared, behaviour, &request).await,
        ("predict", false) => predict(&shared, behaviour, model, &request).await,
        ("predict", true) => invalid("Gemini models are served by generateContent, not predict."),
        ("generateContent", false) => {
            invalid("This model does not support generateContent; use predict.")
        }
        _ => google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested URL was not found on this server.",
        ),
    };
    shared.faults.settle(response).await
}

/// `Authorization: Bearer <an issued, unexpired token>`.
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    let state = shared.lock();
    !state.refuse_all
        && state
            .issued
            .get(token)
            .is_some_and(|expiry| Instant::now() < *expiry)
}

async fn token(shared: &Shared, headers: &HeaderMap) -> Response {
    let (delay, failure) = {
        let mut state = shared.lock();
        state.token_requests += 1;
        (state.token_delay, state.token_failure)
    };
    let flavored = headers
        .get("metadata-flavor")
        .and_then(|value| value.to_str().ok())
        == Some("Google");
    if !flavored {
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/html")],
            "Missing Metadata-Flavor:Google header.",
        )
            .into_response();
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = failure {
        return (status, "token service failure").into_response();
    }
    let (access_token, life) = shared.issue();
    let answer = json!({
        "access_token": access_token,
        "expires_in": life.as_secs(),
        "token_type": "Bearer",
    });
    (StatusCode::OK, axum::Json(answer)).into_response()
}

async fn predict(shared: &Shared, behaviour: Behaviour, model: &str, request: &Value) -> Response {
    let samples = match sample_count(request) {
        Ok(samples) => samples,
        Err(message) => return invalid(message),
    };
    match behaviour {
        Behaviour::Down => {
            return google_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "The service is currently unavailable.",
            )
        }
        Behaviour::Invalid => {
            return invalid("Request contains an invalid argument.");
        }
        Behaviour::Forbidden => return google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Permission 'aiplatform.endpoints.predict' denied on resource (or it may not exist).",
        ),
        Behaviour::Quota if shared.lock().calls.get(model).copied().unwrap_or(0) <= 1 => {
            return quota_exceeded();
        }
        Behaviour::Slow => {
            let delay = shared.lock().slow_delay;
            tokio::time::sleep(delay).await;
        }
        _ => {}
    }
    if let Err(message) = check_predict(behaviour, request) {
        return invalid(message);
    }
    let filtered = || json!({"raiFilteredReason": "Unable to show generated images. All images were filtered out because they violated Vertex AI's usage guidelines. You will not be charged for blocked images. Try rephrasing the prompt. If you think this was an error, send feedback. Support codes: 39322892"});
    let upscale = request
        .pointer("/parameters/upscaleConfig/upscaleFactor")
        .and_then(Value::as_str);
    let predictions: Vec<Value> = match behaviour {
        Behaviour::Filtered => (0..samples).map(|_| filtered()).collect(),
        Behaviour::Partial => vec![filtered(), png_prediction(IMAGE_SIDE, 0)],
        Behaviour::Empty => return (StatusCode::OK, axum::Json(json!({}))).into_response(),
        _ => match upscale {
            Some(factor) => {
                let scale = if factor == "x4" { 4 } else { 2 };
                vec![png_prediction(IMAGE_SIDE * scale, 0)]
            }
            None => {
                let extra = if behaviour == Behaviour::Extra { 2 } else { 0 };
                (0..samples + extra)
                    .map(|i| png_prediction(IMAGE_SIDE, i))
                    .collect()
            }
        },
    };
    (
        StatusCode::OK,
        axum::Json(json!({"predictions": predictions})),
    )
        .into_response()
}

fn png_prediction(side: u32, variant: u32) -> Value {
    json!({
        "mimeType": "image/png",
        "bytesBase64Encoded": encode(&gradient_png(side, side, variant)),
    })
}

/// `parameters.sampleCount`, 1 when absent; Vertex refuses more than 4.
fn sample_count(request: &Value) -> Result<u32, &'static str> {
    match request.pointer("/parameters/sampleCount") {
        None => Ok(1),
        Some(value) => match value.as_u64() {
            Some(n @ 1..=4) => Ok(n as u32),
            _ => Err("sampleCount must be an integer between 1 and 4."),
        },
    }
}

/// The checks Vertex makes before generating anything; the error is an
/// INVALID_ARGUMENT message.
fn check_predict(behaviour: Behaviour, request: &Value) -> Result<(), &'static str> {
    let Some(instance) = request
        .get("instances")
        .and_then(Value::as_array)
        .and_then(|instances| instances.first())
        .filter(|instance| instance.is_object())
    else {
        return Err("instances must hold at least one instance.");
    };
    let parameters = request.get("parameters").cloned().unwrap_or(json!({}));
    if parameters.get("seed").is_some()
        && parameters.get("addWatermark").and_then(Value::as_bool) != Some(false)
    {
        return Err(
            "Seed is not supported when addWatermark is enabled; set addWatermark to false.",
        );
    }
    if behaviour == Behaviour::VtoOk || instance.get("personImage").is_some() {
        if !is_inline_image(instance.pointer("/personImage/image")) {
            return Err("personImage.image must hold a base64-encoded image.");
        }
        let products = instance
            .get("productImages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if products.is_empty() || !products.iter().all(|p| is_inline_image(p.get("image"))) {
            return Err("productImages must hold at least one base64-encoded image.");
        }
        return Ok(());
    }
    if parameters.get("mode").and_then(Value::as_str) == Some("upscale") {
        if !is_inline_image(instance.get("image")) {
            return Err("image must hold a base64-encoded image to upscale.");
        }
        let factor = parameters
            .pointer("/upscaleConfig/upscaleFactor")
            .and_then(Value::as_str);
        if !matches!(factor, Some("x2" | "x4")) {
            return Err("upscaleConfig.upscaleFactor must be x2 or x4.");
        }
        return Ok(());
    }
    if let Some(references) = instance.get("referenceImages") {
        let Some(references) = references.as_array().filter(|r| !r.is_empty()) else {
            return Err("referenceImages must not be empty.");
        };
        for reference in references {
            if let Some(image) = reference.get("referenceImage") {
                if !is_inline_image(Some(image)) {
                    return Err("referenceImage must hold a base64-encoded image.");
                }
            }
        }
        return Ok(());
    }
    match instance.get("prompt").and_then(Value::as_str) {
        Some(prompt) if !prompt.trim().is_empty() => Ok(()),
        _ => Err("prompt is required."),
    }
}

/// `{bytesBase64Encoded}` holding a PNG, JPEG or WebP.
fn is_inline_image(image: Option<&Value>) -> bool {
    image
        .and_then(|image| image.get("bytesBase64Encoded"))
        .and_then(Value::as_str)
        .and_then(decode)
        .is_some_and(|bytes| is_image(&bytes))
}

fn is_image(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
        || bytes.starts_with(&[0xFF, 0xD8, 0xFF])
        || (bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP")
}

async fn generate_content(shared: &Shared, behaviour: Behaviour, request: &Value) -> Response {
    let Some(parts) = request
        .pointer("/contents/0/parts")
        .and_then(Value::as_array)
        .filter(|parts| !parts.is_empty())
    else {
        return invalid("contents[0].parts must not be empty.");
    };
    for part in parts {
        if let Some(inline) = part.get("inlineData") {
            let image = inline
                .get("data")
                .and_then(Value::as_str)
                .and_then(decode)
                .is_some_and(|bytes| is_image(&bytes));
            let mime = inline.get("mimeType").and_then(Value::as_str).unwrap_or("");
            if !image || !mime.starts_with("image/") {
                return invalid("inlineData must hold a base64-encoded image with its mimeType.");
            }
        } else if part.get("text").and_then(Value::as_str).is_none() {
            return invalid("each part must hold text or inlineData.");
        }
    }
    if behaviour == Behaviour::Slow {
        let delay = shared.lock().slow_delay;
        tokio::time::sleep(delay).await;
    }
    let response_id = format!(
        "fake-response-{}",
        shared.next_response.fetch_add(1, Ordering::Relaxed)
    );
    let text = json!({"text": "Here is the image you asked for."});
    let answer = match behaviour {
        Behaviour::GeminiBlocked => json!({
            "promptFeedback": {
                "blockReason": "PROHIBITED_CONTENT",
                "blockReasonMessage": "The prompt was blocked due to prohibited content.",
            },
            "responseId": response_id,
        }),
        Behaviour::GeminiImageSafety => json!({
            "candidates": [{
                "content": {"role": "model"},
                "finishReason": "IMAGE_SAFETY",
                "finishMessage": "Unable to show the generated image because it may violate Google's Generative AI Prohibited Use policy.",
                "index": 0,
            }],
            "responseId": response_id,
        }),
        Behaviour::GeminiMalformed => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"candidates": [{"content": {"role": "model", "parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo"#,
            )
                .into_response()
        }
        Behaviour::GeminiTextOnly => json!({
            "candidates": [{
                "content": {"role": "model", "parts": [text]},
                "finishReason": "STOP",
                "index": 0,
            }],
            "responseId": response_id,
        }),
        _ => json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    text,
                    {"inlineData": {"mimeType": "image/png", "data": encode(&gradient_png(IMAGE_SIDE, IMAGE_SIDE, 0))}},
                ]},
                "finishReason": "STOP",
                "index": 0,
            }],
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302},
            "modelVersion": "gemini-2.5-flash-image",
            "responseId": response_id,
        }),
    };
    (StatusCode::OK, axum::Json(answer)).into_response()
}

/// 429 with the RetryInfo and QuotaFailure details Google sends.
fn quota_exceeded() -> Response {
    error_with_details(
        StatusCode::TOO_MANY_REQUESTS,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model with base model: imagen. Please submit a quota increase request.",
        json!([
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"subject": "online_prediction_requests_per_base_model"}],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.2s"},
        ]),
    )
}

fn invalid(message: &str) -> Response {
    google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
}

fn google_error(code: StatusCode, status: &str, message: &str) -> Response {
    error_with_details(code, status, message, json!([]))
}

/// Google's `{"error": {code, message, status, details}}`.
fn error_with_details(code: StatusCode, status: &str, message: &str, details: Value) -> Response {
    let body = json!({
        "error": {
            "code": code.as_u16(),
            "message": message,
            "status": status,
            "details": details,
        }
    });
    (code, axum::Json(body)).into_response()
}

fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

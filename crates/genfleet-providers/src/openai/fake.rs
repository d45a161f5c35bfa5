//! A fake OpenAI images API: a real HTTP server on 127.0.0.1 answering
//! `POST /v1/images/generations` (JSON) and `POST /v1/images/edits`
//! (multipart/form-data, parsed for real) in OpenAI's shapes (see
//! `shared/PROVIDERS.md`), failure modes included.
//!
//! Used by this crate's tests and, through the `fake` feature, by the
//! workspace's end-to-end tests. The `model` field picks the behaviour:
//!
//! | model            | behaviour                                                          |
//! |------------------|--------------------------------------------------------------------|
//! | `test/ok`        | `n` 64x64 PNGs as `b64_json`                                        |
//! | `test/policy`    | 400 `content_policy_violation`                                      |
//! | `test/rate`      | the fake's first call answers 429 with `retry-after-ms: 200`; then ok |
//! | `test/quota`     | 429 `insufficient_quota`                                            |
//! | `test/down`      | 500 `server_error`                                                  |
//! | `test/slow`      | ok, but only after [`SLOW_ANSWER`] (longer than a test's timeout)   |
//! | `test/url`       | `data[].url` pointing at this server's `/files/*`                   |
//! | `test/malformed` | 200 with truncated JSON                                             |
//! | `test/extra`     | like `test/ok`, with 2 more images than `n`                         |
//! | `test/echo`      | 400 quoting the key and the prompt back, the key in `code` too      |
//! | `test/endless`   | 200 with a body that never ends                                     |
//! | `test/endless-url` | one `data[].url` whose file never ends                            |
//! | other `test/*`   | 404 `model_not_found`                                               |
//! | any other model  | like `test/ok`, so production model names work unchanged           |
//!
//! An edit without an `image` file part or a `prompt` answers 400
//! `missing_required_parameter`, as OpenAI does; the fake records whether
//! a `mask` part came. The API routes need `Authorization: Bearer <key>`
//! (401 `invalid_api_key` otherwise); `/files/*` is served without one and
//! records any Authorization header that reaches it.
//!
//! [`FakeOpenAi::set_faults`] and [`FakeOpenAi::start_outage`] play the
//! submit rows of the fault table (see [`crate::fake_faults`]) on every
//! model: calls refused with 429 `rate_limit_exceeded` (with
//! `retry-after`) or 503, an outage in which every API call answers a
//! plain 503, calls rendered (billed) whose answer is lost mid-body, and
//! downloads of `test/url`'s files reset, cut short or answered 403 as an
//! expired signed URL; [`FakeOpenAi::fault_counts`] counts the calls
//! accepted, refused and lost, and the downloads.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use url::Url;

use crate::fake_faults::{self, DownloadFault, FaultState, SubmitFault};
pub use crate::fake_faults::{FaultCounts, Faults};
use crate::fake_media::gradient_png;

/// How long `test/slow` takes to answer.
pub const SLOW_ANSWER: Duration = Duration::from_secs(3);
/// Side of the square PNGs served.
const IMAGE_SIDE: u32 = 64;
/// Upper bound on `n`, so a bad test cannot make the fake allocate without
/// limit.
const MAX_IMAGES: u64 = 10;

/// A running fake; the server stops when this is dropped.
pub struct FakeOpenAi {
    /// Root to put in `OpenAiConfig::base_url`, with a trailing slash.
    pub base_url: Url,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for FakeOpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOpenAi")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

/// What one authorized call carried.
#[derive(Debug, Clone, Default)]
pub struct SeenCall {
    /// `generations` or `edits`.
    pub endpoint: String,
    /// The `Authorization` header, verbatim.
    pub authorization: String,
    /// The `OpenAI-Organization` header, if any.
    pub organization: Option<String>,
    /// Text fields: the JSON body's top-level values (strings bare, others
    /// as JSON) or the multipart text parts.
    pub fields: BTreeMap<String, String>,
    /// Multipart file parts by name.
    pub files: BTreeMap<String, SeenFile>,
}

/// One multipart file part.
#[derive(Debug, Clone)]
pub struct SeenFile {
    pub filename: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

impl FakeOpenAi {
    /// Binds 127.0.0.1 on a free port and serves until dropped.
    ///
    /// # Errors
    ///
    /// When the listener cannot be bound.
    pub async fn start() -> std::io::Result<FakeOpenAi> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
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
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    // A dropped sender also means stop.
                    let _ = stopped.await;
                })
                .await;
            if let Err(err) = served {
                tracing::warn!(error = %err, "fake openai server stopped with an error");
            }
        });
        Ok(FakeOpenAi {
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

    /// Authorized calls received, whatever they were answered.
    pub fn calls(&self) -> u64 {
        self.shared.lock().calls.values().sum()
    }

    /// Authorized calls received for `model`.
    pub fn calls_for(&self, model: &str) -> u64 {
        self.shared.lock().calls.get(model).copied().unwrap_or(0)
    }

    /// The last authorized call, if any.
    pub fn last_call(&self) -> Option<SeenCall> {
        self.shared.lock().last_call.clone()
    }

    /// Whether the last edit carried a `mask` part (`None`: no edit yet).
    pub fn last_edit_had_mask(&self) -> Option<bool> {
        self.shared.lock().last_edit_had_mask
    }

    /// API requests refused for a missing or malformed bearer key.
    pub fn unauthorized(&self) -> u64 {
        self.shared.lock().unauthorized
    }

    /// Requests served under `/files/`.
    pub fn downloads(&self) -> u64 {
        self.shared.lock().downloads
    }

    /// Whether any request to `/files/` carried an Authorization header.
    pub fn key_reached_file_host(&self) -> bool {
        self.shared.lock().file_authorizations > 0
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

struct Shared {
    /// `http://127.0.0.1:port`, for `test/url`'s absolute URLs.
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
    /// Authorized calls per model.
    calls: HashMap<String, u64>,
    last_call: Option<SeenCall>,
    last_edit_had_mask: Option<bool>,
    unauthorized: u64,
    downloads: u64,
    file_authorizations: u64,
    /// Images handed out as URLs: file name → variant.
    files: HashMap<String, u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Ok,
    Policy,
    Rate,
    Quota,
    Down,
    Slow,
    Url,
    Malformed,
    Extra,
    Echo,
    Endless,
    EndlessUrl,
}

impl Behaviour {
    fn for_model(model: &str) -> Option<Behaviour> {
        let Some(name) = model.strip_prefix("test/") else {
            return Some(Behaviour::Ok);
        };
        Some(match name {
            "ok" => Behaviour::Ok,
            "policy" => Behaviour::Policy,
            "rate" => Behaviour::Rate,
            "quota" => Behaviour::Quota,
            "down" => Behaviour::Down,
            "slow" => Behaviour::Slow,
            "url" => Behaviour::Url,
            "malformed" => Behaviour::Malformed,
            "extra" => Behaviour::Extra,
            "echo" => Behaviour::Echo,
            "endless" => Behaviour::Endless,
            "endless-url" => Behaviour::EndlessUrl,
            _ => return None,
        })
    }
}

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
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = text("authorization").filter(|value| {
        value
            .strip_prefix("Bearer ")
            .is_some_and(|key| !key.trim().is_empty())
    });
    let Some(authorization) = authorization else {
        shared.lock().unauthorized += 1;
        return error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            "invalid_request_error",
            Some("invalid_api_key"),
            None,
        );
    };
    let mut seen = SeenCall {
        authorization,
        organization: text("openai-organization"),
        ..SeenCall::default()
    };
    match (method, segments.as_slice()) {
        (Method::POST, ["v1", "images", "generations"]) => {
            seen.endpoint = "generations".into();
            let Ok(Value::Object(json)) = serde_json::from_slice::<Value>(&body) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "We could not parse the JSON body of your request.",
                    "invalid_request_error",
                    None,
                    None,
                );
            };
            for (key, value) in json {
                let value = match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                };
                seen.fields.insert(key, value);
            }
        }
        (Method::POST, ["v1", "images", "edits"]) => {
            seen.endpoint = "edits".into();
            let boundary = text("content-type").and_then(|value| boundary_of(&value));
            let Some(parts) = boundary.and_then(|boundary| parse_multipart(&body, &boundary))
            else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Invalid multipart/form-data body.",
                    "invalid_request_error",
                    None,
                    None,
                );
            };
            for part in parts {
                match part.filename {
                    Some(filename) => {
                        seen.files.insert(
                            part.name,
                            SeenFile {
                                filename,
                                content_type: part.content_type.unwrap_or_default(),
                                bytes: part.data,
                            },
                        );
                    }
                    None => {
                        seen.fields
                            .insert(part.name, String::from_utf8_lossy(&part.data).into_owned());
                    }
                }
            }
        }
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "Invalid URL",
                "invalid_request_error",
                None,
                None,
            )
        }
    }
    // The fault table comes before the model's own behaviour: a refused
    // call renders nothing.
    if let Some(fault) = shared.faults.submit() {
        return match fault {
            SubmitFault::Outage => fake_faults::outage(),
            SubmitFault::RateLimited(secs) => {
                let mut response = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Rate limit reached for requests.",
                    "requests",
                    Some("rate_limit_exceeded"),
                    None,
                );
                if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            SubmitFault::Unavailable => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The server is overloaded or not ready yet.",
                "server_error",
                None,
                None,
            ),
        };
    }
    let response = answer(&shared, seen).await;
    shared.faults.settle(response).await
}

/// Counts and records the call, then answers as the model's behaviour says.
async fn answer(shared: &Shared, seen: SeenCall) -> Response {
    let model = seen.fields.get("model").cloned().unwrap_or_default();
    let n = seen
        .fields
        .get("n")
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(1)
        .clamp(1, MAX_IMAGES);
    let edit = seen.endpoint == "edits";
    let echoed = format!(
        "{} may not ask for '{}'",
        seen.authorization,
        seen.fields.get("prompt").map_or("", String::as_str)
    );
    let key = seen
        .authorization
        .strip_prefix("Bearer ")
        .unwrap_or_default()
        .to_owned();
    let missing = if edit && seen.files.get("image").is_none_or(|f| f.bytes.is_empty()) {
        Some("image")
    } else if seen.fields.get("prompt").is_none_or(String::is_empty) {
        Some("prompt")
    } else {
        None
    };
    let first = {
        let mut state = shared.lock();
        let calls = state.calls.entry(model.clone()).or_default();
        *calls += 1;
        let first = *calls == 1;
        if edit {
            state.last_edit_had_mask = Some(seen.files.contains_key("mask"));
        }
        state.last_call = Some(seen);
        first
    };
    if let Some(missing) = missing {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("Missing required parameter: '{missing}'."),
            "invalid_request_error",
            Some("missing_required_parameter"),
            Some(missing),
        );
    }
    let Some(behaviour) = Behaviour::for_model(&model) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("The model '{model}' does not exist or you do not have access to it."),
            "invalid_request_error",
            Some("model_not_found"),
            None,
        );
    };
    match behaviour {
        Behaviour::Policy => {
            return error(
                StatusCode::BAD_REQUEST,
                "Your request was rejected as a result of our safety system. Your prompt may contain text that is not allowed by our safety system.",
                "invalid_request_error",
                Some("content_policy_violation"),
                None,
            )
        }
        Behaviour::Rate if first => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for images per minute. Please try again in 200ms.",
                "requests",
                Some("rate_limit_exceeded"),
                None,
            );
            response.headers_mut().insert(
                HeaderName::from_static("retry-after-ms"),
                HeaderValue::from_static("200"),
            );
            return response;
        }
        Behaviour::Quota => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                Some("insufficient_quota"),
                None,
            )
        }
        Behaviour::Down => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
            )
        }
        Behaviour::Malformed => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"created": 1767225600, "data": [{"b64_json": "iVBO"#,
            )
                .into_response()
        }
        Behaviour::Echo => {
            return error(
                StatusCode::BAD_REQUEST,
                &echoed,
                "invalid_request_error",
                Some(&format!("bad_key_{key}")),
                None,
            )
        }
        Behaviour::Endless => {
            return fake_faults::endless(
                StatusCode::OK,
                "application/json",
                r#"{"created": 1767225600, "data": [{"b64_json": ""#.to_owned(),
            )
        }
        Behaviour::EndlessUrl => {
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let name = format!("img{id}_0.bin");
            shared.lock().files.insert(name.clone(), 0);
            let data = json!([{"url": format!("{}/files/{name}", shared.origin)}]);
            return (
                StatusCode::OK,
                axum::Json(json!({"created": 1_767_225_600, "data": data})),
            )
                .into_response();
        }
        Behaviour::Slow => tokio::time::sleep(SLOW_ANSWER).await,
        Behaviour::Ok | Behaviour::Rate | Behaviour::Url | Behaviour::Extra => {}
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let extra = if behaviour == Behaviour::Extra { 2 } else { 0 };
    let data: Vec<Value> = (0..n + extra)
        .map(|i| {
            let variant = u32::try_from(i).unwrap_or(0);
            if behaviour == Behaviour::Url {
                let name = format!("img{id}_{i}.png");
                shared.lock().files.insert(name.clone(), variant);
                json!({"url": format!("{}/files/{name}", shared.origin)})
            } else {
                let png = gradient_png(IMAGE_SIDE, IMAGE_SIDE, variant);
                json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(png)})
            }
        })
        .collect();
    let mut response = (
        StatusCode::OK,
        axum::Json(json!({"created": 1_767_225_600, "data": data})),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("req_fake{id:08}")) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-request-id"), value);
    }
    response
}

/// `/files/{name}` for images handed out by `test/url`.
fn file(shared: &Shared, name: &str, headers: &HeaderMap) -> Response {
    let mut state = shared.lock();
    state.downloads += 1;
    if headers.contains_key(header::AUTHORIZATION) {
        state.file_authorizations += 1;
    }
    let variant = match state.files.get(name) {
        Some(_) if name.ends_with(".bin") => {
            return fake_faults::endless(StatusCode::OK, "image/png", String::new())
        }
        Some(&variant) => variant,
        None => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    drop(state);
    let png = Bytes::from(gradient_png(IMAGE_SIDE, IMAGE_SIDE, variant));
    match shared.faults.download() {
        // OpenAI's image URLs are signed blob URLs: past their expiry, 403.
        Some(DownloadFault::Expired) => fake_faults::expired(StatusCode::FORBIDDEN),
        Some(DownloadFault::Reset) => fake_faults::reset_file("image/png", png),
        Some(DownloadFault::Truncated) => fake_faults::cut_file("image/png", png),
        None => (StatusCode::OK, [(header::CONTENT_TYPE, "image/png")], png).into_response(),
    }
}

/// OpenAI's error body.
fn error(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "code": code, "param": param}});
    (status, axum::Json(body)).into_response()
}

/// One parsed multipart part.
struct Part {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

/// The `boundary` parameter of a `multipart/form-data` content type.
fn boundary_of(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// A strict RFC 7578 parser: `--boundary` lines, part headers, CRLF before
/// each delimiter, and the closing `--boundary--`. `None` for any framing
/// error, so a sloppy client body fails the test that sent it.
fn parse_multipart(body: &[u8], boundary: &str) -> Option<Vec<Part>> {
    let opening = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    let mut rest = body.strip_prefix(opening.as_bytes())?;
    let mut parts = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&rest[..head_end]).ok()?;
        rest = &rest[head_end + 4..];
        let data_end = find(rest, delimiter.as_bytes())?;
        let data = rest[..data_end].to_vec();
        rest = &rest[data_end + delimiter.len()..];

        let mut name = None;
        let mut filename = None;
        let mut content_type = None;
        for line in head.split("\r\n") {
            let (key, value) = line.split_once(':')?;
            if key.trim().eq_ignore_ascii_case("content-disposition") {
                let mut params = value.split(';');
                if params.next()?.trim() != "form-data" {
                    return None;
                }
                for param in params {
                    let (key, value) = param.split_once('=')?;
                    let value = value.trim().strip_prefix('"')?.strip_suffix('"')?;
                    match key.trim() {
                        "name" => name = Some(value.to_owned()),
                        "filename" => filename = Some(value.to_owned()),
                        _ => {}
                    }
                }
            } else if key.trim().eq_ignore_ascii_case("content-type") {
                content_type = Some(value.trim().to_owned());
            }
        }
        parts.push(Part {
            name: name?,
            filename,
            content_type,
            data,
        });
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_client_frames() {
        let parts = vec![
            crate::openai::client::Part {
                name: "prompt".into(),
                body: crate::openai::client::PartBody::Text("line one\r\nline two".into()),
            },
            crate::openai::client::Part {
                name: "image".into(),
                body: crate::openai::client::PartBody::File {
                    filename: "image.png".into(),
                    content_type: "image/png".into(),
                    bytes: bytes::Bytes::from_static(b"\r\n--not-it\r\n"),
                },
            },
        ];
        let body = crate::openai::client::encode_multipart(&parts, "b0undary");
        let parsed = parse_multipart(&body, "b0undary").unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].name, "prompt");
        assert_eq!(parsed[0].data, b"line one\r\nline two");
        assert_eq!(parsed[1].filename.as_deref(), Some("image.png"));
        assert_eq!(parsed[1].content_type.as_deref(), Some("image/png"));
        assert_eq!(parsed[1].data, b"\r\n--not-it\r\n");
        assert!(parse_multipart(&body[..body.len() - 6], "b0undary").is_none());
        assert!(parse_multipart(&body, "other").is_none());
    }

    #[test]
    fn reads_the_boundary() {
        assert_eq!(
            boundary_of("multipart/form-data; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary_of("multipart/form-data; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary_of("application/json"), None);
    }
}

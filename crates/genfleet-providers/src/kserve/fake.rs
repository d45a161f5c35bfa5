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

/// One handler for every route, matched by hand like the fake fal.
async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(token) = &shared.bearer {
        let authorized = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .is_some_and(|sent| sent == token);
        if !authorized {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or invalid bearer token".into(),
            );
        }
    }
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (name, version, action) = match (&method, segments.as_slice()) {
        (&Method::GET, ["v2", "health", "live"]) => return StatusCode::OK.into_response(),
        (&Method::GET, ["v2", "health", "ready"]) => {
            return if shared.lock().server_not_ready {
                StatusCode::SERVICE_UNAVAILABLE.into_response()
            } else {
                StatusCode::OK.into_response()
            }
        }
        (_, ["v2", "models", name, rest @ ..]) => {
            let (version, rest) = match rest {
                ["versions", version, rest @ ..] => (Some(*version), rest),
                rest => (None, rest),
            };
            let action = match (&method, rest) {
                (&Method::GET, []) => Action::Metadata,
                (&Method::GET, ["ready"]) => Action::Ready,
                (&Method::POST, ["infer"]) => Action::Infer,
                _ => return error(StatusCode::NOT_FOUND, "Not Found".into()),
            };
            (*name, version, action)
        }
        _ => return error(StatusCode::NOT_FOUND, "Not Found".into()),
    };
    if let Action::Infer = action {
        *shared
            .lock()
            .infer_calls
            .entry(name.to_owned())
            .or_default() += 1;
    }
    let behaviour = match Behaviour::for_name(name) {
        Some(behaviour) if version.is_none_or(|v| v == "1") => behaviour,
        _ => return unknown_model(name, version),
    };
    match action {
        Action::Metadata => (StatusCode::OK, axum::Json(metadata(behaviour, name))).into_response(),
        Action::Ready if behaviour == Behaviour::NotReady => {
            StatusCode::BAD_REQUEST.into_response()
        }
        Action::Ready => StatusCode::OK.into_response(),
        Action::Infer => {
            // The fault table comes before the model's own behaviour: a
            // refused infer renders nothing.
            if let Some(fault) = shared.faults.submit() {
                return match fault {
                    SubmitFault::Outage => fake_faults::outage(),
                    SubmitFault::RateLimited(_) => error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Exceeds maximum queue size".into(),
                    ),
                    SubmitFault::Unavailable => error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the server is shutting down".into(),
                    ),
                };
            }
            let response = infer(&shared, behaviour, name, version, &headers, &body).await;
            shared.faults.settle(response).await
        }
    }
}

fn unknown_model(name: &str, version: Option<&str>) -> Response {
    let message = match version {
        Some(version) => {
            format!("Request for unknown model: '{name}' version {version} is not found")
        }
        None => format!("Request for unknown model: '{name}' is not found"),
    };
    error(StatusCode::NOT_FOUND, message)
}

fn metadata(behaviour: Behaviour, name: &str) -> Value {
    let bytes =
        |name: &str, shape: Value| json!({"name": name, "datatype": "BYTES", "shape": shape});
    let (inputs, outputs) = if behaviour == Behaviour::Raw {
        (
            vec![json!({"name": IMAGE, "datatype": "UINT8", "shape": [-1, -1, 3]})],
            vec![json!({"name": OUTPUT, "datatype": "FP32", "shape": [-1, -1, 3]})],
        )
    } else {
        (
            behaviour
                .inputs()
                .into_iter()
                .map(|(input, _)| bytes(input, json!([1])))
                .collect(),
            vec![bytes(OUTPUT, json!([-1]))],
        )
    };
    json!({
        "name": name,
        "versions": ["1"],
        "platform": "ensemble",
        "inputs": inputs,
        "outputs": outputs,
    })
}

async fn infer(
    shared: &Shared,
    behaviour: Behaviour,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    match behaviour {
        Behaviour::Busy => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Exceeds maximum queue size".into(),
            )
        }
        Behaviour::NotReady => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("Request for model '{name}' failed: the model is not ready"),
            )
        }
        _ => {}
    }
    let request = match parse_request(name, version, headers, body) {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    shared.lock().received.push(request.clone());
    if let Err(message) = check_tensors(behaviour, name, &request) {
        return error(StatusCode::BAD_REQUEST, message);
    }

    let mut side = IMAGE_SIDE;
    match behaviour {
        Behaviour::Echo => {
            // As a careless model server might: the bearer and the input back.
            let authorization = headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default();
            let prompt = request
                .input(PROMPT)
                .and_then(|input| input.elements.first())
                .map(|element| String::from_utf8_lossy(element).into_owned())
                .unwrap_or_default();
            return error(
                StatusCode::BAD_REQUEST,
                format!("{authorization} cannot run prompt '{prompt}' on model '{name}'"),
            );
        }
        Behaviour::Endless => {
            return fake_faults::endless(
                StatusCode::OK,
                "application/json",
                r#"{"model_name": "endless", "outputs": [{"name": "OUTPUT_IMAGE", "datatype": "BYTES", "shape": [1], "data": [""#
                    .to_owned(),
            )
        }
        Behaviour::Slow => tokio::time::sleep(SLOW_DELAY).await,
        Behaviour::Upscale => match request.parameters.get("scale").and_then(Value::as_u64) {
            Some(scale @ (2 | 4)) => side *= scale as u32,
            _ => {
                let found = request
                    .parameters
                    .get("scale")
                    .map_or_else(|| "none".to_owned(), Value::to_string);
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("parameter 'scale' of model 'upscale' must be 2 or 4, got {found}"),
                );
            }
        },
        Behaviour::Raw => {
            let answer = json!({
                "model_name": name,
                "model_version": "1",
                "id": request.id,
                "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [1, 1, 3], "data": [0.0, 0.5, 1.0]}],
            });
            return (StatusCode::OK, axum::Json(answer)).into_response();
        }
        _ => {}
    }

    let count = request
        .parameters
        .get("num_images")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, MAX_IMAGES)
        + if behaviour == Behaviour::Extra { 2 } else { 0 };
    let images: Vec<Vec<u8>> = (0..count)
        .map(|variant| gradient_png(side, side, variant as u32))
        .collect();
    let shape = if matches!(behaviour, Behaviour::Matting | Behaviour::Extra) {
        vec![1, count]
    } else {
        vec![count]
    };
    let binary_asked = request.outputs.iter().any(|(_, binary)| *binary)
        || request.parameters.get("binary_data_output") == Some(&Value::Bool(true));
    let form = match behaviour {
        Behaviour::Lying => Form::Lying,
        Behaviour::JsonOnly => Form::Json,
        _ if binary_asked => Form::Binary,
        _ => Form::Json,
    };
    answer(name, request.id.as_deref(), &images, &shape, form)
}

/// Checks inputs and requested outputs as Triton would.
fn check_tensors(
    behaviour: Behaviour,
    name: &str,
    request: &ReceivedRequest,
) -> Result<(), String> {
    let declared = behaviour.inputs();
    for input in &request.inputs {
        if !declared.iter().any(|(declared, _)| *declared == input.name) {
            return Err(format!(
                "unexpected inference input '{}' for model '{name}'",
                input.name
            ));
        }
        if input.datatype != "BYTES" {
            return Err(format!(
                "inference input '{}' data-type is '{}', but model '{name}' expects 'BYTES'",
                input.name, input.datatype
            ));
        }
        if input.shape != [1] {
            return Err(format!(
                "unexpected shape for input '{}' for model '{name}'. Expected [1], got {:?}",
                input.name, input.shape
            ));
        }
    }
    let missing: Vec<&str> = declared
        .iter()
        .filter(|(input, required)| *required && request.input(input).is_none())
        .map(|(input, _)| *input)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "expected {} inputs but got {} inputs for model '{name}'. Missing required input(s) {missing:?}",
            declared.iter().filter(|(_, required)| *required).count(),
            request.inputs.len()
        ));
    }
    if let Some((output, _)) = request.outputs.iter().find(|(output, _)| output != OUTPUT) {
        return Err(format!(
            "unexpected inference output '{output}' for model '{name}'"
        ));
    }
    Ok(())
}

/// Parses an infer request in JSON or binary form.
fn parse_request(
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<ReceivedRequest, String> {
    let header_len = headers
        .get(HEADER_LENGTH)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|value| value.trim().parse::<usize>().ok())
                .ok_or_else(|| "Unable to parse Inference-Header-Content-Length".to_owned())
        })
        .transpose()?;
    let (json, sections) = match header_len {
        Some(len) => wire::split(body, len)?,
        None => (body.clone(), Bytes::new()),
    };
    let request: Value = serde_json::from_slice(&json)
        .map_err(|err| format!("failed to parse the request JSON buffer: {err}"))?;
    let inputs = request
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or("the request has no 'inputs' array")?;
    let mut sizes = Vec::with_capacity(inputs.len());
    for input in inputs {
        let input_name = input.get("name").and_then(Value::as_str).unwrap_or("?");
        let size =
            match input.pointer("/parameters/binary_data_size") {
                None => None,
                Some(size) => Some(size.as_u64().ok_or_else(|| {
                    format!("Unable to parse 'binary_data_size' of '{input_name}'")
                })?),
            };
        if size.is_some() == input.get("data").is_some() {
            return Err(format!(
                "input '{input_name}' must set exactly one of 'data' and 'binary_data_size'"
            ));
        }
        sizes.push((input_name, size));
    }
    let parts = wire::sections(&sections, &sizes)?;
    let mut received = Vec::with_capacity(inputs.len());
    for (input, part) in inputs.iter().zip(parts) {
        received.push(parse_input(input, part)?);
    }
    let outputs = request
        .get("outputs")
        .and_then(Value::as_array)
        .map(|outputs| {
            outputs
                .iter()
                .map(|output| {
                    let output_name = output.get("name").and_then(Value::as_str).unwrap_or("?");
                    let binary =
                        output.pointer("/parameters/binary_data") == Some(&Value::Bool(true));
                    (output_name.to_owned(), binary)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ReceivedRequest {
        model: name.to_owned(),
        version: version.map(str::to_owned),
        id: request.get("id").and_then(Value::as_str).map(str::to_owned),
        binary: header_len.is_some(),
        parameters: request
            .get("parameters")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        inputs: received,
        outputs,
    })
}

fn parse_input(input: &Value, part: Option<Bytes>) -> Result<ReceivedTensor, String> {
    let name = input
        .get("name")
        .and_then(Value::as_str)
        .ok_or("an input has no name")?
        .to_owned();
    let datatype = input
        .get("datatype")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("input '{name}' has no datatype"))?
        .to_owned();
    let shape: Vec<i64> = input
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("input '{name}' has no shape"))?
        .iter()
        .map(|dim| dim.as_i64().filter(|dim| *dim >= 0))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("input '{name}' has an invalid shape"))?;
    let count = shape
        .iter()
        .try_fold(1usize, |count, dim| {
            count.checked_mul(usize::try_from(*dim).ok()?)
        })
        .filter(|count| *count <= 1024)
        .ok_or_else(|| format!("input '{name}' has too many elements"))?;
    let (byte_size, elements) = match (part, datatype.as_str()) {
        (Some(part), "BYTES") => {
            let elements =
                wire::decode_bytes(&part, count).map_err(|err| format!("input '{name}': {err}"))?;
            (part.len(), elements)
        }
        (Some(part), _) => (part.len(), Vec::new()),
        (None, "BYTES") => {
            let mut strings = Vec::new();
            flatten_strings(input.get("data").unwrap_or(&Value::Null), &mut strings)
                .map_err(|err| format!("input '{name}': {err}"))?;
            if strings.len() != count {
                return Err(format!(
                    "Unable to parse 'data' of '{name}': shape does not match true shape of 'data' field"
                ));
            }
            let elements: Vec<Bytes> = strings
                .into_iter()
                .map(|text| Bytes::copy_from_slice(text.as_bytes()))
                .collect();
            let size = elements.iter().map(|element| element.len() + 4).sum();
            (size, elements)
        }
        (None, _) => (0, Vec::new()),
    };
    Ok(ReceivedTensor {
        name,
        datatype,
        shape,
        byte_size,
        elements,
    })
}

fn flatten_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) -> Result<(), String> {
    match value {
        Value::String(text) => out.push(text),
        Value::Array(items) => {
            for item in items {
                flatten_strings(item, out)?;
            }
        }
        _ => return Err("BYTES data must be strings".into()),
    }
    Ok(())
}

enum Form {
    Json,
    Binary,
    /// Binary, with a `binary_data_size` 1000 bytes larger than what follows.
    Lying,
}

fn answer(name: &str, id: Option<&str>, images: &[Vec<u8>], shape: &[u64], form: Form) -> Response {
    let mut output = json!({"name": OUTPUT, "datatype": "BYTES", "shape": shape});
    let mut header = json!({"model_name": name, "model_version": "1"});
    if let Some(id) = id {
        header["id"] = Value::from(id);
    }
    let data = match form {
        Form::Json => {
            let elements: Vec<Value> = images
                .iter()
                .map(|image| encode_base64(image).into())
                .collect();
            output["data"] = Value::Array(elements);
            header["outputs"] = json!([output]);
            return (StatusCode::OK, axum::Json(header)).into_response();
        }
        Form::Binary | Form::Lying => match wire::encode_bytes(images) {
            Ok(data) => data,
            Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, err),
        },
    };
    let claimed = match form {
        Form::Lying => data.len() + 1000,
        _ => data.len(),
    };
    output["parameters"] = json!({ "binary_data_size": claimed });
    header["outputs"] = json!([output]);
    let mut body = header.to_string().into_bytes();
    let header_len = body.len();
    body.extend_from_slice(&data);
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(HEADER_LENGTH, HeaderValue::from(header_len));
    response
}

/// The binary tensor data extension (KServe v2 / Triton), from the
/// protocol's text and independent of the client's `tensor` module:
///
/// - A binary request or answer is a JSON header of exactly
///   `Inference-Header-Content-Length` bytes, followed by the binary data
///   of each tensor that declares `parameters.binary_data_size`, in the
///   order the tensors appear in the header, back to back, nothing after.
/// - A BYTES tensor's data is its elements in row-major order, each a
///   4-byte little-endian unsigned length followed by that many bytes.
///
/// Every length read from the peer is checked against what is there
/// before anything is sliced.
mod wire {
    use axum::body::Bytes;

    /// The header that says how long the JSON part is (header names are
    /// case-insensitive; this is how the protocol's text spells it,
    /// lowercased).
    pub(super) const HEADER_LENGTH: &str = "inference-header-content-length";

    /// The JSON header and the data after it.
    pub(super) fn split(body: &Bytes, header_len: usize) -> Result<(Bytes, Bytes), String> {
        if body.len() < header_len {
            return Err(format!(
                "Inference-Header-Content-Length {header_len} is past the end of a {} byte body",
                body.len()
            ));
        }
        Ok((body.slice(0..header_len), body.slice(header_len..)))
    }

    /// The data after the header, one part per tensor in header order:
    /// `Some` for one with a `binary_data_size`, `None` for one whose
    /// data is in the JSON. The sizes must use up the data exactly.
    pub(super) fn sections(
        data: &Bytes,
        sizes: &[(&str, Option<u64>)],
    ) -> Result<Vec<Option<Bytes>>, String> {
        let mut rest = data.clone();
        let mut parts = Vec::new();
        for (name, size) in sizes {
            match size {
                None => parts.push(None),
                Some(size) => {
                    let size = usize::try_from(*size)
                        .ok()
                        .filter(|size| *size <= rest.len())
                        .ok_or_else(|| {
                            format!(
                                "input '{name}' declares binary_data_size {size}, more than the {} byte(s) left",
                                rest.len()
                            )
                        })?;
                    parts.push(Some(rest.split_to(size)));
                }
            }
        }
        if !rest.is_empty() {
            return Err(format!(
                "{} byte(s) of binary data follow the last input's",
                rest.len()
            ));
        }
        Ok(parts)
    }

    /// A BYTES tensor's `expected` elements.
    pub(super) fn decode_bytes(data: &Bytes, expected: usize) -> Result<Vec<Bytes>, String> {
        let mut rest = data.clone();
        let mut elements = Vec::new();
        while !rest.is_empty() {
            if elements.len() == expected {
                return Err(format!(
                    "{} byte(s) follow the {expected} element(s) of the shape",
                    rest.len()
                ));
            }
            if rest.len() < 4 {
                return Err(format!(
                    "element {} has a {} byte length, not 4",
                    elements.len(),
                    rest.len()
                ));
            }
            let prefix = rest.split_to(4);
            let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
            let len = usize::try_from(len)
                .ok()
                .filter(|len| *len <= rest.len())
                .ok_or_else(|| {
                    format!(
                        "element {} is {len} byte(s) long, more than the {} left",
                        elements.len(),
                        rest.len()
                    )
                })?;
            elements.push(rest.split_to(len));
        }
        if elements.len() != expected {
            return Err(format!(
                "{} element(s) where the shape says {expected}",
                elements.len()
            ));
        }
        Ok(elements)
    }

    /// `elements` as a BYTES tensor's data.
    pub(super) fn encode_bytes(elements: &[Vec<u8>]) -> Result<Vec<u8>, String> {
        let mut data = Vec::new();
        for element in elements {
            let len = u32::try_from(element.len())
                .map_err(|_| format!("an element of {} bytes is too long", element.len()))?;
            data.extend_from_slice(&len.to_le_bytes());
            data.extend_from_slice(element);
        }
        Ok(data)
    }
}

/// Triton's error shape: `{"error": "..."}`.
fn error(code: StatusCode, message: String) -> Response {
    (code, axum::Json(json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declares_our_contract() {
        let inpaint = metadata(Behaviour::Inpaint, "inpaint");
        let names: Vec<&str> = inpaint["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|input| input["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, [IMAGE, MASK, PROMPT]);
        assert_eq!(
            metadata(Behaviour::Raw, "raw")["outputs"][0]["datatype"],
            "FP32"
        );
    }

    /// The fake's wire code against bytes written out by hand from the
    /// protocol's text, not produced by any encoder of this crate.
    #[test]
    fn wire_reads_and_writes_the_documented_form() {
        // Two BYTES elements: "ab" and "" (a zero length is allowed).
        let data = Bytes::from_static(&[2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        let elements = wire::decode_bytes(&data, 2).unwrap();
        assert_eq!(elements, [Bytes::from_static(b"ab"), Bytes::new()]);
        assert_eq!(
            wire::encode_bytes(&[b"ab".to_vec(), Vec::new()]).unwrap(),
            &data[..]
        );
        // A length read big-endian would be 0x02000000: little-endian only.
        assert_eq!(
            wire::encode_bytes(&[vec![7; 258]]).unwrap()[..4],
            [2, 1, 0, 0]
        );
        // Short prefix, a length past the end, too many or too few elements.
        assert!(wire::decode_bytes(&Bytes::from_static(&[1, 0]), 1).is_err());
        assert!(wire::decode_bytes(&Bytes::from_static(&[9, 0, 0, 0, 1]), 1).is_err());
        assert!(wire::decode_bytes(&data, 1).is_err());
        assert!(wire::decode_bytes(&data, 3).is_err());
        // Sections in header order; a JSON tensor takes none; all used.
        let after = Bytes::from_static(b"xxxyy");
        let parts = wire::sections(&after, &[("A", Some(3)), ("B", None), ("C", Some(2))]).unwrap();
        assert_eq!(
            parts,
            [
                Some(Bytes::from_static(b"xxx")),
                None,
                Some(Bytes::from_static(b"yy"))
            ]
        );
        assert!(wire::sections(&after, &[("A", Some(3))]).is_err());
        assert!(wire::sections(&after, &[("A", Some(6))]).is_err());
        assert!(wire::sections(&after, &[("A", Some(u64::MAX))]).is_err());
        let body = Bytes::from_static(b"{}rest");
        let (json, rest) = wire::split(&body, 2).unwrap();
        assert_eq!((&json[..], &rest[..]), (&b"{}"[..], &b"rest"[..]));
        assert!(wire::split(&body, 7).is_err());
    }

    #[test]
    fn parses_json_and_binary_requests_alike() {
        let json_body = json!({
            "id": "j",
            "inputs": [{"name": PROMPT, "shape": [1], "datatype": "BYTES", "data": ["héllo"]}],
        });
        let request = parse_request(
            "m",
            None,
            &HeaderMap::new(),
            &Bytes::from(json_body.to_string()),
        )
        .unwrap();
        assert!(!request.binary);
        let prompt = request.input(PROMPT).unwrap();
        assert_eq!(&prompt.elements[0][..], "héllo".as_bytes());
        assert_eq!(prompt.byte_size, 4 + "héllo".len());

        let header = json!({
            "inputs": [{"name": PROMPT, "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 10}}],
        })
        .to_string();
        let mut body = header.clone().into_bytes();
        // Written out by hand: the length prefix, little-endian, then the
        // UTF-8 bytes.
        body.extend_from_slice(&[6, 0, 0, 0]);
        body.extend_from_slice("héllo".as_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, HeaderValue::from(header.len()));
        let request = parse_request("m", Some("1"), &headers, &Bytes::from(body.clone())).unwrap();
        assert!(request.binary);
        assert_eq!(
            &request.input(PROMPT).unwrap().elements[0][..],
            "héllo".as_bytes()
        );

        // A header length past the body, or sections that do not add up.
        headers.insert(HEADER_LENGTH, HeaderValue::from(body.len() + 1));
        assert!(parse_request("m", None, &headers, &Bytes::from(body)).is_err());
    }
}

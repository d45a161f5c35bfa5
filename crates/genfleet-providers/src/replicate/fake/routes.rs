//! The fake's routes: one handler matched by hand, then create, poll,
//! cancel and file downloads, each answering as Replicate would (or as the
//! configured behaviour and faults say). The server and its state live in
//! [`super`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::fake_faults::{self, DownloadFault, ReadFault, SubmitFault};
use crate::fake_media::{gradient_png, mp4};

use super::*;

/// One handler for every route, matched by hand like the fal fake's.
pub(super) async fn handle(
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
pub(super) fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?;
    (!token.trim().is_empty()).then(|| value.to_owned())
}

pub(super) fn create(
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

pub(super) fn poll(shared: &Shared, id: &str) -> Response {
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

pub(super) fn cancel(shared: &Shared, id: &str) -> Response {
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
pub(super) fn prediction_json(
    shared: &Shared,
    id: &str,
    prediction: &FakePrediction,
    input: &Value,
) -> Value {
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
pub(super) fn file(shared: &Shared, name: &str, headers: &HeaderMap) -> Response {
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
pub(super) fn error(code: StatusCode, title: &str, detail: &str) -> Response {
    let body = json!({"title": title, "detail": detail, "status": code.as_u16()});
    let mut response = (code, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

pub(super) fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "Not found",
        "The requested resource could not be found.",
    )
}

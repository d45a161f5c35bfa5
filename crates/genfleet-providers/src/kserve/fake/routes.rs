//! The fake's one handler and what it answers: server health, model
//! ready, model metadata and infer (each model's behaviour, the fault
//! table's submit rows, and the checks Triton makes on the tensors).

use super::body::{answer, parse_request, Form};
use super::*;

/// One handler for every route, matched by hand like the fake fal.
pub(super) async fn handle(
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

pub(super) fn metadata(behaviour: Behaviour, name: &str) -> Value {
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

//! The fake's one handler: route matching, the bearer check and the
//! metadata-style token endpoint.

use super::answers::*;
use super::*;

/// One handler for every route: the model segment carries `:method`,
/// clearer split by hand than matched by a router.
pub(super) async fn handle(
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
pub(super) fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
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

pub(super) async fn token(shared: &Shared, headers: &HeaderMap) -> Response {
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

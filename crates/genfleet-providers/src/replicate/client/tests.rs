//! Unit tests of the client's pieces: reset hints, status and failure
//! classification, output URLs, model names, records and redaction.

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use super::classify::*;
use super::*;
use crate::http::Secrets;

const TOKEN: &str = "r8_client_test_token_0123";

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn request(model: &str) -> GenerationRequest {
    GenerationRequest {
        prompt: "a blue teapot".into(),
        ..crate::scripted::request_for(model, None)
    }
}

#[test]
fn reads_the_reset_hint() {
    let check = |text: &str, expected: Option<Duration>| {
        assert_eq!(parse_reset_hint(text), expected, "{text}");
    };
    check(
        "Request was throttled. Your rate limit resets in ~30s.",
        Some(Duration::from_secs(30)),
    );
    check("resets in 2.5s", Some(Duration::from_millis(2500)));
    check("resets in ~500ms", Some(Duration::from_millis(500)));
    check("resets in ~2m.", Some(Duration::from_secs(120)));
    check("resets in ~7", Some(Duration::from_secs(7)));
    check("resets in ~2h", None);
    check("Request was throttled.", None);
    check("resets in soon", None);
    // Used to panic in `Duration::from_secs_f64` (a finite 1e300).
    check(&format!("resets in ~{}s", "9".repeat(301)), None);
    check(&format!("resets in ~{}h", "9".repeat(400)), None);
    check("resets in ~NaNs", None);
    check("resets in ~-5s", None);
    check("resets in ~18446744073709551615s", None);
}

#[test]
fn error_details_never_echo_the_token() {
    let body = format!(r#"{{"detail":"Invalid token {TOKEN}: authentication failed"}}"#);
    let err = status_error(
        "create",
        StatusCode::UNAUTHORIZED,
        &HeaderMap::new(),
        body.as_bytes(),
        &Secrets::new(Some(TOKEN), None),
    );
    assert_eq!(
        err.to_string(),
        "provider credentials were refused: create answered HTTP 401: Invalid token [redacted]: authentication failed"
    );
}

#[test]
fn classifies_status_codes() {
    let none = HeaderMap::new();
    let check = |code: u16, body: &str, expected: &str| {
        let err = status_error(
            "create",
            StatusCode::from_u16(code).unwrap(),
            &none,
            body.as_bytes(),
            &Secrets::default(),
        );
        assert_eq!(
            format!("{err:?}").split([' ', '{']).next().unwrap(),
            expected,
            "{code}: {err}"
        );
        err
    };
    check(401, "", "Unauthorized");
    check(403, "", "Unauthorized");
    check(400, "", "Rejected");
    check(404, "", "Rejected");
    check(
        422,
        r#"{"detail":"- input: prompt is required\n"}"#,
        "Rejected",
    );
    check(500, "", "Unavailable");
    check(503, "", "Unavailable");
    let err = check(
        429,
        r#"{"title":"Request was throttled","detail":"Request was throttled. Your rate limit resets in ~30s.","status":429}"#,
        "RateLimited",
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(
        err.to_string(),
        "provider rate-limited the request: create answered HTTP 429: Request was throttled. Your rate limit resets in ~30s."
    );
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", HeaderValue::from_static("4"));
    let err = status_error(
        "create",
        StatusCode::TOO_MANY_REQUESTS,
        &headers,
        br#"{"detail":"resets in ~30s"}"#,
        &Secrets::default(),
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(4)));
}

#[test]
fn error_details_never_echo_the_prompt() {
    let request = request("a/b");
    let err = status_error(
        "create",
        StatusCode::UNPROCESSABLE_ENTITY,
        &HeaderMap::new(),
        br#"{"detail":"prompt 'a blue teapot' is too long","input":{"prompt":"a blue teapot"}}"#,
        &Secrets::new(Some(TOKEN), Some(&request)),
    );
    assert_eq!(
        err.to_string(),
        "provider rejected the request: create answered HTTP 422: prompt '[prompt]' is too long"
    );
}

#[test]
fn classifies_failures() {
    let request = request("a/b");
    let check = |error: Value, expected: &str| {
        let err = failure(&error, &Secrets::new(Some(TOKEN), Some(&request)));
        assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
        assert_eq!(err.to_string(), expected);
    };
    check(
        Value::from("NSFW content detected. Try a different prompt."),
        "provider rejected the request: the prediction was flagged by a safety check: NSFW content detected. Try a different prompt.",
    );
    check(
        Value::from("The input or output was flagged as sensitive. (E005)"),
        "provider rejected the request: the prediction was flagged by a safety check: The input or output was flagged as sensitive. (E005)",
    );
    check(
        Value::from("Traceback:\n  ValueError: bad image\n"),
        "provider rejected the request: the model failed on this input: Traceback: ValueError: bad image",
    );
    check(
        Value::Null,
        "provider rejected the request: the model failed on this input",
    );
}

#[test]
fn reads_outputs() {
    assert_eq!(
        output_urls(&Value::from("https://x/a.mp4")).unwrap(),
        vec!["https://x/a.mp4"]
    );
    assert_eq!(
        output_urls(&serde_json::json!([
            "https://x/1.png",
            3,
            "https://x/2.png"
        ]))
        .unwrap(),
        vec!["https://x/1.png", "https://x/2.png"]
    );
    for empty in [
        Value::Null,
        serde_json::json!([]),
        serde_json::json!({"a": 1}),
    ] {
        assert!(matches!(
            output_urls(&empty),
            Err(ProviderError::Malformed { .. })
        ));
    }
}

#[test]
fn rejects_models_that_leave_the_api() {
    let provider = ReplicateProvider::new(ReplicateConfig::default(), client());
    let target = provider
        .create_target(&request("stability-ai/sdxl"))
        .unwrap();
    assert_eq!(
        target.url.as_str(),
        "https://api.replicate.com/v1/models/stability-ai/sdxl/predictions"
    );
    assert_eq!(target.body["input"]["prompt"], "a blue teapot");
    assert!(target.body.get("version").is_none());
    let target = provider
        .create_target(&request("stability-ai/sdxl:39ed52f2a78e"))
        .unwrap();
    assert_eq!(
        target.url.as_str(),
        "https://api.replicate.com/v1/predictions"
    );
    assert_eq!(target.body["version"], "39ed52f2a78e");
    for bad in [
        "sdxl",
        "a/b/c",
        "a/../b",
        "../b",
        "a//b",
        "//evil.example/x",
        "a/b?c=d",
        "a/b#x",
        "a/b:",
        "a/b:v/../../x",
        "a/b:v:w",
        "",
    ] {
        assert!(
            matches!(
                provider.create_target(&request(bad)),
                Err(ProviderError::Unsupported { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn records_refuse_urls_off_the_origin() {
    let provider = ReplicateProvider::new(ReplicateConfig::default(), client());
    let good = r#"{"id":"p1","urls":{"get":"https://api.replicate.com/v1/predictions/p1","cancel":"https://api.replicate.com/v1/predictions/p1/cancel"}}"#;
    assert_eq!(provider.parse_record(good).unwrap().id, "p1");
    for bad in [
        r#"{"id":"p1","urls":{"get":"https://evil.example/v1/predictions/p1","cancel":"https://api.replicate.com/v1/predictions/p1/cancel"}}"#,
        r#"{"id":"p1","urls":{"get":"https://api.replicate.com/v1/predictions/p1","cancel":"http://api.replicate.com/x"}}"#,
        r#"{"id":"p1"}"#,
        r#"{"id":"p1","urls":"https://api.replicate.com/SIGNED"}"#,
        "not json",
    ] {
        let err = provider.parse_record(bad).unwrap_err();
        assert!(matches!(err, ProviderError::Unsupported { .. }), "{bad}");
        assert!(!err.to_string().contains("SIGNED"), "{err}");
    }
}

#[test]
fn debug_redacts_the_token() {
    let config = ReplicateConfig {
        token: "r8_secret_token_123".into(),
        ..ReplicateConfig::default()
    };
    let provider = ReplicateProvider::new(config.clone(), client());
    for text in [format!("{config:?}"), format!("{provider:?}")] {
        assert!(!text.contains("r8_secret"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }
}

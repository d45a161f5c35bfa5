//! Unit tests of the client's pieces: input building, output files, status
//! classification, rate-limit headers, error bodies and redaction.

use std::time::SystemTime;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use super::classify::*;
use super::*;

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

#[test]
fn classifies_status_codes() {
    let none = HeaderMap::new();
    let check = |code: u16, headers: &HeaderMap, body: &str, expected: &str| {
        let err = status_error(
            "submit",
            StatusCode::from_u16(code).unwrap(),
            headers,
            body.as_bytes(),
            &Secrets::default(),
        );
        assert_eq!(
            format!("{err:?}").split([' ', '{']).next().unwrap(),
            expected,
            "{code}: {err}"
        );
    };
    check(401, &none, "", "Unauthorized");
    check(403, &none, "", "Unauthorized");
    check(408, &none, "", "Unavailable");
    check(429, &none, "", "RateLimited");
    check(500, &none, "", "Unavailable");
    check(
        503,
        &none,
        r#"{"detail":"x","error_type":"runner_scheduling_failure"}"#,
        "Unavailable",
    );
    check(504, &none, "", "Unavailable");
    check(
        504,
        &headers(&[("x-fal-request-timeout-type", "user")]),
        "",
        "DeadlineExceeded",
    );
    check(400, &none, "", "Rejected");
    check(404, &none, "", "Rejected");
    check(422, &none, "", "Rejected");
}

#[test]
fn builds_messages_from_fal_details() {
    let body = r#"{"detail":[{"loc":["body","prompt"],"msg":"prompt is too long","type":"value_error"},
                  {"loc":["body","image_size",0],"msg":"bad size","input":"SECRET PROMPT"}]}"#;
    let err = status_error(
        "submit",
        StatusCode::UNPROCESSABLE_ENTITY,
        &HeaderMap::new(),
        body.as_bytes(),
        &Secrets::default(),
    );
    assert_eq!(
        err.to_string(),
        "provider rejected the request: submit answered HTTP 422: prompt: prompt is too long; image_size.0: bad size"
    );
    let err = status_error(
        "result",
        StatusCode::SERVICE_UNAVAILABLE,
        &headers(&[("x-fal-error-type", "runner_disconnected")]),
        br#"{"detail":"runner went away"}"#,
        &Secrets::default(),
    );
    assert_eq!(
        err.to_string(),
        "provider unavailable: result answered HTTP 503 (runner_disconnected): runner went away"
    );
    let err = status_error(
        "result",
        StatusCode::BAD_GATEWAY,
        &HeaderMap::new(),
        b"<html>oops</html>",
        &Secrets::default(),
    );
    assert_eq!(
        err.to_string(),
        "provider unavailable: result answered HTTP 502"
    );
}

#[test]
fn reads_rate_limit_hints() {
    assert_eq!(
        retry_after(&headers(&[("retry-after", "7")])),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        retry_after(&headers(&[("x-ratelimit-reset", "12")])),
        Some(Duration::from_secs(12))
    );
    assert_eq!(
        retry_after(&headers(&[("x-ratelimit-reset", "1000000000")])),
        Some(Duration::ZERO)
    );
    assert_eq!(retry_after(&HeaderMap::new()), None);
}

/// Used to panic: `UNIX_EPOCH + Duration::from_secs(u64::MAX)`.
#[test]
fn hostile_rate_limit_hints_are_clamped_not_panics() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let max = crate::hint::MAX_HINT;
    for (name, value, expected) in [
        ("x-ratelimit-reset", "18446744073709551615", Some(max)),
        ("x-ratelimit-reset", "9223372036854775807", Some(max)),
        ("x-ratelimit-reset", "999999999", Some(max)),
        (
            "x-ratelimit-reset",
            "1800000030",
            Some(Duration::from_secs(30)),
        ),
        ("x-ratelimit-reset", "99999999999999999999999", None),
        ("x-ratelimit-reset", "-5", None),
        ("x-ratelimit-reset", "1e300", None),
        ("x-ratelimit-reset", "NaN", None),
        ("retry-after", "18446744073709551615", Some(max)),
        ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT", Some(max)),
        ("retry-after", "-1", None),
    ] {
        assert_eq!(
            retry_after_at(&headers(&[(name, value)]), now),
            expected,
            "{name}: {value}"
        );
    }
}

#[test]
fn error_messages_never_echo_the_key_or_the_prompt() {
    let request = GenerationRequest {
        prompt: "a secret product launch photo".into(),
        ..crate::scripted::request_for("a/b", None)
    };
    let key = "key-id-1234:abcdef0123456789abcdef";
    let secrets = Secrets::new(Some(key), Some(&request));
    let body = serde_json::json!({
        "detail": format!("key {key} cannot run 'a secret product launch photo' now"),
        "error_type": format!("bad_{key}"),
    });
    let err = status_error(
        "submit",
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        body.to_string().as_bytes(),
        &secrets,
    );
    let text = err.to_string();
    crate::hostile_table::assert_sanitised(&text, &["abcdef0123456789", "secret product"]);
    assert!(text.contains("submit answered HTTP 400"), "{text}");
}

#[test]
fn debug_redacts_the_key() {
    let config = FalConfig {
        key: "fal-secret-key-123".into(),
        ..FalConfig::default()
    };
    let provider = FalProvider::new(config.clone(), client());
    for text in [format!("{config:?}"), format!("{provider:?}")] {
        assert!(!text.contains("fal-secret-key-123"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }
}

#[test]
fn rejects_model_paths_that_leave_the_queue() {
    let provider = FalProvider::new(FalConfig::default(), client());
    assert_eq!(
        provider.submit_url("fal-ai/flux/dev").unwrap().as_str(),
        "https://queue.fal.run/fal-ai/flux/dev"
    );
    for bad in [
        "flux",
        "fal-ai/../x",
        "fal-ai//dev",
        "//evil.example/x",
        "a/b?c=d",
        "a/b#x",
        "",
    ] {
        assert!(
            matches!(
                provider.submit_url(bad),
                Err(ProviderError::Unsupported { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn decodes_data_uris() {
    let (mime, bytes) = crate::http::decode_data_uri("image/png;base64,AAEC").unwrap();
    assert_eq!((mime.as_str(), &bytes[..]), ("image/png", &[0u8, 1, 2][..]));
    assert!(crate::http::decode_data_uri("image/png,AAEC").is_err());
    assert!(crate::http::decode_data_uri("image/png;base64,@@").is_err());
}

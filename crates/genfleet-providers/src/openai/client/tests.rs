//! Unit tests of the client's pieces: error classification, retry hints,
//! sizes, multipart framing, type sniffing and redaction.

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use super::classify::*;
use super::request::*;
use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

fn body(code: &str, kind: &str) -> String {
    serde_json::json!({"error": {"message": "m", "type": kind, "code": code, "param": null}})
        .to_string()
}

#[test]
fn classifies_errors() {
    let none = HeaderMap::new();
    let check = |code: u16, headers: &HeaderMap, body: &str, expected: &str| {
        let err = status_error(
            "generations",
            StatusCode::from_u16(code).unwrap(),
            headers,
            body.as_bytes(),
            &Secrets::default(),
        );
        assert_eq!(
            format!("{err:?}").split([' ', '{']).next().unwrap(),
            expected,
            "{code} {body}: {err}"
        );
        err
    };
    check(
        400,
        &none,
        &body("content_policy_violation", "invalid_request_error"),
        "Rejected",
    );
    check(
        400,
        &none,
        &body("moderation_blocked", "image_generation_user_error"),
        "Rejected",
    );
    check(403, &none, &body("", "content_policy_error"), "Rejected");
    check(
        400,
        &none,
        &body("invalid_value", "invalid_request_error"),
        "Rejected",
    );
    check(
        404,
        &none,
        &body("model_not_found", "invalid_request_error"),
        "Rejected",
    );
    check(
        401,
        &none,
        &body("invalid_api_key", "invalid_request_error"),
        "Unauthorized",
    );
    check(403, &none, "", "Unauthorized");
    check(
        429,
        &none,
        &body("insufficient_quota", "insufficient_quota"),
        "Unauthorized",
    );
    check(
        429,
        &none,
        &body("billing_hard_limit_reached", "invalid_request_error"),
        "Unauthorized",
    );
    check(500, &none, &body("", "server_error"), "Unavailable");
    check(503, &none, "<html>", "Unavailable");
    let err = check(
        429,
        &headers(&[("retry-after-ms", "250"), ("retry-after", "1")]),
        &body("rate_limit_exceeded", "requests"),
        "RateLimited",
    );
    assert_eq!(err.retry_after(), Some(Duration::from_millis(250)));
    let err = check(429, &headers(&[("retry-after", "3")]), "", "RateLimited");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    let err = check(429, &none, "", "RateLimited");
    assert_eq!(err.retry_after(), None);
}

/// `1e300` used to panic in `Duration::from_secs_f64`.
#[test]
fn hostile_retry_after_ms_is_clamped_not_a_panic() {
    let max = Some(crate::hint::MAX_HINT);
    for (value, expected) in [
        ("1e300", max),
        ("18446744073709551615", max),
        ("inf", max),
        ("-5", None),
        ("NaN", None),
        ("-inf", None),
        ("12.5", Some(Duration::from_micros(12_500))),
        ("soon", None),
    ] {
        assert_eq!(
            retry_after_ms(&headers(&[("retry-after-ms", value)])),
            expected,
            "{value}"
        );
    }
    assert_eq!(
        http::retry_after_header(&headers(&[("retry-after", "18446744073709551615")])),
        max
    );
}

#[test]
fn builds_messages_from_the_error_body() {
    let err = status_error(
        "edits",
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        br#"{"error":{"message":"Your request was rejected by the safety system.","type":"image_generation_user_error","code":"moderation_blocked"}}"#,
        &Secrets::default(),
    );
    assert_eq!(
        err.to_string(),
        "provider rejected the request: edits answered HTTP 400 (moderation_blocked): Your request was rejected by the safety system."
    );
}

#[test]
fn maps_aspect_ratios_to_sizes() {
    assert_eq!(size_for("1:1"), Some("1024x1024"));
    for landscape in ["16:9", "3:2", "4:3"] {
        assert_eq!(size_for(landscape), Some("1536x1024"));
    }
    for portrait in ["9:16", "2:3", "3:4"] {
        assert_eq!(size_for(portrait), Some("1024x1536"));
    }
    assert_eq!(size_for("21:9"), None);
    assert_eq!(size_for(""), None);
}

#[test]
fn frames_multipart_bodies() {
    let parts = vec![
        Part {
            name: "prompt".into(),
            body: PartBody::Text("erase \"it\"\r\nnow".into()),
        },
        Part {
            name: "we\"ird\r\nname".into(),
            body: PartBody::Text("1".into()),
        },
        Part {
            name: "image".into(),
            body: PartBody::File {
                filename: "image.png".into(),
                content_type: "image/png".into(),
                bytes: Bytes::from_static(b"\x89PNG"),
            },
        },
    ];
    let body = encode_multipart(&parts, "XyZ");
    let expected = b"--XyZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nerase \"it\"\r\nnow\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"we%22ird%0D%0Aname\"\r\n\r\n1\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"image.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n\
--XyZ--\r\n";
    assert_eq!(body, expected.to_vec());
}

#[test]
fn sniffs_image_types() {
    assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
    assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
    assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
    assert_eq!(sniff(b"GIF89a"), None);
}

#[test]
fn debug_redacts_the_key() {
    let config = OpenAiConfig {
        api_key: "sk-secret-key-123".into(),
        ..OpenAiConfig::default()
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = OpenAiProvider::new(config.clone(), reqwest::Client::new());
    for text in [format!("{config:?}"), format!("{provider:?}")] {
        assert!(!text.contains("sk-secret"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }
}

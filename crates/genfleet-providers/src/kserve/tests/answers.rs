//! The answer parser (binary and JSON forms) and the status classes, on
//! their own without a server.

use super::*;

/// A binary answer: `header` JSON, then `sections` raw.
fn binary_answer(header: &Value, sections: &[u8]) -> (String, Bytes) {
    let mut body = header.to_string().into_bytes();
    let len = body.len();
    body.extend_from_slice(sections);
    (len.to_string(), Bytes::from(body))
}

fn elements(images: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_bytes_elements(images, &mut out).unwrap();
    out
}

#[test]
fn parses_binary_answers_with_other_outputs_around_ours() {
    let config = KServeConfig::default();
    let ours = elements(&[b"\xFF\xD8\xFFjpeg", b"RIFF\0\0\0\0WEBPxx"]);
    let header = json!({"id": "r1", "outputs": [
        {"name": "MASK", "datatype": "UINT8", "shape": [3], "parameters": {"binary_data_size": 3}},
        {"name": "SCORES", "datatype": "FP32", "shape": [1], "data": [0.5]},
        {"name": "OUTPUT_IMAGE", "datatype": "BYTES", "shape": [1, 2], "parameters": {"binary_data_size": ours.len()}},
    ]});
    let mut sections = vec![1, 2, 3];
    sections.extend_from_slice(&ours);
    let (len, body) = binary_answer(&header, &sections);
    let answer = parse_answer(&config, Some(&len), body).unwrap();
    assert_eq!(answer.id.as_deref(), Some("r1"));
    assert_eq!(answer.images.len(), 2);
    assert_eq!(&answer.images[0][..], b"\xFF\xD8\xFFjpeg");
    let types: Vec<&str> = answer
        .images
        .iter()
        .map(|i| crate::kserve::tensor::sniff_content_type(i))
        .collect();
    assert_eq!(types, ["image/jpeg", "image/webp"]);
}

#[test]
fn refuses_answers_that_do_not_add_up() {
    let config = KServeConfig::default();
    let check = |header_len: Option<&str>, body: Bytes, expected: &str| {
        let err = parse_answer(&config, header_len, body).unwrap_err();
        assert!(
            matches!(&err, ProviderError::Malformed { message } if message.contains(expected)),
            "expected {expected:?}, got {err}"
        );
    };
    let one = elements(&[b"img"]);
    let output = |shape: Value, size: usize| json!({"outputs": [{"name": "OUTPUT_IMAGE", "datatype": "BYTES", "shape": shape, "parameters": {"binary_data_size": size}}]});

    // binary_data_size larger than the body, smaller than it, or absurd.
    let (len, body) = binary_answer(&output(json!([1]), 1000), &one);
    check(Some(&len), body, "claims binary_data_size 1000, but only 7");
    let (len, body) = binary_answer(&output(json!([1]), 3), &one);
    check(Some(&len), body, "add up to 3 bytes, but 7 follow");
    let (len, body) = binary_answer(&output(json!([1]), 7), &one);
    let body = body.slice(..body.len() - 1);
    check(Some(&len), body, "but only 6 byte(s) remain");
    // Header length past the body, or not a number.
    let (_, body) = binary_answer(&output(json!([1]), 7), &one);
    check(
        Some("99999"),
        body.clone(),
        "Inference-Header-Content-Length is 99999",
    );
    check(Some("-1"), body.clone(), "expected a byte count");
    // Binary sizes without the header that says where the JSON ends.
    check(
        None,
        Bytes::from(output(json!([1]), 7).to_string()),
        "no Inference-Header-Content-Length",
    );
    // An element length that lies inside a section whose size is honest.
    let lying_element = b"\xff\x00\x00\x00img".to_vec();
    let (len, body) = binary_answer(&output(json!([1]), 7), &lying_element);
    check(Some(&len), body, "element 0 claims 255 bytes");
    // Shape and element count disagree.
    let (len, body) = binary_answer(&output(json!([2]), 7), &one);
    check(Some(&len), body, "expected 2 element(s), found 1");
    for shape in [
        json!([2, 2]),
        json!([1, 1, 1]),
        json!([]),
        json!([0]),
        json!([-1]),
        json!([1000]),
    ] {
        let (len, body) = binary_answer(&output(shape.clone(), 7), &one);
        check(Some(&len), body, "expected");
    }
    let (len, body) = binary_answer(&output(json!([2, 2]), 7), &one);
    check(
        Some(&len),
        body,
        "has shape [2, 2], expected [1], [N] or [1, N]",
    );
    // Not JSON at all, a missing output, the wrong datatype.
    check(
        None,
        Bytes::from_static(b"\x89PNG"),
        "not the expected JSON",
    );
    check(
        None,
        Bytes::from(json!({"outputs": [{"name": "OTHER", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]}).to_string()),
        "no output \"OUTPUT_IMAGE\"; found [\"OTHER\"]",
    );
    check(
        None,
        Bytes::from(json!({"outputs": [{"name": "OUTPUT_IMAGE", "datatype": "UINT8", "shape": [1], "data": [1]}]}).to_string()),
        "has datatype UINT8, expected BYTES",
    );
}

#[test]
fn parses_json_answers_as_base64_elements() {
    let config = KServeConfig::default();
    let answer = |data: Value, shape: Value| {
        let body = json!({"outputs": [{"name": "OUTPUT_IMAGE", "datatype": "BYTES", "shape": shape, "data": data}]});
        parse_answer(&config, None, Bytes::from(body.to_string()))
    };
    let images = answer(json!(["aGk=", "eW8="]), json!([2])).unwrap().images;
    assert_eq!(
        images,
        [Bytes::from_static(b"hi"), Bytes::from_static(b"yo")]
    );
    let images = answer(json!([["aGk="]]), json!([1, 1])).unwrap().images;
    assert_eq!(images, [Bytes::from_static(b"hi")]);
    for (data, shape, expected) in [
        (json!(["not base64!"]), json!([1]), "invalid base64"),
        (
            json!([1]),
            json!([1]),
            "expected string elements, found a number",
        ),
        (json!([[["aGk="]]]), json!([1]), "nested deeper"),
        (
            json!(["aGk="]),
            json!([2]),
            "expected 2 element(s) by its shape, found 1",
        ),
    ] {
        let err = answer(data, shape).unwrap_err();
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
    let no_data = json!({"outputs": [{"name": "OUTPUT_IMAGE", "datatype": "BYTES", "shape": [1]}]});
    let err = parse_answer(&config, None, Bytes::from(no_data.to_string())).unwrap_err();
    assert!(
        err.to_string()
            .contains("neither data nor a binary_data_size"),
        "{err}"
    );
    // The size cap applies per image.
    let small = KServeConfig {
        max_output_bytes: 1,
        ..KServeConfig::default()
    };
    let body = json!({"outputs": [{"name": "OUTPUT_IMAGE", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]});
    let err = parse_answer(&small, None, Bytes::from(body.to_string())).unwrap_err();
    assert!(matches!(err, ProviderError::Rejected { .. }), "{err}");
}

#[test]
fn classifies_kserve_errors() {
    let check = |code: u16, message: &str, from_deadline: bool, expected: &str| {
        let body = json!({ "error": message }).to_string();
        let err = status_error(
            "infer",
            StatusCode::from_u16(code).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
            from_deadline,
            &crate::http::Secrets::default(),
        );
        assert_eq!(kind_of(&err), expected, "{code} {message}: {err}");
        assert_eq!(err.retry_after(), None);
    };
    check(503, "Exceeds maximum queue size", false, "RateLimited");
    // Whatever the code, a full queue is backpressure.
    check(400, "exceeds maximum queue size", false, "RateLimited");
    check(
        400,
        "unexpected shape for input 'INPUT_IMAGE'",
        false,
        "Rejected",
    );
    check(
        400,
        "Request for unknown model: 'x' is not found",
        false,
        "Unavailable",
    );
    check(
        400,
        "Request for unknown model: 'x' has no available versions",
        false,
        "Unavailable",
    );
    check(400, "the model is not ready", false, "Unavailable");
    check(
        404,
        "Request for unknown model: 'x' is not found",
        false,
        "Unavailable",
    );
    check(404, "", false, "Unavailable");
    check(401, "", false, "Unauthorized");
    check(403, "", false, "Unauthorized");
    check(422, "bad", false, "Rejected");
    check(500, "failed to run the model", false, "Unavailable");
    check(504, "", false, "Unavailable");
    check(503, "Request timeout expired", true, "DeadlineExceeded");
    check(503, "Request timeout expired", false, "Unavailable");

    let err = status_error(
        "infer",
        StatusCode::BAD_GATEWAY,
        &HeaderMap::new(),
        b"<html>proxy error</html>",
        false,
        &crate::http::Secrets::default(),
    );
    assert_eq!(
        err.to_string(),
        "provider unavailable: infer answered HTTP 502"
    );
}

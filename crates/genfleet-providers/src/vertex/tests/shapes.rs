//! Request shapes and answer classes: the output size cap, refused model
//! ids and kinds, edit bodies per kind, routes and URLs, unusable
//! configurations, error classification and protobuf durations.

use super::*;

#[tokio::test]
async fn outputs_over_the_size_cap_are_refused() {
    let fake = FakeVertex::start().await.unwrap();
    let token = TokenSource::endpoint(fake.token_url(), client());
    let provider = VertexProvider::new(
        VertexConfig {
            max_output_bytes: 1000,
            ..config(&fake, token)
        },
        client(),
    );
    let failed = generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(failed.error, ProviderError::Rejected { .. }),
        "{failed}"
    );
}

#[tokio::test]
async fn bad_model_ids_and_video_jobs_make_no_call() {
    let fake = FakeVertex::start().await.unwrap();
    let provider = provider(&fake);
    for model in ["../imagen", "a/b", "a:b", "a?b", "a#b", "a b", ""] {
        let failed = generate_with_retries(&provider, &request(model), &policy())
            .await
            .unwrap_err();
        assert_eq!(failed.attempts, 1, "{model}");
        assert_eq!(failed.error.code(), "invalid_input", "{model}");
    }
    let mut video = request("imagen-ok");
    video.kind = JobKind::ImageToVideo;
    video.inputs = vec![png(InputRole::Product, 0)];
    let failed = generate_with_retries(&provider, &video, &policy())
        .await
        .unwrap_err();
    assert!(
        matches!(failed.error, ProviderError::Unsupported { .. }),
        "{failed}"
    );
    assert_eq!(fake.calls(), 0);
    assert_eq!(fake.token_requests(), 0);
}

#[tokio::test]
async fn inpaint_sends_raw_and_mask_references() {
    let fake = FakeVertex::start().await.unwrap();
    let mut request = request("imagen-3.0-capability-001");
    request.kind = JobKind::Inpaint;
    request.seed = Some(5);
    request.inputs = vec![png(InputRole::Mask, 9), png(InputRole::Product, 1)];
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_pngs(&output, 1);
    assert_eq!(
        fake.last_body("imagen-3.0-capability-001").unwrap(),
        json!({
            "instances": [{
                "prompt": "a red sneaker on marble",
                "referenceImages": [
                    {
                        "referenceType": "REFERENCE_TYPE_RAW",
                        "referenceId": 1,
                        "referenceImage": {"bytesBase64Encoded": b64(&request.inputs[1])},
                    },
                    {
                        "referenceType": "REFERENCE_TYPE_MASK",
                        "referenceId": 2,
                        "referenceImage": {"bytesBase64Encoded": b64(&request.inputs[0])},
                        "maskImageConfig": {"maskMode": "MASK_MODE_USER_PROVIDED"},
                    },
                ],
            }],
            "parameters": {
                "editMode": "EDIT_MODE_INPAINT_INSERTION",
                "sampleCount": 1,
                "seed": 5,
                "addWatermark": false,
            },
        })
    );
}

#[tokio::test]
async fn background_removal_swaps_to_a_plain_background() {
    let fake = FakeVertex::start().await.unwrap();
    let mut request = request("imagen-3.0-capability-001");
    request.kind = JobKind::BackgroundRemoval;
    request.prompt = String::new();
    request.count = 2;
    request.inputs = vec![png(InputRole::Product, 1)];
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_pngs(&output, 2);
    let body = fake.last_body("imagen-3.0-capability-001").unwrap();
    assert_eq!(body["parameters"]["editMode"], "EDIT_MODE_BGSWAP");
    assert_eq!(body["parameters"]["sampleCount"], 2);
    let mask = &body["instances"][0]["referenceImages"][1];
    assert_eq!(mask["maskImageConfig"]["maskMode"], "MASK_MODE_BACKGROUND");
    assert!(mask.get("referenceImage").is_none(), "{mask}");
}

#[tokio::test]
async fn upscale_sends_the_factor_and_gets_a_bigger_image() {
    let fake = FakeVertex::start().await.unwrap();
    let mut request = request("imagen-4.0-upscale-preview");
    request.kind = JobKind::Upscale;
    request.count = 3;
    request.inputs = vec![png(InputRole::Product, 1)];
    request.parameters.insert("scale".into(), json!(4));
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_pngs(&output, 1);
    // 64 px times 4, in the IHDR width field.
    assert_eq!(
        &output.artifacts[0].bytes.resident().unwrap()[16..20],
        &256u32.to_be_bytes()
    );
    assert_eq!(
        fake.last_body("imagen-4.0-upscale-preview").unwrap(),
        json!({
            "instances": [{
                "prompt": "a red sneaker on marble",
                "image": {"bytesBase64Encoded": b64(&request.inputs[0])},
            }],
            "parameters": {"mode": "upscale", "upscaleConfig": {"upscaleFactor": "x4"}},
        })
    );
}

#[test]
fn builds_edit_bodies_by_kind() {
    let product = png(InputRole::Product, 1);
    let mut request = request("imagen-3.0-capability-001");

    request.kind = JobKind::BackgroundRemoval;
    request.prompt = String::new();
    request.inputs = vec![product.clone(), png(InputRole::Mask, 2)];
    let (method, body) = build_body(&request).unwrap();
    assert_eq!(method, Method::Predict);
    assert_eq!(body["parameters"]["editMode"], "EDIT_MODE_BGSWAP");
    let instance = &body["instances"][0];
    assert_eq!(
        instance["prompt"],
        "a plain white seamless studio background"
    );
    assert_eq!(
        instance["referenceImages"][1],
        json!({
            "referenceType": "REFERENCE_TYPE_MASK",
            "referenceId": 2,
            "maskImageConfig": {"maskMode": "MASK_MODE_BACKGROUND"},
        })
    );

    request.kind = JobKind::ProductPhoto;
    request.prompt = "on a beach".into();
    request.inputs = vec![product.clone()];
    let (_, body) = build_body(&request).unwrap();
    assert_eq!(body["parameters"]["editMode"], "EDIT_MODE_BGSWAP");
    assert_eq!(
        body["instances"][0]["referenceImages"][1]["maskImageConfig"]["maskMode"],
        "MASK_MODE_BACKGROUND"
    );

    request.kind = JobKind::BatchEdit;
    request.inputs = vec![product.clone(), png(InputRole::Mask, 2)];
    let (_, body) = build_body(&request).unwrap();
    assert_eq!(
        body["instances"][0]["referenceImages"][1]["maskImageConfig"]["maskMode"],
        "MASK_MODE_USER_PROVIDED"
    );

    let unsupported = |request: &GenerationRequest| {
        matches!(build_body(request), Err(ProviderError::Unsupported { .. }))
    };
    request.kind = JobKind::Inpaint;
    request.inputs = vec![product.clone()];
    assert!(unsupported(&request), "inpaint without a mask");
    request.kind = JobKind::BatchEdit;
    request.inputs.clear();
    assert!(unsupported(&request), "batch edit without an image");
    request.kind = JobKind::VirtualTryOn;
    request.inputs = vec![png(InputRole::Garment, 1)];
    assert!(unsupported(&request), "try-on without a person");
    request.model = "gemini-2.5-flash-image".into();
    assert!(unsupported(&request), "gemini try-on without a person");
    request.kind = JobKind::Upscale;
    request.model = "imagen-4.0-upscale-preview".into();
    request.inputs = vec![product];
    for (scale, expected) in [
        (json!("x2"), Some("x2")),
        (json!("4"), Some("x4")),
        (json!(2), Some("x2")),
        (json!(3), None),
        (json!("big"), None),
        (json!([4]), None),
    ] {
        request.parameters.insert("scale".into(), scale.clone());
        match (build_body(&request), expected) {
            (Ok((_, body)), Some(factor)) => {
                assert_eq!(body["parameters"]["upscaleConfig"]["upscaleFactor"], factor);
                assert!(body["parameters"].get("scale").is_none());
            }
            (Err(ProviderError::Unsupported { message }), None) => {
                assert!(
                    message.starts_with("upscale scale must be 2 or 4, found"),
                    "{message}"
                );
            }
            (other, _) => panic!("{scale}: {other:?}"),
        }
    }
}

#[test]
fn routes_models_and_builds_urls() {
    let (method, _) = build_body(&request("imagen-4.0-generate-001")).unwrap();
    assert_eq!(method, Method::Predict);
    let (method, _) = build_body(&request("virtual-try-on-preview-08-04")).unwrap();
    assert_eq!(method, Method::Predict);
    let (method, _) = build_body(&request("gemini-2.5-flash-image")).unwrap();
    assert_eq!(method, Method::GenerateContent);

    let token = TokenSource::fixed("t");
    let url = |config: VertexConfig, model: &str, method: Method| {
        VertexProvider::new(config, client())
            .url(model, method)
            .unwrap()
            .to_string()
    };
    assert_eq!(
        url(VertexConfig::new("my-proj", token.clone()), "imagen-4.0-generate-001", Method::Predict),
        "https://us-central1-aiplatform.googleapis.com/v1/projects/my-proj/locations/us-central1/publishers/google/models/imagen-4.0-generate-001:predict"
    );
    let global = VertexConfig {
        region: "global".into(),
        ..VertexConfig::new("my-proj", token.clone())
    };
    assert_eq!(
        url(global, "gemini-2.5-flash-image", Method::GenerateContent),
        "https://aiplatform.googleapis.com/v1/projects/my-proj/locations/global/publishers/google/models/gemini-2.5-flash-image:generateContent"
    );
    let custom = VertexConfig {
        base_url: Some(Url::parse("http://127.0.0.1:9/prefix/").unwrap()),
        region: "europe-west4".into(),
        ..VertexConfig::new("example.com:legacy", token)
    };
    assert_eq!(
        url(custom, "imagen-ok", Method::Predict),
        "http://127.0.0.1:9/prefix/v1/projects/example.com:legacy/locations/europe-west4/publishers/google/models/imagen-ok:predict"
    );
}

#[tokio::test]
async fn an_unusable_configuration_is_unauthorized_without_a_call() {
    let fake = FakeVertex::start().await.unwrap();
    for (project, region) in [("my/proj", "us-central1"), ("p", "evil.example/x")] {
        let config = VertexConfig {
            project: project.into(),
            region: region.into(),
            ..config(&fake, TokenSource::fixed(fake.issue_token()))
        };
        let provider = VertexProvider::new(config, client());
        let failed = generate_with_retries(&provider, &request("imagen-ok"), &policy())
            .await
            .unwrap_err();
        assert_eq!(failed.attempts, 1);
        assert!(
            matches!(failed.error, ProviderError::Unauthorized { .. }),
            "{failed}"
        );
    }
    assert_eq!(fake.calls(), 0);
}

#[test]
fn classifies_error_answers() {
    let none = reqwest::header::HeaderMap::new();
    let classify = |code: u16, headers: &reqwest::header::HeaderMap, body: &str| {
        status_error(
            "predict",
            reqwest::StatusCode::from_u16(code).unwrap(),
            headers,
            body.as_bytes(),
            &crate::http::Secrets::default(),
        )
    };
    let kind = |err: &ProviderError| {
        format!("{err:?}")
            .split([' ', '{'])
            .next()
            .unwrap()
            .to_owned()
    };
    for (code, expected) in [
        (400, "Rejected"),
        (403, "Unauthorized"),
        (404, "Rejected"),
        (408, "Unavailable"),
        (429, "RateLimited"),
        (500, "Unavailable"),
        (503, "Unavailable"),
        (504, "Unavailable"),
    ] {
        assert_eq!(kind(&classify(code, &none, "")), expected, "{code}");
    }

    // A quota 429: RetryInfo first, then Retry-After, then the 30 s floor.
    let with_retry_info = r#"{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "retryDelay": "9s"},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]}}"#;
    let mut retry_after = reqwest::header::HeaderMap::new();
    retry_after.insert("retry-after", "7".parse().unwrap());
    let err = classify(429, &retry_after, with_retry_info);
    assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
    assert_eq!(
        err.to_string(),
        "provider rate-limited the request: predict answered HTTP 429 RESOURCE_EXHAUSTED: Quota exceeded"
    );
    let plain =
        r#"{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded"}}"#;
    assert_eq!(
        classify(429, &retry_after, plain).retry_after(),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        classify(429, &none, plain).retry_after(),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        classify(503, &retry_after, "").retry_after(),
        Some(Duration::from_secs(7))
    );
    assert_eq!(classify(503, &none, "").retry_after(), None);

    // Long provider messages are cut; non-JSON bodies leave the status only.
    let long = format!(
        r#"{{"error": {{"code": 400, "status": "INVALID_ARGUMENT", "message": "{}"}}}}"#,
        "x".repeat(2000)
    );
    assert!(classify(400, &none, &long).to_string().chars().count() < 300);
    assert_eq!(
        classify(502, &none, "<html>bad gateway</html>").to_string(),
        "provider unavailable: predict answered HTTP 502"
    );
}

#[test]
fn parses_protobuf_durations() {
    let check = |text: &str, expected: Option<Duration>| {
        assert_eq!(parse_proto_duration(text), expected, "{text:?}");
    };
    check("30s", Some(Duration::from_secs(30)));
    check("1.5s", Some(Duration::from_millis(1500)));
    check("0.200s", Some(Duration::from_millis(200)));
    check("0s", Some(Duration::ZERO));
    check("1e9s", Some(Duration::from_secs(3600)));
    check("1e300s", Some(Duration::from_secs(3600)));
    check("18446744073709551615s", Some(Duration::from_secs(3600)));
    check("infs", None);
    check("-1s", None);
    check("30", None);
    check("NaNs", None);
    check("soon", None);
}

//! Generation through the fake: Imagen and Gemini answers (ok, filtered,
//! empty, quota, down, refused), virtual try-on and slow answers.

use super::*;

#[tokio::test]
async fn imagen_ok_sends_the_documented_generation_body() {
    let fake = FakeVertex::start().await.unwrap();
    let mut request = request("imagen-ok");
    request.count = 2;
    request.seed = Some(7);
    request.aspect_ratio = "16:9".into();
    request.negative_prompt = "blurry".into();
    request
        .parameters
        .insert("enhancePrompt".into(), json!(false));
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 1);
    assert_pngs(&output, 2);
    assert_ne!(
        output.artifacts[0].bytes.resident(),
        output.artifacts[1].bytes.resident()
    );
    assert_eq!(fake.token_requests(), 1);

    let received = fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].project, "test-project");
    assert_eq!(received[0].region, "us-central1");
    assert_eq!(received[0].method, "predict");
    assert_eq!(
        received[0].body,
        json!({
            "instances": [{"prompt": "a red sneaker on marble"}],
            "parameters": {
                "sampleCount": 2,
                "aspectRatio": "16:9",
                "negativePrompt": "blurry",
                "seed": 7,
                "addWatermark": false,
                "enhancePrompt": false,
            },
        })
    );
}

#[tokio::test]
async fn sample_count_is_clamped_to_four() {
    let fake = FakeVertex::start().await.unwrap();
    let mut request = request("imagen-4.0-generate-001");
    request.count = 9;
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_pngs(&output, 4);
    let body = fake.last_body("imagen-4.0-generate-001").unwrap();
    assert_eq!(body["parameters"]["sampleCount"], 4);
    assert!(body["parameters"].get("addWatermark").is_none(), "{body}");
}

#[tokio::test]
async fn all_filtered_is_a_rejection_with_the_reason() {
    let fake = FakeVertex::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("imagen-filtered"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(failed.error.code(), "provider_rejected");
    let message = failed.error.to_string();
    assert!(
        message.contains("vertex filtered every output (1 of 1): Unable to show generated images"),
        "{message}"
    );
    // Vertex's reason is long: a bounded summary of it is kept.
    assert!(message.chars().count() < 300, "{message}");
    assert!(!message.contains("sneaker"), "prompt leaked: {message}");
}

#[tokio::test]
async fn partly_filtered_keeps_the_rest() {
    let fake = FakeVertex::start().await.unwrap();
    let mut request = request("imagen-partial");
    request.count = 2;
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 1);
    assert_pngs(&output, 1);
}

#[tokio::test]
async fn no_predictions_is_a_rejection() {
    let fake = FakeVertex::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("imagen-empty"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(&failed.error, ProviderError::Rejected { message } if message.starts_with("no image returned")),
        "{failed}"
    );
}

#[tokio::test]
async fn quota_429_carries_the_retry_info_delay() {
    let fake = FakeVertex::start().await.unwrap();
    let provider = provider(&fake);
    let err = provider
        .generate(&request("imagen-quota"))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::RateLimited { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_millis(200)));
    assert!(
        err.to_string().starts_with(
            "provider rate-limited the request: predict answered HTTP 429 RESOURCE_EXHAUSTED: Quota exceeded"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn quota_429_is_retried_and_then_succeeds() {
    let fake = FakeVertex::start().await.unwrap();
    let output = generate_with_retries(&provider(&fake), &request("imagen-quota"), &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 2);
    assert_pngs(&output, 1);
    assert_eq!(fake.calls_for("imagen-quota"), 2);
    assert_eq!(fake.token_requests(), 1);
}

#[tokio::test]
async fn down_is_retried_up_to_max_attempts() {
    let fake = FakeVertex::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("imagen-down"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 4);
    assert_eq!(fake.calls_for("imagen-down"), 4);
    assert!(
        matches!(
            failed.error,
            ProviderError::Unavailable {
                retry_after: None,
                ..
            }
        ),
        "{failed}"
    );
    assert_eq!(
        failed.error.to_string(),
        "provider unavailable: predict answered HTTP 503 UNAVAILABLE: The service is currently unavailable."
    );
}

#[tokio::test]
async fn invalid_argument_is_a_rejection() {
    let fake = FakeVertex::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("imagen-invalid"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(
        failed.error.to_string(),
        "provider rejected the request: predict answered HTTP 400 INVALID_ARGUMENT: Request contains an invalid argument."
    );
}

#[tokio::test]
async fn permission_denied_is_unauthorized() {
    let fake = FakeVertex::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("imagen-forbidden"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(failed.error, ProviderError::Unauthorized { .. }),
        "{failed}"
    );
    assert!(failed.error.to_string().contains("403 PERMISSION_DENIED"));
}

#[tokio::test]
async fn an_unknown_model_is_a_rejection() {
    let fake = FakeVertex::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("missing-model-9"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(&failed.error, ProviderError::Rejected { message } if message.contains("HTTP 404 NOT_FOUND: Publisher Model")),
        "{failed}"
    );
}

#[tokio::test]
async fn gemini_ok_takes_the_inline_image_and_sends_the_documented_body() {
    let fake = FakeVertex::start().await.unwrap();
    let mut request = request("gemini-ok");
    request.kind = JobKind::BatchEdit;
    request.seed = Some(11);
    request.aspect_ratio = "1:1".into();
    request.inputs = vec![png(InputRole::Product, 1)];
    request.parameters.insert("temperature".into(), json!(0.5));
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 1);
    assert_pngs(&output, 1);
    assert_eq!(output.request_id.as_deref(), Some("fake-response-1"));

    let received = fake.received();
    assert_eq!(received[0].method, "generateContent");
    assert_eq!(
        received[0].body,
        json!({
            "contents": [{"role": "user", "parts": [
                {"text": "a red sneaker on marble"},
                {"inlineData": {"mimeType": "image/png", "data": b64(&request.inputs[0])}},
            ]}],
            "generationConfig": {
                "responseModalities": ["TEXT", "IMAGE"],
                "seed": 11,
                "imageConfig": {"aspectRatio": "1:1"},
                "temperature": 0.5,
            },
        })
    );
}

#[tokio::test]
async fn gemini_blocked_prompt_is_a_rejection() {
    let fake = FakeVertex::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("gemini-blocked"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(
        failed.error.to_string(),
        "provider rejected the request: gemini blocked the prompt: PROHIBITED_CONTENT"
    );
}

#[tokio::test]
async fn gemini_image_safety_is_a_rejection() {
    let fake = FakeVertex::start().await.unwrap();
    let failed =
        generate_with_retries(&provider(&fake), &request("gemini-image-safety"), &policy())
            .await
            .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(failed.error.code(), "provider_rejected");
    assert!(
        failed
            .error
            .to_string()
            .contains("finish reason IMAGE_SAFETY"),
        "{failed}"
    );
}

#[tokio::test]
async fn gemini_malformed_answers_are_retried_once() {
    let fake = FakeVertex::start().await.unwrap();
    for model in ["gemini-malformed", "gemini-text-only"] {
        let failed = generate_with_retries(&provider(&fake), &request(model), &policy())
            .await
            .unwrap_err();
        assert_eq!(failed.attempts, 2, "{model}");
        assert_eq!(fake.calls_for(model), 2);
        assert!(
            matches!(failed.error, ProviderError::Malformed { .. }),
            "{model}: {failed}"
        );
        // serde's message, which could quote base64 or text, is not used.
        assert!(!failed.error.to_string().contains("iVBOR"), "{failed}");
    }
}

#[tokio::test]
async fn virtual_try_on_sends_person_and_product_images() {
    let fake = FakeVertex::start().await.unwrap();
    let mut request = request("vto-ok");
    request.kind = JobKind::VirtualTryOn;
    request.count = 2;
    request.seed = Some(3);
    request.inputs = vec![png(InputRole::Garment, 1), png(InputRole::Person, 2)];
    request.parameters.insert("baseSteps".into(), json!(32));
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 1);
    assert_pngs(&output, 2);
    assert_eq!(
        fake.last_body("vto-ok").unwrap(),
        json!({
            "instances": [{
                "personImage": {"image": {"bytesBase64Encoded": b64(&request.inputs[1])}},
                "productImages": [{"image": {"bytesBase64Encoded": b64(&request.inputs[0])}}],
            }],
            "parameters": {"sampleCount": 2, "seed": 3, "addWatermark": false, "baseSteps": 32},
        })
    );
}

#[tokio::test]
async fn the_fake_refuses_try_on_inputs_that_are_not_images() {
    let fake = FakeVertex::start().await.unwrap();
    let mut request = request("vto-ok");
    request.kind = JobKind::VirtualTryOn;
    request.inputs = vec![
        InputImage {
            role: InputRole::Person,
            content_type: "image/png".into(),
            bytes: bytes::Bytes::from_static(b"not an image").into(),
        },
        png(InputRole::Garment, 1),
    ];
    let failed = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(failed.error.to_string().contains("personImage"), "{failed}");
}

#[tokio::test]
async fn slow_answers_time_out_as_unavailable() {
    let fake = FakeVertex::start().await.unwrap();
    fake.set_slow_delay(Duration::from_secs(5));
    let token = TokenSource::endpoint(fake.token_url(), client());
    let provider = VertexProvider::new(
        VertexConfig {
            request_timeout: Duration::from_millis(100),
            ..config(&fake, token)
        },
        client(),
    );
    let policy = RetryPolicy {
        max_attempts: 2,
        ..policy()
    };
    let start = Instant::now();
    let failed = generate_with_retries(&provider, &request("slow"), &policy)
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 2);
    assert_eq!(fake.calls_for("slow"), 2);
    let message = failed.error.to_string();
    assert!(
        message.starts_with("provider unavailable: request timed out"),
        "{message}"
    );
    assert!(!message.contains("127.0.0.1"), "URL leaked into {message}");
    assert!(start.elapsed() < Duration::from_secs(1));
}

//! [`VertexProvider`] through [`generate_with_retries`] against the fake
//! Vertex server over real loopback HTTP: one test per fake behaviour, the
//! token rules, the request shapes and redaction.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::time::Instant;
use url::Url;

use super::client::{build_body, parse_proto_duration, status_error, Method};
use super::fake::{FakeVertex, Faults};
use crate::fake_media::gradient_png;
use crate::fault_table;
use crate::hostile_table;
use crate::{
    generate_with_retries, GenerationRequest, InputImage, InputRole, JobKind, Provider,
    ProviderError, RetryPolicy, TokenSource, VertexConfig, VertexProvider,
};

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn client() -> reqwest::Client {
    // reqwest is built without a crypto provider; the binary installs ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn config(fake: &FakeVertex, token: TokenSource) -> VertexConfig {
    VertexConfig {
        base_url: Some(fake.base_url.clone()),
        request_timeout: Duration::from_secs(5),
        max_output_bytes: 10 * 1024 * 1024,
        ..VertexConfig::new("test-project", token)
    }
}

/// A provider whose tokens come from the fake's token endpoint.
fn provider(fake: &FakeVertex) -> VertexProvider {
    let token = TokenSource::endpoint(fake.token_url(), client());
    VertexProvider::new(config(fake, token), client())
}

fn request(model: &str) -> GenerationRequest {
    GenerationRequest {
        job_id: "job-9".into(),
        kind: JobKind::ProductPhoto,
        model: model.into(),
        prompt: "a red sneaker on marble".into(),
        negative_prompt: String::new(),
        seed: None,
        count: 1,
        aspect_ratio: String::new(),
        parameters: serde_json::Map::new(),
        inputs: Vec::new(),
        deadline: None,
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_delay: Duration::from_millis(10),
        // Also caps the 30 s quota floor and the fake's 0.2 s RetryInfo.
        max_delay: Duration::from_millis(50),
    }
}

fn png(role: InputRole, variant: u32) -> InputImage {
    InputImage {
        role,
        content_type: "image/png".into(),
        bytes: gradient_png(8, 8, variant).into(),
    }
}

fn b64(image: &InputImage) -> String {
    base64::engine::general_purpose::STANDARD.encode(image.bytes.resident().unwrap())
}

fn assert_pngs(output: &crate::GenerationOutput, count: usize) {
    assert_eq!(output.artifacts.len(), count, "{output:?}");
    for artifact in &output.artifacts {
        assert_eq!(artifact.content_type, "image/png");
        assert!(artifact
            .bytes
            .resident()
            .unwrap()
            .starts_with(PNG_SIGNATURE));
    }
}

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

#[tokio::test]
async fn fifty_concurrent_jobs_make_one_token_request() {
    let fake = FakeVertex::start().await.unwrap();
    // Long enough that every job arrives while the one refresh runs.
    fake.set_token_delay(Duration::from_millis(100));
    let provider = Arc::new(provider(&fake));
    let mut jobs = tokio::task::JoinSet::new();
    for i in 0..50 {
        let provider = Arc::clone(&provider);
        jobs.spawn(async move {
            let mut request = request("imagen-ok");
            request.job_id = format!("job-{i}");
            generate_with_retries(provider.as_ref(), &request, &policy()).await
        });
    }
    while let Some(joined) = jobs.join_next().await {
        assert_eq!(joined.unwrap().unwrap().attempts, 1);
    }
    assert_eq!(fake.token_requests(), 1);
    assert_eq!(fake.calls_for("imagen-ok"), 50);
    assert_eq!(fake.unauthorized(), 0);
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_once_and_the_job_succeeds() {
    let fake = FakeVertex::start().await.unwrap();
    let provider = provider(&fake);
    generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap();
    fake.revoke_tokens();
    let output = generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 2);
    assert_eq!(fake.unauthorized(), 1);
    assert_eq!(fake.token_requests(), 2);
    // The new token is kept: the next job needs no refresh.
    generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap();
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test]
async fn a_401_right_after_a_refresh_is_unauthorized() {
    let fake = FakeVertex::start().await.unwrap();
    fake.refuse_all_tokens(true);
    let failed = generate_with_retries(&provider(&fake), &request("imagen-ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 2);
    assert!(
        matches!(failed.error, ProviderError::Unauthorized { .. }),
        "{failed}"
    );
    assert!(
        failed.error.to_string().contains("401 UNAUTHENTICATED"),
        "{failed}"
    );
    assert_eq!(fake.unauthorized(), 2);
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test]
async fn a_token_about_to_expire_is_not_reused() {
    let fake = FakeVertex::start().await.unwrap();
    // The cache's timing is tested on a paused clock in vertex_auth; here,
    // over real HTTP, a token that lives under a second.
    fake.set_token_expires_in(Duration::from_millis(900));
    let provider = provider(&fake);
    let first = provider.generate(&request("imagen-ok")).await;
    // The fake answers expires_in in whole seconds: 0 here, so the client
    // does not cache it at all, and never sends an expired token.
    assert!(first.is_ok(), "{first:?}");
    provider.generate(&request("imagen-ok")).await.unwrap();
    assert_eq!(fake.token_requests(), 2);
    assert_eq!(fake.unauthorized(), 0);
}

#[tokio::test]
async fn token_endpoint_failures_are_classified() {
    let fake = FakeVertex::start().await.unwrap();
    fake.fail_token_requests(Some(StatusCode::SERVICE_UNAVAILABLE));
    let failed = generate_with_retries(&provider(&fake), &request("imagen-ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 4);
    assert_eq!(
        failed.error.to_string(),
        "provider unavailable: token endpoint answered HTTP 503"
    );
    assert_eq!(fake.calls(), 0);

    fake.fail_token_requests(Some(StatusCode::NOT_FOUND));
    let failed = generate_with_retries(&provider(&fake), &request("imagen-ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(failed.error, ProviderError::Unauthorized { .. }),
        "{failed}"
    );
    assert_eq!(fake.calls(), 0);
}

#[tokio::test]
async fn the_fake_token_endpoint_wants_the_metadata_flavor() {
    let fake = FakeVertex::start().await.unwrap();
    let response = client().get(fake.token_url()).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let response = client()
        .get(fake.token_url())
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 3599);
    assert!(answer["access_token"]
        .as_str()
        .unwrap()
        .starts_with("ya29."));
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "genfleet-vertex-tests-{}-{name}-{}",
        std::process::id(),
        fastrand::u64(..)
    ))
}

#[tokio::test]
async fn the_token_file_is_reread_after_it_changes() {
    let fake = FakeVertex::start().await.unwrap();
    let path = temp_path("token");
    std::fs::write(&path, format!("  {}\n", fake.issue_token())).unwrap();
    let provider = VertexProvider::new(config(&fake, TokenSource::file(&path)), client());
    let output = generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 1);

    // The sidecar writes a new token and the old one stops working.
    fake.revoke_tokens();
    std::fs::write(&path, fake.issue_token()).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let output = generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 1);
    assert_eq!(fake.unauthorized(), 0);
    assert_eq!(fake.token_requests(), 0);
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_missing_token_file_is_unauthorized_naming_the_path() {
    let fake = FakeVertex::start().await.unwrap();
    let path = temp_path("absent");
    let provider = VertexProvider::new(config(&fake, TokenSource::file(&path)), client());
    let failed = generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(&failed.error, ProviderError::Unauthorized { message } if message.contains(&path.display().to_string())),
        "{failed}"
    );
    assert_eq!(fake.calls(), 0);
}

#[tokio::test]
async fn a_refused_fixed_token_is_unauthorized_at_once() {
    let fake = FakeVertex::start().await.unwrap();
    let provider = VertexProvider::new(
        config(&fake, TokenSource::fixed("ya29.never-issued")),
        client(),
    );
    let failed = generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(failed.error, ProviderError::Unauthorized { .. }),
        "{failed}"
    );
    assert!(
        !failed.error.to_string().contains("never-issued"),
        "{failed}"
    );

    let provider = VertexProvider::new(
        config(&fake, TokenSource::fixed(fake.issue_token())),
        client(),
    );
    generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap();
}

#[tokio::test]
async fn debug_shows_no_token() {
    let fake = FakeVertex::start().await.unwrap();
    let token = fake.issue_token();
    let config = config(&fake, TokenSource::fixed(token.clone()));
    let provider = VertexProvider::new(config.clone(), client());
    for text in [format!("{config:?}"), format!("{provider:?}")] {
        assert!(!text.contains(&token), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }
    // Nor does an endpoint source holding a cached token.
    let provider = self::provider(&fake);
    provider.generate(&request("imagen-ok")).await.unwrap();
    let text = format!("{provider:?}");
    assert!(!text.contains("ya29"), "{text}");
}

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

/// The fault table's submit rows (this API has no separate reads): 30 % of
/// calls rate-limited, every job still succeeds with one accepted call, the
/// breaker never hears of the rate limits, and the bucket slows down.
#[tokio::test]
async fn fault_table_rate_limits_cost_no_job_and_never_open_the_breaker() {
    let fake = FakeVertex::start().await.unwrap();
    fake.set_faults(Faults {
        submit_rate_limited: 0.3,
        retry_after_secs: 0,
        ..Faults::default()
    });
    let (guarded, ended) = fault_table::all_succeed(provider(&fake), &request("imagen-ok")).await;
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, fault_table::JOBS as u64);
    assert!((7..=9).contains(&counts.submits_refused), "{counts:?}");
    assert_eq!(ended.iter().map(|job| job.deferrals).sum::<u32>(), 0);
    assert!(guarded.open_models().is_empty());
    assert_eq!(guarded.snapshot("imagen-ok").consecutive_failures, 0);
    assert!(guarded.rate_limit().is_some(), "the bucket was not slowed");
}

/// 30 % of calls answered 503: every job still succeeds, one accepted call
/// each (deferred, not failed, should the breaker open).
#[tokio::test]
async fn fault_table_unavailable_calls_cost_no_job() {
    let fake = FakeVertex::start().await.unwrap();
    fake.set_faults(Faults {
        submit_unavailable: 0.3,
        ..Faults::default()
    });
    fault_table::all_succeed(provider(&fake), &request("imagen-ok")).await;
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, fault_table::JOBS as u64);
    assert!(counts.submits_refused >= 6, "{counts:?}");
}

// What a job's parameters may not touch, and what a hostile Vertex may not
// do to us (issue 15); the checks are `hostile_table`'s, the data Vertex's.

#[tokio::test]
async fn owned_parameters_are_refused_before_any_request() {
    let fake = FakeVertex::start().await.unwrap();
    let provider = provider(&fake);
    for model in ["imagen-ok", "gemini-ok"] {
        hostile_table::owned_keys_are_refused(
            &provider,
            None,
            &policy(),
            &request(model),
            &super::client::OWNED,
            &[],
            || fake.calls() + fake.token_requests(),
        )
        .await;
    }
    // Not even a token was fetched.
    assert_eq!(fake.calls(), 0);
    assert_eq!(fake.token_requests(), 0);
}

#[tokio::test]
async fn storage_uri_watermark_and_safety_cannot_be_set() {
    let fake = FakeVertex::start().await.unwrap();
    for (key, value) in [
        ("storageUri", json!("gs://someone-elses-bucket/out/")),
        ("addWatermark", json!(false)),
        ("safetySetting", json!("block_none")),
        ("personGeneration", json!("allow_all")),
        ("sample_count", json!(4)),
        ("upscaleConfig.upscaleFactor", json!("x4")),
    ] {
        let mut request = request("imagen-ok");
        request.parameters.insert(key.into(), value);
        let failed = generate_with_retries(&provider(&fake), &request, &policy())
            .await
            .unwrap_err();
        assert_eq!(
            failed.error.to_string(),
            format!(
                "parameter {key:?} is set by the worker for vertex and cannot be overridden by a job"
            )
        );
    }
    assert_eq!(fake.calls(), 0);
}

#[tokio::test]
async fn harmless_parameters_reach_the_model() {
    let fake = FakeVertex::start().await.unwrap();
    let parameters = hostile_table::harmless_parameters_pass(
        &provider(&fake),
        &policy(),
        request("imagen-ok"),
        json!({"outputOptions": {"mimeType": "image/png"}, "enhancePrompt": false}),
        || fake.last_body("imagen-ok").unwrap()["parameters"].take(),
    )
    .await;
    assert_eq!(parameters["outputOptions"]["mimeType"], "image/png");
    assert_eq!(parameters["enhancePrompt"], false);
    assert_eq!(parameters["sampleCount"], 1);
}

#[tokio::test]
async fn more_outputs_than_asked_are_dropped_undecoded() {
    let fake = FakeVertex::start().await.unwrap();
    let counts = [1, 3];
    let outputs = hostile_table::extra_outputs_are_dropped(
        &provider(&fake),
        &policy(),
        &request("imagen-extra"),
        &counts,
        None,
    )
    .await;
    for (output, count) in outputs.iter().zip(counts) {
        assert_pngs(output, count as usize);
    }
}

#[tokio::test]
async fn an_endless_answer_is_cut_off_at_its_limit() {
    let fake = FakeVertex::start().await.unwrap();
    let token = TokenSource::endpoint(fake.token_url(), client());
    let provider = VertexProvider::new(
        VertexConfig {
            max_output_bytes: hostile_table::SMALL_OUTPUT_LIMIT,
            ..config(&fake, token)
        },
        client(),
    );
    let expected = hostile_table::output_too_large(1_048_576);
    hostile_table::fails_with(&provider, &request("imagen-endless"), &expected).await;
}

#[tokio::test]
async fn error_messages_never_echo_the_token_or_the_prompt() {
    let fake = FakeVertex::start().await.unwrap();
    let message = hostile_table::sanitised_error(
        &provider(&fake),
        &policy(),
        &request("imagen-echo"),
        &["ya29.fake-token"],
    )
    .await;
    assert_eq!(
        message,
        "provider rejected the request: predict answered HTTP 400 INVALID_ARGUMENT: \
         Request with Bearer [redacted] has an invalid prompt \"[prompt]\"."
    );
}

/// A predict Vertex ran (and bills) whose answer was lost: the attempt
/// fails `provider_unavailable` and the retry predicts again. Vertex takes
/// no idempotency key and answers inline (no request to find later), so
/// the bound is exactly one more render per lost answer.
#[tokio::test]
async fn fault_table_lost_answers_cost_exactly_one_more_render_each() {
    let fake = FakeVertex::start().await.unwrap();
    let set_lost = |fraction| {
        fake.set_faults(Faults {
            submit_answer_lost: fraction,
            ..Faults::default()
        })
    };
    fault_table::lost_answers_cost_one_render_each(
        provider(&fake),
        &request("imagen-ok"),
        || fake.fault_counts(),
        set_lost,
    )
    .await;
}

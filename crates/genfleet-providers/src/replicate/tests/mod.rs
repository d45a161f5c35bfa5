//! [`ReplicateProvider`] through [`generate_with_retries`] and its
//! [`Resumable`] face against the fake Replicate server over real loopback
//! HTTP: one test per fake behaviour, plus the request shapes, the
//! submission log and the redaction rules.
//!
//! This file holds the shared helpers, the fake behaviours and the input
//! shapes; [`resume`] the submission log and the resumable face;
//! [`hostile`] owned parameters and a hostile server.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::fake::FakeReplicate;
use crate::hostile_table;
use crate::resume::MemoryLog;
use crate::{
    generate_with_retries, Checked, GenerationRequest, InputImage, InputRole, JobKind, Provider,
    ProviderError, ReplicateConfig, ReplicateProvider, Resumable, RetryPolicy,
};

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const TOKEN: &str = "r8_test_token_0123";

fn client() -> reqwest::Client {
    // reqwest is built without a crypto provider; the binary installs ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Polls every 10 ms and sends no `Prefer: wait`, so the poll loop runs.
fn config(fake: &FakeReplicate) -> ReplicateConfig {
    ReplicateConfig {
        base_url: fake.base_url.clone(),
        token: TOKEN.into(),
        request_timeout: Duration::from_secs(5),
        poll_interval: Duration::from_millis(10),
        wait_seconds: 0,
        max_output_bytes: 10 * 1024 * 1024,
    }
}

fn provider(fake: &FakeReplicate) -> ReplicateProvider {
    ReplicateProvider::new(config(fake), client())
}

fn request(model: &str) -> GenerationRequest {
    GenerationRequest {
        job_id: "job-7".into(),
        kind: JobKind::ProductPhoto,
        model: model.into(),
        prompt: "a red sneaker on marble".into(),
        negative_prompt: String::new(),
        seed: Some(7),
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
        // Also caps the fake's "resets in ~30s", keeping the tests fast.
        max_delay: Duration::from_millis(50),
    }
}

fn image(role: InputRole, bytes: &'static [u8]) -> InputImage {
    InputImage {
        role,
        content_type: "image/png".into(),
        bytes: bytes::Bytes::from_static(bytes).into(),
    }
}

fn class(err: &ProviderError) -> String {
    format!("{err:?}")
        .split([' ', '{'])
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn ok_polls_and_returns_the_generated_png() {
    let fake = FakeReplicate::start().await.unwrap();
    let output = generate_with_retries(&provider(&fake), &request("test/ok"), &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 1);
    assert_eq!(output.request_id, fake.last_prediction_id());
    assert_eq!(output.artifacts.len(), 1);
    assert_eq!(output.artifacts[0].content_type, "image/png");
    assert!(output.artifacts[0]
        .bytes
        .resident()
        .unwrap()
        .starts_with(PNG_SIGNATURE));
    assert_eq!(fake.creates_for("test/ok"), 1);
    // starting at create, processing at the first poll, done at the second.
    assert_eq!(fake.polls(), 2);
    let seen = fake.last_create().unwrap();
    assert_eq!(seen.authorization, format!("Bearer {TOKEN}"));
    assert_eq!(seen.prefer, None, "wait_seconds 0 sends no Prefer");
    assert_eq!(seen.cancel_after, None, "no deadline, no Cancel-After");
    assert_eq!(
        seen.input,
        json!({"prompt": "a red sneaker on marble", "seed": 7, "num_outputs": 1})
    );
    assert_eq!(fake.downloads(), 1);
    assert!(!fake.token_reached_file_host());
}

#[tokio::test]
async fn ok_returns_one_artifact_per_requested_output() {
    let fake = FakeReplicate::start().await.unwrap();
    let mut request = request("stability-ai/sdxl");
    request.count = 3;
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_eq!(output.artifacts.len(), 3);
    assert_ne!(
        output.artifacts[0].bytes.resident(),
        output.artifacts[1].bytes.resident()
    );
    assert_eq!(fake.creates_for("stability-ai/sdxl"), 1);
    assert!(!fake.token_reached_file_host());
}

#[tokio::test]
async fn prefer_wait_answers_without_polling() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = ReplicateProvider::new(
        ReplicateConfig {
            wait_seconds: 5,
            ..config(&fake)
        },
        client(),
    );
    let output = generate_with_retries(&provider, &request("test/ok"), &policy())
        .await
        .unwrap();
    assert_eq!(output.artifacts.len(), 1);
    assert_eq!(fake.polls(), 0);
    assert_eq!(
        fake.last_create().unwrap().prefer.as_deref(),
        Some("wait=5")
    );
}

#[tokio::test]
async fn the_deadline_cuts_the_wait_and_sets_cancel_after() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = ReplicateProvider::new(
        ReplicateConfig {
            wait_seconds: 60,
            ..config(&fake)
        },
        client(),
    );
    let mut request = request("test/ok");
    request.deadline = Some(Instant::now() + Duration::from_secs(30));
    generate_with_retries(&provider, &request, &policy())
        .await
        .unwrap();
    let seen = fake.last_create().unwrap();
    // 29.99.. s left: the hold rounds down, Cancel-After up.
    assert_eq!(seen.prefer.as_deref(), Some("wait=29"));
    assert_eq!(seen.cancel_after.as_deref(), Some("30s"));

    // Under a second left: no hold at all, and Cancel-After at its floor.
    request.deadline = Some(Instant::now() + Duration::from_millis(900));
    generate_with_retries(&provider, &request, &policy())
        .await
        .unwrap();
    let seen = fake.last_create().unwrap();
    assert_eq!(seen.prefer, None);
    assert_eq!(seen.cancel_after.as_deref(), Some("5s"));
}

#[tokio::test]
async fn versioned_models_create_through_predictions() {
    let fake = FakeReplicate::start().await.unwrap();
    let output = generate_with_retries(
        &provider(&fake),
        &request("stability-ai/sdxl:39ed52f2a78e934b"),
        &policy(),
    )
    .await
    .unwrap();
    assert_eq!(output.artifacts.len(), 1);
    let seen = fake.last_create().unwrap();
    assert_eq!(seen.version.as_deref(), Some("39ed52f2a78e934b"));
    assert_eq!(seen.input["prompt"], "a red sneaker on marble");
}

#[tokio::test]
async fn throttled_reads_the_reset_from_the_body() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = provider(&fake);
    let err = provider
        .generate(&request("test/throttled"))
        .await
        .unwrap_err();
    assert_eq!(class(&err), "RateLimited");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(
        err.to_string(),
        "provider rate-limited the request: create answered HTTP 429: Request was throttled. Your rate limit resets in ~30s."
    );

    let fake = FakeReplicate::start().await.unwrap();
    let output = generate_with_retries(
        &self::provider(&fake),
        &request("test/throttled"),
        &policy(),
    )
    .await
    .unwrap();
    assert_eq!(output.attempts, 2);
    assert_eq!(fake.creates_for("test/throttled"), 2);
}

#[tokio::test]
async fn down_is_retried_up_to_max_attempts() {
    let fake = FakeReplicate::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("test/down"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 4);
    assert_eq!(class(&failed.error), "Unavailable");
    assert!(failed.error.to_string().contains("HTTP 503"), "{failed}");
    assert_eq!(fake.creates_for("test/down"), 4);
}

#[tokio::test]
async fn nsfw_failures_are_rejections() {
    let fake = FakeReplicate::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("test/nsfw"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(failed.error.code(), "provider_rejected");
    assert_eq!(
        failed.error.to_string(),
        "provider rejected the request: the prediction was flagged by a safety check: NSFW content detected. Try running it again, or try a different prompt."
    );
    assert_eq!(fake.creates_for("test/nsfw"), 1);
    assert_eq!(fake.downloads(), 0);
}

#[tokio::test]
async fn model_failures_are_rejections_without_the_prompt() {
    let fake = FakeReplicate::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("test/failed"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(class(&failed.error), "Rejected");
    let message = failed.error.to_string();
    assert!(
        message.starts_with(
            "provider rejected the request: the model failed on this input: Traceback"
        ),
        "{message}"
    );
    assert!(message.contains("[prompt]"), "{message}");
    assert!(!message.contains("sneaker"), "prompt leaked into {message}");
    assert!(!message.contains('\n'), "{message}");
    assert_eq!(fake.creates_for("test/failed"), 1);
}

#[tokio::test]
async fn aborted_predictions_are_retried() {
    let fake = FakeReplicate::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("test/aborted"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 4);
    assert_eq!(class(&failed.error), "Unavailable");
    assert_eq!(failed.error.retry_after(), None);
    assert_eq!(fake.creates_for("test/aborted"), 4);
}

#[tokio::test]
async fn stuck_predictions_end_at_the_deadline_and_are_cancelled() {
    let fake = FakeReplicate::start().await.unwrap();
    let mut request = request("test/stuck");
    let start = Instant::now();
    request.deadline = Some(start + Duration::from_millis(300));
    let failed = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap_err();
    assert!(
        matches!(failed.error, ProviderError::DeadlineExceeded),
        "{failed}"
    );
    assert_eq!(failed.attempts, 1);
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(fake.cancels(), 1);
    let id = fake.last_prediction_id().unwrap();
    assert_eq!(fake.status_of(&id).as_deref(), Some("canceled"));
    assert_eq!(
        fake.last_create().unwrap().cancel_after.as_deref(),
        Some("5s")
    );
}

/// Polls that keep answering truncated JSON are polled again on the same
/// prediction until the deadline, which cancels it: never created twice.
#[tokio::test]
async fn malformed_polls_are_read_again_until_the_deadline_and_the_prediction_cancelled() {
    let fake = FakeReplicate::start().await.unwrap();
    let mut request = request("test/malformed");
    request.deadline = Some(Instant::now() + Duration::from_millis(600));
    let failed = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(class(&failed.error), "DeadlineExceeded");
    assert_eq!(fake.creates_for("test/malformed"), 1);
    assert!(fake.polls() >= 3, "{}", fake.polls());
    assert_eq!(fake.cancels(), 1);
}

#[tokio::test]
async fn a_connection_reset_mid_body_is_unavailable() {
    let fake = FakeReplicate::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("test/reset"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 4);
    assert_eq!(class(&failed.error), "Unavailable");
    let message = failed.error.to_string();
    assert!(
        message.starts_with("provider unavailable: request failed while reading the body"),
        "{message}"
    );
    assert!(!message.contains("127.0.0.1"), "URL leaked into {message}");
    assert_eq!(fake.creates_for("test/reset"), 4);
}

#[tokio::test]
async fn video_outputs_are_downloaded() {
    let fake = FakeReplicate::start().await.unwrap();
    let mut request = request("test/video");
    request.kind = JobKind::ImageToVideo;
    request.aspect_ratio = "16:9".into();
    request.inputs = vec![image(InputRole::Product, b"p")];
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_eq!(output.artifacts.len(), 1);
    assert_eq!(output.artifacts[0].content_type, "video/mp4");
    assert_eq!(
        &output.artifacts[0].bytes.resident().unwrap()[4..8],
        b"ftyp"
    );
    assert_eq!(
        fake.last_create().unwrap().input,
        json!({
            "prompt": "a red sneaker on marble",
            "seed": 7,
            "aspect_ratio": "16:9",
            "image": "data:image/png;base64,cA==",
        })
    );
    assert!(!fake.token_reached_file_host());
}

#[tokio::test]
async fn a_missing_token_is_unauthorized() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = ReplicateProvider::new(
        ReplicateConfig {
            token: String::new(),
            ..config(&fake)
        },
        client(),
    );
    let failed = generate_with_retries(&provider, &request("test/ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(class(&failed.error), "Unauthorized");
    assert_eq!(
        failed.error.to_string(),
        "provider credentials were refused: create answered HTTP 401: You did not pass a valid authentication token"
    );
    assert_eq!(fake.unauthorized(), 1);
    assert_eq!(fake.creates(), 0);
}

#[tokio::test]
async fn a_token_unfit_for_a_header_is_unauthorized_without_a_call() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = ReplicateProvider::new(
        ReplicateConfig {
            token: "bad\ntoken".into(),
            ..config(&fake)
        },
        client(),
    );
    let failed = generate_with_retries(&provider, &request("test/ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(class(&failed.error), "Unauthorized");
    assert!(!failed.error.to_string().contains("bad"), "{failed}");
    assert_eq!(fake.creates() + fake.unauthorized(), 0);
}

#[tokio::test]
async fn unknown_models_and_bad_names_are_not_retried() {
    let fake = FakeReplicate::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("test/nope"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(class(&failed.error), "Rejected");
    assert!(failed.error.to_string().contains("HTTP 404"), "{failed}");

    let failed = generate_with_retries(&provider(&fake), &request("test/../ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.error.code(), "invalid_input");
    assert_eq!(fake.creates(), 1);
}

#[tokio::test]
async fn missing_inputs_fail_before_creating() {
    let fake = FakeReplicate::start().await.unwrap();
    let mut request = request("test/ok");
    request.kind = JobKind::VirtualTryOn;
    request.inputs = vec![image(InputRole::Person, b"person")];
    let failed = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(failed.error.code(), "invalid_input");
    assert_eq!(fake.creates(), 0);
}

#[tokio::test]
async fn outputs_over_the_size_cap_are_refused() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = ReplicateProvider::new(
        ReplicateConfig {
            max_output_bytes: 1000,
            ..config(&fake)
        },
        client(),
    );
    let failed = generate_with_retries(&provider, &request("test/ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(class(&failed.error), "Rejected");
}

#[test]
fn builds_the_input_per_kind() {
    use super::client::build_input;

    let mut request = request("a/b");
    request.negative_prompt = "blurry".into();
    request.count = 2;
    request.aspect_ratio = "4:3".into();
    request.parameters.insert("guidance".into(), json!(3.5));
    request.parameters.insert("seed".into(), json!(99));
    assert_eq!(
        Value::Object(build_input(&request).unwrap()),
        json!({
            "prompt": "a red sneaker on marble",
            "negative_prompt": "blurry",
            "seed": 99,
            "num_outputs": 2,
            "aspect_ratio": "4:3",
            "guidance": 3.5,
        })
    );

    let mut request = self::request("a/b");
    request.kind = JobKind::Upscale;
    request.inputs = vec![image(InputRole::Product, b"p")];
    request.parameters.insert("scale".into(), json!(4));
    assert_eq!(
        Value::Object(build_input(&request).unwrap()),
        json!({"image": "data:image/png;base64,cA==", "scale": 4})
    );
    request.kind = JobKind::BackgroundRemoval;
    request.parameters.clear();
    assert_eq!(
        Value::Object(build_input(&request).unwrap()),
        json!({"image": "data:image/png;base64,cA=="})
    );

    request.kind = JobKind::Inpaint;
    request.inputs = vec![
        image(InputRole::Mask, b"m"),
        image(InputRole::Reference, b"r"),
    ];
    let input = build_input(&request).unwrap();
    assert_eq!(input["image"], "data:image/png;base64,cg==");
    assert_eq!(input["mask"], "data:image/png;base64,bQ==");
    assert_eq!(input["num_outputs"], 1);

    request.kind = JobKind::VirtualTryOn;
    request.inputs = vec![
        image(InputRole::Garment, b"g"),
        image(InputRole::Person, b"p"),
    ];
    assert_eq!(
        Value::Object(build_input(&request).unwrap()),
        json!({
            "prompt": "a red sneaker on marble",
            "seed": 7,
            "human_img": "data:image/png;base64,cA==",
            "garm_img": "data:image/png;base64,Zw==",
        })
    );

    for kind in [
        JobKind::BatchEdit,
        JobKind::Upscale,
        JobKind::BackgroundRemoval,
        JobKind::ImageToVideo,
    ] {
        request.kind = kind;
        request.inputs.clear();
        assert_eq!(
            build_input(&request).unwrap_err().code(),
            "invalid_input",
            "{kind:?}"
        );
    }
    request.kind = JobKind::Inpaint;
    request.inputs = vec![image(InputRole::Product, b"p")];
    assert_eq!(build_input(&request).unwrap_err().code(), "invalid_input");
}

mod hostile;
mod resume;

//! [`FalProvider`] through [`generate_with_retries`] against the fake fal
//! server over real loopback HTTP: one test per fake behaviour, plus the
//! request shapes and redaction rules.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::fake::FakeFal;
use crate::hostile_table;
use crate::resume::MemoryLog;
use crate::{
    generate_with_retries, FalConfig, FalProvider, GenerationRequest, InputImage, InputRole,
    JobKind, ProviderError, RetryPolicy,
};

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn client() -> reqwest::Client {
    // reqwest is built without a crypto provider; the binary installs ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn config(fake: &FakeFal) -> FalConfig {
    FalConfig {
        base_url: fake.base_url.clone(),
        key: "test-key-0123".into(),
        request_timeout: Duration::from_secs(5),
        poll_interval: Duration::from_millis(10),
        max_output_bytes: 10 * 1024 * 1024,
    }
}

fn provider(fake: &FakeFal) -> FalProvider {
    FalProvider::new(config(fake), client())
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
        // Also caps the fake's `Retry-After: 1`, keeping the tests fast.
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

#[tokio::test]
async fn ok_returns_the_generated_png() {
    let fake = FakeFal::start().await.unwrap();
    let output = generate_with_retries(&provider(&fake), &request("test/ok"), &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 1);
    assert!(output.request_id.is_some());
    assert_eq!(output.artifacts.len(), 1);
    let artifact = &output.artifacts[0];
    assert_eq!(artifact.content_type, "image/png");
    assert!(artifact
        .bytes
        .resident()
        .unwrap()
        .starts_with(PNG_SIGNATURE));
    assert_eq!(fake.submissions_for("test/ok"), 1);
    assert_eq!(fake.submissions(), 1);
}

#[tokio::test]
async fn spooled_inputs_are_sent_and_outputs_spooled_when_over_budget() {
    // A spool with no memory budget: every byte waits in a file.
    let dir = tempfile::tempdir().unwrap();
    let spool = crate::Spool::new(dir.path(), 0).unwrap();
    let fake = FakeFal::start().await.unwrap();
    let provider = provider(&fake).with_spool(spool.clone());
    let mut request = request("test/ok");
    request.kind = JobKind::BatchEdit;
    let photo = b"\xFF\xD8 not really a jpeg, but bytes to carry";
    request.inputs = vec![InputImage {
        role: InputRole::Product,
        content_type: "image/jpeg".into(),
        bytes: spool.keep(bytes::Bytes::from_static(photo)).await.unwrap(),
    }];
    assert!(request.inputs[0].bytes.is_spooled());

    let output = generate_with_retries(&provider, &request, &policy())
        .await
        .unwrap();
    use base64::Engine as _;
    let expected = format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(photo)
    );
    assert_eq!(fake.last_image_url().as_deref(), Some(expected.as_str()));
    let artifact = &output.artifacts[0];
    assert!(artifact.bytes.is_spooled());
    assert!(artifact
        .bytes
        .bytes()
        .await
        .unwrap()
        .starts_with(PNG_SIGNATURE));
    // The input's file and the output's: both go when their handles do.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    drop(output);
    drop(request);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn ok_returns_one_artifact_per_requested_image() {
    let fake = FakeFal::start().await.unwrap();
    let mut request = request("test/ok");
    request.count = 3;
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_eq!(output.artifacts.len(), 3);
    assert_ne!(
        output.artifacts[0].bytes.resident(),
        output.artifacts[1].bytes.resident()
    );
}

#[tokio::test]
async fn production_model_names_with_sub_paths_work() {
    let fake = FakeFal::start().await.unwrap();
    let output = generate_with_retries(&provider(&fake), &request("fal-ai/flux/dev"), &policy())
        .await
        .unwrap();
    assert_eq!(output.artifacts.len(), 1);
    assert_eq!(fake.submissions_for("fal-ai/flux/dev"), 1);
}

#[tokio::test]
async fn flaky_succeeds_on_the_third_attempt() {
    let fake = FakeFal::start().await.unwrap();
    let output = generate_with_retries(&provider(&fake), &request("test/flaky"), &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 3);
    assert_eq!(output.artifacts.len(), 1);
    assert_eq!(fake.submissions_for("test/flaky"), 3);
}

#[tokio::test]
async fn flaky_answers_carry_their_retry_hints() {
    let fake = FakeFal::start().await.unwrap();
    let provider = provider(&fake);
    let request = request("test/flaky");
    let first = crate::Provider::generate(&provider, &request)
        .await
        .unwrap_err();
    assert!(first.is_retryable());
    assert_eq!(first.retry_after(), Some(Duration::from_secs(1)));
    let second = crate::Provider::generate(&provider, &request)
        .await
        .unwrap_err();
    assert!(
        second
            .to_string()
            .contains("HTTP 503 (runner_scheduling_failure)"),
        "{second}"
    );
    assert_eq!(second.retry_after(), None);
}

#[tokio::test]
async fn nsfw_is_a_rejection() {
    let fake = FakeFal::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("test/nsfw"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(&failed.error, ProviderError::Rejected { message } if message == "provider flagged the output as unsafe"),
        "{failed}"
    );
    assert_eq!(failed.error.code(), "provider_rejected");
}

#[tokio::test]
async fn validation_errors_are_rejections_with_fal_detail() {
    let fake = FakeFal::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("test/reject"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(
        failed.error.to_string(),
        "provider rejected the request: submit answered HTTP 422: prompt: prompt is too long"
    );
}

#[tokio::test]
async fn down_is_retried_up_to_max_attempts() {
    let fake = FakeFal::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("test/down"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 4);
    assert!(
        matches!(failed.error, ProviderError::Unavailable { .. }),
        "{failed}"
    );
    assert_eq!(fake.submissions_for("test/down"), 4);
}

#[tokio::test]
async fn a_completed_request_whose_result_fails_is_an_error() {
    let fake = FakeFal::start().await.unwrap();
    let policy = RetryPolicy {
        max_attempts: 2,
        ..policy()
    };
    let failed = generate_with_retries(&provider(&fake), &request("test/failed-result"), &policy)
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 2);
    assert_eq!(
        failed.error.to_string(),
        "provider unavailable: result answered HTTP 500: runner crashed"
    );
}

#[tokio::test]
async fn stuck_requests_end_at_the_deadline_and_are_cancelled() {
    let fake = FakeFal::start().await.unwrap();
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
    assert_eq!(failed.error.code(), "deadline_exceeded");
    assert_eq!(failed.attempts, 1);
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(fake.cancellations(), 1);
}

/// A result that keeps arriving truncated is read again on the same
/// request until the deadline: never submitted (and paid for) twice.
#[tokio::test]
async fn malformed_results_are_read_again_until_the_deadline_without_a_second_submit() {
    let fake = FakeFal::start().await.unwrap();
    let mut request = request("test/malformed");
    request.deadline = Some(Instant::now() + Duration::from_millis(600));
    let failed = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap_err();
    assert!(
        matches!(failed.error, ProviderError::DeadlineExceeded),
        "{failed}"
    );
    assert_eq!(failed.attempts, 1);
    assert_eq!(fake.submissions_for("test/malformed"), 1);
    assert!(fake.result_reads() >= 3, "{}", fake.result_reads());
}

#[tokio::test]
async fn video_outputs_are_downloaded() {
    let fake = FakeFal::start().await.unwrap();
    let mut request = request("test/video");
    request.kind = JobKind::ImageToVideo;
    request.inputs = vec![image(InputRole::Product, b"fake png")];
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_eq!(output.artifacts.len(), 1);
    let video = &output.artifacts[0];
    assert_eq!(video.content_type, "video/mp4");
    assert_eq!(&video.bytes.resident().unwrap()[4..8], b"ftyp");
}

#[tokio::test]
async fn sleep_completes_no_earlier_than_its_delay() {
    let fake = FakeFal::start().await.unwrap();
    let start = Instant::now();
    let output = generate_with_retries(&provider(&fake), &request("test/sleep-200"), &policy())
        .await
        .unwrap();
    let elapsed = start.elapsed();
    // No upper bound: a loaded machine may be late, never early.
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert_eq!(output.attempts, 1);
    assert_eq!(output.artifacts.len(), 1);
    assert!(output.artifacts[0]
        .bytes
        .resident()
        .unwrap()
        .starts_with(PNG_SIGNATURE));
    assert_eq!(fake.submissions_for("test/sleep-200"), 1);
}

#[tokio::test]
async fn sleep_reads_queued_then_in_progress_until_its_delay() {
    let fake = FakeFal::start().await.unwrap();
    let http = client();
    let start = Instant::now();
    let submitted: Value = http
        .post(fake.base_url.join("test/sleep-200").unwrap())
        .header("Authorization", "Key test-key-0123")
        .json(&json!({"prompt": "a mug"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status_url = submitted["status_url"].as_str().unwrap().to_owned();
    let status = || async {
        let answer: Value = http
            .get(&status_url)
            .header("Authorization", "Key test-key-0123")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["status"].as_str().unwrap().to_owned()
    };
    let mut seen = vec![status().await];
    while seen.last().map(String::as_str) != Some("COMPLETED") {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen.push(status().await);
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert_eq!(seen[0], "IN_QUEUE", "{seen:?}");
    assert_eq!(seen[1], "IN_PROGRESS", "{seen:?}");
    assert_eq!(
        submit_status(&http, &fake, "test/sleep-soon").await,
        404,
        "a delay that is not a number is an unknown app"
    );
}

async fn submit_status(http: &reqwest::Client, fake: &FakeFal, model: &str) -> u16 {
    http.post(fake.base_url.join(model).unwrap())
        .header("Authorization", "Key test-key-0123")
        .json(&json!({"prompt": "a mug"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_missing_key_is_unauthorized() {
    let fake = FakeFal::start().await.unwrap();
    let provider = FalProvider::new(
        FalConfig {
            key: String::new(),
            ..config(&fake)
        },
        client(),
    );
    let failed = generate_with_retries(&provider, &request("test/ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(failed.error, ProviderError::Unauthorized { .. }),
        "{failed}"
    );
    assert!(!failed.error.is_retryable());
}

#[tokio::test]
async fn a_key_unfit_for_a_header_is_unauthorized_without_a_call() {
    let fake = FakeFal::start().await.unwrap();
    let config = FalConfig {
        key: "bad\nkey".into(),
        ..config(&fake)
    };
    let provider = FalProvider::new(config, client());
    let failed = generate_with_retries(&provider, &request("test/ok"), &policy())
        .await
        .unwrap_err();
    assert!(
        matches!(failed.error, ProviderError::Unauthorized { .. }),
        "{failed}"
    );
    assert!(!failed.error.to_string().contains("bad"), "{failed}");
    assert_eq!(fake.submissions(), 0);
}

#[tokio::test]
async fn outputs_over_the_size_cap_are_refused() {
    let fake = FakeFal::start().await.unwrap();
    let provider = FalProvider::new(
        FalConfig {
            max_output_bytes: 1000,
            ..config(&fake)
        },
        client(),
    );
    let failed = generate_with_retries(&provider, &request("test/ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(failed.error, ProviderError::Rejected { .. }),
        "{failed}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    // A port that was free a moment ago, with nothing listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = FalConfig {
        base_url: format!("http://127.0.0.1:{port}/").parse().unwrap(),
        key: "k".into(),
        request_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(10),
        max_output_bytes: 1024,
    };
    let provider = FalProvider::new(config, client());
    let policy = RetryPolicy {
        max_attempts: 2,
        ..policy()
    };
    let failed = generate_with_retries(&provider, &request("test/ok"), &policy)
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 2);
    let message = failed.error.to_string();
    assert!(
        message.starts_with("provider unavailable: request could not connect"),
        "{message}"
    );
    assert!(!message.contains("127.0.0.1"), "URL leaked into {message}");
}

#[tokio::test]
async fn missing_inputs_fail_before_submitting() {
    let fake = FakeFal::start().await.unwrap();
    let mut request = request("test/ok");
    request.kind = JobKind::VirtualTryOn;
    request.inputs = vec![image(InputRole::Person, b"person")];
    let failed = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(failed.error.code(), "invalid_input");
    assert_eq!(fake.submissions(), 0);
}

#[test]
fn builds_the_model_input() {
    let mut request = request("fal-ai/flux/dev");
    request.negative_prompt = "blurry".into();
    request.count = 2;
    request.aspect_ratio = "16:9".into();
    request
        .parameters
        .insert("num_inference_steps".into(), json!(28));
    request.parameters.insert("seed".into(), json!(99));
    let input = super::client::build_input(&request).unwrap();
    assert_eq!(
        Value::Object(input),
        json!({
            "prompt": "a red sneaker on marble",
            "negative_prompt": "blurry",
            "seed": 99,
            "num_images": 2,
            "aspect_ratio": "16:9",
            "num_inference_steps": 28,
        })
    );
}

#[test]
fn routes_images_by_role() {
    let mut request = request("fal-ai/some-try-on");
    request.kind = JobKind::VirtualTryOn;
    request.inputs = vec![
        image(InputRole::Garment, b"g"),
        image(InputRole::Person, b"p"),
    ];
    let input = super::client::build_input(&request).unwrap();
    assert_eq!(input["human_image_url"], "data:image/png;base64,cA==");
    assert_eq!(input["garment_image_url"], "data:image/png;base64,Zw==");
    assert!(!input.contains_key("image_url"));

    request.kind = JobKind::Inpaint;
    request.inputs = vec![
        image(InputRole::Mask, b"m"),
        image(InputRole::Product, b"p"),
    ];
    let input = super::client::build_input(&request).unwrap();
    assert_eq!(input["image_url"], "data:image/png;base64,cA==");
    assert_eq!(input["mask_url"], "data:image/png;base64,bQ==");
    assert!(!input.contains_key("image_urls"));

    request.kind = JobKind::BatchEdit;
    request.inputs = vec![
        image(InputRole::Reference, b"r"),
        image(InputRole::Product, b"p"),
    ];
    let input = super::client::build_input(&request).unwrap();
    assert_eq!(input["image_url"], "data:image/png;base64,cA==");
    assert_eq!(
        input["image_urls"],
        json!(["data:image/png;base64,cg==", "data:image/png;base64,cA=="])
    );

    request.kind = JobKind::Upscale;
    request.inputs.clear();
    assert!(matches!(
        super::client::build_input(&request),
        Err(ProviderError::Unsupported { .. })
    ));
}

#[test]
fn debug_output_hides_secrets_and_content() {
    let mut request = request("test/ok");
    request.prompt = "SECRET-PROMPT-TEXT".into();
    request.inputs = vec![image(InputRole::Product, b"SECRET-BYTES")];
    let text = format!("{request:?}");
    assert!(!text.contains("SECRET"), "{text}");
    assert!(text.contains("prompt_len: 18"), "{text}");
    assert!(text.contains("len: 12"), "{text}");

    let config = FalConfig {
        key: "SECRET-KEY".into(),
        ..FalConfig::default()
    };
    let text = format!("{config:?}");
    assert!(!text.contains("SECRET"), "{text}");
}

fn logged_provider(fake: &FakeFal, log: &std::sync::Arc<MemoryLog>) -> FalProvider {
    provider(fake).with_submission_log(log.clone())
}

/// A worker dies while fal renders: the job's next attempt, in another
/// process, finds the recorded submission and resumes it. fal sees one
/// submission; the result is the same request's.
#[tokio::test]
async fn a_later_attempt_of_the_job_resumes_the_recorded_request() {
    let fake = FakeFal::start().await.unwrap();
    let log = std::sync::Arc::new(MemoryLog::default());
    let first = generate_with_retries(
        &logged_provider(&fake, &log),
        &request("test/ok"),
        &policy(),
    )
    .await
    .unwrap();
    let recorded = log.0.lock().unwrap().len();
    assert_eq!(recorded, 1, "the submission is recorded under the job id");
    // The redelivered job, on a fresh provider (another worker).
    let again = generate_with_retries(
        &logged_provider(&fake, &log),
        &request("test/ok"),
        &policy(),
    )
    .await
    .unwrap();
    assert_eq!(fake.submissions_for("test/ok"), 1, "submitted twice");
    assert_eq!(again.request_id, first.request_id);
    assert_eq!(
        again.artifacts[0].bytes.resident(),
        first.artifacts[0].bytes.resident()
    );

    // Another job is not confused with it.
    let mut other = request("test/ok");
    other.job_id = "job-8".into();
    generate_with_retries(&logged_provider(&fake, &log), &other, &policy())
        .await
        .unwrap();
    assert_eq!(fake.submissions_for("test/ok"), 2);
}

/// A recorded request fal no longer knows (expired, or a record from
/// another account) is not an error for the job: it is submitted anew.
#[tokio::test]
async fn an_unknown_recorded_request_is_submitted_again() {
    let fake = FakeFal::start().await.unwrap();
    let log = std::sync::Arc::new(MemoryLog::default());
    let base = fake.base_url.as_str().trim_end_matches('/');
    let stale = json!({
        "request_id": "gone-1",
        "status_url": format!("{base}/test/ok/requests/gone-1/status"),
        "response_url": format!("{base}/test/ok/requests/gone-1"),
    });
    log.plant("fal", &stale);
    let output = generate_with_retries(
        &logged_provider(&fake, &log),
        &request("test/ok"),
        &policy(),
    )
    .await
    .unwrap();
    assert_eq!(fake.submissions_for("test/ok"), 1);
    assert_ne!(output.request_id.as_deref(), Some("gone-1"));
}

/// A record that points anywhere but fal's queue origin is ignored: a
/// tampered row must not send the key elsewhere. The other origin is a
/// listener of ours (same host, another port), which must see nothing.
#[tokio::test]
async fn a_recorded_request_off_the_queue_origin_is_ignored() {
    let fake = FakeFal::start().await.unwrap();
    let (elsewhere, reached) = hostile_table::listener_elsewhere().await;
    let log = std::sync::Arc::new(MemoryLog::default());
    let stale = json!({
        "request_id": "evil",
        "status_url": format!("{elsewhere}/test/ok/requests/evil/status"),
        "response_url": format!("{elsewhere}/test/ok/requests/evil"),
    });
    log.plant("fal", &stale);
    let output = hostile_table::answered_without_reaching(
        &reached,
        generate_with_retries(
            &logged_provider(&fake, &log),
            &request("test/ok"),
            &policy(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(fake.submissions_for("test/ok"), 1);
    assert_eq!(output.attempts, 1);
    assert_ne!(output.request_id.as_deref(), Some("evil"));
}

/// An attempt that ends in an error forgets its request, so a retry (or
/// the job's next delivery) submits anew instead of re-reading a failure.
#[tokio::test]
async fn a_failed_attempt_forgets_its_request() {
    let fake = FakeFal::start().await.unwrap();
    let log = std::sync::Arc::new(MemoryLog::default());
    let failed = generate_with_retries(
        &logged_provider(&fake, &log),
        &request("test/nsfw"),
        &policy(),
    )
    .await;
    assert!(failed.is_err());
    assert!(log.0.lock().unwrap().is_empty());
}

// What a job's parameters may not touch, and what a hostile fal may not do
// to us (issue 15); the checks are `hostile_table`'s, the data fal's.

#[tokio::test]
async fn owned_parameters_are_refused_before_any_request() {
    let fake = FakeFal::start().await.unwrap();
    let provider = provider(&fake);
    hostile_table::owned_keys_are_refused(
        &provider,
        Some(&provider),
        &policy(),
        &request("test/ok"),
        &super::client::OWNED,
        &[],
        || fake.submissions(),
    )
    .await;
    assert_eq!(fake.submissions(), 0);
}

#[tokio::test]
async fn oversized_or_deep_parameters_are_refused() {
    let fake = FakeFal::start().await.unwrap();
    let mut request = request("test/ok");
    request
        .parameters
        .insert("style".into(), json!("x".repeat(20_000)));
    let failed = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.error.code(), "invalid_input");
    let mut request = self::request("test/ok");
    request
        .parameters
        .insert("loras".into(), json!([[[[[[[[[{"path": "a"}]]]]]]]]]));
    let failed = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.error.code(), "invalid_input");
    assert_eq!(fake.submissions(), 0);
}

#[tokio::test]
async fn harmless_parameters_reach_the_model() {
    let fake = FakeFal::start().await.unwrap();
    let input = hostile_table::harmless_parameters_pass(
        &provider(&fake),
        &policy(),
        request("test/ok"),
        json!({"num_inference_steps": 28, "loras": [{"path": "a/b", "scale": 0.8}]}),
        || Value::Object(fake.last_input().unwrap()),
    )
    .await;
    assert_eq!(input["num_inference_steps"], 28);
    assert_eq!(input["loras"], json!([{"path": "a/b", "scale": 0.8}]));
    assert_eq!(input["num_images"], 1);
    assert!(input.get("enable_safety_checker").is_none());
}

#[tokio::test]
async fn more_outputs_than_asked_are_dropped_unread() {
    let fake = FakeFal::start().await.unwrap();
    hostile_table::extra_outputs_are_dropped(
        &provider(&fake),
        &policy(),
        &request("test/extra"),
        &[1, 2],
        Some(&|| fake.downloads()),
    )
    .await;
}

#[tokio::test]
async fn an_endless_result_body_is_cut_off_at_its_limit() {
    let fake = FakeFal::start().await.unwrap();
    let provider = FalProvider::new(
        FalConfig {
            max_output_bytes: hostile_table::SMALL_OUTPUT_LIMIT,
            ..config(&fake)
        },
        client(),
    );
    let expected = hostile_table::answer_too_large("result");
    let err = hostile_table::fails_with(&provider, &request("test/endless"), &expected).await;
    assert!(matches!(err, ProviderError::Malformed { .. }), "{err:?}");
}

#[tokio::test]
async fn an_endless_output_file_is_cut_off_at_the_output_limit() {
    let fake = FakeFal::start().await.unwrap();
    let expected = hostile_table::output_too_large(10_485_760);
    hostile_table::fails_with(&provider(&fake), &request("test/endless-file"), &expected).await;
}

#[tokio::test]
async fn error_messages_never_echo_the_key_or_the_prompt() {
    let fake = FakeFal::start().await.unwrap();
    let message = hostile_table::sanitised_error(
        &provider(&fake),
        &policy(),
        &request("test/echo"),
        &["test-key-0123", "red sneaker"],
    )
    .await;
    assert!(
        message.starts_with("provider rejected the request: submit answered HTTP 422"),
        "{message}"
    );
}

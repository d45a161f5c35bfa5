//! [`OpenAiProvider`] through [`generate_with_retries`] against the fake
//! OpenAI images server over real loopback HTTP: one test per fake
//! behaviour, plus the request shapes (JSON and multipart) and the
//! redaction rules.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::fake::{FakeOpenAi, Faults};
use crate::fault_table;
use crate::hostile_table;
use crate::{
    generate_with_retries, GenerationRequest, InputImage, InputRole, JobKind, OpenAiConfig,
    OpenAiProvider, Provider, ProviderError, RetryPolicy,
};

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const KEY: &str = "sk-test-key-0123";

fn client() -> reqwest::Client {
    // reqwest is built without a crypto provider; the binary installs ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn config(fake: &FakeOpenAi) -> OpenAiConfig {
    OpenAiConfig {
        base_url: fake.base_url.clone(),
        api_key: KEY.into(),
        organization: None,
        request_timeout: Duration::from_secs(5),
        max_output_bytes: 1024 * 1024,
    }
}

fn provider(fake: &FakeOpenAi) -> OpenAiProvider {
    OpenAiProvider::new(config(fake), client())
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

/// An inpainting request: a product photo and its mask.
fn inpaint(model: &str) -> GenerationRequest {
    let mut request = request(model);
    request.kind = JobKind::Inpaint;
    request.prompt = "remove the logo".into();
    request.inputs = vec![
        image(InputRole::Mask, b"MASK-BYTES"),
        image(InputRole::Product, b"PRODUCT-BYTES"),
    ];
    request
}

fn class(err: &ProviderError) -> String {
    format!("{err:?}")
        .split([' ', '{'])
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn generations_return_decoded_pngs() {
    let fake = FakeOpenAi::start().await.unwrap();
    let provider = OpenAiProvider::new(
        OpenAiConfig {
            organization: Some("org-test".into()),
            ..config(&fake)
        },
        client(),
    );
    let mut request = request("test/ok");
    request.count = 2;
    let output = generate_with_retries(&provider, &request, &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 1);
    assert!(output
        .request_id
        .as_deref()
        .is_some_and(|id| id.starts_with("req_fake")));
    assert_eq!(output.artifacts.len(), 2);
    for artifact in &output.artifacts {
        assert_eq!(artifact.content_type, "image/png");
        assert!(artifact
            .bytes
            .resident()
            .unwrap()
            .starts_with(PNG_SIGNATURE));
    }
    assert_ne!(
        output.artifacts[0].bytes.resident(),
        output.artifacts[1].bytes.resident()
    );
    let seen = fake.last_call().unwrap();
    assert_eq!(seen.endpoint, "generations");
    assert_eq!(seen.authorization, format!("Bearer {KEY}"));
    assert_eq!(seen.organization.as_deref(), Some("org-test"));
    let fields: Vec<(&str, &str)> = seen
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("model", "test/ok"),
            ("n", "2"),
            ("prompt", "a red sneaker on marble"),
            ("response_format", "b64_json"),
        ]
    );
    assert_eq!(fake.calls_for("test/ok"), 1);
}

#[tokio::test]
async fn sizes_and_parameters_shape_the_generation() {
    let fake = FakeOpenAi::start().await.unwrap();
    let mut request = request("gpt-image-1");
    request.aspect_ratio = "16:9".into();
    generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    let seen = fake.last_call().unwrap();
    assert_eq!(seen.fields["size"], "1536x1024");
    assert!(
        !seen.fields.contains_key("response_format"),
        "gpt-image models refuse response_format"
    );

    let mut request = self::request("dall-e-2");
    request.aspect_ratio = "9:16".into();
    request.parameters.insert("size".into(), json!("512x512"));
    request.parameters.insert("quality".into(), json!("hd"));
    generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    let seen = fake.last_call().unwrap();
    assert_eq!(seen.fields["size"], "512x512");
    assert_eq!(seen.fields["quality"], "hd");
    assert_eq!(seen.fields["response_format"], "b64_json");

    // A null removes a field built here (not one the worker owns).
    request
        .parameters
        .insert("size".into(), serde_json::Value::Null);
    generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert!(!fake.last_call().unwrap().fields.contains_key("size"));
}

#[tokio::test]
async fn inpainting_sends_image_mask_and_prompt_as_multipart() {
    let fake = FakeOpenAi::start().await.unwrap();
    let mut request = inpaint("test/ok");
    request.aspect_ratio = "1:1".into();
    request
        .parameters
        .insert("input_fidelity".into(), json!("high"));
    request.count = 2;
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_eq!(output.artifacts.len(), 2);
    assert_eq!(fake.last_edit_had_mask(), Some(true));
    let seen = fake.last_call().unwrap();
    assert_eq!(seen.endpoint, "edits");
    assert_eq!(seen.authorization, format!("Bearer {KEY}"));
    assert_eq!(seen.fields["prompt"], "remove the logo");
    assert_eq!(seen.fields["model"], "test/ok");
    assert_eq!(seen.fields["n"], "2");
    assert_eq!(seen.fields["size"], "1024x1024");
    assert_eq!(seen.fields["response_format"], "b64_json");
    assert_eq!(seen.fields["input_fidelity"], "high");
    assert!(!seen.fields.contains_key("image"));
    let image = &seen.files["image"];
    assert_eq!(image.bytes, b"PRODUCT-BYTES");
    assert_eq!(image.content_type, "image/png");
    assert_eq!(image.filename, "image.png");
    let mask = &seen.files["mask"];
    assert_eq!(mask.bytes, b"MASK-BYTES");
    assert_eq!(mask.filename, "mask.png");
}

#[tokio::test]
async fn inpainting_without_a_mask_is_unsupported() {
    let fake = FakeOpenAi::start().await.unwrap();
    let mut request = inpaint("test/ok");
    request.inputs.retain(|input| input.role != InputRole::Mask);
    let failed = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(class(&failed.error), "Unsupported");
    assert_eq!(
        failed.error.to_string(),
        "a Inpaint job needs a mask image, and the request has none"
    );
    assert_eq!(fake.calls(), 0);
}

#[tokio::test]
async fn product_photos_with_an_input_are_edits_without_a_mask() {
    let fake = FakeOpenAi::start().await.unwrap();
    let mut request = request("test/ok");
    request.inputs = vec![image(InputRole::Reference, b"REFERENCE")];
    generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_eq!(fake.last_edit_had_mask(), Some(false));
    assert_eq!(fake.last_call().unwrap().files["image"].bytes, b"REFERENCE");

    request.kind = JobKind::BatchEdit;
    generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_eq!(fake.last_call().unwrap().endpoint, "edits");
    assert_eq!(fake.calls(), 2);
}

#[tokio::test]
async fn other_kinds_and_missing_inputs_are_unsupported() {
    let fake = FakeOpenAi::start().await.unwrap();
    for kind in [
        JobKind::BackgroundRemoval,
        JobKind::Upscale,
        JobKind::VirtualTryOn,
        JobKind::ImageToVideo,
        JobKind::BatchEdit,
    ] {
        let mut request = request("test/ok");
        request.kind = kind;
        let failed = generate_with_retries(&provider(&fake), &request, &policy())
            .await
            .unwrap_err();
        assert_eq!(failed.attempts, 1, "{kind:?}");
        assert_eq!(failed.error.code(), "invalid_input", "{kind:?}");
    }
    assert_eq!(fake.calls(), 0);
}

#[tokio::test]
async fn policy_refusals_are_rejections() {
    let fake = FakeOpenAi::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &inpaint("test/policy"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(failed.error.code(), "provider_rejected");
    let message = failed.error.to_string();
    assert!(
        message.starts_with(
            "provider rejected the request: edits answered HTTP 400 (content_policy_violation): Your request was rejected"
        ),
        "{message}"
    );
    assert_eq!(fake.calls_for("test/policy"), 1);
}

#[tokio::test]
async fn rate_limits_carry_retry_after_ms_and_are_retried() {
    let fake = FakeOpenAi::start().await.unwrap();
    let err = provider(&fake)
        .generate(&request("test/rate"))
        .await
        .unwrap_err();
    assert_eq!(class(&err), "RateLimited");
    assert_eq!(err.retry_after(), Some(Duration::from_millis(200)));

    let fake = FakeOpenAi::start().await.unwrap();
    let policy = RetryPolicy {
        max_delay: Duration::from_secs(1),
        ..policy()
    };
    let start = Instant::now();
    let output = generate_with_retries(&provider(&fake), &request("test/rate"), &policy)
        .await
        .unwrap();
    assert_eq!(output.attempts, 2);
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(fake.calls_for("test/rate"), 2);
}

#[tokio::test]
async fn an_exhausted_quota_is_unauthorized_not_retried() {
    let fake = FakeOpenAi::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("test/quota"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(class(&failed.error), "Unauthorized");
    assert!(!failed.error.is_retryable());
    assert!(
        failed.error.to_string().contains("(insufficient_quota)"),
        "{failed}"
    );
    assert_eq!(fake.calls_for("test/quota"), 1);
}

#[tokio::test]
async fn server_errors_are_retried_up_to_max_attempts() {
    let fake = FakeOpenAi::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("test/down"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 4);
    assert_eq!(class(&failed.error), "Unavailable");
    assert_eq!(fake.calls_for("test/down"), 4);
}

#[tokio::test]
async fn slow_answers_time_out_as_unavailable_or_hit_the_deadline() {
    let fake = FakeOpenAi::start().await.unwrap();
    let provider = OpenAiProvider::new(
        OpenAiConfig {
            request_timeout: Duration::from_millis(100),
            ..config(&fake)
        },
        client(),
    );
    let policy = RetryPolicy {
        max_attempts: 2,
        ..policy()
    };
    let failed = generate_with_retries(&provider, &request("test/slow"), &policy)
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 2);
    assert_eq!(class(&failed.error), "Unavailable");
    let message = failed.error.to_string();
    assert!(
        message.starts_with("provider unavailable: request timed out"),
        "{message}"
    );
    assert!(!message.contains("127.0.0.1"), "URL leaked into {message}");
    assert_eq!(fake.calls_for("test/slow"), 2);

    let mut request = request("test/slow");
    let start = Instant::now();
    request.deadline = Some(start + Duration::from_millis(150));
    let failed = generate_with_retries(&self::provider(&fake), &request, &policy)
        .await
        .unwrap_err();
    assert!(
        matches!(failed.error, ProviderError::DeadlineExceeded),
        "{failed}"
    );
    assert_eq!(failed.attempts, 1);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn url_outputs_are_downloaded_without_the_key() {
    let fake = FakeOpenAi::start().await.unwrap();
    let mut request = request("test/url");
    request.count = 2;
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_eq!(output.artifacts.len(), 2);
    assert_eq!(output.artifacts[0].content_type, "image/png");
    assert!(output.artifacts[0]
        .bytes
        .resident()
        .unwrap()
        .starts_with(PNG_SIGNATURE));
    assert_eq!(fake.downloads(), 2);
    assert!(!fake.key_reached_file_host());
}

#[tokio::test]
async fn malformed_answers_are_retried_once() {
    let fake = FakeOpenAi::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("test/malformed"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 2);
    assert_eq!(class(&failed.error), "Malformed");
    assert!(
        failed
            .error
            .to_string()
            .starts_with("provider answered with a malformed body: generations answer is not the expected images JSON: truncated (line 1"),
        "{failed}"
    );
    assert_eq!(fake.calls_for("test/malformed"), 2);
}

#[tokio::test]
async fn a_missing_key_is_unauthorized() {
    let fake = FakeOpenAi::start().await.unwrap();
    let provider = OpenAiProvider::new(
        OpenAiConfig {
            api_key: String::new(),
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
        "provider credentials were refused: generations answered HTTP 401 (invalid_api_key): Incorrect API key provided."
    );
    assert_eq!(fake.unauthorized(), 1);
}

#[tokio::test]
async fn unfit_key_or_organization_fail_without_a_call() {
    let fake = FakeOpenAi::start().await.unwrap();
    for config in [
        OpenAiConfig {
            api_key: "sk-bad\nkey".into(),
            ..config(&fake)
        },
        OpenAiConfig {
            organization: Some("org\r\nx".into()),
            ..config(&fake)
        },
    ] {
        let provider = OpenAiProvider::new(config, client());
        let failed = generate_with_retries(&provider, &request("test/ok"), &policy())
            .await
            .unwrap_err();
        assert_eq!(class(&failed.error), "Unauthorized");
        assert!(!failed.error.to_string().contains("sk-bad"), "{failed}");
    }
    assert_eq!(fake.calls() + fake.unauthorized(), 0);
}

#[tokio::test]
async fn unknown_models_are_rejected() {
    let fake = FakeOpenAi::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("test/nope"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(class(&failed.error), "Rejected");
    assert!(
        failed.error.to_string().contains("(model_not_found)"),
        "{failed}"
    );
}

#[tokio::test]
async fn outputs_over_the_size_cap_are_refused() {
    let fake = FakeOpenAi::start().await.unwrap();
    let provider = OpenAiProvider::new(
        OpenAiConfig {
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
fn plans_print_no_prompt_or_image_bytes() {
    let call = super::client::plan(&inpaint("test/ok")).unwrap();
    let text = format!("{call:?}");
    assert!(!text.contains("remove the logo"), "{text}");
    assert!(!text.contains("PRODUCT"), "{text}");
    assert!(text.contains("Edits"), "{text}");

    let call = super::client::plan(&request("test/ok")).unwrap();
    let text = format!("{call:?}");
    assert!(!text.contains("sneaker"), "{text}");
    assert!(text.contains("Generations"), "{text}");
}

/// The fault table's submit rows (this API has no separate reads): 30 % of
/// calls rate-limited, every job still succeeds with one accepted call, the
/// breaker never hears of the rate limits, and the bucket slows down.
#[tokio::test]
async fn fault_table_rate_limits_cost_no_job_and_never_open_the_breaker() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.set_faults(Faults {
        submit_rate_limited: 0.3,
        retry_after_secs: 0,
        ..Faults::default()
    });
    let (guarded, ended) = fault_table::all_succeed(provider(&fake), &request("test/ok")).await;
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, fault_table::JOBS as u64);
    assert!((7..=9).contains(&counts.submits_refused), "{counts:?}");
    assert_eq!(ended.iter().map(|job| job.deferrals).sum::<u32>(), 0);
    assert!(guarded.open_models().is_empty());
    assert_eq!(guarded.snapshot("test/ok").consecutive_failures, 0);
    assert!(guarded.rate_limit().is_some(), "the bucket was not slowed");
}

/// 30 % of calls answered 503: every job still succeeds, one accepted call
/// each (deferred, not failed, should the breaker open).
#[tokio::test]
async fn fault_table_unavailable_calls_cost_no_job() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.set_faults(Faults {
        submit_unavailable: 0.3,
        ..Faults::default()
    });
    fault_table::all_succeed(provider(&fake), &request("test/ok")).await;
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, fault_table::JOBS as u64);
    assert!(counts.submits_refused >= 6, "{counts:?}");
}

// What a job's parameters may not touch, and what a hostile images API may
// not do to us (issue 15); the checks are `hostile_table`'s, the data
// OpenAI's.

#[tokio::test]
async fn owned_parameters_are_refused_before_any_request() {
    let fake = FakeOpenAi::start().await.unwrap();
    let provider = provider(&fake);
    for base in [request("test/ok"), inpaint("test/ok")] {
        hostile_table::owned_keys_are_refused(
            &provider,
            None,
            &policy(),
            &base,
            &super::client::OWNED,
            &[],
            || fake.calls(),
        )
        .await;
    }
    // A multipart spelling of a file part is the file part.
    let mut request = inpaint("test/ok");
    request.parameters.insert("image[]".into(), json!("x"));
    let failed = generate_with_retries(&provider, &request, &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.error.code(), "invalid_input");
    assert_eq!(fake.calls(), 0);
}

#[tokio::test]
async fn harmless_parameters_reach_the_model() {
    let fake = FakeOpenAi::start().await.unwrap();
    let seen = hostile_table::harmless_parameters_pass(
        &provider(&fake),
        &policy(),
        request("test/ok"),
        json!({"quality": "high", "background": "opaque"}),
        || json!(fake.last_call().unwrap().fields),
    )
    .await;
    assert_eq!(seen["quality"], "high");
    assert_eq!(seen["background"], "opaque");
    assert_eq!(seen["n"], "1");
    assert!(seen.get("moderation").is_none());
}

#[tokio::test]
async fn more_outputs_than_asked_are_dropped_undecoded() {
    let fake = FakeOpenAi::start().await.unwrap();
    hostile_table::extra_outputs_are_dropped(
        &provider(&fake),
        &policy(),
        &request("test/extra"),
        &[1, 2],
        None,
    )
    .await;
}

#[tokio::test]
async fn an_endless_answer_is_cut_off_at_its_limit() {
    let fake = FakeOpenAi::start().await.unwrap();
    // The configured `max_output_bytes` is the tables' 1 MiB.
    assert_eq!(
        config(&fake).max_output_bytes,
        hostile_table::SMALL_OUTPUT_LIMIT
    );
    let expected = hostile_table::answer_too_large("answer");
    hostile_table::fails_with(&provider(&fake), &request("test/endless"), &expected).await;
}

#[tokio::test]
async fn an_endless_output_file_is_cut_off_at_the_output_limit() {
    let fake = FakeOpenAi::start().await.unwrap();
    let expected = hostile_table::output_too_large(1_048_576);
    hostile_table::fails_with(&provider(&fake), &request("test/endless-url"), &expected).await;
}

#[tokio::test]
async fn error_messages_never_echo_the_key_or_the_prompt() {
    let fake = FakeOpenAi::start().await.unwrap();
    let message =
        hostile_table::sanitised_error(&provider(&fake), &policy(), &request("test/echo"), &[KEY])
            .await;
    assert_eq!(
        message,
        "provider rejected the request: generations answered HTTP 400 ([redacted]): \
         Bearer [redacted] may not ask for '[prompt]'"
    );
}

/// A call OpenAI rendered (and bills) whose answer was lost, for both
/// answer forms (`b64_json` inline, `url`): the attempt fails
/// `provider_unavailable` and the retry renders again. The images API
/// documents no idempotency key, so the bound is exactly one more render
/// per lost answer.
#[tokio::test]
async fn fault_table_lost_answers_cost_exactly_one_more_render_each() {
    for model in ["test/ok", "test/url"] {
        let fake = FakeOpenAi::start().await.unwrap();
        let set_lost = |fraction| {
            fake.set_faults(Faults {
                submit_answer_lost: fraction,
                ..Faults::default()
            })
        };
        fault_table::lost_answers_cost_one_render_each(
            provider(&fake),
            &request(model),
            || fake.fault_counts(),
            set_lost,
        )
        .await;
        assert_eq!(fake.calls(), fake.fault_counts().renders_started, "{model}");
    }
}

/// `url` answers whose download is reset or cut short (30 % each): the
/// same URL is fetched again, every file kept is whole, nothing rendered
/// twice.
#[tokio::test]
async fn fault_table_broken_downloads_are_fetched_again_never_rendered_again() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.set_faults(Faults {
        download_reset: 0.3,
        download_truncated: 0.3,
        ..Faults::default()
    });
    fault_table::broken_downloads_are_fetched_again(provider(&fake), &request("test/url"), || {
        fake.fault_counts()
    })
    .await;
    assert_eq!(fake.calls(), fault_table::JOBS as u64);
}

/// A `url` answer whose file has expired (403): the attempt fails
/// `provider_unavailable` at once, and the retry renders anew.
#[tokio::test]
async fn fault_table_an_expired_url_fails_the_attempt_and_the_retry_renders_again() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.set_faults(Faults {
        download_expired: 0.5,
        ..Faults::default()
    });
    fault_table::an_expired_download_fails_the_attempt(
        provider(&fake),
        &request("test/url"),
        || fake.fault_counts(),
    )
    .await;
    assert_eq!(fake.calls(), 5);
}

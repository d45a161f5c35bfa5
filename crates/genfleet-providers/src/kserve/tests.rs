//! [`KServeProvider`] through [`generate_with_retries`] against the fake
//! KServe server over real loopback HTTP: one test per fake behaviour, the
//! tensors the fake received, readiness, metadata and contract checks, and
//! the answer parser and status classes on their own.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::client::{parse_answer, status_error, tensor_names};
use super::fake::{FakeKServe, Faults};
use super::tensor::encode_bytes_elements;
use crate::fault_table;
use crate::hostile_table;
use crate::{
    generate_with_retries, Contract, GenerationRequest, InputImage, InputRole, JobKind,
    KServeConfig, KServeProvider, Provider, ProviderError, RetryPolicy,
};

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const PRODUCT: &[u8] = b"\x89PNG\r\n\x1a\nproduct-bytes";
const PROMPT: &str = "a red sneaker on marble";

fn client() -> reqwest::Client {
    // reqwest is built without a crypto provider; the binary installs ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn config(fake: &FakeKServe) -> KServeConfig {
    KServeConfig {
        base_url: fake.base_url.clone(),
        request_timeout: Duration::from_secs(5),
        max_output_bytes: 10 * 1024 * 1024,
        ..KServeConfig::default()
    }
}

fn provider(fake: &FakeKServe) -> KServeProvider {
    KServeProvider::new(config(fake), client())
}

fn image(role: InputRole, bytes: &'static [u8]) -> InputImage {
    InputImage {
        role,
        content_type: "image/png".into(),
        bytes: Bytes::from_static(bytes).into(),
    }
}

fn request(model: &str) -> GenerationRequest {
    GenerationRequest {
        job_id: "job-7".into(),
        kind: JobKind::BackgroundRemoval,
        model: model.into(),
        prompt: PROMPT.into(),
        negative_prompt: String::new(),
        seed: None,
        count: 1,
        aspect_ratio: String::new(),
        parameters: serde_json::Map::new(),
        inputs: vec![image(InputRole::Product, PRODUCT)],
        deadline: None,
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    }
}

fn kind_of(err: &ProviderError) -> String {
    format!("{err:?}")
        .split([' ', '{'])
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn matting_returns_a_png_sent_and_answered_in_binary_form() {
    let fake = FakeKServe::start().await.unwrap();
    let output = generate_with_retries(&provider(&fake), &request("matting"), &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 1);
    assert_eq!(output.request_id.as_deref(), Some("job-7"));
    assert_eq!(output.artifacts.len(), 1);
    let artifact = &output.artifacts[0];
    assert_eq!(artifact.content_type, "image/png");
    assert!(artifact
        .bytes
        .resident()
        .unwrap()
        .starts_with(PNG_SIGNATURE));

    assert_eq!(fake.infer_calls_for("matting"), 1);
    let seen = fake.last_received().unwrap();
    assert!(seen.binary);
    assert_eq!(seen.id.as_deref(), Some("job-7"));
    assert_eq!(seen.outputs, vec![("OUTPUT_IMAGE".to_owned(), true)]);
    let names: Vec<&str> = seen.inputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["INPUT_IMAGE", "PROMPT"]);
    let image = seen.input("INPUT_IMAGE").unwrap();
    assert_eq!(
        (image.datatype.as_str(), &image.shape[..]),
        ("BYTES", &[1][..])
    );
    assert_eq!(image.byte_size, 4 + PRODUCT.len());
    assert_eq!(&image.elements[0][..], PRODUCT);
    // No deadline, no priority, no knobs: no parameters at all.
    assert!(seen.parameters.is_empty(), "{:?}", seen.parameters);
}

#[tokio::test]
async fn the_prompt_travels_as_a_utf8_bytes_tensor() {
    let fake = FakeKServe::start().await.unwrap();
    let mut request = request("matting");
    request.prompt = "une chaussure rouge, 靴".into();
    generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    let seen = fake.last_received().unwrap();
    let prompt = seen.input("PROMPT").unwrap();
    assert_eq!(prompt.datatype, "BYTES");
    assert_eq!(prompt.shape, [1]);
    assert_eq!(prompt.elements, [Bytes::from(request.prompt.clone())]);

    // An empty prompt is not sent at all.
    request.prompt.clear();
    generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert!(fake.last_received().unwrap().input("PROMPT").is_none());
}

#[tokio::test]
async fn json_mode_sends_base64_images_and_reads_base64_outputs() {
    let fake = FakeKServe::start().await.unwrap();
    let provider = KServeProvider::new(
        KServeConfig {
            binary: false,
            ..config(&fake)
        },
        client(),
    );
    let output = generate_with_retries(&provider, &request("matting"), &policy())
        .await
        .unwrap();
    assert!(output.artifacts[0]
        .bytes
        .resident()
        .unwrap()
        .starts_with(PNG_SIGNATURE));
    let seen = fake.last_received().unwrap();
    assert!(!seen.binary);
    assert_eq!(seen.outputs, vec![("OUTPUT_IMAGE".to_owned(), false)]);
    // Triton takes a JSON string verbatim: the image arrives as base64 text
    // for the model to decode, the prompt as itself.
    let image = seen.input("INPUT_IMAGE").unwrap();
    assert_eq!(
        image.elements,
        [Bytes::from(crate::http::encode_base64(PRODUCT))]
    );
    assert_eq!(
        seen.input("PROMPT").unwrap().elements,
        [Bytes::from_static(PROMPT.as_bytes())]
    );
}

#[tokio::test]
async fn json_only_answers_are_read_even_when_binary_was_asked_for() {
    let fake = FakeKServe::start().await.unwrap();
    let mut request = request("json-only");
    request.count = 3;
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 1);
    assert_eq!(output.artifacts.len(), 3);
    assert!(output
        .artifacts
        .iter()
        .all(|a| a.content_type == "image/png"));
    assert_ne!(
        output.artifacts[0].bytes.resident(),
        output.artifacts[1].bytes.resident()
    );
    assert!(fake.last_received().unwrap().binary);
}

#[tokio::test]
async fn several_images_in_a_1_by_n_binary_answer_become_artifacts() {
    let fake = FakeKServe::start().await.unwrap();
    let mut request = request("matting");
    request.count = 2;
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    assert_eq!(output.artifacts.len(), 2);
    assert_ne!(
        output.artifacts[0].bytes.resident(),
        output.artifacts[1].bytes.resident()
    );
}

#[tokio::test]
async fn upscale_passes_its_scale_parameter() {
    let fake = FakeKServe::start().await.unwrap();
    let mut request = request("upscale");
    request.kind = JobKind::Upscale;
    request.parameters.insert("scale".into(), json!(4));
    let output = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    let png = output.artifacts[0].bytes.resident().unwrap();
    // IHDR width: the fake's 32 px times 4.
    assert_eq!(&png[16..20], &128u32.to_be_bytes());
    assert_eq!(
        fake.last_received().unwrap().parameters.get("scale"),
        Some(&json!(4))
    );
}

#[tokio::test]
async fn upscale_without_a_valid_scale_is_rejected_once() {
    let fake = FakeKServe::start().await.unwrap();
    let mut request = request("upscale");
    request.kind = JobKind::Upscale;
    request.parameters.insert("scale".into(), json!(3));
    let failed = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(
        failed.error.to_string(),
        "provider rejected the request: infer answered HTTP 400: parameter 'scale' of model 'upscale' must be 2 or 4, got 3"
    );
    assert_eq!(failed.error.code(), "provider_rejected");
    assert_eq!(fake.infer_calls_for("upscale"), 1);
}

#[tokio::test]
async fn inpaint_sends_the_mask_and_a_model_missing_it_rejects() {
    let fake = FakeKServe::start().await.unwrap();
    let mut request = request("inpaint");
    request.kind = JobKind::Inpaint;
    request.inputs = vec![
        image(InputRole::Mask, b"mask-bytes"),
        image(InputRole::Product, PRODUCT),
    ];
    generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    let seen = fake.last_received().unwrap();
    assert_eq!(
        &seen.input("INPUT_MASK").unwrap().elements[0][..],
        b"mask-bytes"
    );
    assert_eq!(&seen.input("INPUT_IMAGE").unwrap().elements[0][..], PRODUCT);

    // A background-removal job sent to the inpainting model has no mask:
    // the model's 400 is a rejection, not retried.
    let failed = generate_with_retries(&provider(&fake), &self::request("inpaint"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(&failed.error, ProviderError::Rejected { message } if message.contains("Missing required input(s) [\"INPUT_MASK\"]")),
        "{failed}"
    );
    assert_eq!(fake.infer_calls_for("inpaint"), 2);
}

#[tokio::test]
async fn an_inpaint_job_without_a_mask_fails_before_sending() {
    let fake = FakeKServe::start().await.unwrap();
    let mut request = request("inpaint");
    request.kind = JobKind::Inpaint;
    let failed = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(failed.error.code(), "invalid_input");
    assert_eq!(
        failed.error.to_string(),
        "a Inpaint job needs a mask image, and the request has none"
    );
    assert_eq!(fake.infer_calls(), 0);
}

#[tokio::test]
async fn try_on_sends_the_person_and_the_garment() {
    let fake = FakeKServe::start().await.unwrap();
    let mut request = request("tryon");
    request.kind = JobKind::VirtualTryOn;
    request.inputs = vec![
        image(InputRole::Garment, b"garment"),
        image(InputRole::Person, b"person"),
    ];
    generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    let seen = fake.last_received().unwrap();
    assert_eq!(
        &seen.input("INPUT_IMAGE").unwrap().elements[0][..],
        b"person"
    );
    assert_eq!(
        &seen.input("INPUT_GARMENT").unwrap().elements[0][..],
        b"garment"
    );

    request
        .inputs
        .retain(|input| input.role != InputRole::Garment);
    let failed = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.error.code(), "invalid_input");
    assert_eq!(fake.infer_calls_for("tryon"), 1);
}

#[tokio::test]
async fn kinds_without_an_input_image_are_not_served_by_the_gpu_pool() {
    let fake = FakeKServe::start().await.unwrap();
    for kind in [JobKind::ProductPhoto, JobKind::ImageToVideo] {
        let mut request = request("matting");
        request.kind = kind;
        request.inputs.clear();
        let failed = generate_with_retries(&provider(&fake), &request, &policy())
            .await
            .unwrap_err();
        assert!(
            matches!(&failed.error, ProviderError::Unsupported { message } if message.contains("not served by the GPU pool")),
            "{failed}"
        );
    }
    for kind in [
        JobKind::BackgroundRemoval,
        JobKind::Upscale,
        JobKind::BatchEdit,
    ] {
        let mut request = request("matting");
        request.kind = kind;
        request.inputs = vec![image(InputRole::Mask, b"not an image input")];
        let failed = generate_with_retries(&provider(&fake), &request, &policy())
            .await
            .unwrap_err();
        assert_eq!(failed.error.code(), "invalid_input", "{kind:?}");
    }
    assert_eq!(fake.infer_calls(), 0);

    // A product photo with an input image is sent; a Reference counts.
    let mut request = request("matting");
    request.kind = JobKind::ProductPhoto;
    request.inputs = vec![image(InputRole::Reference, b"reference")];
    generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap();
    let seen = fake.last_received().unwrap();
    assert_eq!(
        &seen.input("INPUT_IMAGE").unwrap().elements[0][..],
        b"reference"
    );
}

#[tokio::test]
async fn busy_is_backpressure_retried_up_to_max_attempts() {
    let fake = FakeKServe::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("busy"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 4);
    assert_eq!(fake.infer_calls_for("busy"), 4);
    assert!(
        matches!(&failed.error, ProviderError::RateLimited { message, retry_after: None }
            if message == "infer answered HTTP 503: Exceeds maximum queue size"),
        "{failed}"
    );
}

#[tokio::test]
async fn slow_answers_time_out_and_are_retried() {
    let fake = FakeKServe::start().await.unwrap();
    let provider = KServeProvider::new(
        KServeConfig {
            request_timeout: Duration::from_millis(150),
            ..config(&fake)
        },
        client(),
    );
    let policy = RetryPolicy {
        max_attempts: 2,
        ..policy()
    };
    let started = Instant::now();
    let failed = generate_with_retries(&provider, &request("slow"), &policy)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(failed.attempts, 2);
    assert_eq!(fake.infer_calls_for("slow"), 2);
    let message = failed.error.to_string();
    assert!(
        message.starts_with("provider unavailable: request timed out"),
        "{message}"
    );
    assert!(!message.contains("127.0.0.1"), "URL leaked into {message}");
}

#[tokio::test]
async fn a_deadline_bounds_the_call_and_is_sent_as_the_triton_timeout() {
    let fake = FakeKServe::start().await.unwrap();
    let mut request = request("slow");
    let started = Instant::now();
    request.deadline = Some(started + Duration::from_millis(200));
    let failed = generate_with_retries(&provider(&fake), &request, &policy())
        .await
        .unwrap_err();
    assert!(
        matches!(failed.error, ProviderError::DeadlineExceeded),
        "{failed}"
    );
    assert_eq!(failed.attempts, 1);
    assert!(started.elapsed() < Duration::from_secs(2));
    let timeout = fake.last_received().unwrap().parameters["timeout"]
        .as_u64()
        .unwrap();
    assert!(
        (100_000..=200_000).contains(&timeout),
        "timeout {timeout} µs"
    );
}

#[tokio::test]
async fn lying_binary_sizes_are_malformed_and_retried_once() {
    let fake = FakeKServe::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("lying"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 2);
    assert_eq!(fake.infer_calls_for("lying"), 2);
    assert!(
        matches!(&failed.error, ProviderError::Malformed { message }
            if message.contains("claims binary_data_size") && message.contains("OUTPUT_IMAGE")),
        "{failed}"
    );
}

#[tokio::test]
async fn a_model_that_is_not_ready_is_unavailable() {
    let fake = FakeKServe::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("not-ready"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 4);
    assert!(
        matches!(&failed.error, ProviderError::Unavailable { message, .. } if message.contains("not ready")),
        "{failed}"
    );
}

#[tokio::test]
async fn an_unknown_model_is_unavailable_so_the_job_can_fail_over() {
    let fake = FakeKServe::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("nope"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 4);
    assert_eq!(fake.infer_calls_for("nope"), 4);
    assert_eq!(
        failed.error.to_string(),
        "provider unavailable: infer answered HTTP 404: Request for unknown model: 'nope' is not found"
    );
}

#[tokio::test]
async fn versioned_model_names_reach_the_version() {
    let fake = FakeKServe::start().await.unwrap();
    generate_with_retries(&provider(&fake), &request("matting/1"), &policy())
        .await
        .unwrap();
    assert_eq!(fake.last_received().unwrap().version.as_deref(), Some("1"));
    let failed = generate_with_retries(&provider(&fake), &request("matting/2"), &policy())
        .await
        .unwrap_err();
    assert_eq!(kind_of(&failed.error), "Unavailable", "{failed}");
}

#[tokio::test]
async fn model_names_that_leave_the_models_path_are_refused_unsent() {
    let fake = FakeKServe::start().await.unwrap();
    for bad in [
        "",
        "a/b/c",
        "../x",
        "matting/..",
        "matting//1",
        "ma tting",
        "m?x=1",
        "m#x",
        "/matting",
    ] {
        let failed = generate_with_retries(&provider(&fake), &request(bad), &policy())
            .await
            .unwrap_err();
        assert!(
            matches!(failed.error, ProviderError::Unsupported { .. }),
            "{bad}: {failed}"
        );
    }
    assert_eq!(fake.infer_calls(), 0);
}

#[tokio::test]
async fn parameters_priority_and_id_are_sent() {
    let fake = FakeKServe::start().await.unwrap();
    let provider = KServeProvider::new(
        KServeConfig {
            priority: Some(2),
            ..config(&fake)
        },
        client(),
    );
    let mut request = request("matting");
    request.parameters.insert("threshold".into(), json!(7));
    generate_with_retries(&provider, &request, &policy())
        .await
        .unwrap();
    let seen = fake.last_received().unwrap();
    assert_eq!(
        Value::Object(seen.parameters),
        json!({"threshold": 7, "priority": 2})
    );
    // The output count travels as `num_images` when over 1.
    request.count = 2;
    generate_with_retries(&provider, &request, &policy())
        .await
        .unwrap();
    assert_eq!(
        Value::Object(fake.last_received().unwrap().parameters),
        json!({"threshold": 7, "priority": 2, "num_images": 2})
    );
    // The priority is the worker's: a job cannot raise its own.
    let calls = fake.infer_calls();
    request.parameters.insert("priority".into(), json!(1));
    let failed = generate_with_retries(&provider, &request, &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.error.code(), "invalid_input");
    assert_eq!(fake.infer_calls(), calls);
}

#[tokio::test]
async fn a_misnamed_output_is_rejected_by_the_model() {
    let fake = FakeKServe::start().await.unwrap();
    let provider = KServeProvider::new(
        KServeConfig {
            output: "OUTPUT".into(),
            ..config(&fake)
        },
        client(),
    );
    let failed = generate_with_retries(&provider, &request("matting"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert_eq!(
        failed.error.to_string(),
        "provider rejected the request: infer answered HTTP 400: unexpected inference output 'OUTPUT' for model 'matting'"
    );
}

#[tokio::test]
async fn an_answer_outside_the_contract_is_malformed() {
    let fake = FakeKServe::start().await.unwrap();
    let failed = generate_with_retries(&provider(&fake), &request("raw"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 2);
    assert_eq!(
        failed.error.to_string(),
        "provider answered with a malformed body: output \"OUTPUT_IMAGE\" has datatype FP32, expected BYTES"
    );
}

#[tokio::test]
async fn outputs_over_the_size_cap_are_refused() {
    let fake = FakeKServe::start().await.unwrap();
    let provider = KServeProvider::new(
        KServeConfig {
            max_output_bytes: 100,
            ..config(&fake)
        },
        client(),
    );
    let failed = generate_with_retries(&provider, &request("matting"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(failed.error, ProviderError::Rejected { .. }),
        "{failed}"
    );
}

#[tokio::test]
async fn the_bearer_is_sent_and_a_refused_one_is_unauthorized() {
    let fake = FakeKServe::start_with_bearer("tok-123").await.unwrap();
    let with = |bearer: Option<&str>| {
        KServeProvider::new(
            KServeConfig {
                bearer: bearer.map(str::to_owned),
                ..config(&fake)
            },
            client(),
        )
    };
    generate_with_retries(&with(Some("tok-123")), &request("matting"), &policy())
        .await
        .unwrap();
    assert!(with(Some("tok-123")).ready("matting").await.unwrap());

    for bearer in [None, Some("wrong")] {
        let failed = generate_with_retries(&with(bearer), &request("matting"), &policy())
            .await
            .unwrap_err();
        assert_eq!(failed.attempts, 1);
        assert!(
            matches!(failed.error, ProviderError::Unauthorized { .. }),
            "{failed}"
        );
        assert!(matches!(
            with(bearer).ready("matting").await,
            Err(ProviderError::Unauthorized { .. })
        ));
    }
    assert_eq!(fake.infer_calls(), 1, "401s are answered before counting");

    // A token unfit for a header fails every call without sending it.
    let failed = generate_with_retries(&with(Some("bad\ntoken")), &request("matting"), &policy())
        .await
        .unwrap_err();
    assert!(
        matches!(failed.error, ProviderError::Unauthorized { .. }),
        "{failed}"
    );
    assert!(!failed.error.to_string().contains("bad"), "{failed}");
}

#[test]
fn debug_output_hides_the_bearer() {
    let config = KServeConfig {
        bearer: Some("SECRET-TOKEN".into()),
        ..KServeConfig::default()
    };
    let provider = KServeProvider::new(config.clone(), client());
    for text in [format!("{config:?}"), format!("{provider:?}")] {
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }
    let text = format!("{:?}", KServeConfig::default());
    assert!(text.contains("bearer: None"), "{text}");
}

#[tokio::test]
async fn readiness_follows_the_server_and_the_model() {
    let fake = FakeKServe::start().await.unwrap();
    let provider = provider(&fake);
    assert!(provider.ready("matting").await.unwrap());
    assert!(provider.ready("matting/1").await.unwrap());
    assert!(!provider.ready("matting/9").await.unwrap());
    assert!(!provider.ready("not-ready").await.unwrap());
    assert!(!provider.ready("nope").await.unwrap());
    assert!(matches!(
        provider.ready("../x").await,
        Err(ProviderError::Unsupported { .. })
    ));
    fake.set_server_ready(false);
    assert!(!provider.ready("matting").await.unwrap());
}

#[tokio::test]
async fn readiness_of_an_unreachable_server_is_an_error() {
    // A port that was free a moment ago, with nothing listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let provider = KServeProvider::new(
        KServeConfig {
            base_url: format!("http://127.0.0.1:{port}/").parse().unwrap(),
            request_timeout: Duration::from_secs(2),
            ..KServeConfig::default()
        },
        client(),
    );
    let err = provider.ready("matting").await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("provider unavailable: request could not connect"),
        "{err}"
    );
    let failed = generate_with_retries(
        &provider,
        &request("matting"),
        &RetryPolicy {
            max_attempts: 2,
            ..policy()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(failed.attempts, 2);
    assert!(!failed.error.to_string().contains("127.0.0.1"), "{failed}");
}

#[tokio::test]
async fn metadata_lists_the_models_tensors() {
    let fake = FakeKServe::start().await.unwrap();
    let metadata = provider(&fake).metadata("inpaint").await.unwrap();
    assert_eq!(metadata.name, "inpaint");
    assert_eq!(metadata.versions, ["1"]);
    let inputs: Vec<(&str, &str, &[i64])> = metadata
        .inputs
        .iter()
        .map(|t| (t.name.as_str(), t.datatype.as_str(), t.shape.as_slice()))
        .collect();
    assert_eq!(
        inputs,
        [
            ("INPUT_IMAGE", "BYTES", &[1][..]),
            ("INPUT_MASK", "BYTES", &[1][..]),
            ("PROMPT", "BYTES", &[1][..])
        ]
    );
    assert_eq!(metadata.outputs[0].name, "OUTPUT_IMAGE");
    let err = provider(&fake).metadata("nope").await.unwrap_err();
    assert_eq!(kind_of(&err), "Unavailable", "{err}");
}

#[tokio::test]
async fn contract_checks_find_what_each_model_takes() {
    let fake = FakeKServe::start().await.unwrap();
    let provider = provider(&fake);
    assert_eq!(
        provider.check_contract("inpaint").await.unwrap(),
        Contract {
            mask: true,
            second_image: false,
            prompt: true,
            other_inputs: vec![],
        }
    );
    let tryon = provider.check_contract("tryon/1").await.unwrap();
    assert!(tryon.second_image && !tryon.mask);

    let err = provider.check_contract("raw").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "provider answered with a malformed body: input \"INPUT_IMAGE\" of model \"raw\" has datatype UINT8, expected BYTES"
    );
    let renamed = KServeProvider::new(
        KServeConfig {
            image_input: "IMAGE".into(),
            ..config(&fake)
        },
        client(),
    );
    let err = renamed.check_contract("matting").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "provider answered with a malformed body: model \"matting\" has no input \"IMAGE\"; found inputs [\"INPUT_IMAGE\", \"PROMPT\"]"
    );
}

#[test]
fn contracts_refuse_batched_inputs_and_report_unknown_ones() {
    let config = KServeConfig::default();
    let metadata = |inputs: Value, outputs: Value| -> crate::ModelMetadata {
        serde_json::from_value(json!({"name": "m", "inputs": inputs, "outputs": outputs})).unwrap()
    };
    let output = json!([{"name": "OUTPUT_IMAGE", "datatype": "BYTES", "shape": [-1]}]);
    let batched = metadata(
        json!([{"name": "INPUT_IMAGE", "datatype": "BYTES", "shape": [-1, 1]}]),
        output.clone(),
    );
    let err = super::client::contract(&config, "m", &batched).unwrap_err();
    assert!(
        err.to_string()
            .contains("has shape [-1, 1], expected [1] or [-1]"),
        "{err}"
    );
    let extra = metadata(
        json!([{"name": "INPUT_IMAGE", "datatype": "BYTES", "shape": [-1]},
               {"name": "STRENGTH", "datatype": "FP32", "shape": [1]}]),
        output,
    );
    let contract = super::client::contract(&config, "m", &extra).unwrap();
    assert_eq!(contract.other_inputs, ["STRENGTH"]);
    let no_output = metadata(
        json!([{"name": "INPUT_IMAGE", "datatype": "BYTES", "shape": [1]}]),
        json!([{"name": "OUT", "datatype": "BYTES", "shape": [-1]}]),
    );
    let err = super::client::contract(&config, "m", &no_output).unwrap_err();
    assert!(
        err.to_string()
            .contains("has no output \"OUTPUT_IMAGE\"; found outputs [\"OUT\"]"),
        "{err}"
    );
}

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
        .map(|i| super::tensor::sniff_content_type(i))
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

#[tokio::test]
async fn the_provider_is_named_kserve() {
    let fake = FakeKServe::start().await.unwrap();
    assert_eq!(provider(&fake).name(), "kserve");
}

/// The fault table's submit rows (this API has no separate reads): 30 % of
/// calls rate-limited, every job still succeeds with one accepted call, the
/// breaker never hears of the rate limits, and the bucket slows down.
#[tokio::test]
async fn fault_table_rate_limits_cost_no_job_and_never_open_the_breaker() {
    let fake = FakeKServe::start().await.unwrap();
    fake.set_faults(Faults {
        submit_rate_limited: 0.3,
        retry_after_secs: 0,
        ..Faults::default()
    });
    let (guarded, ended) = fault_table::all_succeed(provider(&fake), &request("matting")).await;
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, fault_table::JOBS as u64);
    assert!((7..=9).contains(&counts.submits_refused), "{counts:?}");
    assert_eq!(ended.iter().map(|job| job.deferrals).sum::<u32>(), 0);
    assert!(guarded.open_models().is_empty());
    assert_eq!(guarded.snapshot("matting").consecutive_failures, 0);
    assert!(guarded.rate_limit().is_some(), "the bucket was not slowed");
}

/// 30 % of calls answered 503: every job still succeeds, one accepted call
/// each (deferred, not failed, should the breaker open).
#[tokio::test]
async fn fault_table_unavailable_calls_cost_no_job() {
    let fake = FakeKServe::start().await.unwrap();
    fake.set_faults(Faults {
        submit_unavailable: 0.3,
        ..Faults::default()
    });
    fault_table::all_succeed(provider(&fake), &request("matting")).await;
    let counts = fake.fault_counts();
    assert_eq!(counts.submits_accepted, fault_table::JOBS as u64);
    assert!(counts.submits_refused >= 6, "{counts:?}");
}

// What a job's parameters may not touch, and what a hostile server may not
// do to us (issue 15); the checks are `hostile_table`'s, the data KServe's.

#[tokio::test]
async fn owned_parameters_are_refused_before_any_request() {
    let fake = FakeKServe::start().await.unwrap();
    let config = config(&fake);
    hostile_table::owned_keys_are_refused(
        &provider(&fake),
        None,
        &policy(),
        &request("matting"),
        &super::client::OWNED,
        &tensor_names(&config),
        || fake.infer_calls(),
    )
    .await;
    assert_eq!(fake.infer_calls(), 0);
}

#[tokio::test]
async fn harmless_parameters_reach_the_model() {
    let fake = FakeKServe::start().await.unwrap();
    let parameters = hostile_table::harmless_parameters_pass(
        &provider(&fake),
        &policy(),
        request("matting"),
        json!({"threshold": 7, "feather": true}),
        || Value::Object(fake.last_received().unwrap().parameters),
    )
    .await;
    assert_eq!(parameters, json!({"threshold": 7, "feather": true}));
}

#[tokio::test]
async fn more_outputs_than_asked_are_dropped() {
    let fake = FakeKServe::start().await.unwrap();
    hostile_table::extra_outputs_are_dropped(
        &provider(&fake),
        &policy(),
        &request("extra"),
        &[1, 2],
        None,
    )
    .await;
}

#[tokio::test]
async fn an_endless_answer_is_cut_off_at_its_limit() {
    let fake = FakeKServe::start().await.unwrap();
    let provider = KServeProvider::new(
        KServeConfig {
            max_output_bytes: hostile_table::SMALL_OUTPUT_LIMIT,
            ..config(&fake)
        },
        client(),
    );
    let limit = hostile_table::SMALL_ANSWER_LIMIT;
    let expected = format!(
        "provider rejected the request: infer answer is larger than the {limit} byte limit"
    );
    hostile_table::fails_with(&provider, &request("endless"), &expected).await;
}

#[tokio::test]
async fn error_messages_never_echo_the_bearer_or_the_prompt() {
    let fake = FakeKServe::start_with_bearer("tok-secret-123")
        .await
        .unwrap();
    let provider = KServeProvider::new(
        KServeConfig {
            bearer: Some("tok-secret-123".into()),
            ..config(&fake)
        },
        client(),
    );
    let message =
        hostile_table::sanitised_error(&provider, &policy(), &request("echo"), &["tok-secret-123"])
            .await;
    assert_eq!(
        message,
        "provider rejected the request: infer answered HTTP 400: \
         Bearer [redacted] cannot run prompt '[prompt]' on model 'echo'"
    );
}

/// An infer the server ran (its GPU time spent) whose answer was lost: the
/// attempt fails `provider_unavailable` and the retry infers again: exactly
/// one more run per lost answer (the protocol has no idempotency key and
/// nothing to find a lost run by).
#[tokio::test]
async fn fault_table_lost_answers_cost_exactly_one_more_run_each() {
    let fake = FakeKServe::start().await.unwrap();
    let set_lost = |fraction| {
        fake.set_faults(Faults {
            submit_answer_lost: fraction,
            ..Faults::default()
        })
    };
    fault_table::lost_answers_cost_one_render_each(
        provider(&fake),
        &request("matting"),
        || fake.fault_counts(),
        set_lost,
    )
    .await;
    assert_eq!(fake.infer_calls(), fake.fault_counts().renders_started);
}

//! Generation through the fake, per job kind: matting in binary and JSON
//! form, the prompt tensor, several images, upscale, inpaint, try-on and
//! the kinds the GPU pool does not serve.

use super::*;

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

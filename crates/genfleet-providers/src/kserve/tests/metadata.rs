//! Readiness, model metadata and the contract checks.

use super::*;

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
    let err = crate::kserve::client::contract(&config, "m", &batched).unwrap_err();
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
    let contract = crate::kserve::client::contract(&config, "m", &extra).unwrap();
    assert_eq!(contract.other_inputs, ["STRENGTH"]);
    let no_output = metadata(
        json!([{"name": "INPUT_IMAGE", "datatype": "BYTES", "shape": [1]}]),
        json!([{"name": "OUT", "datatype": "BYTES", "shape": [-1]}]),
    );
    let err = crate::kserve::client::contract(&config, "m", &no_output).unwrap_err();
    assert!(
        err.to_string()
            .contains("has no output \"OUTPUT_IMAGE\"; found outputs [\"OUT\"]"),
        "{err}"
    );
}

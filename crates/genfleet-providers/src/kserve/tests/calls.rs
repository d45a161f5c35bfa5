//! How calls go wrong or are shaped: backpressure, slow answers and
//! deadlines, lying sizes, unready and unknown models, model names,
//! parameters, misnamed outputs, the size cap and the bearer.

use super::*;

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

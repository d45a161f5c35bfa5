//! The fault table's rows (rate limits, 503s, lost answers) and what a
//! job's parameters or a hostile Vertex may not do (`hostile_table`).

use super::*;

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
            &crate::vertex::client::OWNED,
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

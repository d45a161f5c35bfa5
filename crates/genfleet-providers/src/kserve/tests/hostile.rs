//! The provider's name, the fault table's rows (rate limits, 503s, lost
//! answers) and what a job's parameters or a hostile server may not do
//! (`hostile_table`).

use super::*;

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
        &crate::kserve::client::OWNED,
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

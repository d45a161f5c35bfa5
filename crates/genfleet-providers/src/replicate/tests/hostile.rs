//! What a job's parameters may not touch, and what a hostile Replicate may
//! not do to us (issue 15); the checks are `hostile_table`'s, the data
//! Replicate's.

use super::*;

#[tokio::test]
async fn owned_parameters_are_refused_before_any_request() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = provider(&fake);
    hostile_table::owned_keys_are_refused(
        &provider,
        Some(&provider),
        &policy(),
        &request("test/ok"),
        &super::super::client::OWNED,
        &[],
        || fake.creates(),
    )
    .await;
    assert_eq!(fake.creates(), 0);
}

#[tokio::test]
async fn harmless_parameters_reach_the_model() {
    let fake = FakeReplicate::start().await.unwrap();
    let input = hostile_table::harmless_parameters_pass(
        &provider(&fake),
        &policy(),
        request("test/ok"),
        json!({"guidance": 3.5, "lora_scales": {"style": 0.7}}),
        || fake.last_create().unwrap().input,
    )
    .await;
    assert_eq!(input["guidance"], 3.5);
    assert_eq!(input["lora_scales"], json!({"style": 0.7}));
    assert_eq!(input["num_outputs"], 1);
}

#[tokio::test]
async fn more_outputs_than_asked_are_dropped_unread() {
    let fake = FakeReplicate::start().await.unwrap();
    hostile_table::extra_outputs_are_dropped(
        &provider(&fake),
        &policy(),
        &request("test/extra"),
        &[1, 3],
        Some(&|| fake.downloads()),
    )
    .await;
}

#[tokio::test]
async fn an_endless_prediction_body_is_cut_off_at_its_limit() {
    let fake = FakeReplicate::start().await.unwrap();
    let provider = ReplicateProvider::new(
        ReplicateConfig {
            max_output_bytes: hostile_table::SMALL_OUTPUT_LIMIT,
            ..config(&fake)
        },
        client(),
    );
    let expected = hostile_table::answer_too_large("create answer");
    hostile_table::fails_with(&provider, &request("test/endless"), &expected).await;
}

#[tokio::test]
async fn an_endless_output_file_is_cut_off_at_the_output_limit() {
    let fake = FakeReplicate::start().await.unwrap();
    let expected = hostile_table::output_too_large(10_485_760);
    hostile_table::fails_with(&provider(&fake), &request("test/endless-file"), &expected).await;
}

#[tokio::test]
async fn error_messages_never_echo_the_token_or_the_prompt() {
    let fake = FakeReplicate::start().await.unwrap();
    let message = hostile_table::sanitised_error(
        &provider(&fake),
        &policy(),
        &request("test/echo"),
        &[TOKEN],
    )
    .await;
    assert_eq!(
        message,
        "provider rejected the request: create answered HTTP 422: Bearer [redacted] may not run \"[prompt]\" on this model"
    );
}

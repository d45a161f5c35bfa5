//! Every example in `proto/examples/` parses and validates; every broken one
//! in `proto/examples/invalid/` is rejected with an error naming the field.

use std::path::PathBuf;

use genfleet_proto::{decode_job, encode_json, v1, validate_job, ContentType};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto/examples")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(examples_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_job_kind_has_a_valid_example() {
    let cases = [
        ("job_product_photo.json", v1::JobKind::ProductPhoto),
        (
            "job_background_removal.json",
            v1::JobKind::BackgroundRemoval,
        ),
        ("job_upscale.json", v1::JobKind::Upscale),
        ("job_inpaint.json", v1::JobKind::Inpaint),
        ("job_virtual_try_on.json", v1::JobKind::VirtualTryOn),
        ("job_image_to_video.json", v1::JobKind::ImageToVideo),
        ("job_batch_edit.json", v1::JobKind::BatchEdit),
    ];
    for (file, kind) in cases {
        let job =
            decode_job(&read(file), &ContentType::Json).unwrap_or_else(|e| panic!("{file}: {e}"));
        let valid = validate_job(job, None).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(valid.kind(), kind, "{file}");
    }
}

#[test]
fn canonical_json_details() {
    let job = decode_job(&read("job_product_photo.json"), &ContentType::Json).unwrap();
    // int64/uint64 as strings, Duration as "3600s", Timestamp as RFC 3339.
    assert_eq!(job.generation.as_ref().unwrap().seed, 42);
    assert_eq!(job.credits.as_ref().unwrap().amount, 4);
    assert_eq!(
        job.credits
            .as_ref()
            .unwrap()
            .hold_ttl
            .as_ref()
            .unwrap()
            .seconds,
        3600
    );
    assert_eq!(job.deadline.as_ref().unwrap().seconds, 1_893_456_000);
    assert_eq!(job.priority, v1::Priority::High as i32);

    // snake_case accepted as well as lowerCamelCase; unknown fields ignored.
    let job = decode_job(&read("job_background_removal.json"), &ContentType::Json).unwrap();
    assert!(job.delete_sources_after);
    decode_job(&read("job_batch_edit.json"), &ContentType::Json).unwrap();
}

#[test]
fn the_cancel_example_names_its_tenant() {
    let cancel =
        genfleet_proto::decode_cancel(&read("cancel_job.json"), &ContentType::Json).unwrap();
    assert_eq!(cancel.job_id, "01JD3XQ6Z8M5V9K2T4W7Y1B0A1");
    let tenant = cancel.tenant.unwrap();
    assert_eq!(
        (tenant.org.as_str(), tenant.workspace.as_str()),
        ("acme", "shop-1")
    );
}

#[test]
fn every_result_status_has_an_example_that_round_trips() {
    let cases = [
        ("result_succeeded.json", v1::JobStatus::Succeeded),
        ("result_failed.json", v1::JobStatus::Failed),
        ("result_cancelled.json", v1::JobStatus::Cancelled),
        ("result_expired.json", v1::JobStatus::Expired),
    ];
    for (file, status) in cases {
        let result: v1::JobResult =
            serde_json::from_slice(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(result.status, status as i32, "{file}");
        // error present iff not succeeded
        assert_eq!(
            result.error.is_some(),
            status != v1::JobStatus::Succeeded,
            "{file}"
        );
        if let Some(error) = &result.error {
            assert!(
                genfleet_proto::ErrorCode::parse(&error.code).is_some(),
                "{file}: {}",
                error.code
            );
        }
        let again: v1::JobResult = serde_json::from_slice(&encode_json(&result)).unwrap();
        assert_eq!(again, result, "{file}");
    }
}

#[test]
fn results_are_written_with_defaults_included() {
    let result = v1::JobResult {
        job_id: "01JD3XQ6Z8M5V9K2T4W7Y1B0A3".into(),
        status: v1::JobStatus::Succeeded as i32,
        credits: Some(v1::CreditSummary::default()),
        ..Default::default()
    };
    let json: serde_json::Value = serde_json::from_slice(&encode_json(&result)).unwrap();
    assert_eq!(json["status"], "JOB_STATUS_SUCCEEDED");
    assert_eq!(json["credits"]["captured"], "0");
    assert_eq!(json["attempts"], 0);
    assert_eq!(json["outputs"], serde_json::json!([]));
    assert_eq!(json["provider"], "");
}

#[test]
fn broken_examples_are_rejected_naming_the_field() {
    let cases = [
        ("missing_job_id.json", "`job_id`"),
        ("unspecified_kind.json", "`kind`"),
        ("unknown_kind.json", "field `kind`"),
        ("credits_not_a_number.json", "field `credits.amount`"),
        ("no_inputs.json", "`inputs`"),
        ("tenant_with_dot.json", "`tenant.org`"),
        ("bad_deadline.json", "field `deadline`"),
        ("truncated.json", "not valid job JSON"),
        ("try_on_without_garment.json", "garment"),
    ];
    let listed = std::fs::read_dir(examples_dir().join("invalid"))
        .unwrap()
        .count();
    assert_eq!(listed, cases.len(), "every invalid example has a row here");
    for (file, expected) in cases {
        let body = read(&format!("invalid/{file}"));
        let err = decode_job(&body, &ContentType::Json)
            .and_then(|job| validate_job(job, None))
            .expect_err(file);
        assert!(
            err.message.contains(expected),
            "{file}: {expected:?} not in {:?}",
            err.message
        );
    }
}

//! fal's [`Resumable`] face (the worker parks long renders on it) against
//! the fake fal server: one submit, looks that find the render running and
//! then done, cancel, and records that must not be followed.

use std::time::Duration;

use super::fake::FakeFal;
use crate::{Checked, FalConfig, FalProvider, GenerationRequest, JobKind, Provider, ProviderError};

fn provider(fake: &FakeFal) -> FalProvider {
    let _ = rustls::crypto::ring::default_provider().install_default();
    FalProvider::new(
        FalConfig {
            base_url: fake.base_url.clone(),
            key: "test-key-0123".into(),
            request_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(10),
            max_output_bytes: 10 * 1024 * 1024,
        },
        reqwest::Client::new(),
    )
}

fn request(model: &str) -> GenerationRequest {
    GenerationRequest {
        job_id: "job-parked".into(),
        kind: JobKind::ImageToVideo,
        model: model.into(),
        prompt: "the bottle turns slowly".into(),
        negative_prompt: String::new(),
        seed: None,
        count: 1,
        aspect_ratio: String::new(),
        parameters: serde_json::Map::new(),
        inputs: vec![crate::InputImage {
            role: crate::InputRole::Product,
            content_type: "image/png".into(),
            bytes: bytes::Bytes::from_static(b"\x89PNG\r\n\x1a\n").into(),
        }],
        deadline: None,
    }
}

#[tokio::test]
async fn submit_then_look_until_done() {
    let fake = FakeFal::start().await.unwrap();
    let fal = provider(&fake);
    let resumable = fal.resumable().expect("fal is queue-style");
    let request = request("test/video");
    let record = resumable.submit(&request).await.unwrap();
    assert!(!record.contains("test-key"), "the record holds no key");
    assert_eq!(fake.submissions_for("test/video"), 1);

    // The fake answers IN_PROGRESS to the first look, then COMPLETED.
    let first = resumable.check(&request, &record).await.unwrap();
    assert!(matches!(first, Checked::Running), "{first:?}");
    let Checked::Done(output) = resumable.check(&request, &record).await.unwrap() else {
        panic!("the second look should find the render done");
    };
    assert_eq!(output.artifacts.len(), 1);
    assert!(output.artifacts[0].content_type.starts_with("video/"));
    assert_eq!(
        fake.submissions_for("test/video"),
        1,
        "looks never resubmit"
    );
}

#[tokio::test]
async fn a_failed_render_is_a_permanent_error_of_the_look() {
    let fake = FakeFal::start().await.unwrap();
    let fal = provider(&fake);
    let resumable = fal.resumable().unwrap();
    let request = request("test/nsfw");
    let record = resumable.submit(&request).await.unwrap();
    let mut outcome = resumable.check(&request, &record).await;
    if matches!(outcome, Ok(Checked::Running)) {
        outcome = resumable.check(&request, &record).await;
    }
    let error = outcome.unwrap_err();
    assert!(matches!(error, ProviderError::Rejected { .. }), "{error:?}");
}

#[tokio::test]
async fn cancel_reaches_fal() {
    let fake = FakeFal::start().await.unwrap();
    let fal = provider(&fake);
    let resumable = fal.resumable().unwrap();
    let request = request("test/stuck");
    let record = resumable.submit(&request).await.unwrap();
    assert!(matches!(
        resumable.check(&request, &record).await.unwrap(),
        Checked::Running
    ));
    resumable.cancel(&record).await.unwrap();
    assert_eq!(fake.cancellations(), 1);
}

#[tokio::test]
async fn records_off_the_fal_origin_or_unreadable_are_refused() {
    let fake = FakeFal::start().await.unwrap();
    let fal = provider(&fake);
    let resumable = fal.resumable().unwrap();
    let request = request("test/ok");
    // Same host, another port: a listener of ours that must see nothing.
    let (elsewhere, reached) = crate::hostile_table::listener_elsewhere().await;
    let foreign = serde_json::json!({
        "request_id": "r1",
        "status_url": format!("{elsewhere}/test/ok/requests/r1/status"),
        "response_url": format!("{elsewhere}/test/ok/requests/r1"),
        "cancel_url": format!("{elsewhere}/test/ok/requests/r1/cancel"),
    })
    .to_string();
    for record in [foreign.as_str(), "not json"] {
        let error = resumable.check(&request, record).await.unwrap_err();
        assert!(matches!(error, ProviderError::Rejected { .. }), "{error:?}");
        assert!(resumable.cancel(record).await.is_err());
    }
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(fake.cancellations(), 0);
    assert_eq!(fake.result_reads(), 0);
}

//! [`VertexProvider`] through [`generate_with_retries`] against the fake
//! Vertex server over real loopback HTTP: one test per fake behaviour, the
//! token rules, the request shapes and redaction.
//!
//! This file holds the shared helpers (fake-backed provider, requests,
//! retry policy, PNG checks); the tests are split by topic into
//! `generation`, `token`, `shapes` and `hostile`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::time::Instant;
use url::Url;

use super::client::{build_body, parse_proto_duration, status_error, Method};
use super::fake::{FakeVertex, Faults};
use crate::fake_media::gradient_png;
use crate::fault_table;
use crate::hostile_table;
use crate::{
    generate_with_retries, GenerationRequest, InputImage, InputRole, JobKind, Provider,
    ProviderError, RetryPolicy, TokenSource, VertexConfig, VertexProvider,
};

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn client() -> reqwest::Client {
    // reqwest is built without a crypto provider; the binary installs ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn config(fake: &FakeVertex, token: TokenSource) -> VertexConfig {
    VertexConfig {
        base_url: Some(fake.base_url.clone()),
        request_timeout: Duration::from_secs(5),
        max_output_bytes: 10 * 1024 * 1024,
        ..VertexConfig::new("test-project", token)
    }
}

/// A provider whose tokens come from the fake's token endpoint.
fn provider(fake: &FakeVertex) -> VertexProvider {
    let token = TokenSource::endpoint(fake.token_url(), client());
    VertexProvider::new(config(fake, token), client())
}

fn request(model: &str) -> GenerationRequest {
    GenerationRequest {
        job_id: "job-9".into(),
        kind: JobKind::ProductPhoto,
        model: model.into(),
        prompt: "a red sneaker on marble".into(),
        negative_prompt: String::new(),
        seed: None,
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
        // Also caps the 30 s quota floor and the fake's 0.2 s RetryInfo.
        max_delay: Duration::from_millis(50),
    }
}

fn png(role: InputRole, variant: u32) -> InputImage {
    InputImage {
        role,
        content_type: "image/png".into(),
        bytes: gradient_png(8, 8, variant).into(),
    }
}

fn b64(image: &InputImage) -> String {
    base64::engine::general_purpose::STANDARD.encode(image.bytes.resident().unwrap())
}

fn assert_pngs(output: &crate::GenerationOutput, count: usize) {
    assert_eq!(output.artifacts.len(), count, "{output:?}");
    for artifact in &output.artifacts {
        assert_eq!(artifact.content_type, "image/png");
        assert!(artifact
            .bytes
            .resident()
            .unwrap()
            .starts_with(PNG_SIGNATURE));
    }
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "genfleet-vertex-tests-{}-{name}-{}",
        std::process::id(),
        fastrand::u64(..)
    ))
}

mod generation;
mod hostile;
mod shapes;
mod token;

//! [`KServeProvider`] through [`generate_with_retries`] against the fake
//! KServe server over real loopback HTTP: one test per fake behaviour, the
//! tensors the fake received, readiness, metadata and contract checks, and
//! the answer parser and status classes on their own.
//!
//! This file holds the shared helpers (fake-backed provider, requests,
//! retry policy); the tests are split by topic into `generation`, `calls`,
//! `metadata`, `answers` and `hostile`.

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

mod answers;
mod calls;
mod generation;
mod hostile;
mod metadata;

//! [`Guarded`] over a scripted provider in paused time (per-model breakers,
//! per-provider limits, deadlines), plus one run against the fake fal
//! server's `test/down` model through [`generate_with_retries`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::MAX_TRACKED_MODELS;
use crate::fal::fake::FakeFal;
use crate::scripted::{request_for, Scripted};
use crate::{
    generate_with_retries, BreakerState, DeferReason, FalConfig, FalProvider, GenerationOutput,
    GenerationRequest, GuardConfig, GuardSnapshot, Guarded, Provider, ProviderError, RetryPolicy,
};

/// The model most tests call.
const MODEL: &str = "test/down";

fn request(deadline: Option<Instant>) -> GenerationRequest {
    request_for(MODEL, deadline)
}

const OPEN_FOR: Duration = Duration::from_secs(30);

fn config() -> GuardConfig {
    GuardConfig {
        failure_threshold: 3,
        open_for: OPEN_FOR,
        ..GuardConfig::default()
    }
}

fn unavailable() -> Result<(), ProviderError> {
    Err(ProviderError::Unavailable {
        message: "busy".into(),
        retry_after: None,
    })
}

fn malformed() -> Result<(), ProviderError> {
    Err(ProviderError::Malformed {
        message: "truncated".into(),
    })
}

fn rejected() -> Result<(), ProviderError> {
    Err(ProviderError::Rejected {
        message: "nsfw".into(),
    })
}

/// Calls `guarded` once per scripted answer, ignoring the results.
async fn call_n(guarded: &Guarded<Scripted>, times: usize) {
    for _ in 0..times {
        let _ = guarded.generate(&request(None)).await;
    }
}

/// A guard over a provider that has just failed `config().failure_threshold`
/// times in a row.
async fn tripped(hold: Duration) -> Guarded<Scripted> {
    let provider = Scripted {
        hold,
        ..Scripted::new(vec![unavailable(), unavailable(), unavailable()])
    };
    let guarded = Guarded::new(provider, config());
    call_n(&guarded, 3).await;
    assert_eq!(guarded.state(MODEL), BreakerState::Open);
    guarded
}

/// Asserts the breaker's deferral, and returns its retry hint.
fn assert_open_error(result: Result<GenerationOutput, ProviderError>) -> Duration {
    match result {
        Err(ProviderError::Deferred {
            reason: DeferReason::CircuitOpen,
            retry_after,
        }) => retry_after,
        other => panic!("expected the open-circuit deferral, got {other:?}"),
    }
}

fn rate_limited(retry_after: Option<Duration>) -> Result<(), ProviderError> {
    Err(ProviderError::RateLimited {
        message: "429".into(),
        retry_after,
    })
}

mod breaker;
mod limits;
mod models;

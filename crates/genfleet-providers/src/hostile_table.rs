//! The shared part of each provider's tests of what a job's parameters may
//! not touch and what a hostile provider may not do to us (issue 15): owned
//! keys refused before any request, harmless parameters passed on, extra
//! outputs dropped, endless answers cut off and error text sanitised. Each
//! provider's `tests.rs` brings only its own data (its owned keys, its fake
//! and what that fake saw, its requests); these run the same checks on it.

use serde_json::Value;

use crate::params::{hostile_parameters, Owned};
use crate::{
    generate_with_retries, GenerationOutput, GenerationRequest, Provider, ProviderError, Resumable,
    RetryPolicy,
};

/// The `max_output_bytes` the endless-answer tests configure: 1 MiB.
pub(crate) const SMALL_OUTPUT_LIMIT: u64 = 1024 * 1024;

/// The inline answer limit for one output of [`SMALL_OUTPUT_LIMIT`]: 1 MiB
/// as base64, plus 16 MiB for the JSON around it.
pub(crate) const SMALL_ANSWER_LIMIT: u64 = SMALL_OUTPUT_LIMIT * 4 / 3 + 1 + 16 * 1024 * 1024;

/// Sends `base` once with each spelling [`hostile_parameters`] makes of
/// every key `owned` (and `extra`) as its parameters, and checks each is
/// refused at once as `invalid_input`, by a message that names the key and
/// the provider, without a request reaching the fake (`sent` counts those);
/// where the provider is also `resumable`, its submit too.
pub(crate) async fn owned_keys_are_refused(
    provider: &dyn Provider,
    resumable: Option<&dyn Resumable>,
    policy: &RetryPolicy,
    base: &GenerationRequest,
    owned: &Owned,
    extra: &[&str],
    sent: impl Fn() -> u64,
) {
    let hostile = hostile_parameters(owned, extra);
    assert!(hostile.len() > 100, "only {} cases", hostile.len());
    let before = sent();
    for (key, parameters) in hostile {
        let request = GenerationRequest {
            parameters,
            ..base.clone()
        };
        let failed = generate_with_retries(provider, &request, policy)
            .await
            .unwrap_err();
        assert_eq!(failed.attempts, 1, "{key}");
        assert!(
            matches!(failed.error, ProviderError::Unsupported { .. }),
            "{key}: {failed}"
        );
        assert_eq!(failed.error.code(), "invalid_input");
        let message = failed.error.to_string();
        assert!(message.contains(&format!("{key:?}")), "{key}: {message}");
        let by_worker = format!("set by the worker for {}", owned.provider);
        assert!(message.contains(&by_worker), "{key}: {message}");
        if let Some(resumable) = resumable {
            let err = resumable.submit(&request).await.unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{key}: {err}");
        }
        assert_eq!(sent(), before, "{key}: a refused request reached the fake");
    }
}

/// Sends `base` with `harmless` (an object) added to its parameters,
/// checks it succeeds and that each of them reached the model as it was:
/// `seen` reads, as an object, the parameters the fake received. Returns
/// those, for the provider's own checks.
pub(crate) async fn harmless_parameters_pass(
    provider: &dyn Provider,
    policy: &RetryPolicy,
    mut base: GenerationRequest,
    harmless: Value,
    seen: impl FnOnce() -> Value,
) -> Value {
    let Value::Object(harmless) = harmless else {
        panic!("parameters are an object: {harmless}");
    };
    base.parameters.extend(harmless.clone());
    generate_with_retries(provider, &base, policy)
        .await
        .unwrap();
    let seen = seen();
    for (key, value) in &harmless {
        assert_eq!(&seen[key], value, "{key}: {seen}");
    }
    seen
}

/// Asks `base`'s model, which answers with more outputs than asked, for
/// each of `counts`, and checks exactly that many come back; where the
/// outputs are files, `downloads` counts the fake's: only those kept are
/// fetched. Returns the outputs, in the order of `counts`.
pub(crate) async fn extra_outputs_are_dropped(
    provider: &dyn Provider,
    policy: &RetryPolicy,
    base: &GenerationRequest,
    counts: &[u32],
    downloads: Option<&dyn Fn() -> u64>,
) -> Vec<GenerationOutput> {
    let mut outputs = Vec::with_capacity(counts.len());
    for &count in counts {
        let request = GenerationRequest {
            count,
            ..base.clone()
        };
        let before = downloads.map(|downloads| downloads());
        let output = generate_with_retries(provider, &request, policy)
            .await
            .unwrap();
        assert_eq!(output.artifacts.len(), count as usize, "{output:?}");
        if let (Some(downloads), Some(before)) = (downloads, before) {
            assert_eq!(downloads() - before, u64::from(count), "count {count}");
        }
        outputs.push(output);
    }
    outputs
}

/// Generates `request` once (no retries) and checks it fails with exactly
/// `expected`; returns the error, for the provider's own checks.
pub(crate) async fn fails_with(
    provider: &dyn Provider,
    request: &GenerationRequest,
    expected: &str,
) -> ProviderError {
    let err = provider.generate(request).await.unwrap_err();
    assert_eq!(err.to_string(), expected, "{err:?}");
    err
}

/// What a provider says of an output file past `limit` bytes.
pub(crate) fn output_too_large(limit: u64) -> String {
    format!("provider rejected the request: an output is larger than the {limit} byte limit")
}

/// What a provider says of an inline answer (`what`) past
/// [`SMALL_ANSWER_LIMIT`] that it reads as malformed.
pub(crate) fn answer_too_large(what: &str) -> String {
    format!(
        "provider answered with a malformed body: {what} is larger than {SMALL_ANSWER_LIMIT} bytes"
    )
}

/// Generates `request` against a fake that echoes the credential and the
/// prompt into its error text, and checks the error's text repeats neither
/// the prompt nor any of `secrets` and stays short ([`assert_sanitised`]).
/// Returns the text, for the provider's exact check.
pub(crate) async fn sanitised_error(
    provider: &dyn Provider,
    policy: &RetryPolicy,
    request: &GenerationRequest,
    secrets: &[&str],
) -> String {
    let failed = generate_with_retries(provider, request, policy)
        .await
        .unwrap_err();
    let text = failed.error.to_string();
    assert_sanitised(&text, &[&[request.prompt.as_str()], secrets].concat());
    text
}

/// Checks an error's `text` contains none of `secrets` (a credential, a
/// prompt or a piece of one) and is a bounded summary (under 320 chars).
pub(crate) fn assert_sanitised(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{secret:?} leaked: {text}");
    }
    assert!(text.chars().count() < 320, "{text}");
}

/// Another origin for a tampered submission record to point at: a
/// listener on 127.0.0.1 that counts the connections it accepts and drops
/// each at once. A record of `http://127.0.0.1:<its port>/...` is off the
/// provider's origin only by its port, and a client that followed it would
/// show up in the count (a host like `attacker.example` would fail in DNS
/// and prove nothing). Returns the origin (`http://127.0.0.1:<port>`) and
/// the count; the listener lives as long as the runtime.
pub(crate) async fn listener_elsewhere() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("a loopback listener");
    let origin = format!("http://{}", listener.local_addr().expect("its address"));
    let accepted = std::sync::Arc::new(AtomicU64::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (origin, accepted)
}

/// Runs `call`, a request whose tampered record points at
/// [`listener_elsewhere`], bounded at 30 s, then asserts that listener
/// accepted nothing. A client that followed the record would retry against
/// a listener that drops every connection until the request's deadline:
/// the bound makes that regression fail at once, on the count.
pub(crate) async fn answered_without_reaching<T>(
    reached: &std::sync::atomic::AtomicU64,
    call: impl std::future::Future<Output = T>,
) -> T {
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), call).await;
    let reached = reached.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        reached, 0,
        "the tampered origin was contacted {reached} times"
    );
    answer.expect("answered within 30 s")
}

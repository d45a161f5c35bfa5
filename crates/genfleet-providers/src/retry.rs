//! Retries around [`Provider::generate`]: exponential backoff with full
//! jitter, the provider's Retry-After when it gives one, and the job deadline
//! as a hard stop.
//!
//! This is a plain loop over `tokio::time::sleep` rather than backon: the
//! policy needs full jitter (backon's `with_jitter` adds a random amount on
//! top of the delay instead of drawing it from `[0, ceiling]`), a per-error
//! delay override, a per-class cap for malformed answers and a deadline
//! check before every sleep. Written out, each of those is one line; as
//! backon adapters they would be spread over closures.
//!
//! It does not decide what is retryable: that is [`ProviderError::is_retryable`],
//! fixed where each error is born.

use std::time::{Duration, SystemTime};

use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::error::Failed;
use crate::{GenerationOutput, GenerationRequest, Provider, ProviderError};

/// A malformed answer is worth one more try (a truncated body through a
/// proxy), but a provider that changed its output shape will keep doing so;
/// stop after this many malformed answers even if attempts remain. No
/// client here sends an idempotency key, so each retry may also be billed.
const MALFORMED_ANSWER_LIMIT: u32 = 2;

/// How long past the deadline a provider call may run before it is dropped.
/// Providers watch the deadline themselves and use this slack to send a
/// best-effort cancel; the outer timeout only catches one that does not.
const DEADLINE_GRACE: Duration = Duration::from_secs(3);

/// How [`generate_with_retries`] spaces and bounds its attempts.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Provider calls in total, the first included. 0 is treated as 1.
    pub max_attempts: u32,
    /// Ceiling of the first backoff; doubles per retry.
    pub initial_delay: Duration,
    /// Cap on any single wait, Retry-After included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts spread over at most about 0.5 + 1 + 2 s of jittered waits:
    /// enough to ride out a burst of 429s or a runner restart, short enough
    /// that a job stuck on a dead provider fails back to the broker quickly.
    /// The 30 s cap only matters for long Retry-After hints.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// Calls `provider.generate(request)` until it succeeds, fails permanently,
/// runs out of attempts or would have to wait past `request.deadline`.
///
/// Between attempts it waits a random delay in
/// `[0, min(max_delay, initial_delay * 2^retry)]` (full jitter, so many
/// workers hitting the same 429 spread out), or the error's Retry-After
/// capped at `max_delay` when the provider sent one.
///
/// A [`ProviderError::RateLimited`] answer is backpressure, not a failure:
/// while the request has a deadline it does not use up one of
/// `max_attempts` (the deadline bounds how long it is waited out); without
/// one it counts like any other. A [`ProviderError::Deferred`] is returned
/// at once: the provider was not called, and the caller decides where the
/// job waits.
///
/// On success `attempts` in the output is the number of calls made.
///
/// # Errors
///
/// [`Failed`] with the last error and the number of calls made. When the
/// deadline has passed, or the next wait would end at or after it, the error
/// is [`ProviderError::DeadlineExceeded`] (the last provider error is logged).
pub async fn generate_with_retries(
    provider: &dyn Provider,
    request: &GenerationRequest,
    policy: &RetryPolicy,
) -> Result<GenerationOutput, Failed> {
    let (mut output, attempts) = call_with_retries(provider.name(), request, policy, || {
        provider.generate(request)
    })
    .await?;
    output.attempts = attempts;
    Ok(output)
}

/// [`generate_with_retries`]'s policy around any one-attempt provider call
/// made for `request` (a [`Resumable::submit`](crate::Resumable::submit),
/// say). Returns the value and the number of calls made.
///
/// # Errors
///
/// As [`generate_with_retries`].
pub async fn call_with_retries<T, F, Fut>(
    provider_name: &str,
    request: &GenerationRequest,
    policy: &RetryPolicy,
    mut call: F,
) -> Result<(T, u32), Failed>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    let max_attempts = policy.max_attempts.max(1);
    let mut rng = fastrand::Rng::new();
    let mut attempts: u32 = 0;
    // Attempts that use up `max_attempts`: all but rate-limited ones under
    // a deadline.
    let mut counted: u32 = 0;
    let mut malformed: u32 = 0;
    loop {
        if request
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return Err(Failed {
                error: ProviderError::DeadlineExceeded,
                attempts,
            });
        }
        attempts += 1;
        let result = match request.deadline {
            Some(deadline) => {
                tokio::time::timeout_at(crate::hint::after(deadline, DEADLINE_GRACE), call())
                    .await
                    .unwrap_or(Err(ProviderError::DeadlineExceeded))
            }
            None => call().await,
        };
        let error = match result {
            Ok(value) => return Ok((value, attempts)),
            Err(error) => error,
        };
        if matches!(error, ProviderError::Deferred { .. }) {
            // Nothing was called, and nothing will be before its
            // `retry_after`: holding the job here would only keep its slot.
            return Err(Failed { error, attempts });
        }
        if !(matches!(error, ProviderError::RateLimited { .. }) && request.deadline.is_some()) {
            counted += 1;
        }
        if matches!(error, ProviderError::Malformed { .. }) {
            malformed += 1;
        }
        if !error.is_retryable() || counted >= max_attempts || malformed >= MALFORMED_ANSWER_LIMIT {
            return Err(Failed { error, attempts });
        }
        let delay = next_delay(policy, attempts - 1, error.retry_after(), &mut rng);
        if request
            .deadline
            .is_some_and(|deadline| crate::hint::after(Instant::now(), delay) >= deadline)
        {
            tracing::warn!(
                provider = provider_name,
                job_id = %request.job_id,
                attempt = attempts,
                code = error.code(),
                error = %error,
                "provider attempt failed and the deadline leaves no time to retry"
            );
            return Err(Failed {
                error: ProviderError::DeadlineExceeded,
                attempts,
            });
        }
        tracing::warn!(
            provider = provider_name,
            job_id = %request.job_id,
            attempt = attempts,
            code = error.code(),
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %error,
            "provider attempt failed, retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

/// The wait before retry number `retry` (0 for the wait after the first call).
fn next_delay(
    policy: &RetryPolicy,
    retry: u32,
    retry_after: Option<Duration>,
    rng: &mut fastrand::Rng,
) -> Duration {
    match retry_after {
        Some(hint) => hint.min(policy.max_delay),
        None => full_jitter(backoff_ceiling(policy, retry), rng),
    }
}

/// `min(max_delay, initial_delay * 2^retry)`, saturating instead of
/// overflowing for large retry counts.
fn backoff_ceiling(policy: &RetryPolicy, retry: u32) -> Duration {
    let factor = 2u32.checked_pow(retry).unwrap_or(u32::MAX);
    policy
        .initial_delay
        .checked_mul(factor)
        .unwrap_or(Duration::MAX)
        .min(policy.max_delay)
}

/// A uniformly random duration in `[0, ceiling]`.
fn full_jitter(ceiling: Duration, rng: &mut fastrand::Rng) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.u64(0..=nanos))
}

/// Parses a `Retry-After` value: delay seconds (`"120"`) or an HTTP-date
/// (`"Sun, 06 Nov 1994 08:49:37 GMT"`), relative to `now`. A date in the past
/// gives zero. Returns `None` for anything else, including the obsolete
/// RFC 850 and asctime date forms, which no provider we call sends.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = SystemTime::from(OffsetDateTime::parse(value, &Rfc2822).ok()?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::scripted::{request_for, Scripted};

    fn request(deadline: Option<Instant>) -> GenerationRequest {
        request_for("test/ok", deadline)
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }

    fn unavailable(retry_after: Option<Duration>) -> Result<(), ProviderError> {
        Err(ProviderError::Unavailable {
            message: "busy".into(),
            retry_after,
        })
    }

    #[test]
    fn full_jitter_stays_within_bounds() {
        let policy = policy();
        let mut rng = fastrand::Rng::with_seed(7);
        for retry in 0..40 {
            let ceiling = backoff_ceiling(&policy, retry);
            let expected = Duration::from_millis(100)
                .saturating_mul(2u32.saturating_pow(retry))
                .min(Duration::from_secs(2));
            assert_eq!(ceiling, expected, "retry {retry}");
            let mut below_half = false;
            for _ in 0..500 {
                let delay = next_delay(&policy, retry, None, &mut rng);
                assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
                below_half |= delay < ceiling / 2;
            }
            // Full jitter draws from [0, ceiling], not [ceiling/2, ceiling].
            assert!(below_half, "retry {retry}: no draw below half the ceiling");
        }
    }

    #[test]
    fn retry_after_replaces_backoff_and_is_capped() {
        let mut rng = fastrand::Rng::with_seed(1);
        let policy = policy();
        let hint = Some(Duration::from_millis(1500));
        assert_eq!(
            next_delay(&policy, 0, hint, &mut rng),
            Duration::from_millis(1500)
        );
        let hint = Some(Duration::from_secs(600));
        assert_eq!(
            next_delay(&policy, 0, hint, &mut rng),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn parses_retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_767); // 1994-11-06 08:49:27 UTC
        let check = |value: &str, expected: Option<Duration>| {
            assert_eq!(parse_retry_after(value, now), expected, "{value:?}");
        };
        check("5", Some(Duration::from_secs(5)));
        check(" 0 ", Some(Duration::ZERO));
        check(
            "Sun, 06 Nov 1994 08:49:37 GMT",
            Some(Duration::from_secs(10)),
        );
        check("Sun, 06 Nov 1994 08:49:17 GMT", Some(Duration::ZERO));
        check("-1", None);
        check("1.5", None);
        check("soon", None);
        check("", None);
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after_then_succeeds() {
        let provider = Scripted::new(vec![
            unavailable(Some(Duration::from_secs(1))),
            unavailable(None),
            Ok(()),
        ]);
        let start = Instant::now();
        let output = generate_with_retries(&provider, &request(None), &policy())
            .await
            .unwrap();
        assert_eq!(output.attempts, 3);
        let calls = provider.call_times();
        assert_eq!(calls[1] - calls[0], Duration::from_secs(1));
        // Second wait: full jitter under a 200 ms ceiling.
        assert!(calls[2] - calls[1] <= Duration::from_millis(200));
        assert_eq!(calls[0], start);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_max_attempts() {
        let provider = Scripted::new((0..4).map(|_| unavailable(None)).collect());
        let failed = generate_with_retries(&provider, &request(None), &policy())
            .await
            .unwrap_err();
        assert_eq!(failed.attempts, 4);
        assert!(matches!(failed.error, ProviderError::Unavailable { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let provider = Scripted::new(vec![Err(ProviderError::Rejected {
            message: "nsfw".into(),
        })]);
        let failed = generate_with_retries(&provider, &request(None), &policy())
            .await
            .unwrap_err();
        assert_eq!(failed.attempts, 1);
        assert!(matches!(failed.error, ProviderError::Rejected { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_answers_are_retried_once() {
        let malformed = || {
            Err(ProviderError::Malformed {
                message: "truncated".into(),
            })
        };
        let provider = Scripted::new(vec![malformed(), malformed(), Ok(())]);
        let failed = generate_with_retries(&provider, &request(None), &policy())
            .await
            .unwrap_err();
        assert_eq!(failed.attempts, 2);
        assert!(matches!(failed.error, ProviderError::Malformed { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn never_sleeps_past_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(500);
        let provider = Scripted::new(vec![unavailable(Some(Duration::from_secs(1))), Ok(())]);
        let failed = generate_with_retries(&provider, &request(Some(deadline)), &policy())
            .await
            .unwrap_err();
        assert_eq!(failed.attempts, 1);
        assert!(matches!(failed.error, ProviderError::DeadlineExceeded));
        // Gave up at once instead of waiting for the deadline.
        assert!(Instant::now() < deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_passed_deadline_makes_no_call() {
        let deadline = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        let provider = Scripted::new(vec![Ok(())]);
        let failed = generate_with_retries(&provider, &request(Some(deadline)), &policy())
            .await
            .unwrap_err();
        assert_eq!(failed.attempts, 0);
        assert!(provider.call_times().is_empty());
    }

    fn rate_limited(retry_after: Option<Duration>) -> Result<(), ProviderError> {
        Err(ProviderError::RateLimited {
            message: "429".into(),
            retry_after,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_under_a_deadline_are_waited_out_beyond_max_attempts() {
        let deadline = Instant::now() + Duration::from_secs(60);
        // Six 429s and two 503s: more answers than `max_attempts` (4), but
        // only the 503s use attempts up.
        let mut script: Vec<_> = (0..6)
            .map(|_| rate_limited(Some(Duration::from_secs(1))))
            .collect();
        script.insert(2, unavailable(None));
        script.insert(5, unavailable(None));
        script.push(Ok(()));
        let provider = Scripted::new(script);
        let start = Instant::now();
        let output = generate_with_retries(&provider, &request(Some(deadline)), &policy())
            .await
            .unwrap();
        assert_eq!(output.attempts, 9);
        assert_eq!(provider.calls(), 9);
        // Each 429's Retry-After of 1 s was waited out (capped at 2 s).
        assert!(
            start.elapsed() >= Duration::from_secs(6),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_stop_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(3500);
        let provider = Scripted::new(
            (0..20)
                .map(|_| rate_limited(Some(Duration::from_secs(1))))
                .collect(),
        );
        let failed = generate_with_retries(&provider, &request(Some(deadline)), &policy())
            .await
            .unwrap_err();
        assert!(matches!(failed.error, ProviderError::DeadlineExceeded));
        // Calls at 0, 1, 2 and 3 s; the wait after the fourth would pass it.
        assert_eq!(failed.attempts, 4);
        assert!(Instant::now() < deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_without_a_deadline_count_as_attempts() {
        let provider = Scripted::new((0..10).map(|_| rate_limited(None)).collect());
        let failed = generate_with_retries(&provider, &request(None), &policy())
            .await
            .unwrap_err();
        assert_eq!(failed.attempts, 4);
        assert!(matches!(failed.error, ProviderError::RateLimited { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn deferrals_are_returned_at_once() {
        for reason in [
            crate::DeferReason::CircuitOpen,
            crate::DeferReason::AtCapacity,
        ] {
            let provider = Scripted::new(vec![
                Err(ProviderError::Deferred {
                    reason,
                    retry_after: Duration::from_secs(20),
                }),
                Ok(()),
            ]);
            let start = Instant::now();
            let deadline = start + Duration::from_secs(600);
            let failed = generate_with_retries(&provider, &request(Some(deadline)), &policy())
                .await
                .unwrap_err();
            assert_eq!(failed.attempts, 1);
            assert_eq!(provider.calls(), 1);
            assert_eq!(start.elapsed(), Duration::ZERO);
            assert!(
                matches!(failed.error, ProviderError::Deferred { reason: r, retry_after } if r == reason && retry_after == Duration::from_secs(20)),
                "{failed}"
            );
        }
    }
}

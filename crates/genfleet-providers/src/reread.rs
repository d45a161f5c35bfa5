//! Reading a request that already exists at the provider is idempotent;
//! submitting one is not (no provider here takes an idempotency key, so a
//! second submit is rendered and billed again).
//!
//! So once a request id exists (a fal request, a Replicate prediction),
//! every failure to read its status, its result or its outputs (a reset or
//! truncated body, malformed JSON, a 5xx, a 429, a timeout) is read again,
//! with backoff, on the same request, until the job's deadline. Only the
//! provider's own verdict on the request (it failed, it is unknown, its
//! output is gone) ends the reads; when that verdict still allows another
//! try, the next attempt submits anew, and [`read_again`] logs why, with the
//! provider's reason.
//!
//! A failing read is no failure of the model: it never reaches
//! [`Guarded`](crate::Guarded)'s breaker, because the attempt goes on.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::ProviderError;

/// Longest pause between two reads that failed without a hint: long
/// enough not to hammer a provider in trouble, short enough to notice its
/// return within seconds.
const MAX_READ_DELAY: Duration = Duration::from_secs(5);

/// Longest Retry-After a read honours in one pause; the deadline bounds
/// the reads anyway.
const MAX_READ_HINT: Duration = Duration::from_secs(60);

/// Shortest first pause, so a tiny poll interval cannot turn a failing
/// read into a busy loop.
const MIN_READ_DELAY: Duration = Duration::from_millis(10);

/// How long reads keep failing before an attempt without a deadline gives
/// up on them. The worker always sets a deadline; this only bounds other
/// callers. The request's record is kept, so with a submission log the
/// job's next attempt reads it again instead of submitting.
pub(crate) const READ_WINDOW_WITHOUT_DEADLINE: Duration = Duration::from_secs(120);

/// Reads of an existing request that failed and were made again, per
/// provider, since the process started. Process-wide like the spool: every
/// client of one provider adds to the same count, which the worker exports.
static REPEATED_READS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// How many reads of existing requests each provider had to make again
/// (a reset, truncated or malformed answer, a 5xx, a timeout), since the
/// process started: `(provider, count)`, sorted by provider.
pub fn repeated_reads() -> Vec<(&'static str, u64)> {
    REPEATED_READS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(provider, n)| (*provider, *n))
        .collect()
}

fn count_repeated_read(provider: &'static str) {
    let mut counts = REPEATED_READS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let n = counts.entry(provider).or_insert(0);
    *n = n.saturating_add(1);
}

/// One failed read of a request that exists at the provider.
#[derive(Debug)]
pub(crate) struct ReadError {
    pub(crate) error: ProviderError,
    /// Whether reading again may help. `false` is the provider's verdict
    /// (the request failed or is unknown, the output is gone) or our own
    /// (the deadline passed, an answer this client can never use).
    pub(crate) again: bool,
}

impl ReadError {
    /// `error`, read again when `again` says so and the error is
    /// retryable at all (never the deadline, never a permanent answer).
    pub(crate) fn new(error: ProviderError, again: bool) -> Self {
        let again = again && error.is_retryable();
        Self { error, again }
    }

    /// The provider judged the request; reading it again would get the
    /// same answer.
    pub(crate) fn verdict(error: ProviderError) -> Self {
        Self {
            error,
            again: false,
        }
    }
}

impl From<ProviderError> for ReadError {
    /// By class: whatever is retryable (a transport failure, a 5xx, a 429,
    /// a truncated or malformed body, a local disk failure) is read again;
    /// a permanent answer or the deadline is final.
    fn from(error: ProviderError) -> Self {
        let again = error.is_retryable();
        Self { error, again }
    }
}

/// How an attempt that may hold a request at the provider ended without
/// output, which decides what happens to the request's record.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing was submitted, the provider judged the request, or the
    /// deadline passed: forget the record (a later attempt submits anew).
    Judged(ProviderError),
    /// Reads kept failing until an attempt without a deadline gave up on
    /// them; the request may still be fine: keep its record, so the job's
    /// next attempt reads it instead of submitting again.
    Unread(ProviderError),
}

impl From<ProviderError> for Failure {
    fn from(error: ProviderError) -> Self {
        Self::Judged(error)
    }
}

/// Runs `read` until it answers, fails with a verdict, or the deadline
/// passes, pausing between failed reads for the error's Retry-After (at
/// most a minute) or an equal-jitter backoff that starts at `pace` and
/// doubles up to 5 s.
///
/// `provider`, `request_id` and `what` ("status", "result", "output") name
/// the read in logs; no URL, key or body ever reaches them.
///
/// # Errors
///
/// [`Failure::Judged`] with the verdict, or with
/// [`ProviderError::DeadlineExceeded`] when the next read could only start
/// at or after the deadline (with the last [`ProviderError::Local`] instead
/// when our own spool was what kept failing); [`Failure::Unread`] with the last error when,
/// without a deadline, reads have failed for
/// [`READ_WINDOW_WITHOUT_DEADLINE`].
pub(crate) async fn read_again<T, F, Fut>(
    provider: &'static str,
    request_id: &str,
    what: &'static str,
    deadline: Option<Instant>,
    pace: Duration,
    mut read: F,
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ReadError>>,
{
    let started = Instant::now();
    let mut failures: u32 = 0;
    let mut rng = fastrand::Rng::new();
    loop {
        let error = match read().await {
            Ok(value) => return Ok(value),
            Err(ReadError { error, again: true }) => error,
            Err(ReadError {
                error,
                again: false,
            }) => {
                if error.is_retryable() {
                    // The one case where a new submit follows: say why.
                    tracing::warn!(
                        provider,
                        request_id,
                        what,
                        code = error.code(),
                        reason = %error,
                        "the provider's answer rules out reading this request again; the next attempt submits anew"
                    );
                }
                return Err(Failure::Judged(error));
            }
        };
        failures = failures.saturating_add(1);
        count_repeated_read(provider);
        let delay = match error.retry_after() {
            Some(hint) => hint.min(MAX_READ_HINT),
            None => equal_jitter(backoff(pace, failures), &mut rng),
        };
        let wake = crate::hint::after(Instant::now(), delay);
        match deadline {
            Some(deadline) if wake >= deadline => {
                tracing::warn!(
                    provider,
                    request_id,
                    what,
                    reads_failed = failures,
                    code = error.code(),
                    error = %error,
                    "reading the request failed and the deadline leaves no time to read it again"
                );
                // Our own disk kept failing: say so (`internal`) rather than
                // blame the time the provider took.
                if matches!(error, ProviderError::Local { .. }) {
                    return Err(Failure::Judged(error));
                }
                return Err(Failure::Judged(ProviderError::DeadlineExceeded));
            }
            None if wake.saturating_duration_since(started) > READ_WINDOW_WITHOUT_DEADLINE => {
                tracing::warn!(
                    provider,
                    request_id,
                    what,
                    reads_failed = failures,
                    code = error.code(),
                    error = %error,
                    "reading the request kept failing; keeping it for the job's next attempt"
                );
                return Err(Failure::Unread(error));
            }
            _ => {}
        }
        tracing::warn!(
            provider,
            request_id,
            what,
            reads_failed = failures,
            code = error.code(),
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %error,
            "reading the request failed; reading the same request again"
        );
        tokio::time::sleep_until(wake).await;
    }
}

/// `min(MAX_READ_DELAY, pace * 2^(failures - 1))`, `pace` at least
/// [`MIN_READ_DELAY`].
fn backoff(pace: Duration, failures: u32) -> Duration {
    let factor = 2u32
        .checked_pow(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    pace.max(MIN_READ_DELAY)
        .checked_mul(factor)
        .unwrap_or(Duration::MAX)
        .min(MAX_READ_DELAY)
}

/// A duration in `[ceiling / 2, ceiling]`: reads of many jobs spread out,
/// yet none comes back at once to a provider that just failed it.
fn equal_jitter(ceiling: Duration, rng: &mut fastrand::Rng) -> Duration {
    let half = ceiling / 2;
    let nanos = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rng.u64(0..=nanos))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn unavailable() -> ProviderError {
        ProviderError::Unavailable {
            message: "reset".into(),
            retry_after: None,
        }
    }

    #[test]
    fn backoff_doubles_from_the_pace_up_to_its_cap() {
        let pace = Duration::from_millis(100);
        assert_eq!(backoff(pace, 1), Duration::from_millis(100));
        assert_eq!(backoff(pace, 2), Duration::from_millis(200));
        assert_eq!(backoff(pace, 4), Duration::from_millis(800));
        assert_eq!(backoff(pace, 40), MAX_READ_DELAY);
        assert_eq!(backoff(Duration::ZERO, 1), MIN_READ_DELAY);
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..200 {
            let delay = equal_jitter(Duration::from_millis(800), &mut rng);
            assert!(delay >= Duration::from_millis(400) && delay <= Duration::from_millis(800));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_reads_are_repeated_until_they_answer() {
        let reads = AtomicU32::new(0);
        let value = read_again(
            "test",
            "r1",
            "result",
            Some(Instant::now() + Duration::from_secs(60)),
            Duration::from_millis(100),
            || async {
                match reads.fetch_add(1, Ordering::SeqCst) {
                    0..=4 => Err(ReadError::from(unavailable())),
                    _ => Ok(7),
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(value, 7);
        assert_eq!(reads.load(Ordering::SeqCst), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_verdict_ends_the_reads_at_once() {
        let reads = AtomicU32::new(0);
        let failure = read_again(
            "test",
            "r1",
            "result",
            None,
            Duration::from_millis(100),
            || async {
                reads.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(ReadError::verdict(unavailable()))
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(
            failure,
            Failure::Judged(ProviderError::Unavailable { .. })
        ));
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_failing_reads() {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        let reads = AtomicU32::new(0);
        let failure = read_again(
            "test",
            "r1",
            "status",
            Some(deadline),
            Duration::from_millis(100),
            || async {
                reads.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(ReadError::from(unavailable()))
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(
            failure,
            Failure::Judged(ProviderError::DeadlineExceeded)
        ));
        assert!(Instant::now() < deadline);
        // 100 ms doubling to 5 s, half of each at least: a handful of reads,
        // not a busy loop.
        let reads = reads.load(Ordering::SeqCst);
        assert!((4..=10).contains(&reads), "{reads}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_deadline_reads_give_up_after_the_window_and_keep_the_request() {
        let start = Instant::now();
        let failure = read_again(
            "test",
            "r1",
            "status",
            None,
            Duration::from_millis(100),
            || async { Err::<(), _>(ReadError::from(unavailable())) },
        )
        .await
        .unwrap_err();
        assert!(matches!(failure, Failure::Unread(_)));
        assert!(start.elapsed() <= READ_WINDOW_WITHOUT_DEADLINE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_read_waits_its_hint() {
        let start = Instant::now();
        let reads = AtomicU32::new(0);
        read_again(
            "test",
            "r1",
            "status",
            None,
            Duration::from_millis(100),
            || async {
                if reads.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(ReadError::from(ProviderError::RateLimited {
                        message: "429".into(),
                        retry_after: Some(Duration::from_secs(3)),
                    }))
                } else {
                    Ok(())
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}

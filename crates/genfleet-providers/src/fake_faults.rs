//! The fault table the fakes can play, whatever their model: a fraction of
//! submits refused with 429 (and a Retry-After) or 503, a fraction of
//! submits the provider runs (and bills) whose answer is lost on the way
//! back, a fraction of status and result reads whose connection breaks
//! mid-body, a fraction of result bodies cut short, a fraction of output
//! downloads reset, cut short or answered as an expired URL, and an outage
//! window in which every API call answers 503; plus the counters a test
//! needs to tell how many times each job was rendered.
//!
//! Which calls fail is decided by a counter per knob, not a random draw:
//! with fraction `f`, call `n` (from 0) of that kind fails when
//! `floor((n + 1) f) > floor(n f)`. That is exactly `f` of the calls, spread
//! evenly (at 0.3, three in every ten, never two in a row), the same on
//! every run, and a client that simply tries again always gets through.
//!
//! Set the knobs with the fake's `set_faults` ([`Faults`]) and
//! `start_outage`; read the counters with its `fault_counts`
//! ([`FaultCounts`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody as _};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;

/// Fractions (0 to 1) of calls a fake answers with a fault. All zero by
/// default: no faults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Submits (fal's submit, Replicate's create, the one call of the
    /// synchronous providers) answered 429 with
    /// `Retry-After: retry_after_secs`, before anything is created (Vertex
    /// says it as RESOURCE_EXHAUSTED with a RetryInfo, Triton as its 503
    /// "Exceeds maximum queue size", which has no Retry-After).
    pub submit_rate_limited: f64,
    /// The `Retry-After` of those 429s, in whole seconds (0 is allowed).
    pub retry_after_secs: u64,
    /// Submits answered 503 in the provider's own infrastructure-failure
    /// shape, before anything is created.
    pub submit_unavailable: f64,
    /// Status and result reads (fal's status and result, Replicate's
    /// prediction polls) whose answer starts, then breaks off: the
    /// connection is dropped mid-body.
    pub read_reset: f64,
    /// Result reads (fal's result; a Replicate poll of a finished
    /// prediction) answered 200 with the JSON cut short.
    pub result_truncated: f64,
    /// Submits the provider accepts and runs (the request is created, the
    /// render starts and is billed) whose answer is lost: the connection
    /// drops in the middle of the 2xx answer, so the client never learns the
    /// request id (for the synchronous providers, never gets the output).
    /// The case that bills twice: no provider here takes an idempotency
    /// key, so a client that submits again pays for a second render.
    pub submit_answer_lost: f64,
    /// Status reads only (fal's status endpoint, Replicate's polls of a
    /// prediction still running) whose answer breaks off mid-body, so a
    /// test can break polls without touching result reads.
    pub status_reset: f64,
    /// Output downloads from the file host whose answer breaks off
    /// mid-body.
    pub download_reset: f64,
    /// Output downloads answered 200 with the whole file's
    /// `Content-Length`, then only the first half of the file before the
    /// connection closes: a transfer cut short.
    pub download_truncated: f64,
    /// Output downloads answered as the file host answers a URL that has
    /// expired (fal's and OpenAI's signed URLs: 403; Replicate's deleted
    /// files: 404): the file is gone, and only a new request makes a new
    /// one.
    pub download_expired: f64,
}

/// What a fake counted, for the assertion that submits equal jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Submits that created a request (each one is rendered, and billed);
    /// for the synchronous providers, calls answered 2xx.
    pub submits_accepted: u64,
    /// Submits answered 429 or 5xx: nothing was created.
    pub submits_refused: u64,
    /// Status reads (fal's status endpoint; Replicate's polls of a
    /// prediction still running), whatever they were answered.
    pub status_reads: u64,
    /// Result reads (fal's result endpoint; Replicate's polls of a
    /// finished prediction), whatever they were answered.
    pub result_reads: u64,
    /// Renders started: requests the provider began to work on. Every
    /// accepted submit starts one in these fakes, so this equals
    /// `submits_accepted`; it is counted apart so that a test says what it
    /// means.
    pub renders_started: u64,
    /// Accepted submits (so: renders started, and billed) whose answer was
    /// lost ([`Faults::submit_answer_lost`]); included in
    /// `submits_accepted` and `renders_started`.
    pub submit_answers_lost: u64,
    /// Status reads answered with a reset (not counting outages).
    pub status_reads_broken: u64,
    /// Result reads answered with a reset or a truncated body (not
    /// counting outages).
    pub result_reads_broken: u64,
    /// Downloads of output files the fake handed out, whatever they were
    /// answered.
    pub downloads: u64,
    /// Downloads reset or cut short.
    pub downloads_broken: u64,
    /// Downloads answered as an expired URL.
    pub downloads_expired: u64,
}

/// A fault to answer a submit with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubmitFault {
    /// 503, shaped as the provider's edge answers while down.
    Outage,
    /// 429 with this Retry-After, in seconds.
    RateLimited(u64),
    /// 503, shaped as the provider's own infrastructure failure.
    Unavailable,
}

/// A fault to answer a status or result read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFault {
    /// 503, shaped as the provider's edge answers while down.
    Outage,
    /// The answer breaks off mid-body.
    Reset,
    /// 200 with the JSON cut short.
    Truncated,
}

/// A fault to answer an output download with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DownloadFault {
    /// The file host answers as for an expired URL.
    Expired,
    /// The answer breaks off mid-body.
    Reset,
    /// The whole file's `Content-Length`, half the file, then the
    /// connection closes.
    Truncated,
}

/// One fake's knobs, pattern counters and counts.
#[derive(Default)]
pub(crate) struct FaultState {
    faults: Mutex<Faults>,
    outage_until: Mutex<Option<Instant>>,
    rate_limited: AtomicU64,
    unavailable: AtomicU64,
    reset: AtomicU64,
    truncated: AtomicU64,
    status_reset: AtomicU64,
    lost: AtomicU64,
    download_reset: AtomicU64,
    download_truncated: AtomicU64,
    download_expired: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    status_reads: AtomicU64,
    result_reads: AtomicU64,
    answers_lost: AtomicU64,
    status_broken: AtomicU64,
    result_broken: AtomicU64,
    downloads: AtomicU64,
    downloads_broken: AtomicU64,
    downloads_expired: AtomicU64,
}

impl FaultState {
    pub(crate) fn set(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(PoisonError::into_inner) = faults;
    }

    pub(crate) fn start_outage(&self, length: Duration) {
        *self
            .outage_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + length);
    }

    pub(crate) fn counts(&self) -> FaultCounts {
        let accepted = self.accepted.load(Ordering::Relaxed);
        FaultCounts {
            submits_accepted: accepted,
            submits_refused: self.refused.load(Ordering::Relaxed),
            status_reads: self.status_reads.load(Ordering::Relaxed),
            result_reads: self.result_reads.load(Ordering::Relaxed),
            renders_started: accepted,
            submit_answers_lost: self.answers_lost.load(Ordering::Relaxed),
            status_reads_broken: self.status_broken.load(Ordering::Relaxed),
            result_reads_broken: self.result_broken.load(Ordering::Relaxed),
            downloads: self.downloads.load(Ordering::Relaxed),
            downloads_broken: self.downloads_broken.load(Ordering::Relaxed),
            downloads_expired: self.downloads_expired.load(Ordering::Relaxed),
        }
    }

    fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn in_outage(&self) -> bool {
        self.outage_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Whether a call of an API route other than submit and the reads
    /// (a cancel) falls in the outage.
    pub(crate) fn outage(&self) -> bool {
        self.in_outage()
    }

    /// The fault this submit gets, if any. A submit that gets one is
    /// counted as refused; one that does not must be counted by the fake
    /// with [`accepted`](Self::accepted) or [`refused`](Self::refused).
    pub(crate) fn submit(&self) -> Option<SubmitFault> {
        let fault = if self.in_outage() {
            Some(SubmitFault::Outage)
        } else {
            let faults = self.faults();
            if hits(&self.rate_limited, faults.submit_rate_limited) {
                Some(SubmitFault::RateLimited(faults.retry_after_secs))
            } else if hits(&self.unavailable, faults.submit_unavailable) {
                Some(SubmitFault::Unavailable)
            } else {
                None
            }
        };
        if fault.is_some() {
            self.refused();
        }
        fault
    }

    /// A submit that created a request.
    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// A submit answered 429 or 5xx for another reason (a model that is
    /// down by design).
    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the answer of a synchronous provider's one call (its submit,
    /// render and result at once) by its status: 2xx rendered and
    /// accepted, 429 or 5xx refused, anything else neither.
    pub(crate) fn tally(&self, response: Response) -> Response {
        let status = response.status();
        if status.is_success() {
            self.accepted();
        } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            self.refused();
        }
        response
    }

    /// Whether the answer of a submit the fake has just accepted (and
    /// counted with [`accepted`](Self::accepted)) is to be lost; counts it
    /// if so. The request stays created and rendered: only its answer is
    /// broken, with [`lost_answer`] or [`settle`](Self::settle).
    pub(crate) fn answer_lost(&self) -> bool {
        let lost = hits(&self.lost, self.faults().submit_answer_lost);
        if lost {
            self.answers_lost.fetch_add(1, Ordering::Relaxed);
        }
        lost
    }

    /// [`tally`](Self::tally) for a synchronous provider's one call, and
    /// the loss of its answer: a 2xx answer (rendered, billed) picked by
    /// [`Faults::submit_answer_lost`] goes out as its status and half its
    /// body, then the connection drops. Answers whose length is not known
    /// (an endless body) are never picked.
    pub(crate) async fn settle(&self, response: Response) -> Response {
        let response = self.tally(response);
        if !response.status().is_success() || response.body().size_hint().exact().is_none() {
            return response;
        }
        if !self.answer_lost() {
            return response;
        }
        let (parts, body) = response.into_parts();
        // A full body in memory: collecting it cannot fail, but if it did
        // the answer would be lost all the same.
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let mut lost = lost_answer(parts.status, bytes);
        if let Some(kind) = parts.headers.get(header::CONTENT_TYPE) {
            lost.headers_mut()
                .insert(header::CONTENT_TYPE, kind.clone());
        }
        lost
    }

    /// Counts a status read and says which fault it gets, if any.
    pub(crate) fn status_read(&self) -> Option<ReadFault> {
        self.status_reads.fetch_add(1, Ordering::Relaxed);
        if self.in_outage() {
            return Some(ReadFault::Outage);
        }
        let faults = self.faults();
        let reset =
            hits(&self.status_reset, faults.status_reset) || hits(&self.reset, faults.read_reset);
        if reset {
            self.status_broken.fetch_add(1, Ordering::Relaxed);
        }
        reset.then_some(ReadFault::Reset)
    }

    /// Counts a result read and says which fault it gets, if any.
    pub(crate) fn result_read(&self) -> Option<ReadFault> {
        self.result_reads.fetch_add(1, Ordering::Relaxed);
        if self.in_outage() {
            return Some(ReadFault::Outage);
        }
        let faults = self.faults();
        let fault = if hits(&self.reset, faults.read_reset) {
            Some(ReadFault::Reset)
        } else if hits(&self.truncated, faults.result_truncated) {
            Some(ReadFault::Truncated)
        } else {
            None
        };
        if fault.is_some() {
            self.result_broken.fetch_add(1, Ordering::Relaxed);
        }
        fault
    }

    /// Counts a download of an output file the fake handed out and says
    /// which fault it gets, if any. The file host is not the API: an
    /// outage leaves it up.
    pub(crate) fn download(&self) -> Option<DownloadFault> {
        self.downloads.fetch_add(1, Ordering::Relaxed);
        let faults = self.faults();
        let fault = if hits(&self.download_expired, faults.download_expired) {
            Some(DownloadFault::Expired)
        } else if hits(&self.download_reset, faults.download_reset) {
            Some(DownloadFault::Reset)
        } else if hits(&self.download_truncated, faults.download_truncated) {
            Some(DownloadFault::Truncated)
        } else {
            None
        };
        match fault {
            Some(DownloadFault::Expired) => {
                self.downloads_expired.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) => {
                self.downloads_broken.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
        fault
    }
}

/// Whether the next call counted by `counter` is one of the `fraction` that
/// fail (see the module docs).
fn hits(counter: &AtomicU64, fraction: f64) -> bool {
    if fraction.is_nan() || fraction <= 0.0 {
        return false;
    }
    let fraction = fraction.min(1.0);
    let n = counter.fetch_add(1, Ordering::Relaxed) as f64;
    ((n + 1.0) * fraction).floor() > (n * fraction).floor()
}

/// 503 as an edge or load balancer answers while the service behind it is
/// down: plain text, no provider error body. Not a verdict on any request.
pub(crate) fn outage() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/plain")],
        "Service Unavailable",
    )
        .into_response()
}

/// 429 with `Retry-After: secs` and `body` as JSON.
pub(crate) fn rate_limited(secs: u64, body: serde_json::Value) -> Response {
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// `status` with the first half of `body`, then the connection dropped: the
/// stream fails after its first chunk, and the server aborts the response.
pub(crate) fn reset(status: StatusCode, body: Bytes) -> Response {
    let half = body.slice(..body.len() / 2);
    let first = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(half) });
    let broken = futures_util::stream::once(async {
        flushed().await;
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "fault: reset mid-body",
        ))
    });
    let mut response = Response::new(Body::from_stream(futures_util::StreamExt::chain(
        first, broken,
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A pause before a broken body breaks: hyper writes the head and the
/// chunks it has when the body has nothing more for now, so without it an
/// error (or an early end) right after the first chunk would drop the
/// connection before anything was sent, and the client would see a
/// connection failure instead of an answer that starts and breaks off.
async fn flushed() {
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
}

/// The answer of a submit that was accepted, lost on the way back:
/// `status` and the first half of `body`, then the connection drops, so
/// the client has neither the request id nor the output.
pub(crate) fn lost_answer(status: StatusCode, body: Bytes) -> Response {
    reset(status, body)
}

/// A download of `file` cut short: 200 with the whole file's
/// `Content-Length`, then only its first half before the connection
/// closes (the server cannot finish a body shorter than it announced).
pub(crate) fn cut_file(content_type: &'static str, file: Bytes) -> Response {
    let whole = file.len();
    let half = file.slice(..whole / 2);
    let first = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(half) });
    // Ends (short of the length announced) only once the half is out.
    let end = futures_util::stream::once(flushed()).filter_map(|()| async { None });
    let mut response = Response::new(Body::from_stream(futures_util::StreamExt::chain(
        first, end,
    )));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(whole));
    response
}

/// A download of `file` broken off mid-body (`Transfer-Encoding:
/// chunked`, half the file, then the connection drops).
pub(crate) fn reset_file(content_type: &'static str, file: Bytes) -> Response {
    let mut response = reset(StatusCode::OK, file);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// What a file host answers for a URL that has expired: `status` (403 for
/// a signed URL past its expiry, 404 for a file deleted) with a short
/// XML error body, as object stores answer.
pub(crate) fn expired(status: StatusCode) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/xml")],
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
    )
        .into_response()
}

/// `status` with the first half of `body` as a complete answer: valid
/// HTTP, truncated JSON.
pub(crate) fn truncated(status: StatusCode, body: &Bytes) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.slice(..body.len() / 2),
    )
        .into_response()
}

/// `status` with a body that never ends (in practice: `prefix`, then
/// filler up to 1 GiB, far past any limit a client sets), without a
/// Content-Length: a client must read it streaming and stop at its limit,
/// not buffer it whole.
pub(crate) fn endless(status: StatusCode, content_type: &'static str, prefix: String) -> Response {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 16 * 1024;
    let filler = Bytes::from(vec![b'a'; CHUNK]);
    let head =
        futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(prefix.into()) });
    let tail = futures_util::stream::iter(
        std::iter::repeat_n(filler, CHUNKS).map(Ok::<Bytes, std::io::Error>),
    );
    let mut response = Response::new(Body::from_stream(futures_util::StreamExt::chain(
        head, tail,
    )));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(fraction: f64, calls: usize) -> Vec<bool> {
        let counter = AtomicU64::new(0);
        (0..calls).map(|_| hits(&counter, fraction)).collect()
    }

    #[test]
    fn fractions_fail_exactly_that_share_spread_out() {
        let calls = pattern(0.3, 100);
        assert_eq!(calls.iter().filter(|hit| **hit).count(), 30);
        assert!(
            !calls.windows(2).any(|pair| pair[0] && pair[1]),
            "two failures in a row at 0.3"
        );
        assert_eq!(pattern(0.0, 10), vec![false; 10]);
        assert_eq!(pattern(1.0, 10), vec![true; 10]);
        assert_eq!(pattern(0.5, 4), vec![false, true, false, true]);
        assert_eq!(pattern(f64::NAN, 3), vec![false; 3]);
    }

    #[test]
    fn submit_faults_are_counted_as_refusals() {
        let state = FaultState::default();
        state.set(Faults {
            submit_rate_limited: 0.5,
            retry_after_secs: 2,
            ..Faults::default()
        });
        assert_eq!(state.submit(), None);
        assert_eq!(state.submit(), Some(SubmitFault::RateLimited(2)));
        state.start_outage(Duration::from_secs(60));
        assert_eq!(state.submit(), Some(SubmitFault::Outage));
        assert_eq!(state.result_read(), Some(ReadFault::Outage));
        assert_eq!(state.counts().submits_refused, 2);
        assert_eq!(state.counts().result_reads, 1);
    }

    #[test]
    fn lost_answers_status_resets_and_download_faults_are_counted() {
        let state = FaultState::default();
        state.set(Faults {
            submit_answer_lost: 0.5,
            status_reset: 0.5,
            download_expired: 1.0,
            ..Faults::default()
        });
        assert_eq!([state.answer_lost(), state.answer_lost()], [false, true]);
        assert_eq!(state.status_read(), None);
        assert_eq!(state.status_read(), Some(ReadFault::Reset));
        assert_eq!(state.result_read(), None, "status_reset spares results");
        assert_eq!(state.download(), Some(DownloadFault::Expired));
        state.set(Faults {
            download_reset: 0.5,
            download_truncated: 1.0,
            ..Faults::default()
        });
        // The reset knob's pattern first, then the truncated one's.
        assert_eq!(state.download(), Some(DownloadFault::Truncated));
        assert_eq!(state.download(), Some(DownloadFault::Reset));
        // An outage leaves the file host up.
        state.start_outage(Duration::from_secs(60));
        state.set(Faults::default());
        assert_eq!(state.download(), None);
        let counts = state.counts();
        assert_eq!(counts.submit_answers_lost, 1);
        assert_eq!(counts.status_reads_broken, 1);
        assert_eq!(counts.result_reads_broken, 0);
        assert_eq!(counts.downloads, 4);
        assert_eq!(counts.downloads_broken, 2);
        assert_eq!(counts.downloads_expired, 1);
    }
}

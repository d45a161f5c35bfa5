//! OAuth access tokens for Vertex AI: a [`TokenSource`] is a cache in front
//! of one origin of tokens.
//!
//! - A **file** holding a current access token, mounted and refreshed by a
//!   sidecar or a workload-identity agent. The file is stat'ed on each use
//!   and re-read when its modification time or length changes, and in any
//!   case at least every 60 s (a rewrite within the filesystem's timestamp
//!   granularity would otherwise go unseen). Surrounding whitespace is
//!   trimmed. A missing, unreadable or empty file is
//!   [`ProviderError::Unauthorized`] with a message that names the path,
//!   never the content.
//! - A **metadata-style endpoint** (`GET` with `Metadata-Flavor: Google`,
//!   answering `{access_token, expires_in, token_type}`), as the GCE/GKE
//!   metadata server serves. A token is kept until 60 s before it expires.
//!   Failures: 408/429/5xx and transport errors are
//!   [`ProviderError::Unavailable`], any other status
//!   [`ProviderError::Unauthorized`].
//! - A **fixed** token, for tests and development.
//!
//! Only one refresh runs at a time: callers that find no usable token queue
//! on one lock, and those that queued while a refresh ran take its outcome,
//! success or failure. So 2,000 jobs starting together make one token
//! request, and a failing endpoint is not asked 2,000 times in a row.
//!
//! A 401 from Vertex is reported back with [`TokenSource::rejected`]: it
//! drops the cached token so the next attempt refreshes, and says whether a
//! refresh can help. It cannot when the source is fixed, or when the token
//! was itself fetched to replace a refused one and Vertex has not accepted
//! it since ("a 401 right after a refresh"): that is a credentials problem
//! for an operator, not something a retry fixes.
//!
//! What this module does not do: sign JWTs or exchange service-account keys
//! (no key files on workers; the sidecar or metadata server owns them), or
//! log anything about a token but its generation number.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderValue;
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use crate::http::{self, CONTROL_BODY_LIMIT};
use crate::ProviderError;

/// A token read from a file is re-read at least this often, changed or not.
const FILE_REREAD_INTERVAL: Duration = Duration::from_secs(60);
/// An endpoint token is refreshed this long before it expires, so a request
/// sent with it does not reach Vertex just after it lapsed.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// Longest an endpoint token is kept, whatever `expires_in` says (Google's
/// tokens live an hour): a token endpoint answering `u64::MAX` cannot make
/// the cache keep a token forever, nor overflow an `Instant`.
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(24 * 3600);
/// A token file is a few hundred bytes; refuse to read a misplaced large file.
const TOKEN_FILE_LIMIT: u64 = 64 * 1024;
/// Upper bound on one token request; the job deadline may cut it shorter.
/// The metadata server answers in milliseconds when it is healthy.
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Vertex access tokens come from, behind a cache shared by clones.
///
/// `Debug` never prints a token.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Origin,
    cache: Cache,
}

enum Origin {
    /// The ready header, or why the token cannot be one.
    Fixed(Result<HeaderValue, String>),
    File(PathBuf),
    Endpoint {
        url: Url,
        client: reqwest::Client,
        timeout: Duration,
    },
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.origin {
            Origin::Fixed(_) => f
                .debug_struct("TokenSource::Fixed")
                .field("token", &"[redacted]")
                .finish(),
            Origin::File(path) => f
                .debug_struct("TokenSource::File")
                .field("path", path)
                .finish_non_exhaustive(),
            // The origin only: a URL may carry a query string.
            Origin::Endpoint { url, timeout, .. } => f
                .debug_struct("TokenSource::Endpoint")
                .field("origin", &url.origin().ascii_serialization())
                .field("timeout", timeout)
                .finish_non_exhaustive(),
        }
    }
}

/// A token ready to send, and the generation to report its fate under.
#[derive(Clone)]
pub(crate) struct AccessToken {
    /// `Bearer <token>`, marked sensitive.
    pub(crate) authorization: HeaderValue,
    pub(crate) generation: u64,
}

impl TokenSource {
    /// The GCE/GKE metadata server's token URL for the default service
    /// account.
    pub const GCE_METADATA_TOKEN_URL: &'static str =
        "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token";

    /// Always the same token: for tests and development. A 401 for it is
    /// [`ProviderError::Unauthorized`] at once, since nothing can refresh it.
    pub fn fixed(token: impl Into<String>) -> Self {
        let token = token.into();
        let header = bearer(token.trim()).ok_or_else(|| {
            "the fixed vertex access token is empty or holds characters not allowed in an http header"
                .to_owned()
        });
        Self::with_origin(Origin::Fixed(header))
    }

    /// The token in the file at `path`, kept current by someone else (a
    /// sidecar, a workload-identity agent).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self::with_origin(Origin::File(path.into()))
    }

    /// Tokens from a metadata-style endpoint such as
    /// [`GCE_METADATA_TOKEN_URL`](Self::GCE_METADATA_TOKEN_URL), asked
    /// through `client` (the process-wide one is fine: no credentials go to
    /// the endpoint) with a 10 s timeout per request.
    pub fn endpoint(url: Url, client: reqwest::Client) -> Self {
        Self::with_origin(Origin::Endpoint {
            url,
            client,
            timeout: TOKEN_REQUEST_TIMEOUT,
        })
    }

    /// [`endpoint`](Self::endpoint) with the GCE/GKE metadata server.
    pub fn gce_metadata(client: reqwest::Client) -> Self {
        let url = Url::parse(Self::GCE_METADATA_TOKEN_URL)
            .expect("the metadata token URL is a valid URL literal");
        Self::endpoint(url, client)
    }

    fn with_origin(origin: Origin) -> Self {
        Self {
            inner: Arc::new(Inner {
                origin,
                cache: Cache::default(),
            }),
        }
    }

    /// A usable token: the cached one, or a fresh one (one refresh at a
    /// time; see the module docs).
    ///
    /// # Errors
    ///
    /// The source's failure, classified (see the module docs);
    /// [`ProviderError::DeadlineExceeded`] when the deadline passes while
    /// waiting for a refresh.
    pub(crate) async fn token(
        &self,
        deadline: Option<Instant>,
    ) -> Result<AccessToken, ProviderError> {
        let cache = &self.inner.cache;
        match &self.inner.origin {
            Origin::Fixed(header) => {
                let authorization = header
                    .clone()
                    .map_err(|message| ProviderError::Unauthorized { message })?;
                Ok(AccessToken {
                    authorization,
                    generation: 0,
                })
            }
            Origin::File(path) => {
                // Stat'ed outside the refresh lock: a cheap check that most
                // calls pass without queueing.
                let stamp = FileStamp::of(path).await;
                let now = Instant::now();
                let usable = |cached: &Cached| {
                    stamp.is_some() && cached.stamp == stamp && now < cached.refresh_at
                };
                cache.get(deadline, usable, || read_token_file(path)).await
            }
            Origin::Endpoint {
                url,
                client,
                timeout,
            } => {
                let usable = |cached: &Cached| Instant::now() < cached.refresh_at;
                cache
                    .get(deadline, usable, || {
                        fetch_from_endpoint(client, url, *timeout, deadline)
                    })
                    .await
            }
        }
    }

    /// Vertex answered 401 to `generation`: drops it so the next
    /// [`token`](Self::token) refreshes. Returns whether a new attempt may
    /// succeed (see the module docs).
    pub(crate) fn rejected(&self, generation: u64) -> bool {
        match self.inner.origin {
            Origin::Fixed(_) => false,
            Origin::File(_) | Origin::Endpoint { .. } => self.inner.cache.rejected(generation),
        }
    }

    /// Vertex answered something other than 401 to `generation`: the token
    /// works, so a later 401 for it deserves a refresh again.
    pub(crate) fn accepted(&self, generation: u64) {
        self.inner.cache.accepted(generation);
    }
}

/// `Bearer <token>` as a sensitive header value, if the token can be one.
fn bearer(token: &str) -> Option<HeaderValue> {
    if token.is_empty() {
        return None;
    }
    http::credential_header(&format!("Bearer {token}"), "access token").ok()
}

/// What a file's token was read under: a change means a new token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    /// The file's current stamp; `None` when it cannot be stat'ed.
    async fn of(path: &Path) -> Option<FileStamp> {
        tokio::fs::metadata(path).await.ok().map(|meta| FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
        })
    }
}

/// One token from a source, before the cache numbers it.
pub(crate) struct Fetched {
    pub(crate) authorization: HeaderValue,
    /// When to fetch anew even if nothing else says so.
    pub(crate) refresh_at: Instant,
    pub(crate) stamp: Option<FileStamp>,
}

pub(crate) struct Cached {
    authorization: HeaderValue,
    generation: u64,
    refresh_at: Instant,
    stamp: Option<FileStamp>,
    /// Fetched to replace a token Vertex refused, and not accepted since.
    unproven: bool,
}

/// A copy of a refresh's failure, handed to the callers that waited on it.
/// `ProviderError` is not `Clone`; only the classes a source returns are
/// shared.
fn share(err: &ProviderError) -> Option<ProviderError> {
    Some(match err {
        ProviderError::Unavailable {
            message,
            retry_after,
        } => ProviderError::Unavailable {
            message: message.clone(),
            retry_after: *retry_after,
        },
        ProviderError::Unauthorized { message } => ProviderError::Unauthorized {
            message: message.clone(),
        },
        ProviderError::Malformed { message } => ProviderError::Malformed {
            message: message.clone(),
        },
        ProviderError::Rejected { message } => ProviderError::Rejected {
            message: message.clone(),
        },
        ProviderError::RateLimited {
            message,
            retry_after,
        } => ProviderError::RateLimited {
            message: message.clone(),
            retry_after: *retry_after,
        },
        // The fetcher's own deadline or disk, or not a source's error: each
        // waiter tries for itself.
        ProviderError::DeadlineExceeded
        | ProviderError::Unsupported { .. }
        | ProviderError::Deferred { .. }
        | ProviderError::Local { .. } => return None,
    })
}

/// The token cache with single-flight refresh, independent of where tokens
/// come from (so its timing can be tested on a paused clock).
#[derive(Default)]
pub(crate) struct Cache {
    state: Mutex<CacheState>,
    /// Held while a refresh runs; never held with `state`'s lock across an
    /// await.
    refresh: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct CacheState {
    current: Option<Cached>,
    /// Generations handed out so far.
    generations: u64,
    /// Refreshes finished (either way) so far.
    refreshes: u64,
    /// The last refresh's failure, when it failed.
    last_failure: Option<ProviderError>,
    /// Vertex refused the latest token and has accepted none since.
    refused: bool,
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, CacheState> {
        // Nothing in the state is left half-updated by a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn usable(&self, usable: &impl Fn(&Cached) -> bool) -> Option<AccessToken> {
        self.lock()
            .current
            .as_ref()
            .filter(|cached| usable(cached))
            .map(|cached| AccessToken {
                authorization: cached.authorization.clone(),
                generation: cached.generation,
            })
    }

    /// The cached token if `usable` says so, else the outcome of a refresh:
    /// ours, or the one that finished while we queued.
    pub(crate) async fn get<F, Fut>(
        &self,
        deadline: Option<Instant>,
        usable: impl Fn(&Cached) -> bool,
        fetch: F,
    ) -> Result<AccessToken, ProviderError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, ProviderError>>,
    {
        if let Some(token) = self.usable(&usable) {
            return Ok(token);
        }
        let seen = self.lock().refreshes;
        let _refreshing = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.refresh.lock())
                .await
                .map_err(|_| ProviderError::DeadlineExceeded)?,
            None => self.refresh.lock().await,
        };
        if let Some(token) = self.usable(&usable) {
            return Ok(token);
        }
        {
            let state = self.lock();
            if state.refreshes != seen {
                if let Some(shared) = state.last_failure.as_ref().and_then(share) {
                    return Err(shared);
                }
            }
        }
        // If this future is dropped here, the lock is released and the next
        // waiter refreshes: nothing is recorded for an abandoned refresh.
        let fetched = fetch().await;
        let mut state = self.lock();
        state.refreshes += 1;
        match fetched {
            Ok(fetched) => {
                state.generations += 1;
                let generation = state.generations;
                let unproven = state.refused;
                state.last_failure = None;
                state.current = Some(Cached {
                    authorization: fetched.authorization.clone(),
                    generation,
                    refresh_at: fetched.refresh_at,
                    stamp: fetched.stamp,
                    unproven,
                });
                tracing::debug!(generation, "fetched a vertex access token");
                Ok(AccessToken {
                    authorization: fetched.authorization,
                    generation,
                })
            }
            Err(err) => {
                state.last_failure = share(&err);
                Err(err)
            }
        }
    }

    /// See [`TokenSource::rejected`].
    pub(crate) fn rejected(&self, generation: u64) -> bool {
        let mut state = self.lock();
        match &state.current {
            Some(cached) if cached.generation == generation => {
                let may_help = !cached.unproven;
                state.current = None;
                state.refused = true;
                tracing::info!(
                    generation,
                    refresh_may_help = may_help,
                    "vertex refused an access token; dropped it"
                );
                may_help
            }
            // Already replaced (another job saw the 401 first) or dropped:
            // the next attempt gets a newer token.
            _ => true,
        }
    }

    /// See [`TokenSource::accepted`].
    pub(crate) fn accepted(&self, generation: u64) {
        let mut state = self.lock();
        if let Some(cached) = state.current.as_mut() {
            if cached.generation == generation && cached.unproven {
                cached.unproven = false;
                state.refused = false;
            }
        }
    }
}

async fn read_token_file(path: &Path) -> Result<Fetched, ProviderError> {
    let shown = path.display();
    let unauthorized = |detail: String| ProviderError::Unauthorized {
        message: format!("vertex token file {shown} {detail}"),
    };
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|err| unauthorized(format!("cannot be read: {err}")))?;
    if meta.len() > TOKEN_FILE_LIMIT {
        return Err(unauthorized(format!(
            "is {} bytes, expected at most {TOKEN_FILE_LIMIT}",
            meta.len()
        )));
    }
    let stamp = FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    };
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|err| unauthorized(format!("cannot be read: {err}")))?;
    let text =
        std::str::from_utf8(&bytes).map_err(|_| unauthorized("is not utf-8 text".to_owned()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(unauthorized(
            "is empty, expected an access token".to_owned(),
        ));
    }
    let authorization = bearer(token)
        .ok_or_else(|| unauthorized("holds characters not allowed in an http header".to_owned()))?;
    Ok(Fetched {
        authorization,
        refresh_at: Instant::now() + FILE_REREAD_INTERVAL,
        stamp: Some(stamp),
    })
}

/// The metadata server's answer.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
    #[serde(default)]
    token_type: Option<String>,
}

async fn fetch_from_endpoint(
    client: &reqwest::Client,
    url: &Url,
    timeout: Duration,
    deadline: Option<Instant>,
) -> Result<Fetched, ProviderError> {
    let builder = client.get(url.clone()).header("Metadata-Flavor", "Google");
    let response = http::send(builder, timeout, deadline)
        .await
        .map_err(in_token_request)?;
    let status = response.status();
    if !status.is_success() {
        let message = format!("token endpoint answered HTTP {}", status.as_u16());
        return Err(match status.as_u16() {
            408 | 429 | 500..=599 => ProviderError::Unavailable {
                message,
                retry_after: http::retry_after_header(response.headers()),
            },
            // A 4xx (no such service account, missing scope, a wrong URL):
            // asking again will not help.
            _ => ProviderError::Unauthorized { message },
        });
    }
    // serde's messages quote a value only where its type is wrong; the
    // token is a string where a string is expected, so it is never quoted.
    let answer: TokenAnswer = http::read_json(
        response,
        CONTROL_BODY_LIMIT,
        deadline,
        "token endpoint answer",
    )
    .await
    .map_err(in_token_request)?;
    if let Some(kind) = &answer.token_type {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(ProviderError::Malformed {
                message: format!(
                    "token endpoint answered token_type {:?}, expected \"Bearer\"",
                    http::truncate(kind, 32)
                ),
            });
        }
    }
    let authorization = bearer(answer.access_token.trim()).ok_or_else(|| {
        ProviderError::Malformed {
            message: "token endpoint answered an access_token that is empty or not fit for an http header"
                .to_owned(),
        }
    })?;
    Ok(Fetched {
        authorization,
        refresh_at: refresh_at(Instant::now(), Duration::from_secs(answer.expires_in)),
        stamp: None,
    })
}

/// When to refresh a token that expires in `expires_in` from `now`: 60 s
/// before it expires, or halfway through its life when that is 2 minutes or
/// less (a margin of 60 s would leave no time to use it). A life over
/// [`MAX_TOKEN_LIFE`] counts as that.
pub(crate) fn refresh_at(now: Instant, expires_in: Duration) -> Instant {
    let expires_in = expires_in.min(MAX_TOKEN_LIFE);
    let keep = if expires_in > EXPIRY_MARGIN * 2 {
        expires_in - EXPIRY_MARGIN
    } else {
        expires_in / 2
    };
    crate::hint::after(now, keep)
}

/// Marks a transport or body failure as the token request's, not Vertex's.
fn in_token_request(err: ProviderError) -> ProviderError {
    const PREFIX: &str = "token endpoint";
    let mark = |message: String| {
        if message.starts_with(PREFIX) {
            message
        } else {
            format!("{PREFIX}: {message}")
        }
    };
    match err {
        ProviderError::Unavailable {
            message,
            retry_after,
        } => ProviderError::Unavailable {
            message: mark(message),
            retry_after,
        },
        ProviderError::Malformed { message } => ProviderError::Malformed {
            message: mark(message),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn fetched(token: &str, life: Duration) -> Fetched {
        Fetched {
            authorization: bearer(token).unwrap(),
            refresh_at: refresh_at(Instant::now(), life),
            stamp: None,
        }
    }

    fn token_text(token: &AccessToken) -> String {
        token.authorization.to_str().unwrap().to_owned()
    }

    /// A fetch that counts calls, takes `hold` of (paused) time and hands out
    /// `token-N` valid for `life`.
    async fn counted(
        calls: &AtomicU32,
        hold: Duration,
        life: Duration,
    ) -> Result<Fetched, ProviderError> {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(hold).await;
        Ok(fetched(&format!("token-{n}"), life))
    }

    fn by_time(cached: &Cached) -> bool {
        Instant::now() < cached.refresh_at
    }

    #[test]
    fn refreshes_a_minute_before_expiry_or_halfway_for_short_lives() {
        let now = Instant::now();
        let check = |expires_in: u64, expected: u64| {
            assert_eq!(
                refresh_at(now, Duration::from_secs(expires_in)) - now,
                Duration::from_secs(expected),
                "{expires_in}"
            );
        };
        check(3599, 3539);
        check(121, 61);
        check(120, 60);
        check(60, 30);
        check(0, 0);
        // `expires_in: u64::MAX` used to overflow `Instant + Duration`.
        check(u64::MAX, 24 * 3600 - 60);
        check(86_400 * 365, 24 * 3600 - 60);
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_a_token_until_a_minute_before_expiry() {
        let cache = Cache::default();
        let calls = AtomicU32::new(0);
        let life = Duration::from_secs(3600);
        let get = || cache.get(None, by_time, || counted(&calls, Duration::ZERO, life));
        let first = get().await.unwrap();
        assert_eq!(token_text(&first), "Bearer token-1");
        tokio::time::advance(Duration::from_secs(3539)).await;
        assert_eq!(get().await.unwrap().generation, first.generation);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = get().await.unwrap();
        assert_eq!(token_text(&second), "Bearer token-2");
        assert_eq!(second.generation, first.generation + 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_refresh() {
        let cache = Arc::new(Cache::default());
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
            tasks.spawn(async move {
                let fetch = || counted(&calls, Duration::from_millis(300), Duration::from_secs(60));
                cache.get(None, by_time, fetch).await.map(|t| t.generation)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            assert_eq!(joined.unwrap().unwrap(), 1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_take_a_failed_refresh_instead_of_repeating_it() {
        let cache = Arc::new(Cache::default());
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
            tasks.spawn(async move {
                let calls = &calls;
                let fetch = move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err::<Fetched, _>(ProviderError::Unavailable {
                        message: "token endpoint answered HTTP 503".into(),
                        retry_after: Some(Duration::from_secs(2)),
                    })
                };
                cache.get(None, by_time, fetch).await.map(|_| ())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let err = joined.unwrap().unwrap_err();
            assert_eq!(err.retry_after(), Some(Duration::from_secs(2)), "{err}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A later caller, not queued behind that refresh, tries again.
        let again = cache
            .get(None, by_time, || {
                counted(&calls, Duration::ZERO, Duration::from_secs(600))
            })
            .await
            .unwrap();
        assert_eq!(again.generation, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_refresh_ends_at_the_deadline() {
        let cache = Arc::new(Cache::default());
        let slow = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                let fetch = || async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(fetched("late", Duration::from_secs(600)))
                };
                cache.get(None, by_time, fetch).await.map(|_| ())
            })
        };
        tokio::task::yield_now().await;
        let deadline = Instant::now() + Duration::from_secs(1);
        let calls = AtomicU32::new(0);
        let err = cache
            .get(Some(deadline), by_time, || {
                counted(&calls, Duration::ZERO, Duration::from_secs(600))
            })
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, ProviderError::DeadlineExceeded), "{err}");
        assert!(Instant::now() >= deadline);
        assert!(Instant::now() < deadline + Duration::from_secs(1));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        slow.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_drops_the_token_and_a_second_one_is_final() {
        let cache = Cache::default();
        let calls = AtomicU32::new(0);
        let life = Duration::from_secs(3600);
        let get = || cache.get(None, by_time, || counted(&calls, Duration::ZERO, life));

        let first = get().await.unwrap();
        assert!(cache.rejected(first.generation), "a refresh may help");
        // Other jobs' 401s for the same, already dropped token change nothing.
        assert!(cache.rejected(first.generation));
        let second = get().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(
            !cache.rejected(second.generation),
            "refused right after a refresh"
        );

        // Once Vertex accepts a token, a later refusal is worth a refresh again.
        let third = get().await.unwrap();
        cache.accepted(third.generation);
        assert!(cache.rejected(third.generation));
        let fourth = get().await.unwrap();
        assert_eq!(fourth.generation, 4);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_fixed_token_is_never_refreshed() {
        let source = TokenSource::fixed(" static-token \n");
        let token = source.token(None).await.unwrap();
        assert_eq!(token_text(&token), "Bearer static-token");
        assert!(token.authorization.is_sensitive());
        assert!(!source.rejected(token.generation));

        let err = TokenSource::fixed("bad\ntoken")
            .token(None)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, ProviderError::Unauthorized { .. }), "{err}");
        assert!(!err.to_string().contains("bad"), "{err}");
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "genfleet-vertex-{}-{name}-{}",
            std::process::id(),
            fastrand::u64(..)
        ))
    }

    fn write_with_mtime(path: &Path, text: &str, modified: SystemTime) {
        std::fs::write(path, text).unwrap();
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(modified).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_file_is_reread_when_it_changes_and_every_minute() {
        let path = temp_path("reread");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        write_with_mtime(&path, "token-a\n", t0);
        let source = TokenSource::file(&path);
        let token = source.token(None).await.unwrap();
        assert_eq!(token_text(&token), "Bearer token-a");
        assert!(token.authorization.is_sensitive());

        // Same length and mtime: unseen until the minute is up.
        write_with_mtime(&path, "token-b\n", t0);
        assert_eq!(
            token_text(&source.token(None).await.unwrap()),
            "Bearer token-a"
        );
        tokio::time::advance(FILE_REREAD_INTERVAL).await;
        let reread = source.token(None).await.unwrap();
        assert_eq!(token_text(&reread), "Bearer token-b");
        assert_eq!(reread.generation, token.generation + 1);

        // A new mtime is seen at once.
        write_with_mtime(&path, "token-c", t0 + Duration::from_secs(1));
        assert_eq!(
            token_text(&source.token(None).await.unwrap()),
            "Bearer token-c"
        );

        // A refusal forces a re-read even if nothing changed.
        let current = source.token(None).await.unwrap();
        assert!(source.rejected(current.generation));
        let after = source.token(None).await.unwrap();
        assert_eq!(after.generation, current.generation + 1);
        assert_eq!(token_text(&after), "Bearer token-c");
        assert!(!source.rejected(after.generation));
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn a_missing_or_empty_token_file_is_unauthorized_naming_the_path() {
        let path = temp_path("missing");
        let err = TokenSource::file(&path)
            .token(None)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, ProviderError::Unauthorized { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );

        std::fs::write(&path, " \n\t").unwrap();
        let err = TokenSource::file(&path)
            .token(None)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("is empty, expected an access token"),
            "{err}"
        );

        std::fs::write(&path, "SECRET\nTOKEN").unwrap();
        let err = TokenSource::file(&path)
            .token(None)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("not allowed"), "{err}");
        assert!(!err.to_string().contains("SECRET"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn debug_shows_no_token() {
        let text = format!("{:?}", TokenSource::fixed("SECRET-TOKEN"));
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
        let text = format!("{:?}", TokenSource::file("/run/secrets/vertex-token"));
        assert!(text.contains("/run/secrets/vertex-token"), "{text}");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = Url::parse("http://metadata.example:8080/token?audience=x").unwrap();
        let text = format!("{:?}", TokenSource::endpoint(url, reqwest::Client::new()));
        assert!(text.contains("http://metadata.example:8080"), "{text}");
        assert!(!text.contains("audience"), "{text}");
    }
}

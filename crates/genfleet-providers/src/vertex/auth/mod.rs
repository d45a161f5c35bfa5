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
//!
//! This file holds [`TokenSource`] and the token types; `cache` is the
//! single-flight cache, `origin` reads the token file and asks the
//! metadata-style endpoint.

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

mod cache;
mod origin;
#[cfg(test)]
mod tests;

use self::cache::*;
use self::origin::*;

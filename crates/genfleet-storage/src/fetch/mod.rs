//! Fetching by URL behind an SSRF guard: job inputs given as `https://`
//! URLs (typically presigned GETs into a product's own bucket) and, through
//! the worker, every output URL a provider hands back.
//!
//! Every hop (the URL and each redirect) is checked before anything
//! connects:
//! - the scheme is `https` (`http` only for an allow-listed host, so an
//!   https→http downgrade is refused unless the new host is allowed), and
//!   the URL carries no `user:password@`;
//! - the host is resolved here, by the [`Resolve`] given (the system's by
//!   default), and refused if *any* of its addresses is not public (see
//!   [`guard::refusal`]), unless the host is allow-listed; IP-literal hosts
//!   are judged the same way;
//! - the checked addresses pass the [`AddressGate`] (open in production;
//!   tests install one that refuses anything but loopback);
//! - the request then goes out on a client pinned to exactly those
//!   addresses (`resolve_to_addrs`) whose own resolver refuses every name,
//!   with redirects, proxies and the `Referer` header off: a name cannot be
//!   resolved a second time to something else (no DNS-rebinding window), and
//!   nothing but the addresses checked can be connected to.
//!
//! No cookies are kept and no credentials are sent. Errors name at most the
//! host: the rest of a presigned URL (its query) is a credential.

pub mod guard;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;
use url::{Host, Url};

use crate::StorageError;

pub use guard::{refusal, Refusal};

/// Longest any fetch may take, whatever the configuration says.
pub const MAX_FETCH_TIME: Duration = Duration::from_secs(24 * 3600);

/// How URLs are fetched.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Hosts exempt from the address check and allowed over plain `http`:
    /// `host`, `host:port`, an IP address, `ip:port` or `[v6]:port`. Names
    /// match exactly (case and a trailing dot aside; no wildcards, no
    /// subdomains), IP addresses by value, and an entry without a port
    /// matches every port. The name an entry allows is matched as written
    /// in the URL, before resolving: allowing `files.internal` does not
    /// allow its addresses written as literals, nor the other way round.
    pub allow: Vec<String>,
    /// Longest a name resolution or a TCP (and TLS) connect may take.
    pub connect_timeout: Duration,
    /// Longest a whole fetch may take, redirects and body included.
    pub timeout: Duration,
    /// Redirects followed at most; one more is an error.
    pub max_redirects: u32,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            allow: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            max_redirects: 5,
        }
    }
}

/// Why a fetch failed. Messages name at most the host.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL itself is unusable: scheme, credentials in it, no host, a
    /// redirect to something that is not a URL.
    #[error("{0}")]
    Invalid(String),
    /// The guard refused the destination; nothing was connected to.
    #[error("{0}")]
    Refused(String),
    /// The final answer was not a success (only from [`Fetcher::fetch_bytes`]).
    #[error("URL host {host} answered HTTP {status}")]
    Status { host: String, status: u16 },
    #[error("URL redirected more than {0} times")]
    TooManyRedirects(u32),
    /// The body passed `limit` (from its Content-Length, or while reading:
    /// `size` is then what had arrived when reading stopped).
    #[error("body is at least {size} bytes, above the {limit} byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("URL host {0} did not answer in time")]
    Timeout(String),
    /// Resolving, connecting or reading failed: worth trying again later.
    #[error("{0}")]
    Unavailable(String),
}

/// A name resolver: tests answer with the addresses they need; production
/// uses [`SystemResolver`].
pub trait Resolve: Send + Sync {
    /// Every address of `host`, with `port` set.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// The operating system's resolver (`getaddrinfo`, on tokio's blocking pool).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// The last look at the addresses of a hop, after the guard and right
/// before a client pinned to them is built: the only addresses any
/// connection can go to. Production admits everything ([`OpenGate`]);
/// tests install [`LoopbackOnlyGate`] so that even a broken guard could
/// never make a test connect anywhere but this machine.
pub trait AddressGate: Send + Sync {
    /// `Err(reason)` stops the hop before any connection.
    fn admit(&self, addresses: &[SocketAddr]) -> Result<(), String>;
}

/// Admits every address the guard let through.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenGate;

impl AddressGate for OpenGate {
    fn admit(&self, _: &[SocketAddr]) -> Result<(), String> {
        Ok(())
    }
}

/// For tests: records every address a hop would connect to and refuses
/// anything that is not loopback.
#[derive(Debug, Default)]
pub struct LoopbackOnlyGate {
    seen: std::sync::Mutex<Vec<SocketAddr>>,
}

impl LoopbackOnlyGate {
    /// Every address admitted or refused so far, in order.
    pub fn seen(&self) -> Vec<SocketAddr> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl AddressGate for LoopbackOnlyGate {
    fn admit(&self, addresses: &[SocketAddr]) -> Result<(), String> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(addresses);
        match addresses.iter().find(|a| !a.ip().is_loopback()) {
            Some(a) => Err(format!("test gate: {} is not a loopback address", a.ip())),
            None => Ok(()),
        }
    }
}

/// One allow-list entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Allowed {
    host: AllowedHost,
    port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum AllowedHost {
    Name(String),
    Ip(IpAddr),
}

/// Parses `fetch_allow` entries; see [`FetchConfig::allow`].
fn parse_allow(entries: &[String]) -> Result<Vec<Allowed>, String> {
    entries.iter().map(|entry| parse_allowed(entry)).collect()
}

fn parse_allowed(entry: &str) -> Result<Allowed, String> {
    let bad =
        || format!("allow-list entry {entry:?} is not host, host:port, ip, ip:port or [ipv6]:port");
    let entry = entry.trim();
    if entry.is_empty() {
        return Err(bad());
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(Allowed {
            host: AllowedHost::Ip(ip),
            port: None,
        });
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(bad)?,
            ),
        };
        return Ok(Allowed {
            host: AllowedHost::Ip(IpAddr::V6(ip)),
            port,
        });
    } else {
        match entry.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse::<u16>().map_err(|_| bad())?)),
            None => (entry, None),
        }
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Allowed {
            host: AllowedHost::Ip(ip),
            port,
        });
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    if !valid {
        return Err(bad());
    }
    Ok(Allowed {
        host: AllowedHost::Name(name),
        port,
    })
}

fn is_allowed(allow: &[Allowed], host: &Host<&str>, port: u16) -> bool {
    allow.iter().any(|entry| {
        let host_matches = match (&entry.host, host) {
            (AllowedHost::Name(name), Host::Domain(domain)) => {
                name.as_str() == domain.trim_end_matches('.').to_ascii_lowercase()
            }
            (AllowedHost::Ip(ip), Host::Ipv4(v4)) => *ip == IpAddr::V4(*v4),
            (AllowedHost::Ip(ip), Host::Ipv6(v6)) => *ip == IpAddr::V6(*v6),
            _ => false,
        };
        host_matches && entry.port.is_none_or(|p| p == port)
    })
}

/// Whether `uri` is an `http(s)://` URL, the inputs [`Fetcher`] reads.
pub(crate) fn is_url(uri: &str) -> bool {
    let scheme = uri.split_once("://").map(|(s, _)| s);
    scheme.is_some_and(|s| s.eq_ignore_ascii_case("https") || s.eq_ignore_ascii_case("http"))
}

/// Fetches URLs behind the SSRF guard (see the module's documentation).
/// Cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    allow: Arc<Vec<Allowed>>,
    resolver: Arc<dyn Resolve>,
    gate: Arc<dyn AddressGate>,
    /// Built once: loading the system's root certificates for every hop's
    /// client would read them from disk each time.
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    timeout: Duration,
    max_redirects: u32,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("allow", &self.allow)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("max_redirects", &self.max_redirects)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher with the system's resolver and certificate roots.
    ///
    /// # Errors
    /// [`StorageError::InvalidConfig`] for an allow-list entry that does not
    /// parse, or when the TLS configuration cannot be built.
    pub fn new(config: FetchConfig) -> Result<Fetcher, StorageError> {
        let allow = parse_allow(&config.allow).map_err(StorageError::InvalidConfig)?;
        let tls = tls_config().map_err(StorageError::InvalidConfig)?;
        Ok(Fetcher {
            allow: Arc::new(allow),
            resolver: Arc::new(SystemResolver),
            gate: Arc::new(OpenGate),
            tls,
            connect_timeout: config.connect_timeout,
            timeout: config.timeout,
            max_redirects: config.max_redirects,
        })
    }

    /// Resolves names with `resolver` instead of the system's.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolve>) -> Fetcher {
        self.resolver = resolver;
        self
    }

    /// Passes every hop's checked addresses through `gate` last.
    pub fn with_gate(mut self, gate: Arc<dyn AddressGate>) -> Fetcher {
        self.gate = gate;
        self
    }

    /// Trusts these root certificates instead of the system's (tests with a
    /// loopback TLS server).
    pub fn with_tls(mut self, tls: rustls::ClientConfig) -> Fetcher {
        self.tls = tls;
        self
    }

    /// GETs `url`, following up to `max_redirects` redirects (each hop
    /// checked like the first), within `budget` and the configured timeout,
    /// whichever is shorter. Returns the first answer that is not a
    /// redirect, whatever its status; the body is still to be read, within
    /// the same time bound.
    ///
    /// # Errors
    /// [`FetchError::Invalid`], [`FetchError::Refused`],
    /// [`FetchError::TooManyRedirects`], [`FetchError::Timeout`],
    /// [`FetchError::Unavailable`].
    pub async fn get(&self, url: &str, budget: Duration) -> Result<reqwest::Response, FetchError> {
        // Bounded so that no configured value can overflow the clock.
        let deadline = Instant::now() + budget.min(self.timeout).min(MAX_FETCH_TIME);
        let mut url =
            Url::parse(url).map_err(|_| FetchError::Invalid("URL is not a valid URL".into()))?;
        for _ in 0..=self.max_redirects {
            let host = url.host_str().unwrap_or_default().to_owned();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FetchError::Timeout(host));
            }
            let client = tokio::time::timeout(left, self.client_for(&url))
                .await
                .map_err(|_| FetchError::Timeout(host.clone()))??;
            let response = client
                .get(url.clone())
                .timeout(left)
                .send()
                .await
                .map_err(|e| transport(&e, &host))?;
            if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(response);
            }
            let Some(location) = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
            else {
                return Ok(response);
            };
            let next = url.join(location).map_err(|_| {
                FetchError::Invalid(format!(
                    "a redirect from URL host {host} is not to a valid URL"
                ))
            })?;
            if url.scheme() == "https" && next.scheme() != "https" && !self.allows(&next) {
                return Err(FetchError::Refused(format!(
                    "a redirect from https:// to {}:// (host {}) is refused",
                    next.scheme(),
                    next.host_str().unwrap_or_default()
                )));
            }
            url = next;
        }
        Err(FetchError::TooManyRedirects(self.max_redirects))
    }

    /// [`Fetcher::get`] within the configured timeout, then the body of a
    /// 2xx answer, refused before reading when its Content-Length is above
    /// `max_bytes` and cut off as soon as more than `max_bytes` have
    /// arrived (no more than that is ever kept).
    ///
    /// # Errors
    /// As [`Fetcher::get`], plus [`FetchError::Status`] and
    /// [`FetchError::TooLarge`].
    pub async fn fetch_bytes(&self, url: &str, max_bytes: u64) -> Result<Bytes, FetchError> {
        let mut response = self.get(url, self.timeout).await?;
        let host = response.url().host_str().unwrap_or_default().to_owned();
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                host,
                status: status.as_u16(),
            });
        }
        if let Some(size) = response.content_length().filter(|len| *len > max_bytes) {
            return Err(FetchError::TooLarge {
                size,
                limit: max_bytes,
            });
        }
        // Sized by the answer's word only up to a bound: it may lie.
        let hint = response
            .content_length()
            .unwrap_or(0)
            .min(max_bytes)
            .min(8 << 20);
        let mut body = BytesMut::with_capacity(usize::try_from(hint).unwrap_or(0));
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e, &host))? {
            let size = body.len() as u64 + chunk.len() as u64;
            if size > max_bytes {
                return Err(FetchError::TooLarge {
                    size,
                    limit: max_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    fn allows(&self, url: &Url) -> bool {
        match (url.host(), url.port_or_known_default()) {
            (Some(host), Some(port)) => is_allowed(&self.allow, &host, port),
            _ => false,
        }
    }

    /// Checks one hop and builds the client that can reach only the
    /// addresses checked.
    async fn client_for(&self, url: &Url) -> Result<reqwest::Client, FetchError> {
        let scheme = url.scheme();
        if scheme != "https" && scheme != "http" {
            return Err(FetchError::Invalid(format!(
                "URL scheme {scheme} is not fetched, only https://"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::Invalid(
                "URL carries credentials (user:password@), which are never sent".into(),
            ));
        }
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return Err(FetchError::Invalid("URL has no host".into()));
        };
        let shown = url.host_str().unwrap_or_default();
        let allowed = is_allowed(&self.allow, &host, port);
        if scheme == "http" && !allowed {
            return Err(FetchError::Refused(format!(
                "http:// URL (host {shown}) is refused: only https:// is fetched from hosts that are not allow-listed"
            )));
        }
        let (addresses, literal) = match host {
            Host::Ipv4(ip) => (vec![SocketAddr::new(IpAddr::V4(ip), port)], true),
            Host::Ipv6(ip) => (vec![SocketAddr::new(IpAddr::V6(ip), port)], true),
            Host::Domain(name) => {
                let resolved =
                    tokio::time::timeout(self.connect_timeout, self.resolver.resolve(name, port))
                        .await
                        .map_err(|_| FetchError::Timeout(shown.to_owned()))?
                        .map_err(|_| {
                            FetchError::Unavailable(format!(
                                "URL host {shown} could not be resolved"
                            ))
                        })?;
                (resolved, false)
            }
        };
        if addresses.is_empty() {
            return Err(FetchError::Unavailable(format!(
                "URL host {shown} has no addresses"
            )));
        }
        if !allowed {
            for address in &addresses {
                if let Some(refused) = guard::refusal(address.ip()) {
                    let verb = if literal { "is" } else { "resolves to" };
                    return Err(FetchError::Refused(format!(
                        "URL host {shown} {verb} {refused}"
                    )));
                }
            }
        }
        self.gate.admit(&addresses).map_err(FetchError::Refused)?;
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(self.tls.clone())
            .http1_only()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .referer(false)
            .connect_timeout(self.connect_timeout)
            .pool_max_idle_per_host(0)
            .dns_resolver(Arc::new(NoResolve));
        if let Host::Domain(name) = host {
            builder = builder.resolve_to_addrs(name, &addresses);
        }
        builder.build().map_err(|e| {
            FetchError::Unavailable(format!(
                "HTTP client for URL host {shown} could not be built: {}",
                e.without_url()
            ))
        })
    }
}

/// The resolver of every hop's client: its one name is pinned with
/// `resolve_to_addrs`, and nothing else may be resolved.
struct NoResolve;

impl reqwest::dns::Resolve for NoResolve {
    fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            Err::<reqwest::dns::Addrs, _>("only the addresses checked by the guard are used".into())
        })
    }
}

/// rustls on ring with the platform's roots, HTTP/1.1 only.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS for URL fetches: {e}"))?
        .with_platform_verifier()
        .map_err(|e| format!("TLS roots for URL fetches: {e}"))?
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A transport failure, named by the host only (reqwest's own message
/// would carry the URL).
fn transport(error: &reqwest::Error, host: &str) -> FetchError {
    if error.is_timeout() {
        return FetchError::Timeout(host.to_owned());
    }
    let what = if error.is_connect() {
        "could not be connected to"
    } else if error.is_body() || error.is_decode() {
        "broke off while sending the body"
    } else {
        "failed to answer"
    };
    FetchError::Unavailable(format!("URL host {host} {what}"))
}

/// An `http(s)://` input: read through `fetcher`, when this store has one.
pub(crate) async fn fetch_input(
    fetcher: Option<&Fetcher>,
    uri: &str,
    max_bytes: u64,
) -> Result<Bytes, StorageError> {
    let fetcher = fetcher.ok_or_else(not_enabled)?;
    fetcher
        .fetch_bytes(uri, max_bytes)
        .await
        .map_err(|e| input_error(e, uri))
}

/// Deleting an `http(s)://` input deletes nothing: the product owns the
/// object behind its presigned URL (a GET URL cannot delete it anyway) and
/// deletes it itself.
pub(crate) fn delete_input(fetcher: Option<&Fetcher>) -> Result<(), StorageError> {
    fetcher.map(|_| ()).ok_or_else(not_enabled)
}

fn not_enabled() -> StorageError {
    StorageError::InvalidUri("http(s):// inputs are not enabled on this worker".into())
}

/// The store's error classes for a failed input fetch: the job's fault for
/// a refused, malformed, missing or oversized input; a retry for a host
/// that is down or slow.
fn input_error(error: FetchError, uri: &str) -> StorageError {
    match error {
        FetchError::Invalid(m) => StorageError::InvalidUri(format!("input {m}")),
        FetchError::Refused(m) => StorageError::Forbidden(format!("input {m}")),
        FetchError::TooManyRedirects(_) => StorageError::InvalidUri(format!("input {error}")),
        // An expired or revoked presigned URL answers 403 (S3) or 401.
        FetchError::Status {
            status: 401 | 403 | 404 | 410,
            ..
        } => StorageError::NotFound(uri.to_owned()),
        FetchError::Status {
            status: 408 | 429 | 500..=599,
            ..
        } => StorageError::Unavailable(format!("input {error}")),
        FetchError::Status { .. } => StorageError::InvalidUri(format!("input {error}")),
        FetchError::TooLarge { size, limit } => StorageError::TooLarge {
            uri: uri.to_owned(),
            size,
            limit,
        },
        FetchError::Timeout(_) | FetchError::Unavailable(_) => {
            StorageError::Unavailable(format!("input {error}"))
        }
    }
}

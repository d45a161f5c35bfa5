//! Object storage for job inputs and outputs.
//!
//! Owns: turning an input URI into bytes (bounded, inside the configured
//! store), writing outputs under tenant-scoped keys
//! (`<org>/<workspace>/<job_id>/<name>`), deleting sources, and signing
//! time-limited URLs. Knows nothing of jobs, credits or images: callers pass
//! ids that the contract already validated.
//!
//! The store is an `object_store::ObjectStore`: the local filesystem
//! ([`Store::open_local`]: tests, `genfleet batch`, single-node installs) or
//! any S3-protocol service ([`Store::open_s3`]: a fleet whose workers share
//! one bucket). Everything above the constructors is the same code for both.
#![forbid(unsafe_code)]

pub mod fetch;
mod file_input;
mod forget;
mod private_fs;
mod retention;
mod s3;
#[cfg(test)]
mod s3_tests;
pub mod serve;
mod signing;
mod tenancy;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256};

use file_input::{file_input_root, read_file};

pub use forget::SubjectPrefixes;
pub use private_fs::{create_private_dir_all, DIR_MODE, FILE_MODE};
pub use retention::{PurgedObjects, StoredEntry};
pub use s3::{S3Credentials, S3StoreConfig};
pub use signing::{
    is_valid_key_id, Clock, Keyring, KeyringError, Refusal, UrlSigner, DEFAULT_KEY_ID,
    MAX_SIGNED_URL_TTL,
};
pub use tenancy::{InputPolicy, TenantScope, DEFAULT_INPUT_PREFIXES};

/// Where inputs and outputs live.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory that backs the local store; created if missing.
    pub root: PathBuf,
    /// Bucket name under which the local store answers `s3://<bucket>/<key>`.
    pub bucket: String,
    /// Which keys a tenant's job may read and delete, and where `file://`
    /// inputs may come from.
    pub inputs: InputPolicy,
}

/// One stored output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    /// `s3://<bucket>/<key>`.
    pub uri: String,
    pub key: String,
    pub size: u64,
    /// Lower-case hex sha256 of the stored bytes.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URI is malformed or points outside the store: the job's fault.
    #[error("{0}")]
    InvalidUri(String),
    /// The URI is well formed but not the job's tenant's to read or delete:
    /// the job's fault. The message names the rule, never the key.
    #[error("{0}")]
    Forbidden(String),
    /// The storage configuration is unusable: the operator's fault.
    #[error("storage configuration: {0}")]
    InvalidConfig(String),
    /// The object does not exist. The URI is kept for the caller; the
    /// message never repeats it (it may be a signed URL).
    #[error("input does not exist")]
    NotFound(String),
    #[error("input is {size} bytes, above the {limit} byte limit")]
    TooLarge { uri: String, size: u64, limit: u64 },
    /// The store itself failed: retryable.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
}

impl StorageError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Unavailable(_))
    }
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// The bucket `s3://` URIs must name.
    bucket: String,
    inputs: InputPolicy,
    /// The canonical `file://` input root, when `file://` inputs are on.
    file_root: Option<PathBuf>,
    /// The canonical folder behind a local store; `None` on S3.
    local_root: Option<PathBuf>,
    /// Presigns GET URLs on S3 (SigV4 with the store's own credentials).
    presigner: Option<Arc<dyn object_store::signer::Signer>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("bucket", &self.bucket)
            .field("backend", &self.inner.to_string())
            .field("inputs", &self.inputs)
            .finish()
    }
}

impl Store {
    /// Opens (and creates) a local filesystem store.
    ///
    /// # Errors
    /// The root cannot be created or resolved.
    pub fn open_local(config: StoreConfig) -> Result<Store, StorageError> {
        // A missing root is made private (0700); see `private_fs`.
        create_private_dir_all(&config.root).map_err(|e| {
            StorageError::Unavailable(format!("cannot create {}: {e}", config.root.display()))
        })?;
        let root = config.root.canonicalize().map_err(|e| {
            StorageError::Unavailable(format!("cannot resolve {}: {e}", config.root.display()))
        })?;
        let fs = private_fs::PrivateLocalFs::new(&root)
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        Ok(Store {
            inner: Arc::new(fs),
            file_root: file_input_root(&config.inputs)?,
            bucket: config.bucket,
            inputs: config.inputs,
            local_root: Some(root),
            presigner: None,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The folder behind a local store (what a file server serves); `None`
    /// for S3.
    pub fn local_root(&self) -> Option<&FsPath> {
        self.local_root.as_deref()
    }

    /// Whether outputs are linked by the store's own presigned URLs
    /// ([`Store::presign_get`]) rather than by a [`UrlSigner`] in front of
    /// a file server.
    pub fn presigns(&self) -> bool {
        self.presigner.is_some()
    }

    /// A presigned GET URL for one of the store's objects, valid for
    /// `ttl`, with its expiry (Unix seconds); `Ok(None)` on a store that
    /// cannot presign (local: see [`UrlSigner`]). The URL is a credential:
    /// callers never log it.
    ///
    /// # Errors
    /// A key that is not a valid object key, or signing failed (e.g. no
    /// credentials could be loaded).
    pub async fn presign_get(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<(String, u64)>, StorageError> {
        let Some(presigner) = &self.presigner else {
            return Ok(None);
        };
        let path = Path::parse(key).map_err(|e| StorageError::InvalidUri(e.to_string()))?;
        let expires = unix_now().saturating_add(ttl.as_secs());
        let url = presigner
            .signed_url(object_store::signer::Method::GET, &path, ttl)
            .await
            .map_err(|e| StorageError::Unavailable(format!("presigning failed: {e}")))?;
        Ok(Some((url.to_string(), expires)))
    }

    /// The scope of one tenant's job (see [`InputPolicy::scope`]).
    ///
    /// # Errors
    /// [`StorageError::Forbidden`] for a reserved tenant name.
    pub fn scope(&self, org: &str, workspace: &str) -> Result<TenantScope, StorageError> {
        self.inputs.scope(org, workspace)
    }

    /// Reads a job's input, refusing anything above `max_bytes` before
    /// reading it and anything outside the tenant's `scope`.
    ///
    /// Accepted URIs: `s3://<bucket>/<key>` for this store's bucket with the
    /// key under one of the tenant's prefixes, and `file:///<path>` inside
    /// the configured file input root (symlinks and `..` resolved first, so
    /// neither escapes it) whose path below the root lies under one of the
    /// tenant's prefixes; and `https://` URLs (`http://` for allow-listed
    /// hosts) when the input policy has a URL fetcher
    /// ([`InputPolicy::with_url_fetcher`]), read behind its SSRF guard. The
    /// tenant's prefixes cannot apply to a URL: whoever holds a presigned
    /// URL may read what it names.
    ///
    /// # Errors
    /// [`StorageError::InvalidUri`], [`StorageError::Forbidden`],
    /// [`StorageError::NotFound`], [`StorageError::TooLarge`], or
    /// [`StorageError::Unavailable`].
    pub async fn fetch_input(
        &self,
        scope: &TenantScope,
        uri: &str,
        max_bytes: u64,
    ) -> Result<Bytes, StorageError> {
        if fetch::is_url(uri) {
            return fetch::fetch_input(self.inputs.url_fetcher(), uri, max_bytes).await;
        }
        match self.resolve_input(scope, uri).await? {
            Input::Object(path) => self.read_object(&path, uri, max_bytes).await,
            Input::File(real) => read_file(&real, uri, max_bytes).await,
        }
    }

    /// Deletes a job's input (`delete_sources_after`) under the same rule
    /// as [`Store::fetch_input`]; deleting one that is already gone
    /// succeeds. An `http(s)://` input is not deleted: the product owns
    /// the object behind its URL and deletes it itself.
    ///
    /// # Errors
    /// As [`Store::fetch_input`], without `TooLarge`.
    pub async fn delete_input(&self, scope: &TenantScope, uri: &str) -> Result<(), StorageError> {
        if fetch::is_url(uri) {
            return fetch::delete_input(self.inputs.url_fetcher());
        }
        match self.resolve_input(scope, uri).await {
            Ok(Input::Object(path)) => self.delete_object(&path).await,
            Ok(Input::File(real)) => match tokio::fs::remove_file(&real).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StorageError::Unavailable(e.to_string())),
            },
            // A file that is gone cannot be resolved; gone is what we want.
            Err(StorageError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads one of the store's own objects (an output), refusing anything
    /// above `max_bytes`. No tenant check: job inputs go through
    /// [`Store::fetch_input`].
    ///
    /// # Errors
    /// [`StorageError::InvalidUri`], [`StorageError::NotFound`],
    /// [`StorageError::TooLarge`], or [`StorageError::Unavailable`].
    pub async fn fetch(&self, uri: &str, max_bytes: u64) -> Result<Bytes, StorageError> {
        let path = self.resolve_object(uri)?;
        self.read_object(&path, uri, max_bytes).await
    }

    async fn read_object(
        &self,
        path: &Path,
        uri: &str,
        max_bytes: u64,
    ) -> Result<Bytes, StorageError> {
        let meta = self
            .inner
            .head(path)
            .await
            .map_err(|e| map_read_error(e, uri))?;
        if meta.size > max_bytes {
            return Err(StorageError::TooLarge {
                uri: uri.to_string(),
                size: meta.size,
                limit: max_bytes,
            });
        }
        let bytes = self
            .inner
            .get(path)
            .await
            .map_err(|e| map_read_error(e, uri))?
            .bytes()
            .await
            .map_err(|e| map_read_error(e, uri))?;
        // The object may have been replaced between head and get.
        if bytes.len() as u64 > max_bytes {
            return Err(StorageError::TooLarge {
                uri: uri.to_string(),
                size: bytes.len() as u64,
                limit: max_bytes,
            });
        }
        Ok(bytes)
    }

    /// Writes an output under `<org>/<workspace>/<job_id>/<name>`.
    ///
    /// The write is atomic (a reader never sees half an object) and
    /// conditional (`PutMode::Create`: S3's `If-None-Match: *`, a no-replace
    /// rename locally). The key is deterministic, so two deliveries of one
    /// job racing (a redelivery while the first worker still runs) write the
    /// same key: the first write wins and the other run adopts the stored
    /// object — its size and sha256 are returned, not the losing bytes'.
    /// Every result of the job then names the same bytes.
    ///
    /// # Errors
    /// [`StorageError::InvalidUri`] for a name that is not a single safe
    /// path segment, [`StorageError::Unavailable`] when the write fails.
    pub async fn put_output(
        &self,
        org: &str,
        workspace: &str,
        job_id: &str,
        name: &str,
        bytes: Bytes,
    ) -> Result<StoredObject, StorageError> {
        for segment in [org, workspace, job_id, name] {
            if !is_safe_segment(segment) {
                return Err(StorageError::InvalidUri(format!(
                    "output key segment {segment:?} is not a safe path segment"
                )));
            }
        }
        let key = format!("{org}/{workspace}/{job_id}/{name}");
        let path = Path::parse(&key).map_err(|e| StorageError::InvalidUri(e.to_string()))?;
        let mut sha256 = hex::encode(Sha256::digest(&bytes));
        let mut size = bytes.len() as u64;
        let create = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(&path, PutPayload::from(bytes), create)
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                let stored = self
                    .inner
                    .get(&path)
                    .await
                    .map_err(|e| StorageError::Unavailable(e.to_string()))?
                    .bytes()
                    .await
                    .map_err(|e| StorageError::Unavailable(e.to_string()))?;
                sha256 = hex::encode(Sha256::digest(&stored));
                size = stored.len() as u64;
            }
            Err(e) => return Err(StorageError::Unavailable(e.to_string())),
        }
        Ok(StoredObject {
            uri: format!("s3://{}/{key}", self.bucket),
            key,
            size,
            sha256,
        })
    }

    /// Removes one of the store's own objects (an output) by URI; removing
    /// one that is already gone succeeds, so cleanup after a redelivery is
    /// idempotent. No tenant check: job inputs go through
    /// [`Store::delete_input`].
    ///
    /// # Errors
    /// A malformed URI or a failing store.
    pub async fn delete(&self, uri: &str) -> Result<(), StorageError> {
        let path = self.resolve_object(uri)?;
        self.delete_object(&path).await
    }

    async fn delete_object(&self, path: &Path) -> Result<(), StorageError> {
        match self.inner.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::Unavailable(e.to_string())),
        }
    }

    /// Lists every key under `<org>/<workspace>/<job_id>/`.
    ///
    /// # Errors
    /// A failing store.
    pub async fn list_job_outputs(
        &self,
        org: &str,
        workspace: &str,
        job_id: &str,
    ) -> Result<Vec<String>, StorageError> {
        use futures_util::TryStreamExt as _;
        let prefix = Path::from_iter([org, workspace, job_id]);
        let objects: Vec<_> = self
            .inner
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        let mut keys: Vec<String> = objects
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// An `s3://` URI of this store's bucket, as an object path.
    fn resolve_object(&self, uri: &str) -> Result<Path, StorageError> {
        let rest = uri.strip_prefix("s3://").ok_or_else(|| {
            StorageError::InvalidUri(format!(
                "URI scheme {} is not supported here, expected s3://",
                scheme_of(uri)
            ))
        })?;
        let (bucket, key) = rest.split_once('/').ok_or_else(|| {
            StorageError::InvalidUri("input URI has no key after the bucket".into())
        })?;
        if bucket != self.bucket {
            return Err(StorageError::InvalidUri(format!(
                "input bucket {bucket:?} is not served by this worker, expected {}",
                self.bucket
            )));
        }
        // `Path::parse` refuses empty, `.` and `..` segments, so the key
        // checked against the tenant's prefixes is the key that is read.
        Path::parse(key).map_err(|_| {
            StorageError::InvalidUri(
                "input key is not a valid object key (empty, `.` or `..` segments, or bad characters)"
                    .into(),
            )
        })
    }

    async fn resolve_input(&self, scope: &TenantScope, uri: &str) -> Result<Input, StorageError> {
        if uri.starts_with("s3://") {
            let path = self.resolve_object(uri)?;
            if !scope.allows(path.as_ref()) {
                return Err(StorageError::Forbidden(format!(
                    "input key is not under the job's tenant prefixes ({})",
                    scope.rule()
                )));
            }
            return Ok(Input::Object(path));
        }
        if let Some(rest) = uri.strip_prefix("file://") {
            return self
                .resolve_file(scope, FsPath::new(rest))
                .await
                .map(Input::File);
        }
        Err(StorageError::InvalidUri(format!(
            "input URI scheme {} is not supported, expected s3:// or file://",
            scheme_of(uri)
        )))
    }
}

/// A resolved, permitted input.
enum Input {
    Object(Path),
    File(PathBuf),
}

/// The URI's scheme for an error message, only when it looks like one (the
/// URI is the publisher's text).
fn scheme_of(uri: &str) -> &str {
    match uri.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme.len() <= 16
                && scheme
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'+') =>
        {
            scheme
        }
        Some(_) => "(unrecognised)",
        None => "(none)",
    }
}

fn map_read_error(error: object_store::Error, uri: &str) -> StorageError {
    match error {
        object_store::Error::NotFound { .. } => StorageError::NotFound(uri.to_string()),
        other => StorageError::Unavailable(other.to_string()),
    }
}

pub(crate) fn is_safe_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment.len() <= 128
        && segment
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Seconds since the Unix epoch, for URL expiry.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests;

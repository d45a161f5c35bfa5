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

    /// A `file://` input: inside the file input root after resolving
    /// symlinks and `..`, and under the tenant's prefixes relative to it.
    async fn resolve_file(
        &self,
        scope: &TenantScope,
        path: &FsPath,
    ) -> Result<PathBuf, StorageError> {
        let root = self.file_root.as_ref().ok_or_else(|| {
            StorageError::Forbidden(
                "file:// inputs are not accepted by this worker (storage.file_input_root is not set)"
                    .into(),
            )
        })?;
        if !path.is_absolute() {
            return Err(StorageError::InvalidUri(
                "file:// input must be an absolute file:/// path".into(),
            ));
        }
        let real = tokio::fs::canonicalize(path)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => StorageError::NotFound("file:// input".into()),
                _ => StorageError::Unavailable(e.to_string()),
            })?;
        let relative = real.strip_prefix(root).map_err(|_| {
            StorageError::Forbidden("file:// input is outside the worker's file input root".into())
        })?;
        let parts: Option<Vec<&str>> = relative
            .components()
            .map(|c| c.as_os_str().to_str())
            .collect();
        let key = parts
            .ok_or_else(|| StorageError::InvalidUri("file:// input is not valid UTF-8".into()))?
            .join("/");
        if !scope.allows(&key) {
            return Err(StorageError::Forbidden(format!(
                "file:// input is not under the job's tenant prefixes ({}) in the file input root",
                scope.rule()
            )));
        }
        Ok(real)
    }
}

/// The canonical `file://` input root of a policy, when it has one.
fn file_input_root(inputs: &InputPolicy) -> Result<Option<PathBuf>, StorageError> {
    match inputs.file_root() {
        Some(dir) => dir.canonicalize().map(Some).map_err(|e| {
            StorageError::InvalidConfig(format!(
                "file input root {} cannot be resolved: {e}",
                dir.display()
            ))
        }),
        None => Ok(None),
    }
}

/// A resolved, permitted input.
enum Input {
    Object(Path),
    File(PathBuf),
}

/// Reads a resolved `file://` input. The file opened must still be the one
/// that was checked: a symlink swapped into its path after the check would
/// otherwise read anything the worker can.
async fn read_file(real: &FsPath, uri: &str, max_bytes: u64) -> Result<Bytes, StorageError> {
    use tokio::io::AsyncReadExt as _;
    // Only regular files: opening a FIFO would wait for a writer forever,
    // and a directory or device is never an upload.
    let meta = tokio::fs::metadata(real)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StorageError::NotFound("file:// input".into()),
            _ => StorageError::Unavailable(e.to_string()),
        })?;
    if !meta.is_file() {
        return Err(StorageError::InvalidUri(
            "file:// input is not a regular file".into(),
        ));
    }
    let file = tokio::fs::File::open(real)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StorageError::NotFound("file:// input".into()),
            _ => StorageError::Unavailable(e.to_string()),
        })?;
    if let Some(opened) = opened_path(&file) {
        if opened != real {
            return Err(StorageError::Forbidden(
                "file:// input changed while it was being opened".into(),
            ));
        }
    }
    let meta = file
        .metadata()
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))?;
    if !meta.is_file() {
        return Err(StorageError::InvalidUri(
            "file:// input is not a regular file".into(),
        ));
    }
    let size = meta.len();
    if size > max_bytes {
        return Err(StorageError::TooLarge {
            uri: uri.to_string(),
            size,
            limit: max_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // The file may grow after the size check: read one byte past the limit.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))?;
    if bytes.len() as u64 > max_bytes {
        return Err(StorageError::TooLarge {
            uri: uri.to_string(),
            size: bytes.len() as u64,
            limit: max_bytes,
        });
    }
    Ok(Bytes::from(bytes))
}

/// The path the kernel says an open file has (Linux's `/proc/self/fd`);
/// `None` where that is not available.
fn opened_path(file: &tokio::fs::File) -> Option<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        None
    }
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
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "genfleet-storage-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn temp_store(file_root: Option<PathBuf>) -> (Store, PathBuf) {
        let dir = temp_dir("store");
        let store = Store::open_local(StoreConfig {
            root: dir.clone(),
            bucket: "uploads".into(),
            inputs: InputPolicy::new(&DEFAULT_INPUT_PREFIXES, file_root).unwrap(),
        })
        .unwrap();
        (store, dir)
    }

    #[tokio::test]
    async fn put_fetch_list_delete() {
        let (store, dir) = temp_store(None);
        let stored = store
            .put_output(
                "acme",
                "shop-1",
                "job1",
                "0.jpg",
                Bytes::from_static(b"abc"),
            )
            .await
            .unwrap();
        assert_eq!(stored.uri, "s3://uploads/acme/shop-1/job1/0.jpg");
        assert_eq!(stored.size, 3);
        assert_eq!(
            stored.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            store.fetch(&stored.uri, 10).await.unwrap(),
            Bytes::from_static(b"abc")
        );
        // The tenant's own outputs are inputs of its next job.
        let own = store.scope("acme", "shop-1").unwrap();
        assert_eq!(
            store
                .fetch_input(&own, &stored.uri, 10)
                .await
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            store
                .list_job_outputs("acme", "shop-1", "job1")
                .await
                .unwrap(),
            vec!["acme/shop-1/job1/0.jpg".to_string()]
        );
        store.delete(&stored.uri).await.unwrap();
        store.delete(&stored.uri).await.unwrap();
        assert!(matches!(
            store.fetch(&stored.uri, 10).await,
            Err(StorageError::NotFound(_))
        ));
        std::fs::remove_dir_all(dir).ok();
    }

    fn kind(result: &Result<Bytes, StorageError>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(StorageError::TooLarge { .. }) => "too_large",
            Err(StorageError::InvalidUri(_)) => "invalid",
            Err(StorageError::Forbidden(_)) => "forbidden",
            Err(StorageError::NotFound(_)) => "not_found",
            Err(StorageError::Unavailable(_)) => "unavailable",
            Err(StorageError::InvalidConfig(_)) => "config",
        }
    }

    #[tokio::test]
    async fn inputs_are_read_only_inside_the_tenants_prefixes() {
        let (store, dir) = temp_store(None);
        for key in [
            "uploads/acme/ws/a.jpg",
            "uploads/acme/ws/big.bin",
            "uploads/acme/other/a.jpg",
            "uploads/globex/ws/a.jpg",
            "globex/ws/j/0.png",
        ] {
            let path = dir.join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let len = if key.ends_with("big.bin") { 100 } else { 3 };
            std::fs::write(path, vec![7u8; len]).unwrap();
        }
        let scope = store.scope("acme", "ws").unwrap();
        let cases: Vec<(&str, &str)> = vec![
            ("s3://uploads/uploads/acme/ws/a.jpg", "ok"),
            ("s3://uploads/uploads/acme/ws/big.bin", "too_large"),
            ("s3://uploads/uploads/acme/ws/missing.jpg", "not_found"),
            // Another workspace of the same org, another org, another
            // tenant's output, the bare upload prefix, a traversal.
            ("s3://uploads/uploads/acme/other/a.jpg", "forbidden"),
            ("s3://uploads/uploads/globex/ws/a.jpg", "forbidden"),
            ("s3://uploads/globex/ws/j/0.png", "forbidden"),
            ("s3://uploads/uploads/acme/wsx/a.jpg", "forbidden"),
            ("s3://uploads/uploads/acme/ws/../other/a.jpg", "invalid"),
            ("s3://uploads/uploads/acme/ws//a.jpg", "invalid"),
            ("s3://other/uploads/acme/ws/a.jpg", "invalid"),
            ("s3://uploads", "invalid"),
            // file:// is off without a file input root.
            ("file:///etc/passwd", "forbidden"),
            ("https://169.254.169.254/latest/meta-data", "invalid"),
            ("gopher://x/y", "invalid"),
        ];
        for (uri, expected) in &cases {
            let got = store.fetch_input(&scope, uri, 50).await;
            assert_eq!(kind(&got), *expected, "{uri}");
            // Deleting follows the same rule: nothing of another tenant goes.
            if *expected == "forbidden" || *expected == "invalid" {
                assert!(store.delete_input(&scope, uri).await.is_err(), "{uri}");
            }
        }
        for key in [
            "uploads/acme/other/a.jpg",
            "uploads/globex/ws/a.jpg",
            "globex/ws/j/0.png",
        ] {
            assert!(dir.join(key).exists(), "{key} was deleted");
        }
        store
            .delete_input(&scope, "s3://uploads/uploads/acme/ws/a.jpg")
            .await
            .unwrap();
        assert!(!dir.join("uploads/acme/ws/a.jpg").exists());
        // Gone already: still success.
        store
            .delete_input(&scope, "s3://uploads/uploads/acme/ws/a.jpg")
            .await
            .unwrap();
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn file_inputs_stay_inside_the_root_and_the_tenants_prefixes() {
        let files = temp_dir("files");
        let outside = temp_dir("outside");
        for key in ["uploads/acme/ws/a.jpg", "uploads/globex/ws/a.jpg"] {
            let path = files.join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"abc").unwrap();
        }
        std::fs::write(outside.join("secret"), b"abc").unwrap();
        // Neither a folder nor a FIFO is an upload; opening the FIFO would
        // wait for a writer forever.
        std::fs::create_dir_all(files.join("uploads/acme/ws/folder")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(files.join("uploads/acme/ws/fifo"))
            .status()
            .unwrap();
        assert!(made.success());
        // Links from the tenant's folder to another tenant's file and out of
        // the root: resolved first, then refused.
        std::os::unix::fs::symlink(
            files.join("uploads/globex/ws/a.jpg"),
            files.join("uploads/acme/ws/link-foreign.jpg"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            outside.join("secret"),
            files.join("uploads/acme/ws/link-out.jpg"),
        )
        .unwrap();
        let (store, dir) = temp_store(Some(files.clone()));
        let scope = store.scope("acme", "ws").unwrap();
        let root = files.canonicalize().unwrap();
        let uri = |rel: &str| format!("file://{}/{rel}", root.display());
        let cases = vec![
            (uri("uploads/acme/ws/a.jpg"), "ok"),
            (uri("uploads/globex/ws/a.jpg"), "forbidden"),
            (uri("uploads/acme/ws/../../globex/ws/a.jpg"), "forbidden"),
            (uri("uploads/acme/ws/link-foreign.jpg"), "forbidden"),
            (uri("uploads/acme/ws/link-out.jpg"), "forbidden"),
            (uri("uploads/acme/ws/missing.jpg"), "not_found"),
            (uri("uploads/acme/ws/folder"), "invalid"),
            (uri("uploads/acme/ws/fifo"), "invalid"),
            (format!("file://{}/secret", outside.display()), "forbidden"),
            ("file://relative/x".to_string(), "invalid"),
        ];
        for (uri, expected) in &cases {
            assert_eq!(
                kind(&store.fetch_input(&scope, uri, 50).await),
                *expected,
                "{uri}"
            );
        }
        assert!(store
            .delete_input(&scope, &uri("uploads/globex/ws/a.jpg"))
            .await
            .is_err());
        assert!(files.join("uploads/globex/ws/a.jpg").exists());
        assert!(outside.join("secret").exists());
        for d in [files, outside, dir] {
            std::fs::remove_dir_all(d).ok();
        }
    }

    #[tokio::test]
    async fn output_names_must_be_safe_segments() {
        let (store, dir) = temp_store(None);
        for bad in ["..", "a/b", "", "x y"] {
            assert!(store
                .put_output("acme", "ws", "j", bad, Bytes::new())
                .await
                .is_err());
        }
        std::fs::remove_dir_all(dir).ok();
    }
}

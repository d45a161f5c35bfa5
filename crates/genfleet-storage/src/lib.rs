//! Object storage for job inputs and outputs.
//!
//! Owns: turning an input URI into bytes (bounded, inside the configured
//! store), writing outputs under tenant-scoped keys
//! (`<org>/<workspace>/<job_id>/<name>`), deleting sources, and signing
//! time-limited URLs. Knows nothing of jobs, credits or images: callers pass
//! ids that the contract already validated.
//!
//! The store is an `object_store::ObjectStore`; today the local filesystem
//! backend (tests, `genfleet batch`, single-node installs). S3/GCS/Azure are
//! the same trait with another constructor.
#![forbid(unsafe_code)]

mod signing;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

pub use signing::UrlSigner;

/// Where inputs and outputs live.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory that backs the local store; created if missing.
    pub root: PathBuf,
    /// Bucket name under which the local store answers `s3://<bucket>/<key>`.
    pub bucket: String,
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
    #[error("input {0} does not exist")]
    NotFound(String),
    #[error("input {uri} is {size} bytes, above the {limit} byte limit")]
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
    config: StoreConfig,
    root: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.config)
            .finish()
    }
}

impl Store {
    /// Opens (and creates) a local filesystem store.
    ///
    /// # Errors
    /// The root cannot be created or resolved.
    pub fn open_local(config: StoreConfig) -> Result<Store, StorageError> {
        std::fs::create_dir_all(&config.root).map_err(|e| {
            StorageError::Unavailable(format!("cannot create {}: {e}", config.root.display()))
        })?;
        let root = config.root.canonicalize().map_err(|e| {
            StorageError::Unavailable(format!("cannot resolve {}: {e}", config.root.display()))
        })?;
        let fs = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        Ok(Store {
            inner: Arc::new(fs),
            config,
            root,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.config.bucket
    }

    /// Reads an input, refusing anything above `max_bytes` before reading it.
    ///
    /// Accepted URIs: `s3://<bucket>/<key>` for this store's bucket, and
    /// `file:///<path>` for a path inside the store's root (symlinks and
    /// `..` resolved first, so neither escapes the root).
    ///
    /// # Errors
    /// [`StorageError::InvalidUri`], [`StorageError::NotFound`],
    /// [`StorageError::TooLarge`], or [`StorageError::Unavailable`].
    pub async fn fetch(&self, uri: &str, max_bytes: u64) -> Result<Bytes, StorageError> {
        let path = self.resolve(uri)?;
        let meta = self
            .inner
            .head(&path)
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
            .get(&path)
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
    /// The write is atomic (temporary file, then rename), so a reader never
    /// sees half an object, and the key is deterministic, so a redelivered
    /// job overwrites its own outputs instead of storing them twice.
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
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        self.inner
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        Ok(StoredObject {
            uri: format!("s3://{}/{key}", self.config.bucket),
            key,
            size,
            sha256,
        })
    }

    /// Removes an object by URI; removing one that is already gone succeeds,
    /// so cleanup after a redelivery is idempotent.
    ///
    /// # Errors
    /// A malformed URI or a failing store.
    pub async fn delete(&self, uri: &str) -> Result<(), StorageError> {
        let path = self.resolve(uri)?;
        match self.inner.delete(&path).await {
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

    fn resolve(&self, uri: &str) -> Result<Path, StorageError> {
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').ok_or_else(|| {
                StorageError::InvalidUri(format!("input {uri} has no key after the bucket"))
            })?;
            if bucket != self.config.bucket {
                return Err(StorageError::InvalidUri(format!(
                    "input bucket {bucket} is not served by this worker, expected {}",
                    self.config.bucket
                )));
            }
            return Path::parse(key).map_err(|e| {
                StorageError::InvalidUri(format!("input key in {uri} is not valid: {e}"))
            });
        }
        if let Some(rest) = uri.strip_prefix("file://") {
            return self.resolve_file(uri, FsPath::new(rest));
        }
        let scheme = uri.split_once("://").map_or("none", |(s, _)| s);
        Err(StorageError::InvalidUri(format!(
            "input URI scheme {scheme} is not supported, expected s3:// or file://"
        )))
    }

    fn resolve_file(&self, uri: &str, path: &FsPath) -> Result<Path, StorageError> {
        if !path.is_absolute() {
            return Err(StorageError::InvalidUri(format!(
                "input {uri} must be an absolute file:/// path"
            )));
        }
        let real = path.canonicalize().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StorageError::NotFound(uri.to_string()),
            _ => StorageError::Unavailable(e.to_string()),
        })?;
        let relative = real.strip_prefix(&self.root).map_err(|_| {
            StorageError::InvalidUri(format!("input {uri} is outside the worker's storage root"))
        })?;
        // Built from components: `Path::from_filesystem_path` would resolve a
        // relative path against the process's working directory.
        let parts: Option<Vec<&str>> = relative
            .components()
            .map(|c| c.as_os_str().to_str())
            .collect();
        let parts = parts
            .ok_or_else(|| StorageError::InvalidUri(format!("input {uri} is not valid UTF-8")))?;
        Path::parse(parts.join("/"))
            .map_err(|e| StorageError::InvalidUri(format!("input {uri} is not valid: {e}")))
    }
}

fn map_read_error(error: object_store::Error, uri: &str) -> StorageError {
    match error {
        object_store::Error::NotFound { .. } => StorageError::NotFound(uri.to_string()),
        other => StorageError::Unavailable(other.to_string()),
    }
}

fn is_safe_segment(segment: &str) -> bool {
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

    fn temp_store() -> (Store, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "genfleet-storage-{}-{}",
            std::process::id(),
            fastrand_like()
        ));
        let store = Store::open_local(StoreConfig {
            root: dir.clone(),
            bucket: "uploads".into(),
        })
        .unwrap();
        (store, dir)
    }

    fn fastrand_like() -> u128 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    #[tokio::test]
    async fn put_fetch_list_delete() {
        let (store, dir) = temp_store();
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
        let file_uri = format!(
            "file://{}/acme/shop-1/job1/0.jpg",
            dir.canonicalize().unwrap().display()
        );
        assert_eq!(store.fetch(&file_uri, 10).await.unwrap().len(), 3);
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

    #[tokio::test]
    async fn refuses_what_it_must() {
        let (store, dir) = temp_store();
        store
            .put_output("acme", "ws", "j", "big.bin", Bytes::from(vec![0u8; 100]))
            .await
            .unwrap();
        let cases: Vec<(&str, &str)> = vec![
            ("s3://uploads/acme/ws/j/big.bin", "too_large"),
            ("s3://other/acme/ws/j/big.bin", "invalid"),
            ("s3://uploads", "invalid"),
            ("s3://uploads/../etc/passwd", "invalid"),
            ("file:///etc/passwd", "invalid"),
            ("file://relative/x", "invalid"),
            ("https://169.254.169.254/latest/meta-data", "invalid"),
            ("s3://uploads/missing.jpg", "not_found"),
        ];
        for (uri, expected) in cases {
            let got = match store.fetch(uri, 50).await {
                Err(StorageError::TooLarge { .. }) => "too_large",
                Err(StorageError::InvalidUri(_)) => "invalid",
                Err(StorageError::NotFound(_)) => "not_found",
                other => panic!("{uri}: unexpected {other:?}"),
            };
            assert_eq!(got, expected, "{uri}");
        }
        for bad in ["..", "a/b", "", "x y"] {
            assert!(store
                .put_output("acme", "ws", "j", bad, Bytes::new())
                .await
                .is_err());
        }
        std::fs::remove_dir_all(dir).ok();
    }
}

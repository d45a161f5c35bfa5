//! `file://` inputs: resolved inside `storage.file_input_root` (symlinks
//! and `..` first, so neither escapes it), checked against the tenant's
//! prefixes relative to that root, and read only if the file opened is the
//! file that was checked. Off unless the root is configured.

use std::path::{Path as FsPath, PathBuf};

use bytes::Bytes;

use crate::{InputPolicy, StorageError, Store, TenantScope};

impl Store {
    /// A `file://` input: inside the file input root after resolving
    /// symlinks and `..`, and under the tenant's prefixes relative to it.
    pub(crate) async fn resolve_file(
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
pub(crate) fn file_input_root(inputs: &InputPolicy) -> Result<Option<PathBuf>, StorageError> {
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

/// Reads a resolved `file://` input. The file opened must still be the one
/// that was checked: a symlink swapped into its path after the check would
/// otherwise read anything the worker can.
pub(crate) async fn read_file(
    real: &FsPath,
    uri: &str,
    max_bytes: u64,
) -> Result<Bytes, StorageError> {
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
pub(crate) fn opened_path(file: &tokio::fs::File) -> Option<PathBuf> {
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

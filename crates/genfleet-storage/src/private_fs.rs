//! The local store, private to the worker's user: folders it creates are
//! 0700 and objects it writes are 0600, whatever the process umask.
//!
//! `object_store`'s `LocalFileSystem` creates folders and files with the
//! process umask (typically 0755 and 0644), so every customer image would be
//! readable by every user of the machine. Setting the umask at start-up
//! would fix that for the whole process, but it is process-wide state that a
//! library should not change behind its embedder's back (and it would also
//! tighten files meant for others, e.g. ones handed to clamd by path). So
//! this wrapper fixes the modes itself: before a write it creates the
//! object's folders 0700 (then `LocalFileSystem` finds them and creates
//! nothing), and after it sets the object 0600. The staging file a write goes
//! through lies in the same 0700 folder, so no moment exposes the bytes.
//!
//! Folders that existed before (the store root an operator made) are left
//! as they are; [`create_private_dir_all`] makes a missing root 0700.

use std::fmt;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path as FsPath, PathBuf};

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

/// Mode of every folder the store or the spool creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every object the store writes.
pub const FILE_MODE: u32 = 0o600;

/// `create_dir_all` whose new folders are [`DIR_MODE`] (umask permitting:
/// the umask only ever removes bits).
///
/// # Errors
/// As `std::fs::DirBuilder::create`.
pub fn create_private_dir_all(dir: &FsPath) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// `LocalFileSystem` with private modes; see the module docs.
#[derive(Debug)]
pub(crate) struct PrivateLocalFs {
    inner: LocalFileSystem,
}

impl PrivateLocalFs {
    /// A store rooted at `root`, which must exist.
    pub(crate) fn new(root: &FsPath) -> Result<PrivateLocalFs> {
        Ok(PrivateLocalFs {
            inner: LocalFileSystem::new_with_prefix(root)?,
        })
    }

    /// The file behind `location`, after creating its folders privately.
    fn prepare(&self, location: &Path) -> Result<PathBuf> {
        let file = self.inner.path_to_filesystem(location)?;
        if let Some(parent) = file.parent() {
            create_private_dir_all(parent).map_err(|source| object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(source),
            })?;
        }
        Ok(file)
    }
}

impl fmt::Display for PrivateLocalFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Private{}", self.inner)
    }
}

/// Sets `file` to [`FILE_MODE`].
fn make_private(file: &FsPath) -> Result<()> {
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(FILE_MODE)).map_err(|source| {
        object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(source),
        }
    })
}

#[async_trait]
impl ObjectStore for PrivateLocalFs {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let file = self.prepare(location)?;
        let result = self.inner.put_opts(location, payload, opts).await?;
        make_private(&file)?;
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let file = self.prepare(location)?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(PrivateUpload { inner, file }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let file = self.prepare(to)?;
        self.inner.copy_opts(from, to, options).await?;
        make_private(&file)
    }
}

/// A multipart write whose object is made private when it completes.
#[derive(Debug)]
struct PrivateUpload {
    inner: Box<dyn MultipartUpload>,
    file: PathBuf,
}

#[async_trait]
impl MultipartUpload for PrivateUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let result = self.inner.complete().await?;
        make_private(&self.file)?;
        Ok(result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

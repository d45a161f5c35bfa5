//! Where a job's image bytes wait: in memory while the process's budget
//! allows, else in a temporary file.
//!
//! A worker holding 2,000 slow provider calls holds 2,000 jobs' inputs (for
//! a retry or a failover) and, when the renders finish together, 2,000
//! downloaded outputs waiting for one of a few imaging slots. Held as
//! `Bytes`, that is hundreds of MB for nothing: the bytes are needed again
//! only when a request is (re)sent or an imaging slot frees. A [`Spool`]
//! keeps them in memory up to a byte budget shared by the whole process,
//! and writes the rest to files in its directory, which the kernel keeps in
//! its page cache while there is room and writes back when there is not.
//! Downloads stream into the spool chunk by chunk, so even an output being
//! received is never held twice.
//!
//! A [`Blob`] is the handle: cheap to clone, its memory budget or file
//! released when the last clone drops.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget is counted in KiB: a semaphore takes at most `u32::MAX`
/// permits at once, and KiB keeps any single blob's count well inside.
const UNIT: u64 = 1024;

/// Writes to a spool file go through a buffer this large, so a download
/// arriving in 16 kB chunks costs one blocking hand-off per 256 kB.
const FILE_BUFFER: usize = 256 * 1024;

/// Downloads streaming into one spool at once. Each holds a connection's
/// read buffer, which hyper grows to match a fast sender (hundreds of kB
/// for an image); 2,000 renders that finish in the same poll would
/// otherwise all download at the same moment. 64 at a time still fill any
/// link a worker has.
pub const DOWNLOADS_AT_ONCE: usize = 64;

/// A spool file's builder: 0600, the worker's user's alone. `tempfile`
/// already defaults to that on Unix; saying it here keeps it so.
fn private_file() -> tempfile::Builder<'static, 'static> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut builder = tempfile::Builder::new();
    builder.permissions(std::fs::Permissions::from_mode(0o600));
    builder
}

/// Image bytes a job holds; see the module docs.
#[derive(Clone)]
pub struct Blob {
    len: u64,
    body: Body,
}

#[derive(Clone)]
enum Body {
    Memory {
        bytes: Bytes,
        /// Held only to return its share of the budget on drop.
        _budget: Option<Arc<OwnedSemaphorePermit>>,
    },
    /// Deleted when the last clone drops.
    File(Arc<tempfile::TempPath>),
}

// Never the bytes: they are customer images.
impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("len", &self.len)
            .field("spooled", &self.is_spooled())
            .finish()
    }
}

impl Blob {
    /// Bytes kept in memory outside any budget: for what is small or
    /// already in memory anyway (tests, inline outputs of a JSON answer).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Blob {
        let bytes = bytes.into();
        Blob {
            len: bytes.len() as u64,
            body: Body::Memory {
                bytes,
                _budget: None,
            },
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, when they are in memory.
    pub fn resident(&self) -> Option<&Bytes> {
        match &self.body {
            Body::Memory { bytes, .. } => Some(bytes),
            Body::File(_) => None,
        }
    }

    /// Whether the bytes wait in a spool file rather than in memory.
    pub fn is_spooled(&self) -> bool {
        matches!(self.body, Body::File(_))
    }

    /// The bytes, read back from the spool file when they are there.
    ///
    /// # Errors
    /// The spool file could not be read.
    pub async fn bytes(&self) -> io::Result<Bytes> {
        match &self.body {
            Body::Memory { bytes, .. } => Ok(bytes.clone()),
            Body::File(path) => tokio::fs::read(path.as_ref() as &Path)
                .await
                .map(Bytes::from),
        }
    }

    /// [`Blob::bytes`] for code already off the async runtime (the imaging
    /// pool).
    ///
    /// # Errors
    /// The spool file could not be read.
    pub fn bytes_blocking(&self) -> io::Result<Bytes> {
        match &self.body {
            Body::Memory { bytes, .. } => Ok(bytes.clone()),
            Body::File(path) => std::fs::read(path.as_ref() as &Path).map(Bytes::from),
        }
    }
}

impl From<Bytes> for Blob {
    fn from(bytes: Bytes) -> Blob {
        Blob::from_bytes(bytes)
    }
}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Blob {
        Blob::from_bytes(bytes)
    }
}

/// The process's place for waiting bytes: a memory budget and a folder.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: everything stays in memory, unbudgeted.
    dir: Option<PathBuf>,
    budget: Arc<Semaphore>,
    budget_bytes: u64,
    /// Request bodies with inline images being built and sent at once, in
    /// KiB; `None`: no bound.
    sending: Option<(Arc<Semaphore>, u32)>,
    /// [`DOWNLOADS_AT_ONCE`] permits; `None` for a memory-only spool.
    downloads: Option<Arc<Semaphore>>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.dir)
            .field("budget_bytes", &self.inner.budget_bytes)
            .field(
                "budget_left_bytes",
                &(self.inner.budget.available_permits() as u64 * UNIT),
            )
            .finish()
    }
}

impl Default for Spool {
    fn default() -> Spool {
        Spool::memory_only()
    }
}

impl Spool {
    /// Everything in memory, without a budget: tests and one-shot commands.
    pub fn memory_only() -> Spool {
        Spool {
            inner: Arc::new(Inner {
                dir: None,
                budget: Arc::new(Semaphore::new(0)),
                budget_bytes: 0,
                sending: None,
                downloads: None,
            }),
        }
    }

    /// Up to `memory_budget_bytes` in memory (rounded down to KiB), the rest
    /// in files under `dir`, which is created if missing.
    ///
    /// # Errors
    /// `dir` cannot be created.
    pub fn new(dir: impl Into<PathBuf>, memory_budget_bytes: u64) -> io::Result<Spool> {
        let dir = dir.into();
        // Customer images wait here: folders the spool creates are the
        // worker's user's alone (0700), like its files (`private_file`).
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
        }
        let units = usize::try_from(memory_budget_bytes / UNIT)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Ok(Spool {
            inner: Arc::new(Inner {
                dir: Some(dir),
                budget: Arc::new(Semaphore::new(units)),
                budget_bytes: memory_budget_bytes,
                sending: None,
                downloads: Some(Arc::new(Semaphore::new(DOWNLOADS_AT_ONCE))),
            }),
        })
    }

    /// Bounds the request bodies with inline images (base64 data URIs)
    /// being built and sent at once to `bytes`: 2,000 jobs submitting
    /// together would otherwise each hold their body at the same moment.
    /// A body larger than the whole bound waits until it can go alone.
    ///
    /// Call before cloning the spool into clients.
    #[must_use]
    pub fn with_send_budget(self, bytes: u64) -> Spool {
        let units = units_for(bytes).max(1);
        let inner = Inner {
            dir: self.inner.dir.clone(),
            budget: Arc::clone(&self.inner.budget),
            budget_bytes: self.inner.budget_bytes,
            sending: Some((Arc::new(Semaphore::new(units as usize)), units)),
            downloads: self.inner.downloads.clone(),
        };
        Spool {
            inner: Arc::new(inner),
        }
    }

    /// Waits for room to build and send a body of about `bytes`, until
    /// `deadline`; the room is given back when the permit drops.
    ///
    /// # Errors
    /// [`crate::ProviderError::DeadlineExceeded`] when the deadline passes
    /// first.
    pub(crate) async fn room_to_send(
        &self,
        bytes: u64,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<OwnedSemaphorePermit>, crate::ProviderError> {
        let Some((sending, total)) = &self.inner.sending else {
            return Ok(None);
        };
        let units = units_for(bytes).clamp(1, *total);
        acquire_until(sending, units, deadline).await
    }

    /// Waits, until `deadline`, for one of the [`DOWNLOADS_AT_ONCE`] download
    /// slots; held until the body is received.
    ///
    /// # Errors
    /// [`crate::ProviderError::DeadlineExceeded`] when the deadline passes
    /// first.
    pub(crate) async fn download_slot(
        &self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<OwnedSemaphorePermit>, crate::ProviderError> {
        let Some(downloads) = &self.inner.downloads else {
            return Ok(None);
        };
        acquire_until(downloads, 1, deadline).await
    }

    /// Bytes of the memory budget not taken now.
    pub fn budget_left_bytes(&self) -> u64 {
        self.inner.budget.available_permits() as u64 * UNIT
    }

    /// Keeps `bytes`: in memory when the budget has room, else in a file
    /// (and the memory is freed when the caller drops its copy).
    ///
    /// # Errors
    /// The spool file could not be written.
    pub async fn keep(&self, bytes: Bytes) -> io::Result<Blob> {
        let Some(dir) = &self.inner.dir else {
            return Ok(Blob::from_bytes(bytes));
        };
        if let Some(permit) = self.take(units_for(bytes.len() as u64)) {
            return Ok(Blob {
                len: bytes.len() as u64,
                body: Body::Memory {
                    bytes,
                    _budget: permit.map(Arc::new),
                },
            });
        }
        let dir = dir.clone();
        let len = bytes.len() as u64;
        let path = tokio::task::spawn_blocking(move || -> io::Result<tempfile::TempPath> {
            let mut file = private_file().prefix("blob-").tempfile_in(&dir)?;
            file.write_all(&bytes)?;
            Ok(file.into_temp_path())
        })
        .await
        .map_err(io::Error::other)??;
        Ok(Blob {
            len,
            body: Body::File(Arc::new(path)),
        })
    }

    /// Starts receiving a body of `expected` bytes, when known.
    pub(crate) fn receiver(&self, expected: Option<u64>) -> Receiver {
        let mut receiver = Receiver {
            spool: self.clone(),
            state: State::Memory {
                buf: BytesMut::new(),
                permit: None,
                units: 0,
            },
            len: 0,
            straight_to_file: false,
        };
        // Reserve the whole known length at once: one budget check and one
        // allocation instead of growing by doubling.
        if let Some(expected) = expected {
            match self.take(units_for(expected)) {
                Some(granted) => {
                    if let State::Memory { buf, permit, units } = &mut receiver.state {
                        // A lying Content-Length cannot make us allocate more
                        // than the caller's cap, which it checked first.
                        buf.reserve(usize::try_from(expected).unwrap_or(0));
                        *units = units_for(expected);
                        *permit = granted;
                    }
                }
                // It will not fit: no use filling memory until it runs out.
                None => receiver.straight_to_file = true,
            }
        }
        receiver
    }

    /// `units` of the budget now, or `None` when it has not got them;
    /// `Some(None)` when there is no budget to take from.
    fn take(&self, units: u32) -> Option<Option<OwnedSemaphorePermit>> {
        if self.inner.dir.is_none() {
            return Some(None);
        }
        if units == 0 {
            return Some(None);
        }
        self.inner
            .budget
            .clone()
            .try_acquire_many_owned(units)
            .ok()
            .map(Some)
    }
}

/// `units` of `semaphore`, waiting no later than `deadline`.
async fn acquire_until(
    semaphore: &Arc<Semaphore>,
    units: u32,
    deadline: Option<tokio::time::Instant>,
) -> Result<Option<OwnedSemaphorePermit>, crate::ProviderError> {
    let acquire = Arc::clone(semaphore).acquire_many_owned(units);
    let permit = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, acquire)
            .await
            .map_err(|_| crate::ProviderError::DeadlineExceeded)?,
        None => acquire.await,
    };
    // Our semaphores are never closed.
    Ok(permit.ok())
}

fn units_for(len: u64) -> u32 {
    u32::try_from(len.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

/// A body arriving chunk by chunk into a [`Spool`]: in memory while the
/// budget grants each chunk, then (for good) in a file.
pub(crate) struct Receiver {
    spool: Spool,
    state: State,
    len: u64,
    /// The announced length is over the budget left: spill at once.
    straight_to_file: bool,
}

enum State {
    Memory {
        buf: BytesMut,
        permit: Option<OwnedSemaphorePermit>,
        units: u32,
    },
    File {
        writer: tokio::io::BufWriter<tokio::fs::File>,
        path: tempfile::TempPath,
    },
}

impl Receiver {
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends `chunk`.
    ///
    /// # Errors
    /// The spool file could not be created or written.
    pub(crate) async fn push(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.len += chunk.len() as u64;
        if let State::Memory { buf, permit, units } = &mut self.state {
            let needed = units_for(self.len);
            let granted = !self.straight_to_file
                && (needed <= *units
                    || match self.spool.take(needed - *units) {
                        Some(Some(more)) => {
                            match permit {
                                Some(held) => held.merge(more),
                                None => *permit = Some(more),
                            }
                            *units = needed;
                            true
                        }
                        Some(None) => true,
                        None => false,
                    });
            if granted {
                buf.extend_from_slice(chunk);
                return Ok(());
            }
            // Over budget: what arrived so far moves to a file, and its
            // memory (and budget) go back.
            let received = std::mem::take(buf).freeze();
            *permit = None;
            self.spill(received).await?;
        }
        if let State::File { writer, .. } = &mut self.state {
            writer.write_all(chunk).await?;
        }
        Ok(())
    }

    async fn spill(&mut self, received: Bytes) -> io::Result<()> {
        let dir = self
            .spool
            .inner
            .dir
            .clone()
            .ok_or_else(|| io::Error::other("a memory-only spool has no folder"))?;
        let (file, path) = tokio::task::spawn_blocking(move || {
            private_file()
                .prefix("download-")
                .tempfile_in(&dir)
                .map(tempfile::NamedTempFile::into_parts)
        })
        .await
        .map_err(io::Error::other)??;
        let mut writer =
            tokio::io::BufWriter::with_capacity(FILE_BUFFER, tokio::fs::File::from_std(file));
        writer.write_all(&received).await?;
        self.state = State::File { writer, path };
        Ok(())
    }

    /// The received body.
    ///
    /// # Errors
    /// The spool file could not be flushed.
    pub(crate) async fn finish(self) -> io::Result<Blob> {
        let len = self.len;
        match self.state {
            State::Memory { buf, permit, .. } => Ok(Blob {
                len,
                body: Body::Memory {
                    bytes: buf.freeze(),
                    _budget: permit.map(Arc::new),
                },
            }),
            State::File { mut writer, path } => {
                writer.flush().await?;
                Ok(Blob {
                    len,
                    body: Body::File(Arc::new(path)),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(budget: u64) -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("spool"), budget).unwrap();
        (dir, spool)
    }

    fn files_in(spool: &Spool) -> usize {
        let dir = spool.inner.dir.as_ref().unwrap();
        std::fs::read_dir(dir).unwrap().count()
    }

    #[tokio::test]
    async fn keeps_in_memory_within_the_budget_and_spills_beyond_it() {
        let (_dir, spool) = spool(10 * 1024);
        let small = spool.keep(Bytes::from(vec![1u8; 6 * 1024])).await.unwrap();
        assert!(!small.is_spooled());
        assert_eq!(spool.budget_left_bytes(), 4 * 1024);

        // 6 KiB more does not fit the 4 KiB left: it goes to a file.
        let big = spool.keep(Bytes::from(vec![2u8; 6 * 1024])).await.unwrap();
        assert!(big.is_spooled());
        assert_eq!(files_in(&spool), 1);
        assert_eq!(big.bytes().await.unwrap(), vec![2u8; 6 * 1024]);
        assert_eq!(big.bytes_blocking().unwrap(), vec![2u8; 6 * 1024]);
        assert_eq!(small.bytes().await.unwrap(), vec![1u8; 6 * 1024]);

        // Budget and file come back when the last clone goes.
        let small_copy = small.clone();
        drop(small);
        assert_eq!(spool.budget_left_bytes(), 4 * 1024);
        drop(small_copy);
        assert_eq!(spool.budget_left_bytes(), 10 * 1024);
        drop(big);
        assert_eq!(files_in(&spool), 0);
    }

    #[tokio::test]
    async fn a_download_spills_mid_body_and_keeps_every_byte() {
        let (_dir, spool) = spool(8 * 1024);
        // Unknown length: the budget is taken chunk by chunk.
        let mut receiver = spool.receiver(None);
        let body: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in body.chunks(3000) {
            receiver.push(chunk).await.unwrap();
        }
        assert_eq!(receiver.len(), body.len() as u64);
        let blob = receiver.finish().await.unwrap();
        assert!(blob.is_spooled());
        // What was held in memory before the spill was given back.
        assert_eq!(spool.budget_left_bytes(), 8 * 1024);
        assert_eq!(blob.bytes().await.unwrap(), body);
        assert_eq!(blob.len(), body.len() as u64);
    }

    #[tokio::test]
    async fn a_known_length_is_reserved_at_once() {
        let (_dir, spool) = spool(64 * 1024);
        let mut receiver = spool.receiver(Some(20 * 1024));
        assert_eq!(spool.budget_left_bytes(), 44 * 1024);
        receiver.push(&[7u8; 20 * 1024]).await.unwrap();
        let blob = receiver.finish().await.unwrap();
        assert!(!blob.is_spooled());
        assert_eq!(spool.budget_left_bytes(), 44 * 1024);
        drop(blob);
        assert_eq!(spool.budget_left_bytes(), 64 * 1024);

        // A known length over the budget goes straight to a file.
        let mut receiver = spool.receiver(Some(100 * 1024));
        receiver.push(&[1u8; 100 * 1024]).await.unwrap();
        assert!(receiver.finish().await.unwrap().is_spooled());
    }

    #[tokio::test(start_paused = true)]
    async fn sends_wait_for_room_and_give_up_at_the_deadline() {
        let spool = Spool::memory_only().with_send_budget(100 * 1024);
        let first = spool.room_to_send(60 * 1024, None).await.unwrap();
        assert!(first.is_some());
        // 60 + 60 KiB does not fit in 100: the second waits...
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let waiting = {
            let spool = spool.clone();
            tokio::spawn(async move { spool.room_to_send(60 * 1024, Some(deadline)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // ...until the first body is sent.
        drop(first);
        let second = waiting.await.unwrap().unwrap();
        assert!(second.is_some());
        // A body bigger than the whole budget goes alone, once the room is
        // free; while it is not, the deadline ends the wait.
        let err = spool
            .room_to_send(
                1 << 30,
                Some(tokio::time::Instant::now() + std::time::Duration::from_secs(1)),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "deadline_exceeded");
        drop(second);
        assert!(spool.room_to_send(1 << 30, None).await.unwrap().is_some());
        // Without a send budget nothing waits.
        assert!(Spool::memory_only()
            .room_to_send(1 << 30, None)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn downloads_take_turns_beyond_the_slot_count() {
        let (_dir, spool) = spool(1024);
        let mut held = Vec::new();
        for _ in 0..DOWNLOADS_AT_ONCE {
            held.push(spool.download_slot(None).await.unwrap().unwrap());
        }
        // One more waits, and gives up at its deadline.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        let err = spool.download_slot(Some(deadline)).await.unwrap_err();
        assert_eq!(err.code(), "deadline_exceeded");
        // A finished download lets the next one start.
        held.pop();
        assert!(spool.download_slot(None).await.unwrap().is_some());
        // A memory-only spool (tests, one-shot commands) has no gate.
        assert!(Spool::memory_only()
            .download_slot(None)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn memory_only_never_touches_disk() {
        let spool = Spool::memory_only();
        let blob = spool.keep(Bytes::from(vec![0u8; 1 << 20])).await.unwrap();
        assert!(!blob.is_spooled());
        let mut receiver = spool.receiver(Some(10));
        receiver.push(b"0123456789").await.unwrap();
        let blob = receiver.finish().await.unwrap();
        assert_eq!(blob.bytes().await.unwrap(), &b"0123456789"[..]);
    }

    /// Issue 17: spooled customer images are the worker's user's alone, in
    /// a folder only that user can list, whatever the umask.
    #[tokio::test]
    async fn spool_files_and_folders_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let parent = tempfile::tempdir().unwrap();
        let spool = Spool::new(parent.path().join("a/b/spool"), 0).unwrap();
        for folder in ["a", "a/b", "a/b/spool"] {
            assert_eq!(mode(&parent.path().join(folder)), 0o700, "{folder}");
        }
        // Both ways into a file: a kept blob and a streamed download.
        let kept = spool.keep(Bytes::from(vec![3u8; 4096])).await.unwrap();
        let mut receiver = spool.receiver(None);
        receiver.push(&[4u8; 4096]).await.unwrap();
        let downloaded = receiver.finish().await.unwrap();
        assert!(kept.is_spooled() && downloaded.is_spooled());
        let dir = spool.inner.dir.as_ref().unwrap();
        let files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 2);
        for file in &files {
            assert_eq!(mode(file), 0o600, "{}", file.display());
        }
    }
}

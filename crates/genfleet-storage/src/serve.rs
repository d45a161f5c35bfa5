//! The local store's file server (`genfleet serve-files`): answers the
//! links [`UrlSigner::sign`] makes, and nothing else.
//!
//! A request's path is the signer's base path followed by an object key.
//! The server answers only `GET` and `HEAD`, and only for a key whose every
//! segment is a plain name (`A-Z a-z 0-9 - _ .`, no `.`/`..`, nothing
//! percent-encoded) and whose link verifies: right key id, signature over
//! the key id, key and expiry, not expired. Every refusal of the link is a
//! `403` with a short reason (like S3's presigned URLs: expired links too,
//! since a `410` would tell a guesser nothing more useful and a CDN would
//! cache it longer). After a valid link, a missing object, a folder, or a
//! file that resolves outside the store root (a symlink) is `404`; there are
//! no listings. Files are streamed, never read whole into memory.
//!
//! Never logged: the query (the signature is a credential).

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use tokio::io::AsyncReadExt as _;

use crate::signing::UrlSigner;
use crate::StorageError;

/// Read size when streaming a file.
const CHUNK: usize = 64 * 1024;

/// What the file server serves and how it checks links.
#[derive(Clone, Debug)]
pub struct FileServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The store root, canonical (symlinks resolved), so a resolved file can
    /// be checked to lie inside it.
    root: PathBuf,
    signer: UrlSigner,
}

impl FileServer {
    /// Serves the local store at `root`, checking links with `signer`
    /// (whose base URL's path is where keys begin in a request's path).
    ///
    /// # Errors
    /// [`StorageError::InvalidConfig`] when `root` cannot be resolved.
    pub fn new(root: &FsPath, signer: UrlSigner) -> Result<FileServer, StorageError> {
        let root = root.canonicalize().map_err(|e| {
            StorageError::InvalidConfig(format!(
                "store root {} cannot be resolved: {e}",
                root.display()
            ))
        })?;
        Ok(FileServer {
            inner: Arc::new(Inner { root, signer }),
        })
    }

    /// The router: every path and method goes to one handler, which refuses
    /// what it does not serve. Mount it at the root of a listener.
    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes.
    ///
    /// # Errors
    /// The listener fails.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn handle(State(server): State<FileServer>, request: Request) -> Response {
    let head = match *request.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut response = refuse(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
    };
    let uri = request.uri();
    let Some(key) = object_key(server.inner.signer.base().path(), uri.path()) else {
        return refuse(StatusCode::NOT_FOUND, "not found");
    };
    let expires = match server.inner.signer.verify(key, uri.query()) {
        Ok(expires) => expires,
        Err(refusal) => {
            tracing::debug!(key, reason = refusal.reason(), "signed link refused");
            return refuse(StatusCode::FORBIDDEN, refusal.reason());
        }
    };
    let remaining = expires.saturating_sub(server.inner.signer.now());
    match open(&server.inner.root, key).await {
        Ok((file, len)) => respond(file, len, key, remaining, head),
        Err(status) => refuse(status, "not found"),
    }
}

/// The key after `base` in `path`, when every segment is a plain name.
fn object_key<'a>(base: &str, path: &'a str) -> Option<&'a str> {
    let key = path.strip_prefix(base)?;
    key.split('/').all(crate::is_safe_segment).then_some(key)
}

/// Opens the regular file behind `key`, inside `root` after resolving
/// symlinks, and returns it with its length.
async fn open(root: &FsPath, key: &str) -> Result<(tokio::fs::File, u64), StatusCode> {
    let not_found = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StatusCode::NOT_FOUND
        } else {
            tracing::warn!(key, error = %e, "cannot read a stored object");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    let real = tokio::fs::canonicalize(root.join(key))
        .await
        .map_err(not_found)?;
    if !real.starts_with(root) {
        tracing::warn!(key, "a stored object resolves outside the store root");
        return Err(StatusCode::NOT_FOUND);
    }
    // Only regular files: a FIFO would block, a folder would be a listing.
    let meta = tokio::fs::metadata(&real).await.map_err(not_found)?;
    if !meta.is_file() {
        return Err(StatusCode::NOT_FOUND);
    }
    let file = tokio::fs::File::open(&real).await.map_err(not_found)?;
    // A symlink swapped into the path between the check and the open.
    if let Some(opened) = crate::file_input::opened_path(&file) {
        if opened != real {
            return Err(StatusCode::NOT_FOUND);
        }
    }
    let meta = file.metadata().await.map_err(not_found)?;
    if !meta.is_file() {
        return Err(StatusCode::NOT_FOUND);
    }
    Ok((file, meta.len()))
}

fn respond(file: tokio::fs::File, len: u64, key: &str, remaining: u64, head: bool) -> Response {
    // `object_key` allowed only plain names: the name needs no escaping.
    let name = key.rsplit('/').next().unwrap_or(key);
    let headers = [
        (header::CONTENT_TYPE, content_type(name).to_string()),
        (header::CONTENT_LENGTH, len.to_string()),
        (
            header::CACHE_CONTROL,
            format!("private, max-age={remaining}"),
        ),
        (
            header::CONTENT_DISPOSITION,
            format!("inline; filename=\"{name}\""),
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
        // The link is a credential: a page showing the file must not pass it
        // on in Referer, and a file a browser renders runs nothing.
        (header::REFERRER_POLICY, "no-referrer".into()),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox".into(),
        ),
        (header::ACCEPT_RANGES, "none".into()),
    ];
    if head {
        return (StatusCode::OK, headers).into_response();
    }
    (
        StatusCode::OK,
        headers,
        Body::from_stream(stream(file, len)),
    )
        .into_response()
}

/// The file's first `len` bytes in chunks: the length the headers promised,
/// even if the file grew; a file that shrank ends the body early (the client
/// sees a short read, never other bytes).
fn stream(
    file: tokio::fs::File,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send {
    futures_util::stream::try_unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        let mut buffer = vec![0u8; want];
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "stored object shrank while it was served",
            ));
        }
        buffer.truncate(read);
        Ok(Some((Bytes::from(buffer), (file, left - read as u64))))
    })
}

/// The content type of what the worker stores, by extension.
pub fn content_type(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "gif" => "image/gif",
        "tif" | "tiff" => "image/tiff",
        "bmp" => "image/bmp",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

/// A refusal: a short plain-text reason nobody caches.
fn refuse(status: StatusCode, reason: &'static str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        format!("{reason}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_names_under_the_base() {
        let base = "/files/";
        assert_eq!(
            object_key(base, "/files/acme/ws/j/0.jpg"),
            Some("acme/ws/j/0.jpg")
        );
        for path in [
            "/other/acme/ws/j/0.jpg",
            "/files/acme/../ws/0.jpg",
            "/files/acme/./ws/0.jpg",
            "/files/acme//ws/0.jpg",
            "/files/acme/ws/j/",
            "/files/",
            "/files/acme/%2e%2e/0.jpg",
            "/files/acme/ws/j/0%20.jpg",
            "/files",
        ] {
            assert_eq!(object_key(base, path), None, "{path}");
        }
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("0.JPG"), "image/jpeg");
        assert_eq!(content_type("0.webp"), "image/webp");
        assert_eq!(content_type("clip.mp4"), "video/mp4");
        assert_eq!(content_type("page.html"), "application/octet-stream");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}

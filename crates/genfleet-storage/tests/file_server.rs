//! The local store's file server in-process on a loopback listener, on
//! objects a real `Store::put_output` wrote: what a signed link gets, what a
//! changed, expired or rotated-out one gets, and what is never served
//! (traversal, symlinks out of the store, folders, other methods). Also the
//! modes of what the local store writes.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use genfleet_storage::serve::FileServer;
use genfleet_storage::testing::with_query_param as with_param;
use genfleet_storage::testing::{raw_request, RawAnswer};
use genfleet_storage::{
    Clock, InputPolicy, Keyring, Store, StoreConfig, UrlSigner, DEFAULT_INPUT_PREFIXES,
};
use url::Url;

const T0: u64 = 1_750_000_000;
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n not really a png, but bytes to compare";

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "genfleet-file-server-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open_store(root: &Path) -> Store {
    Store::open_local(StoreConfig {
        root: root.to_path_buf(),
        bucket: "genfleet".into(),
        inputs: InputPolicy::new(&DEFAULT_INPUT_PREFIXES, None).unwrap(),
    })
    .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A clock the test moves, starting at `T0`.
fn moving() -> (Arc<AtomicU64>, Clock) {
    let now = Arc::new(AtomicU64::new(T0));
    let read = now.clone();
    (now, Clock::from_fn(move || read.load(Ordering::SeqCst)))
}

fn signer(port: u16, keys: Keyring, clock: &Clock) -> UrlSigner {
    let base = Url::parse(&format!("http://127.0.0.1:{port}/files")).unwrap();
    UrlSigner::with_keyring(base, keys, Duration::from_secs(3600)).with_clock(clock.clone())
}

/// Starts the file server for `root` on a loopback port (`port`, 0 for any)
/// and returns the port and a handle that stops it.
async fn start(root: &Path, signer: UrlSigner, listener: tokio::net::TcpListener) -> Server {
    let server = FileServer::new(root, signer).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Server {
        stop: Some(stop),
        task,
    }
}

struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

type Answer = RawAnswer;

async fn request(port: u16, method: &str, path_and_query: &str) -> Answer {
    raw_request(port, method, path_and_query).await
}

/// The path and query of a signed link (what a client sends).
fn target(url: &str) -> String {
    let url = Url::parse(url).unwrap();
    format!("{}?{}", url.path(), url.query().unwrap_or(""))
}

#[tokio::test]
async fn the_local_store_writes_private_files_and_folders() {
    let dir = TempDir::new("modes");
    let root = dir.0.join("store");
    let store = open_store(&root);
    store
        .put_output("acme", "shop-1", "job1", "0.png", Bytes::from_static(PNG))
        .await
        .unwrap();
    // The same key again (a redelivered job) and a multi-level new folder.
    store
        .put_output("acme", "shop-1", "job1", "0.png", Bytes::from_static(PNG))
        .await
        .unwrap();
    store
        .put_output("globex", "ws", "job2", "1.png", Bytes::from_static(PNG))
        .await
        .unwrap();
    for folder in [
        "",
        "acme",
        "acme/shop-1",
        "acme/shop-1/job1",
        "globex/ws/job2",
    ] {
        assert_eq!(mode(&root.join(folder)), 0o700, "folder {folder:?}");
    }
    for file in ["acme/shop-1/job1/0.png", "globex/ws/job2/1.png"] {
        assert_eq!(mode(&root.join(file)), 0o600, "file {file}");
    }
    // Nothing else (no staging file) was left behind.
    let left: Vec<_> = std::fs::read_dir(root.join("acme/shop-1/job1"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["0.png"]);
}

#[tokio::test]
async fn signed_links_are_served_and_nothing_else_is() {
    let dir = TempDir::new("serve");
    let root = dir.0.join("store");
    let store = open_store(&root);
    let stored = store
        .put_output("acme", "shop-1", "job1", "0.png", Bytes::from_static(PNG))
        .await
        .unwrap();
    store
        .put_output(
            "acme",
            "shop-1",
            "job2",
            "0.png",
            Bytes::from_static(b"job 2"),
        )
        .await
        .unwrap();
    store
        .put_output(
            "acme",
            "shop-2",
            "job1",
            "0.png",
            Bytes::from_static(b"ws 2"),
        )
        .await
        .unwrap();
    // A file outside the store, and a link to it from inside the store.
    std::fs::write(dir.0.join("secret.png"), b"outside the store").unwrap();
    std::os::unix::fs::symlink(
        dir.0.join("secret.png"),
        root.join("acme/shop-1/job1/link.png"),
    )
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (now, clock) = moving();
    let k1 = Keyring::new("k1", b"the first signing key").unwrap();
    let signer = signer(port, k1.clone(), &clock);
    let server = start(&root, signer.clone(), listener).await;

    let (url, expires) = signer.sign(&stored.key).unwrap();
    assert_eq!(expires, T0 + 3600);
    let ok = request(port, "GET", &target(&url)).await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.body, PNG);
    assert_eq!(ok.header("content-type"), Some("image/png"));
    assert_eq!(ok.header("content-length"), Some(&*PNG.len().to_string()));
    assert_eq!(ok.header("cache-control"), Some("private, max-age=3600"));
    assert_eq!(ok.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        ok.header("content-disposition"),
        Some("inline; filename=\"0.png\"")
    );
    let head = request(port, "HEAD", &target(&url)).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some(&*PNG.len().to_string()));

    // Remaining lifetime, not the full TTL, once time has passed.
    now.store(T0 + 600, Ordering::SeqCst);
    let later = request(port, "GET", &target(&url)).await;
    assert_eq!(later.header("cache-control"), Some("private, max-age=3000"));

    let refused: Vec<(String, &str, u16)> = vec![
        (
            url.replace("/job1/", "/job2/"),
            "another job's file, same name",
            403,
        ),
        (
            url.replace("/shop-1/", "/shop-2/"),
            "another workspace's file",
            403,
        ),
        (url.replace("/acme/", "/globex/"), "another org", 403),
        (with_param(&url, "kid", "k2"), "an unknown key id", 403),
        (
            with_param(&url, "expires", &(expires + 3600).to_string()),
            "a later expiry",
            403,
        ),
        (
            url.split('?').next().unwrap().to_string(),
            "no signature",
            403,
        ),
    ];
    for (changed, what, status) in &refused {
        let answer = request(port, "GET", &target(changed)).await;
        assert_eq!(answer.status, *status, "{what}");
        assert!(
            !answer.body.starts_with(b"\x89PNG") && answer.body != b"job 2",
            "{what}"
        );
        assert_eq!(answer.header("cache-control"), Some("no-store"), "{what}");
    }
    // Only GET and HEAD.
    let post = request(port, "POST", &target(&url)).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    // Traversal and encoded paths never reach the filesystem, signed or not.
    for path in [
        "/files/acme/shop-1/job1/../job2/0.png",
        "/files/acme/shop-1/job1/%2e%2e/job2/0.png",
        "/files//etc/passwd",
        "/etc/passwd",
    ] {
        let answer = request(
            port,
            "GET",
            &format!("{path}?{}", url.split_once('?').unwrap().1),
        )
        .await;
        assert_eq!(answer.status, 404, "{path}");
    }
    // Valid signatures, but nothing a client may have: a missing object, a
    // folder (no listings), a symlink out of the store.
    for key in [
        "acme/shop-1/job1/9.png",
        "acme/shop-1/job1",
        "acme/shop-1/job1/link.png",
    ] {
        let (link, _) = signer.sign(key).unwrap();
        let answer = request(port, "GET", &target(&link)).await;
        assert_eq!(answer.status, 404, "{key}");
        assert!(!String::from_utf8_lossy(&answer.body).contains("outside"));
        assert!(!String::from_utf8_lossy(&answer.body).contains("0.png"));
    }

    // Expired: one second after `expires`, with the reason.
    now.store(expires, Ordering::SeqCst);
    assert_eq!(request(port, "GET", &target(&url)).await.status, 200);
    now.store(expires + 1, Ordering::SeqCst);
    let expired = request(port, "GET", &target(&url)).await;
    assert_eq!(expired.status, 403);
    assert_eq!(String::from_utf8_lossy(&expired.body), "link has expired\n");
    server.stop().await;
}

#[tokio::test]
async fn a_rotation_keeps_old_links_working_until_the_old_key_retires() {
    let dir = TempDir::new("rotate");
    let root = dir.0.join("store");
    let store = open_store(&root);
    let stored = store
        .put_output("acme", "shop-1", "job1", "0.png", Bytes::from_static(PNG))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (now, clock) = moving();
    let before = signer(port, Keyring::new("k1", b"the first key").unwrap(), &clock);
    let server = start(&root, before.clone(), listener).await;
    let (old_url, _) = before.sign(&stored.key).unwrap();
    assert_eq!(request(port, "GET", &target(&old_url)).await.status, 200);
    server.stop().await;

    // Restarted with k2 current, k1 verifying until T0 + 1800.
    now.store(T0 + 60, Ordering::SeqCst);
    let keys = Keyring::new("k2", b"the second key")
        .unwrap()
        .with_retired("k1", b"the first key", T0 + 1800)
        .unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let after = signer(port, keys, &clock);
    let server = start(&root, after.clone(), listener).await;
    let (new_url, _) = after.sign(&stored.key).unwrap();
    assert!(new_url.contains("kid=k2"));
    assert_eq!(request(port, "GET", &target(&old_url)).await.body, PNG);
    assert_eq!(request(port, "GET", &target(&new_url)).await.body, PNG);
    // A link claiming k1 but signed with k2's secret: refused.
    let moved = with_param(&new_url, "kid", "k1");
    assert_eq!(request(port, "GET", &target(&moved)).await.status, 403);

    now.store(T0 + 1801, Ordering::SeqCst);
    let retired = request(port, "GET", &target(&old_url)).await;
    assert_eq!(retired.status, 403);
    assert_eq!(
        String::from_utf8_lossy(&retired.body),
        "link was signed with a key that is not accepted\n"
    );
    assert_eq!(request(port, "GET", &target(&new_url)).await.status, 200);
    server.stop().await;
}

//! The SSRF table through the whole fetch path, against loopback servers.
//!
//! Safety: every fetcher here has a [`LoopbackOnlyGate`]. The gate is the
//! last step of a hop, after the guard and before the hop's client is
//! built pinned to the addresses checked, so even with a broken guard no
//! test could connect anywhere but this machine: a private or metadata
//! address would be refused by the gate, and `gate.seen()` shows it. The
//! assertions that the gate saw nothing but the allowed loopback server
//! prove that the guard, not the gate, refused each address. (A network
//! namespace without a route out, `unshare -rn`, would also do, but needs
//! the test binary re-executed inside it; the gate works everywhere.)

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// What the test server answers to a request for a path.
#[derive(Clone)]
enum Reply {
    Body(Vec<u8>),
    Status(u16),
    Redirect(String),
    /// A redirect that also sets a cookie.
    RedirectWithCookie(String),
    /// Chunked, never ending.
    Endless,
    /// Headers claiming this Content-Length, then nothing.
    Claims(u64),
    /// No answer at all.
    Silent,
    /// Headers, then a stalled body.
    StallBody,
}

type Script = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// A loopback HTTP/1.1 server that counts connections and keeps every
/// request head it reads.
struct Server {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(script: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Server {
        Server::start_on("127.0.0.1:0", Arc::new(script)).await
    }

    async fn start_on(bind: &str, script: Script) -> Server {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer(stream, script.clone(), seen.clone()));
            }
        });
        Server {
            addr,
            connections,
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn answer(mut stream: TcpStream, script: Script, seen: Arc<Mutex<Vec<String>>>) {
    let Some(head) = crate::testing::read_request_head(&mut stream).await else {
        return;
    };
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    seen.lock().unwrap().push(head);
    let write = |text: String| text.into_bytes();
    let out = match script(&path) {
        Reply::Body(body) => {
            let mut out = write(format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ));
            out.extend(body);
            out
        }
        Reply::Status(code) => write(format!(
            "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )),
        Reply::Redirect(to) => write(format!(
            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )),
        Reply::RedirectWithCookie(to) => write(format!(
            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nSet-Cookie: session=secret; Path=/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )),
        Reply::Endless => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            let chunk = [b'x'; 8192];
            loop {
                let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
                frame.extend_from_slice(&chunk);
                frame.extend_from_slice(b"\r\n");
                if stream.write_all(&frame).await.is_err() {
                    return;
                }
            }
        }
        Reply::Claims(length) => {
            let _ = stream
                .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n").as_bytes())
                .await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        Reply::Silent => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        Reply::StallBody => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                .await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
    };
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// Names the tests resolve, and nothing else.
#[derive(Default)]
struct TestDns(HashMap<String, Vec<IpAddr>>);

impl TestDns {
    fn with(mut self, name: &str, addresses: &[&str]) -> TestDns {
        self.0.insert(
            name.to_owned(),
            addresses.iter().map(|a| a.parse().unwrap()).collect(),
        );
        self
    }
}

impl Resolve for TestDns {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move {
            self.0
                .get(host)
                .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such name"))
        })
    }
}

fn make(allow: &[String], dns: TestDns) -> (Fetcher, Arc<LoopbackOnlyGate>) {
    make_with(allow, dns, Duration::from_secs(10), 3)
}

fn make_with(
    allow: &[String],
    dns: TestDns,
    timeout: Duration,
    max_redirects: u32,
) -> (Fetcher, Arc<LoopbackOnlyGate>) {
    let gate = Arc::new(LoopbackOnlyGate::default());
    let fetcher = Fetcher::new(FetchConfig {
        allow: allow.to_vec(),
        connect_timeout: Duration::from_secs(2),
        timeout,
        max_redirects,
    })
    .unwrap()
    .with_resolver(Arc::new(dns))
    .with_gate(gate.clone());
    (fetcher, gate)
}

fn refused_message(result: Result<Bytes, FetchError>) -> String {
    match result {
        Err(FetchError::Refused(message)) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Names resolving into every refused class, and IP literals of them:
/// each refused by the guard before the gate saw any address.
#[tokio::test]
async fn every_refused_class_is_refused_before_any_connection() {
    let by_name = [
        (
            "loopback.test",
            vec!["127.0.0.1"],
            "a loopback address (127.0.0.0/8)",
        ),
        (
            "loopback6.test",
            vec!["::1"],
            "a loopback address (::1/128)",
        ),
        (
            "ten.test",
            vec!["10.0.0.1"],
            "a private address (10.0.0.0/8)",
        ),
        (
            "172.test",
            vec!["172.16.5.4"],
            "a private address (172.16.0.0/12)",
        ),
        (
            "192.test",
            vec!["192.168.1.1"],
            "a private address (192.168.0.0/16)",
        ),
        (
            "meta.test",
            vec!["169.254.169.254"],
            "a link-local address (169.254.0.0/16)",
        ),
        (
            "cgnat.test",
            vec!["100.64.0.1"],
            "a carrier-grade NAT address (100.64.0.0/10)",
        ),
        (
            "zero.test",
            vec!["0.0.0.0"],
            "an unspecified address (0.0.0.0/32)",
        ),
        ("any6.test", vec!["::"], "an unspecified address (::/128)"),
        (
            "multicast.test",
            vec!["224.0.0.251"],
            "a multicast address (224.0.0.0/4)",
        ),
        (
            "broadcast.test",
            vec!["255.255.255.255"],
            "a broadcast address (255.255.255.255/32)",
        ),
        (
            "reserved.test",
            vec!["240.1.2.3"],
            "a reserved address (240.0.0.0/4)",
        ),
        (
            "bench.test",
            vec!["198.18.0.1"],
            "a benchmarking address (198.18.0.0/15)",
        ),
        (
            "ula.test",
            vec!["fd00::1"],
            "a unique-local address (fc00::/7)",
        ),
        (
            "ll6.test",
            vec!["fe80::1"],
            "a link-local address (fe80::/10)",
        ),
        (
            "mapped.test",
            vec!["::ffff:10.0.0.1"],
            "an IPv4-mapped IPv6 of a private address (10.0.0.0/8)",
        ),
        (
            "nat64.test",
            vec!["64:ff9b::a9fe:a9fe"],
            "a NAT64 IPv6 of a link-local address (169.254.0.0/16)",
        ),
        (
            "6to4.test",
            vec!["2002:c0a8:101::1"],
            "a 6to4 IPv6 of a private address (192.168.0.0/16)",
        ),
        // One public and one private address: refused, whichever a
        // connection would have picked.
        (
            "mixed.test",
            vec!["93.184.215.14", "10.1.2.3"],
            "a private address (10.0.0.0/8)",
        ),
        (
            "mixed6.test",
            vec!["2606:4700::1", "fd00::2"],
            "a unique-local address (fc00::/7)",
        ),
    ];
    let mut dns = TestDns::default();
    for (name, addresses, _) in &by_name {
        dns = dns.with(name, addresses);
    }
    let (fetcher, gate) = make(&[], dns);
    for (name, _, class) in &by_name {
        let message = refused_message(
            fetcher
                .fetch_bytes(&format!("https://{name}/x.jpg?X-Amz-Signature=s3cr3t"), 100)
                .await,
        );
        assert_eq!(message, format!("URL host {name} resolves to {class}"));
        assert!(!message.contains("s3cr3t") && !message.contains("x.jpg"));
    }
    let literals = [
        ("https://169.254.169.254/latest/meta-data/", "URL host 169.254.169.254 is a link-local address (169.254.0.0/16)"),
        ("https://[::ffff:10.0.0.1]/", "URL host [::ffff:a00:1] is an IPv4-mapped IPv6 of a private address (10.0.0.0/8)"),
        ("https://[::ffff:169.254.169.254]/", "URL host [::ffff:a9fe:a9fe] is an IPv4-mapped IPv6 of a link-local address (169.254.0.0/16)"),
        ("https://10.0.0.1/", "URL host 10.0.0.1 is a private address (10.0.0.0/8)"),
        ("https://127.0.0.1/", "URL host 127.0.0.1 is a loopback address (127.0.0.0/8)"),
        // WHATWG parsing reads these as 127.0.0.1 and 169.254.169.254.
        ("https://0x7f.1/", "URL host 127.0.0.1 is a loopback address (127.0.0.0/8)"),
        ("https://2852039166/", "URL host 169.254.169.254 is a link-local address (169.254.0.0/16)"),
        ("https://0.0.0.0/", "URL host 0.0.0.0 is an unspecified address (0.0.0.0/32)"),
        ("https://[::]/", "URL host [::] is an unspecified address (::/128)"),
        ("https://[::1]/", "URL host [::1] is a loopback address (::1/128)"),
        ("https://[fe80::1]/", "URL host [fe80::1] is a link-local address (fe80::/10)"),
        ("https://[fc00::1]/", "URL host [fc00::1] is a unique-local address (fc00::/7)"),
        ("https://100.100.100.200/", "URL host 100.100.100.200 is a carrier-grade NAT address (100.64.0.0/10)"),
        ("https://[64:ff9b::10.0.0.1]/", "URL host [64:ff9b::a00:1] is a NAT64 IPv6 of a private address (10.0.0.0/8)"),
        ("https://[2002:a00:1::]/", "URL host [2002:a00:1::] is a 6to4 IPv6 of a private address (10.0.0.0/8)"),
        ("https://192.0.0.1/", "URL host 192.0.0.1 is a reserved (IETF protocol assignments) address (192.0.0.0/24)"),
    ];
    for (url, expected) in literals {
        assert_eq!(
            refused_message(fetcher.fetch_bytes(url, 100).await),
            expected,
            "{url}"
        );
    }
    assert_eq!(
        gate.seen(),
        Vec::<SocketAddr>::new(),
        "the guard let an address reach the gate"
    );
}

/// A name resolving to 127.0.0.1, where a real server listens: refused
/// with zero connections, over https and over http; the same server, once
/// allowed, is reached (so the count could have moved).
#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_with_zero_connections() {
    let server = Server::start(|_| Reply::Body(b"image".to_vec())).await;
    let port = server.addr.port();
    let dns = || TestDns::default().with("uploads.test", &["127.0.0.1"]);
    let (fetcher, gate) = make(&[], dns());
    for url in [
        format!("https://uploads.test:{port}/a.jpg"),
        format!("http://uploads.test:{port}/a.jpg"),
        format!("http://127.0.0.1:{port}/a.jpg"),
    ] {
        let message = refused_message(fetcher.fetch_bytes(&url, 100).await);
        assert!(
            message.contains("uploads.test") || message.contains("127.0.0.1"),
            "{message}"
        );
    }
    assert_eq!(server.connections(), 0);
    assert!(gate.seen().is_empty());

    // Allowed by name and port: reached, through the address checked.
    let (allowed, gate) = make(&[format!("uploads.test:{port}")], dns());
    let body = allowed
        .fetch_bytes(&format!("http://uploads.test:{port}/a.jpg"), 100)
        .await
        .unwrap();
    assert_eq!(&body[..], b"image");
    assert_eq!(server.connections(), 1);
    assert_eq!(
        gate.seen(),
        vec![SocketAddr::new("127.0.0.1".parse().unwrap(), port)]
    );
    // The same name on another port is not allowed.
    let other = format!("http://uploads.test:{}/a.jpg", port.wrapping_add(1).max(1));
    refused_message(allowed.fetch_bytes(&other, 100).await);
    assert_eq!(server.connections(), 1);
}

/// An allowed loopback server redirecting into each refused class: every
/// hop is checked again, and nothing past the first server is reached.
#[tokio::test]
async fn redirects_into_refused_classes_are_refused() {
    // A second loopback listener, not allowed: reachable if the guard
    // failed, so its zero connection count means something.
    let bystander = Server::start(|_| Reply::Body(b"secret".to_vec())).await;
    let bystander_port = bystander.addr.port();
    let targets: Vec<String> = vec![
        "http://169.254.169.254/latest/meta-data/".into(),
        "https://169.254.169.254/latest/meta-data/".into(),
        "http://[::ffff:10.0.0.1]/".into(),
        "https://[::ffff:10.0.0.1]/".into(),
        "http://10.0.0.1/".into(),
        "https://10.0.0.1/".into(),
        "https://private.test/".into(),
        format!("https://bystander.test:{bystander_port}/"),
        format!("http://127.0.0.1:{bystander_port}/"),
        format!("https://[::ffff:127.0.0.1]:{bystander_port}/"),
        "https://mixed.test/".into(),
        "/relative-but-fine-then-redirects-to-metadata".into(),
    ];
    let script_targets = targets.clone();
    let server = Server::start(move |path| {
        if path == "/relative-but-fine-then-redirects-to-metadata" {
            return Reply::Redirect("https://169.254.169.254/".into());
        }
        let index: usize = path.trim_start_matches("/go/").parse().unwrap_or(0);
        Reply::Redirect(script_targets[index].clone())
    })
    .await;
    let dns = TestDns::default()
        .with("private.test", &["10.9.8.7"])
        .with("bystander.test", &["127.0.0.1"])
        .with("mixed.test", &["8.8.8.8", "192.168.0.10"]);
    let (fetcher, gate) = make(&[server.addr.to_string()], dns);
    for (index, target) in targets.iter().enumerate() {
        let message = refused_message(
            fetcher
                .fetch_bytes(&server.url(&format!("/go/{index}")), 100)
                .await,
        );
        assert!(
            message.contains("address (") || message.contains("http:// URL"),
            "{target}: {message}"
        );
    }
    assert_eq!(bystander.connections(), 0);
    assert!(
        gate.seen().iter().all(|a| *a == server.addr),
        "{:?}",
        gate.seen()
    );
}

#[tokio::test]
async fn too_many_redirects_stop_after_the_limit() {
    let server = Server::start(|path| {
        let n: u32 = path.trim_start_matches("/r").parse().unwrap_or(0);
        Reply::Redirect(format!("/r{}", n + 1))
    })
    .await;
    let (fetcher, _) = make(&[server.addr.to_string()], TestDns::default());
    let result = fetcher.fetch_bytes(&server.url("/r0"), 100).await;
    assert!(
        matches!(result, Err(FetchError::TooManyRedirects(3))),
        "{result:?}"
    );
    // The first request and three redirects followed, no more.
    assert_eq!(server.requests().len(), 4);

    // Within the limit, the last hop's body.
    let server = Server::start(|path| match path {
        "/a" => Reply::Redirect("/b".into()),
        "/b" => Reply::Redirect("/c".into()),
        _ => Reply::Body(b"done".to_vec()),
    })
    .await;
    let (fetcher, _) = make(&[server.addr.to_string()], TestDns::default());
    assert_eq!(
        &fetcher.fetch_bytes(&server.url("/a"), 100).await.unwrap()[..],
        b"done"
    );
}

#[tokio::test]
async fn oversized_bodies_are_cut_off_at_the_limit() {
    let server = Server::start(|path| match path {
        "/endless" => Reply::Endless,
        "/claims" => Reply::Claims(10 * 1024 * 1024 * 1024),
        "/exact" => Reply::Body(vec![7; 1000]),
        _ => Reply::Body(vec![7; 1001]),
    })
    .await;
    let (fetcher, _) = make(&[server.addr.to_string()], TestDns::default());
    let started = std::time::Instant::now();
    match fetcher.fetch_bytes(&server.url("/endless"), 100_000).await {
        // Reading stops with the chunk that passes the limit.
        Err(FetchError::TooLarge { size, limit }) => {
            assert_eq!(limit, 100_000);
            assert!(size > limit && size <= limit + 64 * 1024, "{size}");
        }
        other => panic!("{other:?}"),
    }
    // Refused from the header alone: the server sends no body and keeps
    // the connection open, so reading any of it would time out instead.
    match fetcher.fetch_bytes(&server.url("/claims"), 100_000).await {
        Err(FetchError::TooLarge { size, .. }) => assert_eq!(size, 10 * 1024 * 1024 * 1024),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        fetcher
            .fetch_bytes(&server.url("/exact"), 1000)
            .await
            .unwrap()
            .len(),
        1000
    );
    assert!(matches!(
        fetcher.fetch_bytes(&server.url("/over"), 1000).await,
        Err(FetchError::TooLarge {
            size: 1001,
            limit: 1000
        })
    ));
}

#[tokio::test]
async fn silent_and_stalled_servers_time_out() {
    let server = Server::start(|path| match path {
        "/silent" => Reply::Silent,
        _ => Reply::StallBody,
    })
    .await;
    let (fetcher, _) = make_with(
        &[server.addr.to_string()],
        TestDns::default(),
        Duration::from_millis(500),
        3,
    );
    for path in ["/silent", "/stall"] {
        let started = std::time::Instant::now();
        let result = fetcher.fetch_bytes(&server.url(path), 1000).await;
        assert!(
            matches!(result, Err(FetchError::Timeout(ref host)) if host == "127.0.0.1"),
            "{path}: {result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{path}");
    }
}

/// No credentials from the URL, no cookies from a redirect, no Referer.
#[tokio::test]
async fn no_credentials_cookies_or_referer_are_sent() {
    let server = Server::start(|path| match path {
        "/start" => Reply::RedirectWithCookie("/end".into()),
        _ => Reply::Body(b"ok".to_vec()),
    })
    .await;
    let (fetcher, _) = make(&[server.addr.to_string()], TestDns::default());
    let with_user = format!("http://user:pw@{}/end", server.addr);
    assert!(matches!(
        fetcher.fetch_bytes(&with_user, 100).await,
        Err(FetchError::Invalid(_))
    ));
    assert_eq!(server.connections(), 0);
    fetcher
        .fetch_bytes(&server.url("/start"), 100)
        .await
        .unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    for head in requests {
        let lower = head.to_ascii_lowercase();
        for header in ["cookie:", "authorization:", "referer:"] {
            assert!(!lower.contains(header), "{head}");
        }
    }
}

/// How each failure reaches the store's error classes (and so a job's
/// result code).
#[tokio::test]
async fn input_errors_map_to_the_store_classes() {
    let server = Server::start(|path| match path {
        "/ok" => Reply::Body(b"abc".to_vec()),
        "/big" => Reply::Body(vec![1; 200]),
        "/teapot" => Reply::Status(418),
        code => Reply::Status(code.trim_start_matches('/').parse().unwrap_or(500)),
    })
    .await;
    let dns = TestDns::default().with("inside.test", &["10.0.0.7"]);
    let (fetcher, _) = make(&[server.addr.to_string()], dns);
    let kind = |r: Result<Bytes, StorageError>| match r {
        Ok(_) => "ok".to_string(),
        Err(StorageError::NotFound(_)) => "not_found".into(),
        Err(StorageError::Unavailable(_)) => "unavailable".into(),
        Err(StorageError::Forbidden(m)) => format!("forbidden: {m}"),
        Err(StorageError::InvalidUri(m)) => format!("invalid: {m}"),
        Err(StorageError::TooLarge { .. }) => "too_large".into(),
        Err(e) => format!("other: {e}"),
    };
    let cases = [
        (server.url("/ok"), "ok".to_string()),
        (server.url("/big"), "too_large".into()),
        (server.url("/404"), "not_found".into()),
        (server.url("/403"), "not_found".into()),
        (server.url("/410"), "not_found".into()),
        (server.url("/503"), "unavailable".into()),
        (server.url("/429"), "unavailable".into()),
        (
            server.url("/teapot"),
            "invalid: input URL host 127.0.0.1 answered HTTP 418".into(),
        ),
        (
            "https://inside.test/a.jpg?sig=x".into(),
            "forbidden: input URL host inside.test resolves to a private address (10.0.0.0/8)"
                .into(),
        ),
        (
            "ftp://example.com/a".into(),
            "invalid: input URL scheme ftp is not fetched, only https://".into(),
        ),
        ("https://unknown.test/a".into(), "unavailable".into()),
    ];
    for (url, expected) in cases {
        assert_eq!(
            kind(fetch_input(Some(&fetcher), &url, 100).await),
            expected,
            "{url}"
        );
    }
    let requests_before = server.requests().len();
    // Deleting a URL input deletes nothing and sends nothing.
    assert!(delete_input(Some(&fetcher)).is_ok());
    assert_eq!(server.requests().len(), requests_before);
    // Without a fetcher, URL inputs are not accepted at all.
    assert!(matches!(
        fetch_input(None, &server.url("/ok"), 100).await,
        Err(StorageError::InvalidUri(_))
    ));
    assert!(delete_input(None).is_err());
}

#[test]
fn allow_list_entries_and_matching() {
    let allow = parse_allow(&[
        "Files.Example.".to_string(),
        "cdn.example:8443".into(),
        "127.0.0.1:9000".into(),
        "10.1.2.3".into(),
        "::1".into(),
        "[fd00::5]:80".into(),
    ])
    .unwrap();
    let host = |url: &str| {
        let url = Url::parse(url).unwrap();
        let port = url.port_or_known_default().unwrap();
        is_allowed(&allow, &url.host().unwrap(), port)
    };
    assert!(host("https://files.example/a"));
    assert!(host("http://FILES.example.:81/a"));
    assert!(!host("https://sub.files.example/a"));
    assert!(host("https://cdn.example:8443/a"));
    assert!(!host("https://cdn.example/a"));
    assert!(host("http://127.0.0.1:9000/a"));
    assert!(!host("http://127.0.0.1:9001/a"));
    assert!(!host("http://[::ffff:127.0.0.1]:9000/a"));
    assert!(host("http://10.1.2.3:1/a"));
    assert!(host("http://[::1]:5/a"));
    assert!(host("http://[fd00::5]/a"));
    assert!(!host("http://[fd00::5]:81/a"));
    for bad in ["", "a b", "host:port", "[::1", "[x]:1", "h:99999"] {
        assert!(parse_allow(&[bad.to_string()]).is_err(), "{bad:?}");
    }
}

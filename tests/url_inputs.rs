//! End to end: inputs given as URLs and provider output URLs behind the
//! SSRF guard, with the real `genfleet worker` binary, RabbitMQ and
//! PostgreSQL.
//!
//! - An input URL on an allow-listed loopback host is fetched and the job
//!   succeeds; input URLs that reach, directly or through a redirect from
//!   that host, a loopback address that is not allowed (a literal, the name
//!   `localhost`, an IPv4-mapped IPv6 literal) end `invalid_input` before
//!   any credits are held, and the server listening there sees no
//!   connection.
//! - A fal job whose output URLs point at a loopback file host that
//!   `providers.download_allow` does not list ends `provider_unavailable`
//!   (the provider's fault, not the customer's) with its credits released,
//!   and the fake's file host serves nothing.
//!
//! Safety: every refused destination here is a loopback address. The child
//! worker uses the real resolver and no test gate, so a broken guard would
//! connect; it can only ever connect to this machine, where the bystander
//! listener counts it. The other refused classes (private, link-local and
//! metadata, CGNAT, IPv6 forms) are covered by the storage crate's tests,
//! whose recording gate makes a connection to them impossible.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use genfleet_credits::Ledger;
use genfleet_proto::v1;
use genfleet_providers::fake_fal::FakeFal;
use support::*;
use tokio::io::AsyncWriteExt;

/// A loopback HTTP server: `/photo.jpg` is the example photo, `/go?<url>`
/// redirects to `<url>`; counts connections.
struct Host {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Host {
    async fn start(bind: &str, photo: Vec<u8>) -> Host {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let photo = Arc::new(photo);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let photo = photo.clone();
                tokio::spawn(async move {
                    let Some(head) =
                        genfleet_storage::testing::read_request_head(&mut stream).await
                    else {
                        return;
                    };
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let mut out = if let Some(to) = target.strip_prefix("/go?") {
                        format!(
                            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .into_bytes()
                    } else if target.starts_with("/photo.jpg") {
                        let mut out = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            photo.len()
                        )
                        .into_bytes();
                        out.extend_from_slice(&photo);
                        out
                    } else {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    };
                    let _ = stream.write_all(&out).await;
                    out.clear();
                    let _ = stream.shutdown().await;
                });
            }
        });
        Host {
            addr,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

struct Setup {
    vhost: Vhost,
    _schema: Schema,
    dir: TempDir,
    ledger: Ledger,
    config: std::path::PathBuf,
}

/// A worker on its own vhost and schema; `edit` rewrites the TOML of
/// `support::write_config`.
async fn setup(prefix: &str, fal_base_url: &str, edit: impl Fn(String) -> String) -> Setup {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new(prefix);
    let root = store_with_photo(&dir.0);
    photo_for(&root, "shop-1");
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    ledger.grant("acme/shop-1", 1_000, "e2e").await.unwrap();
    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &root,
            fal_base_url,
            concurrency: 4,
            grace_seconds: 5,
            http_port: 0,
            fal_poll_ms: 50,
        },
    );
    let toml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, edit(toml)).unwrap();
    Setup {
        vhost,
        _schema: schema,
        dir,
        ledger,
        config,
    }
}

async fn publish_all(url: &str, jobs: &[(&v1::Job, &str)]) {
    let broker = genfleet_broker::Broker::connect(url, "e2e-publisher")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    for (job, class) in jobs {
        let body = genfleet_proto::encode_json(*job);
        publish_job(&publisher, class, &body, Some(&job.job_id)).await;
    }
    broker.close().await;
}

fn credits(result: &v1::JobResult) -> (i64, i64, i64) {
    let c = result.credits.unwrap_or_default();
    (c.held, c.captured, c.released)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_inputs_on_allowed_hosts_succeed_and_refused_ones_fail_without_a_connection() {
    let photo = std::fs::read(repo_path("examples/photos/dandelions_1024.jpg")).unwrap();
    let uploads = Host::start("127.0.0.1:0", photo.clone()).await;
    // Loopback, not allowed: where every refused URL below points. A guard
    // that let one through would connect here.
    let bystander = Host::start("127.0.0.1:0", photo).await;
    let allowed = uploads.addr.to_string();
    let s = setup("genfleet-url-inputs", "http://127.0.0.1:9/", |toml| {
        toml.replacen(
            "[storage]\n",
            &format!("[storage]\nfetch_allow = [\"{allowed}\"]\nfetch_timeout_seconds = 10\n"),
            1,
        )
    })
    .await;
    let (conn, queue) = results_queue(&s.vhost.url()).await;
    let mut worker = WorkerProcess::start(&s.config, s.dir.0.join("worker.log"));
    wait_ready(&mut worker, Duration::from_secs(30)).await;

    let job = |uri: String| local_edit_job("acme", "shop-1", &[uri], 512, 5);
    let up = uploads.addr;
    let by = bystander.addr.port();
    // A presigned-looking query: it must not appear in any result.
    let ok = job(format!("http://{up}/photo.jpg?X-Amz-Signature=e2esecret"));
    let redirected_ok = job(format!("http://{up}/go?/photo.jpg"));
    let refused: Vec<(v1::Job, &str)> = vec![
        (
            job(format!("https://localhost:{by}/photo.jpg?X-Amz-Signature=e2esecret")),
            "input URL host localhost resolves to a loopback address",
        ),
        (
            job(format!("http://127.0.0.1:{by}/photo.jpg")),
            "input http:// URL (host 127.0.0.1) is refused",
        ),
        (
            job(format!("https://[::ffff:127.0.0.1]:{by}/photo.jpg")),
            "input URL host [::ffff:7f00:1] is an IPv4-mapped IPv6 of a loopback address (127.0.0.0/8)",
        ),
        (
            job(format!("http://{up}/go?https://127.0.0.1:{by}/photo.jpg")),
            "input URL host 127.0.0.1 is a loopback address (127.0.0.0/8)",
        ),
        (
            job(format!("http://{up}/go?https://localhost:{by}/photo.jpg")),
            "input URL host localhost resolves to a loopback address",
        ),
        (
            job(format!("http://{up}/go?http://[::ffff:127.0.0.1]:{by}/photo.jpg")),
            "input http:// URL (host [::ffff:7f00:1]) is refused",
        ),
    ];
    let mut all: Vec<(&v1::Job, &str)> = vec![(&ok, "cpu"), (&redirected_ok, "cpu")];
    all.extend(refused.iter().map(|(job, _)| (job, "cpu")));
    publish_all(&s.vhost.url(), &all).await;
    let collected = collect_results(&conn, &queue, all.len(), Duration::from_secs(60)).await;
    assert_eq!(collected.results.len(), all.len(), "{}", worker.log_tail());

    for job in [&ok, &redirected_ok] {
        let result = &collected.results[&job.job_id].0;
        assert_eq!(result.status, v1::JobStatus::Succeeded as i32, "{result:?}");
        assert_eq!(credits(result), (5, 5, 0));
    }
    for (job, expected) in &refused {
        let result = &collected.results[&job.job_id].0;
        assert_eq!(result.status, v1::JobStatus::Failed as i32, "{result:?}");
        let error = result.error.clone().unwrap();
        assert_eq!(error.code, "invalid_input", "{error:?}");
        assert!(!error.retryable);
        assert!(
            error.message.contains(expected),
            "{:?} lacks {expected:?}",
            error.message
        );
        assert!(!error.message.contains("e2esecret") && !error.message.contains("photo.jpg"));
        // Refused while fetching, before the reservation: nothing held.
        assert_eq!(credits(result), (0, 0, 0));
        assert!(s.ledger.hold(&job.job_id).await.unwrap().is_none());
    }
    assert_eq!(bystander.connections(), 0, "a refused URL was connected to");
    // The allowed host served the two good jobs and the four redirects.
    assert!(uploads.connections() >= 5);
    let log = std::fs::read_to_string(s.dir.0.join("worker.log")).unwrap_or_default();
    assert!(!log.contains("e2esecret"), "a signed query reached the log");
    drop(conn);
    worker.terminate(Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_output_urls_to_refused_addresses_fail_the_provider_not_the_customer() {
    let fake = FakeFal::start().await.unwrap();
    // The fake's file host is http://127.0.0.1:<port>: allowed by the
    // shared configuration; here only another port is.
    let s = setup("genfleet-url-downloads", fake.base_url.as_str(), |toml| {
        toml.replacen(
            "download_allow = [\"127.0.0.1\"]",
            "download_allow = [\"127.0.0.1:9\"]",
            1,
        )
    })
    .await;
    let (conn, queue) = results_queue(&s.vhost.url()).await;
    let mut worker = WorkerProcess::start(&s.config, s.dir.0.join("worker.log"));
    wait_ready(&mut worker, Duration::from_secs(30)).await;

    let job = fal_product_job(
        "shop-1",
        "test/ok",
        "a red sneaker",
        5,
        v1::Priority::Normal,
    );
    publish_all(&s.vhost.url(), &[(&job, "remote")]).await;
    let collected = collect_results(&conn, &queue, 1, Duration::from_secs(60)).await;
    let result = &collected
        .results
        .get(&job.job_id)
        .unwrap_or_else(|| panic!("no result:\n{}", worker.log_tail()))
        .0;
    assert_eq!(result.status, v1::JobStatus::Failed as i32, "{result:?}");
    let error = result.error.clone().unwrap();
    assert_eq!(error.code, "provider_unavailable", "{error:?}");
    assert!(
        error
            .message
            .contains("an output URL was refused: http:// URL (host 127.0.0.1) is refused"),
        "{}",
        error.message
    );
    // Reserved before the call, released after it failed.
    assert_eq!(credits(result), (5, 0, 5));
    assert!(fake.submissions() >= 1);
    assert_eq!(fake.downloads(), 0, "a refused output URL was fetched");
    drop(conn);
    worker.terminate(Duration::from_secs(15));
}

//! End to end (issue 17, items 4 and 6): the links a real worker puts in
//! real results, served by the real `genfleet serve-files`, with RabbitMQ
//! and PostgreSQL.
//!
//! - A result's `signed_url` downloads the output, and its bytes hash to the
//!   result's `sha256`.
//! - The same link with another key id, or moved onto another job's or
//!   another workspace's or org's output (objects that exist), is refused;
//!   each of those outputs' own link works.
//! - Past its expiry the link is refused (the in-process file server with a
//!   clock set after `signed_url_expires_at`; a second earlier it passes).
//! - A rotation (serve-files restarted with a new current key, the old one
//!   still verifying) keeps the old link working; once the old key's
//!   `verify_until` has passed, it is refused.
//! - What the worker stored is private: outputs 0600, their folders 0700.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use genfleet_credits::Ledger;
use genfleet_proto::v1;
use genfleet_storage::testing::with_query_param as with_param;
use sha2::{Digest, Sha256};
use support::files::{fetch, target, FilesProcess};
use support::*;

const K1: &str = "e2e-first-signing-key-0123456789";
const K2: &str = "e2e-second-signing-key-987654321";

/// The worker's `[storage]` key lines for links that name `link_port`,
/// signing with `current` among `keys` (`(id, key file, verify_until)`).
fn signing_toml(link_port: u16, current: &str, keys: &[(&str, &Path, Option<&str>)]) -> String {
    let mut toml = format!(
        "public_base_url = \"http://127.0.0.1:{link_port}/files\"\nsigning_key_id = \"{current}\"\n"
    );
    for (id, file, until) in keys {
        toml.push_str(&format!(
            "[[storage.signing_keys]]\nid = \"{id}\"\nkey_file = \"{}\"\n",
            file.display()
        ));
        if let Some(until) = until {
            toml.push_str(&format!("verify_until = \"{until}\"\n"));
        }
    }
    toml
}

/// `support::write_config`'s text with its `[storage]` link lines replaced
/// by `signing` (the array tables go last in the section, before `[http]`).
fn with_signing(base: &str, signing: &str) -> String {
    let old =
        "public_base_url = \"https://cdn.example.test/files\"\nsigning_key = \"e2e-signing-key\"\n";
    assert!(base.contains(old), "write_config's storage lines changed");
    base.replace(old, signing)
}

fn only_output(collected: &Collected, job: &v1::Job) -> v1::Output {
    let (result, _) = collected
        .results
        .get(&job.job_id)
        .unwrap_or_else(|| panic!("no result for {}", job.job_id));
    assert_eq!(
        result.status,
        v1::JobStatus::Succeeded as i32,
        "{:?}",
        result.error
    );
    assert_eq!(result.outputs.len(), 1);
    result.outputs[0].clone()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The path of `path_of`'s link with the query of `query_of`'s: one output's
/// signature presented for another output.
fn moved(query_of: &str, path_of: &str) -> String {
    let query = query_of.split_once('?').unwrap().1;
    let path = path_of.split_once('?').unwrap().0;
    format!("{path}?{query}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_links_from_real_results() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("signed-links");
    let root = store_with_photo(&dir.0);
    for workspace in ["shop-1", "shop-2"] {
        photo_for(&root, workspace);
    }
    // Another org's upload, where its jobs may read it.
    let globex = root.join("uploads/globex/shop-1");
    std::fs::create_dir_all(&globex).unwrap();
    std::fs::copy(root.join("uploads/photo.jpg"), globex.join("photo.jpg")).unwrap();
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    for account in ["acme/shop-1", "acme/shop-2", "globex/shop-1"] {
        ledger.grant(account, 1_000, "e2e").await.unwrap();
    }
    // The keys as an SRE mounts them: one file per key.
    let keys = dir.0.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (k1_file, k2_file) = (keys.join("k1"), keys.join("k2"));
    std::fs::write(&k1_file, format!("{K1}\n")).unwrap();
    std::fs::write(&k2_file, format!("{K2}\n")).unwrap();

    // The address the links name, as a proxy in front of serve-files would
    // publish it. serve-files itself listens on a port it binds (and each
    // restart binds another): a link's signature covers its path and query,
    // which is what a client sends, so the host part only has to look right.
    let link_port: u16 = 8443;
    let base_config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &root,
            fal_base_url: "http://127.0.0.1:9/",
            concurrency: 3,
            grace_seconds: 5,
            http_port: 0,
            fal_poll_ms: 50,
        },
    );
    let base_toml = std::fs::read_to_string(&base_config).unwrap();
    let config = dir.0.join("worker-k1.toml");
    std::fs::write(
        &config,
        with_signing(
            &base_toml,
            &signing_toml(link_port, "k1", &[("k1", &k1_file, None)]),
        ),
    )
    .unwrap();

    let (conn, queue) = results_queue(&vhost.url()).await;
    let mut worker = WorkerProcess::start(&config, dir.0.join("worker.log"));
    wait_ready(&mut worker, Duration::from_secs(60)).await;
    let files_log = dir.0.join("serve-files.log");
    let files = FilesProcess::start(&config, files_log.clone()).await;

    let input = |org: &str, ws: &str| vec![format!("s3://genfleet/uploads/{org}/{ws}/photo.jpg")];
    let jobs = [
        local_edit_job("acme", "shop-1", &input("acme", "shop-1"), 256, 10),
        local_edit_job("acme", "shop-1", &input("acme", "shop-1"), 200, 10),
        local_edit_job("acme", "shop-2", &input("acme", "shop-2"), 256, 10),
        local_edit_job("globex", "shop-1", &input("globex", "shop-1"), 256, 10),
    ];
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "e2e-publisher")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    for job in &jobs {
        let body = genfleet_proto::encode_json(job);
        publish_job(&publisher, "cpu", &body, Some(&job.job_id)).await;
    }
    broker.close().await;
    let collected = collect_results(&conn, &queue, jobs.len(), Duration::from_secs(90)).await;
    assert_eq!(
        collected.results.len(),
        jobs.len(),
        "results missing:\n{}",
        worker.log_tail()
    );
    let outputs: Vec<v1::Output> = jobs.iter().map(|j| only_output(&collected, j)).collect();
    let link = outputs[0].signed_url.clone();
    assert!(
        link.starts_with(&format!(
            "http://127.0.0.1:{link_port}/files/acme/shop-1/{}/",
            jobs[0].job_id
        )),
        "{link}"
    );
    assert!(link.contains("kid=k1"), "{link}");

    // Every output's own link downloads exactly the bytes its result states.
    for output in &outputs {
        let got = fetch(files.port, &target(&output.signed_url)).await;
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
        assert_eq!(got.body.len() as u64, output.bytes);
        assert_eq!(hex::encode(Sha256::digest(&got.body)), output.sha256);
        assert_eq!(
            got.header("content-type"),
            Some(output.content_type.as_str())
        );
        assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
        let cache = got.header("cache-control").unwrap_or_default();
        assert!(cache.starts_with("private, max-age="), "{cache}");
    }

    // The first link, changed: each refused, without a byte of the file.
    let refused = [
        ("another key id (unknown)", with_param(&link, "kid", "k2")),
        (
            "another job of the tenant",
            moved(&link, &outputs[1].signed_url),
        ),
        ("another workspace", moved(&link, &outputs[2].signed_url)),
        ("another org", moved(&link, &outputs[3].signed_url)),
        (
            "a later expiry",
            with_param(&link, "expires", &(u64::MAX / 2).to_string()),
        ),
    ];
    for (what, changed) in &refused {
        let got = fetch(files.port, &target(changed)).await;
        assert_eq!(
            got.status,
            403,
            "{what}: {}",
            String::from_utf8_lossy(&got.body)
        );
        assert!(got.body.len() < 100, "{what}");
    }

    // Expiry, on the in-process server with the same keys and a clock set
    // just before and just after the stated expiry.
    let expires = outputs[0]
        .signed_url_expires_at
        .as_ref()
        .map(|t| u64::try_from(t.seconds).unwrap())
        .expect("an expiry");
    for (offset, status) in [(-1i64, 200u16), (1, 403)] {
        let now = expires.checked_add_signed(offset).unwrap();
        let signer = genfleet_storage::UrlSigner::with_keyring(
            url::Url::parse(&format!("http://127.0.0.1:{link_port}/files")).unwrap(),
            genfleet_storage::Keyring::new("k1", K1.as_bytes()).unwrap(),
            Duration::from_secs(3600),
        )
        .with_clock(genfleet_storage::Clock::fixed(now));
        let server = genfleet_storage::serve::FileServer::new(&root, signer).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
        });
        let got = fetch(port, &target(&link)).await;
        assert_eq!(got.status, status, "at expiry {offset:+}");
        if status == 403 {
            assert_eq!(String::from_utf8_lossy(&got.body), "link has expired\n");
        }
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }

    // Rotation: k2 signs, k1 verifies until far ahead. The old link works.
    files.stop();
    let rotated = dir.0.join("worker-k2.toml");
    std::fs::write(
        &rotated,
        with_signing(
            &base_toml,
            &signing_toml(
                link_port,
                "k2",
                &[
                    ("k2", &k2_file, None),
                    ("k1", &k1_file, Some("2100-01-01T00:00:00Z")),
                ],
            ),
        ),
    )
    .unwrap();
    let files = FilesProcess::start(&rotated, files_log.clone()).await;
    let got = fetch(files.port, &target(&link)).await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(hex::encode(Sha256::digest(&got.body)), outputs[0].sha256);
    // A worker on the rotated configuration signs with k2, and that works.
    worker.terminate(Duration::from_secs(30));
    let mut worker = WorkerProcess::start(&rotated, dir.0.join("worker.log"));
    wait_ready(&mut worker, Duration::from_secs(60)).await;
    let job = local_edit_job("acme", "shop-1", &input("acme", "shop-1"), 128, 10);
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "e2e-publisher")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    publish(&publisher, "cpu", &job).await;
    broker.close().await;
    let collected = collect_results(&conn, &queue, 1, Duration::from_secs(60)).await;
    let new_link = only_output(&collected, &job).signed_url;
    assert!(new_link.contains("kid=k2"), "{new_link}");
    assert_eq!(fetch(files.port, &target(&new_link)).await.status, 200);
    files.stop();

    // k1 past its verify_until: the old link is refused, the new one works.
    let retired = dir.0.join("worker-k1-retired.toml");
    std::fs::write(
        &retired,
        with_signing(
            &base_toml,
            &signing_toml(
                link_port,
                "k2",
                &[
                    ("k2", &k2_file, None),
                    ("k1", &k1_file, Some("2000-01-01T00:00:00Z")),
                ],
            ),
        ),
    )
    .unwrap();
    let files = FilesProcess::start(&retired, files_log.clone()).await;
    let got = fetch(files.port, &target(&link)).await;
    assert_eq!(got.status, 403);
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        "link was signed with a key that is not accepted\n"
    );
    assert_eq!(fetch(files.port, &target(&new_link)).await.status, 200);
    files.stop();

    // What the worker stored is its user's alone.
    for (job, output) in jobs.iter().zip(&outputs) {
        let key = output.uri.strip_prefix("s3://genfleet/").unwrap();
        assert_eq!(mode(&root.join(key)), 0o600, "{key}");
        let tenant = job.tenant.as_ref().unwrap();
        for folder in [
            tenant.org.clone(),
            format!("{}/{}", tenant.org, tenant.workspace),
            format!("{}/{}/{}", tenant.org, tenant.workspace, job.job_id),
        ] {
            assert_eq!(mode(&root.join(&folder)), 0o700, "{folder}");
        }
    }

    // The signed links never reached the logs (the signature is a credential).
    let signature = link.rsplit_once("signature=").unwrap().1;
    for log in [dir.0.join("worker.log"), files_log] {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !text.contains(signature),
            "{} logs a signature",
            log.display()
        );
        assert!(
            !text.contains(K1) && !text.contains(K2),
            "{} logs a key",
            log.display()
        );
    }
    worker.terminate(Duration::from_secs(30));
}

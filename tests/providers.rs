//! Every remote provider through the real worker binary: fal, Replicate,
//! Vertex AI, OpenAI-compatible images and a KServe v2 server, each a fake
//! HTTP server in this test process shaped like the real API. Checks the
//! worker's wiring (configuration, keys and token source, default models per
//! job kind, failover along the job's provider list) end to end: status,
//! provider, credits, and what each fake received.

mod support;

use std::time::Duration;

use genfleet_credits::Ledger;
use genfleet_proto::v1;
use genfleet_providers::fake_fal::FakeFal;
use genfleet_providers::fake_kserve::FakeKServe;
use genfleet_providers::fake_openai::FakeOpenAi;
use genfleet_providers::fake_replicate::FakeReplicate;
use genfleet_providers::fake_vertex::FakeVertex;
use support::*;

fn job(kind: v1::JobKind, providers: &[&str], model: &str, with_mask: bool) -> v1::Job {
    let mut job = fal_product_job(
        "multi",
        model,
        "a bottle on marble",
        2,
        v1::Priority::Normal,
    );
    job.kind = kind as i32;
    if let Some(generation) = job.generation.as_mut() {
        generation.providers = providers.iter().map(|p| (*p).to_string()).collect();
    }
    if with_mask {
        job.inputs.push(v1::Input {
            role: v1::InputRole::Mask as i32,
            uri: "s3://genfleet/uploads/acme/multi/photo.jpg".into(),
            ..Default::default()
        });
    }
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_serves_jobs_through_the_worker() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-providers");
    let root = store_with_photo(&dir.0);
    photo_for(&root, "multi");
    let fal = FakeFal::start().await.unwrap();
    let replicate = FakeReplicate::start().await.unwrap();
    let vertex = FakeVertex::start().await.unwrap();
    let openai = FakeOpenAi::start().await.unwrap();
    let kserve = FakeKServe::start().await.unwrap();
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    ledger.grant("acme/multi", 100, "test").await.unwrap();
    let (conn, queue) = results_queue(&vhost.url()).await;
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "providers-test")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();

    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &dir.0.join("store"),
            fal_base_url: fal.base_url.as_str(),
            concurrency: 4,
            grace_seconds: 10,
            http_port: 0,
            fal_poll_ms: 50,
        },
    );
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!(
        r#"
[providers.replicate]
enabled = true
base_url = "{replicate}"
token = "r8-test-token"
poll_interval_ms = 50
wait_seconds = 0

[providers.vertex]
enabled = true
project = "shop-project"
region = "us-central1"
base_url = "{vertex}"
token_url = "{token_url}"

[providers.openai]
enabled = true
base_url = "{openai}"
api_key = "sk-test-key"

[providers.kserve]
enabled = true
base_url = "{kserve}"
"#,
        replicate = replicate.base_url,
        vertex = vertex.base_url,
        token_url = vertex.token_url(),
        openai = openai.base_url,
        kserve = kserve.base_url,
    ));
    std::fs::write(&config, toml).unwrap();

    use v1::JobKind as K;
    let jobs = [
        // fal is down: the job fails over to Replicate, which runs its
        // default product-photo model (a job's model names one of its
        // first provider's models).
        (
            "failover",
            job(K::ProductPhoto, &["fal", "replicate"], "test/down", false),
        ),
        (
            "vertex",
            job(K::ProductPhoto, &["vertex"], "imagen-ok", false),
        ),
        (
            "vertex-filtered",
            job(K::ProductPhoto, &["vertex"], "imagen-filtered", false),
        ),
        ("openai", job(K::Inpaint, &["openai"], "test/ok", true)),
        ("kserve", job(K::BackgroundRemoval, &["kserve"], "", false)),
    ];
    for (_, job) in &jobs {
        publish(&publisher, "remote", job).await;
    }
    let mut worker = WorkerProcess::start(&config, dir.0.join("worker.log"));
    wait_ready(&mut worker, Duration::from_secs(60)).await;
    let got = collect_results(&conn, &queue, jobs.len(), Duration::from_secs(60)).await;

    let result_of = |name: &str| {
        let (_, job) = jobs.iter().find(|(n, _)| *n == name).unwrap();
        got.results
            .get(&job.job_id)
            .map(|(result, _)| result.clone())
            .unwrap_or_else(|| panic!("no result for {name}:\n{}", worker.log_tail()))
    };
    for name in ["failover", "vertex", "openai", "kserve"] {
        let result = result_of(name);
        println!(
            "{name}: provider {} attempts {}",
            result.provider, result.attempts
        );
        assert_eq!(
            result.status,
            v1::JobStatus::Succeeded as i32,
            "{name}: {result:?}\n{}",
            worker.log_tail()
        );
        assert!(!result.outputs.is_empty(), "{name}: {result:?}");
        let credits = result.credits.unwrap();
        assert_eq!((credits.captured, credits.released), (2, 0), "{name}");
    }
    let failover = result_of("failover");
    assert_eq!(failover.provider, "replicate");
    // fal's three attempts (providers.retry.max_attempts) plus Replicate's one.
    assert_eq!(failover.attempts, 4);
    assert_eq!(fal.submissions_for("test/down"), 3);
    let create = replicate.last_create().expect("replicate got a create");
    assert_eq!(create.model, "black-forest-labs/flux-kontext-pro");
    assert_eq!(create.authorization, "Bearer r8-test-token");
    assert!(!replicate.token_reached_file_host());

    assert_eq!(result_of("vertex").provider, "vertex");
    // One token for every Vertex job of this worker.
    assert_eq!(vertex.token_requests(), 1);
    let filtered = result_of("vertex-filtered");
    assert_eq!(filtered.status, v1::JobStatus::Failed as i32);
    let error = filtered.error.unwrap();
    assert_eq!(error.code, "provider_rejected");
    assert!(!error.retryable);
    let credits = filtered.credits.unwrap();
    assert_eq!((credits.captured, credits.released), (0, 2));

    assert_eq!(result_of("openai").provider, "openai");
    assert_eq!(openai.last_edit_had_mask(), Some(true));
    assert!(!openai.key_reached_file_host());

    assert_eq!(result_of("kserve").provider, "kserve");
    // The worker's default background-removal model on the GPU pool.
    assert_eq!(kserve.infer_calls_for("matting"), 1);
    let request = kserve.last_received().unwrap();
    assert!(request.input("INPUT_IMAGE").is_some(), "{request:?}");

    let balance = ledger.balance("acme/multi").await.unwrap().unwrap();
    assert_eq!(
        (balance.held, balance.captured, balance.available),
        (0, 8, 92)
    );
    let status = worker.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{}", worker.log_tail());
}

/// The upload reaches fal as it came, minus its metadata, when nothing has
/// to change its pixels; a photo stored rotated is re-encoded upright. Both
/// inputs and the downloaded output wait in the spool's files here (a zero
/// memory budget), which are gone once the jobs are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fal_gets_clean_uploads_as_they_came_and_the_spool_empties() {
    use base64::Engine as _;
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-passthrough");
    let store = store_with_photo(&dir.0);
    let corpus = repo_path("tests/fixtures/corpus/photos");
    // EXIF with GPS, orientation 1: passes through.
    let upright = std::fs::read(corpus.join("p01_foliage_sky_1000x750.jpg")).unwrap();
    std::fs::create_dir_all(store.join("uploads/acme/spool")).unwrap();
    std::fs::write(store.join("uploads/acme/spool/upright.jpg"), &upright).unwrap();
    // Orientation 6: must be turned, so re-encoded.
    std::fs::copy(
        corpus.join("p08_dogs_portrait_orient6_1000x667.jpg"),
        store.join("uploads/acme/spool/rotated.jpg"),
    )
    .unwrap();
    let fal = FakeFal::start().await.unwrap();
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    ledger.grant("acme/spool", 10, "test").await.unwrap();
    let (conn, queue) = results_queue(&vhost.url()).await;
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "passthrough-test")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();

    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &store,
            fal_base_url: fal.base_url.as_str(),
            concurrency: 2,
            grace_seconds: 10,
            http_port: 0,
            fal_poll_ms: 50,
        },
    );
    let spool = dir.0.join("spool");
    let toml = std::fs::read_to_string(&config).unwrap().replacen(
        "grace_period_seconds = 10\n",
        &format!(
            "grace_period_seconds = 10\nspool_dir = \"{}\"\nspool_memory_bytes = 0\n",
            spool.display()
        ),
        1,
    );
    std::fs::write(&config, toml).unwrap();
    let mut worker = WorkerProcess::start(&config, dir.0.join("worker.log"));
    let port = wait_ready(&mut worker, Duration::from_secs(60)).await;

    let mut sent = Vec::new();
    for upload in ["upright", "rotated"] {
        // fal renders for 1.5 s, a while the job's input waits in the spool.
        let mut job = fal_product_job(
            "spool",
            "test/sleep-1500",
            "a vase",
            1,
            v1::Priority::Normal,
        );
        job.inputs[0].uri = format!("s3://genfleet/uploads/acme/spool/{upload}.jpg");
        publish(&publisher, "remote", &job).await;
        // The spool is in use: a file of this job's is in it while fal
        // renders (so "no file left" below is about this folder, not one
        // the worker never wrote to).
        until(
            &format!("a spool file for {upload}"),
            Duration::from_secs(30),
            async || !walk_files(&spool).is_empty(),
        )
        .await;
        // One at a time, so the fake's last input is this job's.
        let got = collect_results(&conn, &queue, 1, Duration::from_secs(60)).await;
        let (result, _) = got
            .results
            .get(&job.job_id)
            .unwrap_or_else(|| panic!("no result for {upload}:\n{}", worker.log_tail()));
        assert_eq!(
            result.status,
            v1::JobStatus::Succeeded as i32,
            "{upload}: {result:?}\n{}",
            worker.log_tail()
        );
        let uri = fal.last_image_url().expect("fal got an image_url");
        let data = uri
            .strip_prefix("data:image/jpeg;base64,")
            .expect("a JPEG data URI");
        sent.push(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap(),
        );
    }

    let has = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    let (upright_sent, rotated_sent) = (&sent[0], &sent[1]);
    for bytes in &sent {
        assert!(bytes.starts_with(&[0xFF, 0xD8]) && bytes.ends_with(&[0xFF, 0xD9]));
        assert!(
            !has(bytes, b"Exif"),
            "EXIF (and its GPS) reached the provider"
        );
    }
    // The upright upload's own entropy-coded data: the same pixels, bit for
    // bit, from fewer bytes.
    assert!(upright_sent.len() < upright.len());
    let decoded = |bytes: &[u8]| image::load_from_memory(bytes).unwrap().to_rgb8();
    assert_eq!(decoded(upright_sent), decoded(&upright));
    // The rotated one went through pixels: stored 1000x667, sent upright.
    let rotated = decoded(rotated_sent);
    assert_eq!(rotated.dimensions(), (667, 1000));

    let (_, metrics) = http_get(port, "/metrics").await.unwrap();
    assert!(
        metrics.contains("genfleet_provider_inputs_total{path=\"passed_through\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("genfleet_provider_inputs_total{path=\"reencoded\"} 1"));
    // Every spooled input and output was removed with its job.
    assert!(spool.is_dir(), "{} is gone", spool.display());
    let left: Vec<_> = walk_files(&spool);
    assert!(left.is_empty(), "spool files left: {left:?}");
    let status = worker.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{}", worker.log_tail());
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

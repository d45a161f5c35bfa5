//! End to end: the real `genfleet worker` binary against the real RabbitMQ
//! and PostgreSQL of this machine, with a fake fal server (a real HTTP server
//! in this process). 200 jobs of every kind, good and bad, go in; the test
//! checks every result, every credit, every output, and that no job is left
//! in the queues. Then SIGTERM: the worker must exit 0.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use genfleet_credits::{HoldState, Ledger};
use genfleet_proto::v1;
use genfleet_providers::fake_fal::FakeFal;
use genfleet_storage::{Store, StoreConfig};
use prost::Message as _;
use support::*;

/// What one job must end as.
#[derive(Clone, Debug)]
struct Expect {
    status: v1::JobStatus,
    code: &'static str,
    /// Whether credits are held before the failure (so they must be
    /// released) or captured on success.
    reserved: bool,
    amount: i64,
    account: &'static str,
    outputs: usize,
    attempts: Option<u32>,
}

fn ok(amount: i64, outputs: usize) -> Expect {
    Expect {
        status: v1::JobStatus::Succeeded,
        code: "",
        reserved: true,
        amount,
        account: "acme/shop-1",
        outputs,
        attempts: None,
    }
}

fn fail(code: &'static str, reserved: bool, amount: i64) -> Expect {
    Expect {
        status: v1::JobStatus::Failed,
        code,
        reserved,
        amount,
        account: "acme/shop-1",
        outputs: 0,
        attempts: None,
    }
}

fn tenant(org: &str, workspace: &str) -> Option<v1::Tenant> {
    Some(v1::Tenant {
        org: org.into(),
        workspace: workspace.into(),
        user: "e2e".into(),
    })
}

fn input(role: v1::InputRole, key: &str) -> v1::Input {
    v1::Input {
        role: role as i32,
        uri: format!("s3://genfleet/uploads/acme/shop-1/{key}"),
        ..Default::default()
    }
}

fn job(kind: v1::JobKind, inputs: Vec<v1::Input>, amount: i64) -> v1::Job {
    v1::Job {
        job_id: new_job_id(),
        tenant: tenant("acme", "shop-1"),
        kind: kind as i32,
        inputs,
        credits: Some(v1::CreditRequest {
            amount,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn fal(model: &str, seed: u64, count: u32) -> Option<v1::Generation> {
    Some(v1::Generation {
        providers: vec!["fal".into()],
        model: model.into(),
        prompt: format!("e2e prompt {seed}"),
        seed,
        count,
        ..Default::default()
    })
}

/// Hostile uploads and what each must end as (one row a file).
const HOSTILE: &[(&str, &str)] = &[
    ("eicar.jpg", "unsupported_type"),
    ("h01_truncated.jpg", "invalid_input"),
    ("h02_bomb_60000x60000.png", "too_large"),
    ("h02b_bomb_header_only_60000x60000_rgba.png", "too_large"),
    // Valid JPEG with HTML and ZIP after its end: re-encoded from pixels.
    ("h03_polyglot_html_zip.jpg", ""),
    // A real GIF with a .jpg name: the type comes from the bytes.
    ("h04_gif_named_jpg.jpg", ""),
    ("h05_script.svg", "unsupported_type"),
    ("h06_empty.jpg", "invalid_input"),
    ("h08_jpeg_header_65500x65500.jpg", "too_large"),
    ("h09_html_named_jpg.jpg", "unsupported_type"),
];

/// The alpha channel of a cut-out, or the grey level of a mask.
fn image_alpha(image: &genfleet_imaging::DynamicImage) -> image::GrayImage {
    let (w, h) = (image.width(), image.height());
    if image.color().has_alpha() {
        let rgba = image.to_rgba8();
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([rgba.get_pixel(x, y)[3]]))
    } else {
        image.to_luma8()
    }
}

/// `j` for another tenant, with its inputs moved to that tenant's uploads
/// (a worker reads only the tenant's own).
fn for_tenant(j: &mut v1::Job, org: &str, workspace: &str) {
    j.tenant = tenant(org, workspace);
    for input in &mut j.inputs {
        input.uri = input.uri.replace(
            "/uploads/acme/shop-1/",
            &format!("/uploads/{org}/{workspace}/"),
        );
    }
}

/// The uploads of `acme/shop-1`, copied for the other tenants of the test.
fn stage_uploads(root: &std::path::Path) {
    stage_tenant_uploads(&root.join("uploads/acme/shop-1"));
    for other in ["modehaus/eu-store", "poor/ws"] {
        stage_tenant_uploads(&root.join("uploads").join(other));
    }
}

fn stage_tenant_uploads(uploads: &std::path::Path) {
    std::fs::create_dir_all(uploads.join("hostile")).unwrap();
    for (name, target) in [
        ("examples/photos/dandelions_1024.jpg", "photo.jpg"),
        ("examples/photos/dogs_portrait_1024.jpg", "person.jpg"),
        ("examples/photos/strawberry_alpha.webp", "garment.webp"),
    ] {
        std::fs::copy(repo_path(name), uploads.join(target)).unwrap();
    }
    // A small input for upscaling, made by our own pipeline.
    let photo = std::fs::read(repo_path("examples/photos/fig_plate_1024.jpg")).unwrap();
    let small = genfleet_imaging::decode_sanitised(&photo, &Default::default()).unwrap();
    let small = genfleet_imaging::resize_to_fit(&small.image, 240).unwrap();
    let png = genfleet_imaging::encode(&small, genfleet_imaging::Encoding::Png).unwrap();
    std::fs::write(uploads.join("small.png"), png).unwrap();
    std::fs::copy(
        repo_path("tests/fixtures/composites/k02_boot_white_shadow.jpg"),
        uploads.join("boot.jpg"),
    )
    .unwrap();
    for i in 0..3 {
        std::fs::copy(
            repo_path("examples/photos/dandelions_1024.jpg"),
            uploads.join(format!("delete-me-{i}.jpg")),
        )
        .unwrap();
    }
    for (file, _) in HOSTILE {
        std::fs::copy(
            repo_path(&format!("tests/fixtures/hostile/{file}")),
            uploads.join("hostile").join(file),
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_mixed_jobs_end_to_end() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-e2e");
    let root = dir.0.join("store");
    stage_uploads(&root);
    let fake = FakeFal::start().await.unwrap();

    // Ledger: migrate and grant before the worker starts.
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    ledger.grant("acme/shop-1", 10_000, "e2e").await.unwrap();
    ledger.grant("modehaus", 1_000, "e2e").await.unwrap();

    let (conn, results_queue) = results_queue(&vhost.url()).await;
    let replies = conn.create_channel().await.unwrap();
    replies
        .queue_declare("e2e.replies".into(), Default::default(), Default::default())
        .await
        .unwrap();

    // The jobs, each with what it must end as.
    let mut jobs: Vec<(v1::Job, Expect, &str)> = Vec::new();
    for i in 0..62 {
        let mut j = job(
            v1::JobKind::BatchEdit,
            vec![input(v1::InputRole::Product, "photo.jpg")],
            1,
        );
        j.preprocess = vec![v1::PreprocessStep {
            step: Some(v1::preprocess_step::Step::Resize(v1::Resize {
                long_side: 512,
            })),
        }];
        j.outputs = Some(v1::OutputSpec {
            formats: vec![v1::OutputFormat::Jpeg as i32, v1::OutputFormat::Webp as i32],
            presets: vec!["original".into(), "thumbnail-256".into()],
            watermark: i % 10 == 0,
            quality: 80,
        });
        jobs.push((j, ok(1, 4), "cpu"));
    }
    for _ in 0..25 {
        let mut j = job(
            v1::JobKind::Upscale,
            vec![input(v1::InputRole::Product, "small.png")],
            2,
        );
        j.generation = Some(v1::Generation {
            providers: vec!["local".into()],
            ..Default::default()
        });
        jobs.push((j, ok(2, 1), "cpu"));
    }
    // fal jobs on one product photo: (jobs, kind, fake model, images per
    // job, expected end). The fake's behaviour is chosen by the model.
    let fal_groups = [
        (
            30,
            v1::JobKind::ProductPhoto,
            "test/ok",
            2,
            Expect {
                attempts: Some(1),
                ..ok(3, 2)
            },
        ),
        // First answer 429 with Retry-After, then 503, then success.
        (
            10,
            v1::JobKind::ProductPhoto,
            "test/flaky",
            1,
            Expect {
                attempts: Some(3),
                ..ok(3, 1)
            },
        ),
        (
            10,
            v1::JobKind::BackgroundRemoval,
            "test/nsfw",
            1,
            fail("provider_rejected", true, 2),
        ),
        (5, v1::JobKind::ImageToVideo, "test/video", 1, ok(5, 1)),
        // 503 on every call: retries run out.
        (
            5,
            v1::JobKind::ProductPhoto,
            "test/down",
            1,
            Expect {
                attempts: Some(3),
                ..fail("provider_unavailable", true, 3)
            },
        ),
    ];
    for (group, (count, kind, model, images, expect)) in fal_groups.into_iter().enumerate() {
        for i in 0..count {
            let mut j = job(
                kind,
                vec![input(v1::InputRole::Product, "photo.jpg")],
                expect.amount,
            );
            // Distinct seeds: the flaky fake misbehaves once per prompt+seed.
            j.generation = fal(model, 1000 * (group as u64 + 1) + i, images);
            jobs.push((j, expect.clone(), "remote"));
        }
    }
    for i in 0..5 {
        let mut j = job(
            v1::JobKind::Inpaint,
            vec![
                input(v1::InputRole::Product, "photo.jpg"),
                input(v1::InputRole::Mask, "garment.webp"),
            ],
            2,
        );
        j.generation = fal("test/reject", 5000 + i, 1);
        jobs.push((j, fail("provider_rejected", true, 2), "remote"));
    }
    for i in 0..5 {
        let mut j = job(
            v1::JobKind::VirtualTryOn,
            vec![
                input(v1::InputRole::Person, "person.jpg"),
                input(v1::InputRole::Garment, "garment.webp"),
            ],
            6,
        );
        for_tenant(&mut j, "modehaus", "eu-store");
        j.credits = Some(v1::CreditRequest {
            account: "modehaus".into(),
            amount: 6,
            ..Default::default()
        });
        j.generation = fal("test/ok", 6000 + i, 1);
        jobs.push((
            j,
            Expect {
                account: "modehaus",
                ..ok(6, 1)
            },
            "remote",
        ));
    }
    for (file, code) in HOSTILE {
        let j = job(
            v1::JobKind::BatchEdit,
            vec![input(v1::InputRole::Product, &format!("hostile/{file}"))],
            1,
        );
        let expect = if code.is_empty() {
            ok(1, 1)
        } else {
            fail(code, false, 1)
        };
        jobs.push((j, expect, "cpu"));
    }
    for _ in 0..5 {
        let mut j = job(
            v1::JobKind::BatchEdit,
            vec![input(v1::InputRole::Product, "photo.jpg")],
            5,
        );
        for_tenant(&mut j, "poor", "ws");
        jobs.push((
            j,
            Expect {
                account: "poor/ws",
                ..fail("insufficient_credits", false, 5)
            },
            "cpu",
        ));
    }
    for _ in 0..5 {
        let j = job(
            v1::JobKind::BatchEdit,
            vec![input(v1::InputRole::Product, "missing.jpg")],
            1,
        );
        jobs.push((j, fail("invalid_input", false, 1), "cpu"));
    }
    for _ in 0..5 {
        // Valid JSON with a job id but no kind: a failed result and a dead letter.
        let mut j = job(
            v1::JobKind::Unspecified,
            vec![input(v1::InputRole::Product, "photo.jpg")],
            1,
        );
        j.kind = 0;
        jobs.push((j, fail("invalid_input", false, 1), "cpu"));
    }
    for _ in 0..5 {
        let mut j = job(
            v1::JobKind::BatchEdit,
            vec![input(v1::InputRole::Product, "photo.jpg")],
            1,
        );
        j.deadline = Some(genfleet_proto::pbjson_types::Timestamp {
            seconds: 1_577_836_800,
            nanos: 0,
        });
        jobs.push((
            j,
            Expect {
                status: v1::JobStatus::Expired,
                ..fail("deadline_exceeded", false, 1)
            },
            "cpu",
        ));
    }
    // Background removal on this worker's CPU (classical matte: the `cpu`
    // class; `auto` and `model` go to `gpu`, tests/gpu_class.rs): a cut-out
    // PNG whose alpha is checked against the ground-truth mask below.
    for _ in 0..5 {
        let mut j = job(
            v1::JobKind::BackgroundRemoval,
            vec![input(v1::InputRole::Product, "boot.jpg")],
            2,
        );
        j.generation = Some(v1::Generation {
            providers: vec!["local".into()],
            parameters: Some(string_parameters(&[("method", "classical")])),
            ..Default::default()
        });
        jobs.push((j, ok(2, 1), "cpu"));
    }
    // Sources deleted once the outputs are stored and the job is settled.
    for i in 0..3 {
        let mut j = job(
            v1::JobKind::BatchEdit,
            vec![input(v1::InputRole::Product, &format!("delete-me-{i}.jpg"))],
            1,
        );
        j.delete_sources_after = true;
        jobs.push((j, ok(1, 1), "cpu"));
    }
    // Protobuf binary instead of JSON.
    let protobuf_from = jobs.len();
    for _ in 0..5 {
        let j = job(
            v1::JobKind::BatchEdit,
            vec![input(v1::InputRole::Product, "photo.jpg")],
            1,
        );
        jobs.push((j, ok(1, 1), "cpu"));
    }
    assert_eq!(jobs.len(), 200);

    // Publish everything before the worker starts: it must drain a backlog.
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "e2e-publisher")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    for (i, (j, _, class)) in jobs.iter().enumerate() {
        if i >= protobuf_from {
            let outgoing = genfleet_broker::Outgoing {
                content_type: Some("application/x-protobuf".into()),
                message_id: Some(j.job_id.clone()),
                persistent: true,
                ..Default::default()
            };
            publisher
                .publish(
                    genfleet_broker::JOBS_EXCHANGE,
                    class,
                    &j.encode_to_vec(),
                    &outgoing,
                )
                .await
                .unwrap();
        } else if j.kind == v1::JobKind::Upscale as i32 {
            let outgoing = genfleet_broker::Outgoing {
                content_type: Some("application/json".into()),
                message_id: Some(j.job_id.clone()),
                reply_to: Some("e2e.replies".into()),
                persistent: true,
                ..Default::default()
            };
            publisher
                .publish(
                    genfleet_broker::JOBS_EXCHANGE,
                    class,
                    &genfleet_proto::encode_json(j),
                    &outgoing,
                )
                .await
                .unwrap();
        } else {
            publish(&publisher, class, j).await;
        }
    }
    // Two messages no job id can be read from: dead letters only.
    publish_job(&publisher, "cpu", b"this is not json", None).await;
    publish_job(
        &publisher,
        "remote",
        br#"{"kind": "JOB_KIND_UPSCALE"}"#,
        Some("not-a-valid-id"),
    )
    .await;

    let fal_url = fake.base_url.to_string();
    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &root,
            fal_base_url: &fal_url,
            concurrency: 8,
            grace_seconds: 20,
            http_port: 0,
            fal_poll_ms: 20,
        },
    );
    let mut worker = WorkerProcess::start(&config, dir.0.join("worker.log"));
    let port = wait_ready(&mut worker, Duration::from_secs(60)).await;

    let collected =
        collect_results(&conn, &results_queue, jobs.len(), Duration::from_secs(240)).await;
    assert_eq!(
        collected.results.len(),
        jobs.len(),
        "results for every job; worker log:\n{}",
        worker.log_tail()
    );

    let store = Store::open_local(StoreConfig {
        root: root.clone(),
        bucket: "genfleet".into(),
        inputs: Default::default(),
    })
    .unwrap();
    let mut captured: HashMap<&str, i64> = HashMap::new();
    for (j, expect, _) in &jobs {
        let (result, routing_key) = &collected.results[&j.job_id];
        let label = format!(
            "job {} ({:?}, expect {:?})",
            j.job_id,
            v1::JobKind::try_from(j.kind),
            expect
        );
        assert_eq!(result.status, expect.status as i32, "{label}: {result:?}");
        let tenant = j.tenant.as_ref().unwrap();
        let status = v1::JobStatus::try_from(result.status).unwrap();
        assert_eq!(
            routing_key,
            &format!(
                "result.{}.{}.{}",
                tenant.org,
                tenant.workspace,
                status.label()
            )
        );
        match &result.error {
            None => assert_eq!(expect.code, "", "{label}"),
            Some(error) => {
                assert_eq!(error.code, expect.code, "{label}: {}", error.message);
                assert!(!error.message.is_empty());
            }
        }
        if let Some(attempts) = expect.attempts {
            assert_eq!(result.attempts, attempts, "{label}");
        }
        assert_eq!(result.outputs.len(), expect.outputs, "{label}");
        assert_eq!(result.worker, "e2e-worker");

        // Credits: captured on success, released after a failure that
        // happened once they were held, never touched before.
        let hold = ledger.hold(&j.job_id).await.unwrap();
        let credits = result.credits.unwrap_or_default();
        match (expect.status, expect.reserved) {
            (v1::JobStatus::Succeeded, _) => {
                let hold = hold.unwrap_or_else(|| panic!("{label}: no hold"));
                assert_eq!(hold.state, HoldState::Captured, "{label}");
                assert_eq!(
                    (hold.captured, hold.released),
                    (expect.amount, 0),
                    "{label}"
                );
                assert_eq!(
                    (credits.held, credits.captured, credits.released),
                    (expect.amount, expect.amount, 0)
                );
                *captured.entry(expect.account).or_default() += expect.amount;
            }
            (_, true) => {
                let hold = hold.unwrap_or_else(|| panic!("{label}: no hold"));
                assert_eq!(hold.state, HoldState::Released, "{label}");
                assert_eq!(
                    (hold.captured, hold.released),
                    (0, expect.amount),
                    "{label}"
                );
                assert_eq!((credits.captured, credits.released), (0, expect.amount));
            }
            (_, false) => {
                assert!(
                    hold.is_none(),
                    "{label}: credits were held for a job rejected before reservation"
                );
                assert_eq!(credits.captured, 0);
            }
        }

        // Outputs are stored where the result says, with the bytes it says.
        for output in &result.outputs {
            let bytes = store.fetch(&output.uri, u64::MAX).await.unwrap();
            assert_eq!(bytes.len() as u64, output.bytes, "{label}");
            let prefix = format!(
                "s3://genfleet/{}/{}/{}/",
                tenant.org, tenant.workspace, j.job_id
            );
            assert!(output.uri.starts_with(&prefix), "{}", output.uri);
            assert!(
                output
                    .signed_url
                    .starts_with("https://cdn.example.test/files/"),
                "{label}"
            );
            assert!(output.signed_url.contains("signature="));
            assert_eq!(output.sha256.len(), 64);
            if output.content_type == "video/mp4" {
                assert_eq!(&bytes[4..8], b"ftyp");
            } else {
                let image =
                    genfleet_imaging::decode_sanitised(&bytes, &Default::default()).unwrap();
                assert_eq!(
                    (image.image.width(), image.image.height()),
                    (output.width, output.height)
                );
                if j.kind == v1::JobKind::BackgroundRemoval as i32 {
                    assert_eq!(
                        output.content_type, "image/png",
                        "a cut-out keeps its transparency"
                    );
                    let alpha = image_alpha(&image.image);
                    let truth = std::fs::read(repo_path(
                        "tests/fixtures/composites/k02_boot_white_shadow.mask.png",
                    ))
                    .unwrap();
                    let truth = image_alpha(
                        &genfleet_imaging::decode_sanitised(&truth, &Default::default())
                            .unwrap()
                            .image,
                    );
                    let iou = genfleet_imaging::alpha_iou(&alpha, &truth);
                    assert!(iou > 0.95, "{label}: cut-out IoU {iou}");
                }
            }
        }
        if j.kind == v1::JobKind::BatchEdit as i32 && expect.outputs == 4 {
            let mut sizes: Vec<(String, u32)> = result
                .outputs
                .iter()
                .map(|o| (o.preset.clone(), o.width.max(o.height)))
                .collect();
            sizes.sort();
            assert_eq!(
                sizes,
                vec![
                    ("original".into(), 512),
                    ("original".into(), 512),
                    ("thumbnail-256".into(), 256),
                    ("thumbnail-256".into(), 256)
                ]
            );
        }
    }

    for i in 0..3 {
        assert!(
            !root
                .join(format!("uploads/acme/shop-1/delete-me-{i}.jpg"))
                .exists(),
            "source {i} was not deleted"
        );
    }
    assert!(
        root.join("uploads/acme/shop-1/photo.jpg").exists(),
        "sources of other jobs stay"
    );

    // Every account is conserved: granted = available + captured, nothing held.
    for (account, granted) in [("acme/shop-1", 10_000i64), ("modehaus", 1_000)] {
        let balance = ledger.balance(account).await.unwrap().unwrap();
        let spent = captured.get(account).copied().unwrap_or(0);
        assert_eq!(balance.held, 0, "{account}");
        assert_eq!(balance.captured, spent, "{account}");
        assert_eq!(balance.available, granted - spent, "{account}");
    }

    // reply_to: every upscale job also answered on its reply queue.
    let mut replies_seen = 0;
    while let Ok(Some(message)) = replies
        .basic_get(
            "e2e.replies".into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
    {
        let correlation = message
            .delivery
            .properties
            .correlation_id()
            .clone()
            .unwrap();
        assert!(collected.results.contains_key(correlation.as_str()));
        replies_seen += 1;
    }
    assert_eq!(replies_seen, 25);

    // Invalid messages: 5 with a job id (they also got results) + 2 without.
    let dead = drain_dead_letters(&conn).await;
    assert_eq!(dead.len(), 7, "{dead:?}");
    assert!(dead
        .iter()
        .all(|(code, reason)| code == "invalid_input" && !reason.is_empty()));
    assert!(
        dead.iter().any(|(_, reason)| reason.contains("`kind`")),
        "{dead:?}"
    );

    // Metrics carry what happened, by closed labels.
    let (status, metrics) = http_get(port, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for line in [
        "genfleet_job_duration_seconds_count{kind=\"batch_edit\",status=\"succeeded\"}",
        "genfleet_job_errors_total{code=\"provider_rejected\"} 15",
        "genfleet_job_errors_total{code=\"too_large\"} 3",
        "genfleet_dead_letters_total{code=\"invalid_input\"} 7",
        "genfleet_broker_connected 1",
        // The flaky and down models failed, but the breaker threshold is
        // 1000 here: the breaker that trips is
        // a_failing_model_opens_its_breaker_and_calls_stop below.
        "genfleet_provider_breakers_open{provider=\"fal\"} 0",
        "genfleet_provider_calls_in_flight{provider=\"fal\"} 0",
    ] {
        assert!(
            metrics.contains(line),
            "missing {line} in metrics:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("acme"),
        "tenant ids must not be metric labels"
    );

    // Shutdown: SIGTERM, exit 0, nothing left in the job queues.
    let status = worker
        .terminate(Duration::from_secs(30))
        .expect("worker exits after SIGTERM");
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        worker.log_tail()
    );
    for class in [
        genfleet_broker::JobClass::Cpu,
        genfleet_broker::JobClass::Remote,
    ] {
        for lane in genfleet_broker::Lane::ALL {
            let queue = class.lane_queue(lane);
            let depth = broker.queue_depth(&queue).await.unwrap();
            assert_eq!(depth, 0, "{queue} still holds jobs");
        }
    }
    let log = std::fs::read_to_string(&worker.log).unwrap();
    assert!(!log.contains("e2e prompt"), "prompts must never be logged");
    assert!(!log.contains("fal-test-key"), "keys must never be logged");
    assert!(
        !log.contains("signature="),
        "signed URLs must never be logged"
    );
    println!(
        "e2e: {} jobs, {} duplicate results, fal submissions {}",
        jobs.len(),
        collected.duplicates,
        fake.submissions()
    );
    broker.close().await;
}

/// The breaker, with a threshold it can reach (write_config's 1000 keeps it
/// shut for the test above): two failed submits to `test/down` open it;
/// from then on that model's jobs are refused without a call (deferred,
/// and with the breaker open past `defer_horizon_seconds`, failed
/// `provider_unavailable`, credits released), while another model of the
/// same provider still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_opens_its_breaker_and_calls_stop() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-breaker");
    let store = store_with_photo(&dir.0);
    photo_for(&store, "breaker");
    let fake = FakeFal::start().await.unwrap();
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    ledger.grant("acme/breaker", 100, "e2e").await.unwrap();
    let (conn, queue) = results_queue(&vhost.url()).await;
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "breaker-test")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &store,
            fal_base_url: fake.base_url.as_str(),
            concurrency: 2,
            grace_seconds: 10,
            http_port: 0,
            fal_poll_ms: 50,
        },
    );
    let toml = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "breaker_failure_threshold = 1000",
            "breaker_failure_threshold = 2\nbreaker_open_seconds = 300",
        )
        .replace(
            "max_wait_seconds = 30",
            "max_wait_seconds = 30\ndefer_horizon_seconds = 6",
        );
    std::fs::write(&config, toml).unwrap();
    let mut worker = WorkerProcess::start(&config, dir.0.join("worker.log"));
    let port = wait_ready(&mut worker, Duration::from_secs(60)).await;
    let run = async |model: &str| {
        let job = fal_product_job("breaker", model, "a vase", 2, v1::Priority::Normal);
        let body = genfleet_proto::encode_json(&job);
        publish_job(&publisher, "remote", &body, Some(&job.job_id)).await;
        let got = collect_results(&conn, &queue, 1, Duration::from_secs(60)).await;
        got.results
            .get(&job.job_id)
            .map(|(result, _)| result.clone())
            .unwrap_or_else(|| panic!("no result for {model}:\n{}", worker.log_tail()))
    };
    let failed = |result: &v1::JobResult| {
        assert_eq!(result.status, v1::JobStatus::Failed as i32, "{result:?}");
        assert_eq!(
            result.error.as_ref().map(|e| e.code.as_str()),
            Some("provider_unavailable"),
            "{result:?}"
        );
        let credits = result.credits.unwrap_or_default();
        assert_eq!((credits.captured, credits.released), (0, 2), "{result:?}");
    };

    // Two 503s open the breaker: the job's third attempt is not made.
    failed(&run("test/down").await);
    assert_eq!(fake.submissions_for("test/down"), 2);
    for series in [
        "genfleet_provider_breakers_open{provider=\"fal\"}",
        "genfleet_provider_circuit_open{model=\"test/down\",provider=\"fal\"}",
    ] {
        assert_eq!(metric(port, series).await, 1.0, "{series}");
    }

    // Open: the next job of that model is refused without a call (the
    // breaker stays open 300 s, past the job's 6 s horizon, so it is not
    // sent to wait for it).
    let series = [
        "genfleet_jobs_delayed_total{provider=\"fal\",reason=\"circuit_open\"}",
        "genfleet_provider_attempts_total{outcome=\"circuit_open\",provider=\"fal\"}",
    ];
    let mut before = Vec::new();
    for series in series {
        before.push(metric(port, series).await);
    }
    let refused = run("test/down").await;
    failed(&refused);
    let message = refused.error.as_ref().map(|e| e.message.as_str());
    assert!(
        message.is_some_and(|m| m.contains("circuit open")),
        "{message:?}"
    );
    assert_eq!(fake.submissions_for("test/down"), 2);
    for (series, before) in series.into_iter().zip(before) {
        let after = metric(port, series).await;
        assert!(after > before, "{series}: {before} -> {after}");
    }

    // Another model of the same provider is not held back.
    let ok = run("test/ok").await;
    assert_eq!(ok.status, v1::JobStatus::Succeeded as i32, "{ok:?}");
    assert_eq!(fake.submissions_for("test/ok"), 1);
    assert_eq!(
        metric(
            port,
            "genfleet_provider_circuit_open{model=\"test/down\",provider=\"fal\"}"
        )
        .await,
        1.0
    );
    let balance = ledger.balance("acme/breaker").await.unwrap().unwrap();
    assert_eq!((balance.captured, balance.held), (2, 0));
    let status = worker.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{}", worker.log_tail());
    broker.close().await;
}

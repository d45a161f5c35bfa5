//! End to end on the `gpu` class: the real `genfleet worker` with
//! `[inference] enabled` (ONNX Runtime on this machine's CPU, the real
//! models from `tools/install-models`) consumes `genfleet.jobs.gpu` and runs
//! background removal and upscale jobs by model, with results, stored
//! outputs and credits as for any job; a job with a method the worker does
//! not know fails `invalid_input` without keeping credits; the engine's
//! metrics are served. A second worker whose ONNX Runtime path is wrong
//! still starts, serves a Lanczos upscale, and fails a model job
//! `provider_unavailable` with a message that says what it lacks.
//!
//! The models come from `GENFLEET_MODELS_DIR`, else `<repo>/.models`; the
//! test fails, saying so, when they are not installed.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use genfleet_credits::{HoldState, Ledger};
use genfleet_proto::v1;
use genfleet_storage::{Store, StoreConfig};
use support::*;

const ACCOUNT: &str = "acme/gpu";
const CREDITS: i64 = 2;

/// The installed models' folder, or a failure that says how to get it.
fn models_dir() -> PathBuf {
    let dir = std::env::var_os("GENFLEET_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path(".models"));
    for file in [
        "u2netp.onnx",
        "realesr-animevideov3-x2.onnx",
        "realesr-animevideov3-x4.onnx",
        "realesrgan-x4plus.onnx",
        "onnxruntime/libonnxruntime.so.1.31.1",
    ] {
        assert!(
            dir.join(file).is_file(),
            "{} has no {file}: run tools/install-models {} (or set GENFLEET_MODELS_DIR)",
            dir.display(),
            dir.display()
        );
    }
    dir
}

/// The uploads of `acme/gpu`: a composite on a plain backdrop, a photo, and
/// two small images to upscale (made by our own pipeline).
fn stage_uploads(root: &Path) {
    let uploads = root.join("uploads/acme/gpu");
    std::fs::create_dir_all(&uploads).unwrap();
    std::fs::copy(
        repo_path("tests/fixtures/composites/k05_lamp_pastel_teal.jpg"),
        uploads.join("lamp.jpg"),
    )
    .unwrap();
    std::fs::copy(
        repo_path("tests/fixtures/corpus/photos/p08_dogs_portrait_orient6_1000x667.jpg"),
        uploads.join("dogs.jpg"),
    )
    .unwrap();
    let photo = std::fs::read(repo_path("examples/photos/fig_plate_1024.jpg")).unwrap();
    let photo = genfleet_imaging::decode_sanitised(&photo, &Default::default()).unwrap();
    for (name, side) in [("small.png", 160), ("tiny.png", 96)] {
        let small = genfleet_imaging::resize_to_fit(&photo.image, side).unwrap();
        let png = genfleet_imaging::encode(&small, genfleet_imaging::Encoding::Png).unwrap();
        std::fs::write(uploads.join(name), png).unwrap();
    }
}

fn job(kind: v1::JobKind, file: &str, parameters: &[(&str, &str)]) -> v1::Job {
    v1::Job {
        job_id: new_job_id(),
        tenant: Some(v1::Tenant {
            org: "acme".into(),
            workspace: "gpu".into(),
            user: "e2e".into(),
        }),
        kind: kind as i32,
        inputs: vec![v1::Input {
            role: v1::InputRole::Product as i32,
            uri: format!("s3://genfleet/uploads/acme/gpu/{file}"),
            ..Default::default()
        }],
        generation: Some(v1::Generation {
            parameters: (!parameters.is_empty()).then(|| string_parameters(parameters)),
            ..Default::default()
        }),
        credits: Some(v1::CreditRequest {
            amount: CREDITS,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A worker configuration consuming only `gpu`, with `[inference]` on the
/// CPU execution provider and `extra` inference keys.
fn gpu_config(dir: &Path, vhost: &Vhost, schema: &Schema, root: &Path, extra: &str) -> PathBuf {
    let path = write_config(
        dir,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: root,
            fal_base_url: "http://127.0.0.1:9",
            concurrency: 4,
            grace_seconds: 5,
            http_port: 0,
            fal_poll_ms: 50,
        },
    );
    let toml = std::fs::read_to_string(&path)
        .unwrap()
        .replace("classes = [\"cpu\", \"remote\"]", "classes = [\"gpu\"]")
        // Model runs on a 2-core CPU take seconds, not milliseconds.
        .replace("max_wait_seconds = 30", "max_wait_seconds = 240");
    let toml = format!(
        "{toml}\n[inference]\nenabled = true\nmodels_dir = \"{}\"\nexecution_providers = [\"cpu\"]\n{extra}",
        models_dir().display()
    );
    std::fs::write(&path, toml).unwrap();
    path
}

/// The alpha channel of a decoded output (every pixel opaque without one).
fn alpha_of(image: &genfleet_imaging::DynamicImage) -> image::GrayImage {
    let rgba = image.to_rgba8();
    image::GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        image::Luma([rgba.get_pixel(x, y).0[3]])
    })
}

/// Share of a mask's pixels at least half opaque.
fn foreground_share(alpha: &image::GrayImage) -> f64 {
    let kept = alpha.pixels().filter(|p| p.0[0] >= 128).count();
    kept as f64 / (alpha.width() * alpha.height()).max(1) as f64
}

fn open_store(root: &Path) -> Store {
    Store::open_local(StoreConfig {
        root: root.to_path_buf(),
        bucket: "genfleet".into(),
        inputs: Default::default(),
    })
    .unwrap()
}

/// The one stored output of `result`, decoded.
async fn only_output(
    store: &Store,
    result: &v1::JobResult,
) -> (v1::Output, genfleet_imaging::DynamicImage) {
    assert_eq!(result.outputs.len(), 1, "{result:?}");
    let output = result.outputs[0].clone();
    let bytes = store.fetch(&output.uri, u64::MAX).await.unwrap();
    assert_eq!(bytes.len() as u64, output.bytes);
    let image = genfleet_imaging::decode_sanitised(&bytes, &Default::default())
        .unwrap()
        .image;
    assert_eq!(
        (image.width(), image.height()),
        (output.width, output.height)
    );
    (output, image)
}

async fn assert_captured(ledger: &Ledger, result: &v1::JobResult) {
    let hold = ledger.hold(&result.job_id).await.unwrap().expect("a hold");
    assert_eq!(hold.state, HoldState::Captured, "{}", result.job_id);
    assert_eq!((hold.captured, hold.released), (CREDITS, 0));
    let credits = result.credits.unwrap_or_default();
    assert_eq!((credits.captured, credits.released), (CREDITS, 0));
}

fn assert_succeeded(result: &v1::JobResult, what: &str) {
    assert_eq!(
        result.status,
        v1::JobStatus::Succeeded as i32,
        "{what}: {:?}",
        result.error
    );
    assert_eq!(result.provider, "local", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_jobs_on_the_gpu_class_end_to_end() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-gpu");
    let root = dir.0.join("store");
    stage_uploads(&root);
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    ledger.grant(ACCOUNT, 1_000, "e2e").await.unwrap();
    let (conn, results) = results_queue(&vhost.url()).await;

    use v1::JobKind as K;
    let auto = job(K::BackgroundRemoval, "lamp.jpg", &[("method", "auto")]);
    // No method: `auto` is the default.
    let model = job(K::BackgroundRemoval, "dogs.jpg", &[("method", "model")]);
    let default_method = job(K::BackgroundRemoval, "lamp.jpg", &[]);
    let fast_x2 = job(K::Upscale, "small.png", &[("model", "realesrgan-fast")]);
    let mut fast_x4 = job(K::Upscale, "small.png", &[("model", "realesrgan-fast")]);
    let mut plus_x4 = job(K::Upscale, "tiny.png", &[("model", "realesrgan")]);
    for j in [&mut fast_x4, &mut plus_x4] {
        if let Some(p) = j.generation.as_mut().and_then(|g| g.parameters.as_mut()) {
            p.fields.insert(
                "factor".into(),
                genfleet_proto::pbjson_types::Value {
                    kind: Some(genfleet_proto::pbjson_types::value::Kind::NumberValue(4.0)),
                },
            );
        }
    }
    let unknown = job(K::BackgroundRemoval, "lamp.jpg", &[("method", "magic")]);
    let jobs = [
        &auto,
        &model,
        &default_method,
        &fast_x2,
        &fast_x4,
        &plus_x4,
        &unknown,
    ];
    // Each is routed to `gpu` as `genfleet enqueue` routes it.
    for j in jobs {
        assert_eq!(
            genfleet_worker::default_class_of(j),
            genfleet_broker::JobClass::Gpu,
            "{j:?}"
        );
    }

    let config = gpu_config(&dir.0, &vhost, &schema, &root, "preload = [\"u2netp\"]\n");
    let mut worker = WorkerProcess::start(&config, dir.0.join("worker.log"));
    let port = wait_ready(&mut worker, Duration::from_secs(60)).await;
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "gpu-test")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    for j in jobs {
        publish(&publisher, "gpu", j).await;
    }
    let collected = collect_results(&conn, &results, jobs.len(), Duration::from_secs(480)).await;
    assert_eq!(
        collected.results.len(),
        jobs.len(),
        "a result for every job; worker log:\n{}",
        worker.log_tail()
    );
    let result = |j: &v1::Job| collected.results[&j.job_id].0.clone();
    let store = open_store(&root);

    // Cut-outs: PNGs whose alpha keeps the object and drops the backdrop.
    let truth = std::fs::read(repo_path(
        "tests/fixtures/composites/k05_lamp_pastel_teal.mask.png",
    ))
    .unwrap();
    let truth = genfleet_imaging::decode_sanitised(&truth, &Default::default())
        .unwrap()
        .image
        .to_luma8();
    for (j, what) in [
        (&auto, "auto on a composite"),
        (&default_method, "no method on a composite"),
        (&model, "model on a photo"),
    ] {
        let r = result(j);
        assert_succeeded(&r, what);
        let (output, image) = only_output(&store, &r).await;
        assert_eq!(
            output.content_type, "image/png",
            "{what}: a cut-out keeps its transparency"
        );
        let alpha = alpha_of(&image);
        let share = foreground_share(&alpha);
        assert!(
            (0.02..0.98).contains(&share),
            "{what}: {share:.3} of the image kept, expected an object, not nothing or everything"
        );
        if j.inputs[0].uri.ends_with("lamp.jpg") {
            let iou = genfleet_imaging::alpha_iou(&alpha, &truth);
            assert!(
                iou > 0.9,
                "{what}: IoU {iou:.3} against the composite's mask"
            );
        }
        assert_captured(&ledger, &r).await;
    }

    // Upscales: the right size from each model.
    let small = image::image_dimensions(root.join("uploads/acme/gpu/small.png")).unwrap();
    let tiny = image::image_dimensions(root.join("uploads/acme/gpu/tiny.png")).unwrap();
    for (j, (w, h), factor, what) in [
        (&fast_x2, small, 2, "realesrgan-fast x2"),
        (&fast_x4, small, 4, "realesrgan-fast x4"),
        (&plus_x4, tiny, 4, "realesrgan x4"),
    ] {
        let r = result(j);
        assert_succeeded(&r, what);
        let (output, _) = only_output(&store, &r).await;
        assert_eq!(
            (output.width, output.height),
            (w * factor, h * factor),
            "{what}"
        );
        assert_captured(&ledger, &r).await;
    }

    // An unknown method: the job's fault, refused before any credit is held.
    let r = result(&unknown);
    assert_eq!(r.status, v1::JobStatus::Failed as i32);
    let error = r.error.clone().unwrap_or_default();
    assert_eq!(error.code, "invalid_input", "{error:?}");
    assert!(
        error.message.contains("parameters.method"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("auto, model or classical"),
        "{}",
        error.message
    );
    match ledger.hold(&unknown.job_id).await.unwrap() {
        None => {}
        Some(hold) => assert_eq!(hold.state, HoldState::Released),
    }
    let credits = r.credits.unwrap_or_default();
    assert_eq!(credits.captured, 0);

    // Conserved: six jobs captured, nothing held.
    let balance = ledger.balance(ACCOUNT).await.unwrap().unwrap();
    assert_eq!(balance.held, 0);
    assert_eq!(balance.captured, 6 * CREDITS);
    assert_eq!(balance.available, 1_000 - 6 * CREDITS);

    // The engine's metrics: the CPU provider in use, batches counted.
    assert_eq!(
        metric(
            port,
            "genfleet_inference_execution_provider{provider=\"cpu\"}"
        )
        .await,
        1.0
    );
    assert!(
        metric(
            port,
            "genfleet_inference_batch_size_count{model=\"u2netp\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            port,
            "genfleet_inference_batch_seconds_count{model=\"u2netp\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            port,
            "genfleet_inference_model_footprint_bytes{model=\"u2netp\"}"
        )
        .await
            > 0.0
    );
    assert_eq!(
        metric(
            port,
            "genfleet_job_duration_seconds_count{kind=\"background_removal\",status=\"succeeded\"}"
        )
        .await,
        3.0
    );
    broker.close().await;
    assert!(worker
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_runtime_does_not_load_serves_what_needs_no_model() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-gpu-broken");
    let root = dir.0.join("store");
    stage_uploads(&root);
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    ledger.grant(ACCOUNT, 100, "e2e").await.unwrap();
    let (conn, results) = results_queue(&vhost.url()).await;

    let config = gpu_config(
        &dir.0,
        &vhost,
        &schema,
        &root,
        "onnxruntime_path = \"/nonexistent/libonnxruntime.so.1.31.1\"\n",
    );
    let mut worker = WorkerProcess::start(&config, dir.0.join("worker.log"));
    wait_ready(&mut worker, Duration::from_secs(60)).await;

    use v1::JobKind as K;
    let lanczos = job(K::Upscale, "small.png", &[]);
    let model = job(K::BackgroundRemoval, "dogs.jpg", &[("method", "model")]);
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "gpu-test")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    for j in [&lanczos, &model] {
        publish(&publisher, "gpu", j).await;
    }
    let collected = collect_results(&conn, &results, 2, Duration::from_secs(120)).await;
    assert_eq!(collected.results.len(), 2, "{}", worker.log_tail());

    let r = collected.results[&lanczos.job_id].0.clone();
    assert_succeeded(&r, "lanczos upscale");
    let (output, _) = only_output(&open_store(&root), &r).await;
    let (w, h) = image::image_dimensions(root.join("uploads/acme/gpu/small.png")).unwrap();
    assert_eq!((output.width, output.height), (2 * w, 2 * h));
    assert_captured(&ledger, &r).await;

    let r = collected.results[&model.job_id].0.clone();
    assert_eq!(r.status, v1::JobStatus::Failed as i32);
    let error = r.error.clone().unwrap_or_default();
    assert_eq!(error.code, "provider_unavailable", "{error:?}");
    assert!(error.retryable, "another worker may have the model");
    assert!(
        error.message.contains("not available on this worker") && error.message.contains("runtime"),
        "{}",
        error.message
    );
    let hold = ledger.hold(&model.job_id).await.unwrap().expect("a hold");
    assert_eq!(hold.state, HoldState::Released);
    assert_eq!((hold.captured, hold.released), (0, CREDITS));

    let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
    assert_eq!(
        without_colours(&log)
            .matches("local inference did not start")
            .count(),
        1,
        "one warning at start, not one per job:\n{}",
        worker.log_tail()
    );
    broker.close().await;
    assert!(worker
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}

/// `genfleet batch --remove-background` and `--upscale-model`, no services:
/// cut-outs with transparency by model, a Real-ESRGAN upscale of the right
/// size, and a clear rejection per file when the models are not there.
#[test]
fn batch_cuts_out_and_upscales_by_model_without_services() {
    let dir = TempDir::new("genfleet-gpu-batch");
    let input = dir.0.join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(
        repo_path("tests/fixtures/corpus/photos/p08_dogs_portrait_orient6_1000x667.jpg"),
        input.join("dogs.jpg"),
    )
    .unwrap();
    let models = models_dir();
    let batch = |out: &str, args: &[&str], models: &Path| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_genfleet"))
            .arg("batch")
            .arg(&input)
            .arg("--out")
            .arg(dir.0.join(out))
            .arg("--models-dir")
            .arg(models)
            .args(args)
            .env_remove("ORT_DYLIB_PATH")
            .output()
            .expect("genfleet batch runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };

    let (ok, stdout) = batch(
        "cut",
        &["--remove-background", "--method", "model"],
        &models,
    );
    assert!(ok, "{stdout}");
    let cut = image::open(dir.0.join("cut/dogs.png")).expect("a PNG cut-out");
    assert_eq!(
        (cut.width(), cut.height()),
        (667, 1000),
        "upright, full size"
    );
    let share = foreground_share(&alpha_of(&cut));
    assert!((0.02..0.98).contains(&share), "{share}");

    let (ok, stdout) = batch(
        "up",
        &[
            "--long-side",
            "120",
            "--upscale",
            "4",
            "--upscale-model",
            "realesrgan-fast",
        ],
        &models,
    );
    assert!(ok, "{stdout}");
    let up = image::open(dir.0.join("up/dogs.jpg")).unwrap();
    assert_eq!((up.width(), up.height()), (80 * 4, 120 * 4));

    // No models there: the file is rejected with the reason, the rest of a
    // batch would go on.
    let empty = dir.0.join("no-models");
    std::fs::create_dir_all(&empty).unwrap();
    let (ok, stdout) = batch(
        "none",
        &["--remove-background", "--method", "model"],
        &empty,
    );
    assert!(!ok, "nothing converted: {stdout}");
    assert!(
        stdout.contains("provider_unavailable") && stdout.contains("not available"),
        "{stdout}"
    );
}

//! Local inference throughput: each model through `genfleet-inference`
//! (micro-batcher, pre- and post-processing, tiling) beside a bare ONNX
//! Runtime session running the same batch in the same process.
//!
//! `cargo bench --bench inference` (models from `tools/install-models`:
//! `GENFLEET_MODELS_DIR`, default `.models`). For each model and batch size
//! B, rounds alternate A B A B:
//!
//! - **bare session**: one `session.run` of a `B x 3 x H x W` tensor that
//!   was prepared before the clock started (the model alone);
//! - **genfleet-inference, rounds**: B concurrent requests to an [`Engine`]
//!   with `max_batch = B`, each a whole image: `foreground_mask` on a corpus
//!   photo (resize to 320, normalise, run, min-max, resize the mask back to
//!   the photo's size) or `upscale` of a tile-sized crop (one tile per
//!   image, so the batch holds B tiles like the bare run); the next round
//!   starts when all B are back, so nothing overlaps the model's run.
//! - **genfleet-inference, stream**: the same requests, rounds x B of them,
//!   with 2B in flight at any time, as a worker with many concurrent jobs
//!   sends them: one batch's pre- and post-processing overlaps the next
//!   batch's run. Timed over the whole stream.
//!
//! Figures: images/s (median round), the ratio engine / bare (the issue's
//! goal: >= 0.8, i.e. batching and pre/post-processing cost at most 20%),
//! CPU time per image (utime + stime of this process) and the peak resident
//! memory (`VmHWM`, reset before each cell through `/proc/self/clear_refs`)
//! of the engine's rounds, and each model's footprint as the engine
//! measured it at load.
//!
//! Knobs: `GENFLEET_BENCH_PROVIDER` (`cpu`, or `cuda` on a GPU machine),
//! `GENFLEET_BENCH_BATCHES` (`1,4,8,16`), `GENFLEET_BENCH_ROUNDS` (5),
//! `GENFLEET_BENCH_MODELS` (`u2netp,realesrgan-fast,realesrgan`),
//! `GENFLEET_BENCH_TILE` (super-resolution tile side; 96 on the CPU, 256 on
//! CUDA), `GENFLEET_BENCH_X4PLUS_TILE` (x4plus' tile; 48 on the CPU, 256 on
//! CUDA), `ORT_DYLIB_PATH` (the library; default the models dir's).
//!
//! Benchmarks print figures; nothing here asserts a time.

use genfleet_inference::gpu::{self, GpuProbe};
use genfleet_inference::{Engine, ExecutionProvider, InferenceConfig, UpscaleModel};
use image::RgbImage;
use ort::session::Session;
use ort::value::TensorRef;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const U2NETP_SIDE: u32 = 320;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() -> BenchResult<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    let models_dir = PathBuf::from(env_or("GENFLEET_MODELS_DIR", ".models"));
    let provider = ExecutionProvider::parse(&env_or("GENFLEET_BENCH_PROVIDER", "cpu"))
        .ok_or("GENFLEET_BENCH_PROVIDER: expected cpu or cuda")?;
    let on_gpu = provider == ExecutionProvider::Cuda;
    let batches: Vec<usize> = env_or("GENFLEET_BENCH_BATCHES", "1,4,8,16")
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .filter(|&b| b > 0)
        .collect();
    let rounds: usize = env_or("GENFLEET_BENCH_ROUNDS", "5").parse()?;
    let models = env_or("GENFLEET_BENCH_MODELS", "u2netp,realesrgan-fast,realesrgan");
    let tile: u32 = env_or("GENFLEET_BENCH_TILE", if on_gpu { "256" } else { "96" }).parse()?;
    let x4plus_tile: u32 = env_or(
        "GENFLEET_BENCH_X4PLUS_TILE",
        if on_gpu { "256" } else { "48" },
    )
    .parse()?;
    let library = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| models_dir.join("onnxruntime/libonnxruntime.so.1.31.1"));

    let probe: Arc<dyn GpuProbe> = gpu::discover();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let photos = load_photos(Path::new("tests/fixtures/corpus/photos"))?;

    println!(
        "# inference bench: provider {}, batches {:?}, {rounds} rounds, {} CPU(s)",
        provider.label(),
        batches,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for gpu in probe.gpus() {
        println!(
            "# gpu {}: {} ({} MiB)",
            gpu.index,
            gpu.name,
            gpu.memory_total_bytes >> 20
        );
    }
    println!(
        "| model | input | batch | bare images/s | engine rounds images/s | rounds/bare | engine stream images/s | stream/bare | engine CPU ms/image | engine peak RSS MiB |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");

    for model in models.split(',').map(str::trim) {
        let workload = match model {
            "u2netp" => Workload::Matte,
            "realesrgan-fast" => Workload::Upscale {
                model: UpscaleModel::RealEsrganFast,
                file: "realesr-animevideov3-x4.onnx",
                tile,
            },
            "realesrgan" => Workload::Upscale {
                model: UpscaleModel::RealEsrgan,
                file: "realesrgan-x4plus.onnx",
                tile: x4plus_tile,
            },
            other => return Err(format!("unknown model {other:?}").into()),
        };
        for &batch in &batches {
            let config = InferenceConfig {
                onnxruntime_path: Some(library.clone()),
                models_dir: models_dir.clone(),
                execution_providers: vec![provider],
                max_batch: batch,
                // Long enough for B concurrent submissions to meet; a full
                // batch runs at once without waiting for it.
                max_delay: Duration::from_millis(200),
                tile_size: match workload {
                    Workload::Upscale { tile, .. } => tile,
                    Workload::Matte => InferenceConfig::default().tile_size,
                },
                tile_overlap: 0,
                ..InferenceConfig::default()
            };
            let engine = Engine::open(config, probe.clone(), None)?;
            if engine.execution_provider() != provider {
                return Err(format!(
                    "asked for {} but the engine runs on {}",
                    provider.label(),
                    engine.execution_provider().label()
                )
                .into());
            }
            let mut bare = bare_session(&engine, &models_dir, &workload, on_gpu)?;
            let inputs = workload.inputs(&photos, batch);
            let tensor = workload.bare_tensor(&inputs)?;

            // Warm-up: loads the engine's model, the arenas of both.
            let shared: Vec<Arc<RgbImage>> = inputs.iter().cloned().map(Arc::new).collect();
            runtime.block_on(workload.engine_round(&engine, &shared))?;
            bare.run(&tensor)?;

            let mut bare_times = Vec::new();
            let mut engine_times = Vec::new();
            reset_peak_rss();
            let mut engine_cpu = Duration::ZERO;
            for _ in 0..rounds {
                let started = Instant::now();
                bare.run(&tensor)?;
                bare_times.push(started.elapsed());

                let cpu_before = process_cpu_time();
                let started = Instant::now();
                runtime.block_on(workload.engine_round(&engine, &shared))?;
                engine_times.push(started.elapsed());
                engine_cpu += process_cpu_time().saturating_sub(cpu_before);
            }
            let started = Instant::now();
            runtime.block_on(workload.engine_stream(
                &engine,
                &shared,
                rounds * batch,
                2 * batch,
            ))?;
            let stream_rate = (rounds * batch) as f64 / started.elapsed().as_secs_f64();
            let bare_rate = batch as f64 / median(&mut bare_times).as_secs_f64();
            let engine_rate = batch as f64 / median(&mut engine_times).as_secs_f64();
            println!(
                "| {model} | {} | {batch} | {bare_rate:.2} | {engine_rate:.2} | {:.2} | {stream_rate:.2} | {:.2} | {:.1} | {:.0} |",
                workload.describe(&inputs),
                engine_rate / bare_rate,
                stream_rate / bare_rate,
                engine_cpu.as_secs_f64() * 1e3 / (rounds * batch) as f64,
                peak_rss_bytes() as f64 / (1 << 20) as f64,
            );
            for loaded in engine.loaded_models() {
                println!(
                    "#   {} footprint {:.1} MiB on {}",
                    loaded.name,
                    loaded.footprint_bytes as f64 / (1 << 20) as f64,
                    loaded.execution_provider.label()
                );
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Workload {
    Matte,
    Upscale {
        model: UpscaleModel,
        file: &'static str,
        tile: u32,
    },
}

impl Workload {
    /// B images for one round: photos for the matte, tile-sized crops of
    /// them for super-resolution.
    fn inputs(&self, photos: &[RgbImage], batch: usize) -> Vec<RgbImage> {
        (0..batch)
            .map(|i| {
                let photo = &photos[i % photos.len()];
                match *self {
                    Workload::Matte => photo.clone(),
                    Workload::Upscale { tile, .. } => {
                        let side = tile.min(photo.width()).min(photo.height());
                        let x = (photo.width() - side) / 2;
                        let y = (photo.height() - side) / 2;
                        image::imageops::crop_imm(photo, x, y, side, side).to_image()
                    }
                }
            })
            .collect()
    }

    fn describe(&self, inputs: &[RgbImage]) -> String {
        let first = &inputs[0];
        match self {
            Workload::Matte => format!("photo ~{}x{} -> 320", first.width(), first.height()),
            Workload::Upscale { .. } => format!("{}x{} x4", first.width(), first.height()),
        }
    }

    /// The batch the bare session runs: what the engine's preprocessing
    /// would hand the model, made before the clock starts.
    fn bare_tensor(&self, inputs: &[RgbImage]) -> BenchResult<ndarray::Array4<f32>> {
        match self {
            Workload::Matte => {
                let side = U2NETP_SIDE as usize;
                let mut tensor = ndarray::Array4::<f32>::zeros((inputs.len(), 3, side, side));
                let mean = [0.485f32, 0.456, 0.406];
                let std = [0.229f32, 0.224, 0.225];
                for (n, image) in inputs.iter().enumerate() {
                    let small = image::imageops::resize(
                        image,
                        U2NETP_SIDE,
                        U2NETP_SIDE,
                        image::imageops::FilterType::Lanczos3,
                    );
                    let max = small.as_raw().iter().copied().max().unwrap_or(255).max(1) as f32;
                    for (x, y, pixel) in small.enumerate_pixels() {
                        for c in 0..3 {
                            tensor[[n, c, y as usize, x as usize]] =
                                (pixel[c] as f32 / max - mean[c]) / std[c];
                        }
                    }
                }
                Ok(tensor)
            }
            Workload::Upscale { .. } => {
                let (w, h) = (inputs[0].width() as usize, inputs[0].height() as usize);
                let mut tensor = ndarray::Array4::<f32>::zeros((inputs.len(), 3, h, w));
                for (n, image) in inputs.iter().enumerate() {
                    for (x, y, pixel) in image.enumerate_pixels() {
                        for c in 0..3 {
                            tensor[[n, c, y as usize, x as usize]] = pixel[c] as f32 / 255.0;
                        }
                    }
                }
                Ok(tensor)
            }
        }
    }

    /// `total` requests over `inputs`, `in_flight` at a time.
    async fn engine_stream(
        &self,
        engine: &Engine,
        inputs: &[Arc<RgbImage>],
        total: usize,
        in_flight: usize,
    ) -> BenchResult<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            if tasks.len() >= in_flight {
                if let Some(done) = tasks.join_next().await {
                    done??;
                }
            }
            let image = Arc::clone(&inputs[i % inputs.len()]);
            let engine = engine.clone();
            let workload = *self;
            tasks.spawn(async move { workload.one(&engine, &image, deadline).await });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(())
    }

    async fn one(
        &self,
        engine: &Engine,
        image: &RgbImage,
        deadline: tokio::time::Instant,
    ) -> Result<usize, genfleet_inference::InferenceError> {
        match *self {
            Workload::Matte => engine
                .foreground_mask(image, deadline)
                .await
                .map(|mask| mask.width() as usize),
            Workload::Upscale { model, .. } => engine
                .upscale(image, model, 4, deadline)
                .await
                .map(|out| out.width() as usize),
        }
    }

    /// B concurrent requests, as B jobs would make them.
    async fn engine_round(&self, engine: &Engine, inputs: &[Arc<RgbImage>]) -> BenchResult<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        let mut tasks = tokio::task::JoinSet::new();
        for image in inputs {
            // Shared, not copied: the copy would be timed as engine work.
            let image = Arc::clone(image);
            let engine = engine.clone();
            let workload = *self;
            tasks.spawn(async move { workload.one(&engine, &image, deadline).await });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(())
    }
}

struct Bare {
    session: Session,
    input: String,
}

impl Bare {
    fn run(&mut self, tensor: &ndarray::Array4<f32>) -> BenchResult<()> {
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => TensorRef::from_array_view(tensor)?])?;
        // Read the first output back to the host, as the engine must.
        let (_, data) = outputs[0].try_extract_tensor::<f32>()?;
        std::hint::black_box(data.len());
        Ok(())
    }
}

/// A plain session in the engine's ONNX Runtime environment (one per
/// process) with the same provider and graph optimisation.
fn bare_session(
    engine: &Engine,
    models_dir: &Path,
    workload: &Workload,
    on_gpu: bool,
) -> BenchResult<Bare> {
    // Builder errors carry the builder (not Send): keep their message.
    let text = |e: ort::Error<ort::session::builder::SessionBuilder>| e.to_string();
    let mut builder = Session::builder(engine.ort_environment())?
        .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Level3)
        .map_err(text)?;
    if on_gpu {
        builder = builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(text)?;
    }
    let file = match workload {
        Workload::Matte => "u2netp.onnx",
        Workload::Upscale { file, .. } => file,
    };
    let session = builder.commit_from_file(models_dir.join(file))?;
    let input = session.inputs()[0].name().to_string();
    Ok(Bare { session, input })
}

fn load_photos(folder: &Path) -> BenchResult<Vec<RgbImage>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(folder)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    paths.sort();
    let photos: Vec<RgbImage> = paths
        .iter()
        .map(|p| image::open(p).map(|i| i.to_rgb8()))
        .collect::<Result<_, _>>()?;
    if photos.is_empty() {
        return Err(format!("no photos in {}", folder.display()).into());
    }
    Ok(photos)
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// utime + stime of this process, from /proc/self/stat (clock ticks of
/// 10 ms on Linux).
fn process_cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start at ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after ')'.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn reset_peak_rss() {
    // "5" resets VmHWM to the current RSS (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

//! The engine with the real models on the CPU. The models come from
//! `tools/install-models` (`GENFLEET_MODELS_DIR`, else `<repo>/.models`);
//! without them these tests fail, they never skip.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use genfleet_inference::gpu::NoGpu;
use genfleet_inference::registry::{self, MODELS};
use genfleet_inference::{
    Engine, ExecutionProvider, InferenceConfig, InferenceError, UpscaleModel,
};
use image::{GrayImage, RgbImage};
use tokio::time::Instant;

fn models_dir() -> PathBuf {
    let dir = std::env::var_os("GENFLEET_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.models"));
    assert!(
        dir.join("MANIFEST").is_file(),
        "no models at {}: run tools/install-models",
        dir.display()
    );
    dir
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn config() -> InferenceConfig {
    InferenceConfig {
        models_dir: models_dir(),
        execution_providers: vec![ExecutionProvider::Cpu],
        ..InferenceConfig::default()
    }
}

fn engine(config: InferenceConfig) -> Engine {
    Engine::open(config, Arc::new(NoGpu), None).expect("engine opens on the cpu")
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

fn read_rgb(path: &std::path::Path) -> RgbImage {
    image::open(path).unwrap().to_rgb8()
}

fn files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(fixtures().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.to_string_lossy().ends_with(suffix) && !p.to_string_lossy().ends_with(".mask.png")
        })
        .collect();
    files.sort();
    files
}

/// IoU of the foregrounds at alpha >= 128, as genfleet-imaging's
/// `alpha_iou` (not a dependency: inference may depend on proto alone).
fn alpha_iou(predicted: &GrayImage, truth: &GrayImage) -> f64 {
    let (mut both, mut either) = (0u64, 0u64);
    for (p, t) in predicted.pixels().zip(truth.pixels()) {
        let (p, t) = (p[0] >= 128, t[0] >= 128);
        both += u64::from(p && t);
        either += u64::from(p || t);
    }
    if either == 0 {
        1.0
    } else {
        both as f64 / either as f64
    }
}

fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        / a.as_raw().len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10()
}

#[test]
fn registry_agrees_with_the_installed_manifest() {
    let manifest = std::fs::read_to_string(models_dir().join("MANIFEST")).unwrap();
    let entries = registry::parse_manifest(&manifest);
    for spec in MODELS {
        let listed = entries.iter().find(|(file, _)| file == spec.file);
        assert_eq!(
            listed.map(|(_, sha)| sha.as_str()),
            Some(spec.sha256),
            "{}: registry and MANIFEST disagree",
            spec.file
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composites_get_a_mask_of_their_size_close_to_the_truth() {
    let engine = engine(config());
    assert_eq!(engine.execution_provider(), ExecutionProvider::Cpu);
    for path in files("composites", ".jpg") {
        let image = read_rgb(&path);
        let truth = image::open(path.with_extension("mask.png"))
            .unwrap()
            .to_luma8();
        let started = StdInstant::now();
        let mask = engine.foreground_mask(&image, deadline()).await.unwrap();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(mask.dimensions(), image.dimensions());
        let iou = alpha_iou(&mask, &truth);
        println!(
            "{}: raw u2netp IoU {iou:.3} ({ms:.0} ms)",
            path.file_name().unwrap().to_string_lossy()
        );
        assert!(iou >= 0.6, "{}: IoU {iou:.3}", path.display());
    }
    let loaded = engine.loaded_models();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].name, "u2netp");
    println!(
        "u2netp footprint (rss delta): {} bytes",
        loaded[0].footprint_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photos_get_a_sane_mask() {
    let engine = engine(config());
    for path in files("corpus/photos", ".jpg") {
        let image = read_rgb(&path);
        let mask = engine.foreground_mask(&image, deadline()).await.unwrap();
        assert_eq!(mask.dimensions(), image.dimensions());
        let fg =
            mask.as_raw().iter().filter(|&&v| v >= 128).count() as f64 / mask.as_raw().len() as f64;
        println!(
            "{}: foreground {:.1}%",
            path.file_name().unwrap().to_string_lossy(),
            fg * 100.0
        );
        assert!(
            fg > 0.001 && fg < 0.995,
            "{}: foreground fraction {fg}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_masks_each_get_their_own() {
    let engine = engine(config());
    let images: Vec<Arc<RgbImage>> = files("corpus/photos", ".jpg")
        .iter()
        .chain(files("composites", ".jpg").iter())
        .map(|p| {
            let image = read_rgb(p);
            Arc::new(genfleet_inference::tiling::resize_rgb(
                &image,
                image.width() / 4,
                image.height() / 4,
            ))
        })
        .collect();
    // One by one: the reference.
    let started = StdInstant::now();
    let mut single = Vec::new();
    for image in &images {
        single.push(engine.foreground_mask(image, deadline()).await.unwrap());
    }
    let one_by_one = started.elapsed().as_secs_f64();
    // 16 tasks at once, cycling over the images.
    let started = StdInstant::now();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (engine, image) = (engine.clone(), Arc::clone(&images[i % images.len()]));
            tokio::spawn(async move { (i, engine.foreground_mask(&image, deadline()).await) })
        })
        .collect();
    let mut worst = 0u8;
    for task in tasks {
        let (i, mask) = task.await.unwrap();
        let mask: GrayImage = mask.unwrap();
        let reference = &single[i % images.len()];
        assert_eq!(mask.dimensions(), reference.dimensions());
        let diff = mask
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        worst = worst.max(diff);
    }
    let batched = started.elapsed().as_secs_f64();
    println!(
        "u2netp on cpu: {:.0} ms/image one by one, {:.0} ms/image 16 concurrent (batched); max abs diff batched vs single {worst}",
        one_by_one * 1e3 / images.len() as f64,
        batched * 1e3 / 16.0
    );
    assert!(
        worst <= 2,
        "batched masks differ from single ones by {worst}"
    );
}

/// A 256x256 crop of a photo, and the crop downscaled 4x.
fn crop_pair() -> (RgbImage, RgbImage) {
    let photo = read_rgb(&files("corpus/photos", ".jpg")[0]);
    let crop = image::imageops::crop_imm(&photo, 300, 200, 256, 256).to_image();
    let small = genfleet_inference::tiling::resize_rgb(&crop, 64, 64);
    (crop, small)
}

/// PSNR of both models' x4 against the original crop, with nearest and
/// bicubic from the same 64x64 input.
async fn x4_scores() -> (f64, f64, Vec<(UpscaleModel, f64)>) {
    let engine = engine(config());
    let (crop, small) = crop_pair();
    let nearest = image::imageops::resize(&small, 256, 256, image::imageops::Nearest);
    let bicubic = image::imageops::resize(&small, 256, 256, image::imageops::CatmullRom);
    let (p_near, p_cubic) = (psnr(&nearest, &crop), psnr(&bicubic, &crop));
    let mut scores = Vec::new();
    for model in [UpscaleModel::RealEsrganFast, UpscaleModel::RealEsrgan] {
        let started = StdInstant::now();
        let up = engine.upscale(&small, model, 4, deadline()).await.unwrap();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(up.dimensions(), (256, 256));
        let p = psnr(&up, &crop);
        println!("{} x4: PSNR {p:.2} dB (nearest {p_near:.2}, bicubic {p_cubic:.2}), {ms:.0} ms for 64x64 -> 256x256", model.label());
        scores.push((model, p));
    }
    // x2 through both models (x4plus runs x4 and halves) has the right size.
    for model in [UpscaleModel::RealEsrganFast, UpscaleModel::RealEsrgan] {
        let up = engine.upscale(&small, model, 2, deadline()).await.unwrap();
        assert_eq!(up.dimensions(), (128, 128));
    }
    (p_near, p_cubic, scores)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upscale_x4_is_aligned_and_close_to_the_original() {
    // Sanity: a misaligned, colour-swapped or garbage output scores far
    // below bicubic (< 15 dB); these GAN models land within a few dB.
    let (_, p_cubic, scores) = x4_scores().await;
    for (model, p) in scores {
        assert!(
            p > 20.0 && p > p_cubic - 6.0,
            "{}: {p:.2} dB",
            model.label()
        );
    }
}

/// `image` cropped to a multiple of 4 and averaged over 4x4 blocks (the
/// "area" downscale), with the crop it was made from.
fn area_down4(image: &RgbImage) -> (RgbImage, RgbImage) {
    let (w, h) = (image.width() / 4 * 4, image.height() / 4 * 4);
    let crop = image::imageops::crop_imm(image, 0, 0, w, h).to_image();
    let small = RgbImage::from_fn(w / 4, h / 4, |x, y| {
        let mut sum = [0u32; 3];
        for dy in 0..4 {
            for dx in 0..4 {
                let p = crop.get_pixel(x * 4 + dx, y * 4 + dy);
                for c in 0..3 {
                    sum[c] += u32::from(p[c]);
                }
            }
        }
        image::Rgb(sum.map(|v| ((v + 8) / 16) as u8))
    });
    (crop, small)
}

/// The check: a photo downscaled by 4 and brought back by
/// `realesrgan-fast` is closer to the original (PSNR) than nearest-neighbour,
/// on the mean over the corpus photos (whole images, tiled by the engine).
/// Measured 2026-12-04: the model beats nearest on the mean and loses to
/// bicubic (GAN super-resolution is trained to look sharp, not to minimise
/// pixel error); x4plus does not beat nearest on these photos (23.6 vs 24.0
/// dB on 64->256 crops) and renders 0.4-5.7 levels darker per channel in
/// raw ONNX Runtime output too (model-intrinsic, see tools/models.md), so
/// it gets the sanity bound of `upscale_x4_is_aligned_and_close_to_the_original`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realesrgan_fast_x4_beats_nearest_on_the_corpus_photos() {
    let engine = engine(config());
    let (mut model_sum, mut nearest_sum, mut count) = (0.0, 0.0, 0.0);
    println!("photo | realesrgan-fast | nearest | bicubic (dB)");
    for path in files("corpus/photos", ".jpg") {
        let (original, small) = area_down4(&read_rgb(&path));
        let (w, h) = original.dimensions();
        let up = engine
            .upscale(&small, UpscaleModel::RealEsrganFast, 4, deadline())
            .await
            .unwrap();
        assert_eq!(up.dimensions(), (w, h));
        let nearest = image::imageops::resize(&small, w, h, image::imageops::Nearest);
        let bicubic = image::imageops::resize(&small, w, h, image::imageops::CatmullRom);
        let (p_model, p_near) = (psnr(&up, &original), psnr(&nearest, &original));
        println!(
            "{} | {p_model:.2} | {p_near:.2} | {:.2}",
            path.file_name().unwrap().to_string_lossy(),
            psnr(&bicubic, &original)
        );
        model_sum += p_model;
        nearest_sum += p_near;
        count += 1.0;
    }
    let (model_mean, nearest_mean) = (model_sum / count, nearest_sum / count);
    println!("mean | {model_mean:.2} | {nearest_mean:.2}");
    assert!(
        model_mean > nearest_mean,
        "realesrgan-fast {model_mean:.2} dB vs nearest {nearest_mean:.2} dB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiled_upscale_is_close_to_the_whole_image_one() {
    let (_, small) = crop_pair();
    let small = {
        let photo = read_rgb(&files("corpus/photos", ".jpg")[1]);
        let crop = image::imageops::crop_imm(&photo, 100, 100, 160, 120).to_image();
        drop(small);
        crop
    };
    let tiled = engine(InferenceConfig {
        tile_size: 48,
        tile_overlap: 16,
        ..config()
    });
    let whole = engine(InferenceConfig {
        tile_size: 4096,
        ..config()
    });
    let a = tiled
        .upscale(&small, UpscaleModel::RealEsrganFast, 4, deadline())
        .await
        .unwrap();
    let b = whole
        .upscale(&small, UpscaleModel::RealEsrganFast, 4, deadline())
        .await
        .unwrap();
    let mad = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum::<f64>()
        / a.as_raw().len() as f64;
    println!("tiled (48/16) vs whole: mean abs diff {mad:.3}/255");
    assert!(mad < 1.5, "mean abs diff {mad:.3}");
}

#[tokio::test]
async fn upscale_rejects_factor_three_and_empty_images() {
    let engine = engine(config());
    let image = RgbImage::new(8, 8);
    let err = engine
        .upscale(&image, UpscaleModel::RealEsrganFast, 3, deadline())
        .await
        .unwrap_err();
    assert!(matches!(err, InferenceError::Invalid { .. }), "{err:?}");
    let err = engine
        .upscale(
            &RgbImage::new(0, 4),
            UpscaleModel::RealEsrgan,
            2,
            deadline(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, InferenceError::Invalid { .. }), "{err:?}");
    let err = engine
        .foreground_mask(&RgbImage::new(4, 0), deadline())
        .await
        .unwrap_err();
    assert!(matches!(err, InferenceError::Invalid { .. }), "{err:?}");
}

#[test]
fn a_missing_library_is_unavailable() {
    let config = InferenceConfig {
        onnxruntime_path: Some(PathBuf::from("/nonexistent/libonnxruntime.so")),
        ..config()
    };
    let err = Engine::open(config, Arc::new(NoGpu), None).err().unwrap();
    match err {
        InferenceError::Unavailable { message } => {
            assert!(
                message.contains("/nonexistent/libonnxruntime.so"),
                "{message}"
            );
            assert!(message.contains("inference.onnxruntime_path"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_model_with_the_wrong_sha256_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(models_dir().join("u2netp.onnx")).unwrap();
    bytes.push(0);
    std::fs::write(dir.path().join("u2netp.onnx"), bytes).unwrap();
    let engine = engine(InferenceConfig {
        onnxruntime_path: Some(models_dir().join("onnxruntime/libonnxruntime.so.1.31.1")),
        models_dir: dir.path().to_path_buf(),
        ..config()
    });
    let err = engine
        .foreground_mask(&RgbImage::new(16, 16), deadline())
        .await
        .unwrap_err();
    match err {
        InferenceError::Unavailable { message } => assert!(message.contains("sha256"), "{message}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // A missing model is Unavailable too, and the engine stays usable.
    let err = engine.preload(&["realesrgan-x4plus"]).await.unwrap_err();
    assert!(matches!(err, InferenceError::Unavailable { .. }), "{err:?}");
}

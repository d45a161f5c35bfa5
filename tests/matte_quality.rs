//! Background removal quality with the real U²-Net-p on CPU: the IoU table
//! of the issue (classical, raw model, model + full-resolution refinement,
//! `auto`) on every composite of `tests/fixtures/composites`, and cut-outs
//! of the real photos of `tests/fixtures/corpus/photos`.
//!
//! Needs the models `tools/install-models` installs (in
//! `GENFLEET_MODELS_DIR`, else `<repo>/.models`, with ONNX Runtime's library
//! beside them or in `ORT_DYLIB_PATH`); without them it fails and says so,
//! because a quality test that skips itself measures nothing. Run with
//! `--no-capture` to see the table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use genfleet_imaging::{
    alpha_iou, choose_method, classical_confidence, decode_sanitised, refine_mask, ClassicalMatte,
    DynamicImage, Limits, MatteMethod,
};
use genfleet_inference::gpu::NoGpu;
use genfleet_inference::{Engine, InferenceConfig};
use image::{GrayImage, RgbImage};

/// `auto` may lose at most this much IoU to the better of classical and
/// model + refinement on any composite (the bound).
const AUTO_MARGIN: f64 = 0.005;
/// Mean IoU `auto` must reach over the composites (the bound).
const AUTO_MEAN_FLOOR: f64 = 0.97;
/// A photo's cut-out must keep more than this fraction of the image: "not
/// empty". Not 1 %: p01 is a dragonfly on foliage against the sky, whose
/// body and wings cover well under 1 % of the frame; the model finds it
/// (about 0.2 % of the pixels at alpha >= 128) and that is a sane cut-out.
const MIN_FOREGROUND: f64 = 0.0005;
/// ... and less than this: "not everything".
const MAX_FOREGROUND: f64 = 0.99;
/// Generous: the first call loads the model, and CI machines are slow.
const DEADLINE: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn engine() -> Engine {
    let models_dir = std::env::var_os("GENFLEET_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".models"));
    let config = InferenceConfig {
        models_dir: models_dir.clone(),
        ..InferenceConfig::default()
    };
    Engine::open(config, Arc::new(NoGpu), None).unwrap_or_else(|e| {
        panic!(
            "no inference engine with the models in {} (run tools/install-models): {e}",
            models_dir.display()
        )
    })
}

/// Fixture files of `dir` ending in `suffix`, sorted by name.
fn fixtures(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    paths.sort();
    paths
}

/// Decoded as the worker decodes: oriented, sRGB, no alpha.
fn decode(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    decode_sanitised(&bytes, &Limits::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .image
        .into_rgb8()
}

fn foreground_fraction(mask: &GrayImage) -> f64 {
    let opaque = mask.as_raw().iter().filter(|&&a| a >= 128).count();
    opaque as f64 / mask.as_raw().len().max(1) as f64
}

/// Every mask one image gets, and which one `auto` picked.
struct Cut {
    classical: GrayImage,
    raw: GrayImage,
    refined: GrayImage,
    method: MatteMethod,
    confidence: f32,
}

impl Cut {
    fn auto(&self) -> &GrayImage {
        match self.method {
            MatteMethod::Classical => &self.classical,
            MatteMethod::Model => &self.refined,
        }
    }
}

async fn cut(engine: &Engine, image: RgbImage) -> Cut {
    let dynamic = DynamicImage::ImageRgb8(image);
    let (classical, evidence) = ClassicalMatte::default()
        .matte_with_evidence(&dynamic)
        .unwrap_or_else(|e| panic!("classical matte: {e}"));
    let DynamicImage::ImageRgb8(image) = dynamic else {
        unreachable!("built as rgb8 above")
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let raw = engine
        .foreground_mask(&image, deadline)
        .await
        .unwrap_or_else(|e| panic!("model mask: {e}"));
    assert_eq!(raw.dimensions(), image.dimensions());
    let refined = refine_mask(&image, &raw).unwrap_or_else(|e| panic!("refine: {e}"));
    Cut {
        classical,
        raw,
        refined,
        method: choose_method(&evidence),
        confidence: classical_confidence(&evidence),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn iou_table_on_the_composites() {
    let engine = engine();
    let dir = repo().join("tests/fixtures/composites");
    let images = fixtures(&dir, ".jpg");
    assert!(!images.is_empty(), "no composites in {}", dir.display());
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}  auto picks (confidence)",
        "composite", "classical", "model", "refined", "auto"
    );
    let mut rows = Vec::new();
    for path in &images {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let truth = image::open(dir.join(format!("{name}.mask.png")))
            .unwrap_or_else(|e| panic!("{name}.mask.png: {e}"))
            .into_luma8();
        let cut = cut(&engine, decode(path)).await;
        let iou = [
            alpha_iou(&cut.classical, &truth),
            alpha_iou(&cut.raw, &truth),
            alpha_iou(&cut.refined, &truth),
            alpha_iou(cut.auto(), &truth),
        ];
        println!(
            "{name:<34} {:>9.4} {:>9.4} {:>9.4} {:>9.4}  {} ({:.2})",
            iou[0],
            iou[1],
            iou[2],
            iou[3],
            cut.method.as_str(),
            cut.confidence
        );
        rows.push((name, iou));
    }
    let mean = |k: usize| rows.iter().map(|(_, iou)| iou[k]).sum::<f64>() / rows.len() as f64;
    let means = [mean(0), mean(1), mean(2), mean(3)];
    println!(
        "{:<34} {:>9.4} {:>9.4} {:>9.4} {:>9.4}",
        "mean", means[0], means[1], means[2], means[3]
    );
    for (name, [classical, _, refined, auto]) in &rows {
        let best = classical.max(*refined);
        assert!(
            *auto >= best - AUTO_MARGIN,
            "{name}: auto {auto:.4} is more than {AUTO_MARGIN} below the better method {best:.4}"
        );
    }
    assert!(
        means[3] >= AUTO_MEAN_FLOOR,
        "mean auto IoU {:.4}, expected at least {AUTO_MEAN_FLOOR}",
        means[3]
    );
    assert!(
        means[2] > means[1],
        "refinement did not improve the model's mean IoU: {:.4} -> {:.4}",
        means[1],
        means[2]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn photos_cut_out_with_a_sane_mask() {
    let engine = engine();
    let dir = repo().join("tests/fixtures/corpus/photos");
    let images = fixtures(&dir, ".jpg");
    assert!(!images.is_empty(), "no photos in {}", dir.display());
    println!(
        "{:<42} {:>8} {:>8} {:>8}  auto picks (confidence)",
        "photo", "model", "refined", "auto"
    );
    for path in &images {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cut = cut(&engine, decode(path)).await;
        let fractions = [
            foreground_fraction(&cut.raw),
            foreground_fraction(&cut.refined),
            foreground_fraction(cut.auto()),
        ];
        println!(
            "{name:<42} {:>7.2}% {:>7.2}% {:>7.2}%  {} ({:.2})",
            100.0 * fractions[0],
            100.0 * fractions[1],
            100.0 * fractions[2],
            cut.method.as_str(),
            cut.confidence
        );
        for (what, fraction) in [("refined model", fractions[1]), ("auto", fractions[2])] {
            assert!(
                fraction > MIN_FOREGROUND && fraction < MAX_FOREGROUND,
                "{name}: {what} keeps {:.2}% of the image, expected between {}% and {}%",
                100.0 * fraction,
                100.0 * MIN_FOREGROUND,
                100.0 * MAX_FOREGROUND
            );
        }
    }
}

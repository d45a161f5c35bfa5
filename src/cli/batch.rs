//! `genfleet batch`: the worker's image pipeline over a local folder.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use genfleet_imaging::Encoding;
use genfleet_worker::batch::{self, BatchModels, BatchOptions};
use genfleet_worker::config::InferenceSection;
use genfleet_worker::local_models::LocalModels;
use genfleet_worker::methods::{MatteMethod, UpscaleMethod};
use genfleet_worker::metrics::Metrics;
use genfleet_worker::Config;

#[derive(Args)]
pub(crate) struct BatchArgs {
    /// Folder of input images (searched recursively).
    input: PathBuf,
    /// Folder for the outputs.
    #[arg(long)]
    out: PathBuf,
    /// Long side of the outputs in pixels; smaller images are not
    /// enlarged. Default 2048, or none with --preset (the preset sizes).
    #[arg(long)]
    long_side: Option<u32>,
    /// Output format; default JPEG, or the preset's own with --preset.
    #[arg(long, value_enum)]
    format: Option<OutputFormat>,
    /// JPEG / lossy WebP quality 1..=100.
    #[arg(long, default_value_t = 85)]
    quality: u8,
    /// Render with this preset: amazon-main, shopify-square, etsy,
    /// thumbnail-256, thumbnail-512, original, or one from --presets.
    #[arg(long)]
    preset: Option<String>,
    /// A TOML file of extra presets (same shape as the built-ins).
    #[arg(long)]
    presets: Option<PathBuf>,
    /// Overlay the free-tier watermark.
    #[arg(long)]
    watermark: bool,
    /// Threads; 0 means one per CPU.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Cut every image out (a PNG with transparency unless --format says
    /// otherwise).
    #[arg(long)]
    remove_background: bool,
    /// How --remove-background cuts: auto (the classical matte on a plain
    /// backdrop, the model otherwise), model or classical.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        requires = "remove_background"
    )]
    method: Method,
    /// Enlarge every image 2 or 4 times (after --long-side).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["2", "4"]))]
    upscale: Option<String>,
    /// The upscaler of --upscale: lanczos, realesrgan-fast or realesrgan.
    #[arg(long, value_enum, default_value = "lanczos", requires = "upscale")]
    upscale_model: UpscaleModel,
    /// Folder of the models (tools/install-models DIR); default `.models`
    /// here when it exists, else the configuration's `inference.models_dir`.
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// The ONNX Runtime library; default `inference.onnxruntime_path`,
    /// ORT_DYLIB_PATH, then the one install-models put in the models folder.
    #[arg(long)]
    onnxruntime: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Method {
    Auto,
    Model,
    Classical,
}

#[derive(Clone, Copy, ValueEnum)]
enum UpscaleModel {
    Lanczos,
    RealesrganFast,
    Realesrgan,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Jpeg,
    Png,
    /// Lossy WebP.
    Webp,
    WebpLossless,
    Avif,
}

pub(crate) fn run(args: BatchArgs, config: Option<&Path>) -> Result<ExitCode> {
    let BatchArgs {
        input,
        out,
        long_side,
        format,
        quality,
        preset,
        presets,
        watermark,
        threads,
        remove_background,
        method,
        upscale,
        upscale_model,
        models_dir,
        onnxruntime,
    } = args;
    let cutout = remove_background.then_some(match method {
        Method::Auto => MatteMethod::Auto,
        Method::Model => MatteMethod::Model,
        Method::Classical => MatteMethod::Classical,
    });
    let upscale = match upscale.as_deref() {
        None => None,
        Some(factor) => Some((
            match upscale_model {
                UpscaleModel::Lanczos => UpscaleMethod::Lanczos,
                UpscaleModel::RealesrganFast => UpscaleMethod::RealEsrganFast,
                UpscaleModel::Realesrgan => UpscaleMethod::RealEsrgan,
            },
            factor.parse::<u32>().context("--upscale is 2 or 4")?,
        )),
    };
    let quality = quality.clamp(1, 100);
    let encoding = format.map(|format| match format {
        OutputFormat::Jpeg => Encoding::jpeg(quality),
        OutputFormat::Png => Encoding::Png,
        OutputFormat::Webp => Encoding::Webp { quality },
        OutputFormat::WebpLossless => Encoding::WebpLossless,
        OutputFormat::Avif => Encoding::Avif {
            quality,
            speed: genfleet_imaging::AVIF_SPEED,
        },
    });
    let known = genfleet_worker::services::load_presets(presets.as_deref())?;
    let (preset, long_side, encoding) = match preset {
        Some(name) => {
            let preset = known.get(&name).cloned().with_context(|| {
                let names: Vec<&str> = known.iter().map(|p| p.name.as_str()).collect();
                format!(
                    "unknown preset {name:?}, expected one of {}",
                    names.join(", ")
                )
            })?;
            (preset, long_side, encoding)
        }
        // A cut-out keeps its transparency: PNG unless --format says
        // otherwise. An upscale is not shrunk first unless asked.
        None => (
            known.original(),
            match (long_side, upscale) {
                (Some(side), _) => Some(side),
                (None, Some(_)) => None,
                (None, None) => Some(2048),
            },
            match (encoding, cutout) {
                (Some(encoding), _) => Some(encoding),
                (None, Some(_)) => None,
                (None, None) => Some(Encoding::jpeg(quality)),
            },
        ),
    };
    let needs_model = cutout.is_some_and(MatteMethod::may_use_model)
        || upscale.is_some_and(|(method, _)| method.uses_model());
    // The runtime lives as long as the batch: the engine's batcher runs on it.
    let runtime = match needs_model {
        true => Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime for the models")?,
        ),
        false => None,
    };
    let models = match &runtime {
        Some(runtime) => {
            let section = inference_section(config, models_dir, onnxruntime)?;
            let models = runtime.block_on(LocalModels::open(&section, &Metrics::new()));
            if !models.is_ready() {
                eprintln!(
                    "the models did not load from {} (see the warning above): files that need \
                     one are rejected; run tools/install-models {} or pass --models-dir",
                    section.models_dir.display(),
                    section.models_dir.display()
                );
            }
            Some(BatchModels {
                models,
                runtime: runtime.handle().clone(),
            })
        }
        None => None,
    };
    let options = BatchOptions {
        long_side,
        encoding,
        preset,
        watermark,
        threads,
        upscale,
        cutout,
        models,
        ..BatchOptions::default()
    };
    run_batch(&input, &out, &options)
}

/// `[inference]` for `batch`: the configuration file's when one is given
/// (batch otherwise reads none, so that a broken file cannot stop it),
/// enabled, with the command line's folder and library over it.
fn inference_section(
    config: Option<&Path>,
    models_dir: Option<PathBuf>,
    onnxruntime: Option<PathBuf>,
) -> Result<InferenceSection> {
    let mut section = match config {
        Some(file) => Config::load(Some(file))?.inference,
        None => InferenceSection::default(),
    };
    section.enabled = true;
    let local = PathBuf::from(".models");
    section.models_dir = match models_dir {
        Some(dir) => dir,
        None if local.is_dir() => local,
        None => section.models_dir,
    };
    if onnxruntime.is_some() {
        section.onnxruntime_path = onnxruntime;
    }
    Ok(section)
}

fn run_batch(input: &Path, out: &Path, options: &BatchOptions) -> Result<ExitCode> {
    let total = batch::list_inputs(input)
        .with_context(|| format!("reading {}", input.display()))?
        .len() as u64;
    let bar = indicatif::ProgressBar::new(total);
    // Only a person at a terminal wants the bar; in a pipe or a log it is noise.
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let items = batch::run(input, out, options, &|item| {
        bar.set_message(item.input.display().to_string());
        bar.inc(1);
    })?;
    bar.finish_and_clear();

    let mut rejected = Vec::new();
    let mut converted = 0usize;
    let mut elapsed = Duration::ZERO;
    for item in &items {
        elapsed += item.elapsed;
        match &item.outcome {
            Ok(done) => {
                converted += 1;
                println!(
                    "ok        {:<48} -> {} ({}x{}, {} bytes, {} ms)",
                    item.input.display(),
                    done.output.display(),
                    done.width,
                    done.height,
                    done.bytes,
                    item.elapsed.as_millis()
                );
            }
            Err(failure) => rejected.push((item, failure)),
        }
    }
    for (item, failure) in &rejected {
        println!(
            "rejected  {:<48} {}: {}",
            item.input.display(),
            failure.code,
            failure.message
        );
    }
    println!(
        "\n{} file(s): {} converted, {} rejected; {} ms of image work",
        items.len(),
        converted,
        rejected.len(),
        elapsed.as_millis()
    );
    // Exit non-zero only when nothing at all came out: a batch with some
    // rejected files still did its job, and says which ones it refused.
    Ok(if converted == 0 && !items.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

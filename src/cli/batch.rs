//! `genfleet batch`: the worker's image pipeline over a local folder.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use genfleet_imaging::Encoding;
use genfleet_worker::batch::{self, BatchOptions};

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

pub(crate) fn run(args: BatchArgs) -> Result<ExitCode> {
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
    } = args;
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
        None => (
            known.original(),
            Some(long_side.unwrap_or(2048)),
            Some(encoding.unwrap_or(Encoding::jpeg(quality))),
        ),
    };
    let options = BatchOptions {
        long_side,
        encoding,
        preset,
        watermark,
        threads,
        ..BatchOptions::default()
    };
    run_batch(&input, &out, &options)
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

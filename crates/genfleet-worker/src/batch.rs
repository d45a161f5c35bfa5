//! `genfleet batch`: the worker's validate / sanitise / pre-process / encode
//! pipeline over a folder of local files, with no broker, database or
//! network. The embedded default: what a user runs first, and a way to
//! process a folder of product photos on a laptop.
//!
//! It does not scan for malware: it runs without services (no clamd), on
//! files the user already holds; the worker scans every job input
//! (`[scanner]`). `genfleet validate <image>` is the same.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use genfleet_imaging::{DynamicImage, Encoding, Limits, Preset, Presets};
use genfleet_proto::ErrorCode;

use crate::failure::JobFailure;
use crate::local_models::LocalModels;
use crate::methods::{MatteMethod, UpscaleMethod};
use crate::pipeline::{self, RenderSpec, Step};

#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Fit every image inside this long side before the preset; never
    /// enlarges. `None`: no pre-resize (the preset decides the size).
    pub long_side: Option<u32>,
    /// `None`: the preset's own format, else JPEG (PNG for transparency).
    pub encoding: Option<Encoding>,
    /// The output recipe (`original` by default).
    pub preset: Preset,
    pub watermark: bool,
    pub limits: Limits,
    /// Worker threads; 0 means one per CPU.
    pub threads: usize,
    /// Enlarge every image (after `long_side`) by this factor (2 or 4)
    /// with this upscaler.
    pub upscale: Option<(UpscaleMethod, u32)>,
    /// Cut every image out by this method (after any upscale): a PNG with
    /// transparency unless `encoding` says otherwise.
    pub cutout: Option<MatteMethod>,
    /// The local models, for `upscale` and `cutout` methods that run one;
    /// `None` fails those files with the reason.
    pub models: Option<BatchModels>,
}

/// The engine and the runtime its calls run on: `batch` works on plain
/// threads, and each blocks on its own model call while the engine's
/// micro-batcher gathers those of the others.
#[derive(Debug, Clone)]
pub struct BatchModels {
    pub models: LocalModels,
    pub runtime: tokio::runtime::Handle,
}

/// How long one file's model call may take.
const MODEL_WAIT: Duration = Duration::from_secs(600);

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            long_side: Some(2048),
            encoding: Some(Encoding::jpeg(85)),
            preset: Presets::builtin().original(),
            watermark: false,
            limits: Limits::default(),
            threads: 0,
            upscale: None,
            cutout: None,
            models: None,
        }
    }
}

/// What happened to one file.
#[derive(Debug, Clone)]
pub struct BatchItem {
    /// Path relative to the input folder.
    pub input: PathBuf,
    pub outcome: Result<Converted, JobFailure>,
    pub elapsed: Duration,
}

#[derive(Debug, Clone)]
pub struct Converted {
    pub output: PathBuf,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
}

/// Every regular file under `dir` (and symlinks to files), recursively,
/// sorted, hidden files skipped.
///
/// # Errors
/// The folder cannot be read.
pub fn list_inputs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                found.push(entry.path());
            } else if kind.is_symlink() {
                // A linked file is taken; a linked folder is not followed
                // (no loops, nothing outside the tree by surprise).
                if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
                    found.push(entry.path());
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Converts every file of `input_dir` into `output_dir`, keeping the folder
/// structure; `on_item` is called after each file (from worker threads).
///
/// # Errors
/// The input folder cannot be listed or the output folder created;
/// problems with single files are reported per item instead.
pub fn run(
    input_dir: &Path,
    output_dir: &Path,
    options: &BatchOptions,
    on_item: &(dyn Fn(&BatchItem) + Sync),
) -> std::io::Result<Vec<BatchItem>> {
    let mut inputs = list_inputs(input_dir)?;
    // Largest files first (longest-processing-time-first): the last file a
    // thread picks up is then a small one, so threads finish together
    // instead of one running a 12 MP photo while the others idle. Results
    // are sorted by name again below.
    inputs.sort_by_cached_key(|path| {
        std::cmp::Reverse(std::fs::metadata(path).map_or(0, |m| m.len()))
    });
    std::fs::create_dir_all(output_dir)?;
    let threads = if options.threads == 0 {
        std::thread::available_parallelism().map_or(2, usize::from)
    } else {
        options.threads
    };
    let next = AtomicUsize::new(0);
    let spec = RenderSpec {
        presets: vec![options.preset.clone()],
        encodings: options.encoding.into_iter().collect(),
        quality: None,
        watermark: options.watermark,
        matte: None,
    };
    let mut items: Vec<BatchItem> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.min(inputs.len()).max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = inputs.get(i) else { break };
                        let started = Instant::now();
                        let relative = path.strip_prefix(input_dir).unwrap_or(path).to_path_buf();
                        let outcome = convert(path, &relative, output_dir, options, &spec);
                        let item = BatchItem {
                            input: relative,
                            outcome,
                            elapsed: started.elapsed(),
                        };
                        on_item(&item);
                        done.push(item);
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    items.sort_by(|a, b| a.input.cmp(&b.input));
    Ok(items)
}

/// The upscale and the cut-out of `options`, models on their runtime.
fn model_steps(image: DynamicImage, options: &BatchOptions) -> Result<DynamicImage, JobFailure> {
    let disabled = LocalModels::disabled();
    let (models, runtime) = match &options.models {
        Some(m) => (&m.models, Some(&m.runtime)),
        None => (&disabled, None),
    };
    let deadline = || tokio::time::Instant::now() + MODEL_WAIT;
    let image = match options.upscale {
        None => image,
        Some((UpscaleMethod::Lanczos, factor)) => {
            genfleet_imaging::upscale_with(&image, factor, None, &options.limits)?
        }
        Some((method, factor)) => {
            models.upscale_blocking(runtime, &image, method, factor, &options.limits, deadline())?
        }
    };
    match options.cutout {
        None => Ok(image),
        Some(method) => {
            let alpha = models.alpha_blocking(runtime, &image, method, deadline())?;
            Ok(genfleet_imaging::apply_matte(&image, &alpha)?)
        }
    }
}

fn convert(
    path: &Path,
    relative: &Path,
    output_dir: &Path,
    options: &BatchOptions,
    spec: &RenderSpec,
) -> Result<Converted, JobFailure> {
    let io_failure = |e: std::io::Error| JobFailure::new(ErrorCode::Internal, format!("{e}"));
    let size = std::fs::metadata(path).map_err(io_failure)?.len();
    if size > options.limits.max_bytes {
        return Err(JobFailure::new(
            ErrorCode::TooLarge,
            format!(
                "input is {size} bytes, above the {} byte limit",
                options.limits.max_bytes
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(io_failure)?;
    let steps: Vec<Step> = options.long_side.map(Step::Resize).into_iter().collect();
    let prepared = pipeline::prepare(&bytes, &options.limits, &steps)?;
    let image = model_steps(prepared.image, options)?;
    let rendered = pipeline::render(&image, 0, spec)?;
    let Some(first) = rendered.into_iter().next() else {
        return Err(JobFailure::new(ErrorCode::Internal, "nothing was rendered"));
    };
    let extension = Path::new(&first.name)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("bin");
    let output = output_dir.join(relative).with_extension(extension);
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent).map_err(io_failure)?;
    }
    // Write then rename: an interrupted batch never leaves half a file under
    // the final name.
    let partial = output.with_extension(format!("{extension}.partial"));
    std::fs::write(&partial, &first.bytes).map_err(io_failure)?;
    std::fs::rename(&partial, &output).map_err(io_failure)?;
    Ok(Converted {
        output,
        width: first.width,
        height: first.height,
        bytes: first.bytes.len() as u64,
    })
}

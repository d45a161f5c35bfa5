//! ONNX Runtime: loading the shared library once per process, choosing the
//! execution provider, creating sessions and running them.
//!
//! ONNX Runtime's library and environment are process-global (ort allows one
//! environment per process), so they live in a static guarded by a mutex:
//! a second [`crate::Engine`] with the same library path reuses them, one
//! with another path gets a clear `Unavailable` instead of silently running
//! on the first one. Runs are blocking and must be called from a blocking
//! thread (the batcher does).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::ep;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::TensorRef;

use crate::{ExecutionProvider, InferenceConfig, InferenceError};

/// The library the wheel ships, relative to `models_dir`.
pub const BUNDLED_LIBRARY: &str = "onnxruntime/libonnxruntime.so.1.31.1";

/// The loaded library and the process's one environment.
pub struct Runtime {
    pub path: PathBuf,
    pub environment: ort::environment::Environment,
}

static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);

/// The library path from the config, else `ORT_DYLIB_PATH`, else the one
/// the installer puts under `models_dir`; with where it came from.
pub fn library_path(config: &InferenceConfig) -> (PathBuf, &'static str) {
    if let Some(path) = &config.onnxruntime_path {
        return (path.clone(), "inference.onnxruntime_path");
    }
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(path) if !path.is_empty() => (PathBuf::from(path), "ORT_DYLIB_PATH"),
        _ => (
            config.models_dir.join(BUNDLED_LIBRARY),
            "inference.models_dir (tools/install-models)",
        ),
    }
}

/// Loads the library (once per process) and builds the environment.
///
/// # Errors
/// `Unavailable` naming the path and where it came from when the file is
/// missing, is not ONNX Runtime or is too old for ort's API, or when the
/// process already loaded ONNX Runtime from another path.
pub fn load(path: &Path, source: &str) -> Result<Arc<Runtime>, InferenceError> {
    // A missing file is reported before anything touches ort's globals, so
    // it is a clean error whatever else the process has loaded.
    let canonical = std::fs::canonicalize(path).map_err(|e| {
        InferenceError::unavailable(format!(
            "onnx runtime library not found at {} (from {source}): {e}; run tools/install-models or set inference.onnxruntime_path / ORT_DYLIB_PATH",
            path.display()
        ))
    })?;
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(runtime) = slot.as_ref() {
        if runtime.path == canonical {
            return Ok(Arc::clone(runtime));
        }
        return Err(InferenceError::unavailable(format!(
            "onnx runtime is already loaded from {} in this process; cannot also load {} (from {source})",
            runtime.path.display(),
            canonical.display()
        )));
    }
    let builder = ort::init_from(&canonical).map_err(|e| {
        InferenceError::unavailable(format!(
            "cannot load onnx runtime from {} (from {source}): {e}",
            canonical.display()
        ))
    })?;
    let environment = builder.with_name("genfleet").build().map_err(|e| {
        InferenceError::unavailable(format!("cannot create the onnx runtime environment: {e}"))
    })?;
    tracing::info!(path = %canonical.display(), source, "loaded onnx runtime");
    let runtime = Arc::new(Runtime {
        path: canonical,
        environment,
    });
    *slot = Some(Arc::clone(&runtime));
    Ok(runtime)
}

/// Picks the first provider of `preferences` that works here: CUDA only
/// when a GPU was found and ONNX Runtime registers its provider (the CPU
/// wheel does not have it; the GPU wheel needs CUDA and cuDNN libraries).
/// Logs the choice and why the ones before it were passed over.
///
/// # Errors
/// `Unavailable` when none of the listed providers works (e.g. `["cuda"]`
/// alone on a machine without a GPU): the operator asked for no CPU runs.
pub fn choose_provider(
    runtime: &Runtime,
    preferences: &[ExecutionProvider],
    gpu_present: bool,
) -> Result<ExecutionProvider, InferenceError> {
    let mut passed_over = Vec::new();
    for &provider in preferences {
        match provider {
            ExecutionProvider::Cpu => {
                tracing::info!(
                    execution_provider = provider.label(),
                    passed_over = %passed_over.join("; "),
                    "inference runs on the cpu"
                );
                return Ok(provider);
            }
            ExecutionProvider::Cuda if !gpu_present => {
                passed_over.push("cuda: no gpu found".to_string());
            }
            ExecutionProvider::Cuda => match probe_cuda(runtime) {
                Ok(()) => {
                    tracing::info!(
                        execution_provider = provider.label(),
                        "inference runs on cuda"
                    );
                    return Ok(provider);
                }
                Err(e) => passed_over.push(format!("cuda: {e}")),
            },
        }
    }
    Err(InferenceError::unavailable(format!(
        "none of the execution providers in inference.execution_providers works here ({})",
        passed_over.join("; ")
    )))
}

/// Registers the CUDA provider on a throw-away session builder: ort only
/// reports a failed registration when asked to (`error_on_failure`).
fn probe_cuda(runtime: &Runtime) -> Result<(), String> {
    let builder = Session::builder(&runtime.environment).map_err(|e| e.to_string())?;
    builder
        .with_execution_providers([ep::CUDA::default().build().error_on_failure()])
        .map(drop)
        .map_err(|e| e.message().to_string())
}

/// A session and what running it needs.
pub struct ModelSession {
    session: Mutex<Session>,
    input: String,
    output: String,
    /// The batch dimension is fixed at 1 in the file: batches then run item
    /// by item (a model file without a dynamic batch still works).
    single_batch: bool,
}

fn builder_error(context: &str) -> impl Fn(ort::Error<SessionBuilder>) -> InferenceError + '_ {
    move |e| InferenceError::unavailable(format!("{context}: {}", e.message()))
}

impl ModelSession {
    /// Creates a session for the model at `path` on `provider`, with graph
    /// optimisation level 3 and `intra_threads` (0 = ONNX Runtime's default).
    ///
    /// # Errors
    /// `Unavailable` when ONNX Runtime cannot read the model or register the
    /// provider.
    pub fn create(
        runtime: &Runtime,
        path: &Path,
        provider: ExecutionProvider,
        intra_threads: usize,
    ) -> Result<Self, InferenceError> {
        let context = format!("cannot create a session for {}", path.display());
        let mut builder = Session::builder(&runtime.environment)
            .map_err(|e| InferenceError::unavailable(format!("{context}: {e}")))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(builder_error(&context))?;
        if intra_threads > 0 {
            builder = builder
                .with_intra_threads(intra_threads)
                .map_err(builder_error(&context))?;
        }
        let provider = match provider {
            ExecutionProvider::Cuda => ep::CUDA::default().build().error_on_failure(),
            ExecutionProvider::Cpu => ep::CPU::default().build().error_on_failure(),
        };
        let mut builder = builder
            .with_execution_providers([provider])
            .map_err(builder_error(&context))?;
        let session = builder
            .commit_from_file(path)
            .map_err(|e| InferenceError::unavailable(format!("{context}: {e}")))?;
        let (Some(input), Some(output)) = (session.inputs().first(), session.outputs().first())
        else {
            return Err(InferenceError::unavailable(format!(
                "{context}: the model has no input or no output"
            )));
        };
        let single_batch = input
            .dtype()
            .tensor_shape()
            .and_then(|shape| shape.first().copied())
            == Some(1);
        let (input, output) = (input.name().to_string(), output.name().to_string());
        Ok(Self {
            session: Mutex::new(session),
            input,
            output,
            single_batch,
        })
    }

    /// Runs the model on `[n, c, h, w]` float32 `data`; returns the first
    /// output's shape and its values, one vector per item (copied once out
    /// of ONNX Runtime's buffer: an x4 tile's output is 12 MB). Blocking.
    ///
    /// # Errors
    /// `Failed` with ONNX Runtime's message.
    pub fn run(
        &self,
        shape: [usize; 4],
        data: &[f32],
    ) -> Result<(Vec<usize>, Vec<Vec<f32>>), InferenceError> {
        let [n, c, h, w] = shape;
        if !self.single_batch || n <= 1 {
            return self.run_once(shape, data);
        }
        let item = c * h * w;
        let mut out_shape = Vec::new();
        let mut values = Vec::with_capacity(n);
        for chunk in data.chunks(item).take(n) {
            let (s, v) = self.run_once([1, c, h, w], chunk)?;
            out_shape = s;
            values.extend(v);
        }
        if let Some(batch) = out_shape.first_mut() {
            *batch = n;
        }
        Ok((out_shape, values))
    }

    fn run_once(
        &self,
        shape: [usize; 4],
        data: &[f32],
    ) -> Result<(Vec<usize>, Vec<Vec<f32>>), InferenceError> {
        let failed = |e: ort::Error| InferenceError::failed(e.message().to_string());
        let tensor = TensorRef::from_array_view((shape, data)).map_err(failed)?;
        // A panic while the lock was held leaves a session that ONNX Runtime
        // itself still considers valid: keep using it.
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(failed)?;
        let value = outputs.get(self.output.as_str()).ok_or_else(|| {
            InferenceError::failed(format!(
                "the model produced no output named {}",
                self.output
            ))
        })?;
        let (out_shape, values) = value.try_extract_tensor::<f32>().map_err(failed)?;
        let out_shape: Vec<usize> = out_shape
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(0))
            .collect();
        let batch = out_shape.first().copied().unwrap_or(0);
        let per_item = out_shape.iter().skip(1).product::<usize>().max(1);
        if batch.checked_mul(per_item) != Some(values.len()) {
            return Err(InferenceError::failed(format!(
                "the model's output holds {} values, its shape {out_shape:?} says otherwise",
                values.len()
            )));
        }
        let items = values.chunks(per_item).map(<[f32]>::to_vec).collect();
        Ok((out_shape, items))
    }
}

/// The process's resident memory in bytes (Linux `/proc/self/status`),
/// for a CPU model's footprint; 0 where it cannot be read.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

//! The worker's face of `genfleet-inference`: the engine opened once from
//! `[inference]` (or why there is none), the cut-out by method and the
//! upscale by model built on it, and the engine's and the GPUs' metrics.
//!
//! A worker never fails to start for want of a model: with `[inference]`
//! off, or a runtime that does not load, it serves every job that needs no
//! model, and a job that needs one gets [`ModelError::Unavailable`] with a
//! message that says what this worker lacks (not the customer's fault).
//! It deliberately knows nothing of jobs or providers: the local provider,
//! the render stage and `genfleet batch` map its errors to theirs.

mod matte;
mod observer;
mod upscale;

use std::sync::Arc;

use genfleet_inference::gpu::GpuProbe;
use genfleet_inference::{Engine, ExecutionProvider, InferenceConfig, InferenceError};

use crate::config::InferenceSection;
use crate::metrics::Metrics;

pub use matte::{classical_if_confident, refine, FixedMatte};

/// Why a model could not give its pixels, classified for the caller.
#[derive(Debug)]
pub enum ModelError {
    /// This worker cannot run the model: `[inference]` is off, the runtime
    /// did not load, or a model file is missing. Not the job's fault;
    /// another worker may do it.
    Unavailable(String),
    /// The request is wrong for the model (a size it refuses): the job's.
    Invalid(String),
    /// No room on the GPU before the deadline: try later.
    Overloaded(String),
    DeadlineExceeded,
    /// The runtime failed a run.
    Failed(String),
    /// The image work around the model (matte, resize, limits).
    Image(genfleet_imaging::ImagingError),
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelError::Unavailable(m)
            | ModelError::Invalid(m)
            | ModelError::Overloaded(m)
            | ModelError::Failed(m) => f.write_str(m),
            ModelError::DeadlineExceeded => f.write_str("deadline exceeded while the model ran"),
            ModelError::Image(e) => write!(f, "{e}"),
        }
    }
}

impl From<genfleet_imaging::ImagingError> for ModelError {
    fn from(error: genfleet_imaging::ImagingError) -> Self {
        ModelError::Image(error)
    }
}

impl ModelError {
    /// `what` ("background removal by model") failed in the engine.
    fn from_inference(what: &str, error: InferenceError) -> ModelError {
        match error {
            InferenceError::Unavailable { message } => ModelError::Unavailable(format!(
                "{what} is not available on this worker: {message}"
            )),
            InferenceError::Invalid { message } => {
                ModelError::Invalid(format!("{what}: {message}"))
            }
            InferenceError::Overloaded { message } => {
                ModelError::Overloaded(format!("{what}: {message}"))
            }
            InferenceError::DeadlineExceeded => ModelError::DeadlineExceeded,
            InferenceError::Failed { message } => {
                ModelError::Failed(format!("{what} failed on this worker: {message}"))
            }
        }
    }
}

/// What this worker has for local models.
enum State {
    /// `[inference] enabled = false`.
    Disabled,
    /// Enabled, but the engine did not open: the reason, for every job that
    /// asks.
    Broken(String),
    Ready(Engine),
}

/// The engine (or its absence), shared by every job.
#[derive(Clone)]
pub struct LocalModels {
    state: Arc<State>,
}

impl std::fmt::Debug for LocalModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state.as_ref() {
            State::Disabled => "disabled",
            State::Broken(_) => "unavailable",
            State::Ready(_) => "ready",
        };
        f.debug_struct("LocalModels")
            .field("state", &state)
            .finish()
    }
}

impl LocalModels {
    /// No models: every model job is told to enable `[inference]`.
    pub fn disabled() -> LocalModels {
        LocalModels {
            state: Arc::new(State::Disabled),
        }
    }

    /// Opens the engine of `section` when enabled, with the machine's GPUs
    /// (NVML, or none), its metrics in `metrics`, and loads `preload`.
    /// Never fails: an engine that does not open is logged once, here, and
    /// remembered as the reason model jobs fail.
    pub async fn open(section: &InferenceSection, metrics: &Metrics) -> LocalModels {
        if !section.enabled {
            return LocalModels::disabled();
        }
        let config = engine_config(section);
        let gpus: Arc<dyn GpuProbe> = genfleet_inference::gpu::discover();
        observer::export_gpus(metrics, gpus.clone());
        let observer = observer::observer(metrics);
        // Loading the runtime library and probing providers blocks: keep it
        // off the async threads.
        let opened =
            tokio::task::spawn_blocking(move || Engine::open(config, gpus, Some(observer)))
                .await
                .unwrap_or_else(|e| {
                    Err(InferenceError::Failed {
                        message: format!("opening the engine panicked: {e}"),
                    })
                });
        let engine = match opened {
            Ok(engine) => engine,
            Err(error) => {
                tracing::warn!(
                    %error,
                    models_dir = %section.models_dir.display(),
                    "local inference did not start: jobs that need a model will fail \
                     provider_unavailable on this worker, every other job is served \
                     (check inference.onnxruntime_path and run tools/install-models)"
                );
                return LocalModels {
                    state: Arc::new(State::Broken(error.to_string())),
                };
            }
        };
        let provider = engine.execution_provider();
        observer::export_execution_provider(metrics, provider);
        tracing::info!(
            execution_provider = provider.label(),
            models_dir = %section.models_dir.display(),
            "local inference ready"
        );
        if !section.preload.is_empty() {
            let names: Vec<&str> = section.preload.iter().map(String::as_str).collect();
            if let Err(error) = engine.preload(&names).await {
                // The models that did load serve their jobs; the others
                // fail theirs with this reason.
                tracing::warn!(%error, "inference.preload: not every model loaded");
            }
        }
        LocalModels {
            state: Arc::new(State::Ready(engine)),
        }
    }

    /// An engine opened by the caller (tests, `genfleet batch`).
    pub fn from_engine(engine: Engine) -> LocalModels {
        LocalModels {
            state: Arc::new(State::Ready(engine)),
        }
    }

    /// Whether a model can be asked at all (it may still be missing).
    pub fn is_ready(&self) -> bool {
        matches!(self.state.as_ref(), State::Ready(_))
    }

    /// The execution provider in use, when the engine is open.
    pub fn execution_provider(&self) -> Option<ExecutionProvider> {
        match self.state.as_ref() {
            State::Ready(engine) => Some(engine.execution_provider()),
            _ => None,
        }
    }

    /// The engine, or why `what` ("background removal by model") cannot
    /// run here.
    ///
    /// # Errors
    /// [`ModelError::Unavailable`], saying what this worker lacks.
    pub fn engine(&self, what: &str) -> Result<&Engine, ModelError> {
        match self.state.as_ref() {
            State::Ready(engine) => Ok(engine),
            State::Disabled => Err(ModelError::Unavailable(format!(
                "{what} needs [inference] enabled on this worker"
            ))),
            State::Broken(reason) => Err(ModelError::Unavailable(format!(
                "{what} is not available on this worker: its model runtime did not start \
                 ({reason})"
            ))),
        }
    }
}

/// Runs a model call from a plain thread on `runtime`.
///
/// # Errors
/// [`ModelError::Unavailable`] without a runtime to run it on.
fn block_on<F: std::future::Future>(
    runtime: Option<&tokio::runtime::Handle>,
    call: F,
) -> Result<F::Output, ModelError> {
    match runtime {
        Some(runtime) => Ok(runtime.block_on(call)),
        None => Err(ModelError::Unavailable(
            "no async runtime to run the model on".into(),
        )),
    }
}

/// The engine's configuration from `[inference]` (validated at load: the
/// provider names parse).
fn engine_config(section: &InferenceSection) -> InferenceConfig {
    InferenceConfig {
        onnxruntime_path: section.onnxruntime_path.clone(),
        models_dir: section.models_dir.clone(),
        execution_providers: section
            .execution_providers
            .iter()
            .filter_map(|p| ExecutionProvider::parse(p))
            .collect(),
        max_batch: section.max_batch,
        max_delay: std::time::Duration::from_millis(section.max_delay_ms),
        intra_threads: section.intra_threads,
        tile_size: section.tile_size,
        tile_overlap: section.tile_overlap,
        vram_headroom_bytes: section.vram_headroom_mb.saturating_mul(1024 * 1024),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_engine_the_error_says_what_the_worker_lacks() {
        let models = LocalModels::disabled();
        let Err(err) = models.engine("background removal by model") else {
            panic!("no engine expected");
        };
        assert!(matches!(err, ModelError::Unavailable(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "background removal by model needs [inference] enabled on this worker"
        );
        let broken = LocalModels {
            state: Arc::new(State::Broken("no libonnxruntime.so at /nowhere".into())),
        };
        let Err(err) = broken.engine("upscaling by realesrgan") else {
            panic!("no engine expected");
        };
        let err = err.to_string();
        assert!(err.contains("model runtime did not start"), "{err}");
        assert!(err.contains("/nowhere"), "{err}");
    }

    #[test]
    fn the_engine_config_follows_the_section() {
        let section = InferenceSection {
            execution_providers: vec!["cpu".into()],
            vram_headroom_mb: 2,
            max_delay_ms: 7,
            ..InferenceSection::default()
        };
        let config = engine_config(&section);
        assert_eq!(config.execution_providers, vec![ExecutionProvider::Cpu]);
        assert_eq!(config.vram_headroom_bytes, 2 * 1024 * 1024);
        assert_eq!(config.max_delay, std::time::Duration::from_millis(7));
        // Every name the config accepts is one the engine knows.
        for name in crate::config::EXECUTION_PROVIDERS {
            assert!(ExecutionProvider::parse(name).is_some(), "{name}");
        }
    }
}

//! Local models for genfleet: ONNX Runtime sessions (CUDA where the runtime
//! and a GPU are present, the CPU otherwise, one code path), a registry of
//! the models we ship, a per-model micro-batcher, tiling for images larger
//! than a model's input, and GPU discovery and VRAM-aware admission (NVML
//! behind a trait, simulated in tests).
//!
//! Knows nothing of jobs, queues or credits: the worker asks an [`Engine`]
//! for a foreground mask or an upscaled image and gets pixels or an
//! [`InferenceError`] back. Mask refinement is not here (genfleet-imaging
//! does it at full resolution).

#![forbid(unsafe_code)]

pub mod batcher;
mod engine;
mod error;
pub mod gpu;
mod matte;
pub mod registry;
mod runtime;
pub mod tiling;
mod upscale;

use std::path::PathBuf;
use std::time::Duration;

pub use engine::Engine;
pub use error::InferenceError;

/// Where a model runs. Listed in `inference.execution_providers` in order
/// of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecutionProvider {
    Cuda,
    Cpu,
}

impl ExecutionProvider {
    /// Parses a config value (`cuda`, `cpu`; case-insensitive).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "cuda" => Some(Self::Cuda),
            "cpu" => Some(Self::Cpu),
            _ => None,
        }
    }

    /// The config spelling, also the metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Cuda => "cuda",
            Self::Cpu => "cpu",
        }
    }
}

/// The engine's configuration (the worker fills it from `[inference]`).
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceConfig {
    /// `libonnxruntime.so` to load; `None` reads `ORT_DYLIB_PATH`, else
    /// `<models_dir>/onnxruntime/libonnxruntime.so.1.31.1`.
    pub onnxruntime_path: Option<PathBuf>,
    /// Where `tools/install-models` put the models.
    pub models_dir: PathBuf,
    /// In order of preference; the first one that registers is used.
    pub execution_providers: Vec<ExecutionProvider>,
    /// The most requests (or tiles) in one model run.
    pub max_batch: usize,
    /// How long the first request of a batch waits for company.
    pub max_delay: Duration,
    /// ONNX Runtime intra-op threads per session; 0 = its default (one per
    /// physical core).
    pub intra_threads: usize,
    /// Super-resolution input tile side in pixels: bounds the activations
    /// of one run (they grow with the tile area times the scale squared).
    pub tile_size: u32,
    /// Overlap between neighbouring tiles, blended with a linear ramp so no
    /// seam shows; 16 px covers the models' receptive-field edge effects.
    pub tile_overlap: u32,
    /// VRAM kept free for others when admitting work on a GPU.
    pub vram_headroom_bytes: u64,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            onnxruntime_path: None,
            models_dir: PathBuf::from(".models"),
            execution_providers: vec![ExecutionProvider::Cuda, ExecutionProvider::Cpu],
            max_batch: 8,
            max_delay: Duration::from_millis(10),
            intra_threads: 0,
            tile_size: 192,
            tile_overlap: 16,
            // Room for the CUDA context and cuDNN workspaces that are not
            // part of any measured footprint.
            vram_headroom_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Which super-resolution network upscales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpscaleModel {
    /// Real-ESRGAN animevideov3 (x2, x4): small and fast.
    RealEsrganFast,
    /// Real-ESRGAN x4plus: larger, better on photos; x2 runs x4 and halves.
    RealEsrgan,
}

impl UpscaleModel {
    /// Parses a job parameter (`realesrgan-fast`, `realesrgan`).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "realesrgan-fast" => Some(Self::RealEsrganFast),
            "realesrgan" => Some(Self::RealEsrgan),
            _ => None,
        }
    }

    /// The parameter spelling, also the metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::RealEsrganFast => "realesrgan-fast",
            Self::RealEsrgan => "realesrgan",
        }
    }
}

/// Hooks for the worker's metrics; called from the engine's tasks, so keep
/// them cheap.
pub trait InferenceObserver: Send + Sync {
    /// A batch of `size` items ran on `model` in `seconds`.
    fn batch_ran(&self, model: &str, size: usize, seconds: f64);
    /// A batch or a load of `model` waited `seconds` for VRAM admission.
    fn admission_waited(&self, model: &str, seconds: f64);
    /// `model` was loaded; its measured footprint.
    fn model_loaded(&self, model: &str, footprint_bytes: u64);
}

/// A model resident in this engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedModel {
    pub name: &'static str,
    /// VRAM (CUDA) or resident memory (CPU) the load and a warm-up run took.
    pub footprint_bytes: u64,
    pub execution_provider: ExecutionProvider,
}

//! `[inference]`: the local models this worker runs (background removal and
//! upscaling by model) through `genfleet-inference`: where the ONNX Runtime
//! library and the model files are, which execution providers to try, and
//! the micro-batcher's and tiler's bounds.
//!
//! Off by default: a worker without `[inference] enabled = true` still
//! serves every job that needs no model, and tells jobs that do why it
//! cannot run them. Knows nothing of the engine's types: the worker converts
//! this section into an `InferenceConfig` where it opens the engine.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The execution providers a worker may ask ONNX Runtime for, by name.
pub const EXECUTION_PROVIDERS: [&str; 2] = ["cuda", "cpu"];

/// Largest micro-batch accepted: past it a batch's activations alone can
/// take gigabytes (Real-ESRGAN x4 on 512 px tiles), and throughput stops
/// growing long before (benches/README.md).
const MAX_BATCH: usize = 64;

/// Longest wait for a batch to fill: past a second the wait costs more
/// latency than any batch could win back.
const MAX_DELAY_MS: u64 = 1_000;

/// The smallest tile worth running: u2netp reads 320 px, and the overlap
/// must leave room for content.
const MIN_TILE: u32 = 64;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceSection {
    /// Run local models on this worker (ONNX Runtime: the GPU when there is
    /// one and the runtime has CUDA, else the CPU). Enable it on workers
    /// that consume the `gpu` class.
    pub enabled: bool,
    /// Path of the ONNX Runtime shared library (`libonnxruntime.so.1.31.1`
    /// from the `onnxruntime` or `onnxruntime-gpu` wheel); unset means the
    /// `ORT_DYLIB_PATH` environment variable, else
    /// `<models_dir>/onnxruntime/libonnxruntime.so.1.31.1` (where
    /// `tools/install-models` puts it).
    pub onnxruntime_path: Option<PathBuf>,
    /// Folder of the model files, as `tools/install-models DIR` lays them
    /// out.
    pub models_dir: PathBuf,
    /// ONNX Runtime execution providers in order of preference: `cuda`,
    /// `cpu`. The first one that loads is used (and exported as
    /// `genfleet_inference_execution_provider`).
    pub execution_providers: Vec<String>,
    /// Most requests of one model run as one batch.
    pub max_batch: usize,
    /// Milliseconds the first request of a batch waits for others before
    /// the batch runs anyway.
    pub max_delay_ms: u64,
    /// Threads ONNX Runtime uses inside one operator on the CPU; 0 lets it
    /// pick (one per core).
    pub intra_threads: usize,
    /// Side of the tiles an upscale's input is cut into, in input pixels:
    /// bounds the activations of one run (they grow with the tile's area
    /// times the scale squared), like the banded Lanczos upscale bounds its
    /// working memory.
    pub tile_size: u32,
    /// Pixels tiles overlap by; the seams are feathered across it.
    pub tile_overlap: u32,
    /// MiB of GPU memory left free when admitting a model load or a batch
    /// (other processes, CUDA's own allocations).
    pub vram_headroom_mb: u64,
    /// Models loaded when the worker starts, so the first job does not pay
    /// for the load (e.g. `["u2netp"]`); the others load on first use.
    pub preload: Vec<String>,
}

impl Default for InferenceSection {
    fn default() -> Self {
        InferenceSection {
            enabled: false,
            onnxruntime_path: None,
            models_dir: PathBuf::from("/var/lib/genfleet/models"),
            execution_providers: EXECUTION_PROVIDERS.iter().map(|p| p.to_string()).collect(),
            max_batch: 8,
            max_delay_ms: 10,
            intra_threads: 0,
            tile_size: 192,
            tile_overlap: 16,
            vram_headroom_mb: 512,
            preload: Vec::new(),
        }
    }
}

impl InferenceSection {
    /// Checked whether or not the section is enabled: a typo in a disabled
    /// section would otherwise surface only on the day it is turned on.
    ///
    /// # Errors
    /// The first key whose value is out of range, named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        if self.execution_providers.is_empty() {
            return fail(format!(
                "inference.execution_providers must name at least one of {}",
                EXECUTION_PROVIDERS.join(", ")
            ));
        }
        for (i, provider) in self.execution_providers.iter().enumerate() {
            if !EXECUTION_PROVIDERS.contains(&provider.as_str()) {
                return fail(format!(
                    "inference.execution_providers: {provider:?} is not an execution provider, \
                     expected {}",
                    EXECUTION_PROVIDERS.join(" or ")
                ));
            }
            if self.execution_providers[..i].contains(provider) {
                return fail(format!(
                    "inference.execution_providers: {provider:?} is named twice"
                ));
            }
        }
        if self.models_dir.as_os_str().is_empty() {
            return fail("inference.models_dir must not be empty".into());
        }
        if !(1..=MAX_BATCH).contains(&self.max_batch) {
            return fail(format!(
                "inference.max_batch is {}, expected 1 to {MAX_BATCH}",
                self.max_batch
            ));
        }
        if self.max_delay_ms > MAX_DELAY_MS {
            return fail(format!(
                "inference.max_delay_ms is {}, expected at most {MAX_DELAY_MS}",
                self.max_delay_ms
            ));
        }
        if self.tile_size < MIN_TILE {
            return fail(format!(
                "inference.tile_size is {}, expected at least {MIN_TILE}",
                self.tile_size
            ));
        }
        // Overlap on both sides of a tile must leave some of it its own.
        if self.tile_overlap.saturating_mul(2) >= self.tile_size {
            return fail(format!(
                "inference.tile_overlap is {}, expected less than half of inference.tile_size ({})",
                self.tile_overlap, self.tile_size
            ));
        }
        if let Some(blank) = self.preload.iter().position(|m| m.trim().is_empty()) {
            return fail(format!(
                "inference.preload[{blank}] is empty, expected a model name"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_off() {
        let section = InferenceSection::default();
        section.validate().unwrap();
        assert!(!section.enabled);
        assert_eq!(section.execution_providers, ["cuda", "cpu"]);
        assert_eq!(
            section.models_dir,
            PathBuf::from("/var/lib/genfleet/models")
        );
    }

    #[test]
    fn errors_name_the_key_and_what_was_expected() {
        type Change = fn(&mut InferenceSection);
        let cases: [(Change, &str); 8] = [
            (
                |s| s.execution_providers = vec!["tensorrt".into()],
                "inference.execution_providers: \"tensorrt\" is not an execution provider, expected cuda or cpu",
            ),
            (
                |s| s.execution_providers.clear(),
                "inference.execution_providers must name",
            ),
            (
                |s| s.execution_providers = vec!["cpu".into(), "cpu".into()],
                "named twice",
            ),
            (|s| s.max_batch = 0, "inference.max_batch is 0, expected 1 to 64"),
            (|s| s.max_delay_ms = 60_000, "inference.max_delay_ms"),
            (|s| s.tile_size = 16, "inference.tile_size"),
            (|s| s.tile_overlap = 256, "inference.tile_overlap"),
            (|s| s.preload = vec![" ".into()], "inference.preload[0]"),
        ];
        for (change, expected) in cases {
            let mut section = InferenceSection::default();
            change(&mut section);
            let err = section.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}

//! Local models for genfleet: ONNX Runtime sessions (CUDA where the runtime
//! and a GPU are present, the CPU otherwise, one code path), a registry of
//! the models we ship, a per-model micro-batcher, tiling for images larger
//! than a model's input, and GPU discovery and VRAM-aware admission (NVML
//! behind a trait, simulated in tests).
//!
//! Knows nothing of jobs, queues or credits: the worker asks it for a
//! foreground mask or an upscaled image and gets pixels or an
//! [`InferenceError`] back.

pub mod batcher;
pub mod gpu;
pub mod registry;
pub mod tiling;

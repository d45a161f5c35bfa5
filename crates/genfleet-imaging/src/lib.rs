//! Synchronous CPU image code for genfleet: sniff the real type of untrusted
//! bytes, check them against size limits before any pixel is decoded, decode
//! with limits, apply EXIF orientation, resize, upscale, watermark, remove
//! plain backdrops and re-encode.
//!
//! # Architecture invariant
//!
//! This crate does no I/O, holds no globals and cannot see tokio. Every
//! function is a plain CPU-bound call on bytes or pixels; the worker runs it
//! in `spawn_blocking` (or a rayon pool) with a bound on concurrency. It does
//! not scan for malware, does not know where bytes came from or go to, and
//! does not decide retry policy beyond the stable [`ImagingError::code`].
//!
//! Metadata (EXIF, GPS, ICC, XMP, trailing polyglot payloads) never survives:
//! outputs are encoded from decoded pixels only, so nothing from the input
//! container is copied across.
#![forbid(unsafe_code)]

mod color;
mod decode;
mod encode;
mod error;
mod jpeg;
mod limits;
mod matte;
mod metadata;
mod passthrough;
mod presets;
mod resize;
mod sniff;
mod structure;
mod watermark;

pub use color::ProfileOutcome;
pub use decode::{decode_sanitised, decode_to_fit, Sanitised};
pub use encode::{encode, Encoding};
pub use error::ImagingError;
/// The pixel buffer type every function here takes and returns.
pub use image::DynamicImage;
pub use jpeg::{ChromaSubsampling, JpegOptions};
pub use limits::{inspect, ImageInfo, Limits};
pub use matte::{
    alpha_iou, apply_matte, choose_method, classical_confidence, refine_mask, ClassicalEvidence,
    ClassicalMatte, Matte, MatteMethod, CLASSICAL_CONFIDENCE_THRESHOLD,
};
pub use passthrough::{jpeg_passthrough, Passthrough};
pub use presets::{apply_preset, Preset, PresetFormat, Presets, AVIF_SPEED};
pub use resize::{
    resize_exact, resize_to_fit, resize_to_fit_with, unsharp, upscale, upscale_with, Sharpen,
};
pub use sniff::{sniff, ImageFormat, Sniffed};
pub use watermark::apply_watermark;

/// Paths of the shared test fixtures, relative to this crate.
#[cfg(test)]
pub(crate) mod test_paths {
    /// Hostile inputs checked into the repository.
    pub const HOSTILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/hostile/");
    /// Small copies of the photo corpus checked into the repository: the big
    /// photos are downscaled 4x with their metadata kept, HEIC and AVIF are
    /// their first 4 KiB (see `tests/fixtures/corpus/README.md`).
    pub const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/corpus/");

    /// Background-removal composites and their ground-truth masks (see
    /// `tests/fixtures/composites/README.md`).
    pub const COMPOSITES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/composites/"
    );

    /// Mean absolute difference per RGBA sample of two same-size images.
    pub fn mean_abs_diff(a: &crate::DynamicImage, b: &crate::DynamicImage) -> f64 {
        let (a, b) = (a.to_rgba8(), b.to_rgba8());
        assert_eq!(a.dimensions(), b.dimensions());
        let total: u64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum();
        total as f64 / a.as_raw().len() as f64
    }

    /// Largest absolute difference of any RGBA sample of two same-size images.
    pub fn max_abs_diff(a: &crate::DynamicImage, b: &crate::DynamicImage) -> u8 {
        let (a, b) = (a.to_rgba8(), b.to_rgba8());
        assert_eq!(a.dimensions(), b.dimensions());
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap_or(0)
    }

    pub fn read(dir: &str, name: &str) -> Vec<u8> {
        let path = format!("{dir}{name}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {path}: {e}"))
    }
}

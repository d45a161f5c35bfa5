//! The models this crate knows: file, pinned sha256, input geometry, layout,
//! normalisation, scale, and the activation estimates that VRAM admission
//! charges per batch. Pure data and a file check; no runtime here.
//!
//! The files are installed by `tools/install-models` into
//! `inference.models_dir`, which also writes `MANIFEST` (one `sha256  file`
//! line per model); a test compares this table with it.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::InferenceError;

/// The input geometry a model accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSize {
    /// Exactly this size (the image is resized to it).
    Fixed { width: u32, height: u32 },
    /// Any height and width (the image is tiled).
    Dynamic,
}

/// The tensor layout of input and output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[batch, 3, height, width]`, RGB planes, float32.
    NchwRgb,
}

/// How 8-bit pixels become the model's floats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalisation {
    /// `x / 255`; outputs are read back the same way (clamped to 0..1).
    UnitRange,
    /// rembg's preprocessing: `(x / max(image) - mean[c]) / std[c]`, where
    /// `max` is the largest channel value in the whole (resized) image.
    ScaledMeanStd { mean: [f32; 3], std: [f32; 3] },
}

/// ImageNet channel statistics, as rembg normalises u2netp's input.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// One model of the registry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSpec {
    /// Stable name: metric label, `preload` argument.
    pub name: &'static str,
    /// File name inside `models_dir`.
    pub file: &'static str,
    /// Lower-case hex sha256 of the file as the installer writes it.
    pub sha256: &'static str,
    pub input: InputSize,
    pub layout: Layout,
    pub normalisation: Normalisation,
    /// Output side / input side (1 for a mask).
    pub scale: u32,
    /// Activation memory of one item of a fixed-size model (bytes, fp32),
    /// charged per batch item by VRAM admission.
    pub activation_bytes_per_item: u64,
    /// Activation memory per input pixel of a dynamic-size model (bytes):
    /// the widest feature maps alive at once times 4 bytes, including those
    /// at output resolution.
    pub activation_bytes_per_pixel: u64,
    /// What a load is assumed to take before it is measured (weights plus
    /// the runtime's workspace), for admission of the load itself.
    pub load_estimate_bytes: u64,
    /// The weights' licence, stated in the repository (tools/models.md).
    pub licence: &'static str,
}

impl ModelSpec {
    /// Activation bytes of a batch of `items` inputs of `pixels` each
    /// (`pixels` is ignored for fixed-size models).
    pub fn activation_bytes(&self, items: usize, pixels: u64) -> u64 {
        let per_item = match self.input {
            InputSize::Fixed { .. } => self.activation_bytes_per_item,
            InputSize::Dynamic => self.activation_bytes_per_pixel.saturating_mul(pixels),
        };
        per_item.saturating_mul(items as u64)
    }
}

const MIB: u64 = 1024 * 1024;

/// U²-Net-p, salient object segmentation (rembg's `u2netp`), batch dim made
/// dynamic by the installer. Output 0 is the fused saliency map `d0`.
pub const U2NETP: ModelSpec = ModelSpec {
    name: "u2netp",
    file: "u2netp.onnx",
    // The installer's output (its dynamic-batch rewrite of the wheel's
    // file); the manifest test keeps this and MANIFEST in step.
    sha256: "d8d1749b858c030637e73d592c28c326f81175a97c4a430828da527f17cf082d",
    input: InputSize::Fixed {
        width: 320,
        height: 320,
    },
    layout: Layout::NchwRgb,
    normalisation: Normalisation::ScaledMeanStd {
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    scale: 1,
    // The first RSU stage holds ~7 maps of 16-64 channels at 320x320 fp32
    // (~6.5 MiB each) alive together, plus the side outputs: ~96 MiB.
    activation_bytes_per_item: 96 * MIB,
    activation_bytes_per_pixel: 0,
    load_estimate_bytes: 64 * MIB,
    licence: "Apache-2.0",
};

/// Real-ESRGAN animevideov3 (SRVGGNetCompact, 64 channels at input
/// resolution, pixel shuffle at the end).
const ANIMEVIDEO_PER_PIXEL: u64 = 3 * 64 * 4 + 2 * 48 * 4;

pub const REALESR_ANIMEVIDEOV3_X2: ModelSpec = ModelSpec {
    name: "realesr-animevideov3-x2",
    file: "realesr-animevideov3-x2.onnx",
    sha256: "0788fadf77e0a3824f6e1809e2ec0136ba97c6241a75641b05e8ad8144b69dce",
    input: InputSize::Dynamic,
    layout: Layout::NchwRgb,
    normalisation: Normalisation::UnitRange,
    scale: 2,
    activation_bytes_per_item: 0,
    activation_bytes_per_pixel: ANIMEVIDEO_PER_PIXEL,
    load_estimate_bytes: 32 * MIB,
    licence: "BSD-3-Clause",
};

pub const REALESR_ANIMEVIDEOV3_X4: ModelSpec = ModelSpec {
    name: "realesr-animevideov3-x4",
    file: "realesr-animevideov3-x4.onnx",
    sha256: "11e58334cf59602bab66dd31ce9034841b7146e5a905c5741df3e6358b1b03ca",
    scale: 4,
    ..REALESR_ANIMEVIDEOV3_X2
};

/// Real-ESRGAN x4plus (RRDBNet: dense blocks up to 192 channels at input
/// resolution, then 64-channel convolutions at 2x and 4x resolution, which
/// dominate: 64 ch x 16 px x 4 B x 2 live maps per input pixel).
pub const REALESRGAN_X4PLUS: ModelSpec = ModelSpec {
    name: "realesrgan-x4plus",
    file: "realesrgan-x4plus.onnx",
    sha256: "382a39f4adb5ddffa8ace3fa4cf00034dce6409f5abdf1586d2ee346e9cd01a0",
    input: InputSize::Dynamic,
    layout: Layout::NchwRgb,
    normalisation: Normalisation::UnitRange,
    scale: 4,
    activation_bytes_per_item: 0,
    activation_bytes_per_pixel: 192 * 4 * 2 + 64 * 16 * 4 * 2,
    load_estimate_bytes: 160 * MIB,
    licence: "BSD-3-Clause",
};

/// Every model, in a stable order.
pub const MODELS: [&ModelSpec; 4] = [
    &U2NETP,
    &REALESR_ANIMEVIDEOV3_X2,
    &REALESR_ANIMEVIDEOV3_X4,
    &REALESRGAN_X4PLUS,
];

/// The model called `name`.
pub fn by_name(name: &str) -> Option<&'static ModelSpec> {
    MODELS.iter().copied().find(|m| m.name == name)
}

/// The sha256 of a file, lower-case hex, read in 1 MiB chunks.
///
/// # Errors
/// The I/O error's text, naming the path.
pub fn sha256_file(path: &Path) -> Result<String, std::io::Error> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks that `spec`'s file exists in `models_dir` with its pinned sha256.
///
/// # Errors
/// `Unavailable` naming the path when the file is missing or unreadable, or
/// naming both digests when it differs (a partial download, another version).
pub fn verify(spec: &ModelSpec, models_dir: &Path) -> Result<std::path::PathBuf, InferenceError> {
    let path = models_dir.join(spec.file);
    let actual = sha256_file(&path).map_err(|e| {
        InferenceError::unavailable(format!(
            "model {} not readable at {} ({e}); run tools/install-models or set inference.models_dir",
            spec.name,
            path.display()
        ))
    })?;
    if actual != spec.sha256 {
        return Err(InferenceError::unavailable(format!(
            "model {} at {} has sha256 {actual}, expected {}; reinstall with tools/install-models",
            spec.name,
            path.display(),
            spec.sha256
        )));
    }
    Ok(path)
}

/// Parses a `MANIFEST` (`<sha256>  <file>` per line, `#` comments) into
/// (file, sha256) pairs.
pub fn parse_manifest(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let sha = parts.next()?;
            let file = parts.next()?;
            Some((
                file.trim_start_matches('*').to_string(),
                sha.to_ascii_lowercase(),
            ))
        })
        .collect()
}

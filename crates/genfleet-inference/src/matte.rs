//! Foreground masks with U²-Net-p, preprocessed and postprocessed as rembg
//! does: the image is resized (stretched, not letterboxed: that is what the
//! model saw in training via rembg) to 320x320 with Lanczos3, divided by its
//! largest channel value, normalised with ImageNet mean/std; the saliency
//! output is min-max normalised, quantised to 8 bits and resized back to the
//! image's size bilinearly. No refinement here.

use image::{GrayImage, RgbImage};
use tokio::time::Instant;

use crate::engine::{Engine, Tensor};
use crate::registry::{InputSize, Normalisation, U2NETP};
use crate::tiling::{resize_gray_bilinear, resize_rgb};
use crate::InferenceError;

/// The most pixels an input may have: the mask is the image's size, and
/// the caller's decode limits already sit below this.
pub const MAX_MASK_PIXELS: u64 = 100_000_000;

pub(crate) async fn foreground_mask(
    engine: &Engine,
    image: &RgbImage,
    deadline: Instant,
) -> Result<GrayImage, InferenceError> {
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return Err(InferenceError::invalid(format!(
            "image is {width}x{height} pixels; a mask needs both sides above zero"
        )));
    }
    if u64::from(width) * u64::from(height) > MAX_MASK_PIXELS {
        return Err(InferenceError::invalid(format!(
            "image is {width}x{height} pixels, above the {} megapixel limit for a mask",
            MAX_MASK_PIXELS / 1_000_000
        )));
    }
    let model = engine.model(&U2NETP).await?;
    let InputSize::Fixed {
        width: side_w,
        height: side_h,
    } = model.spec.input
    else {
        return Err(InferenceError::failed(
            "u2netp is registered without a fixed input size",
        ));
    };
    let input = preprocess(image, side_w, side_h, model.spec.normalisation);
    let output = model.batcher.submit(input, deadline).await?;
    postprocess(&output, width, height)
}

/// The model input: planar `[3, h, w]`, `(x / max - mean) / std`.
fn preprocess(image: &RgbImage, width: u32, height: u32, normalisation: Normalisation) -> Tensor {
    let resized = resize_rgb(image, width, height);
    let (mean, std) = match normalisation {
        Normalisation::ScaledMeanStd { mean, std } => (mean, std),
        Normalisation::UnitRange => ([0.0; 3], [1.0; 3]),
    };
    // rembg divides by the image's largest value (not 255); a black image
    // would divide by zero, so the floor is 1.
    let max = match normalisation {
        Normalisation::ScaledMeanStd { .. } => {
            f32::from(resized.as_raw().iter().copied().max().unwrap_or(255).max(1))
        }
        Normalisation::UnitRange => 255.0,
    };
    let plane = (width * height) as usize;
    let mut data = vec![0.0f32; plane * 3];
    for (i, pixel) in resized.pixels().enumerate() {
        for c in 0..3 {
            data[c * plane + i] = (f32::from(pixel.0[c]) / max - mean[c]) / std[c];
        }
    }
    Tensor {
        shape: [3, height as usize, width as usize],
        data,
    }
}

/// Min-max normalises the first channel of the output, to 8 bits, resized.
fn postprocess(output: &Tensor, width: u32, height: u32) -> Result<GrayImage, InferenceError> {
    let [_, oh, ow] = output.shape;
    let plane = &output.data[..(oh * ow).min(output.data.len())];
    let (min, max) = plane
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let range = max - min;
    let bytes = plane
        .iter()
        .map(|&v| {
            if range > f32::EPSILON {
                // rembg: (pred - min) / (max - min), then * 255 truncated.
                (((v - min) / range) * 255.0).clamp(0.0, 255.0) as u8
            } else {
                0
            }
        })
        .collect();
    let coarse = GrayImage::from_raw(ow as u32, oh as u32, bytes)
        .ok_or_else(|| InferenceError::failed("u2netp returned an output of an unexpected size"))?;
    Ok(resize_gray_bilinear(&coarse, width, height))
}

// The engine's public entry for masks lives here, beside the work, so the
// engine module does not import the modules that import it.
impl Engine {
    /// A coarse foreground mask (0..=255, the image's size) from U²-Net-p:
    /// the model's saliency min-max normalised as rembg does, upsampled
    /// bilinearly. Refinement is the caller's (genfleet-imaging).
    ///
    /// # Errors
    /// `Invalid` for an image with a zero side or above the pixel limit,
    /// `Unavailable`, `Overloaded`, `DeadlineExceeded`, `Failed`.
    pub async fn foreground_mask(
        &self,
        image: &image::RgbImage,
        deadline: Instant,
    ) -> Result<image::GrayImage, InferenceError> {
        foreground_mask(self, image, deadline).await
    }
}

//! Background removal: the [`Matte`] seam, compositing a mask into an RGBA
//! image, and the IoU measure the tests and the bench use.
//!
//! Owns the contract every matte follows (an 8-bit alpha mask the size of the
//! input, 255 = foreground) and the classical CPU matte for studio and product
//! photos on plain or gradient backgrounds; the full-resolution refinement
//! of a model's coarse mask (`refine.rs`); and the `auto` rule that picks
//! between the two (`confidence.rs`). It does not load or run models: model
//! based mattes live in `genfleet-inference`, which hands its mask here.

mod background;
mod classical;
mod confidence;
mod refine;
mod regions;

use image::{DynamicImage, GenericImageView, GrayImage};

use crate::error::ImagingError;

pub use classical::{ClassicalEvidence, ClassicalMatte};
pub use confidence::{
    choose_method, classical_confidence, MatteMethod, CLASSICAL_CONFIDENCE_THRESHOLD,
};
pub use refine::refine_mask;

/// Something that separates the foreground of an image from its background.
pub trait Matte {
    /// Short stable name, for logs and metrics labels (e.g. "classical").
    fn name(&self) -> &str;

    /// Returns an alpha mask of the same size as `image`: 255 where the pixel
    /// is foreground, 0 where it is background, values between on soft edges.
    ///
    /// # Errors
    ///
    /// [`ImagingError::Invalid`] when the image is empty; implementations may
    /// add their own (a model matte can fail with [`ImagingError::Internal`]).
    fn matte(&self, image: &DynamicImage) -> Result<GrayImage, ImagingError>;
}

/// Turns `image` into RGBA8 with `alpha` as its alpha channel. Colour is kept
/// as it is (straight, not premultiplied). If `image` already has alpha, the
/// result is the product of the two, so a matte never makes a transparent
/// pixel opaque.
///
/// # Errors
///
/// [`ImagingError::Invalid`] when `alpha` is not the size of `image`.
pub fn apply_matte(image: &DynamicImage, alpha: &GrayImage) -> Result<DynamicImage, ImagingError> {
    if image.dimensions() != alpha.dimensions() {
        return Err(ImagingError::Invalid(format!(
            "alpha mask is {}x{}, expected {}x{} like the image",
            alpha.width(),
            alpha.height(),
            image.width(),
            image.height()
        )));
    }
    let mut out = image.to_rgba8();
    for (px, a) in out.pixels_mut().zip(alpha.as_raw()) {
        // Rounded a * b / 255 on integers.
        let product = u32::from(px.0[3]) * u32::from(*a) + 128;
        px.0[3] = ((product + (product >> 8)) >> 8) as u8;
    }
    Ok(DynamicImage::ImageRgba8(out))
}

/// Intersection over union of the foreground of two masks, each thresholded
/// at 128 (alpha >= 128 is foreground). Two masks with no foreground at all
/// agree perfectly (1.0); masks of different sizes score 0.0.
pub fn alpha_iou(predicted: &GrayImage, truth: &GrayImage) -> f64 {
    if predicted.dimensions() != truth.dimensions() {
        return 0.0;
    }
    let (mut inter, mut union) = (0u64, 0u64);
    for (p, t) in predicted.as_raw().iter().zip(truth.as_raw()) {
        let (p, t) = (*p >= 128, *t >= 128);
        inter += u64::from(p && t);
        union += u64::from(p || t);
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_paths::{read, COMPOSITES};
    use image::{Luma, Rgb, RgbImage, Rgba, RgbaImage};

    /// The composites and what each must reach. The issue asks for a mean of
    /// 0.95 and 0.90 each; the floors are stricter: what the classical matte
    /// reaches (0.991 to 0.999) less a margin, so a regression shows.
    const COMPOSITE_FLOOR: f64 = 0.98;
    const COMPOSITE_MEAN_FLOOR: f64 = 0.99;
    const NAMES: [&str; 6] = [
        "k01_tshirt_white",
        "k02_boot_white_shadow",
        "k03_tiara_grey_gradient",
        "k04_phone_grey_gradient_shadow",
        "k05_lamp_pastel_teal",
        "k06_strawberry_coral",
    ];

    fn check(name: &str, matte: &dyn Matte) -> f64 {
        let image = image::load_from_memory(&read(COMPOSITES, &format!("{name}.jpg"))).unwrap();
        let truth = image::load_from_memory(&read(COMPOSITES, &format!("{name}.mask.png")))
            .unwrap()
            .into_luma8();
        let alpha = matte.matte(&image).unwrap();
        assert_eq!(alpha.dimensions(), truth.dimensions(), "{name}");
        alpha_iou(&alpha, &truth)
    }

    #[test]
    fn classical_matte_matches_composite_masks() {
        let matte = ClassicalMatte::default();
        let ious: Vec<f64> = NAMES.iter().map(|n| check(n, &matte)).collect();
        let mean = ious.iter().sum::<f64>() / ious.len() as f64;
        for (name, iou) in NAMES.iter().zip(&ious) {
            assert!(*iou >= COMPOSITE_FLOOR, "{name}: IoU {iou:.4}");
        }
        assert!(mean >= COMPOSITE_MEAN_FLOOR, "mean IoU {mean:.4}: {ious:?}");
    }

    #[test]
    fn dark_square_on_white_is_cut_out_exactly() {
        let (w, h) = (240, 180);
        let inside = |x: u32, y: u32| (60..170).contains(&x) && (40..130).contains(&y);
        let image = RgbImage::from_fn(w, h, |x, y| {
            if inside(x, y) {
                Rgb([40, 30, 20])
            } else {
                Rgb([255, 255, 255])
            }
        });
        let truth = GrayImage::from_fn(w, h, |x, y| Luma([if inside(x, y) { 255 } else { 0 }]));
        let alpha = ClassicalMatte::default()
            .matte(&DynamicImage::ImageRgb8(image))
            .unwrap();
        let iou = alpha_iou(&alpha, &truth);
        assert!(iou > 0.995, "IoU {iou}");
        assert_eq!(alpha.get_pixel(0, 0).0[0], 0);
        assert_eq!(alpha.get_pixel(100, 80).0[0], 255);
    }

    #[test]
    fn noise_to_the_edges_is_all_foreground() {
        // xorshift32: deterministic noise without a dependency.
        let mut state = 0x2545_f491_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        };
        let image = RgbImage::from_fn(300, 200, |_, _| Rgb([next(), next(), next()]));
        let alpha = ClassicalMatte::default()
            .matte(&DynamicImage::ImageRgb8(image))
            .unwrap();
        let opaque = alpha.as_raw().iter().filter(|&&a| a >= 128).count();
        assert!(opaque * 10 >= alpha.as_raw().len() * 9, "{opaque} opaque");
    }

    #[test]
    fn empty_image_is_invalid() {
        let err = ClassicalMatte::default()
            .matte(&DynamicImage::new_rgb8(0, 0))
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input");
    }

    #[test]
    fn apply_matte_sets_alpha_and_keeps_colour() {
        let image = RgbImage::from_fn(8, 4, |x, y| Rgb([x as u8 * 30, y as u8 * 60, 7]));
        let alpha = GrayImage::from_fn(8, 4, |x, y| Luma([(x * 32 + y) as u8]));
        let out = apply_matte(&DynamicImage::ImageRgb8(image.clone()), &alpha)
            .unwrap()
            .into_rgba8();
        for (x, y, px) in out.enumerate_pixels() {
            let rgb = image.get_pixel(x, y).0;
            assert_eq!(px.0, [rgb[0], rgb[1], rgb[2], alpha.get_pixel(x, y).0[0]]);
        }
        let err = apply_matte(&DynamicImage::ImageRgb8(image), &GrayImage::new(4, 8)).unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        assert_eq!(
            err.to_string(),
            "alpha mask is 4x8, expected 8x4 like the image"
        );
    }

    #[test]
    fn apply_matte_never_makes_transparent_opaque() {
        let image = RgbaImage::from_fn(3, 1, |x, _| Rgba([9, 9, 9, [0, 128, 255][x as usize]]));
        let alpha = GrayImage::from_pixel(3, 1, Luma([255]));
        let out = apply_matte(&DynamicImage::ImageRgba8(image), &alpha)
            .unwrap()
            .into_rgba8();
        let got: Vec<u8> = out.pixels().map(|p| p.0[3]).collect();
        assert_eq!(got, vec![0, 128, 255]);
        let half = GrayImage::from_pixel(3, 1, Luma([128]));
        let out = apply_matte(&DynamicImage::ImageRgba8(out), &half)
            .unwrap()
            .into_rgba8();
        let got: Vec<u8> = out.pixels().map(|p| p.0[3]).collect();
        assert_eq!(got, vec![0, 64, 128]);
    }

    #[test]
    fn iou_thresholds_at_128() {
        let a = GrayImage::from_raw(4, 1, vec![0, 127, 128, 255]).unwrap();
        let b = GrayImage::from_raw(4, 1, vec![255, 0, 200, 255]).unwrap();
        // Foreground of a: {2, 3}; of b: {0, 2, 3}.
        assert!((alpha_iou(&a, &b) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(alpha_iou(&a, &a), 1.0);
        assert_eq!(alpha_iou(&GrayImage::new(2, 2), &GrayImage::new(2, 2)), 1.0);
        assert_eq!(alpha_iou(&a, &GrayImage::new(1, 4)), 0.0);
    }
}

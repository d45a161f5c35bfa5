//! Downscaling to a bounding box and integer upscaling, both Lanczos3 via
//! fast_image_resize (SIMD).
//!
//! Owns the size arithmetic and the alpha handling: fast_image_resize
//! premultiplies colour by alpha before filtering and divides after
//! (`ResizeOptions::mul_div_alpha`, on by default and set explicitly here),
//! so transparent pixels do not bleed dark fringes into their neighbours.
//! It does not change the pixel type and does not crop, pad or sharpen.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;

use crate::error::ImagingError;
use crate::limits::Limits;

/// Largest output side [`upscale`] produces, whatever the limits say: the
/// biggest a browser or the downstream encoders handle comfortably.
const MAX_UPSCALE_SIDE: u32 = 32768;

/// Shrinks `image` so that its longer side is at most `long_side`, keeping
/// the aspect ratio. Never enlarges: an image already small enough comes back
/// as an unchanged clone. The output has the same pixel type as the input.
///
/// # Errors
///
/// [`ImagingError::Invalid`] when `long_side` is 0; [`ImagingError::Internal`]
/// if the resizer rejects the pixel type.
pub fn resize_to_fit(image: &DynamicImage, long_side: u32) -> Result<DynamicImage, ImagingError> {
    if long_side == 0 {
        return Err(ImagingError::Invalid(
            "resize target is 0 pixels, expected a long side of at least 1".into(),
        ));
    }
    let (width, height) = (image.width(), image.height());
    let longest = width.max(height);
    if longest <= long_side {
        return Ok(image.clone());
    }
    let (new_width, new_height) = if width >= height {
        (long_side, scale_side(height, long_side, longest))
    } else {
        (scale_side(width, long_side, longest), long_side)
    };
    lanczos(image, new_width, new_height)
}

/// Enlarges `image` by `factor` (2 or 4) with Lanczos3.
///
/// # Errors
///
/// [`ImagingError::Invalid`] for any other factor; [`ImagingError::TooLarge`]
/// when a side of the output would exceed 32768 pixels or the output would
/// have more than `4 * limits.max_pixels` pixels (upscaled outputs may be
/// larger than accepted inputs, but not unboundedly).
pub fn upscale(
    image: &DynamicImage,
    factor: u32,
    limits: &Limits,
) -> Result<DynamicImage, ImagingError> {
    if factor != 2 && factor != 4 {
        return Err(ImagingError::Invalid(format!(
            "upscale factor is {factor}, expected 2 or 4"
        )));
    }
    let too_large = || {
        ImagingError::TooLarge(format!(
            "upscaling {}x{} by {factor} exceeds the output limit of {MAX_UPSCALE_SIDE} pixels per side and {} pixels",
            image.width(),
            image.height(),
            limits.max_pixels.saturating_mul(4)
        ))
    };
    let new_width = image.width().checked_mul(factor).ok_or_else(too_large)?;
    let new_height = image.height().checked_mul(factor).ok_or_else(too_large)?;
    let pixels = u64::from(new_width) * u64::from(new_height);
    if new_width > MAX_UPSCALE_SIDE
        || new_height > MAX_UPSCALE_SIDE
        || pixels > limits.max_pixels.saturating_mul(4)
    {
        return Err(too_large());
    }
    lanczos(image, new_width, new_height)
}

/// `side * target / longest`, rounded to nearest, at least 1 so a 10000x1
/// strip does not collapse to nothing.
fn scale_side(side: u32, target: u32, longest: u32) -> u32 {
    let scaled =
        (u64::from(side) * u64::from(target) + u64::from(longest) / 2) / u64::from(longest);
    u32::try_from(scaled).unwrap_or(target).max(1)
}

fn lanczos(image: &DynamicImage, width: u32, height: u32) -> Result<DynamicImage, ImagingError> {
    // Same colour type in and out: fast_image_resize requires it, and callers
    // rely on resizing never changing the pixel format.
    let mut out = DynamicImage::new(width, height, image.color());
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .use_alpha(true);
    Resizer::new().resize(image, &mut out, &options)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ColorType, Rgba, RgbaImage};

    fn blank(width: u32, height: u32, color: ColorType) -> DynamicImage {
        DynamicImage::new(width, height, color)
    }

    #[test]
    fn fits_long_side_and_keeps_aspect() {
        let cases = [
            ((4000, 3000), 1024, (1024, 768)),
            ((3000, 4000), 1024, (768, 1024)),
            ((2667, 4000), 1024, (683, 1024)),
            ((10000, 1), 100, (100, 1)),
            ((800, 600), 1024, (800, 600)),
            ((1024, 10), 1024, (1024, 10)),
        ];
        for color in [ColorType::Rgb8, ColorType::Rgba8] {
            for ((w, h), long, want) in cases {
                let out = resize_to_fit(&blank(w, h, color), long).unwrap();
                assert_eq!((out.width(), out.height()), want, "{w}x{h} -> {long}");
                assert_eq!(out.color(), color);
            }
        }
        assert_eq!(
            resize_to_fit(&blank(10, 10, ColorType::Rgb8), 0)
                .unwrap_err()
                .code(),
            "invalid_input"
        );
    }

    #[test]
    fn other_pixel_types_resize_to_the_same_type() {
        for color in [
            ColorType::L8,
            ColorType::La8,
            ColorType::Rgb16,
            ColorType::Rgba16,
            ColorType::Rgba32F,
        ] {
            let out = resize_to_fit(&blank(64, 32, color), 16).unwrap();
            assert_eq!((out.width(), out.height(), out.color()), (16, 8, color));
        }
    }

    /// With premultiplied alpha, a fully transparent black neighbour must not
    /// darken opaque white pixels.
    #[test]
    fn transparent_pixels_do_not_bleed() {
        let mut img = RgbaImage::new(200, 100);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = if x < 100 {
                Rgba([255, 255, 255, 255])
            } else {
                Rgba([0, 0, 0, 0])
            };
        }
        let out = resize_to_fit(&DynamicImage::ImageRgba8(img), 50)
            .unwrap()
            .into_rgba8();
        for x in 0..25 {
            let p = out.get_pixel(x, 12);
            if p[3] > 0 {
                assert!(p[0] >= 250, "pixel {x} darkened to {p:?}");
            }
        }
    }

    #[test]
    fn upscale_factors_and_limits() {
        let img = blank(100, 80, ColorType::Rgb8);
        let limits = Limits::default();
        let out = upscale(&img, 2, &limits).unwrap();
        assert_eq!(
            (out.width(), out.height(), out.color()),
            (200, 160, ColorType::Rgb8)
        );
        let out = upscale(&img, 4, &limits).unwrap();
        assert_eq!((out.width(), out.height()), (400, 320));
        for factor in [0, 1, 3, 8] {
            assert_eq!(
                upscale(&img, factor, &limits).unwrap_err().code(),
                "invalid_input",
                "factor {factor}"
            );
        }
        let small = Limits {
            max_pixels: 10_000,
            ..Limits::default()
        };
        assert_eq!(upscale(&img, 4, &small).unwrap_err().code(), "too_large");
        let wide = blank(20000, 1, ColorType::L8);
        assert_eq!(upscale(&wide, 2, &limits).unwrap_err().code(), "too_large");
    }
}

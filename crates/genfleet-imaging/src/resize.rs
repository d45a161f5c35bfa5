//! Downscaling to a bounding box, exact resizes and integer upscaling, all
//! Lanczos3 via fast_image_resize (SIMD), and the unsharp mask.
//!
//! Owns the size arithmetic and the alpha handling: fast_image_resize
//! premultiplies colour by alpha before filtering and divides after
//! (`ResizeOptions::use_alpha`, on by default and set explicitly here), so
//! transparent pixels do not bleed dark fringes into their neighbours.
//! Gamma-correct resizing (filtering linear light, not sRGB codes) is an
//! option: it keeps fine high-contrast detail (fabric, text, a jewel's
//! sparkle) from darkening when shrunk, at about six times the cost of the
//! 8-bit path (16-bit samples and two mapping passes; `benches/pipeline.rs`). Upscaling
//! works in horizontal bands, so its working memory beyond the output is a
//! few megabytes whatever the size. It does not crop or pad.

use fast_image_resize::images::Image as FirImage;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
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
    match fit_size(image.width(), image.height(), long_side)? {
        Some((width, height)) => lanczos(image, width, height),
        None => Ok(image.clone()),
    }
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
    upscale_with(image, factor, None, limits)
}

/// The output size of an upscale, checked against the limits.
fn upscale_size(
    image: &DynamicImage,
    factor: u32,
    limits: &Limits,
) -> Result<(u32, u32), ImagingError> {
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
    Ok((new_width, new_height))
}

/// Output rows computed per band by [`upscale_with`]: 256 rows of a 16000 px
/// RGB output is 12 MB of band buffer.
const UPSCALE_BAND_ROWS: u32 = 256;

/// An unsharp mask: `out = in + amount * (in - blur(in))` where the
/// difference exceeds `threshold`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sharpen {
    /// Gaussian sigma of the blur, in output pixels (0.5..=10).
    pub sigma: f32,
    /// Strength: 0.5 is gentle, 1.5 strong.
    pub amount: f32,
    /// Differences at or below this many code values are left alone, so
    /// flat areas and JPEG noise are not amplified.
    pub threshold: u8,
}

impl Default for Sharpen {
    /// A mild sharpening that restores some crispness lost to Lanczos
    /// enlargement without halos at 100% zoom.
    fn default() -> Self {
        Sharpen {
            sigma: 1.0,
            amount: 0.6,
            threshold: 2,
        }
    }
}

/// Resizes `image` to exactly `width` x `height` (up or down), Lanczos3.
///
/// # Errors
/// [`ImagingError::Invalid`] for a zero side; [`ImagingError::Internal`] if
/// the resizer fails.
pub fn resize_exact(
    image: &DynamicImage,
    width: u32,
    height: u32,
    gamma_correct: bool,
) -> Result<DynamicImage, ImagingError> {
    if width == 0 || height == 0 {
        return Err(ImagingError::Invalid(format!(
            "resize target is {width}x{height}, expected non-zero sides"
        )));
    }
    if (width, height) == (image.width(), image.height()) {
        return Ok(image.clone());
    }
    if gamma_correct {
        lanczos_linear(image, width, height)
    } else {
        lanczos(image, width, height)
    }
}

/// [`resize_to_fit`], optionally gamma-correct.
///
/// # Errors
/// As [`resize_to_fit`].
pub fn resize_to_fit_with(
    image: &DynamicImage,
    long_side: u32,
    gamma_correct: bool,
) -> Result<DynamicImage, ImagingError> {
    if !gamma_correct {
        return resize_to_fit(image, long_side);
    }
    match fit_size(image.width(), image.height(), long_side)? {
        Some((width, height)) => lanczos_linear(image, width, height),
        None => Ok(image.clone()),
    }
}

/// The size that fits `width` x `height` inside `long_side`, or `None`
/// when it already fits.
fn fit_size(width: u32, height: u32, long_side: u32) -> Result<Option<(u32, u32)>, ImagingError> {
    if long_side == 0 {
        return Err(ImagingError::Invalid(
            "resize target is 0 pixels, expected a long side of at least 1".into(),
        ));
    }
    let longest = width.max(height);
    if longest <= long_side {
        return Ok(None);
    }
    Ok(Some(if width >= height {
        (long_side, scale_side(height, long_side, longest))
    } else {
        (scale_side(width, long_side, longest), long_side)
    }))
}

/// [`upscale`] with an optional unsharp mask, computed in bands of output
/// rows: each band is resized from its own source rows (plus the filter's
/// support, which fast_image_resize reads outside the crop box) and
/// sharpened with a margin of extra rows that is then discarded, so bands
/// join seamlessly and the working memory is one band, not a second
/// full-size image.
///
/// # Errors
/// As [`upscale`]; the sharpen parameters out of range: `invalid_input`.
pub fn upscale_with(
    image: &DynamicImage,
    factor: u32,
    sharpen: Option<Sharpen>,
    limits: &Limits,
) -> Result<DynamicImage, ImagingError> {
    let (new_width, new_height) = upscale_size(image, factor, limits)?;
    if let Some(s) = sharpen {
        if !(0.5..=10.0).contains(&s.sigma) || !(0.0..=5.0).contains(&s.amount) {
            return Err(ImagingError::Invalid(format!(
                "sharpen sigma {} and amount {} must be within 0.5..=10 and 0..=5",
                s.sigma, s.amount
            )));
        }
    }
    // 3 sigma covers the Gaussian; the margin is in output rows.
    let margin = sharpen.map_or(0, |s| (3.0 * s.sigma).ceil() as u32 + 1);
    let scale = f64::from(factor);
    let mut out = DynamicImage::new(new_width, new_height, image.color());
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .use_alpha(true);
    let mut resizer = Resizer::new();
    let mut y0 = 0;
    while y0 < new_height {
        let y1 = (y0 + UPSCALE_BAND_ROWS).min(new_height);
        let top = y0.saturating_sub(margin);
        let bottom = (y1 + margin).min(new_height);
        let mut band = DynamicImage::new(new_width, bottom - top, image.color());
        let band_options = options.crop(
            0.0,
            f64::from(top) / scale,
            f64::from(image.width()),
            f64::from(bottom - top) / scale,
        );
        resizer.resize(image, &mut band, &band_options)?;
        if let Some(s) = sharpen {
            band = unsharp(&band, s)?;
        }
        let rows = band.crop_imm(0, y0 - top, new_width, y1 - y0);
        copy_rows(&rows, &mut out, y0)?;
        y0 = y1;
    }
    Ok(out)
}

/// Writes `rows` into `out` starting at row `y`; same pixel type.
fn copy_rows(rows: &DynamicImage, out: &mut DynamicImage, y: u32) -> Result<(), ImagingError> {
    use image::GenericImage as _;
    out.copy_from(rows, 0, y)
        .map_err(|e| ImagingError::Internal(format!("band copy failed: {e}")))
}

/// Unsharp mask on 8-bit RGB or RGBA (alpha left as is).
///
/// # Errors
/// [`ImagingError::Internal`] for other pixel types (callers normalise).
pub fn unsharp(image: &DynamicImage, sharpen: Sharpen) -> Result<DynamicImage, ImagingError> {
    let threshold = i32::from(sharpen.threshold);
    let amount = sharpen.amount;
    let apply = |orig: &mut [u8], blurred: &[u8], channels: usize| {
        for (px, bl) in orig
            .chunks_exact_mut(channels)
            .zip(blurred.chunks_exact(channels))
        {
            for c in 0..3 {
                let diff = i32::from(px[c]) - i32::from(bl[c]);
                if diff.abs() > threshold {
                    let v = f32::from(px[c]) + amount * diff as f32;
                    px[c] = v.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    };
    match image {
        DynamicImage::ImageRgb8(rgb) => {
            let blurred = image::imageops::fast_blur(rgb, sharpen.sigma);
            let mut out = rgb.clone();
            apply(&mut out, &blurred, 3);
            Ok(DynamicImage::ImageRgb8(out))
        }
        DynamicImage::ImageRgba8(rgba) => {
            let blurred = image::imageops::fast_blur(rgba, sharpen.sigma);
            let mut out = rgba.clone();
            apply(&mut out, &blurred, 4);
            Ok(DynamicImage::ImageRgba8(out))
        }
        other => Err(ImagingError::Internal(format!(
            "unsharp expects 8-bit RGB or RGBA, got {:?}",
            other.color()
        ))),
    }
}

/// `side * target / longest`, rounded to nearest, at least 1 so a 10000x1
/// strip does not collapse to nothing.
fn scale_side(side: u32, target: u32, longest: u32) -> u32 {
    let scaled =
        (u64::from(side) * u64::from(target) + u64::from(longest) / 2) / u64::from(longest);
    u32::try_from(scaled).unwrap_or(target).max(1)
}

/// Lanczos3 in linear light: sRGB codes to 16-bit linear, resize, back.
/// Only 8-bit RGB and RGBA are mapped (alpha is not gamma-encoded and is
/// left linear); other types resize as they are.
fn lanczos_linear(
    image: &DynamicImage,
    width: u32,
    height: u32,
) -> Result<DynamicImage, ImagingError> {
    let (linear_type, out_type) = match image {
        DynamicImage::ImageRgb8(_) => (PixelType::U16x3, PixelType::U8x3),
        DynamicImage::ImageRgba8(_) => (PixelType::U16x4, PixelType::U8x4),
        _ => return lanczos(image, width, height),
    };
    let mapper = fast_image_resize::create_srgb_mapper();
    let mapping = |e: fast_image_resize::MappingError| {
        ImagingError::Internal(format!("gamma mapping failed: {e}"))
    };
    let mut linear = FirImage::new(image.width(), image.height(), linear_type);
    mapper.forward_map(image, &mut linear).map_err(mapping)?;
    let mut resized = FirImage::new(width, height, linear_type);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .use_alpha(true);
    Resizer::new().resize(&linear, &mut resized, &options)?;
    let mut out = FirImage::new(width, height, out_type);
    mapper.backward_map(&resized, &mut out).map_err(mapping)?;
    let buffer = out.into_vec();
    let rebuilt = match out_type {
        PixelType::U8x3 => {
            image::RgbImage::from_raw(width, height, buffer).map(DynamicImage::ImageRgb8)
        }
        _ => image::RgbaImage::from_raw(width, height, buffer).map(DynamicImage::ImageRgba8),
    };
    rebuilt.ok_or_else(|| ImagingError::Internal("gamma-correct resize buffer size".into()))
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
    use crate::test_paths::{max_abs_diff, mean_abs_diff};
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

    fn noisy_rgb(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
            let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 7;
            image::Rgb([v as u8, (v >> 8) as u8, (x + y) as u8])
        }))
    }

    /// Bands must join seamlessly: the banded upscale equals one whole-image
    /// resize (the filter reads its support outside each band's crop box).
    #[test]
    fn banded_upscale_equals_a_whole_image_resize() {
        let img = noisy_rgb(150, 301); // 602 and 1204 output rows: 3 and 5 bands
        for factor in [2, 4] {
            let banded = upscale(&img, factor, &Limits::default()).unwrap();
            let whole = lanczos(&img, 150 * factor, 301 * factor).unwrap();
            // Crop-box coefficients are computed in floating point from the
            // band's offset, so a sample may round the other way; no more.
            let diff = max_abs_diff(&banded, &whole);
            let mean = mean_abs_diff(&banded, &whole);
            assert!(
                diff <= 3 && mean < 0.05,
                "x{factor}: bands differ from a whole resize by {diff} (mean {mean})"
            );
        }
    }

    #[test]
    fn banded_sharpening_equals_sharpening_the_whole() {
        let img = noisy_rgb(120, 200);
        let sharpen = Sharpen::default();
        let banded = upscale_with(&img, 2, Some(sharpen), &Limits::default()).unwrap();
        let whole = unsharp(&lanczos(&img, 240, 400).unwrap(), sharpen).unwrap();
        let diff = max_abs_diff(&banded, &whole);
        assert!(diff <= 2, "banded sharpening differs by {diff}");
        // And it did sharpen.
        let plain = upscale(&img, 2, &Limits::default()).unwrap();
        assert!(max_abs_diff(&banded, &plain) > 10);
    }

    #[test]
    fn unsharp_raises_edge_contrast_and_spares_flat_areas() {
        // A soft vertical edge from 100 to 160 over 8 px, flat elsewhere.
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 16, |x, _| {
            let v = (100 + (x.saturating_sub(28).min(8) * 60 / 8)) as u8;
            image::Rgb([v, v, v])
        }));
        let sharp = unsharp(
            &img,
            Sharpen {
                sigma: 2.0,
                amount: 1.0,
                threshold: 2,
            },
        )
        .unwrap()
        .to_rgb8();
        let orig = img.to_rgb8();
        // Overshoot on both sides of the edge...
        assert!(sharp.get_pixel(27, 8)[0] < orig.get_pixel(27, 8)[0]);
        assert!(sharp.get_pixel(37, 8)[0] > orig.get_pixel(37, 8)[0]);
        // ...and the flat ends untouched.
        assert_eq!(sharp.get_pixel(2, 8), orig.get_pixel(2, 8));
        assert_eq!(sharp.get_pixel(62, 8), orig.get_pixel(62, 8));
        let bad = Sharpen {
            sigma: 0.0,
            ..Sharpen::default()
        };
        assert_eq!(
            upscale_with(&img, 2, Some(bad), &Limits::default())
                .unwrap_err()
                .code(),
            "invalid_input"
        );
    }

    /// A 1-px black/white checkerboard is 50% light: shrunk in linear light
    /// it is sRGB ~188; shrunk on sRGB codes it comes out 128, visibly too
    /// dark. This is the case gamma-correct resizing exists for.
    #[test]
    fn gamma_correct_resize_keeps_brightness() {
        for alpha in [false, true] {
            let board = image::RgbaImage::from_fn(64, 64, |x, y| {
                let v = if (x + y) % 2 == 0 { 255 } else { 0 };
                image::Rgba([v, v, v, 255])
            });
            let board = if alpha {
                DynamicImage::ImageRgba8(board)
            } else {
                DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(board).to_rgb8())
            };
            let centre = |img: &DynamicImage| img.to_rgba8().get_pixel(8, 8).0;
            let plain = resize_to_fit_with(&board, 16, false).unwrap();
            let linear = resize_to_fit_with(&board, 16, true).unwrap();
            assert_eq!(linear.color(), board.color());
            let (p, l) = (centre(&plain), centre(&linear));
            assert!((120..=136).contains(&p[0]), "plain {p:?}");
            assert!((180..=196).contains(&l[0]), "linear {l:?}");
            assert_eq!(l[3], 255, "alpha is not gamma-mapped");
        }
        let exact = resize_exact(&noisy_rgb(30, 20), 45, 10, true).unwrap();
        assert_eq!((exact.width(), exact.height()), (45, 10));
    }
}

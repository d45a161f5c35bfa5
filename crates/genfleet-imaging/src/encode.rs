//! Re-encoding pixels into the output formats we publish.
//!
//! Owns [`Encoding`] and [`encode`]. Only pixels are written: no EXIF, ICC or
//! other metadata, which is what makes decode-then-encode a sanitiser. It
//! does not resize or choose a format for the caller.

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ColorType, DynamicImage, RgbImage};

use crate::error::ImagingError;

/// Output format and its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Baseline JPEG; `quality` is clamped to 1..=100. Alpha is flattened
    /// onto white.
    Jpeg { quality: u8 },
    /// PNG, alpha kept.
    Png,
    /// WebP, lossless (the only WebP mode `image` can write), alpha kept.
    WebpLossless,
}

impl Encoding {
    /// IANA media type of the output.
    pub fn mime(&self) -> &'static str {
        match self {
            Encoding::Jpeg { .. } => "image/jpeg",
            Encoding::Png => "image/png",
            Encoding::WebpLossless => "image/webp",
        }
    }

    /// File extension without the dot.
    pub fn extension(&self) -> &'static str {
        match self {
            Encoding::Jpeg { .. } => "jpg",
            Encoding::Png => "png",
            Encoding::WebpLossless => "webp",
        }
    }
}

/// Encodes `image` as `encoding`.
///
/// Any pixel type is accepted; it is converted to what the encoder supports
/// (8-bit grey, grey+alpha, RGB or RGBA).
///
/// # Errors
///
/// [`ImagingError::Internal`] if the encoder fails: the pixels and
/// parameters are ours, so that is never the input's fault.
pub fn encode(image: &DynamicImage, encoding: Encoding) -> Result<Vec<u8>, ImagingError> {
    let mut out = Vec::new();
    let written = match encoding {
        Encoding::Jpeg { quality } => {
            let encoder = JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100));
            match image.color() {
                ColorType::Rgb8 | ColorType::L8 => image.write_with_encoder(encoder),
                _ => DynamicImage::ImageRgb8(flatten_on_white(image)).write_with_encoder(encoder),
            }
        }
        Encoding::Png => match image.color() {
            // PNG stores 16-bit natively; only float needs converting.
            ColorType::Rgb32F => DynamicImage::ImageRgb16(image.to_rgb16())
                .write_with_encoder(PngEncoder::new(&mut out)),
            ColorType::Rgba32F => DynamicImage::ImageRgba16(image.to_rgba16())
                .write_with_encoder(PngEncoder::new(&mut out)),
            _ => image.write_with_encoder(PngEncoder::new(&mut out)),
        },
        Encoding::WebpLossless => {
            let encoder = WebPEncoder::new_lossless(&mut out);
            match image.color() {
                ColorType::Rgb8 | ColorType::Rgba8 | ColorType::L8 | ColorType::La8 => {
                    image.write_with_encoder(encoder)
                }
                color if color.has_alpha() => {
                    DynamicImage::ImageRgba8(image.to_rgba8()).write_with_encoder(encoder)
                }
                _ => DynamicImage::ImageRgb8(image.to_rgb8()).write_with_encoder(encoder),
            }
        }
    };
    written.map_err(ImagingError::from_encode)?;
    Ok(out)
}

/// Composites onto opaque white. JPEG has no alpha channel, and dropping
/// alpha instead would reveal whatever colour transparent pixels happen to
/// hold (often black), which looks broken.
fn flatten_on_white(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let mut rgb = RgbImage::new(rgba.width(), rgba.height());
    for (dst, src) in rgb.pixels_mut().zip(rgba.pixels()) {
        let alpha = u32::from(src[3]);
        for (d, s) in dst.0.iter_mut().zip(src.0) {
            // c*a + 255*(1-a), in 0..=255 fixed point, rounded.
            let v = (u32::from(s) * alpha + 255 * (255 - alpha) + 127) / 255;
            *d = v.min(255) as u8;
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    fn gradient_rgba(width: u32, height: u32) -> DynamicImage {
        let img = RgbaImage::from_fn(width, height, |x, y| {
            Rgba([(x * 3) as u8, (y * 5) as u8, 128, (x + y) as u8])
        });
        DynamicImage::ImageRgba8(img)
    }

    #[test]
    fn round_trips() {
        let rgba = gradient_rgba(97, 61);
        let rgb = DynamicImage::ImageRgb8(rgba.to_rgb8());
        let grey16 = DynamicImage::ImageLuma16(rgba.to_luma16());
        // (encoding, input, decoded format, decoded colour type)
        let cases = [
            (
                Encoding::Jpeg { quality: 90 },
                &rgb,
                image::ImageFormat::Jpeg,
                ColorType::Rgb8,
            ),
            (
                Encoding::Jpeg { quality: 0 },
                &rgba,
                image::ImageFormat::Jpeg,
                ColorType::Rgb8,
            ),
            (
                Encoding::Jpeg { quality: 255 },
                &grey16,
                image::ImageFormat::Jpeg,
                ColorType::Rgb8,
            ),
            (
                Encoding::Png,
                &rgb,
                image::ImageFormat::Png,
                ColorType::Rgb8,
            ),
            (
                Encoding::Png,
                &rgba,
                image::ImageFormat::Png,
                ColorType::Rgba8,
            ),
            (
                Encoding::Png,
                &grey16,
                image::ImageFormat::Png,
                ColorType::L16,
            ),
            (
                Encoding::WebpLossless,
                &rgb,
                image::ImageFormat::WebP,
                ColorType::Rgb8,
            ),
            (
                Encoding::WebpLossless,
                &rgba,
                image::ImageFormat::WebP,
                ColorType::Rgba8,
            ),
        ];
        for (encoding, input, format, color) in cases {
            let bytes = encode(input, encoding).unwrap();
            let back = image::load_from_memory_with_format(&bytes, format).unwrap();
            assert_eq!((back.width(), back.height()), (97, 61), "{encoding:?}");
            assert_eq!(back.color(), color, "{encoding:?} from {:?}", input.color());
        }
        // Lossless formats keep alpha exactly.
        for encoding in [Encoding::Png, Encoding::WebpLossless] {
            let bytes = encode(&rgba, encoding).unwrap();
            let back = image::load_from_memory(&bytes).unwrap();
            assert_eq!(back.to_rgba8(), rgba.to_rgba8(), "{encoding:?}");
        }
    }

    #[test]
    fn jpeg_flattens_alpha_onto_white() {
        let clear = DynamicImage::ImageRgba8(RgbaImage::from_pixel(16, 16, Rgba([0, 0, 0, 0])));
        let bytes = encode(&clear, Encoding::Jpeg { quality: 95 }).unwrap();
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert!(
            back.pixels().all(|p| p.0.iter().all(|&c| c >= 250)),
            "transparent black must become white"
        );
    }

    #[test]
    fn mime_and_extension() {
        let cases = [
            (Encoding::Jpeg { quality: 80 }, "image/jpeg", "jpg"),
            (Encoding::Png, "image/png", "png"),
            (Encoding::WebpLossless, "image/webp", "webp"),
        ];
        for (encoding, mime, ext) in cases {
            assert_eq!((encoding.mime(), encoding.extension()), (mime, ext));
        }
    }
}

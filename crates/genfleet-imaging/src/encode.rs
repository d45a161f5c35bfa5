//! Re-encoding pixels into the output formats we publish.
//!
//! Owns [`Encoding`] and [`encode`]. Only pixels are written: no EXIF, ICC or
//! other metadata, which is what makes decode-then-encode a sanitiser. It
//! does not resize or choose a format for the caller.
//!
//! Encoders: JPEG by [`crate::jpeg`] (jpeg-encoder, or libjpeg-turbo with
//! the `simd-c` feature); lossy WebP by libwebp; AVIF by ravif (rav1e, with
//! its assembly under `simd-c`);
//! lossless WebP and PNG by `image` (its lossless WebP encoder is a fast
//! single-pass one, several times faster than libwebp's at its default
//! effort, at somewhat larger files).

use image::codecs::avif::AvifEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ColorType, DynamicImage, RgbImage};

use crate::error::ImagingError;
use crate::jpeg::{self, JpegOptions};

/// WebP's format limit on either side.
const WEBP_MAX_SIDE: u32 = 16383;

/// Output format and its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// JPEG; alpha is flattened onto white.
    Jpeg(JpegOptions),
    /// PNG, alpha kept.
    Png,
    /// Lossy WebP (VP8, alpha kept losslessly-compressed); `quality` 0..=100.
    Webp { quality: u8 },
    /// Lossless WebP (VP8L), alpha kept.
    WebpLossless,
    /// AVIF (AV1 by rav1e, 8-bit 4:4:4 via ravif), alpha kept; `quality`
    /// 1..=100, `speed` 1 (smallest, slowest) ..= 10 (fastest).
    Avif { quality: u8, speed: u8 },
}

impl Encoding {
    /// Baseline 4:2:0 JPEG at `quality`.
    pub fn jpeg(quality: u8) -> Encoding {
        Encoding::Jpeg(JpegOptions::new(quality))
    }

    /// IANA media type of the output.
    pub fn mime(&self) -> &'static str {
        match self {
            Encoding::Jpeg(_) => "image/jpeg",
            Encoding::Png => "image/png",
            Encoding::Webp { .. } | Encoding::WebpLossless => "image/webp",
            Encoding::Avif { .. } => "image/avif",
        }
    }

    /// File extension without the dot.
    pub fn extension(&self) -> &'static str {
        match self {
            Encoding::Jpeg(_) => "jpg",
            Encoding::Png => "png",
            Encoding::Webp { .. } | Encoding::WebpLossless => "webp",
            Encoding::Avif { .. } => "avif",
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
/// [`ImagingError::TooLarge`] for a WebP side above 16383 pixels (the
/// format's limit); otherwise [`ImagingError::Internal`] if the encoder
/// fails: the pixels and parameters are ours, so that is never the input's
/// fault.
pub fn encode(image: &DynamicImage, encoding: Encoding) -> Result<Vec<u8>, ImagingError> {
    if matches!(encoding, Encoding::Webp { .. } | Encoding::WebpLossless)
        && (image.width() > WEBP_MAX_SIDE || image.height() > WEBP_MAX_SIDE)
    {
        return Err(ImagingError::TooLarge(format!(
            "output is {}x{} pixels, above WebP's limit of {WEBP_MAX_SIDE} pixels a side; choose JPEG or PNG",
            image.width(),
            image.height()
        )));
    }
    let mut out = Vec::new();
    let written = match encoding {
        Encoding::Jpeg(options) => {
            return match image {
                DynamicImage::ImageRgb8(rgb) => jpeg::encode_rgb(rgb, options),
                DynamicImage::ImageLuma8(grey) => jpeg::encode_gray(grey, options),
                _ => jpeg::encode_rgb(&flatten_on_white(image), options),
            }
        }
        Encoding::Webp { quality } => return encode_webp_lossy(image, quality),
        Encoding::Avif { quality, speed } => {
            let encoder = AvifEncoder::new_with_speed_quality(
                &mut out,
                speed.clamp(1, 10),
                quality.clamp(1, 100),
            );
            if image.color().has_alpha() {
                DynamicImage::ImageRgba8(image.to_rgba8()).write_with_encoder(encoder)
            } else {
                DynamicImage::ImageRgb8(image.to_rgb8()).write_with_encoder(encoder)
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

/// libwebp at its default effort (method 4), alpha compressed losslessly.
fn encode_webp_lossy(image: &DynamicImage, quality: u8) -> Result<Vec<u8>, ImagingError> {
    let internal = |what: String| ImagingError::Internal(format!("webp encoding failed: {what}"));
    let mut config =
        webp::WebPConfig::new().map_err(|()| internal("libwebp version mismatch".into()))?;
    config.lossless = 0;
    config.alpha_compression = 1;
    config.quality = f32::from(quality.min(100));
    let encoded = if image.color().has_alpha() {
        let rgba = image.to_rgba8();
        webp::Encoder::from_rgba(rgba.as_raw(), rgba.width(), rgba.height())
            .encode_advanced(&config)
            .map(|m| m.to_vec())
    } else {
        let rgb = match image {
            DynamicImage::ImageRgb8(rgb) => std::borrow::Cow::Borrowed(rgb),
            other => std::borrow::Cow::Owned(other.to_rgb8()),
        };
        webp::Encoder::from_rgb(rgb.as_raw(), rgb.width(), rgb.height())
            .encode_advanced(&config)
            .map(|m| m.to_vec())
    };
    encoded.map_err(|e| internal(format!("{e:?}")))
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
                Encoding::jpeg(90),
                &rgb,
                image::ImageFormat::Jpeg,
                ColorType::Rgb8,
            ),
            (
                Encoding::jpeg(0),
                &rgba,
                image::ImageFormat::Jpeg,
                ColorType::Rgb8,
            ),
            (
                Encoding::jpeg(255),
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
            (
                Encoding::Webp { quality: 80 },
                &rgb,
                image::ImageFormat::WebP,
                ColorType::Rgb8,
            ),
            (
                Encoding::Webp { quality: 80 },
                &rgba,
                image::ImageFormat::WebP,
                ColorType::Rgba8,
            ),
            (
                Encoding::Webp { quality: 80 },
                &grey16,
                image::ImageFormat::WebP,
                ColorType::Rgb8,
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

    /// Lossy WebP is lossy but close, and far smaller than lossless on a
    /// photo-like image; too wide an output is refused, not panicked on.
    #[test]
    fn lossy_webp_is_close_and_bounded() {
        let photo = DynamicImage::ImageRgb8(RgbImage::from_fn(256, 192, |x, y| {
            image::Rgb([(x ^ y) as u8, (x * 2) as u8, (y * 3) as u8])
        }));
        let lossy = encode(&photo, Encoding::Webp { quality: 90 }).unwrap();
        let back = image::load_from_memory(&lossy).unwrap().to_rgb8();
        let mean_error = back
            .as_raw()
            .iter()
            .zip(photo.to_rgb8().as_raw())
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / back.as_raw().len() as f64;
        assert!(mean_error < 8.0, "mean error {mean_error}");
        let wide = DynamicImage::new_rgb8(16384, 1);
        for encoding in [Encoding::Webp { quality: 80 }, Encoding::WebpLossless] {
            assert_eq!(encode(&wide, encoding).unwrap_err().code(), "too_large");
        }
    }

    /// No AVIF decoder is built in, so the output is checked by its
    /// container: an ISO-BMFF `ftyp` box with the `avif` brand, which our
    /// own sniffer recognises, and a size that shows pixels went in.
    #[test]
    fn avif_is_written_with_and_without_alpha() {
        for image in [
            gradient_rgba(97, 61),
            DynamicImage::ImageRgb8(gradient_rgba(97, 61).to_rgb8()),
        ] {
            let bytes = encode(
                &image,
                Encoding::Avif {
                    quality: 60,
                    speed: 10,
                },
            )
            .unwrap();
            assert_eq!(crate::sniff(&bytes), crate::Sniffed::Other("avif"));
            assert!(bytes.len() > 200, "{} bytes", bytes.len());
        }
    }

    #[test]
    fn jpeg_flattens_alpha_onto_white() {
        let clear = DynamicImage::ImageRgba8(RgbaImage::from_pixel(16, 16, Rgba([0, 0, 0, 0])));
        let bytes = encode(&clear, Encoding::jpeg(95)).unwrap();
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert!(
            back.pixels().all(|p| p.0.iter().all(|&c| c >= 250)),
            "transparent black must become white"
        );
    }

    #[test]
    fn mime_and_extension() {
        let cases = [
            (Encoding::jpeg(80), "image/jpeg", "jpg"),
            (Encoding::Png, "image/png", "png"),
            (Encoding::WebpLossless, "image/webp", "webp"),
            (Encoding::Webp { quality: 75 }, "image/webp", "webp"),
            (
                Encoding::Avif {
                    quality: 70,
                    speed: 8,
                },
                "image/avif",
                "avif",
            ),
        ];
        for (encoding, mime, ext) in cases {
            assert_eq!((encoding.mime(), encoding.extension()), (mime, ext));
        }
    }
}

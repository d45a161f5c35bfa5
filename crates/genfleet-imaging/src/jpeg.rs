//! JPEG through libjpeg-turbo: decoding with DCT-domain shrink-on-load, and
//! the encoder we publish JPEG with.
//!
//! Owns the choice of the shrink-on-load factor and the translation of our
//! options to TurboJPEG parameters. It does not check limits, orientation or
//! colour profiles ([`crate::decode`] does, around it) and it leaves CMYK
//! and YCCK files to `image`'s decoder, which converts them to RGB.
//!
//! Why libjpeg-turbo: its SIMD Huffman decoder and IDCT are about twice as
//! fast as the pure-Rust decoder on 12 MP photos, and scaling inside the IDCT
//! (1/2, 1/4, 1/8) makes a 12 MP photo to a 1024 px thumbnail several times
//! cheaper, as libvips' shrink-on-load does. Its encoder does 4:2:0 chroma,
//! progressive and optimised Huffman tables, which `image`'s does not.

use image::{GrayImage, RgbImage};
use turbojpeg::{Colorspace, Compressor, Decompressor, Image, PixelFormat, ScalingFactor, Subsamp};

use crate::error::ImagingError;

/// Progressive JPEGs can hold thousands of tiny scans, each forcing a pass
/// over the whole coefficient buffer: a known CPU-exhaustion trick. Real
/// encoders write at most a few dozen; libjpeg-turbo's own tools use 500.
const MAX_SCANS: u32 = 500;

/// Chroma subsampling of an encoded JPEG.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChromaSubsampling {
    /// 4:2:0, a quarter of the chroma: smallest files, the camera default.
    #[serde(rename = "4:2:0")]
    Yuv420,
    /// 4:2:2, half the chroma horizontally.
    #[serde(rename = "4:2:2")]
    Yuv422,
    /// 4:4:4, full chroma: for graphics, text and saturated red edges.
    #[serde(rename = "4:4:4")]
    Yuv444,
}

/// Options of the JPEG encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JpegOptions {
    /// 1..=100; clamped.
    pub quality: u8,
    /// Progressive scans (smaller for large images, shows early in a
    /// browser) with optimised Huffman tables.
    pub progressive: bool,
    pub subsampling: ChromaSubsampling,
}

impl JpegOptions {
    /// Baseline 4:2:0 at `quality`: what cameras and libvips write.
    pub fn new(quality: u8) -> JpegOptions {
        JpegOptions {
            quality,
            progressive: false,
            subsampling: ChromaSubsampling::Yuv420,
        }
    }
}

/// A JPEG decoded by libjpeg-turbo.
pub(crate) struct Decoded {
    pub image: RgbImage,
    /// The DCT scale denominator used (1, 2, 4 or 8).
    pub shrink: u32,
}

/// The DCT scaling denominator for a stored `width` x `height` whose long
/// side must stay at least `fit_long_side`: the largest of 8, 4, 2 that
/// keeps the scaled long side at or above the target, else 1. The final
/// Lanczos pass then only ever shrinks, by less than 2x, so the result is as
/// sharp as a full decode while the IDCT does most of the work.
pub(crate) fn shrink_for(width: u32, height: u32, fit_long_side: Option<u32>) -> u32 {
    let Some(target) = fit_long_side else {
        return 1;
    };
    let long = width.max(height);
    [8u32, 4, 2]
        .into_iter()
        // libjpeg rounds scaled sizes up.
        .find(|d| long.div_ceil(*d) >= target)
        .unwrap_or(1)
}

/// Decodes a JPEG to 8-bit RGB, shrunk in the DCT domain by the factor
/// [`shrink_for`] picks. Returns `Ok(None)` for CMYK and YCCK files, which
/// the caller decodes with `image` instead.
///
/// `max_alloc` bounds the output buffer, checked before allocating it.
///
/// # Errors
/// [`ImagingError::Invalid`] when libjpeg-turbo cannot read the data;
/// [`ImagingError::TooLarge`] when the output would exceed `max_alloc`.
pub(crate) fn decode(
    bytes: &[u8],
    fit_long_side: Option<u32>,
    max_alloc: u64,
) -> Result<Option<Decoded>, ImagingError> {
    let invalid = |e: turbojpeg::Error| ImagingError::Invalid(format!("jpeg data is corrupt: {e}"));
    let mut decompressor = Decompressor::new()
        .map_err(|e| ImagingError::Internal(format!("libjpeg-turbo init failed: {e}")))?;
    let header = decompressor.read_header(bytes).map_err(invalid)?;
    if matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK) {
        return Ok(None);
    }
    let (width, height) = (
        u32::try_from(header.width).map_err(|_| too_wide(header.width))?,
        u32::try_from(header.height).map_err(|_| too_wide(header.height))?,
    );
    let shrink = shrink_for(width, height, fit_long_side);
    let scaling = ScalingFactor::new(1, shrink as usize);
    decompressor.set_scaling_factor(scaling).map_err(invalid)?;
    decompressor.set_scan_limit(MAX_SCANS).map_err(invalid)?;
    let scaled = header.scaled(scaling);
    let out_width = u32::try_from(scaled.width).map_err(|_| too_wide(scaled.width))?;
    let out_height = u32::try_from(scaled.height).map_err(|_| too_wide(scaled.height))?;
    let needed = u64::from(out_width) * u64::from(out_height) * 3;
    if needed > max_alloc {
        return Err(ImagingError::TooLarge(format!(
            "image needs {needed} bytes to decode, above the {max_alloc} byte limit"
        )));
    }
    let mut image = RgbImage::new(out_width, out_height);
    let pitch = scaled.width * 3;
    decompressor
        .decompress(
            bytes,
            Image {
                pixels: image.as_mut(),
                width: scaled.width,
                pitch,
                height: scaled.height,
                format: PixelFormat::RGB,
            },
        )
        .map_err(invalid)?;
    Ok(Some(Decoded { image, shrink }))
}

fn too_wide(side: usize) -> ImagingError {
    ImagingError::TooLarge(format!("jpeg side of {side} pixels does not fit 32 bits"))
}

/// Encodes RGB pixels as JPEG.
///
/// # Errors
/// [`ImagingError::Internal`]: our pixels and parameters, never the input's
/// fault.
pub(crate) fn encode_rgb(image: &RgbImage, options: JpegOptions) -> Result<Vec<u8>, ImagingError> {
    encode_pixels(
        image.as_raw(),
        image.width(),
        image.height(),
        PixelFormat::RGB,
        options,
    )
}

/// Encodes 8-bit grey pixels as a one-channel JPEG.
pub(crate) fn encode_gray(
    image: &GrayImage,
    options: JpegOptions,
) -> Result<Vec<u8>, ImagingError> {
    encode_pixels(
        image.as_raw(),
        image.width(),
        image.height(),
        PixelFormat::GRAY,
        options,
    )
}

fn encode_pixels(
    pixels: &[u8],
    width: u32,
    height: u32,
    format: PixelFormat,
    options: JpegOptions,
) -> Result<Vec<u8>, ImagingError> {
    let internal =
        |e: turbojpeg::Error| ImagingError::Internal(format!("jpeg encoding failed: {e}"));
    let mut compressor = Compressor::new().map_err(internal)?;
    compressor
        .set_quality(i32::from(options.quality.clamp(1, 100)))
        .map_err(internal)?;
    let subsamp = match (format, options.subsampling) {
        (PixelFormat::GRAY, _) => Subsamp::Gray,
        (_, ChromaSubsampling::Yuv420) => Subsamp::Sub2x2,
        (_, ChromaSubsampling::Yuv422) => Subsamp::Sub2x1,
        (_, ChromaSubsampling::Yuv444) => Subsamp::None,
    };
    compressor.set_subsamp(subsamp).map_err(internal)?;
    compressor
        .set_progressive(options.progressive)
        .map_err(internal)?;
    compressor
        .set_optimize(options.progressive)
        .map_err(internal)?;
    let channels = format.size();
    let width = width as usize;
    compressor
        .compress_to_vec(Image {
            pixels,
            width,
            pitch: width * channels,
            height: height as usize,
            format,
        })
        .map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrink_factor_keeps_the_target_reachable() {
        let cases = [
            // 4000 -> 2048: 1/2 would give 2000 < 2048, so no shrink.
            ((4000, 3000), Some(2048), 1),
            ((4000, 3000), Some(2000), 2),
            ((4000, 3000), Some(1024), 2),
            ((4000, 3000), Some(1000), 4),
            ((4000, 3000), Some(512), 4),
            ((4000, 3000), Some(500), 8),
            ((4000, 3000), Some(256), 8),
            ((2667, 4000), Some(1000), 4),
            // Rounded up: 4001 / 2 = 2001 (libjpeg's ceiling).
            ((4001, 10), Some(2001), 2),
            ((4000, 3000), None, 1),
            ((100, 100), Some(256), 1),
        ];
        for ((w, h), target, want) in cases {
            assert_eq!(shrink_for(w, h, target), want, "{w}x{h} -> {target:?}");
        }
    }

    fn noisy(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let v = (x * 7 + y * 13) as u8;
            image::Rgb([v, v.wrapping_mul(3), 255 - v])
        })
    }

    #[test]
    fn encode_then_decode_scaled() {
        let img = noisy(401, 300);
        for subsampling in [
            ChromaSubsampling::Yuv420,
            ChromaSubsampling::Yuv422,
            ChromaSubsampling::Yuv444,
        ] {
            for progressive in [false, true] {
                let options = JpegOptions {
                    quality: 90,
                    progressive,
                    subsampling,
                };
                let bytes = encode_rgb(&img, options).unwrap();
                let header = turbojpeg::read_header(&bytes).unwrap();
                assert_eq!(header.is_progressive, progressive, "{options:?}");
                let want = match subsampling {
                    ChromaSubsampling::Yuv420 => Subsamp::Sub2x2,
                    ChromaSubsampling::Yuv422 => Subsamp::Sub2x1,
                    ChromaSubsampling::Yuv444 => Subsamp::None,
                };
                assert_eq!(header.subsamp, want, "{options:?}");
                let full = decode(&bytes, None, u64::MAX).unwrap().unwrap();
                assert_eq!((full.image.dimensions(), full.shrink), ((401, 300), 1));
                let half = decode(&bytes, Some(200), u64::MAX).unwrap().unwrap();
                assert_eq!((half.image.dimensions(), half.shrink), ((201, 150), 2));
            }
        }
        let gray = GrayImage::from_fn(64, 32, |x, _| image::Luma([x as u8 * 4]));
        let bytes = encode_gray(&gray, JpegOptions::new(80)).unwrap();
        assert_eq!(
            turbojpeg::read_header(&bytes).unwrap().subsamp,
            Subsamp::Gray
        );
        // Grey JPEGs decode to RGB like everything else.
        let back = decode(&bytes, None, u64::MAX).unwrap().unwrap();
        assert_eq!(back.image.dimensions(), (64, 32));
    }

    #[test]
    fn output_buffer_is_checked_before_allocation() {
        let bytes = encode_rgb(&noisy(100, 100), JpegOptions::new(80)).unwrap();
        let err = decode(&bytes, None, 100 * 100 * 3 - 1)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.code(), "too_large", "{err}");
        // At 1/2 the same budget suffices.
        assert!(decode(&bytes, Some(50), 100 * 100 * 3 - 1).is_ok());
    }

    #[test]
    fn garbage_is_invalid() {
        for bytes in [&b"\xFF\xD8\xFF\xE0garbage"[..], b"\xFF\xD8"] {
            let err = decode(bytes, None, u64::MAX).map(|_| ()).unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{err}");
        }
    }
}

//! Size limits and the cheap, header-only check against them.
//!
//! Owns [`Limits`] and [`inspect`], which must reject decompression bombs
//! before a single pixel is allocated: it reads only the container header
//! (PNG IHDR, JPEG SOF, ...) and the sizes of the metadata structures the
//! decoders read whole (see `metadata.rs`). It does not decode pixels and
//! does not check that the rest of the file is well formed;
//! [`crate::decode_sanitised`] does.

use std::io::Cursor;

use crate::error::ImagingError;
use crate::metadata;
use crate::sniff::{sniff, ImageFormat, Sniffed};
use crate::structure;

/// Upper bounds applied to untrusted input.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted input, in bytes.
    pub max_bytes: u64,
    /// Largest stored width, in pixels.
    pub max_width: u32,
    /// Largest stored height, in pixels.
    pub max_height: u32,
    /// Largest stored width x height.
    pub max_pixels: u64,
    /// Most memory a decoder may allocate at once, passed to `image::Limits`
    /// and checked by us against the output buffer before decoding.
    pub max_decode_alloc_bytes: u64,
    /// Most frames an animated GIF, PNG or WebP may hold. Only the first
    /// frame is decoded, but a file of 100,000 one-pixel frames is still a
    /// parser workload nobody uploads in good faith.
    pub max_frames: u64,
    /// Most bytes any one metadata structure a decoder reads whole may take
    /// once inflated or reassembled: a PNG iCCP profile after inflating
    /// (and all of a PNG's stored metadata chunks together), a WebP ICCP,
    /// EXIF or XMP chunk, a GIF ICC or XMP extension, a JPEG ICC profile,
    /// a TIFF tag's value list as the tiff crate holds it. Checked by
    /// [`inspect`] before any decoder is built; see `metadata.rs`.
    pub max_metadata_bytes: u64,
}

impl Default for Limits {
    /// 50 MiB of input covers any camera JPEG and most PNG screenshots; 16384
    /// px per side and 50 MP cover 48 MP phone sensors while keeping one
    /// RGBA8 decode at or below 200 MB; 1 GiB of decoder allocation leaves
    /// room for 16-bit intermediates of a 50 MP image; 1,000 frames is 40 s
    /// of a 25 fps animation; 16 MiB of metadata is 8x the largest real
    /// ICC profiles (LUT-based printer profiles, ~2 MB) and holds the
    /// largest profile a JPEG can carry (255 APP2 segments, 16.7 MB).
    fn default() -> Self {
        Limits {
            max_bytes: 50 * 1024 * 1024,
            max_width: 16384,
            max_height: 16384,
            max_pixels: 50_000_000,
            max_decode_alloc_bytes: 1024 * 1024 * 1024,
            max_frames: 1000,
            max_metadata_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What [`inspect`] learned from the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Type from the magic bytes.
    pub format: ImageFormat,
    /// Stored width, before EXIF orientation is applied.
    pub width: u32,
    /// Stored height, before EXIF orientation is applied.
    pub height: u32,
    /// Frames in the container (1 for a still image).
    pub frames: u64,
}

/// Sniffs `bytes` and checks them against `limits` from the header alone.
///
/// # Errors
///
/// - [`ImagingError::Invalid`] for empty input, a header the decoder cannot
///   read, or a zero width or height.
/// - [`ImagingError::TooLarge`] when the input bytes, width, height, pixel
///   count, frame count or a metadata structure (see
///   [`Limits::max_metadata_bytes`]) are above `limits`.
/// - [`ImagingError::UnsupportedType`] when the magic bytes are not an image
///   type we decode.
pub fn inspect(bytes: &[u8], limits: &Limits) -> Result<ImageInfo, ImagingError> {
    if bytes.is_empty() {
        return Err(ImagingError::Invalid("input is empty (0 bytes)".into()));
    }
    let len = bytes.len() as u64;
    if len > limits.max_bytes {
        return Err(ImagingError::TooLarge(format!(
            "input is {len} bytes, above the {} byte limit",
            limits.max_bytes
        )));
    }
    let format = match sniff(bytes) {
        Sniffed::Image(format) => format,
        Sniffed::Other(found) => {
            return Err(ImagingError::UnsupportedType {
                found: found.into(),
            })
        }
    };

    // Before any decoder is built: building one reads (and for PNG
    // inflates) metadata sized by what the file claims.
    metadata::check(format, bytes, limits)?;

    // JPEG frame size is read from SOF and PNG's from IHDR directly (see
    // structure.rs); other formats ask their decoder for the header only.
    let dimensions = match format {
        ImageFormat::Jpeg => structure::jpeg_dimensions(bytes),
        ImageFormat::Png => structure::png_dimensions(bytes),
        _ => None,
    };
    let (width, height) = match dimensions {
        Some(dimensions) => dimensions,
        None => header_dimensions(bytes, format, limits)?,
    };

    check_dimensions(width, height, limits)?;
    let frames = structure::frame_count(format, bytes);
    if frames > limits.max_frames {
        return Err(ImagingError::TooLarge(format!(
            "image has {frames} frames, above the {} frame limit",
            limits.max_frames
        )));
    }
    Ok(ImageInfo {
        format,
        width,
        height,
        frames,
    })
}

/// Dimensions from the format's decoder, which parses only the header.
fn header_dimensions(
    bytes: &[u8],
    format: ImageFormat,
    limits: &Limits,
) -> Result<(u32, u32), ImagingError> {
    // No size limits here on purpose: we want the real dimensions to
    // produce our own error message, and constructing a decoder reads only
    // the header, so nothing proportional to the pixel count is allocated.
    // What a header read may allocate is metadata, so that is its budget
    // (the png decoder, for one, inflates a profile while reading it).
    let mut header_limits = image::Limits::no_limits();
    header_limits.max_alloc = Some(limits.max_metadata_bytes);
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format.to_image());
    reader.limits(header_limits);
    reader
        .into_dimensions()
        .map_err(|e| match ImagingError::from_decode(e) {
            ImagingError::Invalid(msg) => {
                ImagingError::Invalid(format!("cannot read {} header: {msg}", format.name()))
            }
            other => other,
        })
}

/// Checks stored dimensions against `limits`.
pub(crate) fn check_dimensions(
    width: u32,
    height: u32,
    limits: &Limits,
) -> Result<(), ImagingError> {
    if width == 0 || height == 0 {
        return Err(ImagingError::Invalid(format!(
            "image is {width}x{height} pixels, expected a non-zero width and height"
        )));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ImagingError::TooLarge(format!(
            "image is {width}x{height} pixels ({:.1} megapixels), above the {:.1} megapixel limit",
            pixels as f64 / 1e6,
            limits.max_pixels as f64 / 1e6
        )));
    }
    if width > limits.max_width {
        return Err(ImagingError::TooLarge(format!(
            "image is {width}x{height} pixels, above the {} pixel width limit",
            limits.max_width
        )));
    }
    if height > limits.max_height {
        return Err(ImagingError::TooLarge(format!(
            "image is {width}x{height} pixels, above the {} pixel height limit",
            limits.max_height
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_paths::{read, CORPUS, HOSTILE};

    #[test]
    fn bombs_are_rejected_from_the_header() {
        let limits = Limits::default();
        for name in [
            "h02_bomb_60000x60000.png",
            "h02b_bomb_header_only_60000x60000_rgba.png",
            "h08_jpeg_header_65500x65500.jpg",
        ] {
            let err = inspect(&read(HOSTILE, name), &limits).unwrap_err();
            assert_eq!(err.code(), "too_large", "{name}: {err}");
        }
        let err = inspect(&read(HOSTILE, "h02_bomb_60000x60000.png"), &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image is 60000x60000 pixels (3600.0 megapixels), above the 50.0 megapixel limit"
        );
    }

    #[test]
    fn header_dimensions_are_stored_dimensions() {
        let limits = Limits::default();
        // p08 is displayed portrait, but inspect reports the stored landscape size.
        let cases = [
            (
                "photos/p08_dogs_portrait_orient6_1000x667.jpg",
                ImageFormat::Jpeg,
                1000,
                667,
            ),
            (
                "formats/f02_cups_exif_gps_512x320.png",
                ImageFormat::Png,
                512,
                320,
            ),
            (
                "formats/f08_clock_cmyk_1440x1080.jpg",
                ImageFormat::Jpeg,
                1440,
                1080,
            ),
        ];
        for (name, format, width, height) in cases {
            let info = inspect(&read(CORPUS, name), &limits).unwrap();
            assert_eq!(
                info,
                ImageInfo {
                    format,
                    width,
                    height,
                    frames: 1,
                },
                "{name}"
            );
        }
    }

    #[test]
    fn each_limit_is_enforced() {
        let photo = read(CORPUS, "photos/p01_foliage_sky_1000x750.jpg");
        let base = Limits::default();
        let cases = [
            (
                Limits {
                    max_bytes: 1000,
                    ..base.clone()
                },
                "input is 172009 bytes, above the 1000 byte limit",
            ),
            (
                Limits {
                    max_width: 999,
                    ..base.clone()
                },
                "image is 1000x750 pixels, above the 999 pixel width limit",
            ),
            (
                Limits {
                    max_height: 749,
                    ..base.clone()
                },
                "image is 1000x750 pixels, above the 749 pixel height limit",
            ),
            (
                Limits {
                    max_pixels: 600_000,
                    ..base.clone()
                },
                "image is 1000x750 pixels (0.8 megapixels), above the 0.6 megapixel limit",
            ),
        ];
        for (limits, message) in cases {
            let err = inspect(&photo, &limits).unwrap_err();
            assert_eq!(
                (err.code(), err.to_string().as_str()),
                ("too_large", message)
            );
        }
    }

    #[test]
    fn empty_and_garbage_headers_are_invalid() {
        let limits = Limits::default();
        let cases: &[(&[u8], &str)] = &[
            (b"", "invalid_input"),
            (b"\x89PNG\r\n\x1a\n", "invalid_input"),
            (b"\xFF\xD8\xFF", "invalid_input"),
            (b"GIF89a", "invalid_input"),
            (b"<svg/>", "unsupported_type"),
        ];
        for (bytes, code) in cases {
            let err = inspect(bytes, &limits).unwrap_err();
            assert_eq!(err.code(), *code, "{bytes:?}: {err}");
        }
    }
}

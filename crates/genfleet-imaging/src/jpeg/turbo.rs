//! The `simd-c` backend: libjpeg-turbo, built from its bundled source with
//! cmake and nasm. Decodes with DCT-domain shrink-on-load and encodes.
//!
//! Why libjpeg-turbo: scaling inside the IDCT (1/2, 1/4, 1/8) makes a 12 MP
//! photo to a 1024 px thumbnail 2.6x cheaper, as libvips' shrink-on-load
//! does, and its SIMD encoder is about 3x faster than jpeg-encoder. Its
//! scan limit counts baseline scans too, whatever its message says.

use image::{GrayImage, RgbImage};
use turbojpeg::{Colorspace, Compressor, Decompressor, Image, PixelFormat, ScalingFactor, Subsamp};

use super::{rgb_buffer_size, shrink_for, ChromaSubsampling, Decoded, JpegOptions, MAX_SCANS};
use crate::error::ImagingError;

/// [`super::decode`]: shrunk in the DCT domain by the factor [`shrink_for`]
/// picks, with libjpeg-turbo's scan limit set to [`MAX_SCANS`].
pub(super) fn decode(
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
    rgb_buffer_size(out_width, out_height, max_alloc)?;
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

pub(super) fn encode_rgb(image: &RgbImage, options: JpegOptions) -> Result<Vec<u8>, ImagingError> {
    encode_pixels(
        image.as_raw(),
        image.width(),
        image.height(),
        PixelFormat::RGB,
        options,
    )
}

pub(super) fn encode_gray(
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

//! The default backend, pure Rust: zune-jpeg decodes (AVX2/SSE paths picked
//! at run time), jpeg-encoder encodes (AVX2 colour conversion and DCT with
//! its `simd` feature, picked at run time).
//!
//! zune-jpeg has no DCT-domain scaling, so every decode is at the stored
//! size (shrink 1) and the caller's Lanczos pass does all the shrinking.
//!
//! The scan limit: zune-jpeg counts the scans of a progressive file and
//! stops with an error past `DecoderOptions::jpeg_set_max_scans` (its
//! default is 100); we set it to [`MAX_SCANS`], libjpeg-turbo's figure. It
//! has no limit for baseline files, and needs one: a three-component
//! baseline file whose first scan holds one component restarts its row
//! loop at every further SOS, and fills a scan whose data ends early with
//! zero bits, so 12-byte scans each cost a row of blocks (100,000 of them in
//! 1.1 MB took 0.76 s at 4000x3000 here, a 50 MB upload would take half a
//! minute). libjpeg-turbo's limit counts every scan, so before decoding we
//! count the SOS segments with `structure`'s marker walk (about 0.5 ms for
//! a 12 MP photo) and refuse more than [`MAX_SCANS`] of any kind. At the
//! limit, a 12 MP progressive file of 500 full scans decodes in about 0.9 s
//! here (libjpeg-turbo: 0.57 s).
//!
//! Strict mode makes damage an error (a bad table, data running out before
//! the end of the file), with one gap: a scan cut short by a marker, EOI
//! included, is finished with zero bits where libjpeg-turbo fails ("premature
//! end of data segment"). A file cut in transfer loses its EOI, which
//! `decode.rs` refuses before any decoder runs; the test
//! `a_scan_cut_short_before_its_end_marker` pins the difference.

use image::{GrayImage, RgbImage};
use jpeg_encoder::{ChromaSubsamplingMethod, ColorType, Encoder, EncodingError, SamplingFactor};
use zune_jpeg::errors::DecodeErrors;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::{rgb_buffer_size, ChromaSubsampling, Decoded, JpegOptions, MAX_SCANS};
use crate::error::ImagingError;
use crate::structure;

/// [`super::decode`] at the stored size: `_fit_long_side` is the caller's
/// to reach. Headers first, so CMYK/YCCK are handed back and the output
/// buffer is checked before anything is allocated for pixels.
pub(super) fn decode(
    bytes: &[u8],
    _fit_long_side: Option<u32>,
    max_alloc: u64,
) -> Result<Option<Decoded>, ImagingError> {
    let invalid = |e: DecodeErrors| ImagingError::Invalid(format!("jpeg data is corrupt: {e}"));
    let limit = MAX_SCANS as usize;
    if structure::jpeg_scan_count(bytes, limit) > limit {
        return Err(ImagingError::Invalid(format!(
            "jpeg data is refused: more than {MAX_SCANS} scans"
        )));
    }
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .jpeg_set_max_scans(MAX_SCANS as usize)
        // Damage is an error, as libjpeg-turbo's warnings are for us, not
        // grey-filled rows.
        .set_strict_mode(true)
        // The caller's limits decide the size (from the frame header, before
        // this runs); zune-jpeg's own default caps at 16384 px.
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX));
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(invalid)?;
    if matches!(
        decoder.input_colorspace(),
        Some(ColorSpace::CMYK | ColorSpace::YCCK)
    ) {
        return Ok(None);
    }
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| ImagingError::Invalid("jpeg data is corrupt: no frame header".into()))?;
    // Both sides come from 16-bit header fields.
    let (width, height) = (width as u32, height as u32);
    let mut pixels = vec![0; rgb_buffer_size(width, height, max_alloc)?];
    decoder.decode_into(&mut pixels).map_err(invalid)?;
    let image = RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| ImagingError::Internal("jpeg output buffer has the wrong size".into()))?;
    Ok(Some(Decoded { image, shrink: 1 }))
}

pub(super) fn encode_rgb(image: &RgbImage, options: JpegOptions) -> Result<Vec<u8>, ImagingError> {
    encode_pixels(
        image.as_raw(),
        image.width(),
        image.height(),
        ColorType::Rgb,
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
        ColorType::Luma,
        options,
    )
}

fn encode_pixels(
    pixels: &[u8],
    width: u32,
    height: u32,
    color: ColorType,
    options: JpegOptions,
) -> Result<Vec<u8>, ImagingError> {
    let side = |v: u32| {
        u16::try_from(v).map_err(|_| {
            ImagingError::Internal(format!(
                "jpeg encoding failed: {v} px is beyond JPEG's 65535"
            ))
        })
    };
    let (width, height) = (side(width)?, side(height)?);
    let mut out = Vec::with_capacity(pixels.len() / 8);
    let mut encoder = Encoder::new(&mut out, options.quality.clamp(1, 100));
    // One-component (grey) images ignore this.
    encoder.set_sampling_factor(match options.subsampling {
        ChromaSubsampling::Yuv420 => SamplingFactor::R_4_2_0,
        ChromaSubsampling::Yuv422 => SamplingFactor::R_4_2_2,
        ChromaSubsampling::Yuv444 => SamplingFactor::R_4_4_4,
    });
    // The default takes each block's top-left pixel, which aliases; the box
    // average is what libjpeg does.
    encoder.set_chroma_subsampling_method(ChromaSubsamplingMethod::Average);
    encoder.set_progressive(options.progressive);
    encoder.set_optimized_huffman_tables(options.progressive);
    encoder
        .encode(pixels, width, height, color)
        .map_err(|e: EncodingError| ImagingError::Internal(format!("jpeg encoding failed: {e}")))?;
    Ok(out)
}

//! Small structural checks on container bytes that the decoders are too
//! lenient (or too eager) about.
//!
//! Owns the JPEG marker walk (frame size from SOF; completeness via EOI) and
//! the PNG IEND check. It does not validate entropy-coded or compressed data;
//! the decoders do that.
//!
//! One submodule per container format ([`jpeg`], [`png`], [`gif`], [`tiff`],
//! [`webp`]); this file re-exports what the rest of the crate calls and
//! keeps [`frame_count`], which dispatches on the sniffed format.

mod gif;
mod jpeg;
mod png;
#[cfg(test)]
mod tests;
mod tiff;
mod webp;

use self::gif::gif_frames;
pub(crate) use self::gif::gif_largest_metadata_extension;
pub(crate) use self::jpeg::{
    jpeg_dimensions, jpeg_icc_bytes, jpeg_is_complete, jpeg_metadata, strip_jpeg,
};
// Only the pure-Rust JPEG decoder counts scans; see `jpeg_scan_count`.
#[cfg_attr(feature = "simd-c", allow(unused_imports))]
pub(crate) use self::jpeg::jpeg_scan_count;
use self::png::apng_frames;
pub(crate) use self::png::{png_dimensions, png_is_complete};
pub(crate) use self::tiff::{tiff_largest_tag, tiff_oversized_jpeg_frame};
use self::webp::webp_frames;

/// How many frames an animated GIF, PNG (APNG) or WebP holds, read from the
/// container without decoding; 1 for still images and other formats.
///
/// GIF has no frame count in its header, so its blocks are walked (each is
/// length-prefixed, so this is a linear skip over the file). APNG states its
/// count in `acTL`; animated WebP has one `ANMF` chunk per frame. Damaged
/// structure stops the count where it breaks: the decoder reports damage.
pub(crate) fn frame_count(format: crate::sniff::ImageFormat, bytes: &[u8]) -> u64 {
    use crate::sniff::ImageFormat;
    let counted = match format {
        ImageFormat::Gif => gif_frames(bytes),
        ImageFormat::Png => apng_frames(bytes),
        ImageFormat::Webp => webp_frames(bytes),
        _ => None,
    };
    counted.unwrap_or(0).max(1)
}

//! JPEG decoding and the encoder we publish JPEG with, behind one interface
//! with two backends chosen at build time.
//!
//! Owns our JPEG options and the backend choice. It does not check limits,
//! orientation or colour profiles ([`crate::decode`] does, around it) and it
//! leaves CMYK and YCCK files to `image`'s decoder, which converts them to
//! RGB.
//!
//! - Default, pure Rust (`pure.rs`): zune-jpeg decodes, jpeg-encoder
//!   encodes. Needs nothing but the Rust toolchain. No DCT-domain scaling:
//!   [`decode`] always returns the full size (shrink 1) and the caller's
//!   Lanczos pass does all the shrinking.
//! - `simd-c` feature (`turbo.rs`): libjpeg-turbo, built from its bundled
//!   source with cmake and nasm. Its encoder is about 3x faster, and
//!   scaling inside the IDCT (1/2, 1/4, 1/8) makes a 12 MP photo to a
//!   1024 px thumbnail 2.6x cheaper, as libvips' shrink-on-load does; a
//!   full-size decode costs about the same with either. The figures are in
//!   the crate's `benches/README.md` (`benches/jpeg.rs`).
//!
//! Both refuse files with more than [`MAX_SCANS`] scans, check
//! the output buffer against `max_alloc` before allocating it, fail on
//! damaged data (with one difference, see `pure.rs`), and write 4:2:0, 4:2:2
//! or 4:4:4 chroma, baseline or progressive with optimised Huffman tables,
//! and grey as one channel.

use image::{GrayImage, RgbImage};

use crate::error::ImagingError;

#[cfg(not(feature = "simd-c"))]
mod pure;
#[cfg(feature = "simd-c")]
mod turbo;

#[cfg(not(feature = "simd-c"))]
use pure as backend;
#[cfg(feature = "simd-c")]
use turbo as backend;

/// Progressive JPEGs can hold thousands of tiny scans, each forcing a pass
/// over the whole coefficient buffer: a known CPU-exhaustion trick (and
/// baseline ones too, for zune-jpeg: see `pure.rs`). Real encoders write at
/// most a few dozen; libjpeg-turbo's own tools use 500. Both backends count
/// every scan, baseline or progressive.
const MAX_SCANS: u32 = 500;

/// Whether [`decode`] shrinks in the DCT domain (libjpeg-turbo) or always
/// returns the stored size (the pure-Rust backend): for the tests, which
/// check what each backend promises.
#[cfg(test)]
pub(crate) const SHRINKS_ON_LOAD: bool = cfg!(feature = "simd-c");

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

/// A decoded JPEG.
pub(crate) struct Decoded {
    pub image: RgbImage,
    /// The DCT scale denominator used (1, 2, 4 or 8); always 1 from the
    /// pure-Rust backend.
    pub shrink: u32,
}

/// The DCT scaling denominator for a stored `width` x `height` whose long
/// side must stay at least `fit_long_side`: the largest of 8, 4, 2 that
/// keeps the scaled long side at or above the target, else 1. The final
/// Lanczos pass then only ever shrinks, by less than 2x, so the result is as
/// sharp as a full decode while the IDCT does most of the work.
///
/// Only libjpeg-turbo scales; the function stays in both builds so its
/// arithmetic is tested in both.
#[cfg_attr(not(feature = "simd-c"), allow(dead_code))]
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

/// Decodes a JPEG to 8-bit RGB. With libjpeg-turbo it is shrunk in the DCT
/// domain by the factor [`shrink_for`] picks; the pure-Rust backend returns
/// the stored size. Returns `Ok(None)` for CMYK and YCCK files, which the
/// caller decodes with `image` instead.
///
/// `max_alloc` bounds the output buffer, checked before allocating it.
/// Every scan is decoded in full either way (libjpeg-turbo reduces only the
/// IDCT), so success proves the entropy-coded data is sound.
///
/// # Errors
/// [`ImagingError::Invalid`] when the data cannot be read or has more than
/// [`MAX_SCANS`] scans; [`ImagingError::TooLarge`] when the output would
/// exceed `max_alloc`.
pub(crate) fn decode(
    bytes: &[u8],
    fit_long_side: Option<u32>,
    max_alloc: u64,
) -> Result<Option<Decoded>, ImagingError> {
    backend::decode(bytes, fit_long_side, max_alloc)
}

/// Encodes RGB pixels as JPEG.
///
/// # Errors
/// [`ImagingError::Internal`]: our pixels and parameters, never the input's
/// fault.
pub(crate) fn encode_rgb(image: &RgbImage, options: JpegOptions) -> Result<Vec<u8>, ImagingError> {
    backend::encode_rgb(image, options)
}

/// Encodes 8-bit grey pixels as a one-channel JPEG.
///
/// # Errors
/// As [`encode_rgb`].
pub(crate) fn encode_gray(
    image: &GrayImage,
    options: JpegOptions,
) -> Result<Vec<u8>, ImagingError> {
    backend::encode_gray(image, options)
}

/// The bytes of an RGB output buffer of `width` x `height`, or
/// [`ImagingError::TooLarge`] above `max_alloc`.
fn rgb_buffer_size(width: u32, height: u32, max_alloc: u64) -> Result<usize, ImagingError> {
    let needed = u64::from(width) * u64::from(height) * 3;
    if needed > max_alloc {
        return Err(ImagingError::TooLarge(format!(
            "image needs {needed} bytes to decode, above the {max_alloc} byte limit"
        )));
    }
    usize::try_from(needed).map_err(|_| {
        ImagingError::TooLarge(format!("image needs {needed} bytes, beyond this machine"))
    })
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

    /// A JPEG's frame as its headers state it, read without either backend.
    struct Frame {
        /// The SOF marker: C0 baseline, C1 extended, C2 progressive.
        sof: u8,
        /// Each component's (horizontal, vertical) sampling factors.
        sampling: Vec<(u8, u8)>,
        /// How many SOS markers the file holds.
        scans: usize,
    }

    /// Walks every segment, skipping the entropy-coded data after each SOS
    /// (where FF is followed by 00 or a restart marker).
    fn frame(bytes: &[u8]) -> Frame {
        let mut found = Frame {
            sof: 0,
            sampling: Vec::new(),
            scans: 0,
        };
        let mut pos = 2;
        while bytes[pos + 1] != 0xD9 {
            assert_eq!(bytes[pos], 0xFF, "marker expected at {pos}");
            let marker = bytes[pos + 1];
            let len = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
            let data = &bytes[pos + 4..pos + 2 + len];
            pos += 2 + len;
            match marker {
                0xC0..=0xC2 => {
                    found.sof = marker;
                    // precision, height (2), width (2), count, then
                    // (id, HV, table) per component.
                    found.sampling = data[6..]
                        .chunks(3)
                        .take(usize::from(data[5]))
                        .map(|c| (c[1] >> 4, c[1] & 0x0F))
                        .collect();
                }
                0xDA => {
                    found.scans += 1;
                    while bytes[pos] != 0xFF || matches!(bytes[pos + 1], 0x00 | 0xD0..=0xD7) {
                        pos += 1;
                    }
                }
                _ => {}
            }
        }
        found
    }

    fn noisy(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let v = (x * 7 + y * 13) as u8;
            image::Rgb([v, v.wrapping_mul(3), 255 - v])
        })
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        let sum: u64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum();
        sum as f64 / a.len() as f64
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
                let header = frame(&bytes);
                assert_eq!(header.sof == 0xC2, progressive, "{options:?}");
                assert_eq!(header.scans > 1, progressive, "{options:?}");
                let luma = match subsampling {
                    ChromaSubsampling::Yuv420 => (2, 2),
                    ChromaSubsampling::Yuv422 => (2, 1),
                    ChromaSubsampling::Yuv444 => (1, 1),
                };
                assert_eq!(header.sampling, [luma, (1, 1), (1, 1)], "{options:?}");
                let full = decode(&bytes, None, u64::MAX).unwrap().unwrap();
                assert_eq!((full.image.dimensions(), full.shrink), ((401, 300), 1));
                // libjpeg-turbo shrinks in the DCT domain; the pure-Rust
                // backend decodes in full and leaves the shrink to the caller.
                let half = decode(&bytes, Some(200), u64::MAX).unwrap().unwrap();
                let want = if SHRINKS_ON_LOAD {
                    ((201, 150), 2)
                } else {
                    ((401, 300), 1)
                };
                assert_eq!((half.image.dimensions(), half.shrink), want);
            }
        }
        let gray = GrayImage::from_fn(64, 32, |x, _| image::Luma([x as u8 * 4]));
        let bytes = encode_gray(&gray, JpegOptions::new(80)).unwrap();
        assert_eq!(frame(&bytes).sampling.len(), 1);
        // Grey JPEGs decode to RGB like everything else.
        let back = decode(&bytes, None, u64::MAX).unwrap().unwrap();
        assert_eq!(back.image.dimensions(), (64, 32));
        let grey_again: Vec<u8> = back.image.pixels().map(|p| p[0]).collect();
        assert!(back.image.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
        let diff = mean_abs_diff(&grey_again, gray.as_raw());
        assert!(diff < 2.0, "grey round trip differs by {diff}");
    }

    /// The encoder writes the colours it was given, and the decoder reads
    /// them back in the same channel order, at every subsampling.
    #[test]
    fn colours_survive_a_round_trip() {
        let img = RgbImage::from_fn(96, 64, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, 200 - (x + y) as u8])
        });
        for subsampling in [
            ChromaSubsampling::Yuv420,
            ChromaSubsampling::Yuv422,
            ChromaSubsampling::Yuv444,
        ] {
            for progressive in [false, true] {
                let options = JpegOptions {
                    quality: 95,
                    progressive,
                    subsampling,
                };
                let bytes = encode_rgb(&img, options).unwrap();
                let back = decode(&bytes, None, u64::MAX).unwrap().unwrap().image;
                let diff = mean_abs_diff(back.as_raw(), img.as_raw());
                assert!(diff < 2.0, "{options:?}: differs by {diff}");
            }
        }
    }

    #[test]
    fn output_buffer_is_checked_before_allocation() {
        let bytes = encode_rgb(&noisy(100, 100), JpegOptions::new(80)).unwrap();
        let err = decode(&bytes, None, 100 * 100 * 3 - 1)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.code(), "too_large", "{err}");
        // Shrunk to 1/2 by libjpeg-turbo the same budget suffices; the
        // pure-Rust backend still needs the full buffer.
        let scaled = decode(&bytes, Some(50), 100 * 100 * 3 - 1).map(|_| ());
        if SHRINKS_ON_LOAD {
            assert!(scaled.is_ok());
        } else {
            assert_eq!(scaled.unwrap_err().code(), "too_large");
        }
        assert!(decode(&bytes, None, 100 * 100 * 3).is_ok());
    }

    #[test]
    fn garbage_is_invalid() {
        let mut broken = encode_rgb(&noisy(64, 64), JpegOptions::new(80)).unwrap();
        // A Huffman table with more codes than lengths allow.
        let dht = broken.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
        broken[dht + 5..dht + 21].fill(0xFF);
        for bytes in [&b"\xFF\xD8\xFF\xE0garbage"[..], b"\xFF\xD8", &broken] {
            let err = decode(bytes, None, u64::MAX).map(|_| ()).unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{err}");
        }
    }

    /// Entropy-coded data cut in half with the end marker still after it
    /// (a real truncation loses the EOI too, and `decode.rs` refuses that
    /// before any decoder runs). libjpeg-turbo's "premature end of data
    /// segment" fails the decode; zune-jpeg, even in strict mode, fills the
    /// rest of the scan with zero bits and succeeds. A known difference of
    /// the pure-Rust backend: if zune-jpeg starts refusing this, make both
    /// arms expect `invalid_input`.
    #[test]
    fn a_scan_cut_short_before_its_end_marker() {
        let mut cut = encode_rgb(&noisy(64, 64), JpegOptions::new(80)).unwrap();
        let sos = cut.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        cut.truncate(sos + (cut.len() - sos) / 2);
        cut.extend_from_slice(&[0xFF, 0xD9]);
        let result = decode(&cut, None, u64::MAX);
        if SHRINKS_ON_LOAD {
            let err = result.map(|_| ()).unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{err}");
        } else {
            let decoded = result.unwrap().unwrap();
            assert_eq!(decoded.image.dimensions(), (64, 64));
        }
    }

    /// A progressive JPEG written by jpeg-encoder (spectral selection only,
    /// so a repeated scan is a legal, if pointless, progression for both
    /// decoders) with its last scan repeated `extra` more times.
    fn with_repeated_last_scan(extra: usize) -> Vec<u8> {
        let img = noisy(64, 48);
        let mut bytes = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, 90);
        encoder.set_progressive(true);
        encoder
            .encode(img.as_raw(), 64, 48, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let eoi = bytes.len() - 2;
        assert_eq!(bytes[eoi..], [0xFF, 0xD9]);
        let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
        let scan = bytes[last_sos..eoi].to_vec();
        bytes.truncate(eoi);
        for _ in 0..extra {
            bytes.extend_from_slice(&scan);
        }
        bytes.extend_from_slice(&[0xFF, 0xD9]);
        bytes
    }

    /// A baseline JPEG of three components whose scans each hold one
    /// component and one byte of data, `scans` of them: for a decoder
    /// without a scan limit, every scan is a pass over a row of blocks (or
    /// the whole component) for a dozen bytes of input.
    fn baseline_with_tiny_scans(width: u16, height: u16, scans: usize) -> Vec<u8> {
        fn segment(out: &mut Vec<u8>, marker: u8, data: &[u8]) {
            out.extend_from_slice(&[0xFF, marker]);
            out.extend_from_slice(&(data.len() as u16 + 2).to_be_bytes());
            out.extend_from_slice(data);
        }
        let mut bytes = vec![0xFF, 0xD8];
        let mut dqt = vec![0];
        dqt.extend_from_slice(&[1; 64]);
        segment(&mut bytes, 0xDB, &dqt);
        let mut sof = vec![8];
        sof.extend_from_slice(&height.to_be_bytes());
        sof.extend_from_slice(&width.to_be_bytes());
        sof.push(3);
        for id in 1..=3 {
            sof.extend_from_slice(&[id, 0x11, 0]);
        }
        segment(&mut bytes, 0xC0, &sof);
        // DC table 0 and AC table 0, each one 1-bit code: DC difference 0,
        // and end of block. A zero bit is a whole block.
        let mut dht = vec![0x00, 1];
        dht.extend_from_slice(&[0; 15]);
        dht.extend_from_slice(&[0x00, 0x10, 1]);
        dht.extend_from_slice(&[0; 15]);
        dht.push(0x00);
        segment(&mut bytes, 0xC4, &dht);
        for _ in 0..scans {
            segment(&mut bytes, 0xDA, &[1, 1, 0x00, 0, 63, 0]);
            bytes.push(0x00);
        }
        bytes.extend_from_slice(&[0xFF, 0xD9]);
        bytes
    }

    /// libjpeg-turbo's scan limit counts baseline scans too (its message
    /// says "progressive" regardless); the pure-Rust backend counts them
    /// before zune-jpeg, which has no limit for them, runs.
    #[test]
    fn too_many_baseline_scans_are_refused() {
        let hostile = baseline_with_tiny_scans(64, 48, MAX_SCANS as usize + 1);
        let err = decode(&hostile, None, u64::MAX).map(|_| ()).unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{err}");
        assert!(err.to_string().contains("more than 500 scans"), "{err}");
        // At the limit the scans' missing data decides: libjpeg-turbo fails
        // on it, zune-jpeg fills it with zero bits (see
        // a_scan_cut_short_before_its_end_marker).
        let at_limit = baseline_with_tiny_scans(64, 48, MAX_SCANS as usize);
        let result = decode(&at_limit, None, u64::MAX);
        if SHRINKS_ON_LOAD {
            let err = result.map(|_| ()).unwrap_err();
            assert!(err.to_string().contains("premature end"), "{err}");
        } else {
            assert_eq!(result.unwrap().unwrap().image.dimensions(), (64, 48));
        }
    }

    #[test]
    fn too_many_progressive_scans_are_refused() {
        let fine = with_repeated_last_scan(400);
        let scans = frame(&fine).scans;
        assert!((400..=MAX_SCANS as usize).contains(&scans), "{scans}");
        let decoded = decode(&fine, None, u64::MAX).unwrap().unwrap();
        assert_eq!(decoded.image.dimensions(), (64, 48));

        let hostile = with_repeated_last_scan(MAX_SCANS as usize);
        assert!(frame(&hostile).scans > MAX_SCANS as usize);
        let err = decode(&hostile, None, u64::MAX).map(|_| ()).unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{err}");
        assert!(err.to_string().contains("more than 500 scans"), "{err}");
    }
}

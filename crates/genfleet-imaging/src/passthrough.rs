//! Sending a clean JPEG on without re-encoding it.
//!
//! Most uploads bound for a provider are already what we would send: an
//! upright 8-bit YCbCr JPEG in sRGB, small enough. Decoding it and encoding
//! it again costs most of a remote job's CPU (a 1024x683 photo: ~4 ms to
//! decode and ~10 ms to encode at q92 here) and loses a generation of
//! quality. [`jpeg_passthrough`] instead rewrites the file's segment chain,
//! keeping only what the pixels need (tables, frame, scans) and dropping
//! every metadata segment, comment and anything after the end marker, then
//! proves the result decodes by running every entropy-coded block through
//! [`jpeg::decode`]: with libjpeg-turbo at 1/8 scale (Huffman decoding in
//! full, the IDCT reduced to its DC term), with the pure-Rust backend a full
//! decode.
//!
//! Any doubt (an orientation to apply, a colour profile that is not sRGB,
//! arithmetic coding, 12-bit samples, CMYK, a marker we do not know, damage)
//! answers `None`, and the caller takes the full decode-and-encode path,
//! which also gives the canonical error for a bad file.

use image::metadata::Orientation;

use crate::color;
use crate::error::ImagingError;
use crate::jpeg;
use crate::limits::{inspect, ImageInfo, Limits};
use crate::sniff::ImageFormat;
use crate::structure;

/// A JPEG to send as it is, metadata stripped.
pub struct Passthrough {
    /// The original entropy-coded data in a rebuilt segment chain.
    pub bytes: Vec<u8>,
    /// What the header said.
    pub source: ImageInfo,
}

/// The upload `bytes`, stripped of metadata, when it can stand in for a
/// sanitised re-encode of itself fitted to `fit_long_side`; `None` when it
/// must be decoded and encoded again.
///
/// # Errors
/// Only what [`inspect`] returns for the upload (too large from its header,
/// unsupported type); every other problem is a `None`.
pub fn jpeg_passthrough(
    bytes: &[u8],
    limits: &Limits,
    fit_long_side: Option<u32>,
) -> Result<Option<Passthrough>, ImagingError> {
    let source = inspect(bytes, limits)?;
    if source.format != ImageFormat::Jpeg {
        return Ok(None);
    }
    if fit_long_side.is_some_and(|long_side| source.width.max(source.height) > long_side) {
        return Ok(None);
    }
    let metadata = structure::jpeg_metadata(bytes);
    if metadata.orientation() != Orientation::NoTransforms {
        return Ok(None);
    }
    if metadata
        .icc
        .as_deref()
        .is_some_and(|icc| !color::is_srgb_equivalent(icc))
    {
        return Ok(None);
    }
    let Some(stripped) = structure::strip_jpeg(bytes) else {
        return Ok(None);
    };
    // The smallest decode the backend offers (1/8 with libjpeg-turbo, full
    // size without) still reads every scan: what is sent is what was proven
    // to decode.
    match jpeg::decode(&stripped, Some(1), limits.max_decode_alloc_bytes) {
        Ok(Some(_)) => Ok(Some(Passthrough {
            bytes: stripped,
            source,
        })),
        // CMYK/YCCK, or damage: the full path converts or reports it.
        Ok(None) | Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_paths::{read, CORPUS, HOSTILE};
    use crate::{decode_sanitised, encode, Encoding};

    fn limits() -> Limits {
        Limits::default()
    }

    /// Every APPn (other than JFIF and Adobe) and COM marker in a JPEG's
    /// header, and whether bytes follow its last EOI.
    fn metadata_markers(bytes: &[u8]) -> (Vec<u8>, bool) {
        let mut found = Vec::new();
        let mut pos = 2;
        while pos + 4 <= bytes.len() && bytes[pos] == 0xFF {
            let marker = bytes[pos + 1];
            if marker == 0xDA {
                break;
            }
            let len = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
            let data = &bytes[pos + 4..pos + 2 + len];
            let kept = (marker == 0xE0 && data.starts_with(b"JFIF\0"))
                || (marker == 0xEE && data.starts_with(b"Adobe"));
            if ((0xE0..=0xEF).contains(&marker) && !kept) || marker == 0xFE {
                found.push(marker);
            }
            pos += 2 + len;
        }
        let trailing = !bytes.ends_with(&[0xFF, 0xD9]);
        (found, trailing)
    }

    /// The sent file holds the upload's own entropy-coded data: both decode
    /// to the same pixels, bit for bit.
    fn assert_same_pixels(upload: &[u8], sent: &[u8]) {
        let original = decode_sanitised(upload, &limits()).unwrap().image;
        let passed = decode_sanitised(sent, &limits()).unwrap().image;
        assert_eq!(
            (original.width(), original.height()),
            (passed.width(), passed.height())
        );
        assert_eq!(original.as_bytes(), passed.as_bytes());
    }

    #[test]
    fn a_clean_photo_goes_through_stripped_with_the_same_pixels() {
        // p01 carries EXIF (with a GPS block) and no rotation.
        let upload = read(CORPUS, "photos/p01_foliage_sky_1000x750.jpg");
        let (markers, _) = metadata_markers(&upload);
        assert!(markers.contains(&0xE1), "the fixture must carry EXIF");

        let sent = jpeg_passthrough(&upload, &limits(), None)
            .unwrap()
            .expect("an upright sRGB JPEG passes through");
        let (markers, trailing) = metadata_markers(&sent.bytes);
        assert!(markers.is_empty(), "metadata left: {markers:x?}");
        assert!(!trailing);
        assert!(!sent.bytes.windows(4).any(|w| w == b"Exif"));
        assert!(sent.bytes.len() < upload.len());
        assert_same_pixels(&upload, &sent.bytes);
        assert_eq!((sent.source.width, sent.source.height), (1000, 750));
    }

    #[test]
    fn anything_after_the_end_marker_is_dropped() {
        // A JPEG with an HTML/ZIP payload appended (a polyglot).
        let upload = read(HOSTILE, "h03_polyglot_html_zip.jpg");
        let sent = jpeg_passthrough(&upload, &limits(), None)
            .unwrap()
            .expect("the JPEG part is clean");
        assert!(sent.bytes.ends_with(&[0xFF, 0xD9]));
        assert!(sent.bytes.len() < upload.len());
        let lower = sent.bytes.to_ascii_lowercase();
        assert!(!lower.windows(5).any(|w| w == b"<html"));
        assert!(
            !sent.bytes.windows(2).any(|w| w == b"PK"),
            "zip payload left"
        );
    }

    #[test]
    fn what_needs_pixels_changed_takes_the_full_path() {
        let none = |bytes: &[u8], fit: Option<u32>| {
            jpeg_passthrough(bytes, &limits(), fit).unwrap().is_none()
        };
        // Stored rotated with an EXIF orientation.
        assert!(none(
            &read(CORPUS, "photos/p08_dogs_portrait_orient6_1000x667.jpg"),
            None
        ));
        // Adobe RGB: must be converted to sRGB.
        assert!(none(
            &read(CORPUS, "photos/p07_forest_stream_adobergb_1000x667.jpg"),
            None
        ));
        // Bigger than the requested fit.
        let p01 = read(CORPUS, "photos/p01_foliage_sky_1000x750.jpg");
        assert!(none(&p01, Some(64)));
        // Truncated: the full path names the damage.
        assert!(none(&read(HOSTILE, "h01_truncated.jpg"), None));
        // CMYK (Adobe APP14): converted to RGB by the full path.
        assert!(none(
            &read(CORPUS, "formats/f08_clock_cmyk_1440x1080.jpg"),
            None
        ));
        // Not a JPEG.
        let png = encode(&crate::DynamicImage::new_rgb8(8, 8), Encoding::Png).unwrap();
        assert!(none(&png, None));
    }

    #[test]
    fn an_srgb_profile_does_not_stop_it() {
        // p12 embeds an sRGB profile: the pixels are already sRGB, and the
        // profile is dropped with the rest of the metadata.
        let upload = read(CORPUS, "photos/p12_boats_dusk_srgb_icc_1000x625.jpg");
        let sent = jpeg_passthrough(&upload, &limits(), None)
            .unwrap()
            .expect("an sRGB profile is no reason to re-encode");
        assert!(!sent.bytes.windows(11).any(|w| w == b"ICC_PROFILE"));
    }

    #[test]
    fn a_progressive_jpeg_keeps_all_its_scans() {
        let upload = read(CORPUS, "formats/f07_dandelions_progressive_2048x1536.jpg");
        let sent = jpeg_passthrough(&upload, &limits(), Some(2048))
            .unwrap()
            .expect("progressive Huffman JPEGs pass through");
        assert_same_pixels(&upload, &sent.bytes);
    }

    #[test]
    fn a_jfif_thumbnail_is_dropped() {
        // p01 with its APP0 replaced by a JFIF APP0 carrying a 2x2 RGB
        // thumbnail of a colour the photo does not have.
        let upload = read(CORPUS, "photos/p01_foliage_sky_1000x750.jpg");
        let mut rest = &upload[2..];
        if rest.starts_with(&[0xFF, 0xE0]) {
            let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            rest = &rest[2 + len..];
        }
        let mut app0 = b"JFIF\0\x01\x02\x00\x00\x01\x00\x01\x02\x02".to_vec();
        app0.extend_from_slice(&[0xAB, 0xCD, 0xEF].repeat(4));
        let mut with_thumbnail = vec![0xFF, 0xD8, 0xFF, 0xE0];
        with_thumbnail.extend_from_slice(&u16::try_from(app0.len() + 2).unwrap().to_be_bytes());
        with_thumbnail.extend_from_slice(&app0);
        with_thumbnail.extend_from_slice(rest);

        let sent = jpeg_passthrough(&with_thumbnail, &limits(), None)
            .unwrap()
            .expect("passes through");
        // A bare 16-byte JFIF header (thumbnail 0x0) right after SOI.
        assert_eq!(&sent.bytes[2..6], &[0xFF, 0xE0, 0x00, 0x10]);
        assert_eq!(&sent.bytes[6..11], b"JFIF\0");
        assert_eq!(&sent.bytes[18..20], &[0, 0]);
        assert!(!sent.bytes.windows(3).any(|w| w == [0xAB, 0xCD, 0xEF]));
        assert_same_pixels(&upload, &sent.bytes);
    }

    #[test]
    fn header_limits_still_refuse() {
        let upload = read(HOSTILE, "h08_jpeg_header_65500x65500.jpg");
        assert!(matches!(
            jpeg_passthrough(&upload, &limits(), None),
            Err(ImagingError::TooLarge(_))
        ));
    }
}

//! Bounds on the metadata structures of an upload, checked before any
//! decoder is built.
//!
//! Owns [`check`], called by [`crate::inspect`]. The decoders read some
//! metadata whole, sized by what the file claims rather than by its pixels,
//! and under budgets far larger than any real profile or text block:
//!
//! - the png crate inflates the first iCCP chunk with the decoder's whole
//!   allocation budget as its only bound (no bound at all when only the
//!   header is read), so a 1 MB upload inflated a 1 GiB profile;
//! - image-webp allocates an ICCP, EXIF or XMP chunk at its declared size
//!   (up to 4 GiB) before reading it, so 76 bytes claiming a 4 GiB profile
//!   allocated 4 GiB;
//! - the tiff crate reserves 32 bytes per declared value of a tag before
//!   reading it (268 MB for a 123-byte file claiming 8M strips), and
//!   decodes a JPEG-compressed strip at whatever size that JPEG claims;
//! - the gif crate collects ICC and XMP application extensions whole, and
//!   JPEG ICC profiles are reassembled from APP2 segments.
//!
//! Each such structure must fit in [`Limits::max_metadata_bytes`], measured
//! as the decoder will hold it (inflated, reassembled, or as tiff's value
//! list); the iCCP check inflates with the same `fdeflate` call the png
//! crate makes, so it cannot disagree with the decoder. Compressed text
//! (zTXt, iTXt) is never inflated on our path, so only its stored size
//! counts. Everything else a decoder inflates (PNG IDAT, WebP VP8L, GIF LZW,
//! TIFF strips) writes into the pixel buffer, which `max_decode_alloc_bytes`
//! bounds. What is over the limit is [`ImagingError::TooLarge`], naming the
//! structure and never quoting its bytes.
//!
//! It does not judge whether the metadata is well formed: a broken profile
//! is ignored later (see [`crate::ProfileOutcome::Ignored`]), and broken
//! structure stops the walk where it breaks, for the decoder to report.

use crate::error::ImagingError;
use crate::limits::Limits;
use crate::sniff::ImageFormat;
use crate::structure;

/// Bytes the tiff crate holds per declared value of a tag
/// (`size_of::<tiff::decoder::ifd::Value>()` on 64-bit targets): it
/// reserves a `Vec<Value>` of the declared count before reading any value,
/// so a 4-byte ICC profile tag costs 32 bytes of memory per profile byte.
const TIFF_BYTES_PER_VALUE: u64 = 32;

/// Checks every metadata structure a decoder would read whole against
/// `limits.max_metadata_bytes`.
///
/// # Errors
/// [`ImagingError::TooLarge`] naming the first structure over the limit;
/// [`ImagingError::Invalid`] for a WebP metadata chunk that runs past the
/// end of the file (the decoder would allocate its declared size first).
pub(crate) fn check(
    format: ImageFormat,
    bytes: &[u8],
    limits: &Limits,
) -> Result<(), ImagingError> {
    let cap = limits.max_metadata_bytes;
    match format {
        ImageFormat::Png => check_png(bytes, cap),
        ImageFormat::Webp => check_webp(bytes, cap),
        ImageFormat::Gif => check_gif(bytes, cap),
        ImageFormat::Tiff => check_tiff(bytes, cap),
        ImageFormat::Jpeg => check_jpeg(bytes, cap),
        // The BMP decoder reads no metadata.
        ImageFormat::Bmp => Ok(()),
    }
}

fn too_large(what: &str, size: u64, cap: u64) -> ImagingError {
    ImagingError::TooLarge(format!(
        "{what} is {size} bytes, above the {cap} byte metadata limit"
    ))
}

/// PNG: the stored bytes of every chunk the png crate keeps (iCCP, eXIf,
/// tEXt, zTXt, iTXt) together, and the first iCCP before IDAT inflated.
fn check_png(bytes: &[u8], cap: u64) -> Result<(), ImagingError> {
    let mut stored = 0u64;
    let mut seen_idat = false;
    let mut seen_iccp = false;
    let mut pos = 8usize;
    while let Some(header) = bytes.get(pos..pos + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let kind = [header[4], header[5], header[6], header[7]];
        let start = pos + 8;
        // A chunk cut short holds what is there: the decoder buffers no more.
        let end = start.saturating_add(len as usize).min(bytes.len());
        let data = bytes.get(start..end).unwrap_or_default();
        match &kind {
            b"IEND" => break,
            b"IDAT" => seen_idat = true,
            b"iCCP" | b"eXIf" | b"tEXt" | b"zTXt" | b"iTXt" => {
                stored += data.len() as u64;
                if stored > cap {
                    let name = match &kind {
                        b"iCCP" => "iCCP",
                        b"eXIf" => "eXIf",
                        b"tEXt" => "tEXt",
                        b"zTXt" => "zTXt",
                        _ => "iTXt",
                    };
                    return Err(too_large(
                        &format!("png metadata up to its {name} chunk"),
                        stored,
                        cap,
                    ));
                }
                // The png crate inflates only the first iCCP, and only
                // before IDAT; later ones it drops unread, and so do we:
                // inflating each would let one upload buy many inflations.
                if &kind == b"iCCP" && !seen_idat && !seen_iccp {
                    seen_iccp = true;
                    check_iccp(data, cap)?;
                }
            }
            _ => {}
        }
        // Data, then a 4-byte CRC.
        match start
            .checked_add(len as usize)
            .and_then(|p| p.checked_add(4))
        {
            Some(next) => pos = next,
            None => break,
        }
    }
    Ok(())
}

/// Inflates an iCCP chunk's profile under `cap`, as the png crate would:
/// keyword (1 to 79 bytes) and NUL, compression method 0, zlib stream. A
/// chunk it would not inflate (bad keyword, other method) passes, and so
/// does a corrupt stream: the decoder drops both, and a broken profile is
/// ignored.
fn check_iccp(data: &[u8], cap: u64) -> Result<(), ImagingError> {
    let Some(nul) = data.iter().take(80).position(|&b| b == 0) else {
        return Ok(());
    };
    if nul == 0 {
        return Ok(());
    }
    let Some((&0, stream)) = data.get(nul + 1..).and_then(<[u8]>::split_first) else {
        return Ok(());
    };
    // One byte of room past the limit, judged by the length we get back:
    // whether fdeflate calls a stream that exactly fills its bound "too
    // large" depends on whether it reached the stream's end in the same
    // step, and a profile of exactly `cap` bytes is allowed.
    let max = usize::try_from(cap.saturating_add(1)).unwrap_or(usize::MAX);
    let over = match fdeflate::decompress_to_vec_bounded(stream, max) {
        Ok(profile) => profile.len() as u64 > cap,
        Err(fdeflate::BoundedDecompressionError::OutputTooLarge { .. }) => true,
        Err(fdeflate::BoundedDecompressionError::DecompressionError { .. }) => false,
    };
    if over {
        return Err(ImagingError::TooLarge(format!(
            "png iCCP chunk (colour profile) inflates past the {cap} byte metadata limit"
        )));
    }
    Ok(())
}

/// WebP: each ICCP, EXIF and XMP chunk, at its declared size, which
/// image-webp allocates before reading; it must also lie inside the file.
fn check_webp(bytes: &[u8], cap: u64) -> Result<(), ImagingError> {
    let len = bytes.len() as u64;
    let mut pos = 12u64;
    while let Some(header) = usize::try_from(pos)
        .ok()
        .and_then(|p| bytes.get(p..p.checked_add(8)?))
    {
        let size = u64::from(u32::from_le_bytes([
            header[4], header[5], header[6], header[7],
        ]));
        let name = match &header[..4] {
            b"ICCP" => Some("ICCP"),
            b"EXIF" => Some("EXIF"),
            b"XMP " => Some("XMP"),
            _ => None,
        };
        if let Some(name) = name {
            if size > cap {
                return Err(too_large(&format!("webp {name} chunk"), size, cap));
            }
            if pos + 8 + size > len {
                return Err(ImagingError::Invalid(format!(
                    "image data is corrupt or truncated: webp {name} chunk runs past the end of the file"
                )));
            }
        }
        // Chunks are padded to an even length.
        pos += 8 + size + (size & 1);
    }
    Ok(())
}

/// GIF: each ICC or XMP application extension, which the gif crate
/// collects whole (XMP with its sub-block length bytes).
fn check_gif(bytes: &[u8], cap: u64) -> Result<(), ImagingError> {
    match structure::gif_largest_metadata_extension(bytes) {
        Some((name, size)) if size > cap => {
            Err(too_large(&format!("gif {name} extension"), size, cap))
        }
        _ => Ok(()),
    }
}

/// TIFF: every tag of the first image directory (the one decoded), at
/// what the tiff crate reserves for its values before reading them; and
/// the frame of every JPEG-compressed strip, which the tiff crate decodes
/// at the size that JPEG claims (see
/// [`structure::tiff_oversized_jpeg_frame`]).
fn check_tiff(bytes: &[u8], cap: u64) -> Result<(), ImagingError> {
    if let Some((tag, count)) = structure::tiff_largest_tag(bytes) {
        let size = count.saturating_mul(TIFF_BYTES_PER_VALUE);
        if size > cap {
            return Err(ImagingError::TooLarge(format!(
                "tiff tag {tag} declares {count} values ({size} bytes to hold), above the {cap} byte metadata limit"
            )));
        }
    }
    // After the tag check, which bounds how many strips this walks.
    if let Some((w, h, strip_w, strip_h)) = structure::tiff_oversized_jpeg_frame(bytes) {
        return Err(ImagingError::Invalid(format!(
            "image data is corrupt: a tiff JPEG strip holds a {w}x{h} frame, larger than its {strip_w}x{strip_h} strip"
        )));
    }
    Ok(())
}

/// JPEG: the ICC profile's APP2 segments together, as reassembled.
fn check_jpeg(bytes: &[u8], cap: u64) -> Result<(), ImagingError> {
    let size = structure::jpeg_icc_bytes(bytes);
    if size > cap {
        return Err(too_large("jpeg ICC profile (APP2 segments)", size, cap));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cap: u64) -> Limits {
        Limits {
            max_metadata_bytes: cap,
            ..Limits::default()
        }
    }

    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        // The CRC is not checked here; the decoder checks it.
        out.extend_from_slice(&[0; 4]);
        out
    }

    fn png(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        out.extend(png_chunk(b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]));
        for c in chunks {
            out.extend_from_slice(c);
        }
        out.extend(png_chunk(b"IEND", &[]));
        out
    }

    fn iccp(profile_len: usize) -> Vec<u8> {
        let mut data = b"icc\0\0".to_vec();
        data.extend(fdeflate::compress_to_vec(&vec![0; profile_len]));
        png_chunk(b"iCCP", &data)
    }

    #[test]
    fn png_iccp_is_inflated_under_the_limit() {
        let file = png(&[iccp(5000)]);
        assert!(check(ImageFormat::Png, &file, &limits(5000)).is_ok());
        let err = check(ImageFormat::Png, &file, &limits(4999)).unwrap_err();
        assert_eq!(
            (err.code(), err.to_string().as_str()),
            (
                "too_large",
                "png iCCP chunk (colour profile) inflates past the 4999 byte metadata limit"
            )
        );
        // Only the first iCCP before IDAT is inflated, as in the decoder.
        let idat = png_chunk(b"IDAT", &[]);
        let later = png(&[idat.clone(), iccp(5000)]);
        assert!(check(ImageFormat::Png, &later, &limits(4999)).is_ok());
        let second = png(&[iccp(10), iccp(5000)]);
        assert!(check(ImageFormat::Png, &second, &limits(4999)).is_ok());
        // A stream the decoder would not inflate passes: corrupt, or of a
        // compression method other than 0, or after an empty keyword.
        let corrupt = png(&[png_chunk(b"iCCP", b"icc\0\0\xFF\xFF\xFF")]);
        assert!(check(ImageFormat::Png, &corrupt, &limits(100)).is_ok());
        let bomb = fdeflate::compress_to_vec(&[0; 5000]);
        for prefix in [b"icc\0\x01".as_slice(), b"\0\0"] {
            let data = [prefix, &bomb].concat();
            let file = png(&[png_chunk(b"iCCP", &data)]);
            assert!(check(ImageFormat::Png, &file, &limits(100)).is_ok());
        }
    }

    #[test]
    fn png_stored_metadata_counts_together() {
        let text = png_chunk(b"tEXt", &[b'a'; 600]);
        let file = png(&[text.clone(), text]);
        assert!(check(ImageFormat::Png, &file, &limits(1200)).is_ok());
        let err = check(ImageFormat::Png, &file, &limits(1000)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "png metadata up to its tEXt chunk is 1200 bytes, above the 1000 byte metadata limit"
        );
        // Unknown ancillary chunks are skipped by the decoder, unread.
        let other = png(&[png_chunk(b"prVt", &[0; 5000])]);
        assert!(check(ImageFormat::Png, &other, &limits(10)).is_ok());
    }

    fn webp(chunks: &[(&[u8; 4], u32, usize)]) -> Vec<u8> {
        let mut out = b"RIFF\0\0\0\0WEBP".to_vec();
        for (kind, declared, present) in chunks {
            out.extend_from_slice(*kind);
            out.extend_from_slice(&declared.to_le_bytes());
            out.extend(std::iter::repeat_n(0u8, *present));
        }
        out
    }

    #[test]
    fn webp_metadata_chunks_are_bounded_and_inside_the_file() {
        let ok = webp(&[(b"VP8X", 10, 10), (b"ICCP", 100, 100), (b"EXIF", 7, 8)]);
        assert!(check(ImageFormat::Webp, &ok, &limits(100)).is_ok());
        let err = check(ImageFormat::Webp, &ok, &limits(99)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "webp ICCP chunk is 100 bytes, above the 99 byte metadata limit"
        );
        let huge = webp(&[(b"VP8L", 2, 2), (b"EXIF", 0xFFFF_FFF0, 16)]);
        let err = check(ImageFormat::Webp, &huge, &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "too_large", "{err}");
        let cut = webp(&[(b"XMP ", 1000, 10)]);
        let err = check(ImageFormat::Webp, &cut, &Limits::default()).unwrap_err();
        assert_eq!(
            (err.code(), err.to_string().as_str()),
            (
                "invalid_input",
                "image data is corrupt or truncated: webp XMP chunk runs past the end of the file"
            )
        );
        // Image data chunks are read through a bounded reader: not ours.
        let vp8 = webp(&[(b"VP8 ", 0xFFFF_FFF0, 16)]);
        assert!(check(ImageFormat::Webp, &vp8, &limits(1)).is_ok());
    }

    #[test]
    fn gif_metadata_extensions_are_bounded() {
        // Header, screen descriptor without a colour table, then an ICC
        // application extension of two 200-byte sub-blocks, then trailer.
        let mut gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00".to_vec();
        gif.extend_from_slice(b"\x21\xFF\x0BICCRGBG1012");
        for _ in 0..2 {
            gif.push(200);
            gif.extend_from_slice(&[0; 200]);
        }
        gif.extend_from_slice(b"\x00\x3B");
        assert!(check(ImageFormat::Gif, &gif, &limits(400)).is_ok());
        let err = check(ImageFormat::Gif, &gif, &limits(399)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "gif ICC profile extension is 400 bytes, above the 399 byte metadata limit"
        );
    }

    #[test]
    fn tiff_tags_are_bounded_by_what_the_decoder_reserves() {
        // Little-endian classic TIFF, IFD at 8 with one entry: the ICC
        // profile tag (34675), UNDEFINED, 1000 values at offset 0.
        let mut tiff = b"II*\0\x08\0\0\0\x01\0".to_vec();
        tiff.extend_from_slice(&34675u16.to_le_bytes());
        tiff.extend_from_slice(&7u16.to_le_bytes());
        tiff.extend_from_slice(&1000u32.to_le_bytes());
        tiff.extend_from_slice(&0u32.to_le_bytes());
        tiff.extend_from_slice(&[0; 4]);
        assert!(check(ImageFormat::Tiff, &tiff, &limits(32_000)).is_ok());
        let err = check(ImageFormat::Tiff, &tiff, &limits(31_999)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tiff tag 34675 declares 1000 values (32000 bytes to hold), above the 31999 byte metadata limit"
        );
    }

    #[test]
    fn jpeg_icc_segments_count_together() {
        let mut jpeg = b"\xFF\xD8".to_vec();
        for seq in 1..=2u8 {
            jpeg.extend_from_slice(b"\xFF\xE2");
            jpeg.extend_from_slice(&(2 + 14 + 100u16).to_be_bytes());
            jpeg.extend_from_slice(b"ICC_PROFILE\0");
            jpeg.extend_from_slice(&[seq, 2]);
            jpeg.extend_from_slice(&[0; 100]);
        }
        jpeg.extend_from_slice(b"\xFF\xDA\x00\x02\xFF\xD9");
        assert!(check(ImageFormat::Jpeg, &jpeg, &limits(200)).is_ok());
        let err = check(ImageFormat::Jpeg, &jpeg, &limits(199)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "jpeg ICC profile (APP2 segments) is 200 bytes, above the 199 byte metadata limit"
        );
    }
}

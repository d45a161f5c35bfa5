//! Content sniffing: what the bytes are, from magic numbers only.
//!
//! Owns the list of image types we accept and the names of the common
//! non-image types we recognise so that errors can say what was found. It
//! deliberately never looks at a file name, extension or declared content
//! type: those are attacker-controlled. It does not validate structure beyond
//! the magic; the decoder does that.

/// An image type this crate decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
    Bmp,
    Tiff,
}

impl ImageFormat {
    /// Short lower-case name, stable for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
            ImageFormat::Bmp => "bmp",
            ImageFormat::Tiff => "tiff",
        }
    }

    /// IANA media type.
    pub fn mime(&self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::Webp => "image/webp",
            ImageFormat::Gif => "image/gif",
            ImageFormat::Bmp => "image/bmp",
            ImageFormat::Tiff => "image/tiff",
        }
    }

    /// The matching `image` crate format, used to pick a decoder explicitly
    /// instead of letting `image` guess.
    pub(crate) fn to_image(self) -> image::ImageFormat {
        match self {
            ImageFormat::Jpeg => image::ImageFormat::Jpeg,
            ImageFormat::Png => image::ImageFormat::Png,
            ImageFormat::Webp => image::ImageFormat::WebP,
            ImageFormat::Gif => image::ImageFormat::Gif,
            ImageFormat::Bmp => image::ImageFormat::Bmp,
            ImageFormat::Tiff => image::ImageFormat::Tiff,
        }
    }
}

/// The result of [`sniff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// One of the image types we decode.
    Image(ImageFormat),
    /// Something else: "svg", "html", "pdf", "zip", "heic", "avif", "mp4",
    /// "xml", "text", "empty" or "unknown".
    Other(&'static str),
}

/// How far into a markup document we look for the root element. Real SVG
/// and HTML name it within the first few hundred bytes (after an XML
/// declaration, doctype or comment); 4 KiB bounds the work on hostile input.
const MARKUP_WINDOW: usize = 4096;

/// Identifies `bytes` by magic numbers.
pub fn sniff(bytes: &[u8]) -> Sniffed {
    if bytes.is_empty() {
        return Sniffed::Other("empty");
    }
    if let Some(format) = image_magic(bytes) {
        return Sniffed::Image(format);
    }
    Sniffed::Other(other_magic(bytes))
}

fn image_magic(b: &[u8]) -> Option<ImageFormat> {
    if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some(ImageFormat::Jpeg);
    }
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some(ImageFormat::Png);
    }
    if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        return Some(ImageFormat::Gif);
    }
    if b.starts_with(b"RIFF") && b.get(8..12) == Some(b"WEBP") {
        return Some(ImageFormat::Webp);
    }
    // Classic TIFF and BigTIFF, both byte orders.
    if b.starts_with(b"II*\0")
        || b.starts_with(b"MM\0*")
        || b.starts_with(b"II+\0")
        || b.starts_with(b"MM\0+")
    {
        return Some(ImageFormat::Tiff);
    }
    if is_bmp(b) {
        return Some(ImageFormat::Bmp);
    }
    None
}

/// "BM" alone is too weak a magic (any text starting with "BM" would match),
/// so also require a known DIB header size at offset 14.
fn is_bmp(b: &[u8]) -> bool {
    if !b.starts_with(b"BM") {
        return false;
    }
    let Some(size) = b.get(14..18) else {
        return false;
    };
    let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]);
    matches!(size, 12 | 16 | 40 | 52 | 56 | 64 | 108 | 124)
}

fn other_magic(b: &[u8]) -> &'static str {
    if b.starts_with(b"%PDF-") {
        return "pdf";
    }
    if b.starts_with(b"PK\x03\x04") || b.starts_with(b"PK\x05\x06") || b.starts_with(b"PK\x07\x08")
    {
        return "zip";
    }
    if b.get(4..8) == Some(b"ftyp") {
        return iso_bmff_kind(b);
    }
    if let Some(kind) = markup_kind(b) {
        return kind;
    }
    if looks_like_text(b) {
        return "text";
    }
    "unknown"
}

/// HEIC, AVIF and MP4 share the ISO base media file format; the brands in
/// the `ftyp` box tell them apart. AVIF files often carry the generic HEIF
/// brand "mif1" too, so AVIF brands are checked first.
fn iso_bmff_kind(b: &[u8]) -> &'static str {
    let box_len = b
        .get(0..4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
        .unwrap_or(0);
    // Major brand at 8..12, minor version at 12..16, compatible brands after.
    let end = box_len.clamp(12, 256).min(b.len());
    let brands = b.get(8..end).unwrap_or(&[]);
    let has = |wanted: &[&[u8; 4]]| {
        brands
            .chunks_exact(4)
            .any(|brand| wanted.iter().any(|w| brand == w.as_slice()))
    };
    if has(&[b"avif", b"avis"]) {
        "avif"
    } else if has(&[
        b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1",
    ]) {
        "heic"
    } else {
        "mp4"
    }
}

/// Names SVG, HTML and other XML. Leading BOM, whitespace, XML declarations,
/// doctypes and comments are skipped by searching a bounded window rather
/// than parsing.
fn markup_kind(b: &[u8]) -> Option<&'static str> {
    let b = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b);
    let start = b.iter().position(|c| !c.is_ascii_whitespace())?;
    let rest = b.get(start..)?;
    if !rest.starts_with(b"<") {
        return None;
    }
    let window = rest
        .get(..MARKUP_WINDOW.min(rest.len()))
        .unwrap_or(rest)
        .to_ascii_lowercase();
    let contains = |needle: &[u8]| window.windows(needle.len()).any(|w| w == needle);
    if contains(b"<svg") {
        Some("svg")
    } else if [
        b"<!doctype html".as_slice(),
        b"<html",
        b"<head",
        b"<body",
        b"<script",
        b"<iframe",
    ]
    .iter()
    .any(|n| contains(n))
    {
        Some("html")
    } else if rest.starts_with(b"<?xml") {
        Some("xml")
    } else {
        // Something tag-like but unnamed; browsers would sniff it as HTML.
        Some("html")
    }
}

/// Printable UTF-8 in the first 512 bytes, no control characters other than
/// whitespace. Catches the EICAR test string, scripts and CSV.
fn looks_like_text(b: &[u8]) -> bool {
    let head = b.get(..512.min(b.len())).unwrap_or(b);
    // A multi-byte character may be cut at the window edge; accept that.
    let text = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => match head.get(..e.valid_up_to()) {
            Some(valid) => std::str::from_utf8(valid).unwrap_or(""),
            None => "",
        },
        Err(_) => return false,
    };
    !text.is_empty()
        && text
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_paths::{read, CORPUS, HOSTILE};

    fn check(bytes: &[u8], expected: Sniffed) {
        assert_eq!(
            sniff(bytes),
            expected,
            "bytes starting {:?}",
            &bytes[..bytes.len().min(16)]
        );
    }

    #[test]
    fn magic_bytes() {
        let cases: &[(&[u8], Sniffed)] = &[
            (b"", Sniffed::Other("empty")),
            (b"\xFF\xD8\xFF\xE0rest", Sniffed::Image(ImageFormat::Jpeg)),
            (b"\x89PNG\r\n\x1a\nrest", Sniffed::Image(ImageFormat::Png)),
            (b"GIF89a....", Sniffed::Image(ImageFormat::Gif)),
            (b"RIFF\0\0\0\0WEBPVP8 ", Sniffed::Image(ImageFormat::Webp)),
            (b"RIFF\0\0\0\0WAVEfmt ", Sniffed::Other("unknown")),
            (b"II*\0\x08\0\0\0", Sniffed::Image(ImageFormat::Tiff)),
            (b"MM\0*\0\0\0\x08", Sniffed::Image(ImageFormat::Tiff)),
            (
                b"BM\0\0\0\0\0\0\0\0\0\0\0\0\x28\0\0\0",
                Sniffed::Image(ImageFormat::Bmp),
            ),
            (b"BMW is a car brand", Sniffed::Other("text")),
            (b"%PDF-1.7\n", Sniffed::Other("pdf")),
            (b"PK\x03\x04\x14\0", Sniffed::Other("zip")),
            (
                b"\0\0\0\x18ftypheic\0\0\0\0mif1heic",
                Sniffed::Other("heic"),
            ),
            (
                b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf",
                Sniffed::Other("avif"),
            ),
            (
                b"\0\0\0\x1cftypmif1\0\0\0\0mif1avifmiaf",
                Sniffed::Other("avif"),
            ),
            (b"\0\0\0\x18ftypisom\0\0\0\0isomiso2", Sniffed::Other("mp4")),
            (b"\xEF\xBB\xBF  <svg xmlns='x'/>", Sniffed::Other("svg")),
            (
                b"<?xml version='1.0'?><!-- c --><svg/>",
                Sniffed::Other("svg"),
            ),
            (b"<?xml version='1.0'?><rss/>", Sniffed::Other("xml")),
            (b"<!DOCTYPE html><p>", Sniffed::Other("html")),
            (b"hello, world\n", Sniffed::Other("text")),
            (b"\0\x01\x02\x03\xFE", Sniffed::Other("unknown")),
        ];
        for (bytes, expected) in cases {
            check(bytes, *expected);
        }
    }

    #[test]
    fn fixtures_by_content_not_name() {
        let cases = [
            (HOSTILE, "eicar.jpg", Sniffed::Other("text")),
            (
                HOSTILE,
                "h04_gif_named_jpg.jpg",
                Sniffed::Image(ImageFormat::Gif),
            ),
            (HOSTILE, "h05_script.svg", Sniffed::Other("svg")),
            (HOSTILE, "h09_html_named_jpg.jpg", Sniffed::Other("html")),
            (
                HOSTILE,
                "h03_polyglot_html_zip.jpg",
                Sniffed::Image(ImageFormat::Jpeg),
            ),
            (
                CORPUS,
                "formats/f05_mountain_iphone_4032x3024_head.heic",
                Sniffed::Other("heic"),
            ),
            (
                CORPUS,
                "formats/f06_forest_path_2560x1600_head.avif",
                Sniffed::Other("avif"),
            ),
            (
                CORPUS,
                "formats/f04_strawberry_alpha_lossy.webp",
                Sniffed::Image(ImageFormat::Webp),
            ),
        ];
        for (dir, name, expected) in cases {
            assert_eq!(sniff(&read(dir, name)), expected, "{name}");
        }
    }
}

//! Small structural checks on container bytes that the decoders are too
//! lenient (or too eager) about.
//!
//! Owns the JPEG marker walk (frame size from SOF; completeness via EOI) and
//! the PNG IEND check. It does not validate entropy-coded or compressed data;
//! the decoders do that.

/// Length in bytes of a PNG IEND chunk: length 0, type "IEND" and its CRC,
/// which is a constant because the chunk has no data.
const PNG_IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];
const JPEG_EOI: [u8; 2] = [0xFF, 0xD9];

/// One marker segment seen while walking a JPEG header.
enum Segment {
    /// A start-of-frame segment at `pos` (the FF of its marker).
    Frame { pos: usize },
    /// The first start-of-scan marker at `pos`; entropy-coded data follows.
    Scan { pos: usize },
}

/// Walks the marker segments after SOI, calling `visit` for SOF segments
/// and stopping at the first SOS. Returns `None` if the chain is broken or
/// ends before any SOS.
fn walk_jpeg(bytes: &[u8], mut visit: impl FnMut(Segment) -> bool) -> Option<()> {
    let mut pos = 2; // after SOI (FF D8), which sniffing already checked
    loop {
        if *bytes.get(pos)? != 0xFF {
            return None;
        }
        // Any number of FF fill bytes may precede a marker code.
        while *bytes.get(pos + 1)? == 0xFF {
            pos += 1;
        }
        match *bytes.get(pos + 1)? {
            0xDA => {
                visit(Segment::Scan { pos });
                return Some(());
            }
            // Standalone markers carry no length field.
            0x01 | 0xD0..=0xD7 => pos += 2,
            marker => {
                // SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC).
                if matches!(marker, 0xC0..=0xCF)
                    && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
                    && !visit(Segment::Frame { pos })
                {
                    return Some(());
                }
                let len = bytes.get(pos + 2..pos + 4)?;
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                if len < 2 {
                    return None;
                }
                pos += 2 + len;
            }
        }
    }
}

/// Width and height from the JPEG frame header (SOF), without touching any
/// scan data. `None` if there is no readable SOF before the first scan.
///
/// zune-jpeg's header parser needs the file to reach a scan, so a header-only
/// bomb (SOF claiming 65500x65500 and nothing after) fails there as "corrupt"
/// instead of "too large"; reading SOF ourselves reports the real problem.
pub(crate) fn jpeg_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let mut found = None;
    walk_jpeg(bytes, |segment| {
        if let Segment::Frame { pos } = segment {
            // FF Cn, length (2), precision (1), height (2), width (2).
            found = bytes.get(pos + 5..pos + 9).map(|d| {
                (
                    u32::from(u16::from_be_bytes([d[2], d[3]])),
                    u32::from(u16::from_be_bytes([d[0], d[1]])),
                )
            });
        }
        false // the first SOF is the frame
    });
    // A header that broke off before the first scan still counts if the SOF
    // was readable: the size check comes first, completeness later.
    found
}

/// Whether the JPEG continues past its first scan to an end-of-image marker.
///
/// `image` decodes JPEG with zune-jpeg in non-strict mode, which fills the
/// missing part of a truncated scan with grey and returns success. A partial
/// image must never reach a customer, so we require EOI (FF D9) after the
/// first start-of-scan. Inside entropy-coded data every FF byte is followed
/// by 00 or a restart marker, so FF D9 there is a real EOI. Bytes after the
/// EOI (polyglot payloads) are allowed and simply never decoded.
pub(crate) fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut scan_start = None;
    walk_jpeg(bytes, |segment| {
        if let Segment::Scan { pos } = segment {
            scan_start = Some(pos);
        }
        true
    });
    scan_start
        .and_then(|start| bytes.get(start..))
        // Searched from the end: EOI is usually the last two bytes.
        .is_some_and(|scan| scan.windows(2).rev().any(|w| w == JPEG_EOI))
}

/// Whether the PNG has its IEND chunk.
///
/// The png decoder stops once it has the pixel data and does not read on to
/// IEND, so a file cut inside IEND decodes. That file is still damaged (it
/// failed to transfer completely), so we treat it like any truncation.
pub(crate) fn png_is_complete(bytes: &[u8]) -> bool {
    bytes.windows(PNG_IEND.len()).rev().any(|w| w == PNG_IEND)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input bytes and the (width, height) expected from them.
    type SizeCase<'a> = (&'a [u8], Option<(u32, u32)>);

    #[test]
    fn jpeg_frame_size() {
        let cases: &[SizeCase] = &[
            // SOI, APP0 (len 4), SOF0 claiming 65500 high x 300 wide, then EOF.
            (
                b"\xFF\xD8\xFF\xE0\x00\x04ab\xFF\xC0\x00\x11\x08\xFF\xDC\x01\x2C\x03",
                Some((300, 65500)),
            ),
            // Fill bytes before a marker.
            (
                b"\xFF\xD8\xFF\xFF\xC2\x00\x11\x08\x00\x10\x00\x20\x03",
                Some((32, 16)),
            ),
            // DHT (C4) is not a frame header.
            (b"\xFF\xD8\xFF\xC4\x00\x04ab\xFF\xDA", None),
            (b"\xFF\xD8\xFF\xE0\x00\x10ab", None),
            (b"\xFF\xD8junk", None),
        ];
        for (bytes, want) in cases {
            assert_eq!(jpeg_dimensions(bytes), *want, "{bytes:?}");
        }
    }

    #[test]
    fn jpeg_completeness() {
        let cases: &[(&[u8], bool)] = &[
            (b"\xFF\xD8\xFF\xDA\x00\x02\x12\x34\xFF\xD9", true),
            (
                b"\xFF\xD8\xFF\xDA\x00\x02\x12\x34\xFF\xD9<html>PK\x03\x04",
                true,
            ),
            (b"\xFF\xD8\xFF\xDA\x00\x02\x12\x34\xFF\x00", false),
            // An EOI before the scan (inside a segment) does not count.
            (
                b"\xFF\xD8\xFF\xE0\x00\x04\xFF\xD9\xFF\xDA\x00\x02\x12",
                false,
            ),
            (b"\xFF\xD8\xFF\xE0\x00\x01", false),
        ];
        for (bytes, want) in cases {
            assert_eq!(jpeg_is_complete(bytes), *want, "{bytes:?}");
        }
    }

    #[test]
    fn png_completeness() {
        let mut png = b"\x89PNG\r\n\x1a\n...".to_vec();
        assert!(!png_is_complete(&png));
        png.extend_from_slice(&PNG_IEND);
        assert!(png_is_complete(&png));
        png.extend_from_slice(b"trailing");
        assert!(png_is_complete(&png));
        assert!(!png_is_complete(&png[..png.len() - 9]));
    }
}

//! JPEG marker walk: frame size from SOF, ICC profile and other APPn
//! metadata, completeness (EOI after the first scan), scan counting and
//! stripping metadata segments. Entropy-coded data is skipped, not checked.

const JPEG_EOI: [u8; 2] = [0xFF, 0xD9];

/// One marker segment seen while walking a JPEG header.
enum Segment<'a> {
    /// A start-of-frame segment at `pos` (the FF of its marker).
    Frame { pos: usize },
    /// An application segment (APP0..APP15): `marker` is E0..EF, `data`
    /// the payload after the length field.
    App { marker: u8, data: &'a [u8] },
    /// The first start-of-scan marker at `pos`; entropy-coded data follows.
    Scan { pos: usize },
}

/// Walks the marker segments after SOI, calling `visit` for SOF and APPn
/// segments and stopping at the first SOS or when `visit` returns false.
/// Returns `None` if the chain is broken or ends before any SOS.
fn walk_jpeg<'a>(bytes: &'a [u8], mut visit: impl FnMut(Segment<'a>) -> bool) -> Option<()> {
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
                if (0xE0..=0xEF).contains(&marker) {
                    let data = bytes.get(pos + 4..pos + 2 + len)?;
                    if !visit(Segment::App { marker, data }) {
                        return Some(());
                    }
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
        let Segment::Frame { pos } = segment else {
            return true;
        };
        // FF Cn, length (2), precision (1), height (2), width (2).
        found = bytes.get(pos + 5..pos + 9).map(|d| {
            (
                u32::from(u16::from_be_bytes([d[2], d[3]])),
                u32::from(u16::from_be_bytes([d[0], d[1]])),
            )
        });
        false // the first SOF is the frame
    });
    // A header that broke off before the first scan still counts if the SOF
    // was readable: the size check comes first, completeness later.
    found
}

/// Metadata from a JPEG's application segments, borrowed from the input.
#[derive(Debug, Default)]
pub(crate) struct JpegMetadata<'a> {
    /// The TIFF structure of the first APP1 "Exif" segment (after the
    /// `Exif\0\0` header), where the orientation lives.
    pub exif: Option<&'a [u8]>,
    /// The ICC profile, reassembled from its APP2 "ICC_PROFILE" chunks in
    /// sequence order; `None` when absent or when the chunks are
    /// inconsistent (a broken profile is ignored, not fatal).
    pub icc: Option<Vec<u8>>,
}

impl JpegMetadata<'_> {
    /// The EXIF orientation; "normal" when there is none or it is unreadable.
    pub(crate) fn orientation(&self) -> image::metadata::Orientation {
        self.exif
            .and_then(image::metadata::Orientation::from_exif_chunk)
            .unwrap_or(image::metadata::Orientation::NoTransforms)
    }
}

/// The tag that starts an APP2 segment holding a piece of an ICC profile.
const ICC_TAG: &[u8] = b"ICC_PROFILE\0";

/// The most pieces an ICC profile can be split into: its sequence numbers
/// are one byte, 1 to 255. So a reassembled profile is at most 255 x 65519
/// bytes (16.7 MB), and more pieces than that make it inconsistent.
const MAX_ICC_CHUNKS: usize = 255;

/// Reads the EXIF block and the ICC profile of a JPEG from its header.
///
/// The profile's size is bounded by the format (see [`MAX_ICC_CHUNKS`]);
/// [`crate::inspect`] holds it to `Limits::max_metadata_bytes` before this
/// runs.
pub(crate) fn jpeg_metadata(bytes: &[u8]) -> JpegMetadata<'_> {
    let mut meta = JpegMetadata::default();
    // (sequence number, total, data) of each ICC chunk.
    let mut chunks: Vec<(u8, u8, &[u8])> = Vec::new();
    let mut too_many = false;
    walk_jpeg(bytes, |segment| {
        match segment {
            Segment::App { marker: 0xE1, data } if meta.exif.is_none() => {
                meta.exif = data.strip_prefix(b"Exif\0\0");
            }
            Segment::App { marker: 0xE2, data } => {
                if let Some([seq, total, payload @ ..]) = data.strip_prefix(ICC_TAG) {
                    // A file of tiny APP2 segments must not grow this list
                    // with the upload: past 255 the profile is broken anyway.
                    if chunks.len() == MAX_ICC_CHUNKS {
                        too_many = true;
                    } else {
                        chunks.push((*seq, *total, payload));
                    }
                }
            }
            _ => {}
        }
        true
    });
    meta.icc = if too_many { None } else { assemble_icc(chunks) };
    meta
}

/// The bytes of every ICC profile piece (APP2 "ICC_PROFILE" payloads) in a
/// JPEG's header together: what reassembling the profile would hold.
pub(crate) fn jpeg_icc_bytes(bytes: &[u8]) -> u64 {
    let mut total = 0u64;
    walk_jpeg(bytes, |segment| {
        if let Segment::App { marker: 0xE2, data } = segment {
            if let Some([_, _, payload @ ..]) = data.strip_prefix(ICC_TAG) {
                total += payload.len() as u64;
            }
        }
        true
    });
    total
}

/// Joins ICC chunks. Each says its 1-based number and the total; all must
/// agree, every number must appear once, or the profile is dropped.
fn assemble_icc(mut chunks: Vec<(u8, u8, &[u8])>) -> Option<Vec<u8>> {
    let total = chunks.first()?.1;
    if total == 0 || chunks.len() != usize::from(total) || chunks.iter().any(|c| c.1 != total) {
        return None;
    }
    chunks.sort_by_key(|c| c.0);
    if chunks
        .iter()
        .enumerate()
        .any(|(i, c)| usize::from(c.0) != i + 1)
    {
        return None;
    }
    let size: usize = chunks.iter().map(|c| c.2.len()).sum();
    if size == 0 {
        return None;
    }
    let mut icc = Vec::with_capacity(size);
    for (_, _, data) in chunks {
        icc.extend_from_slice(data);
    }
    Some(icc)
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

/// How many scans (SOS segments) the JPEG holds, counted up to `limit + 1`
/// at most. The walk follows segment lengths, skips each scan's
/// entropy-coded data, and stops at EOI or where the chain breaks (the
/// decoder reports damage; this only counts). About 0.5 ms for a 1.7 MB
/// photo here. Only the pure-Rust JPEG backend needs it (libjpeg-turbo
/// counts scans itself); it is tested in both builds.
#[cfg_attr(feature = "simd-c", allow(dead_code))]
pub(crate) fn jpeg_scan_count(bytes: &[u8], limit: usize) -> usize {
    let mut count = 0;
    let mut pos = 2;
    loop {
        if bytes.get(pos) != Some(&0xFF) {
            return count;
        }
        while bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = bytes.get(pos + 1) else {
            return count;
        };
        match marker {
            0xD9 => return count,
            // Standalone markers carry no length field.
            0x01 | 0xD0..=0xD7 => {
                pos += 2;
                continue;
            }
            _ => {}
        }
        let Some(len) = bytes.get(pos + 2..pos + 4) else {
            return count;
        };
        pos += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
        if marker == 0xDA {
            count += 1;
            if count > limit {
                return count;
            }
            match entropy_end(bytes, pos) {
                Some(end) => pos = end,
                None => return count,
            }
        }
    }
}

/// The JPEG rebuilt from the segments its pixels need: SOI, the tables
/// (DQT, DHT, DRI), the frame header, every scan with its entropy-coded
/// data, EOI; plus the JFIF APP0 (without its thumbnail) and the Adobe
/// APP14 (whose transform flag says whether the samples are YCbCr). EXIF,
/// XMP, ICC, IPTC, thumbnails, comments and any bytes after EOI are gone.
///
/// `None` for anything this cannot vouch for: a broken chain, no EOI, a
/// frame other than 8-bit Huffman baseline, extended or progressive
/// (arithmetic coding, 12-bit, lossless and hierarchical JPEGs are rare and
/// not every provider's decoder reads them), a DNL segment, or a marker
/// outside the standard set.
pub(crate) fn strip_jpeg(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&[0xFF, 0xD8]);
    let mut pos = 2;
    let mut seen_frame = false;
    loop {
        if *bytes.get(pos)? != 0xFF {
            return None;
        }
        while *bytes.get(pos + 1)? == 0xFF {
            pos += 1;
        }
        let marker = *bytes.get(pos + 1)?;
        if marker == 0xD9 {
            out.extend_from_slice(&JPEG_EOI);
            return seen_frame.then_some(out);
        }
        let len = bytes.get(pos + 2..pos + 4)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len < 2 {
            return None;
        }
        let segment = bytes.get(pos..pos + 2 + len)?;
        let data = &segment[4..];
        let keep = match marker {
            // SOF0 baseline, SOF1 extended, SOF2 progressive; 8-bit only.
            0xC0..=0xC2 => {
                if seen_frame || data.first() != Some(&8) {
                    return None;
                }
                seen_frame = true;
                true
            }
            0xDA => {
                if !seen_frame {
                    return None;
                }
                let scan_start = pos + 2 + len;
                let scan_end = entropy_end(bytes, scan_start)?;
                out.extend_from_slice(segment);
                out.extend_from_slice(&bytes[scan_start..scan_end]);
                pos = scan_end;
                continue;
            }
            // DHT, DQT, DRI.
            0xC4 | 0xDB | 0xDD => true,
            0xE0 => {
                // JFIF without its optional thumbnail: an edited photo's
                // thumbnail can still show what the edit removed.
                if data.starts_with(b"JFIF\0") && data.len() >= 14 {
                    out.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x10]);
                    out.extend_from_slice(&data[..12]);
                    out.extend_from_slice(&[0, 0]);
                }
                false
            }
            0xEE => data.starts_with(b"Adobe"),
            // Other APPn and COM: metadata.
            0xE1..=0xED | 0xEF | 0xFE => false,
            _ => return None,
        };
        if keep {
            out.extend_from_slice(segment);
        }
        pos += 2 + len;
    }
}

/// Where the entropy-coded data that starts at `start` ends: the first
/// marker that is neither a stuffed zero (FF 00) nor a restart (FF D0-D7).
fn entropy_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut pos = start;
    loop {
        let ff = pos + memchr_ff(bytes.get(pos..)?)?;
        match *bytes.get(ff + 1)? {
            0x00 | 0xD0..=0xD7 | 0xFF => pos = ff + 1,
            _ => return Some(ff),
        }
    }
}

fn memchr_ff(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == 0xFF)
}

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

/// Width and height from a PNG's IHDR, which must be its first chunk.
/// `None` when it is not there; the decoder then says what is wrong.
///
/// Read here rather than by the png decoder, which reads every chunk up to
/// the first IDAT to answer, inflating any colour profile on the way.
pub(crate) fn png_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let ihdr = bytes.get(8..24)?;
    if ihdr[..8] != [0, 0, 0, 13, b'I', b'H', b'D', b'R'] {
        return None;
    }
    let width = u32::from_be_bytes([ihdr[8], ihdr[9], ihdr[10], ihdr[11]]);
    let height = u32::from_be_bytes([ihdr[12], ihdr[13], ihdr[14], ihdr[15]]);
    Some((width, height))
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

fn gif_frames(b: &[u8]) -> Option<u64> {
    // Header (6) + logical screen descriptor (7), then the global colour
    // table if its flag is set: 3 * 2^(size+1) bytes.
    let flags = *b.get(10)?;
    let mut pos = 13;
    if flags & 0x80 != 0 {
        pos += 3 << ((flags & 0x07) + 1);
    }
    let mut frames = 0u64;
    // Skips a chain of data sub-blocks (length byte, data), ending at a 0.
    let skip_sub_blocks = |mut pos: usize| -> Option<usize> {
        loop {
            let len = usize::from(*b.get(pos)?);
            pos += 1;
            if len == 0 {
                return Some(pos);
            }
            pos += len;
        }
    };
    loop {
        match b.get(pos) {
            Some(0x2C) => {
                frames += 1;
                // Image descriptor: separator (1) + 8 bytes + packed flags.
                let flags = *b.get(pos + 9)?;
                pos += 10;
                if flags & 0x80 != 0 {
                    pos += 3 << ((flags & 0x07) + 1);
                }
                pos += 1; // LZW minimum code size
                match skip_sub_blocks(pos) {
                    Some(next) => pos = next,
                    None => return Some(frames),
                }
            }
            // Extension: introducer, label, then sub-blocks.
            Some(0x21) => match skip_sub_blocks(pos + 2) {
                Some(next) => pos = next,
                None => return Some(frames),
            },
            _ => return Some(frames),
        }
    }
}

/// The largest ICC or XMP application extension of a GIF, as the gif crate
/// collects it: ("ICC profile", bytes of its sub-blocks) or ("XMP", bytes
/// of its sub-blocks with their length bytes). `None` when there is none;
/// the walk stops where the block structure breaks.
pub(crate) fn gif_largest_metadata_extension(b: &[u8]) -> Option<(&'static str, u64)> {
    let mut largest: Option<(&'static str, u64)> = None;
    // Where the structure breaks, what was measured so far stands.
    let _ = walk_gif_metadata(b, |name, size| {
        if largest.is_none_or(|(_, s)| size > s) {
            largest = Some((name, size));
        }
    });
    largest
}

/// Walks a GIF's blocks, calling `found` with each ICC or XMP application
/// extension's name and size; `None` where the structure breaks.
fn walk_gif_metadata(b: &[u8], mut found: impl FnMut(&'static str, u64)) -> Option<()> {
    let flags = *b.get(10)?;
    let mut pos = 13;
    if flags & 0x80 != 0 {
        pos += 3 << ((flags & 0x07) + 1);
    }
    // Sub-blocks from `pos` to their 0 terminator: (next position, data
    // bytes, count of sub-blocks).
    let sub_blocks = |mut pos: usize| -> Option<(usize, u64, u64)> {
        let (mut data, mut blocks) = (0u64, 0u64);
        loop {
            let len = usize::from(*b.get(pos)?);
            pos += 1;
            if len == 0 {
                return Some((pos, data, blocks));
            }
            data += len as u64;
            blocks += 1;
            pos += len;
        }
    };
    loop {
        match b.get(pos) {
            Some(0x2C) => {
                let flags = *b.get(pos + 9)?;
                pos += 10;
                if flags & 0x80 != 0 {
                    pos += 3 << ((flags & 0x07) + 1);
                }
                pos += 1;
                pos = sub_blocks(pos)?.0;
            }
            Some(0x21) => {
                let label = *b.get(pos + 1)?;
                pos += 2;
                // An application extension's first sub-block is its
                // 11-byte identifier; the data follows in more sub-blocks.
                let kind = match (label, b.get(pos..pos + 12)) {
                    (0xFF, Some(id)) if id == b"\x0BICCRGBG1012" => Some(("ICC profile", false)),
                    (0xFF, Some(id)) if id == b"\x0BXMP DataXMP" => Some(("XMP", true)),
                    _ => None,
                };
                if let Some((name, with_lengths)) = kind {
                    let (next, data, blocks) = sub_blocks(pos + 12)?;
                    found(name, if with_lengths { data + blocks } else { data });
                    pos = next;
                } else {
                    pos = sub_blocks(pos)?.0;
                }
            }
            _ => return Some(()),
        }
    }
}

/// The first image directory (IFD) of a TIFF, read in place: classic or
/// BigTIFF, either byte order. Only what the metadata checks need.
struct TiffIfd<'a> {
    b: &'a [u8],
    little: bool,
    big: bool,
    /// Where the first entry starts.
    first: usize,
    /// How many entries the directory claims (bounded by the file when
    /// walked: entries past its end are not there to read).
    entries: u64,
}

/// One entry of a [`TiffIfd`].
#[derive(Clone, Copy)]
struct TiffEntry {
    tag: u16,
    kind: u16,
    count: u64,
    /// Where the value (when it fits) or the offset to it is stored.
    field: usize,
}

impl<'a> TiffIfd<'a> {
    fn parse(b: &'a [u8]) -> Option<Self> {
        let little = match b.get(..2)? {
            b"II" => true,
            b"MM" => false,
            _ => return None,
        };
        let mut ifd = TiffIfd {
            b,
            little,
            big: false,
            first: 0,
            entries: 0,
        };
        match ifd.u16_at(2)? {
            42 => {
                let at = usize::try_from(ifd.u32_at(4)?).ok()?;
                ifd.entries = u64::from(ifd.u16_at(at)?);
                ifd.first = at.checked_add(2)?;
            }
            43 => {
                let at = usize::try_from(ifd.u64_at(8)?).ok()?;
                ifd.big = true;
                ifd.entries = ifd.u64_at(at)?;
                ifd.first = at.checked_add(8)?;
            }
            _ => return None,
        }
        Some(ifd)
    }

    fn bytes<const N: usize>(&self, pos: usize) -> Option<[u8; N]> {
        let s = self.b.get(pos..pos.checked_add(N)?)?;
        let mut out = [0; N];
        out.copy_from_slice(s);
        if self.little != cfg!(target_endian = "little") {
            out.reverse();
        }
        Some(out)
    }

    fn u16_at(&self, pos: usize) -> Option<u16> {
        self.bytes(pos).map(u16::from_ne_bytes)
    }

    fn u32_at(&self, pos: usize) -> Option<u64> {
        self.bytes(pos).map(|v| u64::from(u32::from_ne_bytes(v)))
    }

    fn u64_at(&self, pos: usize) -> Option<u64> {
        self.bytes(pos).map(u64::from_ne_bytes)
    }

    /// The entries there are bytes for, in order. A classic entry is tag
    /// (2), type (2), count (4), value or offset (4); BigTIFF widens the
    /// last two to 8 bytes each.
    fn entries(&self) -> impl Iterator<Item = TiffEntry> + '_ {
        let len = if self.big { 20 } else { 12 };
        (0..self.entries).map_while(move |i| {
            let at = self
                .first
                .checked_add(usize::try_from(i).ok()?.checked_mul(len)?)?;
            let count = if self.big {
                self.u64_at(at + 4)?
            } else {
                self.u32_at(at + 4)?
            };
            Some(TiffEntry {
                tag: self.u16_at(at)?,
                kind: self.u16_at(at + 2)?,
                count,
                field: at + if self.big { 12 } else { 8 },
            })
        })
    }

    fn find(&self, tag: u16) -> Option<TiffEntry> {
        self.entries().find(|e| e.tag == tag)
    }

    /// The `i`th value of a SHORT, LONG or LONG8 entry, read in place when
    /// the values fit in the entry and at the offset it holds otherwise.
    fn value(&self, e: TiffEntry, i: u64) -> Option<u64> {
        let size: u64 = match e.kind {
            3 => 2,
            4 => 4,
            16 => 8,
            _ => return None,
        };
        if i >= e.count {
            return None;
        }
        let inline = if self.big { 8 } else { 4 };
        let base = if e.count.checked_mul(size)? <= inline {
            e.field
        } else if self.big {
            usize::try_from(self.u64_at(e.field)?).ok()?
        } else {
            usize::try_from(self.u32_at(e.field)?).ok()?
        };
        let at = base.checked_add(usize::try_from(i.checked_mul(size)?).ok()?)?;
        match size {
            2 => self.u16_at(at).map(u64::from),
            4 => self.u32_at(at),
            _ => self.u64_at(at),
        }
    }

    fn first_value(&self, tag: u16) -> Option<u64> {
        self.value(self.find(tag)?, 0)
    }

    /// The bytes an entry's values occupy in the file.
    fn data(&self, e: TiffEntry) -> Option<&'a [u8]> {
        let start = if self.big {
            usize::try_from(self.u64_at(e.field)?).ok()?
        } else {
            usize::try_from(self.u32_at(e.field)?).ok()?
        };
        self.b
            .get(start..start.checked_add(usize::try_from(e.count).ok()?)?)
    }
}

/// The tag of a TIFF's first image directory that declares the most values,
/// and that count; `None` when the header or directory cannot be read.
pub(crate) fn tiff_largest_tag(b: &[u8]) -> Option<(u16, u64)> {
    let ifd = TiffIfd::parse(b)?;
    ifd.entries()
        .max_by_key(|e| e.count)
        .map(|e| (e.tag, e.count))
}

/// For a JPEG-compressed TIFF (compression 7): the first JPEG frame, in a
/// strip or tile or in the shared JPEGTables, larger than the strip or
/// tile it stands for, as (frame width, height, strip width, height).
///
/// The tiff crate decodes each strip as a whole JPEG sized by that JPEG's
/// own frame header, not by the TIFF's, so 4 KB claiming a 16000x16000
/// frame in a 16x16 image allocated 770 MB. A frame may be padded up to
/// whole 16-pixel blocks; anything larger is not this strip.
pub(crate) fn tiff_oversized_jpeg_frame(b: &[u8]) -> Option<(u32, u32, u32, u32)> {
    const COMPRESSION: u16 = 259;
    const IMAGE_WIDTH: u16 = 256;
    const IMAGE_LENGTH: u16 = 257;
    const ROWS_PER_STRIP: u16 = 278;
    const STRIP_OFFSETS: u16 = 273;
    const STRIP_BYTE_COUNTS: u16 = 279;
    const TILE_WIDTH: u16 = 322;
    const TILE_LENGTH: u16 = 323;
    const TILE_OFFSETS: u16 = 324;
    const TILE_BYTE_COUNTS: u16 = 325;
    const JPEG_TABLES: u16 = 347;

    let ifd = TiffIfd::parse(b)?;
    if ifd.first_value(COMPRESSION)? != 7 {
        return None;
    }
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let (offsets, counts, width, height) = match ifd.find(TILE_OFFSETS) {
        Some(tiles) => (
            tiles,
            ifd.find(TILE_BYTE_COUNTS)?,
            clamp(ifd.first_value(TILE_WIDTH)?),
            clamp(ifd.first_value(TILE_LENGTH)?),
        ),
        None => {
            let image_height = ifd.first_value(IMAGE_LENGTH)?;
            let rows = ifd.first_value(ROWS_PER_STRIP).unwrap_or(image_height);
            (
                ifd.find(STRIP_OFFSETS)?,
                ifd.find(STRIP_BYTE_COUNTS)?,
                clamp(ifd.first_value(IMAGE_WIDTH)?),
                clamp(rows.min(image_height)),
            )
        }
    };
    let fits = |(w, h): (u32, u32)| {
        u64::from(w) <= u64::from(width).next_multiple_of(16)
            && u64::from(h) <= u64::from(height).next_multiple_of(16)
    };
    let too_big = |frame: (u32, u32)| (frame.0, frame.1, width, height);
    // The tables are prepended to every strip, so a frame header there
    // would size every strip.
    if let Some(frame) = ifd
        .find(JPEG_TABLES)
        .and_then(|e| ifd.data(e))
        .and_then(jpeg_dimensions)
    {
        if !fits(frame) {
            return Some(too_big(frame));
        }
    }
    for i in 0..offsets.count {
        let (Some(start), Some(len)) = (ifd.value(offsets, i), ifd.value(counts, i)) else {
            break;
        };
        let strip = usize::try_from(start)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(start, len)| b.get(start..start.checked_add(len)?.min(b.len())));
        if let Some(frame) = strip.and_then(jpeg_dimensions) {
            if !fits(frame) {
                return Some(too_big(frame));
            }
        }
    }
    None
}

fn apng_frames(b: &[u8]) -> Option<u64> {
    let mut pos = 8;
    // acTL must come before IDAT; stop there.
    while let Some(header) = b.get(pos..pos + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        match &header[4..8] {
            b"acTL" => {
                let n = b.get(pos + 8..pos + 12)?;
                return Some(u64::from(u32::from_be_bytes([n[0], n[1], n[2], n[3]])));
            }
            b"IDAT" | b"IEND" => return Some(1),
            _ => pos = pos.checked_add(12)?.checked_add(len)?,
        }
    }
    Some(1)
}

fn webp_frames(b: &[u8]) -> Option<u64> {
    let mut pos = 12;
    let mut frames = 0u64;
    while let Some(header) = b.get(pos..pos + 8) {
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if &header[..4] == b"ANMF" {
            frames += 1;
        }
        // Chunks are padded to an even length.
        pos = pos.checked_add(8)?.checked_add(len)?.checked_add(len & 1)?;
    }
    Some(frames)
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
    fn jpeg_scans() {
        let cases: &[(&[u8], usize)] = &[
            (b"\xFF\xD8\xFF\xDA\x00\x02\x12\x34\xFF\xD9", 1),
            // Stuffed FF 00 and a restart marker inside the first scan.
            (
                b"\xFF\xD8\xFF\xDA\x00\x02\x12\xFF\x00\xFF\xD0\x34\xFF\xDA\x00\x02\x56\xFF\xD9",
                2,
            ),
            // FF DA inside an APP1 payload is data, not a scan.
            (
                b"\xFF\xD8\xFF\xE1\x00\x04\xFF\xDA\xFF\xDA\x00\x02\x12\xFF\xD9",
                1,
            ),
            // Nothing after EOI counts.
            (
                b"\xFF\xD8\xFF\xDA\x00\x02\x12\xFF\xD9\xFF\xDA\x00\x02\x12\xFF\xD9",
                1,
            ),
            // A scan that never ends, and a broken chain, count what came.
            (b"\xFF\xD8\xFF\xDA\x00\x02\x12\x34", 1),
            (b"\xFF\xD8junk", 0),
        ];
        for (bytes, want) in cases {
            assert_eq!(jpeg_scan_count(bytes, 10), *want, "{bytes:?}");
        }
        let mut many = b"\xFF\xD8".to_vec();
        for _ in 0..5 {
            many.extend_from_slice(b"\xFF\xDA\x00\x02\x12");
        }
        many.extend_from_slice(b"\xFF\xD9");
        assert_eq!(jpeg_scan_count(&many, 10), 5);
        // The walk stops once past the limit.
        assert_eq!(jpeg_scan_count(&many, 2), 3);
    }

    #[test]
    fn png_size_is_read_from_ihdr() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&60000u32.to_be_bytes());
        png.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(png_dimensions(&png), Some((60000, 7)));
        assert_eq!(png_dimensions(&png[..23]), None);
        png[12] = b'X';
        assert_eq!(png_dimensions(&png), None);
    }

    #[test]
    fn jpeg_icc_pieces_are_counted_and_capped() {
        let app2 = |seq: u8, total: u8, len: usize| {
            let mut s = b"\xFF\xE2".to_vec();
            s.extend_from_slice(&((2 + 14 + len) as u16).to_be_bytes());
            s.extend_from_slice(b"ICC_PROFILE\0");
            s.extend_from_slice(&[seq, total]);
            s.extend(std::iter::repeat_n(7u8, len));
            s
        };
        let mut jpeg = b"\xFF\xD8".to_vec();
        jpeg.extend(app2(2, 2, 3));
        jpeg.extend(app2(1, 2, 5));
        jpeg.extend_from_slice(b"\xFF\xDA\x00\x02");
        assert_eq!(jpeg_icc_bytes(&jpeg), 8);
        assert_eq!(jpeg_metadata(&jpeg).icc.map(|p| p.len()), Some(8));
        // 300 pieces: more than a profile can have; the list stops at 255.
        let mut many = b"\xFF\xD8".to_vec();
        for _ in 0..300 {
            many.extend(app2(1, 1, 1));
        }
        many.extend_from_slice(b"\xFF\xDA\x00\x02");
        assert_eq!(jpeg_icc_bytes(&many), 300);
        assert!(jpeg_metadata(&many).icc.is_none());
    }

    #[test]
    fn gif_metadata_extensions_are_measured() {
        let mut gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00".to_vec();
        gif.extend_from_slice(&[0; 6]); // global colour table, 2 entries
        gif.extend_from_slice(b"\x21\xFF\x0BXMP DataXMP\x03abc\x02de\x00");
        gif.extend_from_slice(b"\x21\xFE\x05hello\x00"); // a comment: not kept whole
        gif.extend_from_slice(b"\x21\xFF\x0BICCRGBG1012\x04abcd\x00");
        gif.extend_from_slice(b"\x3B");
        // XMP keeps its length bytes: 3 + 2 data bytes and 2 lengths.
        assert_eq!(gif_largest_metadata_extension(&gif), Some(("XMP", 7)));
        gif.truncate(gif.len() - 9);
        assert_eq!(gif_largest_metadata_extension(&gif), Some(("XMP", 7)));
        assert_eq!(gif_largest_metadata_extension(b"GIF89a"), None);
    }

    /// A TIFF with one directory of `entries` (tag, type, count, 4-byte
    /// field), little- or big-endian, then `tail`.
    fn tiff(little: bool, entries: &[(u16, u16, u32, u32)], tail: &[u8]) -> Vec<u8> {
        let u16b = |v: u16| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let u32b = |v: u32| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let mut out = if little {
            b"II".to_vec()
        } else {
            b"MM".to_vec()
        };
        out.extend_from_slice(&u16b(42));
        out.extend_from_slice(&u32b(8));
        out.extend_from_slice(&u16b(entries.len() as u16));
        for &(tag, kind, count, field) in entries {
            out.extend_from_slice(&u16b(tag));
            out.extend_from_slice(&u16b(kind));
            out.extend_from_slice(&u32b(count));
            // A SHORT that fits sits in the first two bytes of the field.
            if kind == 3 && count == 1 {
                out.extend_from_slice(&u16b(field as u16));
                out.extend_from_slice(&[0, 0]);
            } else {
                out.extend_from_slice(&u32b(field));
            }
        }
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(tail);
        out
    }

    #[test]
    fn tiff_largest_tag_in_either_byte_order_and_bigtiff() {
        for little in [true, false] {
            let file = tiff(
                little,
                &[(256, 3, 1, 9), (273, 4, 5000, 0), (34675, 7, 40, 0)],
                &[],
            );
            assert_eq!(
                tiff_largest_tag(&file),
                Some((273, 5000)),
                "little: {little}"
            );
            // Entries past the end of the file are not read.
            assert_eq!(tiff_largest_tag(&file[..10 + 12]), Some((256, 1)));
        }
        // BigTIFF: header, IFD at 16 with one 20-byte entry.
        let mut big = b"II+\0\x08\0\0\0".to_vec();
        big.extend_from_slice(&16u64.to_le_bytes());
        big.extend_from_slice(&1u64.to_le_bytes());
        big.extend_from_slice(&34675u16.to_le_bytes());
        big.extend_from_slice(&7u16.to_le_bytes());
        big.extend_from_slice(&(1u64 << 40).to_le_bytes());
        big.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(tiff_largest_tag(&big), Some((34675, 1 << 40)));
        assert_eq!(tiff_largest_tag(b"II*\0"), None);
    }

    #[test]
    fn tiff_jpeg_frames_must_fit_their_strip() {
        // SOI, SOF0 of the given size, SOS: all jpeg_dimensions reads.
        let jpeg = |w: u16, h: u16| {
            let mut j = b"\xFF\xD8\xFF\xC0\x00\x0B\x08".to_vec();
            j.extend_from_slice(&h.to_be_bytes());
            j.extend_from_slice(&w.to_be_bytes());
            j.extend_from_slice(b"\x01\x01\x11\x00\xFF\xDA\x00\x02\xFF\xD9");
            j
        };
        // Two strips of 100x8 rows (100x12 image); data after 8 entries.
        let data_at = 8 + 2 + 8 * 12 + 4;
        let file = |compression: u32, frames: [(u16, u16); 2]| {
            let (a, b) = (
                jpeg(frames[0].0, frames[0].1),
                jpeg(frames[1].0, frames[1].1),
            );
            let offsets_at = data_at;
            let counts_at = data_at + 8;
            let first = data_at + 16;
            let mut tail = Vec::new();
            tail.extend_from_slice(&(first as u32).to_le_bytes());
            tail.extend_from_slice(&((first + a.len()) as u32).to_le_bytes());
            tail.extend_from_slice(&(a.len() as u32).to_le_bytes());
            tail.extend_from_slice(&(b.len() as u32).to_le_bytes());
            tail.extend(a);
            tail.extend(b);
            tiff(
                true,
                &[
                    (256, 3, 1, 100),
                    (257, 3, 1, 12),
                    (259, 3, 1, compression),
                    (262, 3, 1, 1),
                    (273, 4, 2, offsets_at as u32),
                    (277, 3, 1, 1),
                    (278, 3, 1, 8),
                    (279, 4, 2, counts_at as u32),
                ],
                &tail,
            )
        };
        // Frames padded up to whole 16-pixel blocks still fit.
        assert_eq!(
            tiff_oversized_jpeg_frame(&file(7, [(100, 8), (112, 16)])),
            None
        );
        assert_eq!(
            tiff_oversized_jpeg_frame(&file(7, [(100, 8), (16000, 8)])),
            Some((16000, 8, 100, 8))
        );
        assert_eq!(
            tiff_oversized_jpeg_frame(&file(7, [(100, 17), (100, 8)])),
            Some((100, 17, 100, 8))
        );
        // Not JPEG-compressed: the strips are not JPEGs to read.
        assert_eq!(
            tiff_oversized_jpeg_frame(&file(1, [(16000, 16000); 2])),
            None
        );
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

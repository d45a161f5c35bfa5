//! TIFF directory walk: the largest tag payload and JPEG-compressed strips
//! whose frame is larger than the strip they sit in.

use super::jpeg_dimensions;

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

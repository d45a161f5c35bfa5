//! GIF block walk: frame count and the largest metadata extension
//! (comment, application, plain text) an upload carries.

pub(super) fn gif_frames(b: &[u8]) -> Option<u64> {
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

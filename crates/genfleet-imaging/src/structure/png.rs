//! PNG chunk checks: size from IHDR, APNG frame count from acTL, and
//! completeness via the IEND chunk.

/// Length in bytes of a PNG IEND chunk: length 0, type "IEND" and its CRC,
/// which is a constant because the chunk has no data.
pub(super) const PNG_IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];

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

pub(super) fn apng_frames(b: &[u8]) -> Option<u64> {
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

/// Whether the PNG has its IEND chunk.
///
/// The png decoder stops once it has the pixel data and does not read on to
/// IEND, so a file cut inside IEND decodes. That file is still damaged (it
/// failed to transfer completely), so we treat it like any truncation.
pub(crate) fn png_is_complete(bytes: &[u8]) -> bool {
    bytes.windows(PNG_IEND.len()).rev().any(|w| w == PNG_IEND)
}

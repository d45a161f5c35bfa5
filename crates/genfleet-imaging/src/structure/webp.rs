//! WebP RIFF chunk walk: frame count of an animated WebP (one `ANMF` chunk
//! per frame).

pub(super) fn webp_frames(b: &[u8]) -> Option<u64> {
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

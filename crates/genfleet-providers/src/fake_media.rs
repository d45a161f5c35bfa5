//! Small, valid media files that every fake provider serves and the tests
//! send as inputs.

/// A valid RGB PNG with a gradient; `variant` shifts the blue channel so
/// several outputs of one request differ.
///
/// Written by hand because this crate has no image encoder: the zlib stream
/// uses stored (uncompressed) deflate blocks, so only CRC-32 and Adler-32
/// are needed.
pub fn gradient_png(width: u32, height: u32, variant: u32) -> Vec<u8> {
    let mut raw = Vec::with_capacity(((width * 3 + 1) * height) as usize);
    for y in 0..height {
        raw.push(0); // filter type: none
        for x in 0..width {
            raw.push((x * 255 / width.max(1)) as u8);
            raw.push((y * 255 / height.max(1)) as u8);
            raw.push(((x + y + variant * 64) % 256) as u8);
        }
    }

    let mut zlib = vec![0x78, 0x01];
    let mut blocks = raw.chunks(usize::from(u16::MAX)).peekable();
    while let Some(block) = blocks.next() {
        let last = blocks.peek().is_none();
        zlib.push(u8::from(last)); // BFINAL, BTYPE=00 (stored)
        let len = block.len() as u16;
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    zlib.extend_from_slice(&adler32(&raw).to_be_bytes());

    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, adaptive filters, no interlace

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (b"IHDR", &ihdr[..]),
        (b"IDAT", &zlib[..]),
        (b"IEND", &[][..]),
    ] {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = png.len();
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        let crc = crc32(&png[start..]);
        png.extend_from_slice(&crc.to_be_bytes());
    }
    png
}

/// A small blob that starts with a valid MP4 `ftyp` box, followed by a
/// `free` box of padding: enough for content sniffing, not a playable video.
pub fn mp4() -> Vec<u8> {
    const PADDING: u32 = 2048;
    let mut bytes = Vec::with_capacity(24 + 8 + PADDING as usize);
    bytes.extend_from_slice(&24u32.to_be_bytes());
    bytes.extend_from_slice(b"ftypisom");
    bytes.extend_from_slice(&0x200u32.to_be_bytes()); // minor version
    bytes.extend_from_slice(b"isomiso2");
    bytes.extend_from_slice(&(8 + PADDING).to_be_bytes());
    bytes.extend_from_slice(b"free");
    bytes.extend(std::iter::repeat_n(0u8, PADDING as usize));
    bytes
}

/// CRC-32 (ISO-HDLC, as PNG uses), bitwise: slow, but fine for test images.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % MOD;
        b = (b + a) % MOD;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_known_values() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn png_is_well_formed() {
        let png = gradient_png(256, 256, 1);
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 256);
        assert!(png.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]));
        // Header + 2 bytes + 4 stored blocks of 5 header bytes + data + adler.
        let raw = (256 * 3 + 1) * 256;
        assert_eq!(png.len(), 8 + 25 + 12 + 2 + 5 * 4 + raw + 4 + 12);
    }

    #[test]
    fn mp4_starts_with_ftyp() {
        let mp4 = mp4();
        assert_eq!(&mp4[..8], &[0, 0, 0, 0x18, b'f', b't', b'y', b'p']);
        assert_eq!(mp4.len(), 24 + 8 + 2048);
    }
}

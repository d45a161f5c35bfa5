//! Tests of the container checks, on hand-built JPEG, PNG, GIF and TIFF bytes.

use super::png::PNG_IEND;
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

//! The wire forms of Open Inference Protocol (KServe v2) tensors that the
//! KServe client and its fake share: BYTES elements in Triton's binary form,
//! the split of a binary-extension body into its JSON header and tensor
//! sections, and content sniffing of the encoded images that travel in them.
//!
//! Pure functions over bytes: no HTTP, no JSON schema. Every length read
//! from a peer (a `binary_data_size`, an element's length prefix, an
//! `Inference-Header-Content-Length`) is checked against the bytes actually
//! there before anything is sliced, so a lying peer gets an error, never a
//! panic. Errors are plain messages; the caller decides their class.

use bytes::Bytes;

/// Each BYTES element in binary form starts with its length as a 4-byte
/// little-endian unsigned integer (Triton's convention, adopted by the
/// binary tensor data extension).
pub(crate) const LENGTH_PREFIX: usize = 4;

/// Bytes `elements` take in binary form: each element plus its prefix.
pub(crate) fn encoded_len(elements: &[&[u8]]) -> usize {
    elements
        .iter()
        .map(|element| element.len().saturating_add(LENGTH_PREFIX))
        .fold(0, usize::saturating_add)
}

/// Appends `elements` to `out` in binary form: for each, its length as a
/// `u32` little-endian, then its bytes.
///
/// # Errors
///
/// When an element is longer than a `u32` can say (4 GiB); nothing is
/// appended then.
pub(crate) fn encode_bytes_elements(elements: &[&[u8]], out: &mut Vec<u8>) -> Result<(), String> {
    for (index, element) in elements.iter().enumerate() {
        if u32::try_from(element.len()).is_err() {
            return Err(format!(
                "element {index} is {} bytes, above the {} byte limit of a BYTES element",
                element.len(),
                u32::MAX
            ));
        }
    }
    out.reserve(encoded_len(elements));
    for element in elements {
        // Checked above.
        let len = u32::try_from(element.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(element);
    }
    Ok(())
}

/// Splits a BYTES tensor in binary form into its elements, which must be
/// exactly `expected` (the element count its shape gives) and fill `data`
/// exactly. The elements share `data`'s buffer.
///
/// # Errors
///
/// A prefix cut short, an element whose length runs past the data, fewer
/// or more elements than `expected`, or bytes left over.
pub(crate) fn decode_bytes_elements(data: &Bytes, expected: usize) -> Result<Vec<Bytes>, String> {
    // `expected` comes from the peer's shape: never reserve by it blindly.
    let mut elements = Vec::with_capacity(expected.min(64));
    let mut offset = 0usize;
    while offset < data.len() {
        let index = elements.len();
        if index >= expected {
            return Err(format!(
                "expected {expected} element(s), found more: {} byte(s) left after element {}",
                data.len() - offset,
                expected.saturating_sub(1)
            ));
        }
        let prefix_end = offset.saturating_add(LENGTH_PREFIX);
        let prefix: [u8; LENGTH_PREFIX] = data
            .get(offset..prefix_end)
            .and_then(|prefix| prefix.try_into().ok())
            .ok_or_else(|| {
                format!(
                    "element {index} starts with a length prefix cut short: expected {LENGTH_PREFIX} bytes, found {}",
                    data.len() - offset
                )
            })?;
        let len = u32::from_le_bytes(prefix) as usize;
        let end = prefix_end
            .checked_add(len)
            .filter(|end| *end <= data.len())
            .ok_or_else(|| {
                format!(
                    "element {index} claims {len} bytes, but only {} follow its length prefix",
                    data.len() - prefix_end
                )
            })?;
        elements.push(data.slice(prefix_end..end));
        offset = end;
    }
    if elements.len() != expected {
        return Err(format!(
            "expected {expected} element(s), found {}",
            elements.len()
        ));
    }
    Ok(elements)
}

/// Splits a binary-extension body into its JSON header (the first
/// `header_len` bytes, from `Inference-Header-Content-Length`) and the
/// tensor sections after it.
///
/// # Errors
///
/// When the header would run past the body.
pub(crate) fn split_body(body: &Bytes, header_len: usize) -> Result<(Bytes, Bytes), String> {
    if header_len > body.len() {
        return Err(format!(
            "Inference-Header-Content-Length is {header_len}, but the body holds only {} bytes",
            body.len()
        ));
    }
    Ok((body.slice(..header_len), body.slice(header_len..)))
}

/// Cuts the tensor sections after a binary-extension header into one part
/// per tensor, in order: `Some(size)` for a tensor sent as binary data (its
/// `binary_data_size`), `None` for one sent in the JSON. The sizes must add
/// up to exactly the bytes there.
///
/// # Errors
///
/// When a size runs past the sections, or they are not all used.
pub(crate) fn take_sections(
    sections: &Bytes,
    sizes: &[(&str, Option<u64>)],
) -> Result<Vec<Option<Bytes>>, String> {
    let mut parts = Vec::with_capacity(sizes.len());
    let mut offset = 0usize;
    for (name, size) in sizes {
        let Some(size) = size else {
            parts.push(None);
            continue;
        };
        let end = usize::try_from(*size)
            .ok()
            .and_then(|size| offset.checked_add(size))
            .filter(|end| *end <= sections.len())
            .ok_or_else(|| {
                format!(
                    "tensor {name:?} claims binary_data_size {size}, but only {} byte(s) remain after the header",
                    sections.len() - offset
                )
            })?;
        parts.push(Some(sections.slice(offset..end)));
        offset = end;
    }
    if offset != sections.len() {
        return Err(format!(
            "binary_data_size values add up to {offset} bytes, but {} follow the header",
            sections.len()
        ));
    }
    Ok(parts)
}

/// The content type of an encoded image, from its magic bytes: PNG, JPEG or
/// WebP, else `application/octet-stream`. The server's answer carries no
/// content type per element, and the bytes are what the caller will store.
pub(crate) fn sniff_content_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "image/jpeg"
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        "image/webp"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(elements: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_bytes_elements(elements, &mut out).unwrap();
        out
    }

    #[test]
    fn encodes_triton_length_prefixed_elements() {
        assert_eq!(
            encode(&[b"ab", b"", b"xyz"]),
            b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x03\x00\x00\x00xyz"
        );
        assert_eq!(encoded_len(&[b"ab", b"", b"xyz"]), 4 + 2 + 4 + 4 + 3);
        assert!(encode(&[]).is_empty());
    }

    #[test]
    fn decodes_what_triton_sends() {
        let data = Bytes::from_static(b"\x05\x00\x00\x00hello\x00\x00\x00\x00");
        let elements = decode_bytes_elements(&data, 2).unwrap();
        assert_eq!(elements, vec![Bytes::from_static(b"hello"), Bytes::new()]);
        // A 0-element tensor has no bytes at all.
        assert!(decode_bytes_elements(&Bytes::new(), 0).unwrap().is_empty());
    }

    #[test]
    fn refuses_lying_or_short_data() {
        let check = |data: &'static [u8], expected: usize, message: &str| {
            let err = decode_bytes_elements(&Bytes::from_static(data), expected).unwrap_err();
            assert!(err.contains(message), "{err}");
        };
        // A length larger than what follows (even u32::MAX) is an error.
        check(
            b"\x09\x00\x00\x00hello",
            1,
            "claims 9 bytes, but only 5 follow",
        );
        check(b"\xff\xff\xff\xffhello", 1, "claims 4294967295 bytes");
        check(b"\x05\x00\x00", 1, "cut short: expected 4 bytes, found 3");
        check(b"\x01\x00\x00\x00a\x01\x00\x00\x00b", 1, "found more");
        check(b"\x01\x00\x00\x00a", 2, "expected 2 element(s), found 1");
        check(b"", 1, "expected 1 element(s), found 0");
    }

    #[test]
    fn splits_binary_bodies_and_checks_their_sizes() {
        let body = Bytes::from_static(b"{\"h\":1}AAABB");
        let (header, rest) = split_body(&body, 7).unwrap();
        assert_eq!((&header[..], &rest[..]), (&b"{\"h\":1}"[..], &b"AAABB"[..]));
        assert!(split_body(&body, 13)
            .unwrap_err()
            .contains("holds only 12 bytes"));

        let parts = take_sections(&rest, &[("a", Some(3)), ("j", None), ("b", Some(2))]).unwrap();
        assert_eq!(
            parts,
            vec![
                Some(Bytes::from_static(b"AAA")),
                None,
                Some(Bytes::from_static(b"BB"))
            ]
        );
        let err = take_sections(&rest, &[("a", Some(3)), ("b", Some(3))]).unwrap_err();
        assert!(
            err.contains("\"b\" claims binary_data_size 3, but only 2 byte(s) remain"),
            "{err}"
        );
        let err = take_sections(&rest, &[("a", Some(u64::MAX))]).unwrap_err();
        assert!(err.contains("claims binary_data_size"), "{err}");
        let err = take_sections(&rest, &[("a", Some(3))]).unwrap_err();
        assert!(
            err.contains("add up to 3 bytes, but 5 follow the header"),
            "{err}"
        );
    }

    #[test]
    fn sniffs_image_types() {
        let png = crate::fake_media::gradient_png(2, 2, 0);
        assert_eq!(sniff_content_type(&png), "image/png");
        assert_eq!(sniff_content_type(b"\xFF\xD8\xFF\xE0rest"), "image/jpeg");
        assert_eq!(sniff_content_type(b"RIFF\x10\0\0\0WEBPVP8 "), "image/webp");
        assert_eq!(
            sniff_content_type(b"RIFF\x10\0\0\0WAVE"),
            "application/octet-stream"
        );
        assert_eq!(sniff_content_type(b""), "application/octet-stream");
    }

    proptest! {
        #[test]
        fn bytes_elements_round_trip(
            elements in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)
        ) {
            let slices: Vec<&[u8]> = elements.iter().map(Vec::as_slice).collect();
            let mut out = Vec::new();
            encode_bytes_elements(&slices, &mut out).unwrap();
            prop_assert_eq!(out.len(), encoded_len(&slices));
            let decoded = decode_bytes_elements(&Bytes::from(out), elements.len()).unwrap();
            let decoded: Vec<Vec<u8>> = decoded.iter().map(|b| b.to_vec()).collect();
            prop_assert_eq!(decoded, elements);
        }

        /// Whatever the bytes and the expected count, decoding answers
        /// without panicking, and whatever it accepts re-encodes to the same
        /// bytes.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..96),
            expected in 0usize..6,
        ) {
            let data = Bytes::from(data);
            if let Ok(elements) = decode_bytes_elements(&data, expected) {
                let mut again = Vec::new();
                let slices: Vec<&[u8]> = elements.iter().map(|e| &e[..]).collect();
                encode_bytes_elements(&slices, &mut again).unwrap();
                prop_assert_eq!(&again[..], &data[..]);
            }
        }

        #[test]
        fn sections_never_panic(
            len in 0usize..64,
            sizes in proptest::collection::vec(proptest::option::of(any::<u64>()), 0..5),
        ) {
            let sections = Bytes::from(vec![7u8; len]);
            let named: Vec<(&str, Option<u64>)> = sizes.iter().map(|s| ("t", *s)).collect();
            if let Ok(parts) = take_sections(&sections, &named) {
                let total: usize = parts.iter().flatten().map(Bytes::len).sum();
                prop_assert_eq!(total, len);
            }
        }
    }
}

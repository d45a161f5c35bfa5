//! The binary tensor data extension (KServe v2 / Triton), from the
//! protocol's text and independent of the client's `tensor` module:
//!
//! - A binary request or answer is a JSON header of exactly
//!   `Inference-Header-Content-Length` bytes, followed by the binary data
//!   of each tensor that declares `parameters.binary_data_size`, in the
//!   order the tensors appear in the header, back to back, nothing after.
//! - A BYTES tensor's data is its elements in row-major order, each a
//!   4-byte little-endian unsigned length followed by that many bytes.
//!
//! Every length read from the peer is checked against what is there
//! before anything is sliced.

use axum::body::Bytes;

/// The header that says how long the JSON part is (header names are
/// case-insensitive; this is how the protocol's text spells it,
/// lowercased).
pub(super) const HEADER_LENGTH: &str = "inference-header-content-length";

/// The JSON header and the data after it.
pub(super) fn split(body: &Bytes, header_len: usize) -> Result<(Bytes, Bytes), String> {
    if body.len() < header_len {
        return Err(format!(
            "Inference-Header-Content-Length {header_len} is past the end of a {} byte body",
            body.len()
        ));
    }
    Ok((body.slice(0..header_len), body.slice(header_len..)))
}

/// The data after the header, one part per tensor in header order:
/// `Some` for one with a `binary_data_size`, `None` for one whose
/// data is in the JSON. The sizes must use up the data exactly.
pub(super) fn sections(
    data: &Bytes,
    sizes: &[(&str, Option<u64>)],
) -> Result<Vec<Option<Bytes>>, String> {
    let mut rest = data.clone();
    let mut parts = Vec::new();
    for (name, size) in sizes {
        match size {
            None => parts.push(None),
            Some(size) => {
                let size = usize::try_from(*size)
                    .ok()
                    .filter(|size| *size <= rest.len())
                    .ok_or_else(|| {
                        format!(
                            "input '{name}' declares binary_data_size {size}, more than the {} byte(s) left",
                            rest.len()
                        )
                    })?;
                parts.push(Some(rest.split_to(size)));
            }
        }
    }
    if !rest.is_empty() {
        return Err(format!(
            "{} byte(s) of binary data follow the last input's",
            rest.len()
        ));
    }
    Ok(parts)
}

/// A BYTES tensor's `expected` elements.
pub(super) fn decode_bytes(data: &Bytes, expected: usize) -> Result<Vec<Bytes>, String> {
    let mut rest = data.clone();
    let mut elements = Vec::new();
    while !rest.is_empty() {
        if elements.len() == expected {
            return Err(format!(
                "{} byte(s) follow the {expected} element(s) of the shape",
                rest.len()
            ));
        }
        if rest.len() < 4 {
            return Err(format!(
                "element {} has a {} byte length, not 4",
                elements.len(),
                rest.len()
            ));
        }
        let prefix = rest.split_to(4);
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= rest.len())
            .ok_or_else(|| {
                format!(
                    "element {} is {len} byte(s) long, more than the {} left",
                    elements.len(),
                    rest.len()
                )
            })?;
        elements.push(rest.split_to(len));
    }
    if elements.len() != expected {
        return Err(format!(
            "{} element(s) where the shape says {expected}",
            elements.len()
        ));
    }
    Ok(elements)
}

/// `elements` as a BYTES tensor's data.
pub(super) fn encode_bytes(elements: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    for element in elements {
        let len = u32::try_from(element.len())
            .map_err(|_| format!("an element of {} bytes is too long", element.len()))?;
        data.extend_from_slice(&len.to_le_bytes());
        data.extend_from_slice(element);
    }
    Ok(data)
}

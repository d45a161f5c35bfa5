//! Unit tests of the fake's own parts: the contract it declares, its
//! `wire` code and its request parser.

use super::body::parse_request;
use super::routes::metadata;
use super::*;

#[test]
fn declares_our_contract() {
    let inpaint = metadata(Behaviour::Inpaint, "inpaint");
    let names: Vec<&str> = inpaint["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|input| input["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [IMAGE, MASK, PROMPT]);
    assert_eq!(
        metadata(Behaviour::Raw, "raw")["outputs"][0]["datatype"],
        "FP32"
    );
}

/// The fake's wire code against bytes written out by hand from the
/// protocol's text, not produced by any encoder of this crate.
#[test]
fn wire_reads_and_writes_the_documented_form() {
    // Two BYTES elements: "ab" and "" (a zero length is allowed).
    let data = Bytes::from_static(&[2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
    let elements = wire::decode_bytes(&data, 2).unwrap();
    assert_eq!(elements, [Bytes::from_static(b"ab"), Bytes::new()]);
    assert_eq!(
        wire::encode_bytes(&[b"ab".to_vec(), Vec::new()]).unwrap(),
        &data[..]
    );
    // A length read big-endian would be 0x02000000: little-endian only.
    assert_eq!(
        wire::encode_bytes(&[vec![7; 258]]).unwrap()[..4],
        [2, 1, 0, 0]
    );
    // Short prefix, a length past the end, too many or too few elements.
    assert!(wire::decode_bytes(&Bytes::from_static(&[1, 0]), 1).is_err());
    assert!(wire::decode_bytes(&Bytes::from_static(&[9, 0, 0, 0, 1]), 1).is_err());
    assert!(wire::decode_bytes(&data, 1).is_err());
    assert!(wire::decode_bytes(&data, 3).is_err());
    // Sections in header order; a JSON tensor takes none; all used.
    let after = Bytes::from_static(b"xxxyy");
    let parts = wire::sections(&after, &[("A", Some(3)), ("B", None), ("C", Some(2))]).unwrap();
    assert_eq!(
        parts,
        [
            Some(Bytes::from_static(b"xxx")),
            None,
            Some(Bytes::from_static(b"yy"))
        ]
    );
    assert!(wire::sections(&after, &[("A", Some(3))]).is_err());
    assert!(wire::sections(&after, &[("A", Some(6))]).is_err());
    assert!(wire::sections(&after, &[("A", Some(u64::MAX))]).is_err());
    let body = Bytes::from_static(b"{}rest");
    let (json, rest) = wire::split(&body, 2).unwrap();
    assert_eq!((&json[..], &rest[..]), (&b"{}"[..], &b"rest"[..]));
    assert!(wire::split(&body, 7).is_err());
}

#[test]
fn parses_json_and_binary_requests_alike() {
    let json_body = json!({
        "id": "j",
        "inputs": [{"name": PROMPT, "shape": [1], "datatype": "BYTES", "data": ["héllo"]}],
    });
    let request = parse_request(
        "m",
        None,
        &HeaderMap::new(),
        &Bytes::from(json_body.to_string()),
    )
    .unwrap();
    assert!(!request.binary);
    let prompt = request.input(PROMPT).unwrap();
    assert_eq!(&prompt.elements[0][..], "héllo".as_bytes());
    assert_eq!(prompt.byte_size, 4 + "héllo".len());

    let header = json!({
        "inputs": [{"name": PROMPT, "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 10}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    // Written out by hand: the length prefix, little-endian, then the
    // UTF-8 bytes.
    body.extend_from_slice(&[6, 0, 0, 0]);
    body.extend_from_slice("héllo".as_bytes());
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_LENGTH, HeaderValue::from(header.len()));
    let request = parse_request("m", Some("1"), &headers, &Bytes::from(body.clone())).unwrap();
    assert!(request.binary);
    assert_eq!(
        &request.input(PROMPT).unwrap().elements[0][..],
        "héllo".as_bytes()
    );

    // A header length past the body, or sections that do not add up.
    headers.insert(HEADER_LENGTH, HeaderValue::from(body.len() + 1));
    assert!(parse_request("m", None, &headers, &Bytes::from(body)).is_err());
}

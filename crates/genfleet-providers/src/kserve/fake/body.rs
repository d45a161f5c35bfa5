//! Reading an infer request body, JSON or binary form, into a
//! [`ReceivedRequest`], and writing the answer in either form.

use super::*;

/// Parses an infer request in JSON or binary form.
pub(super) fn parse_request(
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<ReceivedRequest, String> {
    let header_len = headers
        .get(HEADER_LENGTH)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|value| value.trim().parse::<usize>().ok())
                .ok_or_else(|| "Unable to parse Inference-Header-Content-Length".to_owned())
        })
        .transpose()?;
    let (json, sections) = match header_len {
        Some(len) => wire::split(body, len)?,
        None => (body.clone(), Bytes::new()),
    };
    let request: Value = serde_json::from_slice(&json)
        .map_err(|err| format!("failed to parse the request JSON buffer: {err}"))?;
    let inputs = request
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or("the request has no 'inputs' array")?;
    let mut sizes = Vec::with_capacity(inputs.len());
    for input in inputs {
        let input_name = input.get("name").and_then(Value::as_str).unwrap_or("?");
        let size =
            match input.pointer("/parameters/binary_data_size") {
                None => None,
                Some(size) => Some(size.as_u64().ok_or_else(|| {
                    format!("Unable to parse 'binary_data_size' of '{input_name}'")
                })?),
            };
        if size.is_some() == input.get("data").is_some() {
            return Err(format!(
                "input '{input_name}' must set exactly one of 'data' and 'binary_data_size'"
            ));
        }
        sizes.push((input_name, size));
    }
    let parts = wire::sections(&sections, &sizes)?;
    let mut received = Vec::with_capacity(inputs.len());
    for (input, part) in inputs.iter().zip(parts) {
        received.push(parse_input(input, part)?);
    }
    let outputs = request
        .get("outputs")
        .and_then(Value::as_array)
        .map(|outputs| {
            outputs
                .iter()
                .map(|output| {
                    let output_name = output.get("name").and_then(Value::as_str).unwrap_or("?");
                    let binary =
                        output.pointer("/parameters/binary_data") == Some(&Value::Bool(true));
                    (output_name.to_owned(), binary)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ReceivedRequest {
        model: name.to_owned(),
        version: version.map(str::to_owned),
        id: request.get("id").and_then(Value::as_str).map(str::to_owned),
        binary: header_len.is_some(),
        parameters: request
            .get("parameters")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        inputs: received,
        outputs,
    })
}

fn parse_input(input: &Value, part: Option<Bytes>) -> Result<ReceivedTensor, String> {
    let name = input
        .get("name")
        .and_then(Value::as_str)
        .ok_or("an input has no name")?
        .to_owned();
    let datatype = input
        .get("datatype")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("input '{name}' has no datatype"))?
        .to_owned();
    let shape: Vec<i64> = input
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("input '{name}' has no shape"))?
        .iter()
        .map(|dim| dim.as_i64().filter(|dim| *dim >= 0))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("input '{name}' has an invalid shape"))?;
    let count = shape
        .iter()
        .try_fold(1usize, |count, dim| {
            count.checked_mul(usize::try_from(*dim).ok()?)
        })
        .filter(|count| *count <= 1024)
        .ok_or_else(|| format!("input '{name}' has too many elements"))?;
    let (byte_size, elements) = match (part, datatype.as_str()) {
        (Some(part), "BYTES") => {
            let elements =
                wire::decode_bytes(&part, count).map_err(|err| format!("input '{name}': {err}"))?;
            (part.len(), elements)
        }
        (Some(part), _) => (part.len(), Vec::new()),
        (None, "BYTES") => {
            let mut strings = Vec::new();
            flatten_strings(input.get("data").unwrap_or(&Value::Null), &mut strings)
                .map_err(|err| format!("input '{name}': {err}"))?;
            if strings.len() != count {
                return Err(format!(
                    "Unable to parse 'data' of '{name}': shape does not match true shape of 'data' field"
                ));
            }
            let elements: Vec<Bytes> = strings
                .into_iter()
                .map(|text| Bytes::copy_from_slice(text.as_bytes()))
                .collect();
            let size = elements.iter().map(|element| element.len() + 4).sum();
            (size, elements)
        }
        (None, _) => (0, Vec::new()),
    };
    Ok(ReceivedTensor {
        name,
        datatype,
        shape,
        byte_size,
        elements,
    })
}

fn flatten_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) -> Result<(), String> {
    match value {
        Value::String(text) => out.push(text),
        Value::Array(items) => {
            for item in items {
                flatten_strings(item, out)?;
            }
        }
        _ => return Err("BYTES data must be strings".into()),
    }
    Ok(())
}

pub(super) enum Form {
    Json,
    Binary,
    /// Binary, with a `binary_data_size` 1000 bytes larger than what follows.
    Lying,
}

pub(super) fn answer(
    name: &str,
    id: Option<&str>,
    images: &[Vec<u8>],
    shape: &[u64],
    form: Form,
) -> Response {
    let mut output = json!({"name": OUTPUT, "datatype": "BYTES", "shape": shape});
    let mut header = json!({"model_name": name, "model_version": "1"});
    if let Some(id) = id {
        header["id"] = Value::from(id);
    }
    let data = match form {
        Form::Json => {
            let elements: Vec<Value> = images
                .iter()
                .map(|image| encode_base64(image).into())
                .collect();
            output["data"] = Value::Array(elements);
            header["outputs"] = json!([output]);
            return (StatusCode::OK, axum::Json(header)).into_response();
        }
        Form::Binary | Form::Lying => match wire::encode_bytes(images) {
            Ok(data) => data,
            Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, err),
        },
    };
    let claimed = match form {
        Form::Lying => data.len() + 1000,
        _ => data.len(),
    };
    output["parameters"] = json!({ "binary_data_size": claimed });
    header["outputs"] = json!([output]);
    let mut body = header.to_string().into_bytes();
    let header_len = body.len();
    body.extend_from_slice(&data);
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(HEADER_LENGTH, HeaderValue::from(header_len));
    response
}

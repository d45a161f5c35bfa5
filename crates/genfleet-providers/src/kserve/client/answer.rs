//! Reading an infer answer, binary or JSON form, into images: the output
//! tensor's shape and elements, checked before anything is trusted.

use super::*;

/// The JSON part of an infer answer, as far as this client reads it.
#[derive(Debug, Deserialize)]
pub(super) struct InferAnswer {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    outputs: Vec<OutputTensor>,
}

#[derive(Debug, Deserialize)]
pub(super) struct OutputTensor {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

impl OutputTensor {
    fn binary_data_size(&self) -> Result<Option<u64>, String> {
        match self.parameters.get("binary_data_size") {
            None => Ok(None),
            Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                format!(
                    "output {:?} has binary_data_size {value}, expected a byte count",
                    self.name
                )
            }),
        }
    }
}

/// The images of an infer answer, and its id.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) id: Option<String>,
    pub(crate) images: Vec<Bytes>,
}

pub(super) fn malformed(message: String) -> ProviderError {
    ProviderError::Malformed { message }
}

/// Reads an infer answer: JSON only, or (with `header_len`, the value of
/// `Inference-Header-Content-Length`) a JSON header followed by the binary
/// outputs in order. Takes the configured output's elements.
///
/// # Errors
///
/// [`ProviderError::Malformed`] for a body that does not add up or lacks
/// the output, a datatype other than BYTES, a shape other than `[1]`, `[N]`
/// or `[1, N]`, or elements that do not match it; an image above
/// `max_output_bytes` as a rejection.
pub(crate) fn parse_answer(
    config: &KServeConfig,
    header_len: Option<&str>,
    body: Bytes,
) -> Result<Answer, ProviderError> {
    let (json, sections) = match header_len {
        Some(raw) => {
            let len: usize = raw.trim().parse().map_err(|_| {
                malformed(format!(
                    "infer answer's Inference-Header-Content-Length is {raw:?}, expected a byte count"
                ))
            })?;
            split_body(&body, len).map_err(|err| malformed(format!("infer answer: {err}")))?
        }
        None => (body, Bytes::new()),
    };
    let answer: InferAnswer = serde_json::from_slice(&json).map_err(|err| {
        malformed(format!(
            "infer answer is not the expected JSON: {}",
            json_problem(&err)
        ))
    })?;
    let sizes = answer
        .outputs
        .iter()
        .map(|output| Ok((output.name.as_str(), output.binary_data_size()?)))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|err| malformed(format!("infer answer: {err}")))?;
    if header_len.is_none() {
        if let Some((name, _)) = sizes.iter().find(|(_, size)| size.is_some()) {
            return Err(malformed(format!(
                "infer answer: output {name:?} has a binary_data_size, but the answer has no Inference-Header-Content-Length"
            )));
        }
    }
    let parts = take_sections(&sections, &sizes)
        .map_err(|err| malformed(format!("infer answer: {err}")))?;

    let wanted = config.output.as_str();
    let Some((output, part)) = answer
        .outputs
        .iter()
        .zip(parts)
        .find(|(output, _)| output.name == wanted)
    else {
        let found: Vec<&str> = answer.outputs.iter().map(|o| o.name.as_str()).collect();
        return Err(malformed(format!(
            "infer answer has no output {wanted:?}; found {found:?}"
        )));
    };
    if output.datatype != "BYTES" {
        return Err(malformed(format!(
            "output {wanted:?} has datatype {}, expected BYTES",
            output.datatype
        )));
    }
    let count = image_count(wanted, &output.shape)?;
    let images = match part {
        Some(data) => decode_bytes_elements(&data, count)
            .map_err(|err| malformed(format!("output {wanted:?}: {err}")))?,
        None => json_elements(wanted, output.data.as_ref(), count)?,
    };
    for image in &images {
        check_size(image.len() as u64, config.max_output_bytes)?;
    }
    Ok(Answer {
        id: answer.id,
        images,
    })
}

/// The number of images a BYTES output of `shape` holds: `[N]` or `[1, N]`.
pub(super) fn image_count(name: &str, shape: &[i64]) -> Result<usize, ProviderError> {
    let count = match shape {
        [n] | [1, n] => *n,
        _ => {
            return Err(malformed(format!(
                "output {name:?} has shape {shape:?}, expected [1], [N] or [1, N]"
            )))
        }
    };
    match usize::try_from(count) {
        Ok(count) if (1..=MAX_OUTPUT_IMAGES).contains(&count) => Ok(count),
        _ => Err(malformed(format!(
            "output {name:?} has shape {shape:?}, expected between 1 and {MAX_OUTPUT_IMAGES} images"
        ))),
    }
}

/// The elements of a BYTES output sent in JSON: base64 strings (see the
/// module docs), flat or nested once as for shape `[1, N]`.
pub(super) fn json_elements(
    name: &str,
    data: Option<&Value>,
    expected: usize,
) -> Result<Vec<Bytes>, ProviderError> {
    let data = data.ok_or_else(|| {
        malformed(format!(
            "output {name:?} has neither data nor a binary_data_size"
        ))
    })?;
    let mut strings = Vec::new();
    collect_strings(data, 0, &mut strings)
        .map_err(|err| malformed(format!("output {name:?}: {err}")))?;
    if strings.len() != expected {
        return Err(malformed(format!(
            "output {name:?}: expected {expected} element(s) by its shape, found {}",
            strings.len()
        )));
    }
    strings
        .iter()
        .enumerate()
        .map(|(index, text)| http::decode_base64(text, &format!("output {name:?} element {index}")))
        .collect()
}

pub(super) fn collect_strings<'a>(
    value: &'a Value,
    depth: usize,
    out: &mut Vec<&'a str>,
) -> Result<(), String> {
    match value {
        Value::String(text) => {
            out.push(text);
            Ok(())
        }
        Value::Array(items) if depth < 2 => items
            .iter()
            .try_for_each(|item| collect_strings(item, depth + 1, out)),
        Value::Array(_) => Err("data is nested deeper than its shape allows".into()),
        other => Err(format!(
            "expected string elements, found {}",
            json_kind(other)
        )),
    }
}

pub(super) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

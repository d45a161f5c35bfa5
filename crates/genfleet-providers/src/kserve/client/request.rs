//! Building the infer request: the job's inputs as BYTES tensors, the
//! parameters a job may set, and the body in binary or JSON form.

use super::*;

/// One input tensor: shape `[1]`, datatype BYTES, one element.
#[derive(Debug)]
pub(crate) struct Input<'a> {
    pub(crate) name: &'a str,
    pub(crate) element: Element<'a>,
}

/// The one element of an input tensor.
pub(crate) enum Element<'a> {
    Image(&'a [u8]),
    Text(&'a str),
}

// Image bytes and prompts are customer content: sizes only.
impl fmt::Debug for Element<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Image(bytes) => write!(f, "Image({} bytes)", bytes.len()),
            Self::Text(text) => write!(f, "Text({} bytes)", text.len()),
        }
    }
}

impl Element<'_> {
    /// The element's bytes in binary form.
    fn raw(&self) -> &[u8] {
        match self {
            Self::Image(bytes) => bytes,
            Self::Text(text) => text.as_bytes(),
        }
    }

    /// The element as a JSON string: base64 for an image (raw image bytes
    /// are not UTF-8), the text itself for the prompt.
    fn json(&self) -> Value {
        match self {
            Self::Image(bytes) => Value::String(encode_base64(bytes)),
            Self::Text(text) => Value::String((*text).to_owned()),
        }
    }
}

/// The input tensors for `request`, by job kind (see the module docs).
///
/// # Errors
///
/// [`ProviderError::Unsupported`] when the kind needs an input the request
/// lacks, or is not served by the GPU pool without one.
pub(crate) fn build_inputs<'a>(
    request: &'a GenerationRequest,
    config: &'a KServeConfig,
) -> Result<Vec<Input<'a>>, ProviderError> {
    let first = |role: InputRole| request.inputs.iter().find(|input| input.role == role);
    let missing = |what: &str| ProviderError::Unsupported {
        message: format!(
            "a {kind:?} job needs {what}, and the request has none",
            kind = request.kind
        ),
    };
    let image = |input: &'a InputImage, name: &'a str| -> Result<Input<'a>, ProviderError> {
        Ok(Input {
            name,
            element: Element::Image(input_bytes(input)?),
        })
    };
    let mut inputs = Vec::with_capacity(4);
    if request.kind == JobKind::VirtualTryOn {
        let person = first(InputRole::Person).ok_or_else(|| missing("a person image"))?;
        let garment = first(InputRole::Garment).ok_or_else(|| missing("a garment image"))?;
        inputs.push(image(person, &config.image_input)?);
        inputs.push(image(garment, &config.second_image_input)?);
    } else {
        let primary = request
            .inputs
            .iter()
            .find(|input| matches!(input.role, InputRole::Product | InputRole::Person))
            .or_else(|| first(InputRole::Reference));
        match (primary, request.kind) {
            (Some(primary), _) => inputs.push(image(primary, &config.image_input)?),
            (None, JobKind::ProductPhoto | JobKind::ImageToVideo) => {
                return Err(ProviderError::Unsupported {
                    message: format!(
                        "a {kind:?} job without an input image is not served by the GPU pool: its models only transform input images",
                        kind = request.kind
                    ),
                })
            }
            (None, _) => return Err(missing("an input image (product, person or reference)")),
        }
        if request.kind == JobKind::Inpaint {
            let mask = first(InputRole::Mask).ok_or_else(|| missing("a mask image"))?;
            inputs.push(image(mask, &config.mask_input)?);
        }
    }
    if !request.prompt.is_empty() {
        inputs.push(Input {
            name: &config.prompt_input,
            element: Element::Text(&request.prompt),
        });
    }
    Ok(inputs)
}

/// An infer request ready to send.
pub(crate) struct Encoded {
    pub(crate) body: Vec<u8>,
    /// The JSON header's length, for `Inference-Header-Content-Length`, in
    /// binary form; `None` for a JSON body.
    pub(crate) header_len: Option<usize>,
    /// The `timeout` parameter sent is the time left before the job's
    /// deadline (not `request_timeout`), so its expiry is the deadline's.
    pub(crate) timeout_from_deadline: bool,
}

/// Refuses parameters that set what the worker owns, the configured
/// tensor names included (see the module docs).
///
/// # Errors
///
/// [`ProviderError::Unsupported`] naming the key, or the bound exceeded.
pub(crate) fn check_parameters(
    request: &GenerationRequest,
    config: &KServeConfig,
) -> Result<(), ProviderError> {
    params::check(&request.parameters, &OWNED, &tensor_names(config))
}

/// The configured tensor names: owned too, though known only at run time.
pub(crate) fn tensor_names(config: &KServeConfig) -> [&str; 5] {
    [
        config.image_input.as_str(),
        config.mask_input.as_str(),
        config.second_image_input.as_str(),
        config.prompt_input.as_str(),
        config.output.as_str(),
    ]
}

/// Encodes the infer request in the configured form.
///
/// # Errors
///
/// [`ProviderError::Unsupported`] for parameters that set what the worker
/// owns, or an input too large for a BYTES element (4 GiB).
pub(crate) fn encode_request(
    request: &GenerationRequest,
    inputs: &[Input<'_>],
    config: &KServeConfig,
) -> Result<Encoded, ProviderError> {
    check_parameters(request, config)?;
    let mut parameters = request.parameters.clone();
    if let Some(priority) = config.priority {
        parameters.insert("priority".into(), Value::from(priority));
    }
    if request.count > 1 {
        parameters.insert(COUNT_PARAMETER.into(), Value::from(request.count));
    }
    let mut timeout_from_deadline = false;
    if let Some(deadline) = request.deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        timeout_from_deadline = left <= config.request_timeout;
        let micros = left.min(config.request_timeout).as_micros();
        let micros = u64::try_from(micros).unwrap_or(u64::MAX).max(1);
        parameters.insert("timeout".into(), micros.into());
    }

    let tensors: Vec<Value> = inputs
        .iter()
        .map(|input| {
            let mut tensor = json!({"name": input.name, "shape": [1], "datatype": "BYTES"});
            if config.binary {
                let size = encoded_len(&[input.element.raw()]);
                tensor["parameters"] = json!({ "binary_data_size": size });
            } else {
                tensor["data"] = json!([input.element.json()]);
            }
            tensor
        })
        .collect();
    let mut output = json!({ "name": config.output });
    if config.binary {
        output["parameters"] = json!({ "binary_data": true });
    }
    let mut header = Map::new();
    if !request.job_id.is_empty() {
        header.insert("id".into(), request.job_id.clone().into());
    }
    if !parameters.is_empty() {
        header.insert("parameters".into(), Value::Object(parameters));
    }
    header.insert("inputs".into(), Value::Array(tensors));
    header.insert("outputs".into(), Value::Array(vec![output]));
    let mut body =
        serde_json::to_vec(&Value::Object(header)).map_err(|err| ProviderError::Unsupported {
            message: format!("the infer request could not be encoded: {err}"),
        })?;
    if !config.binary {
        return Ok(Encoded {
            body,
            header_len: None,
            timeout_from_deadline,
        });
    }
    let header_len = body.len();
    for input in inputs {
        encode_bytes_elements(&[input.element.raw()], &mut body).map_err(|err| {
            ProviderError::Unsupported {
                message: format!("input {:?}: {err}", input.name),
            }
        })?;
    }
    Ok(Encoded {
        body,
        header_len: Some(header_len),
        timeout_from_deadline,
    })
}

//! The model contract check: what a model's metadata says it takes,
//! against the tensors this client sends (see the module's tensor contract).

use super::*;

/// Checks a model's metadata against the configured contract.
pub(crate) fn contract(
    config: &KServeConfig,
    model: &str,
    metadata: &ModelMetadata,
) -> Result<Contract, ProviderError> {
    let find = |list: &'_ [TensorMetadata], name: &str| {
        list.iter().find(|tensor| tensor.name == name).cloned()
    };
    let names = |list: &[TensorMetadata]| -> Vec<String> {
        list.iter().map(|tensor| tensor.name.clone()).collect()
    };
    let bytes = |kind: &str, tensor: &TensorMetadata| {
        if tensor.datatype == "BYTES" {
            Ok(())
        } else {
            Err(malformed(format!(
                "{kind} {:?} of model {model:?} has datatype {}, expected BYTES",
                tensor.name, tensor.datatype
            )))
        }
    };
    let input = |name: &str, required: bool| -> Result<bool, ProviderError> {
        let Some(tensor) = find(&metadata.inputs, name) else {
            if required {
                return Err(malformed(format!(
                    "model {model:?} has no input {name:?}; found inputs {:?}",
                    names(&metadata.inputs)
                )));
            }
            return Ok(false);
        };
        bytes("input", &tensor)?;
        if !matches!(tensor.shape.as_slice(), [1] | [-1]) {
            return Err(malformed(format!(
                "input {name:?} of model {model:?} has shape {:?}, expected [1] or [-1] (one element, no batch dimension)",
                tensor.shape
            )));
        }
        Ok(true)
    };
    input(&config.image_input, true)?;
    let sent = [
        config.image_input.as_str(),
        config.mask_input.as_str(),
        config.second_image_input.as_str(),
        config.prompt_input.as_str(),
    ];
    let contract = Contract {
        mask: input(&config.mask_input, false)?,
        second_image: input(&config.second_image_input, false)?,
        prompt: input(&config.prompt_input, false)?,
        other_inputs: metadata
            .inputs
            .iter()
            .map(|tensor| tensor.name.as_str())
            .filter(|name| !sent.contains(name))
            .map(str::to_owned)
            .collect(),
    };
    let output = find(&metadata.outputs, &config.output).ok_or_else(|| {
        malformed(format!(
            "model {model:?} has no output {:?}; found outputs {:?}",
            config.output,
            names(&metadata.outputs)
        ))
    })?;
    bytes("output", &output)?;
    if !matches!(output.shape.len(), 1 | 2) {
        return Err(malformed(format!(
            "output {:?} of model {model:?} has shape {:?}, expected [N] or [1, N]",
            output.name, output.shape
        )));
    }
    Ok(contract)
}

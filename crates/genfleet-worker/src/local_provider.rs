//! The `local` provider: generation done by this worker's CPU with
//! `genfleet-imaging`, no remote call. Serves `upscale` (Lanczos3, factor
//! from `parameters.factor`, default 2), `background_removal` (the classical
//! matte: studio and product photos on plain or gradient backgrounds; a cut-out
//! with transparency) and `batch_edit` (the edit is the pre-processing and
//! output presets; generation passes the image through). Model-based
//! upscaling and mattes arrive with the inference crate behind the same
//! trait.

use crate::cpu::CpuPool;
use async_trait::async_trait;
use genfleet_imaging::{ClassicalMatte, Encoding, Limits, Matte as _};
use genfleet_providers::{
    Artifact, GenerationOutput, GenerationRequest, JobKind, Provider, ProviderError,
};

pub struct LocalProvider {
    limits: Limits,
    /// Shared with the rest of the worker's image work, so local generation
    /// cannot starve decoding of other jobs' uploads or vice versa.
    cpu: CpuPool,
}

impl LocalProvider {
    pub fn new(limits: Limits, cpu: CpuPool) -> LocalProvider {
        LocalProvider { limits, cpu }
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    async fn generate(
        &self,
        request: &GenerationRequest,
    ) -> Result<GenerationOutput, ProviderError> {
        let mut remove_background = false;
        let factor = match request.kind {
            JobKind::Upscale => match request.parameters.get("factor") {
                None => 2,
                Some(v) => match v.as_u64() {
                    Some(f @ (2 | 4)) => f as u32,
                    _ => {
                        return Err(ProviderError::Unsupported {
                            message: "parameters.factor: expected 2 or 4".into(),
                        })
                    }
                },
            },
            JobKind::BatchEdit => 1,
            JobKind::BackgroundRemoval => {
                remove_background = true;
                1
            }
            other => {
                return Err(ProviderError::Unsupported {
                    message: format!("the local provider cannot run {other:?} jobs"),
                })
            }
        };
        let sharpen = sharpen_parameter(request.parameters.get("sharpen"))?;
        let Some(input) = request.inputs.first() else {
            return Err(ProviderError::Unsupported {
                message: "the local provider needs an input image".into(),
            });
        };
        let bytes = input.load().await?;
        let limits = self.limits.clone();
        let encoded = self
            .cpu
            .run(move || -> Result<Vec<u8>, String> {
                let image = genfleet_imaging::decode_sanitised(&bytes, &limits)
                    .map_err(|e| e.to_string())?
                    .image;
                let image = if factor > 1 {
                    genfleet_imaging::upscale_with(&image, factor, sharpen, &limits)
                        .map_err(|e| e.to_string())?
                } else {
                    image
                };
                let image = if remove_background {
                    let alpha = ClassicalMatte::default()
                        .matte(&image)
                        .map_err(|e| e.to_string())?;
                    genfleet_imaging::apply_matte(&image, &alpha).map_err(|e| e.to_string())?
                } else {
                    image
                };
                // PNG: lossless hand-over to post-processing, which encodes the
                // formats the job asked for.
                genfleet_imaging::encode(&image, Encoding::Png).map_err(|e| e.to_string())
            })
            .await
            .map_err(|message| ProviderError::Unavailable {
                message,
                retry_after: None,
            })?
            .map_err(|message| ProviderError::Rejected { message })?;
        Ok(GenerationOutput {
            artifacts: vec![Artifact {
                content_type: "image/png".into(),
                bytes: encoded.into(),
            }],
            attempts: 1,
            request_id: None,
        })
    }
}

/// `parameters.sharpen` of an upscale: absent or `false` for none, `true`
/// for the default unsharp mask, or a number for its amount (0..=5).
fn sharpen_parameter(
    value: Option<&serde_json::Value>,
) -> Result<Option<genfleet_imaging::Sharpen>, ProviderError> {
    let bad = || ProviderError::Unsupported {
        message: "parameters.sharpen: expected true, false or an amount from 0 to 5".into(),
    };
    match value {
        None | Some(serde_json::Value::Bool(false)) | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Bool(true)) => Ok(Some(genfleet_imaging::Sharpen::default())),
        Some(v) => {
            let amount = v
                .as_f64()
                .filter(|a| (0.0..=5.0).contains(a))
                .ok_or_else(bad)?;
            Ok(Some(genfleet_imaging::Sharpen {
                amount: amount as f32,
                ..genfleet_imaging::Sharpen::default()
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharpen_parameter_forms() {
        let default = genfleet_imaging::Sharpen::default();
        let cases: [(Option<serde_json::Value>, Option<Option<f32>>); 7] = [
            (None, Some(None)),
            (Some(serde_json::json!(false)), Some(None)),
            (Some(serde_json::json!(true)), Some(Some(default.amount))),
            (Some(serde_json::json!(1.5)), Some(Some(1.5))),
            (Some(serde_json::json!(9)), None),
            (Some(serde_json::json!(-1)), None),
            (Some(serde_json::json!("lots")), None),
        ];
        for (value, want) in cases {
            let got = sharpen_parameter(value.as_ref())
                .ok()
                .map(|s| s.map(|s| s.amount));
            assert_eq!(got, want, "{value:?}");
        }
    }
}

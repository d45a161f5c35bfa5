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
use bytes::Bytes;
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
        let Some(input) = request.inputs.first() else {
            return Err(ProviderError::Unsupported {
                message: "the local provider needs an input image".into(),
            });
        };
        let bytes = input.bytes.clone();
        let limits = self.limits.clone();
        let encoded = self
            .cpu
            .run(move || -> Result<Vec<u8>, String> {
                let image = genfleet_imaging::decode_sanitised(&bytes, &limits)
                    .map_err(|e| e.to_string())?
                    .image;
                let image = if factor > 1 {
                    genfleet_imaging::upscale(&image, factor, &limits).map_err(|e| e.to_string())?
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
                bytes: Bytes::from(encoded),
            }],
            attempts: 1,
            request_id: None,
        })
    }
}

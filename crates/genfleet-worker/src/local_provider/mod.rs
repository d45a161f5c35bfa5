//! The `local` provider: generation done by this worker, no remote call.
//! Serves `upscale` (`parameters.factor` 2 or 4, default 2;
//! `parameters.model` `lanczos` (default: Lanczos3 with the optional
//! `parameters.sharpen`), `realesrgan-fast` or `realesrgan`),
//! `background_removal` (`parameters.method` `auto` (default), `model` or
//! `classical`; a cut-out with transparency) and `batch_edit` (the edit is
//! the pre-processing and output presets; generation passes the image
//! through). Model work goes through [`LocalModels`]; decoding, Lanczos,
//! the classical matte and encoding run on the worker's [`CpuPool`].
//!
//! Errors are classified here, once: a parameter the worker refuses is the
//! job's (`invalid_input`, naming the parameter and the allowed values); a
//! model this worker lacks is not (`provider_unavailable`, and the chain
//! fails over to the next provider, if the job named one).

use std::sync::Arc;
use std::time::Duration;

use crate::cpu::CpuPool;
use crate::local_models::{LocalModels, ModelError};
use crate::methods::{MatteMethod, UpscaleMethod};
use async_trait::async_trait;
use genfleet_imaging::{Encoding, Limits};
use genfleet_providers::{
    Artifact, DeferReason, GenerationOutput, GenerationRequest, JobKind, Provider, ProviderError,
};

/// How long a request without a deadline may wait for a model.
const DEFAULT_MODEL_WAIT: Duration = Duration::from_secs(300);

/// When a job that found the GPU full is worth trying again: long enough
/// for a few batches to finish, short enough not to idle a GPU that freed.
const OVERLOADED_RETRY: Duration = Duration::from_secs(5);

pub struct LocalProvider {
    limits: Limits,
    /// Shared with the rest of the worker's image work, so local generation
    /// cannot starve decoding of other jobs' uploads or vice versa.
    cpu: CpuPool,
    models: LocalModels,
}

impl LocalProvider {
    pub fn new(limits: Limits, cpu: CpuPool, models: LocalModels) -> LocalProvider {
        LocalProvider {
            limits,
            cpu,
            models,
        }
    }
}

/// What one local request does, from its kind and parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Task {
    Upscale {
        factor: u32,
        method: UpscaleMethod,
        sharpen: Option<genfleet_imaging::Sharpen>,
    },
    Cutout(MatteMethod),
    PassThrough,
}

impl Task {
    /// # Errors
    /// `Unsupported` (`invalid_input`) naming the parameter and what it
    /// takes, or a kind this provider does not do.
    fn of(request: &GenerationRequest) -> Result<Task, ProviderError> {
        let invalid = |message: String| ProviderError::Unsupported { message };
        let parameters = &request.parameters;
        match request.kind {
            JobKind::Upscale => {
                // A protobuf Struct carries every number as a double: 4.0
                // is the 4 a JSON publisher wrote.
                let factor = match parameters.get("factor").map(|v| v.as_f64()) {
                    None => 2,
                    Some(Some(2.0)) => 2,
                    Some(Some(4.0)) => 4,
                    Some(_) => return Err(invalid("parameters.factor: expected 2 or 4".into())),
                };
                let method = UpscaleMethod::from_json(parameters.get(UpscaleMethod::KEY))
                    .map_err(invalid)?;
                let sharpen = sharpen_parameter(parameters.get("sharpen"))?;
                if sharpen.is_some() && method.uses_model() {
                    return Err(invalid(format!(
                        "parameters.sharpen applies to the lanczos upscale, not to {}",
                        method.label()
                    )));
                }
                Ok(Task::Upscale {
                    factor,
                    method,
                    sharpen,
                })
            }
            JobKind::BackgroundRemoval => {
                let method = MatteMethod::from_json(parameters.get(MatteMethod::KEY))
                    .map_err(invalid)?
                    .unwrap_or(MatteMethod::Auto);
                Ok(Task::Cutout(method))
            }
            JobKind::BatchEdit => Ok(Task::PassThrough),
            other => Err(invalid(format!(
                "the local provider cannot run {other:?} jobs"
            ))),
        }
    }
}

/// A [`ModelError`] as the provider error the retry loop and the failover
/// understand.
fn provider_error(error: ModelError) -> ProviderError {
    match error {
        // The same on every attempt here; failover to another provider of
        // the chain, if any, is what can help. `retry_after: 0`: the retry
        // loop's own attempts cost nothing and wait for nothing.
        ModelError::Unavailable(message) => ProviderError::Unavailable {
            message,
            retry_after: Some(Duration::ZERO),
        },
        ModelError::Invalid(message) => ProviderError::Unsupported { message },
        // No GPU memory before the deadline: the job goes back to a retry
        // queue (no slot held) instead of waiting here.
        ModelError::Overloaded(message) => {
            tracing::info!(%message, "local model overloaded; delaying the job");
            ProviderError::Deferred {
                reason: DeferReason::AtCapacity,
                retry_after: OVERLOADED_RETRY,
            }
        }
        ModelError::DeadlineExceeded => ProviderError::DeadlineExceeded,
        ModelError::Failed(message) => ProviderError::Unavailable {
            message,
            retry_after: None,
        },
        ModelError::Image(e) => image_error(e),
    }
}

/// Image work failing on the job's pixels (too large, undecodable) is the
/// job's; our own failure is retryable.
fn image_error(error: genfleet_imaging::ImagingError) -> ProviderError {
    use genfleet_imaging::ImagingError as E;
    match error {
        E::Internal(message) => ProviderError::Unavailable {
            message,
            retry_after: None,
        },
        other => ProviderError::Rejected {
            message: other.to_string(),
        },
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
        let task = Task::of(request)?;
        let Some(input) = request.inputs.first() else {
            return Err(ProviderError::Unsupported {
                message: "the local provider needs an input image".into(),
            });
        };
        let deadline = request
            .deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + DEFAULT_MODEL_WAIT);
        let bytes = input.load().await?;
        let limits = self.limits.clone();
        let image = self
            .on_cpu(move || genfleet_imaging::decode_sanitised(&bytes, &limits).map(|s| s.image))
            .await?;
        let image = match task {
            Task::PassThrough => image,
            Task::Upscale {
                factor,
                method: UpscaleMethod::Lanczos,
                sharpen,
            } => {
                let limits = self.limits.clone();
                self.on_cpu(move || {
                    genfleet_imaging::upscale_with(&image, factor, sharpen, &limits)
                })
                .await?
            }
            Task::Upscale { factor, method, .. } => self
                .models
                .upscale(&self.cpu, image, method, factor, &self.limits, deadline)
                .await
                .map_err(provider_error)?,
            Task::Cutout(method) => {
                let image = Arc::new(image);
                let alpha = self
                    .models
                    .alpha(&self.cpu, image.clone(), method, deadline)
                    .await
                    .map_err(provider_error)?;
                self.on_cpu(move || genfleet_imaging::apply_matte(&image, &alpha))
                    .await?
            }
        };
        // PNG: lossless hand-over to post-processing, which encodes the
        // formats the job asked for (and keeps a cut-out's transparency).
        let encoded = self
            .on_cpu(move || genfleet_imaging::encode(&image, Encoding::Png))
            .await?;
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

impl LocalProvider {
    /// Image work on the CPU pool, its errors classified.
    async fn on_cpu<T, F>(&self, work: F) -> Result<T, ProviderError>
    where
        F: FnOnce() -> Result<T, genfleet_imaging::ImagingError> + Send + 'static,
        T: Send + 'static,
    {
        self.cpu
            .run(work)
            .await
            .map_err(|message| ProviderError::Unavailable {
                message,
                retry_after: None,
            })?
            .map_err(image_error)
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

    fn request(kind: JobKind, parameters: serde_json::Value) -> GenerationRequest {
        GenerationRequest {
            job_id: "j".into(),
            kind,
            model: String::new(),
            prompt: String::new(),
            negative_prompt: String::new(),
            seed: None,
            count: 1,
            aspect_ratio: String::new(),
            parameters: match parameters {
                serde_json::Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
            inputs: Vec::new(),
            deadline: None,
        }
    }

    #[test]
    fn tasks_from_kinds_and_parameters() {
        use serde_json::json;
        let ok: [(JobKind, serde_json::Value, Task); 7] = [
            (
                JobKind::Upscale,
                json!({}),
                Task::Upscale {
                    factor: 2,
                    method: UpscaleMethod::Lanczos,
                    sharpen: None,
                },
            ),
            (
                JobKind::Upscale,
                json!({"factor": 4, "model": "realesrgan"}),
                Task::Upscale {
                    factor: 4,
                    method: UpscaleMethod::RealEsrgan,
                    sharpen: None,
                },
            ),
            (
                JobKind::Upscale,
                json!({"factor": 4.0, "model": "realesrgan-fast", "sharpen": false}),
                Task::Upscale {
                    factor: 4,
                    method: UpscaleMethod::RealEsrganFast,
                    sharpen: None,
                },
            ),
            (
                JobKind::BackgroundRemoval,
                json!({}),
                Task::Cutout(MatteMethod::Auto),
            ),
            (
                JobKind::BackgroundRemoval,
                json!({"method": "model"}),
                Task::Cutout(MatteMethod::Model),
            ),
            (
                JobKind::BackgroundRemoval,
                json!({"method": "classical"}),
                Task::Cutout(MatteMethod::Classical),
            ),
            (JobKind::BatchEdit, json!({}), Task::PassThrough),
        ];
        for (kind, parameters, want) in ok {
            assert_eq!(
                Task::of(&request(kind, parameters.clone())).unwrap(),
                want,
                "{parameters}"
            );
        }
        let refused: [(JobKind, serde_json::Value, &str); 5] = [
            (
                JobKind::BackgroundRemoval,
                json!({"method": "magic"}),
                "parameters.method: \"magic\"",
            ),
            (
                JobKind::Upscale,
                json!({"model": "esrgan"}),
                "parameters.model: \"esrgan\"",
            ),
            (JobKind::Upscale, json!({"factor": 3}), "parameters.factor"),
            (
                JobKind::Upscale,
                json!({"model": "realesrgan", "sharpen": true}),
                "parameters.sharpen",
            ),
            (JobKind::Inpaint, json!({}), "cannot run"),
        ];
        for (kind, parameters, expected) in refused {
            let err = Task::of(&request(kind, parameters)).unwrap_err();
            assert!(matches!(err, ProviderError::Unsupported { .. }), "{err:?}");
            assert_eq!(err.code(), "invalid_input");
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn model_errors_take_the_worker_s_paths() {
        let unavailable = provider_error(ModelError::Unavailable("no runtime".into()));
        assert_eq!(unavailable.code(), "provider_unavailable");
        assert!(unavailable.is_retryable());
        assert_eq!(unavailable.retry_after(), Some(Duration::ZERO));
        assert_eq!(
            provider_error(ModelError::Invalid("x".into())).code(),
            "invalid_input"
        );
        let overloaded = provider_error(ModelError::Overloaded("vram".into()));
        assert!(
            matches!(overloaded, ProviderError::Deferred { .. }),
            "{overloaded:?}"
        );
        assert_eq!(
            provider_error(ModelError::DeadlineExceeded).code(),
            "deadline_exceeded"
        );
        let failed = provider_error(ModelError::Failed("ort".into()));
        assert_eq!(failed.code(), "provider_unavailable");
        assert!(failed.is_retryable());
        let too_large = provider_error(ModelError::Image(
            genfleet_imaging::ImagingError::TooLarge("big".into()),
        ));
        assert_eq!(too_large.code(), "provider_rejected");
    }

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

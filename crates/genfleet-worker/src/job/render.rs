//! Render and store: the provider's outputs are untrusted input too (same
//! sniffing, limits and re-encoding), rendered to the job's formats and
//! presets, and stored under tenant-scoped, deterministic keys (a
//! redelivery overwrites, never duplicates). A storage failure removes what
//! this attempt wrote: nothing stays half-stored.

use bytes::Bytes;
use genfleet_proto::{pbjson_types, v1, ErrorCode, ValidJob};

use super::generate::{GenStop, Generated, GenerationFailure};
use super::progress::Tracker;
use crate::failure::{JobFailure, Stop};
use crate::pipeline::{self, RenderSpec};
use crate::services::Services;

/// A job's stored outputs, with what produced them.
pub(crate) struct Stored {
    pub(crate) outputs: Vec<v1::Output>,
    pub(crate) provider: String,
    pub(crate) attempts: u32,
}

pub(crate) async fn render_and_store(
    services: &Services,
    job: &ValidJob,
    tracker: &mut Tracker<'_>,
    generated: Generated,
    render_spec: &RenderSpec,
) -> Result<Stored, GenStop> {
    let Generated {
        output,
        provider,
        attempts,
    } = generated;
    let fail_with = |failure: JobFailure| {
        GenStop::Fail(GenerationFailure {
            failure,
            provider: provider.clone(),
            attempts,
        })
    };

    tracker.begin(v1::Stage::Postprocess, 0.7).await;
    let mut rendered = Vec::new();
    for (index, artifact) in output.artifacts.into_iter().enumerate() {
        let limits = services.output_limits.clone();
        let spec = render_spec.clone();
        let blob = artifact.bytes;
        let outputs = services
            .cpu_bound(move || {
                // Read back from the spool only now, with an imaging slot:
                // outputs that wait for one hold no memory.
                let bytes = blob.bytes_blocking().map_err(|e| {
                    JobFailure::new(
                        ErrorCode::Internal,
                        format!("a provider output could not be read back from the spool: {e}"),
                    )
                })?;
                if is_mp4(&bytes) {
                    return Ok(vec![pipeline::Rendered {
                        name: format!("{index}-video.mp4"),
                        preset: "original".into(),
                        content_type: "video/mp4",
                        width: 0,
                        height: 0,
                        bytes: Vec::from(bytes),
                    }]);
                }
                let prepared = pipeline::prepare(&bytes, &limits, &[]).map_err(|f| {
                    JobFailure::new(
                        ErrorCode::ProviderUnavailable,
                        format!("provider returned an unusable image: {}", f.message),
                    )
                })?;
                pipeline::render(&prepared.image, index, &spec)
            })
            .await
            .map_err(fail_with)?;
        rendered.extend(outputs);
    }
    if rendered.is_empty() {
        return Err(fail_with(JobFailure::new(
            ErrorCode::ProviderUnavailable,
            "provider returned no outputs",
        )));
    }

    tracker.begin(v1::Stage::Store, 0.85).await;
    let tenant = job.tenant();
    let mut outputs: Vec<v1::Output> = Vec::with_capacity(rendered.len());
    for item in rendered {
        let stored = services
            .store
            .put_output(
                &tenant.org,
                &tenant.workspace,
                job.job_id(),
                &item.name,
                Bytes::from(item.bytes),
            )
            .await;
        let stored = match stored {
            Ok(stored) => stored,
            Err(e) => {
                for done in &outputs {
                    let _ = services.store.delete(&done.uri).await;
                }
                return Err(GenStop::from(Stop::from(e)));
            }
        };
        let (signed_url, expires) = services
            .signer
            .as_ref()
            .and_then(|s| s.sign(&stored.key))
            .map_or((String::new(), None), |(url, exp)| (url, Some(exp)));
        outputs.push(v1::Output {
            uri: stored.uri,
            signed_url,
            signed_url_expires_at: expires.map(|e| pbjson_types::Timestamp {
                seconds: i64::try_from(e).unwrap_or(i64::MAX),
                nanos: 0,
            }),
            width: item.width,
            height: item.height,
            bytes: stored.size,
            sha256: stored.sha256,
            content_type: item.content_type.to_string(),
            preset: item.preset.clone(),
        });
    }
    Ok(Stored {
        outputs,
        provider,
        attempts,
    })
}

fn is_mp4(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && &bytes[4..8] == b"ftyp"
}

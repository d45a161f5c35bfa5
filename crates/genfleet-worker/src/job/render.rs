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
use crate::local_models::FixedMatte;
use crate::methods::MatteMethod;
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
    // Never more outputs than the job asked for (and pays for), whatever
    // the provider sent.
    let wanted = job.job().generation.as_ref().map_or(1, |g| g.count.max(1));
    let wanted = usize::try_from(wanted).unwrap_or(1);
    let mut rendered = Vec::new();
    for (index, artifact) in output.artifacts.into_iter().take(wanted).enumerate() {
        let limits = services.output_limits.clone();
        let spec = render_spec.clone();
        let blob = artifact.bytes;
        scan_output(services, &blob, index)
            .await
            .map_err(&fail_with)?;
        let read = services
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
                    return Ok(Output::Video(pipeline::Rendered {
                        name: format!("{index}-video.mp4"),
                        preset: "original".into(),
                        content_type: "video/mp4",
                        width: 0,
                        height: 0,
                        bytes: Vec::from(bytes),
                    }));
                }
                let prepared = pipeline::prepare(&bytes, &limits, &[]).map_err(|f| {
                    JobFailure::new(
                        ErrorCode::ProviderUnavailable,
                        format!("provider returned an unusable image: {}", f.message),
                    )
                })?;
                Ok(Output::Image(prepared.image))
            })
            .await
            .map_err(&fail_with)?;
        let outputs = match read {
            Output::Video(video) => vec![video],
            Output::Image(image) => render_image(services, job, image, index, spec)
                .await
                .map_err(&fail_with)?,
        };
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
        let (signed_url, expires) = match signed_link(services, &stored.key).await {
            Ok(link) => link.map_or((String::new(), None), |(url, exp)| (url, Some(exp))),
            Err(e) => {
                for done in outputs
                    .iter()
                    .map(|o| o.uri.as_str())
                    .chain([stored.uri.as_str()])
                {
                    let _ = services.store.delete(done).await;
                }
                return Err(GenStop::from(Stop::from(e)));
            }
        };
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

/// A provider's output, read back and checked.
enum Output {
    Video(pipeline::Rendered),
    Image(genfleet_imaging::DynamicImage),
}

/// Renders one image in the job's presets. When a preset removes the
/// backdrop and the method may use the model, the mask is computed first,
/// off the imaging slot while the model runs, and handed to the presets;
/// otherwise the presets' classical matte runs inside the slot, as before
/// models existed.
async fn render_image(
    services: &Services,
    job: &ValidJob,
    image: genfleet_imaging::DynamicImage,
    index: usize,
    spec: RenderSpec,
) -> Result<Vec<pipeline::Rendered>, JobFailure> {
    // Unset means the model where this worker has one, else the classical
    // matte: a worker without [inference] renders presets as it always did.
    let method = spec.matte.unwrap_or(if services.models.is_ready() {
        MatteMethod::Auto
    } else {
        MatteMethod::Classical
    });
    if !spec.mattes(&image) || method == MatteMethod::Classical {
        return services
            .cpu_bound(move || pipeline::render(&image, index, &spec))
            .await;
    }
    let image = std::sync::Arc::new(image);
    let deadline = model_deadline(services, job);
    let alpha = services
        .models
        .alpha(&services.cpu, image.clone(), method, deadline)
        .await?;
    services
        .cpu_bound(move || pipeline::render_with(&image, index, &spec, &FixedMatte(alpha)))
        .await
}

/// Until when a model may run for `job` after generation: its deadline, or
/// `providers.max_wait_seconds` from now if sooner (as provider calls).
fn model_deadline(services: &Services, job: &ValidJob) -> tokio::time::Instant {
    let max_wait = std::time::Duration::from_secs(services.config.providers.max_wait_seconds);
    let left = job
        .job()
        .deadline
        .as_ref()
        .map(super::progress::timestamp_to_system_time)
        .map(|d| {
            d.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        });
    tokio::time::Instant::now() + left.map_or(max_wait, |left| left.min(max_wait))
}

/// Scans a provider's output with the configured scanner before it is
/// decoded or stored: the video passes through as the provider made it.
/// A hit or no verdict fails the job (the provider's fault, not the
/// customer's upload).
async fn scan_output(
    services: &Services,
    blob: &genfleet_providers::Blob,
    index: usize,
) -> Result<(), JobFailure> {
    let Some(scanner) = &services.scanner else {
        return Ok(());
    };
    let bytes = blob.bytes().await.map_err(|e| {
        JobFailure::new(
            ErrorCode::Internal,
            format!("a provider output could not be read back from the spool: {e}"),
        )
    })?;
    match scanner.scan(&bytes).await {
        Ok(genfleet_scan::Verdict::Clean) => Ok(()),
        Ok(genfleet_scan::Verdict::Infected { signature }) => {
            tracing::warn!(output = index, %signature, "malware found in a provider output");
            Err(JobFailure::new(
                ErrorCode::ProviderUnavailable,
                format!("output {index} from the provider was refused by the malware scanner"),
            ))
        }
        Err(e) => {
            tracing::warn!(output = index, error = %e, "provider output scan gave no verdict");
            Err(JobFailure::new(
                ErrorCode::ProviderUnavailable,
                format!("output {index} from the provider could not be scanned"),
            ))
        }
    }
}

/// An MP4 (ISO base media) file by its magic: an `ftyp` box first, of a
/// sane size, with an MP4 or QuickTime brand. Anything else a provider
/// sends is read as an image, and refused if it is none.
fn is_mp4(bytes: &[u8]) -> bool {
    const BRANDS: [&[u8; 4]; 10] = [
        b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"dash", b"qt  ",
    ];
    if bytes.len() < 16 || &bytes[4..8] != b"ftyp" {
        return false;
    }
    let size = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    (16..=1024).contains(&size)
        && size <= bytes.len()
        && BRANDS.iter().any(|brand| &bytes[8..12] == brand.as_slice())
}

/// The link a result carries for one output: the store's own presigned GET
/// on S3, else a URL signed for the file server in front of the local store
/// (`storage.public_base_url`), else none.
async fn signed_link(
    services: &Services,
    key: &str,
) -> Result<Option<(String, u64)>, genfleet_storage::StorageError> {
    if services.store.presigns() {
        let ttl = std::time::Duration::from_secs(services.config.storage.signed_url_ttl_seconds);
        return services.store.presign_get(key, ttl).await;
    }
    Ok(services.signer.as_ref().and_then(|s| s.sign(key)))
}

#[cfg(test)]
mod tests {
    use super::is_mp4;

    #[test]
    fn mp4_is_told_by_its_ftyp_box() {
        let mut mp4 = vec![0, 0, 0, 24];
        mp4.extend_from_slice(b"ftypisom\0\0\x02\0isomiso2");
        mp4.extend_from_slice(&[0u8; 64]);
        assert!(is_mp4(&mp4));
        // A PNG, an HTML page and an ftyp box of a silly size or brand are
        // not videos.
        assert!(!is_mp4(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"));
        assert!(!is_mp4(b"<html><body>ftypisom</body></html>"));
        let mut huge = mp4.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(!is_mp4(&huge));
        let mut odd = mp4.clone();
        odd[8..12].copy_from_slice(b"evil");
        assert!(!is_mp4(&odd));
    }
}

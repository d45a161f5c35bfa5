//! Inputs: fetch every upload (size-capped), check its hash, scan it for
//! malware (when a scanner is configured), validate and sanitise it under
//! its class's limits, and pre-process the primary one. Nothing is decoded
//! before every input has been scanned; the prepared inputs wait in the
//! spool for the provider call.

use std::time::Instant;

use bytes::Bytes;
use genfleet_proto::{v1, ErrorCode, ValidJob};
use genfleet_providers::{InputImage, InputRole};
use tracing::warn;

use super::progress::Tracker;
use crate::disposition::RequeueReason;
use crate::failure::{JobFailure, Stop};
use crate::kinds::provider_role;
use crate::pipeline::{self, Step};
use crate::services::Services;

pub(crate) async fn prepare(
    services: &Services,
    job: &ValidJob,
    limits: &genfleet_imaging::Limits,
    tracker: &mut Tracker<'_>,
) -> Result<Vec<InputImage>, Stop> {
    let contract = job.job();
    tracker.begin(v1::Stage::Fetch, 0.05).await;
    // Held until the inputs are prepared: the uploads wait for an imaging
    // slot in memory, so only this many jobs' uploads are read at once.
    // The semaphore is never closed.
    let preparing = services.fetches.acquire().await.ok();
    let tenant = job.tenant();
    let scope = services.store.scope(&tenant.org, &tenant.workspace)?;
    let mut raw_inputs = Vec::with_capacity(contract.inputs.len());
    for (i, input) in contract.inputs.iter().enumerate() {
        let bytes = services
            .store
            .fetch_input(&scope, &input.uri, limits.max_bytes)
            .await
            .map_err(|e| prefix_stop(Stop::from(e), i))?;
        if !input.sha256.is_empty() {
            use sha2::Digest as _;
            let actual = hex::encode(sha2::Sha256::digest(&bytes));
            if !actual.eq_ignore_ascii_case(&input.sha256) {
                return Err(Stop::Fail(JobFailure::new(
                    ErrorCode::InvalidInput,
                    format!(
                        "inputs[{i}]: sha256 of the fetched bytes does not match the job's sha256"
                    ),
                )));
            }
        }
        scan(services, &bytes, i).await?;
        raw_inputs.push((provider_role(input), bytes));
    }

    tracker.begin(v1::Stage::Validate, 0.15).await;
    // Every input is validated and sanitised; only the primary one (the
    // first) goes through the pre-processing steps.
    let steps = Step::from_contract(&contract.preprocess);
    let mut provider_inputs = Vec::with_capacity(raw_inputs.len());
    for (i, (role, bytes)) in raw_inputs.into_iter().enumerate() {
        let limits = limits.clone();
        let steps = if i == 0 { steps.clone() } else { Vec::new() };
        if i == 0 && !steps.is_empty() {
            tracker.begin(v1::Stage::Preprocess, 0.25).await;
        }
        let prepared = services
            .cpu_bound(move || {
                pipeline::prepare_for_provider(&bytes, &limits, &steps, role == InputRole::Mask)
                    .map_err(|f| prefix_failure(f, i))
            })
            .await?;
        services
            .metrics
            .provider_inputs_total
            .with_label_values(&[if prepared.passed_through {
                "passed_through"
            } else {
                "reencoded"
            }])
            .inc();
        // The input waits in the spool for the whole provider call (a retry
        // or a failover sends it again), out of memory when the budget is
        // spent. This machine's disk refusing a spool file is not the job's
        // fault.
        let bytes = services
            .spool
            .keep(Bytes::from(prepared.bytes))
            .await
            .map_err(|e| Stop::requeue(RequeueReason::SpoolUnavailable, e))?;
        provider_inputs.push(InputImage {
            role,
            content_type: prepared.content_type.to_string(),
            bytes,
        });
    }
    drop(preparing);

    Ok(provider_inputs)
}

/// What one scan found, for `genfleet_scans_total`.
#[derive(Clone, Copy)]
enum ScanOutcome {
    Clean,
    Infected,
    Error,
}

impl ScanOutcome {
    fn label(self) -> &'static str {
        match self {
            ScanOutcome::Clean => "clean",
            ScanOutcome::Infected => "infected",
            ScanOutcome::Error => "error",
        }
    }
}

/// Scans input `index` with the configured scanner: a hit ends the job as
/// `malware` (before any credit is held); no verdict is a requeue or a
/// failure as [`crate::failure::scan_stop`] decides, never a pass.
async fn scan(services: &Services, bytes: &[u8], index: usize) -> Result<(), Stop> {
    let Some(scanner) = &services.scanner else {
        return Ok(());
    };
    let started = Instant::now();
    let verdict = scanner.scan(bytes).await;
    services
        .metrics
        .scan_duration_seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = match &verdict {
        Ok(genfleet_scan::Verdict::Clean) => ScanOutcome::Clean,
        Ok(genfleet_scan::Verdict::Infected { .. }) => ScanOutcome::Infected,
        Err(_) => ScanOutcome::Error,
    };
    services
        .metrics
        .scans_total
        .with_label_values(&[outcome.label()])
        .inc();
    match verdict {
        Ok(genfleet_scan::Verdict::Clean) => Ok(()),
        Ok(genfleet_scan::Verdict::Infected { signature }) => {
            warn!(input = index, %signature, "malware found in an input");
            Err(Stop::Fail(crate::failure::malware_found(&signature, index)))
        }
        Err(e) => {
            warn!(input = index, error = %e, "malware scan gave no verdict");
            Err(crate::failure::scan_stop(e, index))
        }
    }
}

fn prefix_stop(stop: Stop, index: usize) -> Stop {
    match stop {
        Stop::Fail(failure) => Stop::Fail(prefix_failure(failure, index)),
        other => other,
    }
}

fn prefix_failure(mut failure: JobFailure, index: usize) -> JobFailure {
    failure.message = format!("inputs[{index}]: {}", failure.message);
    failure
}

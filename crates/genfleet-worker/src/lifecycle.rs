//! One delivery, start to finish: decode and check the message, fetch and
//! sanitise inputs, pre-process, reserve credits, generate, post-process,
//! store, settle credits, publish the result. The caller acks only when this
//! returns [`Disposition::Ack`], which happens only after the result (or the
//! dead letter) is confirmed by the broker.
//!
//! Every side effect before the ack is idempotent on `job_id`: the credit
//! hold (`ON CONFLICT`), the output keys (deterministic names), the settled
//! outcome (stored with the settlement, republished on redelivery), and the
//! result's message id (`<job_id>.result`).

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use genfleet_broker::{Incoming, Outgoing, Publisher};
use genfleet_credits::Settlement;
use genfleet_proto::pbjson_types;
use genfleet_proto::{v1, ContentType, ErrorCode, ValidJob};
use genfleet_providers::{GenerationRequest, InputImage, InputRole, JobKind};
use tracing::{debug, info, warn, Instrument};

use crate::failure::{JobFailure, Stop};
use crate::pipeline::{self, RenderSpec, Step};
use crate::services::Services;

/// What the consumer does with the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    /// Hand back to the queue: our infrastructure failed, not the job.
    Requeue(&'static str),
    /// The provider is rendering the job: republish it to the retry queue
    /// of this delay (a poll message), then ack.
    Park(Duration),
}

/// Handles one delivery.
pub async fn handle(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
) -> Disposition {
    let started = Instant::now();
    let content_type = ContentType::from_header(incoming.content_type());
    let decoded = genfleet_proto::decode_job(incoming.body(), &content_type);
    let (job, tenant) = match decoded {
        Ok(job) => {
            let tenant = job.tenant.clone();
            (
                genfleet_proto::validate_job(job, incoming.message_id()),
                tenant,
            )
        }
        Err(e) => (Err(e), None),
    };
    let job = match job {
        Ok(job) => job,
        Err(error) => return reject_message(services, publisher, incoming, error, tenant).await,
    };

    let span = tracing::info_span!(
        "job",
        job_id = %job.job_id(),
        kind = job.kind().label(),
        redelivered = incoming.redelivered(),
        delivery_count = incoming.delivery_count(),
    );
    run_valid(services, publisher, incoming, &job, started)
        .instrument(span)
        .await
}

/// A job that no worker finished although it was started `crashed` times:
/// every start ended without a result (the worker crashed, was killed, or
/// the job panicked). Running it again would most likely end the same way,
/// so the job ends here: failed with `internal`, its credits released, its
/// result published, and the message dead-lettered with the reason for an
/// operator to look at (`genfleet dlq show`).
async fn abandon(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    job: &ValidJob,
    crashed: u32,
) -> Disposition {
    let mut failure = JobFailure::new(
        ErrorCode::Internal,
        format!(
            "the job was started {crashed} times and no worker finished it (each run crashed \
             or was interrupted); it was not run again"
        ),
    );
    // The same job would most likely crash a worker again.
    failure.retryable = false;
    let mut result = failed_result(services, job.job_id(), Some(job.tenant()), &failure);
    result.attempts = crashed;
    if let Err(stop) = release_with_result(services, publisher, incoming, job, &mut result).await {
        return stop;
    }
    warn!(
        crashed,
        "job crashed or was interrupted on every start; failing and dead-lettering it"
    );
    publish_failure_then_dead_letter(
        services,
        publisher,
        incoming,
        &result,
        ErrorCode::Internal,
        &format!("delivery_limit: {}", failure.message),
    )
    .await
}

/// Ends a job that will not run without a charge: its hold (if any) is
/// released with `result` (its credits filled in) stored as the outcome.
/// `Err` is the disposition to return instead of publishing `result`: the
/// outcome another delivery stored first (published here), or a requeue
/// when the ledger is down.
pub(crate) async fn release_with_result(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    job: &ValidJob,
    result: &mut v1::JobResult,
) -> Result<(), Disposition> {
    let held = services.ledger.hold(job.job_id()).await.map_err(|e| {
        warn!(error = %e, "ledger unavailable while releasing a job's credits");
        Disposition::Requeue("ledger_unavailable")
    })?;
    if let Some(hold) = &held {
        result.credits = Some(v1::CreditSummary {
            held: hold.amount,
            captured: 0,
            released: hold.amount,
        });
    }
    result.finished_at = Some(system_time_to_timestamp(SystemTime::now()));
    let stored = genfleet_proto::encode_json(&*result);
    let settled = services
        .ledger
        .settle_outcome(job.job_id(), Settlement::Release, &stored)
        .await
        .map_err(|e| {
            warn!(error = %e, "ledger unavailable while releasing a job's credits");
            Disposition::Requeue("ledger_unavailable")
        })?;
    if let Some(earlier) = settled.earlier_outcome {
        // Settled by a delivery that ran at the same time: publish that.
        return Err(match serde_json::from_slice::<v1::JobResult>(&earlier) {
            Ok(earlier) => publish_result(services, publisher, incoming, &earlier).await,
            Err(_) => Disposition::Requeue("outcome_unreadable"),
        });
    }
    if let Some(hold) = settled.hold {
        services
            .metrics
            .credits_released_total
            .with_label_values(&[job.kind().label()])
            .inc_by(u64::try_from(hold.released).unwrap_or(0));
    }
    Ok(())
}

async fn run_valid(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    job: &ValidJob,
    started: Instant,
) -> Disposition {
    // A redelivery of a job that was already settled: its result was stored
    // with the settlement, so publish it again instead of doing (and
    // charging for) the work twice.
    match services.ledger.outcome(job.job_id()).await {
        Ok(Some(stored)) => {
            info!("job already settled, republishing its stored result");
            return match serde_json::from_slice::<v1::JobResult>(&stored) {
                Ok(result) => {
                    // The earlier delivery may have died before deleting them.
                    if result.status == v1::JobStatus::Succeeded as i32 {
                        delete_sources(services, job).await;
                    }
                    publish_result(services, publisher, incoming, &result).await
                }
                Err(e) => {
                    warn!(error = %e, "stored outcome is unreadable; processing again");
                    process(services, publisher, incoming, job, started).await
                }
            };
        }
        Ok(None) => {}
        Err(e) => {
            warn!(error = %e, "ledger unavailable while checking for a stored outcome");
            return Disposition::Requeue("ledger_unavailable");
        }
    }
    let attempt = match services.ledger.start(job.job_id()).await {
        Ok(attempt) => attempt,
        Err(e) => {
            warn!(error = %e, "ledger unavailable while recording the job's start");
            return Disposition::Requeue("ledger_unavailable");
        }
    };
    if let Some(reason) = &attempt.cancel_reason {
        return crate::cancel::finish_cancelled(services, publisher, incoming, job, reason).await;
    }
    let starts = attempt.starts;
    // Starts that never finished, before this one. The broker's delivery
    // count cannot tell those from deliveries that only waited in a dead
    // worker's buffer, so it is only the backstop: its last delivery is
    // never run either, or the broker would drop the job without a result.
    // Orderly returns (our infrastructure failed) went through a retry
    // queue, which counts them in a header: those starts did not crash.
    // Parked returns did not crash either.
    let crashed = starts
        .saturating_sub(1)
        .saturating_sub(incoming.requeues())
        .saturating_sub(incoming.parks());
    let last_delivery =
        incoming.delivery_count() + 1 >= u64::from(services.config.broker.delivery_limit);
    if crashed >= u32::from(services.config.worker.max_starts_per_job) || last_delivery {
        return abandon(services, publisher, incoming, job, crashed).await;
    }
    process(services, publisher, incoming, job, started).await
}

async fn process(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    job: &ValidJob,
    started: Instant,
) -> Disposition {
    let in_flight = InFlight::enter(&services.metrics.jobs_in_flight);
    let mut tracker = Tracker::new(services, publisher, job);
    let outcome = execute(services, incoming, job, &mut tracker).await;
    tracker.finish();
    drop(in_flight);

    let kind = job.kind().label();
    let result = match outcome {
        Ok(mut result) => {
            result.timings = tracker.timings;
            result
        }
        Err(Stop::Requeue { reason, detail }) => {
            warn!(reason, %detail, "infrastructure failure; returning the job to its queue");
            services
                .metrics
                .requeues_total
                .with_label_values(&[reason])
                .inc();
            return Disposition::Requeue(reason);
        }
        Err(Stop::Park(delay)) => {
            debug!(
                poll_in_s = delay.as_secs(),
                "provider still rendering; parking the job"
            );
            return Disposition::Park(delay);
        }
        Err(Stop::Fail(failure)) => {
            // Failures after the reservation were settled inside execute();
            // these are failures before any credit was held.
            let mut result = failed_result(services, job.job_id(), Some(job.tenant()), &failure);
            result.timings = tracker.timings;
            result
        }
    };
    let status = v1::JobStatus::try_from(result.status).unwrap_or(v1::JobStatus::Unspecified);
    if let Some(error) = &result.error {
        services
            .metrics
            .job_errors_total
            .with_label_values(&[&error.code])
            .inc();
        info!(status = status.label(), code = %error.code, "job failed");
    } else {
        info!(outputs = result.outputs.len(), "job succeeded");
    }
    let disposition = publish_result(services, publisher, incoming, &result).await;
    services
        .metrics
        .job_duration_seconds
        .with_label_values(&[kind, status.label()])
        .observe(started.elapsed().as_secs_f64());
    disposition
}

/// The work itself. Returns the finished result, or a failure that happened
/// before credits were reserved, or a requeue, or a park.
async fn execute(
    services: &Services,
    incoming: &Incoming,
    job: &ValidJob,
    tracker: &mut Tracker<'_>,
) -> Result<v1::JobResult, Stop> {
    let contract = job.job();
    let deadline = contract.deadline.as_ref().map(timestamp_to_system_time);
    let render_spec = RenderSpec::from_contract(contract.outputs.as_ref(), &services.presets)?;
    let providers = provider_chain(services, job)?;
    let amount = job.credit_amount();

    // A parked job comes back with its inputs checked and its credits held:
    // only its provider request is left to look at.
    let parked = if incoming.parks() > 0 {
        crate::parking::recorded(services, job, &providers).await?
    } else {
        None
    };
    let generated = match parked {
        Some(recorded) => {
            crate::parking::resume(
                services,
                job,
                tracker,
                recorded,
                (incoming.parks(), incoming.parked_at()),
                &render_spec,
                deadline,
            )
            .await
        }
        None => {
            if deadline.is_some_and(|d| d <= SystemTime::now()) {
                return Err(Stop::Fail(JobFailure::new(
                    ErrorCode::DeadlineExceeded,
                    "the job's deadline passed before a worker could start it",
                )));
            }
            let limits = services.input_limits_for(class_of(incoming, job));
            let provider_inputs = prepare_inputs(services, job, &limits, tracker).await?;
            reserve(services, job, tracker).await?;
            generate_and_store(
                services,
                job,
                tracker,
                &providers,
                provider_inputs,
                &render_spec,
                deadline,
            )
            .await
        }
    };
    let (mut result, mut settlement) = match generated {
        Ok((outputs, provider, attempts)) => {
            let mut result = base_result(
                services,
                job.job_id(),
                Some(job.tenant()),
                v1::JobStatus::Succeeded,
            );
            result.outputs = outputs;
            result.provider = provider;
            result.attempts = attempts;
            result.credits = Some(v1::CreditSummary {
                held: amount,
                captured: amount,
                released: 0,
            });
            (result, Settlement::Capture { amount })
        }
        Err(GenStop::Fail(failure)) => {
            let mut result =
                failed_result(services, job.job_id(), Some(job.tenant()), &failure.failure);
            result.provider = failure.provider;
            result.attempts = failure.attempts;
            result.credits = Some(v1::CreditSummary {
                held: amount,
                captured: 0,
                released: amount,
            });
            (result, Settlement::Release)
        }
        Err(GenStop::Requeue { reason, detail }) => return Err(Stop::Requeue { reason, detail }),
        Err(GenStop::Park(delay)) => return Err(Stop::Park(delay)),
    };
    // A cancel that arrived while the job ran wins over its outcome: no
    // charge, and nothing of it stays stored.
    if let Some(reason) = services.ledger.cancellation(job.job_id()).await? {
        for output in &result.outputs {
            if let Err(e) = services.store.delete(&output.uri).await {
                warn!(error = %e, "could not delete an output of a cancelled job");
            }
        }
        let provider = std::mem::take(&mut result.provider);
        let attempts = result.attempts;
        result = crate::cancel::cancelled_result(services, job, &reason);
        result.provider = provider;
        result.attempts = attempts;
        result.credits = Some(v1::CreditSummary {
            held: amount,
            captured: 0,
            released: amount,
        });
        settlement = Settlement::Release;
    }

    tracker.begin(v1::Stage::Settle, 0.95).await;
    result.finished_at = Some(system_time_to_timestamp(SystemTime::now()));
    let stored = genfleet_proto::encode_json(&result);
    let settled = services
        .ledger
        .settle_outcome(job.job_id(), settlement, &stored)
        .await?;
    if let Some(earlier) = settled.earlier_outcome {
        // Another delivery of this job ran at the same time and settled
        // first: its outcome is the job's one result, whatever this run got.
        warn!("another delivery of this job settled first; publishing its result");
        return serde_json::from_slice::<v1::JobResult>(&earlier).map_err(|e| Stop::Requeue {
            reason: "outcome_unreadable",
            detail: e.to_string(),
        });
    }
    let hold = settled.hold;
    // Only now, with the outcome recorded, may the sources go: a redelivery
    // before this point must still find them. A failed job keeps them, so the
    // customer can try again.
    if result.status == v1::JobStatus::Succeeded as i32 {
        delete_sources(services, job).await;
    }
    if let Some(hold) = hold {
        let kind = job.kind().label();
        services
            .metrics
            .credits_captured_total
            .with_label_values(&[kind])
            .inc_by(u64::try_from(hold.captured).unwrap_or(0));
        services
            .metrics
            .credits_released_total
            .with_label_values(&[kind])
            .inc_by(u64::try_from(hold.released).unwrap_or(0));
        result.credits = Some(v1::CreditSummary {
            held: hold.amount,
            captured: hold.captured,
            released: hold.released,
        });
    }
    Ok(result)
}

/// Fetches every input, checks its hash, scans it for malware (when a
/// scanner is configured), validates and sanitises it under `limits` (its
/// class's), and pre-processes the primary one. Nothing is decoded before
/// every input has been scanned.
async fn prepare_inputs(
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
    let mut raw_inputs = Vec::with_capacity(contract.inputs.len());
    for (i, input) in contract.inputs.iter().enumerate() {
        let bytes = services.store.fetch(&input.uri, limits.max_bytes).await?;
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
        scan_input(services, &bytes, i).await?;
        raw_inputs.push((role_of(input), bytes));
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
        // spent.
        let bytes = services
            .spool
            .keep(Bytes::from(prepared.bytes))
            .await
            .map_err(spool_stop)?;
        provider_inputs.push(InputImage {
            role,
            content_type: prepared.content_type.to_string(),
            bytes,
        });
    }
    drop(preparing);

    Ok(provider_inputs)
}

/// This machine's disk refused a spool file: not the job's fault.
fn spool_stop(err: std::io::Error) -> Stop {
    Stop::Requeue {
        reason: "spool_unavailable",
        detail: err.to_string(),
    }
}

/// Scans input `index` with the configured scanner: a hit ends the job as
/// `malware` (before any credit is held); no verdict is a requeue or a
/// failure as [`crate::failure::scan_stop`] decides, never a pass.
async fn scan_input(services: &Services, bytes: &[u8], index: usize) -> Result<(), Stop> {
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
        Ok(genfleet_scan::Verdict::Clean) => "clean",
        Ok(genfleet_scan::Verdict::Infected { .. }) => "infected",
        Err(_) => "error",
    };
    services
        .metrics
        .scans_total
        .with_label_values(&[outcome])
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

/// Holds the job's credits, once the inputs are known to be usable, so a
/// bad upload never touches the customer's balance.
async fn reserve(
    services: &Services,
    job: &ValidJob,
    tracker: &mut Tracker<'_>,
) -> Result<(), Stop> {
    let contract = job.job();
    tracker.begin(v1::Stage::Reserve, 0.3).await;
    let amount = job.credit_amount();
    if amount > 0 {
        let ttl = contract
            .credits
            .as_ref()
            .and_then(|c| c.hold_ttl.as_ref())
            .map_or(Duration::from_secs(3600), |d| {
                Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
            });
        services
            .ledger
            .reserve(job.job_id(), &job.credit_account(), amount, ttl)
            .await?;
    }
    Ok(())
}

/// A failure after credits were reserved, with what the provider chain did.
pub(crate) struct GenerationFailure {
    pub(crate) failure: JobFailure,
    pub(crate) provider: String,
    pub(crate) attempts: u32,
}

impl From<JobFailure> for GenerationFailure {
    fn from(failure: JobFailure) -> Self {
        GenerationFailure {
            failure,
            provider: String::new(),
            attempts: 0,
        }
    }
}

/// How generation and storing stop once credits are held: a failure is
/// settled (credits released), a requeue or a park keeps the hold for the
/// job's next delivery.
pub(crate) enum GenStop {
    Fail(GenerationFailure),
    Requeue {
        reason: &'static str,
        detail: String,
    },
    Park(Duration),
}

impl From<Stop> for GenStop {
    fn from(stop: Stop) -> Self {
        match stop {
            Stop::Fail(f) => GenStop::Fail(f.into()),
            Stop::Requeue { reason, detail } => GenStop::Requeue { reason, detail },
            Stop::Park(delay) => GenStop::Park(delay),
        }
    }
}

async fn generate_and_store(
    services: &Services,
    job: &ValidJob,
    tracker: &mut Tracker<'_>,
    providers: &[String],
    inputs: Vec<InputImage>,
    render_spec: &RenderSpec,
    deadline: Option<SystemTime>,
) -> Result<(Vec<v1::Output>, String, u32), GenStop> {
    tracker.begin(v1::Stage::Generate, 0.4).await;
    let max_wait = Duration::from_secs(services.config.providers.fal.max_wait_seconds);
    let mut request = generation_request(job, inputs, deadline, max_wait);
    let park = crate::parking::parks_kind(services, job.kind());

    let mut attempts = 0u32;
    let mut last: Option<(String, JobFailure)> = None;
    let mut output = None;
    for (position, name) in providers.iter().enumerate() {
        let Some(provider) = services.providers.get(name) else {
            continue;
        };
        request.model = model_for(services, job, name, position == 0);
        let span = tracing::info_span!("generate", provider = %name);
        let attempt = match provider.resumable().filter(|_| park) {
            // Long renders: submit, record the request, park the job.
            Some(resumable) => {
                match crate::parking::submit(services, name, resumable, &request)
                    .instrument(span)
                    .await
                {
                    Ok(delay) => return Err(GenStop::Park(delay)),
                    Err(crate::parking::SubmitStop::Requeue(detail)) => {
                        return Err(GenStop::Requeue {
                            reason: "ledger_unavailable",
                            detail,
                        })
                    }
                    Err(crate::parking::SubmitStop::Failed(failed)) => Err(failed),
                }
            }
            None => {
                genfleet_providers::generate_with_retries(
                    provider.as_ref(),
                    &request,
                    &services.retry,
                )
                .instrument(span)
                .await
            }
        };
        match attempt {
            Ok(out) => {
                attempts += out.attempts;
                services
                    .metrics
                    .provider_attempts_total
                    .with_label_values(&[name, "ok"])
                    .inc();
                output = Some((name.clone(), out));
                break;
            }
            Err(failed) => {
                attempts += failed.attempts;
                let outcome = attempt_outcome(&failed.error);
                if outcome == "unauthorized" {
                    // Not retried (a retry storm would not fix a key), but an
                    // operator must act: alert on this label.
                    tracing::error!(
                        provider = %name,
                        "the provider refused our credentials; check its key"
                    );
                }
                let failure = JobFailure::from(failed.error);
                services
                    .metrics
                    .provider_attempts_total
                    .with_label_values(&[name, outcome])
                    .inc_by(u64::from(failed.attempts.max(1)));
                let failover = failure.retryable;
                last = Some((name.clone(), failure));
                // Permanent answers (safety rejection, bad request) would be
                // the same elsewhere; only unavailability fails over.
                if !failover {
                    break;
                }
            }
        }
    }
    let Some((provider_name, output)) = output else {
        let (provider, failure) = last.unwrap_or_else(|| {
            (
                String::new(),
                JobFailure::new(ErrorCode::InvalidInput, "no usable provider for this job"),
            )
        });
        return Err(GenStop::Fail(GenerationFailure {
            failure,
            provider,
            attempts,
        }));
    };
    render_and_store(
        services,
        job,
        tracker,
        (provider_name, attempts),
        output,
        render_spec,
    )
    .await
}

/// The provider-neutral request for `job` (its model is set per provider);
/// provider calls and retry sleeps end by the job's deadline, or `max_wait`
/// from now if sooner.
pub(crate) fn generation_request(
    job: &ValidJob,
    inputs: Vec<InputImage>,
    deadline: Option<SystemTime>,
    max_wait: Duration,
) -> GenerationRequest {
    let generation = job.job().generation.clone().unwrap_or_default();
    let provider_deadline = tokio::time::Instant::now()
        + deadline
            .map(|d| {
                d.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            })
            .map_or(max_wait, |left| left.min(max_wait));
    GenerationRequest {
        job_id: job.job_id().to_string(),
        kind: kind_of(job.kind()),
        model: String::new(),
        prompt: generation.prompt.clone(),
        negative_prompt: generation.negative_prompt.clone(),
        seed: (generation.seed != 0).then_some(generation.seed),
        count: generation.count.max(1),
        aspect_ratio: generation.aspect_ratio.clone(),
        parameters: generation
            .parameters
            .as_ref()
            .map(struct_to_json)
            .unwrap_or_default(),
        inputs,
        deadline: Some(provider_deadline),
    }
}

/// Post-processes a provider's outputs and stores them; on a storage
/// failure removes what this attempt wrote.
pub(crate) async fn render_and_store(
    services: &Services,
    job: &ValidJob,
    tracker: &mut Tracker<'_>,
    (provider_name, attempts): (String, u32),
    output: genfleet_providers::GenerationOutput,
    render_spec: &RenderSpec,
) -> Result<(Vec<v1::Output>, String, u32), GenStop> {
    let fail_with = |failure: JobFailure| {
        GenStop::Fail(GenerationFailure {
            failure,
            provider: provider_name.clone(),
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
                // Provider outputs are untrusted input as well: same sniffing,
                // limits and re-encoding.
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
    let mut outputs = Vec::with_capacity(rendered.len());
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
                // Nothing half-stored: remove what this attempt wrote.
                for done in &outputs {
                    let done: &v1::Output = done;
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
    Ok((outputs, provider_name, attempts))
}

/// Deletes the job's inputs when it asked for it. Idempotent: deleting a
/// source that is already gone succeeds.
async fn delete_sources(services: &Services, job: &ValidJob) {
    if !job.job().delete_sources_after {
        return;
    }
    for input in &job.job().inputs {
        if let Err(e) = services.store.delete(&input.uri).await {
            warn!(error = %e, "could not delete a source after the job was settled");
        }
    }
}

fn prefix_failure(mut failure: JobFailure, index: usize) -> JobFailure {
    failure.message = format!("inputs[{index}]: {}", failure.message);
    failure
}

fn is_mp4(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && &bytes[4..8] == b"ftyp"
}

fn provider_chain(services: &Services, job: &ValidJob) -> Result<Vec<String>, JobFailure> {
    let requested = job
        .job()
        .generation
        .as_ref()
        .map(|g| g.providers.clone())
        .unwrap_or_default();
    let chain = if requested.is_empty() {
        vec![default_provider(job.kind()).to_string()]
    } else {
        requested
    };
    for name in &chain {
        if !services.providers.contains_key(name) {
            let mut known: Vec<&str> = services.providers.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(JobFailure::new(
                ErrorCode::InvalidInput,
                format!(
                    "field `generation.providers`: unknown provider {name:?}, this worker has {}",
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(chain)
}

/// Kinds the worker can do itself go to `local`; the rest to fal.
pub fn default_provider(kind: v1::JobKind) -> &'static str {
    match kind {
        v1::JobKind::Upscale | v1::JobKind::BatchEdit => "local",
        _ => "fal",
    }
}

/// The class a delivery came from: the first part of its routing key
/// (`cpu`, `gpu.high`, `remote.low`; lane moves and retry queues keep the
/// job's class in it), or the kind's default class for a key that names
/// none.
pub(crate) fn class_of(incoming: &Incoming, job: &ValidJob) -> genfleet_broker::JobClass {
    class_of_key(incoming.routing_key()).unwrap_or_else(|| default_class(job.kind()))
}

fn class_of_key(routing_key: &str) -> Option<genfleet_broker::JobClass> {
    routing_key
        .split('.')
        .next()
        .and_then(genfleet_broker::JobClass::parse)
}

/// Queue class of a job kind: local CPU work or provider-bound.
pub fn default_class(kind: v1::JobKind) -> genfleet_broker::JobClass {
    match default_provider(kind) {
        "local" => genfleet_broker::JobClass::Cpu,
        _ => genfleet_broker::JobClass::Remote,
    }
}

/// Outcome label of a failed provider call: its error code, except bad
/// credentials, which get their own label so that they can page someone.
pub(crate) fn attempt_outcome(error: &genfleet_providers::ProviderError) -> &'static str {
    match error {
        genfleet_providers::ProviderError::Unauthorized { .. } => "unauthorized",
        other => other.code(),
    }
}

/// Lane of a job's priority: publishers route a job to
/// `<class>.<lane>` (`cpu.high`, `remote`, `remote.low`, ...).
pub fn lane_of(priority: i32) -> genfleet_broker::Lane {
    match v1::Priority::try_from(priority) {
        Ok(v1::Priority::High) => genfleet_broker::Lane::High,
        Ok(v1::Priority::Low) => genfleet_broker::Lane::Low,
        Ok(v1::Priority::Normal) | Err(_) => genfleet_broker::Lane::Normal,
    }
}

/// The model `provider` runs for `job`: the job's own `generation.model`
/// names a model of the first provider in its chain (model ids are
/// provider-specific); failover providers, and jobs that name none, get the
/// provider's configured default for the job kind.
pub(crate) fn model_for(
    services: &Services,
    job: &ValidJob,
    provider: &str,
    first: bool,
) -> String {
    let named = job
        .job()
        .generation
        .as_ref()
        .map(|g| g.model.as_str())
        .unwrap_or_default();
    if first && !named.is_empty() {
        return named.to_string();
    }
    services
        .default_models
        .get(provider)
        .and_then(|models| models.get(&job.kind()))
        .cloned()
        .unwrap_or_else(|| default_model(services, job.kind()))
}

/// A job kind by its label (`image_to_video`), for configuration.
pub fn kind_from_label(label: &str) -> Option<v1::JobKind> {
    [
        v1::JobKind::ProductPhoto,
        v1::JobKind::BackgroundRemoval,
        v1::JobKind::Upscale,
        v1::JobKind::Inpaint,
        v1::JobKind::VirtualTryOn,
        v1::JobKind::ImageToVideo,
        v1::JobKind::BatchEdit,
    ]
    .into_iter()
    .find(|kind| kind.label() == label)
}

fn default_model(services: &Services, kind: v1::JobKind) -> String {
    let models = &services.config.providers.fal.models;
    match kind {
        v1::JobKind::ProductPhoto | v1::JobKind::Unspecified => models.product_photo.clone(),
        v1::JobKind::BackgroundRemoval => models.background_removal.clone(),
        v1::JobKind::Upscale => models.upscale.clone(),
        v1::JobKind::Inpaint => models.inpaint.clone(),
        v1::JobKind::VirtualTryOn => models.virtual_try_on.clone(),
        v1::JobKind::ImageToVideo => models.image_to_video.clone(),
        v1::JobKind::BatchEdit => models.batch_edit.clone(),
    }
}

fn kind_of(kind: v1::JobKind) -> JobKind {
    match kind {
        v1::JobKind::ProductPhoto | v1::JobKind::Unspecified => JobKind::ProductPhoto,
        v1::JobKind::BackgroundRemoval => JobKind::BackgroundRemoval,
        v1::JobKind::Upscale => JobKind::Upscale,
        v1::JobKind::Inpaint => JobKind::Inpaint,
        v1::JobKind::VirtualTryOn => JobKind::VirtualTryOn,
        v1::JobKind::ImageToVideo => JobKind::ImageToVideo,
        v1::JobKind::BatchEdit => JobKind::BatchEdit,
    }
}

fn role_of(input: &v1::Input) -> InputRole {
    match v1::InputRole::try_from(input.role) {
        Ok(v1::InputRole::Person) => InputRole::Person,
        Ok(v1::InputRole::Garment) => InputRole::Garment,
        Ok(v1::InputRole::Mask) => InputRole::Mask,
        Ok(v1::InputRole::Reference) => InputRole::Reference,
        _ => InputRole::Product,
    }
}

fn struct_to_json(value: &pbjson_types::Struct) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

pub(crate) fn base_result(
    services: &Services,
    job_id: &str,
    tenant: Option<&v1::Tenant>,
    status: v1::JobStatus,
) -> v1::JobResult {
    v1::JobResult {
        job_id: job_id.to_string(),
        status: status as i32,
        outputs: Vec::new(),
        error: None,
        credits: Some(v1::CreditSummary::default()),
        timings: Vec::new(),
        provider: String::new(),
        attempts: 0,
        worker: services.worker_name.clone(),
        tenant: tenant.cloned(),
        finished_at: Some(system_time_to_timestamp(SystemTime::now())),
    }
}

/// A failed (or expired) result; `deadline_exceeded` ends as EXPIRED, as the
/// contract says.
pub(crate) fn failed_result(
    services: &Services,
    job_id: &str,
    tenant: Option<&v1::Tenant>,
    failure: &JobFailure,
) -> v1::JobResult {
    let status = match failure.code {
        ErrorCode::DeadlineExceeded => v1::JobStatus::Expired,
        ErrorCode::Cancelled => v1::JobStatus::Cancelled,
        _ => v1::JobStatus::Failed,
    };
    let mut result = base_result(services, job_id, tenant, status);
    result.error = Some(v1::Error {
        code: failure.code.as_str().to_string(),
        message: failure.message.clone(),
        retryable: failure.retryable,
    });
    result
}

/// Publishes the result to `genfleet.results` and, when asked, to the
/// job's `reply_to` queue; both confirmed before the job may be acked.
pub(crate) async fn publish_result(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    result: &v1::JobResult,
) -> Disposition {
    let status = v1::JobStatus::try_from(result.status).unwrap_or(v1::JobStatus::Unspecified);
    let body = genfleet_proto::encode_json(result);
    let outgoing = Outgoing {
        content_type: Some("application/json".into()),
        message_id: Some(format!("{}.result", result.job_id)),
        correlation_id: Some(result.job_id.clone()),
        persistent: true,
        ..Default::default()
    };
    let key = genfleet_proto::result_routing_key(result.tenant.as_ref(), status);
    if let Err(e) = publisher
        .publish(genfleet_broker::RESULTS_EXCHANGE, &key, &body, &outgoing)
        .await
    {
        warn!(error = %e, "result publish not confirmed; the job will be redelivered");
        services
            .metrics
            .requeues_total
            .with_label_values(&["publish_failed"])
            .inc();
        return Disposition::Requeue("publish_failed");
    }
    if let Some(reply_to) = incoming.reply_to() {
        if let Err(e) = publisher.publish("", reply_to, &body, &outgoing).await {
            warn!(error = %e, "reply_to publish not confirmed; the job will be redelivered");
            return Disposition::Requeue("publish_failed");
        }
    }
    Disposition::Ack
}

/// A message that is not a valid job: a failed result when its id is known,
/// then the message itself to the dead-letter exchange with the reason.
async fn reject_message(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    error: genfleet_proto::DecodeError,
    tenant: Option<v1::Tenant>,
) -> Disposition {
    let code = ErrorCode::InvalidInput;
    warn!(
        job_id = error.job_id.as_deref().unwrap_or(""),
        reason = %error.message,
        "message is not a valid job; dead-lettering it"
    );
    if let Some(job_id) = &error.job_id {
        let tenant = tenant.filter(|t| {
            genfleet_proto::is_valid_tenant_id(&t.org)
                && genfleet_proto::is_valid_tenant_id(&t.workspace)
        });
        let failure = JobFailure::new(code, format!("invalid job message: {}", error.message));
        let result = failed_result(services, job_id, tenant.as_ref(), &failure);
        return publish_failure_then_dead_letter(
            services,
            publisher,
            incoming,
            &result,
            code,
            &error.message,
        )
        .await;
    }
    dead_letter(services, publisher, incoming, code, &error.message, None).await
}

/// A failed job whose message must also go to the dead letters: its
/// result first (confirmed), then the message with the code and reason.
async fn publish_failure_then_dead_letter(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    result: &v1::JobResult,
    code: ErrorCode,
    reason: &str,
) -> Disposition {
    services
        .metrics
        .job_errors_total
        .with_label_values(&[code.as_str()])
        .inc();
    if publish_result(services, publisher, incoming, result).await != Disposition::Ack {
        return Disposition::Requeue("publish_failed");
    }
    dead_letter(
        services,
        publisher,
        incoming,
        code,
        reason,
        Some(&result.job_id),
    )
    .await
}

/// Publishes the message to the dead-letter exchange with the code and
/// reason in headers, confirmed; the caller acks on [`Disposition::Ack`].
pub(crate) async fn dead_letter(
    services: &Services,
    publisher: &Publisher,
    incoming: &Incoming,
    code: ErrorCode,
    reason: &str,
    job_id: Option<&str>,
) -> Disposition {
    let mut headers = vec![
        (
            genfleet_broker::HEADER_ERROR.to_string(),
            code.as_str().to_string(),
        ),
        (
            genfleet_broker::HEADER_REASON.to_string(),
            reason.to_string(),
        ),
    ];
    if let Some(id) = job_id {
        headers.push(("x-genfleet-job-id".into(), id.to_string()));
    }
    let outgoing = Outgoing {
        content_type: incoming.content_type().map(str::to_string),
        message_id: incoming.message_id().map(str::to_string),
        headers,
        persistent: true,
        ..Default::default()
    };
    match publisher
        .publish(
            genfleet_broker::DEAD_LETTER_EXCHANGE,
            incoming.routing_key(),
            incoming.body(),
            &outgoing,
        )
        .await
    {
        Ok(()) => {
            services
                .metrics
                .dead_letters_total
                .with_label_values(&[code.as_str()])
                .inc();
            Disposition::Ack
        }
        Err(e) => {
            warn!(error = %e, "dead letter not confirmed; the message will be redelivered");
            Disposition::Requeue("publish_failed")
        }
    }
}

/// Counts a job in `genfleet_jobs_in_flight` until dropped, also when the
/// job panics.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus::IntGauge) -> InFlight<'a> {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Stage boundaries: timings for the result, progress events for whoever
/// listens, stage histograms for Prometheus.
pub(crate) struct Tracker<'a> {
    services: &'a Services,
    publisher: &'a Publisher,
    job_id: String,
    tenant: v1::Tenant,
    current: Option<(v1::Stage, Instant)>,
    timings: Vec<v1::StageTiming>,
}

impl<'a> Tracker<'a> {
    fn new(services: &'a Services, publisher: &'a Publisher, job: &ValidJob) -> Tracker<'a> {
        Tracker {
            services,
            publisher,
            job_id: job.job_id().to_string(),
            tenant: job.tenant().clone(),
            current: None,
            timings: Vec::new(),
        }
    }

    pub(crate) async fn begin(&mut self, stage: v1::Stage, progress: f32) {
        self.finish();
        self.current = Some((stage, Instant::now()));
        let event = v1::JobEvent {
            job_id: self.job_id.clone(),
            stage: stage as i32,
            progress,
            time: Some(system_time_to_timestamp(SystemTime::now())),
        };
        let body = genfleet_proto::encode_json(&event);
        let outgoing = Outgoing {
            content_type: Some("application/json".into()),
            message_id: Some(format!("{}.{}", self.job_id, stage.label())),
            ..Default::default()
        };
        let key = genfleet_proto::event_routing_key(Some(&self.tenant), stage);
        // Events are advisory: a lost one must not fail or delay the job.
        if let Err(e) = self
            .publisher
            .publish(genfleet_broker::EVENTS_EXCHANGE, &key, &body, &outgoing)
            .await
        {
            debug!(error = %e, "progress event not published");
        }
    }

    fn finish(&mut self) {
        if let Some((stage, since)) = self.current.take() {
            let elapsed = since.elapsed();
            self.services
                .metrics
                .stage_duration_seconds
                .with_label_values(&[stage.label()])
                .observe(elapsed.as_secs_f64());
            self.timings.push(v1::StageTiming {
                stage: stage.label().to_string(),
                duration: Some(pbjson_types::Duration {
                    seconds: i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(elapsed.subsec_nanos()).unwrap_or(0),
                }),
            });
        }
    }
}

pub(crate) fn system_time_to_timestamp(t: SystemTime) -> pbjson_types::Timestamp {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    pbjson_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

fn timestamp_to_system_time(t: &pbjson_types::Timestamp) -> SystemTime {
    let nanos = u32::try_from(t.nanos).unwrap_or(0);
    if t.seconds >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, nanos)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genfleet_providers::ProviderError;

    #[test]
    fn bad_credentials_have_their_own_outcome_label() {
        let unauthorized = ProviderError::Unauthorized {
            message: "401".into(),
        };
        assert_eq!(attempt_outcome(&unauthorized), "unauthorized");
        // The customer still sees provider_unavailable.
        assert_eq!(unauthorized.code(), "provider_unavailable");
        let rejected = ProviderError::Rejected {
            message: "nsfw".into(),
        };
        assert_eq!(attempt_outcome(&rejected), "provider_rejected");
        assert_eq!(
            attempt_outcome(&ProviderError::DeadlineExceeded),
            "deadline_exceeded"
        );
    }

    #[test]
    fn the_class_comes_from_the_routing_key() {
        use genfleet_broker::JobClass;
        for (key, class) in [
            ("cpu", Some(JobClass::Cpu)),
            ("gpu.high", Some(JobClass::Gpu)),
            ("remote.low", Some(JobClass::Remote)),
            ("", None),
            ("fpga", None),
        ] {
            assert_eq!(class_of_key(key), class, "{key:?}");
        }
    }

    #[test]
    fn priorities_pick_lanes() {
        use genfleet_broker::Lane;
        assert_eq!(lane_of(v1::Priority::High as i32), Lane::High);
        assert_eq!(lane_of(v1::Priority::Normal as i32), Lane::Normal);
        assert_eq!(lane_of(v1::Priority::Low as i32), Lane::Low);
        // An unknown value from a newer publisher runs at normal priority.
        assert_eq!(lane_of(42), Lane::Normal);
    }
}

//! Generate: the job's provider chain, tried in order. Each provider gets
//! the retry policy; only unavailability fails over (a safety rejection or
//! a bad request would be the same elsewhere). Jobs of a parked kind on a
//! queue-style provider are submitted and their request recorded instead:
//! the job then waits in the broker, not in a worker slot (see
//! [`super::park`] for its returns).

use std::time::{Duration, SystemTime};

use genfleet_proto::{pbjson_types, v1, ErrorCode, ValidJob};
use genfleet_providers::{
    Failed, GenerationOutput, GenerationRequest, InputImage, ProviderError, Resumable,
};
use tracing::{info, warn, Instrument};

use super::progress::Tracker;
use crate::disposition::RequeueReason;
use crate::failure::{provider_error_code, JobFailure, Stop};
use crate::kinds::{default_provider, provider_kind};
use crate::services::Services;

/// A provider's finished outputs, still in the spool.
pub(crate) struct Generated {
    pub(crate) output: GenerationOutput,
    pub(crate) provider: String,
    /// Provider calls made for the job, over the whole chain.
    pub(crate) attempts: u32,
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

/// How the stages after the reservation stop: a failure is settled
/// (credits released), a requeue or a park keeps the hold for the job's
/// next delivery.
pub(crate) enum GenStop {
    Fail(GenerationFailure),
    Requeue {
        reason: RequeueReason,
        detail: String,
    },
    Park(Duration),
    /// No provider of the chain can take the job now; back after this long.
    Delay(Duration),
}

impl From<Stop> for GenStop {
    fn from(stop: Stop) -> Self {
        match stop {
            Stop::Fail(f) => GenStop::Fail(f.into()),
            Stop::Requeue { reason, detail } => GenStop::Requeue { reason, detail },
            Stop::Park(delay) => GenStop::Park(delay),
            Stop::Delay(delay) => GenStop::Delay(delay),
        }
    }
}

/// What one provider call (with its retries) came to, for
/// `genfleet_provider_attempts_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    Ok,
    /// Accepted by a queue-style provider; the job parks.
    Submitted,
    /// The provider refused our credentials: its own label, so that it can
    /// page someone (the customer sees `provider_unavailable`).
    Unauthorized,
    /// The provider asked us to slow down: backpressure, told apart from
    /// `provider_unavailable` (the customer sees that code).
    RateLimited,
    /// Not called: the circuit was open or the provider at capacity
    /// (labelled by the reason).
    Deferred(genfleet_providers::DeferReason),
    /// Our own spool failed, not the provider.
    Local,
    Failed(ErrorCode),
}

impl AttemptOutcome {
    pub(crate) fn of_error(error: &ProviderError) -> AttemptOutcome {
        match error {
            ProviderError::Unauthorized { .. } => AttemptOutcome::Unauthorized,
            ProviderError::RateLimited { .. } => AttemptOutcome::RateLimited,
            ProviderError::Deferred { reason, .. } => AttemptOutcome::Deferred(*reason),
            ProviderError::Local { .. } => AttemptOutcome::Local,
            other => AttemptOutcome::Failed(provider_error_code(other)),
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Submitted => "submitted",
            AttemptOutcome::Unauthorized => "unauthorized",
            AttemptOutcome::RateLimited => "rate_limited",
            AttemptOutcome::Deferred(reason) => reason.label(),
            AttemptOutcome::Local => "local_error",
            AttemptOutcome::Failed(code) => code.as_str(),
        }
    }
}

pub(crate) fn count_attempts(services: &Services, provider: &str, outcome: AttemptOutcome, n: u32) {
    services
        .metrics
        .provider_attempts_total
        .with_label_values(&[provider, outcome.label()])
        .inc_by(u64::from(n));
}

/// The job's providers, in order: its own list, or its kind's default.
///
/// # Errors
/// `invalid_input` naming a provider this worker does not have.
pub(crate) fn provider_chain(
    services: &Services,
    job: &ValidJob,
) -> Result<Vec<String>, JobFailure> {
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

/// Runs the chain until a provider delivers, fails permanently, or accepts
/// a parked job. A provider that cannot take the job now (its circuit is
/// open, its concurrency limit full) is passed over like an unavailable
/// one; when no provider delivered and one of them deferred, the job is
/// sent back to wait for it ([`GenStop::Delay`]) while its deadline (or
/// `providers.defer_horizon_seconds` from its first deferral,
/// `deferred_at`) leaves time.
pub(crate) async fn generate(
    services: &Services,
    job: &ValidJob,
    tracker: &mut Tracker<'_>,
    providers: &[String],
    inputs: Vec<InputImage>,
    (deadline, deferred_at): (Option<SystemTime>, Option<u64>),
) -> Result<Generated, GenStop> {
    tracker.begin(v1::Stage::Generate, 0.4).await;
    let max_wait = Duration::from_secs(services.config.providers.max_wait_seconds);
    let mut request = generation_request(job, inputs, deadline, max_wait);
    let park = parks_kind(services, job.kind());

    let mut attempts = 0u32;
    let mut last: Option<(String, JobFailure)> = None;
    // The soonest a deferring provider may take the job.
    let mut deferred: Option<Duration> = None;
    for (position, name) in providers.iter().enumerate() {
        let Some(provider) = services.providers.get(name) else {
            continue;
        };
        request.model = model_for(services, job, name, position == 0);
        let span = tracing::info_span!("generate", provider = %name);
        let attempt = match provider.resumable().filter(|_| park) {
            Some(resumable) => match submit(services, name, resumable, &request)
                .instrument(span)
                .await
            {
                Ok(delay) => return Err(GenStop::Park(delay)),
                Err(SubmitStop::Requeue(detail)) => {
                    return Err(GenStop::Requeue {
                        reason: RequeueReason::LedgerUnavailable,
                        detail,
                    })
                }
                Err(SubmitStop::Failed(failed)) => Err(failed),
            },
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
            Ok(output) => {
                attempts += output.attempts;
                count_attempts(services, name, AttemptOutcome::Ok, 1);
                return Ok(Generated {
                    output,
                    provider: name.clone(),
                    attempts,
                });
            }
            Err(failed) => {
                attempts += failed.attempts;
                if let ProviderError::Deferred {
                    reason,
                    retry_after,
                } = &failed.error
                {
                    services
                        .metrics
                        .jobs_delayed_total
                        .with_label_values(&[name, reason.label()])
                        .inc();
                    deferred = Some(deferred.map_or(*retry_after, |d| d.min(*retry_after)));
                }
                let outcome = AttemptOutcome::of_error(&failed.error);
                if outcome == AttemptOutcome::Unauthorized {
                    // Not retried (a retry storm would not fix a key), but an
                    // operator must act: alert on this label.
                    tracing::error!(
                        provider = %name,
                        "the provider refused our credentials; check its key"
                    );
                }
                let failure = JobFailure::from(failed.error);
                count_attempts(services, name, outcome, failed.attempts.max(1));
                let failover = failure.retryable;
                last = Some((name.clone(), failure));
                if !failover {
                    break;
                }
            }
        }
    }
    let (provider, failure) = last.unwrap_or_else(|| {
        (
            String::new(),
            JobFailure::new(ErrorCode::InvalidInput, "no usable provider for this job"),
        )
    });
    // A permanent answer ends the chain (`failure.retryable` is false): no
    // wait would change it.
    if let Some(wait) = deferred.filter(|_| failure.retryable) {
        let horizon = defer_horizon(services, deadline, deferred_at);
        if SystemTime::now() + wait < horizon {
            return Err(GenStop::Delay(wait));
        }
        return Err(GenStop::Fail(GenerationFailure {
            failure: JobFailure::new(
                ErrorCode::ProviderUnavailable,
                "no provider of the job's chain could take it before its deadline \
                 (circuit open or at capacity)",
            ),
            provider,
            attempts,
        }));
    }
    Err(GenStop::Fail(GenerationFailure {
        failure,
        provider,
        attempts,
    }))
}

/// Until when a deferred job may keep waiting for its providers: its
/// deadline, or `providers.defer_horizon_seconds` after its first deferral
/// (now, for the first), whichever is sooner.
fn defer_horizon(
    services: &Services,
    deadline: Option<SystemTime>,
    deferred_at: Option<u64>,
) -> SystemTime {
    let since = deferred_at
        .map(super::progress::header_time)
        .unwrap_or_else(SystemTime::now);
    let horizon = since
        .checked_add(Duration::from_secs(
            services.config.providers.defer_horizon_seconds,
        ))
        .unwrap_or(since);
    deadline.map_or(horizon, |d| d.min(horizon))
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
        kind: provider_kind(job.kind()),
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

/// The model `provider` runs for `job`: the job's own `generation.model`
/// names a model of the first provider in its chain (model ids are
/// provider-specific); failover providers, and jobs that name none, get
/// that provider's own configured default for the job kind (none: the
/// provider's own default, e.g. the local provider's).
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
        .unwrap_or_default()
}

fn struct_to_json(value: &pbjson_types::Struct) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

/// Whether jobs of `kind` are parked while their provider renders.
pub(crate) fn parks_kind(services: &Services, kind: v1::JobKind) -> bool {
    services
        .config
        .providers
        .park
        .kinds
        .iter()
        .any(|k| k == kind.label())
}

/// The wait before look number `parks + 1`: the configured delays in
/// order, the last one repeating.
pub(crate) fn poll_delay(services: &Services, parks: u32) -> Duration {
    let delays = &services.config.providers.park.poll_delays_seconds;
    let index = usize::try_from(parks).unwrap_or(usize::MAX);
    let seconds = delays.get(index).or(delays.last()).copied().unwrap_or(30);
    Duration::from_secs(seconds)
}

/// Why a submit did not end with a parked job.
enum SubmitStop {
    /// The provider refused or could not be reached (after retries).
    Failed(Failed),
    /// The request went out but could not be recorded; the caller requeues.
    Requeue(String),
}

/// Submits `request` (with the usual retry policy), records the request in
/// the ledger, and returns the wait before the first look.
///
/// A request recorded by an earlier delivery that died before parking is
/// not submitted again: the job parks on it.
async fn submit(
    services: &Services,
    provider: &str,
    resumable: &dyn Resumable,
    request: &GenerationRequest,
) -> Result<Duration, SubmitStop> {
    let first_look = poll_delay(services, 0);
    match services
        .ledger
        .recall_submission(&request.job_id, provider)
        .await
    {
        Ok(Some(_)) => {
            info!(
                provider,
                "the job's provider request was already submitted; parking it"
            );
            return Ok(first_look);
        }
        Ok(None) => {}
        Err(e) => return Err(SubmitStop::Requeue(e.to_string())),
    }
    let (submission, attempts) =
        genfleet_providers::call_with_retries(provider, request, &services.retry, || {
            resumable.submit(request)
        })
        .await
        .map_err(SubmitStop::Failed)?;
    if let Err(e) = services
        .ledger
        .remember_submission(&request.job_id, provider, &submission)
        .await
    {
        // Unrecorded, the request would be submitted (and paid for) again by
        // the redelivery: stop it first.
        warn!(error = %e, provider, "could not record a parked request; cancelling it");
        if let Err(cancel) = resumable.cancel(&submission).await {
            warn!(error = %cancel, provider, "could not cancel an unrecorded request");
        }
        return Err(SubmitStop::Requeue(e.to_string()));
    }
    count_attempts(services, provider, AttemptOutcome::Submitted, attempts);
    services
        .metrics
        .jobs_parked_total
        .with_label_values(&[provider])
        .inc();
    info!(
        provider,
        poll_in_s = first_look.as_secs(),
        "submitted; parking the job while the provider renders"
    );
    Ok(first_look)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_credentials_have_their_own_outcome_label() {
        let unauthorized = ProviderError::Unauthorized {
            message: "401".into(),
        };
        assert_eq!(
            AttemptOutcome::of_error(&unauthorized).label(),
            "unauthorized"
        );
        // The customer still sees provider_unavailable.
        assert_eq!(unauthorized.code(), "provider_unavailable");
        let rejected = ProviderError::Rejected {
            message: "nsfw".into(),
        };
        assert_eq!(
            AttemptOutcome::of_error(&rejected).label(),
            "provider_rejected"
        );
        assert_eq!(
            AttemptOutcome::of_error(&ProviderError::DeadlineExceeded).label(),
            "deadline_exceeded"
        );
        assert_eq!(AttemptOutcome::Ok.label(), "ok");
        assert_eq!(AttemptOutcome::Submitted.label(), "submitted");
    }
}

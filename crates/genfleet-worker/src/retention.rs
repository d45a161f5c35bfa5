//! Retention: what the products promise about deleting customers' files and
//! records, carried out.
//!
//! - **Sources** (`delete_sources_after`): every job that ends (succeeded,
//!   failed, cancelled, expired) with its outcome stored deletes its inputs
//!   right after the settlement (`job/settle.rs`). Each is first recorded
//!   in the ledger, so a delete that fails (a store outage, a worker that
//!   dies) is retried by [`retry_source_deletions`] with backoff until it
//!   succeeds, never only logged. `https://` inputs are the product's, not
//!   ours to delete: they are skipped.
//! - **Purge** ([`purge`]: `genfleet purge`, or a worker every
//!   `retention.purge_interval_seconds`): outputs in the store, stored
//!   outcomes, provider submission records, start counts, cancel requests
//!   and dead letters past their retention, per organisation. One purge
//!   runs at a time fleet-wide (a PostgreSQL advisory lock). The ledger's
//!   books (holds, entries, balances) are never touched.
//!
//! "Now" is always a parameter, so tests decide what is old.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use genfleet_broker::{AgePurgeReport, Broker, BrokerError};
use genfleet_credits::{
    CreditsError, Ledger, PendingSourceDeletions, RecordCutoffs, RecordsPurged, SourceDeletion,
};
use genfleet_storage::{PurgedObjects, StorageError, Store};
use tracing::{info, warn};

use crate::config::RetentionSection;
use crate::metrics::Metrics;

const DAY: Duration = Duration::from_secs(86_400);
/// Source deletions handed out per claim.
const SOURCE_BATCH: i64 = 200;
/// How long a claimed source deletion is someone's before another sweeper
/// may take it (a sweeper that died holding it only delays it this long).
const SOURCE_LEASE: Duration = Duration::from_secs(300);
/// First retry of a failed source delete; doubles per attempt up to
/// [`MAX_SOURCE_BACKOFF`].
const FIRST_SOURCE_BACKOFF: Duration = Duration::from_secs(60);
const MAX_SOURCE_BACKOFF: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("ledger: {0}")]
    Ledger(#[from] CreditsError),
    #[error("store: {0}")]
    Store(#[from] StorageError),
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
}

/// What a purge works on. The broker is optional: without it, dead letters
/// are left alone (and the report says so).
pub struct Targets<'a> {
    pub ledger: &'a Ledger,
    pub store: &'a Store,
    pub broker: Option<&'a Broker>,
    pub metrics: Option<&'a Metrics>,
}

/// One purge's parameters.
#[derive(Debug, Clone, Copy)]
pub struct PurgeOptions {
    /// The time retention windows are counted back from.
    pub now: SystemTime,
    /// Replaces the configured default windows (outputs, records, dead
    /// letters) for this run; per-organisation overrides still apply, so an
    /// org promised 30 days loses its files at 30 days, and an org promised
    /// a year keeps them a year.
    pub older_than: Option<Duration>,
    /// Count what would go; remove nothing.
    pub dry_run: bool,
}

/// What a purge removed (or, dry, would remove).
#[derive(Debug, Clone, Default)]
pub struct PurgeReport {
    /// Per organisation found in the store, with its cutoff window.
    pub outputs: Vec<OrgOutputs>,
    pub records: RecordsPurged,
    /// `None` without a broker.
    pub dead_letters: Option<AgePurgeReport>,
    /// The pass over pending source deletions (not run dry).
    pub sources: SourceSweep,
}

#[derive(Debug, Clone)]
pub struct OrgOutputs {
    pub org: String,
    pub window: Duration,
    pub purged: PurgedObjects,
}

impl PurgeReport {
    pub fn outputs_total(&self) -> PurgedObjects {
        self.outputs
            .iter()
            .fold(PurgedObjects::default(), |sum, o| PurgedObjects {
                objects: sum.objects + o.purged.objects,
                bytes: sum.bytes + o.purged.bytes,
            })
    }
}

/// What [`purge`] did.
#[derive(Debug, Clone)]
pub enum PurgeOutcome {
    Done(PurgeReport),
    /// Another purge holds the fleet-wide lock; nothing was done.
    Busy,
}

/// A pass over the pending source deletions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceSweep {
    pub deleted: u64,
    /// Failed again; retried later.
    pub failed: u64,
    /// Not the tenant's to delete (or not a store URI): dropped.
    pub refused: u64,
    /// What waits afterwards.
    pub pending: PendingSourceDeletions,
}

/// How one source deletion went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceOutcome {
    Deleted,
    Failed,
    Refused,
}

/// Whether an input URI names something this fleet may delete: objects of
/// the store and `file://` inputs. `https://` inputs (presigned URLs into a
/// product's bucket) are the product's.
pub(crate) fn is_deletable_source(uri: &str) -> bool {
    uri.starts_with("s3://") || uri.starts_with("file://")
}

/// Deletes one recorded source under its tenant's rule, and records how it
/// went: the ledger row goes on success or refusal, and gets its next
/// attempt on failure. Never fails: what could not be recorded stays
/// pending for the next sweep.
pub(crate) async fn delete_source(
    store: &Store,
    ledger: &Ledger,
    metrics: Option<&Metrics>,
    source: &SourceDeletion,
    now: SystemTime,
) -> SourceOutcome {
    let attempt = match store.scope(&source.org, &source.workspace) {
        Ok(scope) => store.delete_input(&scope, &source.uri).await,
        Err(e) => Err(e),
    };
    let outcome = match &attempt {
        Ok(()) => SourceOutcome::Deleted,
        Err(e) if e.is_retryable() => SourceOutcome::Failed,
        Err(_) => SourceOutcome::Refused,
    };
    let recorded = match (&attempt, outcome) {
        (Err(e), SourceOutcome::Failed) => {
            // The message names the store's failure, never a signed URL:
            // only s3:// and file:// sources are deleted here.
            warn!(error = %e, attempts = source.attempts, "could not delete a source; will retry");
            let retry_at = now + source_backoff(source.attempts);
            ledger
                .source_deletion_failed(&source.job_id, &source.uri, &e.to_string(), retry_at)
                .await
        }
        (Err(e), _) => {
            warn!(error = %e, "source not deleted: not the tenant's to delete");
            ledger.source_deleted(&source.job_id, &source.uri).await
        }
        (Ok(()), _) => ledger.source_deleted(&source.job_id, &source.uri).await,
    };
    if let Err(e) = recorded {
        warn!(error = %e, "could not record a source deletion; the next sweep repeats it");
    }
    if let Some(metrics) = metrics {
        let label = match outcome {
            SourceOutcome::Deleted => "deleted",
            SourceOutcome::Failed => "failed",
            SourceOutcome::Refused => "refused",
        };
        metrics
            .source_deletions_total
            .with_label_values(&[label])
            .inc();
    }
    outcome
}

/// `FIRST_SOURCE_BACKOFF` doubled per attempt after the first, capped.
fn source_backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    FIRST_SOURCE_BACKOFF
        .saturating_mul(1u32 << doublings)
        .min(MAX_SOURCE_BACKOFF)
}

/// Deletes every source deletion due at `now` whose job has settled: the
/// ones that failed before and are due again, and the ones whose worker
/// died before doing them. Safe on every worker at once (claims are leased).
///
/// # Errors
/// The ledger cannot be reached (what was done before stays done).
pub async fn retry_source_deletions(
    ledger: &Ledger,
    store: &Store,
    metrics: Option<&Metrics>,
    now: SystemTime,
) -> Result<SourceSweep, RetentionError> {
    let mut sweep = SourceSweep::default();
    loop {
        let claimed = ledger
            .claim_source_deletions(now, now + SOURCE_LEASE, SOURCE_BATCH)
            .await?;
        for source in &claimed {
            match delete_source(store, ledger, metrics, source, now).await {
                SourceOutcome::Deleted => sweep.deleted += 1,
                SourceOutcome::Failed => sweep.failed += 1,
                SourceOutcome::Refused => sweep.refused += 1,
            }
        }
        // A failed one is not due again before its retry time, so the loop
        // ends: each pass sees a row at most once.
        if claimed.len() < usize::try_from(SOURCE_BATCH).unwrap_or(usize::MAX) {
            break;
        }
    }
    sweep.pending = ledger.pending_source_deletions().await?;
    if let Some(metrics) = metrics {
        export_pending(metrics, sweep.pending);
    }
    Ok(sweep)
}

fn export_pending(metrics: &Metrics, pending: PendingSourceDeletions) {
    let failing = i64::try_from(pending.failing).unwrap_or(i64::MAX);
    let all = i64::try_from(pending.pending).unwrap_or(i64::MAX);
    metrics
        .source_deletions_pending
        .with_label_values(&["failing"])
        .set(failing);
    metrics
        .source_deletions_pending
        .with_label_values(&["waiting"])
        .set(all.saturating_sub(failing));
}

/// `now` minus `window`, or the epoch for a window longer than time.
fn cutoff(now: SystemTime, window: Duration) -> SystemTime {
    now.checked_sub(window).unwrap_or(UNIX_EPOCH)
}

fn days(n: u32) -> Duration {
    DAY * n
}

/// Runs one purge: pending source deletions retried, then outputs, ledger
/// records and dead letters past retention removed (or, dry, counted).
/// A real run takes the fleet-wide purge lock first and answers
/// [`PurgeOutcome::Busy`] when another purge holds it; a dry run does not
/// need it.
///
/// # Errors
/// The first failing service; what was removed before stays removed, and a
/// rerun continues (every step is idempotent).
pub async fn purge(
    targets: &Targets<'_>,
    config: &RetentionSection,
    options: PurgeOptions,
) -> Result<PurgeOutcome, RetentionError> {
    let lock = if options.dry_run {
        None
    } else {
        match targets.ledger.try_purge_lock().await? {
            Some(lock) => Some(lock),
            None => return Ok(PurgeOutcome::Busy),
        }
    };
    let result = purge_locked(targets, config, options).await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    result.map(PurgeOutcome::Done)
}

async fn purge_locked(
    targets: &Targets<'_>,
    config: &RetentionSection,
    options: PurgeOptions,
) -> Result<PurgeReport, RetentionError> {
    let PurgeOptions {
        now,
        older_than,
        dry_run,
    } = options;
    let batch = config.batch_size.max(1);
    let mut report = PurgeReport::default();

    // Sources first: an outcome waits for its job's source deletions.
    if dry_run {
        report.sources.pending = targets.ledger.pending_source_deletions().await?;
    } else {
        report.sources =
            retry_source_deletions(targets.ledger, targets.store, targets.metrics, now).await?;
    }

    let default_outputs = older_than.unwrap_or(days(config.outputs_days));
    for org in targets.store.output_orgs().await? {
        let window = config
            .orgs
            .get(&org)
            .map_or(default_outputs, |o| days(config.org_outputs_days(o)));
        let purged = targets
            .store
            .purge_older_than(
                &format!("{org}/"),
                cutoff(now, window),
                usize::try_from(batch).unwrap_or(1000),
                dry_run,
            )
            .await?;
        report.outputs.push(OrgOutputs {
            org,
            window,
            purged,
        });
    }

    let cutoffs = RecordCutoffs {
        default: cutoff(now, older_than.unwrap_or(days(config.records_days))),
        orgs: config
            .orgs
            .iter()
            .map(|(org, o)| (org.clone(), cutoff(now, days(config.org_records_days(o)))))
            .collect(),
    };
    report.records = targets
        .ledger
        .purge_records(&cutoffs, i64::from(batch), dry_run)
        .await?;

    if let Some(broker) = targets.broker {
        let window = older_than.unwrap_or(days(config.dead_letters_days));
        report.dead_letters = Some(
            broker
                .purge_dead_letters_older_than(cutoff(now, window), dry_run)
                .await?,
        );
    }

    if let (Some(metrics), false) = (targets.metrics, dry_run) {
        let count = |kind: &str, n: u64| {
            metrics.purged_total.with_label_values(&[kind]).inc_by(n);
        };
        count("outputs", report.outputs_total().objects);
        count("outcomes", report.records.outcomes);
        count("provider_submissions", report.records.provider_submissions);
        count("job_attempts", report.records.job_attempts);
        count("job_cancellations", report.records.job_cancellations);
        if let Some(dead) = report.dead_letters {
            count("dead_letters", dead.purged as u64);
        }
    }
    Ok(report)
}

/// Parses an age such as `180d`, `12h`, `30m` or `45s`: a whole positive
/// number and one unit. Anything else (no unit, zero, a fraction, a
/// negative, beyond 100 years) is refused with the reason.
///
/// # Errors
/// The reason the text is not an age.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit; write e.g. 180d, 12h, 30m or 45s"))?;
    let (number, unit) = text.split_at(unit_at);
    let seconds_per = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => {
            return Err(format!(
                "{text:?}: the unit must be d, h, m or s after a whole number"
            ))
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    if n == 0 {
        return Err(format!(
            "{text:?} is zero: that would purge everything, results of running jobs included"
        ));
    }
    let seconds = n
        .checked_mul(seconds_per)
        .filter(|s| *s <= 36_500 * 86_400)
        .ok_or_else(|| format!("{text:?} is longer than 100 years"))?;
    Ok(Duration::from_secs(seconds))
}

/// The worker's background retention: the source deletion retries every
/// `retention.source_retry_seconds`, and a purge every
/// `retention.purge_interval_seconds` (each 0: off), until `stop`.
pub(crate) async fn run_periodic(
    services: std::sync::Arc<crate::services::Services>,
    stop: tokio_util::sync::CancellationToken,
) {
    let config = services.config.retention.clone();
    let mut sources = ticker(config.source_retry_seconds);
    let mut purges = ticker(config.purge_interval_seconds);
    loop {
        // Work in progress is dropped at shutdown: every step is idempotent,
        // and the purge lock dies with its connection.
        tokio::select! {
            () = stop.cancelled() => return,
            Some(()) = tick(&mut sources) => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = sweep_sources(&services) => {}
                }
            }
            Some(()) = tick(&mut purges) => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = periodic_purge(&services, &config) => {}
                }
            }
        }
    }
}

async fn sweep_sources(services: &crate::services::Services) {
    let metrics = Some(&services.metrics);
    match retry_source_deletions(
        &services.ledger,
        &services.store,
        metrics,
        SystemTime::now(),
    )
    .await
    {
        Ok(sweep) if sweep.deleted + sweep.failed + sweep.refused > 0 => info!(
            deleted = sweep.deleted,
            failed = sweep.failed,
            refused = sweep.refused,
            pending = sweep.pending.pending,
            "retried pending source deletions"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "source deletion sweep failed; retrying next round"),
    }
}

async fn periodic_purge(services: &crate::services::Services, config: &RetentionSection) {
    // A connection of its own for the purge's short walk of genfleet.dead;
    // without a broker the rest still runs.
    let broker = match Broker::connect(
        services.config.broker.url.expose(),
        &format!("{}-purge", services.worker_name),
    )
    .await
    {
        Ok(broker) => Some(broker),
        Err(e) => {
            warn!(error = %e, "purge: broker unavailable; dead letters wait for the next purge");
            None
        }
    };
    let targets = Targets {
        ledger: &services.ledger,
        store: &services.store,
        broker: broker.as_ref(),
        metrics: Some(&services.metrics),
    };
    let options = PurgeOptions {
        now: SystemTime::now(),
        older_than: None,
        dry_run: false,
    };
    match purge(&targets, config, options).await {
        Ok(PurgeOutcome::Done(report)) => info!(
            outputs = report.outputs_total().objects,
            outcomes = report.records.outcomes,
            provider_submissions = report.records.provider_submissions,
            dead_letters = report.dead_letters.map_or(0, |d| d.purged),
            "retention purge done"
        ),
        Ok(PurgeOutcome::Busy) => info!("retention purge skipped: another purge is running"),
        Err(e) => warn!(error = %e, "retention purge failed; the next one continues"),
    }
    if let Some(broker) = broker {
        broker.close().await;
    }
}

/// An interval of `seconds`, or none for 0. The first tick comes after one
/// period, not at start-up: a fleet restarting together does not purge at
/// once.
fn ticker(seconds: u64) -> Option<tokio::time::Interval> {
    (seconds > 0).then(|| {
        let period = Duration::from_secs(seconds);
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    })
}

/// The next tick, or never for an interval that is off.
async fn tick(interval: &mut Option<tokio::time::Interval>) -> Option<()> {
    match interval {
        Some(interval) => {
            interval.tick().await;
            Some(())
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_or_are_refused_with_a_reason() {
        assert_eq!(parse_age("180d"), Ok(DAY * 180));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age(" 45s "), Ok(Duration::from_secs(45)));
        for bad in [
            "",
            "180",
            "d",
            "0d",
            "-5d",
            "1.5d",
            "180 d",
            "180D",
            "180days",
            "1y",
            "99999999999999999999d",
            "40000d",
        ] {
            assert!(parse_age(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(source_backoff(1), Duration::from_secs(60));
        assert_eq!(source_backoff(2), Duration::from_secs(120));
        assert_eq!(source_backoff(0), Duration::from_secs(60));
        assert_eq!(source_backoff(u32::MAX), MAX_SOURCE_BACKOFF);
    }

    #[test]
    fn only_store_and_file_sources_are_ours() {
        assert!(is_deletable_source("s3://b/uploads/a/w/x.jpg"));
        assert!(is_deletable_source("file:///srv/in/uploads/a/w/x.jpg"));
        assert!(!is_deletable_source(
            "https://bucket.example/x.jpg?X-Amz-Signature=s"
        ));
        assert!(!is_deletable_source("http://x/y"));
    }
}

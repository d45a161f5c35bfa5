//! The ledger's side of retention: sources waiting to be deleted, and the
//! purge of per-job rows past their retention.
//!
//! **Pending source deletions.** A job that asked for `delete_sources_after`
//! records its source URIs here *before* its outcome is stored, and they are
//! handed out for deletion only once that outcome exists: a redelivery that
//! comes before the settlement must still find its inputs, and a crash
//! between the two leaves rows that wait for the redelivered run to settle.
//! A row goes when its delete succeeded; a failed delete is retried later
//! ([`Ledger::source_deletion_failed`] sets when), so a store outage delays
//! a deletion but never forgets it.
//!
//! **Purge.** Stored outcomes (they hold signed URLs and user ids), provider
//! submission records, start counts and cancel requests of jobs past their
//! organisation's retention are deleted in bounded batches, each its own
//! statement, so a huge backlog never holds one giant transaction. Nothing
//! of a job whose hold is still open is touched, and neither are holds,
//! accounts or ledger entries: the books keep balancing. `job_owners` is
//! kept (see [`Ledger::purge_records`]).
//!
//! Every time is a parameter (`now`, cutoffs), never the database's clock,
//! so tests decide what "old" is.

use std::time::SystemTime;

use deadpool_postgres::Object;

use crate::ledger::validate_id;
use crate::{CreditsError, Ledger};

/// A source a settled job asked to delete, handed out by
/// [`Ledger::claim_source_deletions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDeletion {
    pub job_id: String,
    /// The input URI as the job named it (`s3://` or `file://`).
    pub uri: String,
    /// The job's tenant: the delete is allowed only under its prefixes.
    pub org: String,
    pub workspace: String,
    /// Attempts so far, this claim included.
    pub attempts: u32,
}

/// How many source deletions are waiting, fleet-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingSourceDeletions {
    /// Rows waiting, whatever their state.
    pub pending: u64,
    /// Of those, rows whose last attempt failed.
    pub failing: u64,
}

/// The retention cutoffs of one purge: rows of a job created before its
/// organisation's cutoff go. `orgs` overrides `default` per organisation.
#[derive(Debug, Clone)]
pub struct RecordCutoffs {
    pub default: SystemTime,
    pub orgs: Vec<(String, SystemTime)>,
}

impl RecordCutoffs {
    /// The latest cutoff of all: nothing at or after it can go, which lets
    /// the time index narrow every scan.
    fn latest(&self) -> SystemTime {
        self.orgs
            .iter()
            .map(|(_, t)| *t)
            .fold(self.default, std::cmp::max)
    }
}

/// What a purge of ledger rows removed (or, dry, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordsPurged {
    pub outcomes: u64,
    pub provider_submissions: u64,
    pub job_attempts: u64,
    pub job_cancellations: u64,
    /// Pending source deletions of jobs that never settled within the
    /// retention: with no outcome they can never be acted on.
    pub unsettled_source_deletions: u64,
}

/// A held session-level advisory lock: only one purge of a schema runs at
/// a time, fleet-wide. The connection is taken out of the pool, so the lock
/// dies with it even when [`PurgeLock::release`] is never called (a crash,
/// a dropped future): closing the session releases it.
pub struct PurgeLock {
    client: deadpool_postgres::ClientWrapper,
    key: String,
}

impl PurgeLock {
    /// Unlocks, then closes the dedicated connection.
    pub async fn release(self) {
        // Closing the connection (on drop) releases it anyway.
        let _ = self
            .client
            .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&self.key])
            .await;
    }
}

impl std::fmt::Debug for PurgeLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PurgeLock").field("key", &self.key).finish()
    }
}

/// One purgeable table: where the time is, which org it belongs to, and how
/// to name a row for deletion.
struct Purgeable {
    table: &'static str,
    /// Columns that identify a row (a key).
    key: &'static str,
    /// The row's time column.
    time: &'static str,
    /// SQL for the row's organisation (`t` is the row, `w` its job_owners).
    org: &'static str,
    /// Extra condition, beside "old" and "no open hold".
    extra: &'static str,
}

const OUTCOMES: Purgeable = Purgeable {
    table: "job_outcomes",
    key: "job_id",
    time: "created_at",
    org: "split_part(w.tenant, '/', 1)",
    // An outcome is what a pending source deletion waits for: it stays
    // until the deletion is done.
    extra: "NOT EXISTS (SELECT 1 FROM pending_source_deletions p WHERE p.job_id = t.job_id)",
};
const SUBMISSIONS: Purgeable = Purgeable {
    table: "provider_submissions",
    key: "job_id, provider",
    time: "created_at",
    org: "split_part(w.tenant, '/', 1)",
    extra: "TRUE",
};
const ATTEMPTS: Purgeable = Purgeable {
    table: "job_attempts",
    key: "job_id",
    time: "last_started_at",
    org: "split_part(w.tenant, '/', 1)",
    extra: "TRUE",
};
const CANCELLATIONS: Purgeable = Purgeable {
    table: "job_cancellations",
    key: "job_id, tenant",
    time: "requested_at",
    // A cancel request names its own tenant (also for ids never delivered);
    // requests from before tenants ('*') fall back to the default.
    org: "split_part(t.tenant, '/', 1)",
    extra: "TRUE",
};
const UNSETTLED_SOURCES: Purgeable = Purgeable {
    table: "pending_source_deletions",
    key: "job_id, uri",
    time: "created_at",
    org: "t.org",
    extra: "NOT EXISTS (SELECT 1 FROM job_outcomes o WHERE o.job_id = t.job_id)",
};

impl Purgeable {
    /// `SELECT <key> FROM <table> t ...` of the rows past retention.
    /// Parameters: $1 org names, $2 their cutoffs, $3 default cutoff,
    /// $4 latest cutoff.
    fn candidates(&self) -> String {
        format!(
            "SELECT {key} FROM {table} t
             LEFT JOIN job_owners w ON w.job_id = t.job_id
             LEFT JOIN unnest($1::text[], $2::timestamptz[]) AS c(org, cutoff)
                    ON c.org = {org}
             WHERE t.{time} < $4
               AND t.{time} < COALESCE(c.cutoff, $3)
               AND NOT EXISTS (SELECT 1 FROM holds h
                               WHERE h.job_id = t.job_id AND h.state = 'held')
               AND {extra}",
            key = qualified(self.key),
            table = self.table,
            org = self.org,
            time = self.time,
            extra = self.extra,
        )
    }

    fn count_sql(&self) -> String {
        format!("SELECT count(*) FROM ({}) AS old", self.candidates())
    }

    /// One bounded batch; $5 is the batch size. Rows another purge has
    /// locked are skipped, not waited for.
    fn delete_sql(&self) -> String {
        format!(
            "DELETE FROM {table} WHERE ({key}) IN ({candidates} LIMIT $5 FOR UPDATE OF t SKIP LOCKED)",
            table = self.table,
            key = self.key,
            candidates = self.candidates(),
        )
    }
}

/// `job_id, provider` -> `t.job_id, t.provider`.
fn qualified(key: &str) -> String {
    key.split(", ")
        .map(|c| format!("t.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Ledger {
    /// Records that `job_id` (of `org`/`workspace`) will want `uris`
    /// deleted once its outcome is stored. Idempotent: a row already there
    /// keeps its attempts and schedule.
    ///
    /// # Errors
    /// [`CreditsError::Invalid`] for a malformed id; database errors.
    pub async fn record_source_deletions(
        &self,
        job_id: &str,
        org: &str,
        workspace: &str,
        uris: &[String],
    ) -> Result<(), CreditsError> {
        validate_id("job id", job_id)?;
        if uris.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO pending_source_deletions (job_id, uri, org, workspace)
                 SELECT $1, u, $3, $4 FROM unnest($2::text[]) AS u
                 ON CONFLICT (job_id, uri) DO NOTHING",
                &[&job_id, &uris, &org, &workspace],
            )
            .await?;
        Ok(())
    }

    /// Hands out up to `limit` source deletions due at `now` whose job has
    /// its outcome stored, and moves each one's next attempt to
    /// `lease_until`, so that another sweeper does not take it meanwhile
    /// (and a sweeper that dies holding it only delays it).
    ///
    /// # Errors
    /// Database errors.
    pub async fn claim_source_deletions(
        &self,
        now: SystemTime,
        lease_until: SystemTime,
        limit: i64,
    ) -> Result<Vec<SourceDeletion>, CreditsError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "UPDATE pending_source_deletions SET
                     next_attempt_at = $2, attempts = attempts + 1
                 WHERE (job_id, uri) IN (
                     SELECT p.job_id, p.uri FROM pending_source_deletions p
                     WHERE p.next_attempt_at <= $1
                       AND EXISTS (SELECT 1 FROM job_outcomes o WHERE o.job_id = p.job_id)
                     ORDER BY p.next_attempt_at
                     LIMIT $3
                     FOR UPDATE SKIP LOCKED)
                 RETURNING job_id, uri, org, workspace, attempts",
                &[&now, &lease_until, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let attempts: i32 = row.try_get(4)?;
                Ok(SourceDeletion {
                    job_id: row.try_get(0)?,
                    uri: row.try_get(1)?,
                    org: row.try_get(2)?,
                    workspace: row.try_get(3)?,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                })
            })
            .collect()
    }

    /// The source is gone (or was never ours to delete): its row goes.
    /// Idempotent.
    ///
    /// # Errors
    /// Database errors.
    pub async fn source_deleted(&self, job_id: &str, uri: &str) -> Result<(), CreditsError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM pending_source_deletions WHERE job_id = $1 AND uri = $2",
                &[&job_id, &uri],
            )
            .await?;
        Ok(())
    }

    /// A delete failed: try again at `retry_at`. `error` is the store's
    /// message (never a signed URL: those are never deleted here).
    ///
    /// # Errors
    /// Database errors.
    pub async fn source_deletion_failed(
        &self,
        job_id: &str,
        uri: &str,
        error: &str,
        retry_at: SystemTime,
    ) -> Result<(), CreditsError> {
        let client = self.pool.get().await?;
        // The immediate attempt after settling is not a claim: count it here.
        client
            .execute(
                "UPDATE pending_source_deletions
                 SET last_error = left($3, 500), next_attempt_at = $4,
                     attempts = GREATEST(attempts, 1)
                 WHERE job_id = $1 AND uri = $2",
                &[&job_id, &uri, &error, &retry_at],
            )
            .await?;
        Ok(())
    }

    /// How many source deletions wait, and how many of them failed last.
    ///
    /// # Errors
    /// Database errors.
    pub async fn pending_source_deletions(&self) -> Result<PendingSourceDeletions, CreditsError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE last_error IS NOT NULL)
                 FROM pending_source_deletions",
                &[],
            )
            .await?;
        let pending: i64 = row.try_get(0)?;
        let failing: i64 = row.try_get(1)?;
        Ok(PendingSourceDeletions {
            pending: u64::try_from(pending).unwrap_or(0),
            failing: u64::try_from(failing).unwrap_or(0),
        })
    }

    /// Deletes (or, `dry_run`, counts) the per-job rows past retention:
    /// stored outcomes, provider submission records, start counts, cancel
    /// requests, and pending source deletions of jobs that never settled.
    /// Works in statements of at most `batch` rows each.
    ///
    /// Left alone: anything of a job whose hold is still open; an outcome
    /// while a source deletion of its job is pending; holds, accounts and
    /// ledger entries (the books); and `job_owners`. Owners stay because
    /// holds stay: a job id keys its hold forever, and an id reopened to
    /// any tenant would let another tenant's job meet this job's settled
    /// hold. An owner row holds only the id, `org/workspace` and a time.
    ///
    /// Idempotent: a second run finds nothing more that is as old.
    ///
    /// # Errors
    /// [`CreditsError::Invalid`] for a zero batch; database errors (batches
    /// done before stay done).
    pub async fn purge_records(
        &self,
        cutoffs: &RecordCutoffs,
        batch: i64,
        dry_run: bool,
    ) -> Result<RecordsPurged, CreditsError> {
        if batch <= 0 {
            return Err(CreditsError::Invalid(format!(
                "purge batch is {batch}, expected at least 1"
            )));
        }
        let mut purged = RecordsPurged::default();
        for (table, count) in [
            (&UNSETTLED_SOURCES, &mut purged.unsettled_source_deletions),
            (&OUTCOMES, &mut purged.outcomes),
            (&SUBMISSIONS, &mut purged.provider_submissions),
            (&ATTEMPTS, &mut purged.job_attempts),
            (&CANCELLATIONS, &mut purged.job_cancellations),
        ] {
            *count = self.purge_table(table, cutoffs, batch, dry_run).await?;
        }
        Ok(purged)
    }

    async fn purge_table(
        &self,
        table: &Purgeable,
        cutoffs: &RecordCutoffs,
        batch: i64,
        dry_run: bool,
    ) -> Result<u64, CreditsError> {
        let orgs: Vec<&str> = cutoffs.orgs.iter().map(|(o, _)| o.as_str()).collect();
        let times: Vec<SystemTime> = cutoffs.orgs.iter().map(|(_, t)| *t).collect();
        let latest = cutoffs.latest();
        let client = self.pool.get().await?;
        if dry_run {
            let row = client
                .query_one(
                    &table.count_sql(),
                    &[&orgs, &times, &cutoffs.default, &latest],
                )
                .await?;
            let n: i64 = row.try_get(0)?;
            return Ok(u64::try_from(n).unwrap_or(0));
        }
        let statement = client.prepare(&table.delete_sql()).await?;
        let mut total = 0u64;
        loop {
            let deleted = client
                .execute(
                    &statement,
                    &[&orgs, &times, &cutoffs.default, &latest, &batch],
                )
                .await?;
            total += deleted;
            if deleted < u64::try_from(batch).unwrap_or(u64::MAX) {
                return Ok(total);
            }
        }
    }

    /// Takes the fleet-wide purge lock of this schema if nobody holds it;
    /// `None` when another purge runs.
    ///
    /// # Errors
    /// Database errors.
    pub async fn try_purge_lock(&self) -> Result<Option<PurgeLock>, CreditsError> {
        let object = self.pool.get().await?;
        // Out of the pool: the session (and its lock) ends with the lock.
        let client = Object::take(object);
        let key = format!("genfleet-credits/purge/{}", self.schema);
        let row = client
            .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])
            .await?;
        let locked: bool = row.try_get(0)?;
        Ok(locked.then_some(PurgeLock { client, key }))
    }
}

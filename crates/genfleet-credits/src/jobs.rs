//! What the ledger knows of a job besides its credits: which tenant owns
//! its id, how often it was started, the provider request it waits on, and
//! the cancel requests made for it.
//!
//! A job id is an idempotency key, so whoever reuses one would meet the
//! first job's stored result, hold, provider request and start count. The
//! first delivery of an id claims it for its tenant (`org/workspace`);
//! every later delivery of that id from another tenant is foreign and
//! touches none of it. Cancel requests carry their tenant too and only ever
//! meet that tenant's job.

use crate::ledger::validate_id;
use crate::{CreditsError, Ledger};

/// Owner of the cancel requests recorded before tenants were (migration 6):
/// they apply to the job whatever its tenant, as they did.
const ANY_TENANT: &str = "*";

/// Whose job id it is, as [`Ledger::claim`] found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The id is (now) this tenant's; `outcome` is its stored result, if it
    /// was settled.
    Own { outcome: Option<Vec<u8>> },
    /// Another tenant's job has this id.
    Foreign,
}

/// A job's start as the ledger recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// Starts of the job so far, this one included.
    pub starts: u32,
    /// The reason of a cancel request for the job, if one was recorded.
    pub cancel_reason: Option<String>,
}

/// What [`Ledger::request_cancellation`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRequest {
    /// Recorded; `job_known` says whether a job with that id was already
    /// delivered (its provider requests may be running).
    Recorded { job_known: bool },
    /// Already recorded for this tenant; the first reason is kept.
    Repeated { job_known: bool },
    /// The id is another tenant's job: nothing was recorded.
    Foreign,
}

fn check_tenant(tenant: &str) -> Result<(), CreditsError> {
    validate_id("tenant", tenant)?;
    if tenant == ANY_TENANT {
        return Err(CreditsError::Invalid("tenant \"*\" is reserved".into()));
    }
    Ok(())
}

impl Ledger {
    /// Claims `job_id` for `tenant` (`org/workspace`) if nobody has, and
    /// says whether it is the tenant's, with its stored outcome: what a
    /// worker asks first of every delivered job.
    ///
    /// # Errors
    /// [`CreditsError::Invalid`] for a malformed id or tenant; database
    /// errors.
    pub async fn claim(&self, job_id: &str, tenant: &str) -> Result<Claim, CreditsError> {
        validate_id("job id", job_id)?;
        check_tenant(tenant)?;
        let client = self.pool.get().await?;
        // A claim racing another for the same new id waits on its insert;
        // the statement's snapshot may then not show the winner's row, so
        // the loop asks again (once is enough: the row is committed by then).
        for _ in 0..3 {
            let row = client
                .query_one(
                    "WITH claimed AS (
                         INSERT INTO job_owners (job_id, tenant) VALUES ($1, $2)
                         ON CONFLICT (job_id) DO NOTHING
                         RETURNING tenant
                     )
                     SELECT COALESCE(
                                (SELECT tenant FROM claimed),
                                (SELECT tenant FROM job_owners WHERE job_id = $1)),
                            (SELECT outcome FROM job_outcomes WHERE job_id = $1)",
                    &[&job_id, &tenant],
                )
                .await?;
            let owner: Option<String> = row.get(0);
            match owner {
                Some(owner) if owner == tenant => {
                    return Ok(Claim::Own {
                        outcome: row.get(1),
                    })
                }
                Some(_) => return Ok(Claim::Foreign),
                None => continue,
            }
        }
        Err(CreditsError::Unavailable(
            "the job id's owner could not be read back".into(),
        ))
    }

    /// The tenant that claimed `job_id`, if one did.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn job_owner(&self, job_id: &str) -> Result<Option<String>, CreditsError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT tenant FROM job_owners WHERE job_id = $1",
                &[&job_id],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// The provider request `job_id` waits on at `provider`, as the
    /// provider client recorded it.
    ///
    /// # Errors
    /// [`CreditsError::Invalid`] for a malformed id; database errors.
    pub async fn recall_submission(
        &self,
        job_id: &str,
        provider: &str,
    ) -> Result<Option<String>, CreditsError> {
        validate_id("job id", job_id)?;
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT submission FROM provider_submissions WHERE job_id = $1 AND provider = $2",
                &[&job_id, &provider],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Records (or replaces) the provider request `job_id` waits on.
    ///
    /// # Errors
    /// [`CreditsError::Invalid`] for a malformed id; database errors.
    pub async fn remember_submission(
        &self,
        job_id: &str,
        provider: &str,
        submission: &str,
    ) -> Result<(), CreditsError> {
        validate_id("job id", job_id)?;
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO provider_submissions (job_id, provider, submission)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (job_id, provider)
                 DO UPDATE SET submission = EXCLUDED.submission, created_at = now()",
                &[&job_id, &provider, &submission],
            )
            .await?;
        Ok(())
    }

    /// Drops the record: the next attempt submits anew. Idempotent.
    ///
    /// # Errors
    /// [`CreditsError::Invalid`] for a malformed id; database errors.
    pub async fn forget_submission(
        &self,
        job_id: &str,
        provider: &str,
    ) -> Result<(), CreditsError> {
        validate_id("job id", job_id)?;
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM provider_submissions WHERE job_id = $1 AND provider = $2",
                &[&job_id, &provider],
            )
            .await?;
        Ok(())
    }

    /// Records `tenant`'s request to cancel its job `job_id`. Nothing is
    /// recorded when the id is another tenant's job; a request for an id
    /// not delivered yet waits for that tenant's job with that id.
    ///
    /// # Errors
    /// [`CreditsError::Invalid`] for a malformed id or tenant; database
    /// errors.
    pub async fn request_cancellation(
        &self,
        job_id: &str,
        tenant: &str,
        reason: &str,
    ) -> Result<CancelRequest, CreditsError> {
        validate_id("job id", job_id)?;
        check_tenant(tenant)?;
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "WITH owner AS (SELECT tenant FROM job_owners WHERE job_id = $1),
                 inserted AS (
                     INSERT INTO job_cancellations (job_id, tenant, reason)
                     SELECT $1, $2, $3
                     WHERE NOT EXISTS (SELECT 1 FROM owner WHERE tenant <> $2)
                     ON CONFLICT (job_id, tenant) DO NOTHING
                     RETURNING 1
                 )
                 SELECT (SELECT tenant FROM owner), EXISTS (SELECT 1 FROM inserted)",
                &[&job_id, &tenant, &reason],
            )
            .await?;
        let owner: Option<String> = row.get(0);
        let inserted: bool = row.get(1);
        Ok(match owner {
            Some(owner) if owner != tenant => CancelRequest::Foreign,
            owner if inserted => CancelRequest::Recorded {
                job_known: owner.is_some(),
            },
            owner => CancelRequest::Repeated {
                job_known: owner.is_some(),
            },
        })
    }

    /// The reason `tenant`'s job `job_id` was cancelled with, if a cancel
    /// was requested.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn cancellation(
        &self,
        job_id: &str,
        tenant: &str,
    ) -> Result<Option<String>, CreditsError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT reason FROM job_cancellations
                 WHERE job_id = $1 AND tenant IN ($2, $3)
                 ORDER BY requested_at LIMIT 1",
                &[&job_id, &tenant, &ANY_TENANT],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Records that a worker starts `job_id` now and returns how many
    /// times it has been started, this time included. Used to give up on a
    /// job that crashed every worker that ran it.
    ///
    /// # Errors
    /// [`CreditsError::Invalid`] for a malformed id; database errors.
    pub async fn begin_attempt(&self, job_id: &str) -> Result<u32, CreditsError> {
        // Any tenant's cancel request is irrelevant here: only the count is.
        Ok(self.start(job_id, ANY_TENANT).await?.starts)
    }

    /// [`Ledger::begin_attempt`] and [`Ledger::cancellation`] in one round
    /// trip: what a worker asks before every run of `tenant`'s job.
    ///
    /// # Errors
    /// [`CreditsError::Invalid`] for a malformed id; database errors.
    pub async fn start(&self, job_id: &str, tenant: &str) -> Result<Started, CreditsError> {
        validate_id("job id", job_id)?;
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "INSERT INTO job_attempts (job_id, started) VALUES ($1, 1)
                 ON CONFLICT (job_id) DO UPDATE
                 SET started = job_attempts.started + 1, last_started_at = now()
                 RETURNING started,
                     (SELECT reason FROM job_cancellations
                      WHERE job_id = $1 AND tenant IN ($2, $3)
                      ORDER BY requested_at LIMIT 1)",
                &[&job_id, &tenant, &ANY_TENANT],
            )
            .await?;
        let started: i32 = row.get(0);
        Ok(Started {
            starts: u32::try_from(started).unwrap_or(0),
            cancel_reason: row.get(1),
        })
    }

    /// The outcome stored when `job_id` was settled, if it was.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn outcome(&self, job_id: &str) -> Result<Option<Vec<u8>>, CreditsError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT outcome FROM job_outcomes WHERE job_id = $1",
                &[&job_id],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }
}

//! Reserving credits: creating a hold on an account (and its parent) for a
//! job, and reading a hold back. Settling and expiring holds is in
//! [`super::settle`].

use super::*;
use crate::{CreditsError, Ledger};

impl Ledger {
    /// Reserves `amount` credits of `account` for `job_id` until `ttl` from
    /// now. Idempotent on `job_id`: when a hold for the job already exists it
    /// is returned unchanged, whatever its state, account or amount, so a
    /// redelivered job never holds twice.
    ///
    /// An account with a parent takes its own available credits first and
    /// the rest from its parent's, as long as what it has drawn from the
    /// parent stays within its cap; each account that gives credits gets a
    /// `hold` entry.
    ///
    /// # Errors
    /// [`CreditsError::Insufficient`] when the account does not exist or has
    /// fewer than `amount` credits spendable (nothing changes; `available` is
    /// the account's [`Balance::spendable`]);
    /// [`CreditsError::Invalid`] when `amount <= 0` (free jobs skip
    /// reservation), an id is empty or too long, or `ttl` is over a year.
    #[instrument(skip_all, fields(job_id = job_id, account = account, amount = amount))]
    pub async fn reserve(
        &self,
        job_id: &str,
        account: &str,
        amount: i64,
        ttl: Duration,
    ) -> Result<Hold, CreditsError> {
        retry_conflicts(|| self.reserve_once(job_id, account, amount, ttl)).await
    }

    async fn reserve_once(
        &self,
        job_id: &str,
        account: &str,
        amount: i64,
        ttl: Duration,
    ) -> Result<Hold, CreditsError> {
        validate_id("job id", job_id)?;
        validate_id("account", account)?;
        validate_positive("reserve amount", amount)?;
        if ttl > MAX_TTL {
            return Err(CreditsError::Invalid(format!(
                "hold ttl is {} s, above the limit of {} s",
                ttl.as_secs(),
                MAX_TTL.as_secs()
            )));
        }

        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;

        // Fast path for redelivery: no account lock needed.
        if let Some(existing) = select_hold(&tx, job_id, false).await? {
            tx.commit().await?;
            log_if_different(&existing, account, amount);
            return Ok(existing);
        }

        // Serialises all reserves of one account, so the balance check
        // below cannot be raced. A child's row is locked before its parent's.
        let row = tx
            .query_opt(
                "SELECT available, parent, parent_cap, parent_drawn FROM accounts
                 WHERE account = $1 FOR UPDATE",
                &[&account],
            )
            .await?;
        let split = match row {
            None => Err(0),
            Some(row) => {
                let available: i64 = row.try_get(0)?;
                let parent: Option<String> = row.try_get(1)?;
                match parent {
                    _ if available >= amount => Ok((amount, None)),
                    None => Err(available),
                    Some(parent) => {
                        let cap: Option<i64> = row.try_get(2)?;
                        let drawn: i64 = row.try_get(3)?;
                        // The foreign key guarantees the row.
                        let parent_available: i64 = tx
                            .query_one(
                                "SELECT available FROM accounts WHERE account = $1 FOR UPDATE",
                                &[&parent],
                            )
                            .await?
                            .try_get(0)?;
                        let usable = parent_usable(parent_available, cap, drawn);
                        let rest = amount - available;
                        if usable >= rest {
                            Ok((available, Some((parent, rest))))
                        } else {
                            Err(available.saturating_add(usable))
                        }
                    }
                }
            }
        };

        let (own, from_parent) = match split {
            Ok(split) => split,
            Err(spendable) => {
                // A duplicate reserve of this job may have committed while we
                // waited for the account lock, taking the credits we now
                // miss; that is success, not "insufficient". Each statement
                // sees all commits so far (read committed).
                if let Some(existing) = select_hold(&tx, job_id, false).await? {
                    tx.commit().await?;
                    return Ok(existing);
                }
                return Err(CreditsError::Insufficient {
                    account: account.to_owned(),
                    needed: amount,
                    available: spendable,
                });
            }
        };
        let (parent, parent_amount) = match &from_parent {
            Some((parent, part)) => (Some(parent.as_str()), *part),
            None => (None, 0),
        };

        // ON CONFLICT DO NOTHING waits for a concurrent insert of the same
        // job to finish and then yields no row, so two reserves of one job
        // can never both debit the account.
        let inserted = tx
            .query_opt(
                &format!(
                    "INSERT INTO holds (job_id, account, amount, state, expires_at,
                                        parent_account, parent_amount)
                     VALUES ($1, $2, $3, 'held', now() + make_interval(secs => $4), $5, $6)
                     ON CONFLICT (job_id) DO NOTHING
                     RETURNING {HOLD_COLUMNS}"
                ),
                &[
                    &job_id,
                    &account,
                    &amount,
                    &ttl.as_secs_f64(),
                    &parent,
                    &parent_amount,
                ],
            )
            .await?;
        let Some(row) = inserted else {
            let existing = select_hold(&tx, job_id, false).await?.ok_or_else(|| {
                // Only possible if someone deletes holds, which nothing does.
                CreditsError::Database(format!(
                    "hold for job {job_id} conflicted on insert but cannot be read"
                ))
            })?;
            tx.commit().await?;
            log_if_different(&existing, account, amount);
            return Ok(existing);
        };
        let hold = hold_from_row(&row)?;

        tx.execute(
            "UPDATE accounts
             SET available = available - $2, held = held + $2,
                 parent_drawn = parent_drawn + $3, updated_at = now()
             WHERE account = $1",
            &[&account, &own, &parent_amount],
        )
        .await?;
        if own > 0 {
            insert_entry(&tx, account, Some(job_id), "hold", own, None).await?;
        }
        if let Some(parent) = parent {
            tx.execute(
                "UPDATE accounts
                 SET available = available - $2, held = held + $2, updated_at = now()
                 WHERE account = $1",
                &[&parent, &parent_amount],
            )
            .await?;
            insert_entry(&tx, parent, Some(job_id), "hold", parent_amount, None).await?;
        }
        tx.commit().await?;
        debug!(own, parent_amount, "reserved credits");
        Ok(hold)
    }

    /// The hold of `job_id`, if one was ever made.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn hold(&self, job_id: &str) -> Result<Option<Hold>, CreditsError> {
        let client = self.pool.get().await?;
        select_hold(&client, job_id, false).await
    }
}

pub(super) async fn select_hold<C: GenericClient>(
    client: &C,
    job_id: &str,
    for_update: bool,
) -> Result<Option<Hold>, CreditsError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row = client
        .query_opt(
            &format!("SELECT {HOLD_COLUMNS} FROM holds WHERE job_id = $1{lock}"),
            &[&job_id],
        )
        .await?;
    row.as_ref().map(hold_from_row).transpose()
}

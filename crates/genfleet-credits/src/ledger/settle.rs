//! Ending holds: settling a job (capture or release, with its stored
//! outcome) and the sweeper that expires overdue holds of crashed workers.
//! Both give uncaptured credits back to the account they came from.

use super::holds::select_hold;
use super::*;
use crate::{CreditsError, Ledger};

impl Ledger {
    /// Ends a job: settles its hold (if it has one and it is still open) and
    /// stores `outcome`, the job's serialized result, in one transaction.
    ///
    /// A capture charges `min(amount, hold)` (negative amounts count as 0) and
    /// returns the rest. Of a hold that drew on a parent, the account's own
    /// part is charged first, then the parent's part; whatever is not
    /// charged goes back to the account it came from, and the child's
    /// `parent_drawn` drops by the parent part that went back. A hold that is already captured, released or expired
    /// is left alone and returned as it is, so settling twice never charges
    /// twice. A job without a hold (a free job) only gets its outcome stored.
    /// The first stored outcome of a job is kept.
    ///
    /// Returns the hold after settlement, or `None` for a free job.
    ///
    /// # Errors
    /// [`CreditsError::Invalid`] for an empty or too long job id; database
    /// errors otherwise (nothing is stored then).
    #[instrument(skip_all, fields(job_id = job_id, settlement = ?settlement))]
    pub async fn settle(
        &self,
        job_id: &str,
        settlement: Settlement,
        outcome: &[u8],
    ) -> Result<Option<Hold>, CreditsError> {
        Ok(self.settle_outcome(job_id, settlement, outcome).await?.hold)
    }

    /// [`Ledger::settle`], also saying whether another call settled the job
    /// first: then [`Settled::earlier_outcome`] is the outcome stored by that
    /// call, which is the job's one outcome (two deliveries of one job that
    /// ran at the same time must publish the same result, not their own).
    ///
    /// # Errors
    /// As [`Ledger::settle`].
    #[instrument(skip_all, fields(job_id = job_id, settlement = ?settlement))]
    pub async fn settle_outcome(
        &self,
        job_id: &str,
        settlement: Settlement,
        outcome: &[u8],
    ) -> Result<Settled, CreditsError> {
        retry_conflicts(|| self.settle_once(job_id, settlement, outcome)).await
    }

    async fn settle_once(
        &self,
        job_id: &str,
        settlement: Settlement,
        outcome: &[u8],
    ) -> Result<Settled, CreditsError> {
        validate_id("job id", job_id)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;

        let hold = match select_hold(&tx, job_id, true).await? {
            Some(hold) if hold.state == HoldState::Held => {
                Some(settle_open_hold(&tx, hold, settlement).await?)
            }
            Some(settled) => {
                debug!(state = settled.state.as_str(), "hold already settled");
                Some(settled)
            }
            None => None,
        };

        // One round trip: the insert, or, when an outcome was there first,
        // that outcome (the outer SELECT does not see the CTE's insert).
        let earlier = tx
            .query_opt(
                "WITH inserted AS (
                     INSERT INTO job_outcomes (job_id, outcome) VALUES ($1, $2)
                     ON CONFLICT (job_id) DO NOTHING
                     RETURNING job_id
                 )
                 SELECT outcome FROM job_outcomes
                 WHERE job_id = $1 AND NOT EXISTS (SELECT 1 FROM inserted)",
                &[&job_id, &outcome],
            )
            .await?
            .map(|row| row.get::<_, Vec<u8>>(0));
        tx.commit().await?;
        Ok(Settled {
            hold,
            earlier_outcome: earlier,
        })
    }

    /// Expires every open hold whose `expires_at` has passed, returning its
    /// credits to the account. Returns how many holds were expired.
    ///
    /// Works in batches of bounded size, each its own transaction, and skips
    /// holds another sweeper (or a settling worker) has locked, so any number
    /// of sweepers can run at once.
    ///
    /// # Errors
    /// Database errors; batches committed before the error stay committed.
    #[instrument(skip_all)]
    pub async fn expire_overdue(&self) -> Result<u64, CreditsError> {
        let mut total = 0u64;
        loop {
            let expired = retry_conflicts(|| self.expire_batch()).await?;
            total += expired;
            if expired < EXPIRE_BATCH as u64 {
                break;
            }
        }
        if total > 0 {
            debug!(expired = total, "expired overdue holds");
        }
        Ok(total)
    }

    async fn expire_batch(&self) -> Result<u64, CreditsError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "SELECT job_id, account, amount, parent_account, parent_amount FROM holds
                 WHERE state = 'held' AND expires_at < now()
                 ORDER BY expires_at
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED",
                &[&EXPIRE_BATCH],
            )
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }

        let mut job_ids = Vec::with_capacity(rows.len());
        // One entry per account that gave credits, in hold order.
        let mut entry_accounts = Vec::with_capacity(rows.len());
        let mut entry_jobs = Vec::with_capacity(rows.len());
        let mut entry_amounts = Vec::with_capacity(rows.len());
        // Per account: (credits going back, parent_drawn to drop).
        let mut per_account: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for row in &rows {
            let job_id: String = row.try_get(0)?;
            let account: String = row.try_get(1)?;
            let amount: i64 = row.try_get(2)?;
            let parent: Option<String> = row.try_get(3)?;
            let parent_amount: i64 = row.try_get(4)?;
            let own = amount - parent_amount;
            let back = per_account.entry(account.clone()).or_default();
            back.0 += own;
            back.1 += parent_amount;
            if own > 0 {
                entry_accounts.push(account);
                entry_jobs.push(job_id.clone());
                entry_amounts.push(own);
            }
            if let Some(parent) = parent {
                per_account.entry(parent.clone()).or_default().0 += parent_amount;
                entry_accounts.push(parent);
                entry_jobs.push(job_id.clone());
                entry_amounts.push(parent_amount);
            }
            job_ids.push(job_id);
        }

        tx.execute(
            "UPDATE holds SET state = 'expired', released = amount,
                              parent_released = parent_amount, settled_at = now()
             WHERE job_id = ANY($1)",
            &[&job_ids],
        )
        .await?;
        // Children first, then by name: the order every sweeper and every
        // reserve (child, then parent) agree on. Rows come out of the sort
        // before they are locked.
        let touched: Vec<&str> = per_account.keys().map(String::as_str).collect();
        let order: Vec<String> = tx
            .query(
                "SELECT account FROM accounts WHERE account = ANY($1)
                 ORDER BY parent IS NULL, account
                 FOR UPDATE",
                &[&touched],
            )
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        if order.len() != per_account.len() {
            // Foreign keys make this impossible; refuse rather than skip.
            return Err(CreditsError::Database(format!(
                "expiring holds of {} accounts, found {} account rows",
                per_account.len(),
                order.len()
            )));
        }
        for account in &order {
            let Some((back, undrawn)) = per_account.get(account) else {
                continue;
            };
            tx.execute(
                "UPDATE accounts
                 SET available = available + $2, held = held - $2,
                     parent_drawn = parent_drawn - $3, updated_at = now()
                 WHERE account = $1",
                &[account, back, undrawn],
            )
            .await?;
        }
        tx.execute(
            "INSERT INTO ledger_entries (account, job_id, kind, amount)
             SELECT account, job_id, 'expire', amount
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(account, job_id, amount)",
            &[&entry_accounts, &entry_jobs, &entry_amounts],
        )
        .await?;
        tx.commit().await?;
        for job_id in &job_ids {
            // A hold expiring means a worker died or overran its ttl: worth a
            // line per job, but not an operator page.
            warn!(job_id = job_id.as_str(), "expired overdue credit hold");
        }
        Ok(rows.len() as u64)
    }
}

/// Captures or releases an open hold that the caller has locked: the own
/// part is charged first, then the parent part; the rest of each part goes
/// back to the account it came from.
async fn settle_open_hold(
    tx: &Transaction<'_>,
    hold: Hold,
    settlement: Settlement,
) -> Result<Hold, CreditsError> {
    let captured = match settlement {
        Settlement::Capture { amount } => amount.clamp(0, hold.amount),
        Settlement::Release => 0,
    };
    let own_amount = hold.own_amount();
    let own_captured = captured.min(own_amount);
    let own_released = own_amount - own_captured;
    let parent_captured = captured - own_captured;
    let parent_released = hold.parent_amount - parent_captured;
    let state = if matches!(settlement, Settlement::Capture { .. }) {
        HoldState::Captured
    } else {
        HoldState::Released
    };

    let row = tx
        .query_one(
            &format!(
                "UPDATE holds SET state = $2, captured = $3, released = $4,
                                  parent_captured = $5, parent_released = $6,
                                  settled_at = now()
                 WHERE job_id = $1
                 RETURNING {HOLD_COLUMNS}"
            ),
            &[
                &hold.job_id,
                &state.as_str(),
                &captured,
                &(hold.amount - captured),
                &parent_captured,
                &parent_released,
            ],
        )
        .await?;
    // The child's row before the parent's.
    tx.execute(
        "UPDATE accounts
         SET held = held - $2, captured = captured + $3, available = available + $4,
             parent_drawn = parent_drawn - $5, updated_at = now()
         WHERE account = $1",
        &[
            &hold.account,
            &own_amount,
            &own_captured,
            &own_released,
            &parent_released,
        ],
    )
    .await?;
    // Zero-amount entries say nothing an auditor needs; the hold row keeps
    // the full picture.
    let job = Some(hold.job_id.as_str());
    if own_captured > 0 {
        insert_entry(tx, &hold.account, job, "capture", own_captured, None).await?;
    }
    if own_released > 0 {
        insert_entry(tx, &hold.account, job, "release", own_released, None).await?;
    }
    if let Some(parent) = &hold.parent_account {
        tx.execute(
            "UPDATE accounts
             SET held = held - $2, captured = captured + $3, available = available + $4,
                 updated_at = now()
             WHERE account = $1",
            &[
                parent,
                &hold.parent_amount,
                &parent_captured,
                &parent_released,
            ],
        )
        .await?;
        if parent_captured > 0 {
            insert_entry(tx, parent, job, "capture", parent_captured, None).await?;
        }
        if parent_released > 0 {
            insert_entry(tx, parent, job, "release", parent_released, None).await?;
        }
    }
    debug!(captured, parent_captured, parent_released, "settled hold");
    hold_from_row(&row)
}

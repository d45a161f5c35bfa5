//! The ledger operations: grant, link, reserve, settle, expire, and reads.
//!
//! Each public method is exactly one transaction. Lock order is always
//! "hold row, then account rows" for settle and expire, and "account rows,
//! then insert a new hold" for reserve; a new hold row cannot be waited on by
//! settle or expire (they only lock committed holds), so these orders cannot
//! form a cycle. Where one transaction locks two account rows, a child's row
//! comes before its parent's (reserve, settle, link); the sweeper locks all
//! the accounts of a batch in one statement, children first, then by name,
//! so two sweepers never deadlock on each other and a sweeper holding a
//! parent never waits for a child. A deadlock that slips through anyway (a
//! `link` turning an account into a child while a sweeper runs) is rolled
//! back by PostgreSQL and run again by [`retry_conflicts`].
//!
//! A child (workspace) account draws on its parent (organisation) when its
//! own credits are short: the hold takes the child's `available` first and
//! the rest from the parent's, as long as the child's `parent_drawn` stays
//! within its `parent_cap`. Settlement captures the child's own part first;
//! every uncaptured credit goes back to the account it came from.
//!
//! Amounts are validated here; the SQL `CHECK`s are the last line of defence,
//! not the first.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use tracing::{debug, instrument, warn};

use crate::{CreditsError, Ledger};

/// Longest accepted account or job id; ids are keys, not documents.
const MAX_ID_LEN: usize = 256;
/// Longest hold lifetime accepted. A hold is meant to outlive one job
/// attempt, not to park credits for years; this also keeps the interval
/// arithmetic far from PostgreSQL's range limits.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);
/// Holds expired per sweeper transaction, so one sweep never locks an
/// unbounded number of rows.
const EXPIRE_BATCH: i64 = 500;

/// Columns of `holds` in the order [`hold_from_row`] reads them.
pub(crate) const HOLD_COLUMNS: &str = "job_id, account, amount, state, captured, released, \
     parent_account, parent_amount, parent_captured, parent_released";

/// One account with its parent's available credits, as [`balance_from_row`]
/// reads it; `$1` is the account. One statement, so one snapshot.
const BALANCE_SQL: &str = "SELECT a.account, a.available, a.held, a.captured,
        a.parent, a.parent_cap, a.parent_drawn, p.available
 FROM accounts a LEFT JOIN accounts p ON p.account = a.parent
 WHERE a.account = $1";

/// Where a hold is in its life. Only `Held` can change; the others are final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldState {
    Held,
    Captured,
    Released,
    Expired,
}

impl HoldState {
    /// The value stored in `holds.state`.
    pub fn as_str(&self) -> &'static str {
        match self {
            HoldState::Held => "held",
            HoldState::Captured => "captured",
            HoldState::Released => "released",
            HoldState::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Result<HoldState, CreditsError> {
        match s {
            "held" => Ok(HoldState::Held),
            "captured" => Ok(HoldState::Captured),
            "released" => Ok(HoldState::Released),
            "expired" => Ok(HoldState::Expired),
            other => Err(CreditsError::Database(format!(
                "hold state {other:?} is not one of held, captured, released, expired"
            ))),
        }
    }
}

/// What [`Ledger::settle_outcome`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The hold after settlement; `None` for a free job.
    pub hold: Option<Hold>,
    /// The outcome another settle of the same job stored first, if any;
    /// `None` when this call's outcome is the one stored.
    pub earlier_outcome: Option<Vec<u8>>,
}

/// Credits reserved for one job.
///
/// `amount`, `captured` and `released` are the hold's totals. When the
/// account's own credits did not cover the hold, the `parent_*` fields say
/// which part of each came from (and went back to) its parent account; the
/// rest is the account's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub job_id: String,
    pub account: String,
    /// What was reserved.
    pub amount: i64,
    pub state: HoldState,
    /// What was charged at settlement (0 until then).
    pub captured: i64,
    /// What went back at settlement or expiry (0 until then).
    pub released: i64,
    /// The parent the hold drew on, `None` when the account paid it all.
    pub parent_account: Option<String>,
    /// The part of `amount` taken from `parent_account`.
    pub parent_amount: i64,
    /// The part of `captured` charged to `parent_account`.
    pub parent_captured: i64,
    /// The part of `released` that went back to `parent_account`.
    pub parent_released: i64,
}

impl Hold {
    /// The part of `amount` taken from the account's own credits.
    pub fn own_amount(&self) -> i64 {
        self.amount - self.parent_amount
    }
}

/// An account's credits. `available + held + captured` equals everything ever
/// granted to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub account: String,
    /// Free to reserve from the account's own credits.
    pub available: i64,
    /// Reserved by open holds (its own, and for a parent its children's
    /// holds that draw on it).
    pub held: i64,
    /// Spent by finished jobs.
    pub captured: i64,
    /// The account this one draws on when its own credits run short.
    pub parent: Option<String>,
    /// The most it may have drawn from a parent (`None`: no limit).
    pub parent_cap: Option<i64>,
    /// Drawn from a parent: the parent parts of its open holds plus what its
    /// settled holds captured from the parent. Released parts do not count.
    pub parent_drawn: i64,
    /// What one reservation could take now: `available`, plus for a child
    /// the smaller of its parent's available credits and the cap's headroom.
    pub spendable: i64,
}

/// What a child may still take from its parent: the parent's available
/// credits, limited by the cap's headroom (none once the cap is reached or
/// was lowered below what is drawn).
pub(crate) fn parent_usable(parent_available: i64, cap: Option<i64>, drawn: i64) -> i64 {
    let headroom = cap.map_or(i64::MAX, |cap| cap.saturating_sub(drawn).max(0));
    parent_available.min(headroom).max(0)
}

/// How a job ends, as far as its credits go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Charge `amount` (clamped to `0..=hold`); the rest of the hold goes back.
    Capture { amount: i64 },
    /// Charge nothing; the whole hold goes back.
    Release,
}

impl Ledger {
    /// Adds `amount` credits to `account`, creating it if needed. Returns the
    /// new available balance.
    ///
    /// # Errors
    /// [`CreditsError::Invalid`] when `amount <= 0` or the account id is empty
    /// or too long.
    #[instrument(skip_all, fields(account = account, amount = amount))]
    pub async fn grant(
        &self,
        account: &str,
        amount: i64,
        reason: &str,
    ) -> Result<i64, CreditsError> {
        retry_conflicts(|| self.grant_once(account, amount, reason)).await
    }

    async fn grant_once(
        &self,
        account: &str,
        amount: i64,
        reason: &str,
    ) -> Result<i64, CreditsError> {
        validate_id("account", account)?;
        validate_positive("grant amount", amount)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                "INSERT INTO accounts (account, available, granted, updated_at)
                 VALUES ($1, $2, $2, now())
                 ON CONFLICT (account) DO UPDATE
                 SET available = accounts.available + EXCLUDED.available,
                     granted = accounts.granted + EXCLUDED.granted,
                     updated_at = now()
                 RETURNING available",
                &[&account, &amount],
            )
            .await?;
        let available: i64 = row.get(0);
        insert_entry(&tx, account, None, "grant", amount, Some(reason)).await?;
        tx.commit().await?;
        debug!(available, "granted credits");
        Ok(available)
    }

    /// The account's balance, or `None` when it was never granted anything
    /// (nor linked to a parent).
    ///
    /// # Errors
    /// [`CreditsError::Unavailable`] / [`CreditsError::Database`] on database
    /// failure.
    pub async fn balance(&self, account: &str) -> Result<Option<Balance>, CreditsError> {
        let client = self.pool.get().await?;
        let row = client.query_opt(BALANCE_SQL, &[&account]).await?;
        row.as_ref().map(balance_from_row).transpose()
    }

    /// Makes `child` draw on `parent` when its own credits run short, up to
    /// `cap` credits drawn in all (`None`: no limit). Creates `child` with
    /// a zero balance when it does not exist; `parent` must exist. Linking
    /// again changes the cap (or the parent); a cap below what the child has
    /// already drawn is accepted and stops further drawing. Writes no ledger
    /// entry (no credits move) and is idempotent. Returns the child's
    /// balance after linking.
    ///
    /// What the child has drawn stays counted when the parent changes: the
    /// cap limits what the child draws from parents in all, and holds keep
    /// the account their parent part came from, so they settle correctly.
    ///
    /// # Errors
    /// [`CreditsError::Invalid`] for an empty or too long id, a negative cap,
    /// `child == parent`, an unknown parent, a parent that has a parent
    /// itself, or a child that is the parent of other accounts (one level
    /// only).
    #[instrument(skip_all, fields(child = child, parent = parent, cap = ?cap))]
    pub async fn link(
        &self,
        child: &str,
        parent: &str,
        cap: Option<i64>,
    ) -> Result<Balance, CreditsError> {
        retry_conflicts(|| self.link_once(child, parent, cap)).await
    }

    async fn link_once(
        &self,
        child: &str,
        parent: &str,
        cap: Option<i64>,
    ) -> Result<Balance, CreditsError> {
        validate_id("account", child)?;
        validate_id("parent account", parent)?;
        if child == parent {
            return Err(CreditsError::Invalid(format!(
                "account {child} cannot be its own parent"
            )));
        }
        if let Some(cap) = cap.filter(|cap| *cap < 0) {
            return Err(CreditsError::Invalid(format!(
                "parent cap is {cap}, expected 0 or more credits"
            )));
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;

        // Child before parent, as reserve locks them. Any error below drops
        // the transaction, so a refused link creates nothing.
        tx.execute(
            "INSERT INTO accounts (account, available) VALUES ($1, 0)
             ON CONFLICT (account) DO NOTHING",
            &[&child],
        )
        .await?;
        tx.query_one(
            "SELECT account FROM accounts WHERE account = $1 FOR UPDATE",
            &[&child],
        )
        .await?;
        let grandparent: Option<String> = match tx
            .query_opt(
                "SELECT parent FROM accounts WHERE account = $1 FOR UPDATE",
                &[&parent],
            )
            .await?
        {
            Some(row) => row.try_get(0)?,
            None => {
                return Err(CreditsError::Invalid(format!(
                    "parent account {parent} does not exist; grant it credits first"
                )))
            }
        };
        if let Some(grandparent) = grandparent {
            return Err(CreditsError::Invalid(format!(
                "account {parent} draws on {grandparent} itself and cannot be a parent \
                 (one level only)"
            )));
        }
        // Read after both locks: a concurrent link making some account a
        // child of `child` holds `child`'s row lock until it commits, so its
        // row is visible here (read committed) or it sees our parent.
        let grandchild = tx
            .query_opt(
                "SELECT account FROM accounts WHERE parent = $1 ORDER BY account LIMIT 1",
                &[&child],
            )
            .await?;
        if let Some(row) = grandchild {
            let grandchild: String = row.try_get(0)?;
            return Err(CreditsError::Invalid(format!(
                "account {child} is the parent of {grandchild} and cannot get a parent \
                 (one level only)"
            )));
        }
        tx.execute(
            "UPDATE accounts SET parent = $2, parent_cap = $3, updated_at = now()
             WHERE account = $1",
            &[&child, &parent, &cap],
        )
        .await?;
        let balance = balance_from_row(&tx.query_one(BALANCE_SQL, &[&child]).await?)?;
        tx.commit().await?;
        debug!(drawn = balance.parent_drawn, "linked account to parent");
        Ok(balance)
    }

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

    /// The hold of `job_id`, if one was ever made.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn hold(&self, job_id: &str) -> Result<Option<Hold>, CreditsError> {
        let client = self.pool.get().await?;
        select_hold(&client, job_id, false).await
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

async fn select_hold<C: GenericClient>(
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

pub(crate) fn hold_from_row(row: &Row) -> Result<Hold, CreditsError> {
    Ok(Hold {
        job_id: row.try_get(0)?,
        account: row.try_get(1)?,
        amount: row.try_get(2)?,
        state: HoldState::parse(row.try_get(3)?)?,
        captured: row.try_get(4)?,
        released: row.try_get(5)?,
        parent_account: row.try_get(6)?,
        parent_amount: row.try_get(7)?,
        parent_captured: row.try_get(8)?,
        parent_released: row.try_get(9)?,
    })
}

fn balance_from_row(row: &Row) -> Result<Balance, CreditsError> {
    let available: i64 = row.try_get(1)?;
    let parent_cap: Option<i64> = row.try_get(5)?;
    let parent_drawn: i64 = row.try_get(6)?;
    let parent_available: Option<i64> = row.try_get(7)?;
    let spendable = match parent_available {
        Some(parent_available) => {
            available.saturating_add(parent_usable(parent_available, parent_cap, parent_drawn))
        }
        None => available,
    };
    Ok(Balance {
        account: row.try_get(0)?,
        available,
        held: row.try_get(2)?,
        captured: row.try_get(3)?,
        parent: row.try_get(4)?,
        parent_cap,
        parent_drawn,
        spendable,
    })
}

async fn insert_entry(
    tx: &Transaction<'_>,
    account: &str,
    job_id: Option<&str>,
    kind: &str,
    amount: i64,
    reason: Option<&str>,
) -> Result<(), CreditsError> {
    tx.execute(
        "INSERT INTO ledger_entries (account, job_id, kind, amount, reason)
         VALUES ($1, $2, $3, $4, $5)",
        &[&account, &job_id, &kind, &amount, &reason],
    )
    .await?;
    Ok(())
}

/// A redelivered job should ask for the same hold; a different account or
/// amount means two jobs share an id, which the caller should hear about.
fn log_if_different(existing: &Hold, account: &str, amount: i64) {
    if existing.account != account || existing.amount != amount {
        warn!(
            held_account = existing.account.as_str(),
            held_amount = existing.amount,
            "job already holds credits with a different account or amount; returning the existing hold"
        );
    }
}

pub(crate) fn validate_id(what: &str, id: &str) -> Result<(), CreditsError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(CreditsError::Invalid(format!(
            "{what} is {} bytes long, expected 1 to {MAX_ID_LEN}",
            id.len()
        )));
    }
    Ok(())
}

fn validate_positive(what: &str, amount: i64) -> Result<(), CreditsError> {
    if amount <= 0 {
        return Err(CreditsError::Invalid(format!(
            "{what} is {amount}, expected a positive number of credits"
        )));
    }
    Ok(())
}

/// Attempts of one ledger transaction that PostgreSQL rolled back to break a
/// deadlock or a serialization conflict.
const CONFLICT_ATTEMPTS: u32 = 5;

/// Runs a ledger transaction again when PostgreSQL rolled it back to resolve
/// a lock conflict (40P01, 40001), as PostgreSQL asks clients to. Sweepers
/// lock holds before accounts while reserves lock accounts first, so a
/// deadlock between them is possible under load; every operation here is one
/// transaction and idempotent on its job id, so running it again is safe.
/// After the last attempt the error is returned (retryable).
async fn retry_conflicts<T, F, Fut>(mut op: F) -> Result<T, CreditsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CreditsError>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if e.is_lock_conflict() && attempt < CONFLICT_ATTEMPTS => {
                debug!(attempt, error = %e, "ledger transaction rolled back by a lock conflict; running it again");
                // A short, varying pause so the two sides do not collide again.
                let jitter = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::from(d.subsec_nanos()) % 5);
                tokio::time::sleep(Duration::from_millis(2 * u64::from(attempt) + jitter)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

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
//!
//! The operations are split by stage: [`accounts`] grants, links and reads
//! balances; [`holds`] reserves credits and reads holds; [`settle`] captures,
//! releases and expires them. This file keeps the types they share, the row
//! decoding, input validation and the lock-conflict retry.

mod accounts;
mod holds;
mod settle;

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use tracing::{debug, instrument, warn};

use crate::CreditsError;

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

//! Read-only operator queries: an account's statement, its holds, and a full
//! audit of the ledger's invariants.
//!
//! Nothing here writes or takes row locks, so these can run beside live
//! traffic. [`Ledger::check_invariants`] scans every table and is meant for
//! operators and tests, not for the hot path of a job.
//!
//! How `ledger_entries` relate to an account row (every entry amount is
//! positive; the kind gives the direction):
//!
//! | kind      | available | held | captured | granted |
//! |-----------|-----------|------|----------|---------|
//! | `grant`   | +         |      |          | +       |
//! | `hold`    | -         | +    |          |         |
//! | `capture` |           | -    | +        |         |
//! | `release` | +         | -    |          |         |
//! | `expire`  | +         | -    |          |         |
//! | `refund`  | +         |      | -        |         |
//!
//! A settlement writes a `capture` and/or a `release` whose sum is the hold's
//! amount (zero-amount entries are skipped). Nothing writes `refund` yet; the
//! schema allows it, and it is read here as "captured credits given back".

use std::fmt::Write as _;

use deadpool_postgres::GenericClient;
use tokio_postgres::IsolationLevel;

use crate::ledger::{hold_from_row, HOLD_COLUMNS};
use crate::{CreditsError, Hold, Ledger};

/// Most violations of one kind reported by [`Ledger::check_invariants`]; a
/// broken ledger should produce a readable report, not a million lines.
const MAX_VIOLATIONS_PER_CHECK: i64 = 100;

/// One row of an account's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Increasing with insertion order (a bigserial).
    pub id: i64,
    /// The job the entry belongs to; `None` for grants.
    pub job_id: Option<String>,
    /// One of `grant`, `hold`, `capture`, `release`, `expire`, `refund`.
    pub kind: String,
    /// Always positive; [`kind`](Entry::kind) says which way it moves.
    pub amount: i64,
    /// Free text given with a grant.
    pub reason: Option<String>,
    /// When the entry's transaction started, in whole seconds since 1970.
    pub created_at_unix: i64,
}

impl Ledger {
    /// The newest `limit` ledger entries of `account`, newest first. An
    /// unknown account has an empty statement.
    ///
    /// # Errors
    /// [`CreditsError::Invalid`] when `limit` is not positive; database
    /// errors otherwise.
    pub async fn statement(&self, account: &str, limit: i64) -> Result<Vec<Entry>, CreditsError> {
        if limit <= 0 {
            return Err(CreditsError::Invalid(format!(
                "statement limit is {limit}, expected a positive number of entries"
            )));
        }
        let client = self.pool.get().await?;
        // Ordered by id, not created_at: ids follow insertion, while several
        // entries of one transaction share a created_at.
        let rows = client
            .query(
                "SELECT id, job_id, kind, amount, reason,
                        floor(extract(epoch FROM created_at))::bigint
                 FROM ledger_entries
                 WHERE account = $1
                 ORDER BY id DESC
                 LIMIT $2",
                &[&account, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Entry {
                    id: row.try_get(0)?,
                    job_id: row.try_get(1)?,
                    kind: row.try_get(2)?,
                    amount: row.try_get(3)?,
                    reason: row.try_get(4)?,
                    created_at_unix: row.try_get(5)?,
                })
            })
            .collect()
    }

    /// The holds of `account`, oldest first (by creation time, then job id);
    /// with `only_open`, only those still in state `held`.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn holds(&self, account: &str, only_open: bool) -> Result<Vec<Hold>, CreditsError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {HOLD_COLUMNS} FROM holds
                     WHERE account = $1 AND (NOT $2 OR state = 'held')
                     ORDER BY created_at, job_id"
                ),
                &[&account, &only_open],
            )
            .await?;
        rows.iter().map(hold_from_row).collect()
    }

    /// Audits the whole ledger and returns one human-readable line per
    /// violation; an empty list means the ledger is consistent.
    ///
    /// Checked, per account: `available + held + captured = granted`,
    /// `available >= 0`, `held` equals the open holds, `captured` equals what
    /// its holds captured, and every column can be rebuilt from
    /// `ledger_entries` alone (see the module docs for the signs). Per hold:
    /// `captured + released` is 0 while open and its amount once settled,
    /// and its entries say the same. Per job: at most one `capture` entry.
    ///
    /// All checks read one snapshot (a read-only repeatable-read
    /// transaction), so writes committing meanwhile cannot cause false
    /// alarms.
    ///
    /// # Errors
    /// Database errors only; violations are the `Ok` value.
    pub async fn check_invariants(&self) -> Result<Vec<String>, CreditsError> {
        let mut client = self.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut violations = Vec::new();
        check_accounts(&tx, &mut violations).await?;
        check_holds(&tx, &mut violations).await?;
        check_entries(&tx, &mut violations).await?;
        tx.commit().await?;
        Ok(violations)
    }
}

/// Account rows against their own columns, their holds, and their entries.
async fn check_accounts<C: GenericClient>(
    client: &C,
    violations: &mut Vec<String>,
) -> Result<(), CreditsError> {
    // A full join on both sides: entries of an account that has no row are
    // a violation too, and show up with NULL columns.
    let rows = client
        .query(
            "WITH e AS (
                 SELECT account,
                        SUM(CASE kind WHEN 'grant' THEN amount WHEN 'hold' THEN -amount
                                      WHEN 'release' THEN amount WHEN 'expire' THEN amount
                                      WHEN 'refund' THEN amount ELSE 0 END) AS available,
                        SUM(CASE kind WHEN 'hold' THEN amount WHEN 'capture' THEN -amount
                                      WHEN 'release' THEN -amount WHEN 'expire' THEN -amount
                                      ELSE 0 END) AS held,
                        SUM(CASE kind WHEN 'capture' THEN amount WHEN 'refund' THEN -amount
                                      ELSE 0 END) AS captured,
                        SUM(amount) FILTER (WHERE kind = 'grant') AS granted
                 FROM ledger_entries GROUP BY account
             ), h AS (
                 SELECT account,
                        SUM(amount) FILTER (WHERE state = 'held') AS held,
                        SUM(captured) AS captured
                 FROM holds GROUP BY account
             )
             SELECT COALESCE(a.account, e.account),
                    a.available, a.held, a.captured, a.granted,
                    COALESCE(h.held, 0)::bigint, COALESCE(h.captured, 0)::bigint,
                    COALESCE(e.available, 0)::bigint, COALESCE(e.held, 0)::bigint,
                    COALESCE(e.captured, 0)::bigint, COALESCE(e.granted, 0)::bigint
             FROM accounts a
             FULL JOIN e ON e.account = a.account
             LEFT JOIN h ON h.account = COALESCE(a.account, e.account)
             ORDER BY 1",
            &[],
        )
        .await?;
    for row in &rows {
        let account: String = row.try_get(0)?;
        let Some(available) = row.try_get::<_, Option<i64>>(1)? else {
            violations.push(format!(
                "account {account}: has ledger entries but no account row"
            ));
            continue;
        };
        let held: i64 = row.try_get(2)?;
        let captured: i64 = row.try_get(3)?;
        let granted: i64 = row.try_get(4)?;
        let (holds_held, holds_captured): (i64, i64) = (row.try_get(5)?, row.try_get(6)?);
        let from_entries: [i64; 4] = [
            row.try_get(7)?,
            row.try_get(8)?,
            row.try_get(9)?,
            row.try_get(10)?,
        ];

        // i128 so that a corrupted row near i64::MAX reports instead of
        // overflowing.
        let sum = i128::from(available) + i128::from(held) + i128::from(captured);
        if sum != i128::from(granted) {
            violations.push(format!(
                "account {account}: available {available} + held {held} + captured {captured} \
                 = {sum}, expected granted {granted}"
            ));
        }
        if available < 0 {
            violations.push(format!(
                "account {account}: available is {available}, expected at least 0"
            ));
        }
        if held != holds_held {
            violations.push(format!(
                "account {account}: held is {held}, expected {holds_held} from its open holds"
            ));
        }
        if captured != holds_captured {
            violations.push(format!(
                "account {account}: captured is {captured}, expected {holds_captured} \
                 from its settled holds"
            ));
        }
        let columns = ["available", "held", "captured", "granted"];
        let stored = [available, held, captured, granted];
        for ((name, stored), derived) in columns.iter().zip(stored).zip(from_entries) {
            if stored != derived {
                violations.push(format!(
                    "account {account}: {name} is {stored}, expected {derived} \
                     from its ledger entries"
                ));
            }
        }
    }
    Ok(())
}

/// Each hold row against its own columns and its entries.
async fn check_holds<C: GenericClient>(
    client: &C,
    violations: &mut Vec<String>,
) -> Result<(), CreditsError> {
    let rows = client
        .query(
            "WITH e AS (
                 SELECT job_id,
                        COUNT(*) FILTER (WHERE kind = 'hold') AS holds,
                        COALESCE(SUM(amount) FILTER (WHERE kind = 'hold'), 0) AS held,
                        COALESCE(SUM(amount) FILTER (WHERE kind = 'capture'), 0) AS captured,
                        COALESCE(SUM(amount) FILTER (WHERE kind IN ('release', 'expire')), 0)
                            AS released,
                        COUNT(DISTINCT account) AS accounts,
                        MIN(account) AS account
                 FROM ledger_entries WHERE job_id IS NOT NULL GROUP BY job_id
             )
             SELECT h.job_id, h.account, h.amount, h.state, h.captured, h.released,
                    COALESCE(e.holds, 0)::bigint, COALESCE(e.held, 0)::bigint,
                    COALESCE(e.captured, 0)::bigint, COALESCE(e.released, 0)::bigint,
                    COALESCE(e.accounts, 0)::bigint, e.account
             FROM holds h LEFT JOIN e ON e.job_id = h.job_id
             WHERE h.captured < 0 OR h.released < 0
                OR (h.state = 'held' AND (h.captured <> 0 OR h.released <> 0))
                OR (h.state <> 'held' AND h.captured + h.released <> h.amount)
                OR (h.state IN ('released', 'expired') AND h.captured <> 0)
                OR e.job_id IS NULL OR e.holds <> 1 OR e.held <> h.amount
                OR e.captured <> h.captured OR e.released <> h.released
                OR e.accounts <> 1 OR e.account <> h.account
             ORDER BY h.job_id
             LIMIT $1",
            &[&MAX_VIOLATIONS_PER_CHECK],
        )
        .await?;
    for row in &rows {
        let job_id: String = row.try_get(0)?;
        let account: String = row.try_get(1)?;
        let amount: i64 = row.try_get(2)?;
        let state: String = row.try_get(3)?;
        let captured: i64 = row.try_get(4)?;
        let released: i64 = row.try_get(5)?;
        let entry_holds: i64 = row.try_get(6)?;
        let entry_held: i64 = row.try_get(7)?;
        let entry_captured: i64 = row.try_get(8)?;
        let entry_released: i64 = row.try_get(9)?;
        let entry_accounts: i64 = row.try_get(10)?;
        let entry_account: Option<String> = row.try_get(11)?;

        let mut line = format!(
            "hold {job_id} of account {account}: amount {amount}, state {state}, \
             captured {captured}, released {released}"
        );
        let _ = write!(
            line,
            "; its entries: {entry_holds} hold entries for {entry_held}, \
             captured {entry_captured}, released {entry_released}"
        );
        if entry_accounts > 1 {
            let _ = write!(line, ", spread over {entry_accounts} accounts");
        } else if entry_account.as_deref().is_some_and(|a| a != account) {
            let _ = write!(
                line,
                ", written to account {}",
                entry_account.unwrap_or_default()
            );
        }
        violations.push(line);
    }
    Ok(())
}

/// Entries on their own: positive amounts, a job id on every job entry and a
/// hold row behind it, and a job charged at most once (one `capture` entry).
async fn check_entries<C: GenericClient>(
    client: &C,
    violations: &mut Vec<String>,
) -> Result<(), CreditsError> {
    let rows = client
        .query(
            "SELECT job_id, COUNT(*)::bigint, SUM(amount)::bigint FROM ledger_entries
             WHERE kind = 'capture'
             GROUP BY job_id HAVING COUNT(*) > 1
             ORDER BY job_id
             LIMIT $1",
            &[&MAX_VIOLATIONS_PER_CHECK],
        )
        .await?;
    for row in &rows {
        let job_id: Option<String> = row.try_get(0)?;
        let count: i64 = row.try_get(1)?;
        let total: i64 = row.try_get(2)?;
        violations.push(format!(
            "job {}: {count} capture entries for {total} credits, expected at most 1",
            job_id.as_deref().unwrap_or("<none>")
        ));
    }

    let rows = client
        .query(
            "SELECT e.id, e.account, e.job_id, e.kind, e.amount FROM ledger_entries e
             WHERE e.amount <= 0
                OR (e.kind = 'grant' AND e.job_id IS NOT NULL)
                OR (e.kind <> 'grant' AND e.job_id IS NULL)
                OR (e.job_id IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.job_id = e.job_id))
             ORDER BY e.id
             LIMIT $1",
            &[&MAX_VIOLATIONS_PER_CHECK],
        )
        .await?;
    for row in &rows {
        let id: i64 = row.try_get(0)?;
        let account: String = row.try_get(1)?;
        let job_id: Option<String> = row.try_get(2)?;
        let kind: String = row.try_get(3)?;
        let amount: i64 = row.try_get(4)?;
        let expected = if amount <= 0 {
            "expected a positive amount"
        } else if kind == "grant" {
            "expected no job id on a grant"
        } else if job_id.is_none() {
            "expected a job id"
        } else {
            "expected a hold row for its job"
        };
        violations.push(format!(
            "ledger entry {id} of account {account}: {kind} of {amount} for job {}, {expected}",
            job_id.as_deref().unwrap_or("<none>")
        ));
    }
    Ok(())
}

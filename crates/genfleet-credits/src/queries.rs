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
//!
//! A hold of a child account that drew on its parent is two parts, and each
//! part writes its own entries to the account it came from: `hold`, then
//! `capture`/`release`/`expire` of that part, all with the same job id. So
//! every account's columns still follow from its own entries alone.

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

    /// The holds that reserved credits of `account`, oldest first (by
    /// creation time, then job id): its own, and for a parent the holds of
    /// its children that drew on it (their [`Hold::account`] is the child's).
    /// With `only_open`, only those still in state `held`.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn holds(&self, account: &str, only_open: bool) -> Result<Vec<Hold>, CreditsError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {HOLD_COLUMNS} FROM holds
                     WHERE (account = $1 OR parent_account = $1)
                       AND (NOT $2 OR state = 'held')
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
    /// `available >= 0`, `held` equals the parts of open holds taken from
    /// it, `captured` equals what holds captured from it, every column can
    /// be rebuilt from `ledger_entries` alone (see the module docs for the
    /// signs), `parent_drawn` equals the parent parts of its open holds plus
    /// what its holds captured from a parent, and its parent has no parent.
    /// Per hold: `captured + released` is 0 while open and its amount once
    /// settled, the same for its parent part, the own part is captured
    /// before the parent part, and each part's entries (on the account it
    /// came from, none elsewhere) say the same. Per job and account: at most
    /// one `capture` entry.
    ///
    /// `parent_drawn <= parent_cap` is not checked: an operator may lower a
    /// cap below what is drawn. That no reservation draws past the cap is
    /// enforced by `reserve` under the child's row lock.
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
             ), parts AS (
                 SELECT account,
                        CASE WHEN state = 'held' THEN amount - parent_amount ELSE 0 END AS held,
                        captured - parent_captured AS captured
                 FROM holds
                 UNION ALL
                 SELECT parent_account,
                        CASE WHEN state = 'held' THEN parent_amount ELSE 0 END,
                        parent_captured
                 FROM holds WHERE parent_account IS NOT NULL
             ), h AS (
                 SELECT account, SUM(held) AS held, SUM(captured) AS captured
                 FROM parts GROUP BY account
             ), d AS (
                 SELECT account,
                        SUM(parent_amount) FILTER (WHERE state = 'held') AS open,
                        SUM(parent_captured) AS captured
                 FROM holds GROUP BY account
             )
             SELECT COALESCE(a.account, e.account),
                    a.available, a.held, a.captured, a.granted,
                    COALESCE(h.held, 0)::bigint, COALESCE(h.captured, 0)::bigint,
                    COALESCE(e.available, 0)::bigint, COALESCE(e.held, 0)::bigint,
                    COALESCE(e.captured, 0)::bigint, COALESCE(e.granted, 0)::bigint,
                    a.parent_drawn, COALESCE(d.open, 0)::bigint, COALESCE(d.captured, 0)::bigint,
                    a.parent, p.parent
             FROM accounts a
             FULL JOIN e ON e.account = a.account
             LEFT JOIN h ON h.account = COALESCE(a.account, e.account)
             LEFT JOIN d ON d.account = COALESCE(a.account, e.account)
             LEFT JOIN accounts p ON p.account = a.parent
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
        let drawn: i64 = row.try_get(11)?;
        let (open_parent, captured_parent): (i64, i64) = (row.try_get(12)?, row.try_get(13)?);
        let parent: Option<String> = row.try_get(14)?;
        let grandparent: Option<String> = row.try_get(15)?;

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
        let expected_drawn = i128::from(open_parent) + i128::from(captured_parent);
        if i128::from(drawn) != expected_drawn {
            violations.push(format!(
                "account {account}: parent_drawn is {drawn}, expected {expected_drawn} \
                 from its holds (open parent parts {open_parent} + captured parent parts \
                 {captured_parent})"
            ));
        }
        if let (Some(parent), Some(grandparent)) = (parent, grandparent) {
            violations.push(format!(
                "account {account}: its parent {parent} has a parent ({grandparent}), \
                 expected one level only"
            ));
        }
    }
    Ok(())
}

/// Each hold row against its own columns, and each of its parts (own,
/// parent) against the entries on the account it came from.
async fn check_holds<C: GenericClient>(
    client: &C,
    violations: &mut Vec<String>,
) -> Result<(), CreditsError> {
    let rows = client
        .query(
            "WITH e AS (
                 SELECT job_id, account,
                        COUNT(*) FILTER (WHERE kind = 'hold') AS holds,
                        COALESCE(SUM(amount) FILTER (WHERE kind = 'hold'), 0) AS held,
                        COALESCE(SUM(amount) FILTER (WHERE kind = 'capture'), 0) AS captured,
                        COALESCE(SUM(amount) FILTER (WHERE kind IN ('release', 'expire')), 0)
                            AS released
                 FROM ledger_entries WHERE job_id IS NOT NULL GROUP BY job_id, account
             ), j AS (
                 SELECT job_id, SUM(holds) AS holds, SUM(held) AS held,
                        SUM(captured) AS captured, SUM(released) AS released,
                        COUNT(*) AS accounts
                 FROM e GROUP BY job_id
             )
             SELECT h.job_id, h.account, h.amount, h.state, h.captured, h.released,
                    h.parent_account, h.parent_amount, h.parent_captured, h.parent_released,
                    COALESCE(j.holds, 0)::bigint, COALESCE(j.held, 0)::bigint,
                    COALESCE(j.captured, 0)::bigint, COALESCE(j.released, 0)::bigint,
                    COALESCE(j.accounts, 0)::bigint,
                    COALESCE(pe.holds, 0)::bigint, COALESCE(pe.held, 0)::bigint,
                    COALESCE(pe.captured, 0)::bigint, COALESCE(pe.released, 0)::bigint,
                    s.account
             FROM holds h
             LEFT JOIN j ON j.job_id = h.job_id
             LEFT JOIN e oe ON oe.job_id = h.job_id AND oe.account = h.account
             LEFT JOIN e pe ON pe.job_id = h.job_id AND pe.account = h.parent_account
             LEFT JOIN LATERAL (
                 SELECT MIN(x.account) AS account FROM e x
                 WHERE x.job_id = h.job_id AND x.account <> h.account
                   AND x.account IS DISTINCT FROM h.parent_account
             ) s ON true
             WHERE h.captured < 0 OR h.released < 0
                OR (h.state = 'held' AND (h.captured <> 0 OR h.released <> 0))
                OR (h.state <> 'held' AND h.captured + h.released <> h.amount)
                OR (h.state IN ('released', 'expired') AND h.captured <> 0)
                OR h.parent_amount < 0 OR h.parent_amount > h.amount
                OR h.parent_captured < 0 OR h.parent_released < 0
                OR h.parent_captured > h.captured OR h.parent_released > h.released
                OR (h.parent_account IS NULL) <> (h.parent_amount = 0)
                OR (h.state = 'held' AND (h.parent_captured <> 0 OR h.parent_released <> 0))
                OR (h.state <> 'held'
                    AND h.parent_captured + h.parent_released <> h.parent_amount)
                OR (h.parent_captured > 0
                    AND h.captured - h.parent_captured <> h.amount - h.parent_amount)
                OR COALESCE(oe.holds, 0) <> (h.amount - h.parent_amount > 0)::int
                OR COALESCE(oe.held, 0) <> h.amount - h.parent_amount
                OR COALESCE(oe.captured, 0) <> h.captured - h.parent_captured
                OR COALESCE(oe.released, 0) <> h.released - h.parent_released
                OR COALESCE(pe.holds, 0) <> (h.parent_amount > 0)::int
                OR COALESCE(pe.held, 0) <> h.parent_amount
                OR COALESCE(pe.captured, 0) <> h.parent_captured
                OR COALESCE(pe.released, 0) <> h.parent_released
                OR s.account IS NOT NULL
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
        let parent: Option<String> = row.try_get(6)?;
        let parent_part: [i64; 3] = [row.try_get(7)?, row.try_get(8)?, row.try_get(9)?];
        let entry_holds: i64 = row.try_get(10)?;
        let entry_held: i64 = row.try_get(11)?;
        let entry_captured: i64 = row.try_get(12)?;
        let entry_released: i64 = row.try_get(13)?;
        let entry_accounts: i64 = row.try_get(14)?;
        let parent_entries: [i64; 4] = [
            row.try_get(15)?,
            row.try_get(16)?,
            row.try_get(17)?,
            row.try_get(18)?,
        ];
        let stray_account: Option<String> = row.try_get(19)?;

        let mut line = format!(
            "hold {job_id} of account {account}: amount {amount}, state {state}, \
             captured {captured}, released {released}"
        );
        if parent.is_some() || parent_part != [0; 3] {
            let [p_amount, p_captured, p_released] = parent_part;
            let _ = write!(
                line,
                ", of which from parent {}: amount {p_amount}, captured {p_captured}, \
                 released {p_released}",
                parent.as_deref().unwrap_or("<none>")
            );
        }
        let _ = write!(
            line,
            "; its entries: {entry_holds} hold entries for {entry_held}, \
             captured {entry_captured}, released {entry_released}"
        );
        if let Some(parent) = &parent {
            let [holds, held, captured, released] = parent_entries;
            let _ = write!(
                line,
                ", of which on {parent}: {holds} hold entries for {held}, \
                 captured {captured}, released {released}"
            );
        }
        if let Some(stray) = stray_account {
            if entry_accounts > 1 {
                let _ = write!(line, ", spread over {entry_accounts} accounts");
            } else {
                let _ = write!(line, ", written to account {stray}");
            }
        }
        violations.push(line);
    }
    Ok(())
}

/// Entries on their own: positive amounts, a job id on every job entry and a
/// hold row behind it, and a job charged at most once per account (one
/// `capture` entry on each account that gave credits).
async fn check_entries<C: GenericClient>(
    client: &C,
    violations: &mut Vec<String>,
) -> Result<(), CreditsError> {
    let rows = client
        .query(
            "SELECT job_id, account, COUNT(*)::bigint, SUM(amount)::bigint
             FROM ledger_entries
             WHERE kind = 'capture'
             GROUP BY job_id, account HAVING COUNT(*) > 1
             ORDER BY job_id, account
             LIMIT $1",
            &[&MAX_VIOLATIONS_PER_CHECK],
        )
        .await?;
    for row in &rows {
        let job_id: Option<String> = row.try_get(0)?;
        let account: String = row.try_get(1)?;
        let count: i64 = row.try_get(2)?;
        let total: i64 = row.try_get(3)?;
        violations.push(format!(
            "job {}: {count} capture entries for {total} credits, expected at most 1 \
             on account {account}",
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

//! The ledger's part of forgetting a data subject (`genfleet forget`):
//! finding the subject's jobs, deleting what the ledger stored about them,
//! and anonymising (never deleting) its credit accounts.
//!
//! Deleted: stored outcomes (they hold signed URLs and the user id),
//! provider submission records, start counts, cancel requests and pending
//! source deletions of the subject's jobs.
//!
//! Kept, with the tenant replaced by a pseudonym (`forgotten:<random>`):
//! - `job_owners` rows. The id stays claimed, so no later message can claim
//!   it and meet the job's hold (kept, below) or reuse its output keys; and
//!   since the pseudonym is no tenant's, a redelivery of the subject's own
//!   job is refused as foreign instead of running again. Each row gets its
//!   own pseudonym, so the rows cannot even be grouped back together.
//! - For a whole workspace or org: its accounts, their holds and ledger
//!   entries. The account row is copied under a pseudonym with every
//!   balance column unchanged, holds and entries are moved to it, the free
//!   text `reason` of its entries is cleared, and the old row is deleted:
//!   the books balance exactly as before, and `check_invariants` holds.
//!   One pseudonym per account, so an account's history stays one account.
//!
//! Job ids themselves are kept in holds and entries: they are random ids
//! whose link to a person lived in the deleted outcomes and dead letters.
//!
//! All of it is one transaction ([`Ledger::erase`]); with `dry_run` the
//! same statements run and are rolled back, so a dry run reports exactly
//! the counts a real run would.

use deadpool_postgres::{GenericClient, Transaction};

use crate::{CreditsError, Ledger};

/// What every pseudonym starts with; no tenant or account id a job can name
/// contains a `:`.
pub const FORGOTTEN_PREFIX: &str = "forgotten:";

/// A fresh pseudonym per evaluation: 122 random bits from PostgreSQL.
const PSEUDONYM_SQL: &str = "'forgotten:' || replace(gen_random_uuid()::text, '-', '')";

/// Whole-tenant part of a forget: one workspace, or an org with all its
/// workspaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForgetScope {
    /// `org/workspace`.
    Workspace { org: String, workspace: String },
    /// `org` and every `org/<workspace>`.
    Org { org: String },
}

impl ForgetScope {
    /// The exact tenant (`org/workspace`), for a workspace.
    fn tenant(&self) -> Option<String> {
        match self {
            ForgetScope::Workspace { org, workspace } => Some(format!("{org}/{workspace}")),
            ForgetScope::Org { .. } => None,
        }
    }

    /// `org/`, the start of every tenant of an org.
    fn org_prefix(&self) -> Option<String> {
        match self {
            ForgetScope::Workspace { .. } => None,
            ForgetScope::Org { org } => Some(format!("{org}/")),
        }
    }

    fn org(&self) -> &str {
        match self {
            ForgetScope::Workspace { org, .. } | ForgetScope::Org { org } => org,
        }
    }

    fn workspace(&self) -> Option<&str> {
        match self {
            ForgetScope::Workspace { workspace, .. } => Some(workspace),
            ForgetScope::Org { .. } => None,
        }
    }
}

/// A job the ledger knows, as [`Ledger::forget_candidates`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownJob {
    pub job_id: String,
    /// The tenant that claimed the id (`org/workspace`), or a pseudonym
    /// when an earlier forget anonymised it.
    pub owner: String,
    /// The stored outcome (a serialized result), if the job settled.
    pub outcome: Option<Vec<u8>>,
}

impl KnownJob {
    /// Whether an earlier forget anonymised the owner.
    pub fn is_forgotten(&self) -> bool {
        self.owner.starts_with(FORGOTTEN_PREFIX)
    }
}

/// An input a job asked to delete after it ended, not deleted yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSource {
    pub job_id: String,
    pub uri: String,
    pub org: String,
    pub workspace: String,
}

/// What [`Ledger::erase`] deletes and anonymises.
#[derive(Debug, Clone, Copy)]
pub struct Erasure<'a> {
    /// The subject's jobs: their rows go, their owner rows are anonymised.
    pub job_ids: &'a [String],
    /// For a whole workspace or org: also its cancel requests and pending
    /// source deletions by tenant (some name jobs never delivered), every
    /// owner row of the tenant, and its accounts, anonymised. `None` for a
    /// user's or one job's forget: the account is the workspace's, not the
    /// user's, and stays.
    pub tenant: Option<&'a ForgetScope>,
}

/// What [`Ledger::erase`] did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    pub outcomes: u64,
    pub provider_submissions: u64,
    pub attempts: u64,
    pub cancellations: u64,
    pub pending_source_deletions: u64,
    pub owners_anonymised: u64,
    pub accounts_anonymised: u64,
    pub holds_anonymised: u64,
    pub entries_anonymised: u64,
}

/// Attempts of an erase that PostgreSQL rolled back to break a deadlock
/// with live traffic (a reserve or settle on the same accounts).
const CONFLICT_ATTEMPTS: u32 = 5;

impl Ledger {
    /// The jobs a forget of `scope` must look at: those its tenant(s)
    /// claimed, and those whose owner an earlier forget anonymised but that
    /// have an outcome (a job still running when that forget ran can store
    /// one afterwards; the caller keeps those whose outcome names the
    /// subject). Ordered by job id.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn forget_candidates(
        &self,
        scope: &ForgetScope,
    ) -> Result<Vec<KnownJob>, CreditsError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT w.job_id, w.tenant, o.outcome
                 FROM job_owners w LEFT JOIN job_outcomes o ON o.job_id = w.job_id
                 WHERE w.tenant = $1
                    OR starts_with(w.tenant, $2)
                    OR (starts_with(w.tenant, $3) AND o.outcome IS NOT NULL)
                 ORDER BY w.job_id",
                &[&scope.tenant(), &scope.org_prefix(), &FORGOTTEN_PREFIX],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(KnownJob {
                    job_id: row.try_get(0)?,
                    owner: row.try_get(1)?,
                    outcome: row.try_get(2)?,
                })
            })
            .collect()
    }

    /// The inputs `job_ids` asked to delete that are not deleted yet: the
    /// only record of which uploads a job read.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn pending_sources(
        &self,
        job_ids: &[String],
    ) -> Result<Vec<PendingSource>, CreditsError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT job_id, uri, org, workspace FROM pending_source_deletions
                 WHERE job_id = ANY($1) ORDER BY job_id, uri",
                &[&job_ids],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(PendingSource {
                    job_id: row.try_get(0)?,
                    uri: row.try_get(1)?,
                    org: row.try_get(2)?,
                    workspace: row.try_get(3)?,
                })
            })
            .collect()
    }

    /// Deletes the rows of `erasure`'s jobs and anonymises their owners and
    /// (for a whole tenant) its accounts, in one transaction; rolled back
    /// when `dry_run`. Idempotent: a second run finds nothing left.
    ///
    /// # Errors
    /// Database errors; nothing is changed then.
    pub async fn erase(
        &self,
        erasure: &Erasure<'_>,
        dry_run: bool,
    ) -> Result<Erased, CreditsError> {
        let mut attempt = 1;
        loop {
            match self.erase_once(erasure, dry_run).await {
                Err(e) if e.is_lock_conflict() && attempt < CONFLICT_ATTEMPTS => {
                    tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(attempt)))
                        .await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn erase_once(
        &self,
        erasure: &Erasure<'_>,
        dry_run: bool,
    ) -> Result<Erased, CreditsError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let ids = erasure.job_ids;
        let scope = erasure.tenant;
        let tenant = scope.and_then(ForgetScope::tenant);
        let org_prefix = scope.and_then(ForgetScope::org_prefix);
        let org = scope.map(ForgetScope::org);
        let workspace = scope.and_then(ForgetScope::workspace);
        let mut erased = Erased {
            outcomes: tx
                .execute("DELETE FROM job_outcomes WHERE job_id = ANY($1)", &[&ids])
                .await?,
            provider_submissions: tx
                .execute(
                    "DELETE FROM provider_submissions WHERE job_id = ANY($1)",
                    &[&ids],
                )
                .await?,
            attempts: tx
                .execute("DELETE FROM job_attempts WHERE job_id = ANY($1)", &[&ids])
                .await?,
            // By tenant too: a cancel request may name an id that was never
            // delivered, so no owner row leads to it.
            cancellations: tx
                .execute(
                    "DELETE FROM job_cancellations
                     WHERE job_id = ANY($1) OR tenant = $2 OR starts_with(tenant, $3)",
                    &[&ids, &tenant, &org_prefix],
                )
                .await?,
            pending_source_deletions: tx
                .execute(
                    "DELETE FROM pending_source_deletions
                     WHERE job_id = ANY($1)
                        OR (org = $2 AND ($3::text IS NULL OR workspace = $3))",
                    &[&ids, &org, &workspace],
                )
                .await?,
            // Last of the job rows: the owner rows are how a rerun after a
            // crash finds the jobs again (all of this is one transaction
            // anyway, but the CLI's steps before it rely on the same rows).
            owners_anonymised: tx
                .execute(
                    &format!(
                        "UPDATE job_owners SET tenant = {PSEUDONYM_SQL}
                         WHERE NOT starts_with(tenant, $4)
                           AND (job_id = ANY($1) OR tenant = $2 OR starts_with(tenant, $3))"
                    ),
                    &[&ids, &tenant, &org_prefix, &FORGOTTEN_PREFIX],
                )
                .await?,
            ..Erased::default()
        };
        if let Some(scope) = scope {
            anonymise_accounts(&tx, scope, &mut erased).await?;
        }
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(erased)
    }
}

/// Moves each account of `scope` to a pseudonym: a copy of its row under
/// the new name, its holds (own and parent parts), children and entries
/// moved over, then the old row deleted. Holds are locked before accounts,
/// the order settle and the sweeper use.
async fn anonymise_accounts(
    tx: &Transaction<'_>,
    scope: &ForgetScope,
    erased: &mut Erased,
) -> Result<(), CreditsError> {
    let tenant = scope.tenant();
    let org_prefix = scope.org_prefix();
    let org = scope.org();
    // For a whole org: the org's own account and every `org/...` one; for a
    // workspace: `org/workspace` alone (the org's account is not the
    // workspace's).
    let in_scope =
        "(account = $1 OR starts_with(account, $2) OR ($2 IS NOT NULL AND account = $3))";
    tx.query(
        &format!(
            "SELECT 1 FROM holds
             WHERE account IN (SELECT account FROM accounts WHERE {in_scope})
                OR parent_account IN (SELECT account FROM accounts WHERE {in_scope})
             ORDER BY job_id FOR UPDATE"
        ),
        &[&tenant, &org_prefix, &org],
    )
    .await?;
    // Children before parents: a child's copy still points at its parent's
    // old name, which the parent's move then rewrites.
    let accounts: Vec<String> = tx
        .query(
            &format!(
                "SELECT account FROM accounts WHERE {in_scope}
                 ORDER BY (parent IS NULL), account FOR UPDATE"
            ),
            &[&tenant, &org_prefix, &org],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    for account in &accounts {
        let pseudonym: String = tx
            .query_one(&format!("SELECT {PSEUDONYM_SQL}"), &[])
            .await?
            .try_get(0)?;
        move_account(tx, account, &pseudonym, erased).await?;
        erased.accounts_anonymised += 1;
    }
    Ok(())
}

async fn move_account<C: GenericClient>(
    tx: &C,
    from: &str,
    to: &str,
    erased: &mut Erased,
) -> Result<(), CreditsError> {
    // Every column of `accounts` as of migration 2; a migration that adds
    // one must add it here (the forget test compares balances).
    tx.execute(
        "INSERT INTO accounts (account, available, held, captured, granted, updated_at,
                               parent, parent_cap, parent_drawn)
         SELECT $2, available, held, captured, granted, updated_at,
                parent, parent_cap, parent_drawn
         FROM accounts WHERE account = $1",
        &[&from, &to],
    )
    .await?;
    tx.execute(
        "UPDATE accounts SET parent = $2 WHERE parent = $1",
        &[&from, &to],
    )
    .await?;
    erased.holds_anonymised += tx
        .execute(
            "UPDATE holds SET account = $2 WHERE account = $1",
            &[&from, &to],
        )
        .await?;
    erased.holds_anonymised += tx
        .execute(
            "UPDATE holds SET parent_account = $2 WHERE parent_account = $1",
            &[&from, &to],
        )
        .await?;
    // `reason` is free text given with a grant ("credits for <name>").
    erased.entries_anonymised += tx
        .execute(
            "UPDATE ledger_entries SET account = $2, reason = NULL WHERE account = $1",
            &[&from, &to],
        )
        .await?;
    tx.execute("DELETE FROM accounts WHERE account = $1", &[&from])
        .await?;
    Ok(())
}

//! Versioned, embedded schema migrations for the ledger.
//!
//! Each migration is a `&'static str` compiled into the binary and applied at
//! most once per schema, recorded in `schema_migrations`. All of it runs in
//! one transaction that first takes a transaction-scoped advisory lock keyed
//! by the schema name, so workers starting together serialise here instead of
//! racing on `CREATE SCHEMA` / `CREATE TABLE`. This module does not roll
//! migrations back: a released migration is never edited, only followed by a
//! new one.

use deadpool_postgres::Pool;
use tracing::{info, warn};

use crate::CreditsError;

/// One schema change, applied once.
pub(crate) struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// All migrations in version order. Append only.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "accounts_holds_ledger_outcomes",
        sql: r#"
-- Invariant kept by every write: available + held + captured = granted.
CREATE TABLE accounts (
    account    text PRIMARY KEY,
    available  bigint NOT NULL CHECK (available >= 0),
    held       bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    captured   bigint NOT NULL DEFAULT 0,
    granted    bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One hold per job: the primary key is what makes reserve idempotent.
CREATE TABLE holds (
    job_id     text PRIMARY KEY,
    account    text NOT NULL REFERENCES accounts (account),
    amount     bigint NOT NULL CHECK (amount > 0),
    state      text NOT NULL CHECK (state IN ('held', 'captured', 'released', 'expired')),
    captured   bigint NOT NULL DEFAULT 0,
    released   bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz
);

-- The sweeper only ever looks at open holds, ordered by expiry.
CREATE INDEX holds_open_expires_at ON holds (expires_at) WHERE state = 'held';

-- Append-only audit trail; nothing updates or deletes these rows.
CREATE TABLE ledger_entries (
    id         bigserial PRIMARY KEY,
    account    text NOT NULL,
    job_id     text,
    kind       text NOT NULL CHECK (kind IN ('grant', 'hold', 'capture', 'release', 'expire', 'refund')),
    amount     bigint NOT NULL,
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_account ON ledger_entries (account, id);

-- The serialized result of each settled job, republished on redelivery.
CREATE TABLE job_outcomes (
    job_id     text PRIMARY KEY,
    outcome    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"#,
    },
    Migration {
        version: 2,
        name: "workspace_accounts_draw_on_parent",
        sql: r#"
-- A workspace account may draw on its organisation's (its parent's)
-- available credits, up to parent_cap (NULL: no limit). parent_drawn is
-- what the child's open holds took from a parent plus what its settled
-- holds captured from one. One level only, enforced by Ledger::link.
ALTER TABLE accounts
    ADD COLUMN parent       text NULL REFERENCES accounts (account),
    ADD COLUMN parent_cap   bigint NULL CHECK (parent_cap >= 0),
    ADD COLUMN parent_drawn bigint NOT NULL DEFAULT 0 CHECK (parent_drawn >= 0),
    ADD CONSTRAINT accounts_parent_not_self CHECK (parent <> account);
CREATE INDEX accounts_parent ON accounts (parent) WHERE parent IS NOT NULL;

-- amount, captured and released stay the hold's totals; the parent_*
-- columns say which part of each came from (and went back to)
-- parent_account. The rest is the holding account's own.
ALTER TABLE holds
    ADD COLUMN parent_account  text NULL REFERENCES accounts (account),
    ADD COLUMN parent_amount   bigint NOT NULL DEFAULT 0 CHECK (parent_amount >= 0),
    ADD COLUMN parent_captured bigint NOT NULL DEFAULT 0 CHECK (parent_captured >= 0),
    ADD COLUMN parent_released bigint NOT NULL DEFAULT 0 CHECK (parent_released >= 0),
    ADD CONSTRAINT holds_parent_part CHECK (
        parent_amount <= amount
        AND (parent_account IS NULL) = (parent_amount = 0)
        AND parent_captured <= captured
        AND parent_released <= released
    );
"#,
    },
    Migration {
        version: 3,
        name: "job_attempts",
        sql: r#"
-- How many times a worker started each job. The broker's delivery count
-- also counts deliveries that only waited in a worker's buffer when it died;
-- this counts real starts, so only jobs that keep crashing are given up.
CREATE TABLE job_attempts (
    job_id          text PRIMARY KEY,
    started         integer NOT NULL CHECK (started > 0),
    last_started_at timestamptz NOT NULL DEFAULT now()
);
"#,
    },
    Migration {
        version: 4,
        name: "provider_submissions",
        sql: r#"
-- The provider request a job is waiting on (opaque resume data of the
-- provider client), so a job redelivered after its worker died resumes it
-- instead of submitting, and paying for, the same generation twice.
CREATE TABLE provider_submissions (
    job_id     text NOT NULL,
    provider   text NOT NULL,
    submission text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, provider)
);
"#,
    },
    Migration {
        version: 5,
        name: "job_cancellations",
        sql: r#"
-- Cancel requests by job id, kept so that a job still queued, parked at a
-- provider or running on another worker meets its cancellation wherever it
-- runs next. A row is never removed: a cancelled job stays cancelled.
CREATE TABLE job_cancellations (
    job_id       text PRIMARY KEY,
    reason       text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now()
);
"#,
    },
    Migration {
        version: 6,
        name: "job_owners_and_tenant_cancellations",
        sql: r#"
-- The tenant (`org/workspace`) that first delivered each job id. A job id
-- keys a stored outcome, a hold, a provider request and a start count, so
-- the same id from another tenant must reach none of them.
CREATE TABLE job_owners (
    job_id     text PRIMARY KEY,
    tenant     text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);

-- Jobs settled before owners were recorded belong to the tenant their
-- stored result names. An outcome that does not read as such a result is
-- left unclaimed (its next delivery claims it), never a failed migration.
DO $$
DECLARE
    r record;
    owner text;
BEGIN
    FOR r IN SELECT job_id, outcome FROM job_outcomes LOOP
        BEGIN
            owner := (convert_from(r.outcome, 'UTF8')::jsonb #>> '{tenant,org}')
                  || '/' || (convert_from(r.outcome, 'UTF8')::jsonb #>> '{tenant,workspace}');
            IF owner IS NOT NULL THEN
                INSERT INTO job_owners (job_id, tenant) VALUES (r.job_id, owner)
                ON CONFLICT (job_id) DO NOTHING;
            END IF;
        EXCEPTION WHEN others THEN
            NULL;
        END;
    END LOOP;
END
$$;

-- A cancel request is its tenant's: one per (job id, tenant), so another
-- tenant's request for the same id neither takes the slot nor applies.
-- Requests recorded before tenants were apply to any tenant ('*'), as
-- they did.
ALTER TABLE job_cancellations ADD COLUMN tenant text NOT NULL DEFAULT '*';
ALTER TABLE job_cancellations ALTER COLUMN tenant DROP DEFAULT;
ALTER TABLE job_cancellations DROP CONSTRAINT job_cancellations_pkey;
ALTER TABLE job_cancellations ADD PRIMARY KEY (job_id, tenant);
"#,
    },
    Migration {
        version: 7,
        name: "pending_source_deletions_and_retention_indexes",
        sql: r#"
-- Sources (inputs) a job asked to delete once it ended. Written before the
-- job's outcome and acted on only once that outcome exists, so a
-- redelivery before the settlement still finds its inputs; removed when
-- the delete succeeded, retried with backoff (next_attempt_at) until then.
CREATE TABLE pending_source_deletions (
    job_id          text NOT NULL,
    uri             text NOT NULL,
    org             text NOT NULL,
    workspace       text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, uri)
);
CREATE INDEX pending_source_deletions_due ON pending_source_deletions (next_attempt_at);

-- The purge finds old rows by time, in bounded batches.
CREATE INDEX job_outcomes_created_at ON job_outcomes (created_at);
CREATE INDEX provider_submissions_created_at ON provider_submissions (created_at);
CREATE INDEX job_attempts_last_started_at ON job_attempts (last_started_at);
CREATE INDEX job_cancellations_requested_at ON job_cancellations (requested_at);
"#,
    },
];

/// Creates the schema if needed and applies every migration not yet recorded.
///
/// # Errors
/// [`CreditsError::Unavailable`] when the database cannot be reached,
/// [`CreditsError::Database`] when a migration fails (the transaction is
/// rolled back, so the schema is left as it was).
pub(crate) async fn run(pool: &Pool, schema: &str) -> Result<(), CreditsError> {
    run_to(pool, schema, i32::MAX).await
}

/// [`run`], stopping after migration `last` (tests of a migration over an
/// older schema's data).
pub(crate) async fn run_to(pool: &Pool, schema: &str, last: i32) -> Result<(), CreditsError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;

    // Keyed by schema so migrating one tenant's schema never waits for another.
    let lock_key = format!("genfleet-credits/migrate/{schema}");
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_key])
        .await?;

    // The schema name was validated to [a-z0-9_], so quoting is enough.
    // SET LOCAL afterwards makes sure the freshly created schema is the one
    // unqualified names resolve to, whatever the session had cached.
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         SET LOCAL search_path TO \"{schema}\";
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version    int PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await?;

    let applied: Vec<i32> = tx
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();

    if let Some(&newest) = applied.last() {
        let known = MIGRATIONS.last().map_or(0, |m| m.version);
        if newest > known {
            // A newer worker already migrated; older code keeps working as
            // long as migrations stay additive, so warn rather than refuse.
            warn!(
                schema,
                newest, known, "ledger schema is newer than this build knows"
            );
        }
    }

    for migration in MIGRATIONS.iter().filter(|m| m.version <= last) {
        if applied.contains(&migration.version) {
            continue;
        }
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await?;
        info!(
            schema,
            version = migration.version,
            name = migration.name,
            "applied ledger migration"
        );
    }

    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_strictly_increasing_from_one() {
        for (expected, m) in (1..).zip(MIGRATIONS) {
            assert_eq!(m.version, expected, "migration {}", m.name);
        }
    }
}

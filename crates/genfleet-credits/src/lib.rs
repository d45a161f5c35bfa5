//! Credit ledger on PostgreSQL: accounts, holds, capture, release.
//!
//! A job reserves credits before it runs (a *hold* keyed by `job_id`, with an
//! expiry), captures what it actually used when it succeeds (the rest goes
//! back), or releases everything when it fails. A sweeper expires the holds of
//! workers that crashed. Every write keeps, per account,
//! `available + held + captured = granted`, and every change is also written
//! to the append-only `ledger_entries` table (grant, hold, capture, release,
//! expire, refund), so each account's balance follows from its entries alone.
//!
//! Accounts exist per organisation and per workspace. [`Ledger::link`] makes
//! a workspace account a child of its organisation's (one level only): a
//! reservation on the child takes the child's own credits first and the rest
//! from the parent's, as long as what the child has drawn from the parent
//! (open parent parts plus captured parent parts) stays within its cap.
//! Capture charges the child's own part first; whatever is not charged, and
//! everything on release or expiry, goes back to the account it came from.
//! [`Balance::spendable`] is what one reservation on an account could take.
//!
//! This is the only crate that knows SQL. It does not know what a job is
//! beyond its id and an opaque serialized outcome, and it does not decide
//! prices: callers pass amounts in credits.
//!
//! Every method is a single transaction, so dropping its future (cancel) at
//! any `.await` leaves the ledger as it was before the call or as after it,
//! never in between.
#![forbid(unsafe_code)]

mod error;
mod forget;
mod jobs;
mod ledger;
mod migrations;
mod queries;
mod retention;
#[cfg(test)]
mod tests;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};

pub use crate::error::CreditsError;
pub use crate::forget::{Erased, Erasure, ForgetScope, KnownJob, PendingSource, FORGOTTEN_PREFIX};
pub use crate::jobs::{CancelRequest, Claim, Started};
pub use crate::ledger::{Balance, Hold, HoldState, Settled, Settlement};
pub use crate::queries::Entry;
pub use crate::retention::{
    PendingSourceDeletions, PurgeLock, RecordCutoffs, RecordsPurged, SourceDeletion,
};

/// How long `ping` waits for `SELECT 1`, pool wait included: a health check
/// that hangs is worse than one that says "unavailable".
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// TCP connect timeout for new pooled connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call waits for a free pooled connection before failing as
/// unavailable (retryable) instead of blocking a job forever.
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest schema name accepted; leaves room under PostgreSQL's 63-byte limit.
const MAX_SCHEMA_LEN: usize = 48;

/// Handle to the ledger: a connection pool whose every connection works in
/// one schema. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Ledger {
    pool: Pool,
    schema: String,
}

impl std::fmt::Debug for Ledger {
    // The pool's config may carry a password, so only the schema is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Builds the pool. Connections are opened lazily, on first use; call
    /// [`Ledger::migrate`] or [`Ledger::ping`] at start-up to find out early.
    ///
    /// `url` is a libpq-style URL or key/value string; `schema` must match
    /// `[a-z0-9_]{1,48}`. Every pooled connection gets `search_path=<schema>`
    /// so all SQL in this crate uses unqualified names.
    ///
    /// # Errors
    /// [`CreditsError::Invalid`] for a malformed URL, a bad schema name or a
    /// pool size of zero.
    pub async fn connect(
        url: &str,
        schema: &str,
        pool_size: usize,
    ) -> Result<Ledger, CreditsError> {
        validate_schema(schema)?;
        if pool_size == 0 {
            return Err(CreditsError::Invalid(
                "pool size is 0, expected at least 1".into(),
            ));
        }
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| CreditsError::Invalid(format!("database url is not valid: {e}")))?;
        // Keep whatever options the URL already carries and add ours last, so
        // the schema always wins.
        let options = match config.get_options() {
            Some(existing) if !existing.trim().is_empty() => {
                format!("{existing} -c search_path={schema}")
            }
            _ => format!("-c search_path={schema}"),
        };
        config.options(options);
        if config.get_application_name().is_none() {
            config.application_name("genfleet-credits");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }

        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            // Every method runs in a transaction that commits or rolls back
            // (tokio-postgres rolls back on drop), so no session state leaks
            // between users and the cheap check is enough.
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(POOL_WAIT_TIMEOUT),
                create: Some(CONNECT_TIMEOUT),
                recycle: Some(CONNECT_TIMEOUT),
            })
            .build()
            .map_err(|e| CreditsError::Invalid(format!("connection pool: {e}")))?;
        Ok(Ledger {
            pool,
            schema: schema.to_owned(),
        })
    }

    /// The schema this ledger works in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Creates the schema if needed and applies pending migrations. Safe to
    /// call from several workers at once and any number of times.
    ///
    /// # Errors
    /// [`CreditsError::Unavailable`] when the database cannot be reached;
    /// [`CreditsError::Database`] when a migration fails (nothing is applied).
    pub async fn migrate(&self) -> Result<(), CreditsError> {
        migrations::run(&self.pool, &self.schema).await
    }

    /// `SELECT 1` within a short timeout, for readiness checks.
    ///
    /// # Errors
    /// [`CreditsError::Unavailable`] when no answer comes in time.
    pub async fn ping(&self) -> Result<(), CreditsError> {
        let check = async {
            let client = self.pool.get().await?;
            client.simple_query("SELECT 1").await?;
            Ok::<(), CreditsError>(())
        };
        match tokio::time::timeout(PING_TIMEOUT, check).await {
            Ok(result) => result,
            Err(_) => Err(CreditsError::Unavailable(format!(
                "no answer to ping within {} ms",
                PING_TIMEOUT.as_millis()
            ))),
        }
    }
}

/// Accepts `[a-z0-9_]{1,48}`: safe to splice into SQL and into the
/// `search_path` startup option without any escaping.
fn validate_schema(schema: &str) -> Result<(), CreditsError> {
    let ok_chars = schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if schema.is_empty() || schema.len() > MAX_SCHEMA_LEN || !ok_chars {
        return Err(CreditsError::Invalid(format!(
            "schema name {schema:?} must be 1 to {MAX_SCHEMA_LEN} characters of a-z, 0-9 and _"
        )));
    }
    Ok(())
}

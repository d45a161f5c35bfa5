//! Account operations: granting credits, linking a child account to its
//! parent, and reading a balance. None of these touch holds.

use tracing::instrument;

use super::*;
use crate::{CreditsError, Ledger};

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
}

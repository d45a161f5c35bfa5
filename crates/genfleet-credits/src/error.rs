//! The one error type of the ledger, and how database failures are classed.
//!
//! Owns the decision "retry or give up" for every failure that comes out of
//! PostgreSQL or the connection pool, so callers never match on message text.
//! It does not know about jobs or result codes beyond the closed set returned
//! by [`CreditsError::code`].

use deadpool_postgres::PoolError;

/// Everything that can go wrong when talking to the ledger.
#[derive(Debug, thiserror::Error)]
pub enum CreditsError {
    /// The account does not exist or has too few credits for the hold.
    #[error("account {account} has {available} credits available, the job needs {needed}")]
    Insufficient {
        account: String,
        needed: i64,
        available: i64,
    },
    /// The request itself is wrong (non-positive amount, bad schema name, ...);
    /// repeating it cannot succeed.
    #[error("invalid ledger request: {0}")]
    Invalid(String),
    /// The database could not be reached, the pool timed out, or the server
    /// asked us to try again (deadlock, serialization failure, shutdown).
    #[error("ledger database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error that a retry will not fix.
    #[error("ledger database error: {0}")]
    Database(String),
}

impl CreditsError {
    /// Whether the same call may succeed later (connection trouble, timeouts,
    /// transient conflicts). Decided here, where the error is born.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CreditsError::Unavailable(_))
    }

    /// A stable code from a closed set, for metrics labels and job results.
    pub fn code(&self) -> &'static str {
        match self {
            CreditsError::Insufficient { .. } => "insufficient_credits",
            CreditsError::Invalid(_) => "invalid_input",
            CreditsError::Unavailable(_) | CreditsError::Database(_) => "internal",
        }
    }
}

/// SQLSTATE classes and codes after which the same statement may well
/// succeed: connection exceptions (08), insufficient resources (53),
/// operator intervention such as a server restart (57P01..57P03), and the
/// transaction rollbacks PostgreSQL asks clients to retry (40001, 40P01).
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
}

impl CreditsError {
    /// The database rolled the transaction back to break a deadlock (40P01)
    /// or a serialization conflict (40001): running it again is the cure.
    /// The suffix is the one `From<tokio_postgres::Error>` below writes.
    pub(crate) fn is_lock_conflict(&self) -> bool {
        matches!(self, CreditsError::Unavailable(m)
            if m.ends_with("(sqlstate 40P01)") || m.ends_with("(sqlstate 40001)"))
    }
}

impl From<tokio_postgres::Error> for CreditsError {
    fn from(err: tokio_postgres::Error) -> Self {
        if let Some(db) = err.as_db_error() {
            let code = db.code().code();
            let message = format!("{} (sqlstate {code})", db.message());
            return if is_transient_sqlstate(code) {
                CreditsError::Unavailable(message)
            } else {
                CreditsError::Database(message)
            };
        }
        // Without a server error the failure is on the wire: a closed
        // connection or an I/O error. A conversion error (a bug on our side)
        // has neither and is not retryable.
        let io = std::error::Error::source(&err).is_some_and(|s| s.is::<std::io::Error>());
        if err.is_closed() || io {
            CreditsError::Unavailable(err.to_string())
        } else {
            CreditsError::Database(err.to_string())
        }
    }
}

impl From<PoolError> for CreditsError {
    fn from(err: PoolError) -> Self {
        match err {
            PoolError::Backend(e) => {
                // Creating a connection failed. A server error about who we
                // are (28: bad password or role) or where (3D: no such
                // database) is configuration and will not heal by itself;
                // anything else while connecting is worth another try.
                let permanent = e.as_db_error().is_some_and(|db| {
                    let code = db.code().code();
                    code.starts_with("28") || code.starts_with("3D")
                });
                match CreditsError::from(e) {
                    CreditsError::Database(m) if !permanent => CreditsError::Unavailable(m),
                    other => other,
                }
            }
            other => CreditsError::Unavailable(format!("connection pool: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_retry_classes() {
        let cases = [
            (
                CreditsError::Insufficient {
                    account: "a".into(),
                    needed: 5,
                    available: 2,
                },
                "insufficient_credits",
                false,
            ),
            (CreditsError::Invalid("x".into()), "invalid_input", false),
            (CreditsError::Unavailable("x".into()), "internal", true),
            (CreditsError::Database("x".into()), "internal", false),
        ];
        for (err, code, retry) in cases {
            assert_eq!(err.code(), code, "{err}");
            assert_eq!(err.is_retryable(), retry, "{err}");
        }
    }

    #[test]
    fn insufficient_message_names_the_numbers() {
        let err = CreditsError::Insufficient {
            account: "org-1".into(),
            needed: 10,
            available: 3,
        };
        assert_eq!(
            err.to_string(),
            "account org-1 has 3 credits available, the job needs 10"
        );
    }

    #[test]
    fn transient_sqlstates() {
        for code in ["08006", "08001", "53300", "57P01", "40001", "40P01"] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "22003", "28P01"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn lock_conflicts_are_recognised() {
        for (error, conflict) in [
            (
                CreditsError::Unavailable("deadlock detected (sqlstate 40P01)".into()),
                true,
            ),
            (
                CreditsError::Unavailable("could not serialize access (sqlstate 40001)".into()),
                true,
            ),
            (CreditsError::Unavailable("connection closed".into()), false),
            (
                CreditsError::Database("deadlock detected (sqlstate 40P01)".into()),
                false,
            ),
        ] {
            assert_eq!(error.is_lock_conflict(), conflict, "{error:?}");
        }
    }
}

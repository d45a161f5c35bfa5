//! Input validation before the database, unreachable databases, ping.

use std::time::Duration;

use super::{TestDb, DEFAULT_URL, TTL};
use crate::{CreditsError, Ledger};

#[tokio::test]
async fn invalid_requests_are_rejected_before_the_database() {
    for schema in ["", "Upper", "semi;colon", "a-b", "x\"y", &"a".repeat(49)] {
        let err = Ledger::connect(DEFAULT_URL, schema, 1).await.unwrap_err();
        assert!(
            matches!(err, CreditsError::Invalid(_)),
            "{schema:?}: {err:?}"
        );
        assert_eq!(err.code(), "invalid_input");
    }
    let err = Ledger::connect(DEFAULT_URL, "ok", 0).await.unwrap_err();
    assert!(matches!(err, CreditsError::Invalid(_)), "{err:?}");
    let err = Ledger::connect("postgres://[bad", "ok", 1)
        .await
        .unwrap_err();
    assert!(matches!(err, CreditsError::Invalid(_)), "{err:?}");

    // A ledger on an unreachable address: validation errors must come
    // first, and never touch the network.
    let l = Ledger::connect("postgres://postgres@127.0.0.1:1/test", "ok", 1)
        .await
        .unwrap();
    let cases = [
        l.reserve("job", "acct", 0, TTL).await,
        l.reserve("job", "acct", -5, TTL).await,
        l.reserve("", "acct", 5, TTL).await,
        l.reserve("job", "", 5, TTL).await,
        l.reserve("job", "acct", 5, Duration::from_secs(400 * 86_400))
            .await,
    ];
    for result in cases {
        let err = result.unwrap_err();
        assert!(matches!(err, CreditsError::Invalid(_)), "{err:?}");
    }
    for amount in [0, -1] {
        let err = l.grant("acct", amount, "test").await.unwrap_err();
        assert!(matches!(err, CreditsError::Invalid(_)), "{err:?}");
    }
}

#[tokio::test]
async fn unreachable_database_is_retryable() {
    // Port 1 on loopback refuses at once.
    let l = Ledger::connect("postgres://postgres@127.0.0.1:1/test", "ok", 1)
        .await
        .unwrap();
    let err = l.ping().await.unwrap_err();
    assert!(matches!(err, CreditsError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
    let err = l.balance("acct").await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_answers() {
    let db = TestDb::new().await;
    db.ledger.ping().await.unwrap();
}

//! Job ids per tenant: claims, cancel requests, and the migration that
//! introduced them over an older schema's data.

use super::TestDb;
use crate::{CancelRequest, Claim, CreditsError};

const JOB: &str = "01JD3XQ6Z8M5V9K2T4W7Y1B0CE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_tenant_to_deliver_an_id_owns_it() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    assert_eq!(l.job_owner(JOB).await.unwrap(), None);
    assert_eq!(
        l.claim(JOB, "acme/shop-1").await.unwrap(),
        Claim::Own { outcome: None }
    );
    // Its own redelivery: still its own.
    assert_eq!(
        l.claim(JOB, "acme/shop-1").await.unwrap(),
        Claim::Own { outcome: None }
    );
    // Another workspace of the same org is another tenant.
    assert_eq!(l.claim(JOB, "acme/shop-2").await.unwrap(), Claim::Foreign);
    assert_eq!(l.claim(JOB, "globex/shop-1").await.unwrap(), Claim::Foreign);
    assert_eq!(
        l.job_owner(JOB).await.unwrap().as_deref(),
        Some("acme/shop-1")
    );

    // The owner sees its stored outcome; a foreign tenant never does.
    l.settle_outcome(JOB, crate::Settlement::Release, b"the result")
        .await
        .unwrap();
    assert_eq!(
        l.claim(JOB, "acme/shop-1").await.unwrap(),
        Claim::Own {
            outcome: Some(b"the result".to_vec())
        }
    );
    assert_eq!(l.claim(JOB, "globex/shop-1").await.unwrap(), Claim::Foreign);

    for (job, tenant) in [("", "a/b"), (JOB, ""), (JOB, "*")] {
        assert!(
            matches!(l.claim(job, tenant).await, Err(CreditsError::Invalid(_))),
            "{job:?} {tenant:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_claims_of_a_new_id_give_it_one_owner() {
    let db = TestDb::new().await;
    for round in 0..20 {
        let job = format!("race-{round}");
        let (a, b) = tokio::join!(
            db.ledger.claim(&job, "acme/ws"),
            db.ledger.claim(&job, "globex/ws")
        );
        let mut claims = [a.unwrap(), b.unwrap()];
        claims.sort_by_key(|c| matches!(c, Claim::Foreign));
        assert_eq!(
            claims,
            [Claim::Own { outcome: None }, Claim::Foreign],
            "round {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_is_its_tenants_and_keeps_its_first_reason() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    // Before the job was delivered: recorded for the tenant that asked.
    assert_eq!(
        l.request_cancellation(JOB, "acme/ws", "closed the tab")
            .await
            .unwrap(),
        CancelRequest::Recorded { job_known: false }
    );
    assert_eq!(
        l.request_cancellation(JOB, "acme/ws", "again")
            .await
            .unwrap(),
        CancelRequest::Repeated { job_known: false }
    );
    // Another tenant's request for the same id neither takes the slot nor
    // reaches acme's job.
    assert_eq!(
        l.request_cancellation(JOB, "globex/ws", "mine")
            .await
            .unwrap(),
        CancelRequest::Recorded { job_known: false }
    );
    assert_eq!(
        l.cancellation(JOB, "acme/ws").await.unwrap().as_deref(),
        Some("closed the tab")
    );
    assert_eq!(l.cancellation(JOB, "initech/ws").await.unwrap(), None);

    // Once acme's job was delivered, the id is acme's: globex's requests
    // are refused and record nothing.
    let other = "01JD3XQ6Z8M5V9K2T4W7Y1B0CF";
    assert!(matches!(
        l.claim(other, "acme/ws").await.unwrap(),
        Claim::Own { .. }
    ));
    assert_eq!(
        l.request_cancellation(other, "globex/ws", "x")
            .await
            .unwrap(),
        CancelRequest::Foreign
    );
    assert_eq!(l.cancellation(other, "globex/ws").await.unwrap(), None);
    assert_eq!(l.cancellation(other, "acme/ws").await.unwrap(), None);
    assert_eq!(
        l.request_cancellation(other, "acme/ws", "stop")
            .await
            .unwrap(),
        CancelRequest::Recorded { job_known: true }
    );
    let started = l.start(other, "acme/ws").await.unwrap();
    assert_eq!(started.cancel_reason.as_deref(), Some("stop"));
    assert_eq!(started.starts, 1);
    assert!(matches!(
        l.request_cancellation("", "acme/ws", "x").await,
        Err(CreditsError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_6_gives_settled_jobs_their_tenant_and_old_cancels_any() {
    let db = TestDb::unmigrated().await;
    crate::migrations::run_to(&db.ledger.pool, &db.schema, 5)
        .await
        .unwrap();
    let client = db.ledger.pool.get().await.unwrap();
    let result = br#"{"jobId":"01JD3XQ6Z8M5V9K2T4W7Y1B0CE","status":"JOB_STATUS_SUCCEEDED","tenant":{"org":"acme","workspace":"shop-1","user":"u"}}"#;
    client
        .execute(
            "INSERT INTO job_outcomes (job_id, outcome) VALUES ($1, $2), ('broken', $3)",
            &[&JOB, &result.as_slice(), &b"\xff not json".as_slice()],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO job_cancellations (job_id, reason) VALUES ('queued-job', 'old')",
            &[],
        )
        .await
        .unwrap();
    drop(client);
    db.ledger.migrate().await.unwrap();
    let l = &db.ledger;
    assert_eq!(
        l.job_owner(JOB).await.unwrap().as_deref(),
        Some("acme/shop-1")
    );
    assert_eq!(l.claim(JOB, "globex/shop-1").await.unwrap(), Claim::Foreign);
    // Unreadable: left for its next delivery to claim.
    assert_eq!(l.job_owner("broken").await.unwrap(), None);
    assert_eq!(
        l.cancellation("queued-job", "any/tenant")
            .await
            .unwrap()
            .as_deref(),
        Some("old")
    );
}

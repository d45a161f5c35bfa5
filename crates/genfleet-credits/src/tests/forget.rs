//! `Ledger::erase`: a forgotten workspace's and org's accounts move to
//! pseudonyms with their balances, holds and entries, the books still
//! audit clean, a dry run changes nothing and reports the same counts, and
//! a second run finds nothing.

use super::{TestDb, TTL};
use crate::{Erased, Erasure, ForgetScope, Ledger, Settlement, FORGOTTEN_PREFIX};

/// (available, held, captured, parent_drawn) of `account`.
async fn figures(l: &Ledger, account: &str) -> Option<(i64, i64, i64, i64)> {
    l.balance(account)
        .await
        .unwrap()
        .map(|b| (b.available, b.held, b.captured, b.parent_drawn))
}

/// Every pseudonymous account with its figures and parent.
async fn forgotten(db: &TestDb) -> Vec<(String, (i64, i64, i64, i64), Option<String>)> {
    let client = db.ledger.pool.get().await.unwrap();
    client
        .query(
            "SELECT account, available, held, captured, parent_drawn, parent FROM accounts
             WHERE starts_with(account, $1) ORDER BY account",
            &[&FORGOTTEN_PREFIX],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4)), r.get(5)))
        .collect()
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let client = db.ledger.pool.get().await.unwrap();
    client.query_one(sql, &[]).await.unwrap().get(0)
}

fn ws(org: &str, workspace: &str) -> ForgetScope {
    ForgetScope::Workspace {
        org: org.into(),
        workspace: workspace.into(),
    }
}

#[tokio::test]
async fn forgetting_a_workspace_then_its_org_keeps_the_books() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    l.grant("acme", 100, "org credits").await.unwrap();
    l.grant("acme/ws1", 10, "for Jane Doe").await.unwrap();
    l.link("acme/ws1", "acme", None).await.unwrap();
    l.grant("acme/ws2", 50, "ws2").await.unwrap();
    l.grant("globex/ws1", 50, "globex").await.unwrap();
    // j1: 30 on ws1, 20 of it from acme, settled; j2 open on ws1; j3 on
    // ws2; j4 globex's.
    for (job, tenant, amount) in [
        ("j1", "acme/ws1", 30),
        ("j2", "acme/ws1", 5),
        ("j3", "acme/ws2", 7),
        ("j4", "globex/ws1", 9),
    ] {
        l.claim(job, tenant).await.unwrap();
        l.reserve(job, tenant, amount, TTL).await.unwrap();
        l.begin_attempt(job).await.unwrap();
    }
    l.settle_outcome("j1", Settlement::Capture { amount: 25 }, b"{}")
        .await
        .unwrap();
    l.settle_outcome("j3", Settlement::Release, b"{}")
        .await
        .unwrap();
    l.remember_submission("j2", "fal", "{}").await.unwrap();
    l.request_cancellation("j2", "acme/ws1", "stop")
        .await
        .unwrap();
    // A cancel request for an id never delivered: only its tenant leads to it.
    l.request_cancellation("j9", "acme/ws1", "stop")
        .await
        .unwrap();
    let ws1_before = figures(l, "acme/ws1").await.unwrap();
    let acme_before = figures(l, "acme").await.unwrap();
    let globex_before = figures(l, "globex/ws1").await.unwrap();

    let ws1_entries = count(
        &db,
        "SELECT count(*) FROM ledger_entries WHERE account = 'acme/ws1'",
    )
    .await;
    let ids = vec!["j1".to_string(), "j2".to_string()];
    let scope = ws("acme", "ws1");
    let erasure = Erasure {
        job_ids: &ids,
        tenant: Some(&scope),
    };
    let expected = Erased {
        outcomes: 1,
        provider_submissions: 1,
        attempts: 2,
        cancellations: 2,
        pending_source_deletions: 0,
        owners_anonymised: 2,
        accounts_anonymised: 1,
        // j1 and j2 (account), j1 (parent part is on acme: not moved)
        holds_anonymised: 2,
        entries_anonymised: u64::try_from(ws1_entries).unwrap(),
    };
    let dry = l.erase(&erasure, true).await.unwrap();
    assert_eq!(dry, expected);
    assert_eq!(figures(l, "acme/ws1").await.unwrap(), ws1_before);
    assert!(forgotten(&db).await.is_empty());
    assert!(l.outcome("j1").await.unwrap().is_some());

    assert_eq!(l.erase(&erasure, false).await.unwrap(), expected);
    assert!(l.balance("acme/ws1").await.unwrap().is_none());
    let moved = forgotten(&db).await;
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0].1, ws1_before);
    assert_eq!(moved[0].2.as_deref(), Some("acme"));
    assert_eq!(figures(l, "acme").await.unwrap(), acme_before);
    assert_eq!(figures(l, "globex/ws1").await.unwrap(), globex_before);
    assert_eq!(l.check_invariants().await.unwrap(), Vec::<String>::new());
    assert!(l.outcome("j1").await.unwrap().is_none());
    assert!(l.outcome("j3").await.unwrap().is_some());
    assert!(l.recall_submission("j2", "fal").await.unwrap().is_none());
    // The ids stay claimed, by no tenant: a redelivery is foreign.
    assert_eq!(
        l.claim("j1", "acme/ws1").await.unwrap(),
        crate::Claim::Foreign
    );
    assert_eq!(
        l.claim("j9", "acme/ws1").await.unwrap(),
        crate::Claim::Own { outcome: None },
        "j9 was never delivered, so it was never claimed"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM ledger_entries WHERE reason = 'for Jane Doe'"
        )
        .await,
        0
    );
    // The open hold of the forgotten account still settles (a job that was
    // running during the forget), and stores an outcome: a rerun takes it.
    l.settle("j2", Settlement::Capture { amount: 5 }, b"{}")
        .await
        .unwrap();
    assert_eq!(l.check_invariants().await.unwrap(), Vec::<String>::new());

    // Again: j2's late outcome and j9's claim above are all there is.
    let again = l.erase(&erasure, false).await.unwrap();
    assert_eq!(
        again,
        Erased {
            outcomes: 1,
            owners_anonymised: 1,
            ..Erased::default()
        }
    );
    assert_eq!(l.erase(&erasure, false).await.unwrap(), Erased::default());

    // The whole org: acme and acme/ws2 move; the forgotten ws1 follows its
    // parent's new name.
    let org = ForgetScope::Org { org: "acme".into() };
    let ids = vec!["j3".to_string()];
    let erased = l
        .erase(
            &Erasure {
                job_ids: &ids,
                tenant: Some(&org),
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(erased.accounts_anonymised, 2);
    assert_eq!(erased.outcomes, 1);
    assert!(l.balance("acme").await.unwrap().is_none());
    assert!(l.balance("acme/ws2").await.unwrap().is_none());
    let moved = forgotten(&db).await;
    assert_eq!(moved.len(), 3, "{moved:?}");
    let names: Vec<&str> = moved.iter().map(|m| m.0.as_str()).collect();
    for (_, _, parent) in &moved {
        if let Some(parent) = parent {
            assert!(names.contains(&parent.as_str()), "{parent} is not moved");
        }
    }
    assert_eq!(figures(l, "globex/ws1").await.unwrap(), globex_before);
    assert_eq!(l.check_invariants().await.unwrap(), Vec::<String>::new());
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM job_owners WHERE starts_with(tenant, 'acme')"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM job_owners WHERE tenant = 'globex/ws1'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn forgetting_one_job_leaves_the_account() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    l.grant("acme/ws1", 100, "grant").await.unwrap();
    for job in ["k1", "k2"] {
        l.claim(job, "acme/ws1").await.unwrap();
        l.reserve(job, "acme/ws1", 10, TTL).await.unwrap();
        l.settle_outcome(job, Settlement::Capture { amount: 10 }, b"{}")
            .await
            .unwrap();
    }
    let before = figures(l, "acme/ws1").await;
    let ids = vec!["k1".to_string()];
    let erasure = Erasure {
        job_ids: &ids,
        tenant: None,
    };
    let erased = l.erase(&erasure, false).await.unwrap();
    assert_eq!(
        erased,
        Erased {
            outcomes: 1,
            owners_anonymised: 1,
            ..Erased::default()
        }
    );
    assert_eq!(figures(l, "acme/ws1").await, before);
    assert!(l.outcome("k2").await.unwrap().is_some());
    assert_eq!(
        l.job_owner("k2").await.unwrap().as_deref(),
        Some("acme/ws1")
    );
    assert!(l
        .job_owner("k1")
        .await
        .unwrap()
        .is_some_and(|o| o.starts_with(FORGOTTEN_PREFIX)));
    assert_eq!(l.erase(&erasure, false).await.unwrap(), Erased::default());
    // A later forget of the workspace still sees k1 if an outcome came
    // back (a job that was running during the first forget).
    let candidates = l.forget_candidates(&ws("acme", "ws1")).await.unwrap();
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0].job_id, "k2");
    assert_eq!(l.check_invariants().await.unwrap(), Vec::<String>::new());
}

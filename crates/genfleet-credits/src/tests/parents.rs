//! Workspace (child) accounts drawing on their organisation's (parent's)
//! balance within a cap: what each case gets, to the credit, and which
//! entries land on which account.

use std::time::Duration;

use super::{held, TestDb, TTL};
use crate::{Balance, CreditsError, Hold, HoldState, Ledger, Settlement};

const ORG: &str = "org";
const WS: &str = "org/ws";

/// A hold of `WS` with `parent_amount` of its `amount` drawn from `ORG`.
fn split(job_id: &str, amount: i64, parent_amount: i64) -> Hold {
    Hold {
        parent_account: Some(ORG.into()),
        parent_amount,
        ..held(job_id, WS, amount)
    }
}

/// `ORG` with `org` credits, `WS` with `own` credits of its own, linked.
async fn org_and_workspace(org: i64, own: i64, cap: Option<i64>) -> TestDb {
    let db = TestDb::new().await;
    db.ledger.grant(ORG, org, "org").await.unwrap();
    if own > 0 {
        db.ledger.grant(WS, own, "workspace").await.unwrap();
    }
    db.ledger.link(WS, ORG, cap).await.unwrap();
    db
}

/// (available, held, captured, parent_drawn, spendable) of `account`.
async fn figures(l: &Ledger, account: &str) -> (i64, i64, i64, i64, i64) {
    let b = l.balance(account).await.unwrap().unwrap();
    (b.available, b.held, b.captured, b.parent_drawn, b.spendable)
}

async fn audit(db: &TestDb) {
    assert_eq!(
        db.ledger.check_invariants().await.unwrap(),
        Vec::<String>::new()
    );
    db.assert_conserved(ORG).await;
    db.assert_conserved(WS).await;
}

fn entry(account: &str, kind: &str, amount: i64) -> (String, String, i64) {
    (account.into(), kind.into(), amount)
}

fn assert_insufficient(err: CreditsError, needed: i64, available: i64) {
    match err {
        CreditsError::Insufficient {
            account,
            needed: n,
            available: a,
        } => assert_eq!((account.as_str(), n, a), (WS, needed, available)),
        other => panic!("expected insufficient, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_credits_come_first_and_leave_the_parent_alone() {
    let db = org_and_workspace(100, 50, Some(40)).await;
    let l = &db.ledger;
    let hold = l.reserve("job-1", WS, 30, TTL).await.unwrap();
    assert_eq!(hold, held("job-1", WS, 30));
    assert_eq!(hold.own_amount(), 30);
    // Own 20 left, plus min(org 100, cap headroom 40).
    assert_eq!(figures(l, WS).await, (20, 30, 0, 0, 60));
    assert_eq!(figures(l, ORG).await, (100, 0, 0, 0, 100));
    assert_eq!(db.entries_of("job-1").await, vec![entry(WS, "hold", 30)]);
    audit(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_comes_from_the_parent_within_the_cap() {
    let db = org_and_workspace(100, 10, Some(50)).await;
    let l = &db.ledger;
    let hold = l.reserve("job-1", WS, 30, TTL).await.unwrap();
    assert_eq!(hold, split("job-1", 30, 20));
    assert_eq!(hold.own_amount(), 10);
    // Own 0 left; org has 80, the cap leaves 30.
    assert_eq!(figures(l, WS).await, (0, 10, 0, 20, 30));
    assert_eq!(figures(l, ORG).await, (80, 20, 0, 0, 80));
    assert_eq!(
        db.entries_of("job-1").await,
        vec![entry(WS, "hold", 10), entry(ORG, "hold", 20)]
    );
    // With nothing of its own, everything comes from the parent and only
    // the parent gets an entry.
    let hold = l.reserve("job-2", WS, 5, TTL).await.unwrap();
    assert_eq!(hold, split("job-2", 5, 5));
    assert_eq!(db.entries_of("job-2").await, vec![entry(ORG, "hold", 5)]);
    assert_eq!(figures(l, WS).await, (0, 10, 0, 25, 25));
    assert_eq!(figures(l, ORG).await, (75, 25, 0, 0, 75));
    // A redelivered reserve returns the same hold and draws nothing more.
    assert_eq!(
        l.reserve("job-1", WS, 30, TTL).await.unwrap(),
        split("job-1", 30, 20)
    );
    assert_eq!(figures(l, WS).await, (0, 10, 0, 25, 25));

    // The parent lists its children's holds that draw on it.
    let org_holds = l.holds(ORG, true).await.unwrap();
    assert_eq!(
        org_holds,
        vec![split("job-1", 30, 20), split("job-2", 5, 5)]
    );
    assert_eq!(l.holds(WS, true).await.unwrap(), org_holds);
    audit(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_reached_is_insufficient_with_the_exact_figure() {
    let db = org_and_workspace(100, 10, Some(50)).await;
    let l = &db.ledger;
    l.reserve("job-1", WS, 30, TTL).await.unwrap();

    // Own 0 + min(org 80, headroom 50 - 20) = 30.
    let err = l.reserve("job-2", WS, 45, TTL).await.unwrap_err();
    assert_eq!(err.code(), "insufficient_credits");
    assert_insufficient(err, 45, 30);
    assert_eq!(l.hold("job-2").await.unwrap(), None);
    assert_eq!(figures(l, WS).await, (0, 10, 0, 20, 30));
    assert_eq!(figures(l, ORG).await, (80, 20, 0, 0, 80));

    // Exactly the headroom fits; after it nothing more does.
    assert_eq!(
        l.reserve("job-2", WS, 30, TTL).await.unwrap(),
        split("job-2", 30, 30)
    );
    assert_eq!(figures(l, WS).await, (0, 10, 0, 50, 0));
    assert_insufficient(l.reserve("job-3", WS, 1, TTL).await.unwrap_err(), 1, 0);
    // The organisation itself still spends its own credits.
    assert_eq!(
        l.reserve("job-org", ORG, 50, TTL).await.unwrap(),
        held("job-org", ORG, 50)
    );
    assert_eq!(figures(l, ORG).await, (0, 100, 0, 0, 0));

    // Limited by the parent's available credits, not the cap: own 5 +
    // min(org 0 + 20 released, no cap).
    l.settle("job-org", Settlement::Capture { amount: 30 }, b"")
        .await
        .unwrap();
    l.grant(WS, 5, "top-up").await.unwrap();
    l.link(WS, ORG, None).await.unwrap();
    assert_eq!(figures(l, WS).await, (5, 10, 0, 50, 25));
    assert_insufficient(l.reserve("job-3", WS, 26, TTL).await.unwrap_err(), 26, 25);
    assert_eq!(
        l.reserve("job-3", WS, 25, TTL).await.unwrap(),
        split("job-3", 25, 20)
    );
    assert_eq!(figures(l, WS).await, (0, 15, 0, 70, 0));
    assert_eq!(figures(l, ORG).await, (0, 70, 30, 0, 0));
    audit(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_charges_the_own_part_first() {
    // A hold of 30: 10 own, 20 from the org (which had 100).
    // (capture asked, own captured, own released, parent captured,
    //  parent released)
    let cases = [
        (15, 10, 0, 5, 15),
        (5, 5, 5, 0, 20),
        (10, 10, 0, 0, 20),
        (30, 10, 0, 20, 0),
        (100, 10, 0, 20, 0),
        (0, 0, 10, 0, 20),
        (-3, 0, 10, 0, 20),
    ];
    for (asked, own_c, own_r, par_c, par_r) in cases {
        let db = org_and_workspace(100, 10, Some(50)).await;
        let l = &db.ledger;
        l.reserve("job-1", WS, 30, TTL).await.unwrap();
        let hold = l
            .settle("job-1", Settlement::Capture { amount: asked }, b"ok")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            hold,
            Hold {
                state: HoldState::Captured,
                captured: own_c + par_c,
                released: own_r + par_r,
                parent_captured: par_c,
                parent_released: par_r,
                ..split("job-1", 30, 20)
            },
            "capture {asked}"
        );
        // The captured parent part stays drawn; the released one does not.
        assert_eq!(
            figures(l, WS).await,
            (own_r, 0, own_c, par_c, own_r + (50 - par_c).min(80 + par_r)),
            "capture {asked}"
        );
        assert_eq!(
            figures(l, ORG).await,
            (80 + par_r, 0, par_c, 0, 80 + par_r),
            "capture {asked}"
        );
        let mut expected = vec![entry(WS, "hold", 10), entry(ORG, "hold", 20)];
        for (account, kind, amount) in [
            (WS, "capture", own_c),
            (WS, "release", own_r),
            (ORG, "capture", par_c),
            (ORG, "release", par_r),
        ] {
            if amount > 0 {
                expected.push(entry(account, kind, amount));
            }
        }
        assert_eq!(db.entries_of("job-1").await, expected, "capture {asked}");
        audit(&db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_and_expiry_return_credits_where_they_came_from() {
    let db = org_and_workspace(100, 10, None).await;
    let l = &db.ledger;
    l.reserve("job-r", WS, 30, TTL).await.unwrap();
    assert_eq!(figures(l, WS).await, (0, 10, 0, 20, 80));
    let hold = l
        .settle("job-r", Settlement::Release, b"failed")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        hold,
        Hold {
            state: HoldState::Released,
            released: 30,
            parent_released: 20,
            ..split("job-r", 30, 20)
        }
    );
    assert_eq!(figures(l, WS).await, (10, 0, 0, 0, 110));
    assert_eq!(figures(l, ORG).await, (100, 0, 0, 0, 100));
    assert_eq!(
        db.entries_of("job-r").await,
        vec![
            entry(WS, "hold", 10),
            entry(ORG, "hold", 20),
            entry(WS, "release", 10),
            entry(ORG, "release", 20),
        ]
    );

    // Expiry in one sweep: a split hold, a parent-only one, an own-only
    // one, and one of the org itself.
    l.reserve("job-e1", WS, 25, Duration::ZERO).await.unwrap();
    l.reserve("job-e2", WS, 7, Duration::ZERO).await.unwrap();
    l.grant(WS, 3, "top-up").await.unwrap();
    l.reserve("job-e3", WS, 3, Duration::ZERO).await.unwrap();
    l.reserve("job-e4", ORG, 4, Duration::ZERO).await.unwrap();
    l.reserve("job-open", WS, 6, TTL).await.unwrap();
    assert_eq!(figures(l, WS).await, (0, 13, 0, 28, 68));
    assert_eq!(figures(l, ORG).await, (68, 32, 0, 0, 68));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(l.expire_overdue().await.unwrap(), 4);
    assert_eq!(figures(l, WS).await, (13, 0, 0, 6, 107));
    assert_eq!(figures(l, ORG).await, (94, 6, 0, 0, 94));
    let expired = l.hold("job-e1").await.unwrap().unwrap();
    assert_eq!(
        expired,
        Hold {
            state: HoldState::Expired,
            released: 25,
            parent_released: 15,
            ..split("job-e1", 25, 15)
        }
    );
    assert_eq!(
        db.entries_of("job-e1").await,
        vec![
            entry(WS, "hold", 10),
            entry(ORG, "hold", 15),
            entry(WS, "expire", 10),
            entry(ORG, "expire", 15),
        ]
    );
    assert_eq!(
        db.entries_of("job-e2").await,
        vec![entry(ORG, "hold", 7), entry(ORG, "expire", 7)]
    );
    assert_eq!(
        db.entries_of("job-e3").await,
        vec![entry(WS, "hold", 3), entry(WS, "expire", 3)]
    );
    // A late settle of an expired hold changes nothing.
    let late = l
        .settle("job-e1", Settlement::Capture { amount: 25 }, b"late")
        .await
        .unwrap();
    assert_eq!(late, Some(expired));
    assert_eq!(figures(l, WS).await, (13, 0, 0, 6, 107));
    audit(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_a_split_hold_twice_charges_once() {
    let db = org_and_workspace(100, 10, Some(50)).await;
    let l = &db.ledger;
    l.reserve("job-1", WS, 30, TTL).await.unwrap();
    let first = l
        .settle("job-1", Settlement::Capture { amount: 15 }, b"first")
        .await
        .unwrap();
    let again = l
        .settle("job-1", Settlement::Capture { amount: 30 }, b"second")
        .await
        .unwrap();
    let released = l
        .settle("job-1", Settlement::Release, b"third")
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(first, released);
    assert_eq!(
        l.reserve("job-1", WS, 30, TTL).await.unwrap(),
        first.clone().unwrap()
    );
    assert_eq!(l.outcome("job-1").await.unwrap(), Some(b"first".to_vec()));
    assert_eq!(figures(l, WS).await, (0, 0, 10, 5, 45));
    assert_eq!(figures(l, ORG).await, (95, 0, 5, 0, 95));
    assert_eq!(db.entries_of("job-1").await.len(), 5);
    audit(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linking_rules() {
    let db = TestDb::new().await;
    let l = &db.ledger;

    // An unknown parent is refused and creates nothing.
    let err = l.link(WS, ORG, None).await.unwrap_err();
    assert!(matches!(err, CreditsError::Invalid(_)), "{err:?}");
    assert_eq!(l.balance(WS).await.unwrap(), None);

    l.grant(ORG, 100, "org").await.unwrap();
    // Linking creates the child with nothing of its own, and says so.
    let linked = l.link(WS, ORG, Some(40)).await.unwrap();
    let expected = Balance {
        account: WS.into(),
        available: 0,
        held: 0,
        captured: 0,
        parent: Some(ORG.into()),
        parent_cap: Some(40),
        parent_drawn: 0,
        spendable: 40,
    };
    assert_eq!(linked, expected);
    assert_eq!(l.balance(WS).await.unwrap(), Some(expected.clone()));
    // Idempotent, and no ledger entry: no credits moved.
    assert_eq!(l.link(WS, ORG, Some(40)).await.unwrap(), expected);
    assert!(l.statement(WS, 10).await.unwrap().is_empty());
    // The parent's own balance says it has no parent.
    let org = l.balance(ORG).await.unwrap().unwrap();
    assert_eq!(
        (org.parent, org.parent_cap, org.parent_drawn, org.spendable),
        (None, None, 0, 100)
    );

    l.grant("holding", 10, "other org").await.unwrap();
    l.grant("team", 10, "other workspace").await.unwrap();
    let refused: [(&str, &str, Option<i64>); 6] = [
        // Its own parent.
        (ORG, ORG, None),
        // A parent cannot get a parent.
        (ORG, "holding", None),
        // A child cannot be a parent.
        ("team", WS, None),
        // Negative caps.
        (WS, ORG, Some(-1)),
        // Bad ids.
        ("", ORG, None),
        (WS, "", None),
    ];
    for (child, parent, cap) in refused {
        let err = l.link(child, parent, cap).await.unwrap_err();
        assert!(
            matches!(err, CreditsError::Invalid(_)),
            "link {child:?} -> {parent:?} ({cap:?}): {err:?}"
        );
        assert_eq!(err.code(), "invalid_input");
    }
    assert_eq!(l.balance(WS).await.unwrap(), Some(expected.clone()));
    assert_eq!(l.balance(ORG).await.unwrap().unwrap().parent, None);
    assert_eq!(l.balance("team").await.unwrap().unwrap().parent, None);

    // Draw 30, then lower the cap below it: allowed, and nothing more can
    // be drawn until it is raised again.
    l.reserve("job-1", WS, 30, TTL).await.unwrap();
    let lowered = l.link(WS, ORG, Some(10)).await.unwrap();
    assert_eq!(
        (lowered.parent_cap, lowered.parent_drawn, lowered.spendable),
        (Some(10), 30, 0)
    );
    assert_insufficient(l.reserve("job-2", WS, 1, TTL).await.unwrap_err(), 1, 0);
    let raised = l.link(WS, ORG, Some(45)).await.unwrap();
    assert_eq!((raised.parent_drawn, raised.spendable), (30, 15));
    let unlimited = l.link(WS, ORG, None).await.unwrap();
    assert_eq!((unlimited.parent_cap, unlimited.spendable), (None, 70));

    // Moving to another parent keeps what was drawn counted, and the open
    // hold still settles against the parent it drew on.
    let moved = l.link(WS, "holding", Some(35)).await.unwrap();
    assert_eq!(
        (moved.parent.as_deref(), moved.parent_drawn, moved.spendable),
        (Some("holding"), 30, 5)
    );
    // An account that used to be a parent can become a child once its
    // children are gone, and then cannot be a parent.
    l.link(ORG, "holding", Some(0)).await.unwrap();
    let err = l.link("team", ORG, None).await.unwrap_err();
    assert!(matches!(err, CreditsError::Invalid(_)), "{err:?}");
    l.settle("job-1", Settlement::Release, b"").await.unwrap();
    assert_eq!(figures(l, ORG).await, (100, 0, 0, 0, 100));
    assert_eq!(figures(l, WS).await, (0, 0, 0, 0, 10));
    assert_eq!(
        db.ledger.check_invariants().await.unwrap(),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_links_never_make_two_levels() {
    // a -> b and b -> c at once, many times: at most one may win.
    for round in 0..20 {
        let db = TestDb::new().await;
        for account in ["a", "b", "c"] {
            db.ledger.grant(account, 1, "test").await.unwrap();
        }
        let (l1, l2) = (db.ledger.clone(), db.ledger.clone());
        let (first, second) = tokio::join!(
            tokio::spawn(async move { l1.link("a", "b", None).await }),
            tokio::spawn(async move { l2.link("b", "c", None).await }),
        );
        let (first, second) = (first.unwrap(), second.unwrap());
        assert!(
            first.is_err() || second.is_err(),
            "round {round}: both links succeeded"
        );
        assert!(
            first.is_ok() || second.is_ok(),
            "round {round}: {first:?} {second:?}"
        );
        assert_eq!(
            db.ledger.check_invariants().await.unwrap(),
            Vec::<String>::new()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_parent_parts_are_named() {
    // (what is broken, SQL that breaks it, a line the audit must contain)
    let cases = [
        (
            "drawn without a hold",
            "UPDATE accounts SET parent_drawn = parent_drawn + 1 WHERE account = 'org/ws'",
            "account org/ws: parent_drawn is 21, expected 20 from its holds \
             (open parent parts 20 + captured parent parts 0)",
        ),
        (
            "parent part moved to the own part",
            "UPDATE holds SET parent_amount = 15 WHERE job_id = 'job-1'",
            "hold job-1 of account org/ws: amount 30, state held, captured 0, released 0, \
             of which from parent org: amount 15, captured 0, released 0; its entries: \
             2 hold entries for 30, captured 0, released 0, of which on org: \
             1 hold entries for 20",
        ),
        (
            "parent part's entry on a third account",
            "INSERT INTO ledger_entries (account, job_id, kind, amount)
             VALUES ('other', 'job-1', 'release', 1)",
            "hold job-1 of account org/ws: amount 30, state held, captured 0, released 0, \
             of which from parent org: amount 20, captured 0, released 0; its entries: \
             2 hold entries for 30, captured 0, released 1, of which on org: \
             1 hold entries for 20, captured 0, released 0, spread over 3 accounts",
        ),
        (
            "org held without the child's hold",
            "UPDATE accounts SET held = held - 20, available = available + 20
             WHERE account = 'org'",
            "account org: held is 0, expected 20 from its open holds",
        ),
        (
            "two levels",
            "UPDATE accounts SET parent = 'other' WHERE account = 'org'",
            "account org/ws: its parent org has a parent (other), expected one level only",
        ),
    ];
    for (what, sql, expected) in cases {
        let db = org_and_workspace(100, 10, Some(50)).await;
        db.ledger.grant("other", 1, "test").await.unwrap();
        db.ledger.reserve("job-1", WS, 30, TTL).await.unwrap();
        assert_eq!(
            db.ledger.check_invariants().await.unwrap(),
            Vec::<String>::new(),
            "{what}: before tampering"
        );
        let client = db.ledger.pool.get().await.unwrap();
        client.batch_execute(sql).await.expect(what);
        drop(client);
        let violations = db.ledger.check_invariants().await.unwrap();
        assert!(
            violations.iter().any(|v| v.starts_with(expected)),
            "{what}: expected a line starting {expected:?}, got {violations:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_2_upgrades_a_version_1_ledger() {
    let db = TestDb::unmigrated().await;
    let schema = &db.schema;
    let v1 = crate::migrations::MIGRATIONS
        .iter()
        .find(|m| m.version == 1)
        .unwrap();
    // A ledger as version 1 left it: one open hold of 30 out of 100.
    let client = db.ledger.pool.get().await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\";
             SET search_path TO \"{schema}\";
             CREATE TABLE schema_migrations (
                 version    int PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );
             {}
             INSERT INTO schema_migrations (version, name) VALUES (1, '{}');
             INSERT INTO accounts (account, available, held, granted)
                 VALUES ('acct', 70, 30, 100);
             INSERT INTO holds (job_id, account, amount, state, expires_at)
                 VALUES ('job-1', 'acct', 30, 'held', now() + interval '1 hour');
             INSERT INTO ledger_entries (account, job_id, kind, amount, reason)
                 VALUES ('acct', NULL, 'grant', 100, 'v1'), ('acct', 'job-1', 'hold', 30, NULL);",
            v1.sql, v1.name
        ))
        .await
        .unwrap();
    drop(client);

    db.ledger.migrate().await.unwrap();
    let l = &db.ledger;
    assert_eq!(
        l.hold("job-1").await.unwrap(),
        Some(held("job-1", "acct", 30))
    );
    let balance = l.balance("acct").await.unwrap().unwrap();
    assert_eq!(
        (balance.parent, balance.parent_drawn, balance.spendable),
        (None, 0, 70)
    );
    l.settle("job-1", Settlement::Capture { amount: 12 }, b"")
        .await
        .unwrap();
    l.link("acct/ws", "acct", Some(5)).await.unwrap();
    l.reserve("job-2", "acct/ws", 5, TTL).await.unwrap();
    assert_eq!(l.check_invariants().await.unwrap(), Vec::<String>::new());
}

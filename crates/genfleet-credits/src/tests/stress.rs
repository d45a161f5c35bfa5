//! Many tasks, few accounts, overlapping job ids: reserves, partial and
//! over-captures, releases, short-lived holds and concurrent sweepers all
//! race, and afterwards every credit must be accounted for.
//!
//! A quarter of the tasks work on three workspace accounts that draw on one
//! organisation (two capped, caps raised now and then), another quarter on
//! the organisation itself, the rest on plain accounts. Job ids are shared
//! by all of them, so one job's hold may be reserved on a workspace and
//! settled or expired by a task working on the organisation.
//!
//! "Never negative" during the run is enforced by the `CHECK`s on
//! `accounts` (a violating write fails the test with a database error) and
//! sampled with `balance` reads (which also check that no workspace has
//! drawn past its cap: caps only rise here); the final audit is
//! `check_invariants` plus the conservation sums.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::TestDb;
use crate::{CreditsError, Hold, HoldState, Ledger, Settlement};

const TASKS: usize = 64;
const OPS: usize = 10_000;
const ACCOUNTS: usize = 4;
const ORG: &str = "org";
/// (workspace, own credits granted, initial cap).
const WORKSPACES: [(&str, i64, Option<i64>); 3] = [
    ("org/ws-0", 40, Some(150)),
    ("org/ws-1", 40, None),
    ("org/ws-2", 0, Some(60)),
];
/// Few enough that every job id is touched by many tasks, often on
/// different accounts.
const JOBS: u32 = 800;
/// Short ttls expire mid-run, so sweepers race settles of the same hold;
/// half the holds live long enough to be settled by a worker.
const TTLS: [Duration; 6] = [
    Duration::ZERO,
    Duration::from_millis(2),
    Duration::from_millis(20),
    Duration::from_secs(600),
    Duration::from_secs(600),
    Duration::from_secs(600),
];

/// What one task saw.
#[derive(Default)]
struct Seen {
    granted: i64,
    reserved: u32,
    insufficient: u32,
    settled: u32,
    expired: u64,
    /// Reserves answered with a hold that drew on the organisation.
    drew_on_parent: u32,
    /// Refusals of reserves on workspaces.
    workspace_insufficient: u32,
    cap_raises: u32,
    /// Every answer in a final state, by job: all must agree.
    final_holds: BTreeMap<String, Hold>,
}

impl Seen {
    fn record(&mut self, hold: &Hold) {
        if hold.state == HoldState::Held {
            return;
        }
        match self.final_holds.get(&hold.job_id) {
            Some(seen) => assert_eq!(seen, hold, "a settled hold changed"),
            None => {
                self.final_holds.insert(hold.job_id.clone(), hold.clone());
            }
        }
    }
}

/// Which accounts a task works on.
#[derive(Clone, Copy)]
enum Role {
    Workspaces,
    Org,
    Plain,
}

/// Raises a workspace's cap by `by`. The lock makes the raises of all tasks
/// commit in order, so caps only ever rise and "drawn <= cap" must hold at
/// every read.
async fn raise_cap(ledger: &Ledger, workspace: &str, cap: &Mutex<Option<i64>>, by: i64) {
    let mut cap = cap.lock().await;
    let Some(current) = *cap else {
        return;
    };
    let linked = ledger
        .link(workspace, ORG, Some(current + by))
        .await
        .expect("raise cap");
    assert_eq!(linked.parent_cap, Some(current + by));
    *cap = linked.parent_cap;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_conserve_every_credit() {
    let db = TestDb::new().await;
    let start = Instant::now();
    let mut granted = 0;
    // Tight on purpose: some reserves must be refused while others race
    // for the last credits of an account.
    for account in 0..ACCOUNTS {
        granted += 400;
        db.ledger
            .grant(&format!("acct-{account}"), 400, "stress")
            .await
            .unwrap();
    }
    granted += 600;
    db.ledger.grant(ORG, 600, "stress").await.unwrap();
    let mut caps = Vec::new();
    for (workspace, own, cap) in WORKSPACES {
        if own > 0 {
            granted += own;
            db.ledger.grant(workspace, own, "stress").await.unwrap();
        }
        db.ledger.link(workspace, ORG, cap).await.unwrap();
        caps.push(Arc::new(Mutex::new(cap)));
    }

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let ledger = db.ledger.clone();
        let caps = caps.clone();
        let role = match task % 4 {
            0 => Role::Workspaces,
            1 => Role::Org,
            _ => Role::Plain,
        };
        // OPS spread over the tasks, the remainder to the first ones.
        let ops = OPS / TASKS + usize::from(task < OPS % TASKS);
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(0x5eed + task as u64);
            let mut seen = Seen::default();
            for _ in 0..ops {
                let job = format!("job-{}", rng.u32(0..JOBS));
                let workspace = rng.usize(0..WORKSPACES.len());
                let account = match role {
                    Role::Workspaces => WORKSPACES[workspace].0.to_owned(),
                    Role::Org => ORG.to_owned(),
                    Role::Plain => format!("acct-{}", rng.usize(0..ACCOUNTS)),
                };
                match rng.u32(0..100) {
                    0..=39 => {
                        let ttl = TTLS[rng.usize(0..TTLS.len())];
                        match ledger.reserve(&job, &account, rng.i64(1..=30), ttl).await {
                            Ok(hold) => {
                                seen.reserved += 1;
                                if hold.account == account && hold.parent_amount > 0 {
                                    seen.drew_on_parent += 1;
                                }
                                seen.record(&hold);
                            }
                            Err(CreditsError::Insufficient { .. }) => {
                                seen.insufficient += 1;
                                if matches!(role, Role::Workspaces) {
                                    seen.workspace_insufficient += 1;
                                }
                            }
                            Err(e) => panic!("reserve {job}: {e}"),
                        }
                    }
                    40..=69 => {
                        // Partial most of the time; sometimes nothing,
                        // negative, or more than the hold.
                        let settlement = match rng.u32(0..10) {
                            0..=2 => Settlement::Release,
                            3 => Settlement::Capture {
                                amount: rng.i64(-5..=0),
                            },
                            4 => Settlement::Capture {
                                amount: rng.i64(30..=100),
                            },
                            _ => Settlement::Capture {
                                amount: rng.i64(1..=30),
                            },
                        };
                        let hold = ledger
                            .settle(&job, settlement, b"done")
                            .await
                            .unwrap_or_else(|e| panic!("settle {job}: {e}"));
                        seen.settled += 1;
                        if let Some(hold) = &hold {
                            seen.record(hold);
                        }
                    }
                    70..=79 => {
                        seen.expired += ledger.expire_overdue().await.expect("expire_overdue");
                    }
                    80..=81 if matches!(role, Role::Workspaces) => {
                        let (name, _, _) = WORKSPACES[workspace];
                        raise_cap(&ledger, name, &caps[workspace], rng.i64(1..=10)).await;
                        seen.cap_raises += 1;
                    }
                    80..=84 => {
                        let amount = rng.i64(1..=20);
                        ledger
                            .grant(&account, amount, "top-up")
                            .await
                            .expect("grant");
                        seen.granted += amount;
                    }
                    _ => {
                        if let Some(b) = ledger.balance(&account).await.expect("balance") {
                            assert!(b.available >= 0 && b.held >= 0, "{b:?}");
                            assert!(b.spendable >= b.available, "{b:?}");
                            if let Some(cap) = b.parent_cap {
                                assert!(b.parent_drawn <= cap, "drew past the cap: {b:?}");
                            }
                        }
                    }
                }
            }
            seen
        });
    }

    let mut all = Seen::default();
    while let Some(seen) = tasks.join_next().await {
        let seen = seen.expect("stress task");
        granted += seen.granted;
        all.reserved += seen.reserved;
        all.insufficient += seen.insufficient;
        all.settled += seen.settled;
        all.expired += seen.expired;
        all.drew_on_parent += seen.drew_on_parent;
        all.workspace_insufficient += seen.workspace_insufficient;
        all.cap_raises += seen.cap_raises;
        for hold in seen.final_holds.values() {
            all.record(hold);
        }
    }
    // Sweep what is left of the short holds, then audit.
    tokio::time::sleep(Duration::from_millis(25)).await;
    all.expired += db.ledger.expire_overdue().await.unwrap();
    let elapsed = start.elapsed();

    let violations = db.ledger.check_invariants().await.unwrap();
    assert_eq!(violations, Vec::<String>::new());

    // Every final answer a task got is what the ledger holds now.
    for (job, hold) in &all.final_holds {
        assert_eq!(db.ledger.hold(job).await.unwrap().as_ref(), Some(hold));
    }

    let client = db.ledger.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT COALESCE(SUM(granted), 0)::bigint,
                    COALESCE(SUM(available + held + captured), 0)::bigint,
                    MIN(available), MIN(held),
                    (SELECT COUNT(*) FROM (SELECT job_id FROM ledger_entries
                     WHERE kind = 'capture' GROUP BY job_id, account HAVING COUNT(*) > 1) d),
                    (SELECT COUNT(*) FROM holds WHERE state = 'captured'),
                    (SELECT COUNT(*) FROM holds WHERE state = 'expired'),
                    (SELECT COALESCE(SUM(amount), 0)::bigint FROM ledger_entries
                     WHERE kind = 'grant'),
                    (SELECT COUNT(*) FROM holds
                     WHERE parent_amount > 0 AND parent_amount < amount),
                    (SELECT COUNT(*) FROM holds WHERE parent_captured > 0)
             FROM accounts",
            &[],
        )
        .await
        .unwrap();
    let (total, in_accounts, min_available, min_held): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let (doubles, captured, expired): (i64, i64, i64) = (row.get(4), row.get(5), row.get(6));
    let (grant_entries, split_holds, parent_captures): (i64, i64, i64) =
        (row.get(7), row.get(8), row.get(9));
    assert_eq!(total, granted, "granted credits");
    assert_eq!(
        in_accounts, granted,
        "available + held + captured, all accounts"
    );
    assert_eq!(grant_entries, granted, "grant entries");
    assert!(min_available >= 0 && min_held >= 0);
    assert_eq!(
        doubles, 0,
        "jobs with more than one capture entry on one account"
    );

    // The workspaces: within their (only ever raised) caps, and what they
    // drew is what the organisation lent: its held and captured credits are
    // its own holds' plus the parent parts of theirs (check_invariants
    // checks each account; this is the sum over the tree).
    let mut drawn_total = 0;
    for ((workspace, _, _), cap) in WORKSPACES.iter().zip(&caps) {
        let b = db.ledger.balance(workspace).await.unwrap().unwrap();
        assert_eq!(b.parent.as_deref(), Some(ORG));
        assert_eq!(b.parent_cap, *cap.lock().await, "{workspace}");
        if let Some(cap) = b.parent_cap {
            assert!(
                b.parent_drawn <= cap,
                "{workspace} drew past its cap: {b:?}"
            );
        }
        drawn_total += b.parent_drawn;
    }
    let row = client
        .query_one(
            "SELECT COALESCE(SUM(parent_amount) FILTER (WHERE state = 'held'), 0)::bigint
                  + COALESCE(SUM(parent_captured), 0)::bigint
             FROM holds WHERE parent_account = $1",
            &[&ORG],
        )
        .await
        .unwrap();
    assert_eq!(
        drawn_total,
        row.get::<_, i64>(0),
        "drawn vs lent by the org"
    );
    assert_eq!(
        expired as u64, all.expired,
        "expired holds vs sweeper counts"
    );

    // The run must actually have exercised the races it is about.
    assert!(
        all.reserved > 1_000 && all.insufficient > 0 && captured > 100 && expired > 50,
        "reserved {} ({} insufficient), captured {captured}, expired {expired}",
        all.reserved,
        all.insufficient
    );
    assert!(
        all.drew_on_parent > 40
            && split_holds > 5
            && parent_captures > 5
            && all.workspace_insufficient > 0
            && all.cap_raises > 10,
        "drew on the org {}, split holds {split_holds}, parent captures {parent_captures}, \
         workspace refusals {}, cap raises {}",
        all.drew_on_parent,
        all.workspace_insufficient,
        all.cap_raises
    );
    eprintln!(
        "stress: {OPS} ops by {TASKS} tasks in {elapsed:?}: {} reserves answered \
         with a hold ({} drawing on the org, {split_holds} split), {} refused ({} on \
         workspaces), {} settles, {captured} holds captured ({parent_captures} charging \
         the org), {expired} expired, {} cap raises",
        all.reserved,
        all.drew_on_parent,
        all.insufficient,
        all.workspace_insufficient,
        all.settled,
        all.cap_raises
    );
}

//! Many tasks, few accounts, overlapping job ids: reserves, partial and
//! over-captures, releases, short-lived holds and concurrent sweepers all
//! race, and afterwards every credit must be accounted for.
//!
//! "Never negative" during the run is enforced by the `CHECK`s on
//! `accounts` (a violating write fails the test with a database error) and
//! sampled with `balance` reads; the final audit is `check_invariants`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::TestDb;
use crate::{CreditsError, Hold, HoldState, Settlement};

const TASKS: usize = 64;
const OPS: usize = 10_000;
const ACCOUNTS: usize = 4;
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

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let ledger = db.ledger.clone();
        // OPS spread over the tasks, the remainder to the first ones.
        let ops = OPS / TASKS + usize::from(task < OPS % TASKS);
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(0x5eed + task as u64);
            let mut seen = Seen::default();
            for _ in 0..ops {
                let job = format!("job-{}", rng.u32(0..JOBS));
                let account = format!("acct-{}", rng.usize(0..ACCOUNTS));
                match rng.u32(0..100) {
                    0..=39 => {
                        let ttl = TTLS[rng.usize(0..TTLS.len())];
                        match ledger.reserve(&job, &account, rng.i64(1..=30), ttl).await {
                            Ok(hold) => {
                                seen.reserved += 1;
                                seen.record(&hold);
                            }
                            Err(CreditsError::Insufficient { .. }) => seen.insufficient += 1,
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
            "SELECT COALESCE(SUM(granted), 0)::bigint, MIN(available), MIN(held),
                    (SELECT COUNT(*) FROM (SELECT job_id FROM ledger_entries
                     WHERE kind = 'capture' GROUP BY job_id HAVING COUNT(*) > 1) d),
                    (SELECT COUNT(*) FROM holds WHERE state = 'captured'),
                    (SELECT COUNT(*) FROM holds WHERE state = 'expired')
             FROM accounts",
            &[],
        )
        .await
        .unwrap();
    let (total, min_available, min_held): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let (doubles, captured, expired): (i64, i64, i64) = (row.get(3), row.get(4), row.get(5));
    assert_eq!(total, granted, "granted credits");
    assert!(min_available >= 0 && min_held >= 0);
    assert_eq!(doubles, 0, "jobs with more than one capture entry");
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
    eprintln!(
        "stress: {OPS} ops by {TASKS} tasks in {elapsed:?}: {} reserves answered \
         with a hold, {} refused, {} settles, {captured} holds captured, {expired} expired",
        all.reserved, all.insufficient, all.settled
    );
}

//! Property test: random operation sequences applied both to the real ledger
//! (a fresh schema per case) and to a small in-memory model must give the
//! same answers, balances, holds, statements and outcomes, and leave
//! `check_invariants` empty.
//!
//! The model is deliberately naive (maps and `if`s, no SQL) so that a
//! disagreement points at the ledger, not at a second clever implementation.
//!
//! Accounts: two plain ones, an organisation `org` and two workspaces
//! `org/ws-0`, `org/ws-1`. Every case starts by granting `org` and linking
//! both workspaces to it with random caps; later `Link` operations change
//! caps (up or below what is drawn), and now and then ask for links the
//! ledger must refuse or that reshape the tree (one level only).

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::TestDb;
use crate::{Balance, CreditsError, Hold, HoldState, Ledger, Settlement};

/// Plain accounts, the organisation, its two workspaces.
const ACCOUNT_IDS: [&str; 5] = ["acct-0", "acct-1", "org", "org/ws-0", "org/ws-1"];
const ACCOUNTS: usize = ACCOUNT_IDS.len();
const ORG: usize = 2;
const WORKSPACES: [usize; 2] = [3, 4];
const JOBS: usize = 8;
/// Real PostgreSQL per case (schema, migration, drop): keep it modest.
const CASES: u32 = 24;
const MAX_OPS: usize = 40;
const LONG_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
enum Op {
    Grant {
        account: usize,
        amount: i64,
    },
    /// `expires` holds get a ttl of 0, so the next `Expire` takes them.
    Reserve {
        job: usize,
        account: usize,
        amount: i64,
        expires: bool,
    },
    Capture {
        job: usize,
        amount: i64,
    },
    Release {
        job: usize,
    },
    Expire,
    /// `Ledger::link(child, parent, cap)`.
    Link {
        child: usize,
        parent: usize,
        cap: Option<i64>,
    },
    /// The previous operation once more, as a redelivery would.
    Again,
}

/// Caps from "nothing" to more than a case ever draws, rarely negative.
fn cap() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        1 => Just(None),
        4 => (0..=80i64).prop_map(Some),
        1 => Just(Some(-1)),
    ]
}

/// Grant the organisation, link both workspaces with random caps.
fn prelude() -> impl Strategy<Value = Vec<Op>> {
    (1..=150i64, cap(), cap()).prop_map(|(amount, cap0, cap1)| {
        vec![
            Op::Grant {
                account: ORG,
                amount,
            },
            Op::Link {
                child: WORKSPACES[0],
                parent: ORG,
                cap: cap0,
            },
            Op::Link {
                child: WORKSPACES[1],
                parent: ORG,
                cap: cap1,
            },
        ]
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..ACCOUNTS, 1..=100i64).prop_map(|(account, amount)| Op::Grant { account, amount }),
        4 => (0..JOBS, 0..ACCOUNTS, 1..=60i64, any::<bool>()).prop_map(
            |(job, account, amount, expires)| Op::Reserve { job, account, amount, expires }
        ),
        // Negative, partial, exact and over-capture all occur.
        2 => (0..JOBS, -5..=70i64).prop_map(|(job, amount)| Op::Capture { job, amount }),
        1 => (0..JOBS).prop_map(|job| Op::Release { job }),
        1 => Just(Op::Expire),
        1 => Just(Op::Again),
        // Mostly cap changes of a workspace, sometimes any pair at all.
        1 => (0..WORKSPACES.len(), cap()).prop_map(|(ws, cap)| Op::Link {
            child: WORKSPACES[ws],
            parent: ORG,
            cap,
        }),
        1 => (0..ACCOUNTS, 0..ACCOUNTS, cap()).prop_map(|(child, parent, cap)| Op::Link {
            child,
            parent,
            cap,
        }),
    ]
}

fn account_id(account: usize) -> String {
    ACCOUNT_IDS[account].to_owned()
}

fn job_id(job: usize) -> String {
    format!("job-{job}")
}

/// What one operation answered, in a form both sides can produce.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Granted(i64),
    Reserved(Hold),
    Insufficient { needed: i64, available: i64 },
    Settled(Option<Hold>),
    Expired(u64),
    Linked(Balance),
    Invalid,
}

/// (job id, kind, amount, reason) of one ledger entry.
type ModelEntry = (Option<String>, &'static str, i64, Option<String>);

#[derive(Debug, Default)]
struct Model {
    /// `spendable` is not kept here; [`Model::balance`] works it out.
    balances: BTreeMap<String, Balance>,
    /// Hold, whether it expires at once, and creation order.
    holds: BTreeMap<String, (Hold, bool, usize)>,
    entries: BTreeMap<String, Vec<ModelEntry>>,
    outcomes: BTreeMap<String, Vec<u8>>,
}

fn empty_balance(account: &str) -> Balance {
    Balance {
        account: account.to_owned(),
        available: 0,
        held: 0,
        captured: 0,
        parent: None,
        parent_cap: None,
        parent_drawn: 0,
        spendable: 0,
    }
}

impl Model {
    fn entry(&mut self, account: &str, job: Option<&str>, kind: &'static str, amount: i64) {
        self.entries.entry(account.to_owned()).or_default().push((
            job.map(str::to_owned),
            kind,
            amount,
            None,
        ));
    }

    fn account(&mut self, account: &str) -> &mut Balance {
        self.balances
            .get_mut(account)
            .expect("account of a hold exists")
    }

    /// What `account` may still take from its parent.
    fn usable_from_parent(&self, account: &Balance) -> i64 {
        let Some(parent) = &account.parent else {
            return 0;
        };
        let parent_available = self.balances[parent].available;
        match account.parent_cap {
            Some(cap) if cap - account.parent_drawn < parent_available => {
                (cap - account.parent_drawn).max(0)
            }
            _ => parent_available,
        }
    }

    fn balance(&self, account: &str) -> Option<Balance> {
        let balance = self.balances.get(account)?;
        Some(Balance {
            spendable: balance.available + self.usable_from_parent(balance),
            ..balance.clone()
        })
    }

    fn apply(&mut self, op: &Op, outcome: &[u8]) -> Answer {
        match *op {
            Op::Grant { account, amount } => {
                let account = account_id(account);
                let balance = self
                    .balances
                    .entry(account.clone())
                    .or_insert_with(|| empty_balance(&account));
                balance.available += amount;
                let available = balance.available;
                self.entries.entry(account).or_default().push((
                    None,
                    "grant",
                    amount,
                    Some(String::from_utf8_lossy(outcome).into_owned()),
                ));
                Answer::Granted(available)
            }
            Op::Link { child, parent, cap } => {
                let (child, parent) = (account_id(child), account_id(parent));
                let refused = child == parent
                    || cap.is_some_and(|cap| cap < 0)
                    || self
                        .balances
                        .get(&parent)
                        .is_none_or(|p| p.parent.is_some())
                    || self
                        .balances
                        .values()
                        .any(|b| b.parent.as_deref() == Some(child.as_str()));
                if refused {
                    return Answer::Invalid;
                }
                let balance = self
                    .balances
                    .entry(child.clone())
                    .or_insert_with(|| empty_balance(&child));
                balance.parent = Some(parent);
                balance.parent_cap = cap;
                Answer::Linked(self.balance(&child).expect("just linked"))
            }
            Op::Reserve {
                job,
                account,
                amount,
                expires,
            } => {
                let (job, account) = (job_id(job), account_id(account));
                if let Some((hold, _, _)) = self.holds.get(&job) {
                    return Answer::Reserved(hold.clone());
                }
                let Some(balance) = self.balances.get(&account) else {
                    return Answer::Insufficient {
                        needed: amount,
                        available: 0,
                    };
                };
                let (own, parent_amount) = if balance.available >= amount {
                    (amount, 0)
                } else if balance.available + self.usable_from_parent(balance) >= amount {
                    (balance.available, amount - balance.available)
                } else {
                    return Answer::Insufficient {
                        needed: amount,
                        available: balance.available + self.usable_from_parent(balance),
                    };
                };
                let parent = (parent_amount > 0)
                    .then(|| balance.parent.clone())
                    .flatten();
                let balance = self.account(&account);
                balance.available -= own;
                balance.held += own;
                balance.parent_drawn += parent_amount;
                if own > 0 {
                    self.entry(&account, Some(&job), "hold", own);
                }
                if let Some(parent) = &parent {
                    let balance = self.account(parent);
                    balance.available -= parent_amount;
                    balance.held += parent_amount;
                    self.entry(parent, Some(&job), "hold", parent_amount);
                }
                let hold = Hold {
                    job_id: job.clone(),
                    account: account.clone(),
                    amount,
                    state: HoldState::Held,
                    captured: 0,
                    released: 0,
                    parent_account: parent,
                    parent_amount,
                    parent_captured: 0,
                    parent_released: 0,
                };
                let order = self.holds.len();
                self.holds
                    .insert(job.clone(), (hold.clone(), expires, order));
                Answer::Reserved(hold)
            }
            Op::Capture { job, .. } | Op::Release { job } => {
                let job = job_id(job);
                self.outcomes
                    .entry(job.clone())
                    .or_insert_with(|| outcome.to_vec());
                let Some((hold, _, _)) = self.holds.get_mut(&job) else {
                    return Answer::Settled(None);
                };
                if hold.state != HoldState::Held {
                    return Answer::Settled(Some(hold.clone()));
                }
                let (state, captured) = match *op {
                    Op::Capture { amount, .. } => {
                        (HoldState::Captured, amount.clamp(0, hold.amount))
                    }
                    _ => (HoldState::Released, 0),
                };
                let own = hold.amount - hold.parent_amount;
                let own_captured = if captured < own { captured } else { own };
                hold.state = state;
                hold.captured = captured;
                hold.released = hold.amount - captured;
                hold.parent_captured = captured - own_captured;
                hold.parent_released = hold.parent_amount - hold.parent_captured;
                let hold = hold.clone();
                let balance = self.account(&hold.account);
                balance.held -= own;
                balance.captured += own_captured;
                balance.available += own - own_captured;
                balance.parent_drawn -= hold.parent_released;
                if own_captured > 0 {
                    self.entry(&hold.account, Some(&job), "capture", own_captured);
                }
                if own - own_captured > 0 {
                    self.entry(&hold.account, Some(&job), "release", own - own_captured);
                }
                if let Some(parent) = &hold.parent_account {
                    let balance = self.account(parent);
                    balance.held -= hold.parent_amount;
                    balance.captured += hold.parent_captured;
                    balance.available += hold.parent_released;
                    if hold.parent_captured > 0 {
                        self.entry(parent, Some(&job), "capture", hold.parent_captured);
                    }
                    if hold.parent_released > 0 {
                        self.entry(parent, Some(&job), "release", hold.parent_released);
                    }
                }
                Answer::Settled(Some(hold))
            }
            Op::Expire => {
                // The sweeper writes entries in expiry order, which for ttl 0
                // is creation order; a hold's own part before its parent's.
                let mut due: Vec<(usize, String)> = self
                    .holds
                    .iter()
                    .filter(|(_, (hold, expires, _))| *expires && hold.state == HoldState::Held)
                    .map(|(job, (_, _, order))| (*order, job.clone()))
                    .collect();
                due.sort();
                for (_, job) in &due {
                    let (hold, _, _) = self.holds.get_mut(job).expect("listed above");
                    hold.state = HoldState::Expired;
                    hold.released = hold.amount;
                    hold.parent_released = hold.parent_amount;
                    let hold = hold.clone();
                    let own = hold.amount - hold.parent_amount;
                    let balance = self.account(&hold.account);
                    balance.held -= own;
                    balance.available += own;
                    balance.parent_drawn -= hold.parent_amount;
                    if own > 0 {
                        self.entry(&hold.account, Some(job), "expire", own);
                    }
                    if let Some(parent) = &hold.parent_account {
                        let balance = self.account(parent);
                        balance.held -= hold.parent_amount;
                        balance.available += hold.parent_amount;
                        self.entry(parent, Some(job), "expire", hold.parent_amount);
                    }
                }
                Answer::Expired(due.len() as u64)
            }
            Op::Again => unreachable!("replaced by the previous operation"),
        }
    }
}

fn fail(what: &str, err: CreditsError) -> TestCaseError {
    TestCaseError::fail(format!("{what}: {err}"))
}

async fn apply(ledger: &Ledger, op: &Op, outcome: &[u8]) -> Result<Answer, TestCaseError> {
    let answer = match *op {
        Op::Grant { account, amount } => {
            let reason = String::from_utf8_lossy(outcome);
            Answer::Granted(
                ledger
                    .grant(&account_id(account), amount, &reason)
                    .await
                    .map_err(|e| fail("grant", e))?,
            )
        }
        Op::Reserve {
            job,
            account,
            amount,
            expires,
        } => {
            let ttl = if expires { Duration::ZERO } else { LONG_TTL };
            match ledger
                .reserve(&job_id(job), &account_id(account), amount, ttl)
                .await
            {
                Ok(hold) => Answer::Reserved(hold),
                Err(CreditsError::Insufficient {
                    needed, available, ..
                }) => Answer::Insufficient { needed, available },
                Err(e) => return Err(fail("reserve", e)),
            }
        }
        Op::Capture { job, amount } => Answer::Settled(
            ledger
                .settle(&job_id(job), Settlement::Capture { amount }, outcome)
                .await
                .map_err(|e| fail("capture", e))?,
        ),
        Op::Release { job } => Answer::Settled(
            ledger
                .settle(&job_id(job), Settlement::Release, outcome)
                .await
                .map_err(|e| fail("release", e))?,
        ),
        Op::Expire => Answer::Expired(
            ledger
                .expire_overdue()
                .await
                .map_err(|e| fail("expire", e))?,
        ),
        Op::Link { child, parent, cap } => {
            match ledger
                .link(&account_id(child), &account_id(parent), cap)
                .await
            {
                Ok(balance) => Answer::Linked(balance),
                Err(CreditsError::Invalid(_)) => Answer::Invalid,
                Err(e) => return Err(fail("link", e)),
            }
        }
        Op::Again => unreachable!("replaced by the previous operation"),
    };
    Ok(answer)
}

async fn run_case(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let db = TestDb::new().await;
    let ledger = &db.ledger;
    let mut model = Model::default();
    let mut previous: Option<Op> = None;

    for (i, op) in ops.iter().enumerate() {
        let op = match op {
            Op::Again => match &previous {
                Some(previous) => previous.clone(),
                None => continue,
            },
            other => other.clone(),
        };
        // Distinct per step, so "the first outcome is kept" is checked too.
        let outcome = format!("step-{i}").into_bytes();
        let expected = model.apply(&op, &outcome);
        let actual = apply(ledger, &op, &outcome).await?;
        prop_assert_eq!(actual, expected, "step {} {:?}", i, op);
        previous = Some(op);
    }

    for account in (0..ACCOUNTS).map(account_id) {
        let balance = ledger
            .balance(&account)
            .await
            .map_err(|e| fail("balance", e))?;
        prop_assert_eq!(balance, model.balance(&account));

        // Its own holds and those drawing on it as a parent.
        let mut expected: Vec<&(Hold, bool, usize)> = model
            .holds
            .values()
            .filter(|(hold, _, _)| {
                hold.account == account || hold.parent_account.as_deref() == Some(&account)
            })
            .collect();
        expected.sort_by_key(|(_, _, order)| *order);
        let all: Vec<Hold> = expected.iter().map(|(hold, _, _)| hold.clone()).collect();
        let open: Vec<Hold> = all
            .iter()
            .filter(|hold| hold.state == HoldState::Held)
            .cloned()
            .collect();
        let holds = ledger.holds(&account, false).await;
        prop_assert_eq!(holds.map_err(|e| fail("holds", e))?, all);
        let holds = ledger.holds(&account, true).await;
        prop_assert_eq!(holds.map_err(|e| fail("open holds", e))?, open);

        let statement = ledger
            .statement(&account, 1_000)
            .await
            .map_err(|e| fail("statement", e))?;
        let entries: Vec<ModelEntry> = statement
            .iter()
            .rev()
            .map(|e| {
                let kind = ["grant", "hold", "capture", "release", "expire", "refund"]
                    .into_iter()
                    .find(|k| *k == e.kind)
                    .unwrap_or("unknown");
                (e.job_id.clone(), kind, e.amount, e.reason.clone())
            })
            .collect();
        let expected = model.entries.get(&account).cloned().unwrap_or_default();
        prop_assert_eq!(entries, expected, "statement of {}", account);
    }

    for job in (0..JOBS).map(job_id) {
        let hold = ledger.hold(&job).await.map_err(|e| fail("hold", e))?;
        prop_assert_eq!(hold.as_ref(), model.holds.get(&job).map(|(h, _, _)| h));
        let outcome = ledger.outcome(&job).await.map_err(|e| fail("outcome", e))?;
        prop_assert_eq!(outcome.as_ref(), model.outcomes.get(&job));
    }

    let violations = ledger
        .check_invariants()
        .await
        .map_err(|e| fail("check_invariants", e))?;
    prop_assert!(violations.is_empty(), "violations: {:#?}", violations);
    Ok(())
}

#[test]
fn ledger_agrees_with_a_model() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime");
    let config = Config {
        cases: CASES,
        // Every shrink step is a fresh schema; bound the time a failure costs.
        max_shrink_iters: 200,
        // Failures print the minimal sequence; no regression files in src/.
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let cases = (prelude(), proptest::collection::vec(op(), 1..=MAX_OPS));
    let result = runner.run(&cases, |(prelude, ops)| {
        runtime.block_on(run_case(prelude.into_iter().chain(ops).collect()))
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

//! The retention purge with a clock the test sets: outputs, ledger records
//! and dead letters past retention go, younger ones stay, a per-org window
//! wins, a dry run removes nothing and counts the same, open holds and the
//! books stay as they were; and `genfleet purge` refuses nonsense ages.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use genfleet_broker::{Broker, Outgoing, Selector, Topology};
use genfleet_credits::{HoldState, Ledger, Settlement};
use genfleet_storage::{InputPolicy, Store, StoreConfig, DEFAULT_INPUT_PREFIXES};
use genfleet_worker::config::{OrgRetention, RetentionSection};
use genfleet_worker::retention::{purge, PurgeOptions, PurgeOutcome, PurgeReport, Targets};
use support::*;

const DAY: Duration = Duration::from_secs(86_400);

fn unix(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs().to_string()
}

/// A job of `tenant` with every per-job row, reserved and (unless `open`)
/// settled with an outcome.
async fn job(ledger: &Ledger, job_id: &str, tenant: &str, open: bool) {
    ledger.claim(job_id, tenant).await.unwrap();
    ledger.start(job_id, tenant).await.unwrap();
    ledger
        .remember_submission(job_id, "fal", "{\"request_id\":\"r\"}")
        .await
        .unwrap();
    ledger
        .request_cancellation(job_id, tenant, "asked")
        .await
        .unwrap();
    ledger
        .reserve(job_id, tenant, 5, Duration::from_secs(3600))
        .await
        .unwrap();
    if !open {
        ledger
            .settle_outcome(
                job_id,
                Settlement::Capture { amount: 5 },
                b"{\"outputs\":[]}",
            )
            .await
            .unwrap();
    }
}

async fn dead_letter(broker: &Broker, id: &str, dead_at: Option<SystemTime>) {
    let publisher = broker.publisher().await.unwrap();
    let mut headers = vec![("x-genfleet-error".to_string(), "internal".to_string())];
    if let Some(at) = dead_at {
        headers.push(("x-genfleet-dead-at".to_string(), unix(at)));
    }
    let outgoing = Outgoing {
        message_id: Some(id.to_string()),
        headers,
        persistent: true,
        ..Default::default()
    };
    publisher
        .publish("genfleet.dlx", "cpu", b"{\"prompt\":\"p\"}", &outgoing)
        .await
        .unwrap();
    publisher.close().await;
}

/// Waits until `expected` dead letters are ready: letters a walk left
/// unacked return asynchronously when its channel closes, and a walk sees
/// only ready ones.
async fn settle_dead(broker: &Broker, expected: u32) {
    for _ in 0..100 {
        if broker.queue_depth("genfleet.dead").await.unwrap() == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("genfleet.dead never held {expected} ready letters");
}

/// The dead letters' ids, once `expected` are ready.
async fn dead_ids(broker: &Broker, expected: u32) -> Vec<String> {
    settle_dead(broker, expected).await;
    let mut ids: Vec<String> = broker
        .dead_letters(&Selector::All, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.message_id.unwrap_or_default())
        .collect();
    ids.sort();
    settle_dead(broker, expected).await;
    ids
}

/// (outcomes, provider submissions, start counts, cancel requests) of `job_id`.
async fn rows(ledger: &Ledger, job_id: &str, tenant: &str) -> (bool, bool, bool) {
    (
        ledger.outcome(job_id).await.unwrap().is_some(),
        ledger
            .recall_submission(job_id, "fal")
            .await
            .unwrap()
            .is_some(),
        ledger.cancellation(job_id, tenant).await.unwrap().is_some(),
    )
}

fn counts(report: &PurgeReport) -> (u64, u64, u64, u64, u64, usize, usize) {
    let dead = report.dead_letters.unwrap();
    (
        report.outputs_total().objects,
        report.records.outcomes,
        report.records.provider_submissions,
        report.records.job_attempts,
        report.records.job_cancellations,
        dead.purged,
        dead.undated,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_what_is_past_retention_and_nothing_else() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("retention");
    let root = dir.0.join("store");
    let ledger = Ledger::connect(PG_URL, &schema.name, 4).await.unwrap();
    ledger.migrate().await.unwrap();
    let store = Store::open_local(StoreConfig {
        root: root.clone(),
        bucket: "genfleet".into(),
        inputs: InputPolicy::new(&DEFAULT_INPUT_PREFIXES, None).unwrap(),
    })
    .unwrap();
    let broker = Broker::connect(&vhost.url(), "retention-test")
        .await
        .unwrap();
    broker.declare(&Topology::default()).await.unwrap();

    for account in ["acme/ws", "globex/ws"] {
        ledger.grant(account, 100, "test").await.unwrap();
    }
    job(&ledger, "ACME-OLD", "acme/ws", false).await;
    job(&ledger, "ACME-OPEN", "acme/ws", true).await;
    job(&ledger, "GLOBEX-1", "globex/ws", false).await;
    for (org, job_id) in [("acme", "ACME-OLD"), ("globex", "GLOBEX-1")] {
        store
            .put_output(org, "ws", job_id, "0.png", Bytes::from_static(b"png!"))
            .await
            .unwrap();
    }
    std::fs::create_dir_all(root.join("uploads/acme/ws")).unwrap();
    std::fs::write(root.join("uploads/acme/ws/in.jpg"), b"upload").unwrap();

    // 180 days for everyone, 30 for acme, dead letters 30; the clock says
    // 100 days from now: acme's finished job is past its window, globex's
    // is not.
    let mut config = RetentionSection::default();
    config.orgs.insert(
        "acme".into(),
        OrgRetention {
            outputs_days: Some(30),
            records_days: None,
        },
    );
    let now = SystemTime::now() + DAY * 100;
    // Dead letters in the order they died: undated, two old, one young,
    // then an old one behind it (the drain stops at the young one).
    let real_now = SystemTime::now();
    let publish_dead_letters = async || {
        dead_letter(&broker, "undated", None).await;
        dead_letter(&broker, "old-1", Some(real_now - DAY * 10)).await;
        dead_letter(&broker, "old-2", Some(real_now - DAY)).await;
        dead_letter(&broker, "young", Some(real_now + DAY * 90)).await;
        dead_letter(&broker, "old-behind", Some(real_now - DAY * 10)).await;
    };
    publish_dead_letters().await;

    let targets = Targets {
        ledger: &ledger,
        store: &store,
        broker: Some(&broker),
        metrics: None,
    };
    let options = |dry_run| PurgeOptions {
        now,
        older_than: None,
        dry_run,
    };
    let expected = (1, 1, 1, 1, 1, 2, 1);

    let PurgeOutcome::Done(dry) = purge(&targets, &config, options(true)).await.unwrap() else {
        panic!("a dry run needs no lock");
    };
    assert_eq!(counts(&dry), expected, "{dry:?}");
    // Nothing went.
    assert!(root.join("acme/ws/ACME-OLD/0.png").exists());
    assert_eq!(
        rows(&ledger, "ACME-OLD", "acme/ws").await,
        (true, true, true)
    );
    settle_dead(&broker, 5).await;
    // A walk returns the letters it left to the queue, and RabbitMQ does not
    // promise their old order back: the real run starts from the same queue
    // as the dry run did, published afresh.
    assert_eq!(
        broker
            .purge_dead_letters(&Selector::All)
            .await
            .unwrap()
            .purged,
        5
    );
    settle_dead(&broker, 0).await;
    publish_dead_letters().await;

    // One purge at a time: while the lock is held elsewhere, nothing runs.
    let held = ledger.try_purge_lock().await.unwrap().unwrap();
    assert!(matches!(
        purge(&targets, &config, options(false)).await.unwrap(),
        PurgeOutcome::Busy
    ));
    held.release().await;

    let PurgeOutcome::Done(done) = purge(&targets, &config, options(false)).await.unwrap() else {
        panic!("the lock was free");
    };
    assert_eq!(counts(&done), expected, "the dry run counted what goes");
    // Outputs: acme's old one gone (its job's folder too), globex's and the
    // uploads stay.
    assert!(!root.join("acme/ws/ACME-OLD").exists());
    assert!(root.join("globex/ws/GLOBEX-1/0.png").exists());
    assert!(root.join("uploads/acme/ws/in.jpg").exists());
    // Records: acme's finished job's rows gone; its open job and globex's
    // job keep theirs; the held hold is still held; the books balance.
    assert_eq!(
        rows(&ledger, "ACME-OLD", "acme/ws").await,
        (false, false, false)
    );
    assert_eq!(
        rows(&ledger, "ACME-OPEN", "acme/ws").await,
        (false, true, true)
    );
    assert_eq!(
        rows(&ledger, "GLOBEX-1", "globex/ws").await,
        (true, true, true)
    );
    assert_eq!(
        ledger.hold("ACME-OPEN").await.unwrap().unwrap().state,
        HoldState::Held
    );
    assert_eq!(
        ledger.hold("ACME-OLD").await.unwrap().unwrap().state,
        HoldState::Captured
    );
    assert_eq!(
        ledger.check_invariants().await.unwrap(),
        Vec::<String>::new()
    );
    // Dead letters: the two old ones at the head gone; the young one and
    // the old one behind it kept (the drain stops at the young one); the
    // undated one left for the broker's policy.
    let left = dead_ids(&broker, 3).await;
    assert_eq!(left, ["old-behind", "undated", "young"]);

    // Idempotent: a second run finds nothing more.
    let PurgeOutcome::Done(again) = purge(&targets, &config, options(false)).await.unwrap() else {
        panic!("the lock was free");
    };
    let (objects, outcomes, submissions, attempts, cancels, dead, _undated) = counts(&again);
    assert_eq!(
        (objects, outcomes, submissions, attempts, cancels),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(
        dead, 0,
        "the young letter still heads the old one behind it"
    );

    // 200 days on, globex's go too; the open hold stays open.
    let later = PurgeOptions {
        now: SystemTime::now() + DAY * 200,
        older_than: None,
        dry_run: false,
    };
    let PurgeOutcome::Done(later) = purge(&targets, &config, later).await.unwrap() else {
        panic!("the lock was free");
    };
    assert_eq!(later.outputs_total().objects, 1);
    assert_eq!(later.records.outcomes, 1);
    assert!(!root.join("globex").exists());
    assert_eq!(
        ledger.hold("ACME-OPEN").await.unwrap().unwrap().state,
        HoldState::Held
    );
    assert_eq!(
        ledger.check_invariants().await.unwrap(),
        Vec::<String>::new()
    );
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_refuses_nonsense_and_a_dry_run_prints_counts() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("retention-cli");
    let root = dir.0.join("store");
    std::fs::create_dir_all(&root).unwrap();
    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &root,
            fal_base_url: "http://127.0.0.1:9",
            concurrency: 1,
            grace_seconds: 1,
            http_port: 0,
            fal_poll_ms: 50,
        },
    );
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_genfleet"))
            .arg("--config")
            .arg(&config)
            .arg("purge")
            .args(args)
            .env_remove("GENFLEET_CONFIG")
            .output()
            .unwrap()
    };
    for bad in ["0d", "180", "1.5d", "-3h", "12y"] {
        let out = run(&["--older-than", bad, "--dry-run"]);
        assert!(!out.status.success(), "{bad} was accepted");
    }
    let out = run(&["--older-than", "180d", "--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "dry run: nothing is removed",
        "outputs: would remove 0 objects, 0 bytes",
        "stored results: would remove 0",
        "dead letters: would remove 0",
    ] {
        assert!(stdout.contains(line), "{line:?} missing in:\n{stdout}");
    }
}

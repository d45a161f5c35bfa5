//! `delete_sources_after` through the real worker: a job's inputs are
//! deleted whatever way it ends (succeeded, failed after the fetch,
//! cancelled, expired), never another tenant's, and a delete the store
//! fails is recorded and retried until it succeeds.

mod support;

use std::time::{Duration, SystemTime};

use genfleet_proto::v1;
use genfleet_storage::{InputPolicy, Store, StoreConfig, DEFAULT_INPUT_PREFIXES};
use support::*;

const WS: &str = "ws";

fn upload(name: &str) -> String {
    format!("s3://genfleet/uploads/acme/{WS}/{name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_go_on_every_ending_and_failed_deletes_are_retried() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("source-deletion");
    let root = store_with_photo(&dir.0);
    let ws_dir = root.join("uploads/acme").join(WS);
    std::fs::create_dir_all(&ws_dir).unwrap();
    for name in ["ok.jpg", "cancel.jpg", "expired.jpg"] {
        std::fs::copy(root.join("uploads/photo.jpg"), ws_dir.join(name)).unwrap();
    }
    // Fetched, then refused by the upload checks: a failure after the fetch.
    std::fs::write(ws_dir.join("bad.jpg"), b"this is not an image").unwrap();
    // Another tenant's upload, named by acme's job: never deleted.
    let theirs = root.join("uploads/globex/ws/theirs.jpg");
    std::fs::create_dir_all(theirs.parent().unwrap()).unwrap();
    std::fs::copy(root.join("uploads/photo.jpg"), &theirs).unwrap();
    // A key the store cannot delete (it is a folder with a file in it: as
    // root, permissions would not stop an unlink), for a job that expires
    // without fetching it.
    let stuck = ws_dir.join("stuck.jpg");
    std::fs::create_dir_all(&stuck).unwrap();
    std::fs::write(stuck.join("inside"), b"x").unwrap();

    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &root,
            fal_base_url: "http://127.0.0.1:9",
            concurrency: 4,
            grace_seconds: 5,
            http_port: 0,
            fal_poll_ms: 50,
        },
    );
    let (conn, results) = results_queue(&vhost.url()).await;
    // The worker's own sweeper is off: this test drives the retries with a
    // clock of its own.
    let mut worker = WorkerProcess::start_with_env(
        &config,
        dir.0.join("worker.log"),
        &[("GENFLEET__RETENTION__SOURCE_RETRY_SECONDS", "0")],
    );
    let port = wait_ready(&mut worker, Duration::from_secs(60)).await;
    let ledger = genfleet_credits::Ledger::connect(PG_URL, &schema.name, 2)
        .await
        .unwrap();
    ledger
        .grant(&format!("acme/{WS}"), 100, "test")
        .await
        .unwrap();

    let job = |names: &[&str]| {
        let uris: Vec<String> = names.iter().map(|n| upload(n)).collect();
        let mut j = local_edit_job("acme", WS, &uris, 256, 1);
        j.delete_sources_after = true;
        j
    };
    let past = Some(genfleet_proto::pbjson_types::Timestamp {
        seconds: 1_577_836_800,
        nanos: 0,
    });
    let ok = job(&["ok.jpg"]);
    let bad = job(&["bad.jpg"]);
    let cancelled = job(&["cancel.jpg"]);
    let mut expired = job(&["expired.jpg"]);
    expired.deadline = past;
    let mut foreign = job(&[]);
    foreign.inputs = vec![v1::Input {
        role: v1::InputRole::Product as i32,
        uri: "s3://genfleet/uploads/globex/ws/theirs.jpg".into(),
        ..Default::default()
    }];
    let mut stuck_job = job(&["stuck.jpg"]);
    stuck_job.deadline = past;
    ledger
        .request_cancellation(&cancelled.job_id, &format!("acme/{WS}"), "user asked")
        .await
        .unwrap();

    let broker = genfleet_broker::Broker::connect(&vhost.url(), "test-publisher")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    let jobs = [&ok, &bad, &cancelled, &expired, &foreign, &stuck_job];
    for j in jobs {
        let body = genfleet_proto::encode_json(j);
        publish_job(&publisher, "cpu", &body, Some(&j.job_id)).await;
    }
    let collected = collect_results(&conn, &results, jobs.len(), Duration::from_secs(60)).await;
    let status = |j: &v1::Job| {
        let (result, _) = collected
            .results
            .get(&j.job_id)
            .unwrap_or_else(|| panic!("no result for a job:\n{}", worker.log_tail()));
        (
            v1::JobStatus::try_from(result.status).unwrap(),
            result.error.as_ref().map(|e| e.code.clone()),
        )
    };
    assert_eq!(
        status(&ok).0,
        v1::JobStatus::Succeeded,
        "ok: {:?}",
        status(&ok).1
    );
    assert_eq!(
        status(&bad).0,
        v1::JobStatus::Failed,
        "bad: {:?}",
        status(&bad).1
    );
    assert_eq!(
        status(&cancelled).0,
        v1::JobStatus::Cancelled,
        "cancelled: {:?}",
        status(&cancelled).1
    );
    assert_eq!(
        status(&expired).0,
        v1::JobStatus::Expired,
        "expired: {:?}",
        status(&expired).1
    );
    assert_eq!(
        status(&foreign).0,
        v1::JobStatus::Failed,
        "foreign: {:?}",
        status(&foreign).1
    );
    assert_eq!(
        status(&stuck_job).0,
        v1::JobStatus::Expired,
        "stuck_job: {:?}",
        status(&stuck_job).1
    );

    // Each ending deleted its source; the other tenant's file stays.
    for name in ["ok.jpg", "bad.jpg", "cancel.jpg", "expired.jpg"] {
        assert!(!ws_dir.join(name).exists(), "{name} was not deleted");
    }
    assert!(theirs.exists(), "another tenant's upload was deleted");
    assert!(root.join("uploads/photo.jpg").exists());

    // The failed delete is recorded, not only logged.
    until(
        "the failed delete to be recorded",
        Duration::from_secs(10),
        async || ledger.pending_source_deletions().await.unwrap().failing == 1,
    )
    .await;
    let pending = ledger.pending_source_deletions().await.unwrap();
    assert_eq!(pending.pending, 1, "only the stuck source waits");
    let outcome = |o: &str| format!("genfleet_source_deletions_total{{outcome=\"{o}\"}}");
    assert_eq!(metric(port, &outcome("deleted")).await, 4.0);
    assert_eq!(metric(port, &outcome("failed")).await, 1.0);
    assert_eq!(metric(port, &outcome("refused")).await, 1.0);

    // The store works again: the key is a plain file now.
    std::fs::remove_dir_all(&stuck).unwrap();
    std::fs::write(&stuck, b"restored").unwrap();
    let store = Store::open_local(StoreConfig {
        root: root.clone(),
        bucket: "genfleet".into(),
        inputs: InputPolicy::new(&DEFAULT_INPUT_PREFIXES, None).unwrap(),
    })
    .unwrap();
    // Not due yet: the retry waits for its backoff.
    let now = SystemTime::now();
    let early = genfleet_worker::retention::retry_source_deletions(&ledger, &store, None, now)
        .await
        .unwrap();
    assert_eq!((early.deleted, early.pending.pending), (0, 1));
    assert!(stuck.exists());
    // An hour later it is retried, and gone.
    let later = now + Duration::from_secs(3600);
    let sweep = genfleet_worker::retention::retry_source_deletions(&ledger, &store, None, later)
        .await
        .unwrap();
    assert_eq!((sweep.deleted, sweep.failed), (1, 0));
    assert_eq!(sweep.pending.pending, 0);
    assert!(!stuck.exists(), "the retried delete did not happen");
    assert!(theirs.exists());

    // A redelivered copy of a settled job republishes its result, and its
    // source (already gone) is no trouble.
    let body = genfleet_proto::encode_json(&ok);
    publish_job(&publisher, "cpu", &body, Some(&ok.job_id)).await;
    let again = collect_results(&conn, &results, 1, Duration::from_secs(30)).await;
    assert_eq!(again.results.len(), 1);
    assert_eq!(ledger.pending_source_deletions().await.unwrap().pending, 0);

    publisher.close().await;
    broker.close().await;
    worker.terminate(Duration::from_secs(10));
}

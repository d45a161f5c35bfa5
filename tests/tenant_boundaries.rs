//! Cross-tenant attempts through the real worker binary, broker, ledger and
//! store: one tenant (`acme/shop-1`) publishes jobs that name another
//! tenant's (`globex/vault`) files, account, job ids and cancel requests.
//! Each is refused with its code, and everything of the other tenant is
//! checked before and after: its files, its balance, its stored result, its
//! open hold, its parked provider request, its cancel state.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt as _;
use genfleet_credits::{HoldState, Ledger};
use genfleet_proto::v1;
use genfleet_providers::fake_fal::FakeFal;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use support::*;

const VICTIM_ORG: &str = "globex";
const VICTIM_WS: &str = "vault";
const VICTIM: &str = "globex/vault";
const ATTACKER: &str = "acme/shop-1";

fn tenant(org: &str, workspace: &str) -> Option<v1::Tenant> {
    Some(v1::Tenant {
        org: org.into(),
        workspace: workspace.into(),
        user: "u".into(),
    })
}

/// A local batch edit (resize to 256 px) of `org/workspace` on `uris`.
fn edit_job(org: &str, workspace: &str, uris: &[String], credits: i64) -> v1::Job {
    local_edit_job(org, workspace, uris, 256, credits)
}

/// Every result published, in arrival order, with its routing key: two
/// results may share a job id here (the victim's and the refused copy).
async fn collect_all(
    conn: &lapin::Connection,
    queue: &str,
    expected: usize,
    within: Duration,
) -> Vec<(v1::JobResult, String)> {
    let channel = conn.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "tenant-collector".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while all.len() < expected {
        let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, consumer.next()).await
        else {
            break;
        };
        let result: v1::JobResult = serde_json::from_slice(&delivery.data).unwrap();
        all.push((result, delivery.routing_key.as_str().to_string()));
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    channel.close(200, "done".into()).await.ok();
    all
}

/// A `CancelJob` for `job_id` from `(org, workspace)`, as a backend
/// publishes it.
async fn publish_cancel(
    publisher: &genfleet_broker::Publisher,
    job_id: &str,
    (org, workspace): (&str, &str),
    reason: &str,
) {
    let cancel = serde_json::json!({
        "jobId": job_id,
        "tenant": {"org": org, "workspace": workspace},
        "reason": reason,
    });
    publisher
        .publish(
            genfleet_broker::CANCEL_EXCHANGE,
            "",
            cancel.to_string().as_bytes(),
            &genfleet_broker::Outgoing::default(),
        )
        .await
        .unwrap();
}

/// What the victim owns, read straight from the ledger and the disk.
#[derive(Debug, PartialEq)]
struct VictimState {
    balance: (i64, i64, i64),
    settled_outcome: Option<Vec<u8>>,
    held: Option<(HoldState, i64)>,
    parked_submission: Option<String>,
    cancelled: Option<String>,
    files: BTreeMap<String, bool>,
}

async fn victim_state(
    ledger: &Ledger,
    root: &Path,
    ids: &VictimIds,
    files: &[String],
) -> VictimState {
    let balance = ledger.balance(VICTIM).await.unwrap().unwrap();
    let held = ledger
        .hold(&ids.held)
        .await
        .unwrap()
        .map(|h| (h.state, h.amount));
    VictimState {
        balance: (balance.available, balance.held, balance.captured),
        settled_outcome: ledger.outcome(&ids.settled).await.unwrap(),
        held,
        parked_submission: ledger.recall_submission(&ids.parked, "fal").await.unwrap(),
        cancelled: ledger.cancellation(&ids.parked, VICTIM).await.unwrap(),
        files: files
            .iter()
            .map(|f| (f.clone(), root.join(f).exists()))
            .collect(),
    }
}

struct VictimIds {
    settled: String,
    held: String,
    parked: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_files_credits_and_jobs_cannot_be_reached() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-tenants");
    let root = store_with_photo(&dir.0);
    photo_for(&root, "shop-1");
    let victim_uploads = root.join("uploads").join(VICTIM_ORG).join(VICTIM_WS);
    std::fs::create_dir_all(&victim_uploads).unwrap();
    std::fs::copy(
        root.join("uploads/photo.jpg"),
        victim_uploads.join("secret.jpg"),
    )
    .unwrap();
    std::fs::copy(
        root.join("uploads/photo.jpg"),
        victim_uploads.join("photo.jpg"),
    )
    .unwrap();
    // A file the worker can read but that lies outside the store.
    std::fs::write(
        dir.0.join("outside.jpg"),
        std::fs::read(root.join("uploads/photo.jpg")).unwrap(),
    )
    .unwrap();

    let fake = FakeFal::start().await.unwrap();
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    ledger.grant(VICTIM, 1_000, "victim").await.unwrap();
    ledger.grant(ATTACKER, 1_000, "attacker").await.unwrap();
    let (conn, queue) = results_queue(&vhost.url()).await;

    let fal_url = fake.base_url.to_string();
    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &root,
            fal_base_url: &fal_url,
            concurrency: 4,
            grace_seconds: 5,
            http_port: 0,
            fal_poll_ms: 200,
        },
    );
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str("\n[providers.park]\npoll_delays_seconds = [5]\nmax_wait_seconds = 300\n");
    std::fs::write(&config, toml).unwrap();
    let mut worker = WorkerProcess::start(&config, dir.0.join("worker.log"));
    let port = wait_ready(&mut worker, Duration::from_secs(60)).await;
    let broker = genfleet_broker::Broker::connect(&vhost.url(), "tenant-test")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    let publish = async |job: &v1::Job, class: &str| {
        publish(&publisher, class, job).await;
    };

    // The victim's jobs: one settled (outputs stored), one parked at fal
    // (a render that never ends), and one hold left open (its worker died
    // after reserving: the id is claimed, the credits held).
    let settled = edit_job(
        VICTIM_ORG,
        VICTIM_WS,
        &[format!("s3://genfleet/uploads/{VICTIM}/photo.jpg")],
        10,
    );
    publish(&settled, "cpu").await;
    let mut parked = fal_product_job("x", "test/stuck", "a vase turning", 7, v1::Priority::Normal);
    parked.tenant = tenant(VICTIM_ORG, VICTIM_WS);
    parked.kind = v1::JobKind::ImageToVideo as i32;
    parked.inputs[0].uri = format!("s3://genfleet/uploads/{VICTIM}/photo.jpg");
    publish(&parked, "remote").await;
    let held_id = new_job_id();
    assert!(matches!(
        ledger.claim(&held_id, VICTIM).await.unwrap(),
        genfleet_credits::Claim::Own { .. }
    ));
    ledger
        .reserve(&held_id, VICTIM, 25, Duration::from_secs(3600))
        .await
        .unwrap();
    let victim_results = collect_all(&conn, &queue, 1, Duration::from_secs(60)).await;
    assert_eq!(victim_results.len(), 1, "the victim's settled job");
    let settled_result = &victim_results[0].0;
    assert_eq!(settled_result.status, v1::JobStatus::Succeeded as i32);
    let output_key = settled_result.outputs[0]
        .uri
        .strip_prefix("s3://genfleet/")
        .unwrap()
        .to_string();
    until(
        "the victim's video job to park",
        Duration::from_secs(30),
        async || metric(port, "genfleet_jobs_parked_total{provider=\"fal\"}").await >= 1.0,
    )
    .await;
    let submissions_before = fake.submissions();
    assert_eq!(submissions_before, 1);

    let ids = VictimIds {
        settled: settled.job_id.clone(),
        held: held_id.clone(),
        parked: parked.job_id.clone(),
    };
    let files = vec![
        format!("uploads/{VICTIM}/secret.jpg"),
        format!("uploads/{VICTIM}/photo.jpg"),
        output_key.clone(),
    ];
    let before = victim_state(&ledger, &root, &ids, &files).await;
    assert!(before.files.values().all(|exists| *exists), "{before:?}");
    assert_eq!(before.held, Some((HoldState::Held, 25)));
    assert!(before.parked_submission.is_some());
    assert!(before.settled_outcome.is_some());

    // The attempts, each with the code it must get and words its message
    // must contain.
    let own = format!("s3://genfleet/uploads/{ATTACKER}/photo.jpg");
    let mut attempts: Vec<(&str, v1::Job, Option<&str>, &str, &str)> = Vec::new();
    let mut add = |name, job: v1::Job, reply_to: Option<&'static str>, code, words| {
        attempts.push((name, job, reply_to, code, words));
    };
    let mut j = edit_job(
        "acme",
        "shop-1",
        &[format!("s3://genfleet/uploads/{VICTIM}/secret.jpg")],
        5,
    );
    j.delete_sources_after = true;
    add(
        "foreign input key",
        j,
        None,
        "invalid_input",
        "tenant prefixes",
    );
    let mut j = edit_job(
        "acme",
        "shop-1",
        &[format!("s3://genfleet/{output_key}")],
        5,
    );
    j.delete_sources_after = true;
    add(
        "foreign output key",
        j,
        None,
        "invalid_input",
        "tenant prefixes",
    );
    let j = edit_job(
        "acme",
        "shop-1",
        &[format!(
            "s3://genfleet/uploads/{ATTACKER}/../../{VICTIM}/secret.jpg"
        )],
        5,
    );
    add(
        "traversal out of the prefix",
        j,
        None,
        "invalid_input",
        "not a valid object key",
    );
    let j = edit_job(
        "acme",
        "shop-1",
        &[format!("file://{}", dir.0.join("outside.jpg").display())],
        5,
    );
    add("file:// input", j, None, "invalid_input", "file://");
    let mut j = edit_job("acme", "shop-1", std::slice::from_ref(&own), 5);
    j.credits = Some(v1::CreditRequest {
        account: VICTIM.into(),
        amount: 5,
        ..Default::default()
    });
    add(
        "foreign account",
        j,
        None,
        "invalid_input",
        "credits.account",
    );
    let mut j = edit_job("acme", "shop-1", std::slice::from_ref(&own), 5);
    j.job_id = ids.settled.clone();
    add(
        "foreign job id (settled)",
        j,
        None,
        "invalid_input",
        "already used",
    );
    let mut j = edit_job("acme", "shop-1", std::slice::from_ref(&own), 5);
    j.job_id = ids.settled.to_ascii_lowercase();
    add(
        "foreign job id in another case",
        j,
        None,
        "invalid_input",
        "already used",
    );
    let mut j = edit_job("acme", "shop-1", std::slice::from_ref(&own), 5);
    j.job_id = ids.held.clone();
    add(
        "foreign job id (held)",
        j,
        None,
        "invalid_input",
        "already used",
    );
    let mut j = fal_product_job("shop-1", "test/ok", "a vase", 5, v1::Priority::Normal);
    j.kind = v1::JobKind::ImageToVideo as i32;
    j.job_id = ids.parked.clone();
    add(
        "foreign job id (parked)",
        j,
        None,
        "invalid_input",
        "already used",
    );
    let mut j = edit_job("uploads", "globex", std::slice::from_ref(&own), 0);
    j.inputs[0].uri = format!("s3://genfleet/uploads/globex/{VICTIM_WS}/secret.jpg");
    add(
        "org named like a reserved prefix",
        j,
        None,
        "invalid_input",
        "reserved",
    );
    let j = edit_job("acme", "shop-1", std::slice::from_ref(&own), 5);
    add(
        "reply_to into the fleet's job queue",
        j,
        Some("genfleet.jobs.cpu"),
        "invalid_input",
        "reply_to",
    );

    for (_, job, reply_to, _, _) in &attempts {
        let class = if job.kind == v1::JobKind::ImageToVideo as i32 {
            "remote"
        } else {
            "cpu"
        };
        let outgoing = genfleet_broker::Outgoing {
            content_type: Some("application/json".into()),
            message_id: Some(job.job_id.clone()),
            reply_to: reply_to.map(str::to_string),
            persistent: true,
            ..Default::default()
        };
        publisher
            .publish(
                genfleet_broker::JOBS_EXCHANGE,
                class,
                &genfleet_proto::encode_json(job),
                &outgoing,
            )
            .await
            .unwrap();
    }
    // Cancel requests from the attacker for the victim's parked and held
    // jobs: dead-lettered, nothing recorded, no provider cancel.
    for job_id in [&ids.parked, &ids.held] {
        publish_cancel(&publisher, job_id, ("acme", "shop-1"), "not yours").await;
    }

    let results = collect_all(&conn, &queue, attempts.len(), Duration::from_secs(60)).await;
    for (name, job, _, code, words) in &attempts {
        let tenant = job.tenant.as_ref().unwrap();
        let prefix = format!("result.{}.{}.", tenant.org, tenant.workspace);
        let found: Vec<&(v1::JobResult, String)> = results
            .iter()
            .filter(|(r, key)| r.job_id == job.job_id && key.starts_with(&prefix))
            .collect();
        assert_eq!(found.len(), 1, "{name}: one result, got {results:?}");
        let (result, key) = found[0];
        let error = result
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: {result:?}"));
        assert_eq!(error.code, *code, "{name}: {}", error.message);
        assert!(error.message.contains(words), "{name}: {}", error.message);
        assert!(key.ends_with(".failed"), "{name}: {key}");
        assert!(
            result.outputs.is_empty(),
            "{name}: no outputs, no signed URLs"
        );
        assert_eq!(result.tenant.as_ref(), Some(tenant), "{name}");
        // Nothing in a refusal speaks of the victim's money.
        assert!(
            !error.message.contains("1000") && !error.message.contains("990"),
            "{name}"
        );
        assert!(
            !error.message.contains(VICTIM_WS) || *name == "org named like a reserved prefix",
            "{name}: {}",
            error.message
        );
    }
    assert_eq!(results.len(), attempts.len(), "{results:?}");
    let dead = drain_dead_letters(&conn).await;
    let foreign_cancels = dead
        .iter()
        .filter(|(code, reason)| code == "invalid_input" && reason.contains("another tenant"))
        .count();
    assert_eq!(foreign_cancels, 2, "{dead:?}");
    until(
        "the cancels to be handled",
        Duration::from_secs(10),
        async || metric(port, "genfleet_cancel_requests_total{outcome=\"foreign\"}").await >= 2.0,
    )
    .await;

    // The victim after: exactly as before, and no provider call was made
    // (no submit on its parked id, no cancel).
    let after = victim_state(&ledger, &root, &ids, &files).await;
    assert_eq!(after, before);
    assert_eq!(fake.submissions(), submissions_before);
    assert_eq!(fake.cancellations(), 0);
    // Nothing landed in the fleet's job queue through reply_to.
    assert_eq!(
        queued_in_lanes(&broker, genfleet_broker::JobClass::Cpu).await,
        0
    );
    // The attacker was charged nothing for its refused jobs.
    let attacker = ledger.balance(ATTACKER).await.unwrap().unwrap();
    assert_eq!((attacker.available, attacker.held), (1_000, 0));
    assert!(ledger.check_invariants().await.unwrap().is_empty());

    // The victim's own cancel still reaches its parked job.
    publish_cancel(
        &publisher,
        &ids.parked,
        (VICTIM_ORG, VICTIM_WS),
        "changed my mind",
    )
    .await;
    until(
        "the victim's own cancel",
        Duration::from_secs(10),
        async || fake.cancellations() >= 1,
    )
    .await;
    broker.close().await;
    worker.terminate(Duration::from_secs(10));
}

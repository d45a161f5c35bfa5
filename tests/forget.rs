//! `genfleet forget` against the real services: the real worker produces
//! outputs and stored outcomes for two orgs (and two workspaces of one),
//! dead letters are published the way the worker publishes them, and the
//! real binary forgets one workspace, then one job of another.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use genfleet_broker::{Broker, Outgoing, Selector};
use genfleet_credits::Ledger;
use genfleet_proto::v1;
use support::*;

/// Runs `genfleet --config CONFIG forget ARGS` with the spool folder the
/// worker used; the transcript shows with `--no-capture`.
fn forget(config: &Path, spool: &Path, args: &[&str]) -> BTreeMap<String, u64> {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_genfleet"))
        .args(["--config", &config.display().to_string(), "forget"])
        .args(args)
        .env_remove("GENFLEET_CONFIG")
        .env("GENFLEET__WORKER__SPOOL_DIR", spool)
        .env("RUST_LOG", "warn")
        .output()
        .expect("genfleet runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    eprintln!(
        "$ genfleet forget {}\n{stdout}{}(exit {})\n",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr),
        output.status.code().unwrap_or(-1)
    );
    assert!(output.status.success(), "forget failed");
    // Never the contents: no key, URI or prompt is printed.
    assert!(!stdout.contains("s3://") && !stdout.contains(".jpg") && !stdout.contains("/ws1/"));
    stdout
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (name, n) = (parts.next()?, parts.next()?.parse().ok()?);
            parts.next().is_none().then(|| (name.to_string(), n))
        })
        .collect()
}

/// Every file under `dir` (relative), sorted; none when it does not exist.
fn files_under(root: &Path, dir: &str) -> Vec<String> {
    fn walk(root: &Path, at: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(at) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &root.join(dir), &mut out);
    out.sort();
    out
}

fn psql(schema: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([PG_URL, "-At", "-c", sql])
        .env("PGOPTIONS", format!("-c search_path={schema}"))
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Publishes a dead letter as the worker does (DLX, job routing key,
/// message id, error headers).
async fn dead_letter(broker: &Broker, message_id: &str, body: &[u8]) {
    let publisher = broker.publisher().await.expect("publisher");
    let outgoing = Outgoing {
        content_type: Some("application/json".into()),
        message_id: Some(message_id.to_string()),
        persistent: true,
        headers: vec![
            ("x-genfleet-error".into(), "internal".into()),
            ("x-genfleet-reason".into(), "delivery_limit".into()),
        ],
        ..Default::default()
    };
    publisher
        .publish("genfleet.dlx", "cpu", body, &outgoing)
        .await
        .expect("dead letter published");
    publisher.close().await;
}

async fn dead_letter_ids(broker: &Broker) -> Vec<String> {
    // Messages a walk hands back become ready again asynchronously.
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker
        .dead_letters(&Selector::All, 100)
        .await
        .expect("dead letters")
        .into_iter()
        .map(|d| d.message_id.unwrap_or_default())
        .collect()
}

fn job(org: &str, workspace: &str, user: &str, root: &Path) -> v1::Job {
    let folder = root.join("uploads").join(org).join(workspace);
    std::fs::create_dir_all(&folder).expect("upload folder");
    std::fs::copy(root.join("uploads/photo.jpg"), folder.join("photo.jpg")).expect("upload");
    let uri = format!("s3://genfleet/uploads/{org}/{workspace}/photo.jpg");
    let mut job = local_edit_job(org, workspace, &[uri], 256, 5);
    if let Some(tenant) = job.tenant.as_mut() {
        tenant.user = user.into();
    }
    job
}

/// A process id that is not running: a dead worker's spool folder.
fn dead_pid() -> u32 {
    (3_000_000..4_000_000)
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .expect("a free pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_a_workspace_then_one_job() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-forget");
    let root = store_with_photo(&dir.0);
    let spool = dir.0.join("spool");
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    // ws1 draws on its org: forgetting ws1 moves the child, not the parent.
    ledger.grant("acme", 100, "org credits").await.unwrap();
    ledger.grant("acme/ws1", 3, "for Jane Doe").await.unwrap();
    ledger.link("acme/ws1", "acme", None).await.unwrap();
    ledger.grant("acme/ws2", 100, "ws2").await.unwrap();
    ledger.grant("globex/ws1", 100, "globex").await.unwrap();

    let jobs = [
        job("acme", "ws1", "jane", &root),
        job("acme", "ws1", "jane", &root),
        job("acme", "ws2", "alice", &root),
        job("acme", "ws2", "bob", &root),
        job("globex", "ws1", "jane", &root),
    ];
    // An upload no job used: still the workspace's.
    std::fs::copy(
        root.join("uploads/photo.jpg"),
        root.join("uploads/acme/ws1/unused.jpg"),
    )
    .unwrap();

    let (conn, queue) = results_queue(&vhost.url()).await;
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
            fal_poll_ms: 200,
        },
    );
    let spool_env = spool.display().to_string();
    let mut worker = WorkerProcess::start_with_env(
        &config,
        dir.0.join("worker.log"),
        &[("GENFLEET__WORKER__SPOOL_DIR", spool_env.as_str())],
    );
    wait_ready(&mut worker, Duration::from_secs(60)).await;
    let broker = Broker::connect(&vhost.url(), "forget-test").await.unwrap();
    let publisher = broker.publisher().await.unwrap();
    for job in &jobs {
        let body = genfleet_proto::encode_json(job);
        publish_job(&publisher, "cpu", &body, Some(&job.job_id)).await;
    }
    publisher.close().await;
    let collected = collect_results(&conn, &queue, jobs.len(), Duration::from_secs(90)).await;
    assert_eq!(collected.results.len(), jobs.len(), "{}", worker.log_tail());
    for (result, _) in collected.results.values() {
        assert_eq!(
            result.status,
            v1::JobStatus::Succeeded as i32,
            "{result:?}\n{}",
            worker.log_tail()
        );
    }
    assert!(worker.terminate(Duration::from_secs(30)).is_some());

    // Dead letters of every tenant, interleaved, and one that is no job.
    let letters = [
        job("acme", "ws1", "jane", &root),
        job("globex", "ws1", "jane", &root),
        job("acme", "ws2", "alice", &root),
        job("acme", "ws1", "joe", &root),
    ];
    let order = [0usize, 1, 2, 3];
    for i in order {
        let l = &letters[i];
        dead_letter(&broker, &l.job_id, &genfleet_proto::encode_json(l)).await;
        if i == 2 {
            dead_letter(&broker, "not-a-job", b"{\"jobId\": 7, \"tenant\": ").await;
        }
    }
    let kept_letters = vec![
        letters[1].job_id.clone(),
        letters[2].job_id.clone(),
        "not-a-job".to_string(),
    ];
    // A dead worker's spool folder (the worker removes those when it
    // starts, so it is planted after): anyone's files, never attributable.
    let stale = spool.join(format!("run-{}-1", dead_pid()));
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("blob-left"), b"image bytes").unwrap();

    let ws1_outputs = files_under(&root, "acme/ws1");
    assert_eq!(ws1_outputs.len(), 2, "one output per job: {ws1_outputs:?}");
    let others_before = [
        files_under(&root, "acme/ws2"),
        files_under(&root, "uploads/acme/ws2"),
        files_under(&root, "globex"),
        files_under(&root, "uploads/globex"),
    ];
    let ws1_before = ledger.balance("acme/ws1").await.unwrap().unwrap();
    let acme_before = ledger.balance("acme").await.unwrap().unwrap();
    let ws1_entries: u64 = psql(
        &schema.name,
        "SELECT count(*) FROM ledger_entries WHERE account = 'acme/ws1'",
    )
    .parse()
    .unwrap();

    // The dry run removes nothing and says what the run will remove.
    let dry = forget(
        &config,
        &spool,
        &["--org", "acme", "--workspace", "ws1", "--dry-run"],
    );
    let expected: BTreeMap<String, u64> = [
        ("jobs", 2),
        ("outputs", 2),
        ("uploads", 2),
        ("dead_letters", 2),
        ("spool_files", 1),
        ("outcomes", 2),
        ("provider_submissions", 0),
        ("attempts", 2),
        ("cancellations", 0),
        ("pending_source_deletions", 0),
        ("job_owners_anonymised", 2),
        ("accounts_anonymised", 1),
        ("holds_anonymised", 2),
        ("ledger_entries_anonymised", ws1_entries),
        ("total", 0),
        ("dead_letters_unattributable", 1),
        ("spool_files_in_use", 0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let total: u64 = expected
        .iter()
        .filter(|(k, _)| {
            ![
                "jobs",
                "total",
                "dead_letters_unattributable",
                "spool_files_in_use",
            ]
            .contains(&k.as_str())
        })
        .map(|(_, v)| v)
        .sum();
    let mut expected = expected;
    expected.insert("total".into(), total);
    assert_eq!(dry, expected);
    assert_eq!(files_under(&root, "acme/ws1"), ws1_outputs);
    assert!(stale.join("blob-left").exists());
    assert!(ledger.outcome(&jobs[0].job_id).await.unwrap().is_some());
    assert_eq!(dead_letter_ids(&broker).await.len(), 5);
    assert!(ledger.balance("acme/ws1").await.unwrap().is_some());

    // The run removes what the dry run said.
    let run = forget(&config, &spool, &["--org", "acme", "--workspace", "ws1"]);
    assert_eq!(run, expected);
    assert!(files_under(&root, "acme/ws1").is_empty());
    assert!(files_under(&root, "uploads/acme/ws1").is_empty());
    assert!(!root.join("acme/ws1").exists() && !root.join("uploads/acme/ws1").exists());
    assert!(!stale.exists());
    let others_after = [
        files_under(&root, "acme/ws2"),
        files_under(&root, "uploads/acme/ws2"),
        files_under(&root, "globex"),
        files_under(&root, "uploads/globex"),
    ];
    assert_eq!(others_after, others_before);
    for job in &jobs[..2] {
        assert!(ledger.outcome(&job.job_id).await.unwrap().is_none());
        assert!(ledger
            .job_owner(&job.job_id)
            .await
            .unwrap()
            .is_some_and(|o| o.starts_with(genfleet_credits::FORGOTTEN_PREFIX)));
    }
    for job in &jobs[2..] {
        assert!(ledger.outcome(&job.job_id).await.unwrap().is_some());
    }
    assert_eq!(dead_letter_ids(&broker).await, kept_letters);
    assert_eq!(
        ledger.check_invariants().await.unwrap(),
        Vec::<String>::new()
    );
    assert!(ledger.balance("acme/ws1").await.unwrap().is_none());
    let pseudonym = psql(
        &schema.name,
        "SELECT account FROM accounts WHERE starts_with(account, 'forgotten:')",
    );
    let moved = ledger.balance(&pseudonym).await.unwrap().unwrap();
    assert_eq!(
        (
            moved.available,
            moved.held,
            moved.captured,
            moved.parent_drawn
        ),
        (
            ws1_before.available,
            ws1_before.held,
            ws1_before.captured,
            ws1_before.parent_drawn
        )
    );
    assert_eq!(moved.parent.as_deref(), Some("acme"));
    assert_eq!(ledger.balance("acme").await.unwrap().unwrap(), acme_before);
    assert_eq!(
        psql(
            &schema.name,
            "SELECT count(*) FROM ledger_entries WHERE reason = 'for Jane Doe' OR account = 'acme/ws1'"
        ),
        "0"
    );

    // A second run finds nothing.
    let again = forget(&config, &spool, &["--org", "acme", "--workspace", "ws1"]);
    let zero: BTreeMap<String, u64> = expected
        .keys()
        .map(|k| {
            let left = if k == "dead_letters_unattributable" {
                1
            } else {
                0
            };
            (k.clone(), left)
        })
        .collect();
    assert_eq!(again, zero);
    assert_eq!(dead_letter_ids(&broker).await, kept_letters);

    // One job of ws2: alice's; bob's stays, and so do ws2's dead letters.
    let alice = &jobs[2].job_id;
    let bob = &jobs[3].job_id;
    let alice_files = files_under(&root, &format!("acme/ws2/{alice}"));
    let bob_files = files_under(&root, &format!("acme/ws2/{bob}"));
    assert_eq!((alice_files.len(), bob_files.len()), (1, 1));
    let one = forget(
        &config,
        &spool,
        &["--org", "acme", "--workspace", "ws2", "--job", alice],
    );
    assert_eq!(one.get("jobs"), Some(&1));
    assert_eq!(one.get("outputs"), Some(&1));
    assert_eq!(one.get("outcomes"), Some(&1));
    assert_eq!(one.get("uploads"), Some(&0));
    assert_eq!(one.get("accounts_anonymised"), Some(&0));
    assert!(files_under(&root, &format!("acme/ws2/{alice}")).is_empty());
    assert_eq!(files_under(&root, &format!("acme/ws2/{bob}")), bob_files);
    assert_eq!(files_under(&root, "uploads/acme/ws2"), others_before[1]);
    assert!(ledger.outcome(alice).await.unwrap().is_none());
    assert!(ledger.outcome(bob).await.unwrap().is_some());
    assert_eq!(dead_letter_ids(&broker).await, kept_letters);
    assert!(ledger.balance("acme/ws2").await.unwrap().is_some());
    assert_eq!(
        ledger.check_invariants().await.unwrap(),
        Vec::<String>::new()
    );
    let again = forget(
        &config,
        &spool,
        &["--org", "acme", "--workspace", "ws2", "--job", alice],
    );
    assert_eq!(again.get("total"), Some(&0));

    // One user across the org: bob's job goes, globex's user of the same
    // name would not (another org), and alice's dead letter stays.
    let bob_run = forget(&config, &spool, &["--org", "acme", "--user", "bob"]);
    assert_eq!(bob_run.get("jobs"), Some(&1));
    assert_eq!(bob_run.get("outputs"), Some(&1));
    assert_eq!(bob_run.get("outcomes"), Some(&1));
    assert_eq!(bob_run.get("dead_letters"), Some(&0));
    assert_eq!(bob_run.get("accounts_anonymised"), Some(&0));
    assert!(ledger.outcome(bob).await.unwrap().is_none());
    assert!(files_under(&root, "acme/ws2").is_empty());
    assert_eq!(files_under(&root, "globex"), others_before[2]);
    assert!(ledger.outcome(&jobs[4].job_id).await.unwrap().is_some());
    let jane_run = forget(&config, &spool, &["--org", "acme", "--user", "jane"]);
    assert_eq!(
        jane_run.get("total"),
        Some(&0),
        "jane's acme jobs went with ws1"
    );
    assert!(ledger.outcome(&jobs[4].job_id).await.unwrap().is_some());
    assert_eq!(dead_letter_ids(&broker).await, kept_letters);
    assert_eq!(
        ledger.check_invariants().await.unwrap(),
        Vec::<String>::new()
    );
    broker.close().await;
}

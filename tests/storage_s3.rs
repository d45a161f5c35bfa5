//! The real worker on S3 (a private moto server): two tenants' jobs read
//! their uploads from the bucket, their outputs land under each tenant's
//! prefix, and every result's presigned URL downloads exactly the bytes the
//! result describes, signed to expire after `storage.signed_url_ttl_seconds`.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use genfleet_credits::Ledger;
use genfleet_proto::v1;
use genfleet_storage::testing::MotoS3;
use genfleet_storage::{InputPolicy, Store, DEFAULT_INPUT_PREFIXES};
use sha2::{Digest as _, Sha256};
use support::*;

const BUCKET: &str = "genfleet-e2e-s3";
const TENANTS: [(&str, &str); 2] = [("acme", "shop-1"), ("globex", "studio")];
const JOBS: usize = 50;
const TTL_SECONDS: u64 = 900;

/// The worker's config with its `[storage]` section replaced by `storage`.
fn with_storage_section(toml: &str, storage: &str) -> String {
    let start = toml.find("[storage]\n").expect("a [storage] section");
    let body_start = start + "[storage]\n".len();
    let end = toml[body_start..]
        .find("\n[")
        .map_or(toml.len(), |i| body_start + i + 1);
    format!("{}[storage]\n{storage}\n{}", &toml[..start], &toml[end..])
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `20261204T140501Z` as Unix seconds.
fn amz_date_to_unix(value: &str) -> u64 {
    let digits = |range: std::ops::Range<usize>| -> i64 {
        value
            .get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("X-Amz-Date {value:?}"))
    };
    let (year, month, day) = (digits(0..4), digits(4..6), digits(6..8));
    let (hour, minute, second) = (digits(9..11), digits(11..13), digits(13..15));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).expect("after 1970")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_jobs_of_two_tenants_on_s3_with_working_presigned_links() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-s3-e2e");
    let moto = MotoS3::start(BUCKET);
    let photo = std::fs::read(repo_path("examples/photos/dandelions_1024.jpg")).unwrap();
    for (org, workspace) in TENANTS {
        moto.put_object(&format!("uploads/{org}/{workspace}/photo.jpg"), &photo);
    }
    // The local root exists only to show that nothing is written there.
    let unused_root = dir.0.join("unused-local-store");

    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();
    for (org, workspace) in TENANTS {
        ledger
            .grant(&format!("{org}/{workspace}"), 10_000, "s3 e2e")
            .await
            .unwrap();
    }
    let (conn, queue) = results_queue(&vhost.url()).await;
    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &unused_root,
            fal_base_url: "http://127.0.0.1:9",
            concurrency: 8,
            grace_seconds: 5,
            http_port: 0,
            fal_poll_ms: 200,
        },
    );
    let toml = std::fs::read_to_string(&config).unwrap();
    let storage = format!(
        "root = \"{}\"\nsigned_url_ttl_seconds = {TTL_SECONDS}\n{}",
        unused_root.display(),
        moto.worker_toml()
    );
    std::fs::write(&config, with_storage_section(&toml, &storage)).unwrap();
    let mut worker = WorkerProcess::start(&config, dir.0.join("worker.log"));
    wait_ready(&mut worker, Duration::from_secs(60)).await;

    let broker = genfleet_broker::Broker::connect(&vhost.url(), "s3-e2e")
        .await
        .unwrap();
    let publisher = broker.publisher().await.unwrap();
    let published_at = unix_now();
    let mut tenant_of = HashMap::new();
    for n in 0..JOBS {
        let (org, workspace) = TENANTS[n % 2];
        let input = format!("s3://{BUCKET}/uploads/{org}/{workspace}/photo.jpg");
        let job = local_edit_job(org, workspace, &[input], 256 + (n as u32 % 5) * 16, 2);
        tenant_of.insert(job.job_id.clone(), (org, workspace));
        publish(&publisher, "cpu", &job).await;
    }
    let collected = collect_results(&conn, &queue, JOBS, Duration::from_secs(240)).await;
    assert_eq!(
        collected.results.len(),
        JOBS,
        "results missing; worker log:\n{}",
        worker.log_tail()
    );

    let store =
        Store::open_s3(moto.store_config(InputPolicy::new(&DEFAULT_INPUT_PREFIXES, None).unwrap()))
            .unwrap();
    let http = reqwest::Client::new();
    let mut downloaded = 0;
    let mut keys_seen = HashSet::new();
    for (job_id, (result, _)) in &collected.results {
        assert_eq!(
            result.status,
            v1::JobStatus::Succeeded as i32,
            "{job_id}: {:?}",
            result.error
        );
        let (org, workspace) = tenant_of[job_id];
        assert!(!result.outputs.is_empty(), "{job_id} has no outputs");
        let mut expected_keys = Vec::new();
        for output in &result.outputs {
            let prefix = format!("s3://{BUCKET}/{org}/{workspace}/{job_id}/");
            assert!(
                output.uri.starts_with(&prefix),
                "{} not under {prefix}",
                output.uri
            );
            let key = output.uri.strip_prefix(&format!("s3://{BUCKET}/")).unwrap();
            expected_keys.push(key.to_string());
            assert!(keys_seen.insert(key.to_string()), "two results name {key}");

            // The presigned link: downloads the stated bytes with nothing
            // but the URL (no credentials of ours)...
            let answer = http.get(&output.signed_url).send().await.unwrap();
            assert_eq!(answer.status().as_u16(), 200, "{job_id}");
            let body = answer.bytes().await.unwrap();
            assert_eq!(body.len() as u64, output.bytes, "{job_id}");
            assert_eq!(
                hex::encode(Sha256::digest(&body)),
                output.sha256,
                "{job_id}"
            );
            downloaded += 1;

            // ...and is signed to expire TTL after it was made. moto does
            // not enforce expiry (checked: an expired URL still answers
            // 200), so the signed fields are what is checked: S3 refuses
            // a SigV4 URL after X-Amz-Date + X-Amz-Expires.
            let url = url::Url::parse(&output.signed_url).unwrap();
            assert_eq!(url.path(), format!("/{BUCKET}/{key}"));
            let query: HashMap<_, _> = url.query_pairs().into_owned().collect();
            assert_eq!(query["X-Amz-Expires"], TTL_SECONDS.to_string());
            assert_eq!(query["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
            assert!(query["X-Amz-Credential"].starts_with(genfleet_storage::testing::ACCESS_KEY_ID));
            assert!(!output
                .signed_url
                .contains(genfleet_storage::testing::SECRET_ACCESS_KEY));
            let signed_at = amz_date_to_unix(&query["X-Amz-Date"]);
            assert!(
                (published_at.saturating_sub(2)..=unix_now() + 2).contains(&signed_at),
                "signed at {signed_at}, published at {published_at}"
            );
            let stated = output
                .signed_url_expires_at
                .as_ref()
                .map(|t| t.seconds as u64)
                .expect("an expiry");
            assert!(
                stated.abs_diff(signed_at + TTL_SECONDS) <= 2,
                "result says {stated}, URL expires {}",
                signed_at + TTL_SECONDS
            );
        }
        // The bucket holds exactly the outputs the result names.
        let mut listed = store
            .list_job_outputs(org, workspace, job_id)
            .await
            .unwrap();
        listed.sort();
        expected_keys.sort();
        assert_eq!(listed, expected_keys, "{job_id}");
        // Credits as for any job.
        assert_eq!(
            result.credits.as_ref().map(|c| c.captured),
            Some(2),
            "{job_id}"
        );
    }
    assert!(downloaded >= JOBS);
    assert!(
        !unused_root.join("acme").exists(),
        "outputs written locally"
    );

    // The tenant rule holds on S3: acme naming globex's upload is refused.
    let stolen = local_edit_job(
        "acme",
        "shop-1",
        &[format!("s3://{BUCKET}/uploads/globex/studio/photo.jpg")],
        256,
        2,
    );
    publish(&publisher, "cpu", &stolen).await;
    let refused = collect_results(&conn, &queue, 1, Duration::from_secs(60)).await;
    let (result, _) = &refused.results[&stolen.job_id];
    assert_eq!(result.status, v1::JobStatus::Failed as i32);
    assert_eq!(
        result.error.as_ref().map(|e| e.code.as_str()),
        Some("invalid_input")
    );
    for (org, workspace) in TENANTS {
        let balance = ledger
            .balance(&format!("{org}/{workspace}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(balance.held, 0, "{org}/{workspace}");
        assert_eq!(balance.captured, (JOBS as i64 / 2) * 2, "{org}/{workspace}");
    }
    worker.terminate(Duration::from_secs(20));
}

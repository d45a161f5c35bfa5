//! The S3 backend against a real S3-protocol server (moto, see
//! [`crate::testing`]): the same calls as the local store, conditional
//! writes, presigned GETs.

use std::time::Duration;

use bytes::Bytes;

use crate::testing::MotoS3;
use crate::{InputPolicy, StorageError, Store, DEFAULT_INPUT_PREFIXES};

fn policy() -> InputPolicy {
    InputPolicy::new(&DEFAULT_INPUT_PREFIXES, None).expect("default prefixes")
}

fn open(server: &MotoS3) -> Store {
    Store::open_s3(server.store_config(policy())).expect("S3 store")
}

/// A plain HTTP GET of a presigned URL (no credentials of ours).
async fn download(url: &str) -> (u16, Bytes) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let response = reqwest::get(url).await.expect("GET presigned URL");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body"))
}

#[tokio::test]
async fn outputs_inputs_and_links_on_s3() {
    let server = MotoS3::start("genfleet-s3-basic");
    let store = open(&server);
    assert!(store.presigns());
    assert!(store.local_root().is_none());

    let stored = store
        .put_output("acme", "ws", "job1", "0.png", Bytes::from_static(b"abc"))
        .await
        .expect("put");
    assert_eq!(stored.uri, "s3://genfleet-s3-basic/acme/ws/job1/0.png");
    assert_eq!(
        stored.sha256,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(store.fetch(&stored.uri, 10).await.expect("fetch"), "abc");
    assert!(matches!(
        store.fetch(&stored.uri, 2).await,
        Err(StorageError::TooLarge { size: 3, .. })
    ));
    assert_eq!(
        store
            .list_job_outputs("acme", "ws", "job1")
            .await
            .expect("list"),
        vec!["acme/ws/job1/0.png".to_string()]
    );

    // The tenant rule is the same on S3: own outputs yes, another's no.
    let own = store.scope("acme", "ws").expect("scope");
    assert_eq!(
        store
            .fetch_input(&own, &stored.uri, 10)
            .await
            .expect("own")
            .len(),
        3
    );
    let other = store.scope("globex", "ws").expect("scope");
    assert!(matches!(
        store.fetch_input(&other, &stored.uri, 10).await,
        Err(StorageError::Forbidden(_))
    ));
    assert!(store.delete_input(&other, &stored.uri).await.is_err());
    assert!(matches!(
        store
            .fetch_input(&own, "s3://genfleet-s3-basic/acme/ws/job1/missing.png", 10)
            .await,
        Err(StorageError::NotFound(_))
    ));

    // A presigned GET downloads the object with nothing but the URL.
    let (url, expires) = store
        .presign_get(&stored.key, Duration::from_secs(600))
        .await
        .expect("presign")
        .expect("S3 presigns");
    let now = crate::unix_now();
    assert!(
        (now + 595..=now + 605).contains(&expires),
        "{expires} vs {now}"
    );
    let parsed = url::Url::parse(&url).expect("URL");
    let query: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
    assert_eq!(query.get("X-Amz-Expires").map(String::as_str), Some("600"));
    assert_eq!(
        query.get("X-Amz-Algorithm").map(String::as_str),
        Some("AWS4-HMAC-SHA256")
    );
    assert!(query.contains_key("X-Amz-Signature"));
    let (status, body) = download(&url).await;
    assert_eq!((status, body.as_ref()), (200, b"abc".as_ref()));

    store.delete(&stored.uri).await.expect("delete");
    store.delete(&stored.uri).await.expect("delete again");
    assert!(matches!(
        store.fetch(&stored.uri, 10).await,
        Err(StorageError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_second_write_of_one_output_adopts_the_first() {
    let server = MotoS3::start("genfleet-s3-create");
    let store = open(&server);
    let first = store
        .put_output("acme", "ws", "job1", "0.png", Bytes::from_static(b"first"))
        .await
        .expect("first put");
    // A redelivery racing the first run renders other bytes (generation is
    // not deterministic): the stored object stays, and the second run
    // reports it, so both results name the same bytes.
    let second = store
        .put_output(
            "acme",
            "ws",
            "job1",
            "0.png",
            Bytes::from_static(b"second!"),
        )
        .await
        .expect("second put");
    assert_eq!(second, first);
    assert_eq!(store.fetch(&first.uri, 100).await.expect("fetch"), "first");
}

#[tokio::test]
async fn unreachable_or_misconfigured_s3_is_reported_not_panicked() {
    // Half a key pair, a plain-http endpoint not allowed: refused at start.
    let server = MotoS3::start("genfleet-s3-config");
    let mut config = server.store_config(policy());
    config.credentials.secret_access_key = None;
    assert!(matches!(
        Store::open_s3(config),
        Err(StorageError::InvalidConfig(_))
    ));
    let mut config = server.store_config(policy());
    config.allow_http = false;
    assert!(matches!(
        Store::open_s3(config),
        Err(StorageError::InvalidConfig(_))
    ));
    // A bucket that does not exist: the store opens (nothing is contacted),
    // the first write fails retryably.
    let mut config = server.store_config(policy());
    config.bucket = "genfleet-no-such-bucket".into();
    let store = Store::open_s3(config).expect("opens without contacting");
    let error = store
        .put_output("acme", "ws", "j", "0.png", Bytes::from_static(b"x"))
        .await
        .expect_err("no bucket");
    assert!(error.is_retryable(), "{error}");
}

#[tokio::test]
async fn retention_lists_and_purges_on_s3() {
    use std::time::SystemTime;
    let server = MotoS3::start("genfleet-s3-retention");
    let store = open(&server);
    for (org, job) in [("acme", "j1"), ("acme", "j2"), ("globex", "j3")] {
        for name in ["0.png", "1.png"] {
            store
                .put_output(org, "ws", job, name, Bytes::from_static(b"12345"))
                .await
                .expect("put");
        }
    }
    server.put_object("uploads/acme/ws/photo.jpg", b"raw");
    let listed = store.list_under("acme").await.expect("list");
    let keys: Vec<&str> = listed.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "acme/ws/j1/0.png",
            "acme/ws/j1/1.png",
            "acme/ws/j2/0.png",
            "acme/ws/j2/1.png"
        ]
    );
    assert!(listed.iter().all(|e| e.size == 5));
    // Whole segments: `acm` is not a prefix of `acme`'s keys.
    assert!(store.list_under("acm").await.expect("list").is_empty());
    assert_eq!(
        store.child_names("").await.expect("top level"),
        ["acme", "globex", "uploads"]
    );
    assert_eq!(store.output_orgs().await.expect("orgs"), ["acme", "globex"]);

    // Nothing is older than an hour ago; everything is older than an hour
    // from now (S3's Last-Modified is the clock here).
    let hour = Duration::from_secs(3600);
    let past = SystemTime::now() - hour;
    let future = SystemTime::now() + hour;
    let none = store
        .purge_older_than("acme", past, 1, false)
        .await
        .expect("purge");
    assert_eq!(none.objects, 0);
    let dry = store
        .purge_older_than("acme", future, 3, true)
        .await
        .expect("dry");
    assert_eq!((dry.objects, dry.bytes), (4, 20));
    assert_eq!(store.list_under("acme").await.expect("list").len(), 4);
    let done = store
        .purge_older_than("acme", future, 3, false)
        .await
        .expect("purge");
    assert_eq!(done, dry);
    assert!(store.list_under("acme").await.expect("list").is_empty());
    // Other tenants and the uploads stay.
    assert_eq!(store.list_under("globex").await.expect("list").len(), 2);
    assert_eq!(store.list_under("uploads").await.expect("list").len(), 1);
    // Deleting keys that are gone succeeds (a resumed forget).
    assert_eq!(
        store
            .delete_keys(&["acme/ws/j1/0.png".to_string()])
            .await
            .expect("delete gone"),
        1
    );
}

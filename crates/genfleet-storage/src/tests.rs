//! The store on its local backend: outputs, the tenant rule for inputs,
//! `file://` inputs and output names.

use super::*;

fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "genfleet-storage-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn temp_store(file_root: Option<PathBuf>) -> (Store, PathBuf) {
    let dir = temp_dir("store");
    let store = Store::open_local(StoreConfig {
        root: dir.clone(),
        bucket: "uploads".into(),
        inputs: InputPolicy::new(&DEFAULT_INPUT_PREFIXES, file_root).unwrap(),
    })
    .unwrap();
    (store, dir)
}

#[tokio::test]
async fn put_fetch_list_delete() {
    let (store, dir) = temp_store(None);
    let stored = store
        .put_output(
            "acme",
            "shop-1",
            "job1",
            "0.jpg",
            Bytes::from_static(b"abc"),
        )
        .await
        .unwrap();
    assert_eq!(stored.uri, "s3://uploads/acme/shop-1/job1/0.jpg");
    assert_eq!(stored.size, 3);
    assert_eq!(
        stored.sha256,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        store.fetch(&stored.uri, 10).await.unwrap(),
        Bytes::from_static(b"abc")
    );
    // The tenant's own outputs are inputs of its next job.
    let own = store.scope("acme", "shop-1").unwrap();
    assert_eq!(
        store
            .fetch_input(&own, &stored.uri, 10)
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        store
            .list_job_outputs("acme", "shop-1", "job1")
            .await
            .unwrap(),
        vec!["acme/shop-1/job1/0.jpg".to_string()]
    );
    store.delete(&stored.uri).await.unwrap();
    store.delete(&stored.uri).await.unwrap();
    assert!(matches!(
        store.fetch(&stored.uri, 10).await,
        Err(StorageError::NotFound(_))
    ));
    std::fs::remove_dir_all(dir).ok();
}

fn kind(result: &Result<Bytes, StorageError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(StorageError::TooLarge { .. }) => "too_large",
        Err(StorageError::InvalidUri(_)) => "invalid",
        Err(StorageError::Forbidden(_)) => "forbidden",
        Err(StorageError::NotFound(_)) => "not_found",
        Err(StorageError::Unavailable(_)) => "unavailable",
        Err(StorageError::InvalidConfig(_)) => "config",
    }
}

#[tokio::test]
async fn inputs_are_read_only_inside_the_tenants_prefixes() {
    let (store, dir) = temp_store(None);
    for key in [
        "uploads/acme/ws/a.jpg",
        "uploads/acme/ws/big.bin",
        "uploads/acme/other/a.jpg",
        "uploads/globex/ws/a.jpg",
        "globex/ws/j/0.png",
    ] {
        let path = dir.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let len = if key.ends_with("big.bin") { 100 } else { 3 };
        std::fs::write(path, vec![7u8; len]).unwrap();
    }
    let scope = store.scope("acme", "ws").unwrap();
    let cases: Vec<(&str, &str)> = vec![
        ("s3://uploads/uploads/acme/ws/a.jpg", "ok"),
        ("s3://uploads/uploads/acme/ws/big.bin", "too_large"),
        ("s3://uploads/uploads/acme/ws/missing.jpg", "not_found"),
        // Another workspace of the same org, another org, another
        // tenant's output, the bare upload prefix, a traversal.
        ("s3://uploads/uploads/acme/other/a.jpg", "forbidden"),
        ("s3://uploads/uploads/globex/ws/a.jpg", "forbidden"),
        ("s3://uploads/globex/ws/j/0.png", "forbidden"),
        ("s3://uploads/uploads/acme/wsx/a.jpg", "forbidden"),
        ("s3://uploads/uploads/acme/ws/../other/a.jpg", "invalid"),
        ("s3://uploads/uploads/acme/ws//a.jpg", "invalid"),
        ("s3://other/uploads/acme/ws/a.jpg", "invalid"),
        ("s3://uploads", "invalid"),
        // file:// is off without a file input root.
        ("file:///etc/passwd", "forbidden"),
        ("https://169.254.169.254/latest/meta-data", "invalid"),
        ("gopher://x/y", "invalid"),
    ];
    for (uri, expected) in &cases {
        let got = store.fetch_input(&scope, uri, 50).await;
        assert_eq!(kind(&got), *expected, "{uri}");
        // Deleting follows the same rule: nothing of another tenant goes.
        if *expected == "forbidden" || *expected == "invalid" {
            assert!(store.delete_input(&scope, uri).await.is_err(), "{uri}");
        }
    }
    for key in [
        "uploads/acme/other/a.jpg",
        "uploads/globex/ws/a.jpg",
        "globex/ws/j/0.png",
    ] {
        assert!(dir.join(key).exists(), "{key} was deleted");
    }
    store
        .delete_input(&scope, "s3://uploads/uploads/acme/ws/a.jpg")
        .await
        .unwrap();
    assert!(!dir.join("uploads/acme/ws/a.jpg").exists());
    // Gone already: still success.
    store
        .delete_input(&scope, "s3://uploads/uploads/acme/ws/a.jpg")
        .await
        .unwrap();
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn file_inputs_stay_inside_the_root_and_the_tenants_prefixes() {
    let files = temp_dir("files");
    let outside = temp_dir("outside");
    for key in ["uploads/acme/ws/a.jpg", "uploads/globex/ws/a.jpg"] {
        let path = files.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"abc").unwrap();
    }
    std::fs::write(outside.join("secret"), b"abc").unwrap();
    // Neither a folder nor a FIFO is an upload; opening the FIFO would
    // wait for a writer forever.
    std::fs::create_dir_all(files.join("uploads/acme/ws/folder")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(files.join("uploads/acme/ws/fifo"))
        .status()
        .unwrap();
    assert!(made.success());
    // Links from the tenant's folder to another tenant's file and out of
    // the root: resolved first, then refused.
    std::os::unix::fs::symlink(
        files.join("uploads/globex/ws/a.jpg"),
        files.join("uploads/acme/ws/link-foreign.jpg"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        outside.join("secret"),
        files.join("uploads/acme/ws/link-out.jpg"),
    )
    .unwrap();
    let (store, dir) = temp_store(Some(files.clone()));
    let scope = store.scope("acme", "ws").unwrap();
    let root = files.canonicalize().unwrap();
    let uri = |rel: &str| format!("file://{}/{rel}", root.display());
    let cases = vec![
        (uri("uploads/acme/ws/a.jpg"), "ok"),
        (uri("uploads/globex/ws/a.jpg"), "forbidden"),
        (uri("uploads/acme/ws/../../globex/ws/a.jpg"), "forbidden"),
        (uri("uploads/acme/ws/link-foreign.jpg"), "forbidden"),
        (uri("uploads/acme/ws/link-out.jpg"), "forbidden"),
        (uri("uploads/acme/ws/missing.jpg"), "not_found"),
        (uri("uploads/acme/ws/folder"), "invalid"),
        (uri("uploads/acme/ws/fifo"), "invalid"),
        (format!("file://{}/secret", outside.display()), "forbidden"),
        ("file://relative/x".to_string(), "invalid"),
    ];
    for (uri, expected) in &cases {
        assert_eq!(
            kind(&store.fetch_input(&scope, uri, 50).await),
            *expected,
            "{uri}"
        );
    }
    assert!(store
        .delete_input(&scope, &uri("uploads/globex/ws/a.jpg"))
        .await
        .is_err());
    assert!(files.join("uploads/globex/ws/a.jpg").exists());
    assert!(outside.join("secret").exists());
    for d in [files, outside, dir] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[tokio::test]
async fn output_names_must_be_safe_segments() {
    let (store, dir) = temp_store(None);
    for bad in ["..", "a/b", "", "x y"] {
        assert!(store
            .put_output("acme", "ws", "j", bad, Bytes::new())
            .await
            .is_err());
    }
    std::fs::remove_dir_all(dir).ok();
}

//! Unit tests of the token cache and its origins.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

fn fetched(token: &str, life: Duration) -> Fetched {
    Fetched {
        authorization: bearer(token).unwrap(),
        refresh_at: refresh_at(Instant::now(), life),
        stamp: None,
    }
}

fn token_text(token: &AccessToken) -> String {
    token.authorization.to_str().unwrap().to_owned()
}

/// A fetch that counts calls, takes `hold` of (paused) time and hands out
/// `token-N` valid for `life`.
async fn counted(
    calls: &AtomicU32,
    hold: Duration,
    life: Duration,
) -> Result<Fetched, ProviderError> {
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(hold).await;
    Ok(fetched(&format!("token-{n}"), life))
}

fn by_time(cached: &Cached) -> bool {
    Instant::now() < cached.refresh_at
}

#[test]
fn refreshes_a_minute_before_expiry_or_halfway_for_short_lives() {
    let now = Instant::now();
    let check = |expires_in: u64, expected: u64| {
        assert_eq!(
            refresh_at(now, Duration::from_secs(expires_in)) - now,
            Duration::from_secs(expected),
            "{expires_in}"
        );
    };
    check(3599, 3539);
    check(121, 61);
    check(120, 60);
    check(60, 30);
    check(0, 0);
    // `expires_in: u64::MAX` used to overflow `Instant + Duration`.
    check(u64::MAX, 24 * 3600 - 60);
    check(86_400 * 365, 24 * 3600 - 60);
}

#[tokio::test(start_paused = true)]
async fn keeps_a_token_until_a_minute_before_expiry() {
    let cache = Cache::default();
    let calls = AtomicU32::new(0);
    let life = Duration::from_secs(3600);
    let get = || cache.get(None, by_time, || counted(&calls, Duration::ZERO, life));
    let first = get().await.unwrap();
    assert_eq!(token_text(&first), "Bearer token-1");
    tokio::time::advance(Duration::from_secs(3539)).await;
    assert_eq!(get().await.unwrap().generation, first.generation);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    let second = get().await.unwrap();
    assert_eq!(token_text(&second), "Bearer token-2");
    assert_eq!(second.generation, first.generation + 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_refresh() {
    let cache = Arc::new(Cache::default());
    let calls = Arc::new(AtomicU32::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
        tasks.spawn(async move {
            let fetch = || counted(&calls, Duration::from_millis(300), Duration::from_secs(60));
            cache.get(None, by_time, fetch).await.map(|t| t.generation)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        assert_eq!(joined.unwrap().unwrap(), 1);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn waiters_take_a_failed_refresh_instead_of_repeating_it() {
    let cache = Arc::new(Cache::default());
    let calls = Arc::new(AtomicU32::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
        tasks.spawn(async move {
            let calls = &calls;
            let fetch = move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err::<Fetched, _>(ProviderError::Unavailable {
                    message: "token endpoint answered HTTP 503".into(),
                    retry_after: Some(Duration::from_secs(2)),
                })
            };
            cache.get(None, by_time, fetch).await.map(|_| ())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let err = joined.unwrap().unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)), "{err}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A later caller, not queued behind that refresh, tries again.
    let again = cache
        .get(None, by_time, || {
            counted(&calls, Duration::ZERO, Duration::from_secs(600))
        })
        .await
        .unwrap();
    assert_eq!(again.generation, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_refresh_ends_at_the_deadline() {
    let cache = Arc::new(Cache::default());
    let slow = {
        let cache = Arc::clone(&cache);
        tokio::spawn(async move {
            let fetch = || async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(fetched("late", Duration::from_secs(600)))
            };
            cache.get(None, by_time, fetch).await.map(|_| ())
        })
    };
    tokio::task::yield_now().await;
    let deadline = Instant::now() + Duration::from_secs(1);
    let calls = AtomicU32::new(0);
    let err = cache
        .get(Some(deadline), by_time, || {
            counted(&calls, Duration::ZERO, Duration::from_secs(600))
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, ProviderError::DeadlineExceeded), "{err}");
    assert!(Instant::now() >= deadline);
    assert!(Instant::now() < deadline + Duration::from_secs(1));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    slow.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_refusal_drops_the_token_and_a_second_one_is_final() {
    let cache = Cache::default();
    let calls = AtomicU32::new(0);
    let life = Duration::from_secs(3600);
    let get = || cache.get(None, by_time, || counted(&calls, Duration::ZERO, life));

    let first = get().await.unwrap();
    assert!(cache.rejected(first.generation), "a refresh may help");
    // Other jobs' 401s for the same, already dropped token change nothing.
    assert!(cache.rejected(first.generation));
    let second = get().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        !cache.rejected(second.generation),
        "refused right after a refresh"
    );

    // Once Vertex accepts a token, a later refusal is worth a refresh again.
    let third = get().await.unwrap();
    cache.accepted(third.generation);
    assert!(cache.rejected(third.generation));
    let fourth = get().await.unwrap();
    assert_eq!(fourth.generation, 4);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_fixed_token_is_never_refreshed() {
    let source = TokenSource::fixed(" static-token \n");
    let token = source.token(None).await.unwrap();
    assert_eq!(token_text(&token), "Bearer static-token");
    assert!(token.authorization.is_sensitive());
    assert!(!source.rejected(token.generation));

    let err = TokenSource::fixed("bad\ntoken")
        .token(None)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, ProviderError::Unauthorized { .. }), "{err}");
    assert!(!err.to_string().contains("bad"), "{err}");
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "genfleet-vertex-{}-{name}-{}",
        std::process::id(),
        fastrand::u64(..)
    ))
}

fn write_with_mtime(path: &Path, text: &str, modified: SystemTime) {
    std::fs::write(path, text).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(modified).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_token_file_is_reread_when_it_changes_and_every_minute() {
    let path = temp_path("reread");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    write_with_mtime(&path, "token-a\n", t0);
    let source = TokenSource::file(&path);
    let token = source.token(None).await.unwrap();
    assert_eq!(token_text(&token), "Bearer token-a");
    assert!(token.authorization.is_sensitive());

    // Same length and mtime: unseen until the minute is up.
    write_with_mtime(&path, "token-b\n", t0);
    assert_eq!(
        token_text(&source.token(None).await.unwrap()),
        "Bearer token-a"
    );
    tokio::time::advance(FILE_REREAD_INTERVAL).await;
    let reread = source.token(None).await.unwrap();
    assert_eq!(token_text(&reread), "Bearer token-b");
    assert_eq!(reread.generation, token.generation + 1);

    // A new mtime is seen at once.
    write_with_mtime(&path, "token-c", t0 + Duration::from_secs(1));
    assert_eq!(
        token_text(&source.token(None).await.unwrap()),
        "Bearer token-c"
    );

    // A refusal forces a re-read even if nothing changed.
    let current = source.token(None).await.unwrap();
    assert!(source.rejected(current.generation));
    let after = source.token(None).await.unwrap();
    assert_eq!(after.generation, current.generation + 1);
    assert_eq!(token_text(&after), "Bearer token-c");
    assert!(!source.rejected(after.generation));
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_missing_or_empty_token_file_is_unauthorized_naming_the_path() {
    let path = temp_path("missing");
    let err = TokenSource::file(&path)
        .token(None)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, ProviderError::Unauthorized { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    std::fs::write(&path, " \n\t").unwrap();
    let err = TokenSource::file(&path)
        .token(None)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("is empty, expected an access token"),
        "{err}"
    );

    std::fs::write(&path, "SECRET\nTOKEN").unwrap();
    let err = TokenSource::file(&path)
        .token(None)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("not allowed"), "{err}");
    assert!(!err.to_string().contains("SECRET"), "{err}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn debug_shows_no_token() {
    let text = format!("{:?}", TokenSource::fixed("SECRET-TOKEN"));
    assert!(!text.contains("SECRET"), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    let text = format!("{:?}", TokenSource::file("/run/secrets/vertex-token"));
    assert!(text.contains("/run/secrets/vertex-token"), "{text}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = Url::parse("http://metadata.example:8080/token?audience=x").unwrap();
    let text = format!("{:?}", TokenSource::endpoint(url, reqwest::Client::new()));
    assert!(text.contains("http://metadata.example:8080"), "{text}");
    assert!(!text.contains("audience"), "{text}");
}

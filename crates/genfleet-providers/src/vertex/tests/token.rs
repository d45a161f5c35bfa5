//! The token rules: one token request for many jobs, refresh on a revoked
//! token, expiry margins, endpoint failures, the token file and fixed
//! tokens, and a `Debug` that shows no token.

use super::*;

#[tokio::test]
async fn fifty_concurrent_jobs_make_one_token_request() {
    let fake = FakeVertex::start().await.unwrap();
    // Long enough that every job arrives while the one refresh runs.
    fake.set_token_delay(Duration::from_millis(100));
    let provider = Arc::new(provider(&fake));
    let mut jobs = tokio::task::JoinSet::new();
    for i in 0..50 {
        let provider = Arc::clone(&provider);
        jobs.spawn(async move {
            let mut request = request("imagen-ok");
            request.job_id = format!("job-{i}");
            generate_with_retries(provider.as_ref(), &request, &policy()).await
        });
    }
    while let Some(joined) = jobs.join_next().await {
        assert_eq!(joined.unwrap().unwrap().attempts, 1);
    }
    assert_eq!(fake.token_requests(), 1);
    assert_eq!(fake.calls_for("imagen-ok"), 50);
    assert_eq!(fake.unauthorized(), 0);
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_once_and_the_job_succeeds() {
    let fake = FakeVertex::start().await.unwrap();
    let provider = provider(&fake);
    generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap();
    fake.revoke_tokens();
    let output = generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 2);
    assert_eq!(fake.unauthorized(), 1);
    assert_eq!(fake.token_requests(), 2);
    // The new token is kept: the next job needs no refresh.
    generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap();
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test]
async fn a_401_right_after_a_refresh_is_unauthorized() {
    let fake = FakeVertex::start().await.unwrap();
    fake.refuse_all_tokens(true);
    let failed = generate_with_retries(&provider(&fake), &request("imagen-ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 2);
    assert!(
        matches!(failed.error, ProviderError::Unauthorized { .. }),
        "{failed}"
    );
    assert!(
        failed.error.to_string().contains("401 UNAUTHENTICATED"),
        "{failed}"
    );
    assert_eq!(fake.unauthorized(), 2);
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test]
async fn a_token_about_to_expire_is_not_reused() {
    let fake = FakeVertex::start().await.unwrap();
    // The cache's timing is tested on a paused clock in vertex_auth; here,
    // over real HTTP, a token that lives under a second.
    fake.set_token_expires_in(Duration::from_millis(900));
    let provider = provider(&fake);
    let first = provider.generate(&request("imagen-ok")).await;
    // The fake answers expires_in in whole seconds: 0 here, so the client
    // does not cache it at all, and never sends an expired token.
    assert!(first.is_ok(), "{first:?}");
    provider.generate(&request("imagen-ok")).await.unwrap();
    assert_eq!(fake.token_requests(), 2);
    assert_eq!(fake.unauthorized(), 0);
}

#[tokio::test]
async fn token_endpoint_failures_are_classified() {
    let fake = FakeVertex::start().await.unwrap();
    fake.fail_token_requests(Some(StatusCode::SERVICE_UNAVAILABLE));
    let failed = generate_with_retries(&provider(&fake), &request("imagen-ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 4);
    assert_eq!(
        failed.error.to_string(),
        "provider unavailable: token endpoint answered HTTP 503"
    );
    assert_eq!(fake.calls(), 0);

    fake.fail_token_requests(Some(StatusCode::NOT_FOUND));
    let failed = generate_with_retries(&provider(&fake), &request("imagen-ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(failed.error, ProviderError::Unauthorized { .. }),
        "{failed}"
    );
    assert_eq!(fake.calls(), 0);
}

#[tokio::test]
async fn the_fake_token_endpoint_wants_the_metadata_flavor() {
    let fake = FakeVertex::start().await.unwrap();
    let response = client().get(fake.token_url()).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let response = client()
        .get(fake.token_url())
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 3599);
    assert!(answer["access_token"]
        .as_str()
        .unwrap()
        .starts_with("ya29."));
}

#[tokio::test]
async fn the_token_file_is_reread_after_it_changes() {
    let fake = FakeVertex::start().await.unwrap();
    let path = temp_path("token");
    std::fs::write(&path, format!("  {}\n", fake.issue_token())).unwrap();
    let provider = VertexProvider::new(config(&fake, TokenSource::file(&path)), client());
    let output = generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 1);

    // The sidecar writes a new token and the old one stops working.
    fake.revoke_tokens();
    std::fs::write(&path, fake.issue_token()).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let output = generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap();
    assert_eq!(output.attempts, 1);
    assert_eq!(fake.unauthorized(), 0);
    assert_eq!(fake.token_requests(), 0);
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_missing_token_file_is_unauthorized_naming_the_path() {
    let fake = FakeVertex::start().await.unwrap();
    let path = temp_path("absent");
    let provider = VertexProvider::new(config(&fake, TokenSource::file(&path)), client());
    let failed = generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(&failed.error, ProviderError::Unauthorized { message } if message.contains(&path.display().to_string())),
        "{failed}"
    );
    assert_eq!(fake.calls(), 0);
}

#[tokio::test]
async fn a_refused_fixed_token_is_unauthorized_at_once() {
    let fake = FakeVertex::start().await.unwrap();
    let provider = VertexProvider::new(
        config(&fake, TokenSource::fixed("ya29.never-issued")),
        client(),
    );
    let failed = generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap_err();
    assert_eq!(failed.attempts, 1);
    assert!(
        matches!(failed.error, ProviderError::Unauthorized { .. }),
        "{failed}"
    );
    assert!(
        !failed.error.to_string().contains("never-issued"),
        "{failed}"
    );

    let provider = VertexProvider::new(
        config(&fake, TokenSource::fixed(fake.issue_token())),
        client(),
    );
    generate_with_retries(&provider, &request("imagen-ok"), &policy())
        .await
        .unwrap();
}

#[tokio::test]
async fn debug_shows_no_token() {
    let fake = FakeVertex::start().await.unwrap();
    let token = fake.issue_token();
    let config = config(&fake, TokenSource::fixed(token.clone()));
    let provider = VertexProvider::new(config.clone(), client());
    for text in [format!("{config:?}"), format!("{provider:?}")] {
        assert!(!text.contains(&token), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }
    // Nor does an endpoint source holding a cached token.
    let provider = self::provider(&fake);
    provider.generate(&request("imagen-ok")).await.unwrap();
    let text = format!("{provider:?}");
    assert!(!text.contains("ya29"), "{text}");
}

//! Attempt counting and remembered provider submissions.

use super::TestDb;
use crate::CreditsError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_count_every_start_of_a_job() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    assert_eq!(l.begin_attempt("job-a").await.unwrap(), 1);
    assert_eq!(l.begin_attempt("job-a").await.unwrap(), 2);
    assert_eq!(l.begin_attempt("job-b").await.unwrap(), 1);
    // Concurrent starts of one job (a duplicate delivery) both count.
    let (x, y) = tokio::join!(l.begin_attempt("job-a"), l.begin_attempt("job-a"));
    let mut both = [x.unwrap(), y.unwrap()];
    both.sort_unstable();
    assert_eq!(both, [3, 4]);
    assert!(matches!(
        l.begin_attempt("").await,
        Err(CreditsError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_submissions_are_recalled_until_forgotten() {
    let db = TestDb::new().await;
    let l = &db.ledger;
    assert_eq!(l.recall_submission("job-1", "fal").await.unwrap(), None);
    l.remember_submission("job-1", "fal", "{\"request_id\":\"a\"}")
        .await
        .unwrap();
    // A newer submission of the same job replaces the older one.
    l.remember_submission("job-1", "fal", "{\"request_id\":\"b\"}")
        .await
        .unwrap();
    assert_eq!(
        l.recall_submission("job-1", "fal")
            .await
            .unwrap()
            .as_deref(),
        Some("{\"request_id\":\"b\"}")
    );
    assert_eq!(
        l.recall_submission("job-1", "replicate").await.unwrap(),
        None
    );
    l.forget_submission("job-1", "fal").await.unwrap();
    l.forget_submission("job-1", "fal").await.unwrap();
    assert_eq!(l.recall_submission("job-1", "fal").await.unwrap(), None);
}

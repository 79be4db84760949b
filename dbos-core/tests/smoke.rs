//! Smoke test: connect, migrate twice, enqueue idempotently.
use dbos_core::{EnqueueRequest, Enqueued, RunState, testing};

#[tokio::test]
async fn enqueue_is_idempotent_by_id() {
    let db = testing::fresh_database().await.expect("connect");
    let req = EnqueueRequest::new("wf-1", "hello", "q", "\"in\"");
    let first = db.enqueue(req.clone()).await.expect("enqueue");
    assert!(matches!(first, Enqueued::Created(_)));
    let second = db.enqueue(req).await.expect("enqueue again");
    assert!(matches!(second, Enqueued::Existing(_)));
    assert_eq!(second.status().state, RunState::Enqueued);
    let again = dbos_core::SystemDatabase::connect(db.config().clone())
        .await
        .expect("reconnect");
    let status = again.status("wf-1").await.expect("status").expect("exists");
    assert_eq!(status.inputs.as_deref(), Some("\"in\""));
    assert!(again.status("nope").await.expect("status").is_none());
}

//! Inbox operations outside history: enqueue with a first message (one statement), take and
//! consume messages without checkpoints, closed runs with pending messages.
mod common;

use dbos_core::{EnqueueRequest, Enqueued, Outcome};

#[tokio::test]
async fn enqueue_with_message_creates_both_or_neither() {
    let db = common::fresh().await;
    let req = EnqueueRequest::new("wf", "w", "q", "null");
    let created = db
        .enqueue_with_message(req.clone(), "inbox", "first", Some("k"))
        .await
        .expect("enqueue");
    assert!(matches!(created, Enqueued::Created(_)));
    let msgs = db.peek_messages("wf", None, 10).await.expect("peek");
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].body, "first");
    assert_eq!(msgs[0].message_id, "k::wf");
    // Existing run: nothing is written.
    let again = db
        .enqueue_with_message(req, "inbox", "second", Some("k2"))
        .await
        .expect("enqueue again");
    assert!(matches!(again, Enqueued::Existing(_)));
    assert_eq!(db.peek_messages("wf", None, 10).await.unwrap().len(), 1);
    // The claimer finds the message with the run.
    let claimed = db.claim("ex", &["q".to_string()], 1).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(db.peek_messages("wf", None, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn take_and_consume_leave_no_checkpoint() {
    let db = common::fresh().await;
    common::new_run(&db, "wf").await;
    for i in 0..3 {
        db.send("wf", "q", &format!("q{i}"), None).await.unwrap();
    }
    let s = db.send("wf", "s", "sig", None).await.unwrap();
    let taken = db.take_messages("wf", "q", 2).await.expect("take");
    assert_eq!(
        taken.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["q0", "q1"]
    );
    let taken = db.take_messages("wf", "q", 10).await.expect("take");
    assert_eq!(taken.len(), 1);
    assert!(db.take_messages("wf", "q", 10).await.unwrap().is_empty());
    assert_eq!(
        db.consume_messages("wf", std::slice::from_ref(&s))
            .await
            .unwrap(),
        1
    );
    assert_eq!(db.consume_messages("wf", &[s]).await.unwrap(), 0);
    assert!(db.peek_messages("wf", None, 10).await.unwrap().is_empty());
    assert!(db.checkpoints("wf").await.unwrap().is_empty());
    db.set_event("wf", "k", "v").await.unwrap();
    assert!(db.delete_event("wf", "k").await.unwrap());
    assert!(!db.delete_event("wf", "k").await.unwrap());
    assert_eq!(db.get_event("wf", "k", None).await.unwrap(), None);
}

#[tokio::test]
async fn closed_runs_with_messages_lists_only_closed_runs_of_the_queue() {
    let db = common::fresh().await;
    for id in ["open", "closed", "closed-done"] {
        db.enqueue(EnqueueRequest::new(id, "w", "q1", "null"))
            .await
            .unwrap();
    }
    db.enqueue(EnqueueRequest::new("other", "w", "q2", "null"))
        .await
        .unwrap();
    let claimed = db
        .claim("ex", &["q1".to_string(), "q2".to_string()], 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    for id in ["closed", "closed-done", "other"] {
        db.complete(id, Some("ex"), &Outcome::Success("1".into()))
            .await
            .unwrap();
    }
    for id in ["open", "closed", "other"] {
        db.send(id, "query", "x", None).await.unwrap();
    }
    db.send("closed-done", "inbox", "x", None).await.unwrap();
    let runs = db
        .closed_runs_with_messages("q1", "query", 10)
        .await
        .unwrap();
    assert_eq!(runs, vec!["closed".to_string()]);
    db.take_messages("closed", "query", 10).await.unwrap();
    assert!(
        db.closed_runs_with_messages("q1", "query", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

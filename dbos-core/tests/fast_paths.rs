//! The facts that let callers skip reads: what a claim reports of a run's history and inbox,
//! wake-up marks (a waiter registered after a write still learns of its notification), and the
//! send that checks the run is open in the same statement.
mod common;

use std::time::Duration;

use dbos_core::{ClaimFacts, Outcome, SendIfOpen, WakeKey};

#[tokio::test]
async fn claims_report_whether_a_run_has_steps_and_messages() {
    let db = common::fresh().await;
    common::new_run(&db, "plain").await;
    common::new_run(&db, "with-message").await;
    db.send("with-message", "inbox", "\"m\"", None)
        .await
        .expect("send");
    let mut runs = db
        .claim("exec", &["test-queue".to_string()], 10)
        .await
        .expect("claim");
    runs.sort_by(|a, b| a.workflow_id.cmp(&b.workflow_id));
    let facts: Vec<(String, Option<ClaimFacts>)> = runs
        .iter()
        .map(|r| (r.workflow_id.clone(), r.claim_facts))
        .collect();
    assert_eq!(
        facts,
        vec![
            (
                "plain".to_string(),
                Some(ClaimFacts {
                    has_steps: false,
                    has_messages: false
                })
            ),
            (
                "with-message".to_string(),
                Some(ClaimFacts {
                    has_steps: false,
                    has_messages: true
                })
            ),
        ]
    );
    // A plain status read carries no claim facts.
    let row = db.status("plain").await.expect("status").expect("row");
    assert_eq!(row.claim_facts, None);
}

#[tokio::test]
async fn a_waiter_registered_after_a_write_learns_of_it_through_the_mark() {
    let db = common::fresh_without_fallback().await;
    let other = common::other_handle(&db).await;
    common::new_run(&db, "r").await;
    common::new_run(&db, "quiet").await;
    let mark = db.wake_mark();
    // Sent by another "process": reaches this one through LISTEN/NOTIFY.
    other.send("r", "inbox", "\"m\"", None).await.expect("send");
    let woken = db.register_waiter_since(WakeKey::Message("r".into()), mark);
    tokio::time::timeout(Duration::from_secs(10), woken.wait(None))
        .await
        .expect("the notification after the mark wakes a waiter registered later");
    // A key with no notification since the mark is not woken.
    let quiet = db.register_waiter_since(WakeKey::Message("quiet".into()), mark);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), quiet.wait(None))
            .await
            .is_err(),
        "no notification for `quiet` since the mark"
    );
    // A mark taken after the notification does not see it.
    let later = db.wake_mark();
    let fresh = db.register_waiter_since(WakeKey::Message("r".into()), later);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), fresh.wait(None))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn awaiting_from_a_mark_skips_the_first_read_but_still_sees_the_outcome() {
    let db = common::fresh().await;
    let worker = common::other_handle(&db).await;
    let mark = db.wake_mark();
    common::new_run(&db, "run").await;
    let claimed = worker
        .claim("exec", &["test-queue".to_string()], 1)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    worker
        .complete("run", Some("exec"), &Outcome::Success("\"done\"".into()))
        .await
        .expect("complete");
    let out = db
        .await_outcome_since("run", Some(Duration::from_secs(10)), Some(mark))
        .await
        .expect("await")
        .expect("closed");
    assert_eq!(out.output.as_deref(), Some("\"done\""));
}

#[tokio::test]
async fn send_if_open_sends_only_to_open_runs() {
    let db = common::fresh().await;
    common::new_run(&db, "open").await;
    common::new_run(&db, "closed").await;
    db.cancel("closed", None).await.expect("cancel");
    let sent = db
        .send_if_open("open", "inbox", "\"m\"", Some("k1"))
        .await
        .expect("send");
    assert!(matches!(sent, SendIfOpen::Sent(_)));
    // The same key again: one message, still reported as sent.
    let again = db
        .send_if_open("open", "inbox", "\"m\"", Some("k1"))
        .await
        .expect("send again");
    assert_eq!(again, sent);
    assert_eq!(
        db.peek_messages("open", None, 10)
            .await
            .expect("peek")
            .len(),
        1
    );
    let refused = db
        .send_if_open("closed", "inbox", "\"m\"", Some("k2"))
        .await
        .expect("send to closed");
    assert_eq!(refused, SendIfOpen::Closed(dbos_core::RunState::Cancelled));
    assert!(
        db.peek_messages("closed", None, 10)
            .await
            .expect("peek")
            .is_empty()
    );
    let missing = db.send_if_open("missing", "inbox", "\"m\"", None).await;
    assert!(matches!(missing, Err(dbos_core::Error::UnknownRun(_))));
}

//! Events: set/get, last writer wins, waiting across handles, timeouts.
mod common;

use std::time::{Duration, Instant};

use dbos_core::Error;

#[tokio::test]
async fn set_then_get_and_replace() {
    let db = common::fresh().await;
    common::new_run(&db, "wf").await;
    assert_eq!(db.get_event("wf", "k", None).await.expect("get"), None);
    db.set_event("wf", "k", "\"v1\"").await.expect("set");
    assert_eq!(
        db.get_event("wf", "k", None).await.expect("get").as_deref(),
        Some("\"v1\"")
    );
    db.set_event("wf", "k", "\"v2\"").await.expect("set again");
    assert_eq!(
        db.get_event("wf", "k", None).await.expect("get").as_deref(),
        Some("\"v2\"")
    );
    // Keys are independent; reading a run that does not exist is just "not set".
    assert_eq!(db.get_event("wf", "other", None).await.expect("get"), None);
    assert_eq!(db.get_event("ghost", "k", None).await.expect("get"), None);
}

#[tokio::test]
async fn set_event_on_an_unknown_run_is_refused() {
    let db = common::fresh().await;
    match db.set_event("ghost", "k", "1").await {
        Err(Error::UnknownRun(id)) => assert_eq!(id, "ghost"),
        other => panic!("expected UnknownRun, got {other:?}"),
    }
    let small = common::fresh_with(|c| c.max_value_bytes = 10).await;
    common::new_run(&small, "wf").await;
    assert!(matches!(
        small.set_event("wf", "k", "01234567890").await,
        Err(Error::ValueTooLarge { .. })
    ));
    assert!(matches!(
        small.set_event("wf", "", "1").await,
        Err(Error::InvalidName { .. })
    ));
}

#[tokio::test]
async fn get_event_waits_for_a_set_on_another_handle() {
    // No fallback polling within the test: the wake must come from the hint.
    let reader = common::fresh_without_fallback().await;
    let writer = common::other_handle(&reader).await;
    common::new_run(&reader, "wf").await;

    // Several waiters on one key, one on another key.
    let spawn_get = |key: &'static str, secs: u64| {
        let r = reader.clone();
        tokio::spawn(async move {
            r.get_event("wf", key, Some(Duration::from_secs(secs)))
                .await
        })
    };
    let w1 = spawn_get("ready", 60);
    let w2 = spawn_get("ready", 60);
    let other = spawn_get("never", 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!w1.is_finished() && !w2.is_finished());

    writer.set_event("wf", "ready", "true").await.expect("set");
    for w in [w1, w2] {
        let got = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("woken by the hint")
            .expect("join")
            .expect("get");
        assert_eq!(got.as_deref(), Some("true"));
    }
    assert_eq!(other.await.expect("join").expect("get"), None);
}

#[tokio::test]
async fn get_event_times_out() {
    let db = common::fresh().await;
    common::new_run(&db, "wf").await;
    let started = Instant::now();
    let got = db
        .get_event("wf", "k", Some(Duration::from_millis(600)))
        .await
        .expect("get");
    assert_eq!(got, None);
    assert!(started.elapsed() >= Duration::from_millis(600));
    // A value set before the call is returned at once, whatever the timeout.
    db.set_event("wf", "k", "1").await.expect("set");
    let got = db
        .get_event("wf", "k", Some(Duration::from_secs(60)))
        .await
        .expect("get");
    assert_eq!(got.as_deref(), Some("1"));
}

#[tokio::test]
async fn set_events_writes_several_keys_at_once_and_wakes_their_waiters() {
    // No fallback polling: the wakes must come from the hints of the batch.
    let reader = common::fresh_without_fallback().await;
    let writer = common::other_handle(&reader).await;
    common::new_run(&reader, "wf").await;
    writer.set_event("wf", "a", "\"old\"").await.expect("set");

    let wait = |key: &'static str| {
        let r = reader.clone();
        tokio::spawn(async move { r.get_event("wf", key, Some(Duration::from_secs(60))).await })
    };
    let wb = wait("b");
    let wc = wait("c");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!wb.is_finished() && !wc.is_finished());

    // Replaces `a`, creates `b` and `c`; a key given twice takes its last value.
    let events = [
        ("a".to_string(), "\"new\"".to_string()),
        ("b".to_string(), "1".to_string()),
        ("c".to_string(), "2".to_string()),
        ("b".to_string(), "3".to_string()),
    ];
    writer.set_events("wf", &events).await.expect("set events");
    for (w, want) in [(wb, "3"), (wc, "2")] {
        let got = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("woken by the hint")
            .expect("join")
            .expect("get");
        assert_eq!(got.as_deref(), Some(want));
    }
    assert_eq!(
        reader
            .get_event("wf", "a", None)
            .await
            .expect("get")
            .as_deref(),
        Some("\"new\"")
    );
    // Empty and single-key batches.
    writer.set_events("wf", &[]).await.expect("empty");
    writer
        .set_events("wf", &[("d".to_string(), "4".to_string())])
        .await
        .expect("one");
    assert_eq!(
        reader
            .get_event("wf", "d", None)
            .await
            .expect("get")
            .as_deref(),
        Some("4")
    );
}

#[tokio::test]
async fn set_events_is_all_or_nothing() {
    let db = common::fresh().await;
    let two = [
        ("x".to_string(), "1".to_string()),
        ("y".to_string(), "2".to_string()),
    ];
    match db.set_events("ghost", &two).await {
        Err(Error::UnknownRun(id)) => assert_eq!(id, "ghost"),
        other => panic!("expected UnknownRun, got {other:?}"),
    }
    let small = common::fresh_with(|c| c.max_value_bytes = 10).await;
    common::new_run(&small, "wf").await;
    let one_too_large = [
        ("x".to_string(), "1".to_string()),
        ("y".to_string(), "01234567890".to_string()),
    ];
    assert!(matches!(
        small.set_events("wf", &one_too_large).await,
        Err(Error::ValueTooLarge { .. })
    ));
    assert_eq!(small.get_event("wf", "x", None).await.expect("get"), None);
}

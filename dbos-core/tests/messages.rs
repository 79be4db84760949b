//! Messages: idempotent send, order, recv (wait, wake across handles, timeout, replay),
//! peek and wait_for_message.
mod common;

use std::time::{Duration, Instant};

use dbos_core::{Error, StepWrite};

#[tokio::test]
async fn send_with_an_idempotency_key_twice_stores_one_message() {
    let db = common::fresh().await;
    common::new_run(&db, "wf").await;
    common::new_run(&db, "wf2").await;
    let first = db
        .send("wf", "t", "\"hi\"", Some("key-1"))
        .await
        .expect("send");
    let second = db
        .send("wf", "t", "\"hi\"", Some("key-1"))
        .await
        .expect("send again");
    assert_eq!(first, second);
    assert_eq!(first, "key-1::wf");
    // Same key, other destination: another message.
    let elsewhere = db
        .send("wf2", "t", "\"hi\"", Some("key-1"))
        .await
        .expect("send");
    assert_ne!(elsewhere, first);

    let msgs = db.peek_messages("wf", None, 10).await.expect("peek");
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].message_id, first);
    assert_eq!(msgs[0].body, "\"hi\"");
    assert_eq!(msgs[0].topic, "t");

    // Still idempotent after the message was consumed.
    assert_eq!(
        db.recv("wf", 0, "t", Duration::ZERO)
            .await
            .expect("recv")
            .as_deref(),
        Some("\"hi\"")
    );
    db.send("wf", "t", "\"hi\"", Some("key-1"))
        .await
        .expect("send after consume");
    assert!(
        db.peek_messages("wf", None, 10)
            .await
            .expect("peek")
            .is_empty()
    );

    // Without a key, two sends are two messages.
    let a = db.send("wf", "t", "x", None).await.expect("send");
    let b = db.send("wf", "t", "x", None).await.expect("send");
    assert_ne!(a, b);
    assert_eq!(
        db.peek_messages("wf", None, 10).await.expect("peek").len(),
        2
    );
}

#[tokio::test]
async fn send_to_an_unknown_run_is_refused() {
    let db = common::fresh().await;
    match db.send("ghost", "t", "1", None).await {
        Err(Error::UnknownRun(id)) => assert_eq!(id, "ghost"),
        other => panic!("expected UnknownRun, got {other:?}"),
    }
    assert!(matches!(
        db.send("ghost", "t", "1", Some("k")).await,
        Err(Error::UnknownRun(_))
    ));
}

#[tokio::test]
async fn oversized_message_is_refused() {
    let db = common::fresh_with(|c| c.max_value_bytes = 100).await;
    common::new_run(&db, "wf").await;
    assert!(matches!(
        db.send("wf", "t", &"x".repeat(101), None).await,
        Err(Error::ValueTooLarge { .. })
    ));
}

#[tokio::test]
async fn messages_are_delivered_in_send_order() {
    let db = common::fresh().await;
    common::new_run(&db, "wf").await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let topic = if i % 3 == 0 { "b" } else { "a" };
        // Many sends land in the same millisecond: order must not depend on timestamps.
        ids.push((
            topic,
            db.send("wf", topic, &i.to_string(), None)
                .await
                .expect("send"),
        ));
    }
    let all = db.peek_messages("wf", None, 100).await.expect("peek");
    assert_eq!(
        all.iter().map(|m| m.message_id.clone()).collect::<Vec<_>>(),
        ids.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>()
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let only_b = db.peek_messages("wf", Some("b"), 100).await.expect("peek");
    assert_eq!(only_b.len(), 10);
    assert!(only_b.iter().all(|m| m.topic == "b"));
    assert_eq!(
        db.peek_messages("wf", Some("a"), 3)
            .await
            .expect("peek")
            .len(),
        3
    );

    // recv consumes per topic, oldest first.
    let mut fid = 0;
    for expected in (0..30).filter(|i| i % 3 != 0) {
        let got = db.recv("wf", fid, "a", Duration::ZERO).await.expect("recv");
        assert_eq!(got, Some(expected.to_string()));
        fid += 1;
    }
    for expected in (0..30).filter(|i| i % 3 == 0) {
        let got = db.recv("wf", fid, "b", Duration::ZERO).await.expect("recv");
        assert_eq!(got, Some(expected.to_string()));
        fid += 1;
    }
    assert!(
        db.peek_messages("wf", None, 100)
            .await
            .expect("peek")
            .is_empty()
    );
}

#[tokio::test]
async fn recv_waits_and_wakes_on_a_send_from_another_handle() {
    // No fallback polling within the test's time: only the cross-process hint can wake it.
    let receiver = common::fresh_without_fallback().await;
    let sender = common::other_handle(&receiver).await;
    common::new_run(&receiver, "wf").await;

    let started = Instant::now();
    let task = {
        let r = receiver.clone();
        tokio::spawn(async move { r.recv("wf", 0, "sig", Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "recv must wait for a message");
    // Another topic does not satisfy it.
    sender
        .send("wf", "other", "\"no\"", None)
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !task.is_finished(),
        "a message of another topic must not satisfy recv"
    );

    sender
        .send("wf", "sig", "\"yes\"", None)
        .await
        .expect("send");
    let got = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("woken by the hint, long before any fallback")
        .expect("join")
        .expect("recv");
    assert_eq!(got.as_deref(), Some("\"yes\""));
    assert!(started.elapsed() < Duration::from_secs(30));
    // Recorded as the checkpoint of position 0.
    let cp = receiver
        .checkpoint("wf", 0)
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(cp.function_name, "DBOS.recv");
    assert_eq!(cp.output.as_deref(), Some("\"yes\""));
    // The other topic's message is still there.
    assert_eq!(
        receiver
            .peek_messages("wf", None, 10)
            .await
            .expect("peek")
            .len(),
        1
    );
}

#[tokio::test]
async fn recv_times_out_records_none_and_replays_it() {
    let db = common::fresh().await;
    common::new_run(&db, "wf").await;
    let started = Instant::now();
    let got = db
        .recv("wf", 0, "t", Duration::from_millis(700))
        .await
        .expect("recv");
    let waited = started.elapsed();
    assert_eq!(got, None);
    assert!(
        waited >= Duration::from_millis(700),
        "returned early: {waited:?}"
    );
    let cp = db
        .checkpoint("wf", 0)
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(cp.function_name, "DBOS.recv");
    assert_eq!(cp.output, None);

    // A message arriving later does not change the recorded timeout...
    db.send("wf", "t", "late", None).await.expect("send");
    assert_eq!(
        db.recv("wf", 0, "t", Duration::from_secs(5))
            .await
            .expect("replay"),
        None
    );
    // ...and is there for the next position.
    assert_eq!(
        db.recv("wf", 1, "t", Duration::from_secs(5))
            .await
            .expect("recv")
            .as_deref(),
        Some("late")
    );
}

#[tokio::test]
async fn recv_replays_from_its_checkpoint_on_another_handle() {
    let db = common::fresh().await;
    common::new_run(&db, "wf").await;
    db.send("wf", "t", "first", None).await.expect("send");
    db.send("wf", "t", "second", None).await.expect("send");
    assert_eq!(
        db.recv("wf", 3, "t", Duration::ZERO)
            .await
            .expect("recv")
            .as_deref(),
        Some("first")
    );
    // "Restart": a new handle replays position 3 and gets the same message, consuming nothing.
    let restarted = common::other_handle(&db).await;
    assert_eq!(
        restarted
            .recv("wf", 3, "t", Duration::ZERO)
            .await
            .expect("replay")
            .as_deref(),
        Some("first")
    );
    let left = restarted.peek_messages("wf", None, 10).await.expect("peek");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].body, "second");

    // A different step recorded at the position is a conflict, not a message.
    db.append_checkpoint(
        "wf",
        &dbos_core::Checkpoint {
            function_id: 7,
            function_name: "not-a-recv".into(),
            ..Default::default()
        },
    )
    .await
    .expect("append");
    assert!(matches!(
        db.recv("wf", 7, "t", Duration::ZERO).await,
        Err(Error::CheckpointConflict { function_id: 7, .. })
    ));
    assert_eq!(
        db.peek_messages("wf", None, 10).await.expect("peek").len(),
        1
    );
}

#[tokio::test]
async fn recv_and_record_step_never_consume_the_same_message_twice() {
    let a = common::fresh().await;
    let b = common::other_handle(&a).await;
    common::new_run(&a, "wf").await;
    for round in 0..20 {
        let m = a
            .send("wf", "t", &format!("m{round}"), None)
            .await
            .expect("send");
        let write = StepWrite {
            checkpoint: dbos_core::Checkpoint {
                function_id: 1000 + round,
                function_name: "step".into(),
                ..Default::default()
            },
            consume_messages: vec![m.clone()],
            set_events: vec![],
        };
        let (r, s) = tokio::join!(
            a.recv("wf", round, "t", Duration::ZERO),
            b.record_step("wf", &write)
        );
        let r = r.expect("recv");
        match (&r, &s) {
            (Some(body), Err(Error::AlreadyConsumed(_))) => assert_eq!(body, &format!("m{round}")),
            (None, Ok(())) => {}
            other => panic!("round {round}: both or neither consumed: {other:?}"),
        }
    }
}

#[tokio::test]
async fn wait_for_message_sees_existing_and_new_messages() {
    let a = common::fresh_without_fallback().await;
    let b = common::other_handle(&a).await;
    common::new_run(&a, "wf").await;
    assert!(
        !a.wait_for_message("wf", None, Some(Duration::from_millis(200)))
            .await
            .expect("wait")
    );
    let task = {
        let a = a.clone();
        tokio::spawn(async move {
            a.wait_for_message("wf", Some("t"), Some(Duration::from_secs(60)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.send("wf", "t", "1", None).await.expect("send");
    assert!(
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("woken")
            .expect("join")
            .expect("wait")
    );
    assert!(
        a.wait_for_message("wf", Some("t"), None)
            .await
            .expect("wait")
    );
    assert!(
        !a.wait_for_message("wf", Some("zzz"), Some(Duration::ZERO))
            .await
            .expect("wait")
    );
    // Peeking does not consume.
    assert_eq!(
        a.peek_messages("wf", Some("t"), 10)
            .await
            .expect("peek")
            .len(),
        1
    );
}

//! Checkpoints: append/read order, idempotent re-append, conflicts, unknown runs, size limits,
//! and `record_step`'s atomic consume + events.
mod common;

use std::time::Duration;

use dbos_core::{Checkpoint, Error, StepWrite};

fn step(function_id: i32, name: &str, output: &str) -> Checkpoint {
    Checkpoint {
        function_id,
        function_name: name.to_owned(),
        output: Some(output.to_owned()),
        started_at_ms: Some(dbos_core::now_ms()),
        completed_at_ms: Some(dbos_core::now_ms()),
        ..Default::default()
    }
}

#[tokio::test]
async fn appended_checkpoints_read_back_in_position_order() {
    let db = common::fresh().await;
    common::new_run(&db, "wf").await;
    // Written out of order on purpose: reads are ordered by position.
    for id in [0, 1, 2, 4, 3] {
        db.append_checkpoint(
            "wf",
            &step(id, &format!("step{id}"), &format!("\"out{id}\"")),
        )
        .await
        .expect("append");
    }
    let mut failing = step(5, "boom", "");
    failing.output = None;
    failing.error = Some("\"it failed\"".into());
    failing.child_workflow_id = Some("child-1".into());
    db.append_checkpoint("wf", &failing).await.expect("append");

    let all = db.checkpoints("wf").await.expect("read");
    let ids: Vec<i32> = all.iter().map(|c| c.function_id).collect();
    assert_eq!(ids, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(all[3].function_name, "step3");
    assert_eq!(all[3].output.as_deref(), Some("\"out3\""));
    assert_eq!(all[5], failing);

    let one = db
        .checkpoint("wf", 2)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(one.output.as_deref(), Some("\"out2\""));
    assert!(db.checkpoint("wf", 99).await.expect("read").is_none());
    assert!(db.checkpoints("nope").await.expect("read").is_empty());
}

#[tokio::test]
async fn identical_reappend_succeeds_and_different_value_conflicts() {
    let db = common::fresh().await;
    common::new_run(&db, "wf").await;
    let first = step(0, "fetch", "\"a\"");
    db.append_checkpoint("wf", &first).await.expect("append");

    // The retry of a write whose acknowledgement was lost: same content, other timestamps.
    let mut retried = first.clone();
    retried.started_at_ms = Some(1);
    retried.completed_at_ms = Some(2);
    db.append_checkpoint("wf", &retried)
        .await
        .expect("identical re-append is accepted");

    for different in [
        step(0, "fetch", "\"b\""),
        step(0, "other-name", "\"a\""),
        Checkpoint {
            error: Some("\"e\"".into()),
            ..first.clone()
        },
        Checkpoint {
            child_workflow_id: Some("c".into()),
            ..first.clone()
        },
    ] {
        match db.append_checkpoint("wf", &different).await {
            Err(Error::CheckpointConflict {
                workflow_id,
                function_id,
            }) => {
                assert_eq!(workflow_id, "wf");
                assert_eq!(function_id, 0);
            }
            other => panic!("expected a conflict for {different:?}, got {other:?}"),
        }
    }
    // The stored row is untouched.
    let stored = db
        .checkpoint("wf", 0)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(stored, first);
}

#[tokio::test]
async fn writes_to_an_unknown_run_are_refused() {
    let db = common::fresh().await;
    match db.append_checkpoint("ghost", &step(0, "s", "1")).await {
        Err(Error::UnknownRun(id)) => assert_eq!(id, "ghost"),
        other => panic!("expected UnknownRun, got {other:?}"),
    }
    let write = StepWrite {
        checkpoint: step(0, "s", "1"),
        consume_messages: vec!["m-1".into()],
        set_events: vec![("k".into(), "v".into())],
    };
    assert!(matches!(
        db.record_step("ghost", &write).await,
        Err(Error::UnknownRun(_))
    ));
    let plain = StepWrite {
        checkpoint: step(0, "s", "1"),
        ..Default::default()
    };
    assert!(matches!(
        db.record_step("ghost", &plain).await,
        Err(Error::UnknownRun(_))
    ));
}

#[tokio::test]
async fn oversized_values_are_refused_before_writing() {
    let db = common::fresh_with(|c| c.max_value_bytes = 1024).await;
    common::new_run(&db, "wf").await;
    let big = "x".repeat(1025);
    match db.append_checkpoint("wf", &step(0, "s", &big)).await {
        Err(Error::ValueTooLarge { size, limit, .. }) => {
            assert_eq!(size, 1025);
            assert_eq!(limit, 1024);
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    let mut err_step = step(0, "s", "1");
    err_step.error = Some(big.clone());
    assert!(matches!(
        db.append_checkpoint("wf", &err_step).await,
        Err(Error::ValueTooLarge { .. })
    ));
    let write = StepWrite {
        checkpoint: step(0, "s", "1"),
        set_events: vec![("k".into(), big.clone())],
        ..Default::default()
    };
    assert!(matches!(
        db.record_step("wf", &write).await,
        Err(Error::ValueTooLarge { .. })
    ));
    assert!(db.checkpoints("wf").await.expect("read").is_empty());
    // Exactly at the limit is fine.
    db.append_checkpoint("wf", &step(0, "s", &"y".repeat(1024)))
        .await
        .expect("at the limit");
}

#[tokio::test]
async fn record_step_consumes_exactly_the_named_messages() {
    let db = common::fresh().await;
    common::new_run(&db, "wf").await;
    let m1 = db.send("wf", "t", "1", None).await.expect("send");
    let m2 = db.send("wf", "t", "2", None).await.expect("send");
    let m3 = db.send("wf", "u", "3", None).await.expect("send");

    let write = StepWrite {
        checkpoint: step(0, "activation", "\"batch-0\""),
        consume_messages: vec![m1.clone(), m3.clone(), m1.clone()],
        set_events: vec![],
    };
    db.record_step("wf", &write).await.expect("record");
    let left = db.peek_messages("wf", None, 10).await.expect("peek");
    assert_eq!(
        left.iter()
            .map(|m| m.message_id.clone())
            .collect::<Vec<_>>(),
        vec![m2.clone()]
    );
    assert!(db.checkpoint("wf", 0).await.expect("read").is_some());

    // The retry of the same write (lost acknowledgement) succeeds without consuming anything
    // else, even though its messages are consumed now.
    db.record_step("wf", &write).await.expect("retried record");
    assert_eq!(
        db.peek_messages("wf", None, 10).await.expect("peek").len(),
        1
    );

    // A different write at the same position conflicts.
    let other = StepWrite {
        checkpoint: step(0, "activation", "\"batch-0-other\""),
        consume_messages: vec![m2.clone()],
        set_events: vec![],
    };
    assert!(matches!(
        db.record_step("wf", &other).await,
        Err(Error::CheckpointConflict { .. })
    ));
    assert_eq!(
        db.peek_messages("wf", None, 10).await.expect("peek").len(),
        1
    );
}

#[tokio::test]
async fn record_step_with_a_consumed_message_writes_nothing() {
    let db = common::fresh().await;
    common::new_run(&db, "wf").await;
    common::new_run(&db, "other").await;
    let m1 = db.send("wf", "t", "1", None).await.expect("send");
    let m2 = db.send("wf", "t", "2", None).await.expect("send");
    let foreign = db.send("other", "t", "x", None).await.expect("send");
    db.record_step(
        "wf",
        &StepWrite {
            checkpoint: step(0, "a", "0"),
            consume_messages: vec![m1.clone()],
            set_events: vec![],
        },
    )
    .await
    .expect("first step");

    // m1 is consumed already: the whole step (m2, the checkpoint, the event) rolls back.
    let write = StepWrite {
        checkpoint: step(1, "a", "1"),
        consume_messages: vec![m2.clone(), m1.clone()],
        set_events: vec![("status".into(), "\"done\"".into())],
    };
    match db.record_step("wf", &write).await {
        Err(Error::AlreadyConsumed(id)) => assert_eq!(id, m1),
        other => panic!("expected AlreadyConsumed, got {other:?}"),
    }
    assert!(db.checkpoint("wf", 1).await.expect("read").is_none());
    assert_eq!(
        db.peek_messages("wf", None, 10).await.expect("peek")[0].message_id,
        m2
    );
    assert!(
        db.get_event("wf", "status", None)
            .await
            .expect("get")
            .is_none()
    );

    // Another run's message cannot be consumed by this run either.
    let write = StepWrite {
        checkpoint: step(1, "a", "1"),
        consume_messages: vec![foreign.clone()],
        set_events: vec![],
    };
    assert!(matches!(
        db.record_step("wf", &write).await,
        Err(Error::AlreadyConsumed(id)) if id == foreign
    ));
    assert_eq!(
        db.peek_messages("other", None, 10)
            .await
            .expect("peek")
            .len(),
        1
    );
}

#[tokio::test]
async fn concurrent_consumers_of_one_message_exactly_one_wins() {
    let a = common::fresh().await;
    let b = common::other_handle(&a).await;
    common::new_run(&a, "wf").await;
    for round in 0..20 {
        let m = a
            .send("wf", "t", &round.to_string(), None)
            .await
            .expect("send");
        let write = |fid: i32| StepWrite {
            checkpoint: step(fid, "consume", &round.to_string()),
            consume_messages: vec![m.clone()],
            set_events: vec![],
        };
        let (wa, wb) = (write(2 * round), write(2 * round + 1));
        let (ra, rb) = tokio::join!(
            {
                let a = a.clone();
                async move { a.record_step("wf", &wa).await }
            },
            {
                let b = b.clone();
                async move { b.record_step("wf", &wb).await }
            }
        );
        let oks = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(oks, 1, "round {round}: {ra:?} / {rb:?}");
        for r in [&ra, &rb] {
            if let Err(e) = r {
                assert!(matches!(e, Error::AlreadyConsumed(id) if *id == m), "{e:?}");
            }
        }
        let written = [2 * round, 2 * round + 1];
        let mut present = 0;
        for fid in written {
            if a.checkpoint("wf", fid).await.expect("read").is_some() {
                present += 1;
            }
        }
        assert_eq!(present, 1, "round {round}: exactly the winner's checkpoint");
    }
    assert!(
        a.peek_messages("wf", None, 100)
            .await
            .expect("peek")
            .is_empty()
    );
}

#[tokio::test]
async fn record_step_publishes_events_with_history_and_wakes_waiters() {
    let a = common::fresh_without_fallback().await;
    let b = common::other_handle(&a).await;
    common::new_run(&a, "wf").await;

    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.get_event("wf", "phase", Some(Duration::from_secs(30)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.record_step(
        "wf",
        &StepWrite {
            checkpoint: step(0, "s", "0"),
            consume_messages: vec![],
            set_events: vec![
                ("phase".into(), "\"one\"".into()),
                ("other".into(), "1".into()),
                ("phase".into(), "\"two\"".into()),
            ],
        },
    )
    .await
    .expect("record");
    let seen = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("woken well before the fallback")
        .expect("join")
        .expect("get_event");
    assert_eq!(seen.as_deref(), Some("\"two\""));

    a.record_step(
        "wf",
        &StepWrite {
            checkpoint: step(1, "s", "1"),
            consume_messages: vec![],
            set_events: vec![("phase".into(), "\"three\"".into())],
        },
    )
    .await
    .expect("record");
    assert_eq!(
        b.get_event("wf", "phase", None)
            .await
            .expect("get")
            .as_deref(),
        Some("\"three\"")
    );

    let mut conn = common::plain_connection().await;
    let history: Vec<(i32, String, String)> = sqlx::query_as(&format!(
        "SELECT function_id, key, value FROM \"{}\".workflow_events_history
          WHERE workflow_uuid = 'wf' ORDER BY function_id, key",
        a.schema()
    ))
    .fetch_all(&mut conn)
    .await
    .expect("history");
    assert_eq!(
        history,
        vec![
            (0, "other".to_owned(), "1".to_owned()),
            (0, "phase".to_owned(), "\"two\"".to_owned()),
            (1, "phase".to_owned(), "\"three\"".to_owned()),
        ]
    );
}

/// `complete_with_step`: the last checkpoint and the outcome in one commit, both or neither.
#[tokio::test]
async fn complete_with_step_writes_the_checkpoint_and_the_outcome_together() {
    use dbos_core::{CompleteResult, Outcome, RunState};
    let db = common::fresh().await;
    let waiter_db = common::other_handle(&db).await;
    for id in ["a", "b", "c"] {
        common::new_run(&db, id).await;
    }
    let claimed = db
        .claim("exec-1", &["test-queue".to_string()], 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    let msg = db.send("a", "inbox", "\"hi\"", None).await.expect("send");

    // Another process awaits "a": the completion wakes it through its notification.
    let awaited = tokio::spawn(async move {
        waiter_db
            .await_outcome("a", Some(Duration::from_secs(20)))
            .await
    });
    let write = StepWrite {
        checkpoint: step(0, "activation", "\"last\""),
        consume_messages: vec![msg.clone()],
        set_events: vec![("k".into(), "\"v\"".into())],
    };
    let done = db
        .complete_with_step("a", "exec-1", &Outcome::Success("\"ok\"".into()), &write)
        .await
        .expect("complete");
    assert!(matches!(done, CompleteResult::Recorded));
    let status = db.status("a").await.expect("status").expect("row");
    assert_eq!(status.state, RunState::Success);
    assert_eq!(status.output.as_deref(), Some("\"ok\""));
    assert_eq!(db.checkpoints("a").await.expect("read").len(), 1);
    assert!(
        db.peek_messages("a", None, 10)
            .await
            .expect("peek")
            .is_empty()
    );
    assert_eq!(
        db.get_event("a", "k", None)
            .await
            .expect("event")
            .as_deref(),
        Some("\"v\"")
    );
    let woke = awaited
        .await
        .expect("join")
        .expect("await")
        .expect("in time");
    assert_eq!(woke.state, RunState::Success);

    // The same call again (a retry after a lost acknowledgement) is recorded, writes nothing.
    let again = db
        .complete_with_step("a", "exec-1", &Outcome::Success("\"ok\"".into()), &write)
        .await
        .expect("retry");
    assert!(matches!(again, CompleteResult::Recorded));

    // A run decided elsewhere: neither the checkpoint nor the outcome is written.
    db.cancel("b", Some("stop")).await.expect("cancel");
    let write_b = StepWrite {
        checkpoint: step(0, "activation", "\"last\""),
        ..Default::default()
    };
    let decided = db
        .complete_with_step("b", "exec-1", &Outcome::Success("\"ok\"".into()), &write_b)
        .await
        .expect("complete b");
    assert!(matches!(decided, CompleteResult::AlreadyDecided(s) if s.state == RunState::Cancelled));
    assert!(db.checkpoints("b").await.expect("read").is_empty());

    // Held by another executor: nothing written either.
    let other = db
        .complete_with_step("c", "exec-2", &Outcome::Success("\"ok\"".into()), &write_b)
        .await
        .expect("complete c");
    assert!(matches!(other, CompleteResult::AlreadyDecided(s) if s.state == RunState::Pending));
    assert!(db.checkpoints("c").await.expect("read").is_empty());

    // A position taken by a different result is a conflict, and the run stays open.
    db.append_checkpoint("c", &step(0, "activation", "\"other\""))
        .await
        .expect("append");
    let err = db
        .complete_with_step("c", "exec-1", &Outcome::Success("\"ok\"".into()), &write_b)
        .await
        .expect_err("conflict");
    assert!(matches!(err, Error::CheckpointConflict { .. }), "{err}");
    let c = db.status("c").await.expect("status").expect("row");
    assert_eq!(c.state, RunState::Pending);
}

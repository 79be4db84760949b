//! Schedules: create/read/list/delete, one-transaction evaluation (enqueue + advance), due
//! selection with SKIP LOCKED across handles, deterministic ids never starting twice, open-run
//! tracking and wake-on-finish.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dbos_core::{
    EnqueueRequest, Enqueued, Error, NewSchedule, Outcome, RunState, ScheduleChange, ScheduleTarget,
};
use serde_json::json;

fn new_schedule(id: &str, next: Option<i64>) -> NewSchedule {
    NewSchedule {
        schedule_id: id.into(),
        definition: json!({"every_ms": 1000}),
        state: json!({"fired": 0}),
        next_fire_at_ms: next,
    }
}

/// The decision the tests use: start `<id>-<nominal>` at the nominal time, advance by a second.
fn fire_once(
    row: &dbos_core::ScheduleRow,
    _: &[dbos_core::WorkflowStatus],
) -> (Option<ScheduleChange>, ()) {
    let nominal = row.next_fire_at_ms.unwrap_or(0);
    let fired = row.state["fired"].as_i64().unwrap_or(0) + 1;
    let run = format!("{}-{nominal}", row.schedule_id);
    (
        Some(ScheduleChange {
            definition: None,
            state: json!({ "fired": fired }),
            next_fire_at_ms: Some(nominal + 1000),
            wake_on_finish: false,
            cancel: Vec::new(),
            start: vec![EnqueueRequest::new(run, "wf", "q", "[]")],
        }),
        (),
    )
}

#[tokio::test]
async fn create_read_list_delete() {
    let db = common::fresh().await;
    let created = db
        .create_schedule(&new_schedule("b", Some(5)))
        .await
        .expect("create");
    assert_eq!(created.version, 1);
    assert_eq!(created.next_fire_at_ms, Some(5));
    assert!(created.running.is_empty());
    let e = db
        .create_schedule(&new_schedule("b", None))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::ScheduleExists(ref id) if id == "b"),
        "{e}"
    );
    db.create_schedule(&new_schedule("a", None))
        .await
        .expect("create");
    db.create_schedule(&new_schedule("c", None))
        .await
        .expect("create");
    let all = db.list_schedules(None, 10).await.expect("list");
    let ids: Vec<_> = all.iter().map(|s| s.schedule_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let page = db.list_schedules(Some("a"), 1).await.expect("list");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].schedule_id, "b");
    assert_eq!(page[0].definition, json!({"every_ms": 1000}));
    assert!(db.delete_schedule("b").await.expect("delete"));
    assert!(!db.delete_schedule("b").await.expect("delete"));
    assert!(db.schedule("b").await.expect("read").is_none());
    let e = db
        .evaluate_schedule(ScheduleTarget::Id("b"), fire_once)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UnknownSchedule(_)), "{e}");
}

#[tokio::test]
async fn evaluation_enqueues_and_advances_in_one_transaction() {
    let db = common::fresh().await;
    let now = dbos_core::now_ms();
    db.create_schedule(&new_schedule("s", Some(now - 10)))
        .await
        .expect("create");
    // A schedule not yet due is not picked.
    db.create_schedule(&new_schedule("later", Some(now + 3_600_000)))
        .await
        .expect("create");
    let done = db
        .evaluate_schedule(ScheduleTarget::Due, fire_once)
        .await
        .expect("evaluate")
        .expect("one was due");
    assert_eq!(done.schedule_id, "s");
    assert!(matches!(done.started[..], [Enqueued::Created(_)]));
    let run = format!("s-{}", now - 10);
    let status = db.status(&run).await.expect("status").expect("run exists");
    assert_eq!(status.state, RunState::Enqueued);
    let row = db.schedule("s").await.expect("read").expect("exists");
    assert_eq!(row.next_fire_at_ms, Some(now - 10 + 1000));
    assert_eq!(row.running, vec![run.clone()]);
    assert_eq!(row.state, json!({"fired": 1}));
    assert_eq!(row.version, 2);
    let wake = db.next_schedule_wakeup().await.expect("wakeup");
    assert_eq!(wake.due_at_ms, Some(now - 10 + 1000));
    assert!(wake.watch_runs.is_empty());

    // A decision that fails to enqueue (invalid run id) rolls the whole evaluation back.
    let e = db
        .evaluate_schedule(ScheduleTarget::Id("s"), |_, _| {
            (
                Some(ScheduleChange {
                    state: json!({"fired": 99}),
                    next_fire_at_ms: None,
                    start: vec![
                        EnqueueRequest::new("fine-run", "wf", "q", "[]"),
                        EnqueueRequest::new("", "wf", "q", "[]"),
                    ],
                    ..Default::default()
                }),
                (),
            )
        })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    assert!(db.status("fine-run").await.expect("status").is_none());
    let after = db.schedule("s").await.expect("read").expect("exists");
    assert_eq!(after, row, "nothing written");

    // `None` writes nothing and still hands the value back.
    let v = db
        .evaluate_schedule(ScheduleTarget::Id("s"), |row, runs| {
            (None, (row.version, runs.len()))
        })
        .await
        .expect("evaluate")
        .expect("targeted");
    assert_eq!(v.value, (2, 1));
    assert!(v.started.is_empty());
}

#[tokio::test]
async fn the_same_nominal_time_never_starts_twice() {
    let db = common::fresh().await;
    let now = dbos_core::now_ms();
    db.create_schedule(&new_schedule("s", Some(now - 1)))
        .await
        .expect("create");
    db.evaluate_schedule(ScheduleTarget::Due, fire_once)
        .await
        .expect("evaluate")
        .expect("due");
    // As if a scheduler evaluated the same nominal time again (a crash after the commit, before
    // its acknowledgement): the deterministic id finds the run, nothing new starts.
    let again = db
        .evaluate_schedule(ScheduleTarget::Id("s"), |row, runs| {
            let mut row = row.clone();
            row.next_fire_at_ms = Some(now - 1);
            fire_once(&row, runs)
        })
        .await
        .expect("evaluate")
        .expect("targeted");
    assert!(matches!(again.started[..], [Enqueued::Existing(_)]));
    let runs = db
        .list_workflows(&dbos_core::ListFilter::default())
        .await
        .expect("list");
    assert_eq!(runs.len(), 1);
}

#[tokio::test]
async fn concurrent_schedulers_share_due_rows_without_double_starts() {
    let db = common::fresh().await;
    let other = common::other_handle(&db).await;
    let now = dbos_core::now_ms();
    for i in 0..20 {
        db.create_schedule(&new_schedule(&format!("s{i:02}"), Some(now - 5_000)))
            .await
            .expect("create");
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for handle in [db.clone(), other.clone(), db.clone(), other.clone()] {
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            // Each schedule is due at least 5 times (every second since 5 s ago).
            while let Some(done) = handle
                .evaluate_schedule(ScheduleTarget::Due, fire_once)
                .await
                .expect("evaluate")
            {
                calls.fetch_add(1, Ordering::SeqCst);
                n += done.started.len();
            }
            n
        }));
    }
    let mut started = 0;
    for t in tasks {
        started += t.await.expect("join");
    }
    let runs = db
        .list_workflows(&dbos_core::ListFilter::default())
        .await
        .expect("list");
    assert_eq!(calls.load(Ordering::SeqCst), started);
    assert_eq!(
        runs.len(),
        started,
        "every nominal time started exactly once"
    );
    let mut fired = 0;
    for i in 0..20 {
        let row = db
            .schedule(&format!("s{i:02}"))
            .await
            .expect("read")
            .expect("exists");
        let n = row.state["fired"].as_i64().expect("fired");
        // Due at now-5s, now-4s, ..., now-1s and possibly later ones passed during the test.
        assert!(n >= 5, "{n}");
        assert!(row.next_fire_at_ms.is_some_and(|t| t > now));
        fired += n as usize;
    }
    assert_eq!(fired, started);
}

#[tokio::test]
async fn open_runs_are_tracked_and_finishing_wakes_the_schedule() {
    let db = common::fresh().await;
    let now = dbos_core::now_ms();
    db.create_schedule(&new_schedule("s", Some(now - 1)))
        .await
        .expect("create");
    let done = db
        .evaluate_schedule(ScheduleTarget::Due, |row, runs| {
            let (change, ()) = fire_once(row, runs);
            let mut change = change.expect("change");
            change.next_fire_at_ms = None;
            change.wake_on_finish = true;
            (Some(change), ())
        })
        .await
        .expect("evaluate")
        .expect("due");
    let run = done.started[0].status().workflow_id.clone();
    // Not due while its run is open.
    assert!(
        db.evaluate_schedule(ScheduleTarget::Due, fire_once)
            .await
            .expect("evaluate")
            .is_none()
    );
    let wake = db.next_schedule_wakeup().await.expect("wakeup");
    assert_eq!(wake.due_at_ms, None);
    assert_eq!(wake.watch_runs, vec![run.clone()]);

    let claimed = db
        .claim("exec", &["q".to_string()], 1)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    db.complete(&run, Some("exec"), &Outcome::Success("[]".into()))
        .await
        .expect("complete");
    // Due now; the decision sees the finished run once, then it is dropped from the open runs.
    let seen = db
        .evaluate_schedule(ScheduleTarget::Due, |row, runs| {
            let states: Vec<_> = runs.iter().map(|r| r.state).collect();
            (
                Some(ScheduleChange {
                    state: row.state.clone(),
                    ..Default::default()
                }),
                states,
            )
        })
        .await
        .expect("evaluate")
        .expect("due after the run finished");
    assert_eq!(seen.value, vec![RunState::Success]);
    let row = db.schedule("s").await.expect("read").expect("exists");
    assert!(row.running.is_empty());
    assert!(!row.wake_on_finish);

    // Cancelling an open run and starting the next one happen in the same transaction.
    let first = db
        .evaluate_schedule(ScheduleTarget::Id("s"), |row, _| {
            let mut row = row.clone();
            row.next_fire_at_ms = Some(1);
            fire_once(&row, &[])
        })
        .await
        .expect("evaluate")
        .expect("targeted");
    let open = first.started[0].status().workflow_id.clone();
    let second = db
        .evaluate_schedule(ScheduleTarget::Id("s"), |row, runs| {
            assert_eq!(runs.len(), 1);
            let mut next = row.clone();
            next.next_fire_at_ms = Some(2);
            let (change, ()) = fire_once(&next, runs);
            let mut change = change.expect("change");
            change.cancel = vec![(runs[0].workflow_id.clone(), "replaced".into())];
            (Some(change), ())
        })
        .await
        .expect("evaluate")
        .expect("targeted");
    let cancelled = db.status(&open).await.expect("status").expect("run");
    assert_eq!(cancelled.state, RunState::Cancelled);
    assert_eq!(cancelled.error.as_deref(), Some("replaced"));
    let row = db.schedule("s").await.expect("read").expect("exists");
    assert_eq!(
        row.running,
        vec![second.started[0].status().workflow_id.clone()],
        "the cancelled run left the open runs"
    );
}

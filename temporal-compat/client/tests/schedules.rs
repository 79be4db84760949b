//! Schedules through the client against a real Postgres, one fresh namespace per test. The
//! workers' side is played by calling the scheduler's `fire_due` and dbos-core's claim and
//! complete directly, so overlap policies can be checked step by step.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbos_core::{CompleteResult, SystemDatabase};
use futures::StreamExt;
use temporal_compat_client::protocol::{RunAttributes, TerminalOutcome};
use temporal_compat_client::schedules::{
    CreateScheduleOptions, ListSchedulesOptions, ScheduleAction, ScheduleBackfill,
    ScheduleCalendarSpec, ScheduleError, ScheduleOverlapPolicy, ScheduleSpec, fire_due,
};
use temporal_compat_client::{Client, ClientOptions, Connection, ConnectionOptions};
use temporalio_common_wasm::{HasWorkflowDefinition, WorkflowDefinition};
use temporalio_protos::temporal::api::failure::v1::Failure;

struct Greet;
impl WorkflowDefinition for Greet {
    type Input = String;
    type Output = String;
    fn name(&self) -> &str {
        "Greet"
    }
}
impl HasWorkflowDefinition for Greet {
    type Run = Greet;
}

const TQ: &str = "sched-queue";
const EXEC: &str = "sched-executor";

async fn setup() -> (Client, SystemDatabase) {
    let url = std::env::var("DBOSIFY_TEST_DATABASE_URL").expect("DBOSIFY_TEST_DATABASE_URL");
    let url = url::Url::parse(&url).expect("url");
    let conn = tokio::spawn(Connection::connect(
        ConnectionOptions::new(url).identity("tester").build(),
    ))
    .await
    .expect("join")
    .expect("connect");
    let namespace = format!("t-{}", uuid::Uuid::new_v4().simple());
    let client = Client::new(conn, ClientOptions::new(namespace).build()).expect("client");
    let db = client.system_database().await.expect("db");
    (client, db)
}

fn action() -> ScheduleAction {
    action_for("greet")
}

/// Workflow ids are `<prefix>-<nominal time>`: schedules firing the same times need their own.
fn action_for(prefix: &str) -> ScheduleAction {
    ScheduleAction::start_workflow(Greet, "world".to_string(), TQ, prefix)
}

fn options(spec: ScheduleSpec) -> CreateScheduleOptions {
    options_for("greet", spec)
}

fn options_for(prefix: &str, spec: ScheduleSpec) -> CreateScheduleOptions {
    CreateScheduleOptions::builder()
        .action(action_for(prefix))
        .spec(spec)
        .build()
}

fn status_code(e: &ScheduleError) -> tonic::Code {
    match e {
        ScheduleError::Rpc(s) => s.code(),
        other => panic!("not a status: {other}"),
    }
}

/// Plays a worker finishing one open run of the queue.
async fn finish_one(db: &SystemDatabase, outcome: &TerminalOutcome) -> String {
    let claimed = db.claim(EXEC, &[TQ.to_string()], 1).await.expect("claim");
    let Some(first) = claimed.first() else {
        let all = db
            .list_workflows(&dbos_core::ListFilter::default())
            .await
            .expect("list");
        let states: Vec<_> = all.iter().map(|s| (&s.workflow_id, s.state)).collect();
        panic!("no open run to finish: {states:?}");
    };
    let run = first.workflow_id.clone();
    let r = db
        .complete(&run, Some(EXEC), &outcome.to_dbos())
        .await
        .expect("complete");
    assert!(matches!(r, CompleteResult::Recorded));
    run
}

fn completed() -> TerminalOutcome {
    TerminalOutcome::Completed { result: vec![] }
}

/// A whole minute a while ago, so backfilled times are distinct seconds.
fn minute_ago(minutes: u64) -> SystemTime {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    UNIX_EPOCH + Duration::from_secs((now / 60 - minutes) * 60)
}

#[tokio::test]
async fn create_describe_list_trigger_pause_delete() {
    let (client, db) = setup().await;
    let handle = client
        .create_schedule(
            "demo",
            CreateScheduleOptions::builder()
                .action(action())
                .spec(ScheduleSpec::from_interval(Duration::from_secs(3600)))
                .trigger_immediately(true)
                .note("hello")
                .build(),
        )
        .await
        .expect("create");
    let desc = handle.describe(Default::default()).await.expect("describe");
    assert!(!desc.paused());
    assert_eq!(desc.note(), Some("hello"));
    assert_eq!(desc.action_count(), 1);
    let recent = desc.recent_actions();
    assert_eq!(recent.len(), 1);
    // Temporal's naming: the action's id plus the nominal time in RFC 3339 seconds.
    let id = &recent[0].workflow_id;
    assert!(id.starts_with("greet-20") && id.ends_with('Z'), "{id}");
    assert_eq!(
        id.len(),
        "greet-".len() + "2026-11-21T10:00:00Z".len(),
        "{id}"
    );
    assert_eq!(desc.running_actions().len(), 1);
    assert_eq!(desc.future_action_times().len(), 10);
    let first = desc.future_action_times()[0]
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs();
    assert_eq!(first % 3600, 0, "intervals align to the epoch");
    assert!(desc.create_time().is_some());
    let temporal_compat_client::schedules::ScheduleDescriptionAction::StartWorkflow(a) =
        desc.action()
    else {
        panic!("a start-workflow action")
    };
    assert_eq!(a.workflow_type(), "Greet");
    assert_eq!(a.task_queue(), TQ);
    assert_eq!(
        a.args::<String>().await.expect("args"),
        Some("world".into())
    );

    // The run is a normal workflow run, with the scheduled-by search attributes.
    let run = db.status(id).await.expect("status").expect("run");
    let attrs = RunAttributes::of_run(&run).expect("attrs");
    assert_eq!(attrs.task_queue, TQ);
    assert_eq!(attrs.sav["TemporalScheduledById"], "demo");

    let e = client
        .create_schedule("demo", options(ScheduleSpec::default()))
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::AlreadyExists, "{e}");

    let mut stream = client.list_schedules(ListSchedulesOptions::default());
    let entry = stream.next().await.expect("one").expect("ok");
    assert_eq!(entry.schedule_id(), "demo");
    assert_eq!(entry.workflow_type(), Some("Greet"));
    assert_eq!(entry.recent_actions().len(), 1);
    assert_eq!(entry.future_action_times().len(), 5);
    assert!(stream.next().await.is_none());

    handle
        .pause(Some("maintenance"), Default::default())
        .await
        .expect("pause");
    let desc = handle.describe(Default::default()).await.expect("describe");
    assert!(desc.paused());
    assert_eq!(desc.note(), Some("maintenance"));
    assert_eq!(
        db.schedule("demo").await.unwrap().unwrap().next_fire_at_ms,
        None
    );
    handle
        .unpause(None::<String>, Default::default())
        .await
        .expect("unpause");
    let desc = handle.describe(Default::default()).await.expect("describe");
    assert!(!desc.paused());
    assert_eq!(desc.note(), Some("Unpaused via Rust SDK"));
    assert!(
        db.schedule("demo")
            .await
            .unwrap()
            .unwrap()
            .next_fire_at_ms
            .is_some()
    );

    // The default overlap policy (Skip) skips a trigger while the first run is open.
    handle
        .trigger(ScheduleOverlapPolicy::Unspecified, Default::default())
        .await
        .expect("trigger");
    let desc = handle.describe(Default::default()).await.expect("describe");
    assert_eq!(desc.action_count(), 1);
    assert_eq!(desc.overlap_skipped(), 1);

    handle
        .update(
            |u| {
                u.set_note("updated").set_paused(true);
            },
            Default::default(),
        )
        .await
        .expect("update");
    let desc = handle.describe(Default::default()).await.expect("describe");
    assert!(desc.paused());
    assert_eq!(desc.note(), Some("updated"));
    assert!(desc.update_time().is_some());

    handle.delete(Default::default()).await.expect("delete");
    let e = handle.describe(Default::default()).await.unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::NotFound, "{e}");
    let e = handle.delete(Default::default()).await.unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::NotFound, "{e}");
    // Deleting a schedule leaves its runs alone.
    assert!(db.status(id).await.expect("status").is_some());
}

async fn backfill_three(client: &Client, id: &str, policy: ScheduleOverlapPolicy) {
    let handle = client
        .create_schedule(
            id,
            options_for(id, ScheduleSpec::from_interval(Duration::from_secs(60))),
        )
        .await
        .expect("create");
    handle
        .backfill(
            [ScheduleBackfill::new(minute_ago(5), minute_ago(3))
                .overlap_policy(policy)
                .build()],
            Default::default(),
        )
        .await
        .expect("backfill");
}

#[tokio::test]
async fn overlap_policies_skip_buffer_and_allow() {
    let (client, db) = setup().await;

    backfill_three(&client, "allow", ScheduleOverlapPolicy::AllowAll).await;
    let d = client
        .get_schedule_handle("allow")
        .describe(Default::default())
        .await
        .expect("describe");
    assert_eq!(d.action_count(), 3);
    assert_eq!(d.running_actions().len(), 3);
    let times: Vec<_> = d.recent_actions().iter().map(|a| a.schedule_time).collect();
    assert_eq!(
        times,
        vec![
            Some(minute_ago(5)),
            Some(minute_ago(4)),
            Some(minute_ago(3))
        ]
    );
    for _ in 0..3 {
        finish_one(&db, &completed()).await;
    }

    backfill_three(&client, "skip", ScheduleOverlapPolicy::Skip).await;
    let d = client
        .get_schedule_handle("skip")
        .describe(Default::default())
        .await
        .expect("describe");
    assert_eq!((d.action_count(), d.overlap_skipped()), (1, 2));
    finish_one(&db, &completed()).await;

    backfill_three(&client, "one", ScheduleOverlapPolicy::BufferOne).await;
    let h = client.get_schedule_handle("one");
    let d = h.describe(Default::default()).await.expect("describe");
    assert_eq!(d.action_count(), 1);
    assert_eq!(d.raw().info.as_ref().unwrap().buffer_size, 1);
    assert_eq!(d.raw().info.as_ref().unwrap().buffer_dropped, 1);
    // Nothing is due until the running workflow finishes.
    assert_eq!(fire_due(&db, 10).await.expect("fire"), 0);
    finish_one(&db, &completed()).await;
    assert_eq!(fire_due(&db, 10).await.expect("fire"), 1);
    let d = h.describe(Default::default()).await.expect("describe");
    assert_eq!(d.action_count(), 2);
    assert_eq!(d.running_actions().len(), 1);
    assert_eq!(
        d.recent_actions()[1].schedule_time,
        Some(minute_ago(4)),
        "the buffered time is started"
    );
    finish_one(&db, &completed()).await;
    // The buffer is empty: a finishing run no longer makes the schedule due.
    assert_eq!(fire_due(&db, 10).await.expect("fire"), 0);

    backfill_three(&client, "all", ScheduleOverlapPolicy::BufferAll).await;
    let h = client.get_schedule_handle("all");
    for expected in 1..=3 {
        let d = h.describe(Default::default()).await.expect("describe");
        assert_eq!(d.action_count(), expected);
        assert_eq!(d.running_actions().len(), 1, "one at a time");
        finish_one(&db, &completed()).await;
        fire_due(&db, 10).await.expect("fire");
    }
    let d = h.describe(Default::default()).await.expect("describe");
    assert_eq!(d.action_count(), 3);
    assert!(d.running_actions().is_empty());

    // TerminateOther: each action terminates the open run before starting; within one
    // backfill the earlier times are simply not started.
    backfill_three(&client, "term", ScheduleOverlapPolicy::AllowAll).await;
    let h = client.get_schedule_handle("term");
    let before = h.describe(Default::default()).await.expect("describe");
    assert_eq!(before.running_actions().len(), 3);
    h.trigger(ScheduleOverlapPolicy::TerminateOther, Default::default())
        .await
        .expect("trigger");
    let d = h.describe(Default::default()).await.expect("describe");
    assert_eq!(d.action_count(), 4);
    let running = d.running_actions();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].run_id, d.recent_actions()[3].run_id);
    for a in &before.recent_actions() {
        let s = db.status(&a.run_id).await.expect("status").expect("run");
        let outcome = TerminalOutcome::from_status(&s).expect("decodes");
        assert!(
            matches!(&outcome, Some(TerminalOutcome::Terminated { reason, .. }) if reason.contains("TerminateOther")),
            "{outcome:?}"
        );
    }
    finish_one(&db, &completed()).await;
}

#[tokio::test]
async fn interval_firing_respects_remaining_actions_and_pause_on_failure() {
    let (client, db) = setup().await;
    let h = client
        .create_schedule(
            "limited",
            CreateScheduleOptions::builder()
                .action(action())
                .spec(ScheduleSpec::from_interval(Duration::from_secs(1)))
                .overlap_policy(ScheduleOverlapPolicy::AllowAll)
                .build(),
        )
        .await
        .expect("create");
    h.update(
        |u| {
            u.set_remaining_actions(Some(2));
        },
        Default::default(),
    )
    .await
    .expect("update");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        fire_due(&db, 10).await.expect("fire");
        let d = h.describe(Default::default()).await.expect("describe");
        if d.action_count() >= 2 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fire_due(&db, 10).await.expect("fire");
    let d = h.describe(Default::default()).await.expect("describe");
    assert_eq!(d.action_count(), 2, "the limit stops scheduled actions");
    assert!(d.future_action_times().is_empty());
    let state = d.raw().schedule.as_ref().unwrap().state.clone().unwrap();
    assert!(state.limited_actions);
    assert_eq!(state.remaining_actions, 0);
    // Manual triggers do not count against the limit.
    h.trigger(ScheduleOverlapPolicy::AllowAll, Default::default())
        .await
        .expect("trigger");
    assert_eq!(
        h.describe(Default::default())
            .await
            .expect("describe")
            .action_count(),
        3
    );
    for _ in 0..3 {
        finish_one(&db, &completed()).await;
    }

    // pause_on_failure: a failed run pauses the schedule as soon as it finishes.
    let p = client
        .create_schedule(
            "fragile",
            CreateScheduleOptions::builder()
                .action(action_for("fragile"))
                .spec(ScheduleSpec::from_interval(Duration::from_secs(3600)))
                .build(),
        )
        .await
        .expect("create");
    p.update(
        |u| {
            u.set_pause_on_failure(true);
        },
        Default::default(),
    )
    .await
    .expect("update");
    p.trigger(ScheduleOverlapPolicy::Unspecified, Default::default())
        .await
        .expect("trigger");
    let failed = finish_one(
        &db,
        &TerminalOutcome::Failed {
            failure: Failure {
                message: "boom".into(),
                ..Default::default()
            },
            next_run_id: None,
        },
    )
    .await;
    assert_eq!(fire_due(&db, 10).await.expect("fire"), 1);
    let d = p.describe(Default::default()).await.expect("describe");
    assert!(d.paused());
    assert!(
        d.note().is_some_and(|n| n.contains(&failed)),
        "{:?}",
        d.note()
    );
}

#[tokio::test]
async fn unsupported_settings_are_refused() {
    let (client, db) = setup().await;
    let refused = [
        ScheduleSpec::builder().timezone_name("US/Eastern").build(),
        ScheduleSpec::builder()
            .cron_strings(vec!["@every 10s".into()])
            .build(),
        ScheduleSpec::builder()
            .cron_strings(vec!["0 0 L * *".into()])
            .build(),
        ScheduleSpec::from_interval(Duration::from_millis(10)),
        ScheduleSpec::from_calendar(ScheduleCalendarSpec::builder().hour("25").build()),
    ];
    for spec in refused {
        let e = client
            .create_schedule("bad", options(spec.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            status_code(&e),
            tonic::Code::InvalidArgument,
            "{spec:?}: {e}"
        );
    }
    {
        let policy = ScheduleOverlapPolicy::CancelOther;
        let e = client
            .create_schedule(
                "bad",
                CreateScheduleOptions::builder()
                    .action(action())
                    .spec(ScheduleSpec::default())
                    .overlap_policy(policy)
                    .build(),
            )
            .await
            .unwrap_err();
        assert_eq!(status_code(&e), tonic::Code::InvalidArgument, "{e}");
        assert!(e.to_string().contains("not supported by DBOSify"), "{e}");
    }
    // An input the database could never hold is refused up front, not at every firing.
    let huge = "x".repeat(db.config().max_value_bytes + 1);
    let e = client
        .create_schedule(
            "bad",
            CreateScheduleOptions::builder()
                .action(ScheduleAction::start_workflow(Greet, huge, TQ, "huge"))
                .spec(ScheduleSpec::default())
                .build(),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::InvalidArgument, "{e}");
    assert!(e.to_string().contains("over the limit"), "{e}");
    assert!(db.schedule("bad").await.expect("read").is_none());

    let h = client
        .create_schedule("ok", options(ScheduleSpec::default()))
        .await
        .expect("create");
    let e = h
        .trigger(ScheduleOverlapPolicy::CancelOther, Default::default())
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::InvalidArgument, "{e}");
    let e = h
        .update(
            |u| {
                u.set_overlap_policy(ScheduleOverlapPolicy::CancelOther);
            },
            Default::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::InvalidArgument, "{e}");
    let e = h
        .update(
            |u| {
                u.set_keep_original_workflow_id(true);
            },
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("keep_original_workflow_id"), "{e}");
    let mut stream = client.list_schedules(
        ListSchedulesOptions::builder()
            .query("TemporalSchedulePaused = true".to_string())
            .build(),
    );
    let e = stream.next().await.expect("an item").unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::InvalidArgument, "{e}");
    assert!(stream.next().await.is_none());
}

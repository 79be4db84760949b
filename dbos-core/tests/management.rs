//! Management against a real Postgres: list filters, cancel, resume, fork, retention.

use std::time::Duration;

use anyhow::Result;
use dbos_core::{
    CompleteResult, EnqueueRequest, Error, ListFilter, Outcome, RunState, SystemDatabase,
    WorkflowStatus, testing,
};
use serde_json::json;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn fresh() -> Result<SystemDatabase> {
    init_tracing();
    Ok(testing::fresh_database().await?)
}

fn ids(runs: &[WorkflowStatus]) -> Vec<&str> {
    runs.iter().map(|r| r.workflow_id.as_str()).collect()
}

/// Sets a run's creation and update times (so time filters are deterministic).
async fn set_times(db: &SystemDatabase, id: &str, created: i64, updated: i64) -> Result<()> {
    sqlx::query(&format!(
        "UPDATE \"{}\".workflow_status SET created_at = $2, updated_at = $3
          WHERE workflow_uuid = $1",
        db.schema()
    ))
    .bind(id)
    .bind(created)
    .bind(updated)
    .execute(db.pool())
    .await?;
    Ok(())
}

async fn enqueue(db: &SystemDatabase, id: &str, name: &str, queue: &str) -> Result<()> {
    db.enqueue(EnqueueRequest::new(id, name, queue, "\"in\""))
        .await?;
    Ok(())
}

/// Enqueues `id` on a queue of its own and claims it for `ex`.
async fn running(db: &SystemDatabase, id: &str) -> Result<()> {
    let queue = format!("q-{id}");
    enqueue(db, id, "wf", &queue).await?;
    let claimed = db.claim("ex", &[queue], 1).await?;
    anyhow::ensure!(ids(&claimed) == [id], "claimed {:?}", ids(&claimed));
    Ok(())
}

async fn list(db: &SystemDatabase, filter: ListFilter) -> Result<Vec<String>> {
    Ok(db
        .list_workflows(&filter)
        .await?
        .into_iter()
        .map(|s| s.workflow_id)
        .collect())
}

#[tokio::test]
async fn list_workflows_filters() -> Result<()> {
    let db = fresh().await?;
    // id, name, queue, created, updated
    let runs = [
        ("a_1", "alpha", "q1", 1000, 5000),
        ("ab1", "alpha", "q2", 2000, 6000),
        ("a%2", "beta", "q1", 3000, 7000),
        ("b\\3", "beta", "q2", 4000, 8000),
        ("c-4", "gamma", "q3", 5000, 9000),
    ];
    for (id, name, queue, _, _) in runs {
        let mut r = EnqueueRequest::new(id, name, queue, "null");
        r.attributes = Some(json!({"team": if name == "beta" { "red" } else { "blue" }, "n": 1}));
        db.enqueue(r).await?;
    }
    // Different states: c-4 runs, a%2 is cancelled.
    db.claim("ex", &["q3".to_string()], 1).await?;
    db.cancel("a%2", None).await?;
    for (id, _, _, created, updated) in runs {
        set_times(&db, id, created, updated).await?;
    }
    let all = list(&db, ListFilter::default()).await?;
    assert_eq!(all, ["a_1", "ab1", "a%2", "b\\3", "c-4"], "oldest first");

    assert_eq!(
        list(
            &db,
            ListFilter {
                names: vec!["beta".into(), "gamma".into()],
                ..Default::default()
            }
        )
        .await?,
        ["a%2", "b\\3", "c-4"]
    );
    assert_eq!(
        list(
            &db,
            ListFilter {
                states: vec![RunState::Pending, RunState::Cancelled],
                ..Default::default()
            }
        )
        .await?,
        ["a%2", "c-4"]
    );
    assert_eq!(
        list(
            &db,
            ListFilter {
                queue_names: vec!["q2".into()],
                ..Default::default()
            }
        )
        .await?,
        ["ab1", "b\\3"]
    );
    assert_eq!(
        list(
            &db,
            ListFilter {
                created_after_ms: Some(2000),
                created_before_ms: Some(4000),
                ..Default::default()
            }
        )
        .await?,
        ["ab1", "a%2"],
        "created_after is inclusive, created_before exclusive"
    );
    assert_eq!(
        list(
            &db,
            ListFilter {
                updated_after_ms: Some(7000),
                ..Default::default()
            }
        )
        .await?,
        ["a%2", "b\\3", "c-4"]
    );
    assert_eq!(
        list(
            &db,
            ListFilter {
                updated_before_ms: Some(7000),
                ..Default::default()
            }
        )
        .await?,
        ["a_1", "ab1"]
    );
    // LIKE metacharacters in the prefix match themselves only.
    let prefix = |p: &str| ListFilter {
        id_prefix: Some(p.into()),
        ..Default::default()
    };
    assert_eq!(list(&db, prefix("a_")).await?, ["a_1"]);
    assert_eq!(list(&db, prefix("a%")).await?, ["a%2"]);
    assert_eq!(list(&db, prefix("b\\")).await?, ["b\\3"]);
    assert_eq!(list(&db, prefix("a")).await?, ["a_1", "ab1", "a%2"]);
    assert_eq!(list(&db, prefix("")).await?.len(), 5);
    assert!(list(&db, prefix("%")).await?.is_empty());
    assert_eq!(
        list(
            &db,
            ListFilter {
                attributes: Some(json!({"team": "red"})),
                ..Default::default()
            }
        )
        .await?,
        ["a%2", "b\\3"]
    );
    assert!(
        list(
            &db,
            ListFilter {
                attributes: Some(json!({"team": "red", "n": 2})),
                ..Default::default()
            }
        )
        .await?
        .is_empty()
    );
    assert_eq!(
        list(
            &db,
            ListFilter {
                newest_first: true,
                limit: Some(2),
                offset: Some(1),
                ..Default::default()
            }
        )
        .await?,
        ["b\\3", "a%2"]
    );
    // Filters combine with AND.
    assert_eq!(
        list(
            &db,
            ListFilter {
                names: vec!["alpha".into(), "beta".into()],
                queue_names: vec!["q1".into()],
                states: vec![RunState::Enqueued],
                ..Default::default()
            }
        )
        .await?,
        ["a_1"]
    );
    // Values never become SQL.
    assert!(
        list(
            &db,
            ListFilter {
                names: vec!["x' OR '1'='1".into()],
                id_prefix: Some("'; DROP TABLE workflow_status; --".into()),
                ..Default::default()
            }
        )
        .await?
        .is_empty()
    );
    assert_eq!(list(&db, ListFilter::default()).await?.len(), 5);

    let e = db
        .list_workflows(&ListFilter {
            limit: Some(-1),
            ..Default::default()
        })
        .await
        .expect_err("negative limit");
    assert!(matches!(e, Error::InvalidName { what: "limit", .. }), "{e}");
    let e = db
        .list_workflows(&ListFilter {
            attributes: Some(json!("red")),
            ..Default::default()
        })
        .await
        .expect_err("non-object attributes");
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    Ok(())
}

#[tokio::test]
async fn cancel_ends_unfinished_runs_only() -> Result<()> {
    let db = fresh().await?;
    enqueue(&db, "queued", "wf", "q").await?;
    let mut delayed = EnqueueRequest::new("delayed", "wf", "q", "null");
    delayed.delay = Some(Duration::from_secs(3600));
    db.enqueue(delayed).await?;
    running(&db, "running").await?;
    running(&db, "done").await?;
    db.complete("done", Some("ex"), &Outcome::Success("\"ok\"".into()))
        .await?;

    let before = dbos_core::now_ms();
    for id in ["queued", "delayed", "running"] {
        db.cancel(id, Some("\"stop\"")).await?;
        let s = db.status(id).await?.expect("row");
        assert_eq!(s.state, RunState::Cancelled, "{id}");
        assert_eq!(s.error.as_deref(), Some("\"stop\""), "{id}");
        assert!(s.completed_at_ms.is_some_and(|t| t >= before), "{id}");
        assert!(s.queue_name.is_some(), "{id} keeps its queue for resume");
    }
    // The cancelled run's executor cannot record an outcome any more.
    let late = db
        .complete("running", Some("ex"), &Outcome::Success("1".into()))
        .await?;
    assert!(matches!(late, CompleteResult::AlreadyDecided(_)));
    // Cancelled runs are not claimable.
    assert!(db.claim("ex", &["q".to_string()], 10).await?.is_empty());

    // A finished run is left alone; cancelling twice is harmless.
    db.cancel("done", Some("\"stop\"")).await?;
    let s = db.status("done").await?.expect("row");
    assert_eq!((s.state, s.error), (RunState::Success, None));
    db.cancel("queued", None).await?;
    assert_eq!(
        db.status("queued").await?.expect("row").error.as_deref(),
        Some("\"stop\""),
        "a second cancel does not rewrite the first"
    );

    let e = db.cancel("ghost", None).await.expect_err("unknown");
    assert!(matches!(e, Error::UnknownRun(_)), "{e}");
    let e = db.cancel("", None).await.expect_err("empty id");
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    Ok(())
}

#[tokio::test]
async fn cancel_wakes_awaiters_in_other_processes_and_frees_dedup_id() -> Result<()> {
    let db = fresh().await?;
    let mut r = EnqueueRequest::new("r", "wf", "q", "null");
    r.deduplication_id = Some("d".into());
    db.enqueue(r).await?;
    let mut config = db.config().clone();
    config.fallback_poll_interval = Duration::from_secs(600);
    config.max_connections = 2;
    let other = SystemDatabase::connect(config).await?;
    let waiting = {
        let other = other.clone();
        tokio::spawn(async move { other.await_outcome("r", None).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    db.cancel("r", None).await?;
    let s = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("awaiter not woken by the cancel")??
        .expect("outcome");
    assert_eq!(s.state, RunState::Cancelled);
    let mut again = EnqueueRequest::new("r2", "wf", "q", "null");
    again.deduplication_id = Some("d".into());
    db.enqueue(again).await?;
    other.close().await;
    Ok(())
}

#[tokio::test]
async fn resume_puts_finished_runs_back_in_their_queue() -> Result<()> {
    let db = fresh().await?;
    running(&db, "c").await?;
    db.cancel("c", Some("\"why\"")).await?;
    db.resume("c").await?;
    let s = db.status("c").await?.expect("row");
    assert_eq!(s.state, RunState::Enqueued);
    assert_eq!(s.executor_id, None);
    assert_eq!(s.error, None);
    assert_eq!(s.completed_at_ms, None);
    assert_eq!(s.started_at_ms, None);
    assert_eq!(s.recovery_attempts, 0);
    assert_eq!(s.queue_name.as_deref(), Some("q-c"));
    let again = db.claim("ex2", &["q-c".to_string()], 5).await?;
    assert_eq!(ids(&again), ["c"]);
    assert_eq!(again[0].executor_id.as_deref(), Some("ex2"));

    running(&db, "failed").await?;
    db.complete("failed", None, &Outcome::Error("\"e\"".into()))
        .await?;
    db.resume("failed").await?;
    let s = db.status("failed").await?.expect("row");
    assert_eq!((s.state, s.error), (RunState::Enqueued, None));

    // A delayed run resumed starts now.
    let mut d = EnqueueRequest::new("later", "wf", "dq", "null");
    d.delay = Some(Duration::from_secs(3600));
    db.enqueue(d).await?;
    db.resume("later").await?;
    assert_eq!(
        ids(&db.claim("ex", &["dq".to_string()], 5).await?),
        ["later"]
    );

    // Refused: running, succeeded, unknown.
    running(&db, "busy").await?;
    let e = db.resume("busy").await.expect_err("running");
    match &e {
        Error::WrongState { status, .. } => assert_eq!(status, "PENDING"),
        other => panic!("expected WrongState, got {other}"),
    }
    assert!(e.to_string().contains("cancel it first"), "{e}");
    assert_eq!(
        db.status("busy")
            .await?
            .expect("row")
            .executor_id
            .as_deref(),
        Some("ex")
    );
    running(&db, "ok").await?;
    db.complete("ok", None, &Outcome::Success("1".into()))
        .await?;
    let e = db.resume("ok").await.expect_err("succeeded");
    assert!(
        matches!(&e, Error::WrongState { status, .. } if status == "SUCCESS"),
        "{e}"
    );
    let e = db.resume("ghost").await.expect_err("unknown");
    assert!(matches!(e, Error::UnknownRun(_)), "{e}");
    Ok(())
}

async fn insert_checkpoint(db: &SystemDatabase, id: &str, fid: i32, output: &str) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO \"{}\".operation_outputs (workflow_uuid, function_id, function_name, output)
         VALUES ($1, $2, $3, $4)",
        db.schema()
    ))
    .bind(id)
    .bind(fid)
    .bind(format!("step{fid}"))
    .bind(output)
    .execute(db.pool())
    .await?;
    Ok(())
}

async fn insert_event(
    db: &SystemDatabase,
    id: &str,
    fid: i32,
    key: &str,
    value: &str,
) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO \"{}\".workflow_events_history (workflow_uuid, function_id, key, value)
         VALUES ($1, $2, $3, $4)",
        db.schema()
    ))
    .bind(id)
    .bind(fid)
    .bind(key)
    .bind(value)
    .execute(db.pool())
    .await?;
    Ok(())
}

#[tokio::test]
async fn fork_copies_the_prefix_into_a_new_run() -> Result<()> {
    let db = fresh().await?;
    let mut r = EnqueueRequest::new("orig", "wf", "fq", "\"input\"");
    r.serialization = Some("json".into());
    r.attributes = Some(json!({"k": "v"}));
    r.priority = 3;
    db.enqueue(r).await?;
    db.claim("ex", &["fq".to_string()], 1).await?;
    for fid in 0..4 {
        insert_checkpoint(&db, "orig", fid, &format!("\"out{fid}\"")).await?;
    }
    insert_event(&db, "orig", 0, "k1", "\"v0\"").await?;
    insert_event(&db, "orig", 1, "k1", "\"v1\"").await?;
    insert_event(&db, "orig", 1, "k2", "\"w1\"").await?;
    insert_event(&db, "orig", 3, "k1", "\"v3\"").await?;
    db.complete("orig", Some("ex"), &Outcome::Error("\"failed\"".into()))
        .await?;

    let forked = db.fork("orig", 2, Some("fork-1")).await?;
    assert_eq!(forked, "fork-1");
    let s = db.status("fork-1").await?.expect("row");
    assert_eq!(s.state, RunState::Enqueued);
    assert_eq!(s.name, "wf");
    assert_eq!(s.queue_name.as_deref(), Some("fq"));
    assert_eq!(s.inputs.as_deref(), Some("\"input\""));
    assert_eq!(s.serialization.as_deref(), Some("json"));
    assert_eq!(s.attributes, Some(json!({"k": "v"})));
    assert_eq!(s.priority, 3);
    assert_eq!(s.forked_from.as_deref(), Some("orig"));
    assert_eq!((s.output, s.error, s.executor_id), (None, None, None));
    let schema = db.schema().to_string();
    let was_forked: bool = sqlx::query_scalar(&format!(
        "SELECT was_forked_from FROM \"{schema}\".workflow_status WHERE workflow_uuid = 'orig'"
    ))
    .fetch_one(db.pool())
    .await?;
    assert!(was_forked);
    let outputs: Vec<(i32, String, Option<String>)> = sqlx::query_as(&format!(
        "SELECT function_id, function_name, output FROM \"{schema}\".operation_outputs
          WHERE workflow_uuid = 'fork-1' ORDER BY function_id"
    ))
    .fetch_all(db.pool())
    .await?;
    assert_eq!(
        outputs,
        [
            (0, "step0".to_string(), Some("\"out0\"".to_string())),
            (1, "step1".to_string(), Some("\"out1\"".to_string()))
        ]
    );
    let history: Vec<(i32, String, String)> = sqlx::query_as(&format!(
        "SELECT function_id, key, value FROM \"{schema}\".workflow_events_history
          WHERE workflow_uuid = 'fork-1' ORDER BY function_id, key"
    ))
    .fetch_all(db.pool())
    .await?;
    assert_eq!(history.len(), 3, "{history:?}");
    let events: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT key, value FROM \"{schema}\".workflow_events
          WHERE workflow_uuid = 'fork-1' ORDER BY key"
    ))
    .fetch_all(db.pool())
    .await?;
    assert_eq!(
        events,
        [
            ("k1".to_string(), "\"v1\"".to_string()),
            ("k2".to_string(), "\"w1\"".to_string())
        ],
        "latest value per key before the start step"
    );
    // The fork is claimable; the original is untouched.
    assert_eq!(
        ids(&db.claim("ex", &["fq".to_string()], 5).await?),
        ["fork-1"]
    );
    assert_eq!(
        db.status("orig").await?.expect("row").state,
        RunState::Error
    );

    // Retrying the same fork is recognised; another run's id is not a fork of this one.
    assert_eq!(db.fork("orig", 2, Some("fork-1")).await?, "fork-1");
    let e = db
        .fork("orig", 2, Some("orig"))
        .await
        .expect_err("same id as the original");
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    enqueue(&db, "taken", "wf", "other").await?;
    let e = db
        .fork("orig", 2, Some("taken"))
        .await
        .expect_err("id taken");
    assert!(matches!(e, Error::WrongState { .. }), "{e}");

    // From step 0 nothing is copied; without an id a fresh one is made.
    let fresh_id = db.fork("orig", 0, None).await?;
    assert_ne!(fresh_id, "fork-1");
    let copied: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{schema}\".operation_outputs WHERE workflow_uuid = $1"
    ))
    .bind(&fresh_id)
    .fetch_one(db.pool())
    .await?;
    assert_eq!(copied, 0);

    let e = db.fork("ghost", 1, None).await.expect_err("unknown");
    assert!(matches!(e, Error::UnknownRun(_)), "{e}");
    let e = db.fork("orig", -1, None).await.expect_err("negative step");
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    Ok(())
}

#[tokio::test]
async fn delete_older_than_removes_only_old_finished_runs() -> Result<()> {
    let db = fresh().await?;
    let now = dbos_core::now_ms();
    let old = now - 3_600_000;
    running(&db, "old-success").await?;
    db.complete("old-success", None, &Outcome::Success("1".into()))
        .await?;
    insert_checkpoint(&db, "old-success", 0, "\"x\"").await?;
    running(&db, "old-error").await?;
    db.complete("old-error", None, &Outcome::Error("1".into()))
        .await?;
    enqueue(&db, "old-cancelled", "wf", "q").await?;
    db.cancel("old-cancelled", None).await?;
    enqueue(&db, "old-enqueued", "wf", "q").await?;
    running(&db, "old-pending").await?;
    running(&db, "new-success").await?;
    db.complete("new-success", None, &Outcome::Success("1".into()))
        .await?;
    for id in [
        "old-success",
        "old-error",
        "old-cancelled",
        "old-enqueued",
        "old-pending",
    ] {
        set_times(&db, id, old, old).await?;
    }
    set_times(&db, "new-success", now - 1000, now - 1000).await?;
    assert_eq!(db.delete_older_than(Duration::from_secs(60)).await?, 3);
    for (id, exists) in [
        ("old-success", false),
        ("old-error", false),
        ("old-cancelled", false),
        ("old-enqueued", true),
        ("old-pending", true),
        ("new-success", true),
    ] {
        assert_eq!(db.status(id).await?.is_some(), exists, "{id}");
    }
    let checkpoints: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".operation_outputs WHERE workflow_uuid = 'old-success'",
        db.schema()
    ))
    .fetch_one(db.pool())
    .await?;
    assert_eq!(checkpoints, 0, "checkpoints deleted with their run");
    assert_eq!(db.delete_older_than(Duration::from_secs(60)).await?, 0);
    assert_eq!(
        db.delete_older_than(Duration::ZERO).await?,
        1,
        "new-success"
    );
    Ok(())
}

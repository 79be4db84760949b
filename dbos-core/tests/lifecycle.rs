//! Run lifecycle against a real Postgres: idempotent enqueue under concurrency, completion only
//! while PENDING, awaiting outcomes across handles, attributes, deduplication, bad input.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use dbos_core::{
    CompleteResult, EnqueueRequest, Enqueued, Error, Outcome, RunState, SystemDatabase, testing,
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

/// Another handle (its own pool and LISTEN connection, like another process) on the same schema.
/// With a long fallback poll, a waiter on it can only wake promptly through a notification.
async fn other_process(db: &SystemDatabase, fallback: Duration) -> Result<SystemDatabase> {
    let mut config = db.config().clone();
    config.fallback_poll_interval = fallback;
    config.max_connections = 4;
    Ok(SystemDatabase::connect(config).await?)
}

fn req(id: &str) -> EnqueueRequest {
    EnqueueRequest::new(id, "wf", "q", "\"input\"")
}

/// Enqueues `id` on a queue of its own and claims it for `executor`.
async fn running(db: &SystemDatabase, id: &str, executor: &str) -> Result<()> {
    let queue = format!("q-{id}");
    let mut r = req(id);
    r.queue_name = queue.clone();
    db.enqueue(r).await?;
    let claimed = db.claim(executor, &[queue], 1).await?;
    ensure!(
        claimed.len() == 1 && claimed[0].workflow_id == id,
        "expected to claim {id}, got {claimed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn complete_records_only_while_pending() -> Result<()> {
    let db = fresh().await?;
    running(&db, "r1", "ex").await?;
    let before = dbos_core::now_ms();
    let outcome = Outcome::Success("\"done\"".into());
    let first = db.complete("r1", Some("ex"), &outcome).await?;
    assert!(matches!(first, CompleteResult::Recorded), "{first:?}");
    let s = db.status("r1").await?.expect("row");
    assert_eq!(s.state, RunState::Success);
    assert_eq!(s.output.as_deref(), Some("\"done\""));
    assert_eq!(s.error, None);
    assert!(s.completed_at_ms.is_some_and(|t| t >= before));
    assert!(s.updated_at_ms >= before);

    // The same call retried (its acknowledgement lost): recognised as already recorded.
    let retried = db.complete("r1", Some("ex"), &outcome).await?;
    assert!(matches!(retried, CompleteResult::Recorded), "{retried:?}");
    let retried_anon = db.complete("r1", None, &outcome).await?;
    assert!(matches!(retried_anon, CompleteResult::Recorded));

    // A different outcome afterwards: someone decided first, the row does not change.
    let other = db
        .complete("r1", Some("ex"), &Outcome::Error("\"boom\"".into()))
        .await?;
    match other {
        CompleteResult::AlreadyDecided(s) => {
            assert_eq!(s.state, RunState::Success);
            assert_eq!(s.output.as_deref(), Some("\"done\""));
        }
        CompleteResult::Recorded => panic!("a second, different outcome was recorded"),
    }
    // The identical outcome but claimed by another executor is not "this call".
    let foreign = db.complete("r1", Some("other"), &outcome).await?;
    assert!(matches!(foreign, CompleteResult::AlreadyDecided(_)));
    Ok(())
}

#[tokio::test]
async fn complete_error_and_cancelled_outcomes() -> Result<()> {
    let db = fresh().await?;
    running(&db, "e1", "ex").await?;
    let r = db
        .complete("e1", None, &Outcome::Error("\"bad\"".into()))
        .await?;
    assert!(matches!(r, CompleteResult::Recorded));
    let s = db.status("e1").await?.expect("row");
    assert_eq!(
        (s.state, s.output, s.error.as_deref()),
        (RunState::Error, None, Some("\"bad\""))
    );

    running(&db, "c1", "ex").await?;
    let r = db
        .complete(
            "c1",
            Some("ex"),
            &Outcome::Cancelled(Some("\"why\"".into())),
        )
        .await?;
    assert!(matches!(r, CompleteResult::Recorded));
    let s = db.status("c1").await?.expect("row");
    assert_eq!(s.state, RunState::Cancelled);
    assert_eq!(s.error.as_deref(), Some("\"why\""));
    Ok(())
}

#[tokio::test]
async fn complete_requires_pending_and_the_holding_executor() -> Result<()> {
    let db = fresh().await?;
    // Never claimed: still ENQUEUED, so the outcome is not recorded.
    db.enqueue(req("queued")).await?;
    let r = db
        .complete("queued", None, &Outcome::Success("1".into()))
        .await?;
    match r {
        CompleteResult::AlreadyDecided(s) => assert_eq!(s.state, RunState::Enqueued),
        CompleteResult::Recorded => panic!("recorded an outcome for an ENQUEUED run"),
    }
    assert_eq!(
        db.status("queued").await?.expect("row").state,
        RunState::Enqueued
    );

    // Held by A: B cannot record, A can.
    running(&db, "held", "A").await?;
    let r = db
        .complete("held", Some("B"), &Outcome::Success("1".into()))
        .await?;
    match r {
        CompleteResult::AlreadyDecided(s) => {
            assert_eq!(s.state, RunState::Pending);
            assert_eq!(s.executor_id.as_deref(), Some("A"));
        }
        CompleteResult::Recorded => panic!("a non-holder recorded an outcome"),
    }
    let r = db
        .complete("held", Some("A"), &Outcome::Success("1".into()))
        .await?;
    assert!(matches!(r, CompleteResult::Recorded));
    Ok(())
}

#[tokio::test]
async fn cancel_then_complete_is_already_decided() -> Result<()> {
    let db = fresh().await?;
    running(&db, "r", "ex").await?;
    db.cancel("r", Some("\"stop\"")).await?;
    let r = db
        .complete("r", Some("ex"), &Outcome::Success("\"late\"".into()))
        .await?;
    match r {
        CompleteResult::AlreadyDecided(s) => {
            assert_eq!(s.state, RunState::Cancelled);
            assert_eq!(s.error.as_deref(), Some("\"stop\""));
            assert_eq!(s.output, None);
        }
        CompleteResult::Recorded => panic!("completion overwrote a cancellation"),
    }
    Ok(())
}

#[tokio::test]
async fn complete_unknown_run_is_an_error() -> Result<()> {
    let db = fresh().await?;
    let e = db
        .complete("missing", None, &Outcome::Success("1".into()))
        .await
        .expect_err("unknown run");
    assert!(
        matches!(&e, Error::UnknownRun(id) if id == "missing"),
        "{e}"
    );
    assert!(e.to_string().contains("missing"));
    Ok(())
}

#[tokio::test]
async fn await_outcome_from_another_handle_wakes_on_completion() -> Result<()> {
    let db = fresh().await?;
    running(&db, "r", "ex").await?;
    // The awaiting handle polls only every 10 minutes: it can only return in time if the
    // completion's notification reaches it.
    let other = other_process(&db, Duration::from_secs(600)).await?;
    let waiter = {
        let other = other.clone();
        tokio::spawn(async move { other.await_outcome("r", None).await })
    };
    // Let the waiter register and see the run still PENDING.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "returned before the run finished");
    db.complete("r", Some("ex"), &Outcome::Success("\"v\"".into()))
        .await?;
    let status = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("await_outcome was not woken by the completion")??
        .expect("no timeout was set");
    assert_eq!(status.state, RunState::Success);
    assert_eq!(status.output.as_deref(), Some("\"v\""));
    other.close().await;
    Ok(())
}

#[tokio::test]
async fn await_outcome_times_out_and_handles_finished_and_unknown_runs() -> Result<()> {
    let db = fresh().await?;
    db.enqueue(req("slow")).await?;
    let started = Instant::now();
    let r = db
        .await_outcome("slow", Some(Duration::from_millis(300)))
        .await?;
    assert!(r.is_none(), "an unfinished run was returned: {r:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "returned early"
    );

    running(&db, "done", "ex").await?;
    db.complete("done", None, &Outcome::Error("\"x\"".into()))
        .await?;
    let r = db.await_outcome("done", Some(Duration::ZERO)).await?;
    assert_eq!(r.map(|s| s.state), Some(RunState::Error));

    let e = db
        .await_outcome("nobody", Some(Duration::from_secs(5)))
        .await
        .expect_err("unknown run");
    assert!(matches!(e, Error::UnknownRun(_)), "{e}");
    Ok(())
}

#[tokio::test]
async fn merge_attributes_merges_top_level_keys() -> Result<()> {
    let db = fresh().await?;
    let mut r = req("a");
    r.attributes = Some(json!({"a": 1, "b": {"x": 1}}));
    db.enqueue(r).await?;
    db.merge_attributes("a", &json!({"b": 2, "c": "three"}))
        .await?;
    let s = db.status("a").await?.expect("row");
    assert_eq!(s.attributes, Some(json!({"a": 1, "b": 2, "c": "three"})));

    // A run without attributes gets the object.
    db.enqueue(req("plain")).await?;
    db.merge_attributes("plain", &json!({"k": true})).await?;
    assert_eq!(
        db.status("plain").await?.expect("row").attributes,
        Some(json!({"k": true}))
    );

    let e = db
        .merge_attributes("a", &json!([1, 2]))
        .await
        .expect_err("not an object");
    assert!(
        matches!(
            e,
            Error::InvalidName {
                what: "attributes",
                ..
            }
        ),
        "{e}"
    );
    let e = db
        .merge_attributes("ghost", &json!({"k": 1}))
        .await
        .expect_err("unknown run");
    assert!(matches!(e, Error::UnknownRun(_)), "{e}");
    Ok(())
}

/// 1,000 enqueues, 50 of which repeat an id enqueued by a *different* task at the same time,
/// make exactly 950 runs; each id is created exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_with_repeated_ids_make_one_run_per_id() -> Result<()> {
    let db = fresh().await?;
    const TASKS: usize = 10;
    let mut per_task: Vec<Vec<String>> = vec![Vec::new(); TASKS];
    for i in 0..950 {
        per_task[i % TASKS].push(format!("id-{i}"));
    }
    // The repeats: ids 0..50 again, each in another task than its first copy.
    for i in 0..50 {
        per_task[(i + 5) % TASKS].insert(0, format!("id-{i}"));
    }
    assert_eq!(per_task.iter().map(Vec::len).sum::<usize>(), 1000);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for ids in per_task {
        let db = db.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut created = Vec::new();
            let mut existing = 0usize;
            for id in ids {
                match db.enqueue(req(&id)).await? {
                    Enqueued::Created(s) => created.push(s.workflow_id),
                    Enqueued::Existing(_) => existing += 1,
                }
            }
            anyhow::Ok((created, existing))
        }));
    }
    let mut created = Vec::new();
    let mut existing = 0;
    for t in tasks {
        let (c, e) = t.await??;
        created.extend(c);
        existing += e;
    }
    assert_eq!(created.len(), 950, "runs created");
    assert_eq!(existing, 50, "enqueues that found their id taken");
    let unique: HashSet<_> = created.iter().collect();
    assert_eq!(unique.len(), 950, "an id was created twice");
    let rows: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".workflow_status",
        db.schema()
    ))
    .fetch_one(db.pool())
    .await?;
    assert_eq!(rows, 950);
    Ok(())
}

#[tokio::test]
async fn deduplication_id_is_exclusive_until_the_run_finishes() -> Result<()> {
    let db = fresh().await?;
    let with_dedup = |id: &str| {
        let mut r = req(id);
        r.deduplication_id = Some("dd".into());
        r
    };
    db.enqueue(with_dedup("first")).await?;
    let e = db
        .enqueue(with_dedup("second"))
        .await
        .expect_err("duplicate");
    match &e {
        Error::Duplicated {
            queue,
            deduplication_id,
        } => {
            assert_eq!(queue, "q");
            assert_eq!(deduplication_id, "dd");
        }
        other => panic!("expected Duplicated, got {other}"),
    }
    assert!(db.status("second").await?.is_none());
    // The same id on another queue is fine.
    let mut elsewhere = with_dedup("elsewhere");
    elsewhere.queue_name = "q2".into();
    db.enqueue(elsewhere).await?;

    // Still held while PENDING.
    let claimed = db.claim("ex", &["q".to_string()], 1).await?;
    assert_eq!(claimed[0].workflow_id, "first");
    assert!(matches!(
        db.enqueue(with_dedup("second")).await,
        Err(Error::Duplicated { .. })
    ));
    db.complete("first", Some("ex"), &Outcome::Success("1".into()))
        .await?;
    assert_eq!(
        db.status("first").await?.expect("row").deduplication_id,
        None
    );
    let again = db.enqueue(with_dedup("second")).await?;
    assert!(matches!(again, Enqueued::Created(_)));
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_clear_errors() -> Result<()> {
    let db = fresh().await?;
    let e = db.enqueue(req("")).await.expect_err("empty id");
    assert!(
        matches!(
            e,
            Error::InvalidName {
                what: "workflow id",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("must not be empty"), "{e}");

    let mut r = req("ok-id");
    r.name = "n".repeat(1025);
    let e = db.enqueue(r).await.expect_err("oversized name");
    assert!(
        matches!(
            e,
            Error::InvalidName {
                what: "workflow name",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("1024"), "{e}");

    let mut r = req("ok-id");
    r.queue_name = "bad\nqueue".into();
    let e = db.enqueue(r).await.expect_err("control character");
    assert!(
        matches!(
            e,
            Error::InvalidName {
                what: "queue name",
                ..
            }
        ),
        "{e}"
    );

    // Oversized values are refused before they reach the database.
    let mut config = db.config().clone();
    config.max_value_bytes = 16;
    let small = SystemDatabase::connect(config).await?;
    let mut r = req("big");
    r.inputs = "x".repeat(17);
    let e = small.enqueue(r).await.expect_err("input too large");
    assert!(
        matches!(
            e,
            Error::ValueTooLarge {
                size: 17,
                limit: 16,
                ..
            }
        ),
        "{e}"
    );
    small.enqueue(req("fits")).await?;
    small.claim("ex", &["q".to_string()], 1).await?;
    let e = small
        .complete("fits", Some("ex"), &Outcome::Success("y".repeat(17)))
        .await
        .expect_err("output too large");
    assert!(matches!(e, Error::ValueTooLarge { .. }), "{e}");
    assert_eq!(
        small.status("fits").await?.expect("row").state,
        RunState::Pending,
        "a refused outcome must leave the run as it was"
    );

    let e = db
        .complete("", None, &Outcome::Success("1".into()))
        .await
        .expect_err("empty id");
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    let e = db.await_outcome("", None).await.expect_err("empty id");
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    small.close().await;
    Ok(())
}

/// Waits (up to 10 s) until a statement on `schema` waits for a row lock.
async fn lock_waiter_on(db: &SystemDatabase, schema: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity
              WHERE wait_event_type = 'Lock' AND position($1 in query) > 0",
        )
        .bind(schema)
        .fetch_one(db.pool())
        .await?;
        if n > 0 {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "no statement waited for a lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_enqueue_is_gated_on_a_pending_parent() -> Result<()> {
    use sqlx::Connection as _;
    let db = fresh().await?;
    let child = |id: &str, parent: &str| {
        let mut r = req(id);
        r.parent_workflow_id = Some(parent.to_string());
        r.only_while_parent_pending = true;
        r
    };
    let refused = |r: dbos_core::Result<Enqueued>, parent: &str| match r {
        Err(Error::ParentNotPending(p)) => assert_eq!(p, parent),
        other => panic!("expected ParentNotPending({parent}), got {other:?}"),
    };
    // A parent that is not PENDING refuses its children; without the gate nothing is checked.
    db.enqueue(req("queued-parent")).await?;
    refused(
        db.enqueue(child("c0", "queued-parent")).await,
        "queued-parent",
    );
    assert!(db.status("c0").await?.is_none());
    let mut ungated = child("c0", "queued-parent");
    ungated.only_while_parent_pending = false;
    assert!(matches!(db.enqueue(ungated).await?, Enqueued::Created(_)));
    // A PENDING parent admits them.
    running(&db, "p1", "ex").await?;
    assert!(matches!(
        db.enqueue(child("c1", "p1")).await?,
        Enqueued::Created(_)
    ));

    // A close of the parent in progress (its row updated, not yet committed) holds the child's
    // enqueue until the commit; the enqueue then sees a closed parent and creates nothing.
    let schema = db.schema().to_string();
    let table = format!("\"{schema}\".workflow_status");
    let mut closer = sqlx::PgConnection::connect(&testing::test_database_url()).await?;
    let update = format!("UPDATE {table} SET status = 'SUCCESS' WHERE workflow_uuid = $1");
    sqlx::query("BEGIN").execute(&mut closer).await?;
    sqlx::query(&update).bind("p1").execute(&mut closer).await?;
    let racing = tokio::spawn({
        let db = db.clone();
        let r = child("c2", "p1");
        async move { db.enqueue(r).await }
    });
    lock_waiter_on(&db, &schema).await?;
    assert!(!racing.is_finished(), "the enqueue waits for the close");
    sqlx::query("COMMIT").execute(&mut closer).await?;
    refused(racing.await?, "p1");
    assert!(db.status("c2").await?.is_none(), "no child after the close");
    // A child created before the close is still found by its id (a restarted start).
    assert!(matches!(
        db.enqueue(child("c1", "p1")).await?,
        Enqueued::Existing(_)
    ));

    // A close that rolls back lets the waiting enqueue through.
    running(&db, "p2", "ex").await?;
    sqlx::query("BEGIN").execute(&mut closer).await?;
    sqlx::query(&update).bind("p2").execute(&mut closer).await?;
    let racing = tokio::spawn({
        let db = db.clone();
        let r = child("c3", "p2");
        async move { db.enqueue(r).await }
    });
    lock_waiter_on(&db, &schema).await?;
    sqlx::query("ROLLBACK").execute(&mut closer).await?;
    assert!(matches!(racing.await??, Enqueued::Created(_)));

    // The other order: while a gated enqueue's share lock on the parent is held (here by an
    // open transaction running the gate's lock), the parent's close waits, so it cannot miss
    // a child committed meanwhile.
    sqlx::query("BEGIN").execute(&mut closer).await?;
    sqlx::query(&format!(
        "SELECT 1 FROM {table} WHERE workflow_uuid = 'p2' AND status = 'PENDING' FOR SHARE"
    ))
    .execute(&mut closer)
    .await?;
    let closing = tokio::spawn({
        let db = db.clone();
        async move {
            db.complete("p2", Some("ex"), &Outcome::Success("null".into()))
                .await
        }
    });
    lock_waiter_on(&db, &schema).await?;
    assert!(!closing.is_finished(), "the close waits for the share lock");
    sqlx::query("COMMIT").execute(&mut closer).await?;
    assert!(matches!(closing.await??, CompleteResult::Recorded));
    Ok(())
}

//! Executors against a real Postgres: leases, takeover of lapsed executors' runs, recovery of
//! a restarted executor's own runs, orphaned runs, shutdown.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use dbos_core::{
    CompleteResult, EnqueueRequest, Error, ExecutorOptions, Outcome, RunState, SystemDatabase,
    testing,
};

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

fn q() -> Vec<String> {
    vec!["q".to_string()]
}

fn options(id: &str, lease_ms: u64, renew_ms: u64) -> ExecutorOptions {
    let mut o = ExecutorOptions::new(id);
    o.lease = Duration::from_millis(lease_ms);
    o.renew_every = Duration::from_millis(renew_ms);
    o
}

async fn enqueue_n(db: &SystemDatabase, prefix: &str, n: usize) -> Result<()> {
    for i in 0..n {
        db.enqueue(EnqueueRequest::new(
            format!("{prefix}{i}"),
            "wf",
            "q",
            "null",
        ))
        .await?;
    }
    Ok(())
}

async fn executor_rows(db: &SystemDatabase, id: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".dbosify_executors WHERE executor_id = $1",
        db.schema()
    ))
    .bind(id)
    .fetch_one(db.pool())
    .await?)
}

async fn lease_expiry(db: &SystemDatabase, id: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT lease_expires_at_ms FROM \"{}\".dbosify_executors WHERE executor_id = $1",
        db.schema()
    ))
    .bind(id)
    .fetch_one(db.pool())
    .await?)
}

/// Sleeps until the local clock passes `epoch_ms` (plus a millisecond).
async fn sleep_past(epoch_ms: i64) {
    let left = epoch_ms + 1 - dbos_core::now_ms();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

/// Executor A claims runs and dies (its lease task stops, its row stays). Before the lease
/// lapses nobody touches its runs; after, B's takeover puts them back in the queue, B claims
/// them, and A — slow but alive — can no longer record an outcome.
#[tokio::test]
async fn lapsed_lease_is_taken_over_by_another_executor() -> Result<()> {
    let db = fresh().await?;
    enqueue_n(&db, "r", 3).await?;
    let a = db.register_executor(options("A", 300, 100)).await?;
    let claimed = db.claim("A", &q(), 10).await?;
    assert_eq!(claimed.len(), 3);
    // B renews rarely, so its own task does not race the explicit takeover below.
    let b = db.register_executor(options("B", 10_000, 60_000)).await?;
    // A dies: its lease task stops without removing the row.
    drop(a);
    let expiry = lease_expiry(&db, "A").await?;
    assert!(
        expiry > dbos_core::now_ms(),
        "lease already lapsed; test too slow"
    );
    assert_eq!(db.take_over_lapsed("B").await?, 0, "took over a live lease");
    for r in &claimed {
        let s = db.status(&r.workflow_id).await?.expect("row");
        assert_eq!(
            (s.state, s.executor_id.as_deref()),
            (RunState::Pending, Some("A"))
        );
    }

    sleep_past(expiry).await;
    assert_eq!(db.take_over_lapsed("B").await?, 3);
    assert_eq!(
        executor_rows(&db, "A").await?,
        0,
        "dead executor's row removed"
    );
    for r in &claimed {
        let s = db.status(&r.workflow_id).await?.expect("row");
        assert_eq!(s.state, RunState::Enqueued);
        assert_eq!(s.executor_id, None);
        assert_eq!(s.started_at_ms, None);
        assert_eq!(s.recovery_attempts, 1);
    }
    // A second takeover finds nothing more.
    assert_eq!(db.take_over_lapsed("B").await?, 0);

    let reclaimed = db.claim("B", &q(), 10).await?;
    assert_eq!(reclaimed.len(), 3);
    assert!(
        reclaimed
            .iter()
            .all(|r| r.executor_id.as_deref() == Some("B"))
    );
    let late = db
        .complete(
            &claimed[0].workflow_id,
            Some("A"),
            &Outcome::Success("1".into()),
        )
        .await?;
    assert!(
        matches!(&late, CompleteResult::AlreadyDecided(s) if s.state == RunState::Pending),
        "the former holder recorded an outcome: {late:?}"
    );
    let done = db
        .complete(
            &claimed[0].workflow_id,
            Some("B"),
            &Outcome::Success("1".into()),
        )
        .await?;
    assert!(matches!(done, CompleteResult::Recorded));
    b.shutdown().await;
    Ok(())
}

/// An executor that keeps renewing is never taken over, however long its runs take.
#[tokio::test]
async fn renewing_executor_keeps_its_runs() -> Result<()> {
    let db = fresh().await?;
    enqueue_n(&db, "r", 2).await?;
    let a = db.register_executor(options("A", 300, 50)).await?;
    db.claim("A", &q(), 10).await?;
    let first_expiry = lease_expiry(&db, "A").await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        lease_expiry(&db, "A").await? > first_expiry,
        "lease was not renewed"
    );
    assert_eq!(db.take_over_lapsed("B").await?, 0);
    assert_eq!(
        db.status("r0").await?.expect("row").executor_id.as_deref(),
        Some("A")
    );
    // Shut down with runs in flight: the row stays so they are taken over when the lease
    // lapses (or recovered by a restart).
    a.shutdown().await;
    assert_eq!(executor_rows(&db, "A").await?, 1);
    sleep_past(lease_expiry(&db, "A").await?).await;
    assert_eq!(db.take_over_lapsed("B").await?, 2);
    Ok(())
}

/// The lease task of a live executor takes over a dead one's runs by itself.
#[tokio::test]
async fn lease_task_takes_over_automatically() -> Result<()> {
    let db = fresh().await?;
    enqueue_n(&db, "r", 2).await?;
    let a = db.register_executor(options("A", 200, 50)).await?;
    db.claim("A", &q(), 10).await?;
    drop(a);
    let b = db.register_executor(options("B", 2_000, 50)).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s0 = db.status("r0").await?.expect("row");
        let s1 = db.status("r1").await?.expect("row");
        if s0.state == RunState::Enqueued && s1.state == RunState::Enqueued {
            break;
        }
        assert!(Instant::now() < deadline, "runs never taken over: {s0:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(executor_rows(&db, "A").await?, 0);
    assert_eq!(executor_rows(&db, "B").await?, 1, "B is alive");
    b.shutdown().await;
    assert_eq!(
        executor_rows(&db, "B").await?,
        0,
        "idle executor unregistered"
    );
    Ok(())
}

/// A restarted executor (same id) gets its PENDING runs back at once; nobody else takes them.
#[tokio::test]
async fn restarted_executor_recovers_its_own_runs() -> Result<()> {
    let db = fresh().await?;
    enqueue_n(&db, "r", 3).await?;
    let a = db.register_executor(options("A", 10_000, 60_000)).await?;
    let claimed = db.claim("A", &q(), 2).await?;
    assert_eq!(claimed.len(), 2);
    // Somebody else's run stays out of it.
    db.claim("other", &q(), 1).await?;
    drop(a); // crash

    // Restart: same id.
    let a2 = db.register_executor(options("A", 10_000, 60_000)).await?;
    let recovered = db.recover_own_runs("A").await?;
    let mut ids: Vec<_> = recovered.iter().map(|r| r.workflow_id.clone()).collect();
    ids.sort();
    let mut expected: Vec<_> = claimed.iter().map(|r| r.workflow_id.clone()).collect();
    expected.sort();
    assert_eq!(ids, expected);
    for r in &recovered {
        assert_eq!(r.state, RunState::Pending);
        assert_eq!(r.executor_id.as_deref(), Some("A"));
        assert_eq!(r.recovery_attempts, 1);
    }
    assert_eq!(db.take_over_lapsed("B").await?, 0);
    assert!(db.recover_own_runs("nobody").await?.is_empty());
    a2.shutdown().await;
    Ok(())
}

/// Runs held by an executor that never registered are orphans: taken over once they started
/// more than one lease ago (the taker's lease when this process registered the taker).
#[tokio::test]
async fn orphaned_runs_are_taken_over_after_one_lease() -> Result<()> {
    let db = fresh().await?;
    enqueue_n(&db, "r", 2).await?;
    let claimed = db.claim("ghost", &q(), 10).await?;
    assert_eq!(claimed.len(), 2);
    let started = claimed[0].started_at_ms.expect("started");
    let b = db.register_executor(options("B", 300, 60_000)).await?;
    assert_eq!(
        db.take_over_lapsed("B").await?,
        0,
        "orphans taken over too early"
    );
    // With an explicit, longer threshold they are still not old enough.
    sleep_past(started + 300).await;
    assert_eq!(
        db.take_over_lapsed_with("B", Duration::from_secs(60))
            .await?,
        0
    );
    assert_eq!(db.take_over_lapsed("B").await?, 2);
    let s = db.status("r0").await?.expect("row");
    assert_eq!((s.state, s.executor_id), (RunState::Enqueued, None));
    b.shutdown().await;
    Ok(())
}

/// A PENDING run without a queue (written by other DBOS tooling) cannot go back to a queue: it
/// is assigned to the taker, stays PENDING, and the taker finds it among its own runs.
#[tokio::test]
async fn queueless_runs_are_assigned_to_the_taker() -> Result<()> {
    let db = fresh().await?;
    let dead = db.register_executor(options("dead", 100, 60_000)).await?;
    drop(dead);
    let now = dbos_core::now_ms();
    sqlx::query(&format!(
        "INSERT INTO \"{}\".workflow_status
             (workflow_uuid, status, name, executor_id, created_at, updated_at, started_at_epoch_ms)
         VALUES ('direct', 'PENDING', 'wf', 'dead', $1, $1, $1)",
        db.schema()
    ))
    .bind(now)
    .execute(db.pool())
    .await?;
    sleep_past(lease_expiry(&db, "dead").await?).await;
    assert_eq!(db.take_over_lapsed("taker").await?, 1);
    let s = db.status("direct").await?.expect("row");
    assert_eq!(s.state, RunState::Pending);
    assert_eq!(s.executor_id.as_deref(), Some("taker"));
    assert_eq!(s.recovery_attempts, 1);
    let mine = db.recover_own_runs("taker").await?;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].workflow_id, "direct");
    Ok(())
}

/// An executor whose row was removed while it was alive (it missed renewals and was taken
/// over) registers again at its next renewal.
#[tokio::test]
async fn renewal_recreates_a_removed_row() -> Result<()> {
    let db = fresh().await?;
    let a = db.register_executor(options("A", 5_000, 50)).await?;
    sqlx::query(&format!(
        "DELETE FROM \"{}\".dbosify_executors WHERE executor_id = 'A'",
        db.schema()
    ))
    .execute(db.pool())
    .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while executor_rows(&db, "A").await? == 0 {
        ensure!(Instant::now() < deadline, "row never re-created");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn register_executor_rejects_bad_options() -> Result<()> {
    let db = fresh().await?;
    let e = db
        .register_executor(ExecutorOptions::new(""))
        .await
        .expect_err("empty id");
    assert!(
        matches!(
            e,
            Error::InvalidName {
                what: "executor id",
                ..
            }
        ),
        "{e}"
    );
    let e = db
        .register_executor(options("A", 0, 10))
        .await
        .expect_err("zero lease");
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    assert!(e.to_string().contains("positive"), "{e}");
    let e = db
        .register_executor(options("A", 10, 0))
        .await
        .expect_err("zero renewal");
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    let e = db.take_over_lapsed("").await.expect_err("empty taker");
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    let e = db.recover_own_runs("").await.expect_err("empty id");
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    assert_eq!(executor_rows(&db, "A").await?, 0);
    Ok(())
}

/// A worker known to be dead (e.g. its process is gone) is taken over at once, without waiting
/// for its lease to lapse, and a live executor is left alone.
#[tokio::test]
async fn executors_declared_dead_are_taken_over_at_once() {
    let db = dbos_core::testing::fresh_database().await.expect("connect");
    let mut long = ExecutorOptions::new("dead-worker");
    long.lease = Duration::from_secs(600);
    let dead = db
        .register_executor(long.clone())
        .await
        .expect("register dead");
    let mut live_opts = long;
    live_opts.executor_id = "live-worker".into();
    let live = db
        .register_executor(live_opts)
        .await
        .expect("register live");
    for i in 0..3 {
        db.enqueue(EnqueueRequest::new(format!("d{i}"), "wf", "q", "{}"))
            .await
            .expect("enqueue");
    }
    let held = db
        .claim("dead-worker", &["q".to_string()], 2)
        .await
        .expect("claim dead");
    assert_eq!(held.len(), 2);
    let kept = db
        .claim("live-worker", &["q".to_string()], 1)
        .await
        .expect("claim live");
    assert_eq!(kept.len(), 1);
    let listed = db.list_executors().await.expect("list");
    assert!(listed.iter().any(|(id, _)| id == "dead-worker"));
    let moved = db
        .take_over_executors("taker", &["dead-worker".to_string()])
        .await
        .expect("take over");
    assert_eq!(moved, 2, "only the dead executor's runs move");
    let listed = db.list_executors().await.expect("list");
    assert!(
        !listed.iter().any(|(id, _)| id == "dead-worker"),
        "dead executor row removed"
    );
    assert!(
        listed.iter().any(|(id, _)| id == "live-worker"),
        "live executor untouched"
    );
    let again = db
        .claim("taker", &["q".to_string()], 10)
        .await
        .expect("claim again");
    let mut ids: Vec<_> = again.iter().map(|s| s.workflow_id.clone()).collect();
    ids.sort();
    let mut expected: Vec<_> = held.iter().map(|s| s.workflow_id.clone()).collect();
    expected.sort();
    assert_eq!(ids, expected);
    let live_run = db
        .status(&kept[0].workflow_id)
        .await
        .expect("status")
        .expect("exists");
    assert_eq!(live_run.executor_id.as_deref(), Some("live-worker"));
    drop(dead);
    live.shutdown().await;
}

//! Faults: lost notifications (waiters fall back to re-checking the database) and backends
//! terminated mid-workload (`pg_terminate_backend` on the pool, the LISTEN connection and the
//! hint sender: nothing is lost, nothing is duplicated, waiters still wake).
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dbos_core::{Checkpoint, SystemDatabase, testing};
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn waiters_wake_when_a_notification_is_lost() {
    // Fallback re-check every 500 ms (the test configuration).
    let db = common::fresh().await;
    let fallback = db.config().fallback_poll_interval;
    assert_eq!(fallback, Duration::from_millis(500));
    common::new_run(&db, "wf").await;
    let schema = db.schema().to_owned();

    let event = {
        let db = db.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let v = db.get_event("wf", "k", Some(Duration::from_secs(30))).await;
            (v, t.elapsed())
        })
    };
    let message = {
        let db = db.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let v = db.recv("wf", 0, "t", Duration::from_secs(30)).await;
            (v, t.elapsed())
        })
    };
    let any_message = {
        let db = db.clone();
        tokio::spawn(async move {
            // Its own topic: recv above consumes "t" and may do so before this probe runs.
            db.wait_for_message("wf", Some("w"), Some(Duration::from_secs(30)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Written with plain SQL on another connection: no hint is ever sent.
    let mut conn = common::plain_connection().await;
    let written = Instant::now();
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".workflow_events (workflow_uuid, key, value) VALUES ('wf', 'k', '\"quiet\"')"
    ))
    .execute(&mut conn)
    .await
    .expect("insert event");
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".notifications (destination_uuid, topic, message) VALUES ('wf', 't', '\"psst\"')"
    ))
    .execute(&mut conn)
    .await
    .expect("insert message");
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".notifications (destination_uuid, topic, message) VALUES ('wf', 'w', '1')"
    ))
    .execute(&mut conn)
    .await
    .expect("insert message");

    let (v, _) = event.await.expect("join");
    assert_eq!(v.expect("get_event").as_deref(), Some("\"quiet\""));
    let (m, _) = message.await.expect("join");
    assert_eq!(m.expect("recv").as_deref(), Some("\"psst\""));
    assert!(any_message.await.expect("join").expect("wait"));
    // Seen by the fallback re-check: within a few intervals, far before the 30 s timeout.
    let seen_after = written.elapsed();
    assert!(
        seen_after < fallback * 6,
        "lost notification noticed only after {seen_after:?}"
    );
}

/// Terminates every backend whose application_name is `app` (except the caller's own).
async fn terminate_all(conn: &mut PgConnection, app: &str) -> u64 {
    let n: Option<i64> = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
           FROM pg_stat_activity
          WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(app)
    .fetch_one(conn)
    .await
    .expect("terminate");
    n.unwrap_or(0) as u64
}

#[tokio::test]
async fn terminating_backends_mid_workload_loses_nothing() {
    common::init_tracing();
    let app = format!(
        "dbosify_fault_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut config = testing::test_config();
    config.database_url = common::with_application_name(&config.database_url, &app);
    // Waiters must be woken by LISTEN/NOTIFY or by the reconnect's wake-all, never by polling.
    config.fallback_poll_interval = Duration::from_secs(120);
    config.max_retries = 12;
    let db = SystemDatabase::connect(config.clone())
        .await
        .expect("connect");
    let peer = SystemDatabase::connect(config.clone())
        .await
        .expect("connect peer");

    const RUNS: usize = 5;
    const CHECKPOINTS_PER_RUN: i32 = 100;
    const MESSAGES: usize = 200;
    for r in 0..RUNS {
        common::new_run(&db, &format!("run-{r}")).await;
    }
    common::new_run(&db, "inbox").await;

    // The killer: its own connection (another application_name), terminating every backend of
    // the handles under test, again and again, until the workload is done.
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let rounds = Arc::new(AtomicU64::new(0));
    let killer = {
        let (stop, kills, rounds, app) = (stop.clone(), kills.clone(), rounds.clone(), app.clone());
        tokio::spawn(async move {
            let mut conn = PgConnection::connect(&common::with_application_name(
                &testing::test_database_url(),
                "dbosify_fault_killer",
            ))
            .await
            .expect("killer connection");
            while !stop.load(Ordering::Relaxed) {
                kills.fetch_add(terminate_all(&mut conn, &app).await, Ordering::Relaxed);
                rounds.fetch_add(1, Ordering::Relaxed);
                let pause = 10 + rand::random_range(0..40u64);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        })
    };

    // The workload: checkpoint appenders (one task per run) and a sender, concurrently.
    let mut tasks = Vec::new();
    for r in 0..RUNS {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let run = format!("run-{r}");
            for i in 0..CHECKPOINTS_PER_RUN {
                let cp = Checkpoint {
                    function_id: i,
                    function_name: format!("step-{i}"),
                    output: Some(format!("\"{run}:{i}\"")),
                    ..Default::default()
                };
                db.append_checkpoint(&run, &cp)
                    .await
                    .expect("append survives kills");
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        }));
    }
    {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..MESSAGES {
                // Half with an idempotency key, half without: neither may be duplicated.
                let key = (i % 2 == 0).then(|| format!("key-{i}"));
                db.send("inbox", "t", &format!("m{i}"), key.as_deref())
                    .await
                    .expect("send survives kills");
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("workload task");
    }
    // One more round after the workload so the listener has certainly just been killed.
    stop.store(true, Ordering::Relaxed);
    killer.await.expect("killer");
    let mut killer_conn = PgConnection::connect(&testing::test_database_url())
        .await
        .expect("connection");
    let last = terminate_all(&mut killer_conn, &app).await;
    let total_kills = kills.load(Ordering::Relaxed) + last;
    eprintln!(
        "kill rounds: {}, backends terminated: {total_kills}",
        rounds.load(Ordering::Relaxed)
    );
    assert!(total_kills > 0, "the killer never hit a backend");

    // A waiter registered right after the listener was killed still wakes, by hint or by the
    // reconnect's wake-all (the fallback poll is 120 s, the wait 60 s).
    let waiter = {
        let db = db.clone();
        tokio::spawn(async move {
            db.get_event("inbox", "after-kill", Some(Duration::from_secs(60)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    peer.set_event("inbox", "after-kill", "\"ok\"")
        .await
        .expect("set event after kill");
    let woke = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("join in time")
        .expect("join")
        .expect("get_event");
    assert_eq!(woke.as_deref(), Some("\"ok\""));

    // And a cross-handle recv still wakes on a fresh send once the listener is back.
    let recv = {
        let db = db.clone();
        tokio::spawn(async move { db.recv("inbox", 0, "late", Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    peer.send("inbox", "late", "\"after\"", None)
        .await
        .expect("send");
    let got = tokio::time::timeout(Duration::from_secs(60), recv)
        .await
        .expect("recv in time")
        .expect("join")
        .expect("recv");
    assert_eq!(got.as_deref(), Some("\"after\""));

    // Everything is present exactly once.
    for r in 0..RUNS {
        let run = format!("run-{r}");
        let cps = db.checkpoints(&run).await.expect("read");
        assert_eq!(cps.len(), CHECKPOINTS_PER_RUN as usize, "{run}");
        for (i, cp) in cps.iter().enumerate() {
            assert_eq!(cp.function_id, i as i32);
            assert_eq!(cp.output, Some(format!("\"{run}:{i}\"")));
        }
    }
    let bodies: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT message, count(*) FROM \"{}\".notifications
          WHERE destination_uuid = 'inbox' AND topic = 't' GROUP BY message",
        db.schema()
    ))
    .fetch_all(&mut killer_conn)
    .await
    .expect("count messages");
    assert_eq!(bodies.len(), MESSAGES, "every message present");
    assert!(
        bodies.iter().all(|(_, n)| *n == 1),
        "duplicated messages: {:?}",
        bodies.iter().filter(|(_, n)| *n > 1).collect::<Vec<_>>()
    );
    let order: Vec<String> = db
        .peek_messages("inbox", Some("t"), 1000)
        .await
        .expect("peek")
        .into_iter()
        .map(|m| m.body)
        .collect();
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    assert_eq!(order, expected, "messages in send order");

    let stats = db.notifier_stats();
    eprintln!("notifier stats after the storm: {stats:?}");
    assert!(
        stats.listener_connects > 1,
        "the LISTEN connection was never re-established: {stats:?}"
    );
}

#[tokio::test]
async fn listener_reconnects_after_its_backend_is_terminated() {
    common::init_tracing();
    let app = format!(
        "dbosify_listen_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut config = testing::test_config();
    config.database_url = common::with_application_name(&config.database_url, &app);
    config.fallback_poll_interval = Duration::from_secs(120);
    let db = SystemDatabase::connect(config.clone())
        .await
        .expect("connect");
    let mut other = config.clone();
    other.database_url = testing::test_database_url();
    let peer = SystemDatabase::connect(other).await.expect("peer");
    common::new_run(&db, "wf").await;

    // Kill only the LISTEN connection: the one backend of the app that is running LISTEN.
    let mut conn = common::plain_connection().await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE application_name = $1 AND query ILIKE 'LISTEN%'",
    )
    .bind(&app)
    .fetch_one(&mut conn)
    .await
    .expect("terminate listener");
    assert_eq!(killed, 1, "exactly one LISTEN connection per handle");

    for round in 0..3 {
        let waiter = {
            let db = db.clone();
            tokio::spawn(async move { db.recv("wf", round, "t", Duration::from_secs(60)).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        peer.send("wf", "t", &round.to_string(), None)
            .await
            .expect("send");
        let got = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("in time")
            .expect("join")
            .expect("recv");
        assert_eq!(got, Some(round.to_string()));
    }
    assert!(db.notifier_stats().listener_connects >= 2);
}

//! Queues and claiming against a real Postgres: no double claims across processes, ordering,
//! limits (per worker, global, rate), delays, wake-ups, bad input, lost connections.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use dbos_core::{
    CompleteResult, EnqueueRequest, Error, Outcome, QueueConfig, RateLimit, RunState,
    SystemDatabase, WorkflowStatus, testing,
};
use tokio::sync::Barrier;

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

/// Another handle on the same schema: its own pool and LISTEN connection, like another process.
async fn other_process(db: &SystemDatabase, fallback: Duration) -> Result<SystemDatabase> {
    let mut config = db.config().clone();
    config.fallback_poll_interval = fallback;
    config.max_connections = 4;
    Ok(SystemDatabase::connect(config).await?)
}

fn queues(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn ids(runs: &[WorkflowStatus]) -> Vec<&str> {
    runs.iter().map(|r| r.workflow_id.as_str()).collect()
}

async fn enqueue_n(db: &SystemDatabase, queue: &str, prefix: &str, n: usize) -> Result<()> {
    for i in 0..n {
        db.enqueue(EnqueueRequest::new(
            format!("{prefix}{i:04}"),
            "wf",
            queue,
            "null",
        ))
        .await?;
    }
    Ok(())
}

async fn count_pending(db: &SystemDatabase, queue: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".workflow_status WHERE queue_name = $1 AND status = 'PENDING'",
        db.schema()
    ))
    .bind(queue)
    .fetch_one(db.pool())
    .await?)
}

/// Waits until no connection named `app` runs a statement (orphaned statements of dropped
/// connections have finished).
async fn wait_until_quiet(db: &SystemDatabase, app: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = $1 AND state NOT IN ('idle')",
        )
        .bind(app)
        .fetch_one(db.pool())
        .await?;
        if active == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "statements of {app} still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Claims until the queue gives nothing more, as a worker's loop does.
async fn claim_all(db: &SystemDatabase, me: &str, queue: &str) -> Result<Vec<String>> {
    let mut mine = Vec::new();
    loop {
        let runs = db.claim(me, &queues(&[queue]), 4).await?;
        if runs.is_empty() {
            return Ok(mine);
        }
        for r in runs {
            ensure!(r.executor_id.as_deref() == Some(me), "{r:?}");
            mine.push(r.workflow_id);
        }
    }
}

async fn succeed(db: &SystemDatabase, id: &str, executor: &str) -> Result<()> {
    let r = db
        .complete(id, Some(executor), &Outcome::Success("null".into()))
        .await?;
    ensure!(matches!(r, CompleteResult::Recorded), "{r:?}");
    Ok(())
}

/// Eight claimers, each with its own pool (like eight processes), race for 400 runs: every run
/// is claimed exactly once, and the database agrees with what each claimer was told.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_claimers_never_double_claim() -> Result<()> {
    let db = fresh().await?;
    const RUNS: usize = 400;
    enqueue_n(&db, "q", "run-", RUNS).await?;
    let barrier = Arc::new(Barrier::new(8));
    let mut tasks = Vec::new();
    for c in 0..8 {
        let handle = other_process(&db, Duration::from_secs(2)).await?;
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let me = format!("claimer-{c}");
            barrier.wait().await;
            let mut mine = Vec::new();
            loop {
                let runs = handle.claim(&me, &queues(&["q"]), 7).await?;
                if runs.is_empty() {
                    break;
                }
                for r in runs {
                    anyhow::ensure!(r.state == RunState::Pending, "claimed {r:?}");
                    anyhow::ensure!(r.executor_id.as_deref() == Some(me.as_str()));
                    mine.push(r.workflow_id);
                }
            }
            handle.close().await;
            anyhow::Ok((me, mine))
        }));
    }
    let mut owner: HashMap<String, String> = HashMap::new();
    for t in tasks {
        let (me, mine) = t.await??;
        for id in mine {
            if let Some(prev) = owner.insert(id.clone(), me.clone()) {
                panic!("{id} claimed by both {prev} and {me}");
            }
        }
    }
    assert_eq!(owner.len(), RUNS, "every run claimed");
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(&format!(
        "SELECT workflow_uuid, status, executor_id FROM \"{}\".workflow_status",
        db.schema()
    ))
    .fetch_all(db.pool())
    .await?;
    assert_eq!(rows.len(), RUNS);
    for (id, status, executor) in rows {
        assert_eq!(status, "PENDING", "{id}");
        assert_eq!(executor.as_ref(), owner.get(&id), "{id}");
    }
    Ok(())
}

#[tokio::test]
async fn claim_takes_priority_then_age_and_sets_claim_fields() -> Result<()> {
    let db = fresh().await?;
    let mut low = EnqueueRequest::new("low", "wf", "q", "1");
    low.priority = 5;
    db.enqueue(low).await?;
    db.enqueue(EnqueueRequest::new("old", "wf", "q", "2"))
        .await?;
    let mut timed = EnqueueRequest::new("young", "wf", "q", "3");
    timed.timeout = Some(Duration::from_secs(60));
    db.enqueue(timed).await?;
    // Same priority: oldest first, then the lower priority.
    let before = dbos_core::now_ms();
    let first = db.claim("ex", &queues(&["q"]), 1).await?;
    assert_eq!(ids(&first), ["old"]);
    let rest = db.claim("ex", &queues(&["q"]), 10).await?;
    assert_eq!(ids(&rest), ["young", "low"]);
    let young = &rest[0];
    let started = young.started_at_ms.expect("started_at set");
    assert!(started >= before);
    assert_eq!(young.deadline_epoch_ms, Some(started + 60_000));
    assert_eq!(young.updated_at_ms, started);
    assert_eq!(rest[1].deadline_epoch_ms, None, "no timeout, no deadline");
    assert!(db.claim("ex", &queues(&["q"]), 10).await?.is_empty());
    // Other queues are untouched.
    db.enqueue(EnqueueRequest::new("elsewhere", "wf", "q2", "4"))
        .await?;
    assert!(db.claim("ex", &queues(&["q"]), 10).await?.is_empty());
    assert_eq!(
        db.status("elsewhere").await?.expect("row").state,
        RunState::Enqueued
    );
    Ok(())
}

#[tokio::test]
async fn worker_concurrency_is_per_executor() -> Result<()> {
    let db = fresh().await?;
    db.register_queue(&QueueConfig {
        name: "wq".into(),
        worker_concurrency: Some(2),
        ..Default::default()
    })
    .await?;
    enqueue_n(&db, "wq", "w", 6).await?;
    let a = db.claim("A", &queues(&["wq"]), 10).await?;
    assert_eq!(a.len(), 2);
    assert!(db.claim("A", &queues(&["wq"]), 10).await?.is_empty());
    let b = db.claim("B", &queues(&["wq"]), 10).await?;
    assert_eq!(b.len(), 2, "another executor has its own budget");
    succeed(&db, &a[0].workflow_id, "A").await?;
    let a2 = db.claim("A", &queues(&["wq"]), 10).await?;
    assert_eq!(a2.len(), 1, "a finished run frees exactly one slot");
    assert_eq!(count_pending(&db, "wq").await?, 4, "two per executor");
    Ok(())
}

/// Claimers in different processes race on a queue with a global concurrency of 3, round
/// after round from an empty slate: each round admits exactly 3, never more, and finishing
/// runs frees their slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_concurrency_holds_across_claimers() -> Result<()> {
    let db = fresh().await?;
    db.register_queue(&QueueConfig {
        name: "gq".into(),
        concurrency: Some(3),
        ..Default::default()
    })
    .await?;
    const ROUNDS: usize = 8;
    enqueue_n(&db, "gq", "g", ROUNDS * 3 + 5).await?;
    let mut claimers = Vec::new();
    for c in 0..4 {
        claimers.push((
            other_process(&db, Duration::from_secs(2)).await?,
            format!("C{c}"),
        ));
    }
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(claimers.len()));
        let mut tasks = Vec::new();
        for (handle, me) in &claimers {
            let (handle, me, barrier) = (handle.clone(), me.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                handle.claim(&me, &queues(&["gq"]), 3).await
            }));
        }
        let mut claimed = Vec::new();
        for t in tasks {
            claimed.extend(t.await??);
        }
        assert_eq!(
            claimed.len(),
            3,
            "round {round} admitted {:?}",
            ids(&claimed)
        );
        assert_eq!(count_pending(&db, "gq").await?, 3);
        for r in &claimed {
            succeed(&db, &r.workflow_id, r.executor_id.as_deref().unwrap_or("")).await?;
        }
    }
    for (handle, _) in claimers {
        handle.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn rate_limit_counts_starts_within_the_period() -> Result<()> {
    let db = fresh().await?;
    let period = Duration::from_millis(400);
    db.register_queue(&QueueConfig {
        name: "rq".into(),
        rate_limit: Some(RateLimit { max: 2, period }),
        ..Default::default()
    })
    .await?;
    enqueue_n(&db, "rq", "r", 5).await?;
    let first = db.claim("A", &queues(&["rq"]), 10).await?;
    assert_eq!(first.len(), 2);
    let window_start = first
        .iter()
        .filter_map(|r| r.started_at_ms)
        .min()
        .expect("started");
    assert!(db.claim("B", &queues(&["rq"]), 10).await?.is_empty());
    // Finishing does not give the starts back: the limit is on starts, not on concurrency.
    for r in &first {
        succeed(&db, &r.workflow_id, "A").await?;
    }
    if dbos_core::now_ms() < window_start + 400 {
        assert!(db.claim("B", &queues(&["rq"]), 10).await?.is_empty());
    }
    // Once the period has passed since those starts, two more may start.
    let wait = (window_start + 400 + 5 - dbos_core::now_ms()).max(0);
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    let second = db.claim("B", &queues(&["rq"]), 10).await?;
    assert_eq!(second.len(), 2);
    assert!(db.claim("A", &queues(&["rq"]), 10).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn delayed_runs_are_claimable_only_after_their_time() -> Result<()> {
    let db = fresh().await?;
    let mut r = EnqueueRequest::new("later", "wf", "dq", "null");
    r.delay = Some(Duration::from_millis(300));
    let created = db.enqueue(r).await?;
    let due = created.status().delay_until_epoch_ms.expect("delay set");
    assert_eq!(created.status().state, RunState::Delayed);
    assert!(db.claim("ex", &queues(&["dq"]), 10).await?.is_empty());
    assert_eq!(
        db.status("later").await?.expect("row").state,
        RunState::Delayed
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let claimed = loop {
        let now = dbos_core::now_ms();
        let runs = db.claim("ex", &queues(&["dq"]), 10).await?;
        if !runs.is_empty() {
            assert!(
                now + 1 >= due || dbos_core::now_ms() >= due,
                "claimed early"
            );
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "the delayed run never became claimable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(dbos_core::now_ms() >= due, "claimed before its due time");
    assert_eq!(ids(&claimed), ["later"]);
    assert_eq!(claimed[0].state, RunState::Pending);
    Ok(())
}

#[tokio::test]
async fn wait_for_work_wakes_on_enqueue_from_another_process() -> Result<()> {
    let db = fresh().await?;
    // The worker's fallback poll is ten minutes: only the enqueue's notification can wake it.
    let worker = other_process(&db, Duration::from_secs(600)).await?;
    let waiting = {
        let worker = worker.clone();
        tokio::spawn(async move {
            worker
                .wait_for_work(&queues(&["a", "wq"]), Duration::from_secs(600))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "returned without work");
    db.enqueue(EnqueueRequest::new("w1", "wf", "wq", "null"))
        .await?;
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("wait_for_work was not woken by the enqueue")?;
    assert_eq!(worker.claim("w", &queues(&["wq"]), 1).await?.len(), 1);

    // Registered before claiming, the waiter also catches an enqueue that lands between.
    let waiter = worker.register_work_waiter(&queues(&["wq"]));
    assert!(worker.claim("w", &queues(&["wq"]), 1).await?.is_empty());
    db.enqueue(EnqueueRequest::new("w2", "wf", "wq", "null"))
        .await?;
    tokio::time::timeout(
        Duration::from_secs(20),
        waiter.wait(Duration::from_secs(600)),
    )
    .await
    .expect("work waiter was not woken");
    worker.close().await;
    Ok(())
}

#[tokio::test]
async fn wait_for_work_ends_at_a_delayed_runs_due_time_or_timeout() -> Result<()> {
    let db = fresh().await?;
    let worker = other_process(&db, Duration::from_secs(600)).await?;
    let started = Instant::now();
    worker
        .wait_for_work(&queues(&["empty"]), Duration::from_millis(150))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(150));

    let mut r = EnqueueRequest::new("soon", "wf", "dq", "null");
    r.delay = Some(Duration::from_millis(300));
    db.enqueue(r).await?;
    tokio::time::timeout(
        Duration::from_secs(20),
        worker.wait_for_work(&queues(&["dq"]), Duration::from_secs(600)),
    )
    .await
    .expect("wait_for_work slept past the delayed run's due time");
    let deadline = Instant::now() + Duration::from_secs(5);
    while worker.claim("w", &queues(&["dq"]), 1).await?.is_empty() {
        assert!(
            Instant::now() < deadline,
            "delayed run not claimable after wake"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.close().await;
    Ok(())
}

#[tokio::test]
async fn claim_over_several_queues_respects_each_queues_limits() -> Result<()> {
    let db = fresh().await?;
    db.register_queue(&QueueConfig {
        name: "limited".into(),
        worker_concurrency: Some(1),
        ..Default::default()
    })
    .await?;
    db.register_queue(&QueueConfig {
        name: "global".into(),
        concurrency: Some(2),
        ..Default::default()
    })
    .await?;
    enqueue_n(&db, "free", "f", 3).await?;
    enqueue_n(&db, "limited", "l", 3).await?;
    enqueue_n(&db, "global", "g", 3).await?;
    let all = queues(&["free", "limited", "global", "free"]);
    let got = db.claim("A", &all, 100).await?;
    let per_queue = |runs: &[WorkflowStatus], q: &str| {
        runs.iter()
            .filter(|r| r.queue_name.as_deref() == Some(q))
            .count()
    };
    assert_eq!(per_queue(&got, "free"), 3);
    assert_eq!(per_queue(&got, "limited"), 1);
    assert_eq!(per_queue(&got, "global"), 2);
    // `max` bounds the total.
    enqueue_n(&db, "free", "f2-", 5).await?;
    assert_eq!(db.claim("B", &all, 4).await?.len(), 4);
    Ok(())
}

#[tokio::test]
async fn register_queue_round_trips_and_validates() -> Result<()> {
    let db = fresh().await?;
    let config = QueueConfig {
        name: "cfg".into(),
        concurrency: Some(4),
        worker_concurrency: Some(2),
        rate_limit: Some(RateLimit {
            max: 10,
            period: Duration::from_millis(1500),
        }),
    };
    db.register_queue(&config).await?;
    assert_eq!(db.queue_config("cfg").await?, Some(config.clone()));
    // Updating replaces the limits.
    let relaxed = QueueConfig {
        name: "cfg".into(),
        ..Default::default()
    };
    db.register_queue(&relaxed).await?;
    assert_eq!(db.queue_config("cfg").await?, Some(relaxed));
    assert_eq!(db.queue_config("none").await?, None);

    let db = &db;
    let bad = |c: QueueConfig| async move { db.register_queue(&c).await };
    let e = bad(QueueConfig::default()).await.expect_err("empty name");
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
    let e = bad(QueueConfig {
        name: "z".into(),
        concurrency: Some(0),
        ..Default::default()
    })
    .await
    .expect_err("zero concurrency");
    assert!(e.to_string().contains("at least 1"), "{e}");
    let e = bad(QueueConfig {
        name: "z".into(),
        worker_concurrency: Some(u32::MAX),
        ..Default::default()
    })
    .await
    .expect_err("too large");
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    let e = bad(QueueConfig {
        name: "z".into(),
        rate_limit: Some(RateLimit {
            max: 1,
            period: Duration::ZERO,
        }),
        ..Default::default()
    })
    .await
    .expect_err("zero period");
    assert!(e.to_string().contains("period"), "{e}");
    Ok(())
}

#[tokio::test]
async fn claim_rejects_bad_input() -> Result<()> {
    let db = fresh().await?;
    enqueue_n(&db, "q", "x", 1).await?;
    let e = db
        .claim("", &queues(&["q"]), 1)
        .await
        .expect_err("empty executor");
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
        .claim("ex", &queues(&["q", ""]), 1)
        .await
        .expect_err("empty queue");
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
    assert!(db.claim("ex", &[], 5).await?.is_empty());
    assert!(db.claim("ex", &queues(&["q"]), 0).await?.is_empty());
    assert_eq!(
        db.status("x0000").await?.expect("row").state,
        RunState::Enqueued
    );
    Ok(())
}

/// Connections of the claimers are killed again and again while they claim (server-side
/// `pg_terminate_backend`, as in a failover). Claims retry on other connections; every run is
/// handed to exactly one claimer and none is left PENDING behind a claimer's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_survive_killed_connections_without_leaks() -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let db = fresh().await?;
    const RUNS: usize = 300;
    enqueue_n(&db, "kq", "k", RUNS).await?;
    let app = format!("claimers_{}", db.schema());
    let mut config = db.config().clone();
    let sep = if config.database_url.contains('?') {
        '&'
    } else {
        '?'
    };
    config.database_url = format!("{}{sep}application_name={app}", config.database_url);
    config.max_connections = 3;
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let db = db.clone();
        let app = app.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut kills = 0;
            while !stop.load(Ordering::Relaxed) && kills < 40 {
                tokio::time::sleep(Duration::from_millis(15)).await;
                let _ = sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE application_name = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&app)
                .execute(db.pool())
                .await;
                kills += 1;
            }
        })
    };
    let mut tasks = Vec::new();
    for c in 0..4 {
        let handle = SystemDatabase::connect(config.clone()).await?;
        tasks.push(tokio::spawn(async move {
            let me = format!("k-claimer-{c}");
            let mine = claim_all(&handle, &me, "kq").await?;
            anyhow::Ok((me, mine, handle))
        }));
    }
    let mut claimers = Vec::new();
    for t in tasks {
        claimers.push(t.await??);
    }
    stop.store(true, Ordering::Relaxed);
    killer.await?;
    wait_until_quiet(&db, &app).await?;
    let mut owner: HashMap<String, String> = HashMap::new();
    for (me, mut mine, handle) in claimers {
        // A worker keeps claiming: late-committed claims of earlier calls surface here.
        mine.extend(claim_all(&handle, &me, "kq").await?);
        for id in mine {
            if let Some(prev) = owner.insert(id.clone(), me.clone()) {
                panic!("{id} claimed by both {prev} and {me}");
            }
        }
        handle.close().await;
    }
    assert_no_leaks(&db, &owner, RUNS).await
}

/// Every run is PENDING, held by the one claimer it was returned to.
async fn assert_no_leaks(
    db: &SystemDatabase,
    owner: &HashMap<String, String>,
    runs: usize,
) -> Result<()> {
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(&format!(
        "SELECT workflow_uuid, status, executor_id FROM \"{}\".workflow_status",
        db.schema()
    ))
    .fetch_all(db.pool())
    .await?;
    assert_eq!(rows.len(), runs);
    for (id, status, executor) in &rows {
        match owner.get(id) {
            Some(o) => {
                assert_eq!(status, "PENDING", "{id}");
                assert_eq!(executor.as_ref(), Some(o), "{id}");
            }
            None => panic!("{id} is {status} (executor {executor:?}) but nobody was told"),
        }
    }
    assert_eq!(owner.len(), runs);
    Ok(())
}

/// A TCP proxy between the claimers and Postgres that, once armed, cuts a connection right
/// after forwarding a statement (a Bind message) with probability 1/`one_in`. Postgres has the
/// whole statement by then and executes and commits it; the client only sees the connection
/// drop: a lost acknowledgement.
struct CuttingProxy {
    addr: std::net::SocketAddr,
    armed: Arc<std::sync::atomic::AtomicBool>,
    cuts: Arc<std::sync::atomic::AtomicUsize>,
}

impl CuttingProxy {
    async fn start(upstream: String, one_in: u32) -> Result<Self> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (armed2, cuts2) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (armed, cuts) = (armed2.clone(), cuts2.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    // When the server closes first, the client's half closes with it (the
                    // write half is dropped at the end of this task).
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let statement = buf[0] == b'B' || buf[0] == b'P';
                        if statement
                            && armed.load(Ordering::Relaxed)
                            && rand::random_range(0..one_in) == 0
                        {
                            cuts.fetch_add(1, Ordering::Relaxed);
                            // Let the server have the bytes, then drop the client side at once.
                            let _ = sw.flush().await;
                            back.abort();
                            return;
                        }
                    }
                    back.abort();
                });
            }
        });
        Ok(Self { addr, armed, cuts })
    }
}

/// Claims whose connection drops after the server received (and committed) them are found
/// again through their claim token: every run is returned to exactly one claimer, none is left
/// PENDING behind a claimer's back, and the claimers see no errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_claim_acknowledgements_are_recovered_by_token() -> Result<()> {
    use std::sync::atomic::Ordering;
    let db = fresh().await?;
    const RUNS: usize = 200;
    enqueue_n(&db, "lq", "l", RUNS).await?;
    let url = db.config().database_url.clone();
    // postgres://user@host:port/db?params → host:port
    let after_at = url.rsplit_once('@').map_or(url.as_str(), |(_, r)| r);
    let hostport = after_at.split('/').next().unwrap_or(after_at).to_string();
    let proxy = CuttingProxy::start(hostport.clone(), 4).await?;
    let app = format!("proxied_{}", db.schema());
    let mut config = db.config().clone();
    let url = url.replacen(&hostport, &proxy.addr.to_string(), 1);
    let sep = if url.contains('?') { '&' } else { '?' };
    config.database_url = format!("{url}{sep}application_name={app}");
    config.max_connections = 3;
    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(SystemDatabase::connect(config.clone()).await?);
    }
    proxy.armed.store(true, Ordering::Relaxed);
    let mut tasks = Vec::new();
    for (c, handle) in handles.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let me = format!("l-claimer-{c}");
            let mine = claim_all(&handle, &me, "lq").await?;
            anyhow::Ok((me, mine, handle))
        }));
    }
    let mut claimers = Vec::new();
    for t in tasks {
        claimers.push(t.await??);
    }
    proxy.armed.store(false, Ordering::Relaxed);
    assert!(
        proxy.cuts.load(Ordering::Relaxed) > 0,
        "the proxy never cut"
    );
    wait_until_quiet(&db, &app).await?;
    let mut owner: HashMap<String, String> = HashMap::new();
    for (me, mut mine, handle) in claimers {
        // A worker keeps claiming: claims that committed after their call gave up on them
        // surface here, exactly once.
        mine.extend(claim_all(&handle, &me, "lq").await?);
        for id in mine {
            if let Some(prev) = owner.insert(id.clone(), me.clone()) {
                panic!("{id} returned to both {prev} and {me}");
            }
        }
        handle.close().await;
    }
    assert_no_leaks(&db, &owner, RUNS).await
}

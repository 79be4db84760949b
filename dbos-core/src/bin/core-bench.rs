//! dbos-core benchmark: measures the library against the Postgres commit ceiling measured in
//! the same run, on the same machine.
//!
//! ```sh
//! cargo run --release -p dbos-core --bin core-bench                 # URL from DBOSIFY_TEST_DATABASE_URL
//! cargo run --release -p dbos-core --bin core-bench -- --url postgres://postgres@127.0.0.1:5432/test
//! ```
//! No cargo feature is needed. Options: `--url URL`; `--quick` (shorter runs); `--keep` (keep the
//! scratch database/schema); `--same-database` (do not create a scratch database: use a fresh
//! schema in the URL's database; commit counts then include whatever else runs there).
//!
//! By default it creates a scratch database (`dbosify_bench_<random>`, dropped at the end) so
//! that `pg_stat_database.xact_commit` counts only this program's transactions. Scenarios:
//! 1. ceiling: a bare single-row durable INSERT commit into a scratch table, serial and with 16
//!    concurrent clients (through the same sqlx pool the library uses, and serially on a
//!    dedicated connection);
//! 2. checkpoint appends, serial (target: at most 1.3x the cost of a bare commit) and with 16
//!    clients; `record_step` with one consumed message and one event, serial;
//! 3. enqueue -> claim -> complete with 16 producers, claimer and completer tasks (target:
//!    at least 3,000 runs/s);
//! 4. message send -> consume latency: a sender and a consumer (doing `recv`) on separate handles
//!    (as separate processes would be), p50/p99 (target: p50 at most 1 ms); also on one handle;
//! 5. commits per operation for each scenario: the change of `xact_commit` of the database
//!    (read after the scenario's handles are closed, so every backend has flushed its counters).
//!    It counts every transaction, including read-only probes and the hint sender's
//!    `synchronous_commit = off` NOTIFY transactions (reported separately as "hint batches").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dbos_core::{
    Checkpoint, CompleteResult, Config, EnqueueRequest, Outcome, StepWrite, SystemDatabase,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const CLIENTS: usize = 16;

struct Args {
    url: String,
    quick: bool,
    keep: bool,
    same_database: bool,
}

fn parse_args() -> Res<Args> {
    let mut url = std::env::var("DBOSIFY_TEST_DATABASE_URL").ok();
    let (mut quick, mut keep, mut same_database) = (false, false, false);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--url" => url = Some(it.next().ok_or("--url needs a value")?),
            "--quick" => quick = true,
            "--keep" => keep = true,
            "--same-database" => same_database = true,
            "-h" | "--help" => {
                println!(
                    "usage: bench [--url URL] [--quick] [--keep] [--same-database]\n\
                     URL defaults to $DBOSIFY_TEST_DATABASE_URL"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let url = url.ok_or("set DBOSIFY_TEST_DATABASE_URL or pass --url")?;
    Ok(Args {
        url,
        quick,
        keep,
        same_database,
    })
}

/// Where the benchmark runs: a database URL and a schema in it.
struct Target {
    url: String,
    schema: String,
    admin_url: String,
    scratch_db: Option<String>,
}

fn with_database(url: &str, db: &str) -> Res<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let slash = base.rfind('/').ok_or("URL has no database part")?;
    let prefix = &base[..slash];
    if !prefix.contains("://") || prefix.ends_with('/') {
        return Err("URL has no database part".into());
    }
    Ok(match query {
        Some(q) => format!("{prefix}/{db}?{q}"),
        None => format!("{prefix}/{db}"),
    })
}

async fn prepare(args: &Args) -> Res<Target> {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let schema = format!("bench_{tag}");
    if !args.same_database {
        let db = format!("dbosify_bench_{tag}");
        let mut admin = PgConnection::connect(&args.url).await?;
        match sqlx::query(&format!("CREATE DATABASE \"{db}\""))
            .execute(&mut admin)
            .await
        {
            Ok(_) => {
                return Ok(Target {
                    url: with_database(&args.url, &db)?,
                    schema,
                    admin_url: args.url.clone(),
                    scratch_db: Some(db),
                });
            }
            Err(e) => eprintln!(
                "note: cannot create a scratch database ({e}); using a schema in the given \
                 database: commit counts include other clients' transactions"
            ),
        }
    }
    Ok(Target {
        url: args.url.clone(),
        schema,
        admin_url: args.url.clone(),
        scratch_db: None,
    })
}

async fn cleanup(target: &Target, keep: bool) -> Res<()> {
    if keep {
        println!(
            "kept: database {:?}, schema {}",
            target.scratch_db, target.schema
        );
        return Ok(());
    }
    match &target.scratch_db {
        Some(db) => {
            let mut admin = PgConnection::connect(&target.admin_url).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .execute(&mut admin)
                .await?;
        }
        None => {
            let mut c = PgConnection::connect(&target.url).await?;
            sqlx::query(&format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                target.schema
            ))
            .execute(&mut c)
            .await?;
        }
    }
    Ok(())
}

async fn open(target: &Target) -> Res<SystemDatabase> {
    let mut config = Config::new(target.url.clone(), target.schema.clone());
    config.max_connections = 24;
    Ok(SystemDatabase::connect(config).await?)
}

/// `xact_commit` of the target database, read on a fresh connection (no cached stats snapshot).
async fn commits(target: &Target) -> Res<i64> {
    let mut c = PgConnection::connect(&target.url).await?;
    let n: i64 = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut c)
    .await?;
    c.close().await?;
    Ok(n)
}

/// Lets closed backends exit and flush their statistics: waits until `xact_commit` stops
/// moving (each read itself adds one commit, flushed when its backend exits).
async fn settle_on(target: &Target) -> Res<i64> {
    let mut last = commits(target).await?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = commits(target).await?;
        // Our own read's commit may land: a change of at most 1 is "stable".
        if now - last <= 1 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

#[derive(Default, Clone)]
struct Lat {
    samples: Vec<Duration>,
}

impl Lat {
    fn pct(&self, p: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        let mut s = self.samples.clone();
        s.sort();
        let idx = ((s.len() as f64 - 1.0) * p).round() as usize;
        s[idx.min(s.len() - 1)]
    }
    fn mean(&self) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        self.samples.iter().sum::<Duration>() / self.samples.len() as u32
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `clients` loops of `op` for `duration`; returns operations per second.
async fn throughput<F, Fut>(clients: usize, duration: Duration, op: F) -> Res<f64>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Res<()>> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (op, done) = (op.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                op(c, i).await?;
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), BoxError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

struct Row {
    name: String,
    value: String,
    ratio: String,
    commits: String,
    verdict: String,
}

struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, name: &str, value: String, ratio: String, commits: String, verdict: String) {
        println!("  {name}: {value}  {ratio}  {commits}  {verdict}");
        self.rows.push(Row {
            name: name.into(),
            value,
            ratio,
            commits,
            verdict,
        });
    }

    fn print(&self) {
        println!();
        println!(
            "{:<46} {:>26} {:>24} {:>22}  target",
            "scenario", "figure", "vs ceiling", "commits/op"
        );
        for r in &self.rows {
            println!(
                "{:<46} {:>26} {:>24} {:>22}  {}",
                r.name, r.value, r.ratio, r.commits, r.verdict
            );
        }
    }
}

fn per_op(commits: i64, ops: u64) -> String {
    if ops == 0 {
        return "-".into();
    }
    format!("{:.2}", commits as f64 / ops as f64)
}

#[tokio::main]
async fn main() -> Res<()> {
    let args = parse_args()?;
    let target = prepare(&args).await?;
    let result = run(&args, &target).await;
    if let Err(e) = cleanup(&target, args.keep).await {
        eprintln!("cleanup failed: {e}");
    }
    result
}

async fn run(args: &Args, target: &Target) -> Res<()> {
    let secs = |full: u64, quick: u64| Duration::from_secs(if args.quick { quick } else { full });
    let mut report = Report { rows: Vec::new() };
    {
        let mut c = PgConnection::connect(&target.url).await?;
        let (version, sync): (String, String) = sqlx::query_as(
            "SELECT split_part(version(), ' on ', 1), current_setting('synchronous_commit')",
        )
        .fetch_one(&mut c)
        .await?;
        println!(
            "dbos-core bench: {version}, synchronous_commit={sync}, database {}, schema {}",
            target.scratch_db.as_deref().unwrap_or("(given)"),
            target.schema
        );
    }
    // Schema set-up (migrations) outside any measurement.
    open(target).await?.close().await;
    let scratch = format!("\"{}\".bench_scratch", target.schema);
    {
        let mut c = PgConnection::connect(&target.url).await?;
        sqlx::query(&format!(
            "CREATE TABLE {scratch} (id BIGSERIAL PRIMARY KEY, wf_id TEXT NOT NULL,
                step_id INT NOT NULL, output TEXT, created_at BIGINT NOT NULL)"
        ))
        .execute(&mut c)
        .await?;
    }
    let insert_sql = Arc::new(format!(
        "INSERT INTO {scratch} (wf_id, step_id, output, created_at) VALUES ($1, $2, $3, $4)"
    ));

    // ---- 1. ceiling ---------------------------------------------------------------------
    println!("\n[1] ceiling: bare single-row durable INSERT commit");
    let opts: PgConnectOptions = target
        .url
        .parse::<PgConnectOptions>()?
        .log_statements(tracing::log::LevelFilter::Off);
    let before = settle_on(target).await?;
    let pool: PgPool = PgPoolOptions::new()
        .max_connections(CLIENTS as u32 + 2)
        .test_before_acquire(false)
        .connect_with(opts.clone())
        .await?;
    let serial_pool = {
        let (pool, sql) = (pool.clone(), insert_sql.clone());
        throughput(1, secs(3, 1), move |c, i| {
            let (pool, sql) = (pool.clone(), sql.clone());
            async move {
                sqlx::query(&sql)
                    .bind(format!("wf-{c}"))
                    .bind(i as i32)
                    .bind("\"output\"")
                    .bind(dbos_core::now_ms())
                    .execute(&pool)
                    .await?;
                Ok(())
            }
        })
        .await?
    };
    let ceiling16 = {
        let (pool, sql) = (pool.clone(), insert_sql.clone());
        throughput(CLIENTS, secs(4, 2), move |c, i| {
            let (pool, sql) = (pool.clone(), sql.clone());
            async move {
                sqlx::query(&sql)
                    .bind(format!("wf-{c}"))
                    .bind(i as i32)
                    .bind("\"output\"")
                    .bind(dbos_core::now_ms())
                    .execute(&pool)
                    .await?;
                Ok(())
            }
        })
        .await?
    };
    pool.close().await;
    // The same serial insert on one dedicated connection (no pool, no release ping).
    let serial_raw = {
        let mut conn = opts.connect().await?;
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < secs(3, 1) {
            sqlx::query(&insert_sql)
                .bind("wf-raw")
                .bind(n as i32)
                .bind("\"output\"")
                .bind(dbos_core::now_ms())
                .execute(&mut conn)
                .await?;
            n += 1;
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        conn.close().await?;
        rate
    };
    let after = settle_on(target).await?;
    let ceiling_ops: u64 = {
        let mut c = PgConnection::connect(&target.url).await?;
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {scratch}"))
            .fetch_one(&mut c)
            .await?;
        n as u64
    };
    let ceiling_commits = per_op(after - before - 1, ceiling_ops);
    let bare_ms = 1000.0 / serial_pool;
    report.add(
        "ceiling serial (pool)",
        format!("{serial_pool:.0}/s ({bare_ms:.3} ms)"),
        "1.00x".into(),
        ceiling_commits.clone(),
        "reference".into(),
    );
    report.add(
        "ceiling serial (dedicated connection)",
        format!("{serial_raw:.0}/s ({:.3} ms)", 1000.0 / serial_raw),
        format!("{:.2}x pool", serial_pool / serial_raw),
        ceiling_commits.clone(),
        "reference".into(),
    );
    report.add(
        "ceiling 16 clients (pool)",
        format!("{ceiling16:.0}/s"),
        "1.00x".into(),
        ceiling_commits,
        "reference".into(),
    );

    // ---- 2. checkpoints -------------------------------------------------------------------
    println!("\n[2] checkpoint appends");
    let db = open(target).await?;
    for c in 0..CLIENTS {
        db.enqueue(EnqueueRequest::new(
            format!("cp-{c}"),
            "bench",
            "bench-cp",
            "null",
        ))
        .await?;
    }
    let before = settle_on(target).await?;
    let fid_base = Arc::new(AtomicU64::new(0));
    let appends_serial = {
        let db = db.clone();
        throughput(1, secs(3, 1), move |_, i| {
            let db = db.clone();
            async move {
                let cp = Checkpoint {
                    function_id: i as i32,
                    function_name: "step".into(),
                    output: Some("\"output\"".into()),
                    started_at_ms: Some(dbos_core::now_ms()),
                    completed_at_ms: Some(dbos_core::now_ms()),
                    ..Default::default()
                };
                db.append_checkpoint("cp-0", &cp).await?;
                Ok(())
            }
        })
        .await?
    };
    let serial_done = db.checkpoints("cp-0").await?.len() as u64;
    fid_base.store(serial_done + 1, Ordering::Relaxed);
    let appends16 = {
        let (db, base) = (db.clone(), fid_base.clone());
        throughput(CLIENTS, secs(4, 2), move |c, i| {
            let db = db.clone();
            let fid = base.load(Ordering::Relaxed) + i;
            async move {
                let cp = Checkpoint {
                    function_id: fid as i32,
                    function_name: "step".into(),
                    output: Some("\"output\"".into()),
                    started_at_ms: Some(dbos_core::now_ms()),
                    completed_at_ms: Some(dbos_core::now_ms()),
                    ..Default::default()
                };
                db.append_checkpoint(&format!("cp-{c}"), &cp).await?;
                Ok(())
            }
        })
        .await?
    };
    let mut total_cps = 0u64;
    for c in 0..CLIENTS {
        total_cps += db.checkpoints(&format!("cp-{c}")).await?.len() as u64;
    }
    let hints = db.notifier_stats().batches_sent;
    db.close().await;
    let after = settle_on(target).await?;
    // checkpoints() reads: CLIENTS + 1 read-only commits.
    let cp_commits = per_op(after - before - 1 - CLIENTS as i64 - 1, total_cps);
    let append_ms = 1000.0 / appends_serial;
    let ratio = append_ms / bare_ms;
    report.add(
        "checkpoint append serial",
        format!("{appends_serial:.0}/s ({append_ms:.3} ms)"),
        format!("{ratio:.2}x bare commit"),
        format!("{cp_commits} ({hints} hints)"),
        "-".into(),
    );
    // Paired: a bare insert and an append alternate on the same pool, so both see the same
    // disk and CPU conditions; the target is checked on the ratio of their medians.
    let (bare, append) = paired(target, &insert_sql, if args.quick { 300 } else { 1500 }).await?;
    let paired_ratio = ms(append.pct(0.5)) / ms(bare.pct(0.5));
    report.add(
        "checkpoint append vs bare insert, paired",
        format!(
            "p50 {:.3} vs {:.3} ms",
            ms(append.pct(0.5)),
            ms(bare.pct(0.5))
        ),
        format!("{paired_ratio:.2}x bare commit"),
        "1 vs 1".into(),
        verdict(paired_ratio <= 1.3, "<= 1.3x bare commit"),
    );
    report.add(
        "checkpoint append 16 clients",
        format!("{appends16:.0}/s"),
        format!("{:.2} of ceiling", appends16 / ceiling16),
        format!("{cp_commits} ({hints} hints)"),
        "-".into(),
    );

    // record_step: checkpoint + one consumed message + one event, serial.
    let db = open(target).await?;
    db.enqueue(EnqueueRequest::new("rs-0", "bench", "bench-cp", "null"))
        .await?;
    let n_steps: u64 = if args.quick { 300 } else { 1500 };
    let mut ids = Vec::with_capacity(n_steps as usize);
    for i in 0..n_steps {
        ids.push(db.send("rs-0", "t", &format!("\"m{i}\""), None).await?);
    }
    // A new handle for the measured part, so the sends' statistics are flushed before it.
    db.close().await;
    let before = settle_on(target).await?;
    let db = open(target).await?;
    let start = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        db.record_step(
            "rs-0",
            &StepWrite {
                checkpoint: Checkpoint {
                    function_id: i as i32,
                    function_name: "activation".into(),
                    output: Some("\"output\"".into()),
                    ..Default::default()
                },
                consume_messages: vec![id.clone()],
                set_events: vec![("progress".into(), i.to_string())],
            },
        )
        .await?;
    }
    let elapsed = start.elapsed();
    let hints = db.notifier_stats().batches_sent;
    db.close().await;
    let after = settle_on(target).await?;
    let step_ms = ms(elapsed) / n_steps as f64;
    report.add(
        "record_step (+1 message, +1 event) serial",
        format!("{:.0}/s ({step_ms:.3} ms)", 1000.0 / step_ms),
        format!("{:.2}x bare commit", step_ms / bare_ms),
        format!("{} ({hints} hints)", per_op(after - before - 1, n_steps)),
        "-".into(),
    );

    // ---- 3. enqueue -> claim -> complete ----------------------------------------------------
    println!("\n[3] enqueue -> claim -> complete, {CLIENTS} producers");
    let n_runs: u64 = if args.quick { 3_000 } else { 16_000 };
    let before = settle_on(target).await?;
    let db = open(target).await?;
    let queue_result = tokio::spawn(queue_scenario(db.clone(), n_runs)).await;
    let hints = db.notifier_stats().batches_sent;
    db.close().await;
    let after = settle_on(target).await?;
    match queue_result {
        Ok(Ok(rate)) => report.add(
            "enqueue->claim->complete (16 producers)",
            format!(
                "{rate:.0} runs/s ({:.1}/claim)",
                CLAIMED.load(Ordering::Relaxed) as f64
                    / CLAIM_CALLS.load(Ordering::Relaxed).max(1) as f64
            ),
            format!("{:.2} of ceiling", rate / ceiling16),
            format!("{} ({hints} hints)", per_op(after - before - 1, n_runs)),
            verdict(rate >= 3000.0, ">= 3,000 runs/s"),
        ),
        Ok(Err(e)) => report.add(
            "enqueue->claim->complete (16 producers)",
            format!("failed: {e}"),
            "-".into(),
            "-".into(),
            "FAIL".into(),
        ),
        Err(e) if e.is_panic() => report.add(
            "enqueue->claim->complete (16 producers)",
            "not available (claim/complete not implemented)".into(),
            "-".into(),
            "-".into(),
            "n/a".into(),
        ),
        Err(e) => return Err(e.into()),
    }

    // ---- 4. message latency --------------------------------------------------------------
    println!("\n[4] message send -> consume latency");
    let n_msgs: usize = if args.quick { 200 } else { 1000 };
    for cross in [true, false] {
        let sender = open(target).await?;
        let consumer = if cross {
            open(target).await?
        } else {
            sender.clone()
        };
        let inbox = if cross { "lat-x" } else { "lat-1" };
        sender
            .enqueue(EnqueueRequest::new(inbox, "bench", "bench-lat", "null"))
            .await?;
        let before = settle_on(target).await?;
        let (e2e, send_only) = latency_scenario(&sender, &consumer, inbox, n_msgs).await?;
        let hints = sender.notifier_stats().batches_sent + consumer.notifier_stats().batches_sent;
        sender.close().await;
        consumer.close().await;
        let after = settle_on(target).await?;
        let name = if cross {
            "send->consume, separate handles"
        } else {
            "send->consume, one handle"
        };
        let p50 = e2e.pct(0.5);
        report.add(
            name,
            format!("p50 {:.3} / p99 {:.3} ms", ms(p50), ms(e2e.pct(0.99))),
            format!("{:.2}x bare commit", ms(p50) / bare_ms),
            format!(
                "{} ({hints} hints)",
                per_op(after - before - 1, n_msgs as u64)
            ),
            if cross {
                verdict(p50 <= Duration::from_millis(1), "p50 <= 1 ms")
            } else {
                "-".into()
            },
        );
        report.add(
            &format!(
                "  of which send() ({})",
                if cross { "separate" } else { "one" }
            ),
            format!(
                "p50 {:.3} / p99 {:.3} ms",
                ms(send_only.pct(0.5)),
                ms(send_only.pct(0.99))
            ),
            format!("{:.2}x bare commit", ms(send_only.pct(0.5)) / bare_ms),
            "-".into(),
            format!("mean e2e {:.3} ms", ms(e2e.mean())),
        );
    }

    // The notifier alone: a hint published on one handle wakes a waiter of another handle
    // (no data written): the share of the message latency that is the hint's trip.
    let a = open(target).await?;
    let b = open(target).await?;
    let before = settle_on(target).await?;
    let hop = hint_hop(&a, &b, n_msgs).await?;
    let hints = a.notifier_stats().batches_sent;
    a.close().await;
    b.close().await;
    let after = settle_on(target).await?;
    report.add(
        "hint hop: notify -> other handle wakes",
        format!(
            "p50 {:.3} / p99 {:.3} ms",
            ms(hop.pct(0.5)),
            ms(hop.pct(0.99))
        ),
        format!("{:.2}x bare commit", ms(hop.pct(0.5)) / bare_ms),
        format!(
            "{} ({hints} hints)",
            per_op(after - before - 1, n_msgs as u64)
        ),
        "-".into(),
    );

    report.print();
    Ok(())
}

/// One handle publishes a hint, a waiter on another handle wakes: notify -> wake latency.
async fn hint_hop(a: &SystemDatabase, b: &SystemDatabase, n: usize) -> Res<Lat> {
    let key = dbos_core::WakeKey::Message("hint-hop".into());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (woke_tx, mut woke_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let waiter_task = {
        let (b, key) = (b.clone(), key.clone());
        tokio::spawn(async move {
            for _ in 0..n {
                let waiter = b.register_waiter(key.clone());
                let _ = ready_tx.send(());
                waiter
                    .wait(Some(tokio::time::Instant::now() + Duration::from_secs(10)))
                    .await;
                let _ = woke_tx.send(Instant::now());
            }
        })
    };
    let mut lat = Lat::default();
    for _ in 0..n {
        ready_rx.recv().await.ok_or("waiter stopped")?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let t0 = Instant::now();
        a.notify(key.clone());
        let at = woke_rx.recv().await.ok_or("waiter stopped")?;
        lat.samples.push(at.duration_since(t0));
    }
    waiter_task.await?;
    Ok(lat)
}

fn verdict(ok: bool, target: &str) -> String {
    format!("{} ({target})", if ok { "PASS" } else { "FAIL" })
}

/// Alternates a bare scratch-table insert and a checkpoint append, `n` of each, on one handle's
/// pool; returns their latencies.
async fn paired(target: &Target, insert_sql: &str, n: usize) -> Res<(Lat, Lat)> {
    let db = open(target).await?;
    db.enqueue(EnqueueRequest::new("paired", "bench", "bench-cp", "null"))
        .await?;
    let (mut bare, mut append) = (Lat::default(), Lat::default());
    for i in 0..n {
        let t = Instant::now();
        sqlx::query(insert_sql)
            .bind("paired")
            .bind(i as i32)
            .bind("\"output\"")
            .bind(dbos_core::now_ms())
            .execute(db.pool())
            .await?;
        bare.samples.push(t.elapsed());
        let cp = Checkpoint {
            function_id: i as i32,
            function_name: "step".into(),
            output: Some("\"output\"".into()),
            started_at_ms: Some(dbos_core::now_ms()),
            completed_at_ms: Some(dbos_core::now_ms()),
            ..Default::default()
        };
        let t = Instant::now();
        db.append_checkpoint("paired", &cp).await?;
        append.samples.push(t.elapsed());
    }
    db.close().await;
    Ok((bare, append))
}

static CLAIM_CALLS: AtomicU64 = AtomicU64::new(0);
static CLAIMED: AtomicU64 = AtomicU64::new(0);

/// 16 producers enqueue `n` runs between them while claimer tasks claim batches and completer
/// tasks complete each claimed run. Returns runs/s from the first enqueue to the last
/// completion.
async fn queue_scenario(db: SystemDatabase, n: u64) -> Res<f64> {
    let queue = "bench-q".to_string();
    let queues = vec![queue.clone()];
    let completed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut producers = Vec::new();
    for p in 0..CLIENTS as u64 {
        let (db, queue) = (db.clone(), queue.clone());
        producers.push(tokio::spawn(async move {
            let mut i = p;
            while i < n {
                db.enqueue(EnqueueRequest::new(
                    format!("run-{i}"),
                    "bench",
                    queue.clone(),
                    "null",
                ))
                .await?;
                i += CLIENTS as u64;
            }
            Ok::<(), BoxError>(())
        }));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<(String, String)>(4096);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    const CLAIMERS: usize = 2;
    const COMPLETERS: usize = 16;
    let mut claimers = Vec::new();
    for c in 0..CLAIMERS {
        let (db, queues, tx, completed) =
            (db.clone(), queues.clone(), tx.clone(), completed.clone());
        claimers.push(tokio::spawn(async move {
            let executor = format!("bench-exec-{c}");
            while completed.load(Ordering::Relaxed) < n {
                let waiter = db.register_work_waiter(&queues);
                let runs = db.claim(&executor, &queues, 64).await?;
                CLAIM_CALLS.fetch_add(1, Ordering::Relaxed);
                CLAIMED.fetch_add(runs.len() as u64, Ordering::Relaxed);
                if runs.is_empty() {
                    waiter.wait(Duration::from_millis(50)).await;
                    continue;
                }
                for r in runs {
                    if tx.send((r.workflow_id, executor.clone())).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Ok::<(), BoxError>(())
        }));
    }
    drop(tx);
    let mut completers = Vec::new();
    for _ in 0..COMPLETERS {
        let (db, rx, completed) = (db.clone(), rx.clone(), completed.clone());
        completers.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some((id, executor)) = next else {
                    return Ok::<(), BoxError>(());
                };
                match db
                    .complete(&id, Some(&executor), &Outcome::Success("\"done\"".into()))
                    .await?
                {
                    CompleteResult::Recorded => {}
                    CompleteResult::AlreadyDecided(s) => {
                        return Err(format!("run {id} decided elsewhere: {:?}", s.state).into());
                    }
                }
                if completed.fetch_add(1, Ordering::Relaxed) + 1 >= n {
                    return Ok(());
                }
            }
        }));
    }
    for p in producers {
        p.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while completed.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {n} runs completed in time",
                completed.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    for c in claimers {
        c.abort();
    }
    for c in completers {
        c.abort();
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// The sender sends one message at a time to a consumer blocked in `recv`, waiting for it to
/// arrive before the next. Returns (send start -> recv returned, duration of send()).
async fn latency_scenario(
    sender: &SystemDatabase,
    consumer: &SystemDatabase,
    inbox: &str,
    n: usize,
) -> Res<(Lat, Lat)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let consumer_task = {
        let (consumer, inbox) = (consumer.clone(), inbox.to_string());
        tokio::spawn(async move {
            for i in 0..n {
                let got = consumer
                    .recv(&inbox, i as i32, "lat", Duration::from_secs(30))
                    .await?;
                let at = Instant::now();
                if got.is_none() {
                    return Err::<(), BoxError>(format!("message {i} timed out").into());
                }
                let _ = tx.send((i, at));
            }
            Ok(())
        })
    };
    let mut e2e = Lat::default();
    let mut send_only = Lat::default();
    for i in 0..n {
        // Let the consumer park in its wait (so every sample measures a wake-up).
        tokio::time::sleep(Duration::from_millis(2)).await;
        let t0 = Instant::now();
        sender.send(inbox, "lat", &format!("{i}"), None).await?;
        send_only.samples.push(t0.elapsed());
        let (j, at) = rx.recv().await.ok_or("consumer stopped")?;
        if j != i {
            return Err(format!("out of order: sent {i}, got {j}").into());
        }
        e2e.samples.push(at.duration_since(t0));
    }
    consumer_task.await??;
    Ok((e2e, send_only))
}

//! DBOSify for Rust benchmark: Temporal-style workflows on Postgres, measured through the
//! upstream API only (`Worker`, `WorkerOptions`, `Client::start_workflow`, `get_result`,
//! `signal`, `execute_update`), exactly as a user program would call it.
//!
//! ```sh
//! scripts/pg.sh start                      # the private Postgres; prints DBOSIFY_TEST_DATABASE_URL
//! cargo run --release -p samples --bin bench -- [--url postgres://...] [--quick]
//!     [--scenarios seq,many,concurrent,commits,signal,update] [--no-python]
//!     [--keep-db] [--log-statements]
//! ```
//! * `--url` defaults to the environment variable `DBOSIFY_TEST_DATABASE_URL`. Never point it at
//!   a shared Postgres when the figures matter: other sessions skew latency and commit counts.
//! * `--quick`: small sizes, for a smoke run.
//! * `--scenarios`: a comma list (default: all). The Postgres ceiling is always measured.
//! * `--no-python`: skip the DBOSify-for-Python baseline (its published anchors are printed).
//! * `--keep-db`: keep the scratch databases (for inspection).
//! * `--log-statements`: set `log_min_duration_statement = 0` on the scratch databases, so the
//!   server log holds every statement with its duration (profiling: round trips per workflow).
//!
//! How a run works
//! ---------------
//! The orchestrator (this process) creates a scratch database `dbosify_bench_<time>_<pid>` on the
//! server of `--url` (falling back to the URL's own database if it may not create databases) and
//! measures the Postgres ceiling there: a bare single-row durable `INSERT`, one autocommit
//! transaction each, serially on one connection (and, for reference, from 16 connections at once).
//! Every scenario then runs in a fresh *driver* process (this program with `--driver`) on a fresh
//! namespace (= Postgres schema), so that no connection pool, cache or background task of one
//! scenario survives into the next. Topologies:
//! * `1proc`: the driver hosts the `Worker` and the `Client` (one process, one shared pool);
//! * `2proc`: the driver is only the client; the worker runs in a child process, this program
//!   re-executed as `bench --worker <namespace> <task-queue> --url <url>`. The child stops when
//!   its stdin closes (it then reports its peak RSS, `VmHWM` of `/proc/self/status`) and is
//!   killed if it does not exit in time.
//!
//! Scenarios (activities are no-ops echoing a 256-byte string, as in the Python script):
//! * `seq`: N sequential one-activity workflows, `start_workflow` + `get_result` one at a time:
//!   p50/p99 ms (1proc and 2proc);
//! * `many`: one workflow running N sequential activities: activities/s from start to result,
//!   and the in-workflow rate (first to last activity, wall clock read in the workflow);
//! * `concurrent`: start N one-activity workflows at once, then await all: workflows/s;
//! * `commits`: Δ `pg_stat_database.xact_commit` of a scratch database dedicated to this
//!   measurement over N sequential one-activity workflows, divided by N; reported raw and net of
//!   the idle commit rate of the same processes measured just before (every transaction counts,
//!   read-only ones included);
//! * `signal`: signal -> handler latency across processes: the signal carries the client's wall
//!   clock read just before `signal()`; the handler stores its own wall-clock reading in the
//!   workflow state; the pairs come back as the workflow's result (one host, one clock). Signals
//!   are 100 ms apart (env `BENCH_SIGNAL_GAP_MS` overrides), so each is measured unqueued;
//! * `update`: `execute_update` round trip across processes, split into the request leg (call ->
//!   handler ran, handler's clock) and the reply leg (handler -> call returned).
//!
//! Signal and update scenarios that fail are reported as "not available: <error>".
//!
//! Then, unless `--no-python`, it runs `python3 samples/bench/dbosify_py_bench.py --url <url>
//! [--quick]` (DBOSify for Python 0.4, worker and client in two processes) and prints our figures
//! against it. If python or dbosify is missing, the published anchors are printed instead.
//!
//! Targets: p50 <= 2 ms (one-activity workflow, one process); >= 2,500 activities/s in one
//! workflow; >= 1,500 workflows/s concurrent; <= 5 commits per one-activity workflow; signal p50
//! <= 2 ms; update p50 <= 3 ms.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::{Connection as _, PgConnection};
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, WorkflowExecuteUpdateOptions,
    WorkflowGetResultOptions, WorkflowSignalOptions, WorkflowStartOptions,
};
use temporalio_macros::{activities, workflow, workflow_methods};
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use temporalio_sdk::{
    ActivityOptions, Runtime, SyncWorkflowContext, Worker, WorkerOptions, WorkflowContext,
    WorkflowResult,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const TASK_QUEUE: &str = "bench";
const PAYLOAD_BYTES: usize = 256;
/// Pause between two measured signals (as in the Python script), so each is measured unqueued.
/// `BENCH_SIGNAL_GAP_MS` overrides it (to study how idle time before a signal changes latency).
fn signal_gap() -> Duration {
    let ms = std::env::var("BENCH_SIGNAL_GAP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    Duration::from_millis(ms)
}
const CEILING_CLIENTS: usize = 16;

// ---------------------------------------------------------------------------------------------
// Workflows and activities (ordinary Temporal code)
// ---------------------------------------------------------------------------------------------

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn activity_options() -> ActivityOptions {
    ActivityOptions::start_to_close_timeout(Duration::from_secs(60))
}

/// The benchmark's activities.
pub struct BenchActivities;

#[activities]
impl BenchActivities {
    /// Returns its input.
    #[activity]
    pub async fn echo(_ctx: ActivityContext, payload: String) -> Result<String, ActivityError> {
        Ok(payload)
    }
}

/// One activity, result returned.
#[workflow]
#[derive(Default)]
pub struct OneActivity;

#[workflow_methods]
impl OneActivity {
    /// Runs `echo` once.
    #[run]
    pub async fn run(ctx: &mut WorkflowContext<Self>, payload: String) -> WorkflowResult<String> {
        Ok(ctx
            .execute_activity(BenchActivities::echo, payload, activity_options())
            .await?)
    }
}

/// Input of [`ManyActivities`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManyInput {
    n: u32,
    payload: String,
}

/// Wall-clock readings taken inside [`ManyActivities`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManyTimes {
    first_us: u64,
    last_us: u64,
}

/// N sequential activities.
#[workflow]
#[derive(Default)]
pub struct ManyActivities;

#[workflow_methods]
impl ManyActivities {
    /// Runs `echo` N times, one after the other. The wall clock (not workflow time) is read on
    /// purpose, to report the in-workflow rate; nothing in this benchmark is replayed.
    #[run]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: ManyInput,
    ) -> WorkflowResult<ManyTimes> {
        let first_us = wall_us();
        for _ in 0..input.n {
            ctx.execute_activity(
                BenchActivities::echo,
                input.payload.clone(),
                activity_options(),
            )
            .await?;
        }
        Ok(ManyTimes {
            first_us,
            last_us: wall_us(),
        })
    }
}

/// A signal carrying the client's send time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ping {
    seq: i64,
    sent_us: u64,
}

/// What the signal handler saw: sequence number, client send time, handler time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Received {
    seq: i64,
    sent_us: u64,
    handled_us: u64,
}

/// Target of the signal and update measurements.
#[workflow]
#[derive(Default)]
pub struct Messages {
    received: Vec<Received>,
    counter: i64,
    done: bool,
}

#[workflow_methods]
impl Messages {
    /// Waits for `finish`; returns what the `ping` handler recorded.
    #[run]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<Vec<Received>> {
        ctx.wait_condition(|s| s.done).await?;
        Ok(ctx.state(|s| s.received.clone()))
    }

    /// Records when the handler ran, next to the client's send time.
    #[signal]
    pub fn ping(&mut self, _ctx: &mut SyncWorkflowContext<Self>, p: Ping) {
        self.received.push(Received {
            seq: p.seq,
            sent_us: p.sent_us,
            handled_us: wall_us(),
        });
    }

    /// Ends the workflow.
    #[signal]
    pub fn finish(&mut self, _ctx: &mut SyncWorkflowContext<Self>) {
        self.done = true;
    }

    /// Adds `x`; returns the new counter and the handler's wall-clock time (µs).
    #[update]
    pub fn bump(&mut self, _ctx: &mut SyncWorkflowContext<Self>, x: i64) -> (i64, u64) {
        self.counter += x;
        (self.counter, wall_us())
    }
}

fn worker_options() -> Res<WorkerOptions> {
    Ok(WorkerOptions::new(TASK_QUEUE)
        .register_workflow::<OneActivity>()?
        .register_workflow::<ManyActivities>()?
        .register_workflow::<Messages>()?
        .register_activities(BenchActivities)
        .build())
}

async fn connect_client(url: &str, namespace: &str) -> Res<Client> {
    let target = url::Url::from_str(url)?;
    let connection = Connection::connect(ConnectionOptions::new(target).build()).await?;
    Ok(Client::new(
        connection,
        ClientOptions::new(namespace.to_string()).build(),
    )?)
}

/// Peak resident set size of this process in kB (`VmHWM`).
fn vm_hwm_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// Percentile with linear interpolation (as numpy and the Python script compute it).
fn pct(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut s = values.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let k = (s.len() - 1) as f64 * p / 100.0;
    let lo = k.floor() as usize;
    let hi = (lo + 1).min(s.len() - 1);
    Some(s[lo] + (s[hi] - s[lo]) * (k - lo as f64))
}

/// Latency summary in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Lat {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
    min: f64,
    max: f64,
}

impl Lat {
    fn of(v: &[f64]) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        Some(Self {
            n: v.len(),
            p50: pct(v, 50.0)?,
            p90: pct(v, 90.0)?,
            p99: pct(v, 99.0)?,
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// One scenario's result, passed from a driver process to the orchestrator as JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Outcome {
    scenario: String,
    topology: String,
    n: usize,
    error: Option<String>,
    /// The scenario's primary latency figure.
    lat: Option<Lat>,
    /// The scenario's primary rate (per second).
    rate: Option<f64>,
    /// Secondary figures, named.
    extra: BTreeMap<String, f64>,
    /// Secondary latency summaries, named.
    extra_lat: BTreeMap<String, Lat>,
    /// Peak RSS (kB) of the process running the worker (the driver itself for 1proc).
    worker_vmhwm_kb: Option<u64>,
    wall_s: f64,
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

const ALL_SCENARIOS: [&str; 6] = ["seq", "many", "concurrent", "commits", "signal", "update"];

struct Args {
    url: Option<String>,
    quick: bool,
    scenarios: Vec<String>,
    no_python: bool,
    keep_db: bool,
    log_statements: bool,
    /// `--worker <namespace> <task-queue>`
    worker: Option<(String, String)>,
    /// `--driver <scenario> <topology> <n>`
    driver: Option<(String, String, usize)>,
    admin_url: Option<String>,
}

fn usage() -> String {
    format!(
        "usage: bench [--url URL] [--quick] [--scenarios {}] [--no-python] [--keep-db] \
         [--log-statements]\nURL defaults to $DBOSIFY_TEST_DATABASE_URL",
        ALL_SCENARIOS.join(",")
    )
}

fn parse_args() -> Res<Args> {
    let mut a = Args {
        url: std::env::var("DBOSIFY_TEST_DATABASE_URL").ok(),
        quick: false,
        scenarios: ALL_SCENARIOS.iter().map(|s| s.to_string()).collect(),
        no_python: false,
        keep_db: false,
        log_statements: false,
        worker: None,
        driver: None,
        admin_url: None,
    };
    let mut it = std::env::args().skip(1);
    let need = |v: Option<String>, what: &str| v.ok_or_else(|| format!("{what} needs a value"));
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--url" => a.url = Some(need(it.next(), "--url")?),
            "--quick" => a.quick = true,
            "--no-python" => a.no_python = true,
            "--keep-db" => a.keep_db = true,
            "--log-statements" => a.log_statements = true,
            "--scenarios" => {
                let list = need(it.next(), "--scenarios")?;
                let mut v = Vec::new();
                for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if !ALL_SCENARIOS.contains(&s) {
                        return Err(format!("unknown scenario `{s}`\n{}", usage()).into());
                    }
                    v.push(s.to_string());
                }
                a.scenarios = v;
            }
            "--worker" => {
                let ns = need(it.next(), "--worker")?;
                let tq = need(it.next(), "--worker")?;
                a.worker = Some((ns, tq));
            }
            "--driver" => {
                let s = need(it.next(), "--driver")?;
                let t = need(it.next(), "--driver")?;
                let n = need(it.next(), "--driver")?.parse()?;
                a.driver = Some((s, t, n));
            }
            "--admin-url" => a.admin_url = Some(need(it.next(), "--admin-url")?),
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{}", usage()).into()),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    let code = if let Some((ns, tq)) = args.worker.clone() {
        report(worker_main(&args, &ns, &tq).await)
    } else if let Some((s, t, n)) = args.driver.clone() {
        let out = driver_main(&args, &s, &t, n).await;
        match serde_json::to_string(&out) {
            Ok(j) => println!("RESULT {j}"),
            Err(e) => eprintln!("bench driver: cannot encode the result: {e}"),
        }
        let _ = std::io::stdout().flush();
        0
    } else {
        report(orchestrate(&args).await)
    };
    // Background tasks (pools, listeners) are not waited for.
    std::process::exit(code);
}

fn report(r: Res<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench: {e}");
            1
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Worker child: `--worker <namespace> <task-queue>`
// ---------------------------------------------------------------------------------------------

async fn worker_main(args: &Args, namespace: &str, task_queue: &str) -> Res<()> {
    let url = args.url.clone().ok_or("--worker needs --url")?;
    if task_queue != TASK_QUEUE {
        return Err(format!("this benchmark's workflows run on task queue `{TASK_QUEUE}`").into());
    }
    let runtime = Runtime::from_current_tokio(Default::default())?;
    let client = connect_client(&url, namespace).await?;
    let mut worker = Worker::new(&runtime, client, worker_options()?)?;
    let stop = worker.shutdown_handle();
    let task = tokio::spawn(async move { worker.run().await });
    println!("READY");
    std::io::stdout().flush()?;
    // Run until stdin closes (the driver ended or asked us to stop).
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {}
    stop();
    match tokio::time::timeout(Duration::from_secs(10), task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("bench worker: run ended with {e}"),
        Ok(Err(e)) => eprintln!("bench worker: run task failed: {e}"),
        Err(_) => eprintln!("bench worker: no graceful stop within 10 s"),
    }
    let mut out = tokio::io::stdout();
    out.write_all(format!("VMHWM {}\n", vm_hwm_kb().unwrap_or(0)).as_bytes())
        .await?;
    out.flush().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Driver: `--driver <scenario> <topology> <n>`
// ---------------------------------------------------------------------------------------------

/// The worker side of a scenario: in this process, or a child process.
enum WorkerSide {
    InProc {
        stop: Box<dyn Fn() + Send>,
        task: tokio::task::JoinHandle<Result<(), temporalio_sdk::WorkerRunError>>,
    },
    Child {
        child: Box<tokio::process::Child>,
        stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    },
}

impl WorkerSide {
    async fn start(topology: &str, url: &str, namespace: &str, client: &Client) -> Res<Self> {
        if topology == "1proc" {
            let runtime = Runtime::from_current_tokio(Default::default())?;
            let mut worker = Worker::new(&runtime, client.clone(), worker_options()?)?;
            let stop = worker.shutdown_handle();
            let task = tokio::spawn(async move { worker.run().await });
            return Ok(Self::InProc {
                stop: Box::new(stop),
                task,
            });
        }
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args(["--worker", namespace, TASK_QUEUE, "--url", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("worker child has no stdout")?;
        let mut stdout = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), stdout.next_line()).await;
        match ready {
            Ok(Ok(Some(l))) if l.trim() == "READY" => Ok(Self::Child {
                child: Box::new(child),
                stdout,
            }),
            other => {
                let _ = child.kill().await;
                Err(format!("worker child did not become ready: {other:?}").into())
            }
        }
    }

    /// Stops the worker; returns its peak RSS in kB.
    async fn stop(self) -> Option<u64> {
        match self {
            Self::InProc { stop, task } => {
                stop();
                let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
                vm_hwm_kb()
            }
            Self::Child {
                mut child,
                mut stdout,
            } => {
                drop(child.stdin.take()); // EOF: the child shuts its worker down
                let mut hwm = None;
                let read = async {
                    while let Ok(Some(l)) = stdout.next_line().await {
                        if let Some(v) = l.strip_prefix("VMHWM ") {
                            hwm = v.trim().parse().ok();
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(15), read).await;
                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
                hwm
            }
        }
    }
}

fn payload() -> String {
    "x".repeat(PAYLOAD_BYTES)
}

async fn driver_main(args: &Args, scenario: &str, topology: &str, n: usize) -> Outcome {
    let mut out = Outcome {
        scenario: scenario.to_string(),
        topology: topology.to_string(),
        n,
        ..Default::default()
    };
    let t0 = Instant::now();
    if let Err(e) = drive(args, scenario, topology, n, &mut out).await {
        out.error = Some(e.to_string());
    }
    out.wall_s = t0.elapsed().as_secs_f64();
    out
}

async fn drive(
    args: &Args,
    scenario: &str,
    topology: &str,
    n: usize,
    out: &mut Outcome,
) -> Res<()> {
    let url = args.url.clone().ok_or("--driver needs --url")?;
    let namespace = format!("bench_{}_{}_{}", scenario, topology, std::process::id());
    // The machine may be shared: measure the commit ceiling right next to the scenario too.
    match serial_commit_ms(&url, 300).await {
        Ok(l) => {
            out.extra.insert("adjacent_ceiling_p50_ms".into(), l.p50);
        }
        Err(e) => eprintln!("bench driver: adjacent ceiling failed: {e}"),
    }
    let client = connect_client(&url, &namespace).await?;
    let worker = WorkerSide::start(topology, &url, &namespace, &client).await?;
    let r = match scenario {
        "seq" => scen_seq(&client, n, out).await,
        "many" => scen_many(&client, n, out).await,
        "concurrent" => scen_concurrent(&client, n, out).await,
        "commits" => {
            let admin = args.admin_url.clone().ok_or("commits needs --admin-url")?;
            scen_commits(&client, &url, &admin, n, out).await
        }
        "signal" => scen_signal(&client, n, out).await,
        "update" => scen_update(&client, n, out).await,
        other => Err(format!("unknown scenario {other}").into()),
    };
    out.worker_vmhwm_kb = worker.stop().await;
    r
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn one_workflow(client: &Client, id: String) -> Res<()> {
    let p = payload();
    let h = client
        .start_workflow(
            OneActivity::run,
            p.clone(),
            WorkflowStartOptions::new(TASK_QUEUE, id).build(),
        )
        .await?;
    let r = h.get_result(WorkflowGetResultOptions::default()).await?;
    if r != p {
        return Err("unexpected workflow result".into());
    }
    Ok(())
}

async fn scen_seq(client: &Client, n: usize, out: &mut Outcome) -> Res<()> {
    let warmup = 5;
    let mut lat = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = Instant::now();
        one_workflow(client, format!("seq-{i}")).await?;
        if i >= warmup {
            lat.push(ms(t.elapsed()));
        }
    }
    out.lat = Lat::of(&lat);
    out.extra.insert("warmup".into(), warmup as f64);
    Ok(())
}

async fn scen_many(client: &Client, n: usize, out: &mut Outcome) -> Res<()> {
    one_workflow(client, "many-warm".into()).await?;
    let t0_us = wall_us();
    let t = Instant::now();
    let h = client
        .start_workflow(
            ManyActivities::run,
            ManyInput {
                n: u32::try_from(n)?,
                payload: payload(),
            },
            WorkflowStartOptions::new(TASK_QUEUE, "many").build(),
        )
        .await?;
    let times = h.get_result(WorkflowGetResultOptions::default()).await?;
    let wall = t.elapsed().as_secs_f64();
    let t1_us = wall_us();
    out.rate = Some(n as f64 / wall);
    let inwf = times.last_us.saturating_sub(times.first_us) as f64 / 1e6;
    if inwf > 0.0 {
        out.extra
            .insert("in_workflow_activities_per_s".into(), n as f64 / inwf);
        out.extra.insert(
            "ms_per_activity_in_workflow".into(),
            inwf * 1000.0 / n as f64,
        );
    }
    out.extra.insert(
        "start_to_first_activity_ms".into(),
        times.first_us.saturating_sub(t0_us) as f64 / 1000.0,
    );
    out.extra.insert(
        "last_activity_to_result_ms".into(),
        t1_us.saturating_sub(times.last_us) as f64 / 1000.0,
    );
    Ok(())
}

async fn scen_concurrent(client: &Client, n: usize, out: &mut Outcome) -> Res<()> {
    one_workflow(client, "conc-warm".into()).await?;
    let p = payload();
    let t0 = Instant::now();
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..n {
        let c = client.clone();
        let p = p.clone();
        starts.spawn(async move {
            c.start_workflow(
                OneActivity::run,
                p,
                WorkflowStartOptions::new(TASK_QUEUE, format!("conc-{i}")).build(),
            )
            .await
        });
    }
    let mut handles = Vec::with_capacity(n);
    while let Some(r) = starts.join_next().await {
        handles.push(r??);
    }
    let started = t0.elapsed();
    let mut results = tokio::task::JoinSet::new();
    for h in handles {
        results.spawn(async move { h.get_result(WorkflowGetResultOptions::default()).await });
    }
    let mut bad = 0;
    while let Some(r) = results.join_next().await {
        if r?? != p {
            bad += 1;
        }
    }
    let wall = t0.elapsed();
    if bad > 0 {
        return Err(format!("{bad} workflows returned unexpected results").into());
    }
    out.rate = Some(n as f64 / wall.as_secs_f64());
    out.extra.insert("start_phase_ms".into(), ms(started));
    out.extra
        .insert("starts_per_s".into(), n as f64 / started.as_secs_f64());
    Ok(())
}

/// `xact_commit` of the database named in `url`, read through `admin` (another database, so the
/// read itself is not counted).
async fn xact_commit(admin: &mut PgConnection, db: &str) -> Res<i64> {
    let v: Option<i64> =
        sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
            .bind(db)
            .fetch_optional(admin)
            .await?;
    v.ok_or_else(|| format!("database {db} not in pg_stat_database").into())
}

fn db_name(url: &str) -> Res<String> {
    let u = url::Url::from_str(url)?;
    let name = u.path().trim_start_matches('/');
    if name.is_empty() {
        return Err(format!("no database name in {url}").into());
    }
    Ok(name.to_string())
}

async fn scen_commits(
    client: &Client,
    url: &str,
    admin_url: &str,
    n: usize,
    out: &mut Outcome,
) -> Res<()> {
    let db = db_name(url)?;
    let mut admin = PgConnection::connect(admin_url).await?;
    for i in 0..3 {
        one_workflow(client, format!("commits-warm-{i}")).await?;
    }
    // A backend flushes its statistics when it goes idle, but at most once a second; one that
    // went idle within a second of its last flush waits up to PGSTAT_IDLE_INTERVAL (10 s). So
    // every reading comes after 11 s without work, and the idle rate of the same processes
    // (their background transactions) is measured over a window of its own.
    let settle = Duration::from_secs(11);
    tokio::time::sleep(settle).await;
    let c_idle0 = xact_commit(&mut admin, &db).await?;
    let t_idle = Instant::now();
    tokio::time::sleep(settle).await;
    let c0 = xact_commit(&mut admin, &db).await?;
    let idle_rate = (c0 - c_idle0) as f64 / t_idle.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        one_workflow(client, format!("commits-{i}")).await?;
    }
    let busy = t.elapsed();
    tokio::time::sleep(settle).await;
    let c1 = xact_commit(&mut admin, &db).await?;
    let window = t.elapsed().as_secs_f64();
    let raw = (c1 - c0) as f64;
    out.rate = Some(raw / n as f64);
    out.extra.insert("commits_total".into(), raw);
    out.extra.insert("idle_commits_per_s".into(), idle_rate);
    out.extra.insert(
        "commits_per_workflow_net_of_idle".into(),
        (raw - idle_rate * window) / n as f64,
    );
    out.extra.insert("busy_s".into(), busy.as_secs_f64());
    out.extra.insert("window_s".into(), window);
    Ok(())
}

/// Starts a [`Messages`] workflow and waits until it answers an update (proof that the run is
/// live and draining its inbox). A macro, so the handle's type need not be named.
macro_rules! start_messages {
    ($client:expr, $id:expr) => {{
        let h = $client
            .start_workflow(
                Messages::run,
                (),
                WorkflowStartOptions::new(TASK_QUEUE, $id).build(),
            )
            .await?;
        tokio::time::timeout(
            Duration::from_secs(60),
            h.execute_update(Messages::bump, 0, WorkflowExecuteUpdateOptions::default()),
        )
        .await
        .map_err(|_| "the first update was not answered within 60 s")??;
        h
    }};
}

async fn scen_signal(client: &Client, n: usize, out: &mut Outcome) -> Res<()> {
    let h = start_messages!(client, "sig");
    let warmup = 3i64;
    let mut call = Vec::new();
    for i in -warmup..n as i64 {
        let sent_us = wall_us();
        let t = Instant::now();
        h.signal(
            Messages::ping,
            Ping { seq: i, sent_us },
            WorkflowSignalOptions::default(),
        )
        .await?;
        if i >= 0 {
            call.push(ms(t.elapsed()));
        }
        tokio::time::sleep(signal_gap()).await;
    }
    h.signal(Messages::finish, (), WorkflowSignalOptions::default())
        .await?;
    let received = tokio::time::timeout(
        Duration::from_secs(60),
        h.get_result(WorkflowGetResultOptions::default()),
    )
    .await
    .map_err(|_| "the workflow did not finish within 60 s of `finish`")??;
    let lat: Vec<f64> = received
        .iter()
        .filter(|r| r.seq >= 0)
        .map(|r| (r.handled_us as f64 - r.sent_us as f64) / 1000.0)
        .collect();
    if lat.len() != n {
        return Err(format!("the handler saw {} of {n} signals", lat.len()).into());
    }
    out.lat = Lat::of(&lat);
    if let Some(l) = Lat::of(&call) {
        out.extra_lat.insert("signal_call_returned".into(), l);
    }
    Ok(())
}

async fn scen_update(client: &Client, n: usize, out: &mut Outcome) -> Res<()> {
    let h = start_messages!(client, "upd");
    let warmup = 3i64;
    let (mut rtt, mut req, mut reply) = (Vec::new(), Vec::new(), Vec::new());
    for i in -warmup..n as i64 {
        let t_call = wall_us();
        let t = Instant::now();
        let (_, handled_us) = tokio::time::timeout(
            Duration::from_secs(90),
            h.execute_update(Messages::bump, 1, WorkflowExecuteUpdateOptions::default()),
        )
        .await
        .map_err(|_| "an update was not answered within 90 s")??;
        let dt = ms(t.elapsed());
        let t_ret = wall_us();
        if i >= 0 {
            rtt.push(dt);
            req.push((handled_us as f64 - t_call as f64) / 1000.0);
            reply.push((t_ret as f64 - handled_us as f64) / 1000.0);
        }
    }
    h.signal(Messages::finish, (), WorkflowSignalOptions::default())
        .await?;
    tokio::time::timeout(
        Duration::from_secs(60),
        h.get_result(WorkflowGetResultOptions::default()),
    )
    .await
    .map_err(|_| "the workflow did not finish within 60 s of `finish`")??;
    out.lat = Lat::of(&rtt);
    if let Some(l) = Lat::of(&req) {
        out.extra_lat
            .insert("request_leg_call_to_handler".into(), l);
    }
    if let Some(l) = Lat::of(&reply) {
        out.extra_lat
            .insert("reply_leg_handler_to_return".into(), l);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Orchestrator
// ---------------------------------------------------------------------------------------------

fn with_db(url: &str, db: &str) -> Res<String> {
    let mut u = url::Url::from_str(url)?;
    u.set_path(&format!("/{db}"));
    Ok(u.to_string())
}

/// Scratch databases of this run.
struct Scratch {
    admin_url: String,
    created: Vec<String>,
    keep: bool,
    log_statements: bool,
}

impl Scratch {
    /// Creates database `name`; returns its URL, or `None` if databases cannot be created here.
    async fn create(&mut self, name: &str) -> Option<String> {
        let mut admin = PgConnection::connect(&self.admin_url).await.ok()?;
        if let Err(e) = sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
        {
            eprintln!("bench: cannot create database {name}: {e}");
            return None;
        }
        self.created.push(name.to_string());
        if self.log_statements {
            let sql = format!("ALTER DATABASE \"{name}\" SET log_min_duration_statement = 0");
            if let Err(e) = sqlx::query(&sql).execute(&mut admin).await {
                eprintln!("bench: cannot enable statement logging on {name}: {e}");
            }
        }
        with_db(&self.admin_url, name).ok()
    }

    async fn drop_all(&mut self) {
        if self.keep {
            for d in &self.created {
                eprintln!("bench: kept database {d}");
            }
            return;
        }
        let Ok(mut admin) = PgConnection::connect(&self.admin_url).await else {
            eprintln!("bench: cannot connect to drop {:?}", self.created);
            return;
        };
        for d in self.created.drain(..) {
            let sql = format!("DROP DATABASE IF EXISTS \"{d}\" WITH (FORCE)");
            if let Err(e) = sqlx::query(&sql).execute(&mut admin).await {
                eprintln!("bench: could not drop database {d}: {e}");
            }
        }
    }
}

/// Serial single-row durable INSERT commits on a table of its own: latency summary.
async fn serial_commit_ms(url: &str, n: usize) -> Res<Lat> {
    let mut c = PgConnection::connect(url).await?;
    let table = format!("bench_ceiling_{}", std::process::id());
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, v text)"
    ))
    .execute(&mut c)
    .await?;
    let insert = format!("INSERT INTO {table} (v) VALUES ($1)");
    let v = "x".repeat(64);
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        sqlx::query(&insert).bind(&v).execute(&mut c).await?;
        lat.push(ms(t.elapsed()));
    }
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&mut c)
        .await?;
    Lat::of(&lat).ok_or_else(|| "no samples".into())
}

/// The Postgres ceiling: bare single-row durable INSERT commits.
#[derive(Clone, Debug, Default)]
struct Ceiling {
    serial: Lat,
    serial_per_s: f64,
    concurrent_per_s: f64,
}

async fn measure_ceiling(url: &str, n: usize) -> Res<Ceiling> {
    let mut c = PgConnection::connect(url).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_ceiling (id bigserial PRIMARY KEY, v text)")
        .execute(&mut c)
        .await?;
    sqlx::query("SET synchronous_commit = on")
        .execute(&mut c)
        .await?;
    let v = "x".repeat(64);
    for _ in 0..50 {
        sqlx::query("INSERT INTO bench_ceiling (v) VALUES ($1)")
            .bind(&v)
            .execute(&mut c)
            .await?;
    }
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        sqlx::query("INSERT INTO bench_ceiling (v) VALUES ($1)")
            .bind(&v)
            .execute(&mut c)
            .await?;
        lat.push(ms(t.elapsed()));
    }
    let serial_per_s = n as f64 / t0.elapsed().as_secs_f64();
    let serial = Lat::of(&lat).ok_or("no ceiling samples")?;
    // Reference only: the same insert from 16 connections at once.
    let per = n / 2;
    let mut conns = Vec::new();
    for _ in 0..CEILING_CLIENTS {
        conns.push(PgConnection::connect(url).await?);
    }
    let go = Arc::new(tokio::sync::Barrier::new(CEILING_CLIENTS));
    let mut set = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for mut conn in conns {
        let go = go.clone();
        let v = v.clone();
        set.spawn(async move {
            go.wait().await;
            for _ in 0..per {
                sqlx::query("INSERT INTO bench_ceiling (v) VALUES ($1)")
                    .bind(&v)
                    .execute(&mut conn)
                    .await?;
            }
            Ok::<_, sqlx::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let concurrent_per_s = (per * CEILING_CLIENTS) as f64 / t0.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE bench_ceiling")
        .execute(&mut c)
        .await?;
    Ok(Ceiling {
        serial,
        serial_per_s,
        concurrent_per_s,
    })
}

fn size(scenario: &str, quick: bool) -> usize {
    match (scenario, quick) {
        ("seq", false) => 500,
        ("seq", true) => 50,
        ("many", false) => 1000,
        ("many", true) => 200,
        ("concurrent", false) => 1000,
        ("concurrent", true) => 200,
        ("commits", false) => 200,
        ("commits", true) => 50,
        ("signal", false) => 50,
        ("signal", true) => 15,
        ("update", false) => 50,
        (_, _) => 10,
    }
}

fn topologies(scenario: &str) -> &'static [&'static str] {
    match scenario {
        "signal" | "update" => &["2proc", "1proc"],
        _ => &["1proc", "2proc"],
    }
}

/// Runs one driver process; kills it after `timeout`.
fn run_driver(
    url: &str,
    admin_url: &str,
    scenario: &str,
    topology: &str,
    n: usize,
    timeout: Duration,
) -> Outcome {
    let fail = |e: String| Outcome {
        scenario: scenario.to_string(),
        topology: topology.to_string(),
        n,
        error: Some(e),
        ..Default::default()
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(format!("cannot find this program: {e}")),
    };
    let child = Command::new(exe)
        .args(["--driver", scenario, topology, &n.to_string()])
        .args(["--url", url, "--admin-url", admin_url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child: Child = match child {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start the driver: {e}")),
    };
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return fail("driver has no stdout".into());
    };
    let reader = std::thread::spawn(move || {
        let mut result = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(j) = line.strip_prefix("RESULT ") {
                result = Some(serde_json::from_str::<Outcome>(j));
            } else {
                eprintln!("[driver] {line}");
            }
        }
        result
    });
    let t0 = Instant::now();
    let mut timed_out = false;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if t0.elapsed() > timeout => {
                timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    let result = reader.join().unwrap_or(None);
    match result {
        Some(Ok(o)) => o,
        Some(Err(e)) => fail(format!("unreadable driver result: {e}")),
        None if timed_out => fail(format!("timed out after {:.0} s", timeout.as_secs_f64())),
        None => fail("the driver exited without a result".into()),
    }
}

fn timeout_for(scenario: &str, n: usize) -> Duration {
    let per_item = match scenario {
        "seq" => 2.0,
        "commits" => 3.0,
        "signal" => 1.0,
        "update" => 5.0,
        _ => 0.2,
    };
    Duration::from_secs_f64(180.0 + per_item * n as f64)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn orchestrate(args: &Args) -> Res<()> {
    let url = args
        .url
        .clone()
        .ok_or("set DBOSIFY_TEST_DATABASE_URL or pass --url")?;
    let t_run = Instant::now();
    let load0 = loadavg();
    let tag = format!(
        "{}_{}",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        std::process::id()
    );
    let mut scratch = Scratch {
        admin_url: url.clone(),
        created: Vec::new(),
        keep: args.keep_db,
        log_statements: args.log_statements,
    };
    let base = format!("dbosify_bench_{tag}");
    let (bench_url, isolation) = match scratch.create(&base).await {
        Some(u) => (u, format!("fresh database {base}")),
        None => (
            url.clone(),
            "the URL's own database (could not create one; commit counts are polluted by other \
             sessions)"
                .to_string(),
        ),
    };
    eprintln!("bench: running in {isolation}; load average {load0}");
    let r = run_all(args, &url, &bench_url, &base, &mut scratch).await;
    scratch.drop_all().await;
    let (ceiling, outcomes, python) = r?;
    print_report(
        args,
        &isolation,
        &ceiling,
        &outcomes,
        &python,
        &load0,
        t_run.elapsed(),
    );
    Ok(())
}

type RunAll = (Ceiling, Vec<Outcome>, Python);

async fn run_all(
    args: &Args,
    url: &str,
    bench_url: &str,
    base: &str,
    scratch: &mut Scratch,
) -> Res<RunAll> {
    eprintln!("bench: measuring the Postgres ceiling");
    let ceiling = measure_ceiling(bench_url, if args.quick { 1000 } else { 4000 }).await?;
    let mut outcomes = Vec::new();
    for s in ALL_SCENARIOS {
        if !args.scenarios.iter().any(|x| x == s) {
            continue;
        }
        let n = size(s, args.quick);
        for topo in topologies(s) {
            // Commit counting needs a database nobody else uses.
            let (target, dedicated) = if s == "commits" {
                let name = format!("{base}_c{}", &topo[..1]);
                match scratch.create(&name).await {
                    Some(u) => (u, true),
                    None => (bench_url.to_string(), false),
                }
            } else {
                (bench_url.to_string(), false)
            };
            eprintln!(
                "bench: scenario {s} ({topo}), n = {n}, load average {}",
                loadavg()
            );
            let url_c = target.clone();
            let admin = url.to_string();
            let (sc, tp) = (s.to_string(), topo.to_string());
            let timeout = timeout_for(s, n);
            let mut o = tokio::task::spawn_blocking(move || {
                run_driver(&url_c, &admin, &sc, &tp, n, timeout)
            })
            .await?;
            if s == "commits" && !dedicated {
                o.extra.insert("not_dedicated_database".into(), 1.0);
            }
            eprintln!(
                "bench: {s} ({topo}) done: {}",
                serde_json::to_string(&o).unwrap_or_default()
            );
            outcomes.push(o);
        }
    }
    let python = if args.no_python {
        Python::Skipped
    } else {
        run_python(url, args.quick)
    };
    Ok((ceiling, outcomes, python))
}

// ---------------------------------------------------------------------------------------------
// DBOSify for Python baseline
// ---------------------------------------------------------------------------------------------

enum Python {
    Skipped,
    Missing(String),
    Ran(serde_json::Value),
}

fn run_python(url: &str, quick: bool) -> Python {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/dbosify_py_bench.py");
    let log = std::env::temp_dir().join(format!("dbosify_py_bench_{}.log", std::process::id()));
    let Ok(log_file) = std::fs::File::create(&log) else {
        return Python::Missing(format!("cannot create {}", log.display()));
    };
    eprintln!(
        "bench: running the DBOSify-for-Python baseline ({script}); its log: {}",
        log.display()
    );
    let mut cmd = Command::new("python3");
    cmd.arg(script).args(["--url", url]);
    if quick {
        cmd.arg("--quick");
    }
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::from(log_file))
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) => return Python::Missing(format!("cannot run python3: {e}")),
    };
    let text = String::from_utf8_lossy(&output.stdout);
    match serde_json::from_str::<serde_json::Value>(text.trim()) {
        Ok(v) => match v.get("error").and_then(|e| e.as_str()) {
            Some(e) => Python::Missing(e.to_string()),
            None => Python::Ran(v),
        },
        Err(e) => Python::Missing(format!(
            "no JSON from the script (exit {:?}): {e}; see {}",
            output.status.code(),
            log.display()
        )),
    }
}

/// The Python figure for a scenario: (value, how it was obtained).
fn python_figure(py: &Python, scenario: &str, field: &str) -> Option<(f64, &'static str)> {
    match py {
        Python::Ran(v) => v
            .get("scenarios")?
            .get(scenario)?
            .get(field)?
            .as_f64()
            .map(|x| (x, "measured")),
        _ => {
            let anchor = match (scenario, field) {
                ("seq_one_activity", "p50_ms") => 1017.0,
                ("activities_in_one_workflow", "activities_per_sec") => 66.0,
                ("concurrent_workflows", "workflows_per_sec") => 33.0,
                _ => return None,
            };
            Some((anchor, "anchor"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn find<'a>(o: &'a [Outcome], s: &str, t: &str) -> Option<&'a Outcome> {
    o.iter().find(|x| x.scenario == s && x.topology == t)
}

struct Row {
    figure: String,
    value: String,
    target: String,
    vs_ceiling: String,
    vs_python: String,
    verdict: String,
}

#[allow(clippy::too_many_arguments)]
fn print_report(
    args: &Args,
    isolation: &str,
    ceiling: &Ceiling,
    outcomes: &[Outcome],
    py: &Python,
    load0: &str,
    elapsed: Duration,
) {
    let c_ms = ceiling.serial.p50;
    // Rates are compared with the commit rate a p50 commit allows (stalls on a shared machine
    // would otherwise flatter every ratio).
    let c_rate = 1000.0 / c_ms;
    let mut rows: Vec<Row> = Vec::new();
    let na = |o: Option<&Outcome>, fig: &str, target: &str, rows: &mut Vec<Row>| -> bool {
        match o {
            None => true,
            Some(o) if o.error.is_some() => {
                rows.push(Row {
                    figure: fig.to_string(),
                    value: format!("not available: {}", o.error.clone().unwrap_or_default()),
                    target: target.to_string(),
                    vs_ceiling: "-".into(),
                    vs_python: "-".into(),
                    verdict: "MISS".into(),
                });
                true
            }
            _ => false,
        }
    };
    rows.push(Row {
        figure: "Postgres ceiling: 1-row durable INSERT commit, serial".into(),
        value: format!(
            "p50 {:.3} ms, p99 {:.3} ms; {:.0}/s at p50, {:.0}/s measured",
            ceiling.serial.p50, ceiling.serial.p99, c_rate, ceiling.serial_per_s
        ),
        target: "-".into(),
        vs_ceiling: "1".into(),
        vs_python: "-".into(),
        verdict: "".into(),
    });
    rows.push(Row {
        figure: format!("Postgres ceiling: same, {CEILING_CLIENTS} connections (reference)"),
        value: format!("{:.0} commits/s", ceiling.concurrent_per_s),
        target: "-".into(),
        vs_ceiling: format!("{:.1}x serial", ceiling.concurrent_per_s / c_rate),
        vs_python: "-".into(),
        verdict: "".into(),
    });

    // Latency rows.
    let lat_rows: [(&str, &str, &str, Option<f64>, &str); 4] = [
        (
            "seq",
            "1proc",
            "one-activity workflow, 1 process",
            Some(2.0),
            "seq_one_activity",
        ),
        (
            "seq",
            "2proc",
            "one-activity workflow, 2 processes",
            None,
            "seq_one_activity",
        ),
        (
            "signal",
            "2proc",
            "signal -> handler, 2 processes",
            Some(2.0),
            "signal_latency",
        ),
        (
            "update",
            "2proc",
            "update round trip, 2 processes",
            Some(3.0),
            "update_round_trip",
        ),
    ];
    for (s, t, label, target, pykey) in lat_rows {
        let o = find(outcomes, s, t);
        let target_s = target.map_or("-".to_string(), |v| format!("p50 <= {v} ms"));
        if na(o, label, &target_s, &mut rows) {
            continue;
        }
        let Some(l) = o.and_then(|o| o.lat.clone()) else {
            continue;
        };
        let py50 = python_figure(py, pykey, "p50_ms");
        rows.push(Row {
            figure: format!("{label}: p50 / p99"),
            value: format!("{:.2} / {:.2} ms", l.p50, l.p99),
            target: target_s,
            vs_ceiling: ratio_lat(l.p50, c_ms, o),
            vs_python: py50.map_or("-".into(), |(p, how)| {
                format!("{:.0}x faster ({how} {p:.0} ms)", p / l.p50)
            }),
            verdict: target.map_or("".into(), |v| pass(l.p50 <= v)),
        });
    }
    // Extra latency rows: the other topology of signal/update.
    for (s, label) in [
        ("signal", "signal -> handler, 1 process"),
        ("update", "update round trip, 1 process"),
    ] {
        let o = find(outcomes, s, "1proc");
        if na(o, label, "-", &mut rows) {
            continue;
        }
        if let Some(l) = o.and_then(|o| o.lat.clone()) {
            rows.push(Row {
                figure: format!("{label}: p50 / p99"),
                value: format!("{:.2} / {:.2} ms", l.p50, l.p99),
                target: "-".into(),
                vs_ceiling: ratio_lat(l.p50, c_ms, o),
                vs_python: "-".into(),
                verdict: "".into(),
            });
        }
    }
    // Throughput rows.
    let rate_rows: [(&str, &str, &str, f64, &str, &str); 4] = [
        (
            "many",
            "1proc",
            "activities/s in one workflow, 1 process",
            2500.0,
            "activities_in_one_workflow",
            "activities_per_sec",
        ),
        (
            "many",
            "2proc",
            "activities/s in one workflow, 2 processes",
            2500.0,
            "activities_in_one_workflow",
            "activities_per_sec",
        ),
        (
            "concurrent",
            "1proc",
            "workflows/s, concurrent, 1 process",
            1500.0,
            "concurrent_workflows",
            "workflows_per_sec",
        ),
        (
            "concurrent",
            "2proc",
            "workflows/s, concurrent, 2 processes",
            1500.0,
            "concurrent_workflows",
            "workflows_per_sec",
        ),
    ];
    for (s, t, label, target, pykey, pyfield) in rate_rows {
        let o = find(outcomes, s, t);
        let target_s = format!(">= {target:.0}/s");
        if na(o, label, &target_s, &mut rows) {
            continue;
        }
        let Some(r) = o.and_then(|o| o.rate) else {
            continue;
        };
        let py = python_figure(py, pykey, pyfield);
        rows.push(Row {
            figure: format!("{label} (n = {})", o.map_or(0, |o| o.n)),
            value: format!("{r:.0}/s"),
            target: target_s,
            vs_ceiling: ratio_rate(r, c_rate, o),
            vs_python: py.map_or("-".into(), |(p, how)| {
                format!("{:.0}x ({how} {p:.0}/s)", r / p)
            }),
            verdict: pass(r >= target),
        });
    }
    // Commits.
    for t in ["2proc", "1proc"] {
        let label = format!("commits per one-activity workflow, {t}");
        let o = find(outcomes, "commits", t);
        if na(o, &label, "<= 5", &mut rows) {
            continue;
        }
        let Some(o) = o else { continue };
        let Some(raw) = o.rate else { continue };
        let net = o
            .extra
            .get("commits_per_workflow_net_of_idle")
            .copied()
            .unwrap_or(raw);
        rows.push(Row {
            figure: label,
            value: format!(
                "{raw:.2} raw, {net:.2} net of idle ({:.1} idle commits/s){}",
                o.extra.get("idle_commits_per_s").copied().unwrap_or(0.0),
                if o.extra.contains_key("not_dedicated_database") {
                    " [shared database!]"
                } else {
                    ""
                }
            ),
            target: "<= 5".into(),
            vs_ceiling: "-".into(),
            vs_python: "-".into(),
            verdict: pass(net <= 5.0),
        });
    }
    // Memory.
    let worker_peak = outcomes
        .iter()
        .filter(|o| o.topology == "2proc")
        .filter_map(|o| o.worker_vmhwm_kb.map(|k| (k, o.scenario.clone())))
        .max();
    let inproc_peak = outcomes
        .iter()
        .filter(|o| o.topology == "1proc")
        .filter_map(|o| o.worker_vmhwm_kb.map(|k| (k, o.scenario.clone())))
        .max();
    if let Some((k, s)) = worker_peak {
        rows.push(Row {
            figure: "peak RSS of the worker process (2proc, VmHWM)".into(),
            value: format!(
                "{:.1} MiB (max over scenarios; in `{s}`)",
                k as f64 / 1024.0
            ),
            target: "-".into(),
            vs_ceiling: "-".into(),
            vs_python: "-".into(),
            verdict: "".into(),
        });
    }
    if let Some((k, s)) = inproc_peak {
        rows.push(Row {
            figure: "peak RSS, worker + client in one process (VmHWM)".into(),
            value: format!(
                "{:.1} MiB (max over scenarios; in `{s}`)",
                k as f64 / 1024.0
            ),
            target: "-".into(),
            vs_ceiling: "-".into(),
            vs_python: "-".into(),
            verdict: "".into(),
        });
    }

    println!();
    println!(
        "DBOSify for Rust benchmark ({}), {}; load average at start {load0}, at end {}; {:.0} s",
        if args.quick { "quick" } else { "full" },
        isolation,
        loadavg(),
        elapsed.as_secs_f64()
    );
    let headers = ["figure", "value", "target", "vs ceiling", "vs Python", ""];
    let cols: Vec<[String; 6]> = rows
        .into_iter()
        .map(|r| {
            [
                r.figure,
                r.value,
                r.target,
                r.vs_ceiling,
                r.vs_python,
                r.verdict,
            ]
        })
        .collect();
    let mut w = headers.map(str::len);
    for c in &cols {
        for (i, v) in c.iter().enumerate() {
            w[i] = w[i].max(v.chars().count());
        }
    }
    let line = |c: [&str; 6]| {
        let mut s = String::new();
        for (i, v) in c.iter().enumerate() {
            s.push_str(&format!("{v:<width$}  ", width = w[i]));
        }
        println!("{}", s.trim_end());
    };
    line(headers);
    line(w.map(|n| "-".repeat(n)).each_ref().map(String::as_str));
    for c in &cols {
        line(c.each_ref().map(String::as_str));
    }
    println!();
    println!(
        "vs ceiling: latency / serial commit p50 (\"N commits\" of time), or rate / serial commits/s; \
         [adj.] = against a 300-commit ceiling measured right before the scenario."
    );
    println!(
        "vs Python: how many times better than DBOSify for Python 0.4 (worker and client in 2 processes)."
    );
    match py {
        Python::Ran(v) => println!(
            "Python: measured in this run (dbosify {}, dbos {}).",
            v.pointer("/versions/dbosify")
                .and_then(|x| x.as_str())
                .unwrap_or("?"),
            v.pointer("/versions/dbos")
                .and_then(|x| x.as_str())
                .unwrap_or("?")
        ),
        Python::Missing(e) => println!(
            "Python: NOT measured ({e}); published anchors used instead: 1017 ms p50, 66 activities/s, 33 workflows/s."
        ),
        Python::Skipped => println!(
            "Python: skipped (--no-python); published anchors used: 1017 ms p50, 66 activities/s, 33 workflows/s."
        ),
    }
    println!("Other anchors: Temporal Cloud signal p50 19 ms (API latency, not measured here).");
    if let Python::Ran(v) = py {
        for (k, f) in [
            ("signal_latency", "p50_ms"),
            ("update_round_trip", "p50_ms"),
            ("seq_one_activity", "p99_ms"),
        ] {
            if let Some(x) = v
                .pointer(&format!("/scenarios/{k}/{f}"))
                .and_then(|x| x.as_f64())
            {
                println!("Python {k} {f}: {x:.1}");
            }
            if let Some(e) = v
                .pointer(&format!("/scenarios/{k}/error"))
                .and_then(|x| x.as_str())
            {
                println!("Python {k}: error {e}");
            }
        }
    }
    println!();
    println!("Details per scenario:");
    for o in outcomes {
        let mut s = format!(
            "  {:<10} {:<5} n={:<5} {:>6.1} s",
            o.scenario, o.topology, o.n, o.wall_s
        );
        if let Some(e) = &o.error {
            s.push_str(&format!("  ERROR {e}"));
        }
        if let Some(l) = &o.lat {
            s.push_str(&format!(
                "  p50 {:.2} p90 {:.2} p99 {:.2} mean {:.2} min {:.2} max {:.2} ms",
                l.p50, l.p90, l.p99, l.mean, l.min, l.max
            ));
        }
        if let Some(r) = o.rate {
            s.push_str(&format!("  value {r:.2}"));
        }
        for (k, v) in &o.extra {
            s.push_str(&format!("  {k}={v:.2}"));
        }
        for (k, l) in &o.extra_lat {
            s.push_str(&format!("  {k}: p50 {:.2} p99 {:.2} ms", l.p50, l.p99));
        }
        if let Some(k) = o.worker_vmhwm_kb {
            s.push_str(&format!("  worker VmHWM {:.1} MiB", k as f64 / 1024.0));
        }
        println!("{s}");
    }
}

/// Latency in units of the serial commit p50: of the run's ceiling, and of the one measured
/// right before the scenario (in brackets) when the driver measured it.
fn ratio_lat(p50: f64, ceiling_ms: f64, o: Option<&Outcome>) -> String {
    let mut s = format!("{:.1} commits", p50 / ceiling_ms);
    if let Some(a) = o.and_then(|o| o.extra.get("adjacent_ceiling_p50_ms")) {
        s.push_str(&format!(" [{:.1} adj.]", p50 / a));
    }
    s
}

/// Rate as a fraction of the serial commit rate (run's ceiling; adjacent one in brackets).
fn ratio_rate(r: f64, ceiling_per_s: f64, o: Option<&Outcome>) -> String {
    let mut s = format!("{:.2} x commits/s", r / ceiling_per_s);
    if let Some(a) = o.and_then(|o| o.extra.get("adjacent_ceiling_p50_ms")) {
        s.push_str(&format!(" [{:.2} adj.]", r * a / 1000.0));
    }
    s
}

fn pass(ok: bool) -> String {
    if ok { "PASS" } else { "MISS" }.to_string()
}

//! What every kill-and-recover test file shares (`tests/recovery*.rs`): a [`Scenario`] (a fresh
//! database with the effects table, a log directory, a client in the test process, workers as
//! separate processes), reading the effects table and `workflow_status`, and event-driven waits
//! with an overall timeout.
//!
//! A test file adds its own helpers with further `impl Scenario` blocks.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use conformance_tests::paths::logs_dir;
use conformance_tests::recovery::CREATE_EFFECTS_TABLE;
use conformance_tests::{ManagedProcess, ProcessSpec, TestDatabase};
use serde::Deserialize;
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, WorkflowGetResultOptions, WorkflowHandle,
};
use temporalio_common::HasWorkflowDefinition;

/// The namespace's schema (namespace `default`).
pub const SCHEMA: &str = "dbosify_default";
/// How long a worker may take to start.
pub const WORKER_START: Duration = Duration::from_secs(30);
/// How long a marker line may take to appear once the run can reach it.
pub const MARKER: Duration = Duration::from_secs(30);
/// How long a run may take to finish after the last kill/restart (no lease to wait for).
pub const FINISH: Duration = Duration::from_secs(30);
/// How long a run may take to finish when it needs a dead worker's lease (10 s) to lapse.
pub const TAKEOVER: Duration = Duration::from_secs(45);
/// Polling interval of database probes (and of queries polled by a test).
pub const POLL: Duration = Duration::from_millis(50);

/// One activity execution, as recorded in the effects table.
#[derive(Debug, Clone, Deserialize)]
pub struct Effect {
    /// The workflow id (a standalone activity's activity id).
    pub workflow_id: String,
    /// The activity's name (its input's `name`, not its type).
    pub activity: String,
    /// The attempt number the activity saw.
    pub attempt: i32,
    /// The worker that ran it.
    pub worker: String,
    /// Heartbeat details the execution started from, if any.
    pub detail: Option<String>,
    /// `finished`, `failed`, or none when the execution never ended (killed).
    pub outcome: Option<String>,
    /// Epoch milliseconds (database clock).
    pub started_ms: f64,
    /// Epoch milliseconds (database clock), when it ended.
    pub finished_ms: Option<f64>,
}

/// One run of a workflow id, from `workflow_status`.
#[derive(Debug, Clone, Deserialize)]
pub struct RunRow {
    /// The run id (`workflow_uuid`).
    pub run_id: String,
    /// The DBOS status (`SUCCESS`, `PENDING`, ...).
    pub status: String,
}

/// A test's database, log directory, client and helpers.
pub struct Scenario {
    /// The test's own database (dropped with the scenario).
    pub db: TestDatabase,
    /// Where the processes' logs and the gate files are.
    pub dir: PathBuf,
    /// The runtime the client's calls run on.
    pub rt: tokio::runtime::Runtime,
    /// A client of the test's database (namespace `default`).
    pub client: Client,
}

/// SQL string literal (the ids are the test's own, but quote them properly anyway).
pub fn lit(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl Scenario {
    /// A fresh database named after `label` with the effects table, a log directory, a client.
    pub fn new(label: &str) -> Self {
        let db = TestDatabase::create(label).expect("test database");
        db.execute(CREATE_EFFECTS_TABLE)
            .expect("effects table created");
        let dir = logs_dir().join("recovery").join(db.name());
        std::fs::create_dir_all(&dir).expect("log directory");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let url = url::Url::parse(db.url()).expect("database URL");
        let client = rt
            .block_on(async {
                let connection = Connection::connect(ConnectionOptions::new(url).build()).await?;
                Ok::<_, Box<dyn std::error::Error>>(Client::new(
                    connection,
                    ClientOptions::new("default").build(),
                )?)
            })
            .expect("client connects");
        eprintln!("{label}: database {}, logs {}", db.name(), dir.display());
        Self {
            db,
            dir,
            rt,
            client,
        }
    }

    /// How to run `program` against the test's database (and nothing from the environment).
    pub fn spec(&self, program: &str, label: &str) -> ProcessSpec {
        ProcessSpec::new(program, &self.dir, label)
            .env("TEMPORAL_ADDRESS", self.db.url())
            .env_remove("DBOS_SYSTEM_DATABASE_URL")
            .env_remove("TEMPORAL_NAMESPACE")
            .env_remove("TEMPORAL_PROFILE")
            .env_remove("TEMPORAL_CONFIG_FILE")
    }

    /// Starts a worker (with a fixed identity, or Temporal's default `pid@host` when `None`)
    /// and waits until it is about to run.
    pub fn worker(&self, label: &str, identity: Option<&str>) -> ManagedProcess {
        let mut spec = self.spec(env!("CARGO_BIN_EXE_recovery_worker"), label);
        if let Some(identity) = identity {
            spec = spec.args(["--identity", identity]);
        }
        let mut worker = ManagedProcess::spawn(spec).expect("worker spawned");
        wait_ready(&mut worker);
        worker
    }

    /// Lets gated activities waiting for `gate` finish.
    pub fn open_gate(&self, gate: &str) {
        std::fs::write(self.dir.join(format!("gate-{gate}")), b"open").expect("gate file");
    }

    /// The run's result through `get_result` (following its later runs), within `timeout`.
    /// Panics with the runs, the effects and the workers' logs otherwise.
    pub fn result<W>(
        &self,
        handle: &WorkflowHandle<Client, W>,
        timeout: Duration,
        workers: &[&ManagedProcess],
    ) -> W::Output
    where
        W: HasWorkflowDefinition,
    {
        let outcome = self.rt.block_on(async {
            tokio::time::timeout(
                timeout,
                handle.get_result(WorkflowGetResultOptions::default()),
            )
            .await
        });
        let id = &handle.info().workflow_id;
        match outcome {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => panic!(
                "{id} did not succeed: {e}\nruns: {:?}\neffects: {:#?}\n{}",
                self.runs(id),
                self.effects(id),
                describe(workers)
            ),
            Err(_) => panic!(
                "{id} gave no result within {timeout:?}\nruns: {:?}\neffects: {:#?}\n{}",
                self.runs(id),
                self.effects(id),
                describe(workers)
            ),
        }
    }

    /// The value of a client call spawned on [`Scenario::rt`] (one that waits across a kill),
    /// within `timeout`. Panics with `workflow_id`'s effects and the workers' logs otherwise.
    pub fn await_call<T, E: std::fmt::Debug>(
        &self,
        what: &str,
        call: tokio::task::JoinHandle<Result<T, E>>,
        timeout: Duration,
        workflow_id: &str,
        workers: &[&ManagedProcess],
    ) -> T {
        match self
            .rt
            .block_on(async { tokio::time::timeout(timeout, call).await })
        {
            Ok(Ok(Ok(value))) => value,
            Ok(Ok(Err(e))) => panic!(
                "{what} failed: {e:?}\neffects: {:#?}\n{}",
                self.effects(workflow_id),
                describe(workers)
            ),
            Ok(Err(e)) => panic!("the task waiting on {what} failed: {e}"),
            Err(_) => panic!(
                "{what} gave no value within {timeout:?}\neffects: {:#?}\n{}",
                self.effects(workflow_id),
                describe(workers)
            ),
        }
    }

    /// Every recorded execution of `workflow_id`'s activities, in order.
    pub fn effects(&self, workflow_id: &str) -> Vec<Effect> {
        self.effects_where(&format!("workflow_id = {}", lit(workflow_id)))
    }

    /// Every recorded execution matching the SQL `condition`, in order.
    pub fn effects_where(&self, condition: &str) -> Vec<Effect> {
        let json = self
            .db
            .query_scalar(&format!(
                "SELECT coalesce(json_agg(row_to_json(e) ORDER BY e.id), '[]')::text FROM (
                   SELECT id, workflow_id, activity, attempt, worker, detail, outcome,
                          extract(epoch FROM started_at) * 1000 AS started_ms,
                          extract(epoch FROM finished_at) * 1000 AS finished_ms
                     FROM recovery_effects WHERE {condition}) e"
            ))
            .expect("effects query")
            .expect("json");
        serde_json::from_str(&json).expect("effects decode")
    }

    /// The runs of `workflow_id` (first run `id`, later runs `id--r<n>`).
    pub fn runs(&self, workflow_id: &str) -> Vec<RunRow> {
        self.runs_where(&format!(
            "workflow_uuid = {id} OR starts_with(workflow_uuid, {id} || '--r')",
            id = lit(workflow_id)
        ))
    }

    /// The rows of `workflow_status` matching the SQL `condition`, oldest first.
    pub fn runs_where(&self, condition: &str) -> Vec<RunRow> {
        let json = self
            .db
            .query_scalar(&format!(
                "SELECT coalesce(json_agg(json_build_object(
                            'run_id', workflow_uuid, 'status', status)
                          ORDER BY created_at, workflow_uuid), '[]')::text
                   FROM {SCHEMA}.workflow_status
                  WHERE {condition}"
            ))
            .expect("status query")
            .expect("json");
        serde_json::from_str(&json).expect("runs decode")
    }

    /// Asserts `workflow_id` has exactly one run and that it succeeded.
    pub fn assert_one_successful_run(&self, workflow_id: &str) {
        let runs = self.runs(workflow_id);
        assert_eq!(
            runs.len(),
            1,
            "{workflow_id}: expected exactly one run, found {runs:?}"
        );
        assert_eq!(
            runs[0].status, "SUCCESS",
            "{workflow_id}: the run did not end in SUCCESS: {runs:?}"
        );
        assert_eq!(runs[0].run_id, workflow_id);
    }

    /// Polls `probe` every [`POLL`] until it returns `Some`, or panics after `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        workers: &[&ManagedProcess],
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}\n{}",
                describe(workers)
            );
            std::thread::sleep(POLL);
        }
    }
}

/// Waits for the worker's `WORKER READY` line.
pub fn wait_ready(worker: &mut ManagedProcess) {
    worker
        .wait_for_line_containing("WORKER READY", WORKER_START)
        .expect("worker ready");
}

/// The workers' logs, for a failure message.
pub fn describe(workers: &[&ManagedProcess]) -> String {
    workers.iter().map(|w| w.describe()).collect()
}

/// Executions of `activity` among `effects`.
pub fn of<'a>(effects: &'a [Effect], activity: &str) -> Vec<&'a Effect> {
    effects.iter().filter(|e| e.activity == activity).collect()
}

/// Asserts `activity` ran exactly once, to completion.
pub fn assert_ran_once(effects: &[Effect], activity: &str) {
    let runs = of(effects, activity);
    assert_eq!(
        runs.len(),
        1,
        "{activity} must run exactly once; executions: {runs:#?}"
    );
    assert_eq!(
        runs[0].outcome.as_deref(),
        Some("finished"),
        "{activity} did not finish: {runs:#?}"
    );
}

/// Asserts `activity` — in flight when its worker was killed — ran exactly twice: the killed
/// execution (never finished) and one re-execution that finished, with a consistent attempt
/// number (not lower than the killed one's).
pub fn assert_in_flight_reran_once(effects: &[Effect], activity: &str) {
    let runs = of(effects, activity);
    assert_eq!(
        runs.len(),
        2,
        "{activity} was in flight at the kill: it must run exactly twice (killed + re-run); \
         executions: {runs:#?}"
    );
    assert_eq!(
        runs[0].outcome, None,
        "the killed execution cannot have ended: {runs:#?}"
    );
    assert_eq!(
        runs[1].outcome.as_deref(),
        Some("finished"),
        "the re-execution must finish: {runs:#?}"
    );
    assert!(
        runs[1].attempt >= runs[0].attempt,
        "attempt numbers went backwards: {runs:#?}"
    );
}

/// The scenarios of a test binary run one at a time: several measure elapsed time, and two
/// CPUs shared by parallel workers, Postgres and the compiler would blur the measurements.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the test binary's scenarios to one at a time (a panicked scenario does not block the
/// others).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

//! The workflow and activities of the kill-and-recover tests (`tests/recovery*.rs`, helpers in
//! `tests/common`), run by the `recovery_worker` binary and started by the `recovery_starter`
//! binary or the test itself (also as a standalone activity and from a schedule).
//!
//! They are ordinary Temporal Rust SDK code: this crate depends on `temporal-compat` and
//! `temporal-compat-client` under Temporal's names (`temporalio-sdk`, `temporalio-client`), the
//! two renames of `samples/Cargo.toml`.
//!
//! [`RecoveryWorkflow`] executes a [`Plan`]: a list of [`Step`]s (activities, durable timers,
//! a heartbeating activity) chosen by the test, and returns the steps' results joined by `,`.
//! [`MessageWorkflow`] (the message tests, `tests/recovery_messages.rs`) is a mailbox filled by
//! a signal and an update whose handler runs an activity, read by a query (and by a query that
//! holds the workflow thread until its gate opens).
//!
//! Every activity execution is recorded in the **effects table** ([`EFFECTS_TABLE`], created by
//! the test with [`CREATE_EFFECTS_TABLE`]) — one row per execution (attempt), inserted when the
//! execution starts and updated when it ends — and announced on the worker's stdout with marker
//! lines the test waits for before it SIGKILLs the worker (a standalone activity, started by
//! `Client::start_activity` without a workflow, is recorded under its activity id):
//!
//! ```text
//! EFFECT <workflow id> <activity name> attempt=<n> started [from=<heartbeat details>]
//! EFFECT <workflow id> <activity name> attempt=<n> failed
//! EFFECT <workflow id> <activity name> attempt=<n> finished
//! HEARTBEAT <workflow id> <activity name> attempt=<n> step=<k>
//! ```
//!
//! Activities that must be killed "while running" wait for a **gate**: a file named
//! `gate-<name>` in the worker's working directory (the test's log directory), created by the
//! test when the activity may proceed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

// The `#[workflow_methods]` and `#[activities]` macros generate public constants without
// documentation: the definitions live in a module where that lint is allowed.
#[allow(missing_docs)]
mod definitions;

pub use definitions::{MessageWorkflow, RecoveryActivities, RecoveryWorkflow};

/// The task queue the recovery worker serves.
pub const TASK_QUEUE: &str = "recovery";

/// The effects table: one row per activity execution.
pub const EFFECTS_TABLE: &str = "recovery_effects";

/// Creates [`EFFECTS_TABLE`] (run by the test in its fresh database before any worker starts).
pub const CREATE_EFFECTS_TABLE: &str = "CREATE TABLE recovery_effects (
    id           BIGSERIAL PRIMARY KEY,
    workflow_id  TEXT NOT NULL,
    activity     TEXT NOT NULL,
    attempt      INT4 NOT NULL,
    worker       TEXT NOT NULL,
    detail       TEXT,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    finished_at  TIMESTAMPTZ,
    outcome      TEXT
)";

/// Environment variable naming the worker in the effects table (`worker` column). The worker
/// binary sets it from its `--identity` argument, else `pid<pid>`.
pub const WORKER_NAME_ENV: &str = "RECOVERY_WORKER_NAME";

/// How often a gated activity looks for its gate file.
pub(crate) const GATE_POLL: Duration = Duration::from_millis(20);

/// What a [`RecoveryWorkflow`] run does, step by step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The steps, executed in order.
    pub steps: Vec<Step>,
}

/// One step of a [`Plan`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Execute [`RecoveryActivities::work`]; its result (`<name>#<attempt>`) joins the output.
    Work(Work),
    /// A durable timer of this many milliseconds; `timer<ms>` joins the output.
    Timer(u64),
    /// Execute [`RecoveryActivities::heartbeat_work`]; its result (`<name>#from=<k>`) joins the
    /// output.
    Heartbeat(Heartbeat),
    /// Like [`Step::Heartbeat`], with a durable timer of this many milliseconds running
    /// alongside (the run records the timer's firing while the activity is still running).
    HeartbeatAlongsideTimer(Heartbeat, u64),
}

/// Input of [`RecoveryActivities::work`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Work {
    /// The activity's name in the effects table and marker lines.
    pub name: String,
    /// Wait for the file `gate-<gate>` in the working directory before finishing.
    pub gate: Option<String>,
    /// Attempts up to this number fail with a retryable error.
    pub fail_attempts: u32,
    /// Initial retry interval in milliseconds (backoff coefficient 1: every retry waits this
    /// long); Temporal's default (1 s, coefficient 2) when `None`.
    pub retry_interval_ms: Option<u64>,
}

impl Work {
    /// A work step that finishes at once.
    pub fn quick(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// A work step that waits for the gate file `gate-<gate>`.
    pub fn gated(name: &str, gate: &str) -> Self {
        Self {
            name: name.to_owned(),
            gate: Some(gate.to_owned()),
            ..Self::default()
        }
    }
}

/// Input of [`RecoveryActivities::heartbeat_work`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The activity's name in the effects table and marker lines.
    pub name: String,
    /// Heartbeat progress `from + 1 ..= steps` (the details are the step number), then wait.
    pub steps: u32,
    /// After the last step, keep heartbeating until the file `gate-<gate>` exists.
    pub gate: String,
    /// The activity's heartbeat timeout in milliseconds.
    pub heartbeat_timeout_ms: u64,
}

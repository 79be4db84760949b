//! The history engine: what Temporal's server and sdk-core do between a workflow's commands and
//! its next activation, on Postgres.
//!
//! - [`run`]: one task per held run, on a workflow thread: replay, then the live loop (record
//!   the next activation with what it consumes in one commit, deliver it, start the effects of
//!   its commands);
//! - [`activity`]: activity execution with Temporal's retry, timeout, heartbeat and cancellation
//!   semantics, on the main runtime;
//! - [`standalone`]: standalone activities (a claimed activity row runs through [`activity`]);
//! - [`queries`]: queries on closed runs of the task queue (rebuilt by replay, answered,
//!   discarded);
//! - [`threads`]: the workflow threads (each a current-thread runtime with a `LocalSet`, since
//!   workflow instances are `!Send`).
//!
//! All database I/O is spawned onto the main runtime so the pool's connections stay on the
//! runtime that made them.

pub(crate) mod activity;
pub(crate) mod cache;
pub(crate) mod children;
pub(crate) mod queries;
pub(crate) mod run;
pub(crate) mod standalone;
pub(crate) mod threads;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dbos_core::SystemDatabase;
use temporalio_common_wasm::data_converters::DataConverter;
use temporalio_workflow::workflow_interceptors::WorkflowInterceptorConstructor;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::activities::ActivityDefinitions;
use crate::interceptors::ActivityInboundInterceptor;
use crate::registry::WorkflowDefinitions;

/// Why a database call made from a workflow thread failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The database refused or failed.
    #[error(transparent)]
    Db(#[from] dbos_core::Error),
    /// The main runtime dropped the call (shutting down).
    #[error("the worker's runtime is shutting down")]
    Gone,
}

/// Settings of the engine derived from the worker options.
#[derive(Debug, Clone)]
pub(crate) struct EngineSettings {
    /// Flag non-SDK wakes as nondeterminism.
    pub detect_nondeterminism: bool,
    /// Nondeterminism fails the execution of every workflow type.
    pub nondeterminism_fails_all: bool,
    /// Workflow types whose nondeterminism fails the execution.
    pub nondeterminism_fails_types: std::collections::HashSet<String>,
    /// Heartbeat throttle without a heartbeat timeout.
    pub default_heartbeat_throttle: Duration,
    /// Longest heartbeat throttle.
    pub max_heartbeat_throttle: Duration,
    /// Instances kept in memory per workflow thread.
    pub cache_per_thread: usize,
}

/// Everything the runs of one worker share.
pub(crate) struct Engine {
    /// The namespace's system database.
    pub db: SystemDatabase,
    /// The main runtime (database I/O, activities).
    pub main: tokio::runtime::Handle,
    /// This worker's executor id (its identity).
    pub executor_id: String,
    /// The namespace.
    pub namespace: String,
    /// The task queue.
    pub task_queue: String,
    /// The data converter.
    pub data_converter: DataConverter,
    /// The client the worker was created from (for `ActivityContext::client`).
    pub client: Option<temporal_compat_client::Client>,
    /// Registered workflows.
    pub workflows: WorkflowDefinitions,
    /// Registered activities.
    pub activities: ActivityDefinitions,
    /// Activity interceptors.
    pub activity_interceptors: Arc<[Arc<dyn ActivityInboundInterceptor>]>,
    /// Workflow interceptor constructors.
    pub workflow_interceptors: Vec<WorkflowInterceptorConstructor>,
    /// Settings.
    pub settings: EngineSettings,
    /// Limits concurrently executing activities.
    pub activity_slots: Arc<Semaphore>,
    /// Stop starting new activations (graceful shutdown).
    pub stopping: CancellationToken,
    /// Stop everything now.
    pub halt: CancellationToken,
    /// Runs currently held by this worker.
    pub held: AtomicUsize,
    /// Activities currently executing.
    pub running_activities: AtomicUsize,
    /// Woken when a held run ends or an activity finishes.
    pub changed: Notify,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("executor_id", &self.executor_id)
            .field("task_queue", &self.task_queue)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Runs a database operation on the main runtime and waits for it from any thread.
    pub(crate) async fn call<T, F, Fut>(&self, op: F) -> Result<T, CallError>
    where
        F: FnOnce(SystemDatabase) -> Fut,
        Fut: Future<Output = Result<T, dbos_core::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let fut = op(self.db.clone());
        match self.main.spawn(fut).await {
            Ok(r) => r.map_err(CallError::Db),
            Err(_) => Err(CallError::Gone),
        }
    }

    pub(crate) fn run_started(&self) {
        self.held.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn run_ended(&self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    pub(crate) fn held_runs(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// How often a waiting task (an idle run reading its inbox and status, a standalone activity
/// watching its row, an async activity awaiting its outcome) re-reads without a notification.
/// Every write that concerns it publishes one (and a lost LISTEN connection wakes every waiter
/// when it is back), so this is a rare safety net: a short interval would cost every waiting
/// task its reads once per interval.
pub(crate) const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// Milliseconds of a proto duration (negative or absent: `None`).
pub(crate) fn duration_of(d: &Option<prost_wkt_types::Duration>) -> Option<Duration> {
    let d = d.as_ref()?;
    if d.seconds < 0 || d.nanos < 0 {
        return None;
    }
    let out = Duration::from_secs(d.seconds as u64) + Duration::from_nanos(d.nanos as u64);
    (!out.is_zero()).then_some(out)
}

/// A proto duration.
pub(crate) fn proto_duration(d: Duration) -> prost_wkt_types::Duration {
    prost_wkt_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// A proto timestamp of epoch milliseconds.
pub(crate) fn timestamp_ms(ms: i64) -> prost_wkt_types::Timestamp {
    prost_wkt_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Epoch milliseconds of a proto timestamp.
pub(crate) fn ms_of(ts: &Option<prost_wkt_types::Timestamp>) -> Option<i64> {
    ts.as_ref()
        .map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos) / 1_000_000)
}

/// A `SystemTime` of epoch milliseconds.
pub(crate) fn system_time_ms(ms: i64) -> std::time::SystemTime {
    if ms >= 0 {
        std::time::UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        std::time::UNIX_EPOCH
    }
}

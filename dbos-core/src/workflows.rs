//! Run lifecycle: enqueue (idempotent by id), status, completion (only while PENDING), and
//! awaiting a run's outcome from any process.

use std::time::Duration;

use crate::SystemDatabase;
use crate::error::Result;

/// The status column of `workflow_status`, with DBOS's spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Waiting in its queue for a worker.
    Enqueued,
    /// Waiting for its start delay to pass.
    Delayed,
    /// Claimed by an executor and running.
    Pending,
    /// Finished with an output.
    Success,
    /// Finished with an error.
    Error,
    /// Cancelled.
    Cancelled,
    /// Recovered too many times.
    MaxRecoveryAttemptsExceeded,
}

impl RunState {
    /// DBOS's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Enqueued => "ENQUEUED",
            RunState::Delayed => "DELAYED",
            RunState::Pending => "PENDING",
            RunState::Success => "SUCCESS",
            RunState::Error => "ERROR",
            RunState::Cancelled => "CANCELLED",
            RunState::MaxRecoveryAttemptsExceeded => "MAX_RECOVERY_ATTEMPTS_EXCEEDED",
        }
    }

    /// Parses DBOS's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ENQUEUED" => RunState::Enqueued,
            "DELAYED" => RunState::Delayed,
            "PENDING" => RunState::Pending,
            "SUCCESS" => RunState::Success,
            "ERROR" => RunState::Error,
            "CANCELLED" => RunState::Cancelled,
            "MAX_RECOVERY_ATTEMPTS_EXCEEDED" => RunState::MaxRecoveryAttemptsExceeded,
            _ => return None,
        })
    }

    /// Whether the run has finished (no further transitions except resume/fork).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Success
                | RunState::Error
                | RunState::Cancelled
                | RunState::MaxRecoveryAttemptsExceeded
        )
    }
}

/// A request to enqueue a run.
#[derive(Debug, Clone)]
pub struct EnqueueRequest {
    /// The run id; also the idempotency key: enqueuing an existing id returns that run.
    pub workflow_id: String,
    /// The registered workflow name.
    pub name: String,
    /// The queue it waits in.
    pub queue_name: String,
    /// Serialized input.
    pub inputs: String,
    /// The serialization format label of `inputs` (and of the eventual output/error).
    pub serialization: Option<String>,
    /// Do not start before this long after enqueue (status DELAYED until then).
    pub delay: Option<Duration>,
    /// Lower runs first; default 0.
    pub priority: i32,
    /// At most one ENQUEUED/PENDING run of the queue may hold this id.
    pub deduplication_id: Option<String>,
    /// Run timeout, counted from the claim.
    pub timeout: Option<Duration>,
    /// Searchable attributes (JSON object).
    pub attributes: Option<serde_json::Value>,
    /// The run that started this one, if any.
    pub parent_workflow_id: Option<String>,
    /// The application version it must run on, if any.
    pub application_version: Option<String>,
}

impl EnqueueRequest {
    /// A request with defaults for everything optional.
    pub fn new(
        workflow_id: impl Into<String>,
        name: impl Into<String>,
        queue_name: impl Into<String>,
        inputs: impl Into<String>,
    ) -> Self {
        Self {
            workflow_id: workflow_id.into(),
            name: name.into(),
            queue_name: queue_name.into(),
            inputs: inputs.into(),
            serialization: None,
            delay: None,
            priority: 0,
            deduplication_id: None,
            timeout: None,
            attributes: None,
            parent_workflow_id: None,
            application_version: None,
        }
    }
}

/// What enqueue did.
#[derive(Debug, Clone)]
pub enum Enqueued {
    /// A new run was created.
    Created(WorkflowStatus),
    /// The id already existed; nothing was changed.
    Existing(WorkflowStatus),
}

impl Enqueued {
    /// The run, new or existing.
    pub fn status(&self) -> &WorkflowStatus {
        match self {
            Enqueued::Created(s) | Enqueued::Existing(s) => s,
        }
    }
}

/// One row of `workflow_status`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowStatus {
    /// Run id.
    pub workflow_id: String,
    /// Current state.
    pub state: RunState,
    /// Workflow name.
    pub name: String,
    /// Queue.
    pub queue_name: Option<String>,
    /// Executor holding (or last holding) it.
    pub executor_id: Option<String>,
    /// Serialized input.
    pub inputs: Option<String>,
    /// Serialized output, when SUCCESS.
    pub output: Option<String>,
    /// Serialized error (or cancellation reason), when ERROR or CANCELLED.
    pub error: Option<String>,
    /// Serialization label.
    pub serialization: Option<String>,
    /// Creation time, epoch ms.
    pub created_at_ms: i64,
    /// Last update time, epoch ms.
    pub updated_at_ms: i64,
    /// Claim time, epoch ms.
    pub started_at_ms: Option<i64>,
    /// Completion time, epoch ms.
    pub completed_at_ms: Option<i64>,
    /// Number of times it was claimed after the first.
    pub recovery_attempts: i64,
    /// Priority.
    pub priority: i32,
    /// Deduplication id.
    pub deduplication_id: Option<String>,
    /// Timeout in ms.
    pub timeout_ms: Option<i64>,
    /// Absolute deadline, epoch ms (set at claim from the timeout).
    pub deadline_epoch_ms: Option<i64>,
    /// Parent run.
    pub parent_workflow_id: Option<String>,
    /// Searchable attributes.
    pub attributes: Option<serde_json::Value>,
    /// Application version.
    pub application_version: Option<String>,
    /// The run this one was forked from.
    pub forked_from: Option<String>,
    /// Earliest start, epoch ms, when DELAYED.
    pub delay_until_epoch_ms: Option<i64>,
}

/// A terminal outcome to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Status SUCCESS with this serialized output.
    Success(String),
    /// Status ERROR with this serialized error.
    Error(String),
    /// Status CANCELLED, with an optional serialized reason in `error`.
    Cancelled(Option<String>),
}

/// What completion did.
#[derive(Debug, Clone)]
pub enum CompleteResult {
    /// This call recorded the outcome (or a retry of this same call had).
    Recorded,
    /// Someone else decided the run first (cancel, terminate, another executor); the local result
    /// is to be dropped. Holds the run as it is.
    AlreadyDecided(WorkflowStatus),
}

impl SystemDatabase {
    /// Enqueues a run. Idempotent by id: an existing id returns [`Enqueued::Existing`] and the run
    /// is never created or run twice. Wakes workers listening on the queue.
    pub async fn enqueue(&self, request: EnqueueRequest) -> Result<Enqueued> {
        let _ = request;
        todo!("enqueue")
    }

    /// The run's row, or `None`.
    pub async fn status(&self, workflow_id: &str) -> Result<Option<WorkflowStatus>> {
        let _ = workflow_id;
        todo!("status")
    }

    /// Records a terminal outcome, only while the run is PENDING and (when `executor_id` is given)
    /// held by that executor. Wakes everyone awaiting the run.
    pub async fn complete(
        &self,
        workflow_id: &str,
        executor_id: Option<&str>,
        outcome: &Outcome,
    ) -> Result<CompleteResult> {
        let _ = (workflow_id, executor_id, outcome);
        todo!("complete")
    }

    /// Waits until the run is terminal and returns it; `Ok(None)` on timeout.
    pub async fn await_outcome(
        &self,
        workflow_id: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<WorkflowStatus>> {
        let _ = (workflow_id, timeout);
        todo!("await_outcome")
    }

    /// Merges keys into the run's attributes (JSON object merge).
    pub async fn merge_attributes(&self, workflow_id: &str, attributes: &serde_json::Value) -> Result<()> {
        let _ = (workflow_id, attributes);
        todo!("merge_attributes")
    }
}

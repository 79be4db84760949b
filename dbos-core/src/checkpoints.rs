//! Checkpoints: the ordered, append-only record of a run's steps (`operation_outputs`).

use crate::SystemDatabase;
use crate::error::Result;

/// One checkpointed step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Position within the run (0, 1, 2, ...).
    pub function_id: i32,
    /// Step name.
    pub function_name: String,
    /// Serialized output.
    pub output: Option<String>,
    /// Serialized error.
    pub error: Option<String>,
    /// A child run started by this step.
    pub child_workflow_id: Option<String>,
    /// When the step started, epoch ms.
    pub started_at_ms: Option<i64>,
    /// When the step completed, epoch ms.
    pub completed_at_ms: Option<i64>,
}

/// A checkpoint plus what commits atomically with it.
#[derive(Debug, Clone, Default)]
pub struct StepWrite {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// Messages (by id) this step consumed: marked consumed in the same transaction; fails with
    /// [`crate::Error::AlreadyConsumed`] if any was consumed already by someone else.
    pub consume_messages: Vec<String>,
    /// Events (key, value) the step publishes in the same transaction.
    pub set_events: Vec<(String, String)>,
}

impl SystemDatabase {
    /// Appends a checkpoint. A retry of the same write (same position, same content) succeeds;
    /// a different value at the same position is [`crate::Error::CheckpointConflict`].
    pub async fn append_checkpoint(
        &self,
        workflow_id: &str,
        checkpoint: &Checkpoint,
    ) -> Result<()> {
        let _ = (workflow_id, checkpoint);
        todo!("append_checkpoint")
    }

    /// Appends a checkpoint together with consumed messages and published events, in one
    /// transaction (one commit).
    pub async fn record_step(&self, workflow_id: &str, write: &StepWrite) -> Result<()> {
        let _ = (workflow_id, write);
        todo!("record_step")
    }

    /// The run's checkpoints in order.
    pub async fn checkpoints(&self, workflow_id: &str) -> Result<Vec<Checkpoint>> {
        let _ = workflow_id;
        todo!("checkpoints")
    }

    /// One checkpoint, if recorded.
    pub async fn checkpoint(
        &self,
        workflow_id: &str,
        function_id: i32,
    ) -> Result<Option<Checkpoint>> {
        let _ = (workflow_id, function_id);
        todo!("checkpoint")
    }
}

//! Management: list runs with filters, cancel, resume, fork from a checkpoint, and delete runs
//! older than a retention age.

use std::time::Duration;

use crate::SystemDatabase;
use crate::error::Result;
use crate::workflows::{RunState, WorkflowStatus};

/// Filters of [`SystemDatabase::list_workflows`]; empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Any of these workflow names.
    pub names: Vec<String>,
    /// Any of these states.
    pub states: Vec<RunState>,
    /// Any of these queues.
    pub queue_names: Vec<String>,
    /// Created at or after (epoch ms).
    pub created_after_ms: Option<i64>,
    /// Created before (epoch ms).
    pub created_before_ms: Option<i64>,
    /// Updated at or after (epoch ms).
    pub updated_after_ms: Option<i64>,
    /// Updated before (epoch ms).
    pub updated_before_ms: Option<i64>,
    /// Run id starts with.
    pub id_prefix: Option<String>,
    /// Attributes contain this JSON object (`@>`).
    pub attributes: Option<serde_json::Value>,
    /// Most rows returned.
    pub limit: Option<i64>,
    /// Rows skipped.
    pub offset: Option<i64>,
    /// Newest first (default oldest first).
    pub newest_first: bool,
}

impl SystemDatabase {
    /// Lists runs matching the filter.
    pub async fn list_workflows(&self, filter: &ListFilter) -> Result<Vec<WorkflowStatus>> {
        let _ = filter;
        todo!("list_workflows")
    }

    /// Cancels a run that has not finished (ENQUEUED, DELAYED or PENDING become CANCELLED, with
    /// an optional serialized reason). A finished run is left as it is. Wakes its awaiters and
    /// its executor.
    pub async fn cancel(&self, workflow_id: &str, reason: Option<&str>) -> Result<()> {
        let _ = (workflow_id, reason);
        todo!("cancel")
    }

    /// Puts a cancelled, failed or stuck run back in its queue (ENQUEUED), keeping its
    /// checkpoints, so it continues from where it stopped.
    pub async fn resume(&self, workflow_id: &str) -> Result<()> {
        let _ = workflow_id;
        todo!("resume")
    }

    /// Starts a new run (ENQUEUED) with the same name, queue and input, carrying the checkpoints
    /// before `start_step`. Returns its id (`new_id`, or a fresh uuid).
    pub async fn fork(
        &self,
        workflow_id: &str,
        start_step: i32,
        new_id: Option<&str>,
    ) -> Result<String> {
        let _ = (workflow_id, start_step, new_id);
        todo!("fork")
    }

    /// Deletes finished runs last updated more than `age` ago (with their checkpoints, messages
    /// and events). Returns how many runs were deleted.
    pub async fn delete_older_than(&self, age: Duration) -> Result<u64> {
        let _ = age;
        todo!("delete_older_than")
    }
}

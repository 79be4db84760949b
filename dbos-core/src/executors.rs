//! Executors: each worker process registers an executor id with a lease it renews. When a lease
//! lapses, a live executor puts the dead executor's PENDING runs back in their queues; a
//! restarted executor recovers its own PENDING runs at once.

use std::time::Duration;

use crate::SystemDatabase;
use crate::error::Result;
use crate::workflows::WorkflowStatus;

/// How an executor registers.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Stable id of the executor (a restarted process with the same id recovers its runs).
    pub executor_id: String,
    /// Application version it runs.
    pub application_version: Option<String>,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// How often the lease is renewed and lapsed leases are looked for.
    pub renew_every: Duration,
}

impl ExecutorOptions {
    /// Options with a 10 s lease renewed every 2 s.
    pub fn new(executor_id: impl Into<String>) -> Self {
        Self {
            executor_id: executor_id.into(),
            application_version: None,
            lease: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
        }
    }
}

/// A registered executor; its background task renews the lease and takes over lapsed
/// executors' runs until it is dropped or [`ExecutorHandle::shutdown`] is called.
#[derive(Debug)]
pub struct ExecutorHandle {
    executor_id: String,
}

impl ExecutorHandle {
    /// The executor id.
    pub fn executor_id(&self) -> &str {
        &self.executor_id
    }

    /// Stops renewing and removes the executor's row (its PENDING runs stay PENDING and are
    /// recovered when it restarts or taken over once its lease would have lapsed).
    pub async fn shutdown(self) {
        todo!("shutdown")
    }
}

impl SystemDatabase {
    /// Registers (or re-registers) an executor and starts its lease task.
    pub async fn register_executor(&self, options: ExecutorOptions) -> Result<ExecutorHandle> {
        let _ = options;
        todo!("register_executor")
    }

    /// A restarted executor's PENDING runs: returned for it to resume (their recovery attempt
    /// count goes up by one).
    pub async fn recover_own_runs(&self, executor_id: &str) -> Result<Vec<WorkflowStatus>> {
        let _ = executor_id;
        todo!("recover_own_runs")
    }

    /// Puts the PENDING runs of executors whose lease lapsed back in their queues and removes
    /// those executors. Returns how many runs were re-enqueued.
    pub async fn take_over_lapsed(&self, taker: &str) -> Result<u64> {
        let _ = taker;
        todo!("take_over_lapsed")
    }
}

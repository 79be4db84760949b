//! Queues and claiming: workers claim ENQUEUED runs of their queues with
//! `FOR UPDATE SKIP LOCKED`, within per-worker and global concurrency limits and a rate limit.

use std::time::Duration;

use crate::SystemDatabase;
use crate::error::Result;
use crate::workflows::WorkflowStatus;

/// At most `max` runs started per `period`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Starts allowed per period.
    pub max: u32,
    /// The period.
    pub period: Duration,
}

/// A queue's limits (a row of `queues`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// Most PENDING runs of this queue across all executors.
    pub concurrency: Option<u32>,
    /// Most PENDING runs of this queue per executor.
    pub worker_concurrency: Option<u32>,
    /// Start-rate limit across all executors.
    pub rate_limit: Option<RateLimit>,
}

impl SystemDatabase {
    /// Creates or updates the queue's row.
    pub async fn register_queue(&self, config: &QueueConfig) -> Result<()> {
        let _ = config;
        todo!("register_queue")
    }

    /// Claims up to `max` ENQUEUED (or due DELAYED) runs of `queues` for `executor_id`: they
    /// become PENDING, held by it. Respects every queue's limits. A claim whose commit
    /// acknowledgement was lost is recognised on retry by its claim token.
    pub async fn claim(
        &self,
        executor_id: &str,
        queues: &[String],
        max: usize,
    ) -> Result<Vec<WorkflowStatus>> {
        let _ = (executor_id, queues, max);
        todo!("claim")
    }

    /// Waits until work may be available on one of `queues` (a hint, or the fallback interval,
    /// or `timeout`). The caller then claims.
    pub async fn wait_for_work(&self, queues: &[String], timeout: Duration) {
        let _ = (queues, timeout);
        todo!("wait_for_work")
    }
}

//! Durable timers: a run's sleep is checkpointed as an absolute wake time, so after a restart
//! only the remainder is waited.

use std::time::Duration;

use crate::SystemDatabase;
use crate::error::Result;

impl SystemDatabase {
    /// Records (first time) or reads back (replay) the absolute wake time, epoch ms, of the
    /// sleep at step `function_id`.
    pub async fn durable_timer(
        &self,
        workflow_id: &str,
        function_id: i32,
        duration: Duration,
    ) -> Result<i64> {
        let _ = (workflow_id, function_id, duration);
        todo!("durable_timer")
    }

    /// [`Self::durable_timer`], then sleeps until the wake time.
    pub async fn durable_sleep(
        &self,
        workflow_id: &str,
        function_id: i32,
        duration: Duration,
    ) -> Result<()> {
        let _ = (workflow_id, function_id, duration);
        todo!("durable_sleep")
    }
}

/// Sleeps until an absolute wall-clock time, epoch ms (returns at once if it has passed).
pub async fn sleep_until_ms(wake_at_ms: i64) {
    let _ = wake_at_ms;
    todo!("sleep_until_ms")
}

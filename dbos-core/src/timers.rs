//! Durable timers: a run's sleep is checkpointed as an absolute wake time, so after a restart
//! only the remainder is waited.
//!
//! The checkpoint is named `DBOS.sleep` (as in DBOS); its output is the wake time in epoch
//! milliseconds, as a decimal integer (DBOS Go's encoding; DBOS Python stores float seconds, so
//! the two are not interchangeable, exactly as between DBOS's own SDKs). `started_at` is when
//! the timer was set and `completed_at` the wake time, so the step's duration is the sleep.

use std::time::Duration;

use crate::SystemDatabase;
use crate::checkpoints::{Checkpoint, Claimed};
use crate::error::{Error, Result};

/// The step name of a durable timer's checkpoint (DBOS's).
pub(crate) const SLEEP_STEP: &str = "DBOS.sleep";

/// The longest single wait of [`sleep_until_ms`]: it re-reads the wall clock at least this often,
/// so a clock that is stepped forward does not make it oversleep by more than this.
const MAX_SLEEP_CHUNK: Duration = Duration::from_secs(5);

impl SystemDatabase {
    /// Records (first time) or reads back (replay) the absolute wake time, epoch ms, of the
    /// sleep at step `function_id`. One round trip the first time. A different step recorded at
    /// that position is [`crate::Error::CheckpointConflict`]; a missing run is
    /// [`crate::Error::UnknownRun`].
    pub async fn durable_timer(
        &self,
        workflow_id: &str,
        function_id: i32,
        duration: Duration,
    ) -> Result<i64> {
        let now = crate::now_ms();
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        let wake_at = now.saturating_add(millis);
        let timer = Checkpoint {
            function_id,
            function_name: SLEEP_STEP.to_owned(),
            output: Some(wake_at.to_string()),
            error: None,
            child_workflow_id: None,
            started_at_ms: Some(now),
            completed_at_ms: Some(wake_at),
        };
        match self.claim_checkpoint(workflow_id, &timer).await? {
            Claimed::Inserted => Ok(wake_at),
            Claimed::Existing(c) if c.function_name == SLEEP_STEP => c
                .output
                .as_deref()
                .and_then(|o| o.trim().parse::<i64>().ok())
                .ok_or_else(|| Error::Undecodable {
                    what: "durable timer wake time",
                    reason: format!("{:?} is not an epoch-ms integer", c.output),
                }),
            Claimed::Existing(_) => Err(Error::CheckpointConflict {
                workflow_id: workflow_id.to_owned(),
                function_id,
            }),
        }
    }

    /// [`Self::durable_timer`], then sleeps until the wake time (on replay: only what remains of
    /// it).
    pub async fn durable_sleep(
        &self,
        workflow_id: &str,
        function_id: i32,
        duration: Duration,
    ) -> Result<()> {
        let wake_at = self
            .durable_timer(workflow_id, function_id, duration)
            .await?;
        sleep_until_ms(wake_at).await;
        Ok(())
    }
}

/// Sleeps until an absolute wall-clock time, epoch ms (returns at once if it has passed). It
/// follows the wall clock, not a monotonic one: wake times come from the log and may have been
/// set by another process or before a restart.
pub async fn sleep_until_ms(wake_at_ms: i64) {
    loop {
        let remaining = wake_at_ms.saturating_sub(crate::now_ms());
        if remaining <= 0 {
            return;
        }
        let remaining = Duration::from_millis(remaining.unsigned_abs());
        tokio::time::sleep(remaining.min(MAX_SLEEP_CHUNK)).await;
    }
}

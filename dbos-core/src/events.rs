//! Events: keyed values a run publishes (`workflow_events`), readable and awaitable from any
//! process.

use std::time::Duration;

use crate::SystemDatabase;
use crate::error::Result;

impl SystemDatabase {
    /// Sets (or replaces) a key of the run. Wakes waiters on that key.
    pub async fn set_event(&self, workflow_id: &str, key: &str, value: &str) -> Result<()> {
        let _ = (workflow_id, key, value);
        todo!("set_event")
    }

    /// Reads a key, waiting up to `timeout` for it to be set (`None` timeout: do not wait).
    pub async fn get_event(
        &self,
        workflow_id: &str,
        key: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<String>> {
        let _ = (workflow_id, key, timeout);
        todo!("get_event")
    }
}

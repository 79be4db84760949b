//! Events: keyed values a run publishes (`workflow_events`), readable and awaitable from any
//! process. Last writer wins; waiters on a key are woken after every commit that sets it.

use std::time::Duration;

use crate::SystemDatabase;
use crate::db::validate_text;
use crate::error::{self, Result};
use crate::notifier::WakeKey;

impl SystemDatabase {
    /// Sets (or replaces) a key of the run. Wakes waiters on that key. Fails with
    /// [`crate::Error::UnknownRun`] when the run does not exist. Idempotent (an upsert), so it is
    /// retried transparently after a dropped connection.
    pub async fn set_event(&self, workflow_id: &str, key: &str, value: &str) -> Result<()> {
        validate_text("event key", key)?;
        self.check_size("event value", value)?;
        let sql = self.sql(
            "INSERT INTO {s}.workflow_events (workflow_uuid, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (workflow_uuid, key)
             DO UPDATE SET value = EXCLUDED.value, serialization = EXCLUDED.serialization",
        );
        self.retry("set event", || async {
            sqlx::query(&sql)
                .bind(workflow_id)
                .bind(key)
                .bind(value)
                .execute(self.pool())
                .await
                .map_err(|e| error::unknown_run_on_fk(e, workflow_id))
        })
        .await?;
        self.notify(WakeKey::Event(workflow_id.to_owned(), key.to_owned()));
        Ok(())
    }

    /// Reads a key, waiting up to `timeout` for it to be set (`None` timeout: do not wait).
    /// The run need not exist yet.
    pub async fn get_event(
        &self,
        workflow_id: &str,
        key: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<String>> {
        let sql =
            self.sql("SELECT value FROM {s}.workflow_events WHERE workflow_uuid = $1 AND key = $2");
        let read = || async {
            self.retry("get event", || {
                sqlx::query_scalar::<_, String>(&sql)
                    .bind(workflow_id)
                    .bind(key)
                    .fetch_optional(self.pool())
            })
            .await
        };
        match timeout {
            None => read().await,
            Some(t) => {
                self.wait_for(
                    WakeKey::Event(workflow_id.to_owned(), key.to_owned()),
                    Some(t),
                    read,
                )
                .await
            }
        }
    }
}

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

    /// Sets (or replaces) several keys of the run in ONE statement (one round trip, one
    /// transaction): all are visible together. A key given twice takes its last value. Wakes
    /// waiters on every key after the commit. Fails with [`crate::Error::UnknownRun`] when the
    /// run does not exist (then none is set). Idempotent, retried like [`Self::set_event`].
    pub async fn set_events(&self, workflow_id: &str, events: &[(String, String)]) -> Result<()> {
        // Last writer wins within the batch: an upsert may not touch one row twice.
        let mut keys: Vec<&str> = Vec::with_capacity(events.len());
        let mut values: Vec<&str> = Vec::with_capacity(events.len());
        for (key, value) in events {
            validate_text("event key", key)?;
            self.check_size("event value", value)?;
            match keys.iter().position(|k| *k == key.as_str()) {
                Some(i) => values[i] = value.as_str(),
                None => {
                    keys.push(key.as_str());
                    values.push(value.as_str());
                }
            }
        }
        match keys.len() {
            0 => return Ok(()),
            1 => return self.set_event(workflow_id, keys[0], values[0]).await,
            _ => {}
        }
        let sql = self.sql(
            "INSERT INTO {s}.workflow_events (workflow_uuid, key, value)
             SELECT $1, k, v FROM UNNEST($2::text[], $3::text[]) AS e(k, v)
             ON CONFLICT (workflow_uuid, key)
             DO UPDATE SET value = EXCLUDED.value, serialization = EXCLUDED.serialization",
        );
        self.retry("set events", || async {
            sqlx::query(&sql)
                .bind(workflow_id)
                .bind(&keys)
                .bind(&values)
                .execute(self.pool())
                .await
                .map_err(|e| error::unknown_run_on_fk(e, workflow_id))
        })
        .await?;
        for key in keys {
            self.notify(WakeKey::Event(workflow_id.to_owned(), key.to_owned()));
        }
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

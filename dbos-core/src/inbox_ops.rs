//! Inbox operations beyond send/peek/recv, for hosts that keep some messages out of history:
//!
//! - [`SystemDatabase::enqueue_with_message`]: create a run and put a first message in its inbox
//!   in ONE statement (one commit), so the run can never be claimed without the message;
//! - [`SystemDatabase::take_messages`]: claim (remove and return) a run's unconsumed
//!   messages of one topic *without* recording a checkpoint (requests that are answered, not
//!   part of the run's history, e.g. queries);
//! - [`SystemDatabase::consume_messages`]: mark given messages consumed without a checkpoint;
//! - [`SystemDatabase::delete_event`]: remove a transient reply (e.g. a query answer) once read;
//! - [`SystemDatabase::closed_runs_with_messages`]: the closed runs of a queue that still have
//!   unconsumed messages on a topic (requests addressed to runs no executor holds).

use sqlx::Row;
use sqlx::postgres::PgRow;
use tracing::debug;

use crate::SystemDatabase;
use crate::db::validate_text;
use crate::error::Result;
use crate::messages::{Message, idempotent_message_id};
use crate::workflows::{EnqueueRequest, Enqueued, FirstMessage};

fn taken_from_row(row: &PgRow) -> Result<Message> {
    Ok(Message {
        message_id: row.try_get("message_uuid")?,
        topic: row
            .try_get::<Option<String>, _>("topic")?
            .unwrap_or_default(),
        body: row.try_get("message")?,
        serialization: row.try_get("serialization")?,
        created_at_ms: row.try_get("created_at_epoch_ms")?,
        seq: row.try_get("dbosify_seq")?,
    })
}

impl SystemDatabase {
    /// Enqueues a run like [`SystemDatabase::enqueue`] and, only when this call creates it,
    /// inserts one message into its inbox in the same statement: whoever claims the run finds
    /// the message already there. When the run already existed ([`Enqueued::Existing`]) no
    /// message is written; the caller decides what to do (e.g. [`SystemDatabase::send`]).
    ///
    /// The message id is `"<key>::<run>"` with an idempotency key, else a fresh UUID. Delays and
    /// deduplication ids of the request are honoured as by `enqueue`.
    pub async fn enqueue_with_message(
        &self,
        request: EnqueueRequest,
        topic: &str,
        body: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Enqueued> {
        if !topic.is_empty() {
            validate_text("topic", topic)?;
        }
        self.check_size("message", body)?;
        let message_id = match idempotency_key {
            Some(k) => {
                validate_text("idempotency key", k)?;
                idempotent_message_id(k, &request.workflow_id)
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        let run = request.workflow_id.clone();
        let enqueued = self
            .enqueue_run(
                request,
                Some(FirstMessage {
                    topic,
                    body,
                    message_id: &message_id,
                }),
            )
            .await?;
        if matches!(enqueued, Enqueued::Created(_)) {
            debug!(%run, %message_id, "run enqueued with a first message");
        }
        Ok(enqueued)
    }

    /// Claims up to `limit` unconsumed messages of `destination` on `topic`, oldest first:
    /// removes them and returns them, in one statement, WITHOUT recording a checkpoint (for
    /// transient requests that must not accumulate, e.g. queries; do not use it on topics whose
    /// idempotency keys must outlive consumption). Rows locked by a concurrent taker are
    /// skipped, so two takers never get the same message.
    pub async fn take_messages(
        &self,
        destination: &str,
        topic: &str,
        limit: i64,
    ) -> Result<Vec<Message>> {
        let sql = self.sql(
            "WITH picked AS (
                SELECT message_uuid FROM {s}.notifications
                 WHERE destination_uuid = $1 AND topic = $2 AND NOT consumed
                 ORDER BY dbosify_seq
                 LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             DELETE FROM {s}.notifications n
              USING picked WHERE n.message_uuid = picked.message_uuid
             RETURNING n.message_uuid, n.topic, n.message, n.serialization,
                       n.created_at_epoch_ms, n.dbosify_seq",
        );
        let rows = self
            .retry("take messages", || {
                sqlx::query(&sql)
                    .bind(destination)
                    .bind(topic)
                    .bind(limit.max(0))
                    .fetch_all(self.pool())
            })
            .await?;
        let mut out = rows
            .iter()
            .map(taken_from_row)
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|m| m.seq);
        Ok(out)
    }

    /// Runs of queue `queue_name` that are closed (SUCCESS, ERROR, CANCELLED) and still have
    /// unconsumed messages on `topic`, oldest message first, at most `limit`.
    pub async fn closed_runs_with_messages(
        &self,
        queue_name: &str,
        topic: &str,
        limit: i64,
    ) -> Result<Vec<String>> {
        let sql = self.sql(
            "SELECT n.destination_uuid, min(n.dbosify_seq) AS first
               FROM {s}.notifications n
               JOIN {s}.workflow_status w ON w.workflow_uuid = n.destination_uuid
              WHERE n.topic = $2 AND NOT n.consumed AND w.queue_name = $1
                AND w.status IN ('SUCCESS', 'ERROR', 'CANCELLED')
              GROUP BY n.destination_uuid
              ORDER BY first
              LIMIT $3",
        );
        let rows = self
            .retry("closed runs with messages", || {
                sqlx::query(&sql)
                    .bind(queue_name)
                    .bind(topic)
                    .bind(limit.max(0))
                    .fetch_all(self.pool())
            })
            .await?;
        rows.iter()
            .map(|r| {
                r.try_get::<String, _>("destination_uuid")
                    .map_err(Into::into)
            })
            .collect()
    }
}

impl SystemDatabase {
    /// Marks the given messages of `destination` consumed WITHOUT recording a checkpoint (e.g.
    /// requests that were answered and must leave no trace in the run's history). Returns how
    /// many were still unconsumed.
    pub async fn consume_messages(&self, destination: &str, message_ids: &[String]) -> Result<u64> {
        if message_ids.is_empty() {
            return Ok(0);
        }
        let sql = self.sql(
            "UPDATE {s}.notifications SET consumed = true
              WHERE destination_uuid = $1 AND message_uuid = ANY($2) AND NOT consumed",
        );
        let done = self
            .retry("consume messages", || {
                sqlx::query(&sql)
                    .bind(destination)
                    .bind(message_ids)
                    .execute(self.pool())
            })
            .await?;
        Ok(done.rows_affected())
    }
}

impl SystemDatabase {
    /// Removes a key of a run (a transient reply, once its reader has it). Returns whether it
    /// existed.
    pub async fn delete_event(&self, workflow_id: &str, key: &str) -> Result<bool> {
        let sql = self.sql("DELETE FROM {s}.workflow_events WHERE workflow_uuid = $1 AND key = $2");
        let done = self
            .retry("delete event", || {
                sqlx::query(&sql)
                    .bind(workflow_id)
                    .bind(key)
                    .execute(self.pool())
            })
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

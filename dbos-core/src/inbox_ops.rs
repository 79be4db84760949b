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
use crate::error::{Error, Result};
use crate::messages::{Message, idempotent_message_id};
use crate::notifier::WakeKey;
use crate::workflows::{EnqueueRequest, Enqueued, RunState, STATUS_COLUMNS, status_from_row};

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
        validate_text("workflow id", &request.workflow_id)?;
        validate_text("workflow name", &request.name)?;
        validate_text("queue name", &request.queue_name)?;
        if !topic.is_empty() {
            validate_text("topic", topic)?;
        }
        self.check_size("workflow input", &request.inputs)?;
        self.check_size("message", body)?;
        if let Some(a) = &request.attributes
            && !a.is_object()
        {
            return Err(Error::InvalidName {
                what: "attributes",
                value: a.to_string().chars().take(80).collect(),
                reason: "must be a JSON object",
            });
        }
        let message_id = match idempotency_key {
            Some(k) => {
                validate_text("idempotency key", k)?;
                idempotent_message_id(k, &request.workflow_id)
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        let now = crate::now_ms();
        let delay_until = request.delay.map(|d| now + d.as_millis() as i64);
        let state = if delay_until.is_some() {
            RunState::Delayed
        } else {
            RunState::Enqueued
        };
        let owner = uuid::Uuid::new_v4().to_string();
        // The message insert reads the run insert's RETURNING rows; the foreign key is checked
        // at the end of the statement, when the run row exists.
        let sql = self.sql(&format!(
            "WITH ins AS (
                INSERT INTO {{s}}.workflow_status (workflow_uuid, status, name, queue_name, inputs,
                    serialization, created_at, updated_at, priority, deduplication_id,
                    workflow_timeout_ms, attributes, parent_workflow_id, application_version,
                    delay_until_epoch_ms, recovery_attempts, owner_xid)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, $11, $12, $13, $14, 0, $15)
                ON CONFLICT (workflow_uuid) DO NOTHING
                RETURNING {STATUS_COLUMNS}, true AS created),
             msg AS (
                INSERT INTO {{s}}.notifications (destination_uuid, topic, message,
                    created_at_epoch_ms, message_uuid)
                SELECT workflow_uuid, $16, $17, $7, $18 FROM ins
                ON CONFLICT (message_uuid) DO NOTHING)
             SELECT * FROM ins
             UNION ALL
             SELECT {STATUS_COLUMNS}, owner_xid IS NOT DISTINCT FROM $15 AS created
               FROM {{s}}.workflow_status
              WHERE workflow_uuid = $1 AND NOT EXISTS (SELECT 1 FROM ins)"
        ));
        let mut row = None;
        for _ in 0..5 {
            row = self
                .retry("enqueue with message", || async {
                    sqlx::query(&sql)
                        .bind(&request.workflow_id)
                        .bind(state.as_str())
                        .bind(&request.name)
                        .bind(&request.queue_name)
                        .bind(&request.inputs)
                        .bind(&request.serialization)
                        .bind(now)
                        .bind(request.priority)
                        .bind(&request.deduplication_id)
                        .bind(request.timeout.map(|t| t.as_millis() as i64))
                        .bind(&request.attributes)
                        .bind(&request.parent_workflow_id)
                        .bind(&request.application_version)
                        .bind(delay_until)
                        .bind(&owner)
                        .bind(topic)
                        .bind(body)
                        .bind(&message_id)
                        .fetch_optional(self.pool())
                        .await
                        .map_err(|e| match crate::error::sqlstate(&e).as_deref() {
                            Some("23505") => Error::Duplicated {
                                queue: request.queue_name.clone(),
                                deduplication_id: request
                                    .deduplication_id
                                    .clone()
                                    .unwrap_or_default(),
                            },
                            _ => Error::Database(e),
                        })
                })
                .await?;
            if row.is_some() {
                break;
            }
        }
        let row = row.ok_or_else(|| Error::UnknownRun(request.workflow_id.clone()))?;
        let created: bool = row.try_get("created")?;
        let status = status_from_row(&row)?;
        if created {
            debug!(run = %request.workflow_id, %message_id, "run enqueued with a first message");
            self.notify(WakeKey::Message(request.workflow_id.clone()));
            if state == RunState::Enqueued {
                self.notify(WakeKey::Queue(request.queue_name.clone()));
            }
            Ok(Enqueued::Created(status))
        } else {
            Ok(Enqueued::Existing(status))
        }
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

//! Messages sent to a run (`notifications`): send with an optional idempotency key, peek in
//! order, consume together with a checkpoint, and wait with a timeout.
//!
//! Order: a destination's messages are delivered in `dbosify_seq` order, which is the order in
//! which their inserts ran. Messages sent one after another (each send returning before the next
//! starts) are therefore delivered in send order; two sends racing from different processes
//! are ordered by whichever insert ran first.

use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::PgRow;
use tracing::debug;

use crate::SystemDatabase;
use crate::checkpoints::{Checkpoint, Claimed};
use crate::db::validate_text;
use crate::error::{self, Error, Result};
use crate::notifier::WakeKey;
use crate::workflows::RunState;

/// The step name of a `recv` checkpoint (DBOS's).
pub(crate) const RECV_STEP: &str = "DBOS.recv";

/// One message in a run's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique id (the idempotency key's row id).
    pub message_id: String,
    /// Topic.
    pub topic: String,
    /// Serialized body.
    pub body: String,
    /// Serialization label.
    pub serialization: Option<String>,
    /// Send time, epoch ms.
    pub created_at_ms: i64,
    /// Position in the destination's total order.
    pub seq: i64,
}

fn message_from_row(row: &PgRow) -> Result<Message> {
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

/// Topics are stored as given; they may be empty (one unnamed topic) but are otherwise held to
/// the rules of other stored names.
fn validate_topic(topic: &str) -> Result<()> {
    if topic.is_empty() {
        return Ok(());
    }
    validate_text("topic", topic)
}

/// The `message_uuid` of a message sent with an idempotency key: the key scoped to its
/// destination (DBOS's `<key>::<destination>`), so the same key sent to two runs is two
/// messages, and sent twice to one run is one.
pub(crate) fn idempotent_message_id(idempotency_key: &str, destination: &str) -> String {
    format!("{idempotency_key}::{destination}")
}

/// What [`SystemDatabase::send_if_open`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendIfOpen {
    /// The message is in the run's inbox (sent now, or by an earlier send of the same key);
    /// its id.
    Sent(String),
    /// The run is closed; nothing was sent.
    Closed(RunState),
}

/// What one `recv` probe found.
enum RecvProbe {
    /// The position was already recorded (replay, or a retried consume whose ack was lost).
    Recorded(Checkpoint),
    /// This probe consumed a message and recorded it.
    Consumed(String),
    /// Nothing to consume yet.
    Empty,
    /// The position was taken by a concurrent writer after this statement's snapshot; the
    /// consume was rolled back. Probe again to read it.
    Raced,
}

impl SystemDatabase {
    /// Sends a message. With an idempotency key, a repeated send is a no-op. Returns the message
    /// id. Fails with [`crate::Error::UnknownRun`] when the destination does not exist.
    ///
    /// The message id is `"<key>::<destination>"` with a key (see `idempotent_message_id`),
    /// else a fresh UUID drawn once per call, *before* the insert is tried: a retry after a
    /// dropped connection (whose first attempt may have committed) reuses that id, so even a
    /// send without a key is never duplicated by the transparent retry. Two separate calls
    /// without a key are two messages. The topic is stored as given.
    pub async fn send(
        &self,
        destination: &str,
        topic: &str,
        body: &str,
        idempotency_key: Option<&str>,
    ) -> Result<String> {
        match self
            .send_inner(destination, topic, body, idempotency_key, false)
            .await?
        {
            SendIfOpen::Sent(id) => Ok(id),
            SendIfOpen::Closed(_) => Err(crate::Error::UnknownRun(destination.to_owned())),
        }
    }

    /// Sends a message only while its destination run is open (ENQUEUED, DELAYED or PENDING),
    /// in one statement: the run's state is read and the message inserted together, so a
    /// sender needs no separate status read. A closed run gets nothing and its state is
    /// returned. Otherwise as [`Self::send`] (a repeated idempotent send to an open run is a
    /// no-op that reports `Sent`).
    pub async fn send_if_open(
        &self,
        destination: &str,
        topic: &str,
        body: &str,
        idempotency_key: Option<&str>,
    ) -> Result<SendIfOpen> {
        self.send_inner(destination, topic, body, idempotency_key, true)
            .await
    }

    async fn send_inner(
        &self,
        destination: &str,
        topic: &str,
        body: &str,
        idempotency_key: Option<&str>,
        only_open: bool,
    ) -> Result<SendIfOpen> {
        validate_text("destination run id", destination)?;
        validate_topic(topic)?;
        self.check_size("message", body)?;
        let message_id = match idempotency_key {
            Some(k) => {
                validate_text("idempotency key", k)?;
                idempotent_message_id(k, destination)
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        let now = crate::now_ms();
        // The wake-up hint rides in the insert's own statement when the inline slot is free
        // (see `notifier`), which saves the receiver the hint transaction on the
        // latency-critical send -> consume path. With `only_open` ($8), the run's state is read
        // in the same statement and gates the insert.
        let sql = self.sql(
            "WITH tgt AS (
                SELECT status FROM {s}.workflow_status WHERE workflow_uuid = $1),
             ins AS (
                INSERT INTO {s}.notifications (destination_uuid, topic, message,
                    created_at_epoch_ms, message_uuid)
                SELECT $1, $2, $3, $4, $5
                 WHERE NOT $8 OR EXISTS (SELECT 1 FROM tgt
                                          WHERE status IN ('ENQUEUED', 'DELAYED', 'PENDING'))
                ON CONFLICT (message_uuid) DO NOTHING
                RETURNING 1)
             SELECT (SELECT status FROM tgt) AS status,
                    EXISTS (SELECT 1 FROM ins) AS inserted,
                    (SELECT count(pg_notify($6, p)) FROM unnest($7::text[]) AS p
                      WHERE EXISTS (SELECT 1 FROM ins)) AS hinted",
        );
        let hints = self.hints(vec![WakeKey::Message(destination.to_owned())]);
        let (state, inserted): (Option<String>, bool) = self
            .retry("send message", || async {
                sqlx::query_as::<_, (Option<String>, bool, i64)>(&sql)
                    .bind(destination)
                    .bind(topic)
                    .bind(body)
                    .bind(now)
                    .bind(&message_id)
                    .bind(hints.channel())
                    .bind(hints.payloads())
                    .bind(only_open)
                    .fetch_one(self.pool())
                    .await
                    .map(|(s, i, _)| (s, i))
                    .map_err(|e| error::unknown_run_on_fk(e, destination))
            })
            .await?;
        let Some(state) = state else {
            return Err(crate::Error::UnknownRun(destination.to_owned()));
        };
        if inserted {
            hints.published(true);
            return Ok(SendIfOpen::Sent(message_id));
        }
        let state = RunState::parse(&state).ok_or_else(|| crate::Error::Undecodable {
            what: "workflow status",
            reason: format!("unknown status {state:?}"),
        })?;
        if only_open
            && !matches!(
                state,
                RunState::Enqueued | RunState::Delayed | RunState::Pending
            )
        {
            return Ok(SendIfOpen::Closed(state));
        }
        debug!(destination, %message_id, "message already sent (idempotent send)");
        // The first attempt may have committed without this call seeing it: hint again.
        hints.published(false);
        Ok(SendIfOpen::Sent(message_id))
    }

    /// The oldest unconsumed messages of a topic (all topics when `None`), in send order.
    pub async fn peek_messages(
        &self,
        destination: &str,
        topic: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Message>> {
        let sql = self.sql(
            "SELECT message_uuid, topic, message, serialization, created_at_epoch_ms, dbosify_seq
               FROM {s}.notifications
              WHERE destination_uuid = $1 AND NOT consumed AND ($2::text IS NULL OR topic = $2)
              ORDER BY dbosify_seq
              LIMIT $3",
        );
        let rows = self
            .retry("peek messages", || {
                sqlx::query(&sql)
                    .bind(destination)
                    .bind(topic)
                    .bind(limit.max(0))
                    .fetch_all(self.pool())
            })
            .await?;
        rows.iter().map(message_from_row).collect()
    }

    /// One `recv` probe: returns the recorded checkpoint at the position, or consumes the oldest
    /// unconsumed message of the topic and records it, all in one statement (one commit).
    async fn recv_probe(
        &self,
        sql: &str,
        workflow_id: &str,
        function_id: i32,
        topic: &str,
    ) -> Result<RecvProbe> {
        let now = crate::now_ms();
        let outcome = self
            .retry("recv", || async {
                sqlx::query(sql)
                    .bind(workflow_id)
                    .bind(function_id)
                    .bind(topic)
                    .bind(now)
                    .fetch_one(self.pool())
                    .await
                    .map_err(Error::Database)
            })
            .await;
        let row = match outcome {
            Ok(row) => row,
            Err(Error::Database(e))
                if error::sqlstate(&e).as_deref() == Some(error::CHECKPOINT_EXISTS) =>
            {
                return Ok(RecvProbe::Raced);
            }
            Err(e) => return Err(e),
        };
        let recorded: Option<i32> = row.try_get("function_id")?;
        if recorded.is_some() {
            return Ok(RecvProbe::Recorded(
                crate::checkpoints::checkpoint_from_row(&row)?,
            ));
        }
        let consumed: Option<String> = row.try_get("consumed")?;
        Ok(match consumed {
            Some(body) => RecvProbe::Consumed(body),
            None => RecvProbe::Empty,
        })
    }

    fn recorded_recv(
        &self,
        workflow_id: &str,
        function_id: i32,
        recorded: Checkpoint,
    ) -> Result<Option<String>> {
        if recorded.function_name != RECV_STEP {
            return Err(Error::CheckpointConflict {
                workflow_id: workflow_id.to_owned(),
                function_id,
            });
        }
        Ok(recorded.output)
    }

    /// DBOS `recv`: at step `function_id`, consume the oldest message of `topic` and checkpoint
    /// it in one transaction; on replay return the checkpointed value. Waits up to `timeout`;
    /// `None` when nothing arrived (also checkpointed).
    ///
    /// The checkpoint is named `DBOS.recv`; its output is the message body, or NULL for a
    /// timeout. A different step recorded at `function_id` is
    /// [`crate::Error::CheckpointConflict`]. Each probe is one statement: it returns the
    /// recorded checkpoint if there is one, else locks the oldest unconsumed message of the topic
    /// (`FOR UPDATE SKIP LOCKED`, so it never blocks behind another consumer), marks it consumed
    /// and records it. A probe retried after a lost acknowledgement therefore returns the message
    /// its first attempt consumed instead of consuming a second one. Fails with
    /// [`crate::Error::UnknownRun`] if the run does not exist when the checkpoint is written.
    ///
    /// The timeout is not durable: a replay of a run that crashed while waiting waits the whole
    /// `timeout` again (a durable deadline is [`Self::durable_timer`]'s job).
    pub async fn recv(
        &self,
        workflow_id: &str,
        function_id: i32,
        topic: &str,
        timeout: Duration,
    ) -> Result<Option<String>> {
        validate_topic(topic)?;
        let sql = self.sql(&format!(
            "WITH existing AS (
                SELECT {cols} FROM {{s}}.operation_outputs
                 WHERE workflow_uuid = $1 AND function_id = $2),
             msg AS (
                SELECT message_uuid FROM {{s}}.notifications
                 WHERE destination_uuid = $1 AND topic = $3 AND NOT consumed
                   AND NOT EXISTS (SELECT 1 FROM existing)
                 ORDER BY dbosify_seq
                 LIMIT 1
                 FOR UPDATE SKIP LOCKED),
             upd AS (
                UPDATE {{s}}.notifications n SET consumed = true
                  FROM msg WHERE n.message_uuid = msg.message_uuid
                RETURNING n.message),
             ins AS (
                INSERT INTO {{s}}.operation_outputs (workflow_uuid, function_id, function_name,
                    output, started_at_epoch_ms, completed_at_epoch_ms)
                SELECT $1, $2, '{RECV_STEP}', message, $4, $4 FROM upd
                ON CONFLICT (workflow_uuid, function_id) DO NOTHING
                RETURNING output)
             SELECT e.*, (SELECT output FROM ins) AS consumed,
                    CASE WHEN EXISTS (SELECT 1 FROM upd) AND NOT EXISTS (SELECT 1 FROM ins)
                         THEN {{s}}.dbosify_abort('DBX01', 'checkpoint position taken')
                    END AS aborted
               FROM (SELECT 1) AS one LEFT JOIN existing e ON true",
            cols = crate::checkpoints::CHECKPOINT_COLUMNS,
        ));
        let started = crate::now_ms();
        let found = self
            .wait_for(
                WakeKey::Message(workflow_id.to_owned()),
                Some(timeout),
                || async {
                    // `Raced` means the position was written after this probe's snapshot: the
                    // next probe sees it.
                    for _ in 0..5 {
                        match self
                            .recv_probe(&sql, workflow_id, function_id, topic)
                            .await?
                        {
                            RecvProbe::Recorded(c) => {
                                return Ok(Some(self.recorded_recv(
                                    workflow_id,
                                    function_id,
                                    c,
                                )?));
                            }
                            RecvProbe::Consumed(body) => return Ok(Some(Some(body))),
                            RecvProbe::Empty => return Ok(None),
                            RecvProbe::Raced => {}
                        }
                    }
                    Err(Error::CheckpointConflict {
                        workflow_id: workflow_id.to_owned(),
                        function_id,
                    })
                },
            )
            .await?;
        if let Some(result) = found {
            return Ok(result);
        }
        // Timed out: record "nothing" at the position, unless something was recorded meanwhile.
        let timed_out = Checkpoint {
            function_id,
            function_name: RECV_STEP.to_owned(),
            output: None,
            error: None,
            child_workflow_id: None,
            started_at_ms: Some(started),
            completed_at_ms: Some(crate::now_ms()),
        };
        match self.claim_checkpoint(workflow_id, &timed_out).await? {
            Claimed::Inserted => Ok(None),
            Claimed::Existing(c) => self.recorded_recv(workflow_id, function_id, c),
        }
    }

    /// Waits until an unconsumed message of `topic` (any topic when `None`) exists; `false` on
    /// timeout (`None` waits forever).
    pub async fn wait_for_message(
        &self,
        destination: &str,
        topic: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        let sql = self.sql(
            "SELECT EXISTS (SELECT 1 FROM {s}.notifications
                             WHERE destination_uuid = $1 AND NOT consumed
                               AND ($2::text IS NULL OR topic = $2))",
        );
        let found = self
            .wait_for(
                WakeKey::Message(destination.to_owned()),
                timeout,
                || async {
                    let exists: bool = self
                        .retry("probe messages", || {
                            sqlx::query_scalar(&sql)
                                .bind(destination)
                                .bind(topic)
                                .fetch_one(self.pool())
                        })
                        .await?;
                    Ok(exists.then_some(()))
                },
            )
            .await?;
        Ok(found.is_some())
    }
}

//! Checkpoints: the ordered, append-only record of a run's steps (`operation_outputs`).
//!
//! Every write here is a single SQL statement in autocommit mode, so it costs one round trip
//! and one commit. A multi-part write ([`SystemDatabase::record_step`]) is one statement of
//! data-modifying CTEs; when a part finds the write cannot go ahead it calls
//! `dbosify_abort(..)`, which rolls every part back. Positions are claimed with
//! `INSERT … ON CONFLICT DO NOTHING`; a write that finds its position taken reads the stored row
//! and accepts it when it is the same step result (the retry of a write whose commit
//! acknowledgement was lost), and reports [`Error::CheckpointConflict`] otherwise.

use sqlx::Row;
use sqlx::postgres::PgRow;
use tracing::debug;

use crate::SystemDatabase;
use crate::db::validate_text;
use crate::error::{self, Error, Result};
use crate::notifier::WakeKey;

/// One checkpointed step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Position within the run (0, 1, 2, ...).
    pub function_id: i32,
    /// Step name.
    pub function_name: String,
    /// Serialized output.
    pub output: Option<String>,
    /// Serialized error.
    pub error: Option<String>,
    /// A child run started by this step.
    pub child_workflow_id: Option<String>,
    /// When the step started, epoch ms.
    pub started_at_ms: Option<i64>,
    /// When the step completed, epoch ms.
    pub completed_at_ms: Option<i64>,
}

impl Checkpoint {
    /// Whether `other` records the same step result: same name, output, error and child run
    /// (times are not compared: a retried write may have recomputed them).
    pub fn same_result(&self, other: &Checkpoint) -> bool {
        self.function_id == other.function_id
            && self.function_name == other.function_name
            && self.output == other.output
            && self.error == other.error
            && self.child_workflow_id == other.child_workflow_id
    }
}

/// A checkpoint plus what commits atomically with it.
#[derive(Debug, Clone, Default)]
pub struct StepWrite {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// Messages (by id) this step consumed: marked consumed in the same transaction; fails with
    /// [`crate::Error::AlreadyConsumed`] if any was consumed already by someone else.
    pub consume_messages: Vec<String>,
    /// Events (key, value) the step publishes in the same transaction.
    pub set_events: Vec<(String, String)>,
}

/// The terminal outcome [`SystemDatabase::record_step_and_close`] writes with its checkpoint.
pub(crate) struct StepClose<'a> {
    pub(crate) state: crate::RunState,
    pub(crate) output: Option<&'a str>,
    pub(crate) error: Option<&'a str>,
    pub(crate) now_ms: i64,
    pub(crate) executor_id: &'a str,
}

/// The columns every checkpoint read selects; [`checkpoint_from_row`] maps them.
pub(crate) const CHECKPOINT_COLUMNS: &str = "function_id, function_name, output, error, \
     child_workflow_id, started_at_epoch_ms, completed_at_epoch_ms";

pub(crate) fn checkpoint_from_row(row: &PgRow) -> Result<Checkpoint> {
    Ok(Checkpoint {
        function_id: row.try_get("function_id")?,
        function_name: row.try_get("function_name")?,
        output: row.try_get("output")?,
        error: row.try_get("error")?,
        child_workflow_id: row.try_get("child_workflow_id")?,
        started_at_ms: row.try_get("started_at_epoch_ms")?,
        completed_at_ms: row.try_get("completed_at_epoch_ms")?,
    })
}

/// What an insert-or-get of a checkpoint position found.
#[derive(Debug)]
pub(crate) enum Claimed {
    /// This call wrote the checkpoint.
    Inserted,
    /// The position already held this checkpoint (possibly our own earlier, acknowledged-lost
    /// write; the caller compares).
    Existing(Checkpoint),
}

const INSERT_CHECKPOINT: &str = "INSERT INTO {s}.operation_outputs (workflow_uuid, function_id, \
     function_name, output, error, child_workflow_id, started_at_epoch_ms, completed_at_epoch_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (workflow_uuid, function_id) DO NOTHING";

impl SystemDatabase {
    fn check_checkpoint(&self, checkpoint: &Checkpoint) -> Result<()> {
        if let Some(o) = &checkpoint.output {
            self.check_size("checkpoint output", o)?;
        }
        if let Some(e) = &checkpoint.error {
            self.check_size("checkpoint error", e)?;
        }
        if checkpoint.function_name.len() > 1024 {
            return Err(Error::InvalidName {
                what: "step name",
                value: checkpoint.function_name.chars().take(80).collect(),
                reason: "must be at most 1024 bytes",
            });
        }
        if let Some(child) = &checkpoint.child_workflow_id {
            validate_text("child workflow id", child)?;
        }
        Ok(())
    }

    /// Writes the checkpoint if its position is free, else returns what is stored there. One
    /// round trip when the position is free.
    pub(crate) async fn claim_checkpoint(
        &self,
        workflow_id: &str,
        checkpoint: &Checkpoint,
    ) -> Result<Claimed> {
        self.check_checkpoint(checkpoint)?;
        let sql = self.sql(INSERT_CHECKPOINT);
        // A position found taken whose row then cannot be read was deleted in between (with its
        // run, by cascade): try the insert again, which then reports the missing run.
        for _ in 0..3 {
            let done = self
                .retry("append checkpoint", || async {
                    sqlx::query(&sql)
                        .bind(workflow_id)
                        .bind(checkpoint.function_id)
                        .bind(&checkpoint.function_name)
                        .bind(&checkpoint.output)
                        .bind(&checkpoint.error)
                        .bind(&checkpoint.child_workflow_id)
                        .bind(checkpoint.started_at_ms)
                        .bind(checkpoint.completed_at_ms)
                        .execute(self.pool())
                        .await
                        .map_err(|e| error::unknown_run_on_fk(e, workflow_id))
                })
                .await?;
            if done.rows_affected() == 1 {
                return Ok(Claimed::Inserted);
            }
            if let Some(existing) = self.checkpoint(workflow_id, checkpoint.function_id).await? {
                return Ok(Claimed::Existing(existing));
            }
        }
        Err(Error::UnknownRun(workflow_id.to_owned()))
    }

    /// Accepts a stored checkpoint that holds the same result as `wanted`, else reports the
    /// conflict.
    fn accept_existing(
        &self,
        workflow_id: &str,
        wanted: &Checkpoint,
        existing: &Checkpoint,
    ) -> Result<()> {
        if wanted.same_result(existing) {
            debug!(
                workflow_id,
                function_id = wanted.function_id,
                "checkpoint already recorded identically (retried write)"
            );
            Ok(())
        } else {
            Err(Error::CheckpointConflict {
                workflow_id: workflow_id.to_owned(),
                function_id: wanted.function_id,
            })
        }
    }

    /// Appends a checkpoint. A retry of the same write (same position, same content) succeeds;
    /// a different value at the same position is [`crate::Error::CheckpointConflict`]. Fails
    /// with [`crate::Error::UnknownRun`] when the run does not exist. One round trip and one
    /// commit when the position is free.
    pub async fn append_checkpoint(
        &self,
        workflow_id: &str,
        checkpoint: &Checkpoint,
    ) -> Result<()> {
        match self.claim_checkpoint(workflow_id, checkpoint).await? {
            Claimed::Inserted => Ok(()),
            Claimed::Existing(existing) => self.accept_existing(workflow_id, checkpoint, &existing),
        }
    }

    /// Appends a checkpoint together with consumed messages and published events, in one
    /// transaction (one statement, one commit).
    ///
    /// - Every id of `consume_messages` must be an unconsumed message of this run; if any is
    ///   not (consumed by someone else, or not this run's), nothing is written and the result is
    ///   [`crate::Error::AlreadyConsumed`] naming one such id.
    /// - `set_events` are upserted into `workflow_events` and recorded in
    ///   `workflow_events_history` at this checkpoint's position; a key given twice keeps its
    ///   last value. Waiters on those keys are woken after the commit.
    /// - If the position already holds the same result, the call succeeds without writing
    ///   anything (the retry of a write whose acknowledgement was lost: that write consumed the
    ///   messages and set the events); a different result is
    ///   [`crate::Error::CheckpointConflict`].
    pub async fn record_step(&self, workflow_id: &str, write: &StepWrite) -> Result<()> {
        self.record_step_and_close(workflow_id, write, None)
            .await
            .map(|_| ())
    }

    /// [`Self::record_step`], and with `close` the run's terminal outcome in the same
    /// statement (one commit): the outcome is written only if the checkpoint is, and only
    /// while the run is PENDING and held by `close`'s executor; otherwise nothing is written
    /// and the result is [`crate::Error::NotPending`]. Returns the closed run's queue.
    pub(crate) async fn record_step_and_close(
        &self,
        workflow_id: &str,
        write: &StepWrite,
        close: Option<&StepClose<'_>>,
    ) -> Result<Option<String>> {
        let cp = &write.checkpoint;
        self.check_checkpoint(cp)?;
        let mut consume: Vec<&str> = Vec::with_capacity(write.consume_messages.len());
        for id in &write.consume_messages {
            if !consume.contains(&id.as_str()) {
                consume.push(id);
            }
        }
        // Last value per key wins; keys in order of first appearance.
        let mut keys: Vec<&str> = Vec::new();
        let mut values: Vec<&str> = Vec::new();
        for (k, v) in &write.set_events {
            validate_text("event key", k)?;
            self.check_size("event value", v)?;
            match keys.iter().position(|x| x == k) {
                Some(i) => values[i] = v,
                None => {
                    keys.push(k);
                    values.push(v);
                }
            }
        }
        // With `close`, `st` records the outcome ($12..$16) and publishes its wake-ups
        // ($17, $18) when the checkpoint was inserted.
        let (close_cte, close_check, close_cols) = if close.is_some() {
            (
                ",
             st AS (
                UPDATE {s}.workflow_status
                   SET status = $12, output = $13, error = $14, updated_at = $15,
                       completed_at = $15, deduplication_id = NULL
                 WHERE workflow_uuid = $1 AND status = 'PENDING' AND executor_id = $16
                   AND EXISTS (SELECT 1 FROM ins)
                RETURNING queue_name)",
                "
                WHEN NOT EXISTS (SELECT 1 FROM st)
                    THEN {s}.dbosify_abort('DBX03', 'run not pending')",
                ",
                (SELECT queue_name FROM st) AS queue_name,
                (SELECT count(pg_notify($17, p)) FROM unnest($18::text[]) AS p) AS hinted",
            )
        } else {
            ("", "", "")
        };
        let sql = self.sql(&format!(
            "WITH ins AS (
                INSERT INTO {{s}}.operation_outputs (workflow_uuid, function_id, function_name,
                    output, error, child_workflow_id, started_at_epoch_ms, completed_at_epoch_ms)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                ON CONFLICT (workflow_uuid, function_id) DO NOTHING
                RETURNING 1),
             upd AS (
                UPDATE {{s}}.notifications SET consumed = true
                 WHERE message_uuid = ANY($9::text[]) AND destination_uuid = $1 AND NOT consumed
                RETURNING message_uuid),
             ev AS (
                INSERT INTO {{s}}.workflow_events (workflow_uuid, key, value)
                SELECT $1, k, v FROM unnest($10::text[], $11::text[]) AS e(k, v)
                ON CONFLICT (workflow_uuid, key)
                DO UPDATE SET value = EXCLUDED.value, serialization = EXCLUDED.serialization
                RETURNING 1),
             evh AS (
                INSERT INTO {{s}}.workflow_events_history (workflow_uuid, function_id, key, value)
                SELECT $1, $2, k, v FROM unnest($10::text[], $11::text[]) AS e(k, v)
                ON CONFLICT (workflow_uuid, function_id, key)
                DO UPDATE SET value = EXCLUDED.value, serialization = EXCLUDED.serialization
                RETURNING 1){close_cte}
             SELECT CASE
                WHEN NOT EXISTS (SELECT 1 FROM ins)
                    THEN {{s}}.dbosify_abort('DBX01', 'checkpoint position taken')
                WHEN (SELECT count(*) FROM upd) <> cardinality($9::text[])
                    THEN {{s}}.dbosify_abort('DBX02',
                        (SELECT min(id) FROM unnest($9::text[]) AS id
                          WHERE id NOT IN (SELECT message_uuid FROM upd))){close_check}
                ELSE true END AS recorded{close_cols}"
        ));
        let hints = close.map(|_| {
            self.hints(vec![
                WakeKey::Completion(workflow_id.to_owned()),
                WakeKey::Status(workflow_id.to_owned()),
            ])
        });
        let outcome = self
            .retry("record step", || async {
                let mut q = sqlx::query(&sql)
                    .bind(workflow_id)
                    .bind(cp.function_id)
                    .bind(&cp.function_name)
                    .bind(&cp.output)
                    .bind(&cp.error)
                    .bind(&cp.child_workflow_id)
                    .bind(cp.started_at_ms)
                    .bind(cp.completed_at_ms)
                    .bind(&consume)
                    .bind(&keys)
                    .bind(&values);
                if let (Some(c), Some(h)) = (close, &hints) {
                    q = q
                        .bind(c.state.as_str())
                        .bind(c.output)
                        .bind(c.error)
                        .bind(c.now_ms)
                        .bind(c.executor_id)
                        .bind(h.channel())
                        .bind(h.payloads());
                }
                q.fetch_one(self.pool()).await.map_err(Error::Database)
            })
            .await;
        let queue = match outcome {
            Ok(row) => {
                if close.is_some() {
                    row.try_get::<Option<String>, _>("queue_name")?
                } else {
                    None
                }
            }
            Err(Error::Database(e)) => {
                match error::sqlstate(&e).as_deref() {
                    Some(error::CHECKPOINT_EXISTS) => {
                        // Either our own earlier attempt (ack lost) or a different writer.
                        match self.checkpoint(workflow_id, cp.function_id).await? {
                            Some(existing) => self.accept_existing(workflow_id, cp, &existing)?,
                            None => {
                                return Err(Error::CheckpointConflict {
                                    workflow_id: workflow_id.to_owned(),
                                    function_id: cp.function_id,
                                });
                            }
                        }
                        // Our own earlier attempt: with `close`, it recorded the outcome too
                        // (same statement); the caller confirms it.
                        if close.is_some() {
                            return Err(Error::NotPending(workflow_id.to_owned()));
                        }
                        None
                    }
                    Some(error::MESSAGE_CONSUMED) => {
                        // A message of another run is "not consumable" too; a missing run is
                        // reported as such.
                        if self.status(workflow_id).await?.is_none() {
                            return Err(Error::UnknownRun(workflow_id.to_owned()));
                        }
                        let id = error::detail(&e).unwrap_or_default();
                        return Err(Error::AlreadyConsumed(id));
                    }
                    Some(error::RUN_NOT_PENDING) => {
                        return Err(Error::NotPending(workflow_id.to_owned()));
                    }
                    Some(error::FOREIGN_KEY_VIOLATION) => {
                        return Err(Error::UnknownRun(workflow_id.to_owned()));
                    }
                    _ => return Err(Error::Database(e)),
                }
            }
            Err(other) => return Err(other),
        };
        if let Some(h) = hints {
            h.published(true);
        }
        for k in keys {
            self.notify(WakeKey::Event(workflow_id.to_owned(), k.to_owned()));
        }
        Ok(queue)
    }

    /// The run's checkpoints in order (empty for an unknown run).
    pub async fn checkpoints(&self, workflow_id: &str) -> Result<Vec<Checkpoint>> {
        let sql = self.sql(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM {{s}}.operation_outputs
              WHERE workflow_uuid = $1 ORDER BY function_id"
        ));
        let rows = self
            .retry("read checkpoints", || {
                sqlx::query(&sql).bind(workflow_id).fetch_all(self.pool())
            })
            .await?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    /// One checkpoint, if recorded.
    pub async fn checkpoint(
        &self,
        workflow_id: &str,
        function_id: i32,
    ) -> Result<Option<Checkpoint>> {
        let sql = self.sql(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM {{s}}.operation_outputs
              WHERE workflow_uuid = $1 AND function_id = $2"
        ));
        let row = self
            .retry("read checkpoint", || {
                sqlx::query(&sql)
                    .bind(workflow_id)
                    .bind(function_id)
                    .fetch_optional(self.pool())
            })
            .await?;
        row.as_ref().map(checkpoint_from_row).transpose()
    }
}

//! Durable schedules: rows of `dbosify_schedules` that start runs at planned times.
//!
//! dbos-core does not interpret a schedule's plan. The layer above stores its definition and
//! counters as JSON and decides, each time the schedule is evaluated, which runs to start and
//! when the schedule is next due. This module gives those decisions their durability:
//!
//! * **One transaction per evaluation.** [`SystemDatabase::evaluate_schedule`] locks the row
//!   (`FOR UPDATE`; for [`ScheduleTarget::Due`], the earliest due row not locked by another
//!   scheduler, `FOR UPDATE SKIP LOCKED`), reads the status of the runs the schedule started
//!   and still counted as open, asks the caller's decision function what to do, then enqueues
//!   the runs it asks for and writes the row's new state, next fire time and open runs, and
//!   commits — all or nothing. The decision function must give every run a deterministic id
//!   derived from its nominal time: a transaction retried after a lost acknowledgement, or a
//!   second scheduler evaluating the same time, then finds the run already there
//!   ([`Enqueued::Existing`]) and nothing starts twice.
//! * **Due rows.** A row is due when its `next_fire_at_ms` has passed, or when it asked to be
//!   woken once its open runs finish (`wake_on_finish`) and none of them is open any more.
//! * **Wake-ups.** Every change publishes [`WakeKey::Schedules`]; schedulers sleep until the
//!   earliest due time ([`SystemDatabase::next_schedule_wakeup`]), that hint, the completion of
//!   a watched run, or the fallback interval, whichever comes first.

use sqlx::Row;
use sqlx::postgres::PgRow;
use tracing::debug;

use crate::SystemDatabase;
use crate::db::validate_text;
use crate::error::{Error, Result};
use crate::notifier::WakeKey;
use crate::workflows::{EnqueueRequest, Enqueued, STATUS_COLUMNS, WorkflowStatus, status_from_row};

const SCHEDULE_COLUMNS: &str = "schedule_id, definition, state, next_fire_at_ms, running, \
     wake_on_finish, version, created_at, updated_at";

/// One row of `dbosify_schedules`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    /// The schedule's id (unique per schema).
    pub schedule_id: String,
    /// The definition, owned by the layer above.
    pub definition: serde_json::Value,
    /// Counters and history, owned by the layer above.
    pub state: serde_json::Value,
    /// The next nominal fire time, epoch ms; `None` when none is coming.
    pub next_fire_at_ms: Option<i64>,
    /// Runs started by this schedule that were open at its last evaluation.
    pub running: Vec<String>,
    /// Whether the schedule is evaluated as soon as none of `running` is open.
    pub wake_on_finish: bool,
    /// Bumped by every change.
    pub version: i64,
    /// Creation time, epoch ms.
    pub created_at_ms: i64,
    /// Last change, epoch ms.
    pub updated_at_ms: i64,
}

/// A schedule to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSchedule {
    /// The schedule's id.
    pub schedule_id: String,
    /// The definition.
    pub definition: serde_json::Value,
    /// The initial state.
    pub state: serde_json::Value,
    /// The first nominal fire time, epoch ms.
    pub next_fire_at_ms: Option<i64>,
}

/// What an evaluation writes.
#[derive(Debug, Clone, Default)]
pub struct ScheduleChange {
    /// A replacement definition, or `None` to keep it.
    pub definition: Option<serde_json::Value>,
    /// The new state.
    pub state: serde_json::Value,
    /// The new next fire time.
    pub next_fire_at_ms: Option<i64>,
    /// Whether to be evaluated as soon as none of the open runs is open any more.
    pub wake_on_finish: bool,
    /// Open runs to cancel first, in this transaction, each with its reason (as
    /// [`SystemDatabase::cancel`]); they leave the schedule's open runs.
    pub cancel: Vec<(String, String)>,
    /// Runs to enqueue, in this transaction. Their ids must be deterministic (see the module
    /// documentation). Created runs are added to the schedule's open runs.
    pub start: Vec<EnqueueRequest>,
}

/// Which schedule an evaluation locks.
#[derive(Debug, Clone, Copy)]
pub enum ScheduleTarget<'a> {
    /// This schedule (waiting for its lock if another evaluation holds it).
    Id(&'a str),
    /// The earliest due schedule that no other evaluation holds.
    Due,
}

/// The outcome of an evaluation.
#[derive(Debug)]
pub struct Evaluated<T> {
    /// The evaluated schedule's id.
    pub schedule_id: String,
    /// What the decision function returned besides its change.
    pub value: T,
    /// The enqueue result of each requested run, in request order (empty when nothing changed).
    pub started: Vec<Enqueued>,
}

/// When a scheduler should look again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleWakeup {
    /// The earliest next fire time of any schedule, epoch ms.
    pub due_at_ms: Option<i64>,
    /// Runs whose completion makes a schedule due (open runs of `wake_on_finish` schedules).
    pub watch_runs: Vec<String>,
}

fn schedule_from_row(row: &PgRow) -> Result<ScheduleRow> {
    Ok(ScheduleRow {
        schedule_id: row.try_get("schedule_id")?,
        definition: row.try_get("definition")?,
        state: row.try_get("state")?,
        next_fire_at_ms: row.try_get("next_fire_at_ms")?,
        running: row.try_get("running")?,
        wake_on_finish: row.try_get("wake_on_finish")?,
        version: row.try_get("version")?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
    })
}

impl SystemDatabase {
    /// Creates a schedule; [`Error::ScheduleExists`] when the id is taken.
    pub async fn create_schedule(&self, schedule: &NewSchedule) -> Result<ScheduleRow> {
        validate_text("schedule id", &schedule.schedule_id)?;
        self.check_size("schedule definition", &schedule.definition.to_string())?;
        let now = crate::now_ms();
        let sql = self.sql(&format!(
            "INSERT INTO {{s}}.dbosify_schedules (schedule_id, definition, state, next_fire_at_ms,
                 created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (schedule_id) DO NOTHING
             RETURNING {SCHEDULE_COLUMNS}"
        ));
        let row = self
            .retry("create schedule", || {
                sqlx::query(&sql)
                    .bind(&schedule.schedule_id)
                    .bind(&schedule.definition)
                    .bind(&schedule.state)
                    .bind(schedule.next_fire_at_ms)
                    .bind(now)
                    .fetch_optional(self.pool())
            })
            .await?;
        let row = match row {
            Some(row) => schedule_from_row(&row)?,
            None => {
                // Taken, unless this is our own insert retried after a lost acknowledgement.
                let existing = self.schedule(&schedule.schedule_id).await?;
                match existing {
                    Some(e)
                        if e.created_at_ms == now
                            && e.version == 1
                            && e.definition == schedule.definition =>
                    {
                        e
                    }
                    _ => return Err(Error::ScheduleExists(schedule.schedule_id.clone())),
                }
            }
        };
        self.notify(WakeKey::Schedules);
        debug!(schedule_id = %schedule.schedule_id, "schedule created");
        Ok(row)
    }

    /// The schedule's row, or `None`.
    pub async fn schedule(&self, schedule_id: &str) -> Result<Option<ScheduleRow>> {
        let sql = self.sql(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM {{s}}.dbosify_schedules WHERE schedule_id = $1"
        ));
        let row = self
            .retry("read schedule", || {
                sqlx::query(&sql)
                    .bind(schedule_id)
                    .fetch_optional(self.pool())
            })
            .await?;
        row.as_ref().map(schedule_from_row).transpose()
    }

    /// Up to `limit` schedules with ids after `after` (all when `None`), in id order.
    pub async fn list_schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ScheduleRow>> {
        let sql = self.sql(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM {{s}}.dbosify_schedules
              WHERE $1::TEXT IS NULL OR schedule_id > $1
              ORDER BY schedule_id LIMIT $2"
        ));
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let rows = self
            .retry("list schedules", || {
                sqlx::query(&sql)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(self.pool())
            })
            .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// Deletes a schedule (runs it started are left alone). `false` when it did not exist.
    pub async fn delete_schedule(&self, schedule_id: &str) -> Result<bool> {
        let sql = self.sql("DELETE FROM {s}.dbosify_schedules WHERE schedule_id = $1");
        let done = self
            .retry("delete schedule", || {
                sqlx::query(&sql).bind(schedule_id).execute(self.pool())
            })
            .await?;
        let deleted = done.rows_affected() > 0;
        if deleted {
            self.notify(WakeKey::Schedules);
            debug!(schedule_id, "schedule deleted");
        }
        Ok(deleted)
    }

    /// When a scheduler should evaluate next: the earliest fire time, and the runs whose
    /// completion makes a schedule due.
    pub async fn next_schedule_wakeup(&self) -> Result<ScheduleWakeup> {
        let sql = self.sql(
            "SELECT (SELECT min(next_fire_at_ms) FROM {s}.dbosify_schedules) AS due,
                    ARRAY(SELECT DISTINCT unnest(running) FROM {s}.dbosify_schedules
                           WHERE wake_on_finish) AS watch",
        );
        let row = self
            .retry("next schedule wake-up", || {
                sqlx::query(&sql).fetch_one(self.pool())
            })
            .await?;
        Ok(ScheduleWakeup {
            due_at_ms: row.try_get("due")?,
            watch_runs: row.try_get("watch")?,
        })
    }

    /// Evaluates one schedule in one transaction (see the module documentation).
    ///
    /// `decide` gets the locked row and the current status of its open runs (runs that no
    /// longer exist are left out) and returns the change to write, or `None` to write nothing,
    /// plus a value handed back to the caller. It may be called more than once (the transaction
    /// is retried after transient failures), so it must not have side effects.
    ///
    /// Returns `Ok(None)` when the target is [`ScheduleTarget::Due`] and nothing is due;
    /// [`Error::UnknownSchedule`] when an [`ScheduleTarget::Id`] does not exist.
    pub async fn evaluate_schedule<T, F>(
        &self,
        target: ScheduleTarget<'_>,
        decide: F,
    ) -> Result<Option<Evaluated<T>>>
    where
        F: FnMut(&ScheduleRow, &[WorkflowStatus]) -> (Option<ScheduleChange>, T),
    {
        if let ScheduleTarget::Id(id) = target {
            validate_text("schedule id", id)?;
        }
        let select = match target {
            ScheduleTarget::Id(_) => self.sql(&format!(
                "SELECT {SCHEDULE_COLUMNS} FROM {{s}}.dbosify_schedules
                  WHERE schedule_id = $1 FOR UPDATE"
            )),
            ScheduleTarget::Due => self.sql(&format!(
                "SELECT {SCHEDULE_COLUMNS} FROM {{s}}.dbosify_schedules s
                  WHERE s.next_fire_at_ms <= $1
                     OR (s.wake_on_finish AND NOT EXISTS (
                            SELECT 1 FROM {{s}}.workflow_status w
                             WHERE w.workflow_uuid = ANY(s.running)
                               AND w.status IN ('ENQUEUED', 'PENDING', 'DELAYED')))
                  ORDER BY s.next_fire_at_ms NULLS LAST
                  LIMIT 1 FOR UPDATE OF s SKIP LOCKED"
            )),
        };
        let statuses = self.sql(&format!(
            "SELECT {STATUS_COLUMNS} FROM {{s}}.workflow_status WHERE workflow_uuid = ANY($1)"
        ));
        let update = self.sql(
            "UPDATE {s}.dbosify_schedules
                SET definition = COALESCE($2, definition), state = $3, next_fire_at_ms = $4,
                    running = $5, wake_on_finish = $6, version = version + 1, updated_at = $7
              WHERE schedule_id = $1",
        );
        // Shared by the attempts; locked only around the (synchronous) call.
        let decide = std::sync::Mutex::new(decide);
        let result = self
            .retry("evaluate schedule", || async {
                let mut tx = self.pool().begin().await?;
                let query = sqlx::query(&select);
                let query = match target {
                    ScheduleTarget::Id(id) => query.bind(id),
                    ScheduleTarget::Due => query.bind(crate::now_ms()),
                };
                let Some(row) = query.fetch_optional(&mut *tx).await? else {
                    return match target {
                        ScheduleTarget::Id(id) => Err(Error::UnknownSchedule(id.to_string())),
                        ScheduleTarget::Due => Ok(None),
                    };
                };
                let row = schedule_from_row(&row)?;
                let runs = sqlx::query(&statuses)
                    .bind(&row.running)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(status_from_row)
                    .collect::<Result<Vec<_>>>()?;
                let (change, value) = {
                    let mut f = decide.lock().unwrap_or_else(|p| p.into_inner());
                    (*f)(&row, &runs)
                };
                let Some(change) = change else {
                    tx.rollback().await?;
                    return Ok(Some((
                        row.schedule_id,
                        value,
                        Vec::new(),
                        Vec::new(),
                        false,
                    )));
                };
                if let Some(d) = &change.definition {
                    self.check_size("schedule definition", &d.to_string())?;
                }
                let mut cancelled = Vec::new();
                for (run, reason) in &change.cancel {
                    if let Some(queue) = self.cancel_in(&mut tx, run, Some(reason)).await? {
                        cancelled.push((run.clone(), queue));
                    }
                }
                let mut started = Vec::with_capacity(change.start.len());
                for request in &change.start {
                    started.push(self.enqueue_in(&mut tx, request).await?);
                }
                let mut running: Vec<String> = runs
                    .iter()
                    .filter(|r| {
                        !r.state.is_terminal()
                            && !change.cancel.iter().any(|(c, _)| c == &r.workflow_id)
                    })
                    .map(|r| r.workflow_id.clone())
                    .collect();
                for e in &started {
                    if let Enqueued::Created(s) = e
                        && !running.contains(&s.workflow_id)
                    {
                        running.push(s.workflow_id.clone());
                    }
                }
                sqlx::query(&update)
                    .bind(&row.schedule_id)
                    .bind(&change.definition)
                    .bind(&change.state)
                    .bind(change.next_fire_at_ms)
                    .bind(&running)
                    .bind(change.wake_on_finish)
                    .bind(crate::now_ms())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Some((row.schedule_id, value, started, cancelled, true)))
            })
            .await?;
        let Some((schedule_id, value, started, cancelled, changed)) = result else {
            return Ok(None);
        };
        for (run, queue) in &cancelled {
            self.notify_finished(run, queue.as_deref());
        }
        for e in &started {
            self.notify_enqueued(e);
        }
        if changed {
            self.notify(WakeKey::Schedules);
            debug!(schedule_id = %schedule_id, started = started.len(), "schedule evaluated");
        }
        Ok(Some(Evaluated {
            schedule_id,
            value,
            started,
        }))
    }
}

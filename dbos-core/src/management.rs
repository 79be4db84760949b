//! Management: list runs with filters, cancel, resume, fork from a checkpoint, and delete runs
//! older than a retention age.
//!
//! Every filter value is bound as a statement parameter; the statement text is built only from
//! fixed fragments and the pre-quoted schema.

use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::PgRow;
use tracing::{debug, info};

use crate::SystemDatabase;
use crate::db::validate_text;
use crate::error::{Error, Result};
use crate::notifier::WakeKey;
use crate::workflows::{RunState, STATUS_COLUMNS, WorkflowStatus, status_from_row};

/// Filters of [`SystemDatabase::list_workflows`]; empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Any of these workflow names.
    pub names: Vec<String>,
    /// Any of these states.
    pub states: Vec<RunState>,
    /// Any of these queues.
    pub queue_names: Vec<String>,
    /// Created at or after (epoch ms).
    pub created_after_ms: Option<i64>,
    /// Created before (epoch ms).
    pub created_before_ms: Option<i64>,
    /// Updated at or after (epoch ms).
    pub updated_after_ms: Option<i64>,
    /// Updated before (epoch ms).
    pub updated_before_ms: Option<i64>,
    /// Run id starts with.
    pub id_prefix: Option<String>,
    /// Attributes contain this JSON object (`@>`).
    pub attributes: Option<serde_json::Value>,
    /// Most rows returned.
    pub limit: Option<i64>,
    /// Rows skipped.
    pub offset: Option<i64>,
    /// Newest first (default oldest first).
    pub newest_first: bool,
}

/// A value bound to a list query.
enum Bind {
    Texts(Vec<String>),
    Int(i64),
    Text(String),
    Json(serde_json::Value),
}

/// Escapes `\`, `%` and `_` so that `value` matches itself literally in a `LIKE … ESCAPE '\'`.
fn escape_like(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Runs eligible for deletion per statement of [`SystemDatabase::delete_older_than`].
const DELETE_BATCH: i64 = 10_000;

/// A boolean filter over `workflow_status` produced by a caller's query parser (e.g. a
/// visibility query): `sql` is made only of fixed fragments written by that parser, with one
/// `$?` placeholder per entry of `binds`, in order. User input travels only in `binds`.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// The expression (column names of `workflow_status`, operators, `$?` placeholders).
    pub sql: String,
    /// The values of the placeholders, in order.
    pub binds: Vec<FilterValue>,
}

/// A value bound to a [`RunFilter`] placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    /// Text.
    Text(String),
    /// JSON (binds as `jsonb`).
    Json(serde_json::Value),
}

impl RunFilter {
    /// The expression with `$?` numbered from `$first`, and the number after the last.
    fn numbered(&self, first: usize) -> (String, usize) {
        let mut out = String::with_capacity(self.sql.len() + 8);
        let mut n = first;
        let mut rest = self.sql.as_str();
        while let Some(i) = rest.find("$?") {
            out.push_str(&rest[..i]);
            out.push_str(&format!("${n}"));
            n += 1;
            rest = &rest[i + 2..];
        }
        out.push_str(rest);
        (out, n)
    }

    fn check(&self) -> Result<()> {
        if self.sql.matches("$?").count() != self.binds.len() {
            return Err(Error::InvalidName {
                what: "run filter",
                value: self.sql.chars().take(80).collect(),
                reason: "placeholders and bound values differ in number",
            });
        }
        Ok(())
    }
}

fn bind_filter<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    binds: &'q [FilterValue],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    for b in binds {
        q = match b {
            FilterValue::Text(v) => q.bind(v),
            FilterValue::Json(v) => q.bind(v),
        };
    }
    q
}

impl SystemDatabase {
    /// One page of the runs matching `filter`, newest first (creation time, then id, both
    /// descending), starting after `after` (the creation time and id of the last run of the
    /// previous page).
    pub async fn list_runs_where(
        &self,
        filter: &RunFilter,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<WorkflowStatus>> {
        filter.check()?;
        let (cond, next) = filter.numbered(1);
        let mut sql = format!(
            "SELECT {STATUS_COLUMNS} FROM {{s}}.workflow_status WHERE ({})",
            if cond.trim().is_empty() {
                "TRUE"
            } else {
                &cond
            }
        );
        if after.is_some() {
            sql.push_str(&format!(
                " AND (created_at, workflow_uuid) < (${}, ${})",
                next,
                next + 1
            ));
        }
        let limit_at = if after.is_some() { next + 2 } else { next };
        sql.push_str(&format!(
            " ORDER BY created_at DESC, workflow_uuid DESC LIMIT ${limit_at}"
        ));
        let sql = self.sql(&sql);
        let rows: Vec<PgRow> = self
            .retry("list runs", || {
                let mut q = bind_filter(sqlx::query(&sql), &filter.binds);
                if let Some((t, id)) = &after {
                    q = q.bind(t).bind(id);
                }
                q.bind(limit).fetch_all(self.pool())
            })
            .await?;
        rows.iter().map(status_from_row).collect()
    }

    /// Counts the runs matching `filter`, grouped by `group_by` when given (a fixed SQL
    /// expression over `workflow_status` written by the caller, never user input). Returns
    /// (group value, count) pairs ordered by group value; without grouping one pair with `None`.
    pub async fn count_runs_where(
        &self,
        filter: &RunFilter,
        group_by: Option<&str>,
    ) -> Result<Vec<(Option<String>, i64)>> {
        filter.check()?;
        let (cond, _) = filter.numbered(1);
        let cond = if cond.trim().is_empty() {
            "TRUE".to_string()
        } else {
            cond
        };
        let sql = match group_by {
            Some(g) => format!(
                "SELECT ({g})::text AS g, count(*) AS n FROM {{s}}.workflow_status WHERE ({cond}) \
                 GROUP BY 1 ORDER BY 1"
            ),
            None => format!(
                "SELECT NULL::text AS g, count(*) AS n FROM {{s}}.workflow_status WHERE ({cond})"
            ),
        };
        let sql = self.sql(&sql);
        let rows: Vec<PgRow> = self
            .retry("count runs", || {
                bind_filter(sqlx::query(&sql), &filter.binds).fetch_all(self.pool())
            })
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("g")?, r.try_get("n")?)))
            .collect()
    }
}

impl SystemDatabase {
    /// Lists runs matching the filter, ordered by creation time (then id), oldest first unless
    /// `newest_first`.
    pub async fn list_workflows(&self, filter: &ListFilter) -> Result<Vec<WorkflowStatus>> {
        let mut clauses: Vec<String> = Vec::new();
        let mut binds: Vec<Bind> = Vec::new();
        // Each clause names its parameter by position; `p` is the next one.
        let mut push = |template: &str, value: Bind| {
            binds.push(value);
            clauses.push(template.replace("$?", &format!("${}", binds.len())));
        };
        if !filter.names.is_empty() {
            push("name = ANY($?)", Bind::Texts(filter.names.clone()));
        }
        if !filter.states.is_empty() {
            let states = filter
                .states
                .iter()
                .map(|s| s.as_str().to_string())
                .collect();
            push("status = ANY($?)", Bind::Texts(states));
        }
        if !filter.queue_names.is_empty() {
            push(
                "queue_name = ANY($?)",
                Bind::Texts(filter.queue_names.clone()),
            );
        }
        if let Some(t) = filter.created_after_ms {
            push("created_at >= $?", Bind::Int(t));
        }
        if let Some(t) = filter.created_before_ms {
            push("created_at < $?", Bind::Int(t));
        }
        if let Some(t) = filter.updated_after_ms {
            push("updated_at >= $?", Bind::Int(t));
        }
        if let Some(t) = filter.updated_before_ms {
            push("updated_at < $?", Bind::Int(t));
        }
        if let Some(p) = &filter.id_prefix
            && !p.is_empty()
        {
            push(
                "workflow_uuid LIKE $? || '%' ESCAPE '\\'",
                Bind::Text(escape_like(p)),
            );
        }
        if let Some(a) = &filter.attributes {
            if !a.is_object() {
                return Err(Error::InvalidName {
                    what: "attributes filter",
                    value: a.to_string().chars().take(80).collect(),
                    reason: "must be a JSON object",
                });
            }
            push("attributes @> $?::jsonb", Bind::Json(a.clone()));
        }
        for (what, v) in [("limit", filter.limit), ("offset", filter.offset)] {
            if v.is_some_and(|v| v < 0) {
                return Err(Error::InvalidName {
                    what,
                    value: v.unwrap_or_default().to_string(),
                    reason: "must not be negative",
                });
            }
        }
        let order = if filter.newest_first { "DESC" } else { "ASC" };
        let mut sql = format!("SELECT {STATUS_COLUMNS} FROM {{s}}.workflow_status");
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        sql.push_str(&format!(
            " ORDER BY created_at {order}, workflow_uuid {order}"
        ));
        if let Some(l) = filter.limit {
            binds.push(Bind::Int(l));
            sql.push_str(&format!(" LIMIT ${}", binds.len()));
        }
        if let Some(o) = filter.offset {
            binds.push(Bind::Int(o));
            sql.push_str(&format!(" OFFSET ${}", binds.len()));
        }
        let sql = self.sql(&sql);
        let rows: Vec<PgRow> = self
            .retry("list workflows", || {
                let mut q = sqlx::query(&sql);
                for b in &binds {
                    q = match b {
                        Bind::Texts(v) => q.bind(v),
                        Bind::Int(v) => q.bind(v),
                        Bind::Text(v) => q.bind(v),
                        Bind::Json(v) => q.bind(v),
                    };
                }
                q.fetch_all(self.pool())
            })
            .await?;
        rows.iter().map(status_from_row).collect()
    }

    /// Cancels a run that has not finished (ENQUEUED, DELAYED or PENDING become CANCELLED, with
    /// an optional serialized reason). A finished run is left as it is. Wakes its awaiters and
    /// its executor.
    ///
    /// The run keeps its queue (so [`SystemDatabase::resume`] puts it back there) and its
    /// checkpoints; its deduplication id is released. A PENDING run's executor learns of the
    /// cancellation through its status (it is woken on [`WakeKey::Status`]) and must not record
    /// another outcome ([`SystemDatabase::complete`] refuses it). An unknown run is
    /// [`Error::UnknownRun`].
    pub async fn cancel(&self, workflow_id: &str, reason: Option<&str>) -> Result<()> {
        let sql = self.prepare_cancel(workflow_id, reason)?;
        let now = crate::now_ms();
        let row = self
            .retry("cancel", || {
                sqlx::query(&sql)
                    .bind(workflow_id)
                    .bind(reason)
                    .bind(now)
                    .fetch_optional(self.pool())
            })
            .await?
            .ok_or_else(|| Error::UnknownRun(workflow_id.to_string()))?;
        if let Some(queue) = cancelled_queue(&row)? {
            info!(workflow_id, "run cancelled");
            self.notify_finished(workflow_id, queue.as_deref());
        } else {
            let status: Option<String> = row.try_get("status")?;
            debug!(workflow_id, ?status, "cancel: run already finished");
        }
        Ok(())
    }

    /// [`SystemDatabase::cancel`] inside the caller's transaction. Returns whether this call
    /// cancelled the run, with its queue; the caller publishes
    /// [`SystemDatabase::notify_finished`] after its commit. An unknown run is a no-op.
    pub(crate) async fn cancel_in(
        &self,
        conn: &mut sqlx::PgConnection,
        workflow_id: &str,
        reason: Option<&str>,
    ) -> Result<Option<Option<String>>> {
        let sql = self.prepare_cancel(workflow_id, reason)?;
        let row = sqlx::query(&sql)
            .bind(workflow_id)
            .bind(reason)
            .bind(crate::now_ms())
            .fetch_optional(&mut *conn)
            .await?;
        match row {
            Some(row) => cancelled_queue(&row),
            None => Ok(None),
        }
    }

    /// Validates a cancel and builds its statement (binds: run id, reason, now).
    fn prepare_cancel(&self, workflow_id: &str, reason: Option<&str>) -> Result<String> {
        validate_text("workflow id", workflow_id)?;
        if let Some(r) = reason {
            self.check_size("cancellation reason", r)?;
        }
        Ok(self.sql(
            "WITH existing AS (
                SELECT status FROM {s}.workflow_status WHERE workflow_uuid = $1),
             upd AS (
                UPDATE {s}.workflow_status
                   SET status = 'CANCELLED', error = $2, completed_at = $3, updated_at = $3,
                       deduplication_id = NULL
                 WHERE workflow_uuid = $1 AND status IN ('ENQUEUED', 'DELAYED', 'PENDING')
                RETURNING queue_name)
             SELECT e.status, EXISTS (SELECT 1 FROM upd) AS cancelled,
                    (SELECT queue_name FROM upd) AS queue_name
               FROM existing e",
        ))
    }

    /// Puts a cancelled, failed or stuck run back in its queue (ENQUEUED), keeping its
    /// checkpoints, so it continues from where it stopped.
    ///
    /// Accepted states: CANCELLED, ERROR, MAX_RECOVERY_ATTEMPTS_EXCEEDED, and ENQUEUED/DELAYED
    /// (a DELAYED run becomes claimable at once). The run's executor, output, error, start
    /// time, deadline (a fresh timeout window starts at the next claim) and recovery attempts
    /// are reset.
    ///
    /// Refused with [`Error::WrongState`]: a PENDING run — it is held by a live executor (or
    /// will be taken over automatically when that executor's lease lapses), and putting it back
    /// in the queue would let two executors run it at once; cancel it first — a SUCCESS run
    /// (fork it instead), and a run without a queue. An unknown run is [`Error::UnknownRun`].
    pub async fn resume(&self, workflow_id: &str) -> Result<()> {
        validate_text("workflow id", workflow_id)?;
        let now = crate::now_ms();
        let sql = self.sql(
            "WITH existing AS (
                SELECT status, queue_name FROM {s}.workflow_status WHERE workflow_uuid = $1),
             upd AS (
                UPDATE {s}.workflow_status
                   SET status = 'ENQUEUED', executor_id = NULL, recovery_attempts = 0,
                       output = NULL, error = NULL, completed_at = NULL,
                       started_at_epoch_ms = NULL, workflow_deadline_epoch_ms = NULL,
                       dbosify_claim_token = NULL, updated_at = $2
                 WHERE workflow_uuid = $1 AND queue_name IS NOT NULL
                   AND status IN ('CANCELLED', 'ERROR', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED',
                                  'ENQUEUED', 'DELAYED')
                RETURNING queue_name)
             SELECT e.status, e.queue_name, EXISTS (SELECT 1 FROM upd) AS resumed
               FROM existing e",
        );
        let row = self
            .retry("resume", || {
                sqlx::query(&sql)
                    .bind(workflow_id)
                    .bind(now)
                    .fetch_optional(self.pool())
            })
            .await?
            .ok_or_else(|| Error::UnknownRun(workflow_id.to_string()))?;
        let status: String = row
            .try_get::<Option<String>, _>("status")?
            .unwrap_or_default();
        let queue: Option<String> = row.try_get("queue_name")?;
        if !row.try_get::<bool, _>("resumed")? {
            let detail = match (RunState::parse(&status), &queue) {
                (_, None) => "it has no queue to resume on",
                (Some(RunState::Pending), _) => {
                    "it is running; cancel it first (a dead executor's runs are taken over \
                     automatically)"
                }
                (Some(RunState::Success), _) => "it succeeded; fork it to run it again",
                _ => "it cannot be resumed from this state",
            };
            return Err(Error::WrongState {
                workflow_id: workflow_id.to_string(),
                status,
                detail,
            });
        }
        info!(workflow_id, from = %status, "run resumed");
        self.notify(WakeKey::Status(workflow_id.to_string()));
        if let Some(q) = queue {
            self.notify(WakeKey::Queue(q));
        }
        Ok(())
    }

    /// Starts a new run (ENQUEUED) with the same name, queue and input, carrying the checkpoints
    /// before `start_step`. Returns its id (`new_id`, or a fresh uuid).
    ///
    /// In one transaction: the new run copies the original's name, queue, inputs,
    /// serialization, attributes, priority, timeout and application version, with
    /// `forked_from` = the original; the original is marked `was_forked_from`; checkpoints
    /// (`operation_outputs`) and event history (`workflow_events_history`) with
    /// `function_id < start_step` are copied, and the new run's current events are the latest
    /// copied value of each key. Messages are not copied.
    ///
    /// Retrying a fork whose acknowledgement was lost returns the same id (an existing run with
    /// that id forked from the same original counts as done); `new_id` naming any other existing
    /// run is [`Error::WrongState`]. A negative `start_step` is refused; an unknown original is
    /// [`Error::UnknownRun`].
    pub async fn fork(
        &self,
        workflow_id: &str,
        start_step: i32,
        new_id: Option<&str>,
    ) -> Result<String> {
        validate_text("workflow id", workflow_id)?;
        if let Some(n) = new_id {
            validate_text("forked workflow id", n)?;
        }
        if start_step < 0 {
            return Err(Error::InvalidName {
                what: "fork start step",
                value: start_step.to_string(),
                reason: "must not be negative",
            });
        }
        let fork_id = new_id.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
        if fork_id == workflow_id {
            return Err(Error::InvalidName {
                what: "forked workflow id",
                value: fork_id,
                reason: "must differ from the original run's id",
            });
        }
        let now = crate::now_ms();
        let queue = self
            .retry("fork", || {
                self.fork_once(workflow_id, &fork_id, start_step, now)
            })
            .await?;
        info!(workflow_id, fork_id = %fork_id, start_step, "run forked");
        self.notify(WakeKey::Queue(queue));
        Ok(fork_id)
    }

    /// One attempt of [`Self::fork`]; returns the new run's queue.
    async fn fork_once(
        &self,
        workflow_id: &str,
        fork_id: &str,
        start_step: i32,
        now: i64,
    ) -> Result<String> {
        let mut tx = self.pool().begin().await?;
        let insert = self.sql(
            "WITH orig AS (
                SELECT * FROM {s}.workflow_status WHERE workflow_uuid = $1 FOR SHARE),
             ins AS (
                INSERT INTO {s}.workflow_status (workflow_uuid, status, name, queue_name, inputs,
                    serialization, created_at, updated_at, priority, workflow_timeout_ms,
                    attributes, application_version, forked_from, recovery_attempts,
                    class_name, config_name, authenticated_user, assumed_role,
                    authenticated_roles, application_name)
                SELECT $2, 'ENQUEUED', o.name, o.queue_name, o.inputs, o.serialization, $3, $3,
                       o.priority, o.workflow_timeout_ms, o.attributes, o.application_version,
                       o.workflow_uuid, 0, o.class_name, o.config_name, o.authenticated_user,
                       o.assumed_role, o.authenticated_roles, o.application_name
                  FROM orig o WHERE o.queue_name IS NOT NULL
                ON CONFLICT (workflow_uuid) DO NOTHING
                RETURNING workflow_uuid)
             SELECT o.queue_name,
                    EXISTS (SELECT 1 FROM ins) AS inserted,
                    (SELECT f.forked_from FROM {s}.workflow_status f
                      WHERE f.workflow_uuid = $2) AS existing_forked_from,
                    (SELECT f.status FROM {s}.workflow_status f
                      WHERE f.workflow_uuid = $2) AS existing_status
               FROM orig o",
        );
        let row = sqlx::query(&insert)
            .bind(workflow_id)
            .bind(fork_id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::UnknownRun(workflow_id.to_string()))?;
        let Some(queue) = row.try_get::<Option<String>, _>("queue_name")? else {
            return Err(Error::WrongState {
                workflow_id: workflow_id.to_string(),
                status: "without queue".to_string(),
                detail: "a run without a queue cannot be forked",
            });
        };
        if !row.try_get::<bool, _>("inserted")? {
            let existing_from: Option<String> = row.try_get("existing_forked_from")?;
            if existing_from.as_deref() == Some(workflow_id) {
                // This fork was already made (a retry after a lost acknowledgement).
                return Ok(queue);
            }
            let status: Option<String> = row.try_get("existing_status")?;
            return Err(Error::WrongState {
                workflow_id: fork_id.to_string(),
                status: status.unwrap_or_default(),
                detail: "the id chosen for the fork is taken by another run",
            });
        }
        let copy_outputs = self.sql(
            "INSERT INTO {s}.operation_outputs (workflow_uuid, function_id, function_name, output,
                 error, child_workflow_id, started_at_epoch_ms, completed_at_epoch_ms,
                 serialization, application_name)
             SELECT $2, function_id, function_name, output, error, child_workflow_id,
                    started_at_epoch_ms, completed_at_epoch_ms, serialization, application_name
               FROM {s}.operation_outputs
              WHERE workflow_uuid = $1 AND function_id < $3",
        );
        sqlx::query(&copy_outputs)
            .bind(workflow_id)
            .bind(fork_id)
            .bind(start_step)
            .execute(&mut *tx)
            .await?;
        let copy_events = self.sql(
            "WITH hist AS (
                INSERT INTO {s}.workflow_events_history (workflow_uuid, function_id, key, value,
                     serialization)
                SELECT $2, function_id, key, value, serialization
                  FROM {s}.workflow_events_history
                 WHERE workflow_uuid = $1 AND function_id < $3
                RETURNING function_id, key, value, serialization)
             INSERT INTO {s}.workflow_events (workflow_uuid, key, value, serialization)
             SELECT DISTINCT ON (key) $2, key, value, serialization
               FROM hist ORDER BY key, function_id DESC",
        );
        sqlx::query(&copy_events)
            .bind(workflow_id)
            .bind(fork_id)
            .bind(start_step)
            .execute(&mut *tx)
            .await?;
        let mark = self
            .sql("UPDATE {s}.workflow_status SET was_forked_from = TRUE WHERE workflow_uuid = $1");
        sqlx::query(&mark)
            .bind(workflow_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(queue)
    }

    /// Deletes finished runs last updated more than `age` ago (with their checkpoints, messages
    /// and events). Returns how many runs were deleted.
    ///
    /// The status and age are checked again on the row being deleted, so a run resumed
    /// concurrently is never deleted.
    ///
    /// Finished means SUCCESS, ERROR, CANCELLED or MAX_RECOVERY_ATTEMPTS_EXCEEDED; ENQUEUED,
    /// DELAYED and PENDING runs are never deleted. Deletes in batches of 10,000 runs, one
    /// commit each, so a large backlog does not hold one long transaction.
    pub async fn delete_older_than(&self, age: Duration) -> Result<u64> {
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = crate::now_ms().saturating_sub(age_ms);
        let sql = self.sql(
            "DELETE FROM {s}.workflow_status
              WHERE updated_at < $1
                AND status IN ('SUCCESS', 'ERROR', 'CANCELLED', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED')
                AND workflow_uuid IN (
                SELECT workflow_uuid FROM {s}.workflow_status
                 WHERE updated_at < $1
                   AND status IN ('SUCCESS', 'ERROR', 'CANCELLED', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED')
                 LIMIT $2)",
        );
        let mut total = 0u64;
        loop {
            let done = self
                .retry("delete old runs", || {
                    sqlx::query(&sql)
                        .bind(cutoff)
                        .bind(DELETE_BATCH)
                        .execute(self.pool())
                })
                .await?;
            total += done.rows_affected();
            if done.rows_affected() < u64::try_from(DELETE_BATCH).unwrap_or(u64::MAX) {
                break;
            }
        }
        if total > 0 {
            info!(deleted = total, "deleted old runs");
        }
        Ok(total)
    }
}

/// From a cancel statement's row: `Some(queue)` when the statement cancelled the run.
fn cancelled_queue(row: &sqlx::postgres::PgRow) -> Result<Option<Option<String>>> {
    if row.try_get::<bool, _>("cancelled")? {
        Ok(Some(row.try_get("queue_name")?))
    } else {
        Ok(None)
    }
}

//! Run lifecycle: enqueue (idempotent by id), status, completion (only while PENDING), and
//! awaiting a run's outcome from any process.

use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::PgRow;
use tracing::debug;

use crate::SystemDatabase;
use crate::checkpoints::{StepClose, StepWrite};
use crate::db::validate_text;
use crate::error::{Error, Result};
use crate::notifier::WakeKey;

/// The column list every `workflow_status` read selects; [`status_from_row`] maps it.
pub(crate) const STATUS_COLUMNS: &str = "workflow_uuid, status, name, queue_name, executor_id, \
     inputs, output, error, serialization, created_at, updated_at, started_at_epoch_ms, \
     completed_at, recovery_attempts, priority, deduplication_id, workflow_timeout_ms, \
     workflow_deadline_epoch_ms, parent_workflow_id, attributes, application_version, \
     forked_from, delay_until_epoch_ms";

/// Extra columns of the claim statements (the updated row is aliased `w`): whether the run has
/// checkpoints and unconsumed messages, read in the claim's own snapshot (see
/// [`ClaimFacts`]).
pub(crate) const CLAIM_FACT_COLUMNS: &str = "EXISTS (SELECT 1 FROM {s}.operation_outputs o
        WHERE o.workflow_uuid = w.workflow_uuid) AS dbosify_has_steps,
     EXISTS (SELECT 1 FROM {s}.notifications n
        WHERE n.destination_uuid = w.workflow_uuid AND NOT n.consumed) AS dbosify_has_messages";

/// How many times enqueue re-runs its statement when the id's row was inserted by a concurrent,
/// then-uncommitted enqueue (see [`SystemDatabase::enqueue`]).
const ENQUEUE_SNAPSHOT_RETRIES: usize = 5;

/// Maps a row selected with [`STATUS_COLUMNS`].
pub(crate) fn status_from_row(row: &PgRow) -> Result<WorkflowStatus> {
    let state: Option<String> = row.try_get("status")?;
    let state = state
        .as_deref()
        .and_then(RunState::parse)
        .ok_or_else(|| Error::Undecodable {
            what: "workflow status",
            reason: format!("unknown status {state:?}"),
        })?;
    Ok(WorkflowStatus {
        workflow_id: row.try_get("workflow_uuid")?,
        state,
        name: row
            .try_get::<Option<String>, _>("name")?
            .unwrap_or_default(),
        queue_name: row.try_get("queue_name")?,
        executor_id: row.try_get("executor_id")?,
        inputs: row.try_get("inputs")?,
        output: row.try_get("output")?,
        error: row.try_get("error")?,
        serialization: row.try_get("serialization")?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
        started_at_ms: row.try_get("started_at_epoch_ms")?,
        completed_at_ms: row.try_get("completed_at")?,
        recovery_attempts: row
            .try_get::<Option<i64>, _>("recovery_attempts")?
            .unwrap_or(0),
        priority: row.try_get("priority")?,
        deduplication_id: row.try_get("deduplication_id")?,
        timeout_ms: row.try_get("workflow_timeout_ms")?,
        deadline_epoch_ms: row.try_get("workflow_deadline_epoch_ms")?,
        parent_workflow_id: row.try_get("parent_workflow_id")?,
        attributes: row.try_get("attributes")?,
        application_version: row.try_get("application_version")?,
        forked_from: row.try_get("forked_from")?,
        delay_until_epoch_ms: row.try_get("delay_until_epoch_ms")?,
        claim_facts: match (
            row.try_get::<bool, _>("dbosify_has_steps"),
            row.try_get::<bool, _>("dbosify_has_messages"),
        ) {
            (Ok(has_steps), Ok(has_messages)) => Some(ClaimFacts {
                has_steps,
                has_messages,
            }),
            _ => None,
        },
    })
}

/// The status column of `workflow_status`, with DBOS's spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Waiting in its queue for a worker.
    Enqueued,
    /// Waiting for its start delay to pass.
    Delayed,
    /// Claimed by an executor and running.
    Pending,
    /// Finished with an output.
    Success,
    /// Finished with an error.
    Error,
    /// Cancelled.
    Cancelled,
    /// Recovered too many times.
    MaxRecoveryAttemptsExceeded,
}

impl RunState {
    /// DBOS's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Enqueued => "ENQUEUED",
            RunState::Delayed => "DELAYED",
            RunState::Pending => "PENDING",
            RunState::Success => "SUCCESS",
            RunState::Error => "ERROR",
            RunState::Cancelled => "CANCELLED",
            RunState::MaxRecoveryAttemptsExceeded => "MAX_RECOVERY_ATTEMPTS_EXCEEDED",
        }
    }

    /// Parses DBOS's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ENQUEUED" => RunState::Enqueued,
            "DELAYED" => RunState::Delayed,
            "PENDING" => RunState::Pending,
            "SUCCESS" => RunState::Success,
            "ERROR" => RunState::Error,
            "CANCELLED" => RunState::Cancelled,
            "MAX_RECOVERY_ATTEMPTS_EXCEEDED" => RunState::MaxRecoveryAttemptsExceeded,
            _ => return None,
        })
    }

    /// Whether the run has finished (no further transitions except resume/fork).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Success
                | RunState::Error
                | RunState::Cancelled
                | RunState::MaxRecoveryAttemptsExceeded
        )
    }
}

/// A request to enqueue a run.
#[derive(Debug, Clone)]
pub struct EnqueueRequest {
    /// The run id; also the idempotency key: enqueuing an existing id returns that run.
    pub workflow_id: String,
    /// The registered workflow name.
    pub name: String,
    /// The queue it waits in.
    pub queue_name: String,
    /// Serialized input.
    pub inputs: String,
    /// The serialization format label of `inputs` (and of the eventual output/error).
    pub serialization: Option<String>,
    /// Do not start before this long after enqueue (status DELAYED until then).
    pub delay: Option<Duration>,
    /// Lower runs first; default 0.
    pub priority: i32,
    /// At most one ENQUEUED/PENDING run of the queue may hold this id.
    pub deduplication_id: Option<String>,
    /// Run timeout, counted from the claim.
    pub timeout: Option<Duration>,
    /// Searchable attributes (JSON object).
    pub attributes: Option<serde_json::Value>,
    /// The run that started this one, if any.
    pub parent_workflow_id: Option<String>,
    /// The application version it must run on, if any.
    pub application_version: Option<String>,
    /// Create the run only while its parent (`parent_workflow_id`) is PENDING; otherwise the
    /// enqueue is refused with [`Error::ParentNotPending`] (an existing run of this id is still
    /// returned). The statement holds a share lock on the parent's row until it commits, so a
    /// parent that closes with an `UPDATE` of its row either waits for this run to be committed
    /// (and then sees it) or is closed before this statement looks (and then nothing is created).
    pub only_while_parent_pending: bool,
}

impl EnqueueRequest {
    /// A request with defaults for everything optional.
    pub fn new(
        workflow_id: impl Into<String>,
        name: impl Into<String>,
        queue_name: impl Into<String>,
        inputs: impl Into<String>,
    ) -> Self {
        Self {
            workflow_id: workflow_id.into(),
            name: name.into(),
            queue_name: queue_name.into(),
            inputs: inputs.into(),
            serialization: None,
            delay: None,
            priority: 0,
            deduplication_id: None,
            timeout: None,
            attributes: None,
            parent_workflow_id: None,
            application_version: None,
            only_while_parent_pending: false,
        }
    }
}

/// What enqueue did.
#[derive(Debug, Clone)]
pub enum Enqueued {
    /// A new run was created.
    Created(WorkflowStatus),
    /// The id already existed; nothing was changed.
    Existing(WorkflowStatus),
}

impl Enqueued {
    /// The run, new or existing.
    pub fn status(&self) -> &WorkflowStatus {
        match self {
            Enqueued::Created(s) | Enqueued::Existing(s) => s,
        }
    }
}

/// One row of `workflow_status`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowStatus {
    /// Run id.
    pub workflow_id: String,
    /// Current state.
    pub state: RunState,
    /// Workflow name.
    pub name: String,
    /// Queue.
    pub queue_name: Option<String>,
    /// Executor holding (or last holding) it.
    pub executor_id: Option<String>,
    /// Serialized input.
    pub inputs: Option<String>,
    /// Serialized output, when SUCCESS.
    pub output: Option<String>,
    /// Serialized error (or cancellation reason), when ERROR or CANCELLED.
    pub error: Option<String>,
    /// Serialization label.
    pub serialization: Option<String>,
    /// Creation time, epoch ms.
    pub created_at_ms: i64,
    /// Last update time, epoch ms.
    pub updated_at_ms: i64,
    /// Claim time, epoch ms.
    pub started_at_ms: Option<i64>,
    /// Completion time, epoch ms.
    pub completed_at_ms: Option<i64>,
    /// Number of times it was claimed after the first.
    pub recovery_attempts: i64,
    /// Priority.
    pub priority: i32,
    /// Deduplication id.
    pub deduplication_id: Option<String>,
    /// Timeout in ms.
    pub timeout_ms: Option<i64>,
    /// Absolute deadline, epoch ms (set at claim from the timeout).
    pub deadline_epoch_ms: Option<i64>,
    /// Parent run.
    pub parent_workflow_id: Option<String>,
    /// Searchable attributes.
    pub attributes: Option<serde_json::Value>,
    /// Application version.
    pub application_version: Option<String>,
    /// The run this one was forked from.
    pub forked_from: Option<String>,
    /// Earliest start, epoch ms, when DELAYED.
    pub delay_until_epoch_ms: Option<i64>,
    /// What the claim that returned this row saw of the run; `None` on rows not returned by
    /// [`SystemDatabase::claim`] (or returned by it after a lost acknowledgement).
    pub claim_facts: Option<ClaimFacts>,
}

/// Facts read by a claim in its own snapshot, so that the claimer may skip reads: a run with
/// no checkpoints has no history to replay, and messages sent after the claim's snapshot were
/// notified after it (see [`SystemDatabase::register_waiter_since`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimFacts {
    /// The run has at least one checkpoint.
    pub has_steps: bool,
    /// The run has at least one unconsumed message.
    pub has_messages: bool,
}

/// A terminal outcome to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Status SUCCESS with this serialized output.
    Success(String),
    /// Status ERROR with this serialized error.
    Error(String),
    /// Status CANCELLED, with an optional serialized reason in `error`.
    Cancelled(Option<String>),
}

/// A message written into a new run's inbox by the statement that creates the run.
pub(crate) struct FirstMessage<'a> {
    pub(crate) topic: &'a str,
    pub(crate) body: &'a str,
    pub(crate) message_id: &'a str,
}

/// What completion did.
#[derive(Debug, Clone)]
// The large variant is the rare path (the run was decided elsewhere); boxing it would change
// the public type.
#[allow(clippy::large_enum_variant)]
pub enum CompleteResult {
    /// This call recorded the outcome (or a retry of this same call had).
    Recorded,
    /// Someone else decided the run first (cancel, terminate, another executor); the local result
    /// is to be dropped. Holds the run as it is.
    AlreadyDecided(WorkflowStatus),
}

impl SystemDatabase {
    /// Enqueues a run. Idempotent by id: an existing id returns [`Enqueued::Existing`] and the run
    /// is never created or run twice. Wakes workers listening on the queue.
    ///
    /// A call retried after a lost acknowledgement still reports [`Enqueued::Created`] (the row
    /// carries the call's owner token), and concurrent enqueues of one id yield exactly one
    /// `Created`.
    pub async fn enqueue(&self, request: EnqueueRequest) -> Result<Enqueued> {
        self.enqueue_run(request, None).await
    }

    /// The one enqueue statement: insert-or-get of the run and, when `first_message` is given
    /// and this call creates the run, the insert of that message into its inbox (the message
    /// insert reads the run insert's RETURNING rows; the foreign key is checked at the end of the
    /// statement, when the run row exists).
    pub(crate) async fn enqueue_run(
        &self,
        request: EnqueueRequest,
        first_message: Option<FirstMessage<'_>>,
    ) -> Result<Enqueued> {
        let prepared = self.prepare_enqueue(&request, first_message.is_some())?;
        // The statement publishes the wake-ups of a run it creates when the inline slot is free
        // (see `notifier`); otherwise they are published after the commit.
        let mut keys = Vec::new();
        if first_message.is_some() {
            keys.push(WakeKey::Message(request.workflow_id.clone()));
        }
        if prepared.state == RunState::Enqueued {
            keys.push(WakeKey::Queue(request.queue_name.clone()));
        }
        let hints = self.hints(keys);
        // When a concurrent enqueue of the same id has not committed yet, the insert waits for
        // it and then does nothing, but the fallback read still uses the statement's snapshot,
        // taken before that commit, and finds no row. A new statement sees the committed row
        // (or, if that enqueue rolled back, inserts).
        let mut row = None;
        for _ in 0..ENQUEUE_SNAPSHOT_RETRIES {
            row = self
                .retry("enqueue", || {
                    prepared.execute(
                        self.pool(),
                        &request,
                        first_message.as_ref(),
                        (hints.channel(), hints.payloads()),
                    )
                })
                .await?;
            if row.is_some() {
                break;
            }
        }
        let row = row.ok_or_else(|| prepared.no_row(&request))?;
        let enqueued = prepared.result(&row)?;
        if let Enqueued::Created(_) = &enqueued {
            // A retry whose first attempt committed inserted nothing, so its statement carried
            // no hint: the hints are then published after the fact.
            hints.published(row.try_get::<i64, _>("hinted").unwrap_or(0) > 0);
        }
        Ok(enqueued)
    }

    /// Enqueues a run inside the caller's transaction (same statement and idempotency as
    /// [`SystemDatabase::enqueue`]). The caller publishes [`SystemDatabase::notify_enqueued`]
    /// after its commit. A retry of the enclosing transaction must call this again.
    pub(crate) async fn enqueue_in(
        &self,
        conn: &mut sqlx::PgConnection,
        request: &EnqueueRequest,
    ) -> Result<Enqueued> {
        let prepared = self.prepare_enqueue(request, false)?;
        for _ in 0..ENQUEUE_SNAPSHOT_RETRIES {
            if let Some(row) = prepared
                .execute(&mut *conn, request, None, ("", &[]))
                .await?
            {
                return prepared.result(&row);
            }
        }
        Err(prepared.no_row(request))
    }

    /// Wakes the workers of a run that was just created (after its commit).
    pub(crate) fn notify_enqueued(&self, enqueued: &Enqueued) {
        if let Enqueued::Created(status) = enqueued
            && status.state == RunState::Enqueued
            && let Some(queue) = &status.queue_name
        {
            self.notify(WakeKey::Queue(queue.clone()));
        }
    }

    /// Validates a request and builds its statement.
    fn prepare_enqueue(
        &self,
        request: &EnqueueRequest,
        with_message: bool,
    ) -> Result<PreparedEnqueue> {
        validate_text("workflow id", &request.workflow_id)?;
        validate_text("workflow name", &request.name)?;
        validate_text("queue name", &request.queue_name)?;
        if let Some(d) = &request.deduplication_id {
            validate_text("deduplication id", d)?;
        }
        self.check_size("workflow input", &request.inputs)?;
        if let Some(a) = &request.attributes
            && !a.is_object()
        {
            return Err(Error::InvalidName {
                what: "attributes",
                value: a.to_string().chars().take(80).collect(),
                reason: "must be a JSON object",
            });
        }
        let now = crate::now_ms();
        let delay_until = request.delay.map(|d| now + d.as_millis() as i64);
        let state = if delay_until.is_some() {
            RunState::Delayed
        } else {
            RunState::Enqueued
        };
        // Insert-or-get in one statement: the id is the idempotency key. The owner token
        // (DBOS's `owner_xid`), fresh per call and the same across its retries, tells a retry
        // whose first attempt committed (acknowledgement lost) that the row is its own.
        let owner = uuid::Uuid::new_v4().to_string();
        // The parent gate: the insert reads its one row, present only while the parent is
        // PENDING, and share-locks the parent's row until the commit.
        let gate = match (
            &request.parent_workflow_id,
            request.only_while_parent_pending,
        ) {
            (Some(_), true) => {
                "SELECT 1 FROM {s}.workflow_status
                  WHERE workflow_uuid = $12 AND status = 'PENDING' FOR SHARE"
            }
            (None, true) => "SELECT 1 WHERE false",
            (_, false) => "SELECT 1",
        };
        let message_cte = if with_message {
            ",
             msg AS (
                INSERT INTO {s}.notifications (destination_uuid, topic, message,
                    created_at_epoch_ms, message_uuid)
                SELECT workflow_uuid, $18, $19, $7, $20 FROM ins
                ON CONFLICT (message_uuid) DO NOTHING)"
        } else {
            ""
        };
        let sql = self.sql(&format!(
            "WITH gate AS ({gate}),
             ins AS (
                INSERT INTO {{s}}.workflow_status (workflow_uuid, status, name, queue_name, inputs,
                    serialization, created_at, updated_at, priority, deduplication_id,
                    workflow_timeout_ms, attributes, parent_workflow_id, application_version,
                    delay_until_epoch_ms, recovery_attempts, owner_xid)
                SELECT $1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, $11, $12, $13, $14, 0, $15
                  FROM gate
                ON CONFLICT (workflow_uuid) DO NOTHING
                RETURNING {STATUS_COLUMNS}, true AS created){message_cte}
             SELECT *, (SELECT count(pg_notify($16, p)) FROM unnest($17::text[]) AS p) AS hinted
               FROM ins
             UNION ALL
             SELECT {STATUS_COLUMNS}, owner_xid IS NOT DISTINCT FROM $15 AS created, 0 AS hinted
               FROM {{s}}.workflow_status
              WHERE workflow_uuid = $1 AND NOT EXISTS (SELECT 1 FROM ins)"
        ));
        Ok(PreparedEnqueue {
            sql,
            state,
            now,
            delay_until,
            owner,
        })
    }

    /// The run's row, or `None`.
    pub async fn status(&self, workflow_id: &str) -> Result<Option<WorkflowStatus>> {
        let sql = self.sql(&format!(
            "SELECT {STATUS_COLUMNS} FROM {{s}}.workflow_status WHERE workflow_uuid = $1"
        ));
        let row = self
            .retry("status", || {
                sqlx::query(&sql)
                    .bind(workflow_id)
                    .fetch_optional(self.pool())
            })
            .await?;
        row.as_ref().map(status_from_row).transpose()
    }

    /// The rows of those of `workflow_ids` that exist, in one statement (in no particular
    /// order).
    pub async fn statuses(&self, workflow_ids: &[String]) -> Result<Vec<WorkflowStatus>> {
        let sql = self.sql(&format!(
            "SELECT {STATUS_COLUMNS} FROM {{s}}.workflow_status WHERE workflow_uuid = ANY($1)"
        ));
        let rows = self
            .retry("statuses", || {
                sqlx::query(&sql).bind(workflow_ids).fetch_all(self.pool())
            })
            .await?;
        rows.iter().map(status_from_row).collect()
    }

    /// Records a terminal outcome, only while the run is PENDING and (when `executor_id` is given)
    /// held by that executor. Wakes everyone awaiting the run.
    ///
    /// Zero rows updated means someone else decided the run first (a cancel, another executor
    /// after a takeover, a resume that put it back in its queue): the row is re-read and returned
    /// as [`CompleteResult::AlreadyDecided`], and the caller drops its local result. The one
    /// exception is a row that already holds exactly this outcome (and, when `executor_id` is
    /// given, is held by that executor): that is this same call retried after its commit
    /// acknowledgement was lost, and it is [`CompleteResult::Recorded`].
    ///
    /// Completion releases the run's deduplication id, so the id may be enqueued again.
    pub async fn complete(
        &self,
        workflow_id: &str,
        executor_id: Option<&str>,
        outcome: &Outcome,
    ) -> Result<CompleteResult> {
        validate_text("workflow id", workflow_id)?;
        if let Some(e) = executor_id {
            validate_text("executor id", e)?;
        }
        let (state, output, error) = outcome_columns(outcome);
        if let Some(o) = output {
            self.check_size("workflow output", o)?;
        }
        if let Some(e) = error {
            self.check_size("workflow error", e)?;
        }
        // Computed once, outside the retry loop: a retried write carries the same values.
        let now = crate::now_ms();
        let guard = if executor_id.is_some() {
            " AND executor_id = $8"
        } else {
            ""
        };
        // The awaiters' and the run's wake-ups ride in the statement when the inline slot is
        // free (see `notifier`).
        let sql = self.sql(&format!(
            "UPDATE {{s}}.workflow_status
                SET status = $2, output = $3, error = $4, updated_at = $5, completed_at = $5,
                    deduplication_id = NULL
              WHERE workflow_uuid = $1 AND status = 'PENDING'{guard}
             RETURNING queue_name,
                (SELECT count(pg_notify($6, p)) FROM unnest($7::text[]) AS p) AS hinted"
        ));
        let hints = self.hints(vec![
            WakeKey::Completion(workflow_id.to_string()),
            WakeKey::Status(workflow_id.to_string()),
        ]);
        let updated: Option<(Option<String>, i64)> = self
            .retry("complete", || {
                let mut q = sqlx::query_as(&sql)
                    .bind(workflow_id)
                    .bind(state.as_str())
                    .bind(output)
                    .bind(error)
                    .bind(now)
                    .bind(hints.channel())
                    .bind(hints.payloads());
                if let Some(e) = executor_id {
                    q = q.bind(e);
                }
                q.fetch_optional(self.pool())
            })
            .await?;
        if let Some((queue, _)) = updated {
            debug!(workflow_id, state = state.as_str(), "run completed");
            hints.published(true);
            self.notify_queue_slot_freed(queue.as_deref());
            return Ok(CompleteResult::Recorded);
        }
        drop(hints);
        let current = self
            .status(workflow_id)
            .await?
            .ok_or_else(|| Error::UnknownRun(workflow_id.to_string()))?;
        let same_outcome = current.state == state
            && current.output.as_deref() == output
            && current.error.as_deref() == error
            && executor_id.is_none_or(|e| current.executor_id.as_deref() == Some(e));
        if same_outcome {
            // A retry whose first attempt committed: its wake-ups were never sent.
            debug!(workflow_id, "completion already recorded by this call");
            self.notify_finished(workflow_id, current.queue_name.as_deref());
            Ok(CompleteResult::Recorded)
        } else {
            debug!(
                workflow_id,
                state = current.state.as_str(),
                "run already decided; local outcome dropped"
            );
            Ok(CompleteResult::AlreadyDecided(current))
        }
    }

    /// Records a run's last checkpoint and its terminal outcome in one statement (one commit):
    /// [`Self::record_step`] and [`Self::complete`] (held by `executor_id`) together, for a
    /// workflow whose final step decided its outcome. Nothing is written unless both are: a run
    /// decided or taken elsewhere gives [`CompleteResult::AlreadyDecided`], a checkpoint
    /// position taken by another writer [`Error::CheckpointConflict`], a consumed message
    /// [`Error::AlreadyConsumed`]; the retry of a call whose acknowledgement was lost is
    /// [`CompleteResult::Recorded`].
    pub async fn complete_with_step(
        &self,
        workflow_id: &str,
        executor_id: &str,
        outcome: &Outcome,
        step: &StepWrite,
    ) -> Result<CompleteResult> {
        validate_text("workflow id", workflow_id)?;
        validate_text("executor id", executor_id)?;
        let (state, output, error) = outcome_columns(outcome);
        if let Some(o) = output {
            self.check_size("workflow output", o)?;
        }
        if let Some(e) = error {
            self.check_size("workflow error", e)?;
        }
        let close = StepClose {
            state,
            output,
            error,
            now_ms: crate::now_ms(),
            executor_id,
        };
        match self
            .record_step_and_close(workflow_id, step, Some(&close))
            .await
        {
            Ok(queue) => {
                debug!(
                    workflow_id,
                    state = state.as_str(),
                    "run completed with its last step"
                );
                self.notify_queue_slot_freed(queue.as_deref());
                Ok(CompleteResult::Recorded)
            }
            // Decided elsewhere, or our own earlier attempt committed: `complete` tells which
            // (it writes nothing to a run that is not PENDING under this executor).
            Err(Error::NotPending(_)) => {
                self.complete(workflow_id, Some(executor_id), outcome).await
            }
            Err(e) => Err(e),
        }
    }

    /// Wakes whoever waits on a run that just left PENDING (or ENQUEUED/DELAYED): its awaiters,
    /// the run itself, and — when its queue has a concurrency limit — the queue's workers, since
    /// a slot was freed.
    pub(crate) fn notify_finished(&self, workflow_id: &str, queue: Option<&str>) {
        self.notify(WakeKey::Completion(workflow_id.to_string()));
        self.notify(WakeKey::Status(workflow_id.to_string()));
        self.notify_queue_slot_freed(queue);
    }

    /// Wakes the workers of `queue` when it has a concurrency limit (a run left it, so a slot
    /// was freed).
    fn notify_queue_slot_freed(&self, queue: Option<&str>) {
        if let Some(q) = queue
            && self.queue_has_concurrency_limit(q)
        {
            self.notify(WakeKey::Queue(q.to_string()));
        }
    }

    /// Waits until the run is terminal and returns it; `Ok(None)` on timeout.
    ///
    /// A run that does not exist is [`Error::UnknownRun`] (also if it is deleted while awaited).
    /// Wake-ups come from the completion's notification; lost notifications are covered by the
    /// fallback poll.
    pub async fn await_outcome(
        &self,
        workflow_id: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<WorkflowStatus>> {
        self.await_outcome_since(workflow_id, timeout, None).await
    }

    /// [`Self::await_outcome`] for a run known not to be terminal at `since` (a mark taken
    /// before the run was enqueued): the first read is skipped unless a completion of the run
    /// may have been notified since then. A run that does not exist is then reported only
    /// after the first wake-up.
    pub async fn await_outcome_since(
        &self,
        workflow_id: &str,
        timeout: Option<Duration>,
        since: Option<crate::Mark>,
    ) -> Result<Option<WorkflowStatus>> {
        validate_text("workflow id", workflow_id)?;
        self.wait_for_since(
            WakeKey::Completion(workflow_id.to_string()),
            timeout,
            since,
            || async move {
                match self.status(workflow_id).await? {
                    None => Err(Error::UnknownRun(workflow_id.to_string())),
                    Some(s) if s.state.is_terminal() => Ok(Some(s)),
                    Some(_) => Ok(None),
                }
            },
        )
        .await
    }

    /// Merges keys into the run's attributes (JSON object merge: top-level keys of `attributes`
    /// replace the stored ones, other stored keys stay).
    pub async fn merge_attributes(
        &self,
        workflow_id: &str,
        attributes: &serde_json::Value,
    ) -> Result<()> {
        validate_text("workflow id", workflow_id)?;
        if !attributes.is_object() {
            return Err(Error::InvalidName {
                what: "attributes",
                value: attributes.to_string().chars().take(80).collect(),
                reason: "must be a JSON object",
            });
        }
        self.check_size("attributes", &attributes.to_string())?;
        let now = crate::now_ms();
        let sql = self.sql(
            "UPDATE {s}.workflow_status
                SET attributes = COALESCE(attributes, '{}'::jsonb) || $2, updated_at = $3
              WHERE workflow_uuid = $1",
        );
        let done = self
            .retry("merge attributes", || {
                sqlx::query(&sql)
                    .bind(workflow_id)
                    .bind(attributes)
                    .bind(now)
                    .execute(self.pool())
            })
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::UnknownRun(workflow_id.to_string()));
        }
        Ok(())
    }
}

/// A validated enqueue statement with the values fixed for all its attempts.
struct PreparedEnqueue {
    sql: String,
    state: RunState,
    now: i64,
    delay_until: Option<i64>,
    owner: String,
}

impl PreparedEnqueue {
    /// Runs the statement once; `None` when a concurrent, then-uncommitted enqueue of the id
    /// hid the row from this statement's snapshot (run it again).
    /// `hints` (channel, payloads) are published by the statement when the run is created
    /// (an empty payload list publishes nothing).
    async fn execute<'e, E: sqlx::PgExecutor<'e>>(
        &self,
        executor: E,
        request: &EnqueueRequest,
        first_message: Option<&FirstMessage<'_>>,
        hints: (&str, &[String]),
    ) -> Result<Option<PgRow>> {
        let mut query = sqlx::query(&self.sql)
            .bind(&request.workflow_id)
            .bind(self.state.as_str())
            .bind(&request.name)
            .bind(&request.queue_name)
            .bind(&request.inputs)
            .bind(&request.serialization)
            .bind(self.now)
            .bind(request.priority)
            .bind(&request.deduplication_id)
            .bind(request.timeout.map(|t| t.as_millis() as i64))
            .bind(&request.attributes)
            .bind(&request.parent_workflow_id)
            .bind(&request.application_version)
            .bind(self.delay_until)
            .bind(&self.owner)
            .bind(hints.0)
            .bind(hints.1);
        if let Some(m) = first_message {
            query = query.bind(m.topic).bind(m.body).bind(m.message_id);
        }
        query.fetch_optional(executor).await.map_err(|e| {
            match crate::error::sqlstate(&e).as_deref() {
                Some("23505") => Error::Duplicated {
                    queue: request.queue_name.clone(),
                    deduplication_id: request.deduplication_id.clone().unwrap_or_default(),
                },
                _ => Error::Database(e),
            }
        })
    }

    /// The error of a statement that returned no row however often it ran: the parent gate
    /// refused it, or (without a gate) the run vanished between the insert and the read.
    fn no_row(&self, request: &EnqueueRequest) -> Error {
        match (
            &request.parent_workflow_id,
            request.only_while_parent_pending,
        ) {
            (Some(parent), true) => Error::ParentNotPending(parent.clone()),
            (None, true) => Error::ParentNotPending(String::new()),
            _ => Error::UnknownRun(request.workflow_id.clone()),
        }
    }

    /// What the statement's row says.
    fn result(&self, row: &PgRow) -> Result<Enqueued> {
        let created: bool = row.try_get("created")?;
        let status = status_from_row(row)?;
        Ok(if created {
            Enqueued::Created(status)
        } else {
            Enqueued::Existing(status)
        })
    }
}

/// The (status, output, error) columns an outcome is stored as.
fn outcome_columns(outcome: &Outcome) -> (RunState, Option<&str>, Option<&str>) {
    match outcome {
        Outcome::Success(o) => (RunState::Success, Some(o.as_str()), None),
        Outcome::Error(e) => (RunState::Error, None, Some(e.as_str())),
        Outcome::Cancelled(r) => (RunState::Cancelled, None, r.as_deref()),
    }
}

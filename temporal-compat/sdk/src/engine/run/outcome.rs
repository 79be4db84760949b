//! Ending a run: workflow-task failures (retried by replay), terminal outcomes, the runs that
//! follow a closing run (continue-as-new, retry per the workflow retry policy, the next cron
//! run: enqueued first, then this run's outcome recorded naming it), timeouts, and the parent
//! close policy of the run's children (applied before the outcome is recorded).

use temporal_compat_client::policies::{self, Deadline, DeadlineKind};
use temporalio_common_wasm::protos::temporal::api::common::v1::RetryPolicy as ProtoRetryPolicy;
use temporalio_common_wasm::protos::temporal::api::enums::v1::RetryState;

use super::*;

/// The workflow retry policy stored in a run's attributes, normalized; `Ok(None)` without one
/// (Temporal does not retry workflows by default).
fn stored_retry_policy(
    attrs: &RunAttributes,
) -> Result<Option<ProtoRetryPolicy>, serde_json::Error> {
    let Some(json) = attrs.retry_policy.as_ref() else {
        return Ok(None);
    };
    let policy = serde_json::from_value::<ProtoRetryPolicy>(json.clone())?;
    Ok(Some(normalize_retry(Some(policy))))
}

/// Whether a run closing at `now` with `failure` (a default failure for a run timeout) is
/// retried under `policy`, and after which delay; else why not, as Temporal reports it: no
/// policy, a non-retryable failure, maximum attempts reached, or a retry that would start at
/// or after the chain's execution deadline (`Timeout`).
fn workflow_retry(
    policy: Option<&ProtoRetryPolicy>,
    attempt: u32,
    failure: &Failure,
    now: i64,
    execution_deadline_ms: Option<i64>,
) -> Result<Duration, RetryState> {
    let Some(policy) = policy else {
        return Err(RetryState::RetryPolicyNotSet);
    };
    let delay = activity::retry_decision(policy, attempt, failure)?;
    let at = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
    if execution_deadline_ms.is_some_and(|d| at >= d) {
        return Err(RetryState::Timeout);
    }
    Ok(delay)
}

/// Why the chain that ended with `status` (a FAILED or TIMED_OUT run, `outcome`) was not
/// retried, as a parent sees it in its child's failure. The decision is made again from the
/// run's row at its close time, as [`Driver::start_next_run`] made it.
pub(crate) fn chain_end_retry_state(
    status: &WorkflowStatus,
    outcome: &TerminalOutcome,
) -> RetryState {
    let Ok(attrs) = RunAttributes::of_run(status) else {
        return RetryState::NonRetryableFailure;
    };
    let policy = stored_retry_policy(&attrs).ok().flatten();
    let closed = status.completed_at_ms.unwrap_or_else(dbos_core::now_ms);
    let attempt = attrs.attempt.max(1);
    let verdict = |failure: &Failure| {
        workflow_retry(
            policy.as_ref(),
            attempt,
            failure,
            closed,
            attrs.execution_deadline_ms,
        )
    };
    match outcome {
        TerminalOutcome::Failed { failure, .. } => match verdict(failure) {
            Err(state) => state,
            // Closed by the engine without a retry (a run that can never progress).
            Ok(_) => RetryState::NonRetryableFailure,
        },
        TerminalOutcome::TimedOut { .. } => {
            let run_timeout = policies::run_deadline(status, &attrs)
                .is_some_and(|d| matches!(d.kind, DeadlineKind::Run));
            if !run_timeout {
                return RetryState::Timeout;
            }
            verdict(&Failure::default())
                .err()
                .unwrap_or(RetryState::Timeout)
        }
        TerminalOutcome::Canceled { .. } => RetryState::CancelRequested,
        _ => RetryState::NonRetryableFailure,
    }
}

/// How a run is closing, for deciding what follows it.
pub(super) enum Closing<'a> {
    /// The workflow returned a value.
    Completed,
    /// The workflow returned an error.
    Failed(&'a Failure),
    /// The run reached its run timeout.
    RunTimedOut,
    /// The chain reached its execution timeout.
    ExecutionTimedOut,
}

impl Driver {
    /// Handles a workflow-task failure: the instance is dropped and the task retried (after a
    /// backoff, cut short by the run's deadline) by replay. Returns `true` when the run task
    /// should end.
    pub(super) async fn on_task_failure(&mut self, f: TaskFailure) -> bool {
        // An activation left for the completion's commit must be recorded now: replay reads it.
        if let Some(write) = self.unrecorded.take()
            && let Some(record) = self.history.last().cloned()
        {
            match self.record(write, &record).await {
                Recording::Done => {}
                Recording::Stop => return true,
                Recording::Redo(_) => {
                    self.history.pop();
                }
            }
        }
        self.instance = None;
        self.evicted = false;
        cache::forget(&self.run_id);
        self.abort_activities();
        let payload_conversion = f
            .failure
            .message
            .starts_with("Workflow payload conversion failed");
        let fail_execution = payload_conversion
            || (f.nondeterminism
                && (self.engine.settings.nondeterminism_fails_all
                    || self
                        .engine
                        .settings
                        .nondeterminism_fails_types
                        .contains(&self.status.name)));
        if fail_execution {
            warn!(run_id = %self.run_id, error = %f, "workflow task failed; failing the workflow");
            self.close_failed(*f.failure).await;
            return true;
        }
        self.task_failures += 1;
        let exp = self.task_failures.min(7);
        let mut delay = Duration::from_millis(500u64 << exp).min(Duration::from_secs(60));
        // The run's deadline cuts the backoff short: the loop's top then closes it TIMED_OUT.
        if let Some(d) = self.deadline() {
            let left = u64::try_from(d.at_ms - dbos_core::now_ms()).unwrap_or(0);
            delay = delay.min(Duration::from_millis(left));
        }
        warn!(run_id = %self.run_id, error = %f, attempt = self.task_failures, ?delay,
              "workflow task failed; it will be retried");
        self.pause(delay).await
    }

    pub(super) async fn fail_run(&mut self, message: String) {
        warn!(run_id = %self.run_id, "{message}");
        self.finish(
            TerminalOutcome::Failed {
                failure: Failure {
                    message,
                    ..Default::default()
                },
                next_run_id: None,
            },
            None,
        )
        .await;
    }

    /// Records the run's outcome (only while it is PENDING and held by this executor), after
    /// applying the parent close policy of its open children; once more after it, for a child
    /// whose start was in flight (see [`policies::apply_parent_close_policy`]).
    pub(super) async fn finish(&mut self, outcome: TerminalOutcome, next_run: Option<String>) {
        self.abort_activities();
        // Children are known from the run's unresolved child commands; a run closed before its
        // history was loaded (timed out at claim, bad input) looks them up.
        let has_children = !self.children.is_empty();
        if has_children || self.history.is_empty() {
            self.apply_parent_close_policy().await;
        }
        let dbos = outcome.to_dbos();
        let run_id = self.run_id.clone();
        let executor = self.engine.executor_id.clone();
        // The last activation, when it was left to be recorded with the outcome.
        let step = self.unrecorded.take();
        for attempt in 0..5u32 {
            let (r, e, o, st) = (run_id.clone(), executor.clone(), dbos.clone(), step.clone());
            match self
                .engine
                .call(move |db| async move {
                    match &st {
                        Some(st) => db.complete_with_step(&r, &e, &o, st).await,
                        None => db.complete(&r, Some(&e), &o).await,
                    }
                })
                .await
            {
                Ok(CompleteResult::Recorded) => {
                    debug!(run_id = %run_id, "run finished");
                    if has_children {
                        self.apply_parent_close_policy().await;
                    }
                    return;
                }
                Ok(CompleteResult::AlreadyDecided(s)) => {
                    info!(run_id = %run_id, state = ?s.state, "run was decided elsewhere; dropping the local outcome");
                    if let Some(next) = next_run {
                        let _ = self
                            .engine
                            .call(move |db| async move {
                                db.cancel(&next, Some("the previous run was decided elsewhere"))
                                    .await
                            })
                            .await;
                    }
                    return;
                }
                Err(CallError::Gone) => return,
                Err(CallError::Db(
                    dbos_core::Error::CheckpointConflict { .. }
                    | dbos_core::Error::AlreadyConsumed(_),
                )) => {
                    // Another executor wrote this run's history (or consumed its messages):
                    // the run is no longer this worker's.
                    info!(run_id = %run_id, "run's history was written elsewhere; dropping the local outcome");
                    return;
                }
                Err(e) => {
                    warn!(run_id = %run_id, error = %e, attempt, "cannot record the run's outcome; retrying");
                    if self.pause(Duration::from_millis(200 << attempt)).await {
                        return;
                    }
                }
            }
        }
    }

    /// Applies the parent close policy of this run's open children; retried until it succeeds
    /// (or the worker halts), since the outcome must not be recorded before it.
    async fn apply_parent_close_policy(&mut self) {
        let mut attempt = 0u32;
        loop {
            let (db, run) = (self.engine.db.clone(), self.run_id.clone());
            let identity = self.engine.executor_id.clone();
            let applied = self
                .engine
                .main
                .spawn(async move {
                    policies::apply_parent_close_policy(&db, &run, &identity)
                        .await
                        .map_err(|e| e.to_string())
                })
                .await;
            match applied {
                Ok(Ok(n)) => {
                    if n > 0 {
                        debug!(run_id = %self.run_id, children = n, "parent close policy applied");
                    }
                    return;
                }
                Ok(Err(e)) => {
                    warn!(run_id = %self.run_id, error = %e, attempt, "cannot apply the parent close policy; retrying");
                }
                Err(_) => return,
            }
            attempt += 1;
            if self.pause(Duration::from_millis(500)).await {
                return;
            }
        }
    }

    /// The run's deadline (execution or run timeout), if it has one.
    pub(super) fn deadline(&self) -> Option<Deadline> {
        policies::run_deadline(&self.status, &self.attrs)
    }

    /// Closes the run as TIMED_OUT when its deadline has passed; `true` when it did.
    pub(super) async fn expire_if_due(&mut self) -> bool {
        let Some(d) = self.deadline() else {
            return false;
        };
        if d.at_ms > dbos_core::now_ms() {
            return false;
        }
        info!(run_id = %self.run_id, kind = ?d.kind, "run timed out");
        let closing = match d.kind {
            DeadlineKind::Execution => Closing::ExecutionTimedOut,
            DeadlineKind::Run => Closing::RunTimedOut,
        };
        let next = self.start_next_run(closing).await;
        if self.engine.halt.is_cancelled() {
            return true;
        }
        self.finish(
            TerminalOutcome::TimedOut {
                next_run_id: next.clone(),
            },
            next,
        )
        .await;
        true
    }

    /// Closes the run as COMPLETED; a cron chain's next run is started first and named in the
    /// run's attributes.
    pub(super) async fn close_completed(&mut self, result: Vec<Payload>) {
        let next = self.start_next_run(Closing::Completed).await;
        if self.engine.halt.is_cancelled() {
            return;
        }
        if let Some(next_id) = &next {
            let run_id = self.run_id.clone();
            let patch = serde_json::json!({ "next_run_id": next_id });
            loop {
                let (r, p) = (run_id.clone(), patch.clone());
                match self
                    .engine
                    .call(move |db| async move { db.merge_attributes(&r, &p).await })
                    .await
                {
                    Ok(()) => break,
                    Err(CallError::Gone) => return,
                    Err(e) => {
                        warn!(run_id = %run_id, error = %e, "cannot record the next cron run; retrying");
                        if self.pause(Duration::from_millis(500)).await {
                            return;
                        }
                    }
                }
            }
            self.attrs.next_run_id = next.clone();
        }
        self.finish(TerminalOutcome::Completed { result }, next)
            .await;
    }

    /// Closes the run as FAILED; a retry (per the workflow retry policy) or the next cron run is
    /// started first and named in the outcome.
    pub(super) async fn close_failed(&mut self, failure: Failure) {
        let next = self.start_next_run(Closing::Failed(&failure)).await;
        if self.engine.halt.is_cancelled() {
            return;
        }
        self.finish(
            TerminalOutcome::Failed {
                failure,
                next_run_id: next.clone(),
            },
            next,
        )
        .await;
    }

    /// The workflow retry policy of the run, normalized; `None` without one (Temporal does not
    /// retry workflows by default) or when it cannot be read.
    fn retry_policy(&self) -> Option<ProtoRetryPolicy> {
        match stored_retry_policy(&self.attrs) {
            Ok(p) => p,
            Err(e) => {
                warn!(run_id = %self.run_id, error = %e, "the workflow retry policy does not decode; not retrying");
                None
            }
        }
    }

    /// Decides what follows the closing run and enqueues it: a retry (FAILED or run timeout,
    /// when the retry policy allows it), else the next cron run (any close but an execution
    /// timeout). Neither may start at or after the chain's execution deadline. Returns the next
    /// run's id; `None` when nothing follows (or the worker halts).
    async fn start_next_run(&mut self, closing: Closing<'_>) -> Option<String> {
        let now = dbos_core::now_ms();
        let attempt = self.attrs.attempt.max(1);
        let timeout = Failure::default();
        let failure = match &closing {
            Closing::Failed(f) => *f,
            Closing::RunTimedOut => &timeout,
            Closing::Completed | Closing::ExecutionTimedOut => {
                return self.start_cron_run(closing, now).await;
            }
        };
        let policy = self.retry_policy();
        match workflow_retry(
            policy.as_ref(),
            attempt,
            failure,
            now,
            self.attrs.execution_deadline_ms,
        ) {
            Ok(delay) => {
                info!(run_id = %self.run_id, attempt, ?delay, "workflow run failed; retrying");
                return self.enqueue_next(attempt + 1, delay).await;
            }
            Err(state) => {
                debug!(run_id = %self.run_id, ?state, "no retry");
            }
        }
        self.start_cron_run(closing, now).await
    }

    /// Enqueues the next cron run when the run has a cron schedule and closes otherwise than by
    /// its execution timeout.
    async fn start_cron_run(&mut self, closing: Closing<'_>, now: i64) -> Option<String> {
        if matches!(closing, Closing::ExecutionTimedOut) {
            return None;
        }
        let cron = self.attrs.cron_schedule.clone()?;
        let schedule = match policies::CronSchedule::parse(&cron) {
            Ok(s) => s,
            Err(e) => {
                warn!(run_id = %self.run_id, error = %e, "the cron schedule does not parse; the chain ends");
                return None;
            }
        };
        let delay = schedule.backoff(policies::run_start_ms(&self.status), now)?;
        let at = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        if self.attrs.execution_deadline_ms.is_some_and(|d| at >= d) {
            debug!(run_id = %self.run_id, "no further cron run: it would start after the execution deadline");
            return None;
        }
        debug!(run_id = %self.run_id, ?delay, "scheduling the next cron run");
        self.enqueue_next(1, delay).await
    }

    /// Enqueues the next run of the chain (same type, queue and input) with `attempt`, after
    /// `delay`. Idempotent by run id, so a recovered run closing again finds it enqueued.
    async fn enqueue_next(&mut self, attempt: u32, delay: Duration) -> Option<String> {
        let (next_id, mut attrs) = self.next_run_attributes();
        attrs.attempt = attempt;
        let mut request = protocol::new_run_request(&next_id, &attrs, &[]);
        request.inputs = self
            .status
            .inputs
            .clone()
            .unwrap_or_else(|| protocol::encode_payloads(&[]));
        request.delay = (!delay.is_zero()).then_some(delay);
        self.enqueue_successor(request).await.then_some(next_id)
    }

    /// The id and attributes of the run that follows this one in its chain.
    fn next_run_attributes(&self) -> (String, RunAttributes) {
        let (workflow_id, index) = protocol::parse_run_id(&self.run_id);
        let workflow_id = workflow_id.to_string();
        let next_id = protocol::run_id(&workflow_id, index + 1);
        let mut attrs = self.attrs.clone();
        if attrs.workflow_id.is_empty() {
            attrs.workflow_id = workflow_id;
        }
        if attrs.workflow_type.is_empty() {
            attrs.workflow_type = self.status.name.clone();
        }
        if attrs.task_queue.is_empty() {
            attrs.task_queue = self
                .status
                .queue_name
                .clone()
                .unwrap_or_else(|| self.engine.task_queue.clone());
        }
        attrs.first_execution_run_id = Some(
            attrs
                .first_execution_run_id
                .clone()
                .unwrap_or_else(|| self.run_id.clone()),
        );
        attrs.continued_from_run_id = Some(self.run_id.clone());
        attrs.attempt = 1;
        attrs.next_run_id = None;
        (next_id, attrs)
    }

    /// Enqueues a successor run, retrying database errors; `false` when the worker goes away.
    async fn enqueue_successor(&mut self, request: dbos_core::EnqueueRequest) -> bool {
        loop {
            let req = request.clone();
            match self
                .engine
                .call(move |db| async move { db.enqueue(req).await })
                .await
            {
                Ok(_) => return true,
                Err(CallError::Gone) => return false,
                Err(e) => {
                    warn!(run_id = %self.run_id, error = %e, "cannot start the next run; retrying");
                    if self.pause(Duration::from_millis(500)).await {
                        return false;
                    }
                }
            }
        }
    }

    pub(super) async fn continue_as_new(&mut self, can: ContinueAsNewWorkflowExecution) {
        let (next_id, mut attrs) = self.next_run_attributes();
        if !can.workflow_type.is_empty() {
            attrs.workflow_type = can.workflow_type.clone();
        }
        if !can.task_queue.is_empty() {
            attrs.task_queue = can.task_queue.clone();
        }
        if !can.memo.is_empty() {
            attrs.memo = protocol::encode_payload_map(&can.memo);
        }
        if let Some(sa) = &can.search_attributes {
            attrs.set_search_attributes(&sa.indexed_fields);
        }
        if !can.headers.is_empty() {
            attrs.header = protocol::encode_payload_map(&can.headers);
        }
        if let Some(t) = duration_of(&can.workflow_run_timeout) {
            attrs.run_timeout_ms = Some(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        }
        if let Some(t) = duration_of(&can.workflow_task_timeout) {
            attrs.task_timeout_ms = Some(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        }
        let mut request = protocol::new_run_request(&next_id, &attrs, &can.arguments);
        if let Some(d) = duration_of(&can.backoff_start_interval) {
            request.delay = Some(d);
        }
        if !self.enqueue_successor(request).await {
            return;
        }
        self.finish(
            TerminalOutcome::ContinuedAsNew {
                next_run_id: next_id.clone(),
            },
            Some(next_id),
        )
        .await;
    }
}

//! Ending a run: workflow-task failures (retried by replay), terminal outcomes, and
//! continue-as-new (next run enqueued first, then this run's outcome recorded).

use super::*;

impl Driver {
    /// Handles a workflow-task failure: the instance is dropped and the task retried (after a
    /// backoff) by replay. Returns `true` when the run task should end.
    pub(super) async fn on_task_failure(&mut self, f: TaskFailure) -> bool {
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
            self.finish(
                TerminalOutcome::Failed {
                    failure: *f.failure,
                    next_run_id: None,
                },
                None,
            )
            .await;
            return true;
        }
        self.task_failures += 1;
        let exp = self.task_failures.min(7);
        let delay = Duration::from_millis(500u64 << exp).min(Duration::from_secs(60));
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

    /// Records the run's outcome (only while it is PENDING and held by this executor).
    pub(super) async fn finish(&mut self, outcome: TerminalOutcome, next_run: Option<String>) {
        self.abort_activities();
        let dbos = outcome.to_dbos();
        let run_id = self.run_id.clone();
        let executor = self.engine.executor_id.clone();
        for attempt in 0..5u32 {
            let (r, e, o) = (run_id.clone(), executor.clone(), dbos.clone());
            match self
                .engine
                .call(move |db| async move { db.complete(&r, Some(&e), &o).await })
                .await
            {
                Ok(CompleteResult::Recorded) => {
                    debug!(run_id = %run_id, "run finished");
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
                Err(e) => {
                    warn!(run_id = %run_id, error = %e, attempt, "cannot record the run's outcome; retrying");
                    if self.pause(Duration::from_millis(200 << attempt)).await {
                        return;
                    }
                }
            }
        }
    }

    pub(super) async fn continue_as_new(&mut self, can: ContinueAsNewWorkflowExecution) {
        let (workflow_id, index) = protocol::parse_run_id(&self.run_id);
        let workflow_id = workflow_id.to_string();
        let next_id = protocol::run_id(&workflow_id, index + 1);
        let mut attrs = self.attrs.clone();
        if attrs.workflow_id.is_empty() {
            attrs.workflow_id = workflow_id.clone();
        }
        if !can.workflow_type.is_empty() {
            attrs.workflow_type = can.workflow_type.clone();
        } else if attrs.workflow_type.is_empty() {
            attrs.workflow_type = self.status.name.clone();
        }
        if !can.task_queue.is_empty() {
            attrs.task_queue = can.task_queue.clone();
        } else if attrs.task_queue.is_empty() {
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
        loop {
            let req = request.clone();
            match self
                .engine
                .call(move |db| async move { db.enqueue(req).await })
                .await
            {
                Ok(_) => break,
                Err(CallError::Gone) => return,
                Err(e) => {
                    warn!(run_id = %self.run_id, error = %e, "cannot start the continued run; retrying");
                    if self.pause(Duration::from_millis(500)).await {
                        return;
                    }
                }
            }
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

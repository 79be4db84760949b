//! Queries on closed runs: the instance is rebuilt by replaying the recorded history (nothing is
//! executed, nothing is written but the answers), the queries are answered, and the instance is
//! discarded. Any worker of the run's task queue may do this (Temporal replays closed workflows
//! on any worker of the queue as well).

use super::*;

/// Answers `queries` addressed to the closed run `status` by replaying its history.
pub(crate) async fn answer_closed(
    engine: Arc<Engine>,
    status: WorkflowStatus,
    queries: Vec<QueryRequest>,
) {
    let mut driver = Driver::new(engine, status);
    driver.replay_only = true;
    let ids: Vec<String> = queries.iter().map(|q| q.query_id.clone()).collect();
    if let Err(msg) = driver.load_for_query().await {
        warn!(run_id = %driver.run_id, error = %msg, "cannot rebuild a closed run to answer queries");
        driver.fail_queries(&ids, msg).await;
        return;
    }
    debug!(run_id = %driver.run_id, queries = queries.len(), "answering queries on a closed run");
    driver.answer_queries(queries).await;
}

impl Driver {
    /// Loads the history and rebuilds the instance (replay only, no effects).
    async fn load_for_query(&mut self) -> Result<(), String> {
        let factory = self
            .engine
            .workflows
            .factory(&self.status.name)
            .ok_or_else(|| {
                format!(
                    "Workflow type {} not found on this worker (task queue `{}`)",
                    self.status.name, self.engine.task_queue
                )
            })?;
        let init = self.initialize_job()?;
        let run_id = self.run_id.clone();
        let checkpoints = self
            .engine
            .call(move |db| async move { db.checkpoints(&run_id).await })
            .await
            .map_err(|e| format!("cannot read the history of run `{}`: {e}", self.run_id))?;
        self.history.clear();
        let mut recorded = Vec::new();
        for cp in checkpoints {
            if cp.function_name != ACTIVATION_STEP {
                continue;
            }
            match cp.output.as_deref().map(history::decode) {
                Some(Ok(r)) => recorded.push((cp.function_id, r)),
                _ => {
                    return Err(format!(
                        "history checkpoint {} of run `{}` is unreadable",
                        cp.function_id, self.run_id
                    ));
                }
            }
        }
        if recorded.first().is_none_or(|(id, _)| *id != 0) {
            self.history.push(Recorded {
                previous_commands: Vec::new(),
                activation: WorkflowActivation {
                    run_id: self.run_id.clone(),
                    timestamp: Some(timestamp_ms(self.status.created_at_ms)),
                    history_length: 1,
                    jobs: vec![job(Variant::InitializeWorkflow(init.clone()))],
                    ..Default::default()
                },
            });
        }
        for (id, r) in recorded {
            if usize::try_from(id).ok() != Some(self.history.len()) {
                return Err(format!("history of run `{}` has a gap", self.run_id));
            }
            if let Some(ts) = ms_of(&r.activation.timestamp) {
                self.last_timestamp_ms = self.last_timestamp_ms.max(ts);
            }
            self.history.push(r);
        }
        self.rebuild(&factory, &init)
            .await
            .map_err(|f| format!("replaying closed run `{}` failed: {f}", self.run_id))
    }

    async fn fail_queries(&self, ids: &[String], msg: String) {
        let answer = QueryAnswer::Failure(Failure {
            message: msg,
            ..Default::default()
        })
        .to_text();
        let events: Vec<(String, String)> = ids
            .iter()
            .map(|id| (protocol::query_answer_key(id), answer.clone()))
            .collect();
        let run_id = self.run_id.clone();
        let _ = self
            .engine
            .call(move |db| async move {
                // One transaction for all (e.g. an update's accepted and completed keys).
                db.set_events(&run_id, &events).await?;
                Ok(())
            })
            .await;
    }
}

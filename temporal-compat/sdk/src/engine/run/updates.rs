//! Update admission. Temporal delivers an update in a speculative workflow task and keeps it
//! out of history when the validator rejects it; we do the same:
//!
//! 1. the pending `DoUpdate` jobs (and nothing else but, for a run started with an update,
//!    its initialization job) are delivered to the live instance with `run_validator = true`;
//!    validators are read-only, so a rejection changes no state;
//! 2. rejected updates: the rejection is published (reply events), their inbox messages are
//!    consumed WITHOUT a checkpoint: no trace in history;
//! 3. accepted updates: the activation is recorded with only them, `run_validator = false` (a
//!    replay never re-runs a validator), consuming their messages in the same commit; only then
//!    are the acceptance and the handler's commands acted upon.
//!
//! If recording fails, the instance (which already ran the handlers) is dropped and rebuilt by
//! replay; the messages are still unconsumed and are admitted again.

use super::*;

impl Driver {
    pub(super) async fn admit_updates(&mut self) -> Result<Flow, TaskFailure> {
        let jobs = std::mem::take(&mut self.pending);
        let k = self.history.len();
        let now = dbos_core::now_ms().max(self.last_timestamp_ms);
        let ts = if k == 0 {
            self.status.created_at_ms
        } else {
            now
        };
        let activation = WorkflowActivation {
            run_id: self.run_id.clone(),
            timestamp: Some(timestamp_ms(ts)),
            is_replaying: false,
            history_length: u32::try_from(k + 1).unwrap_or(u32::MAX),
            jobs: jobs.clone(),
            ..Default::default()
        };
        let cmds = self.deliver(activation.clone()).await?;
        let mut accepted = HashSet::new();
        for c in &cmds {
            if let Some(Cmd::UpdateResponse(u)) = &c.variant
                && matches!(u.response, Some(update_response::Response::Accepted(())))
            {
                accepted.insert(u.protocol_instance_id.clone());
            }
        }
        let update_id = |j: &WorkflowActivationJob| match &j.variant {
            Some(Variant::DoUpdate(u)) => Some(u.protocol_instance_id.clone()),
            _ => None,
        };
        let mut consumed_ids = Vec::new();
        let mut accepted_jobs = Vec::new();
        for j in jobs {
            let Some(id) = update_id(&j) else {
                // The initialization job of a run started with an update (update-with-start).
                accepted_jobs.push(j);
                continue;
            };
            if let Some(msg) = self.update_msgs.remove(&id) {
                consumed_ids.push(msg);
            }
            if accepted.contains(&id) {
                let mut j = j;
                if let Some(Variant::DoUpdate(u)) = &mut j.variant {
                    u.run_validator = false;
                }
                accepted_jobs.push(j);
            } else {
                debug!(run_id = %self.run_id, update_id = %id, "update rejected; not recorded");
            }
        }
        // Rejection responses are not part of history (replay will not produce them).
        let recorded_cmds: Vec<WorkflowCommand> = cmds
            .iter()
            .filter(|c| match &c.variant {
                Some(Cmd::UpdateResponse(u)) => accepted.contains(&u.protocol_instance_id),
                _ => true,
            })
            .cloned()
            .collect();
        let only_init = k == 0
            && accepted_jobs.len() == 1
            && matches!(
                accepted_jobs[0].variant,
                Some(Variant::InitializeWorkflow(_))
            );
        if accepted_jobs.is_empty() {
            if recorded_cmds
                .iter()
                .any(|c| !matches!(c.variant, Some(Cmd::UpdateResponse(_))))
            {
                // Only validators ran; a command here means a validator changed state.
                warn!(run_id = %self.run_id, "rejected updates produced workflow commands; rebuilding the instance");
                self.drop_instance_for_replay();
                return Ok(Flow::Continue);
            }
            let run_id = self.run_id.clone();
            match self
                .engine
                .call(move |db| async move { db.consume_messages(&run_id, &consumed_ids).await })
                .await
            {
                Ok(_) => {}
                Err(CallError::Gone) => return Ok(Flow::Stop),
                Err(e) => {
                    warn!(run_id = %self.run_id, error = %e, "cannot consume rejected update requests; they will be validated again");
                }
            }
            return self.process_commands(cmds, ts).await;
        }
        let record = Recorded {
            previous_commands: self.last_commands.clone(),
            activation: WorkflowActivation {
                jobs: accepted_jobs,
                ..activation
            },
        };
        let write = activation_write(k, &record, ts, now, consumed_ids);
        let run_id = self.run_id.clone();
        match self
            .engine
            .call(move |db| async move {
                if only_init {
                    // Activation 0 with nothing but initialization is not stored (it is rebuilt
                    // from the run's row); the rejected requests are consumed on their own.
                    db.consume_messages(&run_id, &write.consume_messages)
                        .await
                        .map(|_| ())
                } else {
                    db.record_step(&run_id, &write).await
                }
            })
            .await
        {
            Ok(()) => {}
            Err(CallError::Gone) => return Ok(Flow::Stop),
            Err(CallError::Db(dbos_core::Error::CheckpointConflict { .. })) => {
                warn!(run_id = %self.run_id, position = k, "another executor wrote this run's history; releasing it");
                return Ok(Flow::Stop);
            }
            Err(e) => {
                warn!(run_id = %self.run_id, error = %e, "cannot record accepted updates; rebuilding and admitting them again");
                self.drop_instance_for_replay();
                if self.pause(Duration::from_millis(200)).await {
                    return Ok(Flow::Stop);
                }
                return Ok(Flow::Continue);
            }
        }
        self.history.push(record);
        self.last_timestamp_ms = ts;
        self.last_commands = history::command_keys(&recorded_cmds);
        self.process_commands(cmds, ts).await
    }

    /// The instance ran ahead of the recorded history: drop it; the main loop replays the
    /// history and re-reads the inbox (unconsumed requests come back).
    fn drop_instance_for_replay(&mut self) {
        self.instance = None;
        self.evicted = false;
        cache::forget(&self.run_id);
        self.update_msgs.clear();
    }
}

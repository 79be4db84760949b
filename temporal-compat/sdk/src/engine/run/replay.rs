//! Replay of a run's recorded activations on a fresh instance (recovery, task retries) and
//! rebuilding after cache eviction, with the nondeterminism checks.

use super::*;

impl Driver {
    /// Replays the recorded history on a fresh instance, checking commands, then restarts the
    /// effects of commands still outstanding.
    pub(super) async fn replay(
        &mut self,
        factory: &crate::registry::InstanceFactory,
        init: &InitializeWorkflow,
    ) -> Result<Flow, TaskFailure> {
        self.abort_activities();
        self.activities.clear();
        self.children.clear();
        self.externals.clear();
        self.timers.clear();
        self.pending.clear();
        self.consume.clear();
        self.seen.clear();
        self.inbox_dirty = true;
        if let Err(msg) = self.build_instance(factory, init) {
            self.fail_run(msg).await;
            return Ok(Flow::Stop);
        }
        let n = self.history.len();
        if n == 0 {
            // Nothing was delivered yet (a fresh run whose first activation failed).
            self.pending
                .push(job(Variant::InitializeWorkflow(init.clone())));
            return Ok(Flow::Continue);
        }
        debug!(run_id = %self.run_id, activations = n, "replaying");
        let mut last_cmds = Vec::new();
        for k in 0..n {
            let mut activation = self.history[k].activation.clone();
            let last = k + 1 == n;
            activation.is_replaying = !last;
            let next_keys = self.history.get(k + 1).map(|r| r.previous_commands.clone());
            if let Some(keys) = &next_keys {
                // Patches the original execution applied in this activation.
                for key in keys.iter().filter(|k| k.kind == "patch") {
                    if let Some(id) = &key.id {
                        activation
                            .jobs
                            .push(job(Variant::NotifyHasPatch(NotifyHasPatch {
                                patch_id: id.clone(),
                            })));
                    }
                }
                history::order_jobs(&mut activation.jobs);
            }
            self.apply_resolutions(&activation);
            let ts = ms_of(&activation.timestamp).unwrap_or(self.status.created_at_ms);
            self.last_timestamp_ms = self.last_timestamp_ms.max(ts);
            let cmds = self.deliver(activation).await?;
            if let Some(expected) = next_keys {
                let got = history::command_keys(&cmds);
                if got != expected {
                    return Err(TaskFailure::nondeterminism(format!(
                        "[TMPRL1100] Nondeterminism error: activation {k} of run `{}` produced \
                         commands [{}] but history recorded [{}]",
                        self.run_id,
                        join_keys(&got),
                        join_keys(&expected)
                    )));
                }
                self.track_commands(&cmds, ts);
            } else {
                last_cmds = cmds;
            }
        }
        let ts = ms_of(&self.history[n - 1].activation.timestamp).unwrap_or(self.last_timestamp_ms);
        self.last_commands = history::command_keys(&last_cmds);
        // The last activation's commands are live.
        let flow = self.process_commands(last_cmds, ts).await;
        self.recovering = false;
        let flow = flow?;
        if let Flow::Stop = flow {
            return Ok(Flow::Stop);
        }
        // Restart what is still outstanding from earlier activations.
        let seqs: Vec<u32> = self
            .activities
            .iter()
            .filter(|(_, s)| s.started.is_none() && !s.resolved)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in seqs {
            self.start_activity(seq, true);
        }
        let children: Vec<u32> = self
            .children
            .iter()
            .filter(|(_, c)| c.watcher.is_none())
            .map(|(seq, _)| *seq)
            .collect();
        for seq in children {
            self.start_child(seq);
        }
        let externals: Vec<WorkflowCommand> = self.externals.values().cloned().collect();
        for c in externals {
            self.start_external(c);
        }
        self.task_failures = 0;
        Ok(Flow::Continue)
    }

    /// Rebuilds an evicted instance by replaying the history; every activation's commands,
    /// the last one's included, must match what the evicted instance produced. Effects (running
    /// activities, timers) are left as they are.
    pub(super) async fn rebuild(
        &mut self,
        factory: &crate::registry::InstanceFactory,
        init: &InitializeWorkflow,
    ) -> Result<(), TaskFailure> {
        self.build_instance(factory, init)
            .map_err(TaskFailure::new)?;
        let n = self.history.len();
        for k in 0..n {
            let mut activation = self.history[k].activation.clone();
            activation.is_replaying = true;
            let expected = match self.history.get(k + 1) {
                Some(r) => r.previous_commands.clone(),
                None => self.last_commands.clone(),
            };
            for key in expected.iter().filter(|k| k.kind == "patch") {
                if let Some(id) = &key.id {
                    activation
                        .jobs
                        .push(job(Variant::NotifyHasPatch(NotifyHasPatch {
                            patch_id: id.clone(),
                        })));
                }
            }
            history::order_jobs(&mut activation.jobs);
            let cmds = self.deliver(activation).await?;
            let got = history::command_keys(&cmds);
            if got != expected && !(self.replay_only && k + 1 == n) {
                self.instance = None;
                return Err(TaskFailure::nondeterminism(format!(
                    "[TMPRL1100] Nondeterminism error: rebuilding run `{}` after eviction, \
                     activation {k} produced commands [{}] but history recorded [{}]",
                    self.run_id,
                    join_keys(&got),
                    join_keys(&expected)
                )));
            }
        }
        debug!(run_id = %self.run_id, activations = n, "instance rebuilt after eviction");
        Ok(())
    }

    /// Bookkeeping for the resolutions an activation delivers.
    pub(super) fn apply_resolutions(&mut self, activation: &WorkflowActivation) {
        for j in &activation.jobs {
            match &j.variant {
                Some(Variant::ResolveActivity(r)) => {
                    if let Some(slot) = self.activities.remove(&r.seq)
                        && let Some(h) = slot.started
                    {
                        h.abort();
                    }
                }
                Some(Variant::FireTimer(t)) => {
                    self.timers.remove(&t.seq);
                }
                Some(Variant::ResolveChildWorkflowExecutionStart(r)) => {
                    use temporalio_common_wasm::protos::coresdk::workflow_activation::resolve_child_workflow_execution_start::Status;
                    match &r.status {
                        Some(Status::Succeeded(ok)) => {
                            if let Some(c) = self.children.get_mut(&r.seq) {
                                c.run_id = Some(ok.run_id.clone());
                            }
                        }
                        _ => {
                            if let Some(c) = self.children.remove(&r.seq)
                                && let Some(h) = c.watcher
                            {
                                h.abort();
                            }
                        }
                    }
                }
                Some(Variant::ResolveChildWorkflowExecution(r)) => {
                    if let Some(c) = self.children.remove(&r.seq)
                        && let Some(h) = c.watcher
                    {
                        h.abort();
                    }
                }
                Some(Variant::ResolveSignalExternalWorkflow(r)) => {
                    self.externals.remove(&("signal", r.seq));
                }
                Some(Variant::ResolveRequestCancelExternalWorkflow(r)) => {
                    self.externals.remove(&("cancel", r.seq));
                }
                _ => {}
            }
        }
    }

    /// Bookkeeping for the commands of a replayed (not last) activation: what they left
    /// outstanding.
    pub(super) fn track_commands(&mut self, cmds: &[WorkflowCommand], ts: i64) {
        for c in cmds {
            match &c.variant {
                Some(Cmd::StartTimer(t)) => {
                    let d = duration_of(&t.start_to_fire_timeout).unwrap_or_default();
                    self.timers
                        .insert(t.seq, ts + i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                }
                Some(Cmd::CancelTimer(t)) => {
                    self.timers.remove(&t.seq);
                }
                Some(Cmd::ScheduleActivity(_)) | Some(Cmd::ScheduleLocalActivity(_)) => {
                    if let Some((seq, slot)) = self.slot_for(c, ts) {
                        self.activities.insert(seq, slot);
                    }
                }
                Some(Cmd::RequestCancelActivity(r)) => {
                    if let Some(slot) = self.activities.get_mut(&r.seq) {
                        slot.task.cancel.cancel();
                    }
                }
                Some(Cmd::RequestCancelLocalActivity(r)) => {
                    if let Some(slot) = self.activities.get_mut(&r.seq) {
                        slot.task.cancel.cancel();
                    }
                }
                Some(Cmd::UpdateResponse(u)) => {
                    if matches!(u.response, Some(update_response::Response::Accepted(()))) {
                        self.accepted_updates.insert(u.protocol_instance_id.clone());
                    }
                }
                Some(Cmd::StartChildWorkflowExecution(sc)) => {
                    self.children.insert(
                        sc.seq,
                        ChildSlot {
                            command: sc.clone(),
                            run_id: None,
                            watcher: None,
                        },
                    );
                }
                Some(Cmd::SignalExternalWorkflowExecution(x)) => {
                    self.externals.insert(("signal", x.seq), c.clone());
                }
                Some(Cmd::RequestCancelExternalWorkflowExecution(x)) => {
                    self.externals.insert(("cancel", x.seq), c.clone());
                }
                _ => {}
            }
        }
    }
}

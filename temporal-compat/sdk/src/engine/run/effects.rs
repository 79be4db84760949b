//! Commands to effects: timers, activities, children, signals and cancels to other
//! workflows, update responses, search attribute and memo upserts, and the terminal commands.

use super::*;

impl Driver {
    pub(super) fn slot_for(&self, c: &WorkflowCommand, ts: i64) -> Option<(u32, Slot)> {
        let workflow_id = protocol::parse_run_id(&self.run_id).0.to_string();
        match &c.variant {
            Some(Cmd::ScheduleActivity(a)) => Some((
                a.seq,
                Slot {
                    cancellation_type: a.cancellation_type,
                    started: None,
                    resolved: false,
                    task: ActivityTask {
                        run_id: self.run_id.clone(),
                        workflow_id,
                        workflow_type: self.status.name.clone(),
                        seq: a.seq,
                        local: false,
                        activity_id: a.activity_id.clone(),
                        activity_type: a.activity_type.clone(),
                        headers: a.headers.clone(),
                        arguments: a.arguments.clone(),
                        schedule_to_close: duration_of(&a.schedule_to_close_timeout),
                        schedule_to_start: duration_of(&a.schedule_to_start_timeout),
                        start_to_close: duration_of(&a.start_to_close_timeout),
                        heartbeat_timeout: duration_of(&a.heartbeat_timeout),
                        retry: normalize_retry(a.retry_policy.clone()),
                        scheduled_at_ms: ts,
                        first_attempt: 1,
                        heartbeat_details: Vec::new(),
                        local_retry_threshold: Duration::ZERO,
                        recovered: false,
                        cancel: CancellationToken::new(),
                    },
                },
            )),
            Some(Cmd::ScheduleLocalActivity(a)) => {
                let s2c = duration_of(&a.schedule_to_close_timeout);
                let clamp = |d: Option<Duration>| match (d, s2c) {
                    (Some(d), Some(s)) => Some(d.min(s)),
                    (d, _) => d,
                };
                Some((
                    a.seq,
                    Slot {
                        cancellation_type: a.cancellation_type,
                        started: None,
                        resolved: false,
                        task: ActivityTask {
                            run_id: self.run_id.clone(),
                            workflow_id,
                            workflow_type: self.status.name.clone(),
                            seq: a.seq,
                            local: true,
                            activity_id: a.activity_id.clone(),
                            activity_type: a.activity_type.clone(),
                            headers: a.headers.clone(),
                            arguments: a.arguments.clone(),
                            schedule_to_close: s2c,
                            schedule_to_start: clamp(duration_of(&a.schedule_to_start_timeout)),
                            start_to_close: clamp(duration_of(&a.start_to_close_timeout)),
                            heartbeat_timeout: None,
                            retry: normalize_retry(a.retry_policy.clone()),
                            scheduled_at_ms: ms_of(&a.original_schedule_time).unwrap_or(ts),
                            first_attempt: a.attempt.max(1),
                            heartbeat_details: Vec::new(),
                            local_retry_threshold: duration_of(&a.local_retry_threshold)
                                .unwrap_or(Duration::from_secs(60)),
                            recovered: false,
                            cancel: CancellationToken::new(),
                        },
                    },
                ))
            }
            _ => None,
        }
    }

    pub(super) fn start_activity(&mut self, seq: u32, recovered: bool) {
        let Some(slot) = self.activities.get_mut(&seq) else {
            return;
        };
        let mut task = slot.task.clone();
        task.recovered = recovered;
        let local = task.local;
        let engine = self.engine.clone();
        let tx = self.tx.clone();
        let handle = self.engine.main.spawn(async move {
            let resolution = activity::execute(engine, task).await;
            let _ = tx.send(RunEvent::ActivityDone {
                seq,
                local,
                resolution: Box::new(resolution),
            });
        });
        slot.started = Some(handle.abort_handle());
    }

    pub(super) fn abort_activities(&mut self) {
        for slot in self.activities.values_mut() {
            slot.task.cancel.cancel();
            if let Some(h) = slot.started.take() {
                h.abort();
            }
        }
        for child in self.children.values_mut() {
            if let Some(h) = child.watcher.take() {
                h.abort();
            }
        }
    }

    /// Starts (if not yet started) and watches child `seq`.
    pub(super) fn start_child(&mut self, seq: u32) {
        let Some(slot) = self.children.get_mut(&seq) else {
            return;
        };
        let engine = self.engine.clone();
        let tx = self.tx.clone();
        let command = slot.command.clone();
        let known_run = slot.run_id.clone();
        let parent_run = self.run_id.clone();
        let parent_wf = protocol::parse_run_id(&self.run_id).0.to_string();
        let parent_queue = self
            .status
            .queue_name
            .clone()
            .unwrap_or_else(|| self.engine.task_queue.clone());
        let handle = self.engine.main.spawn(async move {
            let run = match known_run {
                Some(r) => r,
                None => match children::start_child(
                    &engine,
                    &parent_run,
                    &parent_wf,
                    &parent_queue,
                    &command,
                )
                .await
                {
                    children::StartOutcome::Started(r) => {
                        let _ = tx.send(RunEvent::ChildStarted {
                            seq,
                            run_id: r.clone(),
                        });
                        r
                    }
                    children::StartOutcome::Failed(j) => {
                        let _ = tx.send(RunEvent::Job(j));
                        return;
                    }
                    children::StartOutcome::Gone => return,
                },
            };
            if let Some(j) = children::watch_child(&engine, seq, &run, &command.workflow_type).await
            {
                let _ = tx.send(RunEvent::Job(Box::new(j)));
            }
        });
        slot.watcher = Some(handle.abort_handle());
    }

    /// Sends a signal or cancel request to another workflow.
    pub(super) fn start_external(&mut self, c: WorkflowCommand) {
        let engine = self.engine.clone();
        let tx = self.tx.clone();
        let sender = self.run_id.clone();
        self.engine.main.spawn(async move {
            let j = match &c.variant {
                Some(Cmd::SignalExternalWorkflowExecution(x)) => {
                    children::signal_external(&engine, &sender, x).await
                }
                Some(Cmd::RequestCancelExternalWorkflowExecution(x)) => {
                    children::cancel_external(&engine, &sender, x).await
                }
                _ => return,
            };
            let _ = tx.send(RunEvent::Job(Box::new(j)));
        });
    }

    /// Starts the effects of a live activation's commands.
    pub(super) async fn process_commands(
        &mut self,
        cmds: Vec<WorkflowCommand>,
        ts: i64,
    ) -> Result<Flow, TaskFailure> {
        let mut events: Vec<(String, String)> = Vec::new();
        for c in cmds {
            match c.variant {
                Some(Cmd::StartTimer(t)) => {
                    let d = duration_of(&t.start_to_fire_timeout).unwrap_or_default();
                    self.timers
                        .insert(t.seq, ts + i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                }
                Some(Cmd::CancelTimer(t)) => {
                    self.timers.remove(&t.seq);
                }
                Some(ref v @ (Cmd::ScheduleActivity(_) | Cmd::ScheduleLocalActivity(_))) => {
                    let seq = match v {
                        Cmd::ScheduleActivity(a) => a.seq,
                        Cmd::ScheduleLocalActivity(a) => a.seq,
                        _ => continue,
                    };
                    if let Some((seq, slot)) = self.slot_for(&c, ts) {
                        self.activities.insert(seq, slot);
                    }
                    self.start_activity(seq, self.recovering);
                }
                Some(Cmd::RequestCancelActivity(r)) => self.cancel_activity(r.seq, false),
                Some(Cmd::RequestCancelLocalActivity(r)) => self.cancel_activity(r.seq, true),
                Some(Cmd::UpdateResponse(u)) => {
                    let pid = u.protocol_instance_id;
                    match u.response {
                        Some(update_response::Response::Accepted(())) => {
                            self.accepted_updates.insert(pid.clone());
                            events.push((
                                protocol::update_accepted_key(&pid),
                                UpdateAdmission::Accepted.to_text(),
                            ));
                        }
                        Some(update_response::Response::Completed(p)) => events.push((
                            protocol::update_completed_key(&pid),
                            UpdateOutcome::Success(vec![p]).to_text(),
                        )),
                        Some(update_response::Response::Rejected(f)) => {
                            if !self.accepted_updates.contains(&pid) {
                                events.push((
                                    protocol::update_accepted_key(&pid),
                                    UpdateAdmission::Rejected { failure: f.clone() }.to_text(),
                                ));
                            }
                            events.push((
                                protocol::update_completed_key(&pid),
                                UpdateOutcome::Failure(f).to_text(),
                            ));
                        }
                        None => {}
                    }
                }
                Some(Cmd::RespondToQuery(_)) | Some(Cmd::SetPatchMarker(_)) => {}
                Some(Cmd::UpsertWorkflowSearchAttributes(u)) => {
                    let mut fields = self.attrs.search_attributes().unwrap_or_default();
                    for (k, v) in u
                        .search_attributes
                        .map(|s| s.indexed_fields)
                        .unwrap_or_default()
                    {
                        if is_null_payload(&v) {
                            fields.remove(&k);
                        } else {
                            fields.insert(k, v);
                        }
                    }
                    self.attrs.set_search_attributes(&fields);
                    self.merge_attributes();
                }
                Some(Cmd::ModifyWorkflowProperties(m)) => {
                    let mut memo = self.attrs.memo().unwrap_or_default();
                    for (k, v) in m.upserted_memo.map(|m| m.fields).unwrap_or_default() {
                        if is_null_payload(&v) {
                            memo.remove(&k);
                        } else {
                            memo.insert(k, v);
                        }
                    }
                    self.attrs.memo = protocol::encode_payload_map(&memo);
                    self.merge_attributes();
                }
                Some(Cmd::CompleteWorkflowExecution(c)) => {
                    self.write_events(events).await;
                    let result: Vec<Payload> = c.result.into_iter().collect();
                    self.close_completed(result).await;
                    return Ok(Flow::Stop);
                }
                Some(Cmd::FailWorkflowExecution(f)) => {
                    self.write_events(events).await;
                    self.close_failed(f.failure.unwrap_or_default()).await;
                    return Ok(Flow::Stop);
                }
                Some(Cmd::CancelWorkflowExecution(c)) => {
                    self.write_events(events).await;
                    let details = c.details.map(|d| d.payloads).unwrap_or_default();
                    self.finish(TerminalOutcome::Canceled { details }, None)
                        .await;
                    return Ok(Flow::Stop);
                }
                Some(Cmd::ContinueAsNewWorkflowExecution(can)) => {
                    self.write_events(events).await;
                    self.continue_as_new(can).await;
                    return Ok(Flow::Stop);
                }
                Some(Cmd::StartChildWorkflowExecution(sc)) => {
                    let seq = sc.seq;
                    self.children.insert(
                        seq,
                        ChildSlot {
                            command: sc,
                            run_id: None,
                            watcher: None,
                        },
                    );
                    self.start_child(seq);
                }
                Some(Cmd::CancelChildWorkflowExecution(cc)) => {
                    if let Some(child) = self.children.get(&cc.child_workflow_seq)
                        && child.command.cancellation_type != CHILD_ABANDON
                    {
                        let engine = self.engine.clone();
                        let sender = self.run_id.clone();
                        let wf = child.command.workflow_id.clone();
                        let tag = format!("cancel_child:{}", cc.child_workflow_seq);
                        let reason = cc.reason.clone();
                        self.engine.main.spawn(async move {
                            children::send_cancel(&engine, &sender, &tag, &wf, "", &reason).await;
                        });
                    }
                }
                Some(
                    ref v @ (Cmd::SignalExternalWorkflowExecution(_)
                    | Cmd::RequestCancelExternalWorkflowExecution(_)),
                ) => {
                    let key = match v {
                        Cmd::SignalExternalWorkflowExecution(x) => ("signal", x.seq),
                        Cmd::RequestCancelExternalWorkflowExecution(x) => ("cancel", x.seq),
                        _ => continue,
                    };
                    self.externals.insert(key, c.clone());
                    self.start_external(c);
                }
                Some(other) => {
                    return Err(TaskFailure::new(format!(
                        "command {} is not supported by DBOSify yet",
                        variant_name(&other)
                    )));
                }
                None => return Err(TaskFailure::new("workflow command without a variant")),
            }
        }
        self.write_events(events).await;
        Ok(Flow::Continue)
    }

    pub(super) fn cancel_activity(&mut self, seq: u32, local: bool) {
        let Some(slot) = self.activities.get_mut(&seq) else {
            return;
        };
        if slot.resolved {
            return;
        }
        let cancel_type = if local {
            TRY_CANCEL
        } else {
            slot.cancellation_type
        };
        if cancel_type != 2 {
            // TryCancel and WaitCancellationCompleted ask the activity to stop.
            slot.task.cancel.cancel();
        }
        if cancel_type == WAIT_CANCELLATION_COMPLETED {
            return;
        }
        // TryCancel and Abandon resolve the workflow side at once.
        slot.resolved = true;
        let resolution = cancelled_resolution(
            &self.engine,
            &slot.task.activity_type,
            &slot.task.activity_id,
            None,
        );
        self.pending
            .push(job(Variant::ResolveActivity(ResolveActivity {
                seq,
                result: Some(resolution),
                is_local: local,
            })));
    }

    pub(super) fn merge_attributes(&self) {
        let run_id = self.run_id.clone();
        let patch = serde_json::json!({
            "sa": self.attrs.to_json().get("sa").cloned().unwrap_or(serde_json::json!({})),
            "sav": self.attrs.to_json().get("sav").cloned().unwrap_or(serde_json::json!({})),
            "memo": self.attrs.to_json().get("memo").cloned().unwrap_or(serde_json::json!({})),
        });
        let db = self.engine.db.clone();
        self.engine.main.spawn(async move {
            if let Err(e) = db.merge_attributes(&run_id, &patch).await {
                warn!(run_id = %run_id, error = %e, "cannot update search attributes / memo");
            }
        });
    }

    pub(super) async fn write_events(&self, events: Vec<(String, String)>) {
        if events.is_empty() {
            return;
        }
        let run_id = self.run_id.clone();
        if let Err(e) = self
            .engine
            .call(move |db| async move {
                // One transaction for all (e.g. an update's accepted and completed keys).
                db.set_events(&run_id, &events).await?;
                Ok(())
            })
            .await
        {
            warn!(run_id = %self.run_id, error = %e, "cannot publish update responses");
        }
    }
}

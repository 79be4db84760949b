//! The run's inbox: signals, updates and cancel requests become pending jobs; queries are
//! answered from the live instance once the facts before them are delivered.

use super::*;

impl Driver {
    /// Reads the inbox: signals and cancel requests become pending jobs (consumed with the
    /// next activation), update requests become pending admissions (consumed with their
    /// verdict, see `updates.rs`), queries are claimed at once (no checkpoint) and answered from
    /// the live instance once the facts before them are delivered.
    pub(super) async fn read_inbox(&mut self) -> Flow {
        if self.has_pending_update() {
            // Admit the pending updates before reading what came after them.
            self.inbox_dirty = true;
            return Flow::Continue;
        }
        let run_id = self.run_id.clone();
        let msgs = match self.prefetched_inbox.take() {
            Some(m) => m,
            None => match self
                .engine
                .call(move |db| async move { db.peek_messages(&run_id, None, 200).await })
                .await
            {
                Ok(m) => m,
                Err(CallError::Gone) => return Flow::Stop,
                Err(e) => {
                    warn!(run_id = %self.run_id, error = %e, "cannot read the inbox");
                    return Flow::Continue;
                }
            },
        };
        let mut queries = Vec::new();
        let mut saw_query = false;
        debug!(run_id = %self.run_id, messages = msgs.len(), "inbox read");
        for m in msgs {
            if self.seen.contains(&m.message_id) {
                continue;
            }
            if m.topic == INBOX_TOPIC {
                let decoded = InboxMessage::decode(&m.body);
                let is_update = matches!(decoded, Ok(InboxMessage::Update(_)));
                if !is_update && self.has_pending_update() {
                    // Updates are admitted on their own, after the facts before them: whatever
                    // follows an update waits for the next read.
                    self.inbox_dirty = true;
                    break;
                }
                self.seen.insert(m.message_id.clone());
                if !is_update {
                    self.consume.push(m.message_id.clone());
                }
                match decoded {
                    Ok(InboxMessage::Signal(s)) => {
                        if !self.engine.workflows.has_signal(&self.status.name, &s.name) {
                            // Delivered (and recorded) as on Temporal; the workflow drops it.
                            warn!(run_id = %self.run_id, signal = %s.name, workflow_type = %self.status.name,
                                  "signal has no handler in this workflow; it is dropped");
                        }
                        self.pending
                            .push(job(Variant::SignalWorkflow(SignalWorkflow {
                                signal_name: s.name,
                                input: s.payloads,
                                identity: s.identity,
                                headers: s.headers,
                                ..Default::default()
                            })));
                    }
                    Ok(InboxMessage::Update(u)) => {
                        self.update_msgs
                            .insert(u.update_id.clone(), m.message_id.clone());
                        self.pending.push(job(Variant::DoUpdate(DoUpdate {
                            id: u.update_id.clone(),
                            protocol_instance_id: u.update_id,
                            name: u.name,
                            input: u.payloads,
                            headers: u.headers,
                            run_validator: true,
                            ..Default::default()
                        })));
                    }
                    Ok(InboxMessage::Cancel(c)) => {
                        self.pending
                            .push(job(Variant::CancelWorkflow(CancelWorkflow {
                                reason: c.reason,
                            })));
                    }
                    Err(e) => {
                        warn!(run_id = %self.run_id, message = %m.message_id, error = %e, "dropping an undecodable inbox message");
                    }
                }
            } else if m.topic == QUERY_TOPIC {
                self.seen.insert(m.message_id.clone());
                saw_query = true;
            }
        }
        if saw_query {
            // Queries are claimed at once, outside any activation: nothing about them is ever
            // written to the run's history.
            let run_id = self.run_id.clone();
            match self
                .engine
                .call(move |db| async move { db.take_messages(&run_id, QUERY_TOPIC, 200).await })
                .await
            {
                Ok(taken) => {
                    for m in taken {
                        self.seen.insert(m.message_id.clone());
                        match QueryRequest::decode(&m.body) {
                            Ok(q) => queries.push(q),
                            Err(e) => {
                                warn!(run_id = %self.run_id, error = %e, "dropping an undecodable query")
                            }
                        }
                    }
                }
                Err(CallError::Gone) => return Flow::Stop,
                Err(e) => {
                    warn!(run_id = %self.run_id, error = %e, "cannot claim query requests");
                }
            }
        }
        // Queries are answered once every fact before them is delivered (a query sent after a
        // signal sees the signal, as on Temporal).
        self.queued_queries.extend(queries);
        Flow::Continue
    }

    fn has_pending_update(&self) -> bool {
        self.pending
            .iter()
            .any(|j| matches!(j.variant, Some(Variant::DoUpdate(_))))
    }

    pub(super) async fn answer_queries(&mut self, queries: Vec<QueryRequest>) {
        if self.instance.is_none()
            && self.evicted
            && let (Some(factory), Some(init)) = (self.factory.clone(), self.init.clone())
        {
            match self.rebuild(&factory, &init).await {
                Ok(()) => self.evicted = false,
                Err(f) => {
                    warn!(run_id = %self.run_id, error = %f, "cannot rebuild the instance to answer queries")
                }
            }
        }
        let mut events = Vec::new();
        debug!(run_id = %self.run_id, queries = queries.len(), "answering queries");
        for q in queries {
            let answer = match self.instance.as_mut() {
                None => QueryAnswer::Failure(Failure {
                    message: "the workflow is not ready to answer queries (its last task failed)"
                        .into(),
                    ..Default::default()
                }),
                Some(run) => {
                    let activation = WorkflowActivation {
                        run_id: self.run_id.clone(),
                        timestamp: Some(timestamp_ms(self.last_timestamp_ms)),
                        jobs: vec![job(Variant::QueryWorkflow(QueryWorkflow {
                            query_id: q.query_id.clone(),
                            query_type: q.name.clone(),
                            arguments: q.payloads.clone(),
                            headers: q.headers.clone(),
                        }))],
                        ..Default::default()
                    };
                    let answer = if q.name == "__temporal_workflow_metadata" {
                        None
                    } else {
                        Some(query_instance(run, activation, &self.engine.data_converter).await)
                    };
                    match answer {
                        None => {
                            let details = run.current_details();
                            let json = serde_json::json!({ "currentDetails": details });
                            QueryAnswer::Answer(vec![Payload {
                                metadata: HashMap::from([(
                                    "encoding".to_string(),
                                    b"json/plain".to_vec(),
                                )]),
                                data: json.to_string().into_bytes(),
                                ..Default::default()
                            }])
                        }
                        Some(Ok(cmds)) => cmds
                            .into_iter()
                            .find_map(|c| match c.variant {
                                Some(Cmd::RespondToQuery(r)) => Some(r),
                                _ => None,
                            })
                            .map(|r| match r.variant {
                                Some(query_result::Variant::Succeeded(s)) => {
                                    QueryAnswer::Answer(s.response.into_iter().collect())
                                }
                                Some(query_result::Variant::Failed(f)) => QueryAnswer::Failure(f),
                                None => QueryAnswer::Failure(Failure {
                                    message: "empty query result".into(),
                                    ..Default::default()
                                }),
                            })
                            .unwrap_or_else(|| {
                                QueryAnswer::Failure(Failure {
                                    message: "the query produced no answer".into(),
                                    ..Default::default()
                                })
                            }),
                        Some(Err(f)) => QueryAnswer::Failure(*f.failure),
                    }
                }
            };
            events.push((protocol::query_answer_key(&q.query_id), answer.to_text()));
        }
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

/// Runs a query-only activation with the codec applied at the boundary.
pub(super) async fn query_instance(
    run: &mut WorkflowRun,
    mut activation: WorkflowActivation,
    dc: &DataConverter,
) -> Result<Vec<WorkflowCommand>, TaskFailure> {
    let cdata = workflow_context_data();
    decode_payloads(&mut activation, dc.codec(), &cdata)
        .await
        .map_err(|e| TaskFailure::new(format!("Failed decoding query payloads: {e}")))?;
    let mut cmds = run.activate(activation)?;
    for c in &mut cmds {
        encode_payloads(c, dc.codec(), &cdata)
            .await
            .map_err(|e| TaskFailure::new(format!("Failed encoding query answer: {e}")))?;
    }
    Ok(cmds)
}

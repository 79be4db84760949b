//! One held run: replay its recorded activations on a fresh instance, then the live loop.
//!
//! The invariant: every fact (activity result, timer firing, signal, update, cancel request) is
//! recorded as part of an activation checkpoint — together with the inbox messages it consumes,
//! in one commit — before the workflow instance sees it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use dbos_core::{Checkpoint, CompleteResult, StepWrite, WakeKey, WorkflowStatus};
use temporal_compat_client::protocol::{
    self, INBOX_TOPIC, InboxMessage, QUERY_TOPIC, QueryAnswer, QueryRequest, RunAttributes,
    TerminalOutcome, UpdateAdmission, UpdateOutcome,
};
use temporalio_common::payload_visitor::{decode_payloads, encode_payloads};
use temporalio_common_wasm::data_converters::{
    DataConverter, SerializationContextData, WorkflowSerializationContext,
};
use temporalio_common_wasm::protos::coresdk::activity_result::ActivityResolution;
use temporalio_common_wasm::protos::coresdk::workflow_activation::{
    CancelWorkflow, DoUpdate, FireTimer, InitializeWorkflow, NotifyHasPatch, QueryWorkflow,
    ResolveActivity, SignalWorkflow, WorkflowActivation, WorkflowActivationJob,
    workflow_activation_job::Variant,
};
use temporalio_common_wasm::protos::coresdk::workflow_commands::{
    ContinueAsNewWorkflowExecution, StartChildWorkflowExecution, WorkflowCommand, query_result,
    update_response, workflow_command::Variant as Cmd,
};
use temporalio_common_wasm::protos::temporal::api::common::v1::{Memo, Payload, SearchAttributes};
use temporalio_common_wasm::protos::temporal::api::failure::v1::Failure;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::activity::{self, ActivityTask, cancelled_resolution, normalize_retry};
use super::{CallError, Engine, cache, children, duration_of, ms_of, timestamp_ms};
use crate::history::{self, ACTIVATION_STEP, CommandKey, Recorded};
use crate::host::{TaskFailure, WorkflowRun};
use crate::registry::InstanceInput;

/// Facts that arrive for a run from its effects.
#[derive(Debug)]
enum RunEvent {
    /// An activity (or local activity) reached a resolution.
    ActivityDone {
        seq: u32,
        local: bool,
        resolution: Box<ActivityResolution>,
    },
    /// A child's first run was enqueued.
    ChildStarted { seq: u32, run_id: String },
    /// A resolution job produced by an effect (child result, external signal/cancel).
    Job(Box<WorkflowActivationJob>),
}

/// A child workflow the run started and whose result is not yet delivered.
struct ChildSlot {
    command: StartChildWorkflowExecution,
    run_id: Option<String>,
    watcher: Option<tokio::task::AbortHandle>,
}

/// An activity the workflow scheduled and that is not yet resolved.
struct Slot {
    task: ActivityTask,
    cancellation_type: i32,
    started: Option<tokio::task::AbortHandle>,
    resolved: bool,
}

/// What a step of the loop decided.
enum Flow {
    Continue,
    /// The run is over for this worker (finished, decided elsewhere, or halted).
    Stop,
}

const TRY_CANCEL: i32 = 0;
/// `ChildWorkflowCancellationType::Abandon`.
const CHILD_ABANDON: i32 = 0;
const WAIT_CANCELLATION_COMPLETED: i32 = 1;

/// Decrements the held-run count when the run task ends, however it ends.
struct HeldGuard(Arc<Engine>);

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.run_ended();
    }
}

/// Drives one claimed run until it finishes, is decided elsewhere, or the worker halts.
pub(crate) async fn drive(engine: Arc<Engine>, status: WorkflowStatus) {
    let _held = HeldGuard(engine.clone());
    let run_id = status.workflow_id.clone();
    debug!(run_id = %run_id, "run task started");
    let (tx, rx) = mpsc::unbounded_channel();
    let attrs = match RunAttributes::of_run(&status) {
        Ok(a) => a,
        Err(e) => {
            warn!(run_id = %run_id, error = %e, "run attributes do not decode; using defaults");
            RunAttributes::new(
                protocol::parse_run_id(&run_id).0,
                status.name.clone(),
                status.queue_name.clone().unwrap_or_default(),
            )
        }
    };
    let mut driver = Driver {
        engine,
        run_id,
        status,
        attrs,
        history: Vec::new(),
        last_commands: Vec::new(),
        instance: None,
        tx,
        rx,
        pending: Vec::new(),
        consume: Vec::new(),
        seen: HashSet::new(),
        timers: BTreeMap::new(),
        activities: HashMap::new(),
        children: HashMap::new(),
        externals: HashMap::new(),
        accepted_updates: HashSet::new(),
        task_failures: 0,
        last_timestamp_ms: 0,
        inbox_dirty: true,
        evict: Rc::new(Notify::new()),
        evicted: false,
        queued_queries: Vec::new(),
        prefetched_inbox: None,
        factory: None,
        init: None,
    };
    driver.main().await;
    cache::forget(&driver.run_id);
    driver.abort_activities();
}

struct Driver {
    engine: Arc<Engine>,
    run_id: String,
    status: WorkflowStatus,
    attrs: RunAttributes,
    history: Vec<Recorded>,
    last_commands: Vec<CommandKey>,
    instance: Option<WorkflowRun>,
    tx: mpsc::UnboundedSender<RunEvent>,
    rx: mpsc::UnboundedReceiver<RunEvent>,
    pending: Vec<WorkflowActivationJob>,
    consume: Vec<String>,
    seen: HashSet<String>,
    timers: BTreeMap<u32, i64>,
    activities: HashMap<u32, Slot>,
    children: HashMap<u32, ChildSlot>,
    /// Signals/cancels to other workflows not yet resolved, by (kind, seq).
    externals: HashMap<(&'static str, u32), WorkflowCommand>,
    accepted_updates: HashSet<String>,
    task_failures: u32,
    last_timestamp_ms: i64,
    inbox_dirty: bool,
    /// Woken when the cache evicts this run's instance.
    evict: Rc<Notify>,
    /// The instance was evicted (rebuild by replay, effects untouched).
    evicted: bool,
    /// Queries waiting for the facts before them to be delivered.
    queued_queries: Vec<QueryRequest>,
    /// Inbox messages read together with the history at start.
    prefetched_inbox: Option<Vec<dbos_core::Message>>,
    /// How instances of this run are built.
    factory: Option<crate::registry::InstanceFactory>,
    /// The run's initialization job.
    init: Option<InitializeWorkflow>,
}

fn job(v: Variant) -> WorkflowActivationJob {
    WorkflowActivationJob { variant: Some(v) }
}

impl Driver {
    async fn main(&mut self) {
        // Everything the run needs before its first activation.
        let Some(factory) = self.engine.workflows.factory(&self.status.name) else {
            let names = self.engine.workflows.names();
            let msg = format!(
                "Workflow type {} not found: this worker (task queue `{}`) registers {}",
                self.status.name,
                self.engine.task_queue,
                if names.is_empty() {
                    "no workflows".to_string()
                } else {
                    names.join(", ")
                }
            );
            self.fail_run(msg).await;
            return;
        };
        let init = match self.initialize_job() {
            Ok(i) => i,
            Err(msg) => {
                self.fail_run(msg).await;
                return;
            }
        };
        self.factory = Some(factory.clone());
        self.init = Some(init.clone());
        // Register before probing: a message sent from now on wakes the run.
        let mut status_waiter = self
            .engine
            .db
            .register_waiter(WakeKey::Status(self.run_id.clone()));
        let mut inbox_waiter = self
            .engine
            .db
            .register_waiter(WakeKey::Message(self.run_id.clone()));
        // History and inbox are read concurrently (one round trip of latency).
        let checkpoints = loop {
            let run_id = self.run_id.clone();
            match self
                .engine
                .call(move |db| async move {
                    let (cps, msgs) = tokio::join!(
                        db.checkpoints(&run_id),
                        db.peek_messages(&run_id, None, 200)
                    );
                    Ok((cps?, msgs.ok()))
                })
                .await
            {
                Ok((c, msgs)) => {
                    self.prefetched_inbox = msgs;
                    break c;
                }
                Err(CallError::Gone) => return,
                Err(e) => {
                    warn!(run_id = %self.run_id, error = %e, "cannot read the run's history; retrying");
                    if self.pause(Duration::from_secs(1)).await {
                        return;
                    }
                }
            }
        };
        let mut recorded = Vec::new();
        for cp in checkpoints {
            if cp.function_name != ACTIVATION_STEP {
                continue;
            }
            match cp.output.as_deref().map(history::decode) {
                Some(Ok(r)) => recorded.push((cp.function_id, r)),
                other => {
                    let msg = format!(
                        "history checkpoint {} of run `{}` is unreadable: {:?}",
                        cp.function_id,
                        self.run_id,
                        other.map(|r| r.err())
                    );
                    self.fail_run(msg).await;
                    return;
                }
            }
        }
        // Activation 0 is stored only when it carried more than initialization.
        let created = self.status.created_at_ms;
        if recorded.first().is_none_or(|(id, _)| *id != 0) {
            self.history.push(Recorded {
                previous_commands: Vec::new(),
                activation: WorkflowActivation {
                    run_id: self.run_id.clone(),
                    timestamp: Some(timestamp_ms(created)),
                    history_length: 1,
                    jobs: vec![job(Variant::InitializeWorkflow(init.clone()))],
                    ..Default::default()
                },
            });
        }
        for (id, r) in recorded {
            if usize::try_from(id).ok() != Some(self.history.len()) {
                let msg = format!(
                    "history of run `{}` has a gap: found activation {id} after {}",
                    self.run_id,
                    self.history.len()
                );
                self.fail_run(msg).await;
                return;
            }
            self.history.push(r);
        }
        let fresh = self.history.len() == 1 && recorded_zero_is_synthetic(&self.history[0]);

        if fresh {
            // Live start: the initialization job plus whatever already waits in the inbox.
            match self.build_instance(&factory, &init) {
                Ok(()) => {}
                Err(msg) => {
                    self.fail_run(msg).await;
                    return;
                }
            }
            self.history.clear();
            self.pending
                .push(job(Variant::InitializeWorkflow(init.clone())));
        } else {
            match self.replay(&factory, &init).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => return,
                Err(f) => {
                    if self.on_task_failure(f).await {
                        return;
                    }
                }
            }
        }

        loop {
            if self.engine.halt.is_cancelled() {
                return;
            }
            if self.instance.is_none() && !self.evicted {
                // After a workflow-task failure: rebuild by replay.
                match self.replay(&factory, &init).await {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Stop) => return,
                    Err(f) => {
                        if self.on_task_failure(f).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            if self.inbox_dirty {
                self.inbox_dirty = false;
                if let Flow::Stop = self.read_inbox().await {
                    return;
                }
            }
            self.drain_events();
            self.fire_due_timers();
            if self.instance.is_none() && self.evicted && !self.pending.is_empty() {
                // Evicted from the cache: rebuild the instance, leaving effects alone.
                if let Err(f) = self.rebuild(&factory, &init).await {
                    if self.on_task_failure(f).await {
                        return;
                    }
                    continue;
                }
                self.evicted = false;
            }
            if !self.pending.is_empty() {
                match self.activate_live().await {
                    Ok(Flow::Continue) => continue,
                    Ok(Flow::Stop) => return,
                    Err(f) => {
                        if self.on_task_failure(f).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            if !self.queued_queries.is_empty() {
                let queries = std::mem::take(&mut self.queued_queries);
                self.answer_queries(queries).await;
            }
            // Idle: wait for the next fact.
            if self.instance.is_some() {
                cache::touch(
                    &self.run_id,
                    &self.evict,
                    self.engine.settings.cache_per_thread,
                );
            }
            let next_timer = self.timers.values().min().copied();
            let timer_sleep = async {
                match next_timer {
                    Some(at) => {
                        let wait = u64::try_from(at - dbos_core::now_ms()).unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = self.rx.recv() => {
                    if let Some(ev) = ev { self.on_event(ev); }
                }
                _ = timer_sleep => {}
                _ = inbox_waiter.wait(None) => { self.inbox_dirty = true; }
                _ = status_waiter.wait(None) => {
                    if let Flow::Stop = self.check_status().await { return; }
                }
                _ = self.evict.notified() => {
                    if self.instance.take().is_some() {
                        debug!(run_id = %self.run_id, "instance evicted from the cache");
                        self.evicted = true;
                    }
                }
                _ = self.engine.halt.cancelled() => return,
            }
            // Re-register so notifications sent while we were busy are not lost.
            if self.inbox_dirty {
                inbox_waiter = self
                    .engine
                    .db
                    .register_waiter(WakeKey::Message(self.run_id.clone()));
            } else {
                status_waiter = self
                    .engine
                    .db
                    .register_waiter(WakeKey::Status(self.run_id.clone()));
            }
        }
    }

    /// Sleeps, unless the worker halts first (then `true`).
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.engine.halt.cancelled() => true,
        }
    }

    /// The `InitializeWorkflow` job of this run, rebuilt from its row.
    fn initialize_job(&self) -> Result<InitializeWorkflow, String> {
        let arguments = match self.status.inputs.as_deref() {
            Some(text) if !text.is_empty() => {
                protocol::decode_payloads(&format!("input of run `{}`", self.run_id), text)
                    .map_err(|e| format!("Failed to create workflow: {e}"))?
            }
            _ => Vec::new(),
        };
        let a = &self.attrs;
        let ms = |v: Option<u64>| v.map(|m| super::proto_duration(Duration::from_millis(m)));
        Ok(InitializeWorkflow {
            workflow_type: self.status.name.clone(),
            workflow_id: if a.workflow_id.is_empty() {
                protocol::parse_run_id(&self.run_id).0.to_string()
            } else {
                a.workflow_id.clone()
            },
            arguments,
            randomness_seed: history::seed_for(&self.run_id, self.status.created_at_ms),
            headers: a.header().unwrap_or_default(),
            identity: a.identity.clone(),
            workflow_execution_timeout: ms(a.execution_timeout_ms),
            workflow_run_timeout: ms(a.run_timeout_ms),
            workflow_task_timeout: ms(a.task_timeout_ms),
            continued_from_execution_run_id: a.continued_from_run_id.clone().unwrap_or_default(),
            first_execution_run_id: a
                .first_execution_run_id
                .clone()
                .unwrap_or_else(|| self.run_id.clone()),
            attempt: i32::try_from(a.attempt.max(1)).unwrap_or(1),
            cron_schedule: a.cron_schedule.clone().unwrap_or_default(),
            memo: Some(Memo {
                fields: a.memo().unwrap_or_default(),
            }),
            search_attributes: Some(SearchAttributes {
                indexed_fields: a.search_attributes().unwrap_or_default(),
            }),
            start_time: Some(timestamp_ms(self.status.created_at_ms)),
            original_execution_run_id: self.run_id.clone(),
            ..Default::default()
        })
    }

    fn build_instance(
        &mut self,
        factory: &crate::registry::InstanceFactory,
        init: &InitializeWorkflow,
    ) -> Result<(), String> {
        let run = WorkflowRun::new(
            factory,
            InstanceInput {
                namespace: self.engine.namespace.clone(),
                task_queue: self
                    .status
                    .queue_name
                    .clone()
                    .unwrap_or_else(|| self.engine.task_queue.clone()),
                run_id: self.run_id.clone(),
                init: init.clone(),
                data_converter: self.engine.data_converter.clone(),
                host: WorkflowRun::placeholder_host(),
                interceptors: self.engine.workflow_interceptors.clone(),
            },
            self.engine.settings.detect_nondeterminism,
        )?;
        self.instance = Some(run);
        Ok(())
    }

    /// Replays the recorded history on a fresh instance, checking commands, then restarts the
    /// effects of commands still outstanding.
    async fn replay(
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
        let flow = self.process_commands(last_cmds, ts).await?;
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
    async fn rebuild(
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
            if got != expected {
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
    fn apply_resolutions(&mut self, activation: &WorkflowActivation) {
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
    fn track_commands(&mut self, cmds: &[WorkflowCommand], ts: i64) {
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

    fn slot_for(&self, c: &WorkflowCommand, ts: i64) -> Option<(u32, Slot)> {
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

    fn start_activity(&mut self, seq: u32, recovered: bool) {
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

    fn abort_activities(&mut self) {
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
    fn start_child(&mut self, seq: u32) {
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
    fn start_external(&mut self, c: WorkflowCommand) {
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

    async fn deliver(
        &mut self,
        mut activation: WorkflowActivation,
    ) -> Result<Vec<WorkflowCommand>, TaskFailure> {
        let dc = self.engine.data_converter.clone();
        let cdata = workflow_context_data();
        decode_payloads(&mut activation, dc.codec(), &cdata)
            .await
            .map_err(|e| TaskFailure::new(format!("Failed decoding activation payloads: {e}")))?;
        let mut cmds = self.deliver_decoded(activation)?;
        for c in &mut cmds {
            encode_payloads(c, dc.codec(), &cdata)
                .await
                .map_err(|e| TaskFailure::new(format!("Failed encoding command payloads: {e}")))?;
        }
        Ok(cmds)
    }

    fn deliver_decoded(
        &mut self,
        activation: WorkflowActivation,
    ) -> Result<Vec<WorkflowCommand>, TaskFailure> {
        let Some(instance) = self.instance.as_mut() else {
            return Err(TaskFailure::new("no workflow instance"));
        };
        match instance.activate(activation) {
            Ok(c) => Ok(c),
            Err(f) => {
                self.instance = None;
                cache::forget(&self.run_id);
                Err(f)
            }
        }
    }

    fn on_event(&mut self, ev: RunEvent) {
        match ev {
            RunEvent::ActivityDone {
                seq,
                local,
                resolution,
            } => {
                let Some(slot) = self.activities.get_mut(&seq) else {
                    return;
                };
                if slot.resolved {
                    self.activities.remove(&seq);
                    return;
                }
                slot.resolved = true;
                slot.started = None;
                self.pending
                    .push(job(Variant::ResolveActivity(ResolveActivity {
                        seq,
                        result: Some(*resolution),
                        is_local: local,
                    })));
            }
            RunEvent::ChildStarted { seq, run_id } => {
                if self.children.contains_key(&seq) {
                    self.pending.push(children::started_job(seq, &run_id));
                }
            }
            RunEvent::Job(j) => self.pending.push(*j),
        }
    }

    fn drain_events(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            self.on_event(ev);
        }
    }

    fn fire_due_timers(&mut self) {
        let now = dbos_core::now_ms();
        let due: Vec<u32> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in due {
            self.timers.remove(&seq);
            self.pending
                .push(job(Variant::FireTimer(FireTimer { seq })));
        }
    }

    /// Reads the inbox: signals, updates and cancel requests become pending jobs (consumed with
    /// the next activation); queries are answered from the live instance.
    async fn read_inbox(&mut self) -> Flow {
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
        debug!(run_id = %self.run_id, messages = msgs.len(), "inbox read");
        for m in msgs {
            if !self.seen.insert(m.message_id.clone()) {
                continue;
            }
            if m.topic == INBOX_TOPIC {
                self.consume.push(m.message_id.clone());
                match InboxMessage::decode(&m.body) {
                    Ok(InboxMessage::Signal(s)) => {
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
                self.consume.push(m.message_id.clone());
                match QueryRequest::decode(&m.body) {
                    Ok(q) => queries.push(q),
                    Err(e) => {
                        warn!(run_id = %self.run_id, error = %e, "dropping an undecodable query")
                    }
                }
            }
        }
        // Queries are answered once every fact before them is delivered (a query sent after a
        // signal sees the signal, as on Temporal).
        self.queued_queries.extend(queries);
        Flow::Continue
    }

    async fn answer_queries(&mut self, queries: Vec<QueryRequest>) {
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
                for (k, v) in events {
                    db.set_event(&run_id, &k, &v).await?;
                }
                Ok(())
            })
            .await;
    }

    async fn check_status(&mut self) -> Flow {
        let run_id = self.run_id.clone();
        match self
            .engine
            .call(move |db| async move { db.status(&run_id).await })
            .await
        {
            Ok(Some(s))
                if s.state == dbos_core::RunState::Pending
                    && s.executor_id.as_deref() == Some(self.engine.executor_id.as_str()) =>
            {
                Flow::Continue
            }
            Ok(_) => {
                info!(run_id = %self.run_id, "run was decided or taken elsewhere; releasing it");
                Flow::Stop
            }
            Err(_) => Flow::Continue,
        }
    }

    /// Records the pending facts as the next activation (one commit), then delivers it.
    async fn activate_live(&mut self) -> Result<Flow, TaskFailure> {
        let mut jobs = std::mem::take(&mut self.pending);
        history::order_jobs(&mut jobs);
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
            jobs,
            ..Default::default()
        };
        let record = Recorded {
            previous_commands: self.last_commands.clone(),
            activation: activation.clone(),
        };
        let only_init = k == 0
            && activation.jobs.len() == 1
            && matches!(
                activation.jobs[0].variant,
                Some(Variant::InitializeWorkflow(_))
            );
        if !only_init {
            let write = StepWrite {
                checkpoint: Checkpoint {
                    function_id: i32::try_from(k).unwrap_or(i32::MAX),
                    function_name: ACTIVATION_STEP.to_string(),
                    output: Some(history::encode(&record)),
                    started_at_ms: Some(ts),
                    completed_at_ms: Some(now),
                    ..Default::default()
                },
                consume_messages: std::mem::take(&mut self.consume),
                set_events: Vec::new(),
            };
            let run_id = self.run_id.clone();
            let w = write.clone();
            match self
                .engine
                .call(move |db| async move { db.record_step(&run_id, &w).await })
                .await
            {
                Ok(()) => {}
                Err(CallError::Gone) => return Ok(Flow::Stop),
                Err(CallError::Db(dbos_core::Error::CheckpointConflict { .. })) => {
                    warn!(run_id = %self.run_id, position = k, "another executor wrote this run's history; releasing it");
                    return Ok(Flow::Stop);
                }
                Err(CallError::Db(dbos_core::Error::AlreadyConsumed(id))) => {
                    warn!(run_id = %self.run_id, message = %id, "an inbox message was consumed elsewhere; re-reading the inbox");
                    self.pending = record
                        .activation
                        .jobs
                        .into_iter()
                        .filter(|j| {
                            !matches!(
                                j.variant,
                                Some(Variant::SignalWorkflow(_))
                                    | Some(Variant::DoUpdate(_))
                                    | Some(Variant::CancelWorkflow(_))
                            )
                        })
                        .collect();
                    self.seen.clear();
                    self.inbox_dirty = true;
                    return Ok(Flow::Continue);
                }
                Err(e) => {
                    warn!(run_id = %self.run_id, error = %e, "cannot record the next activation; retrying");
                    self.pending = record.activation.jobs;
                    self.consume = write.consume_messages;
                    if self.pause(Duration::from_millis(500)).await {
                        return Ok(Flow::Stop);
                    }
                    return Ok(Flow::Continue);
                }
            }
        }
        self.history.push(record);
        self.last_timestamp_ms = ts;
        self.apply_resolutions(&activation);
        let cmds = self.deliver(activation).await?;
        self.last_commands = history::command_keys(&cmds);
        self.process_commands(cmds, ts).await
    }

    /// Starts the effects of a live activation's commands.
    async fn process_commands(
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
                    self.start_activity(seq, false);
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
                    self.finish(TerminalOutcome::Completed { result }, None)
                        .await;
                    return Ok(Flow::Stop);
                }
                Some(Cmd::FailWorkflowExecution(f)) => {
                    self.write_events(events).await;
                    let failure = f.failure.unwrap_or_default();
                    self.finish(
                        TerminalOutcome::Failed {
                            failure,
                            next_run_id: None,
                        },
                        None,
                    )
                    .await;
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

    fn cancel_activity(&mut self, seq: u32, local: bool) {
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

    fn merge_attributes(&self) {
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

    async fn write_events(&self, events: Vec<(String, String)>) {
        if events.is_empty() {
            return;
        }
        let run_id = self.run_id.clone();
        if let Err(e) = self
            .engine
            .call(move |db| async move {
                for (k, v) in events {
                    db.set_event(&run_id, &k, &v).await?;
                }
                Ok(())
            })
            .await
        {
            warn!(run_id = %self.run_id, error = %e, "cannot publish update responses");
        }
    }

    /// Handles a workflow-task failure: the instance is dropped and the task retried (after a
    /// backoff) by replay. Returns `true` when the run task should end.
    async fn on_task_failure(&mut self, f: TaskFailure) -> bool {
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

    async fn fail_run(&mut self, message: String) {
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
    async fn finish(&mut self, outcome: TerminalOutcome, next_run: Option<String>) {
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

    async fn continue_as_new(&mut self, can: ContinueAsNewWorkflowExecution) {
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

fn workflow_context_data() -> SerializationContextData {
    SerializationContextData::Workflow(WorkflowSerializationContext::new())
}

/// Runs a query-only activation with the codec applied at the boundary.
async fn query_instance(
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

fn recorded_zero_is_synthetic(r: &Recorded) -> bool {
    r.activation.jobs.len() == 1
        && matches!(
            r.activation.jobs[0].variant,
            Some(Variant::InitializeWorkflow(_))
        )
}

fn is_null_payload(p: &Payload) -> bool {
    p.data.is_empty()
        || p.metadata
            .get("encoding")
            .is_some_and(|e| e.as_slice() == b"binary/null")
}

fn join_keys(keys: &[CommandKey]) -> String {
    keys.iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn variant_name(v: &Cmd) -> &'static str {
    match v {
        Cmd::StartChildWorkflowExecution(_) => "StartChildWorkflowExecution",
        Cmd::CancelChildWorkflowExecution(_) => "CancelChildWorkflowExecution",
        Cmd::RequestCancelExternalWorkflowExecution(_) => "RequestCancelExternalWorkflowExecution",
        Cmd::SignalExternalWorkflowExecution(_) => "SignalExternalWorkflowExecution",
        Cmd::CancelSignalWorkflow(_) => "CancelSignalWorkflow",
        Cmd::ScheduleNexusOperation(_) => "ScheduleNexusOperation",
        Cmd::RequestCancelNexusOperation(_) => "RequestCancelNexusOperation",
        _ => "this command",
    }
}

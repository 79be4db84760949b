//! One held run: replay its recorded activations on a fresh instance, then the live loop.
//!
//! The invariant: every fact (activity result, timer firing, signal, update, cancel request) is
//! recorded as part of an activation checkpoint — together with the inbox messages it consumes,
//! in one commit — before the workflow instance sees it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use dbos_core::{Checkpoint, CompleteResult, Mark, StepWrite, WakeKey, WorkflowStatus};
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

mod closed;
mod effects;
mod inbox;
mod outcome;
mod replay;
mod updates;

use super::activity::{self, ActivityTask, cancelled_resolution, normalize_retry};
use super::{CallError, Engine, IDLE_RECHECK, cache, children, duration_of, ms_of, timestamp_ms};
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
pub(crate) use closed::answer_closed;
pub(crate) use outcome::chain_end_retry_state;

/// Drives one claimed run until it finishes, is decided elsewhere, or the worker halts.
pub(crate) async fn drive(engine: Arc<Engine>, status: WorkflowStatus, mark: Option<Mark>) {
    let _held = HeldGuard(engine.clone());
    debug!(run_id = %status.workflow_id, "run task started");
    let mut driver = Driver::new(engine, status);
    driver.claim_mark = mark;
    driver.main().await;
    cache::forget(&driver.run_id);
    driver.abort_activities();
}

impl Driver {
    /// A driver for `status`, before anything is loaded.
    fn new(engine: Arc<Engine>, status: WorkflowStatus) -> Self {
        let run_id = status.workflow_id.clone();
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
        // A run claimed again after its worker died: the activities its last activations
        // scheduled may have run already, so they resume from their durable attempt number and
        // heartbeat details.
        let recovering = status.recovery_attempts > 0;
        Driver {
            recovering,
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
            replay_only: false,
            update_msgs: HashMap::new(),
            claim_mark: None,
            unrecorded: None,
        }
    }
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
    /// Rebuilt only to answer queries on a closed run: the last activation's commands are not
    /// known (nothing followed them) and nothing is executed.
    replay_only: bool,
    /// Inbox message of each update not yet admitted (update id → message id): updates are
    /// consumed with their admission, not with the activation that read them.
    update_msgs: HashMap<String, String>,
    /// Set while the run is rebuilt after a worker death, until the commands of its last
    /// activation are executed: activities started meanwhile load their durable attempt number
    /// and heartbeat details.
    recovering: bool,
    /// The wake-up mark taken before the claim that returned this run (see
    /// [`dbos_core::ClaimFacts`]).
    claim_mark: Option<Mark>,
    /// The delivered last activation of a closing run, recorded by [`Self::finish`] in the
    /// completion's commit.
    unrecorded: Option<StepWrite>,
}

fn job(v: Variant) -> WorkflowActivationJob {
    WorkflowActivationJob { variant: Some(v) }
}

impl Driver {
    async fn main(&mut self) {
        // A run claimed after its deadline (no worker was up, or its worker died) closes at
        // once.
        if self.expire_if_due().await {
            return;
        }
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
        // Register before probing: a message sent from now on wakes the run. With the claim's
        // mark, a message sent since the claim began has woken the waiter already.
        let key_since = |key: WakeKey| match self.claim_mark {
            Some(mark) => self.engine.db.register_waiter_since(key, mark),
            None => self.engine.db.register_waiter(key),
        };
        let mut status_waiter = key_since(WakeKey::Status(self.run_id.clone()));
        let mut inbox_waiter = key_since(WakeKey::Message(self.run_id.clone()));
        // What the claim saw spares the reads of a fresh run: no checkpoints, no history to
        // load; no unconsumed messages in the claim's snapshot, and any sent since woke the
        // inbox waiter.
        let facts = self
            .status
            .claim_facts
            .filter(|_| self.claim_mark.is_some());
        let read_history = facts.is_none_or(|f| f.has_steps);
        let read_inbox = facts.is_none_or(|f| f.has_messages);
        if !read_inbox {
            self.prefetched_inbox = Some(Vec::new());
        }
        // History and inbox are read concurrently (one round trip of latency).
        let checkpoints = loop {
            if !read_history && !read_inbox {
                break Vec::new();
            }
            let run_id = self.run_id.clone();
            match self
                .engine
                .call(move |db| async move {
                    let cps = async {
                        if read_history {
                            db.checkpoints(&run_id).await
                        } else {
                            Ok(Vec::new())
                        }
                    };
                    let msgs = async {
                        if read_inbox {
                            db.peek_messages(&run_id, None, 200).await.ok()
                        } else {
                            Some(Vec::new())
                        }
                    };
                    let (cps, msgs) = tokio::join!(cps, msgs);
                    Ok((cps?, msgs))
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
            // A run with history that is claimed is being recovered (or resumed).
            self.recovering = true;
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
            if self.expire_if_due().await {
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
            // The run's own deadline wakes the loop like a timer (the loop's top closes it).
            let next_timer = self
                .timers
                .values()
                .copied()
                .chain(self.deadline().map(|d| d.at_ms))
                .min();
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
                _ = inbox_waiter.wait_up_to(IDLE_RECHECK) => { self.inbox_dirty = true; }
                _ = status_waiter.wait_up_to(IDLE_RECHECK) => {
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
            retry_policy: a
                .retry_policy
                .as_ref()
                .and_then(|v| serde_json::from_value(v.clone()).ok()),
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

    /// Records the pending facts as the next activation (one commit), then delivers it. Update
    /// requests go through admission first ([`Self::admit_updates`]): facts before them are
    /// activated first, then the updates alone.
    async fn activate_live(&mut self) -> Result<Flow, TaskFailure> {
        let is_update = |j: &WorkflowActivationJob| matches!(j.variant, Some(Variant::DoUpdate(_)));
        if !self.pending.iter().any(is_update) {
            return self.activate_recorded().await;
        }
        let admissible = |j: &WorkflowActivationJob| {
            matches!(
                j.variant,
                Some(Variant::DoUpdate(_)) | Some(Variant::InitializeWorkflow(_))
            )
        };
        if self.pending.iter().all(admissible) {
            return self.admit_updates().await;
        }
        let (updates, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(is_update);
        self.pending = others;
        let flow = self.activate_recorded().await;
        let rest = std::mem::replace(&mut self.pending, updates);
        self.pending.extend(rest);
        flow
    }

    /// Delivers the pending facts as the next activation, then records it (one commit) before
    /// any of its commands takes effect. An activation whose commands close the run (and start
    /// no next run) is recorded together with the run's outcome, in the completion's commit.
    ///
    /// Recording after delivery is safe because delivery has no effect outside this process:
    /// if the record fails, the instance is dropped and the facts are delivered again after a
    /// replay. A delivery that fails (a workflow-task failure) still records the activation,
    /// so that its facts (an activity's result, say) are never lost.
    async fn activate_recorded(&mut self) -> Result<Flow, TaskFailure> {
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
        let write = (!only_init)
            .then(|| activation_write(k, &record, ts, now, std::mem::take(&mut self.consume)));
        self.apply_resolutions(&activation);
        let cmds = match self.deliver(activation).await {
            Ok(cmds) => cmds,
            Err(failure) => {
                // Keep the facts: record the activation, then fail the task (replay includes it).
                if let Some(write) = write {
                    match self.record(write, &record).await {
                        Recording::Done => {
                            self.history.push(record);
                            self.last_timestamp_ms = ts;
                        }
                        Recording::Stop => return Ok(Flow::Stop),
                        Recording::Redo(_) => {}
                    }
                }
                return Err(failure);
            }
        };
        if let Some(write) = write {
            if self.closes_without_successor(&cmds) {
                self.unrecorded = Some(write);
            } else {
                match self.record(write, &record).await {
                    Recording::Done => {}
                    Recording::Stop => return Ok(Flow::Stop),
                    Recording::Redo(why) => return Err(TaskFailure::new(why)),
                }
            }
        }
        self.history.push(record);
        self.last_timestamp_ms = ts;
        self.last_commands = history::command_keys(&cmds);
        let flow = self.process_commands(cmds, ts).await;
        self.recovering = false;
        flow
    }

    /// Whether `cmds` close the run in a way that starts no next run (completion, failure or
    /// cancellation of a run without retry policy or cron schedule): its last activation can
    /// then be recorded in the completion's commit.
    fn closes_without_successor(&self, cmds: &[WorkflowCommand]) -> bool {
        self.attrs.retry_policy.is_none()
            && self.attrs.cron_schedule.is_none()
            && cmds.iter().any(|c| {
                matches!(
                    c.variant,
                    Some(
                        Cmd::CompleteWorkflowExecution(_)
                            | Cmd::FailWorkflowExecution(_)
                            | Cmd::CancelWorkflowExecution(_)
                    )
                )
            })
    }

    /// Records a delivered activation. When that fails for a reason other than losing the run,
    /// the facts go back to `pending` (and its messages to `consume`) to be delivered again by
    /// a fresh instance.
    pub(super) async fn record(&mut self, write: StepWrite, record: &Recorded) -> Recording {
        let run_id = self.run_id.clone();
        let w = write.clone();
        let k = write.checkpoint.function_id;
        match self
            .engine
            .call(move |db| async move { db.record_step(&run_id, &w).await })
            .await
        {
            Ok(()) => Recording::Done,
            Err(CallError::Gone) => Recording::Stop,
            Err(CallError::Db(dbos_core::Error::CheckpointConflict { .. })) => {
                warn!(run_id = %self.run_id, position = k, "another executor wrote this run's history; releasing it");
                Recording::Stop
            }
            Err(CallError::Db(dbos_core::Error::AlreadyConsumed(id))) => {
                warn!(run_id = %self.run_id, message = %id, "an inbox message was consumed elsewhere; re-reading the inbox");
                self.pending = record
                    .activation
                    .jobs
                    .iter()
                    .filter(|j| {
                        !matches!(
                            j.variant,
                            Some(Variant::SignalWorkflow(_))
                                | Some(Variant::DoUpdate(_))
                                | Some(Variant::CancelWorkflow(_))
                        )
                    })
                    .cloned()
                    .collect();
                self.seen.clear();
                self.inbox_dirty = true;
                Recording::Redo(format!("inbox message {id} was consumed elsewhere"))
            }
            Err(e) => {
                warn!(run_id = %self.run_id, error = %e, "cannot record the next activation; it will be delivered again");
                self.pending = record.activation.jobs.clone();
                self.consume = write.consume_messages;
                Recording::Redo(format!("cannot record activation {k}: {e}"))
            }
        }
    }
}

/// What recording a delivered activation came to.
pub(super) enum Recording {
    /// Recorded.
    Done,
    /// The run is no longer this worker's.
    Stop,
    /// Not recorded: the instance saw facts that are not durable; it must be rebuilt and the
    /// facts (back in `pending`) delivered again.
    Redo(String),
}

/// The checkpoint write of activation `k` (its record, timestamps and consumed messages).
fn activation_write(
    k: usize,
    record: &Recorded,
    ts: i64,
    now: i64,
    consume_messages: Vec<String>,
) -> StepWrite {
    StepWrite {
        checkpoint: Checkpoint {
            function_id: i32::try_from(k).unwrap_or(i32::MAX),
            function_name: ACTIVATION_STEP.to_string(),
            output: Some(history::encode(record)),
            started_at_ms: Some(ts),
            completed_at_ms: Some(now),
            ..Default::default()
        },
        consume_messages,
        set_events: Vec::new(),
    }
}

fn workflow_context_data() -> SerializationContextData {
    SerializationContextData::Workflow(WorkflowSerializationContext::new())
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

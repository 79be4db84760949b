//! The schedule engine shared by the client (create, trigger, pause, update, backfill) and the
//! workers' schedulers (firing due schedules): how a Temporal schedule is stored in a
//! `dbosify_schedules` row and the one evaluation every change goes through.
//!
//! Stored form: `definition` = `{"schedule": base64 of the protobuf-encoded
//! temporal.api.schedule.v1.Schedule, "workflow_type", "task_queue", "workflow_id"}` (the last
//! three for people reading the table); `state` = [`State`] JSON (counters, recent actions,
//! buffered starts, create/update times). The schedule's pause flag, note and remaining actions
//! live in the proto's `state`, as on a Temporal server.
//!
//! A start is a run of workflow id `<action workflow id>-<nominal time, RFC 3339 seconds>`
//! (or the action's id alone with `keep_original_workflow_id`), created by the same enqueue as
//! `Client::start_workflow`'s, inside the evaluation's transaction: a nominal time evaluated
//! twice finds its run and never starts it again.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use dbos_core::{
    EnqueueRequest, ScheduleChange, ScheduleRow, ScheduleTarget, SystemDatabase, WorkflowStatus,
};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use temporalio_protos::temporal::api::common::v1::Payload;
use temporalio_protos::temporal::api::schedule::v1 as proto;
use temporalio_protos::temporal::api::workflow::v1::NewWorkflowExecutionInfo;
use tracing::{debug, info, warn};

use super::spec::{CompiledSpec, format_rfc3339_seconds};
use crate::protocol::{self, RunAttributes, TerminalOutcome};

/// How many recent actions a schedule remembers (as Temporal shows).
pub(crate) const RECENT_ACTIONS: usize = 10;
/// Temporal's default catch-up window (one year).
const DEFAULT_CATCHUP_MS: i64 = 365 * 24 * 3600 * 1000;
/// Most due times one evaluation processes before skipping ahead.
const MAX_DUE_PER_EVALUATION: usize = 1000;
/// Most actions one backfill may produce.
pub(crate) const MAX_BACKFILL_ACTIONS: usize = 10_000;

/// Overlap policy numbers of `temporal.api.enums.v1.ScheduleOverlapPolicy`.
pub(crate) mod overlap {
    pub(crate) const UNSPECIFIED: i32 = 0;
    pub(crate) const SKIP: i32 = 1;
    pub(crate) const BUFFER_ONE: i32 = 2;
    pub(crate) const BUFFER_ALL: i32 = 3;
    pub(crate) const CANCEL_OTHER: i32 = 4;
    pub(crate) const TERMINATE_OTHER: i32 = 5;
    pub(crate) const ALLOW_ALL: i32 = 6;
}

/// Refuses overlap policies DBOSify does not implement.
pub(crate) fn check_overlap_policy(p: i32) -> Result<(), String> {
    match p {
        overlap::CANCEL_OTHER => Err(
            "the schedule overlap policy CancelOther is not supported by DBOSify; use \
             TerminateOther, Skip, BufferOne, BufferAll or AllowAll"
                .into(),
        ),
        0..=6 => Ok(()),
        other => Err(format!("unknown schedule overlap policy {other}")),
    }
}

/// A start waiting for the running workflow to finish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Buffered {
    pub(crate) nominal_ms: i64,
    pub(crate) manual: bool,
    pub(crate) policy: i32,
}

/// One action taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RecentAction {
    pub(crate) schedule_ms: i64,
    pub(crate) actual_ms: i64,
    pub(crate) workflow_id: String,
    pub(crate) run_id: String,
}

/// The `state` JSON of a schedule row.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct State {
    pub(crate) action_count: i64,
    pub(crate) missed_catchup_window: i64,
    pub(crate) overlap_skipped: i64,
    pub(crate) buffer_dropped: i64,
    pub(crate) recent: Vec<RecentAction>,
    pub(crate) buffer: Vec<Buffered>,
    pub(crate) create_ms: i64,
    pub(crate) update_ms: Option<i64>,
    /// Why the stored definition cannot be used (set instead of firing).
    pub(crate) invalid: Option<String>,
}

impl State {
    pub(crate) fn decode(value: &serde_json::Value) -> Self {
        serde_json::from_value(value.clone()).unwrap_or_default()
    }

    fn encode(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|_| serde_json::json!({}))
    }
}

/// The stored definition.
pub(crate) fn encode_definition(schedule: &proto::Schedule) -> serde_json::Value {
    let info = start_info(schedule);
    serde_json::json!({
        "schedule": B64.encode(schedule.encode_to_vec()),
        "workflow_type": info.and_then(|i| i.workflow_type.as_ref()).map(|t| t.name.clone()),
        "task_queue": info.and_then(|i| i.task_queue.as_ref()).map(|t| t.name.clone()),
        "workflow_id": info.map(|i| i.workflow_id.clone()),
    })
}

/// Reads the stored definition.
pub(crate) fn decode_definition(value: &serde_json::Value) -> Result<proto::Schedule, String> {
    let text = value
        .get("schedule")
        .and_then(|v| v.as_str())
        .ok_or("the stored schedule has no `schedule` field")?;
    let bytes = B64
        .decode(text)
        .map_err(|e| format!("the stored schedule is not base64: {e}"))?;
    proto::Schedule::decode(bytes.as_slice())
        .map_err(|e| format!("the stored schedule does not decode: {e}"))
}

/// The start-workflow action of a schedule.
pub(crate) fn start_info(schedule: &proto::Schedule) -> Option<&NewWorkflowExecutionInfo> {
    match schedule.action.as_ref()?.action.as_ref()? {
        proto::schedule_action::Action::StartWorkflow(info) => Some(info),
    }
}

/// Checks a schedule definition: its spec compiles, its action can be started by DBOSify, its
/// policies are supported. Returns the compiled spec.
pub(crate) fn validate(schedule: &proto::Schedule) -> Result<CompiledSpec, String> {
    let spec = CompiledSpec::compile(&schedule.spec.clone().unwrap_or_default())?;
    let info = start_info(schedule).ok_or("a schedule needs a start-workflow action")?;
    if info.workflow_id.is_empty() {
        return Err("the schedule action needs a workflow id".into());
    }
    protocol::validate_workflow_id(&info.workflow_id).map_err(|e| e.to_string())?;
    if info
        .workflow_type
        .as_ref()
        .is_none_or(|t| t.name.is_empty())
    {
        return Err("the schedule action needs a workflow type".into());
    }
    if info.task_queue.as_ref().is_none_or(|t| t.name.is_empty()) {
        return Err("the schedule action needs a task queue".into());
    }
    let refuse = |what: &str| {
        Err(format!(
            "{what} on a schedule's start-workflow action is not supported by DBOSify"
        ))
    };
    if info.workflow_execution_timeout.is_some() || info.workflow_run_timeout.is_some() {
        return refuse("workflow_execution_timeout / workflow_run_timeout");
    }
    if info.retry_policy.is_some() {
        return refuse("a workflow retry_policy");
    }
    if !info.cron_schedule.is_empty() {
        return refuse("cron_schedule");
    }
    if info.user_metadata.is_some() {
        return refuse("user_metadata (summary/details)");
    }
    if info.versioning_override.is_some() {
        return refuse("versioning_override");
    }
    if info
        .priority
        .as_ref()
        .is_some_and(|p| !p.fairness_key.is_empty() || p.fairness_weight != 0.0)
    {
        return refuse("a priority fairness key/weight");
    }
    if info.workflow_id_reuse_policy != 0 {
        return refuse("workflow_id_reuse_policy");
    }
    if let Some(p) = &schedule.policies {
        check_overlap_policy(p.overlap_policy)?;
        if p.keep_original_workflow_id {
            // Every action would need a new run of one workflow id, which the deterministic
            // per-time run ids cannot express yet.
            return Err(
                "the schedule policy keep_original_workflow_id is not supported by \
                        DBOSify; scheduled workflow ids always end with the nominal time"
                    .into(),
            );
        }
    }
    Ok(spec)
}

/// What an evaluation does besides the routine work (closed runs, buffer, due times).
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Only the routine work (a scheduler found the schedule due).
    Fire,
    /// Take one manual action now with this overlap policy (0 = the schedule's).
    Trigger(i32),
    /// Take manual actions at these nominal times, each with its policy.
    Backfill(Vec<(i64, i32)>),
    /// Pause with this note.
    Pause(String),
    /// Unpause with this note.
    Unpause(String),
    /// Replace the definition (already validated).
    Replace(Box<proto::Schedule>),
}

/// The one evaluation of a schedule row (see the module documentation). Pure: the caller's
/// transaction writes the returned change.
pub(crate) fn evaluate(
    row: &ScheduleRow,
    runs: &[WorkflowStatus],
    op: &Op,
    now: i64,
    max_value_bytes: usize,
) -> (Option<ScheduleChange>, Result<(), String>) {
    let mut state = State::decode(&row.state);
    let mut schedule = match op {
        Op::Replace(s) => (**s).clone(),
        _ => match decode_definition(&row.definition) {
            Ok(s) => s,
            Err(e) => return invalid(row, state, e),
        },
    };
    let spec = match validate(&schedule) {
        Ok(s) => s,
        Err(e) => return invalid(row, state, e),
    };
    let mut next = row.next_fire_at_ms;
    let mut sched_state = schedule.state.clone().unwrap_or_default();
    match op {
        Op::Replace(_) => {
            state.update_ms = Some(now);
            next = spec.next_after(now);
        }
        Op::Pause(note) => {
            sched_state.paused = true;
            sched_state.notes = note.clone();
            state.update_ms = Some(now);
        }
        Op::Unpause(note) => {
            if sched_state.paused {
                next = spec.next_after(now);
            }
            sched_state.paused = false;
            sched_state.notes = note.clone();
            state.update_ms = Some(now);
        }
        Op::Fire | Op::Trigger(_) | Op::Backfill(_) => {}
    }
    let policies = schedule.policies.unwrap_or_default();
    let mut ctx = Ctx {
        schedule_id: &row.schedule_id,
        info: match start_info(&schedule) {
            Some(i) => i.clone(),
            None => return invalid(row, state, "no start-workflow action".into()),
        },
        keep_id: policies.keep_original_workflow_id,
        jitter_ms: spec.jitter_ms,
        now,
        open: runs
            .iter()
            .filter(|r| !r.state.is_terminal())
            .map(|r| r.workflow_id.clone())
            .collect(),
        start: Vec::new(),
        cancel: Vec::new(),
        error: None,
        max_value_bytes,
    };

    // Runs that finished since the last evaluation: pause on failure.
    if policies.pause_on_failure {
        for r in runs.iter().filter(|r| r.state.is_terminal()) {
            let failed = matches!(
                TerminalOutcome::from_status(r),
                Ok(Some(
                    TerminalOutcome::Failed { .. } | TerminalOutcome::TimedOut { .. }
                ))
            );
            if failed && !sched_state.paused {
                sched_state.paused = true;
                sched_state.notes = format!(
                    "paused because workflow run `{}` failed (pause_on_failure)",
                    r.workflow_id
                );
                info!(schedule_id = %row.schedule_id, run = %r.workflow_id, "schedule paused after a failed run");
            }
        }
    }

    // Buffered starts whose turn came.
    process_buffer(&mut ctx, &mut state);

    // Manual actions.
    let default_policy = match policies.overlap_policy {
        overlap::UNSPECIFIED => overlap::SKIP,
        p => p,
    };
    let resolve = |p: i32| {
        if p == overlap::UNSPECIFIED {
            default_policy
        } else {
            p
        }
    };
    match op {
        Op::Trigger(p) => take_action(&mut ctx, &mut state, now, true, resolve(*p)),
        Op::Backfill(times) => {
            for &(t, p) in times {
                take_action(&mut ctx, &mut state, t, true, resolve(p));
            }
        }
        _ => {}
    }

    // Scheduled times that came.
    let catchup = policies
        .catchup_window
        .as_ref()
        .map(|d| d.seconds.saturating_mul(1000))
        .filter(|w| *w > 0)
        .unwrap_or(DEFAULT_CATCHUP_MS)
        .max(10_000);
    let mut processed = 0;
    while let Some(nominal) = next.filter(|n| *n <= now) {
        if processed == MAX_DUE_PER_EVALUATION {
            state.missed_catchup_window += 1;
            next = spec.next_after(now);
            break;
        }
        processed += 1;
        if sched_state.paused {
            // Paused: times pass without actions.
        } else if sched_state.limited_actions && sched_state.remaining_actions <= 0 {
            next = None;
            break;
        } else if now - nominal > catchup {
            state.missed_catchup_window += 1;
        } else {
            if sched_state.limited_actions {
                sched_state.remaining_actions -= 1;
            }
            take_action(&mut ctx, &mut state, nominal, false, default_policy);
        }
        next = spec.next_after(nominal);
    }
    if sched_state.paused || (sched_state.limited_actions && sched_state.remaining_actions <= 0) {
        next = None;
    } else if next.is_none() && matches!(op, Op::Unpause(_)) {
        next = spec.next_after(now);
    }

    if let Some(e) = ctx.error.take() {
        // The action can never be started as defined: record why and stop firing, rather
        // than failing this evaluation again and again.
        return invalid(row, State::decode(&row.state), e);
    }
    let wake_on_finish = !state.buffer.is_empty()
        || (policies.pause_on_failure && !(ctx.open.is_empty() && ctx.start.is_empty()));
    schedule.state = Some(sched_state);
    state.invalid = None;
    let change = ScheduleChange {
        definition: Some(encode_definition(&schedule)),
        state: state.encode(),
        next_fire_at_ms: next,
        wake_on_finish,
        cancel: ctx.cancel,
        start: ctx.start,
    };
    (Some(change), Ok(()))
}

/// A stored definition that cannot be used: record why and stop firing (never spin on it).
fn invalid(
    row: &ScheduleRow,
    mut state: State,
    reason: String,
) -> (Option<ScheduleChange>, Result<(), String>) {
    warn!(schedule_id = %row.schedule_id, reason = %reason, "schedule cannot fire");
    state.invalid = Some(reason.clone());
    (
        Some(ScheduleChange {
            definition: None,
            state: state.encode(),
            next_fire_at_ms: None,
            wake_on_finish: false,
            cancel: Vec::new(),
            start: Vec::new(),
        }),
        Err(reason),
    )
}

struct Ctx<'a> {
    schedule_id: &'a str,
    info: NewWorkflowExecutionInfo,
    keep_id: bool,
    jitter_ms: i64,
    now: i64,
    /// Open runs of this schedule, including the ones this evaluation starts.
    open: Vec<String>,
    start: Vec<EnqueueRequest>,
    cancel: Vec<(String, String)>,
    error: Option<String>,
    max_value_bytes: usize,
}

fn process_buffer(ctx: &mut Ctx<'_>, state: &mut State) {
    while !state.buffer.is_empty() && ctx.open.is_empty() {
        let b = state.buffer.remove(0);
        start(ctx, state, b.nominal_ms, b.manual);
    }
}

fn take_action(ctx: &mut Ctx<'_>, state: &mut State, nominal: i64, manual: bool, policy: i32) {
    let busy = !ctx.open.is_empty() || !state.buffer.is_empty();
    match policy {
        overlap::ALLOW_ALL => start(ctx, state, nominal, manual),
        overlap::TERMINATE_OTHER => {
            terminate_open(ctx, state);
            start(ctx, state, nominal, manual);
        }
        overlap::BUFFER_ONE if busy => {
            if state.buffer.is_empty() {
                state.buffer.push(Buffered {
                    nominal_ms: nominal,
                    manual,
                    policy,
                });
            } else {
                state.buffer_dropped += 1;
            }
        }
        overlap::BUFFER_ALL if busy => state.buffer.push(Buffered {
            nominal_ms: nominal,
            manual,
            policy,
        }),
        overlap::BUFFER_ONE | overlap::BUFFER_ALL => start(ctx, state, nominal, manual),
        _ if busy => state.overlap_skipped += 1,
        _ => start(ctx, state, nominal, manual),
    }
}

/// Terminates every open run of the schedule (overlap policy TerminateOther), in the
/// evaluation's transaction. A run this same evaluation was about to start is not started.
fn terminate_open(ctx: &mut Ctx<'_>, state: &mut State) {
    let outcome = TerminalOutcome::Terminated {
        reason: format!(
            "terminated by schedule `{}` (overlap policy TerminateOther)",
            ctx.schedule_id
        ),
        details: Vec::new(),
        identity: Some(format!("schedule:{}", ctx.schedule_id)),
    };
    let text = outcome.to_error_text();
    for run in std::mem::take(&mut ctx.open) {
        if let Some(at) = ctx.start.iter().position(|r| r.workflow_id == run) {
            ctx.start.remove(at);
            state.recent.retain(|a| a.run_id != run);
        } else {
            ctx.cancel.push((run, text.clone()));
        }
    }
}

/// The workflow id of the action at `nominal`.
pub(crate) fn action_workflow_id(prefix: &str, keep: bool, nominal_ms: i64) -> String {
    if keep {
        prefix.to_string()
    } else {
        format!("{prefix}-{}", format_rfc3339_seconds(nominal_ms))
    }
}

fn start(ctx: &mut Ctx<'_>, state: &mut State, nominal: i64, manual: bool) {
    let workflow_id = action_workflow_id(&ctx.info.workflow_id, ctx.keep_id, nominal);
    // The same second twice (a trigger right after another): one run, as the id is the same.
    if ctx.open.contains(&workflow_id) || state.recent.iter().any(|r| r.run_id == workflow_id) {
        debug!(schedule_id = %ctx.schedule_id, workflow_id = %workflow_id, "action already taken for this time");
        return;
    }
    let jitter = if !manual && ctx.jitter_ms > 0 {
        rand::random_range(0..ctx.jitter_ms)
    } else {
        0
    };
    let request = start_request(ctx.schedule_id, &ctx.info, &workflow_id, nominal, jitter);
    match check_request(&request, ctx.max_value_bytes) {
        Ok(()) => {
            ctx.open.push(workflow_id.clone());
            state.action_count += 1;
            state.recent.push(RecentAction {
                schedule_ms: nominal,
                actual_ms: ctx.now + jitter,
                workflow_id: workflow_id.clone(),
                run_id: workflow_id,
            });
            if state.recent.len() > RECENT_ACTIONS {
                let extra = state.recent.len() - RECENT_ACTIONS;
                state.recent.drain(..extra);
            }
            ctx.start.push(request);
        }
        Err(e) => ctx.error = Some(e),
    }
}

/// What the enqueue would refuse, refused before it (so a schedule never fails its
/// evaluation again and again).
fn check_request(request: &EnqueueRequest, max_value_bytes: usize) -> Result<(), String> {
    if request.workflow_id.len() > 1024 {
        return Err(format!(
            "the scheduled workflow id `{}…` is longer than 1024 bytes",
            request.workflow_id.chars().take(40).collect::<String>()
        ));
    }
    check_input_size(request.inputs.len(), max_value_bytes)
}

fn check_input_size(size: usize, max_value_bytes: usize) -> Result<(), String> {
    if size > max_value_bytes {
        return Err(format!(
            "the schedule's workflow input is {size} bytes, over the limit of {max_value_bytes} bytes"
        ));
    }
    Ok(())
}

/// Checks a definition against the database's value limits.
pub(crate) fn check_limits(
    schedule: &proto::Schedule,
    max_value_bytes: usize,
) -> Result<(), String> {
    if let Some(input) = start_info(schedule).and_then(|i| i.input.as_ref()) {
        check_input_size(
            protocol::encode_payloads(&input.payloads).len(),
            max_value_bytes,
        )?;
    }
    let definition = encode_definition(schedule).to_string();
    if definition.len() > max_value_bytes {
        return Err(format!(
            "the schedule definition is {} bytes, over the limit of {max_value_bytes} bytes",
            definition.len()
        ));
    }
    Ok(())
}

fn json_payload(v: serde_json::Value) -> Payload {
    Payload {
        metadata: HashMap::from([("encoding".to_string(), b"json/plain".to_vec())]),
        data: v.to_string().into_bytes(),
        external_payloads: vec![],
    }
}

/// The enqueue request of a scheduled start: the same run layout as `Client::start_workflow`,
/// plus Temporal's `TemporalScheduledById` / `TemporalScheduledStartTime` search attributes.
fn start_request(
    schedule_id: &str,
    info: &NewWorkflowExecutionInfo,
    workflow_id: &str,
    nominal: i64,
    jitter_ms: i64,
) -> EnqueueRequest {
    let workflow_type = info
        .workflow_type
        .as_ref()
        .map(|t| t.name.clone())
        .unwrap_or_default();
    let task_queue = info
        .task_queue
        .as_ref()
        .map(|t| t.name.clone())
        .unwrap_or_default();
    let mut attrs = RunAttributes::new(workflow_id, workflow_type, task_queue);
    attrs.identity = format!("schedule:{schedule_id}");
    attrs.first_execution_run_id = Some(workflow_id.to_string());
    let mut sa: HashMap<String, Payload> = info
        .search_attributes
        .as_ref()
        .map(|s| s.indexed_fields.clone())
        .unwrap_or_default();
    sa.insert(
        "TemporalScheduledById".into(),
        json_payload(serde_json::Value::String(schedule_id.to_string())),
    );
    sa.insert(
        "TemporalScheduledStartTime".into(),
        json_payload(serde_json::Value::String(format_rfc3339_seconds(nominal))),
    );
    attrs.set_search_attributes(&sa);
    if let Some(m) = &info.memo {
        attrs.memo = protocol::encode_payload_map(&m.fields);
    }
    if let Some(h) = &info.header {
        attrs.header = protocol::encode_payload_map(&h.fields);
    }
    if let Some(t) = &info.workflow_task_timeout {
        attrs.task_timeout_ms = u64::try_from(t.seconds.saturating_mul(1000)).ok();
    }
    if let Some(p) = &info.priority
        && p.priority_key > 0
    {
        attrs.priority_key = u32::try_from(p.priority_key).ok();
    }
    let input: &[Payload] = info.input.as_ref().map_or(&[], |i| &i.payloads);
    let mut request = protocol::new_run_request(workflow_id, &attrs, input);
    if jitter_ms > 0 {
        request.delay = Some(std::time::Duration::from_millis(
            u64::try_from(jitter_ms).unwrap_or(0),
        ));
    }
    request
}

/// Evaluates one schedule with `op` in one transaction. `Ok(None)` for [`ScheduleTarget::Due`]
/// when nothing is due.
pub(crate) async fn run_op(
    db: &SystemDatabase,
    target: ScheduleTarget<'_>,
    op: &Op,
) -> Result<Option<Result<(), String>>, dbos_core::Error> {
    let done = db
        .evaluate_schedule(target, |row, runs| {
            evaluate(
                row,
                runs,
                op,
                dbos_core::now_ms(),
                db.config().max_value_bytes,
            )
        })
        .await?;
    Ok(done.map(|d| {
        for e in &d.started {
            if let dbos_core::Enqueued::Created(s) = e {
                info!(schedule_id = %d.schedule_id, workflow_id = %s.workflow_id, "scheduled workflow started");
            }
        }
        d.value
    }))
}

/// Fires every due schedule of the namespace (at most `limit` evaluations); returns how many
/// were evaluated. Used by the workers' schedulers.
#[doc(hidden)]
pub async fn fire_due(db: &SystemDatabase, limit: usize) -> Result<usize, dbos_core::Error> {
    let mut n = 0;
    while n < limit {
        match run_op(db, ScheduleTarget::Due, &Op::Fire).await? {
            None => break,
            Some(Err(e)) => {
                debug!(error = %e, "a due schedule could not fire");
                n += 1;
            }
            Some(Ok(_)) => n += 1,
        }
    }
    Ok(n)
}

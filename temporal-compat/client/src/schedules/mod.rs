//! Schedules (upstream's `temporalio_client::schedules`): start a workflow at planned times,
//! durably, on Postgres.
//!
//! A schedule is a row of the namespace's `dbosify_schedules` table. Every running worker of the
//! namespace fires due schedules: it locks the due row (`FOR UPDATE SKIP LOCKED`), enqueues the
//! workflow run under a deterministic id (`<workflow id>-<nominal time>`, e.g.
//! `scheduled-workflow-2026-11-21T10:00:00Z`) and advances the next fire time in the same
//! transaction, so a crash can never start a nominal time twice. Client operations (create,
//! trigger, pause, unpause, update, backfill, delete) go through the same evaluation.
//!
//! Names, paths and signatures are upstream 1.1.1's. What DBOSify cannot honour is refused with
//! an `InvalidArgument` error (time zones other than UTC, `@every` cron strings, the
//! CancelOther overlap policy, `keep_original_workflow_id`, list queries);
//! COMPATIBILITY.md lists them.

mod engine;
pub(crate) mod spec;

#[doc(hidden)]
pub use engine::fire_due;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbos_core::{NewSchedule, ScheduleRow, ScheduleTarget, SystemDatabase, WorkflowStatus};
use futures::future::BoxFuture;
use futures::{FutureExt as _, Stream};
use temporalio_common_wasm::HasWorkflowDefinition;
use temporalio_common_wasm::data_converters::{
    DataConverter, PayloadConversionError, SerializationContextData, TemporalDeserializable,
    TemporalSerializable, WorkflowSerializationContext,
};
use temporalio_common_wasm::search_attributes::SearchAttributes;
use temporalio_protos::temporal::api::common::v1 as common_proto;
use temporalio_protos::temporal::api::schedule::v1 as schedule_proto;
use temporalio_protos::temporal::api::taskqueue::v1 as taskqueue_proto;
use temporalio_protos::temporal::api::workflow::v1 as workflow_proto;
use temporalio_protos::temporal::api::workflowservice::v1::DescribeScheduleResponse;
use tracing::info;

use crate::errors::{Surface, classify, db_status};
use crate::protocol::{self, ProtocolError};
use crate::{Client, NamespacedClient, RpcOptions};
use engine::{Op, State};
use spec::CompiledSpec;

/// How many future action times a description shows.
const DESCRIBE_FUTURE_TIMES: usize = 10;
/// How many future action times a list entry shows.
const LIST_FUTURE_TIMES: usize = 5;
/// Default page size of `list_schedules`.
const LIST_PAGE: usize = 100;

/// Errors returned by schedule operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The operation failed: `NotFound` (no such schedule), `AlreadyExists` (create with a
    /// taken id), `InvalidArgument` (a bad or unsupported definition), or a database failure.
    #[error("Server error: {0}")]
    Rpc(#[from] tonic::Status),
    /// Failed to encode workflow input payloads.
    #[error("Payload conversion error: {0}")]
    PayloadConversion(#[from] PayloadConversionError),
    /// The stored schedule description is missing required fields.
    #[error("Malformed schedule description for schedule ID '{schedule_id}': {reason}")]
    MalformedDescription {
        /// ID of the schedule whose description was malformed.
        schedule_id: String,
        /// Details about the malformed description.
        reason: String,
    },
}

impl From<ProtocolError> for ScheduleError {
    fn from(e: ProtocolError) -> Self {
        match classify(e) {
            Surface::NotFound(s) | Surface::Status(s) => Self::Rpc(s),
            Surface::Payload(p) => Self::PayloadConversion(p),
        }
    }
}

impl From<dbos_core::Error> for ScheduleError {
    fn from(e: dbos_core::Error) -> Self {
        match &e {
            dbos_core::Error::UnknownSchedule(id) => Self::Rpc(tonic::Status::not_found(format!(
                "schedule `{id}` not found"
            ))),
            dbos_core::Error::ScheduleExists(id) => Self::Rpc(tonic::Status::already_exists(
                format!("schedule `{id}` already exists"),
            )),
            _ => Self::Rpc(db_status(&e)),
        }
    }
}

fn invalid(msg: impl Into<String>) -> ScheduleError {
    ScheduleError::Rpc(tonic::Status::invalid_argument(msg.into()))
}

fn check_rpc(rpc: &RpcOptions) -> Result<(), ScheduleError> {
    rpc.refuse_metadata().map_err(ScheduleError::Rpc)
}

trait SerializableScheduleInput: Send + Sync {
    fn to_payloads<'a>(
        &'a self,
        dc: &'a DataConverter,
        context: &'a SerializationContextData,
    ) -> BoxFuture<'a, Result<Vec<common_proto::Payload>, PayloadConversionError>>;
}

impl<T> SerializableScheduleInput for T
where
    T: TemporalSerializable + Send + Sync + 'static,
{
    fn to_payloads<'a>(
        &'a self,
        dc: &'a DataConverter,
        context: &'a SerializationContextData,
    ) -> BoxFuture<'a, Result<Vec<common_proto::Payload>, PayloadConversionError>> {
        dc.to_payloads(context, self).boxed()
    }
}

/// Workflow input for a schedule action, kept unencoded until the schedule is created.
#[derive(Clone)]
pub struct ScheduleWorkflowInput {
    value: Arc<dyn SerializableScheduleInput>,
}

impl std::fmt::Debug for ScheduleWorkflowInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScheduleWorkflowInput(...)")
    }
}

impl ScheduleWorkflowInput {
    async fn into_payloads(
        self,
        dc: &DataConverter,
    ) -> Result<Vec<common_proto::Payload>, PayloadConversionError> {
        self.value
            .to_payloads(
                dc,
                &SerializationContextData::Workflow(WorkflowSerializationContext::new()),
            )
            .await
    }
}

/// Options for creating a schedule.
#[derive(Debug, Clone, bon::Builder)]
#[builder(on(String, into))]
#[non_exhaustive]
pub struct CreateScheduleOptions {
    /// The action the schedule performs on each trigger.
    pub action: ScheduleAction,
    /// When the schedule triggers.
    pub spec: ScheduleSpec,
    /// Take one action right after creating the schedule (overlap policy AllowAll).
    #[builder(default)]
    pub trigger_immediately: bool,
    /// The schedule's overlap policy (unspecified = Skip).
    #[builder(default)]
    pub overlap_policy: ScheduleOverlapPolicy,
    /// Whether the schedule starts paused.
    #[builder(default)]
    pub paused: bool,
    /// A note on the schedule's state.
    #[builder(default)]
    pub note: String,
    /// Metadata must be empty; `timeout` has no effect (creation does not wait).
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// The action a schedule performs on each trigger.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ScheduleAction {
    /// Start a workflow execution.
    StartWorkflow {
        /// The workflow type name.
        workflow_type: String,
        /// The task queue to run the workflow on.
        task_queue: String,
        /// The workflow id prefix; the nominal time is appended (`<id>-2026-11-21T10:00:00Z`).
        workflow_id: String,
        /// Workflow input passed to each execution; `None` means no input.
        input: Option<ScheduleWorkflowInput>,
    },
}

impl ScheduleAction {
    /// A start-workflow action. The input is encoded when the schedule is created.
    pub fn start_workflow<W>(
        workflow: W,
        input: W::Input,
        task_queue: impl Into<String>,
        workflow_id: impl Into<String>,
    ) -> Self
    where
        W: HasWorkflowDefinition,
        W::Input: TemporalSerializable + Send + Sync + 'static,
    {
        Self::StartWorkflow {
            workflow_type: workflow.name().to_string(),
            task_queue: task_queue.into(),
            workflow_id: workflow_id.into(),
            input: Some(ScheduleWorkflowInput {
                value: Arc::new(input),
            }),
        }
    }

    async fn into_proto(
        self,
        dc: &DataConverter,
    ) -> Result<schedule_proto::ScheduleAction, PayloadConversionError> {
        let Self::StartWorkflow {
            workflow_type,
            task_queue,
            workflow_id,
            input,
        } = self;
        let input = match input {
            Some(i) => Some(common_proto::Payloads {
                payloads: i.into_payloads(dc).await?,
            }),
            None => None,
        };
        Ok(schedule_proto::ScheduleAction {
            action: Some(schedule_proto::schedule_action::Action::StartWorkflow(
                workflow_proto::NewWorkflowExecutionInfo {
                    workflow_id,
                    workflow_type: Some(common_proto::WorkflowType {
                        name: workflow_type,
                    }),
                    task_queue: Some(taskqueue_proto::TaskQueue {
                        name: task_queue,
                        ..Default::default()
                    }),
                    input,
                    ..Default::default()
                },
            )),
        })
    }
}

/// When a schedule triggers. Times are UTC.
#[derive(Debug, Clone, Default, PartialEq, bon::Builder)]
#[builder(on(String, into))]
#[non_exhaustive]
pub struct ScheduleSpec {
    /// Interval triggers (every `every` since the Unix epoch, shifted by `offset`).
    #[builder(default)]
    pub intervals: Vec<ScheduleIntervalSpec>,
    /// Calendar triggers (range strings).
    #[builder(default)]
    pub calendars: Vec<ScheduleCalendarSpec>,
    /// Calendar exclusions: matching times are skipped.
    #[builder(default)]
    pub exclude_calendars: Vec<ScheduleCalendarSpec>,
    /// Cron strings (5, 6 or 7 fields, or `@daily` and the like).
    #[builder(default)]
    pub cron_strings: Vec<String>,
    /// Time zone name: empty or `UTC` (others are refused).
    #[builder(default)]
    pub timezone_name: String,
    /// Earliest action time.
    pub start_time: Option<SystemTime>,
    /// Latest action time.
    pub end_time: Option<SystemTime>,
    /// Random delay of up to this much added to each scheduled action.
    pub jitter: Option<Duration>,
}

fn to_proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn to_proto_time(t: SystemTime) -> prost_types::Timestamp {
    ms_to_timestamp(system_time_ms(t))
}

fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

fn ms_to_timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

fn timestamp_to_system_time(t: &prost_types::Timestamp) -> Option<SystemTime> {
    let nanos = u32::try_from(t.nanos).ok()?;
    if t.seconds >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(u64::try_from(t.seconds).ok()?, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(t.seconds.unsigned_abs()))?
            .checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

impl ScheduleSpec {
    /// A spec that triggers on one interval.
    pub fn from_interval(every: Duration) -> Self {
        Self {
            intervals: vec![every.into()],
            ..Default::default()
        }
    }

    /// A spec that triggers on one calendar.
    pub fn from_calendar(calendar: ScheduleCalendarSpec) -> Self {
        Self {
            calendars: vec![calendar],
            ..Default::default()
        }
    }

    // `exclude_calendar` is deprecated in the proto; upstream's SDK still fills it.
    #[allow(deprecated)]
    fn into_proto(self) -> schedule_proto::ScheduleSpec {
        schedule_proto::ScheduleSpec {
            interval: self.intervals.into_iter().map(Into::into).collect(),
            calendar: self.calendars.into_iter().map(Into::into).collect(),
            exclude_calendar: self.exclude_calendars.into_iter().map(Into::into).collect(),
            cron_string: self.cron_strings,
            timezone_name: self.timezone_name,
            start_time: self.start_time.map(to_proto_time),
            end_time: self.end_time.map(to_proto_time),
            jitter: self.jitter.map(to_proto_duration),
            ..Default::default()
        }
    }
}

/// An interval trigger.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ScheduleIntervalSpec {
    /// How often the action repeats (at least one second).
    pub every: Duration,
    /// Fixed offset added to each interval.
    pub offset: Option<Duration>,
}

impl ScheduleIntervalSpec {
    /// An interval with an optional offset.
    pub fn new(every: Duration, offset: Option<Duration>) -> Self {
        Self { every, offset }
    }
}

impl From<Duration> for ScheduleIntervalSpec {
    fn from(every: Duration) -> Self {
        Self {
            every,
            offset: None,
        }
    }
}

impl From<ScheduleIntervalSpec> for schedule_proto::IntervalSpec {
    fn from(s: ScheduleIntervalSpec) -> Self {
        Self {
            interval: Some(to_proto_duration(s.every)),
            phase: s.offset.map(to_proto_duration),
        }
    }
}

/// A calendar trigger using range strings (e.g. `"2-7"` for hours 2 through 7, `"*/15"`,
/// `"mon-fri"`). Empty strings take the defaults (`"0"` for second, minute and hour, `"*"` for
/// the others).
#[derive(Debug, Clone, Default, PartialEq, bon::Builder)]
#[builder(on(String, into))]
#[non_exhaustive]
pub struct ScheduleCalendarSpec {
    /// Second within the minute. Default `"0"`.
    #[builder(default)]
    pub second: String,
    /// Minute within the hour. Default `"0"`.
    #[builder(default)]
    pub minute: String,
    /// Hour of the day. Default `"0"`.
    #[builder(default)]
    pub hour: String,
    /// Day of the month. Default `"*"`.
    #[builder(default)]
    pub day_of_month: String,
    /// Month of the year. Default `"*"`.
    #[builder(default)]
    pub month: String,
    /// Day of the week (0 or 7 is Sunday). Default `"*"`.
    #[builder(default)]
    pub day_of_week: String,
    /// Year. Default `"*"`.
    #[builder(default)]
    pub year: String,
    /// Free-form comment.
    #[builder(default)]
    pub comment: String,
}

impl From<ScheduleCalendarSpec> for schedule_proto::CalendarSpec {
    fn from(s: ScheduleCalendarSpec) -> Self {
        Self {
            second: s.second,
            minute: s.minute,
            hour: s.hour,
            day_of_month: s.day_of_month,
            month: s.month,
            day_of_week: s.day_of_week,
            year: s.year,
            comment: s.comment,
        }
    }
}

/// Options for listing schedules.
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct ListSchedulesOptions {
    /// Page size (0 = a default).
    #[builder(default)]
    pub maximum_page_size: i32,
    /// Visibility query: must be empty (filtering schedules is not supported).
    #[builder(default)]
    pub query: String,
    /// Metadata must be empty.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// Options for deleting a schedule.
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct DeleteScheduleOptions {
    /// Metadata must be empty.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// Options for pausing a schedule.
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct PauseScheduleOptions {
    /// Metadata must be empty.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// Options for unpausing a schedule.
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct UnpauseScheduleOptions {
    /// Metadata must be empty.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// Options for triggering a schedule.
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct TriggerScheduleOptions {
    /// Metadata must be empty.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// Options for backfilling a schedule.
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct BackfillScheduleOptions {
    /// Metadata must be empty.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// A stream of schedule summaries, read page by page.
pub struct ListSchedulesStream {
    inner: Pin<Box<dyn Stream<Item = Result<ScheduleSummary, ScheduleError>> + Send>>,
}

impl std::fmt::Debug for ListSchedulesStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListSchedulesStream")
    }
}

impl Stream for ListSchedulesStream {
    type Item = Result<ScheduleSummary, ScheduleError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A recent action of a schedule.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ScheduleRecentAction {
    /// The nominal time of the action (jitter excluded).
    pub schedule_time: Option<SystemTime>,
    /// When the workflow was due to start (jitter included).
    pub actual_time: Option<SystemTime>,
    /// Workflow id of the started workflow.
    pub workflow_id: String,
    /// Run id of the started workflow.
    pub run_id: String,
}

impl From<&schedule_proto::ScheduleActionResult> for ScheduleRecentAction {
    fn from(a: &schedule_proto::ScheduleActionResult) -> Self {
        let (workflow_id, run_id) = a
            .start_workflow_result
            .as_ref()
            .map(|w| (w.workflow_id.clone(), w.run_id.clone()))
            .unwrap_or_default();
        Self {
            schedule_time: a.schedule_time.as_ref().and_then(timestamp_to_system_time),
            actual_time: a.actual_time.as_ref().and_then(timestamp_to_system_time),
            workflow_id,
            run_id,
        }
    }
}

/// A running workflow started by a schedule.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ScheduleRunningAction {
    /// Workflow id of the running workflow.
    pub workflow_id: String,
    /// Run id of the running workflow.
    pub run_id: String,
}

/// The action of a described schedule.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ScheduleDescriptionAction {
    /// Start a workflow execution.
    StartWorkflow(ScheduleDescriptionStartWorkflowAction),
}

/// Start-workflow action details of a schedule description.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScheduleDescriptionStartWorkflowAction {
    workflow_type: String,
    task_queue: String,
    workflow_id: String,
    input: Option<common_proto::Payloads>,
    data_converter: DataConverter,
}

impl ScheduleDescriptionStartWorkflowAction {
    /// The workflow type name.
    pub fn workflow_type(&self) -> &str {
        &self.workflow_type
    }

    /// The task queue.
    pub fn task_queue(&self) -> &str {
        &self.task_queue
    }

    /// The workflow id configured on the action (before the time suffix).
    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    /// The workflow arguments deserialized as `T`, if present.
    pub async fn args<T: TemporalDeserializable + 'static>(
        &self,
    ) -> Result<Option<T>, PayloadConversionError> {
        match &self.input {
            Some(input) => self
                .data_converter
                .from_payloads(
                    &SerializationContextData::Workflow(WorkflowSerializationContext::new()),
                    input.payloads.clone(),
                )
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// The raw workflow argument payloads, if present.
    pub fn raw_args(&self) -> Option<&[common_proto::Payload]> {
        self.input.as_ref().map(|i| i.payloads.as_slice())
    }
}

/// A schedule's description (accessors over the `DescribeScheduleResponse` proto).
#[derive(Debug, Clone)]
pub struct ScheduleDescription {
    raw: DescribeScheduleResponse,
    data_converter: DataConverter,
}

impl ScheduleDescription {
    fn info(&self) -> Option<&schedule_proto::ScheduleInfo> {
        self.raw.info.as_ref()
    }

    fn schedule_state(&self) -> Option<&schedule_proto::ScheduleState> {
        self.raw.schedule.as_ref().and_then(|s| s.state.as_ref())
    }

    /// Token identifying this version of the schedule.
    pub fn conflict_token(&self) -> &[u8] {
        &self.raw.conflict_token
    }

    /// The schedule's action.
    ///
    /// # Panics
    /// Never for descriptions returned by [`ScheduleHandle::describe`], which checks that the
    /// action is present.
    pub fn action(&self) -> ScheduleDescriptionAction {
        let info = self
            .raw
            .schedule
            .as_ref()
            .and_then(engine::start_info)
            .cloned()
            .unwrap_or_default();
        ScheduleDescriptionAction::StartWorkflow(ScheduleDescriptionStartWorkflowAction {
            workflow_type: info.workflow_type.map(|t| t.name).unwrap_or_default(),
            task_queue: info.task_queue.map(|t| t.name).unwrap_or_default(),
            workflow_id: info.workflow_id,
            input: info.input,
            data_converter: self.data_converter.clone(),
        })
    }

    /// Whether the schedule is paused.
    pub fn paused(&self) -> bool {
        self.schedule_state().is_some_and(|s| s.paused)
    }

    /// The note on the schedule's state, if any.
    pub fn note(&self) -> Option<&str> {
        self.schedule_state()
            .map(|s| s.notes.as_str())
            .filter(|s| !s.is_empty())
    }

    /// Actions taken so far.
    pub fn action_count(&self) -> i64 {
        self.info().map_or(0, |i| i.action_count)
    }

    /// Actions skipped because they were older than the catch-up window.
    pub fn missed_catchup_window(&self) -> i64 {
        self.info().map_or(0, |i| i.missed_catchup_window)
    }

    /// Actions skipped by the overlap policy.
    pub fn overlap_skipped(&self) -> i64 {
        self.info().map_or(0, |i| i.overlap_skipped)
    }

    /// The most recent actions (up to 10), oldest first.
    pub fn recent_actions(&self) -> Vec<ScheduleRecentAction> {
        self.info()
            .map(|i| i.recent_actions.iter().map(Into::into).collect())
            .unwrap_or_default()
    }

    /// Workflows started by this schedule that are still running.
    pub fn running_actions(&self) -> Vec<ScheduleRunningAction> {
        self.info()
            .map(|i| {
                i.running_workflows
                    .iter()
                    .map(|w| ScheduleRunningAction {
                        workflow_id: w.workflow_id.clone(),
                        run_id: w.run_id.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The next action times (up to 10).
    pub fn future_action_times(&self) -> Vec<SystemTime> {
        self.info()
            .map(|i| {
                i.future_action_times
                    .iter()
                    .filter_map(timestamp_to_system_time)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// When the schedule was created.
    pub fn create_time(&self) -> Option<SystemTime> {
        self.info()
            .and_then(|i| i.create_time.as_ref())
            .and_then(timestamp_to_system_time)
    }

    /// When the schedule was last updated.
    pub fn update_time(&self) -> Option<SystemTime> {
        self.info()
            .and_then(|i| i.update_time.as_ref())
            .and_then(timestamp_to_system_time)
    }

    /// The schedule's memo (always empty: schedules created by DBOSify carry none).
    pub fn memo(&self) -> crate::Memo {
        crate::Memo::from_raw(
            self.raw.memo.clone(),
            self.data_converter.payload_converter().clone(),
            SerializationContextData::Workflow(WorkflowSerializationContext::new()),
        )
    }

    /// The schedule's search attributes (always empty).
    pub fn search_attributes(&self) -> SearchAttributes {
        self.raw
            .search_attributes
            .as_ref()
            .map(SearchAttributes::from_proto)
            .unwrap_or_default()
    }

    /// The raw proto.
    pub fn raw(&self) -> &DescribeScheduleResponse {
        &self.raw
    }

    /// The raw proto, by value.
    pub fn into_raw(self) -> DescribeScheduleResponse {
        self.raw
    }

    /// The schedule definition as an update to modify and send with
    /// [`ScheduleHandle::send_update`].
    pub fn into_update(self) -> ScheduleUpdate {
        ScheduleUpdate {
            schedule: self.raw.schedule.unwrap_or_default(),
            pending_action: None,
        }
    }
}

/// What happens when an action comes while a workflow started by the schedule is running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScheduleOverlapPolicy {
    /// The default (Skip).
    #[default]
    Unspecified,
    /// Do not start a new workflow while one is running.
    Skip,
    /// Start one buffered workflow after the running one finishes; drop further ones.
    BufferOne,
    /// Start every buffered workflow, one after the other.
    BufferAll,
    /// Refused by DBOSify.
    CancelOther,
    /// Terminate the running workflows, then start the new one.
    TerminateOther,
    /// Start workflows regardless of running ones.
    AllowAll,
}

impl ScheduleOverlapPolicy {
    fn to_proto(self) -> i32 {
        use engine::overlap::*;
        match self {
            Self::Unspecified => UNSPECIFIED,
            Self::Skip => SKIP,
            Self::BufferOne => BUFFER_ONE,
            Self::BufferAll => BUFFER_ALL,
            Self::CancelOther => CANCEL_OTHER,
            Self::TerminateOther => TERMINATE_OTHER,
            Self::AllowAll => ALLOW_ALL,
        }
    }
}

/// A backfill: take the actions the spec plans between two times.
#[derive(Debug, Clone, PartialEq, bon::Builder)]
#[non_exhaustive]
#[builder(start_fn = new)]
pub struct ScheduleBackfill {
    /// Start of the range (inclusive).
    #[builder(start_fn)]
    pub start_time: SystemTime,
    /// End of the range (inclusive).
    #[builder(start_fn)]
    pub end_time: SystemTime,
    /// Overlap policy of these actions (unspecified = the schedule's).
    #[builder(default)]
    pub overlap_policy: ScheduleOverlapPolicy,
}

/// A change to a schedule's definition: get it from [`ScheduleDescription::into_update`],
/// modify it, send it with [`ScheduleHandle::send_update`] (or use [`ScheduleHandle::update`]).
#[derive(Debug, Clone)]
pub struct ScheduleUpdate {
    schedule: schedule_proto::Schedule,
    pending_action: Option<ScheduleAction>,
}

impl ScheduleUpdate {
    /// Replaces the spec.
    pub fn set_spec(&mut self, spec: ScheduleSpec) -> &mut Self {
        self.schedule.spec = Some(spec.into_proto());
        self
    }

    /// Replaces the action.
    pub fn set_action(&mut self, action: ScheduleAction) -> &mut Self {
        self.pending_action = Some(action);
        self
    }

    /// Sets whether the schedule is paused.
    pub fn set_paused(&mut self, paused: bool) -> &mut Self {
        self.state_mut().paused = paused;
        self
    }

    /// Sets the note.
    pub fn set_note(&mut self, note: impl Into<String>) -> &mut Self {
        self.state_mut().notes = note.into();
        self
    }

    /// Sets the overlap policy (CancelOther is refused when sent).
    pub fn set_overlap_policy(&mut self, policy: ScheduleOverlapPolicy) -> &mut Self {
        self.policies_mut().overlap_policy = policy.to_proto();
        self
    }

    /// Sets the catch-up window: scheduled times missed by more than this are skipped (at
    /// least 10 seconds; one year by default).
    pub fn set_catchup_window(&mut self, window: Duration) -> &mut Self {
        self.policies_mut().catchup_window = Some(to_proto_duration(window));
        self
    }

    /// Sets whether a failed or timed-out run pauses the schedule.
    pub fn set_pause_on_failure(&mut self, pause_on_failure: bool) -> &mut Self {
        self.policies_mut().pause_on_failure = pause_on_failure;
        self
    }

    /// Sets whether workflow ids are the action's id without the time suffix (`true` is
    /// refused by DBOSify when the update is sent).
    pub fn set_keep_original_workflow_id(&mut self, keep: bool) -> &mut Self {
        self.policies_mut().keep_original_workflow_id = keep;
        self
    }

    /// Limits the schedule to `count` more scheduled actions (`None` removes the limit).
    /// Manual triggers and backfills do not count.
    pub fn set_remaining_actions(&mut self, count: Option<i64>) -> &mut Self {
        let state = self.state_mut();
        match count {
            Some(n) => {
                state.limited_actions = true;
                state.remaining_actions = n;
            }
            None => {
                state.limited_actions = false;
                state.remaining_actions = 0;
            }
        }
        self
    }

    /// The raw schedule proto.
    pub fn raw(&self) -> &schedule_proto::Schedule {
        &self.schedule
    }

    /// The raw schedule proto, by value.
    pub fn into_raw(self) -> schedule_proto::Schedule {
        self.schedule
    }

    fn state_mut(&mut self) -> &mut schedule_proto::ScheduleState {
        self.schedule.state.get_or_insert_with(Default::default)
    }

    fn policies_mut(&mut self) -> &mut schedule_proto::SchedulePolicies {
        self.schedule.policies.get_or_insert_with(Default::default)
    }
}

/// A schedule in a list (accessors over the `ScheduleListEntry` proto).
#[derive(Debug, Clone)]
pub struct ScheduleSummary {
    raw: schedule_proto::ScheduleListEntry,
    data_converter: DataConverter,
}

impl ScheduleSummary {
    fn info(&self) -> Option<&schedule_proto::ScheduleListInfo> {
        self.raw.info.as_ref()
    }

    /// The schedule id.
    pub fn schedule_id(&self) -> &str {
        &self.raw.schedule_id
    }

    /// The workflow type of the start-workflow action.
    pub fn workflow_type(&self) -> Option<&str> {
        self.info()
            .and_then(|i| i.workflow_type.as_ref())
            .map(|t| t.name.as_str())
    }

    /// The note, if any.
    pub fn note(&self) -> Option<&str> {
        self.info()
            .map(|i| i.notes.as_str())
            .filter(|s| !s.is_empty())
    }

    /// Whether the schedule is paused.
    pub fn paused(&self) -> bool {
        self.info().is_some_and(|i| i.paused)
    }

    /// The most recent actions.
    pub fn recent_actions(&self) -> Vec<ScheduleRecentAction> {
        self.info()
            .map(|i| i.recent_actions.iter().map(Into::into).collect())
            .unwrap_or_default()
    }

    /// The next action times (up to 5).
    pub fn future_action_times(&self) -> Vec<SystemTime> {
        self.info()
            .map(|i| {
                i.future_action_times
                    .iter()
                    .filter_map(timestamp_to_system_time)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The memo (always empty).
    pub fn memo(&self) -> crate::Memo {
        crate::Memo::from_raw(
            self.raw.memo.clone(),
            self.data_converter.payload_converter().clone(),
            SerializationContextData::Workflow(WorkflowSerializationContext::new()),
        )
    }

    /// The search attributes (always empty).
    pub fn search_attributes(&self) -> SearchAttributes {
        self.raw
            .search_attributes
            .as_ref()
            .map(SearchAttributes::from_proto)
            .unwrap_or_default()
    }

    /// The raw proto.
    pub fn raw(&self) -> &schedule_proto::ScheduleListEntry {
        &self.raw
    }

    /// The raw proto, by value.
    pub fn into_raw(self) -> schedule_proto::ScheduleListEntry {
        self.raw
    }
}

impl From<schedule_proto::ScheduleListEntry> for ScheduleSummary {
    fn from(raw: schedule_proto::ScheduleListEntry) -> Self {
        Self {
            raw,
            data_converter: DataConverter::default(),
        }
    }
}

/// A handle on a schedule, from [`Client::create_schedule`] or [`Client::get_schedule_handle`].
#[derive(Clone)]
pub struct ScheduleHandle<CT> {
    client: CT,
    namespace: String,
    schedule_id: String,
}

impl<CT> std::fmt::Debug for ScheduleHandle<CT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScheduleHandle")
            .field("namespace", &self.namespace)
            .field("schedule_id", &self.schedule_id)
            .finish()
    }
}

/// Future action times of a stored schedule.
fn future_times(
    schedule: &schedule_proto::Schedule,
    spec: &CompiledSpec,
    next_fire: Option<i64>,
    limit: usize,
) -> Vec<prost_types::Timestamp> {
    let state = schedule.state.clone().unwrap_or_default();
    let limit = if state.limited_actions {
        limit.min(usize::try_from(state.remaining_actions.max(0)).unwrap_or(0))
    } else {
        limit
    };
    let mut out = Vec::new();
    let mut t = match next_fire {
        Some(n) => {
            if limit > 0 {
                out.push(n);
            }
            n
        }
        None => dbos_core::now_ms(),
    };
    while out.len() < limit {
        match spec.next_after(t) {
            Some(n) => {
                out.push(n);
                t = n;
            }
            None => break,
        }
    }
    out.into_iter().map(ms_to_timestamp).collect()
}

/// The current status of each of `ids` that exists, read in one statement.
async fn statuses_by_id(
    db: &SystemDatabase,
    ids: &[String],
) -> Result<HashMap<String, WorkflowStatus>, ScheduleError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(db
        .statuses(ids)
        .await?
        .into_iter()
        .map(|s| (s.workflow_id.clone(), s))
        .collect())
}

/// The run ids of a schedule's recent actions.
fn recent_run_ids(state: &State) -> impl Iterator<Item = String> + '_ {
    state.recent.iter().map(|a| a.run_id.clone())
}

/// Recent actions with the current status of their runs (`statuses` from [`statuses_by_id`]).
fn recent_actions(
    statuses: &HashMap<String, WorkflowStatus>,
    state: &State,
) -> Result<Vec<schedule_proto::ScheduleActionResult>, ScheduleError> {
    let mut out = Vec::with_capacity(state.recent.len());
    for a in &state.recent {
        let status = match statuses.get(&a.run_id) {
            Some(s) => protocol::execution_status(s).map_err(ScheduleError::from)? as i32,
            None => 0,
        };
        out.push(schedule_proto::ScheduleActionResult {
            schedule_time: Some(ms_to_timestamp(a.schedule_ms)),
            actual_time: Some(ms_to_timestamp(a.actual_ms)),
            start_workflow_result: Some(common_proto::WorkflowExecution {
                workflow_id: a.workflow_id.clone(),
                run_id: a.run_id.clone(),
            }),
            start_workflow_status: status,
        });
    }
    Ok(out)
}

fn stored_schedule(row: &ScheduleRow) -> Result<schedule_proto::Schedule, ScheduleError> {
    engine::decode_definition(&row.definition).map_err(|reason| {
        ScheduleError::MalformedDescription {
            schedule_id: row.schedule_id.clone(),
            reason,
        }
    })
}

fn spec_of(schedule: &schedule_proto::Schedule) -> CompiledSpec {
    CompiledSpec::compile(&schedule.spec.clone().unwrap_or_default()).unwrap_or_default()
}

impl ScheduleHandle<Client> {
    fn new(client: Client, namespace: String, schedule_id: String) -> Self {
        Self {
            client,
            namespace,
            schedule_id,
        }
    }

    /// The namespace of the schedule.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The schedule id.
    pub fn schedule_id(&self) -> &str {
        &self.schedule_id
    }

    async fn db(&self) -> Result<SystemDatabase, ScheduleError> {
        Ok(self.client.system_database().await?)
    }

    async fn op(&self, op: Op) -> Result<(), ScheduleError> {
        let db = self.db().await?;
        match engine::run_op(&db, ScheduleTarget::Id(&self.schedule_id), &op).await? {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(invalid(e)),
            None => Err(dbos_core::Error::UnknownSchedule(self.schedule_id.clone()).into()),
        }
    }

    /// Describes the schedule: definition, counters, recent and running actions, next times.
    pub async fn describe(
        &self,
        rpc_options: RpcOptions,
    ) -> Result<ScheduleDescription, ScheduleError> {
        check_rpc(&rpc_options)?;
        let db = self.db().await?;
        let row = db
            .schedule(&self.schedule_id)
            .await?
            .ok_or_else(|| dbos_core::Error::UnknownSchedule(self.schedule_id.clone()))?;
        let schedule = stored_schedule(&row)?;
        if engine::start_info(&schedule).is_none() {
            return Err(ScheduleError::MalformedDescription {
                schedule_id: self.schedule_id.clone(),
                reason: "missing schedule action".into(),
            });
        }
        let state = State::decode(&row.state);
        let ids: Vec<String> = row
            .running
            .iter()
            .cloned()
            .chain(recent_run_ids(&state))
            .collect();
        let statuses = statuses_by_id(&db, &ids).await?;
        let running = row
            .running
            .iter()
            .filter(|id| statuses.get(*id).is_some_and(|s| !s.state.is_terminal()))
            .map(|id| common_proto::WorkflowExecution {
                workflow_id: protocol::parse_run_id(id).0.to_string(),
                run_id: id.clone(),
            })
            .collect();
        let spec = spec_of(&schedule);
        let future = future_times(&schedule, &spec, row.next_fire_at_ms, DESCRIBE_FUTURE_TIMES);
        // `invalid_schedule_error` is deprecated in the proto but is the field that says why a
        // stored schedule cannot fire.
        #[allow(deprecated)]
        let info = schedule_proto::ScheduleInfo {
            action_count: state.action_count,
            missed_catchup_window: state.missed_catchup_window,
            overlap_skipped: state.overlap_skipped,
            buffer_dropped: state.buffer_dropped,
            buffer_size: i64::try_from(state.buffer.len()).unwrap_or(i64::MAX),
            running_workflows: running,
            recent_actions: recent_actions(&statuses, &state)?,
            future_action_times: future,
            create_time: Some(ms_to_timestamp(row.created_at_ms)),
            update_time: state.update_ms.map(ms_to_timestamp),
            invalid_schedule_error: state.invalid.clone().unwrap_or_default(),
            ..Default::default()
        };
        Ok(ScheduleDescription {
            raw: DescribeScheduleResponse {
                schedule: Some(schedule),
                info: Some(info),
                memo: None,
                search_attributes: None,
                conflict_token: row.version.to_be_bytes().to_vec(),
            },
            data_converter: self.client.data_converter().clone(),
        })
    }

    /// Updates the definition: describes the schedule, applies `updater`, sends the result.
    pub async fn update(
        &self,
        updater: impl FnOnce(&mut ScheduleUpdate) + Send + 'static,
        rpc_options: RpcOptions,
    ) -> Result<(), ScheduleError> {
        let description = self.describe(rpc_options.clone()).await?;
        let mut update = description.into_update();
        updater(&mut update);
        self.send_update(update, rpc_options).await
    }

    /// Sends a prepared [`ScheduleUpdate`]: the definition (spec, action, policies, state) is
    /// replaced and the next fire time recomputed from now.
    pub async fn send_update(
        &self,
        mut update: ScheduleUpdate,
        rpc_options: RpcOptions,
    ) -> Result<(), ScheduleError> {
        check_rpc(&rpc_options)?;
        if let Some(action) = update.pending_action.take() {
            update.schedule.action = Some(action.into_proto(self.client.data_converter()).await?);
        }
        engine::validate(&update.schedule).map_err(invalid)?;
        let limit = self.db().await?.config().max_value_bytes;
        engine::check_limits(&update.schedule, limit).map_err(invalid)?;
        self.op(Op::Replace(Box::new(update.schedule))).await?;
        info!(schedule_id = %self.schedule_id, "schedule updated");
        Ok(())
    }

    /// Deletes the schedule. Workflows it started keep running.
    pub async fn delete(&self, options: DeleteScheduleOptions) -> Result<(), ScheduleError> {
        check_rpc(&options.rpc_options)?;
        let db = self.db().await?;
        if !db.delete_schedule(&self.schedule_id).await? {
            return Err(dbos_core::Error::UnknownSchedule(self.schedule_id.clone()).into());
        }
        info!(schedule_id = %self.schedule_id, "schedule deleted");
        Ok(())
    }

    /// Pauses the schedule with a note (`"Paused via Rust SDK"` when `None`).
    pub async fn pause(
        &self,
        note: Option<impl Into<String>>,
        options: PauseScheduleOptions,
    ) -> Result<(), ScheduleError> {
        check_rpc(&options.rpc_options)?;
        let note = note.map_or_else(|| "Paused via Rust SDK".to_string(), Into::into);
        self.op(Op::Pause(note)).await
    }

    /// Unpauses the schedule with a note (`"Unpaused via Rust SDK"` when `None`). Times missed
    /// while paused are not caught up.
    pub async fn unpause(
        &self,
        note: Option<impl Into<String>>,
        options: UnpauseScheduleOptions,
    ) -> Result<(), ScheduleError> {
        check_rpc(&options.rpc_options)?;
        let note = note.map_or_else(|| "Unpaused via Rust SDK".to_string(), Into::into);
        self.op(Op::Unpause(note)).await
    }

    /// Takes one action now, with `overlap_policy` (unspecified = the schedule's). The
    /// workflow is enqueued when this returns (Temporal starts it asynchronously).
    pub async fn trigger(
        &self,
        overlap_policy: ScheduleOverlapPolicy,
        options: TriggerScheduleOptions,
    ) -> Result<(), ScheduleError> {
        check_rpc(&options.rpc_options)?;
        let p = overlap_policy.to_proto();
        engine::check_overlap_policy(p).map_err(invalid)?;
        self.op(Op::Trigger(p)).await
    }

    /// Takes the actions the spec plans within each range, now, with each range's overlap
    /// policy.
    pub async fn backfill(
        &self,
        backfills: impl IntoIterator<Item = ScheduleBackfill>,
        options: BackfillScheduleOptions,
    ) -> Result<(), ScheduleError> {
        check_rpc(&options.rpc_options)?;
        let db = self.db().await?;
        let row = db
            .schedule(&self.schedule_id)
            .await?
            .ok_or_else(|| dbos_core::Error::UnknownSchedule(self.schedule_id.clone()))?;
        let spec = engine::validate(&stored_schedule(&row)?).map_err(invalid)?;
        let mut times = Vec::new();
        for b in backfills {
            let p = b.overlap_policy.to_proto();
            engine::check_overlap_policy(p).map_err(invalid)?;
            let (from, to) = (system_time_ms(b.start_time), system_time_ms(b.end_time));
            if to < from {
                return Err(invalid("a backfill's end_time is before its start_time"));
            }
            let left = engine::MAX_BACKFILL_ACTIONS.saturating_sub(times.len());
            let planned = spec.times_between(from, to, left + 1);
            if planned.len() > left {
                return Err(invalid(format!(
                    "a backfill may take at most {} actions",
                    engine::MAX_BACKFILL_ACTIONS
                )));
            }
            times.extend(planned.into_iter().map(|t| (t, p)));
        }
        self.op(Op::Backfill(times)).await
    }
}

impl Client {
    /// Creates a schedule and returns a handle on it. `AlreadyExists` when the id is taken.
    pub async fn create_schedule(
        &self,
        schedule_id: impl Into<String>,
        opts: CreateScheduleOptions,
    ) -> Result<ScheduleHandle<Self>, ScheduleError> {
        let schedule_id = schedule_id.into();
        check_rpc(&opts.rpc_options)?;
        if schedule_id.is_empty() {
            return Err(invalid("a schedule id must not be empty"));
        }
        let policy = opts.overlap_policy.to_proto();
        let schedule = schedule_proto::Schedule {
            spec: Some(opts.spec.into_proto()),
            action: Some(opts.action.into_proto(self.data_converter()).await?),
            policies: (policy != 0).then(|| schedule_proto::SchedulePolicies {
                overlap_policy: policy,
                ..Default::default()
            }),
            state: Some(schedule_proto::ScheduleState {
                paused: opts.paused,
                notes: opts.note,
                ..Default::default()
            }),
        };
        let spec = engine::validate(&schedule).map_err(invalid)?;
        let now = dbos_core::now_ms();
        let db = self.system_database().await?;
        engine::check_limits(&schedule, db.config().max_value_bytes).map_err(invalid)?;
        db.create_schedule(&NewSchedule {
            schedule_id: schedule_id.clone(),
            definition: engine::encode_definition(&schedule),
            state: serde_json::to_value(State {
                create_ms: now,
                ..Default::default()
            })
            .unwrap_or_else(|_| serde_json::json!({})),
            next_fire_at_ms: if opts.paused {
                None
            } else {
                spec.next_after(now)
            },
        })
        .await?;
        info!(schedule_id = %schedule_id, "schedule created");
        let handle = self.get_schedule_handle(schedule_id);
        if opts.trigger_immediately {
            handle.op(Op::Trigger(engine::overlap::ALLOW_ALL)).await?;
        }
        Ok(handle)
    }

    /// A handle on an existing schedule.
    pub fn get_schedule_handle(&self, schedule_id: impl Into<String>) -> ScheduleHandle<Self> {
        ScheduleHandle::new(self.clone(), self.namespace(), schedule_id.into())
    }

    /// Lists the namespace's schedules (in id order), page by page.
    pub fn list_schedules(&self, opts: ListSchedulesOptions) -> ListSchedulesStream {
        let client = self.clone();
        let page = usize::try_from(opts.maximum_page_size)
            .ok()
            .filter(|p| *p > 0)
            .unwrap_or(LIST_PAGE);
        let refusal = if !opts.query.trim().is_empty() {
            Some(invalid(
                "list_schedules with a query is not supported by DBOSify; list all and filter",
            ))
        } else {
            check_rpc(&opts.rpc_options).err()
        };
        struct Cursor {
            after: Option<String>,
            buffer: VecDeque<ScheduleSummary>,
            done: bool,
            refusal: Option<ScheduleError>,
        }
        let stream = futures::stream::unfold(
            Cursor {
                after: None,
                buffer: VecDeque::new(),
                done: false,
                refusal,
            },
            move |mut cur| {
                let client = client.clone();
                async move {
                    if let Some(e) = cur.refusal.take() {
                        cur.done = true;
                        return Some((Err(e), cur));
                    }
                    if let Some(item) = cur.buffer.pop_front() {
                        return Some((Ok(item), cur));
                    }
                    if cur.done {
                        return None;
                    }
                    match list_page(&client, cur.after.as_deref(), page).await {
                        Ok(items) => {
                            cur.done = items.len() < page;
                            cur.after = items.last().map(|s| s.schedule_id().to_string());
                            cur.buffer = items.into();
                            let item = cur.buffer.pop_front()?;
                            Some((Ok(item), cur))
                        }
                        Err(e) => {
                            cur.done = true;
                            Some((Err(e), cur))
                        }
                    }
                }
            },
        );
        ListSchedulesStream {
            inner: Box::pin(stream),
        }
    }
}

async fn list_page(
    client: &Client,
    after: Option<&str>,
    page: usize,
) -> Result<Vec<ScheduleSummary>, ScheduleError> {
    let db = client.system_database().await?;
    let rows = db.list_schedules(after, page).await?;
    let states: Vec<State> = rows.iter().map(|r| State::decode(&r.state)).collect();
    let ids: Vec<String> = states.iter().flat_map(recent_run_ids).collect();
    let statuses = statuses_by_id(&db, &ids).await?;
    let mut out = Vec::with_capacity(rows.len());
    for (row, state) in rows.into_iter().zip(states) {
        let schedule = stored_schedule(&row)?;
        let spec = spec_of(&schedule);
        let sched_state = schedule.state.clone().unwrap_or_default();
        let info = schedule_proto::ScheduleListInfo {
            spec: schedule.spec.clone(),
            workflow_type: engine::start_info(&schedule).and_then(|i| i.workflow_type.clone()),
            notes: sched_state.notes.clone(),
            paused: sched_state.paused,
            recent_actions: recent_actions(&statuses, &state)?,
            future_action_times: future_times(
                &schedule,
                &spec,
                row.next_fire_at_ms,
                LIST_FUTURE_TIMES,
            ),
            ..Default::default()
        };
        out.push(ScheduleSummary {
            raw: schedule_proto::ScheduleListEntry {
                schedule_id: row.schedule_id.clone(),
                memo: None,
                search_attributes: None,
                info: Some(info),
            },
            data_converter: client.data_converter().clone(),
        });
    }
    Ok(out)
}

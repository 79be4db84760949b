//! Standalone activities (upstream's `Client::start_activity`, `ActivityHandle`,
//! `list_activities`, `count_activities`).
//!
//! A standalone activity is a DBOS workflow row of its own (run id
//! [`protocol::activity_run_id`], queue [`protocol::activity_queue`], attributes marked with
//! [`protocol::ActivityAttributes`]) whose one step is the activity: a worker that registers
//! the activity type claims the row, runs the activity with its retry policy, timeouts and
//! heartbeats, and records the outcome as the row's outcome. Status, claiming and recovery after
//! a worker crash are the rows' own. Activity run ids are `A`, `A--r1`, … for activity id `A`.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use dbos_core::{RunState, SystemDatabase, WorkflowStatus};
use futures::Stream;
use temporalio_common_wasm::data_converters::{
    DataConverter, DecodablePayloads, NoopDecodeHint, PayloadConversionError,
    TemporalDeserializable,
};
use temporalio_common_wasm::error::IncomingError;
use temporalio_common_wasm::search_attributes::{
    SearchAttributeError, SearchAttributeValue, SearchAttributes,
};
use temporalio_common_wasm::{
    ActivityCloseTimeouts, ActivityDefinition, RetryPolicy, UntypedActivity,
};
use temporalio_protos::temporal::api::activity::v1::{
    ActivityExecutionInfo as RawInfo, ActivityExecutionListInfo as RawListInfo,
    activity_execution_outcome::Value as OutcomeValue,
};
use temporalio_protos::temporal::api::common::v1::{
    ActivityType, Payload, Payloads, RetryPolicy as ProtoRetryPolicy,
    SearchAttributes as ProtoSearchAttributes,
};
use temporalio_protos::temporal::api::enums::v1::{
    ActivityExecutionStatus as ProtoActivityStatus, PendingActivityState as ProtoPendingState,
    TimeoutType,
};
use temporalio_protos::temporal::api::failure::v1::{
    Failure, TerminatedFailureInfo, failure::FailureInfo,
};
use tracing::debug;

use crate::listing::{invalid_query, page_rows};
use crate::options::Priority;
use crate::protocol::{
    self, ActivityAttributes, ActivityEnd, ProtocolError, RunAttributes, STANDALONE_SEQ,
    TerminalOutcome,
};
use crate::visibility::{self, Target};
use crate::workflow_handle::terminate_run;
use crate::{
    Client, ClientError, NamespacedClient, act_ctx, dur, ms, to_duration, to_system_time, ts,
};

// ------------------------------------------------------------------------------------------
// Options
// ------------------------------------------------------------------------------------------

/// Options of [`Client::start_activity`].
#[derive(Clone, Debug, bon::Builder)]
#[builder(start_fn = new, on(String, into))]
#[non_exhaustive]
pub struct ActivityStartOptions {
    /// The task queue whose workers run the activity.
    #[builder(start_fn)]
    pub task_queue: String,
    /// The activity id (unique among running activities; `--r` is reserved).
    #[builder(start_fn)]
    pub id: String,
    /// Schedule-to-close and/or start-to-close timeout.
    #[builder(start_fn)]
    pub close_timeouts: ActivityCloseTimeouts,
    /// Longest wait in the task queue before a worker starts it (not retried).
    pub schedule_to_start_timeout: Option<Duration>,
    /// Longest time between heartbeats.
    pub heartbeat_timeout: Option<Duration>,
    /// Retry policy; Temporal's defaults when unset.
    #[builder(into)]
    pub retry_policy: Option<RetryPolicy>,
    /// Priority: the key orders the task queue (lower first); fairness is refused.
    #[builder(default)]
    pub priority: Priority,
    /// What to do when a closed activity has the id.
    #[builder(default)]
    pub id_reuse_policy: ActivityIdReusePolicy,
    /// What to do when a running activity has the id.
    #[builder(default)]
    pub id_conflict_policy: ActivityIdConflictPolicy,
    /// Search attributes (queryable with `list_activities`).
    pub search_attributes: Option<SearchAttributes>,
    /// Headers handed to the activity.
    pub header: Option<temporalio_protos::temporal::api::common::v1::Header>,
    /// Static summary.
    pub summary: Option<String>,
    /// Static details.
    pub static_details: Option<String>,
    /// Wait this long before the first attempt.
    pub start_delay: Option<Duration>,
}

impl ActivityStartOptions {
    /// A builder with a start-to-close timeout.
    pub fn with_start_to_close_timeout(
        task_queue: impl Into<String>,
        activity_id: impl Into<String>,
        start_to_close_timeout: Duration,
    ) -> ActivityStartOptionsBuilder {
        Self::new(
            task_queue,
            activity_id,
            ActivityCloseTimeouts::StartToClose(start_to_close_timeout),
        )
    }

    /// A builder with a schedule-to-close timeout.
    pub fn with_schedule_to_close_timeout(
        task_queue: impl Into<String>,
        activity_id: impl Into<String>,
        schedule_to_close_timeout: Duration,
    ) -> ActivityStartOptionsBuilder {
        Self::new(
            task_queue,
            activity_id,
            ActivityCloseTimeouts::ScheduleToClose(schedule_to_close_timeout),
        )
    }
}

/// What starting an activity does when a *closed* activity has the id.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ActivityIdReusePolicy {
    /// Start a new run (the default).
    #[default]
    AllowDuplicate,
    /// Start a new run only when the last one did not complete successfully.
    AllowDuplicateFailedOnly,
    /// Refuse with `AlreadyStarted`.
    RejectDuplicate,
}

/// What starting an activity does when a *running* activity has the id.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ActivityIdConflictPolicy {
    /// Refuse with `AlreadyStarted` (the default).
    #[default]
    Fail,
    /// Return a handle on the running activity.
    UseExisting,
}

/// Options of [`Client::list_activities`].
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct ActivityListOptions {}

/// Options of [`Client::count_activities`].
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct ActivityCountOptions {}

/// Which optional parts [`ActivityHandle::describe`] includes.
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct ActivityDescribeOptions {
    /// Include the input.
    #[builder(default)]
    pub include_input: bool,
    /// Include the outcome of a closed activity.
    #[builder(default)]
    pub include_outcome: bool,
    /// Include the last heartbeat details.
    #[builder(default)]
    pub include_heartbeat_details: bool,
    /// Include the last failure (the failure of a failed, timed-out or canceled activity).
    #[builder(default)]
    pub include_last_failure: bool,
}

/// Options of [`ActivityHandle::cancel`].
#[derive(Debug, Clone, Default, bon::Builder)]
#[builder(on(String, into))]
#[non_exhaustive]
pub struct ActivityCancelOptions {
    /// Why (may be empty).
    #[builder(default)]
    pub reason: String,
}

/// Options of [`ActivityHandle::terminate`].
#[derive(Debug, Clone, Default, bon::Builder)]
#[builder(on(String, into))]
#[non_exhaustive]
pub struct ActivityTerminateOptions {
    /// Why (may be empty).
    #[builder(default)]
    pub reason: String,
}

// ------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------

/// Errors of [`Client::start_activity`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartActivityError {
    /// An activity with the id conflicts under the reuse and conflict policies.
    #[error("Activity already started with run_id={run_id}")]
    AlreadyStarted {
        /// The run id of the existing activity run.
        run_id: String,
        /// The status.
        #[source]
        source: tonic::Status,
    },
    /// The input could not be serialized.
    #[error("Payload conversion error: {0}")]
    PayloadConversion(#[from] PayloadConversionError),
    /// Bad options or a database failure.
    #[error("Server error: {0}")]
    Rpc(#[source] tonic::Status),
    /// Other errors.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

/// Errors of [`ActivityHandle::result`].
// Upstream's shape (the failure is held inline); boxing it would change the public type.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivityResultError {
    /// The activity failed (or timed out: the failure holds the timeout).
    #[error("Activity failed: {0}")]
    ActivityFailed(#[source] IncomingError),
    /// The activity was canceled.
    #[error("Activity canceled")]
    Cancelled {
        /// Cancellation details.
        details: DecodablePayloads,
    },
    /// The activity was terminated.
    #[error("Activity terminated")]
    Terminated,
    /// The activity timed out (not produced: timeouts are [`Self::ActivityFailed`], as upstream).
    #[error("Activity timed out: {0:?}")]
    TimedOut(TimeoutType),
    /// No such activity.
    #[error("Activity not found")]
    NotFound(#[source] tonic::Status),
    /// The output could not be deserialized.
    #[error("Payload conversion error: {0}")]
    PayloadConversion(#[from] PayloadConversionError),
    /// A database failure.
    #[error("Server error: {0}")]
    Rpc(#[source] tonic::Status),
    /// Other errors.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

/// Errors of [`ActivityHandle`] operations other than `result`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivityInteractionError {
    /// No such activity, or it is closed.
    #[error("Activity not found")]
    NotFound(#[source] tonic::Status),
    /// A stored value could not be converted.
    #[error("Payload conversion error: {0}")]
    PayloadConversion(#[from] PayloadConversionError),
    /// A database failure.
    #[error("Server error: {0}")]
    Rpc(#[source] tonic::Status),
    /// Other errors.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

crate::errors::from_protocol!(ActivityResultError, ActivityInteractionError);
crate::errors::from_protocol!(no_not_found: StartActivityError);

macro_rules! from_status {
    ($($t:ty),*) => {$(
        impl From<tonic::Status> for $t {
            fn from(s: tonic::Status) -> Self {
                if s.code() == tonic::Code::NotFound { Self::NotFound(s) } else { Self::Rpc(s) }
            }
        }
    )*};
}
from_status!(ActivityResultError, ActivityInteractionError);

fn invalid(msg: impl Into<String>) -> StartActivityError {
    StartActivityError::Rpc(tonic::Status::invalid_argument(msg.into()))
}

// ------------------------------------------------------------------------------------------
// Status and outcome of an activity row
// ------------------------------------------------------------------------------------------

/// The status of a standalone activity.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ActivityExecutionStatus {
    /// Not specified.
    #[default]
    Unspecified,
    /// Not closed yet.
    Running,
    /// Completed successfully.
    Completed,
    /// Failed.
    Failed,
    /// Canceled.
    Canceled,
    /// Terminated.
    Terminated,
    /// Timed out.
    TimedOut,
    /// Paused (never reported by DBOSify).
    Paused,
    /// Unknown value.
    Unknown,
}

impl From<ProtoActivityStatus> for ActivityExecutionStatus {
    fn from(value: ProtoActivityStatus) -> Self {
        match value {
            ProtoActivityStatus::Unspecified => Self::Unspecified,
            ProtoActivityStatus::Running => Self::Running,
            ProtoActivityStatus::Completed => Self::Completed,
            ProtoActivityStatus::Failed => Self::Failed,
            ProtoActivityStatus::Canceled => Self::Canceled,
            ProtoActivityStatus::Terminated => Self::Terminated,
            ProtoActivityStatus::TimedOut => Self::TimedOut,
            ProtoActivityStatus::Paused => Self::Paused,
        }
    }
}

/// The detailed state of a running activity.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PendingActivityState {
    /// Not specified.
    #[default]
    Unspecified,
    /// Waiting for a worker.
    Scheduled,
    /// Running on a worker.
    Started,
    /// Cancellation was requested.
    CancelRequested,
    /// Paused (never reported by DBOSify).
    Paused,
    /// Pause requested (never reported by DBOSify).
    PauseRequested,
    /// Unknown value.
    Unknown,
}

impl From<ProtoPendingState> for PendingActivityState {
    fn from(value: ProtoPendingState) -> Self {
        match value {
            ProtoPendingState::Unspecified => Self::Unspecified,
            ProtoPendingState::Scheduled => Self::Scheduled,
            ProtoPendingState::Started => Self::Started,
            ProtoPendingState::CancelRequested => Self::CancelRequested,
            ProtoPendingState::Paused => Self::Paused,
            ProtoPendingState::PauseRequested => Self::PauseRequested,
        }
    }
}

/// The closed outcome of an activity row, or `None` while it runs.
fn row_outcome(
    status: &WorkflowStatus,
) -> Result<Option<(ProtoActivityStatus, OutcomeValue)>, ProtocolError> {
    let run = &status.workflow_id;
    Ok(match status.state {
        RunState::Enqueued
        | RunState::Delayed
        | RunState::Pending
        | RunState::MaxRecoveryAttemptsExceeded => None,
        RunState::Success => {
            let payloads = match status.output.as_deref() {
                Some(t) => {
                    protocol::decode_payloads(&format!("result of activity run `{run}`"), t)?
                }
                None => Vec::new(),
            };
            Some((
                ProtoActivityStatus::Completed,
                OutcomeValue::Result(Payloads { payloads }),
            ))
        }
        RunState::Error => {
            let text = status.error.as_deref().unwrap_or("");
            let end = ActivityEnd::from_text(text)?;
            Some(match end {
                ActivityEnd::Failed { failure } => {
                    (ProtoActivityStatus::Failed, OutcomeValue::Failure(failure))
                }
                ActivityEnd::Canceled { failure } => (
                    ProtoActivityStatus::Canceled,
                    OutcomeValue::Failure(failure),
                ),
                ActivityEnd::TimedOut { failure } => (
                    ProtoActivityStatus::TimedOut,
                    OutcomeValue::Failure(failure),
                ),
            })
        }
        RunState::Cancelled => {
            let reason = match TerminalOutcome::from_status(status)? {
                Some(TerminalOutcome::Terminated { reason, .. }) => reason,
                _ => String::new(),
            };
            Some((
                ProtoActivityStatus::Terminated,
                OutcomeValue::Failure(Failure {
                    message: if reason.is_empty() {
                        "Activity terminated".into()
                    } else {
                        reason
                    },
                    failure_info: Some(FailureInfo::TerminatedFailureInfo(
                        TerminatedFailureInfo::default(),
                    )),
                    ..Default::default()
                }),
            ))
        }
    })
}

/// The status of an activity row; a closed row whose outcome does not decode counts as failed.
fn row_status(status: &WorkflowStatus) -> ProtoActivityStatus {
    match row_outcome(status) {
        Ok(Some((s, _))) => s,
        Ok(None) => ProtoActivityStatus::Running,
        Err(_) => ProtoActivityStatus::Failed,
    }
}

/// The activity id and run id (without the row prefix) of an activity row.
fn ids_of(status: &WorkflowStatus) -> (String, String) {
    let run = status
        .workflow_id
        .strip_prefix(protocol::ACTIVITY_RUN_PREFIX)
        .unwrap_or(&status.workflow_id)
        .to_string();
    let id = protocol::parse_run_id(&run).0.to_string();
    (id, run)
}

/// The list form of an activity row whose status is `state` (see [`row_status`]).
fn list_info(
    status: &WorkflowStatus,
    state: ProtoActivityStatus,
) -> Result<RawListInfo, ProtocolError> {
    let attrs = RunAttributes::of_run(status)?;
    let (activity_id, run_id) = ids_of(status);
    let close_ms = (state != ProtoActivityStatus::Running)
        .then(|| status.completed_at_ms.unwrap_or(status.updated_at_ms));
    Ok(RawListInfo {
        activity_id,
        run_id,
        activity_type: Some(ActivityType {
            name: status.name.clone(),
        }),
        schedule_time: Some(ts(status.created_at_ms)),
        close_time: close_ms.map(ts),
        status: state as i32,
        search_attributes: Some(ProtoSearchAttributes {
            indexed_fields: attrs.search_attributes()?,
        }),
        task_queue: attrs.task_queue.clone(),
        execution_duration: close_ms
            .map(|c| dur(u64::try_from(c.saturating_sub(status.created_at_ms)).unwrap_or(0))),
        execution_time: Some(ts(status
            .delay_until_epoch_ms
            .unwrap_or(status.created_at_ms))),
        ..Default::default()
    })
}

// ------------------------------------------------------------------------------------------
// Execution info
// ------------------------------------------------------------------------------------------

/// What [`ActivityExecutionInfo`] and [`ActivityExecutionDescription`] share.
pub trait ActivityExecutionInfoLike {
    /// The activity id.
    fn activity_id(&self) -> &str;
    /// The run id of this execution.
    fn activity_run_id(&self) -> &str;
    /// The activity type.
    fn activity_type(&self) -> &str;
    /// When it was scheduled.
    fn schedule_time(&self) -> Option<SystemTime>;
    /// When it closed.
    fn close_time(&self) -> Option<SystemTime>;
    /// Its status.
    fn status(&self) -> ActivityExecutionStatus;
    /// Its task queue.
    fn task_queue(&self) -> &str;
    /// Close time minus schedule time, once closed.
    fn execution_duration(&self) -> Option<Duration>;
}

/// An activity returned by [`Client::list_activities`].
pub struct ActivityExecutionInfo {
    raw: RawListInfo,
}

impl From<RawListInfo> for ActivityExecutionInfo {
    fn from(raw: RawListInfo) -> Self {
        Self { raw }
    }
}

impl ActivityExecutionInfo {
    /// The proto form.
    pub fn raw_info(&self) -> &RawListInfo {
        &self.raw
    }
}

impl ActivityExecutionInfoLike for ActivityExecutionInfo {
    fn activity_id(&self) -> &str {
        &self.raw.activity_id
    }
    fn activity_run_id(&self) -> &str {
        &self.raw.run_id
    }
    fn activity_type(&self) -> &str {
        self.raw
            .activity_type
            .as_ref()
            .map_or("", |t| t.name.as_str())
    }
    fn schedule_time(&self) -> Option<SystemTime> {
        to_system_time(&self.raw.schedule_time)
    }
    fn close_time(&self) -> Option<SystemTime> {
        to_system_time(&self.raw.close_time)
    }
    fn status(&self) -> ActivityExecutionStatus {
        ProtoActivityStatus::try_from(self.raw.status)
            .map_or(ActivityExecutionStatus::Unknown, Into::into)
    }
    fn task_queue(&self) -> &str {
        &self.raw.task_queue
    }
    fn execution_duration(&self) -> Option<Duration> {
        to_duration(&self.raw.execution_duration)
    }
}

/// The state of an activity, from [`ActivityHandle::describe`].
pub struct ActivityExecutionDescription<ActivityT = UntypedActivity>
where
    ActivityT: ActivityDefinition,
{
    raw_info: RawInfo,
    raw_input: Option<Payloads>,
    raw_outcome: Option<OutcomeValue>,
    data_converter: DataConverter,
    _phantom: PhantomData<ActivityT>,
}

impl<A: ActivityDefinition> ActivityExecutionInfoLike for ActivityExecutionDescription<A> {
    fn activity_id(&self) -> &str {
        &self.raw_info.activity_id
    }
    fn activity_run_id(&self) -> &str {
        &self.raw_info.run_id
    }
    fn activity_type(&self) -> &str {
        self.raw_info
            .activity_type
            .as_ref()
            .map_or("", |t| t.name.as_str())
    }
    fn schedule_time(&self) -> Option<SystemTime> {
        to_system_time(&self.raw_info.schedule_time)
    }
    fn close_time(&self) -> Option<SystemTime> {
        to_system_time(&self.raw_info.close_time)
    }
    fn status(&self) -> ActivityExecutionStatus {
        ProtoActivityStatus::try_from(self.raw_info.status)
            .map_or(ActivityExecutionStatus::Unknown, Into::into)
    }
    fn task_queue(&self) -> &str {
        &self.raw_info.task_queue
    }
    fn execution_duration(&self) -> Option<Duration> {
        to_duration(&self.raw_info.execution_duration)
    }
}

impl<A: ActivityDefinition> ActivityExecutionDescription<A> {
    /// As an untyped description.
    pub fn untyped(self) -> ActivityExecutionDescription {
        ActivityExecutionDescription {
            raw_info: self.raw_info,
            raw_input: self.raw_input,
            raw_outcome: self.raw_outcome,
            data_converter: self.data_converter,
            _phantom: PhantomData,
        }
    }

    /// The proto form.
    pub fn raw_info(&self) -> &RawInfo {
        &self.raw_info
    }

    /// Whether the input is included.
    pub fn has_input(&self) -> bool {
        self.raw_input.is_some()
    }

    /// The input payloads, when included.
    pub fn raw_input(&self) -> Option<&Payloads> {
        self.raw_input.as_ref()
    }

    /// The input, when included.
    ///
    /// # Errors
    /// When it does not deserialize.
    pub async fn input(&self) -> Result<Option<A::Input>, PayloadConversionError> {
        match &self.raw_input {
            None => Ok(None),
            Some(p) => Ok(Some(
                self.data_converter
                    .from_payloads(&act_ctx(), p.payloads.clone())
                    .await?,
            )),
        }
    }

    /// Whether the outcome is included.
    pub fn has_outcome(&self) -> bool {
        self.raw_outcome.is_some()
    }

    /// The outcome, when included and closed.
    pub fn raw_outcome(&self) -> Option<&OutcomeValue> {
        self.raw_outcome.as_ref()
    }

    /// The outcome, when included and closed.
    ///
    /// # Errors
    /// When it does not deserialize.
    pub async fn outcome(
        &self,
    ) -> Result<Option<Result<A::Output, IncomingError>>, PayloadConversionError> {
        match &self.raw_outcome {
            None => Ok(None),
            Some(OutcomeValue::Result(p)) => Ok(Some(Ok(self
                .data_converter
                .from_payloads(&act_ctx(), p.payloads.clone())
                .await?))),
            Some(OutcomeValue::Failure(f)) => Ok(Some(Err(self.data_converter.to_error(
                &act_ctx(),
                f.clone(),
                NoopDecodeHint,
            )?))),
        }
    }

    /// The detailed state of a running activity.
    pub fn run_state(&self) -> PendingActivityState {
        ProtoPendingState::try_from(self.raw_info.run_state)
            .map_or(PendingActivityState::Unknown, Into::into)
    }

    /// Schedule-to-close timeout.
    pub fn schedule_to_close_timeout(&self) -> Option<Duration> {
        to_duration(&self.raw_info.schedule_to_close_timeout)
    }

    /// Schedule-to-start timeout.
    pub fn schedule_to_start_timeout(&self) -> Option<Duration> {
        to_duration(&self.raw_info.schedule_to_start_timeout)
    }

    /// Start-to-close timeout.
    pub fn start_to_close_timeout(&self) -> Option<Duration> {
        to_duration(&self.raw_info.start_to_close_timeout)
    }

    /// Heartbeat timeout.
    pub fn heartbeat_timeout(&self) -> Option<Duration> {
        to_duration(&self.raw_info.heartbeat_timeout)
    }

    /// The retry policy given at start.
    pub fn retry_policy(&self) -> Option<RetryPolicy> {
        self.raw_info.retry_policy.clone().map(Into::into)
    }

    /// Whether heartbeat details are included.
    pub fn has_heartbeat_details(&self) -> bool {
        self.raw_info.heartbeat_details.is_some()
    }

    /// The last heartbeat details, when included.
    ///
    /// # Errors
    /// When they do not deserialize as `T`.
    pub async fn heartbeat_details<T: TemporalDeserializable + 'static>(
        &self,
    ) -> Result<Option<T>, PayloadConversionError> {
        match &self.raw_info.heartbeat_details {
            None => Ok(None),
            Some(p) => Ok(Some(
                self.data_converter
                    .from_payloads(&act_ctx(), p.payloads.clone())
                    .await?,
            )),
        }
    }

    /// When the last attempt started.
    pub fn last_started_time(&self) -> Option<SystemTime> {
        to_system_time(&self.raw_info.last_started_time)
    }

    /// When the last heartbeat was recorded (by the worker, or through an async activity
    /// handle); `None` before the first.
    pub fn last_heartbeat_time(&self) -> Option<SystemTime> {
        to_system_time(&self.raw_info.last_heartbeat_time)
    }

    /// The current (or last) attempt, from 1.
    pub fn attempt(&self) -> u32 {
        u32::try_from(self.raw_info.attempt).unwrap_or_default()
    }

    /// Close time minus schedule time, once closed.
    pub fn execution_duration(&self) -> Option<Duration> {
        to_duration(&self.raw_info.execution_duration)
    }

    /// Schedule time plus the schedule-to-close timeout.
    pub fn expiration_time(&self) -> Option<SystemTime> {
        to_system_time(&self.raw_info.expiration_time)
    }

    /// Whether the last failure is included.
    pub fn has_last_failure(&self) -> bool {
        self.raw_info.last_failure.is_some()
    }

    /// The last failure, when included.
    ///
    /// # Errors
    /// When it does not convert.
    pub fn last_failure(&self) -> Result<Option<IncomingError>, PayloadConversionError> {
        match &self.raw_info.last_failure {
            None => Ok(None),
            Some(f) => Ok(Some(self.data_converter.to_error(
                &act_ctx(),
                f.clone(),
                NoopDecodeHint,
            )?)),
        }
    }

    /// The identity of the worker that ran (or runs) it.
    pub fn last_worker_identity(&self) -> Option<&str> {
        let id = self.raw_info.last_worker_identity.as_str();
        (!id.is_empty()).then_some(id)
    }

    /// The priority.
    pub fn priority(&self) -> Priority {
        self.raw_info.priority.clone().unwrap_or_default().into()
    }

    /// The search attributes.
    pub fn search_attributes(&self) -> Option<SearchAttributes> {
        self.raw_info
            .search_attributes
            .as_ref()
            .map(SearchAttributes::from_proto)
    }

    /// The cancellation reason, when cancellation was requested with one.
    pub fn canceled_reason(&self) -> Option<&str> {
        let r = self.raw_info.canceled_reason.as_str();
        (!r.is_empty()).then_some(r)
    }

    /// The start delay.
    pub fn start_delay(&self) -> Option<Duration> {
        to_duration(&self.raw_info.start_delay)
    }
}

// ------------------------------------------------------------------------------------------
// Handle
// ------------------------------------------------------------------------------------------

/// A standalone activity: its result, description, cancellation and termination. Without a run
/// id, each call targets the latest run of the activity id.
pub struct ActivityHandle<ClientT, ActivityT>
where
    ActivityT: ActivityDefinition,
{
    client: ClientT,
    activity_id: String,
    run_id: Option<String>,
    _phantom: PhantomData<ActivityT>,
}

impl<CT, A: ActivityDefinition> ActivityHandle<CT, A> {
    pub(crate) fn new(client: CT, activity_id: String, run_id: Option<String>) -> Self {
        Self {
            client,
            activity_id,
            run_id,
            _phantom: PhantomData,
        }
    }

    /// The activity id.
    pub fn activity_id(&self) -> &str {
        &self.activity_id
    }

    /// The run id this handle targets; `None`: the latest run at each call.
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }
}

/// The row of the activity run `run_id` (given without the row prefix) or the latest run of
/// `activity_id`.
pub(crate) async fn activity_row(
    db: &SystemDatabase,
    activity_id: &str,
    run_id: Option<&str>,
) -> Result<WorkflowStatus, ProtocolError> {
    let not_found = || {
        ProtocolError::Database(dbos_core::Error::UnknownRun(format!(
            "standalone activity `{activity_id}`{}",
            run_id.map(|r| format!(" run `{r}`")).unwrap_or_default()
        )))
    };
    let found = match run_id.filter(|r| !r.is_empty()) {
        Some(r) => {
            if protocol::parse_run_id(r).0 != activity_id {
                return Err(not_found());
            }
            db.status(&format!("{}{r}", protocol::ACTIVITY_RUN_PREFIX))
                .await?
        }
        None => protocol::latest_run(db, &protocol::activity_run_base(activity_id)).await?,
    };
    found.ok_or_else(not_found)
}

impl<A: ActivityDefinition> ActivityHandle<Client, A> {
    async fn row(&self, db: &SystemDatabase) -> Result<WorkflowStatus, ProtocolError> {
        activity_row(db, &self.activity_id, self.run_id.as_deref()).await
    }

    /// The row of the targeted run; `NotFound` when it is closed.
    async fn open_row(
        &self,
        db: &SystemDatabase,
    ) -> Result<WorkflowStatus, ActivityInteractionError> {
        let row = self.row(db).await?;
        if row_outcome(&row)?.is_some() {
            return Err(ActivityInteractionError::NotFound(
                tonic::Status::not_found(format!(
                    "activity run `{}` is already closed",
                    ids_of(&row).1
                )),
            ));
        }
        Ok(row)
    }

    /// Waits for the activity to close and returns its result.
    ///
    /// # Errors
    /// [`ActivityResultError::ActivityFailed`] (also for timeouts), `Cancelled`, `Terminated`,
    /// `NotFound`.
    pub async fn result(&self) -> Result<A::Output, ActivityResultError> {
        let db = self.client.system_database().await?;
        let row = self.row(&db).await?;
        let status = match db.await_outcome(&row.workflow_id, None).await? {
            Some(s) => s,
            None => {
                return Err(ActivityResultError::Rpc(tonic::Status::deadline_exceeded(
                    "activity did not close",
                )));
            }
        };
        let dc = self.client.data_converter();
        match row_outcome(&status)? {
            None => Err(ActivityResultError::Other(
                format!(
                    "activity run `{}` is stuck: it exceeded its maximum recovery attempts",
                    status.workflow_id
                )
                .into(),
            )),
            Some((_, OutcomeValue::Result(p))) => {
                Ok(dc.from_payloads(&act_ctx(), p.payloads).await?)
            }
            Some((_, OutcomeValue::Failure(failure))) => Err(match &failure.failure_info {
                Some(FailureInfo::CanceledFailureInfo(info)) => {
                    let payloads = info.details.clone().unwrap_or_default().payloads;
                    ActivityResultError::Cancelled {
                        details: DecodablePayloads::new(
                            payloads,
                            dc.payload_converter().clone(),
                            act_ctx(),
                        ),
                    }
                }
                Some(FailureInfo::TerminatedFailureInfo(_)) => ActivityResultError::Terminated,
                _ => ActivityResultError::ActivityFailed(dc.to_error(
                    &act_ctx(),
                    failure,
                    NoopDecodeHint,
                )?),
            }),
        }
    }

    /// Describes the activity.
    ///
    /// # Errors
    /// `NotFound`; database failures.
    pub async fn describe(
        &self,
        options: ActivityDescribeOptions,
    ) -> Result<ActivityExecutionDescription<A>, ActivityInteractionError> {
        let db = self.client.system_database().await?;
        let row = self.row(&db).await?;
        let run = row.workflow_id.clone();
        let attrs = RunAttributes::of_run(&row)?;
        let act = attrs.activity().unwrap_or_default();
        let seq = STANDALONE_SEQ;
        let (akey, hkey, ckey) = (
            protocol::attempt_key(seq),
            protocol::heartbeat_key(seq),
            protocol::cancel_requested_key(seq),
        );
        let (tkey, async_tkey) = (
            protocol::heartbeat_time_key(seq),
            protocol::async_heartbeat_key(seq),
        );
        // The heartbeat's time is read before its details: both are written by one statement,
        // so a time that is seen comes with its details (concurrent reads could see the time
        // of a heartbeat whose details they read before it committed).
        let beat = async {
            let at = db.get_event(&run, &tkey, None).await;
            (at, db.get_event(&run, &hkey, None).await)
        };
        let (attempt, (beat_at, heartbeat), cancel, async_beat_at) = tokio::join!(
            db.get_event(&run, &akey, None),
            beat,
            db.get_event(&run, &ckey, None),
            db.get_event(&run, &async_tkey, None),
        );
        // The later of the worker's recorded heartbeat and an async handle's heartbeat.
        let last_heartbeat_ms = [beat_at?, async_beat_at?]
            .into_iter()
            .flatten()
            .filter_map(|t| t.parse::<i64>().ok())
            .filter(|t| *t > 0)
            .max();
        let attempt = attempt?.and_then(|a| a.parse::<i32>().ok()).unwrap_or(1);
        let heartbeat = match heartbeat? {
            Some(t) => Some(protocol::decode_payloads("heartbeat details", &t)?),
            None => None,
        };
        let cancel = cancel?;
        let outcome = row_outcome(&row)?;
        let state = outcome
            .as_ref()
            .map_or(ProtoActivityStatus::Running, |(s, _)| *s);
        let run_state = match (&outcome, row.state, &cancel) {
            (Some(_), _, _) => ProtoPendingState::Unspecified,
            (None, _, Some(_)) => ProtoPendingState::CancelRequested,
            (None, RunState::Pending, _) => ProtoPendingState::Started,
            (None, _, _) => ProtoPendingState::Scheduled,
        };
        let list = list_info(&row, state)?;
        let retry_policy: Option<ProtoRetryPolicy> = act
            .retry_policy
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        let last_failure = match &outcome {
            Some((_, OutcomeValue::Failure(f))) if options.include_last_failure => Some(f.clone()),
            _ => None,
        };
        let raw_info = RawInfo {
            activity_id: list.activity_id,
            run_id: list.run_id,
            activity_type: list.activity_type,
            status: state as i32,
            run_state: run_state as i32,
            task_queue: list.task_queue,
            schedule_to_close_timeout: act.schedule_to_close_ms.map(dur),
            schedule_to_start_timeout: act.schedule_to_start_ms.map(dur),
            start_to_close_timeout: act.start_to_close_ms.map(dur),
            heartbeat_timeout: act.heartbeat_timeout_ms.map(dur),
            retry_policy,
            heartbeat_details: heartbeat
                .filter(|_| options.include_heartbeat_details)
                .map(|payloads| Payloads { payloads }),
            last_started_time: row.started_at_ms.map(ts),
            last_heartbeat_time: last_heartbeat_ms.map(ts),
            priority: attrs
                .priority_key
                .map(|key| Priority::builder().priority_key(key).build().into()),
            attempt,
            execution_duration: list.execution_duration,
            schedule_time: list.schedule_time,
            expiration_time: act.schedule_to_close_ms.map(|m| {
                ts(row
                    .created_at_ms
                    .saturating_add(i64::try_from(m).unwrap_or(i64::MAX)))
            }),
            close_time: list.close_time,
            last_failure,
            last_worker_identity: row.executor_id.clone().unwrap_or_default(),
            search_attributes: list.search_attributes,
            canceled_reason: cancel.unwrap_or_default(),
            execution_time: list.execution_time,
            ..Default::default()
        };
        let raw_input = if options.include_input {
            let text = row.inputs.as_deref().unwrap_or("[]");
            Some(Payloads {
                payloads: protocol::decode_payloads(
                    &format!("input of activity run `{run}`"),
                    text,
                )?,
            })
        } else {
            None
        };
        let raw_outcome = if options.include_outcome {
            outcome.map(|(_, o)| o)
        } else {
            None
        };
        Ok(ActivityExecutionDescription {
            raw_info,
            raw_input,
            raw_outcome,
            data_converter: self.client.data_converter().clone(),
            _phantom: PhantomData,
        })
    }

    /// Requests cancellation: the worker running the activity cancels its context (the activity
    /// sees `is_cancelled()` and should return `ActivityError::Cancelled`). Does not wait.
    ///
    /// # Errors
    /// `NotFound` when the activity does not exist or is closed.
    pub async fn cancel(
        &self,
        options: ActivityCancelOptions,
    ) -> Result<(), ActivityInteractionError> {
        let db = self.client.system_database().await?;
        let row = self.open_row(&db).await?;
        db.set_event(
            &row.workflow_id,
            &protocol::cancel_requested_key(STANDALONE_SEQ),
            &options.reason,
        )
        .await?;
        debug!(run = %row.workflow_id, "activity cancellation requested");
        Ok(())
    }

    /// Terminates the activity at once; `result` then reports `Terminated`.
    ///
    /// # Errors
    /// `NotFound` when the activity does not exist or is closed.
    pub async fn terminate(
        &self,
        options: ActivityTerminateOptions,
    ) -> Result<(), ActivityInteractionError> {
        let db = self.client.system_database().await?;
        let row = self.open_row(&db).await?;
        terminate_run(
            &db,
            &row.workflow_id,
            options.reason,
            Vec::new(),
            self.client.identity(),
        )
        .await?;
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// List and count
// ------------------------------------------------------------------------------------------

/// The stream of [`Client::list_activities`]: pages lazily through the matching activities.
pub struct ListActivitiesStream {
    inner: Pin<Box<dyn Stream<Item = Result<ActivityExecutionInfo, ClientError>> + Send>>,
}

impl Stream for ListActivitiesStream {
    type Item = Result<ActivityExecutionInfo, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// The result of [`Client::count_activities`].
#[derive(Debug, Clone)]
pub struct ActivityExecutionCount {
    count: usize,
    groups: Vec<ActivityExecutionCountAggregationGroup>,
}

impl ActivityExecutionCount {
    /// How many activities match (the sum of the groups when grouped).
    pub fn count(&self) -> usize {
        self.count
    }

    /// The groups; empty without `GROUP BY ExecutionStatus`.
    pub fn groups(&self) -> &[ActivityExecutionCountAggregationGroup] {
        &self.groups
    }
}

/// One group of a grouped activity count.
#[derive(Debug, Clone)]
pub struct ActivityExecutionCountAggregationGroup {
    values: Vec<Payload>,
    count: usize,
}

impl ActivityExecutionCountAggregationGroup {
    /// The group value at `index` as `T`; `None` when absent or of another type.
    pub fn get<T: SearchAttributeValue>(&self, index: usize) -> Option<T> {
        self.try_get(index).ok().flatten()
    }

    /// The group value at `index` as `T`; `Ok(None)` when absent.
    ///
    /// # Errors
    /// When the value does not decode as `T`.
    pub fn try_get<T: SearchAttributeValue>(
        &self,
        index: usize,
    ) -> Result<Option<T>, SearchAttributeError> {
        match self.values.get(index) {
            Some(p) => T::from_search_attribute_payload(p).map(Some),
            None => Ok(None),
        }
    }

    /// How many activities are in the group.
    pub fn count(&self) -> usize {
        self.count
    }
}

// ------------------------------------------------------------------------------------------
// Client methods
// ------------------------------------------------------------------------------------------

impl Client {
    /// Starts a standalone activity: it is enqueued on the task queue for a worker that
    /// registers its type. Honours the timeouts, retry policy, start delay, priority key and the
    /// id reuse and conflict policies. Returns a handle on the new (or, with `UseExisting`, the
    /// running) activity run.
    ///
    /// # Errors
    /// [`StartActivityError::AlreadyStarted`] under the policies; `InvalidArgument` for a bad
    /// id or unsupported option.
    pub async fn start_activity<A>(
        &self,
        activity: A,
        input: A::Input,
        options: ActivityStartOptions,
    ) -> Result<ActivityHandle<Self, A>, StartActivityError>
    where
        A: ActivityDefinition,
    {
        protocol::validate_activity_id(&options.id).map_err(|e| invalid(e.to_string()))?;
        if options.task_queue.is_empty() {
            return Err(invalid("the task queue must not be empty"));
        }
        if options.priority.fairness_key.is_some() || options.priority.fairness_weight.is_some() {
            return Err(invalid(
                "priority fairness keys/weights are not supported by DBOSify (priority_key is)",
            ));
        }
        let dc = self.data_converter();
        let payloads = dc.to_payloads(&act_ctx(), &input).await?;
        drop(input);
        let name = activity.name().to_string();
        let mut attrs = RunAttributes::new(&options.id, &name, &options.task_queue);
        attrs.identity = self.identity();
        if let Some(sa) = &options.search_attributes {
            attrs.set_search_attributes(&sa.to_proto().indexed_fields);
        }
        if let Some(h) = &options.header {
            attrs.header = protocol::encode_payload_map(&h.fields);
        }
        attrs.priority_key = options.priority.priority_key;
        attrs.static_summary = options.summary.clone();
        attrs.static_details = options.static_details.clone();
        let retry_policy = match &options.retry_policy {
            Some(rp) => {
                let proto: ProtoRetryPolicy = rp.clone().into();
                Some(
                    serde_json::to_value(&proto)
                        .map_err(|e| invalid(format!("cannot record the retry policy: {e}")))?,
                )
            }
            None => None,
        };
        attrs.set_activity(&ActivityAttributes {
            schedule_to_close_ms: options.close_timeouts.schedule_to_close().map(ms),
            schedule_to_start_ms: options.schedule_to_start_timeout.map(ms),
            start_to_close_ms: options.close_timeouts.start_to_close().map(ms),
            heartbeat_timeout_ms: options.heartbeat_timeout.map(ms),
            retry_policy,
        });

        let db = self.system_database().await?;
        let base = protocol::activity_run_base(&options.id);
        let already = |row: &WorkflowStatus, why: &str| {
            let run = ids_of(row).1;
            StartActivityError::AlreadyStarted {
                run_id: run.clone(),
                source: tonic::Status::already_exists(format!(
                    "activity `{}` already started: {why} (run `{run}`)",
                    options.id
                )),
            }
        };
        let index = match protocol::latest_run(&db, &base).await? {
            None => 0,
            Some(last) => match row_outcome(&last)? {
                None => match options.id_conflict_policy {
                    ActivityIdConflictPolicy::UseExisting => {
                        let run = ids_of(&last).1;
                        return Ok(ActivityHandle::new(self.clone(), options.id, Some(run)));
                    }
                    ActivityIdConflictPolicy::Fail => {
                        return Err(already(&last, "an activity with this id is running"));
                    }
                },
                Some((status, _)) => {
                    let allowed = match options.id_reuse_policy {
                        ActivityIdReusePolicy::AllowDuplicate => true,
                        ActivityIdReusePolicy::AllowDuplicateFailedOnly => {
                            status != ProtoActivityStatus::Completed
                        }
                        ActivityIdReusePolicy::RejectDuplicate => false,
                    };
                    if !allowed {
                        return Err(already(&last, "the id reuse policy refuses a new run"));
                    }
                    protocol::parse_run_id(&last.workflow_id).1 + 1
                }
            },
        };
        let row_id = protocol::run_id(&base, index);
        let mut req = protocol::new_run_request(&row_id, &attrs, &payloads);
        req.queue_name = protocol::activity_queue(&options.task_queue);
        req.delay = options.start_delay.filter(|d| !d.is_zero());
        match db.enqueue(req).await? {
            dbos_core::Enqueued::Created(row) => {
                debug!(run = %row.workflow_id, activity_type = %name, "standalone activity enqueued");
                Ok(ActivityHandle::new(
                    self.clone(),
                    options.id,
                    Some(ids_of(&row).1),
                ))
            }
            dbos_core::Enqueued::Existing(row) => match options.id_conflict_policy {
                ActivityIdConflictPolicy::UseExisting if row_outcome(&row)?.is_none() => Ok(
                    ActivityHandle::new(self.clone(), options.id, Some(ids_of(&row).1)),
                ),
                _ => Err(already(&row, "started concurrently")),
            },
        }
    }

    /// A handle on standalone activity `id` (its run `run_id`, or the latest run at each call).
    pub fn get_activity_handle<A>(
        &self,
        _activity: A,
        id: impl Into<String>,
        run_id: Option<String>,
    ) -> ActivityHandle<Self, A>
    where
        A: ActivityDefinition,
    {
        ActivityHandle::new(self.clone(), id.into(), run_id)
    }

    /// An untyped handle on standalone activity `id`.
    pub fn get_untyped_activity_handle(
        &self,
        id: impl Into<String>,
        run_id: Option<String>,
    ) -> ActivityHandle<Self, UntypedActivity> {
        ActivityHandle::new(self.clone(), id.into(), run_id)
    }

    /// Lists the standalone activities matching a visibility query (`ActivityId`,
    /// `ActivityType`, `TaskQueue`, `ExecutionStatus`, times, custom search attributes; see
    /// [`crate::visibility`]), newest first. Activities scheduled by workflows are not included.
    pub fn list_activities(
        &self,
        query: impl Into<String>,
        _options: ActivityListOptions,
    ) -> ListActivitiesStream {
        let filter = visibility::parse(&query.into(), Target::Activities, false)
            .map(|p| p.filter)
            .map_err(invalid_query);
        let inner = page_rows(self.clone(), filter, None, |row, _client| async move {
            Ok(ActivityExecutionInfo::from(list_info(
                &row,
                row_status(&row),
            )?))
        });
        ListActivitiesStream { inner }
    }

    /// Counts the standalone activities matching a visibility query; a trailing
    /// `GROUP BY ExecutionStatus` also counts per status.
    ///
    /// # Errors
    /// `InvalidArgument` for a query outside the supported subset; database failures.
    pub async fn count_activities(
        &self,
        query: impl Into<String>,
        _options: ActivityCountOptions,
    ) -> Result<ActivityExecutionCount, ClientError> {
        let parsed =
            visibility::parse(&query.into(), Target::Activities, true).map_err(invalid_query)?;
        let (count, groups) = crate::listing::count(self, parsed).await?;
        Ok(ActivityExecutionCount {
            count,
            groups: groups
                .into_iter()
                .map(|(values, count)| ActivityExecutionCountAggregationGroup { values, count })
                .collect(),
        })
    }
}

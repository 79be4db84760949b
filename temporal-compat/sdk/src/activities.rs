//! Activities: the context an activity runs with, and the registry the `#[activities]` macro
//! registers into.
//!
//! The macro expands against the names in this module
//! (`::temporalio_sdk::activities::{ActivityContext, ActivityError, ExecutableActivity,
//! ActivityImplementer, ActivityDefinitions}`), so they mirror Temporal's SDK exactly.

#[doc(inline)]
pub use temporalio_macros::activities;

use std::collections::HashMap;
use std::fmt::Debug;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::BoxFuture;
use temporal_compat_client::{Client, WorkflowExecutionInfo, WorkflowHandle};
pub use temporalio_common_wasm::ActivityError;
use temporalio_common_wasm::data_converters::{
    ActivitySerializationContext, DataConverter, DecodablePayloads, GenericPayloadConverter,
    PayloadConversionError, PayloadConverter, RawValue, SerializationContext,
    SerializationContextData, TemporalDeserializable, TemporalSerializable,
};
use temporalio_common_wasm::error::ApplicationFailure;
use temporalio_common_wasm::protos::temporal::api::common::v1::Payload;
use temporalio_common_wasm::{ActivityDefinition, HasWorkflowDefinition, Priority, RetryPolicy};
use tokio_util::sync::CancellationToken;

use crate::interceptors::{
    ActivityExecutionValue, ActivityInboundInterceptor, ExecuteActivityInput,
    ExecuteActivityOutput, Next, run_chain,
};

/// Where an activity's heartbeats go (the engine's durable, throttled recorder).
pub(crate) trait HeartbeatSink: Send + Sync {
    /// Records the latest details (already serialized). Must not block.
    fn record(&self, details: Vec<Payload>);
}

/// What an activity can see and do while it runs: its info, heartbeats, cancellation.
#[derive(Clone)]
pub struct ActivityContext {
    client: Option<Client>,
    heartbeats: Option<Arc<dyn HeartbeatSink>>,
    data_converter: DataConverter,
    cancellation: CancellationToken,
    heartbeat_details: ActivityHeartbeatDetails,
    headers: HashMap<String, Payload>,
    info: ActivityInfo,
}

impl ActivityContext {
    pub(crate) fn new(
        info: ActivityInfo,
        headers: HashMap<String, Payload>,
        data_converter: DataConverter,
        cancellation: CancellationToken,
        heartbeat_details: Vec<Payload>,
        heartbeats: Option<Arc<dyn HeartbeatSink>>,
        client: Option<Client>,
    ) -> Self {
        let heartbeat_details = ActivityHeartbeatDetails::new(
            heartbeat_details,
            data_converter.payload_converter().clone(),
        );
        Self {
            client,
            heartbeats,
            data_converter,
            cancellation,
            heartbeat_details,
            headers,
            info,
        }
    }

    /// Resolves when this activity has been asked to cancel.
    pub async fn cancelled(&self) {
        self.cancellation.clone().cancelled_owned().await
    }

    /// Whether this activity has been asked to cancel.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// The details of the last heartbeat recorded by an earlier attempt (empty on the first).
    pub fn heartbeat_details(&self) -> &ActivityHeartbeatDetails {
        &self.heartbeat_details
    }

    /// Records a heartbeat with progress details. Heartbeats are throttled and stored durably;
    /// the last one is given to the next attempt. A no-op for local activities.
    ///
    /// # Errors
    /// When the details cannot be serialized.
    pub async fn record_heartbeat<T>(&self, details: T) -> Result<(), PayloadConversionError>
    where
        T: TemporalSerializable + 'static,
    {
        if self.info.is_local {
            return Ok(());
        }
        if let Some(sink) = &self.heartbeats {
            let payloads = self
                .data_converter
                .to_payloads(
                    &SerializationContextData::Activity(ActivitySerializationContext::new()),
                    &details,
                )
                .await?;
            sink.record(payloads);
        }
        Ok(())
    }

    /// Information about this activity attempt.
    pub fn info(&self) -> &ActivityInfo {
        &self.info
    }

    /// Headers attached to this activity.
    pub fn headers(&self) -> &HashMap<String, Payload> {
        &self.headers
    }

    /// A client on the same database and namespace as this activity's worker.
    ///
    /// # Panics
    /// When the worker was not created from a client (only possible through the hidden
    /// `Worker::new_with_target` constructor).
    pub fn client(&self) -> Client {
        self.client.clone().expect(
            "activity context client is unavailable because the worker was not created from a client",
        )
    }

    /// A handle on the workflow run that scheduled this activity.
    pub fn workflow_handle<W: HasWorkflowDefinition>(&self) -> Option<WorkflowHandle<Client, W>> {
        let workflow_id = self.info.workflow_id.clone()?;
        let client = self.client.clone()?;
        let run_id = self.info.workflow_run_id.clone();
        let info = WorkflowExecutionInfo::builder()
            .namespace(client.options().namespace.clone())
            .workflow_id(workflow_id)
            .maybe_run_id(run_id.clone())
            .maybe_first_execution_run_id(run_id)
            .build();
        Some(WorkflowHandle::new(client, info))
    }

    pub(crate) fn headers_mut(&mut self) -> &mut HashMap<String, Payload> {
        &mut self.headers
    }
}

/// Heartbeat details recorded by the previous attempt.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ActivityHeartbeatDetails {
    payloads: DecodablePayloads,
}

impl ActivityHeartbeatDetails {
    fn new(payloads: Vec<Payload>, payload_converter: PayloadConverter) -> Self {
        Self {
            payloads: DecodablePayloads::new(
                payloads,
                payload_converter,
                SerializationContextData::Activity(ActivitySerializationContext::new()),
            ),
        }
    }

    /// The details as `T`, or `None` when the previous attempt recorded none.
    ///
    /// # Errors
    /// When the details do not deserialize as `T`.
    pub fn deserialize<T: TemporalDeserializable + 'static>(
        &self,
    ) -> Result<Option<T>, PayloadConversionError> {
        if self.payloads.raw().is_empty() {
            return Ok(None);
        }
        self.payloads.deserialize().map(Some)
    }

    /// The raw payloads.
    pub fn raw(&self) -> &[Payload] {
        self.payloads.raw()
    }

    /// The raw payloads, by value.
    pub fn into_raw(self) -> RawValue {
        self.payloads.into_raw()
    }
}

/// Information about one activity attempt.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ActivityInfo {
    /// An opaque token naming this activity attempt.
    pub task_token: Vec<u8>,
    /// The type of the workflow that scheduled it.
    pub workflow_type: Option<String>,
    /// The namespace.
    pub namespace: String,
    /// The workflow id of the workflow that scheduled it.
    pub workflow_id: Option<String>,
    /// The run id of the workflow that scheduled it.
    pub workflow_run_id: Option<String>,
    /// The activity id.
    pub activity_id: String,
    /// The activity type.
    pub activity_type: String,
    /// The task queue.
    pub task_queue: String,
    /// The heartbeat timeout, if any.
    pub heartbeat_timeout: Option<Duration>,
    /// When the workflow scheduled the activity.
    pub scheduled_time: Option<SystemTime>,
    /// When this attempt started.
    pub started_time: Option<SystemTime>,
    /// When this attempt times out.
    pub deadline: Option<SystemTime>,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// When this attempt was scheduled.
    pub current_attempt_scheduled_time: Option<SystemTime>,
    /// The retry policy in force.
    pub retry_policy: Option<RetryPolicy>,
    /// Whether this is a local activity.
    pub is_local: bool,
    /// The priority.
    pub priority: Priority,
    /// Run id of a standalone activity (none for workflow activities).
    pub activity_run_id: Option<String>,
}

/// Implemented by `#[activities]` for a type holding activity methods.
pub trait ActivityImplementer {
    /// Registers every activity of this type.
    fn register_all(self: Arc<Self>, defs: &mut ActivityDefinitions);
}

/// Implemented by `#[activities]` for each activity marker: typed direct execution.
pub trait ExecutableActivity: ActivityDefinition + Sized {
    /// The type holding the activity method.
    type Implementer: ActivityImplementer + Send + Sync + 'static;
    /// Whether the method takes `self: Arc<Self>`.
    const REQUIRES_INSTANCE: bool;
    /// The marker value.
    fn definition() -> Self;
    /// Runs the activity with typed input.
    fn execute(
        receiver: Option<Arc<Self::Implementer>>,
        ctx: ActivityContext,
        input: Self::Input,
    ) -> BoxFuture<'static, Result<Self::Output, ActivityError>>;
}

/// Runs one registered activity: payloads in (as stored), serialized output out.
pub(crate) type ActivityInvocation = Arc<
    dyn Fn(
            Vec<Payload>,
            ActivityContext,
            Arc<[Arc<dyn ActivityInboundInterceptor>]>,
        ) -> BoxFuture<'static, Result<Payload, ActivityError>>
        + Send
        + Sync,
>;

/// The activities a worker can run, by activity type.
#[derive(Default, Clone)]
pub struct ActivityDefinitions {
    activities: HashMap<String, ActivityInvocation>,
}

impl Debug for ActivityDefinitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityDefinitions")
            .field("activities", &self.names())
            .finish()
    }
}

/// A readable message from a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

fn activity_context_data() -> SerializationContextData {
    SerializationContextData::Activity(ActivitySerializationContext::new())
}

impl ActivityDefinitions {
    /// Registers every activity of `instance`'s type.
    pub fn register_activities<AI: ActivityImplementer>(&mut self, instance: AI) -> &mut Self {
        AI::register_all(Arc::new(instance), self);
        self
    }

    /// Registers one activity.
    pub fn register_activity<AD>(&mut self, instance: Arc<AD::Implementer>) -> &mut Self
    where
        AD: ActivityDefinition + ExecutableActivity,
        AD::Input: Send + Sync,
        AD::Output: Send + Sync,
    {
        let name = AD::definition().name().to_string();
        let invocation: ActivityInvocation = Arc::new(move |payloads, ctx, interceptors| {
            let instance = instance.clone();
            async move {
                let dc = ctx.data_converter.clone();
                let cdata = activity_context_data();
                let payloads = dc
                    .codec()
                    .decode(&cdata, payloads)
                    .await
                    .map_err(ActivityError::from)?;
                let pc = dc.payload_converter();
                let sctx = SerializationContext::new(&cdata, pc);
                let input: AD::Input = pc.from_payloads(&sctx, payloads)?;
                let input = ExecuteActivityInput::new(ctx, Box::new(input));
                let last = innermost::<AD>(instance);
                let output = match AssertUnwindSafe(run_chain(&interceptors, input, last))
                    .catch_unwind()
                    .await
                {
                    Ok(r) => r?,
                    Err(panic) => {
                        return Err(ApplicationFailure::new(anyhow::anyhow!(
                            "Activity function panicked: {}",
                            panic_message(panic.as_ref())
                        ))
                        .into());
                    }
                };
                let payload = output.serialize_output(&sctx)?;
                let mut encoded = dc
                    .codec()
                    .encode(&cdata, vec![payload])
                    .await
                    .map_err(ActivityError::from)?;
                Ok(encoded.pop().unwrap_or_default())
            }
            .boxed()
        });
        self.activities.insert(name, invocation);
        self
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.activities.is_empty()
    }

    pub(crate) fn get(&self, activity_type: &str) -> Option<ActivityInvocation> {
        self.activities.get(activity_type).cloned()
    }

    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.activities.keys().cloned().collect();
        names.sort_unstable();
        names
    }
}

/// The end of the interceptor chain: the activity itself.
fn innermost<'a, AD>(
    instance: Arc<AD::Implementer>,
) -> Next<'a, ExecuteActivityInput, ExecuteActivityOutput<'a>>
where
    AD: ActivityDefinition + ExecutableActivity,
    AD::Input: Send + Sync,
    AD::Output: Send + Sync,
{
    Next::new(
        move |input: ExecuteActivityInput| -> ExecuteActivityOutput<'a> {
            let (ctx, args) = input.into_parts();
            async move {
            let args = args.downcast::<AD::Input>().map_err(|_| {
                ActivityError::from(ApplicationFailure::new(anyhow::anyhow!(
                    "an activity interceptor replaced the arguments of {} with a value of the wrong type",
                    AD::definition().name()
                )))
            })?;
            match AssertUnwindSafe(AD::execute(Some(instance), ctx, *args))
                .catch_unwind()
                .await
            {
                Ok(r) => r.map(|out| Box::new(out) as Box<dyn ActivityExecutionValue>),
                Err(panic) => Err(ApplicationFailure::new(anyhow::anyhow!(
                    "Activity function panicked: {}",
                    panic_message(panic.as_ref())
                ))
                .into()),
            }
        }
        .boxed()
        },
    )
}

//! Workflow handles: results, signals, queries, updates, cancel, terminate, describe, on top of
//! the conventions of [`crate::protocol`].

use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use dbos_core::{SystemDatabase, WakeKey, WorkflowStatus};
use futures::future::BoxFuture;
use temporalio_common_wasm::data_converters::{
    DataConverter, DecodablePayloads, PayloadCodec, PayloadConversionError, RawValue,
    SerializationContextData, TemporalDeserializable, WorkflowSerializationContext,
};
use temporalio_common_wasm::search_attributes::SearchAttributes;
use temporalio_common_wasm::{
    HasWorkflowDefinition, Memo, QueryDefinition, SignalDefinition, UpdateDefinition,
};
use temporalio_protos::temporal::api::common::v1::{
    Memo as ProtoMemo, Payload, Payloads, SearchAttributes as ProtoSearchAttributes,
    WorkflowExecution as ProtoWorkflowExecution, WorkflowType,
};
use temporalio_protos::temporal::api::enums::v1::WorkflowExecutionStatus as ProtoStatus;
use temporalio_protos::temporal::api::failure::v1::{Failure, failure::FailureInfo};
use temporalio_protos::temporal::api::sdk::v1::UserMetadata;
use temporalio_protos::temporal::api::taskqueue::v1::TaskQueue;
use temporalio_protos::temporal::api::workflow::v1::{
    WorkflowExecutionConfig, WorkflowExecutionInfo as ProtoExecutionInfo,
};
use temporalio_protos::temporal::api::workflowservice::v1::DescribeWorkflowExecutionResponse;
use tracing::debug;

pub use temporalio_common_wasm::UntypedWorkflow;

use crate::errors::{
    WorkflowGetResultError, WorkflowInteractionError, WorkflowQueryError, WorkflowUpdateError,
};
use crate::options::{
    QueryRejectCondition, RpcOptions, WorkflowCancelOptions, WorkflowDescribeOptions,
    WorkflowExecuteUpdateOptions, WorkflowGetResultOptions, WorkflowQueryOptions,
    WorkflowSignalOptions, WorkflowStartUpdateOptions, WorkflowTerminateOptions,
};
use crate::protocol::{
    self, CancelRequest, InboxMessage, ProtocolError, QueryAnswer, QueryRequest, RunAttributes,
    SignalRequest, TerminalOutcome, UpdateAdmission, UpdateOutcome, UpdateRequest,
};
use crate::{Client, NamespacedClient, dur, to_system_time, ts};

/// How long a query waits for a worker's answer when `rpc_options.timeout` is unset.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a query on an open run that is still unanswered checks whether the run was
/// recovered meanwhile (its worker died holding the request): then the request is sent again.
const QUERY_RECHECK: Duration = Duration::from_secs(1);

fn wf_ctx() -> SerializationContextData {
    SerializationContextData::Workflow(WorkflowSerializationContext::new())
}

/// The status of a workflow execution.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
#[non_exhaustive]
pub enum WorkflowExecutionStatus {
    /// Not specified.
    Unspecified,
    /// Running (enqueued, delayed, held by a worker, or stuck after too many recoveries).
    Running,
    /// Completed.
    Completed,
    /// Failed.
    Failed,
    /// Canceled.
    Canceled,
    /// Terminated.
    Terminated,
    /// Continued as new.
    ContinuedAsNew,
    /// Timed out.
    TimedOut,
    /// Paused.
    Paused,
    /// A value this version does not know.
    Unknown,
}

impl WorkflowExecutionStatus {
    /// From the proto enum's integer.
    pub fn from_raw(value: i32) -> Self {
        match ProtoStatus::try_from(value) {
            Ok(ProtoStatus::Unspecified) => Self::Unspecified,
            Ok(ProtoStatus::Running) => Self::Running,
            Ok(ProtoStatus::Completed) => Self::Completed,
            Ok(ProtoStatus::Failed) => Self::Failed,
            Ok(ProtoStatus::Canceled) => Self::Canceled,
            Ok(ProtoStatus::Terminated) => Self::Terminated,
            Ok(ProtoStatus::ContinuedAsNew) => Self::ContinuedAsNew,
            Ok(ProtoStatus::TimedOut) => Self::TimedOut,
            Ok(ProtoStatus::Paused) => Self::Paused,
            Err(_) => Self::Unknown,
        }
    }
}

impl From<ProtoStatus> for WorkflowExecutionStatus {
    fn from(value: ProtoStatus) -> Self {
        Self::from_raw(value as i32)
    }
}

/// Details of a cancelled or terminated workflow, decoded with the client's codec.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkflowResultDetails {
    payloads: DecodablePayloads,
}

impl WorkflowResultDetails {
    async fn new(
        payloads: Vec<Payload>,
        dc: &DataConverter,
    ) -> Result<Self, PayloadConversionError> {
        let payloads = dc.codec().decode(&wf_ctx(), payloads).await?;
        Ok(Self {
            payloads: DecodablePayloads::new(payloads, dc.payload_converter().clone(), wf_ctx()),
        })
    }

    /// Deserializes the details.
    pub fn deserialize<T: TemporalDeserializable + 'static>(
        &self,
    ) -> Result<T, PayloadConversionError> {
        self.payloads.deserialize()
    }

    /// The decoded payloads.
    pub fn raw(&self) -> &[Payload] {
        self.payloads.raw()
    }

    /// Consumes the details into their payloads.
    pub fn into_raw(self) -> RawValue {
        self.payloads.into_raw()
    }
}

/// The terminal state of a workflow execution.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum WorkflowExecutionResult<T> {
    /// Completed with a value.
    Succeeded(T),
    /// Failed.
    Failed(temporalio_common_wasm::error::IncomingError),
    /// Cancelled.
    Cancelled {
        /// Cancellation details.
        details: WorkflowResultDetails,
    },
    /// Terminated.
    Terminated {
        /// Termination details.
        details: WorkflowResultDetails,
    },
    /// Timed out.
    TimedOut,
    /// Continued as new.
    ContinuedAsNew,
}

/// Identifies a workflow execution chain or one of its runs.
#[derive(Debug, Clone, bon::Builder)]
#[builder(on(String, into), state_mod(vis = "pub"))]
#[non_exhaustive]
pub struct WorkflowExecutionInfo {
    /// Namespace.
    pub namespace: String,
    /// Workflow id.
    pub workflow_id: String,
    /// A specific run; `None` targets the latest run of the id at each operation.
    pub run_id: Option<String>,
    /// When set, cancel/terminate only act if the targeted run belongs to the chain that began
    /// with this run.
    pub first_execution_run_id: Option<String>,
}

impl WorkflowExecutionInfo {
    /// Binds the info to a client as an untyped handle.
    pub fn bind_untyped(self, client: Client) -> UntypedWorkflowHandle<Client> {
        UntypedWorkflowHandle::new(client, self)
    }
}

/// A handle to a workflow whose types are unknown (raw payloads in and out).
pub type UntypedWorkflowHandle<CT> = WorkflowHandle<CT, UntypedWorkflow>;

/// A handle on a workflow execution chain, or one run of it.
pub struct WorkflowHandle<ClientT, W> {
    client: ClientT,
    info: WorkflowExecutionInfo,
    /// Set on the handle returned by the start that created the run: the wake-up mark taken
    /// before its enqueue, which spares `get_result` its first read.
    start_mark: Option<dbos_core::Mark>,
    _wf_type: PhantomData<fn() -> W>,
}

impl<CT: Clone, W> Clone for WorkflowHandle<CT, W> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            info: self.info.clone(),
            start_mark: self.start_mark,
            _wf_type: PhantomData,
        }
    }
}

impl<CT, W> std::fmt::Debug for WorkflowHandle<CT, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowHandle")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<CT, W> WorkflowHandle<CT, W> {
    /// The run id this handle targets, if it targets one run.
    pub fn run_id(&self) -> Option<&str> {
        self.info.run_id.as_deref()
    }

    /// Creates a handle from a client and identifying information.
    pub fn new(client: CT, info: WorkflowExecutionInfo) -> Self {
        Self {
            client,
            info,
            start_mark: None,
            _wf_type: PhantomData,
        }
    }

    /// Records the wake-up mark taken before the start that created this handle's run.
    pub(crate) fn with_start_mark(mut self, mark: Option<dbos_core::Mark>) -> Self {
        self.start_mark = mark;
        self
    }

    /// The identifying information.
    pub fn info(&self) -> &WorkflowExecutionInfo {
        &self.info
    }

    /// The client.
    pub fn client(&self) -> &CT {
        &self.client
    }
}

fn not_found(msg: impl Into<String>) -> tonic::Status {
    tonic::Status::not_found(msg.into())
}

fn closed_status(run: &str) -> tonic::Status {
    not_found(format!(
        "workflow execution already completed (run `{run}`)"
    ))
}

fn is_open(status: &WorkflowStatus) -> Result<bool, ProtocolError> {
    Ok(TerminalOutcome::from_status(status)?.is_none())
}

/// Codec-decodes every payload inside a failure (details, heartbeat details, encoded attributes,
/// causes).
fn decode_failure<'a>(
    codec: &'a (dyn PayloadCodec + Send + Sync),
    f: &'a mut Failure,
) -> BoxFuture<'a, Result<(), PayloadConversionError>> {
    Box::pin(async move {
        async fn payloads(
            codec: &(dyn PayloadCodec + Send + Sync),
            p: &mut Option<Payloads>,
        ) -> Result<(), PayloadConversionError> {
            if let Some(p) = p {
                p.payloads = codec
                    .decode(&wf_ctx(), std::mem::take(&mut p.payloads))
                    .await?;
            }
            Ok(())
        }
        if let Some(enc) = f.encoded_attributes.take() {
            f.encoded_attributes = codec.decode(&wf_ctx(), vec![enc]).await?.into_iter().next();
        }
        match &mut f.failure_info {
            Some(FailureInfo::ApplicationFailureInfo(i)) => payloads(codec, &mut i.details).await?,
            Some(FailureInfo::CanceledFailureInfo(i)) => payloads(codec, &mut i.details).await?,
            Some(FailureInfo::TimeoutFailureInfo(i)) => {
                payloads(codec, &mut i.last_heartbeat_details).await?
            }
            Some(FailureInfo::ResetWorkflowFailureInfo(i)) => {
                payloads(codec, &mut i.last_heartbeat_details).await?
            }
            _ => {}
        }
        if let Some(cause) = f.cause.as_deref_mut() {
            decode_failure(codec, cause).await?;
        }
        Ok(())
    })
}

/// What a wait for a reply event ended with.
enum EventWait {
    Value(String),
    /// The run closed without the reply.
    Closed,
    TimedOut,
}

/// Waits for `key` on `run`, or for the run to close, or for the timeout.
async fn wait_event_or_close(
    db: &SystemDatabase,
    run: &str,
    key: &str,
    timeout: Option<Duration>,
) -> Result<EventWait, ProtocolError> {
    const CHUNK: Duration = Duration::from_secs(300);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let chunk = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(match db.get_event(run, key, None).await? {
                        Some(v) => EventWait::Value(v),
                        None => EventWait::TimedOut,
                    });
                }
                left.min(CHUNK)
            }
            None => CHUNK,
        };
        tokio::select! {
            ev = db.get_event(run, key, Some(chunk)) => {
                if let Some(v) = ev? {
                    return Ok(EventWait::Value(v));
                }
            }
            out = db.await_outcome(run, Some(chunk)) => {
                if out?.is_some() {
                    // The reply may have been published just before the close.
                    return Ok(match db.get_event(run, key, None).await? {
                        Some(v) => EventWait::Value(v),
                        None => EventWait::Closed,
                    });
                }
            }
        }
    }
}

impl<W> WorkflowHandle<Client, W>
where
    W: HasWorkflowDefinition,
{
    /// The run this handle targets now: its own run id, or the latest run of the workflow id.
    async fn target(&self, db: &SystemDatabase) -> Result<WorkflowStatus, tonic::Status> {
        let found = match &self.info.run_id {
            Some(run) => db
                .status(run)
                .await
                .map_err(|e| crate::errors::db_status(&e))?,
            None => protocol::latest_run(db, &self.info.workflow_id)
                .await
                .map_err(|e| match e {
                    ProtocolError::Database(db) => crate::errors::db_status(&db),
                    other => tonic::Status::internal(other.to_string()),
                })?,
        };
        let status = found.ok_or_else(|| self.not_found())?;
        if let Some(first) = &self.info.first_execution_run_id
            && self.info.run_id.is_none()
        {
            let attrs = RunAttributes::of_run(&status)
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            let chain_first = attrs
                .first_execution_run_id
                .unwrap_or_else(|| status.workflow_id.clone());
            if &chain_first != first {
                return Err(not_found(format!(
                    "workflow `{}` has no open run in the chain started by run `{first}`",
                    self.info.workflow_id
                )));
            }
        }
        Ok(status)
    }

    /// The error for a target that does not exist.
    fn not_found(&self) -> tonic::Status {
        not_found(format!(
            "workflow `{}`{} not found",
            self.info.workflow_id,
            self.info
                .run_id
                .as_deref()
                .map(|r| format!(" run `{r}`"))
                .unwrap_or_default()
        ))
    }

    async fn db(&self) -> Result<SystemDatabase, ProtocolError> {
        self.client.system_database().await
    }

    /// Waits for the workflow's result, following continue-as-new and retry runs unless
    /// `follow_runs` is false.
    pub async fn get_result(
        &self,
        opts: WorkflowGetResultOptions,
    ) -> Result<W::Output, WorkflowGetResultError> {
        match self.get_result_raw(opts).await? {
            WorkflowExecutionResult::Succeeded(v) => Ok(v),
            WorkflowExecutionResult::Failed(f) => Err(WorkflowGetResultError::Failed(Box::new(f))),
            WorkflowExecutionResult::Cancelled { details } => {
                Err(WorkflowGetResultError::Cancelled { details })
            }
            WorkflowExecutionResult::Terminated { details } => {
                Err(WorkflowGetResultError::Terminated { details })
            }
            WorkflowExecutionResult::TimedOut => Err(WorkflowGetResultError::TimedOut),
            WorkflowExecutionResult::ContinuedAsNew => Err(WorkflowGetResultError::ContinuedAsNew),
        }
    }

    async fn get_result_raw(
        &self,
        opts: WorkflowGetResultOptions,
    ) -> Result<WorkflowExecutionResult<W::Output>, WorkflowGetResultError> {
        opts.rpc_options
            .refuse_metadata()
            .map_err(WorkflowGetResultError::Rpc)?;
        let db = self.db().await?;
        let dc = self.client.data_converter();
        // A handle that knows its run awaits it straight away (the await's first probe also
        // tells a missing run); otherwise the latest run is resolved first.
        let (mut run, mut own_run) = match &self.info.run_id {
            Some(run) => (run.clone(), true),
            None => (
                self.target(&db)
                    .await
                    .map_err(status_to_get_result)?
                    .workflow_id,
                false,
            ),
        };
        let deadline = opts
            .rpc_options
            .timeout
            .map(|t| tokio::time::Instant::now() + t);
        // The run this handle's start created was not closed before that start's mark.
        let mut since = self.start_mark.filter(|_| own_run);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            let awaited = match db.await_outcome_since(&run, left, since.take()).await {
                Err(dbos_core::Error::UnknownRun(_)) if std::mem::take(&mut own_run) => {
                    return Err(status_to_get_result(self.not_found()));
                }
                other => other?,
            };
            own_run = false;
            let Some(status) = awaited else {
                return Err(WorkflowGetResultError::Rpc(
                    tonic::Status::deadline_exceeded(format!(
                        "workflow run `{run}` did not close within the timeout"
                    )),
                ));
            };
            if status.state == dbos_core::RunState::MaxRecoveryAttemptsExceeded {
                return Err(WorkflowGetResultError::Other(
                    format!(
                        "workflow run `{run}` is stuck: it exceeded its maximum recovery attempts \
                         (resume it with DBOS management tools)"
                    )
                    .into(),
                ));
            }
            let Some(outcome) = TerminalOutcome::from_status(&status)? else {
                continue;
            };
            debug!(run = %run, status = ?outcome.status(), "run closed");
            let follow = |next: Option<&str>| next.filter(|_| opts.follow_runs).map(str::to_owned);
            return Ok(match outcome {
                TerminalOutcome::Completed { result } => {
                    // Rows written by other tools may carry other attributes: no successor then.
                    let cron_next = RunAttributes::of_run(&status)
                        .ok()
                        .and_then(|a| a.next_run_id);
                    if let Some(next) = follow(cron_next.as_deref()) {
                        run = next;
                        continue;
                    }
                    let payload = result.into_iter().next().unwrap_or_default();
                    WorkflowExecutionResult::Succeeded(dc.from_payload(&wf_ctx(), payload).await?)
                }
                TerminalOutcome::Failed {
                    mut failure,
                    next_run_id,
                } => {
                    if let Some(next) = follow(next_run_id.as_deref()) {
                        run = next;
                        continue;
                    }
                    decode_failure(dc.codec(), &mut failure).await?;
                    let err = dc.failure_converter().to_error(
                        failure,
                        dc.payload_converter(),
                        &wf_ctx(),
                    )?;
                    WorkflowExecutionResult::Failed(err)
                }
                TerminalOutcome::Canceled { details } => WorkflowExecutionResult::Cancelled {
                    details: WorkflowResultDetails::new(details, dc).await?,
                },
                TerminalOutcome::TimedOut { next_run_id } => {
                    if let Some(next) = follow(next_run_id.as_deref()) {
                        run = next;
                        continue;
                    }
                    WorkflowExecutionResult::TimedOut
                }
                TerminalOutcome::Terminated { details, .. } => {
                    WorkflowExecutionResult::Terminated {
                        details: WorkflowResultDetails::new(details, dc).await?,
                    }
                }
                TerminalOutcome::ContinuedAsNew { next_run_id } => {
                    if opts.follow_runs {
                        run = next_run_id;
                        continue;
                    }
                    WorkflowExecutionResult::ContinuedAsNew
                }
            });
        }
    }

    /// Sends a signal: appended to the run's inbox, in order with its other signals, updates and
    /// cancel requests. A repeated `request_id` is delivered once.
    pub async fn signal<S>(
        &self,
        signal: S,
        input: S::Input,
        opts: WorkflowSignalOptions,
    ) -> Result<(), WorkflowInteractionError>
    where
        S: SignalDefinition<Workflow = W::Run>,
        S::Input: Send,
    {
        opts.rpc_options
            .refuse_metadata()
            .map_err(WorkflowInteractionError::Rpc)?;
        let dc = self.client.data_converter();
        let payloads = dc.to_payloads(&wf_ctx(), &input).await?;
        drop(input);
        let db = self.db().await?;
        // A handle on one run sends straight away (the send checks that the run is open); a
        // handle on the chain resolves its latest run first.
        let run = match &self.info.run_id {
            Some(run) => run.clone(),
            None => self.open_target(&db).await?,
        };
        let request_id = opts
            .request_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let msg = InboxMessage::Signal(SignalRequest {
            name: signal.name().to_string(),
            payloads,
            headers: opts.header.map(|h| h.fields).unwrap_or_default(),
            identity: self.client.identity(),
            request_id: Some(request_id.clone()),
        });
        let key = protocol::signal_idempotency_key(&run, &request_id);
        match db
            .send_if_open(&run, protocol::INBOX_TOPIC, &msg.encode(), Some(&key))
            .await
        {
            Ok(dbos_core::SendIfOpen::Sent(_)) => {}
            Ok(dbos_core::SendIfOpen::Closed(_)) => {
                return Err(WorkflowInteractionError::NotFound(closed_status(&run)));
            }
            Err(dbos_core::Error::UnknownRun(_)) => {
                return Err(WorkflowInteractionError::NotFound(self.not_found()));
            }
            Err(e) => return Err(e.into()),
        }
        debug!(run = %run, signal = %signal.name(), "signal sent");
        Ok(())
    }

    async fn open_target(&self, db: &SystemDatabase) -> Result<String, WorkflowInteractionError> {
        let status = self.target(db).await.map_err(status_to_interaction)?;
        if !is_open(&status)? {
            return Err(WorkflowInteractionError::NotFound(closed_status(
                &status.workflow_id,
            )));
        }
        Ok(status.workflow_id)
    }

    /// Queries the workflow. An open run is answered by the worker holding it; a closed run is
    /// rebuilt by replay on any worker of its task queue. Waits up to `rpc_options.timeout`
    /// (default 60 s), then fails with `DeadlineExceeded` naming the task queue.
    pub async fn query<Q>(
        &self,
        query: Q,
        input: Q::Input,
        opts: WorkflowQueryOptions,
    ) -> Result<Q::Output, WorkflowQueryError>
    where
        Q: QueryDefinition<Workflow = W::Run>,
        Q::Input: Send,
    {
        opts.rpc_options
            .refuse_metadata()
            .map_err(WorkflowQueryError::Rpc)?;
        let dc = self.client.data_converter();
        let payloads = dc.to_payloads(&wf_ctx(), &input).await?;
        drop(input);
        let db = self.db().await?;
        let status = self
            .target(&db)
            .await
            .map_err(WorkflowQueryError::NotFound)?;
        let exec_status = protocol::execution_status(&status)?;
        let open = exec_status == ProtoStatus::Running;
        let rejected = match opts.reject_condition {
            Some(QueryRejectCondition::NotOpen) => !open,
            Some(QueryRejectCondition::NotCompletedCleanly) => {
                !open && exec_status != ProtoStatus::Completed
            }
            _ => false,
        };
        if rejected {
            return Err(WorkflowQueryError::Rejected {
                status: Some(exec_status.into()),
            });
        }
        let run = status.workflow_id.clone();
        let task_queue = status.queue_name.clone().unwrap_or_default();
        let query_id = uuid::Uuid::new_v4().to_string();
        let request = QueryRequest {
            query_id: query_id.clone(),
            name: query.name().to_string(),
            payloads,
            headers: opts.header.map(|h| h.fields).unwrap_or_default(),
        };
        let request_text = request.encode();
        let mut sent = vec![
            db.send(&run, protocol::QUERY_TOPIC, &request_text, None)
                .await?,
        ];
        let wake_closed = || {
            db.notify(WakeKey::Queue(protocol::closed_run_query_wake(&task_queue)));
        };
        if !open {
            // A closed run is rebuilt by replay on any worker of its task queue.
            wake_closed();
        }
        let timeout = opts.rpc_options.timeout.unwrap_or(DEFAULT_QUERY_TIMEOUT);
        let deadline = tokio::time::Instant::now() + timeout;
        let key = protocol::query_answer_key(&query_id);
        let mut answer = None;
        if open {
            let mut recoveries = status.recovery_attempts;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                match wait_event_or_close(&db, &run, &key, Some(left.min(QUERY_RECHECK))).await? {
                    EventWait::Value(v) => {
                        answer = Some(v);
                        break;
                    }
                    EventWait::Closed => {
                        // Closed meanwhile: whoever claims the request answers it by replay.
                        debug!(run = %run, "run closed while queried; asking its task queue");
                        wake_closed();
                        break;
                    }
                    EventWait::TimedOut => {}
                }
                // A worker that claimed the request and then died took it with it: once the run
                // has been recovered, a request no longer waiting in its inbox is sent again
                // (same query id: any answer lands under the same key).
                let Some(current) = db.status(&run).await? else {
                    break;
                };
                if current.recovery_attempts > recoveries {
                    recoveries = current.recovery_attempts;
                    let waiting = db
                        .peek_messages(&run, Some(protocol::QUERY_TOPIC), 1000)
                        .await?
                        .iter()
                        .any(|m| sent.last() == Some(&m.message_id));
                    if !waiting {
                        debug!(run = %run, query_id = %query_id, "run recovered while queried; sending the query again");
                        sent.push(
                            db.send(&run, protocol::QUERY_TOPIC, &request_text, None)
                                .await?,
                        );
                    }
                }
            }
        }
        if answer.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            answer = db.get_event(&run, &key, Some(left)).await?;
        }
        if answer.is_none() {
            // Withdraw the request so no worker answers it later (best effort: a worker may
            // already hold it; a late answer is removed below if it lands by then).
            if let Err(e) = db.consume_messages(&run, &sent).await {
                debug!(run = %run, error = %e, "cannot withdraw a timed-out query");
            }
        }
        // Answers are transient: nothing about a query stays behind.
        if let Err(e) = db.delete_event(&run, &key).await {
            debug!(run = %run, error = %e, "cannot remove a query answer");
        }
        match answer {
            Some(v) => match QueryAnswer::from_text(&v)? {
                QueryAnswer::Answer(p) => Ok(dc.from_payloads(&wf_ctx(), p).await?),
                QueryAnswer::Failure(f) => Err(WorkflowQueryError::Rpc(
                    tonic::Status::invalid_argument(f.message),
                )),
            },
            None => Err(WorkflowQueryError::Rpc(tonic::Status::deadline_exceeded(
                format!(
                    "no worker answered query `{}` on run `{run}` within {timeout:?} \
                     (is a worker running on task queue `{task_queue}`?)",
                    query.name(),
                ),
            ))),
        }
    }

    /// Sends an update and waits for its result.
    pub async fn execute_update<U>(
        &self,
        update: U,
        input: U::Input,
        options: WorkflowExecuteUpdateOptions,
    ) -> Result<U::Output, WorkflowUpdateError>
    where
        U: UpdateDefinition<Workflow = W::Run>,
        U::Input: Send,
        U::Output: 'static,
    {
        options
            .rpc_options
            .refuse_metadata()
            .map_err(WorkflowUpdateError::Rpc)?;
        let rpc = options.rpc_options.clone();
        let dc = self.client.data_converter();
        let payloads = dc.to_payloads(&wf_ctx(), &input).await?;
        drop(input);
        // The result is all the caller wants: skip the wait for the accepted stage and wait for
        // the completion key alone (a rejection sets it too, with the rejection's failure).
        let handle: WorkflowUpdateHandle<Client, U::Output> = self
            .start_update_payloads(update.name(), payloads, options.into(), false)
            .await?;
        handle.get_result(rpc).await
    }

    /// Sends an update and waits until it is accepted (or rejected). The update id is
    /// idempotent per run: sending it again does not run the handler again.
    pub async fn start_update<U>(
        &self,
        update: U,
        input: U::Input,
        options: WorkflowStartUpdateOptions,
    ) -> Result<WorkflowUpdateHandle<Client, U::Output>, WorkflowUpdateError>
    where
        U: UpdateDefinition<Workflow = W::Run>,
        U::Input: Send,
    {
        options
            .rpc_options
            .refuse_metadata()
            .map_err(WorkflowUpdateError::Rpc)?;
        let dc = self.client.data_converter();
        let payloads = dc.to_payloads(&wf_ctx(), &input).await?;
        drop(input);
        self.start_update_payloads(update.name(), payloads, options, true)
            .await
    }

    /// [`Self::start_update`] with the input already converted (also used by
    /// update-with-start, whose request may already sit in the new run's inbox: the idempotent
    /// send is then a no-op and only the admission is awaited). `wait_for_acceptance` false
    /// returns right after the send, for callers that wait for the completion anyway.
    pub(crate) async fn start_update_payloads<T>(
        &self,
        update_name: &str,
        payloads: Vec<Payload>,
        options: WorkflowStartUpdateOptions,
        wait_for_acceptance: bool,
    ) -> Result<WorkflowUpdateHandle<Client, T>, WorkflowUpdateError> {
        let db = self.db().await?;
        let update_id = options
            .update_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let completed_key = protocol::update_completed_key(&update_id);
        let msg = |run: &str| {
            let m = InboxMessage::Update(UpdateRequest {
                update_id: update_id.clone(),
                name: update_name.to_string(),
                payloads: payloads.clone(),
                headers: options.header.clone().map(|h| h.fields).unwrap_or_default(),
                identity: self.client.identity(),
            });
            (
                m.encode(),
                protocol::update_idempotency_key(run, &update_id),
            )
        };
        // A handle that knows its run sends at once: the send checks that the run is open, and
        // a repeated update id is the same message (its outcome, if known, is then found by
        // the wait below). Only a closed run needs the known outcome read.
        let (status, known_outcome) = match &self.info.run_id {
            Some(run) => {
                let (body, key) = msg(run);
                match db
                    .send_if_open(run, protocol::INBOX_TOPIC, &body, Some(&key))
                    .await
                {
                    Ok(dbos_core::SendIfOpen::Sent(_)) => {
                        return self
                            .after_update_sent(
                                &db,
                                run,
                                update_id,
                                wait_for_acceptance,
                                options.rpc_options.timeout,
                            )
                            .await;
                    }
                    Ok(dbos_core::SendIfOpen::Closed(_)) => {
                        match db.get_event(run, &completed_key, None).await? {
                            Some(v) => {
                                return Ok(WorkflowUpdateHandle::new(
                                    self.client.clone(),
                                    update_id,
                                    self.info.workflow_id.clone(),
                                    Some(run.clone()),
                                    Some(UpdateOutcome::from_text(&v)?),
                                ));
                            }
                            None => {
                                return Err(WorkflowUpdateError::NotFound(closed_status(run)));
                            }
                        }
                    }
                    Err(dbos_core::Error::UnknownRun(_)) => {
                        return Err(WorkflowUpdateError::NotFound(self.not_found()));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            None => {
                let status = self
                    .target(&db)
                    .await
                    .map_err(WorkflowUpdateError::NotFound)?;
                let known = db
                    .get_event(&status.workflow_id, &completed_key, None)
                    .await?;
                (status, known)
            }
        };
        let run = status.workflow_id.clone();
        // A repeated update id whose outcome is known does not need the workflow open.
        if let Some(v) = known_outcome {
            return Ok(WorkflowUpdateHandle::new(
                self.client.clone(),
                update_id,
                self.info.workflow_id.clone(),
                Some(run),
                Some(UpdateOutcome::from_text(&v)?),
            ));
        }
        if !is_open(&status)? {
            return Err(WorkflowUpdateError::NotFound(closed_status(&run)));
        }
        let (body, key) = msg(&run);
        db.send(&run, protocol::INBOX_TOPIC, &body, Some(&key))
            .await?;
        self.after_update_sent(
            &db,
            &run,
            update_id,
            wait_for_acceptance,
            options.rpc_options.timeout,
        )
        .await
    }

    /// After an update's message is in the run's inbox: a handle at once, or after the
    /// workflow's admission (acceptance, or rejection with its failure).
    async fn after_update_sent<T>(
        &self,
        db: &SystemDatabase,
        run: &str,
        update_id: String,
        wait_for_acceptance: bool,
        timeout: Option<Duration>,
    ) -> Result<WorkflowUpdateHandle<Client, T>, WorkflowUpdateError> {
        let run = run.to_string();
        if !wait_for_acceptance {
            return Ok(WorkflowUpdateHandle::new(
                self.client.clone(),
                update_id,
                self.info.workflow_id.clone(),
                Some(run),
                None,
            ));
        }
        let admission_key = protocol::update_accepted_key(&update_id);
        let known = match wait_event_or_close(db, &run, &admission_key, timeout).await? {
            EventWait::Value(v) => match UpdateAdmission::from_text(&v)? {
                UpdateAdmission::Accepted => None,
                UpdateAdmission::Rejected { failure } => Some(UpdateOutcome::Failure(failure)),
            },
            EventWait::Closed => {
                return Err(WorkflowUpdateError::NotFound(not_found(format!(
                    "workflow run `{run}` closed before accepting update `{update_id}`"
                ))));
            }
            EventWait::TimedOut => {
                return Err(WorkflowUpdateError::Rpc(tonic::Status::deadline_exceeded(
                    format!("update `{update_id}` was not accepted within the timeout"),
                )));
            }
        };
        Ok(WorkflowUpdateHandle::new(
            self.client.clone(),
            update_id,
            self.info.workflow_id.clone(),
            Some(run),
            known,
        ))
    }

    /// A handle on an update sent earlier (not checked until `get_result`).
    pub fn get_update_handle<U>(
        &self,
        update: U,
        update_id: impl Into<String>,
    ) -> WorkflowUpdateHandle<Client, U::Output>
    where
        U: UpdateDefinition<Workflow = W::Run>,
    {
        let _ = update;
        WorkflowUpdateHandle::new(
            self.client.clone(),
            update_id.into(),
            self.info.workflow_id.clone(),
            self.info.run_id.clone(),
            None,
        )
    }

    /// Requests cancellation: a cancel request enters the run's inbox; the workflow decides how
    /// to end (usually CANCELED).
    pub async fn cancel(
        &self,
        opts: WorkflowCancelOptions,
    ) -> Result<(), WorkflowInteractionError> {
        opts.rpc_options
            .refuse_metadata()
            .map_err(WorkflowInteractionError::Rpc)?;
        let db = self.db().await?;
        let run = self.open_target(&db).await?;
        let request_id = opts
            .request_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let msg = InboxMessage::Cancel(CancelRequest {
            reason: opts.reason,
            identity: self.client.identity(),
            request_id: Some(request_id.clone()),
        });
        let key = protocol::cancel_idempotency_key(&run, &request_id);
        db.send(&run, protocol::INBOX_TOPIC, &msg.encode(), Some(&key))
            .await?;
        debug!(run = %run, "cancel requested");
        Ok(())
    }

    /// Terminates the run at once (no workflow code runs); the reason and details are kept and
    /// returned by `get_result` as [`WorkflowGetResultError::Terminated`].
    pub async fn terminate(
        &self,
        opts: WorkflowTerminateOptions,
    ) -> Result<(), WorkflowInteractionError> {
        opts.rpc_options
            .refuse_metadata()
            .map_err(WorkflowInteractionError::Rpc)?;
        let db = self.db().await?;
        let run = self.open_target(&db).await?;
        terminate_run(
            &db,
            &run,
            opts.reason,
            opts.details.map(|d| d.payloads).unwrap_or_default(),
            self.client.identity(),
        )
        .await?;
        Ok(())
    }

    /// Describes the targeted run.
    pub async fn describe(
        &self,
        opts: WorkflowDescribeOptions,
    ) -> Result<WorkflowExecutionDescription, WorkflowInteractionError> {
        opts.rpc_options
            .refuse_metadata()
            .map_err(WorkflowInteractionError::Rpc)?;
        let db = self.db().await?;
        let status = self.target(&db).await.map_err(status_to_interaction)?;
        WorkflowExecutionDescription::from_run(&status, self.client.data_converter()).await
    }
}

/// Records TERMINATED on an open run (dbos-core `cancel` with the protocol's reason text),
/// after applying the parent close policy of its open children (first, so that a failure in
/// between leaves the run open for another attempt rather than its children unattended), and
/// once more after it, for a child whose start was in flight.
pub(crate) async fn terminate_run(
    db: &SystemDatabase,
    run: &str,
    reason: String,
    details: Vec<Payload>,
    identity: String,
) -> Result<(), ProtocolError> {
    crate::policies::apply_parent_close_policy(db, run, &identity).await?;
    let outcome = TerminalOutcome::Terminated {
        reason,
        details,
        identity: (!identity.is_empty()).then(|| identity.clone()),
    };
    db.cancel(run, Some(&outcome.to_error_text())).await?;
    debug!(run = %run, "terminated");
    crate::policies::apply_parent_close_policy(db, run, &identity).await?;
    Ok(())
}

fn status_to_get_result(s: tonic::Status) -> WorkflowGetResultError {
    if s.code() == tonic::Code::NotFound {
        WorkflowGetResultError::NotFound(s)
    } else {
        WorkflowGetResultError::Rpc(s)
    }
}

fn status_to_interaction(s: tonic::Status) -> WorkflowInteractionError {
    if s.code() == tonic::Code::NotFound {
        WorkflowInteractionError::NotFound(s)
    } else {
        WorkflowInteractionError::Rpc(s)
    }
}

/// A handle on an update.
pub struct WorkflowUpdateHandle<CT, T> {
    client: CT,
    update_id: String,
    workflow_id: String,
    run_id: Option<String>,
    known_outcome: Option<UpdateOutcome>,
    _output: PhantomData<fn() -> T>,
}

impl<CT: Clone, T> Clone for WorkflowUpdateHandle<CT, T> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            update_id: self.update_id.clone(),
            workflow_id: self.workflow_id.clone(),
            run_id: self.run_id.clone(),
            known_outcome: self.known_outcome.clone(),
            _output: PhantomData,
        }
    }
}

impl<CT, T> WorkflowUpdateHandle<CT, T> {
    fn new(
        client: CT,
        update_id: String,
        workflow_id: String,
        run_id: Option<String>,
        known_outcome: Option<UpdateOutcome>,
    ) -> Self {
        Self {
            client,
            update_id,
            workflow_id,
            run_id,
            known_outcome,
            _output: PhantomData,
        }
    }

    /// The update id.
    pub fn id(&self) -> &str {
        &self.update_id
    }

    /// The workflow id.
    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    /// The run the update was sent to.
    pub fn workflow_run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }
}

impl<T: 'static> WorkflowUpdateHandle<Client, T> {
    /// Waits for the update's outcome (`rpc_options.timeout` bounds the wait).
    pub async fn get_result(&self, rpc_options: RpcOptions) -> Result<T, WorkflowUpdateError>
    where
        T: TemporalDeserializable,
    {
        rpc_options
            .refuse_metadata()
            .map_err(WorkflowUpdateError::Rpc)?;
        let db = self.client.system_database().await?;
        let dc = self.client.data_converter();
        let outcome = match &self.known_outcome {
            Some(o) => o.clone(),
            None => {
                let run = match &self.run_id {
                    Some(r) => r.clone(),
                    None => {
                        protocol::latest_run(&db, &self.workflow_id)
                            .await?
                            .ok_or_else(|| {
                                WorkflowUpdateError::NotFound(not_found(format!(
                                    "workflow `{}` not found",
                                    self.workflow_id
                                )))
                            })?
                            .workflow_id
                    }
                };
                let key = protocol::update_completed_key(&self.update_id);
                match wait_event_or_close(&db, &run, &key, rpc_options.timeout).await? {
                    EventWait::Value(v) => UpdateOutcome::from_text(&v)?,
                    EventWait::Closed => {
                        return Err(WorkflowUpdateError::NotFound(not_found(format!(
                            "workflow run `{run}` closed before completing update `{}`",
                            self.update_id
                        ))));
                    }
                    EventWait::TimedOut => {
                        return Err(WorkflowUpdateError::Rpc(tonic::Status::deadline_exceeded(
                            format!(
                                "update `{}` did not complete within the timeout",
                                self.update_id
                            ),
                        )));
                    }
                }
            }
        };
        match outcome {
            UpdateOutcome::Success(p) => Ok(dc.from_payloads(&wf_ctx(), p).await?),
            UpdateOutcome::Failure(mut f) => {
                decode_failure(dc.codec(), &mut f).await?;
                Err(WorkflowUpdateError::Failed(Box::new(f)))
            }
        }
    }
}

/// A description of a workflow run.
#[derive(Debug, Clone)]
pub struct WorkflowExecutionDescription {
    /// The description in Temporal's proto form.
    pub raw_description: DescribeWorkflowExecutionResponse,
    static_summary: Option<String>,
    static_details: Option<String>,
    data_converter: DataConverter,
}

/// The visibility record of a run (memo decoded by the codec) and its attributes.
pub(crate) async fn execution_info(
    status: &WorkflowStatus,
    dc: &DataConverter,
) -> Result<(ProtoExecutionInfo, RunAttributes), crate::ClientError> {
    let attrs = RunAttributes::of_run(status)?;
    let exec_status = protocol::execution_status(status)?;
    let mut memo = attrs.memo()?;
    for p in memo.values_mut() {
        let decoded = dc
            .codec()
            .decode(&wf_ctx(), vec![std::mem::take(p)])
            .await?;
        *p = decoded.into_iter().next().unwrap_or_default();
    }
    let closed = exec_status != ProtoStatus::Running;
    let close_ms = closed.then(|| status.completed_at_ms.unwrap_or(status.updated_at_ms));
    let start_ms = status.created_at_ms;
    let execution_ms = status.delay_until_epoch_ms.unwrap_or(start_ms);
    let parent = match (&attrs.parent_workflow_id, &attrs.parent_run_id) {
        (Some(w), r) => Some(ProtoWorkflowExecution {
            workflow_id: w.clone(),
            run_id: r.clone().unwrap_or_default(),
        }),
        (None, Some(r)) => Some(ProtoWorkflowExecution {
            workflow_id: protocol::parse_run_id(r).0.to_string(),
            run_id: r.clone(),
        }),
        (None, None) => None,
    };
    let info = ProtoExecutionInfo {
        execution: Some(ProtoWorkflowExecution {
            workflow_id: attrs.workflow_id.clone(),
            run_id: status.workflow_id.clone(),
        }),
        r#type: Some(WorkflowType {
            name: status.name.clone(),
        }),
        start_time: Some(ts(start_ms)),
        close_time: close_ms.map(ts),
        status: exec_status as i32,
        history_length: 0,
        parent_execution: parent,
        execution_time: Some(ts(execution_ms)),
        memo: Some(ProtoMemo { fields: memo }),
        search_attributes: Some(ProtoSearchAttributes {
            indexed_fields: attrs.search_attributes()?,
        }),
        task_queue: status.queue_name.clone().unwrap_or_default(),
        execution_duration: close_ms.map(|c| dur(c.saturating_sub(start_ms).max(0) as u64)),
        first_run_id: attrs
            .first_execution_run_id
            .clone()
            .unwrap_or_else(|| status.workflow_id.clone()),
        ..Default::default()
    };
    Ok((info, attrs))
}

impl WorkflowExecutionDescription {
    async fn from_run(
        status: &WorkflowStatus,
        dc: &DataConverter,
    ) -> Result<Self, WorkflowInteractionError> {
        let (info, attrs) = execution_info(status, dc).await.map_err(|e| match e {
            crate::ClientError::PayloadConversion(p) => {
                WorkflowInteractionError::PayloadConversion(p)
            }
            crate::ClientError::Rpc(s) => status_to_interaction(s),
        })?;
        let config = WorkflowExecutionConfig {
            task_queue: Some(TaskQueue {
                name: status.queue_name.clone().unwrap_or_default(),
                ..Default::default()
            }),
            workflow_execution_timeout: attrs.execution_timeout_ms.map(dur),
            workflow_run_timeout: attrs.run_timeout_ms.map(dur),
            default_workflow_task_timeout: attrs.task_timeout_ms.map(dur),
            user_metadata: None::<UserMetadata>,
        };
        Ok(Self {
            raw_description: DescribeWorkflowExecutionResponse {
                execution_config: Some(config),
                workflow_execution_info: Some(info),
                ..Default::default()
            },
            static_summary: attrs.static_summary.clone(),
            static_details: attrs.static_details.clone(),
            data_converter: dc.clone(),
        })
    }

    fn info(&self) -> Option<&ProtoExecutionInfo> {
        self.raw_description.workflow_execution_info.as_ref()
    }

    /// The workflow id.
    pub fn id(&self) -> &str {
        self.info()
            .and_then(|i| i.execution.as_ref())
            .map_or("", |e| e.workflow_id.as_str())
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        self.info()
            .and_then(|i| i.execution.as_ref())
            .map_or("", |e| e.run_id.as_str())
    }

    /// The workflow type.
    pub fn workflow_type(&self) -> &str {
        self.info()
            .and_then(|i| i.r#type.as_ref())
            .map_or("", |t| t.name.as_str())
    }

    /// The status (see the module docs of [`crate::protocol`] for the mapping).
    pub fn status(&self) -> WorkflowExecutionStatus {
        WorkflowExecutionStatus::from_raw(self.info().map_or(0, |i| i.status))
    }

    /// When the run was created.
    pub fn start_time(&self) -> Option<SystemTime> {
        self.info().and_then(|i| to_system_time(&i.start_time))
    }

    /// When the run became eligible to start (after a start delay).
    pub fn execution_time(&self) -> Option<SystemTime> {
        self.info().and_then(|i| to_system_time(&i.execution_time))
    }

    /// When the run closed.
    pub fn close_time(&self) -> Option<SystemTime> {
        self.info().and_then(|i| to_system_time(&i.close_time))
    }

    /// The task queue.
    pub fn task_queue(&self) -> &str {
        self.info().map_or("", |i| i.task_queue.as_str())
    }

    /// History length: always 0 (DBOSify does not keep Temporal event histories).
    pub fn history_length(&self) -> usize {
        self.info()
            .map_or(0, |i| usize::try_from(i.history_length).unwrap_or(0))
    }

    /// The memo.
    pub fn memo(&self) -> Memo {
        Memo::from_raw(
            self.info().and_then(|i| i.memo.clone()),
            self.data_converter.payload_converter().clone(),
            wf_ctx(),
        )
    }

    /// The parent workflow id.
    pub fn parent_id(&self) -> Option<&str> {
        self.info()
            .and_then(|i| i.parent_execution.as_ref())
            .map(|e| e.workflow_id.as_str())
    }

    /// The parent run id.
    pub fn parent_run_id(&self) -> Option<&str> {
        self.info()
            .and_then(|i| i.parent_execution.as_ref())
            .map(|e| e.run_id.as_str())
    }

    /// The search attributes.
    pub fn search_attributes(&self) -> SearchAttributes {
        self.info()
            .and_then(|i| i.search_attributes.as_ref())
            .map(SearchAttributes::from_proto)
            .unwrap_or_default()
    }

    /// The static summary.
    pub fn static_summary(&self) -> Option<&str> {
        self.static_summary.as_deref()
    }

    /// The static details.
    pub fn static_details(&self) -> Option<&str> {
        self.static_details.as_deref()
    }

    /// The proto form.
    pub fn raw(&self) -> &DescribeWorkflowExecutionResponse {
        &self.raw_description
    }

    /// Consumes into the proto form.
    pub fn into_raw(self) -> DescribeWorkflowExecutionResponse {
        self.raw_description
    }
}

macro_rules! untyped_definition {
    ($(#[$doc:meta])* $name:ident, $trait:ident $(, $out:ident)?) => {
        $(#[$doc])*
        pub struct $name<W> {
            name: String,
            _wf: PhantomData<W>,
        }

        impl<W> $name<W> {
            /// A definition naming `name`, resolved by the worker at run time.
            pub fn new(name: impl Into<String>) -> Self {
                Self {
                    name: name.into(),
                    _wf: PhantomData,
                }
            }
        }

        impl<W: temporalio_common_wasm::WorkflowDefinition> $trait for $name<W> {
            type Workflow = W;
            type Input = RawValue;
            $(type $out = RawValue;)?

            fn name(&self) -> &str {
                &self.name
            }
        }
    };
}

untyped_definition!(
    /// A signal named at run time (`handle.signal(UntypedSignal::new("name"), raw, opts)`).
    UntypedSignal,
    SignalDefinition
);
untyped_definition!(
    /// A query named at run time (`handle.query(UntypedQuery::new("name"), raw, opts)`).
    UntypedQuery,
    QueryDefinition,
    Output
);
untyped_definition!(
    /// An update named at run time (`handle.execute_update(UntypedUpdate::new("name"), raw, opts)`).
    UntypedUpdate,
    UpdateDefinition,
    Output
);

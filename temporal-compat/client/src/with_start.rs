//! Signal-with-start and update-with-start (`Client::signal_with_start_workflow`,
//! `Client::start_update_with_start_workflow`, `Client::execute_update_with_start_workflow`),
//! with upstream's signatures.
//!
//! Atomicity: when the call creates the run, the run row and its first inbox message (the signal
//! or the update request) are written by ONE statement (`enqueue_with_message`), so no worker can
//! claim the run before the message is there: the workflow sees it in its first activation.
//! When a run of the id is already open and the conflict policy keeps it, the message is sent to
//! that run instead.

use std::time::Duration;

use temporalio_common_wasm::data_converters::PayloadConversionError;
use temporalio_common_wasm::search_attributes::SearchAttributes;
use temporalio_common_wasm::{
    HasWorkflowDefinition, MemoValues, SignalDefinition, UpdateDefinition, VersioningOverride,
};
use temporalio_protos::temporal::api::common::v1::{Callback, Header, Link, Payload};
use tracing::{debug, info};

use crate::errors::{WorkflowStartError, WorkflowUpdateError};
use crate::options::{
    Priority, RpcOptions, WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowStartOptions,
    WorkflowStartUpdateOptions,
};
use crate::protocol::{self, InboxMessage, SignalRequest, TerminalOutcome, UpdateRequest};
use crate::workflow_handle::{self, WorkflowHandle, WorkflowUpdateHandle};
use crate::{
    Client, NamespacedClient, RetryPolicy, already_started, invalid, refuse_start_options, wf_ctx,
};

/// Options for starting a workflow and sending it an update in one atomic operation
/// (upstream's `WorkflowUpdateWithStartOptions`).
///
/// The same options as [`WorkflowStartOptions`] are refused or ignored (see there); an
/// unspecified `id_conflict_policy` is refused, as by Temporal.
#[derive(Debug, Clone, bon::Builder)]
#[builder(start_fn = new, on(String, into))]
#[non_exhaustive]
pub struct WorkflowUpdateWithStartOptions {
    /// The task queue to run the workflow on.
    #[builder(start_fn)]
    pub task_queue: String,
    /// The workflow id.
    #[builder(start_fn)]
    pub workflow_id: String,
    /// What to do when a workflow of the id is running: `UseExisting` sends the update to it,
    /// `Fail` fails the start, `TerminateExisting` terminates it and starts a new run.
    #[builder(start_fn)]
    pub id_conflict_policy: WorkflowIdConflictPolicy,
    /// Reuse of a closed id.
    #[builder(default)]
    pub id_reuse_policy: WorkflowIdReusePolicy,
    /// As [`WorkflowStartOptions::execution_timeout`].
    pub execution_timeout: Option<Duration>,
    /// As [`WorkflowStartOptions::run_timeout`].
    pub run_timeout: Option<Duration>,
    /// As [`WorkflowStartOptions::task_timeout`].
    pub task_timeout: Option<Duration>,
    /// Search attributes.
    pub search_attributes: Option<SearchAttributes>,
    /// As [`WorkflowStartOptions::retry_policy`].
    #[builder(into)]
    pub retry_policy: Option<RetryPolicy>,
    /// Refused when non-empty.
    #[builder(default)]
    pub links: Vec<Link>,
    /// Refused when non-empty.
    #[builder(default)]
    pub completion_callbacks: Vec<Callback>,
    /// Priority (the key orders the queue).
    #[builder(default)]
    pub priority: Priority,
    /// Refused when set.
    pub versioning_override: Option<VersioningOverride>,
    /// Start headers.
    pub start_header: Option<Header>,
    /// Update headers.
    pub update_header: Option<Header>,
    /// Memo.
    pub memo: Option<MemoValues>,
    /// Static summary.
    pub static_summary: Option<String>,
    /// Static details.
    pub static_details: Option<String>,
    /// Update id (idempotent per run); a UUID when unset.
    pub update_id: Option<String>,
    /// `timeout` bounds the waits for admission and (when executing) for the result.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

impl WorkflowUpdateWithStartOptions {
    fn into_parts(
        self,
    ) -> (
        WorkflowStartOptions,
        Option<String>,
        Option<Header>,
        RpcOptions,
    ) {
        let start = WorkflowStartOptions {
            task_queue: self.task_queue,
            workflow_id: self.workflow_id,
            id_reuse_policy: self.id_reuse_policy,
            id_conflict_policy: self.id_conflict_policy,
            execution_timeout: self.execution_timeout,
            run_timeout: self.run_timeout,
            task_timeout: self.task_timeout,
            cron_schedule: None,
            search_attributes: self.search_attributes,
            enable_eager_workflow_start: false,
            retry_policy: self.retry_policy,
            links: self.links,
            completion_callbacks: self.completion_callbacks,
            priority: self.priority,
            versioning_override: self.versioning_override,
            header: self.start_header,
            memo: self.memo,
            static_summary: self.static_summary,
            static_details: self.static_details,
            rpc_options: RpcOptions::default(),
        };
        (start, self.update_id, self.update_header, self.rpc_options)
    }
}

/// Errors of update-with-start (upstream's `WorkflowUpdateWithStartError`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowUpdateWithStartError {
    /// The start operation failed.
    #[error("Workflow start failed: {0}")]
    Start(#[source] WorkflowStartError),
    /// The update operation failed, or waiting for its result failed.
    #[error("Workflow update failed: {0}")]
    Update(#[source] WorkflowUpdateError),
    /// Error serializing the workflow input or update arguments.
    #[error("Payload conversion error: {0}")]
    PayloadConversion(#[from] PayloadConversionError),
    /// A database error not attributable to either operation.
    #[error("Server error: {0}")]
    Rpc(tonic::Status),
    /// Other errors.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

/// What starting with a first message did.
pub(crate) enum Started {
    /// A new run was created (with the message in its inbox, when there was one); the mark
    /// was taken before its enqueue (see [`dbos_core::SystemDatabase::await_outcome_since`]).
    Created(dbos_core::WorkflowStatus, dbos_core::Mark),
    /// An open run of the id is kept (conflict policy); the message was NOT sent.
    Existing(dbos_core::WorkflowStatus),
}

/// The first inbox message of a new run, given its run id.
pub(crate) type FirstMessage<'a> = &'a (dyn Fn(&str) -> (String, String) + Sync);

impl Client {
    /// Atomically signals a workflow as it starts: the workflow receives the signal before its
    /// first workflow task. If a run of the id is open, it is signalled instead (unless the
    /// conflict policy is `Fail` or `TerminateExisting`).
    pub async fn signal_with_start_workflow<W, S>(
        &self,
        workflow: W,
        workflow_input: W::Input,
        signal: S,
        signal_input: S::Input,
        options: WorkflowStartOptions,
    ) -> Result<WorkflowHandle<Self, W>, WorkflowStartError>
    where
        W: HasWorkflowDefinition,
        W::Input: Send,
        S: SignalDefinition<Workflow = W::Run>,
        S::Input: Send,
    {
        let dc = self.data_converter();
        let input = dc.to_payloads(&wf_ctx(), &workflow_input).await?;
        drop(workflow_input);
        let signal_payloads = dc.to_payloads(&wf_ctx(), &signal_input).await?;
        drop(signal_input);
        let request_id = uuid::Uuid::new_v4().to_string();
        let signal_name = signal.name().to_string();
        let identity = self.identity();
        let header = options
            .header
            .as_ref()
            .map(|h| h.fields.clone())
            .unwrap_or_default();
        let message = |run: &str| {
            let msg = InboxMessage::Signal(SignalRequest {
                name: signal_name.clone(),
                payloads: signal_payloads.clone(),
                headers: header.clone(),
                identity: identity.clone(),
                request_id: Some(request_id.clone()),
            });
            (
                msg.encode(),
                protocol::signal_idempotency_key(run, &request_id),
            )
        };
        let workflow_id = options.workflow_id.clone();
        // Signal-with-start keeps a running workflow unless told otherwise (Temporal's default).
        let started = self
            .start_run(workflow.name(), &input, options, true, Some(&message))
            .await?;
        match started {
            Started::Created(status, mark) => Ok(self.handle(&workflow_id, &status, Some(mark))),
            Started::Existing(status) => {
                let run = status.workflow_id.clone();
                let (body, key) = message(&run);
                let db = self.system_database().await?;
                db.send(&run, protocol::INBOX_TOPIC, &body, Some(&key))
                    .await
                    .map_err(protocol::ProtocolError::from)?;
                debug!(run = %run, signal = %signal.name(), "signal-with-start signalled the running workflow");
                Ok(self.handle(&workflow_id, &status, None))
            }
        }
    }

    /// Starts a workflow and sends it an update as one atomic operation; returns once the update
    /// is accepted (or rejected), with a handle to wait for its result.
    pub async fn start_update_with_start_workflow<W, U>(
        &self,
        workflow: W,
        workflow_input: W::Input,
        update: U,
        update_input: U::Input,
        options: WorkflowUpdateWithStartOptions,
    ) -> Result<WorkflowUpdateHandle<Self, U::Output>, WorkflowUpdateWithStartError>
    where
        W: HasWorkflowDefinition,
        W::Input: Send,
        U: UpdateDefinition<Workflow = W::Run>,
        U::Input: Send,
    {
        if options.id_conflict_policy == WorkflowIdConflictPolicy::Unspecified {
            return Err(WorkflowUpdateWithStartError::Start(invalid(
                "update-with-start requires an explicit id_conflict_policy",
            )));
        }
        let (start, update_id, update_header, rpc_options) = options.into_parts();
        let dc = self.data_converter();
        let input = dc.to_payloads(&wf_ctx(), &workflow_input).await?;
        drop(workflow_input);
        let update_payloads = dc.to_payloads(&wf_ctx(), &update_input).await?;
        drop(update_input);
        let update_id = update_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let update_name = update.name().to_string();
        let identity = self.identity();
        let headers = update_header
            .as_ref()
            .map(|h| h.fields.clone())
            .unwrap_or_default();
        let message = |run: &str| {
            let msg = InboxMessage::Update(UpdateRequest {
                update_id: update_id.clone(),
                name: update_name.clone(),
                payloads: update_payloads.clone(),
                headers: headers.clone(),
                identity: identity.clone(),
            });
            (
                msg.encode(),
                protocol::update_idempotency_key(run, &update_id),
            )
        };
        let workflow_id = start.workflow_id.clone();
        let status = match self
            .start_run(workflow.name(), &input, start, false, Some(&message))
            .await
            .map_err(WorkflowUpdateWithStartError::Start)?
        {
            Started::Created(s, _) | Started::Existing(s) => s,
        };
        // For a new run the request is already in its inbox (the send below is an idempotent
        // no-op); for a kept run it is sent now. Either way, wait for the admission.
        let handle: WorkflowHandle<Self, W> = self.handle(&workflow_id, &status, None);
        handle
            .start_update_payloads(
                &update_name,
                update_payloads.clone(),
                WorkflowStartUpdateOptions {
                    update_id: Some(update_id.clone()),
                    header: update_header,
                    rpc_options,
                },
                true,
            )
            .await
            .map_err(WorkflowUpdateWithStartError::Update)
    }

    /// [`Self::start_update_with_start_workflow`], then waits for the update's result.
    pub async fn execute_update_with_start_workflow<W, U>(
        &self,
        workflow: W,
        workflow_input: W::Input,
        update: U,
        update_input: U::Input,
        options: WorkflowUpdateWithStartOptions,
    ) -> Result<U::Output, WorkflowUpdateWithStartError>
    where
        W: HasWorkflowDefinition,
        W::Input: Send,
        U: UpdateDefinition<Workflow = W::Run>,
        U::Input: Send,
        U::Output: 'static,
    {
        let rpc = options.rpc_options.clone();
        let handle = self
            .start_update_with_start_workflow(
                workflow,
                workflow_input,
                update,
                update_input,
                options,
            )
            .await?;
        handle
            .get_result(rpc)
            .await
            .map_err(WorkflowUpdateWithStartError::Update)
    }

    /// The one start logic (id conflict and reuse policies, racing starters), creating the run
    /// together with its first inbox message when `message` is given. `keep_by_default`: an
    /// unspecified conflict policy keeps a running workflow (signal-with-start) instead of
    /// failing.
    pub(crate) async fn start_run(
        &self,
        workflow_type: &str,
        input: &[Payload],
        options: WorkflowStartOptions,
        keep_by_default: bool,
        message: Option<FirstMessage<'_>>,
    ) -> Result<Started, WorkflowStartError> {
        protocol::validate_workflow_id(&options.workflow_id).map_err(|e| invalid(e.to_string()))?;
        refuse_start_options(&options)?;
        let (attrs, first_delay) = self.start_attributes(workflow_type, &options).await?;
        let db = self.system_database().await?;
        let workflow_id = options.workflow_id.clone();
        // The common case is a new workflow id: try its first run straight away (one round trip,
        // insert-or-get) and consult the latest run only when that run already exists.
        let mut first_attempt = true;
        for _ in 0..17 {
            let latest = if std::mem::take(&mut first_attempt) {
                None
            } else {
                protocol::latest_run(&db, &workflow_id).await?
            };
            let index = match latest {
                None => 0,
                Some(latest) => {
                    let (_, n) = protocol::parse_run_id(&latest.workflow_id);
                    match TerminalOutcome::from_status(&latest).ok().flatten() {
                        None => match options.id_conflict_policy {
                            WorkflowIdConflictPolicy::Unspecified if keep_by_default => {
                                return Ok(Started::Existing(latest));
                            }
                            WorkflowIdConflictPolicy::UseExisting => {
                                return Ok(Started::Existing(latest));
                            }
                            WorkflowIdConflictPolicy::Unspecified
                            | WorkflowIdConflictPolicy::Fail => {
                                return Err(already_started(
                                    &latest.workflow_id,
                                    "a workflow with this id is running",
                                ));
                            }
                            WorkflowIdConflictPolicy::TerminateExisting => {
                                workflow_handle::terminate_run(
                                    &db,
                                    &latest.workflow_id,
                                    "terminated by a new start (id conflict policy TerminateExisting)"
                                        .into(),
                                    Vec::new(),
                                    self.identity(),
                                )
                                .await?;
                                n + 1
                            }
                        },
                        Some(outcome) => {
                            let allowed = match options.id_reuse_policy {
                                WorkflowIdReusePolicy::Unspecified
                                | WorkflowIdReusePolicy::AllowDuplicate => true,
                                WorkflowIdReusePolicy::AllowDuplicateFailedOnly => {
                                    !matches!(outcome, TerminalOutcome::Completed { .. })
                                }
                                WorkflowIdReusePolicy::RejectDuplicate => false,
                            };
                            if !allowed {
                                return Err(already_started(
                                    &latest.workflow_id,
                                    "the id reuse policy forbids reusing this workflow id",
                                ));
                            }
                            n + 1
                        }
                    }
                }
            };
            let run_id = protocol::run_id(&workflow_id, index);
            let mut run_attrs = attrs.clone();
            run_attrs.first_execution_run_id = Some(run_id.clone());
            let mut request = protocol::new_run_request(&run_id, &run_attrs, input);
            request.delay = first_delay;
            let mark = db.wake_mark();
            let enqueued = match message {
                Some(message) => {
                    let (body, key) = message(&run_id);
                    db.enqueue_with_message(request, protocol::INBOX_TOPIC, &body, Some(&key))
                        .await
                }
                None => db.enqueue(request).await,
            };
            match enqueued.map_err(protocol::ProtocolError::from)? {
                dbos_core::Enqueued::Created(status) => {
                    info!(workflow_id = %workflow_id, run_id = %run_id, workflow_type = %attrs.workflow_type,
                          task_queue = %attrs.task_queue, first_message = message.is_some(), "workflow started");
                    return Ok(Started::Created(status, mark));
                }
                dbos_core::Enqueued::Existing(_) => {
                    debug!(run_id = %run_id, "run exists already (an earlier run, or a lost start race), re-evaluating");
                }
            }
        }
        Err(WorkflowStartError::Rpc(tonic::Status::aborted(format!(
            "could not start workflow `{workflow_id}`: too many concurrent starts with this id"
        ))))
    }
}

//! Child workflows and signals/cancels to other workflows.
//!
//! A child is a run enqueued on its task queue with the parent's run as its parent (idempotent
//! by run id, so restarting the start after a crash is harmless, and only while the parent run
//! is PENDING, so a closing parent never misses it); its retry policy, timeouts,
//! cron schedule and parent close policy go into its attributes. A watcher awaits the child's
//! chain (following continue-as-new, retries and cron runs) and reports its result as a
//! resolution job; a failed or timed-out chain carries the reason it was not retried (its
//! `RetryState`).
//! Signals and cancel requests to other workflows are inbox messages with idempotency keys
//! derived from the sending run and the command's sequence number.

use std::sync::Arc;

use dbos_core::Enqueued;
use temporal_compat_client::policies;
use temporal_compat_client::protocol::{
    self, CancelRequest, InboxMessage, RunAttributes, SignalRequest, TerminalOutcome,
};
use temporalio_common_wasm::protos::coresdk::child_workflow::{
    Cancellation as ChildCancellation, ChildWorkflowResult, Failure as ChildFailure,
    StartChildWorkflowExecutionFailedCause, Success as ChildSuccess, child_workflow_result,
};
use temporalio_common_wasm::protos::coresdk::workflow_activation::{
    ResolveChildWorkflowExecution, ResolveChildWorkflowExecutionStart,
    ResolveChildWorkflowExecutionStartFailure, ResolveChildWorkflowExecutionStartSuccess,
    ResolveRequestCancelExternalWorkflow, ResolveSignalExternalWorkflow, WorkflowActivationJob,
    resolve_child_workflow_execution_start, workflow_activation_job::Variant,
};
use temporalio_common_wasm::protos::coresdk::workflow_commands::{
    RequestCancelExternalWorkflowExecution, SignalExternalWorkflowExecution,
    StartChildWorkflowExecution, signal_external_workflow_execution,
};
use temporalio_common_wasm::protos::temporal::api::common::v1::{WorkflowExecution, WorkflowType};
use temporalio_common_wasm::protos::temporal::api::enums::v1::{
    CancelExternalWorkflowExecutionFailedCause, RetryState,
    SignalExternalWorkflowExecutionFailedCause, TimeoutType,
};
use temporalio_common_wasm::protos::temporal::api::failure::v1::failure::FailureInfo;
use temporalio_common_wasm::protos::temporal::api::failure::v1::{
    CanceledFailureInfo, ChildWorkflowExecutionFailureInfo, Failure, TerminatedFailureInfo,
    TimeoutFailureInfo,
};
use tracing::{debug, warn};

use super::{Engine, duration_of};

fn job(v: Variant) -> WorkflowActivationJob {
    WorkflowActivationJob { variant: Some(v) }
}

/// What a child start produced.
pub(crate) enum StartOutcome {
    /// The child's first run.
    Started(String),
    /// The start failed (job to deliver).
    Failed(Box<WorkflowActivationJob>),
    /// The worker is going away, or the parent closed first (nothing to resolve).
    Gone,
}

/// Enqueues the child's first run (idempotent for this parent).
pub(crate) async fn start_child(
    engine: &Arc<Engine>,
    parent_run: &str,
    parent_workflow_id: &str,
    parent_queue: &str,
    c: &StartChildWorkflowExecution,
) -> StartOutcome {
    let child_run = protocol::run_id(&c.workflow_id, 0);
    let failed = |cause: StartChildWorkflowExecutionFailedCause| {
        StartOutcome::Failed(Box::new(job(Variant::ResolveChildWorkflowExecutionStart(
            ResolveChildWorkflowExecutionStart {
                seq: c.seq,
                status: Some(resolve_child_workflow_execution_start::Status::Failed(
                    ResolveChildWorkflowExecutionStartFailure {
                        workflow_id: c.workflow_id.clone(),
                        workflow_type: c.workflow_type.clone(),
                        cause: cause as i32,
                    },
                )),
            },
        ))))
    };
    if protocol::validate_workflow_id(&c.workflow_id).is_err() {
        return failed(StartChildWorkflowExecutionFailedCause::Unspecified);
    }
    let queue = if c.task_queue.is_empty() {
        parent_queue.to_string()
    } else {
        c.task_queue.clone()
    };
    let mut attrs = RunAttributes::new(&c.workflow_id, &c.workflow_type, &queue);
    attrs.parent_workflow_id = Some(parent_workflow_id.to_string());
    attrs.parent_run_id = Some(parent_run.to_string());
    attrs.header = protocol::encode_payload_map(&c.headers);
    attrs.memo = protocol::encode_payload_map(&c.memo);
    if let Some(sa) = &c.search_attributes {
        attrs.set_search_attributes(&sa.indexed_fields);
    }
    let ms = |d| duration_of(d).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    attrs.parent_close_policy =
        Some(policies::parent_close_policy_name(c.parent_close_policy).to_string());
    if let Some(rp) = &c.retry_policy {
        match serde_json::to_value(rp) {
            Ok(v) => attrs.retry_policy = Some(v),
            Err(e) => {
                warn!(run_id = %parent_run, error = %e, "the child's retry policy cannot be recorded");
                return failed(StartChildWorkflowExecutionFailedCause::Unspecified);
            }
        }
    }
    // A cron child's first run waits for the first cron time; its timeouts count from there.
    let now = dbos_core::now_ms();
    let mut first_delay = None;
    if !c.cron_schedule.is_empty() {
        let Some(delay) = policies::CronSchedule::parse(&c.cron_schedule)
            .ok()
            .and_then(|s| s.backoff(now, now))
        else {
            warn!(run_id = %parent_run, schedule = %c.cron_schedule, "the child's cron schedule is invalid");
            return failed(StartChildWorkflowExecutionFailedCause::Unspecified);
        };
        first_delay = Some(delay);
        attrs.cron_schedule = Some(c.cron_schedule.clone());
    }
    let start = now.saturating_add(
        first_delay.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    );
    attrs.execution_timeout_ms = ms(&c.workflow_execution_timeout);
    attrs.execution_deadline_ms = attrs
        .execution_timeout_ms
        .map(|t| start.saturating_add(i64::try_from(t).unwrap_or(i64::MAX)));
    attrs.run_timeout_ms = ms(&c.workflow_run_timeout);
    attrs.task_timeout_ms = ms(&c.workflow_task_timeout);
    let mut request = protocol::new_run_request(&child_run, &attrs, &c.input);
    request.delay = first_delay;
    // Created only while the parent is open: a parent closing meanwhile either sees this child
    // in its parent-close sweep or makes this start create nothing.
    request.only_while_parent_pending = true;
    loop {
        match engine.db.enqueue(request.clone()).await {
            Ok(Enqueued::Created(_)) => return StartOutcome::Started(child_run),
            Ok(Enqueued::Existing(s)) => {
                // Ours (a restarted start) or somebody else's id.
                return if s.parent_workflow_id.as_deref() == Some(parent_run) {
                    StartOutcome::Started(child_run)
                } else {
                    failed(StartChildWorkflowExecutionFailedCause::WorkflowAlreadyExists)
                };
            }
            Err(dbos_core::Error::ParentNotPending(_)) => {
                debug!(run_id = %parent_run, child = %child_run, "the parent closed before its child was created");
                return StartOutcome::Gone;
            }
            Err(e) => {
                warn!(run_id = %parent_run, error = %e, "cannot start a child workflow; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    _ = engine.halt.cancelled() => return StartOutcome::Gone,
                }
            }
        }
    }
}

/// The start resolution of a started child.
pub(crate) fn started_job(seq: u32, run_id: &str) -> WorkflowActivationJob {
    job(Variant::ResolveChildWorkflowExecutionStart(
        ResolveChildWorkflowExecutionStart {
            seq,
            status: Some(resolve_child_workflow_execution_start::Status::Succeeded(
                ResolveChildWorkflowExecutionStartSuccess {
                    run_id: run_id.to_string(),
                },
            )),
        },
    ))
}

/// Waits for the end of the child's chain and returns its resolution job (`None` when the
/// worker halts).
pub(crate) async fn watch_child(
    engine: &Arc<Engine>,
    seq: u32,
    first_run: &str,
    workflow_type: &str,
) -> Option<WorkflowActivationJob> {
    let mut run = first_run.to_string();
    let (outcome, retry_state) = loop {
        let status = tokio::select! {
            s = engine.db.await_outcome(&run, None) => s,
            _ = engine.halt.cancelled() => return None,
        };
        let status = match status {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                warn!(child = %run, error = %e, "cannot await a child workflow; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => continue,
                    _ = engine.halt.cancelled() => return None,
                }
            }
        };
        match TerminalOutcome::from_status(&status) {
            Ok(Some(o)) => {
                // The chain goes on after continue-as-new, a retry, or (for a COMPLETED run) the
                // next cron run named in its attributes: the parent hears of the chain's end.
                let next = match &o {
                    TerminalOutcome::Completed { .. } => RunAttributes::of_run(&status)
                        .ok()
                        .and_then(|a| a.next_run_id),
                    other => other.next_run_id().map(str::to_owned),
                };
                match next {
                    Some(next) => run = next,
                    None => {
                        let state = super::run::chain_end_retry_state(&status, &o);
                        break (o, state);
                    }
                }
            }
            Ok(None) => continue,
            Err(e) => {
                let o = TerminalOutcome::Failed {
                    failure: Failure {
                        message: format!("the child's outcome cannot be read: {e}"),
                        ..Default::default()
                    },
                    next_run_id: None,
                };
                break (o, RetryState::NonRetryableFailure);
            }
        }
    };
    let (workflow_id, _) = protocol::parse_run_id(first_run);
    let wrap = |cause: Failure, retry_state: RetryState, message: &str| Failure {
        message: message.to_string(),
        failure_info: Some(FailureInfo::ChildWorkflowExecutionFailureInfo(
            ChildWorkflowExecutionFailureInfo {
                namespace: engine.namespace.clone(),
                workflow_execution: Some(WorkflowExecution {
                    workflow_id: workflow_id.to_string(),
                    run_id: run.clone(),
                }),
                workflow_type: Some(WorkflowType {
                    name: workflow_type.to_string(),
                }),
                retry_state: retry_state as i32,
                ..Default::default()
            },
        )),
        cause: Some(Box::new(cause)),
        ..Default::default()
    };
    let status = match outcome {
        TerminalOutcome::Completed { result } => {
            child_workflow_result::Status::Completed(ChildSuccess {
                result: result.into_iter().next(),
            })
        }
        TerminalOutcome::Failed { failure, .. } => {
            child_workflow_result::Status::Failed(ChildFailure {
                failure: Some(wrap(
                    failure,
                    retry_state,
                    "Child Workflow execution failed",
                )),
            })
        }
        TerminalOutcome::Canceled { details } => {
            let cause = Failure {
                message: "Child Workflow execution cancelled".into(),
                failure_info: Some(FailureInfo::CanceledFailureInfo(CanceledFailureInfo {
                    details: (!details.is_empty()).then_some(
                        temporalio_common_wasm::protos::temporal::api::common::v1::Payloads {
                            payloads: details,
                        },
                    ),
                    ..Default::default()
                })),
                ..Default::default()
            };
            child_workflow_result::Status::Cancelled(ChildCancellation {
                failure: Some(wrap(
                    cause,
                    RetryState::CancelRequested,
                    "Child Workflow execution cancelled",
                )),
            })
        }
        TerminalOutcome::Terminated { reason, .. } => {
            let cause = Failure {
                message: if reason.is_empty() {
                    "Child Workflow execution terminated".into()
                } else {
                    reason
                },
                failure_info: Some(FailureInfo::TerminatedFailureInfo(
                    TerminatedFailureInfo::default(),
                )),
                ..Default::default()
            };
            child_workflow_result::Status::Failed(ChildFailure {
                failure: Some(wrap(
                    cause,
                    RetryState::NonRetryableFailure,
                    "Child Workflow execution terminated",
                )),
            })
        }
        TerminalOutcome::TimedOut { .. } | TerminalOutcome::ContinuedAsNew { .. } => {
            let cause = Failure {
                message: "Child Workflow execution timed out".into(),
                failure_info: Some(FailureInfo::TimeoutFailureInfo(TimeoutFailureInfo {
                    timeout_type: TimeoutType::StartToClose as i32,
                    ..Default::default()
                })),
                ..Default::default()
            };
            child_workflow_result::Status::Failed(ChildFailure {
                failure: Some(wrap(
                    cause,
                    retry_state,
                    "Child Workflow execution timed out",
                )),
            })
        }
    };
    Some(job(Variant::ResolveChildWorkflowExecution(
        ResolveChildWorkflowExecution {
            seq,
            result: Some(ChildWorkflowResult {
                status: Some(status),
            }),
        },
    )))
}

/// The run a command aimed at another workflow targets: the given run, else the latest run.
async fn target_run(engine: &Engine, workflow_id: &str, run_id: &str) -> Option<String> {
    if !run_id.is_empty() {
        return match engine.db.status(run_id).await {
            Ok(Some(s)) if !s.state.is_terminal() => Some(run_id.to_string()),
            _ => None,
        };
    }
    match protocol::latest_run(&engine.db, workflow_id).await {
        Ok(Some(s)) if !s.state.is_terminal() => Some(s.workflow_id),
        _ => None,
    }
}

/// Sends a signal to another workflow; returns the resolution job.
pub(crate) async fn signal_external(
    engine: &Arc<Engine>,
    sender_run: &str,
    c: &SignalExternalWorkflowExecution,
) -> WorkflowActivationJob {
    let (workflow_id, run_id) = match &c.target {
        Some(signal_external_workflow_execution::Target::WorkflowExecution(we)) => {
            (we.workflow_id.clone(), we.run_id.clone())
        }
        Some(signal_external_workflow_execution::Target::ChildWorkflowId(id)) => {
            (id.clone(), String::new())
        }
        None => (String::new(), String::new()),
    };
    let not_found = || {
        job(Variant::ResolveSignalExternalWorkflow(
            ResolveSignalExternalWorkflow {
                seq: c.seq,
                failure: Some(Failure {
                    message: format!(
                        "Unable to signal external workflow because it was not found: {workflow_id}"
                    ),
                    ..Default::default()
                }),
                cause: SignalExternalWorkflowExecutionFailedCause::ExternalWorkflowExecutionNotFound
                    as i32,
            },
        ))
    };
    let Some(target) = target_run(engine, &workflow_id, &run_id).await else {
        return not_found();
    };
    let msg = InboxMessage::Signal(SignalRequest {
        name: c.signal_name.clone(),
        payloads: c.args.clone(),
        headers: c.headers.clone(),
        identity: engine.executor_id.clone(),
        request_id: Some(format!("{sender_run}:signal:{}", c.seq)),
    });
    let key = protocol::signal_idempotency_key(&target, &format!("{sender_run}:signal:{}", c.seq));
    match engine
        .db
        .send(&target, protocol::INBOX_TOPIC, &msg.encode(), Some(&key))
        .await
    {
        Ok(_) => job(Variant::ResolveSignalExternalWorkflow(
            ResolveSignalExternalWorkflow {
                seq: c.seq,
                ..Default::default()
            },
        )),
        Err(_) => not_found(),
    }
}

/// Asks another workflow to cancel; returns the resolution job.
pub(crate) async fn cancel_external(
    engine: &Arc<Engine>,
    sender_run: &str,
    c: &RequestCancelExternalWorkflowExecution,
) -> WorkflowActivationJob {
    let (workflow_id, run_id) = c
        .workflow_execution
        .as_ref()
        .map(|we| (we.workflow_id.clone(), we.run_id.clone()))
        .unwrap_or_default();
    let not_found = || {
        job(Variant::ResolveRequestCancelExternalWorkflow(
            ResolveRequestCancelExternalWorkflow {
                seq: c.seq,
                failure: Some(Failure {
                    message: format!(
                        "Unable to cancel external workflow because it was not found: {workflow_id}"
                    ),
                    ..Default::default()
                }),
                cause: CancelExternalWorkflowExecutionFailedCause::ExternalWorkflowExecutionNotFound
                    as i32,
            },
        ))
    };
    match send_cancel(
        engine,
        sender_run,
        &format!("cancel:{}", c.seq),
        &workflow_id,
        &run_id,
        &c.reason,
    )
    .await
    {
        true => job(Variant::ResolveRequestCancelExternalWorkflow(
            ResolveRequestCancelExternalWorkflow {
                seq: c.seq,
                ..Default::default()
            },
        )),
        false => not_found(),
    }
}

/// Sends a cancel request to the current run of `workflow_id` (or `run_id`); `false` when
/// there is no open run.
pub(crate) async fn send_cancel(
    engine: &Arc<Engine>,
    sender_run: &str,
    tag: &str,
    workflow_id: &str,
    run_id: &str,
    reason: &str,
) -> bool {
    let Some(target) = target_run(engine, workflow_id, run_id).await else {
        return false;
    };
    let request_id = format!("{sender_run}:{tag}");
    let msg = InboxMessage::Cancel(CancelRequest {
        reason: reason.to_string(),
        identity: engine.executor_id.clone(),
        request_id: Some(request_id.clone()),
    });
    let key = protocol::cancel_idempotency_key(&target, &request_id);
    engine
        .db
        .send(&target, protocol::INBOX_TOPIC, &msg.encode(), Some(&key))
        .await
        .is_ok()
}

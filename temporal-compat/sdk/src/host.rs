//! The workflow host: drives one upstream `temporalio-workflow` instance, activation in,
//! commands out, with the ordering rules of Temporal's Rust SDK:
//!
//! - update routines started by an activation are answered `Accepted` before any routine runs;
//! - each pass polls live signal/update routines (in creation order) before the main routine,
//!   and passes repeat while any routine made progress;
//! - a finished main routine appends exactly one terminal command and stops polling;
//! - protocol responses and query answers come first in the output, then workflow commands in
//!   the order workflow code issued them.
//!
//! Workflow code that is woken by anything but the SDK (tokio timers, channels, threads) is
//! flagged as nondeterministic. Panics are caught and become workflow-task failures; after a
//! task failure the instance must be discarded (it is rebuilt by replay).

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Wake, Waker};

use temporalio_common_wasm::protos::coresdk::workflow_activation::WorkflowActivation;
use temporalio_common_wasm::protos::coresdk::workflow_activation::workflow_activation_job::Variant;
use temporalio_common_wasm::protos::coresdk::workflow_commands::{
    CancelWorkflowExecution, CompleteWorkflowExecution, FailWorkflowExecution, QueryResult,
    QuerySuccess, UpdateResponse, WorkflowCommand, query_result, update_response, workflow_command,
};
use temporalio_common_wasm::protos::temporal::api::failure::v1::Failure;
use temporalio_workflow::__private::sdk::{
    ActivationJobResult, MAIN_ROUTINE_ID, MainRoutineCompletion, RoutineCompletion, RoutineId,
    RoutineKind, RoutinePendingState, RoutinePollResult, TerminalOutcome, UpdateRoutineCompletion,
    WorkflowHost, WorkflowInstance, is_sdk_wake,
};

use crate::activities::panic_message;
use crate::registry::{InstanceFactory, InstanceInput};

/// A failed workflow task: the run stays open and the task is retried.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskFailure {
    /// What happened.
    pub failure: Box<Failure>,
    /// Whether it is a nondeterminism failure.
    pub nondeterminism: bool,
}

impl TaskFailure {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            failure: Box::new(Failure {
                message: message.into(),
                ..Default::default()
            }),
            nondeterminism: false,
        }
    }

    pub(crate) fn nondeterminism(message: impl Into<String>) -> Self {
        Self {
            failure: Box::new(Failure {
                message: message.into(),
                ..Default::default()
            }),
            nondeterminism: true,
        }
    }
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.failure.message)
    }
}

/// Collects the commands workflow code issues during one activation.
#[derive(Default)]
struct CommandSink {
    commands: RefCell<Vec<WorkflowCommand>>,
    details: RefCell<String>,
}

impl WorkflowHost for CommandSink {
    fn set_current_details(&self, details: String) {
        *self.details.borrow_mut() = details;
    }

    fn push_command(&self, command: WorkflowCommand) {
        self.commands.borrow_mut().push(command);
    }
}

/// The waker given to workflow code: SDK wakes are expected; any other wake is recorded.
#[derive(Default)]
struct WakeTracker {
    foreign_wake: AtomicBool,
}

impl Wake for WakeTracker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !is_sdk_wake() {
            self.foreign_wake.store(true, Ordering::Release);
        }
    }
}

/// How each job of an activation is answered.
#[derive(Debug)]
enum JobKind {
    Passive,
    Signal,
    Update(String),
    Query(String),
}

/// One live workflow instance and the host state around it.
pub(crate) struct WorkflowRun {
    instance: Box<dyn WorkflowInstance>,
    sink: Rc<CommandSink>,
    tracker: Arc<WakeTracker>,
    waker: Waker,
    detect_nondeterminism: bool,
    routines: Vec<RoutineId>,
    finished: bool,
}

const FOREIGN_WAKE: &str = "[TMPRL1100] Nondeterministic future detected: a waker was invoked by \
     a non-SDK source. This usually means workflow code is using nondeterministic operations like \
     tokio async functions or channels, other async libraries, or std::thread. Use SDK-provided \
     alternatives (ctx.timer(), ctx.state_mut() + ctx.wait_condition(), etc.) instead.";

impl WorkflowRun {
    /// Builds the instance (runs `#[init]`). An error means the run cannot start (undecodable
    /// input, or a panic in `#[init]`).
    pub(crate) fn new(
        factory: &InstanceFactory,
        mut input: InstanceInput,
        detect_nondeterminism: bool,
    ) -> Result<Self, String> {
        let sink = Rc::new(CommandSink::default());
        input.host = sink.clone();
        let instance = match catch_unwind(AssertUnwindSafe(|| factory(input))) {
            Ok(Ok(instance)) => instance,
            Ok(Err(e)) => return Err(format!("{e:#}")),
            Err(panic) => {
                return Err(format!(
                    "Workflow initialization panicked: {}",
                    panic_message(panic.as_ref())
                ));
            }
        };
        let tracker = Arc::new(WakeTracker::default());
        Ok(Self {
            instance,
            sink,
            waker: Waker::from(tracker.clone()),
            tracker,
            detect_nondeterminism,
            routines: Vec::new(),
            finished: false,
        })
    }

    /// The command sink a factory must be given (placeholder replaced in [`WorkflowRun::new`]).
    pub(crate) fn placeholder_host() -> Rc<dyn WorkflowHost> {
        Rc::new(CommandSink::default())
    }

    /// The details set with `set_current_details`.
    pub(crate) fn current_details(&self) -> String {
        self.sink.details.borrow().clone()
    }

    fn check_wakes(&self) -> Result<(), TaskFailure> {
        if self.tracker.foreign_wake.swap(false, Ordering::AcqRel) && self.detect_nondeterminism {
            return Err(TaskFailure::nondeterminism(FOREIGN_WAKE));
        }
        Ok(())
    }

    /// Applies one activation and returns the commands it produced.
    pub(crate) fn activate(
        &mut self,
        activation: WorkflowActivation,
    ) -> Result<Vec<WorkflowCommand>, TaskFailure> {
        self.check_wakes()?;
        let mut kinds = Vec::with_capacity(activation.jobs.len());
        let mut poll = false;
        for job in &activation.jobs {
            let kind = match job.variant.as_ref() {
                None => return Err(TaskFailure::new("activation job without a variant")),
                Some(Variant::QueryWorkflow(q)) => JobKind::Query(q.query_id.clone()),
                Some(Variant::SignalWorkflow(_)) => JobKind::Signal,
                Some(Variant::DoUpdate(u)) => JobKind::Update(u.protocol_instance_id.clone()),
                Some(Variant::RemoveFromCache(_)) => {
                    return Err(TaskFailure::new("eviction is handled by the host"));
                }
                Some(_) => JobKind::Passive,
            };
            poll |= !matches!(kind, JobKind::Query(_));
            kinds.push(kind);
        }
        let waker = self.waker.clone();
        let result = match catch_unwind(AssertUnwindSafe(|| {
            self.instance.activate(activation, &waker)
        })) {
            Ok(Ok(r)) => r,
            Ok(Err(f)) => return Err(TaskFailure::new(f.message)),
            Err(panic) => {
                return Err(TaskFailure::new(format!(
                    "Workflow function panicked: {}",
                    panic_message(panic.as_ref())
                )));
            }
        };
        self.check_wakes()?;
        if result.job_results.len() != kinds.len() {
            return Err(TaskFailure::new(format!(
                "activation had {} jobs but {} results",
                kinds.len(),
                result.job_results.len()
            )));
        }
        let mut out = Vec::new();
        for (kind, job_result) in kinds.into_iter().zip(result.job_results) {
            match (kind, job_result) {
                (JobKind::Passive | JobKind::Signal, ActivationJobResult::None) => {}
                (JobKind::Signal, ActivationJobResult::StartedRoutine(r))
                    if matches!(r.kind, RoutineKind::Signal(_)) =>
                {
                    self.routines.push(r.routine_id)
                }
                (JobKind::Update(pid), ActivationJobResult::StartedRoutine(r)) => match r.kind {
                    RoutineKind::Update(u) if u.protocol_instance_id == pid => {
                        out.push(update_response(
                            pid,
                            update_response::Response::Accepted(()),
                        ));
                        self.routines.push(r.routine_id);
                    }
                    other => {
                        return Err(TaskFailure::new(format!(
                            "update {pid} started an unexpected routine {other:?}"
                        )));
                    }
                },
                (JobKind::Update(pid), ActivationJobResult::UpdateRejected(f)) => {
                    out.push(update_response(
                        pid,
                        update_response::Response::Rejected(*f),
                    ));
                }
                (JobKind::Query(id), ActivationJobResult::QueryResponse(q)) => {
                    let variant = match q.result {
                        Ok(payload) => query_result::Variant::Succeeded(QuerySuccess {
                            response: Some(payload),
                        }),
                        Err(f) => query_result::Variant::Failed(f),
                    };
                    out.push(
                        workflow_command::Variant::RespondToQuery(QueryResult {
                            query_id: id,
                            variant: Some(variant),
                        })
                        .into(),
                    );
                }
                (kind, r) => {
                    return Err(TaskFailure::new(format!(
                        "unexpected activation result {r:?} for job {kind:?}"
                    )));
                }
            }
        }
        if poll && !self.finished {
            self.drive_routines(&mut out)?;
        }
        out.append(&mut self.sink.commands.borrow_mut());
        Ok(out)
    }

    fn poll_routine(&mut self, id: RoutineId) -> Result<RoutinePollResult, TaskFailure> {
        let waker = self.waker.clone();
        let r = match catch_unwind(AssertUnwindSafe(|| self.instance.poll_routine(id, &waker))) {
            Ok(Ok(r)) => r,
            Ok(Err(f)) => return Err(TaskFailure::new(f.message)),
            Err(panic) => {
                return Err(TaskFailure::new(format!(
                    "Workflow function panicked: {}",
                    panic_message(panic.as_ref())
                )));
            }
        };
        self.check_wakes()?;
        Ok(r)
    }

    fn drive_routines(&mut self, out: &mut Vec<WorkflowCommand>) -> Result<(), TaskFailure> {
        loop {
            let mut progress = false;
            let mut interceptor_pending = false;
            let mut live = Vec::with_capacity(self.routines.len());
            for id in std::mem::take(&mut self.routines) {
                let r = self.poll_routine(id)?;
                progress |= r.made_progress;
                interceptor_pending |=
                    matches!(r.pending_state, Some(RoutinePendingState::Interceptor));
                match r.completion {
                    None => live.push(id),
                    Some(RoutineCompletion::Signal(Ok(()))) => {}
                    Some(RoutineCompletion::Signal(Err(f))) => {
                        return Err(TaskFailure::new(f.message));
                    }
                    Some(RoutineCompletion::Update(UpdateRoutineCompletion::Completed {
                        protocol_instance_id,
                        result,
                    })) => out.push(update_response(
                        protocol_instance_id,
                        update_response::Response::Completed(result),
                    )),
                    Some(RoutineCompletion::Update(UpdateRoutineCompletion::Rejected {
                        protocol_instance_id,
                        failure,
                    })) => out.push(update_response(
                        protocol_instance_id,
                        update_response::Response::Rejected(*failure),
                    )),
                    Some(RoutineCompletion::Main(_)) => {
                        return Err(TaskFailure::new(
                            "a handler routine returned a main completion",
                        ));
                    }
                }
            }
            self.routines = live;

            let r = self.poll_routine(MAIN_ROUTINE_ID)?;
            progress |= r.made_progress;
            interceptor_pending |=
                matches!(r.pending_state, Some(RoutinePendingState::Interceptor));
            match r.completion {
                Some(RoutineCompletion::Main(MainRoutineCompletion::Blocked)) => {}
                Some(RoutineCompletion::Main(MainRoutineCompletion::TaskFailed(t))) => {
                    let nondeterminism = t.force_cause.is_some();
                    return Err(TaskFailure {
                        failure: t.failure,
                        nondeterminism,
                    });
                }
                Some(RoutineCompletion::Main(MainRoutineCompletion::Terminal(outcome))) => {
                    let variant = match *outcome {
                        TerminalOutcome::Completed(result) => {
                            workflow_command::Variant::CompleteWorkflowExecution(
                                CompleteWorkflowExecution {
                                    result: Some(result),
                                },
                            )
                        }
                        TerminalOutcome::Failed(f) => {
                            workflow_command::Variant::FailWorkflowExecution(
                                FailWorkflowExecution { failure: Some(*f) },
                            )
                        }
                        TerminalOutcome::Cancelled(details) => {
                            workflow_command::Variant::CancelWorkflowExecution(
                                CancelWorkflowExecution { details },
                            )
                        }
                        TerminalOutcome::ContinueAsNew(req) => {
                            workflow_command::Variant::ContinueAsNewWorkflowExecution(*req)
                        }
                    };
                    self.sink.push_command(variant.into());
                    self.finished = true;
                    return Ok(());
                }
                other => {
                    return Err(TaskFailure::new(format!(
                        "main routine returned unexpected completion {other:?}"
                    )));
                }
            }
            if !progress {
                if interceptor_pending {
                    return Err(TaskFailure::nondeterminism(
                        "[TMPRL1100] Nondeterministic future detected: a workflow interceptor \
                         returned Poll::Pending without polling its handler or an SDK operation \
                         that will produce another workflow activation.",
                    ));
                }
                return Ok(());
            }
        }
    }
}

fn update_response(pid: String, response: update_response::Response) -> WorkflowCommand {
    workflow_command::Variant::UpdateResponse(UpdateResponse {
        protocol_instance_id: pid,
        response: Some(response),
    })
    .into()
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;

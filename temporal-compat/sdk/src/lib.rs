//! # temporal-compat
//!
//! A drop-in replacement for Temporal's Rust SDK (`temporalio-sdk` 1.1.1) that runs workflows
//! and activities on nothing but Postgres. Rename the dependency in `Cargo.toml`:
//!
//! ```toml
//! temporalio-sdk = { package = "temporal-compat", version = "..." }
//! ```
//!
//! and keep Temporal's authoring crates (`temporalio-macros`, `temporalio-workflow`,
//! `temporalio-common`). Workflow code runs unchanged on Temporal's own deterministic workflow
//! runtime; this crate is the host around it:
//!
//! - [`Runtime`], [`Worker`], [`WorkerOptions`], [`activities`], [`interceptors`]: the same
//!   public surface as upstream;
//! - the workflow host (module `host`): feeds activations to an upstream workflow instance and
//!   collects its commands, with upstream's ordering rules;
//! - the history engine (module `engine`): a run's history is the list of activations fed to
//!   it, stored as dbos-core checkpoints; every fact is written before workflow code sees it,
//!   and recovery replays the history on a fresh instance.

#![warn(missing_docs)]

extern crate self as temporalio_sdk;

pub mod activities;
pub mod error;
pub mod interceptors;
pub mod runtime;
pub mod workflow_interceptors;
pub mod workflows;

mod engine;
mod history;
mod host;
mod options;
mod registry;
mod scheduler;
mod worker;

pub use crate::error::{
    ActivityExecutionError, ApplicationFailure, CancelExternalWorkflowError,
    ChildWorkflowExecutionError, ChildWorkflowStartError, OutgoingActivityError, OutgoingError,
    OutgoingWorkflowError, RetryState, RuntimeError, TimeoutType, WorkerCreateError,
    WorkerRunError, WorkerValidationError, WorkflowRegistrationError, WorkflowSignalError,
};
pub use crate::options::{WorkerOptions, WorkerOptionsBuilder, worker_options_builder};
pub use crate::registry::WorkflowDefinitions;
pub use crate::worker::Worker;
pub use runtime::Runtime;
pub use temporalio_workflow::{
    ActivityCancellationType, ActivityCloseTimeouts, ActivityOptions, BaseWorkflowContext,
    CancellableFuture, CancellableFutureWithReason, ChildWorkflowCancellationType,
    ChildWorkflowOptions, ContinueAsNewOptions, ExternalWorkflowHandle, LocalActivityOptions,
    MemoValue, ParentClosePolicy, SignalWorkflowOptions, StartChildWorkflowExecutionFailedCause,
    StartChildWorkflowOutput, StartedChildWorkflow, SyncWorkflowContext, TimerOptions, TimerResult,
    VersioningIntent, VersioningOverride, WaitConditionOptions, WorkflowCancellationError,
    WorkflowCancellationToken, WorkflowContext, WorkflowContextFuture, WorkflowContextKey,
    WorkflowContextView, WorkflowIdReusePolicy, WorkflowRandomValue, WorkflowResult,
    WorkflowTermination,
};

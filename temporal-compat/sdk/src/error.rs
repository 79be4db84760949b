//! Error types of the SDK surface: runtime creation, worker creation and running, and the
//! re-exported workflow/activity error types of Temporal's authoring crates.

pub use crate::registry::WorkflowRegistrationError;
pub use temporalio_common_wasm::error::{
    ActivityExecutionError, ApplicationErrorCategory, ApplicationFailure,
    CancelExternalWorkflowError, ChildWorkflowExecutionError, ChildWorkflowStartError,
    OutgoingActivityError, OutgoingError, OutgoingWorkflowError, RetryState, TimeoutType,
    WorkflowSignalError,
};

/// Errors that can occur while creating a [`crate::Runtime`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The runtime could not be initialized.
    #[error("runtime initialization failed: {0}")]
    Initialization(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// No tokio runtime is active on the calling thread.
    #[error("no Tokio runtime is active on the current thread")]
    NoCurrentTokioRuntime,
}

/// Errors found while validating a worker before it starts claiming work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerValidationError {
    /// The namespace's system database could not be reached or prepared.
    #[error("namespace {namespace} could not be opened: {source}")]
    NamespaceDescribeError {
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
        /// The namespace.
        namespace: String,
    },
}

/// Errors that can occur while creating a [`crate::Worker`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerCreateError {
    /// The options are invalid or ask for something this implementation cannot honour.
    #[error("worker initialization failed: {0}")]
    Initialization(#[source] anyhow::Error),
}

/// Errors that can occur while running a [`crate::Worker`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerRunError {
    /// Validation failed before the worker started claiming work.
    #[error("worker validation failed: {0}")]
    Validation(#[source] WorkerValidationError),
    /// The worker cannot continue.
    #[error("{message}")]
    Fatal {
        /// What could not continue.
        message: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl WorkerRunError {
    pub(crate) fn fatal(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Fatal {
            message: message.into(),
            source: source.into(),
        }
    }
}

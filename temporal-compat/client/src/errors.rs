//! The client's error types. Names and variants follow `temporalio-client` 1.1.1 so that user code
//! matching on them keeps compiling; where upstream carries a gRPC status, these carry a
//! [`tonic::Status`] built from what Postgres said.

use temporalio_common_wasm::data_converters::PayloadConversionError;
use temporalio_common_wasm::error::IncomingError;
use temporalio_protos::temporal::api::failure::v1::Failure;

use crate::protocol::ProtocolError;
use crate::workflow_handle::{WorkflowExecutionStatus, WorkflowResultDetails};

/// Errors of [`crate::Connection::connect`].
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum ClientConnectError {
    /// The target is not a Postgres URL.
    #[error("Invalid URI: {0}")]
    InvalidUri(String),
    /// An option was set that this Postgres-backed client cannot honour.
    #[error("Invalid client configuration: {0}")]
    InvalidConfig(String),
    /// Postgres could not be reached (or refused the credentials).
    #[error("Cannot connect to the Postgres database at {target}: {reason}")]
    DatabaseUnreachable {
        /// The target, without password.
        target: String,
        /// What the driver said.
        reason: String,
    },
    /// The namespace's system database could not be opened.
    #[error("Cannot open the system database: {0}")]
    SystemDatabase(#[from] ProtocolError),
}

impl From<ClientNewError> for ClientConnectError {
    fn from(e: ClientNewError) -> Self {
        match e {
            ClientNewError::InvalidNamespace(p) => ClientConnectError::SystemDatabase(p),
        }
    }
}

/// Errors of [`crate::Client::new`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientNewError {
    /// The namespace cannot be mapped to a Postgres schema.
    #[error(transparent)]
    InvalidNamespace(ProtocolError),
}

/// Errors starting a workflow.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum WorkflowStartError {
    /// A workflow with this id is running (or the reuse policy forbids a new run).
    #[error("Workflow already started with run ID: {run_id:?}")]
    AlreadyStarted {
        /// Run id of the run that blocks the start.
        run_id: Option<String>,
        /// Status describing the conflict (code `AlreadyExists`).
        #[source]
        source: tonic::Status,
    },
    /// The input could not be converted to payloads.
    #[error("Failed to serialize workflow input: {0}")]
    PayloadConversion(#[from] PayloadConversionError),
    /// The database failed, or the request was refused (code `InvalidArgument` for options this
    /// client cannot honour).
    #[error("Server error: {0}")]
    Rpc(#[from] tonic::Status),
}

/// Errors of [`crate::WorkflowHandle::query`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowQueryError {
    /// No such workflow.
    #[error("Workflow not found")]
    NotFound(#[source] tonic::Status),
    /// The reject condition matched the workflow status.
    #[error("Query rejected: workflow status {status:?}")]
    Rejected {
        /// The workflow status.
        status: Option<WorkflowExecutionStatus>,
    },
    /// Payload conversion failed.
    #[error("Payload conversion error: {0}")]
    PayloadConversion(#[from] PayloadConversionError),
    /// The database failed, the query failed in the workflow, or no worker answered in time.
    #[error("Server error: {0}")]
    Rpc(tonic::Status),
    /// Other errors.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

/// Errors of updates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowUpdateError {
    /// No such workflow (or it closed before the update completed).
    #[error("Workflow not found")]
    NotFound(#[source] tonic::Status),
    /// The update was rejected or its handler failed.
    #[error("Update failed: {0:?}")]
    Failed(Box<Failure>),
    /// Payload conversion failed.
    #[error("Payload conversion error: {0}")]
    PayloadConversion(#[from] PayloadConversionError),
    /// The database failed, or the wait ran out of time.
    #[error("Server error: {0}")]
    Rpc(tonic::Status),
    /// Other errors.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

/// Errors of [`crate::WorkflowHandle::get_result`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowGetResultError {
    /// The workflow failed.
    #[error("Workflow failed: {0}")]
    Failed(#[source] Box<IncomingError>),
    /// The workflow was cancelled.
    #[error("Workflow cancelled")]
    Cancelled {
        /// Cancellation details.
        details: WorkflowResultDetails,
    },
    /// The workflow was terminated.
    #[error("Workflow terminated")]
    Terminated {
        /// Termination details.
        details: WorkflowResultDetails,
    },
    /// The workflow timed out.
    #[error("Workflow timed out")]
    TimedOut,
    /// The workflow continued as new (only with `follow_runs = false`).
    #[error("Workflow continued as new")]
    ContinuedAsNew,
    /// No such workflow.
    #[error("Workflow not found")]
    NotFound(#[source] tonic::Status),
    /// The result (or a stored value) could not be decoded.
    #[error("Payload conversion error: {0}")]
    PayloadConversion(#[from] PayloadConversionError),
    /// The database failed, or the wait ran out of time.
    #[error("Server error: {0}")]
    Rpc(tonic::Status),
    /// Other errors.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

impl From<WorkflowInteractionError> for WorkflowGetResultError {
    fn from(err: WorkflowInteractionError) -> Self {
        match err {
            WorkflowInteractionError::NotFound(s) => Self::NotFound(s),
            WorkflowInteractionError::PayloadConversion(e) => Self::PayloadConversion(e),
            WorkflowInteractionError::Rpc(s) => Self::Rpc(s),
            WorkflowInteractionError::Other(e) => Self::Other(e),
        }
    }
}

impl WorkflowGetResultError {
    /// Whether this is a workflow outcome (failed, cancelled, terminated, timed out, continued
    /// as new) rather than an infrastructure error.
    pub fn is_workflow_outcome(&self) -> bool {
        matches!(
            self,
            Self::Failed(_)
                | Self::Cancelled { .. }
                | Self::Terminated { .. }
                | Self::TimedOut
                | Self::ContinuedAsNew
        )
    }
}

/// Errors of client methods without a more specific error type.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// Payload conversion failed.
    #[error("Payload conversion error: {0}")]
    PayloadConversion(#[from] PayloadConversionError),
    /// The database failed.
    #[error("Server error: {0}")]
    Rpc(#[from] tonic::Status),
}

/// Errors of handle operations (signal, cancel, terminate, describe).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowInteractionError {
    /// No such workflow, or it is already closed.
    #[error("Workflow not found")]
    NotFound(#[source] tonic::Status),
    /// Payload conversion failed.
    #[error("Payload conversion error: {0}")]
    PayloadConversion(#[from] PayloadConversionError),
    /// The database failed.
    #[error("Server error: {0}")]
    Rpc(tonic::Status),
    /// Other errors.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

// ------------------------------------------------------------------------------------------
// Mapping database/protocol failures onto the upstream shapes.
// ------------------------------------------------------------------------------------------

/// How a protocol failure surfaces: a status (database trouble, unknown run) or a payload
/// conversion error (a stored value that does not decode).
pub(crate) enum Surface {
    NotFound(tonic::Status),
    Status(tonic::Status),
    Payload(PayloadConversionError),
}

pub(crate) fn classify(e: ProtocolError) -> Surface {
    match e {
        ProtocolError::Database(dbos_core::Error::UnknownRun(run)) => Surface::NotFound(
            tonic::Status::not_found(format!("workflow run `{run}` not found")),
        ),
        ProtocolError::Database(db) => Surface::Status(db_status(&db)),
        e @ ProtocolError::Undecodable { .. } => {
            Surface::Payload(PayloadConversionError::EncodingError(Box::new(e)))
        }
        e @ (ProtocolError::InvalidNamespace { .. } | ProtocolError::InvalidWorkflowId { .. }) => {
            Surface::Status(tonic::Status::invalid_argument(e.to_string()))
        }
        e => Surface::Status(tonic::Status::internal(e.to_string())),
    }
}

/// A database error as a status: transient ones are `Unavailable`, bad names
/// `InvalidArgument`, the rest `Internal`.
pub(crate) fn db_status(e: &dbos_core::Error) -> tonic::Status {
    match e {
        dbos_core::Error::UnknownRun(run) => {
            tonic::Status::not_found(format!("workflow run `{run}` not found"))
        }
        dbos_core::Error::InvalidName { .. } | dbos_core::Error::ValueTooLarge { .. } => {
            tonic::Status::invalid_argument(e.to_string())
        }
        dbos_core::Error::Timeout(_) => tonic::Status::deadline_exceeded(e.to_string()),
        e if e.is_transient() => tonic::Status::unavailable(e.to_string()),
        e => tonic::Status::internal(e.to_string()),
    }
}

/// `From<ProtocolError>` and `From<dbos_core::Error>` for error types with `Rpc` and
/// `PayloadConversion` variants: with a `NotFound` variant, unknown runs surface there;
/// after `no_not_found:`, they are a plain `Rpc` status.
macro_rules! from_protocol {
    (no_not_found: $($t:ty),*) => {$(
        impl From<$crate::protocol::ProtocolError> for $t {
            fn from(e: $crate::protocol::ProtocolError) -> Self {
                match $crate::errors::classify(e) {
                    $crate::errors::Surface::NotFound(s) | $crate::errors::Surface::Status(s) => {
                        Self::Rpc(s)
                    }
                    $crate::errors::Surface::Payload(p) => Self::PayloadConversion(p),
                }
            }
        }
        $crate::errors::from_protocol!(@db $t);
    )*};
    (@db $t:ty) => {
        impl From<dbos_core::Error> for $t {
            fn from(e: dbos_core::Error) -> Self {
                $crate::protocol::ProtocolError::from(e).into()
            }
        }
    };
    ($($t:ty),*) => {$(
        impl From<$crate::protocol::ProtocolError> for $t {
            fn from(e: $crate::protocol::ProtocolError) -> Self {
                match $crate::errors::classify(e) {
                    $crate::errors::Surface::NotFound(s) => Self::NotFound(s),
                    $crate::errors::Surface::Status(s) => Self::Rpc(s),
                    $crate::errors::Surface::Payload(p) => Self::PayloadConversion(p),
                }
            }
        }
        $crate::errors::from_protocol!(@db $t);
    )*};
}
pub(crate) use from_protocol;

from_protocol!(
    WorkflowGetResultError,
    WorkflowInteractionError,
    WorkflowQueryError,
    WorkflowUpdateError
);
from_protocol!(no_not_found: WorkflowStartError, ClientError);

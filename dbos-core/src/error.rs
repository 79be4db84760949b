//! Typed errors of the system database, and the classification that decides what is retried.

use std::time::Duration;

/// Everything that can go wrong talking to the system database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The run does not exist.
    #[error("workflow run `{0}` does not exist")]
    UnknownRun(String),
    /// A name (schema, queue, workflow, topic, key, id) is empty, too long or has forbidden characters.
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidName {
        /// Which kind of name it is.
        what: &'static str,
        /// The offending value (truncated when very long).
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A value is larger than the configured limit.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    ValueTooLarge {
        /// Which value it is.
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A stored value could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Undecodable {
        /// Which value it is.
        what: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// A checkpoint already exists at this position with different content (a nondeterministic
    /// or concurrent writer).
    #[error("checkpoint {function_id} of run `{workflow_id}` already holds a different value")]
    CheckpointConflict {
        /// The run.
        workflow_id: String,
        /// The position.
        function_id: i32,
    },
    /// The run is not in a state that allows the operation.
    #[error("run `{workflow_id}` is {status}: {detail}")]
    WrongState {
        /// The run.
        workflow_id: String,
        /// Its current status.
        status: String,
        /// What was attempted.
        detail: &'static str,
    },
    /// A message to be consumed was already consumed by someone else.
    #[error("message `{0}` was already consumed")]
    AlreadyConsumed(String),
    /// The deduplication id is in use by another active run of the queue.
    #[error("deduplication id `{deduplication_id}` is already used on queue `{queue}`")]
    Duplicated {
        /// The queue.
        queue: String,
        /// The deduplication id.
        deduplication_id: String,
    },
    /// Waiting ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The database refused or failed the operation.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the schema failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The system database handle was shut down.
    #[error("the system database was shut down")]
    Shutdown,
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the failure is a lost or refused connection, or a transaction the server asked
    /// to retry: an idempotent operation may be run again.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(e) => is_transient_sqlx(e),
            _ => false,
        }
    }
}

/// Classifies a driver error: connection-class SQLSTATEs (08xxx), server shutdown/termination
/// (57P01..57P03), serialization failures and deadlocks (40001, 40P01), pool timeouts and I/O.
pub(crate) fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => {
                code.starts_with("08")
                    || matches!(
                        code.as_ref(),
                        "57P01" | "57P02" | "57P03" | "40001" | "40P01"
                    )
            }
            None => false,
        },
        _ => false,
    }
}

/// The SQLSTATE of a database error, if any.
pub(crate) fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

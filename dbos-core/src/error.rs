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
    /// The run is not PENDING under the writing executor (decided or taken elsewhere), so a
    /// write that closes it was not made.
    #[error("run `{0}` is not pending under this executor")]
    NotPending(String),
    /// A run to be created only while its parent is PENDING was not: the parent has closed
    /// (or was never PENDING), so nothing was created.
    #[error("parent run `{0}` is not pending; the child run was not created")]
    ParentNotPending(String),
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
    /// The schedule does not exist.
    #[error("schedule `{0}` does not exist")]
    UnknownSchedule(String),
    /// A schedule with this id exists already.
    #[error("schedule `{0}` already exists")]
    ScheduleExists(String),
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

    /// Whether the failure is the loss of the connection itself (socket closed, backend
    /// terminated by the administrator or a crash): the connection is discarded and a retry on
    /// another one may succeed at once.
    pub fn is_connection_loss(&self) -> bool {
        match self {
            Error::Database(e) => is_connection_loss_sqlx(e),
            _ => false,
        }
    }
}

/// Classifies a driver error: connection-class SQLSTATEs (08xxx), server shutdown/termination
/// (57P01..57P03), too many connections (53300), serialization failures and deadlocks (40001,
/// 40P01), pool timeouts and I/O.
pub(crate) fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => {
                code.starts_with("08")
                    || matches!(
                        code.as_ref(),
                        "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
                    )
            }
            None => false,
        },
        _ => false,
    }
}

/// The subset of [`is_transient_sqlx`] that means "this connection is gone".
pub(crate) fn is_connection_loss_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02"),
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

/// The DETAIL field of a Postgres error, if any.
pub(crate) fn detail(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|p| p.detail())
            .map(str::to_owned),
        _ => None,
    }
}

/// Maps a foreign-key violation (23503) on a run-owned table to [`Error::UnknownRun`]; every
/// other error stays a database error.
pub(crate) fn unknown_run_on_fk(e: sqlx::Error, workflow_id: &str) -> Error {
    if sqlstate(&e).as_deref() == Some(FOREIGN_KEY_VIOLATION) {
        Error::UnknownRun(workflow_id.to_owned())
    } else {
        Error::Database(e)
    }
}

/// SQLSTATE of a foreign-key violation.
pub(crate) const FOREIGN_KEY_VIOLATION: &str = "23503";

/// SQLSTATE raised by `dbosify_abort` in a multi-part write when the checkpoint position is
/// already taken: the whole statement is rolled back and the caller inspects the stored row.
pub(crate) const CHECKPOINT_EXISTS: &str = "DBX01";

/// SQLSTATE raised by `dbosify_abort` when a message to be consumed was consumed already (its
/// id is in the DETAIL field); the whole statement is rolled back.
pub(crate) const MESSAGE_CONSUMED: &str = "DBX02";

/// SQLSTATE raised by `dbosify_abort` when a write that closes a run finds it not PENDING under
/// the writing executor; the whole statement is rolled back.
pub(crate) const RUN_NOT_PENDING: &str = "DBX03";

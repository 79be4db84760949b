//! # dbos-core
//!
//! DBOS-style durable execution on Postgres, for Rust, on tokio and sqlx. It knows nothing of
//! Temporal: it stores *runs* (rows of `workflow_status`), their *checkpoints*
//! (`operation_outputs`), *messages* sent to them (`notifications`), *events* they publish
//! (`workflow_events`), and the *queues* and *executors* that run them. The schema is DBOS
//! Transact's for the tables it shares with DBOS; see `migrations/`.
//!
//! One [`SystemDatabase`] per process holds the pool and the process's single LISTEN connection.
//! Wake-ups (work enqueued, message sent, event set, run finished) travel by LISTEN/NOTIFY as
//! hints; every waiter re-checks the database and falls back to slow polling, so a lost
//! notification only delays, never loses, a wake-up.
//!
//! Invariants:
//! - a run's outcome is recorded only while it is `PENDING` (and, when given, held by the
//!   recording executor); otherwise whoever decided it first wins;
//! - a checkpoint write retried after a lost acknowledgement is recognised as the same write;
//! - messages consumed by a step are marked consumed in the same transaction as its checkpoint;
//! - idempotent operations retry transparently across dropped connections.

mod checkpoints;
mod db;
mod error;
mod events;
mod executors;
mod inbox_ops;
mod management;
mod messages;
mod migrate;
mod notifier;
mod queues;
mod schedules;
mod timers;
mod workflows;

#[cfg(feature = "testing")]
pub mod testing;

pub use checkpoints::{Checkpoint, StepWrite};
pub use db::{Config, DEFAULT_APPLICATION_NAME, SystemDatabase, now_ms, validate_schema_name};
pub use error::{Error, Result};
pub use executors::{DEFAULT_LEASE, ExecutorHandle, ExecutorOptions};
pub use management::{FilterValue, ListFilter, RunFilter};
pub use messages::{Message, SendIfOpen};
pub use migrate::SCHEMA_VERSION;
pub use notifier::{Mark, NotifierStats, Waiter, WakeKey};
pub use queues::{QUEUE_CONFIG_TTL, QueueConfig, RateLimit, WorkWaiter};
pub use schedules::{
    Evaluated, NewSchedule, ScheduleChange, ScheduleRow, ScheduleTarget, ScheduleWakeup,
};
pub use timers::sleep_until_ms;
pub use workflows::{
    ClaimFacts, CompleteResult, EnqueueRequest, Enqueued, Outcome, RunState, WorkflowStatus,
};

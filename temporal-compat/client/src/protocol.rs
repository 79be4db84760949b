//! The wire conventions shared by the client (`temporal-compat-client`) and the worker
//! (`temporal-compat`). Both sides meet only in Postgres, so everything either of them writes for
//! the other is defined here, once. Not part of the user-facing API.
//!
//! # Summary
//!
//! **Namespace → schema.** Namespace `N` lives in Postgres schema `dbosify_<n>`, where `<n>` is `N`
//! lower-cased with `-` and `.` mapped to `_` ([`schema_for_namespace`]). One [`SystemDatabase`]
//! per `(url, schema)` per process, shared by every client and worker of the process
//! ([`system_database`]).
//!
//! **Runs.** One Temporal run = one DBOS workflow (`workflow_status` row). The first run of workflow
//! id `W` has run id `W`; later runs (continue-as-new, retries, cron, and new starts reusing a
//! closed id) are `W--r1`, `W--r2`, … ([`run_id`], [`parse_run_id`]). Run indexes are dense: run
//! `n + 1` is only ever created after run `n` exists, so the latest run is found by probing
//! ([`latest_run`]). User workflow ids may not contain `--r` ([`validate_workflow_id`]).
//! DBOS workflow name = Temporal workflow type; DBOS queue = task queue.
//!
//! **Payloads.** `workflow_status.inputs`, `.output` (on SUCCESS), and every payload list inside
//! messages and events use the JSON form of [`encode_payloads`]: an array of
//! `{"metadata": {key: base64}, "data": base64}` (plus `"external_sizes"` only when the proto
//! carries external payload details). The run's `serialization` label is [`SERIALIZATION`]
//! (`temporal_payloads`). Payloads are stored as the client's/worker's data converter produced
//! them (after the codec).
//!
//! **Failures.** A `temporal.api.failure.v1.Failure` is stored as its proto3 JSON
//! ([`encode_failure`]).
//!
//! **Terminal statuses** ([`TerminalOutcome`]):
//!
//! | Temporal status | DBOS status | `output` / `error` column |
//! |---|---|---|
//! | COMPLETED | `SUCCESS` | `output` = payloads JSON |
//! | FAILED | `ERROR` | `error` = `{"kind":"failed","failure":{…},"next_run_id":…}` |
//! | CANCELED | `ERROR` | `error` = `{"kind":"canceled","details":[…]}` |
//! | CONTINUED_AS_NEW | `ERROR` | `error` = `{"kind":"continued_as_new","next_run_id":"W--r{n+1}"}` |
//! | TIMED_OUT | `ERROR` | `error` = `{"kind":"timed_out","next_run_id":…}` |
//! | TERMINATED | `CANCELLED` (dbos-core `cancel`) | `error` = `{"kind":"terminated","reason":…,"details":[…],"identity":…}`; any other text (a DBOS-native cancel) is the reason |
//!
//! `next_run_id` on FAILED/TIMED_OUT names the retry run (or, when the retry policy is done, the
//! next cron run); a COMPLETED run followed by a cron run names it in the attributes key
//! `next_run_id` (merged *before* the completion is recorded).
//! PENDING/ENQUEUED/DELAYED are RUNNING; `MAX_RECOVERY_ATTEMPTS_EXCEEDED` is RUNNING ("stuck").
//!
//! Ordering rule for the worker: a run that continues (CAN, retry, cron) **enqueues the next run
//! first, then records its own outcome** naming it; if recording loses
//! ([`dbos_core::CompleteResult::AlreadyDecided`]: terminated meanwhile), it cancels the next run.
//! So a client never sees a continuing run closed without its successor.
//!
//! **Inbox.** Signals, updates and cancel requests go to the destination run's inbox on ONE topic,
//! [`INBOX_TOPIC`], in send order, as [`InboxMessage`] JSON (`{"kind":"signal"|"update"|"cancel",…}`).
//! Queries never enter history: they go on [`QUERY_TOPIC`] as [`QueryRequest`] JSON.
//! Idempotency keys: [`signal_idempotency_key`], [`update_idempotency_key`],
//! [`cancel_idempotency_key`] (an update id is idempotent per run).
//!
//! **Replies** are events set on the run the request was sent to:
//! [`update_accepted_key`] → [`UpdateAdmission`] JSON (accepted, or rejected with a failure; a
//! rejection also sets the completion key with the same failure), [`update_completed_key`] →
//! [`UpdateOutcome`] JSON, [`query_answer_key`] → [`QueryAnswer`] JSON.
//!
//! **Queries on closed runs**: the client posts the [`QueryRequest`] to the closed run's
//! [`QUERY_TOPIC`] as usual and publishes the hint [`closed_run_query_wake`] of the run's task
//! queue; a worker of that queue claims the request, replays the run, answers on
//! [`query_answer_key`].
//!
//! **Schedules.** One row of `dbosify_schedules` per schedule: `definition` holds the
//! protobuf-encoded `temporal.api.schedule.v1.Schedule` (base64), `state` the counters and
//! recent actions; a scheduled start is an ordinary first run named
//! `<action workflow id>-<nominal time, RFC 3339 seconds>`. The layout and the one evaluation
//! that fires, triggers and updates them are in `schedules` (module `engine`).
//!
//! **Attributes.** `workflow_status.attributes` holds [`RunAttributes`] JSON: workflow id/type, task
//! queue, chain info, search attributes (`sa`: payload form, lossless; `sav`: plain JSON values for
//! querying), `memo`, `header`, retry policy, timeouts, priority, summaries, and for children the
//! parent run and parent close policy.
//!
//! **Policies** (cron, deadlines, parent close) are in [`crate::policies`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use dbos_core::{Config, EnqueueRequest, Outcome, RunState, SystemDatabase, WorkflowStatus};
use serde::{Deserialize, Serialize};
use temporalio_protos::temporal::api::common::v1::Payload;
use temporalio_protos::temporal::api::common::v1::payload::ExternalPayloadDetails;
use temporalio_protos::temporal::api::enums::v1::WorkflowExecutionStatus;
use temporalio_protos::temporal::api::failure::v1::Failure;
use tracing::debug;

/// The `serialization` label of runs whose inputs/outputs use [`encode_payloads`].
pub const SERIALIZATION: &str = "temporal_payloads";
/// Separator between a workflow id and a run index (`W--r3`). Reserved in user workflow ids.
pub const RUN_SEPARATOR: &str = "--r";
/// Prefix of every namespace schema.
pub const SCHEMA_PREFIX: &str = "dbosify_";
/// The inbox topic of signals, updates and cancel requests (one ordered topic per run).
pub const INBOX_TOPIC: &str = "__temporal_inbox";
/// The topic of query requests (never part of history).
pub const QUERY_TOPIC: &str = "__temporal_query";
/// Version of the attribute layout written in [`RunAttributes::protocol`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Everything that can be wrong with values crossing the client/worker boundary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The namespace cannot be mapped to a Postgres schema.
    #[error(
        "namespace `{namespace}` cannot be used: it maps to schema `{schema}`, which is refused ({reason}); \
         use letters, digits, `_`, `-` and `.`, at most {max} characters",
        max = 48 - SCHEMA_PREFIX.len()
    )]
    InvalidNamespace {
        /// The namespace.
        namespace: String,
        /// The schema it mapped to.
        schema: String,
        /// Why the schema was refused.
        reason: String,
    },
    /// A user workflow id is not acceptable.
    #[error("invalid workflow id `{id}`: {reason}")]
    InvalidWorkflowId {
        /// The id.
        id: String,
        /// Why.
        reason: String,
    },
    /// A stored value could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Undecodable {
        /// What was being decoded (e.g. "workflow output of run `W`").
        what: String,
        /// What the decoder said.
        reason: String,
    },
    /// The system database failed.
    #[error(transparent)]
    Database(#[from] dbos_core::Error),
    /// An internal task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias of this module.
pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;

fn undecodable(what: impl Into<String>, reason: impl ToString) -> ProtocolError {
    ProtocolError::Undecodable {
        what: what.into(),
        reason: reason.to_string(),
    }
}

// ------------------------------------------------------------------------------------------
// Namespaces and the shared system database
// ------------------------------------------------------------------------------------------

/// The Postgres schema of a namespace: `dbosify_<ns>`, lower-cased, `-` and `.` mapped to `_`.
pub fn schema_for_namespace(namespace: &str) -> Result<String> {
    let mapped: String = namespace
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    let schema = format!("{SCHEMA_PREFIX}{mapped}");
    let refuse = |reason: String| ProtocolError::InvalidNamespace {
        namespace: namespace.to_string(),
        schema: schema.clone(),
        reason,
    };
    if namespace.is_empty() {
        return Err(refuse("the namespace is empty".into()));
    }
    dbos_core::validate_schema_name(&schema).map_err(|e| refuse(e.to_string()))?;
    Ok(schema)
}

type DbCell = Arc<tokio::sync::OnceCell<SystemDatabase>>;

fn cache() -> &'static Mutex<HashMap<(String, String), DbCell>> {
    static CACHE: OnceLock<Mutex<HashMap<(String, String), DbCell>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The process's [`SystemDatabase`] for `(url, namespace)`: connected (and the schema applied)
/// on first use, then shared by every client and worker of the process. Concurrent first calls
/// connect once; a failed connect is retried by the next call.
///
/// The handle's pool and listener live on the tokio runtime of the first call.
pub async fn system_database(url: &str, namespace: &str) -> Result<SystemDatabase> {
    let schema = schema_for_namespace(namespace)?;
    let cell = {
        let mut map = cache().lock().unwrap_or_else(|p| p.into_inner());
        map.entry((url.to_string(), schema.clone()))
            .or_default()
            .clone()
    };
    let config = Config::new(url, schema.clone());
    let db = cell.get_or_try_init(|| connect_detached(config)).await?;
    Ok(db.clone())
}

/// Connects on a blocking-pool thread that drives the future with the runtime's handle.
///
/// `SystemDatabase::connect`'s future is not `Send` for every lifetime (an sqlx executor borrow
/// inside it), so awaiting it directly would make every client future `!Send` and unusable in
/// `tokio::spawn`. Driven this way, the pool and listener still live on the caller's runtime.
async fn connect_detached(config: Config) -> Result<SystemDatabase> {
    debug!(schema = %config.schema, "connecting the system database");
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(SystemDatabase::connect(config)))
        .await
        .map_err(|e| ProtocolError::Internal(format!("system database connect task failed: {e}")))?
        .map_err(ProtocolError::from)
}

// ------------------------------------------------------------------------------------------
// Run ids
// ------------------------------------------------------------------------------------------

/// The run id of run `index` of workflow id `workflow_id`: `W` for 0, `W--r{index}` after.
pub fn run_id(workflow_id: &str, index: u64) -> String {
    if index == 0 {
        workflow_id.to_string()
    } else {
        format!("{workflow_id}{RUN_SEPARATOR}{index}")
    }
}

/// Splits a run id into workflow id and run index. A suffix counts only if it is `--r` followed
/// by a canonical positive decimal (no sign, no leading zero); anything else is run 0 of an id
/// equal to the whole string.
pub fn parse_run_id(run_id: &str) -> (&str, u64) {
    if let Some(pos) = run_id.rfind(RUN_SEPARATOR) {
        let digits = &run_id[pos + RUN_SEPARATOR.len()..];
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if canonical
            && pos > 0
            && let Ok(n) = digits.parse::<u64>()
        {
            return (&run_id[..pos], n);
        }
    }
    (run_id, 0)
}

/// Checks a user-chosen workflow id: non-empty, at most 1000 bytes, no control characters, and
/// no `--r` (reserved for run ids).
pub fn validate_workflow_id(id: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(ProtocolError::InvalidWorkflowId {
            id: id.chars().take(120).collect(),
            reason: reason.to_string(),
        })
    };
    if id.is_empty() {
        return bad("must not be empty");
    }
    if id.len() > 1000 {
        return bad("must be at most 1000 bytes");
    }
    if id.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    if id.contains(RUN_SEPARATOR) {
        return bad(
            "must not contain `--r`: DBOSify reserves it for run ids (`<workflow id>--r<n>`)",
        );
    }
    if id.starts_with(ACTIVITY_RUN_PREFIX) {
        return bad(
            "must not start with `__temporal_activity/`: DBOSify reserves it for standalone activities",
        );
    }
    Ok(())
}

/// The newest run of `workflow_id` (highest index), or `None` when the id was never started.
///
/// Relies on run indexes being dense (`W`, `W--r1`, `W--r2`…: run `n` exists only if run
/// `n - 1` does). Each round is one statement probing a batch of indexes by primary key: the
/// first covers every chain of up to [`DENSE_PROBES`] runs, and longer chains narrow the gap
/// between the highest run found and the lowest index missing by a factor of
/// [`DENSE_PROBES`] per round.
pub async fn latest_run(db: &SystemDatabase, workflow_id: &str) -> Result<Option<WorkflowStatus>> {
    let mut probes: Vec<u64> = (0..=DENSE_PROBES)
        .chain((7..62).map(|k| 1u64 << k))
        .collect();
    // Highest index known to exist (with its row) and lowest index known to be missing.
    let mut found: Option<(u64, WorkflowStatus)> = None;
    let mut missing: Option<u64> = None;
    loop {
        let ids: Vec<String> = probes.iter().map(|&i| run_id(workflow_id, i)).collect();
        for status in db.statuses(&ids).await? {
            let (id, index) = parse_run_id(&status.workflow_id);
            if id != workflow_id || found.as_ref().is_some_and(|(f, _)| *f >= index) {
                continue;
            }
            found = Some((index, status));
        }
        let Some((lo, _)) = &found else {
            return Ok(None);
        };
        let lo = *lo;
        missing = probes
            .iter()
            .copied()
            .filter(|&i| i > lo)
            .chain(missing)
            .min();
        let Some(hi) = missing else {
            // Every probe exists: no realistic chain is this long; the highest probe is newest.
            return Ok(found.map(|(_, s)| s));
        };
        let gap = hi - lo - 1;
        if gap == 0 {
            return Ok(found.map(|(_, s)| s));
        }
        let step = gap.div_ceil(DENSE_PROBES).max(1);
        probes = (1..=DENSE_PROBES)
            .map(|k| lo + k * step)
            .take_while(|&i| i < hi)
            .collect();
    }
}

/// How many run indexes one round of [`latest_run`] probes densely.
const DENSE_PROBES: u64 = 64;

// ------------------------------------------------------------------------------------------
// Payload codec
// ------------------------------------------------------------------------------------------

/// The JSON form of one payload: metadata values and data in standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadJson {
    /// Metadata, values base64.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Data, base64.
    #[serde(default)]
    pub data: String,
    /// Sizes of externally stored payload parts, when any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_sizes: Vec<i64>,
}

impl From<&Payload> for PayloadJson {
    fn from(p: &Payload) -> Self {
        Self {
            metadata: p
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), B64.encode(v)))
                .collect(),
            data: B64.encode(&p.data),
            external_sizes: p.external_payloads.iter().map(|e| e.size_bytes).collect(),
        }
    }
}

impl PayloadJson {
    /// Back to a proto payload.
    pub fn to_payload(&self) -> std::result::Result<Payload, base64::DecodeError> {
        let mut metadata = HashMap::with_capacity(self.metadata.len());
        for (k, v) in &self.metadata {
            metadata.insert(k.clone(), B64.decode(v)?);
        }
        Ok(Payload {
            metadata,
            data: B64.decode(&self.data)?,
            external_payloads: self
                .external_sizes
                .iter()
                .map(|&size_bytes| ExternalPayloadDetails { size_bytes })
                .collect(),
        })
    }
}

fn payloads_to_json(payloads: &[Payload]) -> Vec<PayloadJson> {
    payloads.iter().map(PayloadJson::from).collect()
}

fn payloads_from_json(what: &str, json: &[PayloadJson]) -> Result<Vec<Payload>> {
    json.iter()
        .enumerate()
        .map(|(i, p)| {
            p.to_payload()
                .map_err(|e| undecodable(what, format!("payload {i}: bad base64: {e}")))
        })
        .collect()
}

/// Payloads as stored text (a JSON array of [`PayloadJson`]).
pub fn encode_payloads(payloads: &[Payload]) -> String {
    serde_json::to_string(&payloads_to_json(payloads)).unwrap_or_else(|_| "[]".to_string())
}

/// Stored text back to payloads; `what` names the value in the error.
pub fn decode_payloads(what: &str, text: &str) -> Result<Vec<Payload>> {
    let json: Vec<PayloadJson> = serde_json::from_str(text)
        .map_err(|e| undecodable(what, format!("not a `{SERIALIZATION}` JSON array: {e}")))?;
    payloads_from_json(what, &json)
}

/// A payload map (headers, memo, search attributes) as JSON.
pub fn encode_payload_map(map: &HashMap<String, Payload>) -> BTreeMap<String, PayloadJson> {
    map.iter()
        .map(|(k, v)| (k.clone(), PayloadJson::from(v)))
        .collect()
}

/// A JSON payload map back to protos.
pub fn decode_payload_map(
    what: &str,
    map: &BTreeMap<String, PayloadJson>,
) -> Result<HashMap<String, Payload>> {
    map.iter()
        .map(|(k, v)| {
            v.to_payload()
                .map(|p| (k.clone(), p))
                .map_err(|e| undecodable(what, format!("entry `{k}`: bad base64: {e}")))
        })
        .collect()
}

mod payload_vec {
    //! serde for `Vec<Payload>` through [`super::PayloadJson`].
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[Payload], s: S) -> Result<S::Ok, S::Error> {
        payloads_to_json(v).serialize(s)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Payload>, D::Error> {
        let json = Vec::<PayloadJson>::deserialize(d)?;
        payloads_from_json("payloads", &json).map_err(serde::de::Error::custom)
    }
}

mod payload_map {
    //! serde for `HashMap<String, Payload>` through [`super::PayloadJson`].
    use super::*;
    pub fn serialize<S: serde::Serializer>(
        v: &HashMap<String, Payload>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        encode_payload_map(v).serialize(s)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<HashMap<String, Payload>, D::Error> {
        let json = BTreeMap::<String, PayloadJson>::deserialize(d)?;
        decode_payload_map("payload map", &json).map_err(serde::de::Error::custom)
    }
}

// ------------------------------------------------------------------------------------------
// Failure codec and terminal outcomes
// ------------------------------------------------------------------------------------------

/// A failure as stored text (proto3 JSON).
pub fn encode_failure(failure: &Failure) -> String {
    serde_json::to_string(failure).unwrap_or_else(|e| {
        // Unreachable for well-formed protos; keep the message rather than lose everything.
        serde_json::json!({ "message": failure.message, "source": format!("unencodable failure: {e}") })
            .to_string()
    })
}

/// Stored text back to a failure; `what` names the value in the error.
pub fn decode_failure(what: &str, text: &str) -> Result<Failure> {
    serde_json::from_str(text).map_err(|e| undecodable(what, format!("not a Failure JSON: {e}")))
}

/// How a run ended, in Temporal's terms. See the module table for the stored forms.
#[allow(clippy::large_enum_variant)] // transient values; boxing would burden every caller
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TerminalOutcome {
    /// COMPLETED with the result payloads (stored as DBOS SUCCESS; never in the error column).
    Completed {
        /// The result.
        #[serde(with = "payload_vec")]
        result: Vec<Payload>,
    },
    /// FAILED.
    Failed {
        /// The failure.
        failure: Failure,
        /// The retry run, when the retry policy started one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_run_id: Option<String>,
    },
    /// CANCELED (cooperative cancellation completed).
    Canceled {
        /// Cancellation details.
        #[serde(default, with = "payload_vec")]
        details: Vec<Payload>,
    },
    /// CONTINUED_AS_NEW.
    ContinuedAsNew {
        /// The next run.
        next_run_id: String,
    },
    /// TIMED_OUT.
    TimedOut {
        /// The retry run, when the retry policy started one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_run_id: Option<String>,
    },
    /// TERMINATED (DBOS CANCELLED).
    Terminated {
        /// The reason given.
        #[serde(default)]
        reason: String,
        /// Details given.
        #[serde(default, with = "payload_vec")]
        details: Vec<Payload>,
        /// Who terminated it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
    },
}

impl TerminalOutcome {
    /// The Temporal status.
    pub fn status(&self) -> WorkflowExecutionStatus {
        match self {
            TerminalOutcome::Completed { .. } => WorkflowExecutionStatus::Completed,
            TerminalOutcome::Failed { .. } => WorkflowExecutionStatus::Failed,
            TerminalOutcome::Canceled { .. } => WorkflowExecutionStatus::Canceled,
            TerminalOutcome::ContinuedAsNew { .. } => WorkflowExecutionStatus::ContinuedAsNew,
            TerminalOutcome::TimedOut { .. } => WorkflowExecutionStatus::TimedOut,
            TerminalOutcome::Terminated { .. } => WorkflowExecutionStatus::Terminated,
        }
    }

    /// The run this one hands over to, if any (attribute-held cron links aside).
    pub fn next_run_id(&self) -> Option<&str> {
        match self {
            TerminalOutcome::Failed { next_run_id, .. }
            | TerminalOutcome::TimedOut { next_run_id } => next_run_id.as_deref(),
            TerminalOutcome::ContinuedAsNew { next_run_id } => Some(next_run_id),
            _ => None,
        }
    }

    /// The text stored in the `error` column (or the cancel reason) for non-COMPLETED outcomes.
    pub fn to_error_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }

    /// What dbos-core records: [`Outcome`] for `complete`. A TERMINATED outcome is recorded with
    /// `SystemDatabase::cancel(run, Some(reason))` instead; this returns `Outcome::Cancelled`
    /// carrying the same text for callers that need it.
    pub fn to_dbos(&self) -> Outcome {
        match self {
            TerminalOutcome::Completed { result } => Outcome::Success(encode_payloads(result)),
            TerminalOutcome::Terminated { .. } => Outcome::Cancelled(Some(self.to_error_text())),
            _ => Outcome::Error(self.to_error_text()),
        }
    }

    /// Reads the outcome of a run row; `Ok(None)` while the run is not finished (including
    /// `MAX_RECOVERY_ATTEMPTS_EXCEEDED`, which stays RUNNING in Temporal's terms).
    pub fn from_status(status: &WorkflowStatus) -> Result<Option<Self>> {
        let run = &status.workflow_id;
        match status.state {
            RunState::Enqueued
            | RunState::Delayed
            | RunState::Pending
            | RunState::MaxRecoveryAttemptsExceeded => Ok(None),
            RunState::Success => {
                let what = format!("workflow output of run `{run}`");
                let result = match status.output.as_deref() {
                    Some(text) => decode_payloads(&what, text)?,
                    None => Vec::new(),
                };
                Ok(Some(TerminalOutcome::Completed { result }))
            }
            RunState::Error => {
                let what = format!("workflow error of run `{run}`");
                let text = status
                    .error
                    .as_deref()
                    .ok_or_else(|| undecodable(&what, "the error column is empty"))?;
                let outcome: TerminalOutcome = serde_json::from_str(text)
                    .map_err(|e| undecodable(&what, format!("not a DBOSify outcome: {e}")))?;
                if matches!(
                    outcome,
                    TerminalOutcome::Completed { .. } | TerminalOutcome::Terminated { .. }
                ) {
                    return Err(undecodable(
                        &what,
                        "an ERROR run may not hold a completed/terminated outcome",
                    ));
                }
                Ok(Some(outcome))
            }
            RunState::Cancelled => {
                let text = status.error.as_deref().unwrap_or("");
                match serde_json::from_str::<TerminalOutcome>(text) {
                    Ok(t @ TerminalOutcome::Terminated { .. }) => Ok(Some(t)),
                    // A DBOS-native cancel (or a timeout by dbos-core): the text is the reason.
                    _ => Ok(Some(TerminalOutcome::Terminated {
                        reason: text.to_string(),
                        details: Vec::new(),
                        identity: None,
                    })),
                }
            }
        }
    }
}

/// The Temporal status of a run row (the dbosify-py mapping).
pub fn execution_status(status: &WorkflowStatus) -> Result<WorkflowExecutionStatus> {
    Ok(match TerminalOutcome::from_status(status)? {
        None => WorkflowExecutionStatus::Running,
        Some(o) => o.status(),
    })
}

// ------------------------------------------------------------------------------------------
// Inbox and replies
// ------------------------------------------------------------------------------------------

/// A signal sent to a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalRequest {
    /// Signal name.
    pub name: String,
    /// Input payloads.
    #[serde(default, with = "payload_vec")]
    pub payloads: Vec<Payload>,
    /// Headers.
    #[serde(default, with = "payload_map")]
    pub headers: HashMap<String, Payload>,
    /// Sender identity.
    #[serde(default)]
    pub identity: String,
    /// Request id (idempotency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// An update request sent to a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// Update id: idempotent per run.
    pub update_id: String,
    /// Update name.
    pub name: String,
    /// Input payloads.
    #[serde(default, with = "payload_vec")]
    pub payloads: Vec<Payload>,
    /// Headers.
    #[serde(default, with = "payload_map")]
    pub headers: HashMap<String, Payload>,
    /// Sender identity.
    #[serde(default)]
    pub identity: String,
}

/// A cancel request sent to a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// Reason given.
    #[serde(default)]
    pub reason: String,
    /// Sender identity.
    #[serde(default)]
    pub identity: String,
    /// Request id (idempotency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// A message of [`INBOX_TOPIC`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InboxMessage {
    /// A signal.
    Signal(SignalRequest),
    /// An update request.
    Update(UpdateRequest),
    /// A cancel request.
    Cancel(CancelRequest),
}

impl InboxMessage {
    /// The message body text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }

    /// Parses a message body.
    pub fn decode(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| undecodable("inbox message", e))
    }
}

/// A message of [`QUERY_TOPIC`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRequest {
    /// Query id: names the reply event.
    pub query_id: String,
    /// Query name.
    pub name: String,
    /// Input payloads.
    #[serde(default, with = "payload_vec")]
    pub payloads: Vec<Payload>,
    /// Headers.
    #[serde(default, with = "payload_map")]
    pub headers: HashMap<String, Payload>,
}

impl QueryRequest {
    /// The message body text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }

    /// Parses a message body.
    pub fn decode(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| undecodable("query request", e))
    }
}

/// Idempotency key of a signal with a request id, sent to `run_id`.
pub fn signal_idempotency_key(run_id: &str, request_id: &str) -> String {
    format!("{run_id}:signal:{request_id}")
}

/// Idempotency key of an update request sent to `run_id`.
pub fn update_idempotency_key(run_id: &str, update_id: &str) -> String {
    format!("{run_id}:update:{update_id}")
}

/// Idempotency key of a cancel request with a request id, sent to `run_id`.
pub fn cancel_idempotency_key(run_id: &str, request_id: &str) -> String {
    format!("{run_id}:cancel:{request_id}")
}

/// Event key of an update's admission verdict ([`UpdateAdmission`]).
pub fn update_accepted_key(update_id: &str) -> String {
    format!("__temporal_update_accepted:{update_id}")
}

/// Event key of an update's outcome ([`UpdateOutcome`]).
pub fn update_completed_key(update_id: &str) -> String {
    format!("__temporal_update_completed:{update_id}")
}

/// Event key of a query's answer ([`QueryAnswer`]).
pub fn query_answer_key(query_id: &str) -> String {
    format!("__temporal_query_answer:{query_id}")
}

/// The wake-up key (a [`dbos_core::WakeKey::Queue`] name) published after a query request is
/// posted to a CLOSED run of `task_queue`: every worker of that task queue listens on it, and one
/// of them claims the request, rebuilds the run by replay and answers it.
pub fn closed_run_query_wake(task_queue: &str) -> String {
    format!("__temporal_closed_query:{task_queue}")
}

/// The admission verdict of an update.
#[allow(clippy::large_enum_variant)] // transient values; boxing would burden every caller
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum UpdateAdmission {
    /// The validator accepted it (or there is none).
    Accepted,
    /// The validator rejected it (or no handler exists).
    Rejected {
        /// Why.
        failure: Failure,
    },
}

/// The outcome of an update.
#[allow(clippy::large_enum_variant)] // transient values; boxing would burden every caller
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateOutcome {
    /// The handler returned these payloads.
    Success(#[serde(with = "payload_vec")] Vec<Payload>),
    /// The handler failed, or the update was rejected.
    Failure(Failure),
}

/// The answer to a query.
#[allow(clippy::large_enum_variant)] // transient values; boxing would burden every caller
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryAnswer {
    /// The handler answered these payloads.
    Answer(#[serde(with = "payload_vec")] Vec<Payload>),
    /// The handler failed or no handler exists.
    Failure(Failure),
}

macro_rules! json_codec {
    ($($t:ty => $what:literal),* $(,)?) => {$(
        impl $t {
            /// The stored text.
            pub fn to_text(&self) -> String {
                serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
            }
            /// Parses the stored text.
            pub fn from_text(text: &str) -> Result<Self> {
                serde_json::from_str(text).map_err(|e| undecodable($what, e))
            }
        }
    )*};
}
json_codec!(UpdateAdmission => "update admission", UpdateOutcome => "update outcome", QueryAnswer => "query answer");

// ------------------------------------------------------------------------------------------
// Attributes
// ------------------------------------------------------------------------------------------

/// The `workflow_status.attributes` object of a run. Keys are stable; unknown keys are kept by
/// readers that round-trip ([`RunAttributes::extra`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RunAttributes {
    /// Layout version ([`PROTOCOL_VERSION`]).
    #[serde(default)]
    pub protocol: u32,
    /// The Temporal workflow id (the run id without its `--r{n}` suffix).
    pub workflow_id: String,
    /// The workflow type (also the DBOS workflow name).
    pub workflow_type: String,
    /// The task queue (also the DBOS queue).
    pub task_queue: String,
    /// First run of this execution chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_execution_run_id: Option<String>,
    /// The run this one continues (CAN, retry, cron).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continued_from_run_id: Option<String>,
    /// Workflow retry attempt, from 1.
    #[serde(default = "one")]
    pub attempt: u32,
    /// Who started it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identity: String,
    /// Search attributes, payload form (lossless).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sa: BTreeMap<String, PayloadJson>,
    /// Search attributes as plain JSON values (for filtering); `null` when not JSON-encoded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sav: BTreeMap<String, serde_json::Value>,
    /// Memo, payload form.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub memo: BTreeMap<String, PayloadJson>,
    /// Start headers, payload form.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub header: BTreeMap<String, PayloadJson>,
    /// Workflow retry policy (proto3 JSON of `temporal.api.common.v1.RetryPolicy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<serde_json::Value>,
    /// Execution timeout (whole chain), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_timeout_ms: Option<u64>,
    /// Absolute deadline of the whole chain, epoch ms (set at the first start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_deadline_ms: Option<i64>,
    /// Run timeout, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_timeout_ms: Option<u64>,
    /// Workflow task timeout, ms (recorded; has no effect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_timeout_ms: Option<u64>,
    /// Cron schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_schedule: Option<String>,
    /// Priority key (1 = highest), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_key: Option<u32>,
    /// Static summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_summary: Option<String>,
    /// Static details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_details: Option<String>,
    /// Parent workflow id (child workflows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_workflow_id: Option<String>,
    /// Parent run id (child workflows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// The cron successor of a COMPLETED run (merged before completion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_id: Option<String>,
    /// What happens to this child when its parent run closes: `terminate` (also when absent),
    /// `request_cancel` or `abandon` (see [`crate::policies::apply_parent_close_policy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_close_policy: Option<String>,
    /// Keys this version does not know, kept for round-trips.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn one() -> u32 {
    1
}

impl RunAttributes {
    /// Attributes with the required fields and defaults for the rest.
    pub fn new(
        workflow_id: impl Into<String>,
        workflow_type: impl Into<String>,
        task_queue: impl Into<String>,
    ) -> Self {
        Self {
            protocol: PROTOCOL_VERSION,
            workflow_id: workflow_id.into(),
            workflow_type: workflow_type.into(),
            task_queue: task_queue.into(),
            attempt: 1,
            ..Default::default()
        }
    }

    /// As the JSON object stored in `attributes`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|_| serde_json::json!({}))
    }

    /// From the stored JSON object.
    pub fn from_json(what: &str, value: &serde_json::Value) -> Result<Self> {
        serde_json::from_value(value.clone()).map_err(|e| undecodable(what, e))
    }

    /// Reads a run's attributes; rows written without them (not by DBOSify) get a minimal view
    /// derived from the row.
    pub fn of_run(status: &WorkflowStatus) -> Result<Self> {
        match &status.attributes {
            Some(v) => Self::from_json(&format!("attributes of run `{}`", status.workflow_id), v),
            None => Ok(Self::new(
                parse_run_id(&status.workflow_id).0,
                status.name.clone(),
                status.queue_name.clone().unwrap_or_default(),
            )),
        }
    }

    /// Sets the search attributes (payload form and plain values).
    pub fn set_search_attributes(&mut self, fields: &HashMap<String, Payload>) {
        self.sa = encode_payload_map(fields);
        self.sav = fields
            .iter()
            .map(|(k, p)| (k.clone(), plain_json_value(p)))
            .collect();
    }

    /// The search attributes as protos.
    pub fn search_attributes(&self) -> Result<HashMap<String, Payload>> {
        decode_payload_map("search attributes", &self.sa)
    }

    /// The memo as protos.
    pub fn memo(&self) -> Result<HashMap<String, Payload>> {
        decode_payload_map("memo", &self.memo)
    }

    /// The start header as protos.
    pub fn header(&self) -> Result<HashMap<String, Payload>> {
        decode_payload_map("header", &self.header)
    }
}

/// The JSON value of a `json/plain` payload; `null` otherwise.
pub fn plain_json_value(p: &Payload) -> serde_json::Value {
    let json = p
        .metadata
        .get("encoding")
        .is_some_and(|e| e.as_slice() == b"json/plain");
    if json {
        serde_json::from_slice(&p.data).unwrap_or(serde_json::Value::Null)
    } else {
        serde_json::Value::Null
    }
}

/// The enqueue request of a new run: name = workflow type, queue = task queue, inputs =
/// payloads, serialization label, attributes, priority (from the priority key; unset = 0).
pub fn new_run_request(
    run_id: &str,
    attributes: &RunAttributes,
    input: &[Payload],
) -> EnqueueRequest {
    let mut req = EnqueueRequest::new(
        run_id,
        attributes.workflow_type.clone(),
        attributes.task_queue.clone(),
        encode_payloads(input),
    );
    req.serialization = Some(SERIALIZATION.to_string());
    req.attributes = Some(attributes.to_json());
    req.priority = attributes
        .priority_key
        .map(|k| i32::try_from(k).unwrap_or(i32::MAX))
        .unwrap_or(0);
    req.parent_workflow_id = attributes.parent_run_id.clone();
    req
}

// ------------------------------------------------------------------------------------------
// Standalone activities and asynchronous activity completion
// ------------------------------------------------------------------------------------------

/// Prefix of the run ids of standalone activities: activity id `A` runs as DBOS workflow
/// `__temporal_activity/A` (then `__temporal_activity/A--r1`, …), apart from workflow ids.
/// Workflow ids may not start with it.
pub const ACTIVITY_RUN_PREFIX: &str = "__temporal_activity/";

/// The sequence number a standalone activity uses for its per-activity event keys
/// ([`heartbeat_key`], [`attempt_key`], …): its run holds exactly one activity.
pub const STANDALONE_SEQ: u32 = 1;

/// The DBOS run id of run `index` of standalone activity `activity_id`.
pub fn activity_run_id(activity_id: &str, index: u64) -> String {
    run_id(&activity_run_base(activity_id), index)
}

/// The run base (`__temporal_activity/A`) of standalone activity `activity_id`.
pub fn activity_run_base(activity_id: &str) -> String {
    format!("{ACTIVITY_RUN_PREFIX}{activity_id}")
}

/// Whether a run id names a standalone activity.
pub fn is_activity_run(run_id: &str) -> bool {
    run_id.starts_with(ACTIVITY_RUN_PREFIX)
}

/// The DBOS queue standalone activities of `task_queue` wait in. Apart from the workflow queue,
/// so a worker claims only what it registers (workflows, activities, or both).
pub fn activity_queue(task_queue: &str) -> String {
    format!("{ACTIVITY_RUN_PREFIX}{task_queue}")
}

/// Checks a standalone activity id: the rules of [`validate_workflow_id`].
pub fn validate_activity_id(id: &str) -> Result<()> {
    validate_workflow_id(id).map_err(|e| match e {
        ProtocolError::InvalidWorkflowId { id, reason } => ProtocolError::InvalidWorkflowId {
            id,
            reason: reason.replace("workflow", "activity"),
        },
        other => other,
    })
}

/// Event key of the last heartbeat details of activity `seq` of a run (payloads JSON).
pub fn heartbeat_key(seq: u32) -> String {
    format!("__temporal_activity:{seq}:heartbeat")
}

/// Event key of the time (epoch ms) at which the heartbeat recorded under [`heartbeat_key`] was
/// reported by the worker running activity `seq` (written with it, in one statement).
pub fn heartbeat_time_key(seq: u32) -> String {
    format!("__temporal_activity:{seq}:heartbeat_time")
}

/// Event key of the current attempt number of activity `seq` of a run.
pub fn attempt_key(seq: u32) -> String {
    format!("__temporal_activity:{seq}:attempt")
}

/// Event key set when activity `seq` of a run returned `WillCompleteAsync`: the attempt number
/// that waits for its asynchronous completion.
pub fn async_pending_key(seq: u32) -> String {
    format!("__temporal_activity:{seq}:async_pending")
}

/// Event key naming the sequence number of the activity with id `activity_id` that waits for
/// asynchronous completion (completion by workflow id + activity id).
pub fn async_activity_id_key(activity_id: &str) -> String {
    format!("__temporal_async_activity_id:{activity_id}")
}

/// Event key of the asynchronous outcome ([`AsyncOutcome`]) of attempt `attempt` of activity
/// `seq`. Written once: the first completion wins.
pub fn async_outcome_key(seq: u32, attempt: u32) -> String {
    format!("__temporal_activity:{seq}:async_outcome:{attempt}")
}

/// Event key of the time (epoch ms) of the last heartbeat sent through an async activity
/// handle; the worker waiting for the completion counts it against the heartbeat timeout.
pub fn async_heartbeat_key(seq: u32) -> String {
    format!("__temporal_activity:{seq}:async_heartbeat")
}

/// Event key set when cancellation of activity `seq` was requested (by its workflow, or by
/// `ActivityHandle::cancel` for a standalone activity); async heartbeats report it.
pub fn cancel_requested_key(seq: u32) -> String {
    format!("__temporal_activity:{seq}:cancel_requested")
}

/// An outcome delivered through an async activity handle.
#[allow(clippy::large_enum_variant)] // transient values; boxing would burden every caller
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AsyncOutcome {
    /// Completed with a result (none: the unit result).
    Completed {
        /// The result payloads.
        #[serde(default, with = "payload_vec")]
        result: Vec<Payload>,
    },
    /// Failed (subject to the retry policy).
    Failed {
        /// The failure.
        failure: Failure,
    },
    /// The activity acknowledged its cancellation.
    Canceled {
        /// Cancellation details.
        #[serde(default, with = "payload_vec")]
        details: Vec<Payload>,
    },
}

json_codec!(AsyncOutcome => "asynchronous activity outcome");

/// What a task token names: one attempt of one activity of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTokenParts {
    /// The run holding the activity (a workflow run or a standalone activity's run).
    pub run: String,
    /// The activity's sequence number in the run.
    pub seq: u32,
    /// The attempt.
    pub attempt: u32,
}

impl TaskTokenParts {
    /// The token bytes (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses token bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| {
            undecodable(
                "task token",
                format!("not a DBOSify activity task token: {e}"),
            )
        })
    }
}

/// What a standalone activity's run records beside [`RunAttributes`] (under key `activity`):
/// its presence marks the run as a standalone activity. `workflow_id` / `workflow_type` of the
/// attributes hold the activity id and type.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ActivityAttributes {
    /// Schedule-to-close timeout, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_to_close_ms: Option<u64>,
    /// Schedule-to-start timeout, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_to_start_ms: Option<u64>,
    /// Start-to-close timeout, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_to_close_ms: Option<u64>,
    /// Heartbeat timeout, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// Retry policy (proto3 JSON of `temporal.api.common.v1.RetryPolicy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<serde_json::Value>,
}

impl RunAttributes {
    /// The standalone activity part, when this run is a standalone activity.
    pub fn activity(&self) -> Option<ActivityAttributes> {
        self.extra
            .get("activity")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Marks the run as a standalone activity with these settings.
    pub fn set_activity(&mut self, activity: &ActivityAttributes) {
        self.extra.insert(
            "activity".to_string(),
            serde_json::to_value(activity).unwrap_or_else(|_| serde_json::json!({})),
        );
    }
}

/// How a standalone activity ended, stored in the `error` column of an ERROR row (the form of
/// [`TerminalOutcome`]: `{"kind": …}`); success is a SUCCESS row whose `output` holds the result
/// payloads, termination the [`TerminalOutcome::Terminated`] text of a CANCELLED row.
#[allow(clippy::large_enum_variant)] // transient values; boxing would burden every caller
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActivityEnd {
    /// FAILED: the activity's failure.
    Failed {
        /// The failure.
        failure: Failure,
    },
    /// CANCELED: the cancellation failure.
    Canceled {
        /// The failure (`CanceledFailureInfo`).
        failure: Failure,
    },
    /// TIMED_OUT: the timeout failure.
    TimedOut {
        /// The failure (`TimeoutFailureInfo`).
        failure: Failure,
    },
}

json_codec!(ActivityEnd => "standalone activity outcome");

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use temporalio_protos::temporal::api::failure::v1::{ApplicationFailureInfo, failure};

    fn payload(data: &[u8]) -> Payload {
        Payload {
            metadata: HashMap::from([
                ("encoding".to_string(), b"json/plain".to_vec()),
                ("x".to_string(), vec![0, 255, 10]),
            ]),
            data: data.to_vec(),
            external_payloads: vec![],
        }
    }

    #[test]
    fn schema_names() {
        assert_eq!(schema_for_namespace("default").unwrap(), "dbosify_default");
        assert_eq!(
            schema_for_namespace("My-App.prod").unwrap(),
            "dbosify_my_app_prod"
        );
        for bad in ["", "a b", "ns/x", "é", &"x".repeat(41)] {
            let e = schema_for_namespace(bad).unwrap_err();
            assert!(
                matches!(e, ProtocolError::InvalidNamespace { .. }),
                "{bad}: {e}"
            );
            assert!(e.to_string().contains("namespace"), "{e}");
        }
        assert!(schema_for_namespace(&"x".repeat(40)).is_ok());
    }

    #[test]
    fn run_ids() {
        assert_eq!(run_id("W", 0), "W");
        assert_eq!(run_id("W", 3), "W--r3");
        assert_eq!(parse_run_id("W"), ("W", 0));
        assert_eq!(parse_run_id("W--r3"), ("W", 3));
        assert_eq!(parse_run_id("W--r12"), ("W", 12));
        // Non-canonical suffixes are not run suffixes.
        assert_eq!(parse_run_id("W--r03"), ("W--r03", 0));
        assert_eq!(parse_run_id("W--r"), ("W--r", 0));
        assert_eq!(parse_run_id("W--r2_5"), ("W--r2_5", 0));
        assert_eq!(parse_run_id("--r2"), ("--r2", 0));
        assert_eq!(parse_run_id("W--r2--r5"), ("W--r2", 5));
        for i in [0u64, 1, 9, 10, 123456] {
            assert_eq!(parse_run_id(&run_id("a-b", i)), ("a-b", i));
        }
        assert!(validate_workflow_id("hello-world-workflow-id").is_ok());
        let e = validate_workflow_id("x--r1").unwrap_err();
        assert!(e.to_string().contains("--r"), "{e}");
        assert!(validate_workflow_id("").is_err());
        assert!(validate_workflow_id("a\nb").is_err());
        let e = validate_workflow_id("__temporal_activity/x").unwrap_err();
        assert!(e.to_string().contains("standalone activities"), "{e}");
        assert_eq!(activity_run_id("A", 0), "__temporal_activity/A");
        assert_eq!(activity_run_id("A", 2), "__temporal_activity/A--r2");
        assert!(is_activity_run(&activity_run_id("A", 1)));
        assert!(
            validate_activity_id("a--r1")
                .unwrap_err()
                .to_string()
                .contains("activity id")
        );
    }

    #[test]
    fn payload_round_trip() {
        let ps = vec![
            payload(b"\"hi\""),
            payload(&[0, 1, 2, 255]),
            Payload::default(),
        ];
        let text = encode_payloads(&ps);
        let back = decode_payloads("test", &text).unwrap();
        assert_eq!(back, ps);
        assert_eq!(decode_payloads("t", "[]").unwrap(), Vec::<Payload>::new());
        let mut ext = payload(b"1");
        ext.external_payloads = vec![ExternalPayloadDetails { size_bytes: 42 }];
        let back = decode_payloads("t", &encode_payloads(std::slice::from_ref(&ext))).unwrap();
        assert_eq!(back, vec![ext]);
        // Stable form.
        let v: serde_json::Value =
            serde_json::from_str(&encode_payloads(&[payload(b"1")])).unwrap();
        assert_eq!(v[0]["data"], "MQ==");
        assert_eq!(v[0]["metadata"]["encoding"], "anNvbi9wbGFpbg==");
    }

    #[test]
    fn payload_decode_errors_name_the_value() {
        let e = decode_payloads("workflow output of run `W`", "\"Hello\"").unwrap_err();
        assert!(e.to_string().contains("workflow output of run `W`"), "{e}");
        let e = decode_payloads("output", r#"[{"metadata":{},"data":"!!"}]"#).unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");
    }

    fn app_failure(msg: &str) -> Failure {
        Failure {
            message: msg.into(),
            source: "rust".into(),
            stack_trace: "at x".into(),
            cause: Some(Box::new(Failure {
                message: "root".into(),
                ..Default::default()
            })),
            failure_info: Some(failure::FailureInfo::ApplicationFailureInfo(
                ApplicationFailureInfo {
                    r#type: "MyErr".into(),
                    non_retryable: true,
                    details: Some(temporalio_protos::temporal::api::common::v1::Payloads {
                        payloads: vec![payload(b"7")],
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
    }

    #[test]
    fn failure_round_trip() {
        let f = app_failure("boom");
        let text = encode_failure(&f);
        assert_eq!(decode_failure("f", &text).unwrap(), f);
        assert!(decode_failure("the failure", "nope").is_err());
    }

    /// A `workflow_status` row of run `W` (type `wf`, queue `q`) for unit tests.
    pub(crate) fn row(
        state: RunState,
        output: Option<String>,
        error: Option<String>,
    ) -> WorkflowStatus {
        WorkflowStatus {
            workflow_id: "W".into(),
            state,
            name: "wf".into(),
            queue_name: Some("q".into()),
            executor_id: None,
            inputs: None,
            output,
            error,
            serialization: Some(SERIALIZATION.into()),
            created_at_ms: 0,
            updated_at_ms: 0,
            started_at_ms: None,
            completed_at_ms: None,
            recovery_attempts: 0,
            priority: 0,
            deduplication_id: None,
            timeout_ms: None,
            deadline_epoch_ms: None,
            parent_workflow_id: None,
            attributes: None,
            application_version: None,
            forked_from: None,
            delay_until_epoch_ms: None,
            claim_facts: None,
        }
    }

    #[test]
    fn terminal_outcomes_round_trip_through_dbos_columns() {
        let outcomes = vec![
            TerminalOutcome::Completed {
                result: vec![payload(b"1")],
            },
            TerminalOutcome::Failed {
                failure: app_failure("x"),
                next_run_id: None,
            },
            TerminalOutcome::Failed {
                failure: app_failure("x"),
                next_run_id: Some("W--r1".into()),
            },
            TerminalOutcome::Canceled {
                details: vec![payload(b"2")],
            },
            TerminalOutcome::ContinuedAsNew {
                next_run_id: "W--r1".into(),
            },
            TerminalOutcome::TimedOut { next_run_id: None },
            TerminalOutcome::Terminated {
                reason: "stop".into(),
                details: vec![],
                identity: Some("me".into()),
            },
        ];
        for o in outcomes {
            let r = match o.to_dbos() {
                Outcome::Success(t) => row(RunState::Success, Some(t), None),
                Outcome::Error(t) => row(RunState::Error, None, Some(t)),
                Outcome::Cancelled(t) => row(RunState::Cancelled, None, t),
            };
            assert_eq!(TerminalOutcome::from_status(&r).unwrap().as_ref(), Some(&o));
            assert_eq!(execution_status(&r).unwrap(), o.status());
        }
        // Running states.
        for s in [
            RunState::Enqueued,
            RunState::Delayed,
            RunState::Pending,
            RunState::MaxRecoveryAttemptsExceeded,
        ] {
            assert_eq!(
                execution_status(&row(s, None, None)).unwrap(),
                WorkflowExecutionStatus::Running
            );
        }
        // A DBOS-native cancel keeps its text as the reason.
        let r = row(RunState::Cancelled, None, Some("by admin".into()));
        assert_eq!(
            TerminalOutcome::from_status(&r).unwrap(),
            Some(TerminalOutcome::Terminated {
                reason: "by admin".into(),
                details: vec![],
                identity: None
            })
        );
        // Undecodable stored values are typed errors naming the run.
        let r = row(RunState::Success, Some("not json".into()), None);
        let e = TerminalOutcome::from_status(&r).unwrap_err();
        assert!(e.to_string().contains("workflow output of run `W`"), "{e}");
        let r = row(
            RunState::Error,
            None,
            Some("{\"kind\":\"completed\",\"result\":[]}".into()),
        );
        assert!(TerminalOutcome::from_status(&r).is_err());
        let r = row(RunState::Error, None, Some("plain".into()));
        assert!(TerminalOutcome::from_status(&r).is_err());
    }

    #[test]
    fn inbox_messages_round_trip() {
        let msgs = vec![
            InboxMessage::Signal(SignalRequest {
                name: "go".into(),
                payloads: vec![payload(b"1")],
                headers: HashMap::from([("h".into(), payload(b"2"))]),
                identity: "me".into(),
                request_id: Some("r".into()),
            }),
            InboxMessage::Update(UpdateRequest {
                update_id: "u".into(),
                name: "set".into(),
                payloads: vec![],
                headers: HashMap::new(),
                identity: String::new(),
            }),
            InboxMessage::Cancel(CancelRequest {
                reason: "why".into(),
                identity: "me".into(),
                request_id: None,
            }),
        ];
        for m in msgs {
            let text = m.encode();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(v["kind"].is_string());
            assert_eq!(InboxMessage::decode(&text).unwrap(), m);
        }
        let q = QueryRequest {
            query_id: "q1".into(),
            name: "state".into(),
            payloads: vec![payload(b"3")],
            headers: HashMap::new(),
        };
        assert_eq!(QueryRequest::decode(&q.encode()).unwrap(), q);
        assert!(InboxMessage::decode("{\"kind\":\"nope\"}").is_err());

        for a in [
            UpdateAdmission::Accepted,
            UpdateAdmission::Rejected {
                failure: app_failure("no"),
            },
        ] {
            assert_eq!(UpdateAdmission::from_text(&a.to_text()).unwrap(), a);
        }
        for o in [
            UpdateOutcome::Success(vec![payload(b"1")]),
            UpdateOutcome::Failure(app_failure("f")),
        ] {
            assert_eq!(UpdateOutcome::from_text(&o.to_text()).unwrap(), o);
        }
        for a in [
            QueryAnswer::Answer(vec![]),
            QueryAnswer::Failure(app_failure("q")),
        ] {
            assert_eq!(QueryAnswer::from_text(&a.to_text()).unwrap(), a);
        }
        assert_ne!(update_accepted_key("u"), update_completed_key("u"));
    }

    #[test]
    fn attributes_round_trip_and_keep_unknown_keys() {
        let mut a = RunAttributes::new("W", "wf", "q");
        a.set_search_attributes(&HashMap::from([("Kw".into(), payload(b"\"v\""))]));
        a.memo = encode_payload_map(&HashMap::from([("m".into(), payload(b"1"))]));
        a.run_timeout_ms = Some(5);
        let mut json = a.to_json();
        assert_eq!(json["sav"]["Kw"], "v");
        assert_eq!(json["task_queue"], "q");
        assert_eq!(json["workflow_type"], "wf");
        json["future_key"] = serde_json::json!(1);
        let back = RunAttributes::from_json("a", &json).unwrap();
        assert_eq!(back.extra.get("future_key"), Some(&serde_json::json!(1)));
        assert_eq!(back.search_attributes().unwrap()["Kw"], payload(b"\"v\""));
        assert_eq!(back.to_json(), json);
        let req = new_run_request("W--r1", &back, &[payload(b"1")]);
        assert_eq!(req.name, "wf");
        assert_eq!(req.queue_name, "q");
        assert_eq!(req.serialization.as_deref(), Some(SERIALIZATION));
    }
}

//! Asynchronous activity completion (upstream's `Client::get_async_activity_handle`,
//! `AsyncActivityHandle`, `ActivityIdentifier`).
//!
//! An activity that returns `ActivityError::WillCompleteAsync` leaves its worker waiting for an
//! outcome event on its run ([`protocol::async_outcome_key`], one per attempt). This handle
//! writes that event (complete, fail, report cancellation) or records heartbeats. The worker
//! turns the outcome into the activity's resolution, which the workflow receives in its next
//! recorded activation: exactly once, also across worker restarts (a restarted worker does not
//! run the activity again; it waits for, or finds, the outcome).
//!
//! Identification: by task token (`ActivityInfo::task_token`, any time), or by workflow id +
//! activity id / standalone activity id once the activity has returned `WillCompleteAsync`.

use temporalio_common_wasm::data_converters::{PayloadConversionError, TemporalSerializable};
use temporalio_common_wasm::error::{ApplicationFailure, OutgoingActivityError, OutgoingError};
use temporalio_protos::TaskToken;
use temporalio_protos::temporal::api::common::v1::Payload;
use tracing::debug;

use crate::activity::activity_row;
use crate::options::RpcOptions;
use crate::protocol::{self, AsyncOutcome, STANDALONE_SEQ, TaskTokenParts};
use crate::{Client, NamespacedClient, act_ctx};

/// Errors of [`AsyncActivityHandle`] operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AsyncActivityError {
    /// No such activity waiting for completion (unknown, already completed, closed, or not
    /// (yet) waiting for asynchronous completion when identified by id).
    #[error("Activity not found")]
    NotFound(#[source] tonic::Status),
    /// A value could not be serialized.
    #[error("Payload conversion error: {0}")]
    PayloadConversion(#[from] PayloadConversionError),
    /// A database failure or a malformed task token.
    #[error("Server error: {0}")]
    Rpc(#[from] tonic::Status),
}

crate::errors::from_protocol!(AsyncActivityError);

fn not_found(msg: impl Into<String>) -> AsyncActivityError {
    AsyncActivityError::NotFound(tonic::Status::not_found(msg.into()))
}

/// Which activity an [`AsyncActivityHandle`] completes.
#[derive(Debug, Clone)]
pub enum ActivityIdentifier {
    /// By the task token the activity saw in `ActivityInfo::task_token`.
    TaskToken(TaskToken),
    /// A workflow's activity by workflow id, run id (empty: the latest run) and activity id.
    ByIdWorkflow {
        /// The workflow id.
        workflow_id: String,
        /// The run id; empty for the latest run.
        run_id: String,
        /// The activity id.
        activity_id: String,
    },
    /// A standalone activity by activity id and run id (empty: the latest run).
    ByIdStandalone {
        /// The activity id.
        activity_id: String,
        /// The run id; empty for the latest run.
        run_id: String,
    },
}

impl ActivityIdentifier {
    /// By task token.
    pub fn from_task_token(token: TaskToken) -> Self {
        Self::TaskToken(token)
    }

    /// A workflow's activity by ids (empty run id: the latest run).
    pub fn by_id_workflow(
        workflow_id: impl Into<String>,
        run_id: impl Into<String>,
        activity_id: impl Into<String>,
    ) -> Self {
        Self::ByIdWorkflow {
            workflow_id: workflow_id.into(),
            run_id: run_id.into(),
            activity_id: activity_id.into(),
        }
    }

    /// A standalone activity by ids (empty run id: the latest run).
    pub fn by_id_standalone(activity_id: impl Into<String>, run_id: impl Into<String>) -> Self {
        Self::ByIdStandalone {
            activity_id: activity_id.into(),
            run_id: run_id.into(),
        }
    }
}

/// The reply to [`AsyncActivityHandle::heartbeat`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ActivityHeartbeatResponse {
    /// Cancellation of the activity was requested.
    pub cancel_requested: bool,
    /// Always false (DBOSify has no activity pausing).
    pub activity_paused: bool,
    /// Always false (DBOSify has no activity reset).
    pub activity_reset: bool,
}

/// Completes, fails, cancels or heartbeats an activity from outside its worker.
pub struct AsyncActivityHandle<CT> {
    client: CT,
    identifier: ActivityIdentifier,
}

impl<CT> AsyncActivityHandle<CT> {
    /// A handle for `identifier`.
    pub fn new(client: CT, identifier: ActivityIdentifier) -> Self {
        Self { client, identifier }
    }

    /// The identifier.
    pub fn identifier(&self) -> &ActivityIdentifier {
        &self.identifier
    }

    /// The client.
    pub fn client(&self) -> &CT {
        &self.client
    }
}

/// The attempt of an activity that an async handle addresses.
struct Target {
    run: String,
    seq: u32,
    attempt: u32,
}

impl AsyncActivityHandle<Client> {
    async fn target(&self, db: &dbos_core::SystemDatabase) -> Result<Target, AsyncActivityError> {
        let (run, seq, attempt) = match &self.identifier {
            ActivityIdentifier::TaskToken(token) => {
                let parts = TaskTokenParts::decode(&token.clone().into_inner()).map_err(|e| {
                    AsyncActivityError::Rpc(tonic::Status::invalid_argument(e.to_string()))
                })?;
                (parts.run, parts.seq, Some(parts.attempt))
            }
            ActivityIdentifier::ByIdWorkflow {
                workflow_id,
                run_id,
                activity_id,
            } => {
                let run = if run_id.is_empty() {
                    protocol::latest_run(db, workflow_id)
                        .await?
                        .ok_or_else(|| not_found(format!("workflow `{workflow_id}` not found")))?
                        .workflow_id
                } else {
                    run_id.clone()
                };
                let seq = db
                    .get_event(&run, &protocol::async_activity_id_key(activity_id), None)
                    .await?
                    .and_then(|s| s.parse::<u32>().ok())
                    .ok_or_else(|| {
                        not_found(format!(
                            "activity `{activity_id}` of workflow run `{run}` is not waiting for \
                             asynchronous completion (DBOSify completes by id only after the \
                             activity returned WillCompleteAsync; use its task token otherwise)"
                        ))
                    })?;
                (run, seq, None)
            }
            ActivityIdentifier::ByIdStandalone {
                activity_id,
                run_id,
            } => {
                let row = activity_row(db, activity_id, Some(run_id.as_str())).await?;
                (row.workflow_id, STANDALONE_SEQ, None)
            }
        };
        let status = db
            .status(&run)
            .await?
            .ok_or_else(|| not_found(format!("run `{run}` not found")))?;
        if status.state.is_terminal() {
            return Err(not_found(format!(
                "run `{run}` is closed: its activities cannot be completed"
            )));
        }
        let attempt = match attempt {
            Some(a) => {
                let current = db
                    .get_event(&run, &protocol::attempt_key(seq), None)
                    .await?
                    .and_then(|s| s.parse::<u32>().ok())
                    .unwrap_or(1);
                if a < current {
                    return Err(not_found(format!(
                        "the task token names attempt {a}; the activity is at attempt {current}"
                    )));
                }
                a
            }
            None => db
                .get_event(&run, &protocol::async_pending_key(seq), None)
                .await?
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or_else(|| {
                    not_found(format!(
                        "activity {seq} of run `{run}` is not waiting for asynchronous completion"
                    ))
                })?,
        };
        Ok(Target { run, seq, attempt })
    }

    async fn deliver(&self, outcome: AsyncOutcome) -> Result<(), AsyncActivityError> {
        let db = self.client.system_database().await?;
        let t = self.target(&db).await?;
        deliver_to(&db, &t, outcome).await
    }

    async fn payloads<T: TemporalSerializable + Send + 'static>(
        &self,
        value: Option<T>,
    ) -> Result<Vec<Payload>, AsyncActivityError> {
        match value {
            Some(v) => Ok(self
                .client
                .data_converter()
                .to_payloads(&act_ctx(), &v)
                .await?),
            None => Ok(Vec::new()),
        }
    }

    /// Completes the activity with `result` (`None`: no result payload).
    ///
    /// # Errors
    /// `NotFound` when the activity is not waiting (or was completed already).
    pub async fn complete<T>(
        &self,
        result: Option<T>,
        rpc_options: RpcOptions,
    ) -> Result<(), AsyncActivityError>
    where
        T: TemporalSerializable + Send + 'static,
    {
        rpc_options.refuse_metadata()?;
        let result = self.payloads(result).await?;
        self.deliver(AsyncOutcome::Completed { result }).await
    }

    /// Fails the activity attempt with `failure` (the retry policy applies, as for any failed
    /// attempt); `last_heartbeat_details` are recorded for the next attempt.
    ///
    /// # Errors
    /// `NotFound` when the activity is not waiting (or was completed already).
    pub async fn fail<E, T>(
        &self,
        failure: E,
        last_heartbeat_details: Option<T>,
        rpc_options: RpcOptions,
    ) -> Result<(), AsyncActivityError>
    where
        E: Into<ApplicationFailure>,
        T: TemporalSerializable + Send + 'static,
    {
        rpc_options.refuse_metadata()?;
        let failure = self.client.data_converter().to_failure(
            &act_ctx(),
            OutgoingError::Activity(OutgoingActivityError::Application(Box::new(failure.into()))),
        );
        if last_heartbeat_details.is_none() {
            return self.deliver(AsyncOutcome::Failed { failure }).await;
        }
        let details = self.payloads(last_heartbeat_details).await?;
        let db = self.client.system_database().await?;
        let t = self.target(&db).await?;
        db.set_event(
            &t.run,
            &protocol::heartbeat_key(t.seq),
            &protocol::encode_payloads(&details),
        )
        .await?;
        deliver_to(&db, &t, AsyncOutcome::Failed { failure }).await
    }

    /// Reports that the activity accepted its cancellation.
    ///
    /// # Errors
    /// `NotFound` when the activity is not waiting (or was completed already).
    pub async fn report_cancelation<T>(
        &self,
        details: Option<T>,
        rpc_options: RpcOptions,
    ) -> Result<(), AsyncActivityError>
    where
        T: TemporalSerializable + Send + 'static,
    {
        rpc_options.refuse_metadata()?;
        let details = self.payloads(details).await?;
        self.deliver(AsyncOutcome::Canceled { details }).await
    }

    /// Records a heartbeat (with details for the next attempt, when given); counts against the
    /// heartbeat timeout. The reply tells whether cancellation was requested.
    ///
    /// # Errors
    /// `NotFound` when the activity is not waiting.
    pub async fn heartbeat<T>(
        &self,
        details: Option<T>,
        rpc_options: RpcOptions,
    ) -> Result<ActivityHeartbeatResponse, AsyncActivityError>
    where
        T: TemporalSerializable + Send + 'static,
    {
        rpc_options.refuse_metadata()?;
        let has_details = details.is_some();
        let details = self.payloads(details).await?;
        let db = self.client.system_database().await?;
        let t = self.target(&db).await?;
        let mut events = vec![(
            protocol::async_heartbeat_key(t.seq),
            dbos_core::now_ms().to_string(),
        )];
        if has_details {
            events.push((
                protocol::heartbeat_key(t.seq),
                protocol::encode_payloads(&details),
            ));
        }
        db.set_events(&t.run, &events).await?;
        let cancel_requested = db
            .get_event(&t.run, &protocol::cancel_requested_key(t.seq), None)
            .await?
            .is_some();
        Ok(ActivityHeartbeatResponse {
            cancel_requested,
            activity_paused: false,
            activity_reset: false,
        })
    }
}

/// Records `outcome` for the attempt `t`, unless that attempt already has one.
async fn deliver_to(
    db: &dbos_core::SystemDatabase,
    t: &Target,
    outcome: AsyncOutcome,
) -> Result<(), AsyncActivityError> {
    let key = protocol::async_outcome_key(t.seq, t.attempt);
    if db.get_event(&t.run, &key, None).await?.is_some() {
        return Err(not_found(format!(
            "attempt {} of activity {} of run `{}` was already completed",
            t.attempt, t.seq, t.run
        )));
    }
    db.set_event(&t.run, &key, &outcome.to_text()).await?;
    debug!(run = %t.run, seq = t.seq, attempt = t.attempt, "asynchronous activity outcome recorded");
    Ok(())
}

impl Client {
    /// A handle that completes, fails, cancels or heartbeats an activity that returned
    /// `ActivityError::WillCompleteAsync`.
    pub fn get_async_activity_handle(
        &self,
        identifier: ActivityIdentifier,
    ) -> AsyncActivityHandle<Self> {
        AsyncActivityHandle::new(self.clone(), identifier)
    }
}

//! # temporal-compat-client
//!
//! A drop-in replacement for `temporalio-client` 1.1.1 that needs no Temporal server: workflows
//! are started, signalled, queried, updated, cancelled, terminated and awaited through Postgres,
//! where workers built with `temporal-compat` pick them up.
//!
//! Depend on it under Temporal's name and point `TEMPORAL_ADDRESS` (or
//! `DBOS_SYSTEM_DATABASE_URL`) at Postgres:
//!
//! ```toml
//! temporalio-client = { package = "temporal-compat-client", version = "..." }
//! ```
//! ```sh
//! export TEMPORAL_ADDRESS=postgres://user:pw@host:5432/app
//! ```
//!
//! The public names, paths and signatures mirror upstream's for what programs use:
//! [`ClientOptions::load_from_config`], [`Connection::connect`], [`Client::new`],
//! [`Client::start_workflow`], [`WorkflowHandle`] and its operations, [`schedules`], the option
//! structs and the error types. How Temporal concepts are stored in Postgres is described in
//! [`protocol`].

#![warn(missing_docs)]

mod activity;
mod async_activity_handle;
pub mod envconfig;
mod errors;
mod listing;
mod options;
#[doc(hidden)]
pub mod policies;
#[doc(hidden)]
pub mod protocol;
pub mod schedules;
mod visibility;
mod with_start;
mod workflow_handle;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dbos_core::SystemDatabase;
use sqlx::Connection as _;
use temporalio_common_wasm::HasWorkflowDefinition;
use temporalio_common_wasm::data_converters::{
    ActivitySerializationContext, DataConverter, SerializationContextData,
    WorkflowSerializationContext,
};
use temporalio_protos::temporal::api::common::v1::RetryPolicy as ProtoRetryPolicy;
use tracing::info;
use url::Url;

pub use activity::{
    ActivityCancelOptions, ActivityCountOptions, ActivityDescribeOptions, ActivityExecutionCount,
    ActivityExecutionCountAggregationGroup, ActivityExecutionDescription, ActivityExecutionInfo,
    ActivityExecutionInfoLike, ActivityExecutionStatus, ActivityHandle, ActivityIdConflictPolicy,
    ActivityIdReusePolicy, ActivityInteractionError, ActivityListOptions, ActivityResultError,
    ActivityStartOptions, ActivityStartOptionsBuilder, ActivityTerminateOptions,
    ListActivitiesStream, PendingActivityState, StartActivityError,
};
pub use async_activity_handle::{
    ActivityHeartbeatResponse, ActivityIdentifier, AsyncActivityError, AsyncActivityHandle,
};
pub use errors::{
    ClientConnectError, ClientError, ClientNewError, WorkflowGetResultError,
    WorkflowInteractionError, WorkflowQueryError, WorkflowStartError, WorkflowUpdateError,
};
pub use listing::{
    ListWorkflowsStream, WorkflowCountAggregationGroup, WorkflowCountOptions, WorkflowExecution,
    WorkflowExecutionCount, WorkflowListOptions,
};
pub use options::{
    ClientKeepAliveOptions, ClientOptions, ClientTlsOptions, ConnectionOptions,
    DnsLoadBalancingOptions, GrpcCompression, HttpConnectProxyOptions, Priority,
    QueryRejectCondition, RetryOptions, RpcMetadata, RpcMetadataError, RpcOptions, TlsOptions,
    WorkflowCancelOptions, WorkflowDescribeOptions, WorkflowExecuteUpdateOptions,
    WorkflowGetResultOptions, WorkflowIdConflictPolicy, WorkflowIdReusePolicy,
    WorkflowQueryOptions, WorkflowSignalOptions, WorkflowStartOptions, WorkflowStartUpdateOptions,
    WorkflowTerminateOptions,
};
pub use temporalio_common_wasm::{Memo, MemoValue, MemoValues, RetryPolicy};
pub use with_start::{WorkflowUpdateWithStartError, WorkflowUpdateWithStartOptions};
pub use workflow_handle::{
    UntypedQuery, UntypedSignal, UntypedUpdate, UntypedWorkflow, UntypedWorkflowHandle,
    WorkflowExecutionDescription, WorkflowExecutionInfo, WorkflowExecutionResult,
    WorkflowExecutionStatus, WorkflowHandle, WorkflowResultDetails, WorkflowUpdateHandle,
};

use protocol::{ProtocolError, RunAttributes};
use with_start::Started;

/// The client library's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

// ------------------------------------------------------------------------------------------
// Connection
// ------------------------------------------------------------------------------------------

/// A validated Postgres target. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: Arc<ConnectionInner>,
}

#[derive(Clone, Debug)]
struct ConnectionInner {
    database_url: String,
    identity: String,
    retry_options: RetryOptions,
}

/// The target without its password, for messages.
fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    u.to_string()
}

/// Checks that the target is a Postgres URL.
fn validate_target(target: &Url) -> Result<(), ClientConnectError> {
    match target.scheme() {
        "postgres" | "postgresql" => Ok(()),
        _ => Err(ClientConnectError::InvalidUri(format!(
            "`{}` is not a Postgres URL. DBOSify runs Temporal programs on Postgres alone: set \
             TEMPORAL_ADDRESS (or DBOS_SYSTEM_DATABASE_URL) to a URL like \
             postgres://user:password@localhost:5432/app",
            redacted(target)
        ))),
    }
}

/// Refuses options that only make sense for a gRPC connection to a Temporal server.
fn refuse_unsupported(o: &ConnectionOptions) -> Result<(), ClientConnectError> {
    let refuse = |what: &str, hint: &str| {
        Err(ClientConnectError::InvalidConfig(format!(
            "{what} is not supported when connecting to Postgres; {hint}"
        )))
    };
    if o.tls_options.is_some() {
        return refuse(
            "TLS options (tls_options, a profile [tls] section or TEMPORAL_TLS*)",
            "configure TLS in the Postgres URL instead (e.g. ?sslmode=verify-full&sslrootcert=/path/ca.pem), \
             or disable TLS in the profile (TEMPORAL_TLS=false)",
        );
    }
    if o.api_key.is_some() {
        return refuse(
            "An API key (api_key / TEMPORAL_API_KEY)",
            "put the database credentials in the Postgres URL",
        );
    }
    if o.headers.as_ref().is_some_and(|h| !h.is_empty())
        || o.binary_headers.as_ref().is_some_and(|h| !h.is_empty())
    {
        return refuse(
            "gRPC headers (headers, binary_headers, grpc_meta / TEMPORAL_GRPC_META_*)",
            "remove them",
        );
    }
    if o.http_connect_proxy.is_some() {
        return refuse("An HTTP CONNECT proxy", "remove it");
    }
    if o.override_origin.is_some() {
        return refuse("override_origin", "remove it");
    }
    Ok(())
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{}@{host}", std::process::id())
}

impl Connection {
    /// Validates the options (the target must be a `postgres://` URL; gRPC-only options are
    /// refused) and checks that Postgres accepts a connection (bounded by `connect_timeout`).
    pub async fn connect(options: ConnectionOptions) -> Result<Self, ClientConnectError> {
        validate_target(&options.target)?;
        refuse_unsupported(&options)?;
        let url = options.target.to_string();
        let check = async {
            let conn = sqlx::PgConnection::connect(&url).await?;
            conn.close().await
        };
        let result = match options.connect_timeout {
            Some(t) => tokio::time::timeout(t, check).await.unwrap_or_else(|_| {
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {t:?}"),
                )))
            }),
            None => check.await,
        };
        result.map_err(|e| ClientConnectError::DatabaseUnreachable {
            target: redacted(&options.target),
            reason: e.to_string(),
        })?;
        info!(target = %redacted(&options.target), "connected to Postgres");
        let identity = if options.identity.is_empty() {
            default_identity()
        } else {
            options.identity
        };
        Ok(Self {
            inner: Arc::new(ConnectionInner {
                database_url: url,
                identity,
                retry_options: options.retry_options,
            }),
        })
    }

    /// The identity recorded on requests (`pid@host` when none was given).
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// The identity, mutably (copy-on-write for shared connections).
    pub fn identity_mut(&mut self) -> &mut String {
        &mut Arc::make_mut(&mut self.inner).identity
    }

    /// Retry options (no effect; kept for API compatibility).
    pub fn retry_options_mut(&mut self) -> &mut RetryOptions {
        &mut Arc::make_mut(&mut self.inner).retry_options
    }

    /// The Postgres URL.
    #[doc(hidden)]
    pub fn database_url(&self) -> &str {
        &self.inner.database_url
    }
}

// ------------------------------------------------------------------------------------------
// Client
// ------------------------------------------------------------------------------------------

/// Namespace, identity and data converter of a client.
pub trait NamespacedClient {
    /// The namespace.
    fn namespace(&self) -> String;
    /// The identity.
    fn identity(&self) -> String;
    /// The data converter.
    fn data_converter(&self) -> &DataConverter;
}

/// A client bound to a namespace. Cheap to clone; the namespace's system database is opened on
/// first use and shared by every client and worker of the process.
#[derive(Clone, Debug)]
pub struct Client {
    connection: Connection,
    options: Arc<ClientOptions>,
}

impl NamespacedClient for Client {
    fn namespace(&self) -> String {
        self.options.namespace.clone()
    }

    fn identity(&self) -> String {
        self.connection.identity().to_string()
    }

    fn data_converter(&self) -> &DataConverter {
        &self.options.data_converter
    }
}

fn wf_ctx() -> SerializationContextData {
    SerializationContextData::Workflow(WorkflowSerializationContext::new())
}

fn act_ctx() -> SerializationContextData {
    SerializationContextData::Activity(ActivitySerializationContext::new())
}

/// A duration in whole milliseconds (saturating).
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the epoch as a proto timestamp.
fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// Milliseconds as a proto duration.
fn dur(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// A proto timestamp as a system time; `None` when unset or before the epoch.
fn to_system_time(t: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t.as_ref()?;
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// A proto duration as a std duration; `None` when unset or negative.
fn to_duration(d: &Option<prost_types::Duration>) -> Option<Duration> {
    let d = d.as_ref()?;
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    Some(Duration::new(secs, nanos))
}

fn invalid(msg: impl Into<String>) -> WorkflowStartError {
    WorkflowStartError::Rpc(tonic::Status::invalid_argument(msg.into()))
}

fn already_started(run_id: &str, why: &str) -> WorkflowStartError {
    WorkflowStartError::AlreadyStarted {
        run_id: Some(run_id.to_string()),
        source: tonic::Status::already_exists(format!(
            "workflow execution already started: {why} (run `{run_id}`)"
        )),
    }
}

impl Client {
    /// Connects and creates a client.
    pub async fn connect(
        connection_options: ConnectionOptions,
        client_options: ClientOptions,
    ) -> Result<Self, ClientConnectError> {
        let connection = Connection::connect(connection_options).await?;
        Ok(Self::new(connection, client_options)?)
    }

    /// Creates a client; fails if the namespace cannot be mapped to a Postgres schema.
    pub fn new(connection: Connection, options: ClientOptions) -> Result<Self, ClientNewError> {
        protocol::schema_for_namespace(&options.namespace)
            .map_err(ClientNewError::InvalidNamespace)?;
        Ok(Self {
            connection,
            options: Arc::new(options),
        })
    }

    /// The options.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The options, mutably (copy-on-write for shared clients).
    pub fn options_mut(&mut self) -> &mut ClientOptions {
        Arc::make_mut(&mut self.options)
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The connection, mutably.
    pub fn connection_mut(&mut self) -> &mut Connection {
        &mut self.connection
    }

    /// The process-wide system database of this client's URL and namespace (for the worker).
    #[doc(hidden)]
    pub async fn system_database(&self) -> Result<SystemDatabase, ProtocolError> {
        protocol::system_database(self.connection.database_url(), &self.options.namespace).await
    }

    /// A handle on workflow id `workflow_id`, targeting its latest run at each operation.
    pub fn get_workflow_handle<W: HasWorkflowDefinition>(
        &self,
        workflow_id: impl Into<String>,
    ) -> WorkflowHandle<Self, W> {
        WorkflowHandle::new(
            self.clone(),
            WorkflowExecutionInfo {
                namespace: self.options.namespace.clone(),
                workflow_id: workflow_id.into(),
                run_id: None,
                first_execution_run_id: None,
            },
        )
    }

    /// Starts a workflow: its first run is enqueued on the task queue for a worker to pick up.
    /// The run id is the workflow id for the first run of an id, `<id>--r<n>` after. A running
    /// workflow with the same id is handled by `id_conflict_policy`, a closed one by
    /// `id_reuse_policy`.
    pub async fn start_workflow<W>(
        &self,
        workflow: W,
        input: W::Input,
        options: WorkflowStartOptions,
    ) -> Result<WorkflowHandle<Self, W>, WorkflowStartError>
    where
        W: HasWorkflowDefinition,
        W::Input: Send,
    {
        protocol::validate_workflow_id(&options.workflow_id).map_err(|e| invalid(e.to_string()))?;
        refuse_start_options(&options)?;
        let dc = self.data_converter();
        let payloads = dc.to_payloads(&wf_ctx(), &input).await?;
        drop(input);
        let workflow_id = options.workflow_id.clone();
        match self
            .start_run(workflow.name(), &payloads, options, false, None)
            .await?
        {
            Started::Created(run, mark) => Ok(self.handle(&workflow_id, &run, Some(mark))),
            Started::Existing(run) => Ok(self.handle(&workflow_id, &run, None)),
        }
    }

    /// A handle on `run`; `started` is the wake-up mark taken before this client created it.
    fn handle<W>(
        &self,
        workflow_id: &str,
        run: &dbos_core::WorkflowStatus,
        started: Option<dbos_core::Mark>,
    ) -> WorkflowHandle<Self, W> {
        let first = RunAttributes::of_run(run)
            .ok()
            .and_then(|a| a.first_execution_run_id)
            .unwrap_or_else(|| run.workflow_id.clone());
        WorkflowHandle::new(
            self.clone(),
            WorkflowExecutionInfo {
                namespace: self.options.namespace.clone(),
                workflow_id: workflow_id.to_string(),
                run_id: Some(run.workflow_id.clone()),
                first_execution_run_id: Some(first),
            },
        )
        .with_start_mark(started)
    }

    /// The attributes of a new workflow's first run, and its start delay (cron schedules).
    async fn start_attributes(
        &self,
        workflow_type: &str,
        options: &WorkflowStartOptions,
    ) -> Result<(RunAttributes, Option<Duration>), WorkflowStartError> {
        let dc = self.data_converter();
        let mut a = RunAttributes::new(&options.workflow_id, workflow_type, &options.task_queue);
        a.identity = self.identity();
        if let Some(sa) = &options.search_attributes {
            a.set_search_attributes(&sa.to_proto().indexed_fields);
        }
        if let Some(memo) = &options.memo {
            let mut fields = HashMap::new();
            for (k, v) in memo.iter() {
                fields.insert(k.to_string(), dc.to_payload(&wf_ctx(), v).await?);
            }
            a.memo = protocol::encode_payload_map(&fields);
        }
        if let Some(h) = &options.header {
            a.header = protocol::encode_payload_map(&h.fields);
        }
        if let Some(rp) = &options.retry_policy {
            let proto: ProtoRetryPolicy = rp.clone().into();
            a.retry_policy = Some(
                serde_json::to_value(&proto)
                    .map_err(|e| invalid(format!("cannot record the retry policy: {e}")))?,
            );
        }
        // A zero timeout is an unset one, as on a Temporal server.
        let set = |d: &Option<Duration>| d.filter(|d| !d.is_zero());
        let now = dbos_core::now_ms();
        // A cron workflow's first run waits for the first cron time; its timeouts count from
        // there.
        let mut first_delay = None;
        if let Some(cron) = &options.cron_schedule {
            let schedule =
                policies::CronSchedule::parse(cron).map_err(|e| invalid(e.to_string()))?;
            first_delay = Some(schedule.backoff(now, now).ok_or_else(|| {
                invalid(format!(
                    "cron_schedule `{cron}` has no future schedule time"
                ))
            })?);
            a.cron_schedule = Some(cron.clone());
        }
        let start = now.saturating_add(
            first_delay.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        );
        a.execution_timeout_ms = set(&options.execution_timeout).map(ms);
        a.execution_deadline_ms = a
            .execution_timeout_ms
            .map(|t| start.saturating_add(i64::try_from(t).unwrap_or(i64::MAX)));
        a.run_timeout_ms = set(&options.run_timeout).map(ms);
        a.task_timeout_ms = set(&options.task_timeout).map(ms);
        a.priority_key = options.priority.priority_key;
        a.static_summary = options.static_summary.clone();
        a.static_details = options.static_details.clone();
        Ok((a, first_delay))
    }
}

/// Refuses start options this client cannot honour.
fn refuse_start_options(o: &WorkflowStartOptions) -> Result<(), WorkflowStartError> {
    if let Some(cron) = &o.cron_schedule {
        policies::CronSchedule::parse(cron).map_err(|e| invalid(e.to_string()))?;
    }
    if !o.links.is_empty() || !o.completion_callbacks.is_empty() {
        return Err(invalid(
            "links and completion_callbacks (Nexus) are not supported by DBOSify",
        ));
    }
    if o.versioning_override.is_some() {
        return Err(invalid(
            "versioning_override (worker deployments) is not supported by DBOSify",
        ));
    }
    if o.priority.fairness_key.is_some() || o.priority.fairness_weight.is_some() {
        return Err(invalid(
            "priority fairness keys/weights are not supported by DBOSify (priority_key is)",
        ));
    }
    o.rpc_options
        .refuse_metadata()
        .map_err(WorkflowStartError::Rpc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(validate_target(&Url::parse("postgres://u:p@h:5432/db").unwrap()).is_ok());
        assert!(validate_target(&Url::parse("postgresql://h/db").unwrap()).is_ok());
        let e = validate_target(&Url::parse("http://localhost:7233").unwrap()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("TEMPORAL_ADDRESS") && msg.contains("postgres://"),
            "{msg}"
        );
        let e = validate_target(&Url::parse("http://u:secret@h:7233").unwrap()).unwrap_err();
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn unsupported_connection_options() {
        let url = Url::parse("postgres://h/db").unwrap();
        let ok = ConnectionOptions::new(url.clone()).build();
        assert!(refuse_unsupported(&ok).is_ok());
        let cases = [
            ConnectionOptions::new(url.clone())
                .tls_options(TlsOptions::default())
                .build(),
            ConnectionOptions::new(url.clone()).api_key("k").build(),
            ConnectionOptions::new(url.clone())
                .headers(HashMap::from([("a".to_string(), "b".to_string())]))
                .build(),
            ConnectionOptions::new(url.clone())
                .http_connect_proxy(HttpConnectProxyOptions::builder("p:1".into()).build())
                .build(),
        ];
        for c in cases {
            let e = refuse_unsupported(&c).unwrap_err();
            assert!(matches!(e, ClientConnectError::InvalidConfig(_)), "{e}");
            assert!(e.to_string().contains("not supported"), "{e}");
        }
    }
}

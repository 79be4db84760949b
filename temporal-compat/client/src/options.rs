//! Option structs, with the builders and defaults of `temporalio-client` 1.1.1.
//!
//! Every field exists so user code compiles unchanged; what each one does on Postgres is stated
//! on the field. Fields that cannot be honoured make the operation fail with a clear error
//! rather than being silently dropped.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use temporalio_common_wasm::data_converters::DataConverter;
use temporalio_common_wasm::search_attributes::SearchAttributes;
use temporalio_common_wasm::{MemoValues, RetryPolicy, VersioningOverride};
use temporalio_protos::temporal::api::common::v1::{Callback, Header, Link, Payloads};
use url::Url;

pub use temporalio_common_wasm::Priority;

/// Options for [`crate::Connection::connect`].
///
/// On Postgres, `target` must be a `postgres://` or `postgresql://` URL. Transport security is
/// configured in the URL (`?sslmode=require`, `sslrootcert=…`); the gRPC-only options
/// `tls_options`, `api_key`, `headers`, `binary_headers`, `http_connect_proxy` and
/// `override_origin` are refused at connect when set. `keep_alive`, `dns_load_balancing`,
/// `grpc_compression`, `retry_options` and `disable_error_code_metric_tags` tune a gRPC channel
/// that does not exist here and have no effect.
#[derive(bon::Builder, Clone, Debug)]
#[non_exhaustive]
#[builder(start_fn = new, on(String, into), state_mod(vis = "pub"))]
pub struct ConnectionOptions {
    /// The Postgres URL holding the namespace schemas.
    #[builder(start_fn, into)]
    pub target: Url,
    /// Identity of this process, recorded on the requests it makes. Defaults to empty.
    #[builder(default)]
    pub identity: String,
    /// Refused when set: use `sslmode` in the Postgres URL.
    pub tls_options: Option<TlsOptions>,
    /// Refused when set.
    pub override_origin: Option<http::Uri>,
    /// Refused when set: put credentials in the Postgres URL.
    pub api_key: Option<String>,
    /// Bounds the connectivity check of [`crate::Connection::connect`].
    pub connect_timeout: Option<Duration>,
    /// No effect: transient database failures are retried by the system database.
    #[builder(default)]
    pub retry_options: RetryOptions,
    /// No effect (there is no HTTP/2 channel).
    #[builder(required, default = Some(ClientKeepAliveOptions::default()))]
    pub keep_alive: Option<ClientKeepAliveOptions>,
    /// Refused when set to a non-empty map.
    pub headers: Option<HashMap<String, String>>,
    /// Refused when set to a non-empty map.
    pub binary_headers: Option<HashMap<String, Vec<u8>>>,
    /// Refused when set.
    pub http_connect_proxy: Option<HttpConnectProxyOptions>,
    /// No effect.
    #[builder(required, default = Some(DnsLoadBalancingOptions::default()))]
    pub dns_load_balancing: Option<DnsLoadBalancingOptions>,
    /// No effect.
    #[builder(default)]
    pub disable_error_code_metric_tags: bool,
    /// No effect.
    #[builder(default)]
    pub grpc_compression: GrpcCompression,
}

/// Options for [`crate::Client::new`].
#[derive(Clone, Debug, bon::Builder)]
#[non_exhaustive]
#[builder(start_fn = new, on(String, into), state_mod(vis = "pub"))]
pub struct ClientOptions {
    /// The namespace: maps to the Postgres schema `dbosify_<namespace>`.
    #[builder(start_fn)]
    pub namespace: String,
    /// Converts inputs, outputs and failures (the same converter the worker must use).
    #[builder(default)]
    pub data_converter: DataConverter,
}

/// Transport compression of the gRPC channel (no effect here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GrpcCompression {
    /// No compression.
    None,
    /// Gzip.
    #[default]
    Gzip,
}

/// TLS settings of a gRPC connection. Refused by [`crate::Connection::connect`]: configure TLS in
/// the Postgres URL instead.
#[derive(Clone, Debug, Default, bon::Builder)]
#[non_exhaustive]
pub struct TlsOptions {
    /// Root CA certificate of the server.
    pub server_root_ca_cert: Option<Vec<u8>>,
    /// Domain name to verify the server certificate against.
    pub domain: Option<String>,
    /// Client certificate and key for mTLS.
    pub client_tls_options: Option<ClientTlsOptions>,
}

/// A client certificate and key (PEM).
#[derive(Clone, bon::Builder)]
#[non_exhaustive]
pub struct ClientTlsOptions {
    /// The client certificate.
    pub client_cert: Vec<u8>,
    /// The client private key.
    pub client_private_key: Vec<u8>,
}

impl std::fmt::Debug for ClientTlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTlsOptions(..)")
    }
}

/// HTTP/2 keep-alive settings (no effect here).
#[derive(Clone, Debug, PartialEq, bon::Builder)]
#[non_exhaustive]
pub struct ClientKeepAliveOptions {
    /// Ping interval.
    #[builder(default = Duration::from_secs(30))]
    pub interval: Duration,
    /// Ping timeout.
    #[builder(default = Duration::from_secs(15))]
    pub timeout: Duration,
}

impl Default for ClientKeepAliveOptions {
    fn default() -> Self {
        Self::builder().build()
    }
}

/// DNS load-balancing settings (no effect here).
#[derive(Clone, Debug, PartialEq, bon::Builder)]
#[non_exhaustive]
pub struct DnsLoadBalancingOptions {
    /// Re-resolution interval.
    #[builder(default = Duration::from_secs(30))]
    pub resolution_interval: Duration,
}

impl Default for DnsLoadBalancingOptions {
    fn default() -> Self {
        Self::builder().build()
    }
}

/// An HTTP CONNECT proxy. Refused by [`crate::Connection::connect`].
#[derive(Clone, Debug, bon::Builder)]
#[non_exhaustive]
pub struct HttpConnectProxyOptions {
    /// Proxy address.
    #[builder(start_fn)]
    pub target_addr: String,
    /// Basic auth user and password.
    pub basic_auth: Option<(String, String)>,
}

/// Retry settings of RPCs (no effect here: the system database retries transient failures).
#[derive(Clone, Debug, PartialEq, bon::Builder)]
#[non_exhaustive]
pub struct RetryOptions {
    /// First backoff.
    #[builder(default = Duration::from_millis(100))]
    pub initial_interval: Duration,
    /// Jitter factor.
    #[builder(default = 0.2)]
    pub randomization_factor: f64,
    /// Backoff multiplier.
    #[builder(default = 1.7)]
    pub multiplier: f64,
    /// Largest backoff.
    #[builder(default = Duration::from_secs(5))]
    pub max_interval: Duration,
    /// Total retry budget.
    #[builder(required, default = Some(Duration::from_secs(10)))]
    pub max_elapsed_time: Option<Duration>,
    /// Most retries.
    #[builder(default = 10)]
    pub max_retries: usize,
}

impl Default for RetryOptions {
    fn default() -> Self {
        Self::builder().build()
    }
}

/// Metadata of one RPC. There is no RPC here; operations given non-empty metadata are refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RpcMetadata {
    ascii: BTreeMap<String, String>,
    binary: BTreeMap<String, Vec<u8>>,
}

/// An invalid key or value given to [`RpcMetadata`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RpcMetadataError {
    /// Not a valid ASCII metadata key.
    #[error("invalid ASCII RPC metadata key: {key}")]
    InvalidAsciiKey {
        /// The key.
        key: String,
    },
    /// Not a valid ASCII metadata value.
    #[error("invalid ASCII RPC metadata value for key {key}: {value:?}")]
    InvalidAsciiValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Not a valid binary metadata key (must end in `-bin`).
    #[error("invalid binary RPC metadata key: {key}")]
    InvalidBinaryKey {
        /// The key.
        key: String,
    },
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

impl RpcMetadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts an ASCII value, returning the previous one.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Option<String>, RpcMetadataError> {
        let (key, value) = (key.into(), value.into());
        if !valid_key(&key) || key.ends_with("-bin") {
            return Err(RpcMetadataError::InvalidAsciiKey { key });
        }
        if !value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) || b == b'\t')
        {
            return Err(RpcMetadataError::InvalidAsciiValue { key, value });
        }
        Ok(self.ascii.insert(key, value))
    }

    /// Inserts a binary value, returning the previous one.
    pub fn insert_binary(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, RpcMetadataError> {
        let key = key.into();
        if !valid_key(&key) || !key.ends_with("-bin") {
            return Err(RpcMetadataError::InvalidBinaryKey { key });
        }
        Ok(self.binary.insert(key, value.into()))
    }

    /// An ASCII value.
    pub fn get_ascii(&self, key: &str) -> Option<&str> {
        self.ascii.get(key).map(String::as_str)
    }

    /// A binary value.
    pub fn get_binary(&self, key: &str) -> Option<Vec<u8>> {
        self.binary.get(key).cloned()
    }

    /// Removes an ASCII value.
    pub fn remove_ascii(&mut self, key: &str) -> Option<String> {
        self.ascii.remove(key)
    }

    /// Removes a binary value.
    pub fn remove_binary(&mut self, key: &str) -> Option<Vec<u8>> {
        self.binary.remove(key)
    }

    /// Whether there is no metadata.
    pub fn is_empty(&self) -> bool {
        self.ascii.is_empty() && self.binary.is_empty()
    }
}

/// Controls of one high-level operation. `timeout` bounds the operation's waits on the
/// database (for `get_result`, update and query waits); `metadata` must be empty;
/// `retry_options` has no effect.
#[derive(Clone, Debug, PartialEq, bon::Builder)]
#[non_exhaustive]
pub struct RpcOptions {
    /// Must be empty (there is no RPC to attach it to).
    #[builder(default)]
    pub metadata: RpcMetadata,
    /// Bound on the operation's waits.
    pub timeout: Option<Duration>,
    /// No effect.
    pub retry_options: Option<RetryOptions>,
}

impl Default for RpcOptions {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl RpcOptions {
    /// Refuses non-empty metadata (`InvalidArgument`): there is no RPC to attach it to.
    pub(crate) fn refuse_metadata(&self) -> Result<(), tonic::Status> {
        if self.metadata.is_empty() {
            Ok(())
        } else {
            Err(tonic::Status::invalid_argument(
                "RPC metadata is not supported by DBOSify (there is no server to send it to)",
            ))
        }
    }
}

/// Whether a closed workflow id may be reused by a new start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum WorkflowIdReusePolicy {
    /// The default: allow duplicates.
    #[default]
    Unspecified,
    /// Any closed workflow's id may be reused.
    AllowDuplicate,
    /// Only an id whose last run did not complete successfully may be reused.
    AllowDuplicateFailedOnly,
    /// An id may never be reused.
    RejectDuplicate,
}

/// What a start does when a workflow with the id is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum WorkflowIdConflictPolicy {
    /// The default: fail.
    #[default]
    Unspecified,
    /// Fail with [`crate::WorkflowStartError::AlreadyStarted`].
    Fail,
    /// Return a handle to the running workflow.
    UseExisting,
    /// Terminate the running workflow, then start a new one.
    TerminateExisting,
}

/// Options of [`crate::Client::start_workflow`].
///
/// Stored in the run's attributes and honoured by the client: `id_reuse_policy`,
/// `id_conflict_policy`, `search_attributes`, `memo`, `header`, `priority.priority_key` (queue
/// order), `static_summary`, `static_details`; enforced by the workers: `execution_timeout`,
/// `run_timeout`, `retry_policy`, `cron_schedule`. Recorded without effect: `task_timeout`,
/// `enable_eager_workflow_start`. Refused (the start fails with `InvalidArgument`): an invalid
/// or time-zoned `cron_schedule`, non-empty `links`/`completion_callbacks`,
/// `versioning_override`, `priority.fairness_key`/`fairness_weight`, non-empty
/// `rpc_options.metadata`.
#[derive(Debug, Clone, bon::Builder)]
#[builder(start_fn = new, on(String, into))]
#[non_exhaustive]
pub struct WorkflowStartOptions {
    /// The task queue.
    #[builder(start_fn)]
    pub task_queue: String,
    /// The workflow id.
    #[builder(start_fn)]
    pub workflow_id: String,
    /// Reuse of a closed id.
    #[builder(default)]
    pub id_reuse_policy: WorkflowIdReusePolicy,
    /// Conflict with a running workflow of the same id.
    #[builder(default)]
    pub id_conflict_policy: WorkflowIdConflictPolicy,
    /// Timeout of the whole execution chain (continue-as-new, retry and cron runs included):
    /// the run open at the deadline closes TIMED_OUT and nothing follows it.
    pub execution_timeout: Option<Duration>,
    /// Timeout of each run, from its start: the run closes TIMED_OUT and is retried per
    /// `retry_policy`.
    pub run_timeout: Option<Duration>,
    /// Workflow task timeout (no effect: a held run has no task timeout; dead workers are
    /// detected by their lease).
    pub task_timeout: Option<Duration>,
    /// Cron schedule (5-field cron, `@hourly`-style descriptors or `@every <duration>`, UTC):
    /// the first run waits for the first schedule time, each run's close schedules the next.
    pub cron_schedule: Option<String>,
    /// Search attributes.
    pub search_attributes: Option<SearchAttributes>,
    /// No effect (starts are always queued).
    #[builder(default)]
    pub enable_eager_workflow_start: bool,
    /// Workflow retry policy: a run that fails (or reaches its run timeout) is followed by a
    /// retry run with the next attempt number, after the policy's backoff.
    #[builder(into)]
    pub retry_policy: Option<RetryPolicy>,
    /// Refused when non-empty.
    #[builder(default)]
    pub links: Vec<Link>,
    /// Refused when non-empty.
    #[builder(default)]
    pub completion_callbacks: Vec<Callback>,
    /// Priority: the key orders the queue (lower first); fairness is refused.
    #[builder(default)]
    pub priority: Priority,
    /// Refused when set.
    pub versioning_override: Option<VersioningOverride>,
    /// Start headers, passed to the workflow.
    pub header: Option<Header>,
    /// Memo.
    pub memo: Option<MemoValues>,
    /// Static summary.
    pub static_summary: Option<String>,
    /// Static details.
    pub static_details: Option<String>,
    /// Operation controls.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// Options of [`crate::WorkflowHandle::get_result`].
#[derive(Debug, Clone, bon::Builder)]
#[non_exhaustive]
pub struct WorkflowGetResultOptions {
    /// Follow continue-as-new and retry chains to the final run (default `true`).
    #[builder(default = true)]
    pub follow_runs: bool,
    /// `timeout` bounds the whole wait.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

impl Default for WorkflowGetResultOptions {
    fn default() -> Self {
        Self::builder().build()
    }
}

/// Options of [`crate::WorkflowHandle::execute_update`].
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct WorkflowExecuteUpdateOptions {
    /// Update id (idempotency key per run); a UUID when unset.
    pub update_id: Option<String>,
    /// Headers passed to the handler.
    pub header: Option<Header>,
    /// `timeout` bounds each wait.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// Options of [`crate::WorkflowHandle::start_update`].
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct WorkflowStartUpdateOptions {
    /// Update id (idempotency key per run); a UUID when unset.
    pub update_id: Option<String>,
    /// Headers passed to the handler.
    pub header: Option<Header>,
    /// `timeout` bounds the wait for admission.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

impl From<WorkflowExecuteUpdateOptions> for WorkflowStartUpdateOptions {
    fn from(o: WorkflowExecuteUpdateOptions) -> Self {
        Self {
            update_id: o.update_id,
            header: o.header,
            rpc_options: o.rpc_options,
        }
    }
}

/// Options of [`crate::WorkflowHandle::signal`].
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct WorkflowSignalOptions {
    /// Idempotency key: a repeated signal with the same request id is delivered once.
    pub request_id: Option<String>,
    /// Headers passed to the handler.
    pub header: Option<Header>,
    /// Operation controls.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// When a query is rejected based on the workflow status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum QueryRejectCondition {
    /// Never reject.
    #[default]
    Unspecified,
    /// Never reject.
    None,
    /// Reject unless the workflow is running.
    NotOpen,
    /// Reject when the workflow closed other than by completing.
    NotCompletedCleanly,
}

/// Options of [`crate::WorkflowHandle::query`].
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct WorkflowQueryOptions {
    /// Reject condition.
    pub reject_condition: Option<QueryRejectCondition>,
    /// Headers passed to the handler.
    pub header: Option<Header>,
    /// `timeout` bounds the wait for an answer (default 60 s).
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// Options of [`crate::WorkflowHandle::cancel`].
#[derive(Debug, Clone, Default, bon::Builder)]
#[builder(on(String, into))]
#[non_exhaustive]
pub struct WorkflowCancelOptions {
    /// Reason, passed to the workflow's cancellation.
    #[builder(default)]
    pub reason: String,
    /// Idempotency key.
    pub request_id: Option<String>,
    /// Operation controls.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// Options of [`crate::WorkflowHandle::terminate`].
#[derive(Debug, Clone, Default, bon::Builder)]
#[builder(on(String, into))]
#[non_exhaustive]
pub struct WorkflowTerminateOptions {
    /// Reason, kept with the run.
    #[builder(default)]
    pub reason: String,
    /// Details, kept with the run and returned by `get_result`.
    pub details: Option<Payloads>,
    /// Operation controls.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// Options of [`crate::WorkflowHandle::describe`].
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct WorkflowDescribeOptions {
    /// Operation controls.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

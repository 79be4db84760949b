//! The runtime a worker runs on, and low-level tuning types.
//!
//! A [`Runtime`] here is a handle on a tokio runtime: the one the caller is on
//! ([`Runtime::from_current_tokio`]) or one it builds ([`Runtime::new`]). Database I/O and
//! activities run on it; workflow instances run on dedicated workflow threads owned by each
//! worker.

use std::sync::Arc;
use std::time::Duration;

use temporalio_common::telemetry::TelemetryOptions;

use crate::error::RuntimeError;

/// Worker concurrency tuning.
pub mod worker_tuner;

/// Wraps the tokio runtime builder used by [`Runtime::new`].
#[derive(bon::Builder)]
#[builder(state_mod(vis = "pub"))]
#[non_exhaustive]
pub struct TokioRuntimeBuilder {
    /// The tokio runtime builder.
    pub inner: tokio::runtime::Builder,
}

impl Default for TokioRuntimeBuilder {
    fn default() -> Self {
        Self {
            inner: tokio::runtime::Builder::new_multi_thread(),
        }
    }
}

/// Limits on concurrent polls. Accepted for source compatibility: a Postgres worker claims work
/// instead of polling, so only the maximum is meaningful (it bounds claims per round).
#[derive(bon::Builder, Clone, Copy, Debug, PartialEq)]
#[builder(state_mod(vis = "pub"))]
#[non_exhaustive]
pub struct AutoscalingOptions {
    /// Minimum number of concurrent polls.
    pub minimum: usize,
    /// Maximum number of concurrent polls.
    pub maximum: usize,
    /// Initial number of concurrent polls.
    pub initial: usize,
}

/// How many concurrent task polls a worker issues.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum PollerBehavior {
    /// Up to this many concurrent polls.
    SimpleMaximum(usize),
    /// Scale polls between bounds.
    Autoscaling(AutoscalingOptions),
}

/// Workflow-processing errors that may be configured to fail the workflow execution instead of
/// only its workflow task.
#[derive(Clone, Debug, Eq, PartialEq, Hash)]
#[non_exhaustive]
pub enum WorkflowErrorType {
    /// The workflow produced commands that do not match its recorded history.
    Nondeterminism,
}

/// Options of a [`Runtime`]. Construct with [`RuntimeOptions::builder`] or `Default`.
#[derive(bon::Builder)]
#[builder(finish_fn(vis = "", name = build_internal))]
#[non_exhaustive]
pub struct RuntimeOptions {
    /// Telemetry configuration (accepted; this implementation logs through `tracing`).
    #[builder(default)]
    #[allow(dead_code)]
    telemetry_options: TelemetryOptions,
    /// Worker heartbeat interval (between 1 and 60 seconds).
    #[builder(required, default = Some(Duration::from_secs(60)))]
    heartbeat_interval: Option<Duration>,
    /// Do not include environment information in worker heartbeats.
    #[builder(default)]
    #[allow(dead_code)]
    disable_environment_info: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            telemetry_options: TelemetryOptions::default(),
            heartbeat_interval: Some(Duration::from_secs(60)),
            disable_environment_info: false,
        }
    }
}

impl<S: runtime_options_builder::State> RuntimeOptionsBuilder<S> {
    /// Builds the options.
    ///
    /// # Errors
    /// When `heartbeat_interval` is set outside 1..=60 seconds.
    pub fn build(self) -> Result<RuntimeOptions, String> {
        let options = self.build_internal();
        if let Some(interval) = options.heartbeat_interval
            && (interval < Duration::from_secs(1) || interval > Duration::from_secs(60))
        {
            return Err(format!(
                "heartbeat_interval ({interval:?}) must be between 1s and 60s",
            ));
        }
        Ok(options)
    }
}

/// Shared state of workers: the tokio runtime they do I/O and run activities on.
#[derive(Clone)]
pub struct Runtime {
    handle: tokio::runtime::Handle,
    /// Keeps a runtime built by [`Runtime::new`] alive.
    _owned: Option<Arc<OwnedRuntime>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// A runtime this crate built; shut down in the background when the last handle goes, so
/// dropping it inside async code does not panic.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Runtime {
    /// Creates a runtime on a newly built tokio runtime.
    ///
    /// # Errors
    /// When the tokio runtime cannot be built.
    pub fn new(
        options: RuntimeOptions,
        tokio_builder: TokioRuntimeBuilder,
    ) -> Result<Self, RuntimeError> {
        let _ = options;
        let mut builder = tokio_builder.inner;
        let rt = builder
            .enable_all()
            .build()
            .map_err(|e| RuntimeError::Initialization(Box::new(e)))?;
        Ok(Self {
            handle: rt.handle().clone(),
            _owned: Some(Arc::new(OwnedRuntime(Some(rt)))),
        })
    }

    /// Creates a runtime using the tokio runtime the caller is on.
    ///
    /// # Errors
    /// [`RuntimeError::NoCurrentTokioRuntime`] outside a tokio runtime.
    pub fn from_current_tokio(options: RuntimeOptions) -> Result<Self, RuntimeError> {
        let _ = options;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| RuntimeError::NoCurrentTokioRuntime)?;
        Ok(Self {
            handle,
            _owned: None,
        })
    }

    /// Creates a runtime using the tokio runtime the caller is on.
    ///
    /// # Errors
    /// [`RuntimeError::NoCurrentTokioRuntime`] outside a tokio runtime.
    #[deprecated(note = "use `Runtime::from_current_tokio` instead")]
    pub fn new_assume_tokio(options: RuntimeOptions) -> Result<Self, RuntimeError> {
        Self::from_current_tokio(options)
    }

    /// The tokio runtime handle database I/O and activities run on.
    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_current_tokio_without_runtime_fails() {
        assert!(matches!(
            Runtime::from_current_tokio(Default::default()),
            Err(RuntimeError::NoCurrentTokioRuntime)
        ));
    }

    #[test]
    fn heartbeat_interval_is_validated() {
        assert!(
            RuntimeOptions::builder()
                .heartbeat_interval(Some(Duration::from_secs(61)))
                .build()
                .is_err()
        );
        assert!(RuntimeOptions::builder().build().is_ok());
    }
}

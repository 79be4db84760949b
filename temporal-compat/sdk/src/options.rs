//! [`WorkerOptions`]: what a worker runs and how. Built with `WorkerOptions::new(task_queue)`,
//! exactly as in Temporal's SDK.
//!
//! Options that change behaviour and cannot be honoured on Postgres make [`crate::Worker::new`]
//! fail with a clear error (see [`WorkerOptions::unsupported`]); pure tuning knobs of the gRPC
//! poller (sticky queues, poller counts, eager activity reservations) are accepted and have no
//! effect.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use temporalio_common::worker::{WorkerDeploymentOptions, build_id_from_current_exe};
use temporalio_common_wasm::ActivityDefinition;
use temporalio_common_wasm::WorkflowDefinition;
use temporalio_workflow::workflow_interceptors::WorkflowInterceptorConstructor;
use temporalio_workflow::workflows::WorkflowImplementation;

use crate::activities::{ActivityDefinitions, ActivityImplementer, ExecutableActivity};
use crate::interceptors::ActivityInboundInterceptor;
use crate::registry::{WorkflowDefinitions, WorkflowRegistrationError};
use crate::runtime::worker_tuner::WorkerTuner;
use crate::runtime::{PollerBehavior, WorkflowErrorType};

/// Options of a worker.
///
/// The worker runs the workflows and activities registered here. At least one workflow or
/// activity must be registered.
#[derive(bon::Builder, Clone)]
#[builder(start_fn = new, on(String, into), state_mod(vis = "pub"))]
#[non_exhaustive]
pub struct WorkerOptions {
    /// The task queue: the Postgres queue this worker claims workflow runs from, and the queue
    /// of the activities it executes.
    #[builder(start_fn)]
    pub task_queue: String,

    #[builder(field)]
    activities: ActivityDefinitions,

    #[builder(field)]
    workflows: WorkflowDefinitions,

    #[builder(field)]
    activity_inbound_interceptors: Vec<Arc<dyn ActivityInboundInterceptor>>,

    #[builder(field)]
    workflow_interceptor_constructors: Vec<WorkflowInterceptorConstructor>,

    /// Deployment options. Worker versioning (`use_worker_versioning = true`) is not supported.
    #[builder(default = default_deployment())]
    pub deployment_options: WorkerDeploymentOptions,
    /// The worker's identity (its executor id in Postgres). Defaults to the client's identity,
    /// else `{pid}@{hostname}`.
    pub client_identity_override: Option<String>,
    /// How many workflow instances are kept in memory between activations; beyond it the least
    /// recently used idle ones are dropped and rebuilt by replay when next needed.
    #[builder(default = 1000)]
    pub max_cached_workflows: usize,
    /// Slot limits (fixed-size only).
    #[builder(into, default)]
    pub tuner: WorkerTuner,
    /// Accepted; no effect (the worker claims work instead of polling).
    pub workflow_task_poller_behavior: Option<PollerBehavior>,
    /// Accepted; no effect.
    #[builder(default = 0.2)]
    pub nonsticky_to_sticky_poll_ratio: f32,
    /// Accepted; no effect (activities are executed by the worker that runs the workflow).
    pub activity_task_poller_behavior: Option<PollerBehavior>,
    /// Accepted; no effect (Nexus is not supported).
    pub nexus_task_poller_behavior: Option<PollerBehavior>,
    /// Accepted; no effect (no sticky queues: a run stays on the worker that claimed it).
    #[builder(default = Duration::from_secs(10))]
    pub sticky_queue_schedule_to_start_timeout: Duration,
    /// Longest interval between durable heartbeat writes.
    #[builder(default = Duration::from_secs(60))]
    pub max_heartbeat_throttle_interval: Duration,
    /// Interval between durable heartbeat writes when the activity has no heartbeat timeout
    /// (otherwise 80% of the heartbeat timeout).
    #[builder(default = Duration::from_secs(30))]
    pub default_heartbeat_throttle_interval: Duration,
    /// Not supported: setting it fails `Worker::new`.
    pub max_task_queue_activities_per_second: Option<f64>,
    /// Not supported: setting it fails `Worker::new`.
    pub max_worker_activities_per_second: Option<f64>,
    /// Accepted; no effect (activities always run in the workflow's worker).
    #[builder(default = 3)]
    pub max_eager_activity_reservations_per_workflow_task: usize,
    /// Error types that fail the workflow execution instead of its workflow task.
    #[builder(default)]
    pub workflow_failure_errors: HashSet<WorkflowErrorType>,
    /// Like `workflow_failure_errors`, per workflow type.
    #[builder(default)]
    pub workflow_types_to_failure_errors: HashMap<String, HashSet<WorkflowErrorType>>,
    /// After shutdown starts, how long running activities may finish before they are cancelled.
    pub graceful_shutdown_period: Option<Duration>,
    /// Detect workflow code woken by non-SDK sources (tokio timers, channels, threads).
    #[builder(default = true)]
    pub detect_nondeterministic_futures: bool,
}

fn default_deployment() -> WorkerDeploymentOptions {
    WorkerDeploymentOptions::from_build_id(build_id_from_current_exe().to_owned())
}

impl<S: worker_options_builder::State> WorkerOptionsBuilder<S> {
    /// Adds an activity inbound interceptor (outermost first, in registration order).
    pub fn activity_inbound_interceptor<I: ActivityInboundInterceptor>(
        mut self,
        interceptor: I,
    ) -> Self {
        self.activity_inbound_interceptors
            .push(Arc::new(interceptor));
        self
    }

    /// Adds a workflow interceptor constructor.
    pub fn workflow_interceptor(mut self, constructor: WorkflowInterceptorConstructor) -> Self {
        self.workflow_interceptor_constructors.push(constructor);
        self
    }

    /// Registers every activity of `instance`'s type.
    pub fn register_activities<AI: ActivityImplementer>(mut self, instance: AI) -> Self {
        self.activities.register_activities::<AI>(instance);
        self
    }

    /// Registers one activity.
    pub fn register_activity<AD>(mut self, instance: Arc<AD::Implementer>) -> Self
    where
        AD: ActivityDefinition + ExecutableActivity,
        AD::Input: Send + Sync,
        AD::Output: Send + Sync,
    {
        self.activities.register_activity::<AD>(instance);
        self
    }

    /// Registers a workflow type.
    ///
    /// # Errors
    /// When its type name is already registered.
    pub fn register_workflow<W>(mut self) -> Result<Self, WorkflowRegistrationError>
    where
        W: WorkflowImplementation,
        <W::Run as WorkflowDefinition>::Input: Send,
    {
        self.workflows.register_workflow::<W>()?;
        Ok(self)
    }

    /// Registers a workflow type whose instances `factory` makes (advanced; easily
    /// nondeterministic).
    ///
    /// # Errors
    /// When its type name is already registered, or it has an `#[init]` method.
    pub fn register_workflow_with_factory<W, F>(
        mut self,
        factory: F,
    ) -> Result<Self, WorkflowRegistrationError>
    where
        W: WorkflowImplementation,
        <W::Run as WorkflowDefinition>::Input: Send,
        F: Fn() -> W + Send + Sync + 'static,
    {
        self.workflows
            .register_workflow_run_with_factory::<W, F>(factory)?;
        Ok(self)
    }

    /// Replaces the workflow interceptor constructors.
    pub fn register_workflow_interceptors(
        mut self,
        constructors: Vec<WorkflowInterceptorConstructor>,
    ) -> Self {
        self.workflow_interceptor_constructors = constructors;
        self
    }

    /// The workflow interceptor constructors, mutably.
    pub fn workflow_interceptor_constructors_mut(
        &mut self,
    ) -> &mut Vec<WorkflowInterceptorConstructor> {
        &mut self.workflow_interceptor_constructors
    }
}

impl WorkerOptions {
    /// Adds an activity inbound interceptor.
    pub fn activity_inbound_interceptor<I: ActivityInboundInterceptor>(
        &mut self,
        interceptor: I,
    ) -> &mut Self {
        self.activity_inbound_interceptors
            .push(Arc::new(interceptor));
        self
    }

    /// Adds a workflow interceptor constructor.
    pub fn workflow_interceptor(
        &mut self,
        constructor: WorkflowInterceptorConstructor,
    ) -> &mut Self {
        self.workflow_interceptor_constructors.push(constructor);
        self
    }

    /// Registers every activity of `instance`'s type.
    pub fn register_activities<AI: ActivityImplementer>(&mut self, instance: AI) -> &mut Self {
        self.activities.register_activities::<AI>(instance);
        self
    }

    /// Registers one activity.
    pub fn register_activity<AD>(&mut self, instance: Arc<AD::Implementer>) -> &mut Self
    where
        AD: ActivityDefinition + ExecutableActivity,
        AD::Input: Send + Sync,
        AD::Output: Send + Sync,
    {
        self.activities.register_activity::<AD>(instance);
        self
    }

    /// A copy of the registered activities.
    pub fn activities(&self) -> ActivityDefinitions {
        self.activities.clone()
    }

    /// Registers a workflow type.
    ///
    /// # Errors
    /// When its type name is already registered.
    pub fn register_workflow<W>(&mut self) -> Result<&mut Self, WorkflowRegistrationError>
    where
        W: WorkflowImplementation,
        <W::Run as WorkflowDefinition>::Input: Send,
    {
        self.workflows.register_workflow::<W>()?;
        Ok(self)
    }

    /// Registers a workflow type whose instances `factory` makes.
    ///
    /// # Errors
    /// When its type name is already registered, or it has an `#[init]` method.
    pub fn register_workflow_with_factory<W, F>(
        &mut self,
        factory: F,
    ) -> Result<&mut Self, WorkflowRegistrationError>
    where
        W: WorkflowImplementation,
        <W::Run as WorkflowDefinition>::Input: Send,
        F: Fn() -> W + Send + Sync + 'static,
    {
        self.workflows
            .register_workflow_run_with_factory::<W, F>(factory)?;
        Ok(self)
    }

    /// Replaces the workflow interceptor constructors.
    pub fn register_workflow_interceptors(
        &mut self,
        constructors: Vec<WorkflowInterceptorConstructor>,
    ) -> &mut Self {
        self.workflow_interceptor_constructors = constructors;
        self
    }

    /// A copy of the registered workflows.
    pub fn workflows(&self) -> WorkflowDefinitions {
        self.workflows.clone()
    }

    pub(crate) fn take_registrations(
        &mut self,
    ) -> (
        WorkflowDefinitions,
        ActivityDefinitions,
        Vec<Arc<dyn ActivityInboundInterceptor>>,
        Vec<WorkflowInterceptorConstructor>,
    ) {
        (
            std::mem::take(&mut self.workflows),
            std::mem::take(&mut self.activities),
            std::mem::take(&mut self.activity_inbound_interceptors),
            std::mem::take(&mut self.workflow_interceptor_constructors),
        )
    }

    /// Everything set in these options that this implementation cannot honour, as messages
    /// (empty when all is well). `Worker::new` fails when this is not empty.
    pub fn unsupported(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.workflows.is_empty() && self.activities.is_empty() {
            out.push("At least one workflow or activity must be registered".to_string());
        }
        if self.deployment_options.use_worker_versioning {
            out.push(
                "deployment_options.use_worker_versioning = true: worker versioning is not \
                 supported by DBOSify"
                    .to_string(),
            );
        }
        if self.max_task_queue_activities_per_second.is_some() {
            out.push(
                "max_task_queue_activities_per_second: server-side activity rate limits are not \
                 supported by DBOSify"
                    .to_string(),
            );
        }
        if self.max_worker_activities_per_second.is_some() {
            out.push(
                "max_worker_activities_per_second: per-worker activity rate limits are not \
                 supported by DBOSify"
                    .to_string(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_options_are_reported() {
        let o = WorkerOptions::new("q").build();
        assert_eq!(
            o.unsupported(),
            vec!["At least one workflow or activity must be registered".to_string()]
        );
        let o = WorkerOptions::new("q")
            .max_worker_activities_per_second(10.0)
            .max_task_queue_activities_per_second(5.0)
            .build();
        let problems = o.unsupported();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[1].contains("max_task_queue_activities_per_second"));
        assert!(problems[2].contains("max_worker_activities_per_second"));
    }

    #[test]
    fn worker_versioning_is_refused() {
        let mut deployment = default_deployment();
        deployment.use_worker_versioning = true;
        let o = WorkerOptions::new("q")
            .deployment_options(deployment)
            .build();
        let problems = o.unsupported();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[1].contains("use_worker_versioning"),
            "{problems:?}"
        );
    }

    /// The gRPC poller's tuning knobs have no meaning without pollers or sticky queues: they
    /// are accepted (Temporal's programs set them) and change nothing.
    #[test]
    fn poller_tuning_knobs_are_accepted() {
        let o = WorkerOptions::new("q")
            .workflow_task_poller_behavior(PollerBehavior::SimpleMaximum(7))
            .activity_task_poller_behavior(PollerBehavior::SimpleMaximum(3))
            .nexus_task_poller_behavior(PollerBehavior::SimpleMaximum(1))
            .nonsticky_to_sticky_poll_ratio(0.7)
            .sticky_queue_schedule_to_start_timeout(Duration::from_secs(1))
            .max_eager_activity_reservations_per_workflow_task(9)
            .build();
        assert_eq!(
            o.unsupported(),
            vec!["At least one workflow or activity must be registered".to_string()]
        );
    }
}

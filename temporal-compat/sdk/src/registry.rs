//! The workflow registry: workflow type name → definition and instance factory.
//!
//! A factory turns the `InitializeWorkflow` job of a run into a live upstream
//! [`WorkflowInstance`] bound to our host's command sink.

use std::collections::HashMap;
use std::fmt::Debug;
use std::rc::Rc;
use std::sync::Arc;

use temporalio_common_wasm::WorkflowDefinition;
use temporalio_common_wasm::data_converters::{
    DataConverter, GenericPayloadConverter, SerializationContext, SerializationContextData,
    WorkflowSerializationContext,
};
use temporalio_common_wasm::protos::coresdk::workflow_activation::InitializeWorkflow;
use temporalio_workflow::__private::sdk::{
    GuestWorkflowInstance, WorkflowHost, WorkflowInit, WorkflowInstance,
};
use temporalio_workflow::BaseWorkflowContext;
use temporalio_workflow::workflow_interceptors::WorkflowInterceptorConstructor;
use temporalio_workflow::workflows::{WorkflowDefinitionDescriptor, WorkflowImplementation};

/// Everything a factory needs to build one run's instance.
pub(crate) struct InstanceInput {
    /// The namespace.
    pub namespace: String,
    /// The run's task queue.
    pub task_queue: String,
    /// The run id.
    pub run_id: String,
    /// The first activation's initialization job.
    pub init: InitializeWorkflow,
    /// The data converter.
    pub data_converter: DataConverter,
    /// The command sink.
    pub host: Rc<dyn WorkflowHost>,
    /// Workflow interceptor constructors.
    pub interceptors: Vec<WorkflowInterceptorConstructor>,
}

/// Builds a workflow instance; errors are instantiation failures (e.g. undecodable input).
pub(crate) type InstanceFactory =
    Arc<dyn Fn(InstanceInput) -> Result<Box<dyn WorkflowInstance>, anyhow::Error> + Send + Sync>;

#[derive(Clone)]
struct Registered {
    definition: WorkflowDefinitionDescriptor,
    factory: InstanceFactory,
}

/// Why a workflow could not be registered.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WorkflowRegistrationError {
    /// A workflow of this type is already registered.
    #[error("Workflow type {workflow_type} is already registered")]
    DuplicateWorkflowType {
        /// The workflow type.
        workflow_type: String,
    },
    /// Factory registration of a workflow that has an `#[init]` method.
    #[error(
        "Workflow type {workflow_type} must not define an #[init] method when registered with a factory"
    )]
    FactoryRegistrationWithInit {
        /// The workflow type.
        workflow_type: String,
    },
}

/// The workflows a worker can run, by workflow type.
#[derive(Default, Clone)]
pub struct WorkflowDefinitions {
    workflows: HashMap<String, Registered>,
}

impl Debug for WorkflowDefinitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.workflows.keys().collect();
        names.sort_unstable();
        f.debug_struct("WorkflowDefinitions")
            .field("workflows", &names)
            .finish()
    }
}

fn split_input(
    input: InstanceInput,
) -> (
    Vec<temporalio_common_wasm::protos::temporal::api::common::v1::Payload>,
    DataConverter,
    BaseWorkflowContext,
) {
    let InstanceInput {
        namespace,
        task_queue,
        run_id,
        init,
        data_converter,
        host,
        interceptors,
    } = input;
    let arguments = init.arguments.clone();
    let base = BaseWorkflowContext::from_raw(
        WorkflowInit {
            namespace,
            task_queue,
            run_id,
            initialize_workflow: init,
        },
        data_converter.clone(),
        host,
        None,
        interceptors,
    );
    (arguments, data_converter, base)
}

impl WorkflowDefinitions {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a `#[workflow]` type.
    ///
    /// # Errors
    /// When the type name is already registered.
    pub fn register_workflow<W: WorkflowImplementation>(
        &mut self,
    ) -> Result<&mut Self, WorkflowRegistrationError>
    where
        <W::Run as WorkflowDefinition>::Input: Send,
    {
        let factory: InstanceFactory = Arc::new(|input| {
            let (arguments, dc, base) = split_input(input);
            let pc = dc.payload_converter().clone();
            GuestWorkflowInstance::<W>::instantiate(arguments, pc, base)
                .map_err(|e| anyhow::anyhow!("Failed to create workflow: {e}"))
        });
        self.insert(W::definition(), factory)?;
        Ok(self)
    }

    /// Registers a workflow type whose instances are made by `make` (not allowed with `#[init]`).
    ///
    /// # Errors
    /// When the type is already registered or has an `#[init]` method.
    pub fn register_workflow_run_with_factory<W, F>(
        &mut self,
        make: F,
    ) -> Result<&mut Self, WorkflowRegistrationError>
    where
        W: WorkflowImplementation,
        <W::Run as WorkflowDefinition>::Input: Send,
        F: Fn() -> W + Send + Sync + 'static,
    {
        if W::HAS_INIT {
            return Err(WorkflowRegistrationError::FactoryRegistrationWithInit {
                workflow_type: W::definition().workflow_type,
            });
        }
        let factory: InstanceFactory = Arc::new(move |input| {
            let (arguments, dc, base) = split_input(input);
            let cdata = SerializationContextData::Workflow(WorkflowSerializationContext::new());
            let pc = dc.payload_converter();
            let sctx = SerializationContext::new(&cdata, pc);
            let typed: <W::Run as WorkflowDefinition>::Input =
                pc.from_payloads(&sctx, arguments)
                    .map_err(|e| anyhow::anyhow!("Failed to create workflow: {e}"))?;
            Ok(Box::new(GuestWorkflowInstance::<W>::new_with_workflow(
                make(),
                base,
                Some(typed),
            )) as Box<dyn WorkflowInstance>)
        });
        self.insert(W::definition(), factory)?;
        Ok(self)
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.workflows.is_empty()
    }

    /// The registered definitions.
    pub fn workflow_definitions(&self) -> impl Iterator<Item = &WorkflowDefinitionDescriptor> + '_ {
        self.workflows.values().map(|r| &r.definition)
    }

    fn insert(
        &mut self,
        definition: WorkflowDefinitionDescriptor,
        factory: InstanceFactory,
    ) -> Result<(), WorkflowRegistrationError> {
        let workflow_type = definition.workflow_type.clone();
        if self.workflows.contains_key(&workflow_type) {
            return Err(WorkflowRegistrationError::DuplicateWorkflowType { workflow_type });
        }
        self.workflows.insert(
            workflow_type,
            Registered {
                definition,
                factory,
            },
        );
        Ok(())
    }

    pub(crate) fn factory(&self, workflow_type: &str) -> Option<InstanceFactory> {
        self.workflows.get(workflow_type).map(|r| r.factory.clone())
    }

    /// Whether `workflow_type` declares a handler for signal `name` (unknown types: `true`).
    pub(crate) fn has_signal(&self, workflow_type: &str, name: &str) -> bool {
        self.workflows
            .get(workflow_type)
            .is_none_or(|r| r.definition.signals.iter().any(|s| s == name))
    }

    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.workflows.keys().cloned().collect();
        names.sort_unstable();
        names
    }
}

//! Workflow authoring APIs (re-exported from `temporalio-workflow`) and workflow registration.

pub use temporalio_workflow::workflows::*;

pub use crate::registry::{WorkflowDefinitions, WorkflowRegistrationError};
#[doc(inline)]
pub use temporalio_macros::{workflow, workflow_methods};

//! Interceptors of calls into workflow code and of the commands workflow code issues.
//!
//! These are Temporal's own (from `temporalio-workflow`); register constructors with
//! [`crate::WorkerOptionsBuilder::workflow_interceptor`].

pub use temporalio_workflow::workflow_interceptors::*;

//! User-definable interceptors of activity execution.
//!
//! An [`ActivityInboundInterceptor`] wraps every activity this worker executes; interceptors
//! registered with [`crate::WorkerOptionsBuilder::activity_inbound_interceptor`] run
//! outermost-first in registration order. Each one receives the decoded input and a [`Next`]
//! continuation, and returns the (type-erased) output future.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use temporalio_common_wasm::data_converters::{
    GenericPayloadConverter, PayloadConversionError, SerializationContext, TemporalSerializable,
};
use temporalio_common_wasm::protos::temporal::api::common::v1::Payload;

use crate::activities::{ActivityContext, ActivityError, ActivityInfo};

/// The rest of an interceptor chain. Call [`Next::run`] to continue it.
pub struct Next<'a, I, O> {
    step: Box<dyn FnOnce(I) -> O + Send + 'a>,
}

impl<'a, I, O> Next<'a, I, O> {
    pub(crate) fn new(step: impl FnOnce(I) -> O + Send + 'a) -> Self {
        Self {
            step: Box::new(step),
        }
    }

    /// Runs the rest of the chain with `input`.
    pub fn run(self, input: I) -> O {
        (self.step)(input)
    }
}

/// What an activity interceptor sees of one activity execution.
#[non_exhaustive]
pub struct ExecuteActivityInput {
    context: ActivityContext,
    args: Box<dyn Any + Send + Sync>,
}

impl ExecuteActivityInput {
    pub(crate) fn new(context: ActivityContext, args: Box<dyn Any + Send + Sync>) -> Self {
        Self { context, args }
    }

    pub(crate) fn into_parts(self) -> (ActivityContext, Box<dyn Any + Send + Sync>) {
        (self.context, self.args)
    }

    /// Information about the activity execution.
    pub fn activity_info(&self) -> &ActivityInfo {
        self.context.info()
    }

    /// Headers attached to the activity.
    pub fn headers(&self) -> &HashMap<String, Payload> {
        self.context.headers()
    }

    /// Mutable access to the headers attached to the activity.
    pub fn headers_mut(&mut self) -> &mut HashMap<String, Payload> {
        self.context.headers_mut()
    }

    /// The decoded arguments, if they are of type `T`.
    pub fn args_ref<T: Any>(&self) -> Option<&T> {
        self.args.downcast_ref()
    }

    /// Mutable access to the decoded arguments, if they are of type `T`.
    pub fn args_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.args.downcast_mut()
    }
}

mod sealed {
    use super::*;

    /// Serialization of the erased output (sealed: implemented for every serializable type).
    pub trait Sealed {
        fn encode_output(
            &self,
            context: &SerializationContext<'_>,
        ) -> Result<Payload, PayloadConversionError>;
    }

    impl<T> Sealed for T
    where
        T: Any + TemporalSerializable + Send + Sync,
    {
        fn encode_output(
            &self,
            context: &SerializationContext<'_>,
        ) -> Result<Payload, PayloadConversionError> {
            context.converter.to_payload(context, self)
        }
    }
}

/// An activity's output, type-erased while it travels back through the interceptor chain.
pub trait ActivityExecutionValue:
    Any + TemporalSerializable + Send + Sync + sealed::Sealed
{
    /// This value as [`Any`].
    fn as_any(&self) -> &dyn Any;
}

impl<T> ActivityExecutionValue for T
where
    T: Any + TemporalSerializable + Send + Sync,
{
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl dyn ActivityExecutionValue {
    /// The output, if it is of type `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.as_any().downcast_ref()
    }

    pub(crate) fn serialize_output(
        &self,
        context: &SerializationContext<'_>,
    ) -> Result<Payload, PayloadConversionError> {
        sealed::Sealed::encode_output(self, context)
    }
}

/// The result of an activity execution as it travels through the interceptor chain.
pub type ExecuteActivityResult = Result<Box<dyn ActivityExecutionValue>, ActivityError>;

/// The future an activity interceptor returns.
pub type ExecuteActivityOutput<'a> = BoxFuture<'a, ExecuteActivityResult>;

/// Intercepts activity executions on this worker.
pub trait ActivityInboundInterceptor: Send + Sync + 'static {
    /// Called to execute an activity; the default just continues the chain.
    fn execute_activity<'a>(
        &'a self,
        input: ExecuteActivityInput,
        next: Next<'a, ExecuteActivityInput, ExecuteActivityOutput<'a>>,
    ) -> ExecuteActivityOutput<'a> {
        next.run(input)
    }
}

/// Runs `input` through `interceptors` (outermost first), ending at `last`.
pub(crate) fn run_chain<'a>(
    interceptors: &'a [Arc<dyn ActivityInboundInterceptor>],
    input: ExecuteActivityInput,
    last: Next<'a, ExecuteActivityInput, ExecuteActivityOutput<'a>>,
) -> ExecuteActivityOutput<'a> {
    match interceptors.split_first() {
        Some((outer, inner)) => {
            outer.execute_activity(input, Next::new(move |input| run_chain(inner, input, last)))
        }
        None => last.run(input),
    }
}

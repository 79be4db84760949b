//! The welcome workflow: look a customer up, wait a moment (a durable timer), then send them a
//! welcome note. Two activities and a timer, written against Temporal's Rust SDK API.

use std::time::Duration;

use temporalio_macros::{activities, workflow, workflow_methods};
use temporalio_sdk::{
    ActivityOptions, WorkflowContext, WorkflowResult,
    activities::{ActivityContext, ActivityError},
};

/// The task queue the sample worker serves.
pub const TASK_QUEUE: &str = "welcome";

/// Sends a new customer a welcome note.
#[workflow]
#[derive(Default)]
pub struct WelcomeWorkflow;

#[workflow_methods]
impl WelcomeWorkflow {
    /// Looks the customer up, waits, and sends the note; returns the note.
    #[run]
    pub async fn run(ctx: &mut WorkflowContext<Self>, customer: String) -> WorkflowResult<String> {
        let options = ActivityOptions::start_to_close_timeout(Duration::from_secs(10));
        let display_name = ctx
            .execute_activity(CustomerActivities::display_name, customer, options.clone())
            .await?;
        ctx.timer(Duration::from_millis(250)).await;
        let note = ctx
            .execute_activity(CustomerActivities::welcome_note, display_name, options)
            .await?;
        Ok(note)
    }
}

/// Activities of the welcome workflow.
pub struct CustomerActivities;

#[activities]
impl CustomerActivities {
    /// Turns a customer handle into a display name.
    #[activity]
    pub async fn display_name(
        _ctx: ActivityContext,
        customer: String,
    ) -> Result<String, ActivityError> {
        let mut chars = customer.chars();
        Ok(match chars.next() {
            Some(first) => first.to_uppercase().chain(chars).collect(),
            None => "friend".to_string(),
        })
    }

    /// Writes the welcome note.
    #[activity]
    pub async fn welcome_note(
        _ctx: ActivityContext,
        name: String,
    ) -> Result<String, ActivityError> {
        Ok(format!("Welcome aboard, {name}!"))
    }
}

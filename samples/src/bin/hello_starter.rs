//! Sample starter: starts one welcome workflow and prints its result.
//! Connects to the Postgres named by `TEMPORAL_ADDRESS` (or `DBOS_SYSTEM_DATABASE_URL`).

#[path = "../welcome.rs"]
mod welcome;

use temporalio_client::{
    Client, ClientOptions, Connection, WorkflowGetResultOptions, WorkflowStartOptions,
    envconfig::LoadClientConfigProfileOptions,
};
use welcome::{TASK_QUEUE, WelcomeWorkflow};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (connection_options, client_options) =
        ClientOptions::load_from_config(LoadClientConfigProfileOptions::default())?;
    let connection = Connection::connect(connection_options).await?;
    let client = Client::new(connection, client_options)?;
    let customer = std::env::args().nth(1).unwrap_or_else(|| "ada".to_string());
    let workflow_id = format!("welcome-{customer}-{}", std::process::id());
    let handle = client
        .start_workflow(
            WelcomeWorkflow::run,
            customer,
            WorkflowStartOptions::new(TASK_QUEUE, workflow_id).build(),
        )
        .await?;
    println!("Started workflow, run_id: {:?}", handle.run_id());
    let result = handle
        .get_result(WorkflowGetResultOptions::default())
        .await?;
    println!("Workflow result: {result}");
    Ok(())
}

//! The kill-and-recover tests' starter: starts [`RecoveryWorkflow`] runs and exits without
//! waiting for them. Written like any Temporal starter (see `samples/src/bin/hello_starter.rs`);
//! connects to the Postgres named by `TEMPORAL_ADDRESS`.
//!
//! Usage: `recovery_starter <plan as JSON> <workflow id>...`: starts one run per id, each with
//! that plan, and prints `STARTED <workflow id> <run id>` for each.

use conformance_tests::recovery::{Plan, RecoveryWorkflow, TASK_QUEUE};
use temporalio_client::{
    Client, ClientOptions, Connection, WorkflowStartOptions,
    envconfig::LoadClientConfigProfileOptions,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let plan: Plan = serde_json::from_str(
        &args
            .next()
            .ok_or("usage: recovery_starter <plan json> <workflow id>...")?,
    )?;
    let ids: Vec<String> = args.collect();
    if ids.is_empty() {
        return Err("no workflow ids given".into());
    }
    let (connection_options, client_options) =
        ClientOptions::load_from_config(LoadClientConfigProfileOptions::default())?;
    let connection = Connection::connect(connection_options).await?;
    let client = Client::new(connection, client_options)?;
    for id in ids {
        let handle = client
            .start_workflow(
                RecoveryWorkflow::run,
                plan.clone(),
                WorkflowStartOptions::new(TASK_QUEUE, id.clone()).build(),
            )
            .await?;
        println!("STARTED {id} {}", handle.run_id().unwrap_or_default());
    }
    Ok(())
}

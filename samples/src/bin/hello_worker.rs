//! Sample worker: serves the welcome workflow on its task queue until interrupted.
//! Connects to the Postgres named by `TEMPORAL_ADDRESS` (or `DBOS_SYSTEM_DATABASE_URL`).

#[path = "../welcome.rs"]
mod welcome;

use temporalio_client::{
    Client, ClientOptions, Connection, envconfig::LoadClientConfigProfileOptions,
};
use temporalio_sdk::{Runtime, Worker, WorkerOptions};
use welcome::{CustomerActivities, TASK_QUEUE, WelcomeWorkflow};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = Runtime::from_current_tokio(Default::default())?;
    let (connection_options, client_options) =
        ClientOptions::load_from_config(LoadClientConfigProfileOptions::default())?;
    let connection = Connection::connect(connection_options).await?;
    let client = Client::new(connection, client_options)?;
    let options = WorkerOptions::new(TASK_QUEUE)
        .register_workflow::<WelcomeWorkflow>()?
        .register_activities(CustomerActivities)
        .build();
    let mut worker = Worker::new(&runtime, client, options)?;
    println!("Worker started on task queue: {TASK_QUEUE}");
    worker.run().await?;
    Ok(())
}

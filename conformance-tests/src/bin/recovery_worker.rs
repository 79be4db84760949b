//! The kill-and-recover tests' worker: serves [`RecoveryWorkflow`], [`MessageWorkflow`] and
//! their activities on the `recovery` task queue until killed. Written like any Temporal worker (see
//! `samples/src/bin/hello_worker.rs`); connects to the Postgres named by `TEMPORAL_ADDRESS`.
//!
//! Usage: `recovery_worker [--identity <id>]`. With `--identity` the worker's identity (its
//! executor id) is fixed, so a restarted worker recovers its own runs at once; without it the
//! identity is Temporal's default (`pid@host`), as in an unchanged user program. Activities
//! record their executions in the effects table of the same database and wait for gate files in
//! the working directory (see `conformance_tests::recovery`).

use conformance_tests::recovery::{
    MessageWorkflow, RecoveryActivities, RecoveryWorkflow, TASK_QUEUE,
};
use temporalio_client::{
    Client, ClientOptions, Connection, envconfig::LoadClientConfigProfileOptions,
};
use temporalio_sdk::{Runtime, Worker, WorkerOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The engine's warnings (and more with `RUST_LOG`) go to stderr, which the test captures.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut identity = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--identity" => identity = Some(args.next().ok_or("--identity needs a value")?),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let database_url = std::env::var("TEMPORAL_ADDRESS")
        .map_err(|_| "TEMPORAL_ADDRESS must name the test database")?;
    let effects = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&database_url)
        .await?;
    let worker_name = identity
        .clone()
        .unwrap_or_else(|| format!("pid{}", std::process::id()));
    let activities =
        RecoveryActivities::new(effects, worker_name.clone(), std::env::current_dir()?);

    let runtime = Runtime::from_current_tokio(Default::default())?;
    let (connection_options, client_options) =
        ClientOptions::load_from_config(LoadClientConfigProfileOptions::default())?;
    let connection = Connection::connect(connection_options).await?;
    let client = Client::new(connection, client_options)?;
    let options = WorkerOptions::new(TASK_QUEUE)
        .register_workflow::<RecoveryWorkflow>()?
        .register_workflow::<MessageWorkflow>()?
        .register_activities(activities)
        .maybe_client_identity_override(identity)
        .build();
    let mut worker = Worker::new(&runtime, client, options)?;
    println!("WORKER READY {worker_name} pid={}", std::process::id());
    worker.run().await?;
    println!("WORKER STOPPED {worker_name}");
    Ok(())
}

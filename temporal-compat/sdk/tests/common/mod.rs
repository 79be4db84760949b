//! Shared helpers of the end-to-end tests: a fresh namespace per test, a worker on it, and
//! starting/awaiting runs through the client wire protocol.

#![allow(dead_code)]

use std::time::Duration;

use dbos_core::SystemDatabase;
use temporal_compat::{Runtime, Worker, WorkerOptions};
use temporal_compat_client::protocol::{self, InboxMessage, RunAttributes, TerminalOutcome};
use temporalio_common_wasm::data_converters::{
    DataConverter, GenericPayloadConverter, SerializationContext, SerializationContextData,
    TemporalDeserializable, TemporalSerializable, WorkflowSerializationContext,
};
use temporalio_common_wasm::protos::temporal::api::common::v1::Payload;
use tokio::task::JoinHandle;

pub fn database_url() -> String {
    std::env::var("DBOSIFY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A test environment: a fresh namespace and its system database.
pub struct Env {
    pub url: String,
    pub namespace: String,
    pub db: SystemDatabase,
}

impl Env {
    pub async fn new() -> Self {
        init_tracing();
        let url = database_url();
        let namespace = format!("sdk_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let db = protocol::system_database(&url, &namespace).await.unwrap();
        Self { url, namespace, db }
    }

    /// Starts a worker; returns its task and its shutdown function.
    pub fn worker(
        &self,
        identity: Option<&str>,
        options: WorkerOptions,
    ) -> (JoinHandle<()>, Box<dyn Fn() + Send + Sync>) {
        let runtime = Runtime::from_current_tokio(Default::default()).unwrap();
        let mut worker = Worker::new_with_target(
            &runtime,
            &self.url,
            &self.namespace,
            identity.unwrap_or(""),
            DataConverter::default(),
            options,
        )
        .unwrap();
        let stop = worker.shutdown_handle();
        let task = tokio::spawn(async move {
            worker.run().await.unwrap();
        });
        (task, Box::new(stop))
    }

    /// Starts run 0 of `workflow_id`.
    pub async fn start(
        &self,
        workflow_type: &str,
        workflow_id: &str,
        task_queue: &str,
        input: Vec<Payload>,
    ) -> String {
        let attrs = RunAttributes::new(workflow_id, workflow_type, task_queue);
        let run_id = protocol::run_id(workflow_id, 0);
        let req = protocol::new_run_request(&run_id, &attrs, &input);
        self.db.enqueue(req).await.unwrap();
        run_id
    }

    /// The outcome of one run (waits up to `secs`).
    pub async fn outcome(&self, run_id: &str, secs: u64) -> TerminalOutcome {
        let status = self
            .db
            .await_outcome(run_id, Some(Duration::from_secs(secs)))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("run {run_id} did not finish within {secs}s"));
        TerminalOutcome::from_status(&status).unwrap().unwrap()
    }

    /// The outcome at the end of a continue-as-new chain, and the run that produced it.
    pub async fn final_outcome(&self, run_id: &str, secs: u64) -> (String, TerminalOutcome) {
        let mut run = run_id.to_string();
        loop {
            let o = self.outcome(&run, secs).await;
            match &o {
                TerminalOutcome::ContinuedAsNew { next_run_id } => run = next_run_id.clone(),
                _ => return (run, o),
            }
        }
    }

    pub async fn send(&self, run_id: &str, msg: InboxMessage) {
        self.db
            .send(run_id, protocol::INBOX_TOPIC, &msg.encode(), None)
            .await
            .unwrap();
    }
}

fn ctx_data() -> SerializationContextData {
    SerializationContextData::Workflow(WorkflowSerializationContext::new())
}

pub fn payloads<T: TemporalSerializable + 'static>(v: &T) -> Vec<Payload> {
    let dc = DataConverter::default();
    let cd = ctx_data();
    let ctx = SerializationContext::new(&cd, dc.payload_converter());
    dc.payload_converter().to_payloads(&ctx, v).unwrap()
}

pub fn value<T: TemporalDeserializable + 'static>(p: Vec<Payload>) -> T {
    let dc = DataConverter::default();
    let cd = ctx_data();
    let ctx = SerializationContext::new(&cd, dc.payload_converter());
    dc.payload_converter().from_payloads(&ctx, p).unwrap()
}

/// The completed result of an outcome, or a panic with the outcome.
pub fn completed<T: TemporalDeserializable + 'static>(o: TerminalOutcome) -> T {
    match o {
        TerminalOutcome::Completed { result } => value(result),
        other => panic!("expected a completed run, got {other:?}"),
    }
}

/// The failure message chain of a failed outcome.
pub fn failure_text(o: &TerminalOutcome) -> String {
    match o {
        TerminalOutcome::Failed { failure, .. } => {
            let mut out = failure.message.clone();
            let mut cause = failure.cause.as_deref();
            while let Some(c) = cause {
                out.push_str(" / ");
                out.push_str(&c.message);
                cause = c.cause.as_deref();
            }
            out
        }
        other => panic!("expected a failed run, got {other:?}"),
    }
}

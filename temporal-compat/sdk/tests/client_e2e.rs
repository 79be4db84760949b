//! End to end with the real client crate (`temporal-compat-client`): start, result, signal,
//! query, update and cancel, as a Temporal program would do them.

extern crate temporal_compat as temporalio_sdk;

mod common;

use std::str::FromStr;
use std::time::Duration;

use temporal_compat::activities::{ActivityContext, ActivityError};
use temporal_compat::{
    ActivityOptions, Runtime, SyncWorkflowContext, TimerResult, Worker, WorkerOptions,
    WorkflowContext, WorkflowContextView, WorkflowResult,
};
use temporal_compat_client::{
    Client, ClientOptions, Connection, ConnectionOptions, WorkflowCancelOptions,
    WorkflowExecuteUpdateOptions, WorkflowGetResultOptions, WorkflowQueryOptions,
    WorkflowSignalOptions, WorkflowStartOptions,
};
use temporalio_macros::{activities, workflow, workflow_methods};

struct Greetings;

#[activities]
impl Greetings {
    #[activity]
    async fn greet(ctx: ActivityContext, name: String) -> Result<String, ActivityError> {
        // The activity can reach its workflow through the worker's client.
        assert!(ctx.info().workflow_id.is_some());
        Ok(format!("Hello, {name}!"))
    }
}

#[workflow]
#[derive(Default)]
struct Hello;

#[workflow_methods]
impl Hello {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>, name: String) -> WorkflowResult<String> {
        Ok(ctx
            .execute_activity(
                Greetings::greet,
                name,
                ActivityOptions::start_to_close_timeout(Duration::from_secs(10)),
            )
            .await?)
    }
}

#[workflow]
#[derive(Default)]
struct Counter {
    value: i64,
    done: bool,
}

#[workflow_methods]
impl Counter {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<i64> {
        let mut t = ctx.timer(Duration::from_secs(3600));
        let stop = ctx.wait_condition(|s| s.done);
        futures::pin_mut!(stop);
        temporalio_sdk::workflows::select! {
            r = t => if r == TimerResult::Cancelled { return Ok(-1) },
            _ = stop => {},
        };
        Ok(ctx.state(|s| s.value))
    }

    #[signal]
    fn add(&mut self, _ctx: &mut SyncWorkflowContext<Self>, n: i64) {
        self.value += n;
    }

    #[signal]
    fn finish(&mut self, _ctx: &mut SyncWorkflowContext<Self>) {
        self.done = true;
    }

    #[query]
    fn get(&self, _ctx: &WorkflowContextView) -> i64 {
        self.value
    }

    #[update]
    fn set(&mut self, _ctx: &mut SyncWorkflowContext<Self>, n: i64) -> i64 {
        let old = self.value;
        self.value = n;
        old
    }
}

async fn client(env: &common::Env) -> Client {
    let url = url::Url::from_str(&env.url).unwrap();
    let conn = Connection::connect(ConnectionOptions::new(url).build())
        .await
        .unwrap();
    Client::new(conn, ClientOptions::new(env.namespace.clone()).build()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn client_and_worker() {
    let env = common::Env::new().await;
    let client = client(&env).await;
    let runtime = Runtime::from_current_tokio(Default::default()).unwrap();
    let options = WorkerOptions::new("hello")
        .register_workflow::<Hello>()
        .unwrap()
        .register_workflow::<Counter>()
        .unwrap()
        .register_activities(Greetings)
        .build();
    let mut worker = Worker::new(&runtime, client.clone(), options).unwrap();
    assert_eq!(worker.task_queue(), "hello");
    let stop = worker.shutdown_handle();
    let task = tokio::spawn(async move { worker.run().await });

    let h = client
        .start_workflow(
            Hello::run,
            "Temporal".to_string(),
            WorkflowStartOptions::new("hello", "hello-id").build(),
        )
        .await
        .unwrap();
    let r = h
        .get_result(WorkflowGetResultOptions::default())
        .await
        .unwrap();
    assert_eq!(r, "Hello, Temporal!");

    let h = client
        .start_workflow(
            Counter::run,
            (),
            WorkflowStartOptions::new("hello", "counter-id").build(),
        )
        .await
        .unwrap();
    h.signal(Counter::add, 5, WorkflowSignalOptions::default())
        .await
        .unwrap();
    let mut seen = 0;
    for _ in 0..100 {
        seen = h
            .query(Counter::get, (), WorkflowQueryOptions::default())
            .await
            .unwrap();
        if seen == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 5);
    let old = h
        .execute_update(Counter::set, 40, WorkflowExecuteUpdateOptions::default())
        .await
        .unwrap();
    assert_eq!(old, 5);
    h.signal(Counter::add, 2, WorkflowSignalOptions::default())
        .await
        .unwrap();
    h.signal(Counter::finish, (), WorkflowSignalOptions::default())
        .await
        .unwrap();
    assert_eq!(
        h.get_result(WorkflowGetResultOptions::default())
            .await
            .unwrap(),
        42
    );

    let h = client
        .start_workflow(
            Counter::run,
            (),
            WorkflowStartOptions::new("hello", "cancel-id").build(),
        )
        .await
        .unwrap();
    h.cancel(WorkflowCancelOptions::default()).await.unwrap();
    assert_eq!(
        h.get_result(WorkflowGetResultOptions::default())
            .await
            .unwrap(),
        -1
    );

    stop();
    task.await.unwrap().unwrap();
}

#[workflow]
struct Deadline {
    deadline_ms: u64,
    version: u64,
}

#[workflow_methods]
impl Deadline {
    #[init]
    fn new(_ctx: &WorkflowContextView, deadline_ms: u64) -> Self {
        Self {
            deadline_ms,
            version: 0,
        }
    }

    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<u64> {
        loop {
            let version = ctx.state(|s| s.version);
            let deadline = ctx.state(|s| s.deadline_ms);
            let now = ctx
                .workflow_time()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            if deadline <= now {
                return Ok(deadline);
            }
            let mut t = ctx.timer(Duration::from_millis(deadline - now));
            let changed = ctx.wait_condition(|s: &Self| s.version != version);
            futures::pin_mut!(changed);
            temporalio_sdk::workflows::select! {
                _ = t => return Ok(ctx.state(|s| s.deadline_ms)),
                _ = changed => {}
            }
        }
    }

    #[signal]
    fn set(&mut self, _ctx: &mut SyncWorkflowContext<Self>, deadline_ms: u64) {
        self.deadline_ms = deadline_ms;
        self.version += 1;
    }

    #[query]
    fn get(&self, _ctx: &WorkflowContextView) -> u64 {
        self.deadline_ms
    }
}

/// A query sent right after a signal sees the signal (read-your-signals, as on Temporal).
#[tokio::test(flavor = "multi_thread")]
async fn query_after_signal_sees_it() {
    let env = common::Env::new().await;
    let client = client(&env).await;
    let runtime = Runtime::from_current_tokio(Default::default()).unwrap();
    let options = WorkerOptions::new("dl")
        .register_workflow::<Deadline>()
        .unwrap()
        .build();
    let mut worker = Worker::new(&runtime, client.clone(), options).unwrap();
    let stop = worker.shutdown_handle();
    let task = tokio::spawn(async move { worker.run().await });
    for i in 0..5 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let h = client
            .start_workflow(
                Deadline::run,
                now + 3_600_000,
                WorkflowStartOptions::new("dl", format!("dl-{i}")).build(),
            )
            .await
            .unwrap();
        let near = now + 1_000;
        h.signal(Deadline::set, near, WorkflowSignalOptions::default())
            .await
            .unwrap();
        let seen = h
            .query(Deadline::get, (), WorkflowQueryOptions::default())
            .await
            .unwrap();
        assert_eq!(seen, near, "round {i}");
        assert_eq!(
            h.get_result(WorkflowGetResultOptions::default())
                .await
                .unwrap(),
            near
        );
    }
    stop();
    task.await.unwrap().unwrap();
}

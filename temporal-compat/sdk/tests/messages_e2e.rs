//! Signals, queries and updates end to end (in-process worker + the real client crate):
//! ordering and exactly-once across replays, admission of updates, queries on closed runs,
//! signal-with-start and update-with-start.

extern crate temporal_compat as temporalio_sdk;

mod common;

use std::str::FromStr;
use std::time::Duration;

use temporal_compat::{
    Runtime, SyncWorkflowContext, Worker, WorkerOptions, WorkflowContext, WorkflowContextView,
    WorkflowResult,
};
use temporal_compat_client::{
    Client, ClientOptions, Connection, ConnectionOptions, RpcOptions, WorkflowExecuteUpdateOptions,
    WorkflowGetResultOptions, WorkflowHandle, WorkflowIdConflictPolicy, WorkflowQueryError,
    WorkflowQueryOptions, WorkflowSignalOptions, WorkflowStartOptions, WorkflowStartUpdateOptions,
    WorkflowUpdateError, WorkflowUpdateWithStartOptions,
};
use temporalio_macros::{workflow, workflow_methods};
use tokio::task::JoinHandle;

/// Validator runs for the value 777 (replays must not re-run validators).
static VALIDATIONS_777: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[workflow]
#[derive(Default)]
struct Mailbox {
    items: Vec<u64>,
    /// Items seen when the run function first ran (signal-with-start check).
    at_start: Option<Vec<u64>>,
    done: bool,
    gate: bool,
    /// Executions of `slow_put`'s handler body (replays re-run it; see the tests).
    slow_calls: u32,
}

#[workflow_methods]
impl Mailbox {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<Vec<u64>> {
        ctx.state_mut(|s| s.at_start = Some(s.items.clone()));
        ctx.wait_condition(|s| s.done).await?;
        Ok(ctx.state(|s| s.items.clone()))
    }

    #[signal]
    fn add(&mut self, _ctx: &mut SyncWorkflowContext<Self>, v: u64) {
        self.items.push(v);
    }

    #[signal]
    fn finish(&mut self, _ctx: &mut SyncWorkflowContext<Self>) {
        self.done = true;
    }

    #[signal]
    fn open_gate(&mut self, _ctx: &mut SyncWorkflowContext<Self>) {
        self.gate = true;
    }

    #[query]
    fn items(&self, _ctx: &WorkflowContextView) -> Vec<u64> {
        self.items.clone()
    }

    #[query]
    fn at_start(&self, _ctx: &WorkflowContextView) -> Option<Vec<u64>> {
        self.at_start.clone()
    }

    #[query]
    fn slow_calls(&self, _ctx: &WorkflowContextView) -> u32 {
        self.slow_calls
    }

    #[update]
    fn put(&mut self, _ctx: &mut SyncWorkflowContext<Self>, v: u64) -> usize {
        self.items.push(v);
        self.items.len()
    }

    #[update_validator(put)]
    fn check_put(
        &self,
        _ctx: &WorkflowContextView,
        v: &u64,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if *v == 0 {
            return Err("zero is refused".into());
        }
        if *v == 777 {
            VALIDATIONS_777.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    #[update]
    async fn slow_put(ctx: &mut WorkflowContext<Self>, v: u64) -> u64 {
        ctx.state_mut(|s| s.slow_calls += 1);
        let _ = ctx.wait_condition(|s| s.gate).await;
        ctx.state_mut(|s| s.items.push(v));
        v * 10
    }
}

async fn client(env: &common::Env) -> Client {
    let url = url::Url::from_str(&env.url).unwrap();
    let conn = Connection::connect(ConnectionOptions::new(url).build())
        .await
        .unwrap();
    Client::new(conn, ClientOptions::new(env.namespace.clone()).build()).unwrap()
}

type WorkerTask = JoinHandle<Result<(), temporal_compat::WorkerRunError>>;

/// Starts a worker on task queue `tq` with identity `identity`.
fn worker(client: &Client, tq: &str, identity: &str) -> (WorkerTask, Box<dyn Fn() + Send + Sync>) {
    let runtime = Runtime::from_current_tokio(Default::default()).unwrap();
    let options = WorkerOptions::new(tq)
        .register_workflow::<Mailbox>()
        .unwrap()
        .build();
    let mut c = client.clone();
    *c.connection_mut().identity_mut() = identity.to_string();
    let mut w = Worker::new(&runtime, c, options).unwrap();
    let stop = w.shutdown_handle();
    (tokio::spawn(async move { w.run().await }), Box::new(stop))
}

async fn start(client: &Client, tq: &str, id: &str) -> WorkflowHandle<Client, Mailbox> {
    client
        .start_workflow(Mailbox::run, (), WorkflowStartOptions::new(tq, id).build())
        .await
        .unwrap();
    client.get_workflow_handle::<Mailbox>(id)
}

async fn items(h: &WorkflowHandle<Client, Mailbox>) -> Vec<u64> {
    h.query(Mailbox::items, (), WorkflowQueryOptions::default())
        .await
        .unwrap()
}

async fn wait_items(h: &WorkflowHandle<Client, Mailbox>, n: usize) -> Vec<u64> {
    for _ in 0..600 {
        let v = items(h).await;
        if v.len() >= n {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} items after 30 s");
}

async fn checkpoint_count(env: &common::Env, run: &str) -> usize {
    env.db.checkpoints(run).await.unwrap().len()
}

/// 1,000 signals from 10 concurrent senders: all applied, exactly once, in one order that a
/// replay on a new worker reproduces, and that the closed run's query (replayed) reproduces too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_signals_exactly_once_in_one_replayable_order() {
    let env = common::Env::new().await;
    let client = client(&env).await;
    let (task, stop) = worker(&client, "sig", "sig-w1");
    let h = start(&client, "sig", "many").await;
    let mut senders = Vec::new();
    for s in 0..10u64 {
        let h = h.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..100u64 {
                h.signal(Mailbox::add, s * 1000 + i, WorkflowSignalOptions::default())
                    .await
                    .unwrap();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let before = wait_items(&h, 1000).await;
    assert_eq!(before.len(), 1000, "every signal applied exactly once");
    let mut sorted = before.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 1000, "no duplicates");
    for s in 0..10u64 {
        let mine: Vec<u64> = before.iter().copied().filter(|v| v / 1000 == s).collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "sender {s} order kept"
        );
    }
    // Stop the worker; a new one (same identity: it recovers its runs) replays the history.
    stop();
    task.await.unwrap().unwrap();
    let (task, stop) = worker(&client, "sig", "sig-w1");
    assert_eq!(items(&h).await, before, "the replay reproduces the order");
    h.signal(Mailbox::finish, (), WorkflowSignalOptions::default())
        .await
        .unwrap();
    let result = h
        .get_result(WorkflowGetResultOptions::default())
        .await
        .unwrap();
    assert_eq!(result, before);
    // Closed: the query replays the run on a worker of its task queue.
    assert_eq!(items(&h).await, before);
    stop();
    task.await.unwrap().unwrap();
}

/// A signal sent while no worker runs is applied once after a worker starts.
#[tokio::test(flavor = "multi_thread")]
async fn signal_without_worker_is_applied_once_later() {
    let env = common::Env::new().await;
    let client = client(&env).await;
    let h = start(&client, "late", "late-1").await;
    h.signal(Mailbox::add, 7, WorkflowSignalOptions::default())
        .await
        .unwrap();
    // A signal without a handler is dropped (with a log line), as on Temporal.
    client
        .get_workflow_handle::<temporal_compat_client::UntypedWorkflow>("late-1")
        .signal(
            temporal_compat_client::UntypedSignal::<temporal_compat_client::UntypedWorkflow>::new(
                "nobody_listens",
            ),
            temporalio_common_wasm::data_converters::RawValue::empty(),
            WorkflowSignalOptions::default(),
        )
        .await
        .unwrap();
    h.signal(Mailbox::finish, (), WorkflowSignalOptions::default())
        .await
        .unwrap();
    let (task, stop) = worker(&client, "late", "late-w");
    let r = h
        .get_result(WorkflowGetResultOptions::default())
        .await
        .unwrap();
    assert_eq!(r, vec![7]);
    stop();
    task.await.unwrap().unwrap();
}

/// Queries: on a closed run (replayed on any worker of the queue), unknown query names itself,
/// and no worker at all: a clear timeout within the deadline.
#[tokio::test(flavor = "multi_thread")]
async fn queries_closed_unknown_and_without_worker() {
    let env = common::Env::new().await;
    let client = client(&env).await;
    // No worker: the query times out within its deadline, naming the task queue.
    let h = start(&client, "nq", "nq-1").await;
    let t0 = std::time::Instant::now();
    let e = h
        .query(
            Mailbox::items,
            (),
            WorkflowQueryOptions::builder()
                .rpc_options(
                    RpcOptions::builder()
                        .timeout(Duration::from_millis(800))
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    match &e {
        WorkflowQueryError::Rpc(s) => {
            assert_eq!(format!("{:?}", s.code()), "DeadlineExceeded", "{s}");
            assert!(s.message().contains("`nq`"), "{s}");
        }
        other => panic!("expected a deadline error, got {other:?}"),
    }
    // With a worker: an unknown query fails naming itself; nothing lands in history.
    let (task, stop) = worker(&client, "nq", "nq-w");
    h.signal(Mailbox::add, 1, WorkflowSignalOptions::default())
        .await
        .unwrap();
    assert_eq!(wait_items(&h, 1).await, vec![1]);
    let cps = checkpoint_count(&env, "nq-1").await;
    let untyped = client.get_workflow_handle::<temporal_compat_client::UntypedWorkflow>("nq-1");
    let e = untyped
        .query(
            temporal_compat_client::UntypedQuery::<temporal_compat_client::UntypedWorkflow>::new(
                "no_such_query",
            ),
            temporalio_common_wasm::data_converters::RawValue::empty(),
            WorkflowQueryOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("No query handler for 'no_such_query'"),
        "upstream's message: {e}"
    );
    for _ in 0..5 {
        items(&h).await;
    }
    assert_eq!(
        checkpoint_count(&env, "nq-1").await,
        cps,
        "queries leave no history"
    );
    let schema = env.db.schema().to_string();
    let (answers,): (i64,) = sqlx::query_as(&format!(
        "SELECT count(*) FROM \"{schema}\".workflow_events
          WHERE workflow_uuid = 'nq-1' AND key LIKE '__temporal_query_answer:%'"
    ))
    .fetch_one(env.db.pool())
    .await
    .unwrap();
    assert_eq!(answers, 0, "query answers are removed once read");
    let (requests,): (i64,) = sqlx::query_as(&format!(
        "SELECT count(*) FROM \"{schema}\".notifications
          WHERE destination_uuid = 'nq-1' AND topic = '__temporal_query' AND NOT consumed"
    ))
    .fetch_one(env.db.pool())
    .await
    .unwrap();
    assert_eq!(requests, 0, "answered query requests are removed");
    h.signal(Mailbox::finish, (), WorkflowSignalOptions::default())
        .await
        .unwrap();
    h.get_result(WorkflowGetResultOptions::default())
        .await
        .unwrap();
    // Closed run, any worker of the queue: a fresh worker with another identity answers.
    stop();
    task.await.unwrap().unwrap();
    let (task, stop) = worker(&client, "nq", "nq-other");
    assert_eq!(items(&h).await, vec![1]);
    stop();
    task.await.unwrap().unwrap();
}

/// Updates: a rejected update leaves no checkpoint; an unknown update is rejected with
/// upstream's message; update ids are idempotent (also while in flight); an accepted update
/// survives the worker being dropped and completes on the next worker.
#[tokio::test(flavor = "multi_thread")]
async fn updates_admission_idempotency_and_recovery() {
    let env = common::Env::new().await;
    let client = client(&env).await;
    let (task, _stop) = worker(&client, "upd", "upd-w1");
    let h = start(&client, "upd", "upd-1").await;
    assert_eq!(
        h.execute_update(Mailbox::put, 5, WorkflowExecuteUpdateOptions::default())
            .await
            .unwrap(),
        1
    );
    let cps = checkpoint_count(&env, "upd-1").await;
    let e = h
        .execute_update(Mailbox::put, 0, WorkflowExecuteUpdateOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, WorkflowUpdateError::Failed(f) if f.message.contains("zero is refused")),
        "{e:?}"
    );
    assert_eq!(
        checkpoint_count(&env, "upd-1").await,
        cps,
        "rejection not in history"
    );
    let untyped = client.get_workflow_handle::<temporal_compat_client::UntypedWorkflow>("upd-1");
    let e = untyped
        .execute_update(
            temporal_compat_client::UntypedUpdate::<temporal_compat_client::UntypedWorkflow>::new(
                "no_such_update",
            ),
            temporalio_common_wasm::data_converters::RawValue::empty(),
            WorkflowExecuteUpdateOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, WorkflowUpdateError::Failed(f)
            if f.message == "No update handler registered for update name no_such_update"),
        "upstream's message: {e:?}"
    );
    assert_eq!(
        checkpoint_count(&env, "upd-1").await,
        cps,
        "unknown update not in history"
    );

    // The validator runs once; its verdict is recorded (a replay does not run it again).
    assert_eq!(
        h.execute_update(Mailbox::put, 777, WorkflowExecuteUpdateOptions::default())
            .await
            .unwrap(),
        2
    );
    assert_eq!(VALIDATIONS_777.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Idempotent ids, including two requests in flight at once.
    let opts = || {
        WorkflowExecuteUpdateOptions::builder()
            .update_id("same-id".to_string())
            .build()
    };
    let h1 = h.clone();
    let first = tokio::spawn(async move { h1.execute_update(Mailbox::slow_put, 3, opts()).await });
    let h2 = h.clone();
    let second = tokio::spawn(async move { h2.execute_update(Mailbox::slow_put, 3, opts()).await });
    // Accepted (in flight), then the worker is dropped (crash-like: no graceful shutdown).
    let handle = h
        .start_update(
            Mailbox::slow_put,
            3,
            WorkflowStartUpdateOptions::builder()
                .update_id("same-id".to_string())
                .build(),
        )
        .await
        .unwrap();
    task.abort();
    let _ = task.await;
    let (task, stop) = worker(&client, "upd", "upd-w1");
    h.signal(Mailbox::open_gate, (), WorkflowSignalOptions::default())
        .await
        .unwrap();
    assert_eq!(handle.get_result(RpcOptions::default()).await.unwrap(), 30);
    assert_eq!(first.await.unwrap().unwrap(), 30);
    assert_eq!(second.await.unwrap().unwrap(), 30);
    // Again after completion: same result, handler not run again.
    assert_eq!(
        h.execute_update(Mailbox::slow_put, 3, opts())
            .await
            .unwrap(),
        30
    );
    assert_eq!(
        h.query(Mailbox::slow_calls, (), WorkflowQueryOptions::default())
            .await
            .unwrap(),
        1
    );
    assert_eq!(items(&h).await, vec![5, 777, 3], "handler applied once");
    assert_eq!(
        VALIDATIONS_777.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the replay after the crash did not re-run the validator"
    );
    stop();
    task.await.unwrap().unwrap();
}

/// Signal-with-start and update-with-start: the message is in the inbox before the first
/// activation; on a running workflow it goes to that run.
#[tokio::test(flavor = "multi_thread")]
async fn signal_and_update_with_start() {
    let env = common::Env::new().await;
    let client = client(&env).await;
    let (task, stop) = worker(&client, "ws", "ws-w");
    let h = client
        .signal_with_start_workflow(
            Mailbox::run,
            (),
            Mailbox::add,
            11,
            WorkflowStartOptions::new("ws", "ws-1").build(),
        )
        .await
        .unwrap();
    assert_eq!(
        h.query(Mailbox::at_start, (), WorkflowQueryOptions::default())
            .await
            .unwrap(),
        Some(vec![11]),
        "the signal is delivered with the first activation"
    );
    let h2 = client
        .signal_with_start_workflow(
            Mailbox::run,
            (),
            Mailbox::add,
            12,
            WorkflowStartOptions::new("ws", "ws-1").build(),
        )
        .await
        .unwrap();
    assert_eq!(
        h2.info().run_id,
        h.info().run_id,
        "signals the running workflow"
    );
    assert_eq!(
        wait_items(&client.get_workflow_handle::<Mailbox>("ws-1"), 2).await,
        vec![11, 12]
    );

    let n = client
        .execute_update_with_start_workflow(
            Mailbox::run,
            (),
            Mailbox::put,
            21,
            WorkflowUpdateWithStartOptions::new(
                "ws",
                "ws-2",
                WorkflowIdConflictPolicy::UseExisting,
            )
            .build(),
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n = client
        .execute_update_with_start_workflow(
            Mailbox::run,
            (),
            Mailbox::put,
            22,
            WorkflowUpdateWithStartOptions::new(
                "ws",
                "ws-2",
                WorkflowIdConflictPolicy::UseExisting,
            )
            .build(),
        )
        .await
        .unwrap();
    assert_eq!(n, 2, "the second update goes to the running workflow");
    let h3 = client.get_workflow_handle::<Mailbox>("ws-2");
    assert_eq!(
        h3.query(Mailbox::at_start, (), WorkflowQueryOptions::default())
            .await
            .unwrap(),
        Some(vec![21])
    );
    stop();
    task.await.unwrap().unwrap();
}

//! End to end with the real client: standalone activities (retries, timeouts, id policies,
//! cancel, terminate, describe, list, count), visibility queries on workflows, and asynchronous
//! activity completion (by task token and by id, exactly once across a worker restart).

extern crate temporal_compat as temporalio_sdk;

mod common;

use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use temporal_compat::activities::{ActivityContext, ActivityError};
use temporal_compat::{
    ActivityOptions, Runtime, Worker, WorkerOptions, WorkflowContext, WorkflowResult,
};
use temporal_compat_client::{
    ActivityCancelOptions, ActivityDescribeOptions, ActivityExecutionInfoLike,
    ActivityExecutionStatus, ActivityIdConflictPolicy, ActivityIdReusePolicy, ActivityIdentifier,
    ActivityResultError, ActivityStartOptions, ActivityTerminateOptions, AsyncActivityError,
    Client, ClientOptions, Connection, ConnectionOptions, Priority, RetryPolicy, RpcOptions,
    StartActivityError, WorkflowExecutionStatus, WorkflowGetResultOptions, WorkflowListOptions,
    WorkflowStartOptions,
};
use temporalio_macros::{activities, workflow, workflow_methods};

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);
static EXTERNAL_CALLS: AtomicU32 = AtomicU32::new(0);
static TOKENS: Mutex<Vec<(Vec<u8>, String)>> = Mutex::new(Vec::new());

struct Acts;

#[activities]
impl Acts {
    #[activity]
    async fn echo(_ctx: ActivityContext, s: String) -> Result<String, ActivityError> {
        Ok(s)
    }

    #[activity]
    async fn flaky(ctx: ActivityContext) -> Result<u32, ActivityError> {
        FLAKY_CALLS.fetch_add(1, Ordering::SeqCst);
        if ctx.info().attempt < 3 {
            return Err(anyhow::anyhow!("transient trouble").into());
        }
        assert!(ctx.info().workflow_id.is_none());
        assert!(ctx.info().activity_run_id.is_some());
        Ok(ctx.info().attempt)
    }

    #[activity]
    async fn wait_for_cancel(ctx: ActivityContext) -> Result<(), ActivityError> {
        loop {
            if ctx.is_cancelled() {
                return Err(ActivityError::cancelled());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[activity]
    async fn sleepy(_ctx: ActivityContext) -> Result<(), ActivityError> {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    }

    /// Heartbeats (with a counter as details) every 20 ms until cancelled.
    #[activity]
    async fn beats(ctx: ActivityContext) -> Result<(), ActivityError> {
        let mut n = 0u32;
        loop {
            if ctx.is_cancelled() {
                return Err(ActivityError::cancelled());
            }
            n += 1;
            ctx.record_heartbeat(n).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Hands its task token out and completes asynchronously.
    #[activity]
    async fn external(ctx: ActivityContext) -> Result<String, ActivityError> {
        EXTERNAL_CALLS.fetch_add(1, Ordering::SeqCst);
        let wf = ctx.info().workflow_id.clone().unwrap_or_default();
        TOKENS
            .lock()
            .unwrap()
            .push((ctx.info().task_token.clone(), wf));
        Err(ActivityError::WillCompleteAsync)
    }
}

#[workflow]
#[derive(Default)]
struct AwaitsExternal;

#[workflow_methods]
impl AwaitsExternal {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<String> {
        let r = ctx
            .execute_activity(
                Acts::external,
                (),
                ActivityOptions::start_to_close_timeout(Duration::from_secs(60)),
            )
            .await?;
        Ok(format!("got {r}"))
    }
}

async fn client(env: &common::Env) -> Client {
    let url = url::Url::from_str(&env.url).unwrap();
    let conn = Connection::connect(ConnectionOptions::new(url).build())
        .await
        .unwrap();
    Client::new(conn, ClientOptions::new(env.namespace.clone()).build()).unwrap()
}

fn start_worker(
    client: &Client,
    options: WorkerOptions,
) -> (
    tokio::task::JoinHandle<Result<(), temporal_compat::error::WorkerRunError>>,
    impl Fn(),
) {
    let runtime = Runtime::from_current_tokio(Default::default()).unwrap();
    let mut worker = Worker::new(&runtime, client.clone(), options).unwrap();
    let stop = worker.shutdown_handle();
    (tokio::spawn(async move { worker.run().await }), stop)
}

fn fast_retry(max: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .initial_interval(Duration::from_millis(50))
        .maximum_attempts(max)
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn standalone_activities_retry_time_out_cancel_terminate_list_and_count() {
    let env = common::Env::new().await;
    let client = client(&env).await;
    let (task, stop) = start_worker(
        &client,
        WorkerOptions::new("acts").register_activities(Acts).build(),
    );
    let opts = |id: &str| {
        ActivityStartOptions::with_start_to_close_timeout("acts", id, Duration::from_secs(10))
    };

    // Retries with the policy; attempts are visible.
    let h = client
        .start_activity(
            Acts::flaky,
            (),
            opts("flaky").retry_policy(fast_retry(5)).build(),
        )
        .await
        .unwrap();
    assert_eq!(h.run_id(), Some("flaky"));
    assert_eq!(h.result().await.unwrap(), 3);
    assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 3);
    let d = h
        .describe(
            ActivityDescribeOptions::builder()
                .include_input(true)
                .include_outcome(true)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(d.status(), ActivityExecutionStatus::Completed);
    assert_eq!(d.attempt(), 3);
    assert_eq!(d.activity_type(), "Acts::flaky");
    assert_eq!(d.task_queue(), "acts");
    assert_eq!(d.outcome().await.unwrap().unwrap().unwrap(), 3);
    assert!(d.retry_policy().is_some());

    // Id policies: a closed id is reused by default (run `--r1`), refused by the others.
    let again = client
        .start_activity(Acts::echo, "x".to_string(), opts("flaky").build())
        .await
        .unwrap();
    assert_eq!(again.run_id(), Some("flaky--r1"));
    assert_eq!(again.result().await.unwrap(), "x");
    for policy in [
        ActivityIdReusePolicy::RejectDuplicate,
        ActivityIdReusePolicy::AllowDuplicateFailedOnly,
    ] {
        let e = client
            .start_activity(
                Acts::echo,
                "y".to_string(),
                opts("flaky").id_reuse_policy(policy).build(),
            )
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(e, StartActivityError::AlreadyStarted { ref run_id, .. } if run_id == "flaky--r1"),
            "{e}"
        );
    }

    // A running id: refused, or shared with UseExisting; then cancelled cooperatively.
    let w = client
        .start_activity(Acts::wait_for_cancel, (), opts("waiter").build())
        .await
        .unwrap();
    let e = client
        .start_activity(Acts::wait_for_cancel, (), opts("waiter").build())
        .await
        .err()
        .expect("conflict");
    assert!(
        matches!(e, StartActivityError::AlreadyStarted { .. }),
        "{e}"
    );
    let same = client
        .start_activity(
            Acts::wait_for_cancel,
            (),
            opts("waiter")
                .id_conflict_policy(ActivityIdConflictPolicy::UseExisting)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(same.run_id(), w.run_id());
    w.cancel(ActivityCancelOptions::builder().reason("enough").build())
        .await
        .unwrap();
    assert!(matches!(
        w.result().await,
        Err(ActivityResultError::Cancelled { .. })
    ));
    let d = w
        .describe(ActivityDescribeOptions::default())
        .await
        .unwrap();
    assert_eq!(d.status(), ActivityExecutionStatus::Canceled);
    assert!(matches!(
        w.cancel(ActivityCancelOptions::default()).await,
        Err(temporal_compat_client::ActivityInteractionError::NotFound(
            _
        ))
    ));

    // Terminate.
    let t = client
        .start_activity(Acts::sleepy, (), opts("sleepy").build())
        .await
        .unwrap();
    t.terminate(ActivityTerminateOptions::builder().reason("stop").build())
        .await
        .unwrap();
    assert!(matches!(
        t.result().await,
        Err(ActivityResultError::Terminated)
    ));

    // Start-to-close timeout without retries: failed with a timeout, status TimedOut.
    let to = client
        .start_activity(
            Acts::sleepy,
            (),
            ActivityStartOptions::with_start_to_close_timeout(
                "acts",
                "timeout",
                Duration::from_millis(300),
            )
            .retry_policy(fast_retry(1))
            .build(),
        )
        .await
        .unwrap();
    match to.result().await {
        Err(ActivityResultError::ActivityFailed(e)) => {
            assert!(e.to_string().to_lowercase().contains("timeout"), "{e}")
        }
        other => panic!("expected a timeout failure, got {:?}", other.map(|_| ())),
    }
    let d = to
        .describe(ActivityDescribeOptions::default())
        .await
        .unwrap();
    assert_eq!(d.status(), ActivityExecutionStatus::TimedOut);

    // A handle without run id targets the latest run; an unknown id is NotFound.
    let latest = client.get_activity_handle(Acts::echo, "flaky", None);
    assert_eq!(latest.result().await.unwrap(), "x");
    let missing = client.get_untyped_activity_handle("nope", None);
    assert!(matches!(
        missing.describe(ActivityDescribeOptions::default()).await,
        Err(temporal_compat_client::ActivityInteractionError::NotFound(
            _
        ))
    ));

    // Listing and counting, with the visibility subset.
    let listed: Vec<_> = client
        .list_activities(
            "TaskQueue = 'acts' AND ExecutionStatus = 'Completed'",
            Default::default(),
        )
        .collect()
        .await;
    let mut ids: Vec<String> = listed
        .into_iter()
        .map(|r| r.unwrap().activity_run_id().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["flaky", "flaky--r1"]);
    let c = client
        .count_activities(
            "TaskQueue = 'acts' GROUP BY ExecutionStatus",
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(c.count(), 5);
    let mut groups: Vec<(String, usize)> = c
        .groups()
        .iter()
        .map(|g| (g.get::<String>(0).unwrap(), g.count()))
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        vec![
            ("Canceled".to_string(), 1),
            ("Completed".to_string(), 2),
            ("Terminated".to_string(), 1),
            ("TimedOut".to_string(), 1)
        ]
    );
    let c = client
        .count_activities(
            "ActivityType STARTS_WITH 'Acts::s' OR ActivityId IN ('waiter')",
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(c.count(), 3);
    // Standalone activities are not workflows.
    assert_eq!(
        client
            .count_workflows("", Default::default())
            .await
            .unwrap()
            .count(),
        0
    );
    // Refusals are clear errors.
    let e = client
        .count_activities("WorkflowId = 'x'", Default::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not apply"), "{e}");
    let first = client
        .list_activities("ActivityId = 'a' ORDER BY StartTime", Default::default())
        .next()
        .await
        .unwrap();
    assert!(first.err().unwrap().to_string().contains("ORDER BY"));

    // Cancelled before any worker of its task queue runs it: closed as CANCELED at the claim.
    let later = client
        .start_activity(
            Acts::echo,
            "never".to_string(),
            ActivityStartOptions::with_start_to_close_timeout(
                "acts-later",
                "later",
                Duration::from_secs(10),
            )
            .build(),
        )
        .await
        .unwrap();
    later
        .cancel(ActivityCancelOptions::default())
        .await
        .unwrap();
    let d = later
        .describe(ActivityDescribeOptions::default())
        .await
        .unwrap();
    assert_eq!(d.status(), ActivityExecutionStatus::Running);
    assert_eq!(
        d.run_state(),
        temporal_compat_client::PendingActivityState::CancelRequested
    );
    let (task2, stop2) = start_worker(
        &client,
        WorkerOptions::new("acts-later")
            .register_activities(Acts)
            .build(),
    );
    assert!(matches!(
        later.result().await,
        Err(ActivityResultError::Cancelled { .. })
    ));
    stop2();
    task2.await.unwrap().unwrap();

    stop();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn standalone_activity_description_reports_heartbeat_time_and_priority() {
    let env = common::Env::new().await;
    let client = client(&env).await;
    let (task, stop) = start_worker(
        &client,
        WorkerOptions::new("beats")
            .register_activities(Acts)
            .build(),
    );
    let before = std::time::SystemTime::now();
    let h = client
        .start_activity(
            Acts::beats,
            (),
            ActivityStartOptions::with_start_to_close_timeout(
                "beats",
                "beating",
                Duration::from_secs(30),
            )
            .heartbeat_timeout(Duration::from_secs(10))
            .priority(Priority::builder().priority_key(3).build())
            .build(),
        )
        .await
        .unwrap();
    // The recorded heartbeat's time shows once the worker has written one.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let d = loop {
        let d = h
            .describe(
                ActivityDescribeOptions::builder()
                    .include_heartbeat_details(true)
                    .build(),
            )
            .await
            .unwrap();
        if d.last_heartbeat_time().is_some() {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "no heartbeat time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let beat = d.last_heartbeat_time().unwrap();
    // Epoch-ms precision: allow the start instant's sub-millisecond part.
    assert!(
        beat + Duration::from_millis(1) >= before,
        "{beat:?} {before:?}"
    );
    assert!(beat <= std::time::SystemTime::now());
    assert!(d.heartbeat_details::<u32>().await.unwrap().unwrap() >= 1);
    assert_eq!(d.priority().priority_key, Some(3));
    // Documented as not recorded (COMPATIBILITY.md): the retry bookkeeping of the current attempt.
    let raw = d.raw_info();
    assert_eq!(raw.current_retry_interval, None);
    assert_eq!(raw.next_attempt_schedule_time, None);
    assert_eq!(raw.last_attempt_complete_time, None);
    h.cancel(ActivityCancelOptions::default()).await.unwrap();
    assert!(matches!(
        h.result().await,
        Err(ActivityResultError::Cancelled { .. })
    ));
    // Without a priority key, the description has no priority.
    let e = client
        .start_activity(
            Acts::echo,
            "x".to_string(),
            ActivityStartOptions::with_start_to_close_timeout(
                "beats",
                "plain",
                Duration::from_secs(10),
            )
            .build(),
        )
        .await
        .unwrap();
    e.result().await.unwrap();
    let d = e
        .describe(ActivityDescribeOptions::default())
        .await
        .unwrap();
    assert_eq!(d.priority().priority_key, None);
    assert_eq!(d.last_heartbeat_time(), None);
    stop();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn workflow_listing_with_visibility_queries() {
    let env = common::Env::new().await;
    let client = client(&env).await;
    let (task, stop) = start_worker(
        &client,
        WorkerOptions::new("wf")
            .register_workflow::<AwaitsExternal>()
            .unwrap()
            .register_activities(Acts)
            .build(),
    );
    for i in 0..3i64 {
        let sa = temporalio_common_wasm::search_attributes::SearchAttributes::new([
            temporalio_common_wasm::search_attributes::SearchAttributeKey::int("Rank").value_set(i),
        ]);
        client
            .start_workflow(
                AwaitsExternal::run,
                (),
                WorkflowStartOptions::new("wf", format!("listed-{i}"))
                    .search_attributes(sa)
                    .build(),
            )
            .await
            .unwrap();
    }
    let all: Vec<_> = client
        .list_workflows(
            "WorkflowType = 'AwaitsExternal'",
            WorkflowListOptions::default(),
        )
        .collect()
        .await;
    let ids: Vec<String> = all
        .into_iter()
        .map(|r| r.unwrap().id().to_string())
        .collect();
    // Newest first.
    assert_eq!(ids, vec!["listed-2", "listed-1", "listed-0"]);
    let limited: Vec<_> = client
        .list_workflows("", WorkflowListOptions::builder().limit(2).build())
        .collect()
        .await;
    assert_eq!(limited.len(), 2);
    let c = client
        .count_workflows(
            "Rank >= 1 AND (WorkflowId STARTS_WITH 'listed-' OR WorkflowId = 'zzz')",
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(c.count(), 2);
    let c = client
        .count_workflows(
            "ExecutionStatus = 'Running' GROUP BY ExecutionStatus",
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(c.count(), 3);
    assert_eq!(c.groups().len(), 1);
    assert_eq!(c.groups()[0].get::<String>(0).as_deref(), Some("Running"));
    let running = client
        .list_workflows(
            "ExecutionStatus = 'Running' AND Rank = 0",
            Default::default(),
        )
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.status(), WorkflowExecutionStatus::Running);
    assert_eq!(running.task_queue(), "wf");
    let e = client
        .count_workflows("HistoryLength > 3", Default::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("HistoryLength"), "{e}");
    stop();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread")]
async fn async_completion_resumes_the_workflow_exactly_once_across_a_restart() {
    let env = common::Env::new().await;
    let client = client(&env).await;
    let options = || {
        WorkerOptions::new("async")
            .register_workflow::<AwaitsExternal>()
            .unwrap()
            .register_activities(Acts)
            .build()
    };
    let (task, stop) = start_worker(&client, options());
    let h = client
        .start_workflow(
            AwaitsExternal::run,
            (),
            WorkflowStartOptions::new("async", "ext-1").build(),
        )
        .await
        .unwrap();
    let token = loop {
        if let Some((t, _)) = TOKENS
            .lock()
            .unwrap()
            .iter()
            .find(|(_, wf)| wf == "ext-1")
            .cloned()
        {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let handle =
        client.get_async_activity_handle(ActivityIdentifier::TaskToken(token.clone().into()));
    let beat = handle
        .heartbeat(Some(1u32), RpcOptions::default())
        .await
        .unwrap();
    assert!(!beat.cancel_requested);
    // The worker goes away while the activity waits; a new one (same identity) takes the run.
    stop();
    task.await.unwrap().unwrap();
    let calls = EXTERNAL_CALLS.load(Ordering::SeqCst);
    let (task, stop) = start_worker(&client, options());
    tokio::time::sleep(Duration::from_millis(500)).await;
    handle
        .complete(Some("done".to_string()), RpcOptions::default())
        .await
        .unwrap();
    let r = h
        .get_result(WorkflowGetResultOptions::default())
        .await
        .unwrap();
    assert_eq!(r, "got done");
    assert_eq!(
        EXTERNAL_CALLS.load(Ordering::SeqCst),
        calls,
        "the restarted worker must not run the activity again"
    );
    // A second completion of the same attempt is refused.
    let e = handle
        .complete(Some("again".to_string()), RpcOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, AsyncActivityError::NotFound(_)), "{e}");

    // By workflow id + activity id (the default activity id is the sequence number).
    let h2 = client
        .start_workflow(
            AwaitsExternal::run,
            (),
            WorkflowStartOptions::new("async", "ext-2").build(),
        )
        .await
        .unwrap();
    let by_id =
        client.get_async_activity_handle(ActivityIdentifier::by_id_workflow("ext-2", "", "1"));
    let mut done = false;
    for _ in 0..200 {
        match by_id
            .complete(Some("by id".to_string()), RpcOptions::default())
            .await
        {
            Ok(()) => {
                done = true;
                break;
            }
            Err(AsyncActivityError::NotFound(_)) => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        done,
        "completion by id must succeed once the activity waits"
    );
    assert_eq!(
        h2.get_result(WorkflowGetResultOptions::default())
            .await
            .unwrap(),
        "got by id"
    );

    // A failure through the handle fails the activity (no retries left) and so the workflow.
    let h3 = client
        .start_workflow(
            AwaitsExternal::run,
            (),
            WorkflowStartOptions::new("async", "ext-3").build(),
        )
        .await
        .unwrap();
    let by_id =
        client.get_async_activity_handle(ActivityIdentifier::by_id_workflow("ext-3", "", "1"));
    let mut failure = Some(());
    let failure_msg = "external system said no";
    for _ in 0..200 {
        match by_id
            .fail(
                temporalio_common_wasm::error::ApplicationFailure::non_retryable(anyhow::anyhow!(
                    failure_msg
                )),
                None::<()>,
                RpcOptions::default(),
            )
            .await
        {
            Ok(()) => {
                failure = None;
                break;
            }
            Err(AsyncActivityError::NotFound(_)) => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(failure.is_none());
    let e = h3
        .get_result(WorkflowGetResultOptions::default())
        .await
        .unwrap_err();
    assert!(
        format!("{e:?}").contains("external system said no"),
        "{e:?}"
    );

    // A bad token is a clear error.
    let bad =
        client.get_async_activity_handle(ActivityIdentifier::TaskToken(b"garbage".to_vec().into()));
    let e = bad
        .complete(None::<()>, RpcOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Server error"), "{e}");
    stop();
    task.await.unwrap().unwrap();
}

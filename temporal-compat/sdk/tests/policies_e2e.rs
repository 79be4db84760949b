//! End to end: workflow-level policies (retry policy, run and execution timeouts, cron
//! schedules, child parent close policies) with a worker and the real client in one process, on
//! a real Postgres (`DBOSIFY_TEST_DATABASE_URL`), a fresh namespace per test.

extern crate temporal_compat as temporalio_sdk;

mod common;

use std::str::FromStr;
use std::time::Duration;

use common::Env;
use temporal_compat::{
    ApplicationFailure, ChildWorkflowExecutionError, ChildWorkflowOptions, ContinueAsNewOptions,
    ParentClosePolicy, Runtime, Worker, WorkerOptions, WorkflowContext, WorkflowResult,
};
use temporal_compat_client::protocol::{self, RunAttributes, TerminalOutcome};
use temporal_compat_client::{
    Client, ClientOptions, Connection, ConnectionOptions, RetryPolicy, RpcOptions,
    WorkflowDescribeOptions, WorkflowExecutionStatus, WorkflowGetResultError,
    WorkflowGetResultOptions, WorkflowStartOptions, WorkflowTerminateOptions,
};
use temporalio_macros::{workflow, workflow_methods};

const TQ: &str = "policies";

#[workflow]
#[derive(Default)]
struct Flaky;

#[workflow_methods]
impl Flaky {
    /// Fails as `mode` says; reports the attempt it succeeded on.
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>, mode: String) -> WorkflowResult<u32> {
        let attempt = ctx.info().attempt();
        match mode.as_str() {
            "succeed_on_3" if attempt >= 3 => Ok(attempt),
            "non_retryable" => Err(ApplicationFailure::non_retryable(anyhow::anyhow!(
                "attempt {attempt}: this cannot work"
            ))
            .into()),
            "typed" => Err(ApplicationFailure::builder(anyhow::anyhow!(
                "attempt {attempt}: fatal"
            ))
            .type_name("FatalError".to_string())
            .build()
            .into()),
            _ => Err(ApplicationFailure::new(anyhow::anyhow!("attempt {attempt} failed")).into()),
        }
    }
}

#[workflow]
#[derive(Default)]
struct Sleeper;

#[workflow_methods]
impl Sleeper {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>, secs: u64) -> WorkflowResult<u64> {
        ctx.timer(Duration::from_secs(secs)).await;
        Ok(secs)
    }
}

#[workflow]
#[derive(Default)]
struct AlwaysPanics;

#[workflow_methods]
impl AlwaysPanics {
    /// Fails its workflow task on every activation.
    #[run]
    async fn run(_ctx: &mut WorkflowContext<Self>) -> WorkflowResult<()> {
        panic!("this workflow task always fails");
    }
}

#[workflow]
#[derive(Default)]
struct Looper;

#[workflow_methods]
impl Looper {
    /// Continues as new every 300 ms, forever.
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>, n: u32) -> WorkflowResult<u32> {
        ctx.timer(Duration::from_millis(300)).await;
        ctx.continue_as_new(n + 1, ContinueAsNewOptions::default())?;
        Ok(n)
    }
}

#[workflow]
#[derive(Default)]
struct CronTick;

#[workflow_methods]
impl CronTick {
    /// Returns its own run id.
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<String> {
        Ok(ctx.run_id().to_string())
    }
}

#[workflow]
#[derive(Default)]
struct Parent;

#[workflow_methods]
impl Parent {
    /// Starts one long-sleeping child per policy, then returns (or, with `hold`, sleeps).
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>, hold: bool) -> WorkflowResult<()> {
        let me = ctx.workflow_id().to_string();
        for (name, policy) in [
            ("terminate", ParentClosePolicy::Unspecified),
            ("abandon", ParentClosePolicy::Abandon),
            ("cancel", ParentClosePolicy::RequestCancel),
        ] {
            ctx.start_child_workflow(
                Sleeper::run,
                3600u64,
                ChildWorkflowOptions::builder()
                    .workflow_id(format!("{me}-{name}"))
                    .parent_close_policy(policy)
                    .build(),
            )
            .await?;
        }
        if hold {
            ctx.timer(Duration::from_secs(3600)).await;
        }
        Ok(())
    }
}

#[workflow]
#[derive(Default)]
struct ChildRetryState;

#[workflow_methods]
impl ChildRetryState {
    /// Runs one failing child as `case` says and returns the `RetryState` its failure carries.
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>, case: String) -> WorkflowResult<String> {
        let id = format!("{}-child", ctx.workflow_id());
        let opts = ChildWorkflowOptions::builder().workflow_id(id);
        let result = match case.as_str() {
            "no_policy" => {
                ctx.start_child_workflow(Flaky::run, "always".to_string(), opts.build())
                    .await?
                    .result()
                    .await
            }
            "two_attempts" => {
                let opts = opts.retry_policy(retry(2)).build();
                ctx.start_child_workflow(Flaky::run, "always".to_string(), opts)
                    .await?
                    .result()
                    .await
            }
            "non_retryable" => {
                let opts = opts.retry_policy(retry(5)).build();
                ctx.start_child_workflow(Flaky::run, "non_retryable".to_string(), opts)
                    .await?
                    .result()
                    .await
            }
            "typed" => {
                let policy = RetryPolicy::builder()
                    .initial_interval(Duration::from_millis(100))
                    .non_retryable_error_types(["FatalError"])
                    .build();
                let opts = opts.retry_policy(policy).build();
                ctx.start_child_workflow(Flaky::run, "typed".to_string(), opts)
                    .await?
                    .result()
                    .await
            }
            "run_timeout" => {
                let opts = opts.run_timeout(Duration::from_millis(300)).build();
                ctx.start_child_workflow(Sleeper::run, 3600u64, opts)
                    .await?
                    .result()
                    .await
                    .map(|s| s as u32)
            }
            "execution_timeout" => {
                let opts = opts
                    .execution_timeout(Duration::from_millis(300))
                    .retry_policy(retry(5))
                    .build();
                ctx.start_child_workflow(Sleeper::run, 3600u64, opts)
                    .await?
                    .result()
                    .await
                    .map(|s| s as u32)
            }
            other => return Ok(format!("unknown case {other}")),
        };
        Ok(match result {
            Ok(v) => format!("completed {v}"),
            Err(ChildWorkflowExecutionError::Failed(f)) => format!("{:?}", f.retry_state()),
            Err(e) => format!("other error: {e}"),
        })
    }
}

#[workflow]
#[derive(Default)]
struct FireAndForget;

#[workflow_methods]
impl FireAndForget {
    /// Starts `n` long-sleeping children (TERMINATE policy) without awaiting their starts, and
    /// returns after a 1 ms timer: the parent closes while the starts are in flight.
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>, n: u32) -> WorkflowResult<()> {
        let me = ctx.workflow_id().to_string();
        let mut starts = Vec::new();
        for i in 0..n {
            let opts = ChildWorkflowOptions::builder()
                .workflow_id(format!("{me}-{i}"))
                .build();
            let mut start = Box::pin(ctx.start_child_workflow(Sleeper::run, 3600u64, opts));
            // Polled once, so the start command is issued; never awaited.
            assert!(futures::FutureExt::now_or_never(&mut start).is_none());
            starts.push(start);
        }
        // The starts are in flight when the parent completes, right after this short timer.
        ctx.timer(Duration::from_millis(1)).await;
        Ok(())
    }
}

struct Setup {
    env: Env,
    client: Client,
    stop: Option<Box<dyn Fn() + Send + Sync>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Setup {
    async fn new(with_worker: bool) -> Self {
        let env = Env::new().await;
        let url = url::Url::from_str(&env.url).unwrap();
        let conn = Connection::connect(ConnectionOptions::new(url).build())
            .await
            .unwrap();
        let client = Client::new(conn, ClientOptions::new(env.namespace.clone()).build()).unwrap();
        let mut s = Self {
            env,
            client,
            stop: None,
            task: None,
        };
        if with_worker {
            s.start_worker();
        }
        s
    }

    fn start_worker(&mut self) {
        let runtime = Runtime::from_current_tokio(Default::default()).unwrap();
        let options = WorkerOptions::new(TQ)
            .register_workflow::<Flaky>()
            .unwrap()
            .register_workflow::<Sleeper>()
            .unwrap()
            .register_workflow::<Looper>()
            .unwrap()
            .register_workflow::<CronTick>()
            .unwrap()
            .register_workflow::<Parent>()
            .unwrap()
            .register_workflow::<AlwaysPanics>()
            .unwrap()
            .register_workflow::<ChildRetryState>()
            .unwrap()
            .register_workflow::<FireAndForget>()
            .unwrap()
            .build();
        let mut worker = Worker::new(&runtime, self.client.clone(), options).unwrap();
        self.stop = Some(Box::new(worker.shutdown_handle()));
        self.task = Some(tokio::spawn(async move {
            worker.run().await.unwrap();
        }));
    }

    /// Stops the worker (its held runs stay PENDING under its identity) and waits for it.
    async fn stop_worker(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    async fn attrs(&self, run: &str) -> (dbos_core::WorkflowStatus, RunAttributes) {
        let s = self
            .env
            .db
            .status(run)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("run {run} exists"));
        let a = RunAttributes::of_run(&s).unwrap();
        (s, a)
    }

    async fn outcome(&self, run: &str, secs: u64) -> TerminalOutcome {
        self.env.outcome(run, secs).await
    }

    async fn exists(&self, run: &str) -> bool {
        self.env.db.status(run).await.unwrap().is_some()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop();
        }
    }
}

fn retry(max: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .initial_interval(Duration::from_millis(100))
        .backoff_coefficient(2.0)
        .maximum_attempts(max)
        .build()
}

fn result_opts(secs: u64) -> WorkflowGetResultOptions {
    WorkflowGetResultOptions::builder()
        .rpc_options(
            RpcOptions::builder()
                .timeout(Duration::from_secs(secs))
                .build(),
        )
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_chain_succeeds_on_attempt_3() {
    let s = Setup::new(true).await;
    let handle = s
        .client
        .start_workflow(
            Flaky::run,
            "succeed_on_3".to_string(),
            WorkflowStartOptions::new(TQ, "flaky")
                .retry_policy(retry(5))
                .build(),
        )
        .await
        .unwrap();
    // get_result follows the retry chain to its final outcome.
    let attempt = handle.get_result(result_opts(30)).await.unwrap();
    assert_eq!(attempt, 3);
    // Each attempt is its own run, linked to the next; the attempt is in each run.
    for (i, run) in ["flaky", "flaky--r1"].iter().enumerate() {
        match s.outcome(run, 5).await {
            TerminalOutcome::Failed {
                failure,
                next_run_id,
            } => {
                assert!(
                    failure
                        .message
                        .contains(&format!("attempt {} failed", i + 1)),
                    "{failure:?}"
                );
                assert_eq!(
                    next_run_id.as_deref(),
                    Some(protocol::run_id("flaky", i as u64 + 1).as_str())
                );
            }
            other => panic!("{run}: {other:?}"),
        }
    }
    for (i, run) in ["flaky", "flaky--r1", "flaky--r2"].iter().enumerate() {
        let (_, a) = s.attrs(run).await;
        assert_eq!(a.attempt, i as u32 + 1, "{run}");
        assert_eq!(a.first_execution_run_id.as_deref(), Some("flaky"));
    }
    let (r2, a2) = s.attrs("flaky--r2").await;
    assert_eq!(a2.continued_from_run_id.as_deref(), Some("flaky--r1"));
    // The retry waited for its backoff (initial 100 ms, coefficient 2: 200 ms before attempt 3).
    let (r1, _) = s.attrs("flaky--r1").await;
    assert!(r2.delay_until_epoch_ms.is_some() && r1.delay_until_epoch_ms.is_some());
    assert!(r2.delay_until_epoch_ms.unwrap() - r2.created_at_ms >= 190);
    assert!(!s.exists("flaky--r3").await);
    // Describe: the workflow (latest run) is COMPLETED, the first run FAILED.
    let d = handle
        .describe(WorkflowDescribeOptions::default())
        .await
        .unwrap();
    assert_eq!(
        d.status(),
        WorkflowExecutionStatus::Failed,
        "the handle's own run"
    );
    let latest = s.client.get_workflow_handle::<Flaky>("flaky");
    let d = latest
        .describe(WorkflowDescribeOptions::default())
        .await
        .unwrap();
    assert_eq!(d.status(), WorkflowExecutionStatus::Completed);
    assert_eq!(d.run_id(), "flaky--r2");
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_at_maximum_attempts_and_non_retryable_errors() {
    let s = Setup::new(true).await;
    let start = |id: &'static str, mode: &'static str, policy: RetryPolicy| {
        let client = s.client.clone();
        async move {
            client
                .start_workflow(
                    Flaky::run,
                    mode.to_string(),
                    WorkflowStartOptions::new(TQ, id)
                        .retry_policy(policy)
                        .build(),
                )
                .await
                .unwrap()
        }
    };
    // Maximum attempts: two runs, then the last failure is the result.
    let h = start("max", "always", retry(2)).await;
    match h.get_result(result_opts(30)).await {
        Err(WorkflowGetResultError::Failed(e)) => {
            assert!(format!("{e:?}").contains("attempt 2 failed"), "{e:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.outcome("max--r1", 1).await,
        TerminalOutcome::Failed {
            next_run_id: None,
            ..
        }
    ));
    assert!(!s.exists("max--r2").await);
    // A non-retryable application failure ends the chain at once.
    let h = start("nonretryable", "non_retryable", retry(5)).await;
    assert!(matches!(
        h.get_result(result_opts(30)).await,
        Err(WorkflowGetResultError::Failed(_))
    ));
    assert!(matches!(
        s.outcome("nonretryable", 1).await,
        TerminalOutcome::Failed {
            next_run_id: None,
            ..
        }
    ));
    assert!(!s.exists("nonretryable--r1").await);
    // So does a failure whose type the policy lists as non-retryable.
    let typed = RetryPolicy::builder()
        .initial_interval(Duration::from_millis(100))
        .non_retryable_error_types(["FatalError"])
        .build();
    let h = start("typed", "typed", typed).await;
    assert!(matches!(
        h.get_result(result_opts(30)).await,
        Err(WorkflowGetResultError::Failed(_))
    ));
    assert!(!s.exists("typed--r1").await);
    // Without a retry policy a failed workflow is not retried (Temporal's default).
    let h = s
        .client
        .start_workflow(
            Flaky::run,
            "always".to_string(),
            WorkflowStartOptions::new(TQ, "nopolicy").build(),
        )
        .await
        .unwrap();
    assert!(h.get_result(result_opts(30)).await.is_err());
    assert!(!s.exists("nopolicy--r1").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_timeout_times_out_each_attempt_and_retries() {
    let s = Setup::new(true).await;
    let h = s
        .client
        .start_workflow(
            Sleeper::run,
            3600,
            WorkflowStartOptions::new(TQ, "runtimeout")
                .run_timeout(Duration::from_millis(800))
                .retry_policy(retry(2))
                .build(),
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(
        h.get_result(result_opts(30)).await,
        Err(WorkflowGetResultError::TimedOut)
    ));
    assert!(
        started.elapsed() >= Duration::from_millis(1600),
        "two attempts of 800 ms"
    );
    assert_eq!(
        s.outcome("runtimeout", 1).await,
        TerminalOutcome::TimedOut {
            next_run_id: Some("runtimeout--r1".into())
        }
    );
    assert_eq!(
        s.outcome("runtimeout--r1", 1).await,
        TerminalOutcome::TimedOut { next_run_id: None }
    );
    assert!(!s.exists("runtimeout--r2").await);
    let d = s
        .client
        .get_workflow_handle::<Sleeper>("runtimeout")
        .describe(WorkflowDescribeOptions::default())
        .await
        .unwrap();
    assert_eq!(d.status(), WorkflowExecutionStatus::TimedOut);
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_workflow_task_times_out_at_the_deadline() {
    let s = Setup::new(true).await;
    let started = std::time::Instant::now();
    let h = s
        .client
        .start_workflow(
            AlwaysPanics::run,
            (),
            WorkflowStartOptions::new(TQ, "panics")
                .run_timeout(Duration::from_secs(4))
                .build(),
        )
        .await
        .unwrap();
    assert!(matches!(
        h.get_result(result_opts(30)).await,
        Err(WorkflowGetResultError::TimedOut)
    ));
    // The workflow-task retry backoff (1 s, 2 s, 4 s, ...) is cut short by the deadline: the
    // third backoff alone would end 7 s after the start.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(3900), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(5500), "{elapsed:?}");
    let (run, a) = s.attrs("panics").await;
    let deadline = run.created_at_ms + i64::try_from(a.run_timeout_ms.unwrap()).unwrap();
    let closed = run.completed_at_ms.unwrap();
    assert!(
        closed >= deadline && closed - deadline < 1000,
        "closed {} ms after the deadline",
        closed - deadline
    );
    assert_eq!(
        s.outcome("panics", 1).await,
        TerminalOutcome::TimedOut { next_run_id: None }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn execution_timeout_spans_continue_as_new_and_is_not_retried() {
    let s = Setup::new(true).await;
    let h = s
        .client
        .start_workflow(
            Looper::run,
            0,
            WorkflowStartOptions::new(TQ, "exectimeout")
                .execution_timeout(Duration::from_millis(1500))
                .retry_policy(retry(5))
                .build(),
        )
        .await
        .unwrap();
    assert!(matches!(
        h.get_result(result_opts(30)).await,
        Err(WorkflowGetResultError::TimedOut)
    ));
    // Several runs continued as new; the one holding the deadline timed out, with no retry.
    let latest = protocol::latest_run(&s.env.db, "exectimeout")
        .await
        .unwrap()
        .unwrap();
    let (_, index) = protocol::parse_run_id(&latest.workflow_id);
    assert!(
        index >= 2,
        "continued as new before timing out: {}",
        latest.workflow_id
    );
    assert_eq!(
        TerminalOutcome::from_status(&latest).unwrap(),
        Some(TerminalOutcome::TimedOut { next_run_id: None })
    );
    let (_, a) = s.attrs(&latest.workflow_id).await;
    let (first, first_attrs) = s.attrs("exectimeout").await;
    assert!(
        first_attrs
            .execution_deadline_ms
            .is_some_and(|d| d >= first.created_at_ms + 1400)
    );
    assert_eq!(
        a.execution_deadline_ms, first_attrs.execution_deadline_ms,
        "the whole chain shares one deadline"
    );
    let closed = latest.completed_at_ms.unwrap();
    assert!(
        closed >= a.execution_deadline_ms.unwrap(),
        "closed at the deadline"
    );
    let d = h
        .describe(WorkflowDescribeOptions::default())
        .await
        .unwrap();
    assert_eq!(d.status(), WorkflowExecutionStatus::ContinuedAsNew);
    let d = s
        .client
        .get_workflow_handle::<Looper>("exectimeout")
        .describe(WorkflowDescribeOptions::default())
        .await
        .unwrap();
    assert_eq!(d.status(), WorkflowExecutionStatus::TimedOut);
}

#[tokio::test(flavor = "multi_thread")]
async fn execution_timeout_passes_while_no_worker_runs() {
    let mut s = Setup::new(false).await;
    let h = s
        .client
        .start_workflow(
            Sleeper::run,
            1,
            WorkflowStartOptions::new(TQ, "untouched")
                .execution_timeout(Duration::from_millis(500))
                .build(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The first worker to claim the expired run closes it without running workflow code.
    s.start_worker();
    assert!(matches!(
        h.get_result(result_opts(20)).await,
        Err(WorkflowGetResultError::TimedOut)
    ));
    assert!(s.env.db.checkpoints("untouched").await.unwrap().is_empty());
    let d = h
        .describe(WorkflowDescribeOptions::default())
        .await
        .unwrap();
    assert_eq!(d.status(), WorkflowExecutionStatus::TimedOut);
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_runs_on_schedule_and_get_result_follows_the_chain() {
    let s = Setup::new(true).await;
    let t0 = dbos_core::now_ms();
    let h = s
        .client
        .start_workflow(
            CronTick::run,
            (),
            WorkflowStartOptions::new(TQ, "cron")
                .cron_schedule("@every 2s".to_string())
                .build(),
        )
        .await
        .unwrap();
    // The first run waits for the first schedule time (a whole second, up to 2 s away).
    let (first, _) = s.attrs("cron").await;
    assert_eq!(first.state, dbos_core::RunState::Delayed);
    let due = first.delay_until_epoch_ms.unwrap();
    assert!(
        due > t0 && due <= t0 + 2_100 && due % 1000 < 100,
        "{due} vs {t0}"
    );
    // Two runs complete, each at its schedule time; each completion names the next run.
    let r0: String = common::completed(s.outcome("cron", 10).await);
    assert_eq!(r0, "cron");
    let r1: String = common::completed(s.outcome("cron--r1", 10).await);
    assert_eq!(r1, "cron--r1");
    let (_, a0) = s.attrs("cron").await;
    assert_eq!(a0.next_run_id.as_deref(), Some("cron--r1"));
    let (run1, a1) = s.attrs("cron--r1").await;
    assert_eq!(a1.attempt, 1);
    assert_eq!(a1.cron_schedule.as_deref(), Some("@every 2s"));
    // The next run starts at a later schedule time, the first one not before the previous
    // run's close (a slow close skips times). The delay is relative to the enqueue, so the
    // stored time may trail by a few ms.
    let due1 = run1.delay_until_epoch_ms.unwrap();
    let steps = (due1 - due + 50) / 2_000;
    assert!(steps >= 1, "{due1} vs {due}");
    assert!(
        (due1 - (due + steps * 2_000)).abs() < 100,
        "{due1} vs {due}"
    );
    let (run0, _) = s.attrs("cron").await;
    assert!(
        due1 + 100 >= run0.completed_at_ms.unwrap(),
        "not before the close"
    );
    // As with Temporal, get_result follows the cron chain (it does not end on its own); without
    // following runs it returns the handle's run's result.
    assert_eq!(
        h.get_result(
            WorkflowGetResultOptions::builder()
                .follow_runs(false)
                .build()
        )
        .await
        .unwrap(),
        "cron"
    );
    assert!(matches!(
        h.get_result(result_opts(1)).await,
        Err(WorkflowGetResultError::Rpc(st)) if st.message().contains("did not close within the timeout")
    ));
    // Terminating the workflow stops the chain.
    s.client
        .get_workflow_handle::<CronTick>("cron")
        .terminate(WorkflowTerminateOptions::default())
        .await
        .unwrap();
    let latest = protocol::latest_run(&s.env.db, "cron")
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = protocol::latest_run(&s.env.db, "cron")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.workflow_id, after.workflow_id);
    assert!(matches!(
        TerminalOutcome::from_status(&after).unwrap(),
        Some(TerminalOutcome::Terminated { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_child_tells_its_parent_why_it_was_not_retried() {
    let s = Setup::new(true).await;
    let cases = [
        ("no_policy", "RetryPolicyNotSet"),
        ("two_attempts", "MaximumAttemptsReached"),
        ("non_retryable", "NonRetryableFailure"),
        ("typed", "NonRetryableFailure"),
        ("run_timeout", "RetryPolicyNotSet"),
        ("execution_timeout", "Timeout"),
    ];
    let mut handles = Vec::new();
    for (case, _) in cases {
        let h = s
            .client
            .start_workflow(
                ChildRetryState::run,
                case.to_string(),
                WorkflowStartOptions::new(TQ, format!("rs-{case}")).build(),
            )
            .await
            .unwrap();
        handles.push(h);
    }
    for ((case, expected), h) in cases.into_iter().zip(handles) {
        let got = h.get_result(result_opts(30)).await.unwrap();
        assert_eq!(got, expected, "{case}");
    }
    // The child with two attempts did run twice.
    assert!(s.exists("rs-two_attempts-child--r1").await);
    assert!(!s.exists("rs-two_attempts-child--r2").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn children_started_as_the_parent_closes_do_not_outlive_it() {
    let s = Setup::new(true).await;
    let mut created = 0;
    for round in 0..5 {
        let id = format!("ff{round}");
        let h = s
            .client
            .start_workflow(
                FireAndForget::run,
                4,
                WorkflowStartOptions::new(TQ, id.clone()).build(),
            )
            .await
            .unwrap();
        h.get_result(result_opts(30)).await.unwrap();
        // The parent is closed: no child of it can be created any more. Each one that was
        // created is terminated by the parent close policy (applied before and after the
        // parent's close).
        for i in 0..4 {
            let child = format!("{id}-{i}");
            if !s.exists(&child).await {
                continue;
            }
            created += 1;
            match closed(&s, &child).await {
                TerminalOutcome::Terminated { reason, .. } => {
                    assert!(reason.contains("parent close policy TERMINATE"), "{reason}")
                }
                other => panic!("{child}: {other:?}"),
            }
        }
        let (parent, _) = s.attrs(&id).await;
        let kids = s
            .env
            .db
            .list_workflows(&dbos_core::ListFilter {
                attributes: Some(serde_json::json!({ "parent_run_id": id })),
                ..Default::default()
            })
            .await
            .unwrap();
        for kid in kids {
            assert!(kid.state.is_terminal(), "{} left running", kid.workflow_id);
            assert!(kid.created_at_ms <= parent.completed_at_ms.unwrap());
        }
    }
    eprintln!("{created} of 20 children were created before their parent closed");
}

/// Waits until `run` is closed; its outcome.
async fn closed(s: &Setup, run: &str) -> TerminalOutcome {
    s.outcome(run, 10).await
}

#[tokio::test(flavor = "multi_thread")]
async fn parent_close_policies_apply_when_the_parent_completes() {
    let s = Setup::new(true).await;
    let h = s
        .client
        .start_workflow(
            Parent::run,
            false,
            WorkflowStartOptions::new(TQ, "parent").build(),
        )
        .await
        .unwrap();
    h.get_result(result_opts(30)).await.unwrap();
    // TERMINATE (the default): the child is terminated with the parent's close.
    match closed(&s, "parent-terminate").await {
        TerminalOutcome::Terminated { reason, .. } => {
            assert!(reason.contains("parent close policy TERMINATE"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // REQUEST_CANCEL: the child is asked to cancel; its timer is cancelled and it ends by
    // itself (this workflow returns normally after a cancelled timer).
    let o = closed(&s, "parent-cancel").await;
    assert!(!matches!(o, TerminalOutcome::Terminated { .. }), "{o:?}");
    // ABANDON: the child keeps running.
    let (child, a) = s.attrs("parent-abandon").await;
    assert!(!child.state.is_terminal());
    assert_eq!(a.parent_close_policy.as_deref(), Some("abandon"));
    s.client
        .get_workflow_handle::<Sleeper>("parent-abandon")
        .terminate(WorkflowTerminateOptions::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn parent_close_policies_apply_when_the_parent_is_terminated_or_times_out() {
    let s = Setup::new(true).await;
    // Terminated by a client: the client records the outcome, so it applies the policies.
    s.client
        .start_workflow(
            Parent::run,
            true,
            WorkflowStartOptions::new(TQ, "held").build(),
        )
        .await
        .unwrap();
    for child in ["held-terminate", "held-abandon", "held-cancel"] {
        for _ in 0..100 {
            if s.exists(child).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    s.client
        .get_workflow_handle::<Parent>("held")
        .terminate(WorkflowTerminateOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        closed(&s, "held-terminate").await,
        TerminalOutcome::Terminated { .. }
    ));
    let o = closed(&s, "held-cancel").await;
    assert!(!matches!(o, TerminalOutcome::Terminated { .. }), "{o:?}");
    let (child, _) = s.attrs("held-abandon").await;
    assert!(!child.state.is_terminal());

    // Timed out by its worker: the worker applies them before recording TIMED_OUT.
    let h = s
        .client
        .start_workflow(
            Parent::run,
            true,
            WorkflowStartOptions::new(TQ, "late")
                .run_timeout(Duration::from_millis(1500))
                .build(),
        )
        .await
        .unwrap();
    assert!(matches!(
        h.get_result(result_opts(30)).await,
        Err(WorkflowGetResultError::TimedOut)
    ));
    assert!(matches!(
        closed(&s, "late-terminate").await,
        TerminalOutcome::Terminated { .. }
    ));
    let (child, _) = s.attrs("late-abandon").await;
    assert!(!child.state.is_terminal());
}

#[tokio::test(flavor = "multi_thread")]
async fn parent_timing_out_while_its_worker_is_gone_applies_policies_on_recovery() {
    let mut s = Setup::new(true).await;
    let started = std::time::Instant::now();
    let h = s
        .client
        .start_workflow(
            Parent::run,
            true,
            WorkflowStartOptions::new(TQ, "orphan")
                .run_timeout(Duration::from_millis(2000))
                .build(),
        )
        .await
        .unwrap();
    for child in ["orphan-terminate", "orphan-abandon", "orphan-cancel"] {
        for _ in 0..100 {
            if s.exists(child).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(s.exists(child).await, "{child} started");
    }
    // The worker goes away holding the parent (and its children); the deadline passes.
    s.stop_worker().await;
    tokio::time::sleep(Duration::from_millis(2300).saturating_sub(started.elapsed())).await;
    let (parent, _) = s.attrs("orphan").await;
    assert!(!parent.state.is_terminal(), "nobody closed it yet");
    // A worker with the same identity recovers the parent, finds it expired, applies the
    // policies, then records TIMED_OUT.
    s.start_worker();
    assert!(matches!(
        h.get_result(result_opts(30)).await,
        Err(WorkflowGetResultError::TimedOut)
    ));
    assert!(matches!(
        closed(&s, "orphan-terminate").await,
        TerminalOutcome::Terminated { .. }
    ));
    let o = closed(&s, "orphan-cancel").await;
    assert!(!matches!(o, TerminalOutcome::Terminated { .. }), "{o:?}");
    let (child, _) = s.attrs("orphan-abandon").await;
    assert!(!child.state.is_terminal());
}

//! End to end: a worker and starts through the wire protocol in one process, on a real
//! Postgres (`DBOSIFY_TEST_DATABASE_URL`), a fresh namespace per test.

extern crate temporal_compat as temporalio_sdk;

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Env, completed, failure_text, payloads};
use temporal_compat::activities::{ActivityContext, ActivityError};
use temporal_compat::{
    ActivityExecutionError, ActivityOptions, ApplicationFailure, ContinueAsNewOptions,
    LocalActivityOptions, SyncWorkflowContext, TimerResult, WorkerOptions, WorkflowContext,
    WorkflowContextView, WorkflowResult, WorkflowTermination,
};
use temporal_compat_client::protocol::{
    self, CancelRequest, InboxMessage, QueryAnswer, QueryRequest, SignalRequest, TerminalOutcome,
    UpdateAdmission, UpdateOutcome, UpdateRequest,
};
use temporalio_common_wasm::RetryPolicy;
use temporalio_macros::{activities, activity_definitions, workflow, workflow_methods};

#[derive(Default)]
struct Counters {
    greet: AtomicU32,
    flaky: AtomicU32,
    fatal: AtomicU32,
    slow_started: AtomicU32,
    step_a: AtomicU32,
    step_b: AtomicU32,
    step_c: AtomicU32,
    release_b: AtomicBool,
}

struct Acts {
    c: Arc<Counters>,
}

#[activities]
impl Acts {
    #[activity]
    async fn greet(
        self: Arc<Self>,
        _ctx: ActivityContext,
        name: String,
    ) -> Result<String, ActivityError> {
        self.c.greet.fetch_add(1, Ordering::SeqCst);
        Ok(format!("Hello, {name}!"))
    }

    #[activity]
    async fn flaky(self: Arc<Self>, ctx: ActivityContext) -> Result<u32, ActivityError> {
        self.c.flaky.fetch_add(1, Ordering::SeqCst);
        if ctx.info().attempt < 3 {
            return Err(anyhow::anyhow!("transient trouble").into());
        }
        Ok(ctx.info().attempt)
    }

    #[activity]
    async fn fatal(self: Arc<Self>, _ctx: ActivityContext) -> Result<(), ActivityError> {
        self.c.fatal.fetch_add(1, Ordering::SeqCst);
        Err(ActivityError::application(
            ApplicationFailure::non_retryable(anyhow::anyhow!("this cannot work")),
        ))
    }

    #[activity]
    async fn slow(self: Arc<Self>, ctx: ActivityContext, ms: u64) -> Result<String, ActivityError> {
        self.c.slow_started.fetch_add(1, Ordering::SeqCst);
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until {
            if ctx.is_cancelled() {
                return Err(ActivityError::cancelled());
            }
            let _ = ctx.record_heartbeat(()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok("slow done".to_string())
    }

    #[activity]
    async fn resumable(ctx: ActivityContext) -> Result<u32, ActivityError> {
        let seen: u32 = ctx.heartbeat_details().deserialize()?.unwrap_or(0);
        if ctx.info().attempt == 1 {
            ctx.record_heartbeat(7u32).await?;
            return Err(anyhow::anyhow!("crash after heartbeat").into());
        }
        Ok(seen)
    }

    #[activity]
    async fn step_a(self: Arc<Self>, _ctx: ActivityContext) -> Result<u32, ActivityError> {
        Ok(self.c.step_a.fetch_add(1, Ordering::SeqCst) + 1)
    }

    #[activity]
    async fn step_b(self: Arc<Self>, ctx: ActivityContext) -> Result<u32, ActivityError> {
        let n = self.c.step_b.fetch_add(1, Ordering::SeqCst) + 1;
        while !self.c.release_b.load(Ordering::SeqCst) {
            if ctx.is_cancelled() {
                return Err(ActivityError::cancelled());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(n)
    }

    #[activity]
    async fn step_c(self: Arc<Self>, _ctx: ActivityContext) -> Result<u32, ActivityError> {
        Ok(self.c.step_c.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

struct Elsewhere;

#[activity_definitions]
impl Elsewhere {
    #[activity(name = "Elsewhere::missing")]
    fn missing(_: String) -> Result<String, ActivityError> {
        unimplemented!()
    }
}

fn opts() -> ActivityOptions {
    ActivityOptions::start_to_close_timeout(Duration::from_secs(10))
}

fn fast_retry(max: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .initial_interval(Duration::from_millis(100))
        .maximum_attempts(max)
        .build()
}

#[workflow]
#[derive(Default)]
struct OneActivity;

#[workflow_methods]
impl OneActivity {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>, name: String) -> WorkflowResult<String> {
        Ok(ctx.execute_activity(Acts::greet, name, opts()).await?)
    }
}

#[workflow]
#[derive(Default)]
struct Retrying;

#[workflow_methods]
impl Retrying {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<u32> {
        let o = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(10))
            .retry_policy(fast_retry(0))
            .build();
        Ok(ctx.execute_activity(Acts::flaky, (), o).await?)
    }
}

#[workflow]
#[derive(Default)]
struct Fatal;

#[workflow_methods]
impl Fatal {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<()> {
        ctx.execute_activity(Acts::fatal, (), opts()).await?;
        Ok(())
    }
}

#[workflow]
#[derive(Default)]
struct TimesOut;

#[workflow_methods]
impl TimesOut {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<String> {
        let o = ActivityOptions::with_start_to_close_timeout(Duration::from_millis(200))
            .retry_policy(fast_retry(2))
            .build();
        match ctx.execute_activity(Acts::slow, 5_000u64, o).await {
            Ok(v) => Ok(v),
            Err(e) => Ok(format!("timeout={} {e}", e.as_timeout().is_some())),
        }
    }
}

#[workflow]
#[derive(Default)]
struct Resumes;

#[workflow_methods]
impl Resumes {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<u32> {
        let o = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(10))
            .retry_policy(fast_retry(0))
            .build();
        Ok(ctx.execute_activity(Acts::resumable, (), o).await?)
    }
}

#[workflow]
#[derive(Default)]
struct Local;

#[workflow_methods]
impl Local {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>, name: String) -> WorkflowResult<String> {
        let o = LocalActivityOptions::builder()
            .start_to_close_timeout(Duration::from_secs(5))
            .build();
        Ok(ctx.execute_local_activity(Acts::greet, name, o).await?)
    }
}

#[workflow]
#[derive(Default)]
struct Timer;

#[workflow_methods]
impl Timer {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<String> {
        let before = ctx.workflow_time();
        let r = ctx.timer(Duration::from_millis(300)).await;
        let after = ctx.workflow_time();
        let waited = match (before, after) {
            (Some(b), Some(a)) => {
                a.duration_since(b).unwrap_or_default() >= Duration::from_millis(300)
            }
            _ => false,
        };
        Ok(format!("{r:?} waited={waited}"))
    }
}

#[workflow]
#[derive(Default)]
struct Race;

#[workflow_methods]
impl Race {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<String> {
        let mut timer = ctx.timer(Duration::from_secs(30));
        let mut act = ctx.execute_activity(Acts::slow, 50u64, opts());
        let first = temporalio_sdk::workflows::select! {
            _ = timer => "timer".to_string(),
            r = act => r?,
        };
        // Now the other way round: a short timer beats a long activity, which is cancelled.
        let mut timer = ctx.timer(Duration::from_millis(100));
        let act = ctx.execute_activity(Acts::slow, 30_000u64, opts());
        let mut act = act;
        let second = temporalio_sdk::workflows::select! {
            _ = timer => "timer".to_string(),
            r = act => r?,
        };
        Ok(format!("{first}, {second}"))
    }
}

#[workflow]
#[derive(Default)]
struct Signals {
    items: Vec<String>,
}

#[workflow_methods]
impl Signals {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<String> {
        ctx.wait_condition(|s| s.items.len() >= 2).await?;
        Ok(ctx.state(|s| s.items.join("+")))
    }

    #[signal]
    fn add(&mut self, _ctx: &mut SyncWorkflowContext<Self>, item: String) {
        self.items.push(item);
    }

    #[query]
    fn count(&self, _ctx: &WorkflowContextView) -> usize {
        self.items.len()
    }

    #[update]
    fn add_now(&mut self, _ctx: &mut SyncWorkflowContext<Self>, item: String) -> usize {
        self.items.push(item);
        self.items.len()
    }

    #[update_validator(add_now)]
    #[allow(clippy::ptr_arg)]
    fn check_add_now(
        &self,
        _ctx: &WorkflowContextView,
        item: &String,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if item.is_empty() {
            return Err("empty items are refused".into());
        }
        Ok(())
    }
}

#[workflow]
#[derive(Default)]
struct Cancellable;

#[workflow_methods]
impl Cancellable {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<String> {
        let o = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(60))
            .heartbeat_timeout(Duration::from_secs(5))
            .build();
        match ctx.execute_activity(Acts::slow, 60_000u64, o).await {
            Err(ActivityExecutionError::Cancelled(_)) => {
                let reason = ctx.cancellation_token().reason().unwrap_or_default();
                Ok(format!("cancelled ({reason})"))
            }
            Err(e) => Err(e.into()),
            Ok(v) => Ok(v),
        }
    }
}

#[workflow]
#[derive(Default)]
struct CancelledOutright;

#[workflow_methods]
impl CancelledOutright {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<()> {
        match ctx.timer(Duration::from_secs(3600)).await {
            TimerResult::Cancelled => Err(WorkflowTermination::cancelled()),
            TimerResult::Fired => Ok(()),
        }
    }
}

#[workflow]
#[derive(Default)]
struct Chain;

#[workflow_methods]
impl Chain {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>, n: u32) -> WorkflowResult<u32> {
        if n < 3 {
            ctx.continue_as_new(n + 1, ContinueAsNewOptions::default())?;
        }
        Ok(n)
    }
}

#[workflow]
#[derive(Default)]
struct ThreeSteps;

#[workflow_methods]
impl ThreeSteps {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<String> {
        let a = ctx.execute_activity(Acts::step_a, (), opts()).await?;
        let id = ctx.uuid4();
        let b = ctx.execute_activity(Acts::step_b, (), opts()).await?;
        let c = ctx.execute_activity(Acts::step_c, (), opts()).await?;
        Ok(format!("a{a} b{b} c{c} {}", id.len()))
    }
}

#[workflow]
#[derive(Default)]
struct CallsMissing;

#[workflow_methods]
impl CallsMissing {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<String> {
        Ok(ctx
            .execute_activity(Elsewhere::missing, "x".to_string(), opts())
            .await?)
    }
}

#[workflow]
#[derive(Default)]
struct Parent;

#[workflow_methods]
impl Parent {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<String> {
        let mut out = Vec::new();
        for i in 0..2 {
            let id = format!("{}-child-{i}", ctx.workflow_id());
            let child = ctx
                .start_child_workflow(
                    OneActivity::run,
                    format!("kid{i}"),
                    temporal_compat::ChildWorkflowOptions::workflow_id(id),
                )
                .await?;
            out.push(child.result().await?);
        }
        let id = format!("{}-signalled", ctx.workflow_id());
        let child = ctx
            .start_child_workflow(
                Signals::run,
                (),
                temporal_compat::ChildWorkflowOptions::workflow_id(id),
            )
            .await?;
        for s in ["s1", "s2"] {
            child
                .signal(
                    Signals::add,
                    s.to_string(),
                    temporal_compat::SignalWorkflowOptions::default(),
                )
                .await?;
        }
        out.push(child.result().await?);
        Ok(out.join(", "))
    }
}

static PANICKED_ONCE: AtomicBool = AtomicBool::new(false);

#[workflow]
#[derive(Default)]
struct PanicsOnce;

#[workflow_methods]
impl PanicsOnce {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<String> {
        let r = ctx
            .execute_activity(Acts::greet, "p".to_string(), opts())
            .await?;
        if !PANICKED_ONCE.swap(true, Ordering::SeqCst) {
            panic!("first time panics");
        }
        Ok(r)
    }
}

fn options(tq: &str, c: &Arc<Counters>) -> WorkerOptions {
    WorkerOptions::new(tq)
        .register_workflow::<OneActivity>()
        .unwrap()
        .register_workflow::<Retrying>()
        .unwrap()
        .register_workflow::<Fatal>()
        .unwrap()
        .register_workflow::<TimesOut>()
        .unwrap()
        .register_workflow::<Resumes>()
        .unwrap()
        .register_workflow::<Local>()
        .unwrap()
        .register_workflow::<Timer>()
        .unwrap()
        .register_workflow::<Race>()
        .unwrap()
        .register_workflow::<Signals>()
        .unwrap()
        .register_workflow::<Cancellable>()
        .unwrap()
        .register_workflow::<CancelledOutright>()
        .unwrap()
        .register_workflow::<Chain>()
        .unwrap()
        .register_workflow::<ThreeSteps>()
        .unwrap()
        .register_workflow::<CallsMissing>()
        .unwrap()
        .register_workflow::<PanicsOnce>()
        .unwrap()
        .register_workflow::<Parent>()
        .unwrap()
        .register_activities(Acts { c: c.clone() })
        .build()
}

async fn setup() -> (Env, Arc<Counters>, Box<dyn Fn() + Send + Sync>) {
    let env = Env::new().await;
    let c = Arc::new(Counters::default());
    let (_task, stop) = env.worker(None, options("tq", &c));
    (env, c, stop)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_activity() {
    let (env, c, stop) = setup().await;
    let run = env
        .start("OneActivity", "w1", "tq", payloads(&"World".to_string()))
        .await;
    let r: String = completed(env.outcome(&run, 20).await);
    assert_eq!(r, "Hello, World!");
    assert_eq!(c.greet.load(Ordering::SeqCst), 1);
    stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn activity_retries_with_backoff() {
    let (env, c, stop) = setup().await;
    let t0 = Instant::now();
    let run = env.start("Retrying", "w", "tq", vec![]).await;
    let attempt: u32 = completed(env.outcome(&run, 20).await);
    assert_eq!(attempt, 3);
    assert_eq!(c.flaky.load(Ordering::SeqCst), 3);
    // Backoffs of 100 ms then 200 ms.
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn non_retryable_failure_fails_the_workflow() {
    let (env, c, stop) = setup().await;
    let run = env.start("Fatal", "w", "tq", vec![]).await;
    let o = env.outcome(&run, 20).await;
    let text = failure_text(&o);
    assert!(text.contains("this cannot work"), "{text}");
    assert_eq!(c.fatal.load(Ordering::SeqCst), 1);
    stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn start_to_close_timeout() {
    let (env, c, stop) = setup().await;
    let run = env.start("TimesOut", "w", "tq", vec![]).await;
    let r: String = completed(env.outcome(&run, 20).await);
    assert!(r.starts_with("timeout=true"), "{r}");
    assert_eq!(c.slow_started.load(Ordering::SeqCst), 2);
    stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeat_details_reach_the_next_attempt() {
    let (env, _c, stop) = setup().await;
    let run = env.start("Resumes", "w", "tq", vec![]).await;
    let r: u32 = completed(env.outcome(&run, 20).await);
    assert_eq!(r, 7);
    stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn local_activity() {
    let (env, c, stop) = setup().await;
    let run = env
        .start("Local", "w", "tq", payloads(&"Local".to_string()))
        .await;
    let r: String = completed(env.outcome(&run, 20).await);
    assert_eq!(r, "Hello, Local!");
    assert_eq!(c.greet.load(Ordering::SeqCst), 1);
    stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn timer() {
    let (env, _c, stop) = setup().await;
    let t0 = Instant::now();
    let run = env.start("Timer", "w", "tq", vec![]).await;
    let r: String = completed(env.outcome(&run, 20).await);
    assert_eq!(r, "Fired waited=true");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn select_timer_against_activity() {
    let (env, _c, stop) = setup().await;
    let run = env.start("Race", "w", "tq", vec![]).await;
    let r: String = completed(env.outcome(&run, 20).await);
    assert_eq!(r, "slow done, timer");
    stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn signals() {
    let (env, _c, stop) = setup().await;
    let run = env.start("Signals", "w", "tq", vec![]).await;
    for item in ["a", "b"] {
        env.send(
            &run,
            InboxMessage::Signal(SignalRequest {
                name: "add".into(),
                payloads: payloads(&item.to_string()),
                headers: Default::default(),
                identity: "test".into(),
                request_id: None,
            }),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r: String = completed(env.outcome(&run, 20).await);
    assert_eq!(r, "a+b");
    stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn workflow_cancel() {
    let (env, c, stop) = setup().await;
    let run = env.start("Cancellable", "w", "tq", vec![]).await;
    while c.slow_started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    env.send(
        &run,
        InboxMessage::Cancel(CancelRequest {
            reason: "enough".into(),
            identity: "test".into(),
            request_id: None,
        }),
    )
    .await;
    let r: String = completed(env.outcome(&run, 20).await);
    assert_eq!(r, "cancelled (enough)");

    let run = env.start("CancelledOutright", "w2", "tq", vec![]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    env.send(
        &run,
        InboxMessage::Cancel(CancelRequest {
            reason: String::new(),
            identity: "test".into(),
            request_id: None,
        }),
    )
    .await;
    let o = env.outcome(&run, 20).await;
    assert!(matches!(o, TerminalOutcome::Canceled { .. }), "{o:?}");
    stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn continue_as_new_chain() {
    let (env, _c, stop) = setup().await;
    let run = env.start("Chain", "chain", "tq", payloads(&0u32)).await;
    let (last, o) = env.final_outcome(&run, 20).await;
    assert_eq!(last, "chain--r3");
    let r: u32 = completed(o);
    assert_eq!(r, 3);
    stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_after_a_crash() {
    let env = Env::new().await;
    let c = Arc::new(Counters::default());
    let (task, _stop) = env.worker(Some("crash-test-worker"), options("tq", &c));
    let run = env.start("ThreeSteps", "w", "tq", vec![]).await;
    while c.step_b.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // "Crash": the worker's future is dropped mid-run (step B in flight).
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.release_b.store(true, Ordering::SeqCst);
    let (_task2, stop2) = env.worker(Some("crash-test-worker"), options("tq", &c));
    let r: String = completed(env.outcome(&run, 30).await);
    assert_eq!(r, "a1 b2 c1 36");
    assert_eq!(
        c.step_a.load(Ordering::SeqCst),
        1,
        "completed activity re-executed"
    );
    assert_eq!(c.step_b.load(Ordering::SeqCst), 2);
    assert_eq!(c.step_c.load(Ordering::SeqCst), 1);
    stop2();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_runs_end_with_clear_errors() {
    let (env, _c, stop) = setup().await;
    let unknown = env.start("NoSuchWorkflow", "u", "tq", vec![]).await;
    let bad_input = env.start("OneActivity", "b", "tq", payloads(&42u32)).await;
    let missing = env.start("CallsMissing", "m", "tq", vec![]).await;
    let text = failure_text(&env.outcome(&unknown, 20).await);
    assert!(
        text.contains("Workflow type NoSuchWorkflow not found"),
        "{text}"
    );
    let text = failure_text(&env.outcome(&bad_input, 20).await);
    assert!(text.contains("Failed to create workflow"), "{text}");
    let text = failure_text(&env.outcome(&missing, 20).await);
    assert!(
        text.contains("Elsewhere::missing is not registered"),
        "{text}"
    );
    stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn panics_fail_the_task_and_are_retried() {
    let (env, c, stop) = setup().await;
    let run = env.start("PanicsOnce", "p", "tq", vec![]).await;
    let r: String = completed(env.outcome(&run, 30).await);
    assert_eq!(r, "Hello, p!");
    assert!(PANICKED_ONCE.load(Ordering::SeqCst));
    // The activity's result was recorded before the panic: replay does not re-run it.
    assert_eq!(c.greet.load(Ordering::SeqCst), 1);
    stop();
}

fn signal(item: &str) -> InboxMessage {
    InboxMessage::Signal(SignalRequest {
        name: "add".into(),
        payloads: payloads(&item.to_string()),
        headers: Default::default(),
        identity: "test".into(),
        request_id: None,
    })
}

async fn query_count(env: &Env, run: &str, id: &str) -> QueryAnswer {
    let q = QueryRequest {
        query_id: id.into(),
        name: "count".into(),
        payloads: vec![],
        headers: Default::default(),
    };
    env.db
        .send(run, protocol::QUERY_TOPIC, &q.encode(), None)
        .await
        .unwrap();
    let text = env
        .db
        .get_event(
            run,
            &protocol::query_answer_key(id),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap()
        .expect("query answered");
    QueryAnswer::from_text(&text).unwrap()
}

async fn update(env: &Env, run: &str, id: &str, item: &str) -> (UpdateAdmission, UpdateOutcome) {
    let u = UpdateRequest {
        update_id: id.into(),
        name: "add_now".into(),
        payloads: payloads(&item.to_string()),
        headers: Default::default(),
        identity: "test".into(),
    };
    env.send(run, InboxMessage::Update(u)).await;
    let wait = Some(Duration::from_secs(10));
    let a = env
        .db
        .get_event(run, &protocol::update_accepted_key(id), wait)
        .await
        .unwrap()
        .expect("update admitted");
    let o = env
        .db
        .get_event(run, &protocol::update_completed_key(id), wait)
        .await
        .unwrap()
        .expect("update completed");
    (
        UpdateAdmission::from_text(&a).unwrap(),
        UpdateOutcome::from_text(&o).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_and_updates() {
    let (env, _c, stop) = setup().await;
    let run = env.start("Signals", "qu", "tq", vec![]).await;
    env.send(&run, signal("a")).await;
    // The signal may not be delivered yet; poll the query until it is.
    let mut n = 0usize;
    for i in 0..100 {
        match query_count(&env, &run, &format!("q{i}")).await {
            QueryAnswer::Answer(p) => n = common::value(p),
            QueryAnswer::Failure(f) => panic!("query failed: {}", f.message),
        }
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(n, 1);
    let (admission, outcome) = update(&env, &run, "u-empty", "").await;
    assert!(
        matches!(admission, UpdateAdmission::Rejected { .. }),
        "{admission:?}"
    );
    assert!(matches!(outcome, UpdateOutcome::Failure(_)), "{outcome:?}");
    let (admission, outcome) = update(&env, &run, "u-ok", "b").await;
    assert_eq!(admission, UpdateAdmission::Accepted);
    match outcome {
        UpdateOutcome::Success(p) => assert_eq!(common::value::<usize>(p), 2),
        other => panic!("{other:?}"),
    }
    let r: String = completed(env.outcome(&run, 20).await);
    assert_eq!(r, "a+b");
    stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn evicted_instances_are_rebuilt() {
    let env = Env::new().await;
    let c = Arc::new(Counters::default());
    let mut o = options("tq", &c);
    o.max_cached_workflows = 1;
    let (_task, stop) = env.worker(None, o);
    let mut runs = Vec::new();
    for i in 0..6 {
        runs.push(env.start("Signals", &format!("ev{i}"), "tq", vec![]).await);
    }
    for item in ["x", "y"] {
        for run in &runs {
            env.send(run, signal(item)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for run in &runs {
        let r: String = completed(env.outcome(run, 20).await);
        assert_eq!(r, "x+y");
    }
    stop();
}

/// Latency of sequential one-activity workflows, start to result, worker in the same process.
/// Not a timed test: run with `--ignored --nocapture` to print the figures.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn bench_one_activity_latency() {
    let (env, _c, stop) = setup().await;
    // Warm up.
    for i in 0..20 {
        let run = env
            .start(
                "OneActivity",
                &format!("warm{i}"),
                "tq",
                payloads(&"x".to_string()),
            )
            .await;
        let _: String = completed(env.outcome(&run, 20).await);
    }
    let commits = |db: dbos_core::SystemDatabase| async move {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        n
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = commits(env.db.clone()).await;
    let n = 200;
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        let run = env
            .start(
                "OneActivity",
                &format!("b{i}"),
                "tq",
                payloads(&"x".to_string()),
            )
            .await;
        let _: String = completed(env.outcome(&run, 20).await);
        times.push(t0.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = commits(env.db.clone()).await;
    times.sort();
    println!(
        "one-activity workflow, start->result, n={n}: p50 {:?}, p90 {:?}, p99 {:?}; ~{:.1} commits/workflow (all sessions, incl. reads)",
        times[n / 2],
        times[n * 9 / 10],
        times[n * 99 / 100],
        (after - before) as f64 / n as f64
    );
    stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn child_workflows_and_signals_to_them() {
    let (env, _c, stop) = setup().await;
    let run = env.start("Parent", "parent", "tq", vec![]).await;
    let r: String = completed(env.outcome(&run, 30).await);
    assert_eq!(r, "Hello, kid0!, Hello, kid1!, s1+s2");
    let child = env.db.status("parent-child-0").await.unwrap().unwrap();
    assert_eq!(child.parent_workflow_id.as_deref(), Some("parent"));
    stop();
}

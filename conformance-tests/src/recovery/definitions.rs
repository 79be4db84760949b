//! [`RecoveryWorkflow`] and [`RecoveryActivities`] (see the parent module).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use temporalio_common::RetryPolicy;
use temporalio_macros::{activities, workflow, workflow_methods};
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use temporalio_sdk::{
    ActivityOptions, SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult,
};

use super::{GATE_POLL, Heartbeat, Plan, Step, Work};

/// Start-to-close timeout of every activity: long enough for any gate the tests hold.
const START_TO_CLOSE: Duration = Duration::from_secs(300);

/// Runs a [`Plan`].
#[workflow]
#[derive(Default)]
pub struct RecoveryWorkflow;

#[workflow_methods]
impl RecoveryWorkflow {
    /// Executes the plan's steps in order; returns their results joined by `,`.
    #[run]
    pub async fn run(ctx: &mut WorkflowContext<Self>, plan: Plan) -> WorkflowResult<String> {
        let mut parts = Vec::with_capacity(plan.steps.len());
        for step in plan.steps {
            match step {
                Step::Work(work) => {
                    let retry = match work.retry_interval_ms {
                        Some(ms) => RetryPolicy::builder()
                            .initial_interval(Duration::from_millis(ms))
                            .backoff_coefficient(1.0)
                            .build(),
                        None => RetryPolicy::default(),
                    };
                    let options = ActivityOptions::with_start_to_close_timeout(START_TO_CLOSE)
                        .retry_policy(retry)
                        .build();
                    parts.push(
                        ctx.execute_activity(RecoveryActivities::work, work, options)
                            .await?,
                    );
                }
                Step::Timer(ms) => {
                    ctx.timer(Duration::from_millis(ms)).await;
                    parts.push(format!("timer{ms}"));
                }
                Step::HeartbeatAlongsideTimer(heartbeat, ms) => {
                    let options = ActivityOptions::with_start_to_close_timeout(START_TO_CLOSE)
                        .heartbeat_timeout(Duration::from_millis(heartbeat.heartbeat_timeout_ms))
                        .build();
                    let activity = ctx.execute_activity(
                        RecoveryActivities::heartbeat_work,
                        heartbeat,
                        options,
                    );
                    let timer = ctx.timer(Duration::from_millis(ms));
                    let (result, _) = futures::future::join(activity, timer).await;
                    parts.push(result?);
                    parts.push(format!("timer{ms}"));
                }
                Step::Heartbeat(heartbeat) => {
                    let options = ActivityOptions::with_start_to_close_timeout(START_TO_CLOSE)
                        .heartbeat_timeout(Duration::from_millis(heartbeat.heartbeat_timeout_ms))
                        .build();
                    parts.push(
                        ctx.execute_activity(
                            RecoveryActivities::heartbeat_work,
                            heartbeat,
                            options,
                        )
                        .await?,
                    );
                }
            }
        }
        Ok(parts.join(","))
    }
}

/// The activities; each execution is recorded in the effects table.
pub struct RecoveryActivities {
    pool: PgPool,
    worker: String,
    gate_dir: PathBuf,
}

impl RecoveryActivities {
    /// Activities recording their executions through `pool` under the worker name `worker`,
    /// looking for gate files in `gate_dir`.
    pub fn new(pool: PgPool, worker: String, gate_dir: PathBuf) -> Self {
        Self {
            pool,
            worker,
            gate_dir,
        }
    }

    /// Inserts the execution's row; returns its id.
    async fn record_start(
        &self,
        ctx: &ActivityContext,
        name: &str,
        detail: Option<String>,
    ) -> Result<i64, ActivityError> {
        let info = ctx.info();
        let workflow_id = owner(ctx);
        let attempt = i32::try_from(info.attempt).unwrap_or(i32::MAX);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO recovery_effects (workflow_id, activity, attempt, worker, detail)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(&workflow_id)
        .bind(name)
        .bind(attempt)
        .bind(&self.worker)
        .bind(&detail)
        .fetch_one(&self.pool)
        .await?;
        let from = detail.map(|d| format!(" from={d}")).unwrap_or_default();
        marker(&format!(
            "EFFECT {workflow_id} {name} attempt={} started{from}",
            info.attempt
        ));
        Ok(id)
    }

    /// Records how execution `id` ended.
    async fn record_end(
        &self,
        ctx: &ActivityContext,
        name: &str,
        id: i64,
        outcome: &str,
    ) -> Result<(), ActivityError> {
        sqlx::query(
            "UPDATE recovery_effects SET finished_at = clock_timestamp(), outcome = $2
             WHERE id = $1",
        )
        .bind(id)
        .bind(outcome)
        .execute(&self.pool)
        .await?;
        marker(&format!(
            "EFFECT {} {name} attempt={} {outcome}",
            owner(ctx),
            ctx.info().attempt
        ));
        Ok(())
    }

    /// Waits until the gate file exists (or the activity is cancelled).
    async fn wait_for_gate(&self, ctx: &ActivityContext, gate: &str) -> Result<(), ActivityError> {
        let path = self.gate_dir.join(format!("gate-{gate}"));
        while !path.exists() {
            if ctx.is_cancelled() {
                return Err(ActivityError::cancelled());
            }
            tokio::time::sleep(GATE_POLL).await;
        }
        Ok(())
    }
}

/// Whose execution this is in the effects table and marker lines: the workflow id, or for a
/// standalone activity (no workflow) its activity id.
fn owner(ctx: &ActivityContext) -> String {
    let info = ctx.info();
    info.workflow_id
        .clone()
        .unwrap_or_else(|| info.activity_id.clone())
}

/// Prints a marker line and flushes stdout (the test reads it from a file).
fn marker(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[activities]
impl RecoveryActivities {
    /// Records its execution, waits for its gate (if any), fails retryably while
    /// `attempt <= fail_attempts`, else returns `<name>#<attempt>`.
    #[activity]
    pub async fn work(
        self: Arc<Self>,
        ctx: ActivityContext,
        work: Work,
    ) -> Result<String, ActivityError> {
        let id = self.record_start(&ctx, &work.name, None).await?;
        if let Some(gate) = &work.gate {
            self.wait_for_gate(&ctx, gate).await?;
        }
        let attempt = ctx.info().attempt;
        if attempt <= work.fail_attempts {
            self.record_end(&ctx, &work.name, id, "failed").await?;
            return Err(std::io::Error::other(format!(
                "{} fails attempt {attempt} on purpose",
                work.name
            ))
            .into());
        }
        self.record_end(&ctx, &work.name, id, "finished").await?;
        Ok(format!("{}#{attempt}", work.name))
    }

    /// Resumes from its heartbeat details (`from`, 0 at first), heartbeats the steps
    /// `from + 1 ..= steps` (printing a `HEARTBEAT` line after each), then keeps heartbeating
    /// the last step until its gate opens; returns `<name>#from=<from>`.
    #[activity]
    pub async fn heartbeat_work(
        self: Arc<Self>,
        ctx: ActivityContext,
        heartbeat: Heartbeat,
    ) -> Result<String, ActivityError> {
        let from: u32 = ctx.heartbeat_details().deserialize()?.unwrap_or(0);
        let id = self
            .record_start(&ctx, &heartbeat.name, Some(from.to_string()))
            .await?;
        let workflow_id = owner(&ctx);
        let attempt = ctx.info().attempt;
        let mut last = from;
        for step in from + 1..=heartbeat.steps {
            ctx.record_heartbeat(step).await?;
            last = step;
            marker(&format!(
                "HEARTBEAT {workflow_id} {} attempt={attempt} step={step}",
                heartbeat.name
            ));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let gate = self.gate_dir.join(format!("gate-{}", heartbeat.gate));
        while !gate.exists() {
            if ctx.is_cancelled() {
                return Err(ActivityError::cancelled());
            }
            ctx.record_heartbeat(last).await?;
            tokio::time::sleep(GATE_POLL * 5).await;
        }
        self.record_end(&ctx, &heartbeat.name, id, "finished")
            .await?;
        Ok(format!("{}#from={from}", heartbeat.name))
    }
}

/// A mailbox for the message kill-and-recover tests (`tests/recovery_messages.rs`): runs the
/// given [`Work`] steps, then collects the values of `add` signals and `gated_put` updates
/// until the `finish` signal; returns the collected values in the order they were applied.
#[workflow]
#[derive(Default)]
pub struct MessageWorkflow {
    items: Vec<u64>,
    done: bool,
}

#[workflow_methods]
impl MessageWorkflow {
    /// Executes `first` (each a [`RecoveryActivities::work`]), then waits for `finish`; returns
    /// the values applied by signals and updates, in order.
    #[run]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        first: Vec<Work>,
    ) -> WorkflowResult<Vec<u64>> {
        for work in first {
            let options = ActivityOptions::with_start_to_close_timeout(START_TO_CLOSE).build();
            ctx.execute_activity(RecoveryActivities::work, work, options)
                .await?;
        }
        ctx.wait_condition(|s| s.done).await?;
        Ok(ctx.state(|s| s.items.clone()))
    }

    /// Appends `v`.
    #[signal]
    pub fn add(&mut self, _ctx: &mut SyncWorkflowContext<Self>, v: u64) {
        self.items.push(v);
    }

    /// Lets the run finish.
    #[signal]
    pub fn finish(&mut self, _ctx: &mut SyncWorkflowContext<Self>) {
        self.done = true;
    }

    /// The values applied so far, in order.
    #[query]
    pub fn items(&self, _ctx: &WorkflowContextView) -> Vec<u64> {
        self.items.clone()
    }

    /// The values applied so far, answered only once the file `gate-<gate>` exists in the
    /// worker's working directory: prints `QUERY held_items gate=<gate> started` first, then
    /// blocks the workflow thread while it waits (so a test can kill the worker while it holds
    /// a query it has claimed and not answered).
    #[query]
    pub fn held_items(&self, _ctx: &WorkflowContextView, gate: String) -> Vec<u64> {
        marker(&format!("QUERY held_items gate={gate} started"));
        let path = PathBuf::from(format!("gate-{gate}"));
        while !path.exists() {
            std::thread::sleep(GATE_POLL);
        }
        self.items.clone()
    }

    /// Executes `work` (typically gated), then appends `v`; returns
    /// `<activity result>+<v>`.
    #[update]
    pub async fn gated_put(ctx: &mut WorkflowContext<Self>, input: (Work, u64)) -> String {
        let (work, v) = input;
        let options = ActivityOptions::with_start_to_close_timeout(START_TO_CLOSE).build();
        let done = match ctx
            .execute_activity(RecoveryActivities::work, work, options)
            .await
        {
            Ok(done) => done,
            Err(e) => format!("failed: {e}"),
        };
        ctx.state_mut(|s| s.items.push(v));
        format!("{done}+{v}")
    }
}

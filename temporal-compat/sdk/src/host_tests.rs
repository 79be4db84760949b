//! In-memory tests of the host with small workflows written with Temporal's macros.

use std::time::Duration;

use temporalio_common_wasm::data_converters::{
    DataConverter, GenericPayloadConverter, SerializationContext, SerializationContextData,
    WorkflowSerializationContext,
};
use temporalio_common_wasm::protos::coresdk::activity_result::{
    ActivityResolution, Success, activity_resolution,
};
use temporalio_common_wasm::protos::coresdk::workflow_activation::{
    CancelWorkflow, FireTimer, InitializeWorkflow, QueryWorkflow, ResolveActivity, SignalWorkflow,
    WorkflowActivation, WorkflowActivationJob, workflow_activation_job::Variant,
};
use temporalio_common_wasm::protos::coresdk::workflow_commands::{
    WorkflowCommand, query_result, workflow_command::Variant as Cmd,
};
use temporalio_common_wasm::protos::temporal::api::common::v1::Payload;
use temporalio_macros::{activities, workflow, workflow_methods};

use super::WorkflowRun;
use crate::activities::{ActivityContext, ActivityError};
use crate::registry::{InstanceInput, WorkflowDefinitions};
use crate::{ActivityOptions, TimerResult, WorkflowContext, WorkflowContextView, WorkflowResult};

struct Acts;

#[activities]
impl Acts {
    #[activity]
    async fn greet(_ctx: ActivityContext, name: String) -> Result<String, ActivityError> {
        Ok(format!("Hello, {name}!"))
    }
}

#[workflow]
#[derive(Default)]
struct Greeter;

#[workflow_methods]
impl Greeter {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>, name: String) -> WorkflowResult<String> {
        let greeting = ctx
            .execute_activity(
                Acts::greet,
                name,
                ActivityOptions::start_to_close_timeout(Duration::from_secs(10)),
            )
            .await?;
        Ok(greeting)
    }
}

#[workflow]
#[derive(Default)]
struct Racer {
    signals: u32,
}

#[workflow_methods]
impl Racer {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<String> {
        let mut timer = ctx.timer(Duration::from_secs(60));
        let mut act = ctx.execute_activity(
            Acts::greet,
            "x".to_string(),
            ActivityOptions::start_to_close_timeout(Duration::from_secs(10)),
        );
        let winner = crate::workflows::select! {
            _ = timer => "timer".to_string(),
            r = act => r?,
        };
        ctx.wait_condition(|s| s.signals >= 2).await?;
        let n = ctx.state(|s| s.signals);
        Ok(format!("{winner} after {n} signals"))
    }

    #[signal]
    fn poke(&mut self, _ctx: &mut crate::SyncWorkflowContext<Self>) {
        self.signals += 1;
    }

    #[query]
    fn count(&self, _ctx: &WorkflowContextView) -> u32 {
        self.signals
    }
}

#[workflow]
#[derive(Default)]
struct Sleeper;

#[workflow_methods]
impl Sleeper {
    #[run]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<String> {
        match ctx.timer(Duration::from_secs(3600)).await {
            TimerResult::Fired => Ok("fired".into()),
            TimerResult::Cancelled => Ok(format!(
                "cancelled: {}",
                ctx.cancellation_token().reason().unwrap_or_default()
            )),
        }
    }
}

#[workflow]
#[derive(Default)]
struct Sneaky;

#[workflow_methods]
impl Sneaky {
    #[run]
    async fn run(_ctx: &mut WorkflowContext<Self>) -> WorkflowResult<()> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(())
    }
}

#[workflow]
#[derive(Default)]
struct Panicky;

#[workflow_methods]
impl Panicky {
    #[run]
    async fn run(_ctx: &mut WorkflowContext<Self>) -> WorkflowResult<()> {
        panic!("boom")
    }
}

fn defs() -> WorkflowDefinitions {
    let mut d = WorkflowDefinitions::new();
    d.register_workflow::<Greeter>().unwrap();
    d.register_workflow::<Racer>().unwrap();
    d.register_workflow::<Sleeper>().unwrap();
    d.register_workflow::<Sneaky>().unwrap();
    d.register_workflow::<Panicky>().unwrap();
    d
}

fn payload<T: temporalio_common_wasm::data_converters::TemporalSerializable + 'static>(
    v: &T,
) -> Payload {
    let dc = DataConverter::default();
    let cd = SerializationContextData::Workflow(WorkflowSerializationContext::new());
    let ctx = SerializationContext::new(&cd, dc.payload_converter());
    dc.payload_converter().to_payload(&ctx, v).unwrap()
}

fn decode<T: temporalio_common_wasm::data_converters::TemporalDeserializable + 'static>(
    p: Payload,
) -> T {
    let dc = DataConverter::default();
    let cd = SerializationContextData::Workflow(WorkflowSerializationContext::new());
    let ctx = SerializationContext::new(&cd, dc.payload_converter());
    dc.payload_converter().from_payload(&ctx, p).unwrap()
}

fn job(v: Variant) -> WorkflowActivationJob {
    WorkflowActivationJob { variant: Some(v) }
}

fn start(workflow_type: &str, args: Vec<Payload>) -> (WorkflowRun, Vec<WorkflowCommand>) {
    let init = InitializeWorkflow {
        workflow_type: workflow_type.into(),
        workflow_id: "wf".into(),
        arguments: args,
        randomness_seed: 7,
        ..Default::default()
    };
    let factory = defs().factory(workflow_type).unwrap();
    let mut run = WorkflowRun::new(
        &factory,
        InstanceInput {
            namespace: "default".into(),
            task_queue: "q".into(),
            run_id: "wf".into(),
            init: init.clone(),
            data_converter: DataConverter::default(),
            host: WorkflowRun::placeholder_host(),
            interceptors: vec![],
        },
        true,
    )
    .unwrap();
    let cmds = run
        .activate(activation(vec![job(Variant::InitializeWorkflow(init))]))
        .unwrap();
    (run, cmds)
}

fn activation(jobs: Vec<WorkflowActivationJob>) -> WorkflowActivation {
    WorkflowActivation {
        run_id: "wf".into(),
        timestamp: Some(prost_wkt_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        jobs,
        ..Default::default()
    }
}

fn completed(v: &str) -> ActivityResolution {
    ActivityResolution {
        status: Some(activity_resolution::Status::Completed(Success {
            result: Some(payload(&v.to_string())),
        })),
    }
}

fn result_of(cmds: &[WorkflowCommand]) -> Option<String> {
    cmds.iter().find_map(|c| match &c.variant {
        Some(Cmd::CompleteWorkflowExecution(c)) => c.result.clone().map(decode::<String>),
        _ => None,
    })
}

#[test]
fn one_activity() {
    let (mut run, cmds) = start("Greeter", vec![payload(&"World".to_string())]);
    assert!(
        matches!(&cmds[..], [WorkflowCommand { variant: Some(Cmd::ScheduleActivity(a)), .. }]
        if a.seq == 1 && a.activity_type == "Acts::greet")
    );
    let cmds = run
        .activate(activation(vec![job(Variant::ResolveActivity(
            ResolveActivity {
                seq: 1,
                result: Some(completed("Hello, World!")),
                is_local: false,
            },
        ))]))
        .unwrap();
    assert_eq!(result_of(&cmds).as_deref(), Some("Hello, World!"));
}

#[test]
fn select_signals_and_queries() {
    let (mut run, cmds) = start("Racer", vec![]);
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert!(matches!(cmds[0].variant, Some(Cmd::StartTimer(_))));
    assert!(matches!(cmds[1].variant, Some(Cmd::ScheduleActivity(_))));
    // The activity wins; the timer is left (not cancelled by select).
    let cmds = run
        .activate(activation(vec![
            job(Variant::SignalWorkflow(SignalWorkflow {
                signal_name: "poke".into(),
                ..Default::default()
            })),
            job(Variant::ResolveActivity(ResolveActivity {
                seq: 1,
                result: Some(completed("act")),
                is_local: false,
            })),
        ]))
        .unwrap();
    assert!(result_of(&cmds).is_none(), "{cmds:?}");
    let cmds = run
        .activate(activation(vec![job(Variant::QueryWorkflow(
            QueryWorkflow {
                query_id: "q1".into(),
                query_type: "count".into(),
                ..Default::default()
            },
        ))]))
        .unwrap();
    match &cmds[..] {
        [
            WorkflowCommand {
                variant: Some(Cmd::RespondToQuery(q)),
                ..
            },
        ] => match &q.variant {
            Some(query_result::Variant::Succeeded(s)) => {
                assert_eq!(decode::<u32>(s.response.clone().unwrap()), 1)
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let cmds = run
        .activate(activation(vec![job(Variant::SignalWorkflow(
            SignalWorkflow {
                signal_name: "poke".into(),
                ..Default::default()
            },
        ))]))
        .unwrap();
    assert_eq!(result_of(&cmds).as_deref(), Some("act after 2 signals"));
}

#[test]
fn timer_fires_and_cancellation() {
    let (mut run, cmds) = start("Sleeper", vec![]);
    assert!(matches!(cmds[0].variant, Some(Cmd::StartTimer(ref t)) if t.seq == 1));
    let cmds = run
        .activate(activation(vec![job(Variant::FireTimer(FireTimer {
            seq: 1,
        }))]))
        .unwrap();
    assert_eq!(result_of(&cmds).as_deref(), Some("fired"));

    let (mut run, _) = start("Sleeper", vec![]);
    let cmds = run
        .activate(activation(vec![job(Variant::CancelWorkflow(
            CancelWorkflow {
                reason: "stop".into(),
            },
        ))]))
        .unwrap();
    assert!(
        matches!(cmds[0].variant, Some(Cmd::CancelTimer(ref t)) if t.seq == 1),
        "{cmds:?}"
    );
    assert_eq!(result_of(&cmds).as_deref(), Some("cancelled: stop"));
}

#[test]
fn foreign_wakes_and_panics_fail_the_task() {
    let init = InitializeWorkflow {
        workflow_type: "Sneaky".into(),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let factory = defs().factory("Sneaky").unwrap();
    let mut run = WorkflowRun::new(
        &factory,
        InstanceInput {
            namespace: "default".into(),
            task_queue: "q".into(),
            run_id: "wf".into(),
            init: init.clone(),
            data_converter: DataConverter::default(),
            host: WorkflowRun::placeholder_host(),
            interceptors: vec![],
        },
        true,
    )
    .unwrap();
    let _ = run.activate(activation(vec![job(Variant::InitializeWorkflow(init))]));
    rt.block_on(tokio::time::sleep(Duration::from_millis(20)));
    let err = run.activate(activation(vec![])).unwrap_err();
    assert!(err.nondeterminism, "{err}");
    assert!(err.to_string().contains("TMPRL1100"), "{err}");

    let init = InitializeWorkflow {
        workflow_type: "Panicky".into(),
        ..Default::default()
    };
    let factory = defs().factory("Panicky").unwrap();
    let mut run = WorkflowRun::new(
        &factory,
        InstanceInput {
            namespace: "default".into(),
            task_queue: "q".into(),
            run_id: "wf".into(),
            init: init.clone(),
            data_converter: DataConverter::default(),
            host: WorkflowRun::placeholder_host(),
            interceptors: vec![],
        },
        true,
    )
    .unwrap();
    let err = run
        .activate(activation(vec![job(Variant::InitializeWorkflow(init))]))
        .unwrap_err();
    assert!(err.to_string().contains("panicked: boom"), "{err}");
}

#[test]
fn replay_gives_identical_commands() {
    let (mut run, first) = start("Greeter", vec![payload(&"R".to_string())]);
    let resolve = activation(vec![job(Variant::ResolveActivity(ResolveActivity {
        seq: 1,
        result: Some(completed("Hello, R!")),
        is_local: false,
    }))]);
    let second = run.activate(resolve.clone()).unwrap();
    let (mut again, first2) = start("Greeter", vec![payload(&"R".to_string())]);
    assert_eq!(first, first2);
    let mut replayed = resolve;
    replayed.is_replaying = true;
    assert_eq!(again.activate(replayed).unwrap(), second);
}

#[test]
fn bad_input_fails_instantiation() {
    let init = InitializeWorkflow {
        workflow_type: "Greeter".into(),
        arguments: vec![payload(&42u32)],
        ..Default::default()
    };
    let factory = defs().factory("Greeter").unwrap();
    let err = WorkflowRun::new(
        &factory,
        InstanceInput {
            namespace: "default".into(),
            task_queue: "q".into(),
            run_id: "wf".into(),
            init,
            data_converter: DataConverter::default(),
            host: WorkflowRun::placeholder_host(),
            interceptors: vec![],
        },
        true,
    )
    .err()
    .unwrap();
    assert!(err.contains("Failed to create workflow"), "{err}");
}

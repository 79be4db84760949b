//! Schedules end to end: a schedule created through the client is fired by running workers
//! (of any task queue of the namespace) and its workflows run to completion.

extern crate temporal_compat as temporalio_sdk;

mod common;

use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use temporal_compat::activities::{ActivityContext, ActivityError};
use temporal_compat::{ActivityOptions, WorkerOptions, WorkflowContext, WorkflowResult};
use temporal_compat_client::schedules::{CreateScheduleOptions, ScheduleAction, ScheduleSpec};
use temporal_compat_client::{
    Client, ClientOptions, Connection, ConnectionOptions, WorkflowGetResultOptions,
};
use temporalio_macros::{activities, workflow, workflow_methods};
use temporalio_protos::temporal::api::enums::v1::WorkflowExecutionStatus;

struct Greetings;

#[activities]
impl Greetings {
    #[activity]
    async fn greet(_ctx: ActivityContext, name: String) -> Result<String, ActivityError> {
        Ok(format!("Hello, {name}!"))
    }
}

#[workflow]
#[derive(Default)]
struct Scheduled;

#[workflow_methods]
impl Scheduled {
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
struct Other;

#[workflow_methods]
impl Other {
    #[run]
    async fn run(_ctx: &mut WorkflowContext<Self>) -> WorkflowResult<()> {
        Ok(())
    }
}

async fn client(env: &common::Env) -> Client {
    let url = url::Url::from_str(&env.url).unwrap();
    let conn = Connection::connect(ConnectionOptions::new(url).build())
        .await
        .unwrap();
    Client::new(conn, ClientOptions::new(env.namespace.clone()).build()).unwrap()
}

fn every_second(queue: &str) -> CreateScheduleOptions {
    CreateScheduleOptions::builder()
        .action(ScheduleAction::start_workflow(
            Scheduled::run,
            "world".to_string(),
            queue,
            "scheduled",
        ))
        .spec(ScheduleSpec::from_interval(Duration::from_secs(1)))
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_fires_an_interval_schedule_and_runs_its_workflows() {
    let env = common::Env::new().await;
    let client = client(&env).await;
    let (task, stop) = env.worker(
        None,
        WorkerOptions::new("sched")
            .register_workflow::<Scheduled>()
            .unwrap()
            .register_activities(Greetings)
            .build(),
    );
    let handle = client
        .create_schedule("every-second", every_second("sched"))
        .await
        .expect("create");

    // Three completed actions, each one second after the previous.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let desc = loop {
        let desc = handle.describe(Default::default()).await.expect("describe");
        let done = desc
            .raw()
            .info
            .as_ref()
            .map(|i| {
                i.recent_actions
                    .iter()
                    .filter(|a| {
                        a.start_workflow_status == WorkflowExecutionStatus::Completed as i32
                    })
                    .count()
            })
            .unwrap_or(0);
        if done >= 3 {
            break desc;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "three scheduled runs should have completed: {desc:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let recent = desc.recent_actions();
    for pair in recent.windows(2) {
        let (a, b) = (
            pair[0].schedule_time.unwrap(),
            pair[1].schedule_time.unwrap(),
        );
        assert_eq!(b.duration_since(a).unwrap(), Duration::from_secs(1));
    }
    for action in recent.iter().take(3) {
        let nominal = action
            .schedule_time
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap();
        assert_eq!(nominal.subsec_millis(), 0);
        assert!(action.workflow_id.starts_with("scheduled-20"), "{action:?}");
        let run = env
            .db
            .status(&action.run_id)
            .await
            .unwrap()
            .expect("the run");
        // The scheduler sleeps until the fire time (not a poll): the run is created on time.
        let late = run.created_at_ms - i64::try_from(nominal.as_millis()).unwrap();
        assert!(
            (0..1500).contains(&late),
            "created {late} ms after its time"
        );
        let result: String = client
            .get_workflow_handle::<Scheduled>(&action.workflow_id)
            .get_result(WorkflowGetResultOptions::default())
            .await
            .expect("result");
        assert_eq!(result, "Hello, world!");
    }

    handle.delete(Default::default()).await.expect("delete");
    let count = env
        .db
        .list_workflows(&dbos_core::ListFilter::default())
        .await
        .unwrap()
        .len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = env
        .db
        .list_workflows(&dbos_core::ListFilter::default())
        .await
        .unwrap()
        .len();
    assert_eq!(count, after, "a deleted schedule fires no more");
    stop();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_of_another_task_queue_fires_the_schedule_too() {
    let env = common::Env::new().await;
    let client = client(&env).await;
    // This worker serves "other" only; nobody serves "sched".
    let (task, stop) = env.worker(
        None,
        WorkerOptions::new("other")
            .register_workflow::<Other>()
            .unwrap()
            .build(),
    );
    let handle = client
        .create_schedule("elsewhere", every_second("sched"))
        .await
        .expect("create");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let desc = handle.describe(Default::default()).await.expect("describe");
        if desc.action_count() >= 1 {
            // The run waits on its own task queue for a worker that serves it.
            let run = &desc.recent_actions()[0].run_id;
            let status = env.db.status(run).await.unwrap().expect("run");
            assert_eq!(status.queue_name.as_deref(), Some("sched"));
            assert_eq!(status.state, dbos_core::RunState::Enqueued);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the schedule should have fired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.delete(Default::default()).await.expect("delete");
    stop();
    task.await.unwrap();
}

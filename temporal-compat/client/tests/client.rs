//! The client against a real Postgres (`DBOSIFY_TEST_DATABASE_URL`), one fresh namespace per
//! test. The worker side is played by calling dbos-core directly with the protocol's encodings.

use std::collections::HashMap;
use std::time::Duration;

use dbos_core::{CompleteResult, RunState, SystemDatabase};
use temporal_compat_client::envconfig::{
    LoadClientConfigProfileOptions, load_from_config_with_env,
};
use temporal_compat_client::protocol::{
    self, InboxMessage, QueryAnswer, RunAttributes, TerminalOutcome, UpdateAdmission, UpdateOutcome,
};
use temporal_compat_client::{
    Client, ClientConnectError, ClientOptions, Connection, ConnectionOptions, MemoValues,
    NamespacedClient, QueryRejectCondition, RpcOptions, WorkflowCancelOptions,
    WorkflowDescribeOptions, WorkflowExecuteUpdateOptions, WorkflowExecutionStatus,
    WorkflowGetResultError, WorkflowGetResultOptions, WorkflowIdConflictPolicy,
    WorkflowIdReusePolicy, WorkflowInteractionError, WorkflowQueryError, WorkflowQueryOptions,
    WorkflowSignalOptions, WorkflowStartError, WorkflowStartOptions, WorkflowTerminateOptions,
    WorkflowUpdateError,
};
use temporalio_common_wasm::data_converters::{
    DataConverter, SerializationContextData, WorkflowSerializationContext,
};
use temporalio_common_wasm::error::IncomingError;
use temporalio_common_wasm::search_attributes::{SearchAttributeKey, SearchAttributes};
use temporalio_common_wasm::{
    HasWorkflowDefinition, QueryDefinition, SignalDefinition, UpdateDefinition, WorkflowDefinition,
};
use temporalio_protos::temporal::api::common::v1::{Payload, Payloads};
use temporalio_protos::temporal::api::failure::v1::{
    ApplicationFailureInfo, Failure, failure::FailureInfo,
};

// ---------- a workflow definition, as the macros would generate it ----------

struct Greet;
impl WorkflowDefinition for Greet {
    type Input = String;
    type Output = String;
    fn name(&self) -> &str {
        "Greet"
    }
}
impl HasWorkflowDefinition for Greet {
    type Run = Greet;
}

struct Poke;
impl SignalDefinition for Poke {
    type Workflow = Greet;
    type Input = u32;
    fn name(&self) -> &str {
        "poke"
    }
}

struct Count;
impl QueryDefinition for Count {
    type Workflow = Greet;
    type Input = ();
    type Output = u32;
    fn name(&self) -> &str {
        "count"
    }
}

struct SetCount;
impl UpdateDefinition for SetCount {
    type Workflow = Greet;
    type Input = u32;
    type Output = u32;
    fn name(&self) -> &str {
        "set_count"
    }
}

// ---------- helpers ----------

const TQ: &str = "test-queue";
const EXEC: &str = "test-executor";

fn database_url() -> String {
    std::env::var("DBOSIFY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

fn fresh_namespace() -> String {
    format!("t-{}", uuid::Uuid::new_v4().simple())
}

async fn client_in(namespace: &str) -> Client {
    let url = url::Url::parse(&database_url()).unwrap();
    // Spawned: the client's futures must be `Send` (users start workflows from spawned tasks).
    let conn = tokio::spawn(Connection::connect(
        ConnectionOptions::new(url).identity("tester").build(),
    ))
    .await
    .unwrap()
    .expect("connect");
    Client::new(conn, ClientOptions::new(namespace).build()).expect("client")
}

async fn setup() -> (Client, SystemDatabase) {
    let client = client_in(&fresh_namespace()).await;
    let db = client.system_database().await.expect("system database");
    (client, db)
}

fn ctx() -> SerializationContextData {
    SerializationContextData::Workflow(WorkflowSerializationContext::new())
}

async fn payload_of<T: serde::Serialize + 'static>(v: T) -> Payload {
    DataConverter::default()
        .to_payload(&ctx(), &v)
        .await
        .unwrap()
}

async fn start(client: &Client, id: &str) -> String {
    let h = client
        .start_workflow(
            Greet,
            "Temporal".to_string(),
            WorkflowStartOptions::new(TQ, id).build(),
        )
        .await
        .expect("start");
    h.run_id().expect("run id").to_string()
}

/// Plays the worker: claims the run and records an outcome.
async fn finish(db: &SystemDatabase, run: &str, outcome: &TerminalOutcome) {
    let claimed = db.claim(EXEC, &[TQ.to_string()], 100).await.expect("claim");
    assert!(
        claimed.iter().any(|s| s.workflow_id == run) || {
            let s = db.status(run).await.unwrap().unwrap();
            s.state == RunState::Pending
        },
        "run {run} was not claimable"
    );
    let r = db
        .complete(run, Some(EXEC), &outcome.to_dbos())
        .await
        .expect("complete");
    assert!(matches!(r, CompleteResult::Recorded), "{r:?}");
}

fn app_failure(message: &str, type_name: &str) -> Failure {
    Failure {
        message: message.into(),
        failure_info: Some(FailureInfo::ApplicationFailureInfo(
            ApplicationFailureInfo {
                r#type: type_name.into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

// ---------- tests ----------

#[tokio::test]
async fn start_enqueues_the_first_run_with_decodable_input_and_attributes() {
    let (client, db) = setup().await;
    const KW: SearchAttributeKey<String> = SearchAttributeKey::keyword("CustomKeyword");
    const INT: SearchAttributeKey<i64> = SearchAttributeKey::int("CustomInt");
    let mut memo = MemoValues::new();
    memo.insert("owner", "team-a".to_string());
    let opts = WorkflowStartOptions::new(TQ, "wf-start")
        .search_attributes(SearchAttributes::new([
            KW.value_set("v1".into()),
            INT.value_set(7),
        ]))
        .memo(memo)
        .static_summary("summary".to_string())
        .task_timeout(Duration::from_secs(30))
        .build();
    let handle = client
        .start_workflow(Greet, "Temporal".to_string(), opts)
        .await
        .expect("start");
    assert_eq!(handle.run_id(), Some("wf-start"));
    assert_eq!(
        handle.info().first_execution_run_id.as_deref(),
        Some("wf-start")
    );

    let row = db.status("wf-start").await.unwrap().expect("row exists");
    assert_eq!(row.state, RunState::Enqueued);
    assert_eq!(row.queue_name.as_deref(), Some(TQ));
    assert_eq!(row.name, "Greet");
    assert_eq!(row.serialization.as_deref(), Some(protocol::SERIALIZATION));
    let inputs = protocol::decode_payloads("inputs", row.inputs.as_deref().unwrap()).unwrap();
    let input: String = DataConverter::default()
        .from_payloads(&ctx(), inputs)
        .await
        .unwrap();
    assert_eq!(input, "Temporal");

    let attrs = RunAttributes::of_run(&row).unwrap();
    assert_eq!(attrs.workflow_id, "wf-start");
    assert_eq!(attrs.workflow_type, "Greet");
    assert_eq!(attrs.task_queue, TQ);
    assert_eq!(attrs.identity, "tester");
    assert_eq!(attrs.task_timeout_ms, Some(30_000));
    assert_eq!(attrs.sav["CustomKeyword"], serde_json::json!("v1"));
    assert_eq!(attrs.sav["CustomInt"], serde_json::json!(7));
    let sa = SearchAttributes::from_proto(
        &temporalio_protos::temporal::api::common::v1::SearchAttributes {
            indexed_fields: attrs.search_attributes().unwrap(),
        },
    );
    assert_eq!(sa.get(&KW).as_deref(), Some("v1"));
    assert_eq!(sa.get(&INT), Some(7));

    // describe sees the same things.
    let d = handle
        .describe(WorkflowDescribeOptions::default())
        .await
        .unwrap();
    assert_eq!(d.status(), WorkflowExecutionStatus::Running);
    assert_eq!(d.id(), "wf-start");
    assert_eq!(d.run_id(), "wf-start");
    assert_eq!(d.workflow_type(), "Greet");
    assert_eq!(d.task_queue(), TQ);
    assert_eq!(d.static_summary(), Some("summary"));
    assert_eq!(
        d.memo().get::<String>("owner").unwrap().as_deref(),
        Some("team-a")
    );
    assert_eq!(d.search_attributes().get(&INT), Some(7));
    assert!(d.close_time().is_none());
}

#[tokio::test]
async fn start_conflicts_and_reuse_policies() {
    let (client, db) = setup().await;
    let run0 = start(&client, "wf-conflict").await;
    assert_eq!(run0, "wf-conflict");

    // Running: default policy fails with AlreadyStarted naming the run.
    let err = client
        .start_workflow(
            Greet,
            "x".into(),
            WorkflowStartOptions::new(TQ, "wf-conflict").build(),
        )
        .await
        .unwrap_err();
    match err {
        WorkflowStartError::AlreadyStarted { run_id, source } => {
            assert_eq!(run_id.as_deref(), Some("wf-conflict"));
            assert_eq!(source.code(), tonic::Code::AlreadyExists);
        }
        e => panic!("expected AlreadyStarted, got {e:?}"),
    }
    // UseExisting returns the running run.
    let h = client
        .start_workflow(
            Greet,
            "x".into(),
            WorkflowStartOptions::new(TQ, "wf-conflict")
                .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(h.run_id(), Some("wf-conflict"));

    // Closed (completed): the default reuse policy starts run 1.
    finish(
        &db,
        &run0,
        &TerminalOutcome::Completed {
            result: vec![payload_of("done").await],
        },
    )
    .await;
    for policy in [
        WorkflowIdReusePolicy::RejectDuplicate,
        WorkflowIdReusePolicy::AllowDuplicateFailedOnly,
    ] {
        let err = client
            .start_workflow(
                Greet,
                "x".into(),
                WorkflowStartOptions::new(TQ, "wf-conflict")
                    .id_reuse_policy(policy)
                    .build(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, WorkflowStartError::AlreadyStarted { ref run_id, .. } if run_id.as_deref() == Some("wf-conflict")),
            "{policy:?}: {err:?}"
        );
    }
    let run1 = start(&client, "wf-conflict").await;
    assert_eq!(run1, "wf-conflict--r1");
    let row = db.status(&run1).await.unwrap().unwrap();
    assert_eq!(
        RunAttributes::of_run(&row)
            .unwrap()
            .first_execution_run_id
            .as_deref(),
        Some("wf-conflict--r1")
    );

    // TerminateExisting terminates run 1 and starts run 2.
    let h = client
        .start_workflow(
            Greet,
            "x".into(),
            WorkflowStartOptions::new(TQ, "wf-conflict")
                .id_conflict_policy(WorkflowIdConflictPolicy::TerminateExisting)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(h.run_id(), Some("wf-conflict--r2"));
    let r1 = db.status(&run1).await.unwrap().unwrap();
    assert_eq!(r1.state, RunState::Cancelled);
    assert_eq!(
        protocol::execution_status(&r1).unwrap(),
        temporalio_protos::temporal::api::enums::v1::WorkflowExecutionStatus::Terminated
    );

    // After a failure, AllowDuplicateFailedOnly allows reuse.
    finish(
        &db,
        "wf-conflict--r2",
        &TerminalOutcome::Failed {
            failure: app_failure("boom", "E"),
            next_run_id: None,
        },
    )
    .await;
    let h = client
        .start_workflow(
            Greet,
            "x".into(),
            WorkflowStartOptions::new(TQ, "wf-conflict")
                .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicateFailedOnly)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(h.run_id(), Some("wf-conflict--r3"));
}

#[tokio::test]
async fn concurrent_starts_create_exactly_one_run() {
    let (client, _db) = setup().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.start_workflow(
                Greet,
                "x".into(),
                WorkflowStartOptions::new(TQ, "wf-race").build(),
            )
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(h) => {
                assert_eq!(h.run_id(), Some("wf-race"));
                ok += 1;
            }
            Err(WorkflowStartError::AlreadyStarted { run_id, .. }) => {
                assert_eq!(run_id.as_deref(), Some("wf-race"))
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn start_refuses_bad_ids_and_unsupported_options() {
    let (client, _db) = setup().await;
    let err = client
        .start_workflow(
            Greet,
            "x".into(),
            WorkflowStartOptions::new(TQ, "a--r1").build(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkflowStartError::Rpc(s) if s.code() == tonic::Code::InvalidArgument && s.message().contains("--r")),
        "{err:?}"
    );
    // An invalid cron schedule is refused before anything is created.
    for bad in [
        "* * * *",
        "0 * * * * *",
        "CRON_TZ=Europe/Paris 0 9 * * *",
        "@every soon",
    ] {
        let err = client
            .start_workflow(
                Greet,
                "x".into(),
                WorkflowStartOptions::new(TQ, "cron")
                    .cron_schedule(bad.to_string())
                    .build(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WorkflowStartError::Rpc(s) if s.code() == tonic::Code::InvalidArgument && s.message().contains("cron_schedule")),
            "{bad}: {err:?}"
        );
    }
    let db = client.system_database().await.expect("db");
    assert!(db.status("cron").await.expect("status").is_none());
    // Workflow-level timeouts, retry policies and cron schedules are enforced now: accepted and
    // recorded in the run's attributes.
    let handle = client
        .start_workflow(
            Greet,
            "x".into(),
            WorkflowStartOptions::new(TQ, "policies")
                .execution_timeout(Duration::from_secs(50))
                .run_timeout(Duration::from_secs(5))
                .retry_policy(temporalio_common_wasm::RetryPolicy::default())
                .cron_schedule("@every 30s".to_string())
                .build(),
        )
        .await
        .expect("accepted");
    let run = db
        .status(handle.run_id().expect("run id"))
        .await
        .expect("status")
        .expect("run");
    assert_eq!(
        run.state,
        dbos_core::RunState::Delayed,
        "a cron run waits for its time"
    );
    let attrs = RunAttributes::of_run(&run).expect("attributes");
    assert_eq!(attrs.run_timeout_ms, Some(5_000));
    assert_eq!(attrs.execution_timeout_ms, Some(50_000));
    let start = run.delay_until_epoch_ms.expect("delay");
    // The deadline and the delay are computed from two clock readings a moment apart.
    let deadline = attrs.execution_deadline_ms.expect("execution deadline");
    assert!(
        (deadline - (start + 50_000)).abs() < 1_000,
        "deadline {deadline} vs first cron time {start} + 50 s"
    );
    assert!(attrs.retry_policy.is_some());
    assert_eq!(attrs.cron_schedule.as_deref(), Some("@every 30s"));
}

#[tokio::test]
async fn get_result_for_each_terminal_state() {
    let (client, db) = setup().await;

    // COMPLETED, with get_result already waiting when the run completes.
    let run = start(&client, "wf-ok").await;
    let h = client.get_workflow_handle::<Greet>("wf-ok");
    let waiter =
        tokio::spawn(async move { h.get_result(WorkflowGetResultOptions::default()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    finish(
        &db,
        &run,
        &TerminalOutcome::Completed {
            result: vec![payload_of("Hello, Temporal!").await],
        },
    )
    .await;
    let result = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("get_result woke up")
        .unwrap()
        .unwrap();
    assert_eq!(result, "Hello, Temporal!");

    // FAILED.
    let run = start(&client, "wf-fail").await;
    finish(
        &db,
        &run,
        &TerminalOutcome::Failed {
            failure: app_failure("boom", "MyError"),
            next_run_id: None,
        },
    )
    .await;
    let err = client
        .get_workflow_handle::<Greet>("wf-fail")
        .get_result(Default::default())
        .await
        .unwrap_err();
    match err {
        WorkflowGetResultError::Failed(e) => {
            assert_eq!(e.failure().message, "boom");
            match *e {
                IncomingError::Application(a) => assert_eq!(a.type_name(), Some("MyError")),
                other => panic!("expected an application failure, got {other:?}"),
            }
        }
        e => panic!("expected Failed, got {e:?}"),
    }

    // CANCELED with details.
    let run = start(&client, "wf-cancelled").await;
    finish(
        &db,
        &run,
        &TerminalOutcome::Canceled {
            details: vec![payload_of("bye").await],
        },
    )
    .await;
    match client
        .get_workflow_handle::<Greet>("wf-cancelled")
        .get_result(Default::default())
        .await
        .unwrap_err()
    {
        WorkflowGetResultError::Cancelled { details } => {
            assert_eq!(details.deserialize::<String>().unwrap(), "bye")
        }
        e => panic!("expected Cancelled, got {e:?}"),
    }

    // TIMED_OUT.
    let run = start(&client, "wf-timeout").await;
    finish(&db, &run, &TerminalOutcome::TimedOut { next_run_id: None }).await;
    let err = client
        .get_workflow_handle::<Greet>("wf-timeout")
        .get_result(Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, WorkflowGetResultError::TimedOut), "{err:?}");
    assert!(err.is_workflow_outcome());

    // Unknown workflow.
    let err = client
        .get_workflow_handle::<Greet>("nope")
        .get_result(Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, WorkflowGetResultError::NotFound(_)),
        "{err:?}"
    );

    // A wait bounded by the rpc timeout.
    start(&client, "wf-slow").await;
    let err = client
        .get_workflow_handle::<Greet>("wf-slow")
        .get_result(
            WorkflowGetResultOptions::builder()
                .rpc_options(
                    RpcOptions::builder()
                        .timeout(Duration::from_millis(300))
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkflowGetResultError::Rpc(s) if s.code() == tonic::Code::DeadlineExceeded),
        "{err:?}"
    );
}

#[tokio::test]
async fn terminate_keeps_reason_and_details() {
    let (client, db) = setup().await;
    let run = start(&client, "wf-term").await;
    let h = client.get_workflow_handle::<Greet>("wf-term");
    h.terminate(
        WorkflowTerminateOptions::builder()
            .reason("enough")
            .details(Payloads {
                payloads: vec![payload_of(42u32).await],
            })
            .build(),
    )
    .await
    .unwrap();
    let row = db.status(&run).await.unwrap().unwrap();
    assert_eq!(row.state, RunState::Cancelled);
    match TerminalOutcome::from_status(&row).unwrap() {
        Some(TerminalOutcome::Terminated {
            reason, identity, ..
        }) => {
            assert_eq!(reason, "enough");
            assert_eq!(identity.as_deref(), Some("tester"));
        }
        o => panic!("{o:?}"),
    }
    match h.get_result(Default::default()).await.unwrap_err() {
        WorkflowGetResultError::Terminated { details } => {
            assert_eq!(details.deserialize::<u32>().unwrap(), 42)
        }
        e => panic!("expected Terminated, got {e:?}"),
    }
    let d = h.describe(Default::default()).await.unwrap();
    assert_eq!(d.status(), WorkflowExecutionStatus::Terminated);
    assert!(d.close_time().is_some());
    // A closed workflow cannot be terminated, signalled or cancelled again.
    let err = h.terminate(Default::default()).await.unwrap_err();
    assert!(
        matches!(err, WorkflowInteractionError::NotFound(_)),
        "{err:?}"
    );
    let err = h.signal(Poke, 1, Default::default()).await.unwrap_err();
    assert!(
        matches!(err, WorkflowInteractionError::NotFound(_)),
        "{err:?}"
    );
    let err = h.cancel(Default::default()).await.unwrap_err();
    assert!(
        matches!(err, WorkflowInteractionError::NotFound(_)),
        "{err:?}"
    );
}

/// The worker side of continue-as-new: enqueue the next run first, then close this one.
async fn continue_as_new(db: &SystemDatabase, run: &str, input: &str) -> String {
    let row = db.status(run).await.unwrap().unwrap();
    let (wid, n) = protocol::parse_run_id(run);
    let next = protocol::run_id(wid, n + 1);
    let mut attrs = RunAttributes::of_run(&row).unwrap();
    attrs.continued_from_run_id = Some(run.to_string());
    let req = protocol::new_run_request(&next, &attrs, &[payload_of(input.to_string()).await]);
    db.enqueue(req).await.unwrap();
    finish(
        db,
        run,
        &TerminalOutcome::ContinuedAsNew {
            next_run_id: next.clone(),
        },
    )
    .await;
    next
}

#[tokio::test]
async fn get_result_follows_continue_as_new_and_retry_chains() {
    let (client, db) = setup().await;
    let run0 = start(&client, "wf-can").await;
    let handle = client.get_workflow_handle::<Greet>("wf-can");
    let from_start = client
        .start_workflow(
            Greet,
            "x".into(),
            WorkflowStartOptions::new(TQ, "wf-can")
                .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(from_start.run_id(), Some(run0.as_str()));

    let run1 = continue_as_new(&db, &run0, "1").await;
    let run2 = continue_as_new(&db, &run1, "2").await;
    assert_eq!(run2, "wf-can--r2");
    // The chain is one execution: a new start still conflicts with the open run 2.
    let err = client
        .start_workflow(
            Greet,
            "x".into(),
            WorkflowStartOptions::new(TQ, "wf-can").build(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkflowStartError::AlreadyStarted { run_id, .. } if run_id.as_deref() == Some("wf-can--r2")),
        "{err:?}"
    );
    // Run 2 fails and is retried as run 3, which completes.
    let row2 = db.status(&run2).await.unwrap().unwrap();
    let mut attrs = RunAttributes::of_run(&row2).unwrap();
    attrs.attempt = 2;
    db.enqueue(protocol::new_run_request("wf-can--r3", &attrs, &[]))
        .await
        .unwrap();
    finish(
        &db,
        &run2,
        &TerminalOutcome::Failed {
            failure: app_failure("transient", "E"),
            next_run_id: Some("wf-can--r3".into()),
        },
    )
    .await;
    finish(
        &db,
        "wf-can--r3",
        &TerminalOutcome::Completed {
            result: vec![payload_of("final").await],
        },
    )
    .await;

    assert_eq!(
        from_start.get_result(Default::default()).await.unwrap(),
        "final"
    );
    assert_eq!(
        handle.get_result(Default::default()).await.unwrap(),
        "final"
    );
    let no_follow = WorkflowGetResultOptions::builder()
        .follow_runs(false)
        .build();
    let err = from_start.get_result(no_follow.clone()).await.unwrap_err();
    assert!(
        matches!(err, WorkflowGetResultError::ContinuedAsNew),
        "{err:?}"
    );
    // Without following, the failed run 2 reports its failure.
    let err = client
        .start_workflow(
            Greet,
            "x".into(),
            WorkflowStartOptions::new(TQ, "wf-can")
                .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
                .build(),
        )
        .await
        .map(|_| ());
    assert!(err.is_ok(), "closed chain: a new run is started");
    let describe_r2 = temporal_compat_client::WorkflowHandle::<Client, Greet>::new(
        client.clone(),
        temporal_compat_client::WorkflowExecutionInfo::builder()
            .namespace(client.namespace())
            .workflow_id("wf-can")
            .run_id("wf-can--r2")
            .build(),
    );
    let err = describe_r2.get_result(no_follow).await.unwrap_err();
    assert!(matches!(err, WorkflowGetResultError::Failed(_)), "{err:?}");
    assert_eq!(
        describe_r2
            .describe(Default::default())
            .await
            .unwrap()
            .status(),
        WorkflowExecutionStatus::Failed
    );
}

#[tokio::test]
async fn signals_and_cancels_reach_the_inbox_in_order() {
    let (client, db) = setup().await;
    let run = start(&client, "wf-sig").await;
    let h = client.get_workflow_handle::<Greet>("wf-sig");
    for i in 1..=3u32 {
        h.signal(Poke, i, WorkflowSignalOptions::default())
            .await
            .unwrap();
    }
    // The same request id twice is delivered once.
    for _ in 0..2 {
        h.signal(
            Poke,
            99,
            WorkflowSignalOptions::builder()
                .request_id("once".to_string())
                .build(),
        )
        .await
        .unwrap();
    }
    h.cancel(
        WorkflowCancelOptions::builder()
            .reason("stop please")
            .build(),
    )
    .await
    .unwrap();

    let msgs = db
        .peek_messages(&run, Some(protocol::INBOX_TOPIC), 100)
        .await
        .unwrap();
    assert_eq!(msgs.len(), 5, "{msgs:?}");
    let mut seen = Vec::new();
    for m in &msgs[..4] {
        match InboxMessage::decode(&m.body).unwrap() {
            InboxMessage::Signal(s) => {
                assert_eq!(s.name, "poke");
                assert_eq!(s.identity, "tester");
                let v: u32 = DataConverter::default()
                    .from_payloads(&ctx(), s.payloads)
                    .await
                    .unwrap();
                seen.push(v);
            }
            other => panic!("expected a signal, got {other:?}"),
        }
    }
    assert_eq!(seen, vec![1, 2, 3, 99]);
    match InboxMessage::decode(&msgs[4].body).unwrap() {
        InboxMessage::Cancel(c) => assert_eq!(c.reason, "stop please"),
        other => panic!("expected a cancel, got {other:?}"),
    }
    // A signal to an unknown workflow is NotFound.
    let err = client
        .get_workflow_handle::<Greet>("nobody")
        .signal(Poke, 1, Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, WorkflowInteractionError::NotFound(_)),
        "{err:?}"
    );
}

/// Plays a worker answering one update on `run`.
async fn answer_update(db: SystemDatabase, run: String, accept: bool) {
    let msg = loop {
        assert!(
            db.wait_for_message(
                &run,
                Some(protocol::INBOX_TOPIC),
                Some(Duration::from_secs(10))
            )
            .await
            .unwrap()
        );
        let msgs = db
            .peek_messages(&run, Some(protocol::INBOX_TOPIC), 10)
            .await
            .unwrap();
        if let Some(m) = msgs.into_iter().next() {
            break m;
        }
    };
    let InboxMessage::Update(u) = InboxMessage::decode(&msg.body).unwrap() else {
        panic!("expected an update")
    };
    let input: u32 = DataConverter::default()
        .from_payloads(&ctx(), u.payloads)
        .await
        .unwrap();
    if accept {
        db.set_event(
            &run,
            &protocol::update_accepted_key(&u.update_id),
            &UpdateAdmission::Accepted.to_text(),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let out = UpdateOutcome::Success(vec![payload_of(input * 2).await]);
        db.set_event(
            &run,
            &protocol::update_completed_key(&u.update_id),
            &out.to_text(),
        )
        .await
        .unwrap();
    } else {
        let failure = app_failure("rejected: too big", "Validation");
        db.set_event(
            &run,
            &protocol::update_accepted_key(&u.update_id),
            &UpdateAdmission::Rejected {
                failure: failure.clone(),
            }
            .to_text(),
        )
        .await
        .unwrap();
        db.set_event(
            &run,
            &protocol::update_completed_key(&u.update_id),
            &UpdateOutcome::Failure(failure).to_text(),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn updates_round_trip_through_inbox_and_events() {
    let (client, db) = setup().await;
    let run = start(&client, "wf-upd").await;
    let h = client.get_workflow_handle::<Greet>("wf-upd");

    let worker = tokio::spawn(answer_update(db.clone(), run.clone(), true));
    let out = h
        .execute_update(
            SetCount,
            21,
            WorkflowExecuteUpdateOptions::builder()
                .update_id("u1".to_string())
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(out, 42);
    worker.await.unwrap();
    // The same update id again returns the recorded outcome without a new request.
    let again = h
        .execute_update(
            SetCount,
            21,
            WorkflowExecuteUpdateOptions::builder()
                .update_id("u1".to_string())
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(again, 42);
    let inbox = db
        .peek_messages(&run, Some(protocol::INBOX_TOPIC), 10)
        .await
        .unwrap();
    assert_eq!(inbox.len(), 1, "one update request only: {inbox:?}");

    // Consume it so the next fake worker sees the next request first.
    let run2 = start(&client, "wf-upd2").await;
    let h2 = client.get_workflow_handle::<Greet>("wf-upd2");
    let worker = tokio::spawn(answer_update(db.clone(), run2, false));
    let err = h2
        .execute_update(SetCount, 1000, Default::default())
        .await
        .unwrap_err();
    match err {
        WorkflowUpdateError::Failed(f) => assert_eq!(f.message, "rejected: too big"),
        e => panic!("expected Failed, got {e:?}"),
    }
    worker.await.unwrap();

    // An update whose run closes before accepting it.
    let run3 = start(&client, "wf-upd3").await;
    let db3 = db.clone();
    let closer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        finish(&db3, &run3, &TerminalOutcome::Completed { result: vec![] }).await;
    });
    let err = client
        .get_workflow_handle::<Greet>("wf-upd3")
        .execute_update(SetCount, 1, Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, WorkflowUpdateError::NotFound(_)), "{err:?}");
    closer.await.unwrap();
}

#[tokio::test]
async fn queries_are_answered_through_the_query_topic() {
    let (client, db) = setup().await;
    let run = start(&client, "wf-q").await;
    let h = client.get_workflow_handle::<Greet>("wf-q");

    let (db2, run2) = (db.clone(), run.clone());
    let worker = tokio::spawn(async move {
        assert!(
            db2.wait_for_message(
                &run2,
                Some(protocol::QUERY_TOPIC),
                Some(Duration::from_secs(10))
            )
            .await
            .unwrap()
        );
        let m = db2
            .peek_messages(&run2, Some(protocol::QUERY_TOPIC), 1)
            .await
            .unwrap()
            .remove(0);
        let q = protocol::QueryRequest::decode(&m.body).unwrap();
        assert_eq!(q.name, "count");
        let answer = QueryAnswer::Answer(vec![payload_of(7u32).await]);
        db2.set_event(
            &run2,
            &protocol::query_answer_key(&q.query_id),
            &answer.to_text(),
        )
        .await
        .unwrap();
    });
    let n = h
        .query(Count, (), WorkflowQueryOptions::default())
        .await
        .unwrap();
    assert_eq!(n, 7);
    worker.await.unwrap();
    // Queries never enter the inbox.
    assert!(
        db.peek_messages(&run, Some(protocol::INBOX_TOPIC), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Nobody answers: bounded by the rpc timeout.
    let err = h
        .query(
            Count,
            (),
            WorkflowQueryOptions::builder()
                .rpc_options(
                    RpcOptions::builder()
                        .timeout(Duration::from_millis(300))
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkflowQueryError::Rpc(s) if s.code() == tonic::Code::DeadlineExceeded),
        "{err:?}"
    );

    // Closed: rejected by NotOpen, otherwise a clear error.
    finish(&db, &run, &TerminalOutcome::Completed { result: vec![] }).await;
    let err = h
        .query(
            Count,
            (),
            WorkflowQueryOptions::builder()
                .reject_condition(QueryRejectCondition::NotOpen)
                .build(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WorkflowQueryError::Rejected {
                status: Some(WorkflowExecutionStatus::Completed)
            }
        ),
        "{err:?}"
    );
    // Otherwise a worker of the task queue replays the run to answer; with none, the query
    // times out within its deadline, naming the task queue.
    let err = h
        .query(
            Count,
            (),
            WorkflowQueryOptions::builder()
                .rpc_options(
                    RpcOptions::builder()
                        .timeout(Duration::from_millis(300))
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkflowQueryError::Rpc(s) if s.code() == tonic::Code::DeadlineExceeded
            && s.message().contains(TQ)),
        "{err:?}"
    );
}

#[tokio::test]
async fn undecodable_stored_values_give_clear_errors() {
    let (client, db) = setup().await;
    // Output that is not the protocol's payload JSON.
    let run = start(&client, "wf-garbage").await;
    db.claim(EXEC, &[TQ.to_string()], 10).await.unwrap();
    db.complete(
        &run,
        Some(EXEC),
        &dbos_core::Outcome::Success("not json".into()),
    )
    .await
    .unwrap();
    let err = client
        .get_workflow_handle::<Greet>("wf-garbage")
        .get_result(Default::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, WorkflowGetResultError::PayloadConversion(_)),
        "{err:?}"
    );
    assert!(
        msg.contains("wf-garbage") && msg.contains("output"),
        "{msg}"
    );

    // A well-formed payload of the wrong type.
    let run = start(&client, "wf-wrong-type").await;
    finish(
        &db,
        &run,
        &TerminalOutcome::Completed {
            result: vec![payload_of(vec![1, 2, 3]).await],
        },
    )
    .await;
    let err = client
        .get_workflow_handle::<Greet>("wf-wrong-type")
        .get_result(Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, WorkflowGetResultError::PayloadConversion(_)),
        "{err:?}"
    );

    // An ERROR row that is not a DBOSify outcome.
    let run = start(&client, "wf-bad-error").await;
    db.claim(EXEC, &[TQ.to_string()], 10).await.unwrap();
    db.complete(&run, Some(EXEC), &dbos_core::Outcome::Error("oops".into()))
        .await
        .unwrap();
    let err = client
        .get_workflow_handle::<Greet>("wf-bad-error")
        .get_result(Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("wf-bad-error"), "{err}");
}

#[tokio::test]
async fn connect_refuses_non_postgres_targets_and_reports_unreachable_databases() {
    for target in ["http://localhost:7233", "https://my-ns.tmprl.cloud:7233"] {
        let err =
            Connection::connect(ConnectionOptions::new(url::Url::parse(target).unwrap()).build())
                .await
                .unwrap_err();
        assert!(matches!(err, ClientConnectError::InvalidUri(_)), "{err:?}");
        assert!(err.to_string().contains("TEMPORAL_ADDRESS"), "{err}");
    }
    let err = Connection::connect(
        ConnectionOptions::new(url::Url::parse("postgres://u:pw@127.0.0.1:1/db").unwrap())
            .connect_timeout(Duration::from_secs(5))
            .build(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ClientConnectError::DatabaseUnreachable { .. }),
        "{err:?}"
    );
    assert!(!err.to_string().contains("pw@"), "password leaked: {err}");
    let url = url::Url::parse(&database_url()).unwrap();
    let err = Connection::connect(ConnectionOptions::new(url).api_key("k".to_string()).build())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientConnectError::InvalidConfig(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn config_from_env_connects_and_shares_one_system_database() {
    let ns = fresh_namespace();
    let env: HashMap<String, String> = [
        (
            "TEMPORAL_CONFIG_FILE",
            "/nonexistent/temporal.toml".to_string(),
        ),
        (protocol_env(), database_url()),
        ("TEMPORAL_NAMESPACE", ns.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (conn_opts, client_opts) =
        load_from_config_with_env(LoadClientConfigProfileOptions::default(), Some(&env)).unwrap();
    assert_eq!(client_opts.namespace, ns);
    let conn = Connection::connect(conn_opts).await.unwrap();
    let a = Client::new(conn.clone(), client_opts.clone()).unwrap();
    let b = Client::new(conn, client_opts).unwrap();
    // Concurrent first uses connect once and share the database.
    let (da, db) = tokio::join!(a.system_database(), b.system_database());
    let (da, db) = (da.unwrap(), db.unwrap());
    assert_eq!(da.schema(), protocol::schema_for_namespace(&ns).unwrap());
    assert!(std::ptr::eq(da.pool(), db.pool()), "one pool per process");
    let run = start(&a, "wf-env").await;
    assert!(db.status(&run).await.unwrap().is_some());
    // A namespace that cannot be a schema is refused by Client::new.
    let conn = Connection::connect(
        ConnectionOptions::new(url::Url::parse(&database_url()).unwrap()).build(),
    )
    .await
    .unwrap();
    assert!(Client::new(conn, ClientOptions::new("bad namespace!").build()).is_err());
}

fn protocol_env() -> &'static str {
    // DBOS_SYSTEM_DATABASE_URL alone (no TEMPORAL_ADDRESS) is enough.
    temporal_compat_client::envconfig::DBOS_SYSTEM_DATABASE_URL
}

#[tokio::test]
async fn describe_after_completion() {
    let (client, db) = setup().await;
    let run = start(&client, "wf-desc").await;
    finish(
        &db,
        &run,
        &TerminalOutcome::Completed {
            result: vec![payload_of("x").await],
        },
    )
    .await;
    let d = client
        .get_workflow_handle::<Greet>("wf-desc")
        .describe(Default::default())
        .await
        .unwrap();
    assert_eq!(d.status(), WorkflowExecutionStatus::Completed);
    assert!(d.close_time().is_some() && d.start_time().is_some());
    assert!(d.close_time() >= d.start_time());
}

/// `latest_run` finds the newest run of chains of every length (dense run indexes), in one
/// statement for short chains and a few for long ones, and `None` for an unknown id.
#[tokio::test]
async fn latest_run_finds_the_newest_run_of_chains_of_any_length() {
    let (_client, db) = setup().await;
    assert!(
        protocol::latest_run(&db, "never-started")
            .await
            .unwrap()
            .is_none()
    );
    for len in [1u64, 2, 64, 65, 66, 129, 300] {
        let id = format!("chain-{len}");
        for i in 0..len {
            let run = protocol::run_id(&id, i);
            db.enqueue(dbos_core::EnqueueRequest::new(&run, "Greet", TQ, ""))
                .await
                .expect("enqueue");
        }
        let newest = protocol::latest_run(&db, &id)
            .await
            .unwrap()
            .expect("a run");
        assert_eq!(
            newest.workflow_id,
            protocol::run_id(&id, len - 1),
            "chain of {len}"
        );
    }
    // Another id sharing the prefix does not count.
    db.enqueue(dbos_core::EnqueueRequest::new("chain-1x", "Greet", TQ, ""))
        .await
        .expect("enqueue");
    let newest = protocol::latest_run(&db, "chain-1").await.unwrap().unwrap();
    assert_eq!(newest.workflow_id, "chain-1");
}

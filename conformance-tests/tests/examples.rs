//! Temporal's own example programs, unchanged, on our crates and Postgres.
//!
//! Each test builds the example (once per test binary; see `example_binaries`), creates a fresh
//! database, starts the example's worker with `TEMPORAL_ADDRESS=<database URL>`, runs its
//! starter, and checks what the example's README (or, where the README shows no output, its
//! starter and worker code) promises: the exact lines, the starter's exit status, and a worker
//! that is still running and never panicked.
//!
//! Run them with `scripts/test.sh` (the whole workspace), or alone after `scripts/pg.sh start`:
//! `DBOSIFY_TEST_DATABASE_URL=$(scripts/pg.sh url) cargo test -p conformance-tests --test examples`.
//! Logs of every worker and starter land in `target/conformance/logs/`.

use std::time::Duration;

use conformance_tests::{CompletedProcess, ExampleRun, ManagedProcess};

/// How long a starter may take (each example finishes in a few seconds on a Temporal server).
const STARTER_TIMEOUT: Duration = Duration::from_secs(90);

/// How long to wait for a line the worker prints.
const WORKER_LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// Prepares `example`, starts its worker and runs its starter with `args`.
fn run_example(
    example: &str,
    label: &str,
    starter_args: &[&str],
) -> (ExampleRun, ManagedProcess, CompletedProcess) {
    let run = ExampleRun::with_label(example, label)
        .unwrap_or_else(|e| panic!("preparing example {example}:\n{e}"));
    let worker = run
        .spawn_worker()
        .unwrap_or_else(|e| panic!("starting the {example} worker:\n{e}"));
    let starter = run
        .run_starter(starter_args, STARTER_TIMEOUT)
        .unwrap_or_else(|e| panic!("running the {example} starter:\n{e}"));
    (run, worker, starter)
}

/// Both processes' reports, for assertion messages.
fn report(worker: &ManagedProcess, starter: &CompletedProcess) -> String {
    format!("{}\n{}", starter.describe(), worker.describe())
}

/// The starter exited 0 on its own, without panicking.
fn assert_starter_succeeded(worker: &ManagedProcess, starter: &CompletedProcess) {
    assert!(
        starter.success() && !starter.panicked(),
        "the starter must exit 0\n{}",
        report(worker, starter)
    );
}

/// The worker is still serving and never panicked.
fn assert_worker_healthy(worker: &mut ManagedProcess, starter: &CompletedProcess) {
    let running = worker.is_running();
    let panic = worker.check_no_panic();
    assert!(
        running && panic.is_ok(),
        "the worker must keep running without panicking (running: {running})\n{}",
        report(worker, starter)
    );
}

/// Each of `expected` is a whole stdout line of the starter, in this order.
fn assert_stdout_lines_in_order(
    worker: &ManagedProcess,
    starter: &CompletedProcess,
    expected: &[&str],
) {
    let lines = starter.stdout_lines();
    let mut from = 0;
    for want in expected {
        match lines[from..].iter().position(|line| line == want) {
            Some(at) => from += at + 1,
            None => panic!(
                "the starter must print the line {want:?} (after the lines before it in {expected:?})\n{}",
                report(worker, starter)
            ),
        }
    }
}

/// The starter printed `Started workflow, run_id: Some("...")` (the run id is the server's).
fn assert_started_line(worker: &ManagedProcess, starter: &CompletedProcess) {
    assert!(
        starter
            .stdout_line_starting_with("Started workflow, run_id: Some(\"")
            .is_some(),
        "the starter must print the started workflow's run id\n{}",
        report(worker, starter)
    );
}

/// The worker printed `expected` as a whole line (waiting briefly: it may lag the starter).
fn assert_worker_line(worker: &mut ManagedProcess, starter: &CompletedProcess, expected: &str) {
    if let Err(e) = worker.wait_for_exact_line(expected, WORKER_LINE_TIMEOUT) {
        panic!(
            "the worker must print the line {expected:?}: {e}\n{}",
            starter.describe()
        );
    }
}

/// The starter took at least `min` (the workflow's durable timers really waited).
fn assert_took_at_least(worker: &ManagedProcess, starter: &CompletedProcess, min: Duration) {
    assert!(
        starter.elapsed >= min,
        "the starter finished in {:?}, but the workflow's timers alone take {min:?}\n{}",
        starter.elapsed,
        report(worker, starter)
    );
}

/// README: the starter prints `Workflow result: Hello, Temporal!`.
#[test]
fn hello_world() {
    let (_run, mut worker, starter) = run_example("hello_world", "hello_world", &[]);
    assert_starter_succeeded(&worker, &starter);
    assert_started_line(&worker, &starter);
    assert_stdout_lines_in_order(&worker, &starter, &["Workflow result: Hello, Temporal!"]);
    assert_worker_line(
        &mut worker,
        &starter,
        "Worker started on task queue: hello-world",
    );
    assert_worker_healthy(&mut worker, &starter);
}

/// README: the starter prints `Workflow result: race_winner=activity, timer_cancelled=true`.
/// The workflow first sleeps on a 1 s timer.
#[test]
fn timer_examples() {
    let (_run, mut worker, starter) = run_example("timer_examples", "timer_examples", &[]);
    assert_starter_succeeded(&worker, &starter);
    assert_started_line(&worker, &starter);
    assert_stdout_lines_in_order(
        &worker,
        &starter,
        &["Workflow result: race_winner=activity, timer_cancelled=true"],
    );
    assert_took_at_least(&worker, &starter, Duration::from_secs(1));
    assert_worker_line(
        &mut worker,
        &starter,
        "Worker started on task queue: timer-examples",
    );
    assert_worker_healthy(&mut worker, &starter);
}

/// README: the starter prints `Workflow result: Condition met on attempt 3`. Attempts 1 and 2
/// are each followed by a 1 s timer.
#[test]
fn polling() {
    let (_run, mut worker, starter) = run_example("polling", "polling", &[]);
    assert_starter_succeeded(&worker, &starter);
    assert_started_line(&worker, &starter);
    assert_stdout_lines_in_order(
        &worker,
        &starter,
        &["Workflow result: Condition met on attempt 3"],
    );
    assert_took_at_least(&worker, &starter, Duration::from_secs(2));
    assert_worker_line(
        &mut worker,
        &starter,
        "Worker started on task queue: polling",
    );
    assert_worker_healthy(&mut worker, &starter);
}

/// README: "By default, all bookings succeed." The starter prints the bookings with `{:?}` and
/// no compensation runs.
#[test]
fn saga() {
    let (_run, mut worker, starter) = run_example("saga", "saga", &[]);
    assert_starter_succeeded(&worker, &starter);
    assert_started_line(&worker, &starter);
    assert_stdout_lines_in_order(
        &worker,
        &starter,
        &[r#"Bookings: ["hotel-trip-123", "flight-trip-123", "car-trip-123"]"#],
    );
    assert!(
        !worker.stdout().contains("Cancelled"),
        "no compensation may run when every booking succeeds\n{}",
        report(&worker, &starter)
    );
    assert_worker_healthy(&mut worker, &starter);
}

/// README: `saga-starter -- fail-trip` triggers a failure "and see compensations run". The car
/// booking fails (non-retryable) for a trip id containing "fail"; the workflow compensates the
/// flight, then the hotel (reverse order; the worker prints each), and fails. The starter
/// catches the failure, prints it, and still exits 0.
#[test]
fn saga_fail_trip() {
    let (_run, mut worker, starter) = run_example("saga", "saga_fail_trip", &["fail-trip"]);
    assert_starter_succeeded(&worker, &starter);
    assert_started_line(&worker, &starter);
    assert!(
        starter
            .stdout_line_starting_with(
                "Workflow failed (compensations were run): Workflow failed: "
            )
            .is_some(),
        "the starter must report the workflow's failure (a failed outcome, not another error)\n{}",
        report(&worker, &starter)
    );
    assert!(
        starter.stdout_line_starting_with("Bookings:").is_none(),
        "the trip must not be booked\n{}",
        report(&worker, &starter)
    );
    assert_worker_line(
        &mut worker,
        &starter,
        "Cancelled hotel booking: hotel-fail-trip",
    );
    let out = worker.stdout();
    let flight = out.find("Cancelled flight booking: flight-fail-trip\n");
    let hotel = out.find("Cancelled hotel booking: hotel-fail-trip\n");
    assert!(
        matches!((flight, hotel), (Some(f), Some(h)) if f < h),
        "the flight must be compensated, then the hotel\n{}",
        report(&worker, &starter)
    );
    assert!(
        !out.contains("Cancelled car booking"),
        "the car was never booked, so it is not compensated\n{}",
        report(&worker, &starter)
    );
    assert_eq!(
        out.matches("Cancelled ").count(),
        2,
        "each compensation runs exactly once\n{}",
        report(&worker, &starter)
    );
    assert_worker_healthy(&mut worker, &starter);
}

/// README: "The starter should print both the remote and local activity results"; the starter
/// prints them as `Remote activity result: ...` and `Local activity result: ...`, and both run
/// the same greeting activity on "Temporal".
#[test]
fn local_activities() {
    let (_run, mut worker, starter) = run_example("local_activities", "local_activities", &[]);
    assert_starter_succeeded(&worker, &starter);
    assert_started_line(&worker, &starter);
    assert_stdout_lines_in_order(
        &worker,
        &starter,
        &[
            "Remote activity result: Hello, Temporal!",
            "Local activity result: Hello, Temporal!",
        ],
    );
    assert_worker_line(
        &mut worker,
        &starter,
        "Worker started on task queue: local-activities",
    );
    assert_worker_healthy(&mut worker, &starter);
}

/// README: the starter prints `Workflow result: Completed 10 steps`. The activity sleeps 100 ms
/// per step and heartbeats after each.
#[test]
fn activity_heartbeating() {
    let (_run, mut worker, starter) =
        run_example("activity_heartbeating", "activity_heartbeating", &[]);
    assert_starter_succeeded(&worker, &starter);
    assert_started_line(&worker, &starter);
    assert_stdout_lines_in_order(&worker, &starter, &["Workflow result: Completed 10 steps"]);
    assert_took_at_least(&worker, &starter, Duration::from_secs(1));
    assert_worker_line(
        &mut worker,
        &starter,
        "Worker started on task queue: activity-heartbeating",
    );
    assert_worker_healthy(&mut worker, &starter);
}

/// README: "Expected worker output includes logs for the matched `greet` activity input and
/// output, plus a generic log for the other activity type." The interceptor prints the typed
/// request and response with `{:?}`, and the other activity's type name. The starter prints both
/// activities' messages.
#[test]
fn activity_interceptor() {
    let (_run, mut worker, starter) =
        run_example("activity_interceptor", "activity_interceptor", &[]);
    assert_starter_succeeded(&worker, &starter);
    assert_started_line(&worker, &starter);
    assert_stdout_lines_in_order(
        &worker,
        &starter,
        &["Workflow result: Hello, Temporal! HELLO, TEMPORAL!"],
    );
    for line in [
        "Worker started on task queue: activity-interceptor",
        r#"greet input: GreetingRequest { name: "Temporal" }"#,
        r#"greet output: GreetingResponse { message: "Hello, Temporal!" }"#,
        "running activity: GreetingActivities::shout",
    ] {
        assert_worker_line(&mut worker, &starter, line);
    }
    let out = worker.stdout();
    assert!(
        !out.contains(" failed: "),
        "no activity may fail\n{}",
        report(&worker, &starter)
    );
    let input = out.find("greet input:");
    let output = out.find("greet output:");
    let shout = out.find("running activity: GreetingActivities::shout");
    assert!(
        matches!((input, output, shout), (Some(i), Some(o), Some(s)) if i < o && o < s),
        "the interceptor wraps greet (input, then output) before shout runs\n{}",
        report(&worker, &starter)
    );
    assert_worker_healthy(&mut worker, &starter);
}

/// README: "The starter signals, queries, and updates the workflow, then prints the final
/// result." The signal adds 5, the query then reads 5, the update sets 10 and returns the old 5,
/// and the workflow (waiting for the counter to reach 10) completes with 10.
#[test]
fn message_passing() {
    let (_run, mut worker, starter) = run_example("message_passing", "message_passing", &[]);
    assert_starter_succeeded(&worker, &starter);
    assert_started_line(&worker, &starter);
    assert_stdout_lines_in_order(
        &worker,
        &starter,
        &[
            "Sent signal: increment(5)",
            "Query result: counter = 5",
            "Update result: old counter = 5",
            "Workflow result: 10",
        ],
    );
    assert_worker_healthy(&mut worker, &starter);
}

/// README: the starter sets a deadline 1 hour out, then signals a new deadline 2 s from now;
/// "The workflow should complete shortly after the signal." The starter prints the new deadline,
/// reads it back with a query, and prints the result, which names the deadline that fired.
#[test]
fn updatable_timer() {
    let (_run, mut worker, starter) = run_example("updatable_timer", "updatable_timer", &[]);
    assert_starter_succeeded(&worker, &starter);
    assert_started_line(&worker, &starter);
    let field = |prefix: &str| -> u64 {
        starter
            .stdout_line_starting_with(prefix)
            .and_then(|line| line[prefix.len()..].trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "the starter must print {prefix:?} followed by a number\n{}",
                    report(&worker, &starter)
                )
            })
    };
    let initial = field("Initial deadline: ");
    let updated = field("Updated deadline to: ");
    assert!(
        initial > updated,
        "the initial deadline is an hour out, the update 2 s out\n{}",
        report(&worker, &starter)
    );
    assert_stdout_lines_in_order(
        &worker,
        &starter,
        &[
            &format!("Initial deadline: {initial}"),
            &format!("Updated deadline to: {updated}"),
            &format!("Current deadline: {updated}"),
            &format!("Workflow result: Timer fired at deadline {updated}"),
        ],
    );
    // It waited for the new deadline (2 s after the signal), not the hour.
    assert_took_at_least(&worker, &starter, Duration::from_millis(1500));
    assert_worker_healthy(&mut worker, &starter);
}

/// README: "The starter waits 2 seconds, then requests cancellation. The workflow should complete
/// with a message indicating cancellation and cleanup." The starter prints `Requesting
/// cancellation...`, cancels with `WorkflowCancelOptions::default()` (an empty reason, which the
/// workflow's `cancellation_token().reason()` reports as `None`), the cancelled activity makes the
/// workflow run its cleanup activity (`"cleanup done"`) on a detached token and return
/// `Cancelled (reason={reason}), {cleanup_result}`; the starter prints it with `{result}`.
#[test]
fn cancellation() {
    let (_run, mut worker, starter) = run_example("cancellation", "cancellation", &[]);
    assert_starter_succeeded(&worker, &starter);
    assert_started_line(&worker, &starter);
    assert_stdout_lines_in_order(
        &worker,
        &starter,
        &[
            "Requesting cancellation...",
            "Workflow result: Cancelled (reason=), cleanup done",
        ],
    );
    assert!(
        starter.elapsed >= Duration::from_secs(2),
        "the starter sleeps 2 s before it requests cancellation, yet finished in {:?}\n{}",
        starter.elapsed,
        report(&worker, &starter)
    );
    assert_worker_healthy(&mut worker, &starter);
}

/// README: the starter prints `Workflow result: ["Hello, Alice!", "Hello, Bob!", "Hello,
/// Charlie!"]`: the parent starts one `GreetingChild` per name, in order, and collects their
/// greetings.
#[test]
fn child_workflows() {
    let (_run, mut worker, starter) = run_example("child_workflows", "child_workflows", &[]);
    assert_starter_succeeded(&worker, &starter);
    assert_started_line(&worker, &starter);
    assert_stdout_lines_in_order(
        &worker,
        &starter,
        &[r#"Workflow result: ["Hello, Alice!", "Hello, Bob!", "Hello, Charlie!"]"#],
    );
    assert_worker_healthy(&mut worker, &starter);
}

/// README: the starter prints `Workflow result: Completed after 5 iterations`. The starter's
/// `get_result` follows the chain (`follow_runs` defaults to true); the workflow starts at
/// iteration 1 of 5 and each of the 5 runs sleeps on a 100 ms timer before continuing as new (or,
/// in the last, completing).
#[test]
fn continue_as_new() {
    let (_run, mut worker, starter) = run_example("continue_as_new", "continue_as_new", &[]);
    assert_starter_succeeded(&worker, &starter);
    assert_started_line(&worker, &starter);
    assert_stdout_lines_in_order(
        &worker,
        &starter,
        &["Workflow result: Completed after 5 iterations"],
    );
    assert_took_at_least(&worker, &starter, Duration::from_millis(500));
    assert_worker_line(
        &mut worker,
        &starter,
        "Worker started on task queue: continue-as-new",
    );
    assert_worker_healthy(&mut worker, &starter);
}

/// README: the starter prints `Workflow result: initial_keyword=initial-value, upserted
/// CustomIntField=42`: the workflow reads the `CustomKeywordField` the starter set at start time,
/// then upserts new values. (The README's prerequisite, registering the two custom search
/// attributes with the Temporal CLI, has no counterpart: there is no server to register them on.)
#[test]
fn search_attributes() {
    let (_run, mut worker, starter) = run_example("search_attributes", "search_attributes", &[]);
    assert_starter_succeeded(&worker, &starter);
    assert_started_line(&worker, &starter);
    assert_stdout_lines_in_order(
        &worker,
        &starter,
        &["Workflow result: initial_keyword=initial-value, upserted CustomIntField=42"],
    );
    assert_worker_line(
        &mut worker,
        &starter,
        "Worker started on task queue: search-attributes",
    );
    assert_worker_healthy(&mut worker, &starter);
}

/// The starter creates an every-10-seconds schedule that also fires at once, describes, lists,
/// triggers and deletes it; its code prints `Created schedule: demo-schedule`,
/// `Schedule is paused: false`, `Found schedule: ...`, `Triggered schedule`, `Deleted schedule`.
/// The worker (which fires due schedules) must also have run the scheduled workflow: a
/// completed run `scheduled-workflow-<nominal time>` with the activity's `Hello, world!`.
#[test]
fn schedules() {
    let (run, mut worker, starter) = run_example("schedules", "schedules", &[]);
    assert_starter_succeeded(&worker, &starter);
    assert_stdout_lines_in_order(
        &worker,
        &starter,
        &[
            "Created schedule: demo-schedule",
            "Schedule is paused: false",
        ],
    );
    assert!(
        starter
            .stdout_line_starting_with("Found schedule: ScheduleSummary")
            .is_some_and(|l| l.contains("demo-schedule")),
        "the starter must list the schedule\n{}",
        report(&worker, &starter)
    );
    assert_stdout_lines_in_order(
        &worker,
        &starter,
        &["Triggered schedule", "Deleted schedule"],
    );
    // The scheduled run: named after the action's workflow id and its nominal time (RFC 3339
    // seconds), completed with the activity's greeting.
    let sql = "SELECT workflow_uuid || ' ' || convert_from(decode(output::jsonb->0->>'data', 'base64'), 'UTF8')
                 FROM dbosify_default.workflow_status
                WHERE workflow_uuid ~ '^scheduled-workflow-[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$'
                  AND status = 'SUCCESS'
                ORDER BY workflow_uuid LIMIT 1";
    let deadline = std::time::Instant::now() + WORKER_LINE_TIMEOUT;
    let found = loop {
        let found = run
            .database()
            .query_scalar(sql)
            .unwrap_or_else(|e| panic!("querying the runs: {e}"));
        if found.is_some() || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let found = found.unwrap_or_else(|| {
        panic!(
            "a scheduled-workflow-<time> run must have completed\n{}",
            report(&worker, &starter)
        )
    });
    assert!(
        found.ends_with(" \"Hello, world!\""),
        "the scheduled run must return the activity's greeting: {found}\n{}",
        report(&worker, &starter)
    );
    // The schedule is gone.
    let left = run
        .database()
        .query_scalar("SELECT count(*)::text FROM dbosify_default.dbosify_schedules")
        .unwrap_or_else(|e| panic!("querying the schedules: {e}"));
    assert_eq!(left.as_deref(), Some("0"));
    assert_worker_healthy(&mut worker, &starter);
}

/// Kill and recover: the worker is SIGKILLed while the workflow runs (the starter is waiting for
/// the result) and a new worker process takes over. However far the first worker got, the
/// starter still gets `Workflow result: Completed 10 steps`.
#[test]
fn activity_heartbeating_survives_a_killed_worker() {
    let run = ExampleRun::with_label("activity_heartbeating", "activity_heartbeating_kill")
        .unwrap_or_else(|e| panic!("preparing example activity_heartbeating:\n{e}"));
    let mut worker = run
        .spawn_worker()
        .unwrap_or_else(|e| panic!("starting the worker:\n{e}"));
    worker
        .wait_for_exact_line(
            "Worker started on task queue: activity-heartbeating",
            WORKER_LINE_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let mut starter = run
        .spawn_starter(&[])
        .unwrap_or_else(|e| panic!("starting the starter:\n{e}"));
    starter
        .wait_for_line_containing("Started workflow, run_id:", STARTER_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", worker.describe()));
    // The activity heartbeats every 100 ms for 1 s: kill the worker in the middle of it.
    std::thread::sleep(Duration::from_millis(400));
    worker.kill().expect("worker killed");
    worker.restart().expect("worker restarted");

    let status = starter
        .wait_exit(STARTER_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", worker.describe()));
    let report = format!("{}\n{}", starter.describe(), worker.describe());
    assert!(status.success(), "the starter must exit 0\n{report}");
    assert!(
        starter
            .stdout()
            .lines()
            .any(|line| line == "Workflow result: Completed 10 steps"),
        "the restarted worker must finish the workflow\n{report}"
    );
    assert!(
        worker.is_running(),
        "the restarted worker keeps serving\n{report}"
    );
    worker.check_no_panic().unwrap_or_else(|e| panic!("{e}"));
}

/// README: the worker serves task queue `standalone-activities`; `execute` prints
/// `Activity result: Hello, Temporal!`; `start` prints the activity and run ids; `get-handle`
/// describes the latest run and prints its result; `list` and `count` show the activity runs of
/// the task queue (here the two runs the starters made, both completed).
#[test]
fn standalone_activities() {
    let run = ExampleRun::with_label("standalone_activities", "standalone_activities")
        .unwrap_or_else(|e| panic!("preparing example standalone_activities:\n{e}"));
    let mut worker = run
        .spawn_worker()
        .unwrap_or_else(|e| panic!("starting the standalone_activities worker:\n{e}"));
    let bin = |name: &str| {
        run.run_bin(name, &[], STARTER_TIMEOUT)
            .unwrap_or_else(|e| panic!("running {name}:\n{e}"))
    };
    let execute = bin("standalone-activities-execute");
    assert_starter_succeeded(&worker, &execute);
    assert_stdout_lines_in_order(&worker, &execute, &["Activity result: Hello, Temporal!"]);
    assert_worker_line(
        &mut worker,
        &execute,
        "Worker started on task queue: standalone-activities",
    );

    // The id is closed, and the default reuse policy allows a new run.
    let start = bin("standalone-activities-start");
    assert_starter_succeeded(&worker, &start);
    assert_stdout_lines_in_order(
        &worker,
        &start,
        &[
            r#"Started activity, id: standalone-activity-id run_id: Some("standalone-activity-id--r1")"#,
        ],
    );

    let get = bin("standalone-activities-get-handle");
    assert_starter_succeeded(&worker, &get);
    let lines = get.stdout_lines();
    assert!(
        lines
            .iter()
            .any(|l| *l == "Status: Completed" || *l == "Status: Running"),
        "get-handle prints the status\n{}",
        report(&worker, &get)
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Type: ") && l.contains("compose_greeting")),
        "get-handle prints the activity type\n{}",
        report(&worker, &get)
    );
    assert_stdout_lines_in_order(
        &worker,
        &get,
        &["Attempt: 1", "Activity result: Hello, Temporal!"],
    );

    let list = bin("standalone-activities-list");
    assert_starter_succeeded(&worker, &list);
    let listed: Vec<&str> = list
        .stdout_lines()
        .into_iter()
        .filter(|l| l.starts_with("standalone-activity-id "))
        .collect();
    assert_eq!(
        listed.len(),
        2,
        "list shows both runs\n{}",
        report(&worker, &list)
    );
    assert!(
        listed
            .iter()
            .all(|l| l.contains("compose_greeting") && l.ends_with(" Completed")),
        "both runs completed\n{}",
        report(&worker, &list)
    );

    let count = bin("standalone-activities-count");
    assert_starter_succeeded(&worker, &count);
    assert_stdout_lines_in_order(&worker, &count, &["Total: 2"]);
    assert_worker_healthy(&mut worker, &count);
}

/// The product's promise covers every example in the package, not just the ones run above:
/// all of them must compile, unchanged, against our crates, except the ones COMPATIBILITY.md
/// lists as not yet supported, which must keep failing until they are.
#[test]
fn every_upstream_example_compiles_against_our_crates() {
    let package = conformance_tests::upstream_package_dir()
        .unwrap_or_else(|e| panic!("fetching Temporal's examples: {e}"));
    let mut examples: Vec<String> = conformance_tests::example_targets(&package)
        .unwrap_or_else(|e| panic!("reading Temporal's example targets: {e}"))
        .into_iter()
        .map(|t| t.example)
        .collect();
    examples.sort();
    examples.dedup();
    let mut wrong = Vec::new();
    for example in &examples {
        let built =
            conformance_tests::example_binaries(conformance_tests::SdkFlavor::Compat, example);
        let expected_to_fail = NOT_YET_COMPILING.contains(&example.as_str());
        match (built, expected_to_fail) {
            (Ok(_), false) | (Err(_), true) => {}
            (Ok(_), true) => wrong.push(format!(
                "{example} now compiles: take it off NOT_YET_COMPILING and COMPATIBILITY.md"
            )),
            (Err(e), false) => wrong.push(format!("{example} does not compile:\n{e}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// Examples that use client APIs DBOSify does not have yet; COMPATIBILITY.md lists them as
/// "not yet". They must keep failing to build until they are implemented, so this list and
/// COMPATIBILITY.md stay true. (Empty: every example builds.)
const NOT_YET_COMPILING: &[&str] = &[];

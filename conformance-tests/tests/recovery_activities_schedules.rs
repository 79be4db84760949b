//! Kill-and-recover tests for what runs outside a client-started workflow: standalone activities
//! (`Client::start_activity`) and schedules. The worker (`recovery_worker`) is a separate
//! process, SIGKILLed and restarted (or outlived by a second worker); the test process is the
//! client. Exactly-once is checked through the effects table (one row per activity execution,
//! see `conformance_tests::recovery`) and the `workflow_status` rows.
//!
//! Run: `scripts/pg.sh start`, then
//! `DBOSIFY_TEST_DATABASE_URL=$(scripts/pg.sh url) cargo test -p conformance-tests --test recovery_activities_schedules`.
//! Logs of every process are under `target/conformance/logs/recovery/<database name>/`.

mod common;

use std::time::{Duration, Instant};

use common::{
    FINISH, MARKER, SCHEMA, Scenario, TAKEOVER, assert_in_flight_reran_once, assert_ran_once, lit,
    of, serial, wait_ready,
};
use conformance_tests::recovery::{
    Plan, RecoveryActivities, RecoveryWorkflow, Step, TASK_QUEUE, Work,
};
use temporalio_client::schedules::{
    CreateScheduleOptions, DeleteScheduleOptions, ScheduleAction, ScheduleOverlapPolicy,
    ScheduleSpec,
};
use temporalio_client::{
    ActivityDescribeOptions, ActivityExecutionInfoLike, ActivityExecutionStatus,
    ActivityStartOptions,
};

// ------------------------------------------------------------------------------------------
// 1. A standalone activity, its worker killed while it runs.
// ------------------------------------------------------------------------------------------

/// Starts standalone activity `id` (held at its gate), SIGKILLs the worker while it runs with a
/// client waiting on its result, restarts the worker (with `identity`, or a new `pid@host`
/// identity when `None`): the waiting client gets the re-execution's result, the activity ran
/// twice (the killed execution and one that finished) and its row completed once.
fn run_standalone_activity_kill(label: &str, id: &str, identity: Option<&str>, finish: Duration) {
    let s = Scenario::new(&format!("recovery standalone {label}"));
    let mut worker = s.worker("worker", identity);
    let handle =
        s.rt.block_on(
            s.client.start_activity(
                RecoveryActivities::work,
                Work::gated("solo", "solo"),
                ActivityStartOptions::with_start_to_close_timeout(
                    TASK_QUEUE,
                    id,
                    Duration::from_secs(300),
                )
                .build(),
            ),
        )
        .expect("activity started");
    worker
        .wait_for_line_containing(&format!("EFFECT {id} solo attempt=1 started"), MARKER)
        .expect("the activity started");
    // The client waits on the result across the kill.
    let waiting = s.rt.spawn(async move { handle.result().await });
    worker.kill().expect("killed");
    s.open_gate("solo");
    worker.restart().expect("restarted");
    wait_ready(&mut worker);

    let result = s.await_call("the activity's result", waiting, finish, id, &[&worker]);
    let effects = s.effects(id);
    assert_in_flight_reran_once(&effects, "solo");
    let solo = of(&effects, "solo");
    assert_eq!(result, format!("solo#{}", solo[1].attempt), "{effects:#?}");
    if identity.is_none() {
        assert_ne!(
            solo[0].worker, solo[1].worker,
            "the re-execution runs in the new process"
        );
    }
    // One activity row (no `--r` run), closed once as a success.
    let rows = s.runs_where(&format!(
        "workflow_uuid = {base} OR starts_with(workflow_uuid, {base} || '--r')",
        base = lit(&format!("__temporal_activity/{id}"))
    ));
    assert_eq!(rows.len(), 1, "one activity row: {rows:?}");
    assert_eq!(rows[0].status, "SUCCESS", "{rows:?}");
    let description =
        s.rt.block_on(
            s.client
                .get_activity_handle(RecoveryActivities::work, id, None)
                .describe(ActivityDescribeOptions::default()),
        )
        .expect("describe");
    assert_eq!(description.status(), ActivityExecutionStatus::Completed);
    worker.check_no_panic().expect("no panic");
}

#[test]
fn standalone_activity_killed_while_running_completes_once() {
    let _serial = serial();
    run_standalone_activity_kill("same identity", "solo-1", Some("solo-worker-1"), FINISH);
}

/// The restarted worker is a new executor (Temporal's default `pid@host` identity): it takes the
/// dead predecessor's activity row over (COMPATIBILITY.md, "dead worker detection").
#[test]
fn standalone_activity_killed_while_running_completes_once_on_a_new_identity() {
    let _serial = serial();
    run_standalone_activity_kill("new identity", "solo-2", None, TAKEOVER);
}

// ------------------------------------------------------------------------------------------
// 2. A schedule firing every second; one of two workers killed mid-way, then restarted.
// ------------------------------------------------------------------------------------------

/// The workflow id prefix of the scheduled runs (`sched-<nominal time>`).
const SCHEDULED: &str = "sched";

impl Scenario {
    /// The runs started by the schedule (workflow ids `sched-<nominal time>` and any later runs
    /// of them), oldest first.
    fn scheduled_runs(&self) -> Vec<common::RunRow> {
        self.runs_where(&format!("starts_with(workflow_uuid, '{SCHEDULED}-')"))
    }

    /// The nominal times of the scheduled runs, in epoch seconds, ascending (parsed by the
    /// database from the run ids).
    fn nominal_times(&self) -> Vec<f64> {
        let json = self
            .db
            .query_scalar(&format!(
                "SELECT coalesce(json_agg(t ORDER BY t), '[]')::text FROM (
                   SELECT extract(epoch FROM substr(workflow_uuid, {from})::timestamptz) AS t
                     FROM {SCHEMA}.workflow_status
                    WHERE starts_with(workflow_uuid, '{SCHEDULED}-')
                      AND strpos(workflow_uuid, '--r') = 0) n",
                from = SCHEDULED.len() + 2
            ))
            .expect("nominal times query")
            .expect("json");
        serde_json::from_str(&json).expect("nominal times decode")
    }
}

#[test]
fn schedule_fires_each_nominal_time_once_across_a_worker_kill() {
    let _serial = serial();
    let s = Scenario::new("recovery schedule kill");
    let mut a = s.worker("worker-a", Some("sched-worker-a"));
    let mut b = s.worker("worker-b", Some("sched-worker-b"));
    // Each run holds at `a` until the gate opens: runs pile up on both workers (AllowAll), so
    // the killed worker holds runs in flight.
    let plan = Plan {
        steps: vec![
            Step::Work(Work::gated("a", "a")),
            Step::Work(Work::quick("b")),
        ],
    };
    let schedule =
        s.rt.block_on(
            s.client.create_schedule(
                "every-second",
                CreateScheduleOptions::builder()
                    .action(ScheduleAction::start_workflow(
                        RecoveryWorkflow::run,
                        plan,
                        TASK_QUEUE,
                        SCHEDULED,
                    ))
                    .spec(ScheduleSpec::from_interval(Duration::from_secs(1)))
                    .overlap_policy(ScheduleOverlapPolicy::AllowAll)
                    .build(),
            ),
        )
        .expect("schedule created");
    // Four runs held at `a`.
    let started = s.wait_for(
        "four scheduled runs to start `a`",
        MARKER,
        &[&a, &b],
        || {
            let started = s.effects_where("activity = 'a'");
            (started.len() >= 4).then_some(started)
        },
    );
    // The victim is the worker holding more runs (at least two in flight at the kill).
    let on_a = started
        .iter()
        .filter(|e| e.worker == "sched-worker-a")
        .count();
    let (victim, survivor, victim_name) = if on_a * 2 >= started.len() {
        (&mut a, &mut b, "sched-worker-a")
    } else {
        (&mut b, &mut a, "sched-worker-b")
    };
    eprintln!(
        "schedule: worker-a holds {on_a} of {} runs; killing {victim_name}",
        started.len()
    );
    let fired_at_kill = s.scheduled_runs().len();
    victim.kill().expect("victim killed");
    let killed_at = Instant::now();
    // The schedule keeps firing on the survivor while the victim is down.
    s.wait_for(
        "two more firings with the victim down",
        MARKER,
        &[&*victim, &*survivor],
        || (s.scheduled_runs().len() >= fired_at_kill + 2).then_some(()),
    );
    s.open_gate("a");
    victim.restart().expect("victim restarted");
    wait_ready(victim);
    let fired_at_restart = s.scheduled_runs().len();
    s.wait_for(
        "two more firings after the restart",
        MARKER,
        &[&*victim, &*survivor],
        || (s.scheduled_runs().len() >= fired_at_restart + 2).then_some(()),
    );
    s.rt.block_on(schedule.delete(DeleteScheduleOptions::default()))
        .expect("schedule deleted");
    let runs = s.wait_for(
        "every scheduled run to close",
        FINISH,
        &[&*victim, &*survivor],
        || {
            let runs = s.scheduled_runs();
            runs.iter()
                .all(|r| !matches!(r.status.as_str(), "PENDING" | "ENQUEUED"))
                .then_some(runs)
        },
    );
    eprintln!(
        "schedule: {} runs, all closed {:?} after the kill",
        runs.len(),
        killed_at.elapsed()
    );

    // Every nominal time started one run, and no nominal time was lost across the kill.
    assert!(
        runs.iter().all(|r| !r.run_id.contains("--r")),
        "a scheduled run was started again: {runs:?}"
    );
    let times = s.nominal_times();
    assert_eq!(times.len(), runs.len(), "{runs:?}");
    for pair in times.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1.0,
            "consecutive nominal times are one second apart (none skipped, none twice): \
             {times:?}"
        );
    }
    let killed_runs: Vec<String> = s
        .effects_where(&format!(
            "activity = 'a' AND worker = {} AND outcome IS NULL",
            lit(victim_name)
        ))
        .into_iter()
        .map(|e| e.workflow_id)
        .collect();
    assert!(
        killed_runs.len() * 2 >= started.len(),
        "the victim's runs were in flight at the kill: {killed_runs:?}"
    );
    for run in &runs {
        let id = &run.run_id;
        assert_eq!(run.status, "SUCCESS", "{id}: {runs:?}");
        let effects = s.effects(id);
        let a_runs = of(&effects, "a");
        if killed_runs.contains(id) {
            // In flight on worker-a at the kill.
            assert_in_flight_reran_once(&effects, "a");
        } else {
            assert_ran_once(&effects, "a");
        }
        assert_ran_once(&effects, "b");
        let handle = s
            .client
            .get_workflow_handle::<RecoveryWorkflow>(id.as_str());
        let attempt = a_runs.last().map(|e| e.attempt).unwrap_or_default();
        assert_eq!(
            s.result(&handle, FINISH, &[&*victim, &*survivor]),
            format!("a#{attempt},b#1"),
            "{id}"
        );
    }
    // Nothing else fires once the schedule is deleted.
    assert_eq!(s.scheduled_runs().len(), runs.len());
    victim.check_no_panic().expect("no panic");
    survivor.check_no_panic().expect("no panic");
}

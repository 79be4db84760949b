//! Kill-and-recover tests for signals, updates and queries: the worker (`recovery_worker`) is a
//! separate process, SIGKILLed and restarted; the test process is the client. Each message must
//! be applied exactly once, an update accepted before a kill must complete after the restart
//! (and the client waiting on it across the kill must get its value), and queries must cross
//! processes (a closed run answered by a worker process; no worker: a timeout within the
//! deadline) and kills (a query not yet claimed is answered by the restarted worker; one claimed
//! by the killed worker is sent again by the waiting client and answered by the restarted one).
//!
//! The workflow is [`MessageWorkflow`] (a mailbox of `u64`s filled by the `add` signal and the
//! `gated_put` update, read by the `items` query, closed by `finish`); activities record their
//! executions in the effects table, as in `tests/recovery.rs`. Waits are event-driven (marker
//! lines, queries and database polls at short intervals, each under an overall timeout).
//!
//! Run: `scripts/pg.sh start`, then
//! `DBOSIFY_TEST_DATABASE_URL=$(scripts/pg.sh url) cargo test -p conformance-tests --test recovery_messages`.
//! Logs of every process are under `target/conformance/logs/recovery/<database name>/`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{FINISH, MARKER, POLL, SCHEMA, Scenario, describe, lit, of, serial, wait_ready};
use conformance_tests::ManagedProcess;
use conformance_tests::recovery::{MessageWorkflow, TASK_QUEUE, Work};
use temporalio_client::{
    Client, RpcOptions, WorkflowExecuteUpdateOptions, WorkflowHandle, WorkflowQueryError,
    WorkflowQueryOptions, WorkflowSignalOptions, WorkflowStartOptions, WorkflowStartUpdateOptions,
};

type Handle = WorkflowHandle<Client, MessageWorkflow>;

/// The helpers of this file's scenarios: [`MessageWorkflow`] runs started, signalled and
/// queried by the test process.
impl Scenario {
    fn new_messages(label: &str) -> Self {
        Self::new(&format!("recovery messages {label}"))
    }

    /// Starts a [`MessageWorkflow`] run executing `first`, through the client.
    fn start(&self, id: &str, first: Vec<Work>) -> Handle {
        self.rt
            .block_on(self.client.start_workflow(
                MessageWorkflow::run,
                first,
                WorkflowStartOptions::new(TASK_QUEUE, id).build(),
            ))
            .expect("workflow started");
        self.client.get_workflow_handle::<MessageWorkflow>(id)
    }

    fn signal_add(&self, handle: &Handle, v: u64) {
        self.rt
            .block_on(handle.signal(MessageWorkflow::add, v, WorkflowSignalOptions::default()))
            .expect("signal sent");
    }

    /// `signal_with_start_workflow` of `id` (no first steps) with `add(v)`; a handle to `id`
    /// and the run id signal-with-start reported.
    fn signal_with_start(&self, id: &str, v: u64) -> (Handle, String) {
        let started = self
            .rt
            .block_on(self.client.signal_with_start_workflow(
                MessageWorkflow::run,
                Vec::new(),
                MessageWorkflow::add,
                v,
                WorkflowStartOptions::new(TASK_QUEUE, id).build(),
            ))
            .expect("signal-with-start");
        let run_id = started.run_id().unwrap_or_default().to_owned();
        (
            self.client.get_workflow_handle::<MessageWorkflow>(id),
            run_id,
        )
    }

    fn finish(&self, handle: &Handle) {
        self.rt
            .block_on(handle.signal(
                MessageWorkflow::finish,
                (),
                WorkflowSignalOptions::default(),
            ))
            .expect("finish sent");
    }

    /// The `items` query (5 s deadline).
    fn items(&self, handle: &Handle) -> Result<Vec<u64>, WorkflowQueryError> {
        self.rt.block_on(handle.query(
            MessageWorkflow::items,
            (),
            query_options(Duration::from_secs(5)),
        ))
    }

    /// Queries `items` until it holds at least `n` values (or `timeout` passes).
    fn wait_items(
        &self,
        handle: &Handle,
        n: usize,
        timeout: Duration,
        workers: &[&ManagedProcess],
    ) -> Vec<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.items(handle);
            if let Ok(items) = &last
                && items.len() >= n
            {
                return items.clone();
            }
            assert!(
                Instant::now() < deadline,
                "fewer than {n} items after {timeout:?}; last query: {last:?}\n{}",
                describe(workers)
            );
            std::thread::sleep(POLL);
        }
    }
}

fn query_options(timeout: Duration) -> WorkflowQueryOptions {
    WorkflowQueryOptions::builder()
        .rpc_options(RpcOptions::builder().timeout(timeout).build())
        .build()
}

// ------------------------------------------------------------------------------------------
// 1. A signal sent while the worker is down.
// ------------------------------------------------------------------------------------------

#[test]
fn signal_sent_while_worker_is_down_is_applied_once() {
    let _serial = serial();
    let s = Scenario::new_messages("signal while down");
    let id = "msg-1";
    let mut worker = s.worker("worker", Some("msg-worker-1"));
    let handle = s.start(id, vec![Work::quick("first")]);
    worker
        .wait_for_line_containing(&format!("EFFECT {id} first attempt=1 finished"), MARKER)
        .expect("first finished");
    // The run is open and held by the worker: a signal before the kill is applied at once.
    s.signal_add(&handle, 1);
    assert_eq!(s.wait_items(&handle, 1, MARKER, &[&worker]), vec![1]);
    worker.kill().expect("killed");
    // Worker down: the signals are only stored. A plain signal, then signal-with-start on the
    // open run (it signals that run), then signal-with-start of a new id (a new run).
    s.signal_add(&handle, 7);
    let (_, signalled_run) = s.signal_with_start(id, 8);
    assert_eq!(signalled_run, id, "signal-with-start signals the open run");
    let (fresh, fresh_run) = s.signal_with_start("msg-1-fresh", 9);
    assert_eq!(fresh_run, "msg-1-fresh", "a new run");
    worker.restart().expect("restarted");
    wait_ready(&mut worker);

    let after = s.wait_items(&handle, 3, FINISH, &[&worker]);
    assert_eq!(
        after,
        vec![1, 7, 8],
        "the signals sent while down are applied once, in order"
    );
    assert_eq!(s.wait_items(&fresh, 1, FINISH, &[&worker]), vec![9]);
    s.finish(&handle);
    s.finish(&fresh);
    assert_eq!(s.result(&handle, FINISH, &[&worker]), vec![1, 7, 8]);
    assert_eq!(s.result(&fresh, FINISH, &[&worker]), vec![9]);
    s.assert_one_successful_run("msg-1-fresh");
    let effects = s.effects(id);
    assert_eq!(of(&effects, "first").len(), 1, "{effects:#?}");
    s.assert_one_successful_run(id);
    worker.check_no_panic().expect("no panic");
}

// ------------------------------------------------------------------------------------------
// 2. An update accepted, the worker killed while its handler runs, then restarted.
// ------------------------------------------------------------------------------------------

#[test]
fn update_in_flight_at_a_kill_completes_after_restart() {
    let _serial = serial();
    let s = Scenario::new_messages("update across kill");
    let id = "msg-2";
    let mut worker = s.worker("worker", Some("msg-worker-2"));
    let handle = s.start(id, Vec::new());
    // The client waits on the update across the kill (a task of the test's runtime).
    let waiting = {
        let handle = handle.clone();
        s.rt.spawn(async move {
            handle
                .execute_update(
                    MessageWorkflow::gated_put,
                    (Work::gated("upd", "upd"), 42),
                    WorkflowExecuteUpdateOptions::builder()
                        .update_id("the-update".to_string())
                        .build(),
                )
                .await
        })
    };
    // Accepted: its handler's activity runs (held at its gate).
    worker
        .wait_for_line_containing(&format!("EFFECT {id} upd attempt=1 started"), MARKER)
        .expect("the update's activity started");
    // A second update through `start_update`: its handle outlives the kill too.
    let second =
        s.rt.block_on(
            handle.start_update(
                MessageWorkflow::gated_put,
                (Work::gated("upd2", "upd"), 43),
                WorkflowStartUpdateOptions::builder()
                    .update_id("the-second-update".to_string())
                    .build(),
            ),
        )
        .expect("second update accepted");
    worker
        .wait_for_line_containing(&format!("EFFECT {id} upd2 attempt=1 started"), MARKER)
        .expect("the second update's activity started");
    assert!(
        !waiting.is_finished(),
        "the update cannot have completed yet"
    );
    worker.kill().expect("killed");
    // Still waiting while the worker is down.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiting.is_finished(),
        "execute_update returned while no worker runs: {:?}",
        s.rt.block_on(waiting)
    );
    s.open_gate("upd");
    worker.restart().expect("restarted");
    wait_ready(&mut worker);

    let value = s.await_call("execute_update", waiting, FINISH, id, &[&worker]);
    let second_value =
        s.rt.block_on(async {
            tokio::time::timeout(FINISH, second.get_result(RpcOptions::default())).await
        })
        .expect("the second update completes after the restart")
        .expect("the second update succeeds");
    let effects = s.effects(id);
    for (activity, v, got) in [("upd", 42, &value), ("upd2", 43, &second_value)] {
        let runs = of(&effects, activity);
        assert_eq!(runs.len(), 2, "killed + one re-execution: {runs:#?}");
        assert_eq!(runs[0].outcome, None, "{runs:#?}");
        assert_eq!(runs[1].outcome.as_deref(), Some("finished"), "{runs:#?}");
        assert_eq!(*got, format!("{activity}#{}+{v}", runs[1].attempt));
    }
    // The same update id again: the recorded outcome, the handler not run again.
    let again =
        s.rt.block_on(
            handle.execute_update(
                MessageWorkflow::gated_put,
                (Work::gated("upd", "upd"), 42),
                WorkflowExecuteUpdateOptions::builder()
                    .update_id("the-update".to_string())
                    .build(),
            ),
        )
        .expect("repeated update id");
    assert_eq!(again, value);
    let mut items = s.items(&handle).expect("query");
    s.finish(&handle);
    assert_eq!(
        s.result(&handle, FINISH, &[&worker]),
        items,
        "result and query agree"
    );
    items.sort_unstable();
    assert_eq!(items, vec![42, 43], "each handler applied once");
    let effects = s.effects(id);
    assert_eq!(of(&effects, "upd").len(), 2, "no further execution");
    assert_eq!(of(&effects, "upd2").len(), 2, "no further execution");
    s.assert_one_successful_run(id);
    worker.check_no_panic().expect("no panic");
}

// ------------------------------------------------------------------------------------------
// 3. 200 signals from 4 concurrent senders, the worker killed and restarted mid-burst.
// ------------------------------------------------------------------------------------------

#[test]
fn signal_burst_across_a_kill_is_applied_exactly_once_in_one_order() {
    let _serial = serial();
    const SENDERS: u64 = 4;
    const PER_SENDER: u64 = 50;
    const TOTAL: usize = (SENDERS * PER_SENDER) as usize;
    let s = Scenario::new_messages("signal burst");
    let id = "msg-3";
    let mut worker = s.worker("worker", Some("msg-worker-3"));
    let handle = s.start(id, vec![Work::quick("first")]);
    worker
        .wait_for_line_containing(&format!("EFFECT {id} first attempt=1 finished"), MARKER)
        .expect("first finished");
    let sent = Arc::new(AtomicUsize::new(0));
    // Each sender sends its first half, then holds until the worker has been restarted (so the
    // kill, the down time and the restart all fall inside the burst), then sends the rest while
    // the restarted worker recovers.
    let restarted = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let handle = handle.clone();
            let sent = sent.clone();
            let restarted = restarted.clone();
            s.rt.spawn(async move {
                for i in 0..PER_SENDER {
                    if i == PER_SENDER / 2 {
                        while !restarted.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    handle
                        .signal(
                            MessageWorkflow::add,
                            sender * 1000 + i,
                            WorkflowSignalOptions::default(),
                        )
                        .await
                        .expect("signal sent");
                    sent.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    // Kill once a quarter of the burst is sent, restart once half of it is (sent while down).
    let deadline = Instant::now() + MARKER;
    while sent.load(Ordering::SeqCst) < TOTAL / 4 {
        assert!(Instant::now() < deadline, "the senders are stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    let applied_before_kill = s.items(&handle).map(|v| v.len()).unwrap_or_default();
    worker.kill().expect("killed mid-burst");
    let sent_at_kill = sent.load(Ordering::SeqCst);
    while sent.load(Ordering::SeqCst) < TOTAL / 2 {
        assert!(Instant::now() < deadline, "the senders are stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    worker.restart().expect("restarted");
    wait_ready(&mut worker);
    let sent_at_restart = sent.load(Ordering::SeqCst);
    restarted.store(true, Ordering::SeqCst);
    for sender in senders {
        s.rt.block_on(sender).expect("sender finished");
    }
    eprintln!(
        "signal burst: {applied_before_kill} applied shortly before the kill, {sent_at_kill} \
         sent at the kill, {sent_at_restart} at the restart"
    );
    assert!(
        applied_before_kill > 0 && sent_at_kill < TOTAL / 2 && sent_at_restart == TOTAL / 2,
        "the worker must be applying the burst when killed, and the restart must fall inside it"
    );

    let items = s.wait_items(&handle, TOTAL, FINISH, &[&worker]);
    assert_eq!(items.len(), TOTAL, "every signal applied once: {items:?}");
    let mut sorted = items.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let expected: Vec<u64> = (0..SENDERS)
        .flat_map(|sender| (0..PER_SENDER).map(move |i| sender * 1000 + i))
        .collect();
    assert_eq!(sorted, expected, "no duplicate, none missing");
    for sender in 0..SENDERS {
        let mine: Vec<u64> = items
            .iter()
            .copied()
            .filter(|v| v / 1000 == sender)
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "sender {sender}'s order must be kept: {mine:?}"
        );
    }
    // A second query agrees (the order is fixed, not recomputed).
    assert_eq!(s.items(&handle).expect("query"), items);
    s.finish(&handle);
    assert_eq!(
        s.result(&handle, FINISH, &[&worker]),
        items,
        "result and query agree"
    );
    assert_eq!(of(&s.effects(id), "first").len(), 1);
    s.assert_one_successful_run(id);
    worker.check_no_panic().expect("no panic");
}

// ------------------------------------------------------------------------------------------
// 4. A query on a closed run, answered by a worker process.
// ------------------------------------------------------------------------------------------

#[test]
fn query_on_a_closed_run_is_answered_by_a_worker_process() {
    let _serial = serial();
    let s = Scenario::new_messages("closed run query");
    let id = "msg-4";
    let mut worker = s.worker("worker", Some("msg-worker-4"));
    let handle = s.start(id, vec![Work::quick("first")]);
    s.signal_add(&handle, 3);
    s.signal_add(&handle, 5);
    s.finish(&handle);
    assert_eq!(s.result(&handle, FINISH, &[&worker]), vec![3, 5]);
    // The run is closed; the worker that ran it is gone. A new worker process (another
    // identity) answers by replaying the run.
    worker.kill().expect("killed");
    let other = s.worker("other", Some("msg-worker-4-other"));
    let t0 = Instant::now();
    let answer = s.rt.block_on(handle.query(
        MessageWorkflow::items,
        (),
        query_options(Duration::from_secs(10)),
    ));
    let elapsed = t0.elapsed();
    eprintln!("closed run query: answered in {elapsed:?}");
    assert_eq!(
        answer.unwrap_or_else(|e| panic!("query failed: {e:?}\n{}", describe(&[&other]))),
        vec![3, 5]
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "the worker process must be woken by the query, not find it by its 5 s fallback scan: \
         {elapsed:?}"
    );
    // Several more, each answered promptly.
    for _ in 0..3 {
        let t0 = Instant::now();
        assert_eq!(s.items(&handle).expect("query"), vec![3, 5]);
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }
    assert_eq!(
        of(&s.effects(id), "first").len(),
        1,
        "replay runs no activity"
    );
    s.assert_one_successful_run(id);
    other.check_no_panic().expect("no panic");
    worker.check_no_panic().expect("no panic");
}

// ------------------------------------------------------------------------------------------
// 5. No worker: a query times out within its deadline.
// ------------------------------------------------------------------------------------------

#[test]
fn query_without_worker_fails_with_deadline_exceeded() {
    let _serial = serial();
    let s = Scenario::new_messages("query without worker");
    let handle = s.start("msg-5", Vec::new());
    let timeout = Duration::from_millis(800);
    let t0 = Instant::now();
    let error =
        s.rt.block_on(handle.query(MessageWorkflow::items, (), query_options(timeout)))
            .expect_err("no worker can answer");
    let elapsed = t0.elapsed();
    eprintln!("query without worker: failed after {elapsed:?}: {error}");
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_millis(1500),
        "the query must fail at about its {timeout:?} deadline, not after {elapsed:?}"
    );
    match &error {
        WorkflowQueryError::Rpc(status) => {
            assert_eq!(
                format!("{:?}", status.code()),
                "DeadlineExceeded",
                "{status}"
            );
            assert!(
                status.message().contains(&format!("`{TASK_QUEUE}`")),
                "the error names the task queue: {status}"
            );
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// 6. A query pending while the worker holding the run is frozen, then killed and restarted.
// ------------------------------------------------------------------------------------------

/// The worker holding the run is frozen (SIGSTOP) before a query is sent, so it cannot claim
/// it; it is SIGKILLed and restarted while the client waits: the restarted worker recovers the
/// run, finds the request still in the run's query topic and answers it within the client's
/// timeout.
#[test]
fn query_pending_at_a_kill_is_answered_after_restart() {
    let _serial = serial();
    let s = Scenario::new_messages("query across kill");
    let id = "msg-6";
    let mut worker = s.worker("worker", Some("msg-worker-6"));
    let handle = s.start(id, Vec::new());
    s.signal_add(&handle, 6);
    assert_eq!(s.wait_items(&handle, 1, MARKER, &[&worker]), vec![6]);
    worker.freeze().expect("frozen");
    let pending = {
        let handle = handle.clone();
        s.rt.spawn(async move {
            handle
                .query(MessageWorkflow::items, (), query_options(FINISH))
                .await
        })
    };
    // White-box: kill once the request is stored (the frozen worker cannot take it).
    s.wait_for("the query request to be stored", MARKER, &[&worker], || {
        (pending_queries(&s, id) == 1).then_some(())
    });
    worker.kill().expect("killed");
    let killed_at = Instant::now();
    worker.restart().expect("restarted");
    wait_ready(&mut worker);

    let answer = s
        .rt
        .block_on(pending)
        .expect("the query task")
        .unwrap_or_else(|e| panic!("the pending query failed: {e:?}\n{}", describe(&[&worker])));
    eprintln!(
        "query across kill: answered {:?} after the kill",
        killed_at.elapsed()
    );
    assert_eq!(answer, vec![6]);
    assert_eq!(pending_queries(&s, id), 0, "nothing about the query stays");
    s.finish(&handle);
    assert_eq!(s.result(&handle, FINISH, &[&worker]), vec![6]);
    s.assert_one_successful_run(id);
    worker.check_no_panic().expect("no panic");
}

// ------------------------------------------------------------------------------------------
// 7. A query claimed by the worker holding the run, which is killed before it answers.
// ------------------------------------------------------------------------------------------

/// The worker holding the run claims a query (the request leaves the run's query topic) and is
/// SIGKILLed while the query handler runs. The client, still waiting, sees the run recovered
/// and sends the request again: the restarted worker answers it within the query's timeout, as
/// Temporal's server would hand the query to the next worker. The run itself is unharmed.
#[test]
fn query_claimed_by_a_killed_worker_is_answered_after_restart() {
    let _serial = serial();
    let s = Scenario::new_messages("claimed query across a kill");
    let id = "msg-7";
    let mut worker = s.worker("worker", Some("msg-worker-7"));
    let handle = s.start(id, Vec::new());
    s.signal_add(&handle, 7);
    assert_eq!(s.wait_items(&handle, 1, MARKER, &[&worker]), vec![7]);
    let timeout = Duration::from_secs(30);
    let pending = {
        let handle = handle.clone();
        s.rt.spawn(async move {
            handle
                .query(
                    MessageWorkflow::held_items,
                    "q".to_string(),
                    query_options(timeout),
                )
                .await
        })
    };
    // The handler runs (the request was claimed) and holds at its gate.
    worker
        .wait_for_line_containing("QUERY held_items gate=q started", MARKER)
        .expect("the query handler started");
    worker.kill().expect("killed");
    let killed_at = Instant::now();
    s.open_gate("q");
    worker.restart().expect("restarted");
    wait_ready(&mut worker);

    let outcome = s.rt.block_on(pending).expect("the query task");
    eprintln!(
        "claimed query: {outcome:?}, {:?} after the kill",
        killed_at.elapsed()
    );
    assert_eq!(
        outcome.expect("the query is answered after the restart"),
        vec![7]
    );
    assert!(
        worker.stdout().contains("QUERY held_items gate=q started"),
        "the restarted worker ran the query handler"
    );
    assert_eq!(pending_queries(&s, id), 0, "nothing about the query stays");
    s.finish(&handle);
    assert_eq!(s.result(&handle, FINISH, &[&worker]), vec![7]);
    s.assert_one_successful_run(id);
    worker.check_no_panic().expect("no panic");
}

/// White-box: the unconsumed query requests stored for `run_id` (the run's query topic).
fn pending_queries(s: &Scenario, run_id: &str) -> u64 {
    s.db.query_scalar(&format!(
        "SELECT count(*)::text FROM {SCHEMA}.notifications
          WHERE destination_uuid = {} AND topic = '__temporal_query' AND NOT consumed",
        lit(run_id)
    ))
    .expect("query requests")
    .and_then(|n| n.parse().ok())
    .unwrap_or_default()
}

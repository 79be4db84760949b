//! Standalone activities on the worker: a claimed activity row (see the client's `activity`
//! module and [`protocol::ActivityAttributes`]) runs through the same activity machinery as a
//! workflow's activities ([`super::activity::execute`]: retry policy, timeouts, heartbeats,
//! durable attempt numbers, async completion), and its resolution becomes the row's outcome.
//!
//! While it runs, the row's status is watched (a terminate decides it elsewhere: the activity is
//! cancelled and its result dropped) and so is its cancellation-request event
//! ([`protocol::cancel_requested_key`]), which cancels the activity's context.

use std::sync::Arc;
use std::time::Duration;

use dbos_core::{CompleteResult, Outcome, RunState, WakeKey, WorkflowStatus};
use temporal_compat_client::protocol::{
    self, ActivityEnd, RunAttributes, STANDALONE_SEQ, cancel_requested_key,
};
use temporalio_common_wasm::protos::coresdk::activity_result::{
    ActivityResolution, activity_resolution,
};
use temporalio_common_wasm::protos::temporal::api::common::v1::RetryPolicy as ProtoRetryPolicy;
use temporalio_common_wasm::protos::temporal::api::enums::v1::TimeoutType;
use temporalio_common_wasm::protos::temporal::api::failure::v1::failure::FailureInfo;
use temporalio_common_wasm::protos::temporal::api::failure::v1::{
    CanceledFailureInfo, Failure, TimeoutFailureInfo,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::activity::{self, ActivityTask, normalize_retry};
use super::{Engine, IDLE_RECHECK};

fn failure(message: impl Into<String>, info: FailureInfo) -> Failure {
    Failure {
        message: message.into(),
        failure_info: Some(info),
        ..Default::default()
    }
}

/// The failure an activity produced, without the `ActivityFailure` wrapper workflows receive.
fn unwrap_activity_failure(f: Failure) -> Failure {
    match (&f.failure_info, f.cause) {
        (Some(FailureInfo::ActivityFailureInfo(_)), Some(cause)) => *cause,
        (_, cause) => Failure { cause, ..f },
    }
}

/// The row outcome of a resolution; `None` when nothing is to be recorded (the worker halts).
fn outcome_of(resolution: ActivityResolution) -> Option<Outcome> {
    let end = match resolution.status? {
        activity_resolution::Status::Completed(s) => {
            let payloads: Vec<_> = s.result.into_iter().collect();
            return Some(Outcome::Success(protocol::encode_payloads(&payloads)));
        }
        activity_resolution::Status::Failed(f) => {
            let f = unwrap_activity_failure(f.failure.unwrap_or_default());
            if matches!(f.failure_info, Some(FailureInfo::TimeoutFailureInfo(_))) {
                ActivityEnd::TimedOut { failure: f }
            } else {
                ActivityEnd::Failed { failure: f }
            }
        }
        activity_resolution::Status::Cancelled(c) => ActivityEnd::Canceled {
            failure: unwrap_activity_failure(c.failure.unwrap_or_default()),
        },
        activity_resolution::Status::Backoff(_) => ActivityEnd::Failed {
            failure: failure(
                "a standalone activity resolved as a local-activity backoff",
                FailureInfo::ApplicationFailureInfo(Default::default()),
            ),
        },
    };
    Some(Outcome::Error(end.to_text()))
}

async fn record(engine: &Engine, run: &str, outcome: Outcome) {
    loop {
        match engine
            .db
            .complete(run, Some(&engine.executor_id), &outcome)
            .await
        {
            Ok(CompleteResult::Recorded) => {
                debug!(run_id = %run, "standalone activity closed");
                return;
            }
            Ok(CompleteResult::AlreadyDecided(s)) => {
                info!(run_id = %run, state = s.state.as_str(), "standalone activity was decided elsewhere; result dropped");
                return;
            }
            Err(e) if e.is_transient() && !engine.halt.is_cancelled() => {
                warn!(run_id = %run, error = %e, "cannot record the activity outcome; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                warn!(run_id = %run, error = %e, "cannot record the activity outcome");
                return;
            }
        }
    }
}

fn ms(v: Option<u64>) -> Option<Duration> {
    v.filter(|m| *m > 0).map(Duration::from_millis)
}

/// Whether a claimed standalone activity's schedule-to-start timeout (`timeout_ms`) ran out
/// before this claim at `now_ms`: it covers the wait in the task queue, from `scheduled_at_ms`
/// (the end of a start delay, else the creation) to the first claim. A run claimed again after
/// its worker died (`recovery_attempts > 0`) had started already, so it is not checked again.
fn schedule_to_start_expired(
    scheduled_at_ms: i64,
    recovery_attempts: i64,
    timeout_ms: Option<u64>,
    now_ms: i64,
) -> bool {
    let Some(timeout) = ms(timeout_ms) else {
        return false;
    };
    recovery_attempts == 0
        && now_ms - scheduled_at_ms > i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)
}

/// Runs one claimed standalone activity row to its outcome. Never panics on bad data: a row
/// that cannot be run closes as FAILED with a clear message.
pub(crate) async fn run(engine: Arc<Engine>, status: WorkflowStatus) {
    let run = status.workflow_id.clone();
    let bad = |msg: String| {
        let f = failure(
            msg,
            FailureInfo::ApplicationFailureInfo(
                temporalio_common_wasm::protos::temporal::api::failure::v1::ApplicationFailureInfo {
                    non_retryable: true,
                    ..Default::default()
                },
            ),
        );
        Outcome::Error(ActivityEnd::Failed { failure: f }.to_text())
    };
    let attrs = match RunAttributes::of_run(&status) {
        Ok(a) => a,
        Err(e) => return record(&engine, &run, bad(e.to_string())).await,
    };
    let Some(act) = attrs.activity() else {
        return record(
            &engine,
            &run,
            bad(format!("run `{run}` is not a standalone activity")),
        )
        .await;
    };
    let arguments = match status.inputs.as_deref() {
        Some(t) if !t.is_empty() => {
            match protocol::decode_payloads(&format!("input of activity run `{run}`"), t) {
                Ok(p) => p,
                Err(e) => return record(&engine, &run, bad(e.to_string())).await,
            }
        }
        _ => Vec::new(),
    };
    let headers = attrs.header().unwrap_or_default();
    let retry: Option<ProtoRetryPolicy> = match &act.retry_policy {
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(p) => Some(p),
            Err(e) => {
                return record(
                    &engine,
                    &run,
                    bad(format!("retry policy does not decode: {e}")),
                )
                .await;
            }
        },
        None => None,
    };
    // Register before probing: a cancellation request or a status change from now on wakes the
    // watcher below, which thus need not read the cancellation request again.
    let ckey = cancel_requested_key(STANDALONE_SEQ);
    let mut status_w = engine.db.register_waiter(WakeKey::Status(run.clone()));
    let mut cancel_w = engine
        .db
        .register_waiter(WakeKey::Event(run.clone(), ckey.clone()));
    // A cancellation requested before any worker started it closes it at once.
    if let Ok(Some(reason)) = engine.db.get_event(&run, &ckey, None).await {
        let f = failure(
            if reason.is_empty() {
                "Activity cancelled".to_string()
            } else {
                reason
            },
            FailureInfo::CanceledFailureInfo(CanceledFailureInfo::default()),
        );
        return record(
            &engine,
            &run,
            Outcome::Error(ActivityEnd::Canceled { failure: f }.to_text()),
        )
        .await;
    }
    let scheduled_at = status.delay_until_epoch_ms.unwrap_or(status.created_at_ms);
    if schedule_to_start_expired(
        scheduled_at,
        status.recovery_attempts,
        act.schedule_to_start_ms,
        dbos_core::now_ms(),
    ) {
        let f = failure(
            "activity ScheduleToStart timeout",
            FailureInfo::TimeoutFailureInfo(TimeoutFailureInfo {
                timeout_type: TimeoutType::ScheduleToStart as i32,
                last_heartbeat_details: None,
            }),
        );
        return record(
            &engine,
            &run,
            Outcome::Error(ActivityEnd::TimedOut { failure: f }.to_text()),
        )
        .await;
    }
    let cancel = CancellationToken::new();
    let task = ActivityTask {
        run_id: run.clone(),
        workflow_id: attrs.workflow_id.clone(),
        workflow_type: String::new(),
        seq: STANDALONE_SEQ,
        local: false,
        activity_id: attrs.workflow_id.clone(),
        activity_type: status.name.clone(),
        headers,
        arguments,
        schedule_to_close: ms(act.schedule_to_close_ms),
        // Already checked against the time in the queue.
        schedule_to_start: None,
        start_to_close: ms(act.start_to_close_ms),
        heartbeat_timeout: ms(act.heartbeat_timeout_ms),
        retry: normalize_retry(retry),
        scheduled_at_ms: scheduled_at,
        first_attempt: 1,
        heartbeat_details: Vec::new(),
        local_retry_threshold: Duration::ZERO,
        recovered: status.recovery_attempts > 0,
        cancel: cancel.clone(),
    };
    // Watch for a cancellation request and for the row being decided elsewhere.
    let decided = CancellationToken::new();
    let watcher = {
        let engine = engine.clone();
        let run = run.clone();
        let cancel = cancel.clone();
        let decided = decided.clone();
        tokio::spawn(async move {
            // The request was read above, after the waiters were registered.
            let mut read_cancel = false;
            loop {
                let cancel_read = async {
                    if read_cancel && !cancel.is_cancelled() {
                        matches!(engine.db.get_event(&run, &ckey, None).await, Ok(Some(_)))
                    } else {
                        false
                    }
                };
                let (requested, status) = tokio::join!(cancel_read, engine.db.status(&run));
                if requested {
                    debug!(run_id = %run, "standalone activity cancellation requested");
                    cancel.cancel();
                }
                match status {
                    Ok(Some(s))
                        if s.state != RunState::Pending
                            || s.executor_id.as_deref() != Some(engine.executor_id.as_str()) =>
                    {
                        decided.cancel();
                        cancel.cancel();
                        return;
                    }
                    Ok(None) => {
                        decided.cancel();
                        cancel.cancel();
                        return;
                    }
                    _ => {}
                }
                tokio::select! {
                    _ = status_w.wait_up_to(IDLE_RECHECK) => {}
                    _ = cancel_w.wait_up_to(IDLE_RECHECK) => {}
                    _ = engine.halt.cancelled() => return,
                }
                read_cancel = true;
                status_w = engine.db.register_waiter(WakeKey::Status(run.clone()));
                cancel_w = engine
                    .db
                    .register_waiter(WakeKey::Event(run.clone(), ckey.clone()));
            }
        })
    };
    let resolution = activity::execute(engine.clone(), task).await;
    watcher.abort();
    if engine.halt.is_cancelled() || decided.is_cancelled() {
        // Halting: the row stays PENDING and is recovered; decided elsewhere: nothing to record.
        return;
    }
    if let Some(outcome) = outcome_of(resolution) {
        record(&engine, &run, outcome).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_to_start_counts_the_queue_wait_of_the_first_claim_only() {
        // Within and past the timeout, at the first claim.
        assert!(!schedule_to_start_expired(1_000, 0, Some(500), 1_400));
        assert!(schedule_to_start_expired(1_000, 0, Some(500), 1_600));
        // Without a timeout (or a zero one) nothing expires.
        assert!(!schedule_to_start_expired(1_000, 0, None, 99_000));
        assert!(!schedule_to_start_expired(1_000, 0, Some(0), 99_000));
        // Claimed again after a worker death: not rechecked, however long it waited
        // (COMPATIBILITY.md deviation).
        assert!(!schedule_to_start_expired(1_000, 1, Some(500), 99_000));
    }
}

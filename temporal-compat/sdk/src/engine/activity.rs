//! Activity execution with Temporal's semantics: retry policy (defaults: 1 s initial interval,
//! coefficient 2.0, maximum interval 100× initial, unlimited attempts), non-retryable failures,
//! the four timeouts, durable throttled heartbeats handed to the next attempt, durable attempt
//! numbers, cancellation; and local activities (in-process retries, `DoBackoff` beyond the
//! local retry threshold).
//!
//! Heartbeat details and the attempt number are dbos-core events of the run, keyed by the
//! activity's sequence number ([`heartbeat_key`], [`attempt_key`]), so a worker that takes the
//! run over continues from them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use temporal_compat_client::protocol::{decode_payloads, encode_payloads};
use temporalio_common_wasm::ActivityError;
use temporalio_common_wasm::Priority;
use temporalio_common_wasm::data_converters::{
    ActivitySerializationContext, SerializationContextData,
};
use temporalio_common_wasm::error::{ApplicationFailure, OutgoingActivityError, OutgoingError};
use temporalio_common_wasm::protos::coresdk::activity_result::{
    ActivityResolution, Cancellation, DoBackoff, Failure as ResolutionFailure, Success,
    activity_resolution,
};
use temporalio_common_wasm::protos::temporal::api::common::v1::{
    ActivityType, Payload, Payloads, RetryPolicy as ProtoRetryPolicy,
};
use temporalio_common_wasm::protos::temporal::api::enums::v1::{RetryState, TimeoutType};
use temporalio_common_wasm::protos::temporal::api::failure::v1::failure::FailureInfo;
use temporalio_common_wasm::protos::temporal::api::failure::v1::{
    ActivityFailureInfo, Failure, TimeoutFailureInfo,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Engine, IDLE_RECHECK, duration_of, proto_duration, system_time_ms};
use crate::activities::{ActivityContext, ActivityInfo, HeartbeatSink};

use temporal_compat_client::protocol::{
    AsyncOutcome, TaskTokenParts, async_activity_id_key, async_heartbeat_key, async_outcome_key,
    async_pending_key, cancel_requested_key, heartbeat_time_key,
};
pub(crate) use temporal_compat_client::protocol::{attempt_key, heartbeat_key};

/// One activity to execute for a run.
#[derive(Clone, Debug)]
pub(crate) struct ActivityTask {
    /// The run.
    pub run_id: String,
    /// Its workflow id.
    pub workflow_id: String,
    /// Its workflow type.
    pub workflow_type: String,
    /// The activity's sequence number.
    pub seq: u32,
    /// Local activity.
    pub local: bool,
    /// Activity id.
    pub activity_id: String,
    /// Activity type.
    pub activity_type: String,
    /// Headers.
    pub headers: HashMap<String, Payload>,
    /// Arguments.
    pub arguments: Vec<Payload>,
    /// Timeouts.
    pub schedule_to_close: Option<Duration>,
    /// Timeouts.
    pub schedule_to_start: Option<Duration>,
    /// Timeouts.
    pub start_to_close: Option<Duration>,
    /// Timeouts.
    pub heartbeat_timeout: Option<Duration>,
    /// The retry policy (normalized).
    pub retry: ProtoRetryPolicy,
    /// When it was scheduled, epoch ms (the activation timestamp; for a local activity the
    /// original schedule time).
    pub scheduled_at_ms: i64,
    /// The attempt to start with.
    pub first_attempt: u32,
    /// Heartbeat details for the first attempt.
    pub heartbeat_details: Vec<Payload>,
    /// Local activities: backoffs longer than this resolve as `DoBackoff`.
    pub local_retry_threshold: Duration,
    /// Look up the durable attempt and heartbeat details before starting (recovery).
    pub recovered: bool,
    /// Cancellation requested by the workflow.
    pub cancel: CancellationToken,
}

impl ActivityTask {
    /// A standalone activity: its run is the activity's own (no workflow).
    pub(crate) fn standalone(&self) -> bool {
        temporal_compat_client::protocol::is_activity_run(&self.run_id)
    }
}

/// Fills in Temporal's defaults: initial interval 1 s, coefficient 2.0 (when below 1), maximum
/// interval 100× the initial one, and maximum at least the initial.
pub(crate) fn normalize_retry(policy: Option<ProtoRetryPolicy>) -> ProtoRetryPolicy {
    let mut p = policy.unwrap_or_default();
    let initial = duration_of(&p.initial_interval).unwrap_or(Duration::from_secs(1));
    p.initial_interval = Some(proto_duration(initial));
    if p.backoff_coefficient < 1.0 || !p.backoff_coefficient.is_finite() {
        p.backoff_coefficient = 2.0;
    }
    let max = duration_of(&p.maximum_interval)
        .unwrap_or(initial.saturating_mul(100))
        .max(initial);
    p.maximum_interval = Some(proto_duration(max));
    if p.maximum_attempts < 0 {
        p.maximum_attempts = 0;
    }
    p
}

/// The backoff after failed attempt `attempt` (1-based).
pub(crate) fn backoff(policy: &ProtoRetryPolicy, attempt: u32) -> Duration {
    let initial = duration_of(&policy.initial_interval).unwrap_or(Duration::from_secs(1));
    let max = duration_of(&policy.maximum_interval).unwrap_or(initial * 100);
    let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    let secs = initial.as_secs_f64() * policy.backoff_coefficient.powi(exp);
    if !secs.is_finite() || secs >= max.as_secs_f64() {
        return max;
    }
    Duration::from_secs_f64(secs).min(max)
}

/// Whether a failure may be retried under `policy` after attempt `attempt`, and when (also
/// used for workflow retry policies).
pub(crate) fn retry_decision(
    policy: &ProtoRetryPolicy,
    attempt: u32,
    failure: &Failure,
) -> Result<Duration, RetryState> {
    if let Some(FailureInfo::ApplicationFailureInfo(info)) = &failure.failure_info {
        if info.non_retryable {
            return Err(RetryState::NonRetryableFailure);
        }
        if !info.r#type.is_empty()
            && policy
                .non_retryable_error_types
                .iter()
                .any(|t| t.eq_ignore_ascii_case(&info.r#type))
        {
            return Err(RetryState::NonRetryableFailure);
        }
    }
    if policy.maximum_attempts > 0 && attempt >= policy.maximum_attempts as u32 {
        return Err(RetryState::MaximumAttemptsReached);
    }
    let explicit = match &failure.failure_info {
        Some(FailureInfo::ApplicationFailureInfo(info)) => duration_of(&info.next_retry_delay),
        _ => None,
    };
    Ok(explicit.unwrap_or_else(|| backoff(policy, attempt)))
}

fn activity_context_data() -> SerializationContextData {
    SerializationContextData::Activity(ActivitySerializationContext::new())
}

fn timeout_failure(kind: TimeoutType, details: &[Payload]) -> Failure {
    let name = match kind {
        TimeoutType::StartToClose => "StartToClose",
        TimeoutType::ScheduleToStart => "ScheduleToStart",
        TimeoutType::ScheduleToClose => "ScheduleToClose",
        TimeoutType::Heartbeat => "Heartbeat",
        TimeoutType::Unspecified => "Unspecified",
    };
    Failure {
        message: format!("activity {name} timeout"),
        failure_info: Some(FailureInfo::TimeoutFailureInfo(TimeoutFailureInfo {
            timeout_type: kind as i32,
            last_heartbeat_details: (!details.is_empty()).then(|| Payloads {
                payloads: details.to_vec(),
            }),
        })),
        ..Default::default()
    }
}

/// Wraps a cause as the `ActivityFailure` a workflow receives.
fn activity_failure(
    engine: &Engine,
    task: &ActivityTask,
    retry_state: RetryState,
    cause: Failure,
) -> Failure {
    Failure {
        message: "Activity task failed".to_string(),
        failure_info: Some(FailureInfo::ActivityFailureInfo(ActivityFailureInfo {
            identity: engine.executor_id.clone(),
            activity_type: Some(ActivityType {
                name: task.activity_type.clone(),
            }),
            activity_id: task.activity_id.clone(),
            retry_state: retry_state as i32,
            ..Default::default()
        })),
        cause: Some(Box::new(cause)),
        ..Default::default()
    }
}

fn failed(failure: Failure) -> ActivityResolution {
    ActivityResolution {
        status: Some(activity_resolution::Status::Failed(ResolutionFailure {
            failure: Some(failure),
            ..Default::default()
        })),
    }
}

/// The resolution of an activity cancelled by the workflow (before or during an attempt).
pub(crate) fn cancelled_resolution(
    engine: &Engine,
    task_activity_type: &str,
    activity_id: &str,
    details: Option<Failure>,
) -> ActivityResolution {
    let cause = details.unwrap_or_else(|| Failure {
        message: "Activity cancelled".to_string(),
        failure_info: Some(FailureInfo::CanceledFailureInfo(Default::default())),
        ..Default::default()
    });
    ActivityResolution {
        status: Some(activity_resolution::Status::Cancelled(Cancellation {
            failure: Some(Failure {
                message: "Activity cancelled".to_string(),
                failure_info: Some(FailureInfo::ActivityFailureInfo(ActivityFailureInfo {
                    identity: engine.executor_id.clone(),
                    activity_type: Some(ActivityType {
                        name: task_activity_type.to_string(),
                    }),
                    activity_id: activity_id.to_string(),
                    retry_state: RetryState::CancelRequested as i32,
                    ..Default::default()
                })),
                cause: Some(Box::new(cause)),
                ..Default::default()
            }),
        })),
    }
}

/// Shared state of a durable, throttled heartbeat recorder.
struct HeartbeatShared {
    engine: Arc<Engine>,
    run_id: String,
    key: String,
    /// Event key of the time of the recorded heartbeat ([`heartbeat_time_key`]).
    time_key: String,
    throttle: Duration,
    state: Mutex<HeartbeatState>,
}

struct HeartbeatState {
    latest: Vec<Payload>,
    /// When `latest` was reported (epoch ms).
    latest_at_ms: i64,
    last_beat: Instant,
    last_write: Option<Instant>,
    dirty: bool,
    flush_scheduled: bool,
}

impl HeartbeatShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HeartbeatState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `details` and the time they were reported, in one statement.
    async fn persist(&self, details: &[Payload], at_ms: i64) {
        let events = [
            (self.key.clone(), encode_payloads(details)),
            (self.time_key.clone(), at_ms.to_string()),
        ];
        if let Err(e) = self.engine.db.set_events(&self.run_id, &events).await {
            warn!(run_id = %self.run_id, error = %e, "cannot record activity heartbeat");
        }
    }

    fn write(self: &Arc<Self>, details: Vec<Payload>, at_ms: i64) {
        let me = self.clone();
        self.engine.main.spawn(async move {
            me.persist(&details, at_ms).await;
        });
    }

    /// Writes pending details now and waits for the write.
    async fn flush(self: &Arc<Self>) {
        let details = {
            let mut st = self.lock();
            if !st.dirty {
                return;
            }
            st.dirty = false;
            st.last_write = Some(Instant::now());
            (st.latest.clone(), st.latest_at_ms)
        };
        self.persist(&details.0, details.1).await;
    }
}

struct HeartbeatRecorder(Arc<HeartbeatShared>);

impl HeartbeatSink for HeartbeatRecorder {
    fn record(&self, details: Vec<Payload>) {
        let shared = &self.0;
        let now = Instant::now();
        let mut st = shared.lock();
        st.latest = details;
        st.latest_at_ms = dbos_core::now_ms();
        st.last_beat = now;
        st.dirty = true;
        let due = st
            .last_write
            .is_none_or(|t| now.duration_since(t) >= shared.throttle);
        if due {
            st.dirty = false;
            st.last_write = Some(now);
            let (latest, at_ms) = (st.latest.clone(), st.latest_at_ms);
            drop(st);
            shared.write(latest, at_ms);
        } else if !st.flush_scheduled {
            st.flush_scheduled = true;
            let wait = st
                .last_write
                .map(|t| shared.throttle.saturating_sub(now.duration_since(t)))
                .unwrap_or_default();
            drop(st);
            let me = shared.clone();
            shared.engine.main.spawn(async move {
                tokio::time::sleep(wait).await;
                let pending = {
                    let mut st = me.lock();
                    st.flush_scheduled = false;
                    if !st.dirty {
                        return;
                    }
                    st.dirty = false;
                    st.last_write = Some(Instant::now());
                    (st.latest.clone(), st.latest_at_ms)
                };
                me.write(pending.0, pending.1);
            });
        }
    }
}

enum AttemptEnd {
    Done(Result<Payload, ActivityError>),
    Timeout(TimeoutType),
    Cancelled,
    /// Completed through an async activity handle (no payload: no result).
    AsyncCompleted(Option<Payload>),
    /// Failed through an async activity handle.
    AsyncFailed(Box<Failure>),
    /// Cancellation reported through an async activity handle.
    AsyncCanceled(Vec<Payload>),
}

/// Waits for the outcome an async activity handle records for attempt `attempt` (the activity
/// returned `WillCompleteAsync`), enforcing the attempt's deadline and heartbeat timeout
/// (heartbeats arrive as events from the handle). A cancellation request is recorded for the
/// handle's heartbeats to report; the activity still has to report its cancellation.
async fn await_async_outcome(
    engine: &Engine,
    task: &ActivityTask,
    attempt: u32,
    attempt_deadline: Option<i64>,
    deadline_kind: TimeoutType,
) -> AttemptEnd {
    let db = &engine.db;
    let run = task.run_id.clone();
    let okey = async_outcome_key(task.seq, attempt);
    let hkey = async_heartbeat_key(task.seq);
    let outcome_key = || dbos_core::WakeKey::Event(run.clone(), okey.clone());
    let beat_key = || dbos_core::WakeKey::Event(run.clone(), hkey.clone());
    let mut last_beat = Instant::now();
    // The handle's last heartbeat time seen: a heartbeat is a new value, not a wake-up.
    let mut seen_beat: Option<String> = None;
    let mut cancel_recorded = false;
    let hb_timeout = task.heartbeat_timeout;
    // Each waiter is registered before its key is read; the outcome is read again only when
    // its waiter fires (or its read failed), not on every heartbeat.
    let mut outcome_waiter = db.register_waiter(outcome_key());
    let mut beat_waiter = db.register_waiter(beat_key());
    let mut read_outcome = true;
    let mut read_failed = false;
    loop {
        if read_outcome {
            read_outcome = false;
            read_failed = false;
            match db.get_event(&run, &okey, None).await {
                Ok(Some(text)) => match AsyncOutcome::from_text(&text) {
                    Ok(AsyncOutcome::Completed { result }) => {
                        return AttemptEnd::AsyncCompleted(result.into_iter().next());
                    }
                    Ok(AsyncOutcome::Failed { failure }) => {
                        return AttemptEnd::AsyncFailed(Box::new(failure));
                    }
                    Ok(AsyncOutcome::Canceled { details }) => {
                        return AttemptEnd::AsyncCanceled(details);
                    }
                    Err(e) => {
                        let app = ApplicationFailure::builder(anyhow::anyhow!("{e}"))
                            .non_retryable(true)
                            .build();
                        return AttemptEnd::Done(Err(ActivityError::Application(Box::new(app))));
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    read_failed = true;
                    warn!(run_id = %run, error = %e, "cannot read the asynchronous activity outcome; retrying")
                }
            }
        }
        let deadline_sleep = async {
            match attempt_deadline {
                Some(d) => {
                    let wait = u64::try_from(d - dbos_core::now_ms()).unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(wait)).await
                }
                None => std::future::pending().await,
            }
        };
        let beat_check = async {
            match hb_timeout {
                Some(t) => tokio::time::sleep(t.saturating_sub(last_beat.elapsed())).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // A failed read is retried at the fallback interval, else only on a wake-up.
            _ = async {
                if read_failed {
                    outcome_waiter.wait(None).await
                } else {
                    outcome_waiter.wait_up_to(IDLE_RECHECK).await
                }
            } => {
                outcome_waiter = db.register_waiter(outcome_key());
                read_outcome = true;
            }
            _ = beat_waiter.wait_up_to(IDLE_RECHECK) => {
                beat_waiter = db.register_waiter(beat_key());
                if let Ok(Some(at)) = db.get_event(&run, &hkey, None).await
                    && seen_beat.as_ref() != Some(&at)
                {
                    seen_beat = Some(at);
                    last_beat = Instant::now();
                }
            }
            _ = deadline_sleep => return AttemptEnd::Timeout(deadline_kind),
            _ = beat_check => {
                if hb_timeout.is_some_and(|t| last_beat.elapsed() >= t) {
                    return AttemptEnd::Timeout(TimeoutType::Heartbeat);
                }
            }
            _ = task.cancel.cancelled(), if !cancel_recorded => {
                cancel_recorded = true;
                if let Err(e) = db.set_event(&run, &cancel_requested_key(task.seq), "").await {
                    warn!(run_id = %run, error = %e, "cannot record the cancellation request");
                }
            }
            _ = engine.halt.cancelled() => return AttemptEnd::Cancelled,
        }
    }
}

/// Records that attempt `attempt` of the task waits for asynchronous completion (and, for a
/// workflow's activity, which sequence number its activity id names).
async fn record_async_pending(engine: &Engine, task: &ActivityTask, attempt: u32) {
    let mut events = vec![(async_pending_key(task.seq), attempt.to_string())];
    if !task.standalone() {
        events.push((
            async_activity_id_key(&task.activity_id),
            task.seq.to_string(),
        ));
    }
    if let Err(e) = engine.db.set_events(&task.run_id, &events).await {
        warn!(run_id = %task.run_id, error = %e, "cannot record that the activity completes asynchronously");
    }
}

/// Executes an activity to its resolution (all attempts). Never panics on bad data.
pub(crate) async fn execute(engine: Arc<Engine>, mut task: ActivityTask) -> ActivityResolution {
    let Some(invocation) = engine.activities.get(&task.activity_type) else {
        let names = engine.activities.names();
        let message = if names.is_empty() {
            format!(
                "Activity {} is not registered on this worker, no available activities.",
                task.activity_type
            )
        } else {
            format!(
                "Activity {} is not registered on this worker, available activities: {}",
                task.activity_type,
                names.join(", ")
            )
        };
        warn!(run_id = %task.run_id, activity_type = %task.activity_type, "{message}");
        let app = ApplicationFailure::builder(anyhow::anyhow!(message))
            .type_name("NotFoundError".to_string())
            .non_retryable(true)
            .build();
        let cause = engine.data_converter.to_failure(
            &activity_context_data(),
            OutgoingError::Activity(OutgoingActivityError::Application(Box::new(app))),
        );
        return failed(activity_failure(
            &engine,
            &task,
            RetryState::NonRetryableFailure,
            cause,
        ));
    };

    // A recovered task's durable state, read concurrently: its attempt number, heartbeat
    // details, and the attempt (if any) that already returned `WillCompleteAsync`.
    let mut async_pending: Option<u32> = None;
    if task.recovered && !task.local {
        let run_id = task.run_id.clone();
        let (akey, hkey, pkey) = (
            attempt_key(task.seq),
            heartbeat_key(task.seq),
            async_pending_key(task.seq),
        );
        let (a, h, p) = tokio::join!(
            engine.db.get_event(&run_id, &akey, None),
            engine.db.get_event(&run_id, &hkey, None),
            engine.db.get_event(&run_id, &pkey, None),
        );
        if let Ok(Some(a)) = a
            && let Ok(a) = a.parse::<u32>()
        {
            task.first_attempt = task.first_attempt.max(a);
        }
        if let Ok(Some(h)) = h
            && let Ok(details) = decode_payloads("heartbeat details", &h)
        {
            task.heartbeat_details = details;
        }
        async_pending = p.ok().flatten().and_then(|a| a.parse().ok());
    }

    let schedule_deadline = task
        .schedule_to_close
        .map(|d| task.scheduled_at_ms + i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let throttle = match task.heartbeat_timeout {
        Some(t) => t.mul_f64(0.8),
        None => engine.settings.default_heartbeat_throttle,
    }
    .min(engine.settings.max_heartbeat_throttle);
    let hb = Arc::new(HeartbeatShared {
        engine: engine.clone(),
        run_id: task.run_id.clone(),
        key: heartbeat_key(task.seq),
        time_key: heartbeat_time_key(task.seq),
        throttle,
        state: Mutex::new(HeartbeatState {
            latest: task.heartbeat_details.clone(),
            latest_at_ms: 0,
            last_beat: Instant::now(),
            last_write: None,
            dirty: false,
            flush_scheduled: false,
        }),
    });

    let mut attempt = task.first_attempt.max(1);
    let mut details = task.heartbeat_details.clone();
    loop {
        if task.cancel.is_cancelled() {
            return cancelled_resolution(&engine, &task.activity_type, &task.activity_id, None);
        }
        let now_ms = dbos_core::now_ms();
        if let Some(deadline) = schedule_deadline
            && now_ms >= deadline
        {
            let cause = timeout_failure(TimeoutType::ScheduleToClose, &details);
            return failed(activity_failure(&engine, &task, RetryState::Timeout, cause));
        }
        // Wait for an execution slot (schedule-to-start covers the wait).
        let permit = {
            let acquire = engine.activity_slots.clone().acquire_owned();
            let limit = task.schedule_to_start.map(|d| tokio::time::sleep(d));
            tokio::select! {
                p = acquire => p.ok(),
                _ = async { match limit { Some(l) => l.await, None => std::future::pending().await } } => {
                    let cause = timeout_failure(TimeoutType::ScheduleToStart, &details);
                    return failed(activity_failure(&engine, &task, RetryState::Timeout, cause));
                }
                _ = task.cancel.cancelled() => {
                    return cancelled_resolution(&engine, &task.activity_type, &task.activity_id, None);
                }
            }
        };
        let started_ms = dbos_core::now_ms();
        let mut attempt_deadline = task
            .start_to_close
            .map(|d| started_ms + i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut deadline_kind = TimeoutType::StartToClose;
        if let Some(sd) = schedule_deadline
            && attempt_deadline.is_none_or(|a| sd < a)
        {
            attempt_deadline = Some(sd);
            deadline_kind = TimeoutType::ScheduleToClose;
        }
        {
            let mut st = hb.lock();
            st.last_beat = Instant::now();
        }
        let info = ActivityInfo {
            task_token: TaskTokenParts {
                run: task.run_id.clone(),
                seq: task.seq,
                attempt,
            }
            .encode(),
            workflow_type: (!task.standalone()).then(|| task.workflow_type.clone()),
            namespace: engine.namespace.clone(),
            workflow_id: (!task.standalone()).then(|| task.workflow_id.clone()),
            workflow_run_id: (!task.standalone()).then(|| task.run_id.clone()),
            activity_id: task.activity_id.clone(),
            activity_type: task.activity_type.clone(),
            task_queue: engine.task_queue.clone(),
            heartbeat_timeout: task.heartbeat_timeout,
            scheduled_time: Some(system_time_ms(task.scheduled_at_ms)),
            started_time: Some(system_time_ms(started_ms)),
            deadline: attempt_deadline.map(system_time_ms),
            attempt,
            current_attempt_scheduled_time: Some(system_time_ms(started_ms)),
            retry_policy: Some(task.retry.clone().into()),
            is_local: task.local,
            priority: Priority::default(),
            activity_run_id: task.standalone().then(|| {
                task.run_id
                    .strip_prefix(temporal_compat_client::protocol::ACTIVITY_RUN_PREFIX)
                    .unwrap_or(&task.run_id)
                    .to_string()
            }),
        };
        let attempt_cancel = task.cancel.child_token();
        let sink: Option<Arc<dyn HeartbeatSink>> = if task.local {
            None
        } else {
            Some(Arc::new(HeartbeatRecorder(hb.clone())))
        };
        let ctx = ActivityContext::new(
            info,
            task.headers.clone(),
            engine.data_converter.clone(),
            attempt_cancel.clone(),
            details.clone(),
            sink,
            engine.client.clone(),
        );
        let resumed_async = async_pending == Some(attempt);
        engine
            .running_activities
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let mut fut = invocation(
            task.arguments.clone(),
            ctx,
            engine.activity_interceptors.clone(),
        );
        let end = {
            let deadline_sleep = async {
                match attempt_deadline {
                    Some(d) => {
                        let wait = u64::try_from(d - dbos_core::now_ms()).unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(deadline_sleep);
            let hb_timeout = if task.local {
                None
            } else {
                task.heartbeat_timeout
            };
            let halted = engine.halt.clone();
            if resumed_async {
                // This attempt already returned WillCompleteAsync before a restart: its outcome
                // comes from the async handle, the activity is not run again.
                drop(fut);
                fut = Box::pin(async { Err(ActivityError::WillCompleteAsync) });
            }
            loop {
                let check = hb_timeout.map(|t| (t / 4).max(Duration::from_millis(10)));
                tokio::select! {
                    r = &mut fut => break AttemptEnd::Done(r),
                    _ = &mut deadline_sleep => break AttemptEnd::Timeout(deadline_kind),
                    _ = halted.cancelled() => {
                        attempt_cancel.cancel();
                        break AttemptEnd::Cancelled;
                    }
                    _ = async { match check { Some(c) => tokio::time::sleep(c).await, None => std::future::pending().await } } => {
                        if let Some(t) = hb_timeout && hb.lock().last_beat.elapsed() > t {
                            break AttemptEnd::Timeout(TimeoutType::Heartbeat);
                        }
                    }
                }
            }
        };
        let end = match end {
            AttemptEnd::Done(Err(ActivityError::WillCompleteAsync)) if !task.local => {
                if !resumed_async {
                    record_async_pending(&engine, &task, attempt).await;
                    async_pending = Some(attempt);
                }
                debug!(run_id = %task.run_id, seq = task.seq, attempt, "activity completes asynchronously");
                let end =
                    await_async_outcome(&engine, &task, attempt, attempt_deadline, deadline_kind)
                        .await;
                // The handle may have recorded heartbeat details for the next attempt.
                if let Ok(Some(h)) = engine
                    .db
                    .get_event(&task.run_id, &heartbeat_key(task.seq), None)
                    .await
                    && let Ok(d) = decode_payloads("heartbeat details", &h)
                {
                    hb.lock().latest = d;
                }
                end
            }
            other => other,
        };
        engine
            .running_activities
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        engine.changed.notify_waiters();
        drop(permit);
        details = hb.lock().latest.clone();

        let failure = match end {
            AttemptEnd::Done(Ok(payload)) => {
                return ActivityResolution {
                    status: Some(activity_resolution::Status::Completed(Success {
                        result: Some(payload),
                    })),
                };
            }
            AttemptEnd::AsyncCompleted(result) => {
                return ActivityResolution {
                    status: Some(activity_resolution::Status::Completed(Success { result })),
                };
            }
            AttemptEnd::AsyncCanceled(d) => {
                let f = Failure {
                    message: "Activity cancelled".to_string(),
                    failure_info: Some(FailureInfo::CanceledFailureInfo(
                        temporalio_common_wasm::protos::temporal::api::failure::v1::CanceledFailureInfo {
                            details: (!d.is_empty()).then_some(Payloads { payloads: d }),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                };
                return cancelled_resolution(
                    &engine,
                    &task.activity_type,
                    &task.activity_id,
                    Some(f),
                );
            }
            AttemptEnd::AsyncFailed(f) => *f,
            AttemptEnd::Cancelled => {
                // The worker is halting: no resolution is recorded (the run is abandoned too).
                return cancelled_resolution(&engine, &task.activity_type, &task.activity_id, None);
            }
            AttemptEnd::Done(Err(ActivityError::Cancelled { details: d })) => {
                let f = engine.data_converter.to_failure(
                    &activity_context_data(),
                    OutgoingError::Activity(OutgoingActivityError::Cancelled { details: d }),
                );
                return cancelled_resolution(
                    &engine,
                    &task.activity_type,
                    &task.activity_id,
                    Some(f),
                );
            }
            AttemptEnd::Done(Err(ActivityError::Application(app))) => {
                engine.data_converter.to_failure(
                    &activity_context_data(),
                    OutgoingError::Activity(OutgoingActivityError::Application(app)),
                )
            }
            AttemptEnd::Done(Err(other)) => {
                let app = ApplicationFailure::builder(anyhow::anyhow!(
                    "activity returned an unsupported error (local activities cannot complete asynchronously): {other:?}"
                ))
                .non_retryable(true)
                .build();
                engine.data_converter.to_failure(
                    &activity_context_data(),
                    OutgoingError::Activity(OutgoingActivityError::Application(Box::new(app))),
                )
            }
            AttemptEnd::Timeout(kind) => {
                let f = timeout_failure(kind, &details);
                let retryable = if task.local {
                    kind == TimeoutType::StartToClose
                } else {
                    matches!(kind, TimeoutType::StartToClose | TimeoutType::Heartbeat)
                };
                if !retryable {
                    return failed(activity_failure(&engine, &task, RetryState::Timeout, f));
                }
                f
            }
        };

        let decision = retry_decision(&task.retry, attempt, &failure);
        let delay = match decision {
            Ok(delay) => {
                if let Some(deadline) = schedule_deadline
                    && dbos_core::now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)
                        >= deadline
                {
                    return failed(activity_failure(
                        &engine,
                        &task,
                        RetryState::Timeout,
                        failure,
                    ));
                }
                delay
            }
            Err(state) => return failed(activity_failure(&engine, &task, state, failure)),
        };
        debug!(run_id = %task.run_id, seq = task.seq, attempt, ?delay, "activity attempt failed; retrying");
        if task.local && delay > task.local_retry_threshold {
            return ActivityResolution {
                status: Some(activity_resolution::Status::Backoff(DoBackoff {
                    attempt: attempt + 1,
                    backoff_duration: Some(proto_duration(delay)),
                    original_schedule_time: Some(super::timestamp_ms(task.scheduled_at_ms)),
                })),
            };
        }
        if !task.local {
            hb.flush().await;
            let next = (attempt + 1).to_string();
            if let Err(e) = engine
                .db
                .set_event(&task.run_id, &attempt_key(task.seq), &next)
                .await
            {
                warn!(run_id = %task.run_id, error = %e, "cannot record activity attempt");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = task.cancel.cancelled() => {
                return cancelled_resolution(&engine, &task.activity_type, &task.activity_id, None);
            }
            _ = engine.halt.cancelled() => {
                return cancelled_resolution(&engine, &task.activity_type, &task.activity_id, None);
            }
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_defaults_and_backoff() {
        let p = normalize_retry(None);
        assert_eq!(
            duration_of(&p.initial_interval),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            duration_of(&p.maximum_interval),
            Some(Duration::from_secs(100))
        );
        assert_eq!(p.backoff_coefficient, 2.0);
        assert_eq!(backoff(&p, 1), Duration::from_secs(1));
        assert_eq!(backoff(&p, 2), Duration::from_secs(2));
        assert_eq!(backoff(&p, 4), Duration::from_secs(8));
        assert_eq!(backoff(&p, 30), Duration::from_secs(100));
    }

    #[test]
    fn non_retryable_types_and_attempts() {
        let mut p = normalize_retry(None);
        p.non_retryable_error_types = vec!["Fatal".into()];
        p.maximum_attempts = 3;
        let app = |t: &str, nr: bool| {
            Failure {
            failure_info: Some(FailureInfo::ApplicationFailureInfo(
                temporalio_common_wasm::protos::temporal::api::failure::v1::ApplicationFailureInfo {
                    r#type: t.into(),
                    non_retryable: nr,
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
        };
        assert_eq!(
            retry_decision(&p, 1, &app("fatal", false)),
            Err(RetryState::NonRetryableFailure)
        );
        assert_eq!(
            retry_decision(&p, 1, &app("", true)),
            Err(RetryState::NonRetryableFailure)
        );
        assert_eq!(
            retry_decision(&p, 1, &app("", false)),
            Ok(Duration::from_secs(1))
        );
        assert_eq!(
            retry_decision(&p, 3, &app("", false)),
            Err(RetryState::MaximumAttemptsReached)
        );
    }
}

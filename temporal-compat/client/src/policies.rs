//! Workflow-level policies shared by the client and the worker: cron schedules, run and
//! execution deadlines, and the parent close policy of child workflows. Not part of the
//! user-facing API.
//!
//! - **Cron** ([`CronSchedule`]): Temporal's cron grammar (standard 5-field cron, the `@hourly`
//!   style descriptors and `@every <duration>`), evaluated in UTC. A run of a cron chain is
//!   scheduled at the first cron time after the previous run's start that is not before its
//!   close ([`CronSchedule::next_after`]); the first run waits for the first cron time after the
//!   start.
//! - **Deadlines** ([`run_deadline`]): a run expires at the earlier of its chain's execution
//!   deadline (`RunAttributes::execution_deadline_ms`, fixed at the first start) and its own run
//!   timeout counted from the run's start (its creation, or the end of its start delay).
//! - **Parent close** ([`apply_parent_close_policy`]): when a parent run closes, its open
//!   children are terminated, asked to cancel, or left alone, per the policy each child was
//!   started with. Whoever records the parent's outcome applies it first, so a crash between the
//!   two leaves the parent open (it is recovered and applies it again), and once more after it:
//!   a child is created only while its parent is PENDING, under a share lock on the parent's
//!   row (`EnqueueRequest::only_while_parent_pending`), so a child whose start was in flight
//!   during the first sweep is either committed before the parent's close (and found by the
//!   second sweep) or not created at all.

use std::time::Duration;

use chrono::{DateTime, Timelike as _, Utc};
use dbos_core::{ListFilter, RunState, SystemDatabase, WorkflowStatus};
use tracing::{debug, info};

use crate::protocol::{self, CancelRequest, InboxMessage, ProtocolError, RunAttributes};

// ------------------------------------------------------------------------------------------
// Cron schedules
// ------------------------------------------------------------------------------------------

/// A parsed cron schedule.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    kind: CronKind,
}

#[derive(Debug, Clone)]
enum CronKind {
    /// A 5-field pattern (descriptors are rewritten to one).
    Pattern(Box<croner::Cron>),
    /// `@every <duration>`: whole seconds, at least one.
    Every(u64),
}

/// Why a cron schedule is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron_schedule `{schedule}`: {reason}")]
pub struct CronError {
    /// The schedule as given.
    pub schedule: String,
    /// Why it is refused.
    pub reason: String,
}

impl CronSchedule {
    /// Parses Temporal's cron grammar: `minute hour day-of-month month day-of-week`, one of
    /// `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`, or
    /// `@every <duration>` (Go duration syntax: `90s`, `1h30m`, `1.5m`). Seconds fields and
    /// time-zone prefixes (`CRON_TZ=`) are refused.
    pub fn parse(schedule: &str) -> Result<Self, CronError> {
        let refuse = |reason: &str| CronError {
            schedule: schedule.to_string(),
            reason: reason.to_string(),
        };
        let s = schedule.trim();
        if s.is_empty() {
            return Err(refuse("the schedule is empty"));
        }
        if s.starts_with("CRON_TZ=") || s.starts_with("TZ=") {
            return Err(refuse(
                "time-zone prefixes are not supported by DBOSify; schedules are evaluated in UTC",
            ));
        }
        if let Some(rest) = s.strip_prefix("@every") {
            let d = parse_go_duration(rest.trim()).map_err(|e| refuse(&e))?;
            // Temporal (robfig/cron) rounds down to whole seconds, with a one-second minimum.
            return Ok(Self {
                kind: CronKind::Every(d.as_secs().max(1)),
            });
        }
        let lower = s.to_ascii_lowercase();
        let pattern = match cron_descriptor(&lower) {
            Some(p) => p.to_string(),
            None if lower.starts_with('@') => return Err(refuse("unknown descriptor")),
            None => s.to_string(),
        };
        let fields = pattern.split_whitespace().count();
        if fields != 5 {
            return Err(refuse(&format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
            )));
        }
        // Temporal's parser has no `L`, `W` or `#` (croner would accept them). Names such as
        // `JUL` or `WED` contain the letters, so they are removed before looking.
        const NAMES: [&str; 19] = [
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
            "SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT",
        ];
        let mut bare = pattern.to_ascii_uppercase();
        for name in NAMES {
            bare = bare.replace(name, "");
        }
        if bare.contains(['L', 'W', '#']) {
            return Err(refuse(
                "the cron extensions L, W and # are not supported (as by Temporal's server)",
            ));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(&pattern)
            .map_err(|e| refuse(&e.to_string()))?;
        Ok(Self {
            kind: CronKind::Pattern(Box::new(cron)),
        })
    }

    /// The first schedule time strictly after `after_ms` (epoch ms, UTC).
    pub fn next(&self, after_ms: i64) -> Option<i64> {
        match &self.kind {
            CronKind::Every(secs) => {
                let step = i64::try_from(*secs).ok()?.checked_mul(1000)?;
                Some(after_ms.div_euclid(1000) * 1000 + step)
            }
            CronKind::Pattern(cron) => {
                let t: DateTime<Utc> = DateTime::from_timestamp_millis(after_ms)?;
                // Cron times are whole minutes: start from the minute of `after_ms`, excluded.
                let t = t.with_second(0)?.with_nanosecond(0)?;
                let next = cron.find_next_occurrence(&t, false).ok()?;
                Some(next.timestamp_millis())
            }
        }
    }

    /// When the run after one that started at `start_ms` and closed at `close_ms` starts: the
    /// first schedule time after the start that is not before the close.
    pub fn next_after(&self, start_ms: i64, close_ms: i64) -> Option<i64> {
        let mut t = self.next(start_ms)?;
        // Bounded: a schedule time at least every year for any valid pattern.
        for _ in 0..1_000_000 {
            if t >= close_ms {
                return Some(t);
            }
            t = match &self.kind {
                // Jump straight past the close for fixed intervals.
                CronKind::Every(secs) => {
                    let step = i64::try_from(*secs).ok()?.checked_mul(1000)?;
                    let behind = close_ms - t;
                    t + (behind + step - 1) / step * step
                }
                CronKind::Pattern(_) => self.next(t)?,
            };
        }
        None
    }

    /// How long a run closing now waits (see [`Self::next_after`]).
    pub fn backoff(&self, start_ms: i64, now_ms: i64) -> Option<Duration> {
        let at = self.next_after(start_ms, now_ms)?;
        Some(Duration::from_millis(
            u64::try_from(at - now_ms).unwrap_or(0),
        ))
    }
}

/// The 5-field pattern (`minute hour day-of-month month day-of-week`) a cron descriptor such as
/// `@daily` stands for (exact, lower-case match); `None` for anything else.
pub(crate) fn cron_descriptor(text: &str) -> Option<&'static str> {
    Some(match text {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return None,
    })
}

/// Parses a Go duration (`300ms`, `1.5h`, `2h45m`); the units are `ns`, `us`/`µs`, `ms`, `s`,
/// `m`, `h`.
fn parse_go_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("`@every` needs a duration, e.g. `@every 30s`".into());
    }
    let bad = || format!("`{text}` is not a duration (use e.g. `30s`, `5m`, `1h30m`)");
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if !total.is_finite() || total <= 0.0 || total > 1e12 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

// ------------------------------------------------------------------------------------------
// Deadlines
// ------------------------------------------------------------------------------------------

/// Which timeout a deadline comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineKind {
    /// The chain's execution timeout: the chain ends, no retry, no further cron run.
    Execution,
    /// The run's own run timeout: retried per the retry policy (then the next cron run).
    Run,
}

/// When a run expires, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// Epoch milliseconds.
    pub at_ms: i64,
    /// Which timeout.
    pub kind: DeadlineKind,
}

/// When a run starts, in Temporal's terms: its creation, or the end of its start delay.
pub fn run_start_ms(status: &WorkflowStatus) -> i64 {
    status
        .delay_until_epoch_ms
        .map_or(status.created_at_ms, |d| d.max(status.created_at_ms))
}

/// The run's deadline: the earlier of its chain's execution deadline and its run timeout
/// (counted from [`run_start_ms`]); `None` without either.
pub fn run_deadline(status: &WorkflowStatus, attrs: &RunAttributes) -> Option<Deadline> {
    let execution = attrs.execution_deadline_ms.map(|at_ms| Deadline {
        at_ms,
        kind: DeadlineKind::Execution,
    });
    let run = attrs.run_timeout_ms.map(|ms| Deadline {
        at_ms: run_start_ms(status).saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)),
        kind: DeadlineKind::Run,
    });
    match (execution, run) {
        (Some(e), Some(r)) => Some(if r.at_ms < e.at_ms { r } else { e }),
        (e, r) => e.or(r),
    }
}

// ------------------------------------------------------------------------------------------
// Parent close policy
// ------------------------------------------------------------------------------------------

/// Stored value of `RunAttributes::parent_close_policy`: terminate the child.
pub const PARENT_CLOSE_TERMINATE: &str = "terminate";
/// Stored value: ask the child to cancel.
pub const PARENT_CLOSE_REQUEST_CANCEL: &str = "request_cancel";
/// Stored value: leave the child running.
pub const PARENT_CLOSE_ABANDON: &str = "abandon";

/// The stored form of a `temporal.api.enums.v1.ParentClosePolicy` value (unspecified and
/// unknown values are Temporal's default, TERMINATE).
pub fn parent_close_policy_name(proto_value: i32) -> &'static str {
    match proto_value {
        2 => PARENT_CLOSE_ABANDON,
        3 => PARENT_CLOSE_REQUEST_CANCEL,
        _ => PARENT_CLOSE_TERMINATE,
    }
}

/// Applies the parent close policy of every open child of `parent_run`: TERMINATE records
/// TERMINATED on the child's open run, REQUEST_CANCEL sends it a cancel request (once, by
/// idempotency key), ABANDON leaves it. Idempotent; returns how many children were acted on.
pub async fn apply_parent_close_policy(
    db: &SystemDatabase,
    parent_run: &str,
    identity: &str,
) -> Result<usize, ProtocolError> {
    let filter = ListFilter {
        states: vec![RunState::Enqueued, RunState::Delayed, RunState::Pending],
        attributes: Some(serde_json::json!({ "parent_run_id": parent_run })),
        ..Default::default()
    };
    let children = db.list_workflows(&filter).await?;
    let mut acted = 0;
    for child in children {
        let attrs = RunAttributes::of_run(&child)?;
        let run = child.workflow_id.as_str();
        match attrs
            .parent_close_policy
            .as_deref()
            .unwrap_or(PARENT_CLOSE_TERMINATE)
        {
            PARENT_CLOSE_ABANDON => {
                debug!(parent = %parent_run, child = %run, "parent closed; child abandoned");
                continue;
            }
            PARENT_CLOSE_REQUEST_CANCEL => {
                let request_id = format!("{parent_run}:parent_close");
                let msg = InboxMessage::Cancel(CancelRequest {
                    reason: "the parent workflow closed (parent close policy REQUEST_CANCEL)"
                        .into(),
                    identity: identity.to_string(),
                    request_id: Some(request_id.clone()),
                });
                let key = protocol::cancel_idempotency_key(run, &request_id);
                db.send(run, protocol::INBOX_TOPIC, &msg.encode(), Some(&key))
                    .await?;
                info!(parent = %parent_run, child = %run, "parent closed; cancel requested of the child");
            }
            _ => {
                let outcome = protocol::TerminalOutcome::Terminated {
                    reason: "the parent workflow closed (parent close policy TERMINATE)".into(),
                    details: Vec::new(),
                    identity: (!identity.is_empty()).then(|| identity.to_string()),
                };
                db.cancel(run, Some(&outcome.to_error_text())).await?;
                info!(parent = %parent_run, child = %run, "parent closed; child terminated");
                // Its own children follow the policies they were started with.
                Box::pin(apply_parent_close_policy(db, run, identity)).await?;
            }
        }
        acted += 1;
    }
    Ok(acted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn cron_patterns_and_next_times() {
        let every_minute = CronSchedule::parse("* * * * *").unwrap();
        assert_eq!(
            every_minute.next(ms("2024-05-01T10:00:30Z")),
            Some(ms("2024-05-01T10:01:00Z"))
        );
        // Strictly after: a time on the minute gives the next minute.
        assert_eq!(
            every_minute.next(ms("2024-05-01T10:01:00Z")),
            Some(ms("2024-05-01T10:02:00Z"))
        );
        let quarter = CronSchedule::parse("*/15 9-17 * * 1-5").unwrap();
        // Friday 17:50 → Monday 09:00.
        assert_eq!(
            quarter.next(ms("2024-05-03T17:50:00Z")),
            Some(ms("2024-05-06T09:00:00Z"))
        );
        let hourly = CronSchedule::parse("@hourly").unwrap();
        assert_eq!(
            hourly.next(ms("2024-05-01T10:20:00Z")),
            Some(ms("2024-05-01T11:00:00Z"))
        );
        let daily = CronSchedule::parse("@daily").unwrap();
        assert_eq!(
            daily.next(ms("2024-05-01T10:20:00Z")),
            Some(ms("2024-05-02T00:00:00Z"))
        );
        let every = CronSchedule::parse("@every 1m30s").unwrap();
        assert_eq!(
            every.next(ms("2024-05-01T10:00:00.400Z")),
            Some(ms("2024-05-01T10:01:30Z"))
        );
        assert!(
            CronSchedule::parse("@every 300ms")
                .unwrap()
                .next(0)
                .is_some_and(|t| t == 1000)
        );
    }

    #[test]
    fn next_run_is_the_first_time_after_start_not_before_close() {
        let s = CronSchedule::parse("* * * * *").unwrap();
        // A short run: the next minute after its start.
        assert_eq!(
            s.next_after(ms("2024-05-01T10:00:00Z"), ms("2024-05-01T10:00:20Z")),
            Some(ms("2024-05-01T10:01:00Z"))
        );
        // A run that overran three cron times: skipped ones are not run.
        assert_eq!(
            s.next_after(ms("2024-05-01T10:00:00Z"), ms("2024-05-01T10:03:10Z")),
            Some(ms("2024-05-01T10:04:00Z"))
        );
        let e = CronSchedule::parse("@every 10s").unwrap();
        assert_eq!(e.next_after(0, 35_000), Some(40_000));
        assert_eq!(e.next_after(0, 5_000), Some(10_000));
        assert_eq!(
            e.backoff(0, 5_000),
            Some(Duration::from_millis(5_000)),
            "waits until the next time"
        );
    }

    #[test]
    fn cron_refusals_are_clear() {
        for (bad, needle) in [
            ("", "empty"),
            ("* * * *", "5 fields"),
            ("0 * * * * *", "5 fields"),
            ("CRON_TZ=Europe/Paris 0 9 * * *", "UTC"),
            ("@fortnightly", "descriptor"),
            ("0 0 L * *", "L, W and #"),
            ("0 0 15W * *", "L, W and #"),
            ("0 0 * * 5#3", "L, W and #"),
            ("@every", "duration"),
            ("@every soon", "duration"),
            ("61 * * * *", "61"),
        ] {
            let e = CronSchedule::parse(bad).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("cron_schedule"), "{bad}: {text}");
            assert!(
                text.to_lowercase().contains(&needle.to_lowercase()),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn names_with_extension_letters_are_names() {
        let s = CronSchedule::parse("0 9 1 JUL WED").expect("names parse");
        assert!(s.next(0).is_some());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(parse_go_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("-5s").is_err());
    }

    #[test]
    fn deadlines_pick_the_earlier_timeout() {
        let mut status = crate::protocol::tests::row(RunState::Enqueued, None, None);
        status.created_at_ms = 1_000;
        status.updated_at_ms = 1_000;
        let mut attrs = RunAttributes::new("W", "wf", "q");
        assert_eq!(run_deadline(&status, &attrs), None);
        attrs.run_timeout_ms = Some(500);
        assert_eq!(
            run_deadline(&status, &attrs),
            Some(Deadline {
                at_ms: 1_500,
                kind: DeadlineKind::Run
            })
        );
        // A delayed run's timeout counts from the end of its delay.
        status.delay_until_epoch_ms = Some(3_000);
        assert_eq!(run_deadline(&status, &attrs).unwrap().at_ms, 3_500);
        attrs.execution_deadline_ms = Some(3_200);
        assert_eq!(
            run_deadline(&status, &attrs),
            Some(Deadline {
                at_ms: 3_200,
                kind: DeadlineKind::Execution
            })
        );
    }

    #[test]
    fn parent_close_policy_names() {
        assert_eq!(parent_close_policy_name(0), PARENT_CLOSE_TERMINATE);
        assert_eq!(parent_close_policy_name(1), PARENT_CLOSE_TERMINATE);
        assert_eq!(parent_close_policy_name(2), PARENT_CLOSE_ABANDON);
        assert_eq!(parent_close_policy_name(3), PARENT_CLOSE_REQUEST_CANCEL);
    }
}

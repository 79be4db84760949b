//! The schedule firer every [`crate::Worker`] runs beside its claim loop: it fires the
//! namespace's due schedules (see `temporal_compat_client::schedules`) and sleeps until the next
//! fire time, a schedule change ([`WakeKey::Schedules`]), the completion of a run a schedule
//! waits for (buffered starts), or the fallback interval — never a tight poll.
//!
//! Workers of any task queue of the namespace fire any schedule; several schedulers (in one
//! process or many) share the work through `FOR UPDATE SKIP LOCKED`, and a nominal time is
//! started at most once whoever fires it.

use std::time::Duration;

use dbos_core::{ScheduleWakeup, SystemDatabase, WakeKey};
use futures::future::select_all;
use temporal_compat_client::schedules::fire_due;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Most schedules evaluated in one round before re-reading the next wake-up.
const ROUND: usize = 100;
/// Most finishing runs watched at once (others are found by the fallback re-check).
const MAX_WATCHED_RUNS: usize = 256;
/// Longest sleep without a wake-up (a schedule change or a watched run's completion wakes the
/// scheduler at once).
const IDLE_RECHECK: Duration = Duration::from_secs(30);
/// Pause after a failed round (database trouble).
const FAILURE_PAUSE: Duration = Duration::from_secs(1);

/// Fires due schedules until `stop` is cancelled.
pub(crate) async fn run(db: SystemDatabase, stop: CancellationToken) {
    while !stop.is_cancelled() {
        // Register before probing: a change committed during the probe still wakes us.
        let changed = db.register_waiter(WakeKey::Schedules);
        let wakeup = match fire_round(&db).await {
            Ok(Some(w)) => w,
            // A full round: more may be due at once.
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, "firing due schedules failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(FAILURE_PAUSE) => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
        };
        let finishing: Vec<_> = wakeup
            .watch_runs
            .iter()
            .take(MAX_WATCHED_RUNS)
            .map(|r| db.register_waiter(WakeKey::Completion(r.clone())))
            .collect();
        let deadline = wakeup.due_at_ms.map(|at| {
            let wait = u64::try_from(at.saturating_sub(dbos_core::now_ms())).unwrap_or(0);
            Instant::now() + Duration::from_millis(wait)
        });
        debug!(due_at_ms = ?wakeup.due_at_ms, watched = finishing.len(), "scheduler sleeping");
        // Every schedule change and every run completion notifies (and a lost LISTEN
        // connection wakes every waiter when it is back), so the sleep lasts until the next
        // fire time, at most IDLE_RECHECK; only when some finishing runs are not watched does
        // the notifier's fallback interval cap it.
        let unwatched = wakeup.watch_runs.len() > finishing.len();
        let limit = deadline.map_or(IDLE_RECHECK, |d| {
            d.saturating_duration_since(Instant::now())
                .min(IDLE_RECHECK)
        });
        let any_finished = async {
            if finishing.is_empty() {
                std::future::pending::<()>().await;
            } else {
                select_all(finishing.iter().map(|w| Box::pin(w.wait_up_to(limit)))).await;
            }
        };
        let change = async {
            if unwatched {
                changed.wait(deadline).await
            } else {
                changed.wait_up_to(limit).await
            }
        };
        tokio::select! {
            _ = change => {}
            _ = any_finished => {}
            _ = stop.cancelled() => break,
        }
    }
}

/// Fires up to [`ROUND`] due schedules. `None` when the round was full (more may be due at
/// once); otherwise when to look again.
async fn fire_round(db: &SystemDatabase) -> Result<Option<ScheduleWakeup>, dbos_core::Error> {
    if fire_due(db, ROUND).await? == ROUND {
        return Ok(None);
    }
    db.next_schedule_wakeup().await.map(Some)
}

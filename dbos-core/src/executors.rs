//! Executors: each worker process registers an executor id with a lease it renews. When a lease
//! lapses, a live executor puts the dead executor's PENDING runs back in their queues; a
//! restarted executor recovers its own PENDING runs at once.
//!
//! # Takeover rules
//!
//! [`SystemDatabase::take_over_lapsed`] runs in one statement (one transaction):
//!
//! 1. Executors whose `lease_expires_at_ms` is in the past (other than the taker) are locked
//!    `FOR UPDATE SKIP LOCKED` — two takers never process the same dead executor — and deleted.
//! 2. Their PENDING runs that have a queue go back to it: ENQUEUED, `executor_id` NULL,
//!    `started_at_epoch_ms` NULL, recovery attempts + 1. The deadline is kept (a taken-over run
//!    does not get a fresh timeout). The next claim — by any executor — runs them, so the
//!    queue's limits keep holding.
//! 3. Their PENDING runs **without** a queue (rows written by other DBOS tools) cannot be
//!    re-enqueued: they are assigned to the taker and stay PENDING (recovery attempts + 1); the
//!    taker finds them with [`SystemDatabase::recover_own_runs`].
//! 4. *Orphans*: a PENDING run whose `executor_id` has no row in `dbosify_executors` at all (it
//!    never registered, or its row was removed) and which started (or, lacking a start time, was
//!    last updated) more than one lease ago is treated like a run of a lapsed executor. A process
//!    that claims without registering an executor therefore has no liveness guarantee: its runs
//!    are taken over after one lease. "One lease" is the taker's lease when the taker was
//!    registered by this process, else [`DEFAULT_LEASE`]. A registered executor whose row was
//!    deleted while it was alive (it missed its renewals) re-creates the row at its next renewal,
//!    long before its runs become orphans.
//!
//! Each taken-over run's new claim overwrites `executor_id`, so a slow-but-alive former owner's
//! completion (`complete` with its executor id) finds the row held by someone else and is
//! refused: only the current holder records the outcome.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use sqlx::postgres::PgRow;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::SystemDatabase;
use crate::db::validate_text;
use crate::error::{Error, Result};
use crate::notifier::WakeKey;
use crate::workflows::{STATUS_COLUMNS, WorkflowStatus, status_from_row};

/// The lease assumed for orphaned runs when the taker's own lease is unknown to this process.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// How an executor registers.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Stable id of the executor (a restarted process with the same id recovers its runs).
    pub executor_id: String,
    /// Application version it runs.
    pub application_version: Option<String>,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// How often the lease is renewed and lapsed leases are looked for.
    pub renew_every: Duration,
}

impl ExecutorOptions {
    /// Options with a 10 s lease renewed every 2 s.
    pub fn new(executor_id: impl Into<String>) -> Self {
        Self {
            executor_id: executor_id.into(),
            application_version: None,
            lease: DEFAULT_LEASE,
            renew_every: Duration::from_secs(2),
        }
    }
}

/// A registered executor; its background task renews the lease and takes over lapsed
/// executors' runs until it is dropped or [`ExecutorHandle::shutdown`] is called.
///
/// Dropping the handle stops the task but leaves the executor's row: to everyone else the
/// executor looks dead once its lease lapses (which is what a crash looks like too).
#[derive(Debug)]
pub struct ExecutorHandle {
    executor_id: String,
    db: SystemDatabase,
    /// Dropping or sending on it stops the lease task.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ExecutorHandle {
    /// The executor id.
    pub fn executor_id(&self) -> &str {
        &self.executor_id
    }

    /// Stops renewing and removes the executor's row (its PENDING runs stay PENDING and are
    /// recovered when it restarts or taken over once its lease would have lapsed).
    ///
    /// The row is removed only when the executor holds no PENDING run; otherwise it is left
    /// with its last lease, so the runs are taken over exactly when the lease lapses (or
    /// recovered by a restart with the same id before that).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            warn!(executor_id = %self.executor_id, error = %e, "lease task ended abnormally");
        }
        let sql = self.db.sql(
            "DELETE FROM {s}.dbosify_executors e
              WHERE e.executor_id = $1
                AND NOT EXISTS (SELECT 1 FROM {s}.workflow_status w
                                 WHERE w.status = 'PENDING' AND w.executor_id = $1)",
        );
        let id = self.executor_id.clone();
        let done = self
            .db
            .retry("unregister executor", || {
                sqlx::query(&sql).bind(&id).execute(self.db.pool())
            })
            .await;
        forget_lease(&self.db, &self.executor_id);
        match done {
            Ok(r) if r.rows_affected() == 1 => {
                info!(executor_id = %self.executor_id, "executor unregistered");
            }
            Ok(_) => info!(
                executor_id = %self.executor_id,
                "executor stopped with runs in flight; its lease is left to lapse"
            ),
            Err(e) => {
                warn!(executor_id = %self.executor_id, error = %e, "cannot unregister executor")
            }
        }
    }
}

/// (database URL, schema, executor id) → lease, for executors registered by this process.
type Leases = HashMap<(String, String, String), Duration>;

static LEASES: LazyLock<Mutex<Leases>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn lease_key(db: &SystemDatabase, executor_id: &str) -> (String, String, String) {
    (
        db.config().database_url.clone(),
        db.schema().to_string(),
        executor_id.to_string(),
    )
}

fn remember_lease(db: &SystemDatabase, executor_id: &str, lease: Duration) {
    if let Ok(mut m) = LEASES.lock() {
        m.insert(lease_key(db, executor_id), lease);
    }
}

fn forget_lease(db: &SystemDatabase, executor_id: &str) {
    if let Ok(mut m) = LEASES.lock() {
        m.remove(&lease_key(db, executor_id));
    }
}

fn known_lease(db: &SystemDatabase, executor_id: &str) -> Option<Duration> {
    LEASES
        .lock()
        .ok()
        .and_then(|m| m.get(&lease_key(db, executor_id)).copied())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl SystemDatabase {
    /// Registers (or re-registers) an executor and starts its lease task.
    ///
    /// The task renews the lease every `renew_every` and then calls
    /// [`SystemDatabase::take_over_lapsed`] for this executor. If the row was deleted meanwhile
    /// (the lease lapsed and another executor took the runs over), the renewal re-creates it and
    /// logs a warning.
    pub async fn register_executor(&self, options: ExecutorOptions) -> Result<ExecutorHandle> {
        validate_text("executor id", &options.executor_id)?;
        if let Some(v) = &options.application_version {
            validate_text("application version", v)?;
        }
        if options.lease.is_zero() || options.renew_every.is_zero() {
            return Err(Error::InvalidName {
                what: "executor lease",
                value: format!(
                    "{:?} renewed every {:?}",
                    options.lease, options.renew_every
                ),
                reason: "lease and renewal interval must be positive",
            });
        }
        if options.renew_every >= options.lease {
            warn!(
                executor_id = %options.executor_id,
                lease = ?options.lease,
                renew_every = ?options.renew_every,
                "lease renewed no more often than it lasts: it will lapse between renewals"
            );
        }
        let now = crate::now_ms();
        let sql = self.sql(
            "INSERT INTO {s}.dbosify_executors
                 (executor_id, application_version, started_at_epoch_ms, lease_expires_at_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (executor_id) DO UPDATE
                SET application_version = EXCLUDED.application_version,
                    started_at_epoch_ms = EXCLUDED.started_at_epoch_ms,
                    lease_expires_at_ms = EXCLUDED.lease_expires_at_ms",
        );
        self.retry("register executor", || {
            sqlx::query(&sql)
                .bind(&options.executor_id)
                .bind(&options.application_version)
                .bind(now)
                .bind(now.saturating_add(millis(options.lease)))
                .execute(self.pool())
        })
        .await?;
        remember_lease(self, &options.executor_id, options.lease);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(lease_task(self.clone(), options.clone(), stopped));
        info!(executor_id = %options.executor_id, lease = ?options.lease, "executor registered");
        Ok(ExecutorHandle {
            executor_id: options.executor_id,
            db: self.clone(),
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Renews an executor's lease; re-creates its row if it was removed. Returns whether the
    /// row had to be re-created.
    async fn renew_lease(&self, options: &ExecutorOptions) -> Result<bool> {
        let now = crate::now_ms();
        let sql = self.sql(
            "INSERT INTO {s}.dbosify_executors
                 (executor_id, application_version, started_at_epoch_ms, lease_expires_at_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (executor_id) DO UPDATE
                SET lease_expires_at_ms = EXCLUDED.lease_expires_at_ms
             RETURNING (xmax = 0) AS inserted",
        );
        self.retry("renew lease", || {
            sqlx::query_scalar(&sql)
                .bind(&options.executor_id)
                .bind(&options.application_version)
                .bind(now)
                .bind(now.saturating_add(millis(options.lease)))
                .fetch_one(self.pool())
        })
        .await
    }

    /// A restarted executor's PENDING runs: returned for it to resume (their recovery attempt
    /// count goes up by one).
    ///
    /// Call it once at start-up, after [`SystemDatabase::register_executor`] (which refreshes the
    /// lease, so nobody takes these runs over meanwhile), and after a takeover that assigned
    /// queue-less runs to this executor. A retry after a lost acknowledgement counts the
    /// attempt twice; the runs returned are the same.
    pub async fn recover_own_runs(&self, executor_id: &str) -> Result<Vec<WorkflowStatus>> {
        validate_text("executor id", executor_id)?;
        let now = crate::now_ms();
        let sql = self.sql(&format!(
            "UPDATE {{s}}.workflow_status
                SET recovery_attempts = COALESCE(recovery_attempts, 0) + 1, updated_at = $2
              WHERE status = 'PENDING' AND executor_id = $1
             RETURNING {STATUS_COLUMNS}"
        ));
        let rows: Vec<PgRow> = self
            .retry("recover own runs", || {
                sqlx::query(&sql)
                    .bind(executor_id)
                    .bind(now)
                    .fetch_all(self.pool())
            })
            .await?;
        let mut runs = rows
            .iter()
            .map(status_from_row)
            .collect::<Result<Vec<_>>>()?;
        runs.sort_by(|a, b| {
            (a.created_at_ms, &a.workflow_id).cmp(&(b.created_at_ms, &b.workflow_id))
        });
        if !runs.is_empty() {
            info!(executor_id, runs = runs.len(), "recovering own runs");
        }
        Ok(runs)
    }

    /// Puts the PENDING runs of executors whose lease lapsed back in their queues and removes
    /// those executors. Returns how many runs were re-enqueued.
    ///
    /// In one statement: executors other than `taker` whose lease has lapsed are locked
    /// (`FOR UPDATE SKIP LOCKED`, so two takers never handle the same one) and deleted; their
    /// PENDING runs go back to their queue (ENQUEUED, no executor, no start time, recovery
    /// attempts + 1, deadline kept), whoever claims them next runs them. Runs without a queue
    /// cannot be re-enqueued: they are assigned to `taker` and stay PENDING (also counted; the
    /// taker finds them with [`SystemDatabase::recover_own_runs`]). Orphaned PENDING runs —
    /// whose executor has no row at all, because it never registered or its row was removed —
    /// that started more than one lease ago are taken over the same way; the lease is
    /// `taker`'s if this process registered it, else 10 s. Wakes the affected queues.
    pub async fn take_over_lapsed(&self, taker: &str) -> Result<u64> {
        let lease = known_lease(self, taker).unwrap_or(DEFAULT_LEASE);
        self.take_over_lapsed_with(taker, lease).await
    }

    /// [`SystemDatabase::take_over_lapsed`] with an explicit age after which orphaned runs (whose
    /// executor has no row) are taken over. The lease task of a registered executor calls this
    /// with its own lease.
    pub async fn take_over_lapsed_with(&self, taker: &str, orphan_after: Duration) -> Result<u64> {
        self.take_over(taker, orphan_after, &[]).await
    }

    /// Takes over the runs of executors known to be dead (for example a worker on this host whose
    /// process no longer exists) without waiting for their leases to lapse, together with any
    /// lapsed executors. Their PENDING runs go back to their queues exactly as in
    /// [`SystemDatabase::take_over_lapsed`]. Returns how many runs were moved.
    pub async fn take_over_executors(&self, taker: &str, dead: &[String]) -> Result<u64> {
        for id in dead {
            validate_text("executor id", id)?;
        }
        let lease = known_lease(self, taker).unwrap_or(DEFAULT_LEASE);
        self.take_over(taker, lease, dead).await
    }

    /// The registered executors and their lease expiry times (epoch ms).
    pub async fn list_executors(&self) -> Result<Vec<(String, i64)>> {
        let sql = self.sql("SELECT executor_id, lease_expires_at_ms FROM {s}.dbosify_executors");
        self.retry("list executors", || {
            sqlx::query_as(&sql).fetch_all(self.pool())
        })
        .await
    }

    async fn take_over(&self, taker: &str, orphan_after: Duration, dead: &[String]) -> Result<u64> {
        validate_text("executor id", taker)?;
        let now = crate::now_ms();
        let sql = self.sql(
            "WITH dead AS (
                SELECT executor_id FROM {s}.dbosify_executors
                 WHERE (lease_expires_at_ms < $1 OR executor_id = ANY($4::text[]))
                   AND executor_id <> $2
                 FOR UPDATE SKIP LOCKED),
             gone AS (
                DELETE FROM {s}.dbosify_executors
                 WHERE executor_id IN (SELECT executor_id FROM dead)
                RETURNING executor_id),
             moved AS (
                UPDATE {s}.workflow_status w
                   SET status = CASE WHEN w.queue_name IS NULL THEN 'PENDING' ELSE 'ENQUEUED' END,
                       executor_id = CASE WHEN w.queue_name IS NULL THEN $2 ELSE NULL END,
                       started_at_epoch_ms = CASE WHEN w.queue_name IS NULL
                                                  THEN w.started_at_epoch_ms ELSE NULL END,
                       recovery_attempts = COALESCE(w.recovery_attempts, 0) + 1,
                       updated_at = $1
                 WHERE w.status = 'PENDING'
                   AND w.executor_id IS DISTINCT FROM $2
                   AND (w.executor_id IN (SELECT executor_id FROM dead)
                        OR (COALESCE(w.started_at_epoch_ms, w.updated_at) < $1 - $3
                            AND NOT EXISTS (SELECT 1 FROM {s}.dbosify_executors e
                                             WHERE e.executor_id = w.executor_id)))
                RETURNING w.workflow_uuid, w.queue_name, w.status)
             SELECT workflow_uuid, queue_name, status, (SELECT count(*) FROM gone) AS executors
               FROM moved
             UNION ALL
             SELECT NULL, NULL, NULL, (SELECT count(*) FROM gone)
              WHERE NOT EXISTS (SELECT 1 FROM moved)",
        );
        type MovedRow = (Option<String>, Option<String>, Option<String>, i64);
        let rows: Vec<MovedRow> = self
            .retry("take over lapsed executors", || {
                sqlx::query_as(&sql)
                    .bind(now)
                    .bind(taker)
                    .bind(millis(orphan_after))
                    .bind(dead)
                    .fetch_all(self.pool())
            })
            .await?;
        let executors = rows.first().map_or(0, |r| r.3);
        let mut queues: Vec<&str> = Vec::new();
        let mut moved = 0u64;
        let mut assigned = 0u64;
        for (id, queue, status) in rows.iter().map(|r| (&r.0, &r.1, &r.2)) {
            let Some(id) = id else { continue };
            moved += 1;
            if status.as_deref() == Some("PENDING") {
                assigned += 1;
            }
            if let Some(q) = queue {
                queues.push(q);
            }
            self.notify(WakeKey::Status(id.clone()));
        }
        queues.sort_unstable();
        queues.dedup();
        for q in queues {
            self.notify(WakeKey::Queue(q.to_string()));
        }
        if moved > 0 || executors > 0 {
            info!(
                taker,
                executors,
                runs = moved,
                assigned_to_taker = assigned,
                "took over runs of lapsed executors"
            );
        }
        Ok(moved)
    }
}

/// Renews the lease every `renew_every` and takes over lapsed executors, until stopped.
async fn lease_task(
    db: SystemDatabase,
    options: ExecutorOptions,
    mut stopped: oneshot::Receiver<()>,
) {
    let id = options.executor_id.as_str();
    let mut tick = tokio::time::interval(options.renew_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once; registration has just set the lease.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = tick.tick() => {}
        }
        if db.pool().is_closed() {
            debug!(executor_id = id, "pool closed; lease task ends");
            break;
        }
        match db.renew_lease(&options).await {
            Ok(true) => warn!(
                executor_id = id,
                "executor row was gone (lease lapsed and taken over?); re-registered"
            ),
            Ok(false) => {}
            Err(e) => warn!(executor_id = id, error = %e, "cannot renew lease"),
        }
        if let Err(e) = db.take_over_lapsed_with(id, options.lease).await {
            warn!(executor_id = id, error = %e, "cannot take over lapsed executors");
        }
    }
    debug!(executor_id = id, "lease task stopped");
}

//! Queues and claiming: workers claim ENQUEUED runs of their queues with
//! `FOR NO KEY UPDATE SKIP LOCKED`, within per-worker and global concurrency limits and a rate limit.
//!
//! # Claiming
//!
//! A claim moves runs from ENQUEUED (or DELAYED whose delay has passed) to PENDING, held by the
//! claiming executor, in priority order (lower first), then oldest first.
//!
//! ## Claim tokens: a claim is never leaked
//!
//! Every claim *attempt* writes a fresh token to `dbosify_claim_token`. When an attempt fails
//! with a transient error, it may still have committed (the server had the statement; only the
//! answer was lost), now or a little later. So:
//! 1. before retrying, the runs held (PENDING, this executor) under the tokens of the failed
//!    attempts are looked up; if there are any, they are the claim's result;
//! 2. when a retry succeeds, those tokens are looked up once more and whatever they hold is
//!    returned too;
//! 3. tokens still unresolved when the call returns — or when its future is dropped mid-flight —
//!    are remembered per executor (for two minutes), and the executor's next claims look them
//!    up and return what they hold. A token whose runs were returned is forgotten (a statement
//!    commits all its rows at once).
//!
//! So every run a claim committed reaches the executor exactly once, as long as the executor
//! keeps claiming; if it stops, its PENDING runs are recovered by the usual rules (restart with
//! the same id, or takeover when its lease lapses).
//!
//! Rows are locked `FOR NO KEY UPDATE`, not `FOR UPDATE`: inserting a message for a run takes a
//! `FOR KEY SHARE` lock on its row (the foreign-key check), which conflicts with `FOR UPDATE`, so a
//! run being signalled at the moment of its enqueue would be skipped and its wake-up wasted.
//!
//! Due DELAYED runs go straight to PENDING when claimed (there is no separate promotion pass
//! that would cost a second statement); they compete with ENQUEUED runs by priority and
//! creation time.
//!
//! * Queues without limits (no row in `queues`, or a row without limits): one statement, one
//!   round trip, no lock: `UPDATE … WHERE workflow_uuid IN (SELECT … FOR NO KEY UPDATE SKIP LOCKED)`.
//! * Queues with a global `concurrency` or a `rate_limit`: one transaction that first takes
//!   `pg_advisory_xact_lock(hashtext(schema ‖ queue))`, so claimers of that queue in every
//!   process are serialized, then counts PENDING runs of the queue, PENDING runs held by this
//!   executor (`worker_concurrency`) and runs started within the rate-limit period, and claims at
//!   most what the limits leave. The counts run in a statement after the lock, so they see every
//!   earlier claimer's commit.
//! * Queues with only a `worker_concurrency`: the same, with a lock keyed by schema, queue *and*
//!   executor (only claims by the same executor compete for that budget).
//!
//! Whether a queue has limits comes from an in-process cache of the `queues` table, refreshed
//! after [`QUEUE_CONFIG_TTL`] (and at once, in this process, by [`SystemDatabase::register_queue`]).
//! The limit *values* are always read fresh, inside the claiming statement; only the choice
//! between the lock-free and the locked path uses the cache, so a queue given limits by another
//! process may be over-admitted for at most that long.
//!
//! Times (`started_at_epoch_ms`, the rate-limit window, delays) use this process's clock, as
//! `enqueue` does.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use futures::future::select_all;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::SystemDatabase;
use crate::db::validate_text;
use crate::error::{Error, Result};
use crate::notifier::{Waiter, WakeKey};
use crate::workflows::{CLAIM_FACT_COLUMNS, STATUS_COLUMNS, WorkflowStatus, status_from_row};

/// How long this process trusts its cached knowledge of whether a queue has limits.
pub const QUEUE_CONFIG_TTL: Duration = Duration::from_secs(1);

/// At most `max` runs started per `period`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Starts allowed per period.
    pub max: u32,
    /// The period.
    pub period: Duration,
}

/// A queue's limits (a row of `queues`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// Most PENDING runs of this queue across all executors.
    pub concurrency: Option<u32>,
    /// Most PENDING runs of this queue per executor.
    pub worker_concurrency: Option<u32>,
    /// Start-rate limit across all executors.
    pub rate_limit: Option<RateLimit>,
}

/// What the claim path needs to know about a queue's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Limits {
    concurrency: bool,
    worker_concurrency: bool,
    rate_limit: bool,
}

impl Limits {
    /// Limits shared by all executors: claimers of the queue must be serialized.
    fn shared(self) -> bool {
        self.concurrency || self.rate_limit
    }

    fn any(self) -> bool {
        self.shared() || self.worker_concurrency
    }
}

/// (database URL, schema, queue) → (when loaded, limits). Process-wide, so every handle on the
/// same schema in this process sees a `register_queue` at once.
type LimitsCache = HashMap<(String, String, String), (Instant, Limits)>;

static LIMITS_CACHE: LazyLock<Mutex<LimitsCache>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Waits for work on a set of queues. Register it *before* claiming, then claim, then wait: a
/// run enqueued between the claim and the wait still wakes it.
pub struct WorkWaiter {
    waiters: Vec<Waiter>,
    queues: Vec<String>,
}

impl std::fmt::Debug for WorkWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkWaiter")
            .field("queues", &self.waiters.len())
            .finish()
    }
}

impl WorkWaiter {
    /// Waits until one of the queues is notified, the fallback interval passes, or `timeout`
    /// passes, whichever comes first.
    pub async fn wait(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        if self.waiters.is_empty() {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        let waits = self
            .waiters
            .iter()
            .map(|w| Box::pin(w.wait(Some(deadline))));
        select_all(waits).await;
    }

    /// Like [`Self::wait`], telling which queues were notified: `Some(queues)` after a
    /// wake-up (every queue woken since the last wait), `None` when the wait ended by the
    /// fallback interval or `timeout` (any queue may have work, e.g. a delay that fell due).
    pub async fn wait_woken(&self, timeout: Duration) -> Option<Vec<String>> {
        let deadline = Instant::now() + timeout;
        if self.waiters.is_empty() {
            tokio::time::sleep_until(deadline).await;
            return None;
        }
        let waits = self
            .waiters
            .iter()
            .map(|w| Box::pin(w.wait_woken(Some(deadline))));
        let (woken, first, _) = select_all(waits).await;
        if !woken {
            return None;
        }
        Some(
            self.queues
                .iter()
                .zip(&self.waiters)
                .enumerate()
                .filter(|(i, (_, w))| *i == first || w.take_wake())
                .map(|(_, (q, _))| q.clone())
                .collect(),
        )
    }
}

fn too_big(what: &'static str, value: u32) -> Result<Option<i32>> {
    match i32::try_from(value) {
        Ok(0) => Err(Error::InvalidName {
            what,
            value: value.to_string(),
            reason: "must be at least 1",
        }),
        Ok(v) => Ok(Some(v)),
        Err(_) => Err(Error::InvalidName {
            what,
            value: value.to_string(),
            reason: "must be at most 2147483647",
        }),
    }
}

impl SystemDatabase {
    /// Creates or updates the queue's row. Limits must be at least 1 (a rate limit's period must
    /// be positive); `None` means unlimited.
    pub async fn register_queue(&self, config: &QueueConfig) -> Result<()> {
        validate_text("queue name", &config.name)?;
        let concurrency = config
            .concurrency
            .map_or(Ok(None), |c| too_big("queue concurrency", c))?;
        let worker_concurrency = config
            .worker_concurrency
            .map_or(Ok(None), |c| too_big("queue worker concurrency", c))?;
        let (rate_max, rate_period) = match config.rate_limit {
            None => (None, None),
            Some(r) => {
                if r.period.is_zero() {
                    return Err(Error::InvalidName {
                        what: "rate limit period",
                        value: format!("{:?}", r.period),
                        reason: "must be positive",
                    });
                }
                (too_big("rate limit", r.max)?, Some(r.period.as_secs_f64()))
            }
        };
        let now = crate::now_ms();
        let sql = self.sql(
            "INSERT INTO {s}.queues (name, concurrency, worker_concurrency, rate_limit_max,
                                     rate_limit_period_sec, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)
             ON CONFLICT (name) DO UPDATE
                SET concurrency = EXCLUDED.concurrency,
                    worker_concurrency = EXCLUDED.worker_concurrency,
                    rate_limit_max = EXCLUDED.rate_limit_max,
                    rate_limit_period_sec = EXCLUDED.rate_limit_period_sec,
                    updated_at = EXCLUDED.updated_at",
        );
        self.retry("register queue", || {
            sqlx::query(&sql)
                .bind(&config.name)
                .bind(concurrency)
                .bind(worker_concurrency)
                .bind(rate_max)
                .bind(rate_period)
                .bind(now)
                .execute(self.pool())
        })
        .await?;
        self.cache_limits(
            &config.name,
            Limits {
                concurrency: concurrency.is_some(),
                worker_concurrency: worker_concurrency.is_some(),
                rate_limit: rate_max.is_some(),
            },
        );
        // Workers waiting on the queue re-evaluate with the new limits.
        self.notify(WakeKey::Queue(config.name.clone()));
        debug!(queue = %config.name, "queue registered");
        Ok(())
    }

    /// The queue's row, if it has one.
    pub async fn queue_config(&self, name: &str) -> Result<Option<QueueConfig>> {
        validate_text("queue name", name)?;
        let sql = self.sql(
            "SELECT name, concurrency, worker_concurrency, rate_limit_max, rate_limit_period_sec
               FROM {s}.queues WHERE name = $1",
        );
        let row = self
            .retry("queue config", || {
                sqlx::query(&sql).bind(name).fetch_optional(self.pool())
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let to_u32 = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok());
        let rate_max: Option<i32> = row.try_get("rate_limit_max")?;
        let rate_period: Option<f64> = row.try_get("rate_limit_period_sec")?;
        let rate_limit = match (to_u32(rate_max), rate_period) {
            (Some(max), Some(p)) if p.is_finite() && p > 0.0 => Some(RateLimit {
                max,
                period: Duration::from_secs_f64(p),
            }),
            _ => None,
        };
        Ok(Some(QueueConfig {
            name: row.try_get("name")?,
            concurrency: to_u32(row.try_get("concurrency")?),
            worker_concurrency: to_u32(row.try_get("worker_concurrency")?),
            rate_limit,
        }))
    }

    /// Claims up to `max` ENQUEUED (or due DELAYED) runs of `queues` for `executor_id`: they
    /// become PENDING, held by it. Respects every queue's limits. A claim whose commit
    /// acknowledgement was lost is recognised on retry by its claim token.
    ///
    /// Returned runs are ordered by priority, then creation time. Within one queue that is the
    /// claim order; across several queues in one call, queues without limits are served first.
    /// The run's deadline is set from its timeout at its first claim (a taken-over run keeps
    /// its deadline).
    ///
    /// Besides the runs this call claims, the result holds runs claimed for `executor_id` by an
    /// earlier call of this process whose outcome was never seen (its connection dropped after
    /// the server had the statement, or its future was dropped) and that committed after that
    /// call returned: such runs are never leaked while the executor keeps claiming.
    pub async fn claim(
        &self,
        executor_id: &str,
        queues: &[String],
        max: usize,
    ) -> Result<Vec<WorkflowStatus>> {
        validate_text("executor id", executor_id)?;
        for q in queues {
            validate_text("queue name", q)?;
        }
        let mut queues: Vec<String> = queues.to_vec();
        queues.sort();
        queues.dedup();
        // Tokens of earlier calls whose outcome is unknown; taken out of the shared list, so
        // only this call looks them up, and put back by the guard unless their runs are
        // returned.
        let mut pending = UnresolvedTokens::take(self, executor_id);
        let mut found: Vec<(String, WorkflowStatus)> = Vec::new();
        if !pending.tokens.is_empty() {
            match self.runs_of_tokens(executor_id, &pending.tokens).await {
                Ok(runs) => {
                    if !runs.is_empty() {
                        debug!(
                            executor_id,
                            runs = runs.len(),
                            "runs of an earlier claim call committed after it returned"
                        );
                    }
                    found = runs;
                }
                Err(e) if e.is_transient() => {}
                Err(e) => return Err(e),
            }
        }
        if queues.is_empty() || max == 0 {
            return Ok(pending.deliver(found, Vec::new()));
        }
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let limits = self.queue_limits(&queues).await?;
        let locked = limits.iter().any(|(_, l)| l.any());
        // Retry rule of `retry_with`: lost connections are retried at once (every idle
        // connection may be stale after a server restart), other transient failures with
        // backoff. Every attempt has its own token; before each retry the tokens of failed
        // attempts are looked up.
        let mut attempt = 0u32;
        let mut quick_left = self.config().max_connections.saturating_add(2);
        let mut failed_before = false;
        loop {
            let token = uuid::Uuid::new_v4().to_string();
            pending.tokens.push(token.clone());
            let result = if locked {
                self.claim_locked(executor_id, &limits, max, &token).await
            } else {
                self.claim_free(executor_id, &queues, max, &token).await
            };
            let error = match result {
                Ok(runs) => {
                    pending.tokens.retain(|t| *t != token);
                    if failed_before {
                        // An earlier attempt may have committed after we gave up on it.
                        match self.runs_of_tokens(executor_id, &pending.tokens).await {
                            Ok(late) => {
                                if !late.is_empty() {
                                    debug!(
                                        executor_id,
                                        recovered = late.len(),
                                        "an earlier claim attempt committed after all"
                                    );
                                }
                                found.extend(late);
                            }
                            Err(e) => debug!(executor_id, error = %e, "cannot re-read tokens yet"),
                        }
                    }
                    let runs = pending.deliver(found, runs);
                    if !runs.is_empty() {
                        debug!(executor_id, claimed = runs.len(), "claimed runs");
                    }
                    return Ok(runs);
                }
                Err(e) if e.is_transient() => e,
                Err(e) => {
                    // This attempt failed for good; it cannot have committed.
                    pending.tokens.retain(|t| *t != token);
                    return Err(e);
                }
            };
            failed_before = true;
            match self.runs_of_tokens(executor_id, &pending.tokens).await {
                Ok(runs) if !runs.is_empty() => {
                    // A claim committed; only its acknowledgement was lost.
                    debug!(
                        executor_id,
                        claimed = runs.len(),
                        "claim found by its token"
                    );
                    found.extend(runs);
                    return Ok(pending.deliver(found, Vec::new()));
                }
                Ok(_) => {}
                Err(e) if e.is_transient() => {}
                Err(e) => return Err(e),
            }
            if error.is_connection_loss() && quick_left > 0 {
                quick_left -= 1;
                debug!(executor_id, error = %error, "claim lost its connection; retrying");
                continue;
            }
            if attempt >= self.config().max_retries {
                return Err(error);
            }
            attempt += 1;
            warn!(executor_id, attempt, error = %error, "claim failed; retrying");
            let base = 5u64 << attempt.min(8);
            let jitter = rand::random_range(0..=base / 2);
            tokio::time::sleep(Duration::from_millis(base + jitter)).await;
        }
    }

    /// The runs held under any of `tokens` (PENDING, held by `executor_id`), with their token.
    async fn runs_of_tokens(
        &self,
        executor_id: &str,
        tokens: &[String],
    ) -> Result<Vec<(String, WorkflowStatus)>> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        // The executor/status predicates ride the partial index of PENDING runs per executor.
        let sql = self.sql(&format!(
            "SELECT {STATUS_COLUMNS}, dbosify_claim_token FROM {{s}}.workflow_status
              WHERE status = 'PENDING' AND executor_id = $1 AND dbosify_claim_token = ANY($2)"
        ));
        let rows: Vec<PgRow> = sqlx::query(&sql)
            .bind(executor_id)
            .bind(tokens)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|row| {
                let token: Option<String> = row.try_get("dbosify_claim_token")?;
                Ok((token.unwrap_or_default(), status_from_row(row)?))
            })
            .collect()
    }
}

impl SystemDatabase {
    /// Registers interest in work on `queues`. Register before claiming, then wait on it.
    pub fn register_work_waiter(&self, queues: &[String]) -> WorkWaiter {
        let mut keys: Vec<String> = queues.to_vec();
        keys.sort();
        keys.dedup();
        WorkWaiter {
            waiters: keys
                .iter()
                .map(|q| self.register_waiter(WakeKey::Queue(q.clone())))
                .collect(),
            queues: keys,
        }
    }

    /// Waits until work may be available on one of `queues` (a hint, or the fallback interval,
    /// or `timeout`). The caller then claims.
    ///
    /// When a DELAYED run of these queues falls due before the timeout, the wait ends at its
    /// due time (nobody sends a notification when a delay passes). A notification sent between
    /// the caller's last claim and this call is missed (the fallback interval covers it);
    /// loops that care use [`SystemDatabase::register_work_waiter`] before claiming instead.
    pub async fn wait_for_work(&self, queues: &[String], timeout: Duration) {
        let waiter = self.register_work_waiter(queues);
        let mut timeout = timeout;
        match self.next_delay_due(queues).await {
            Ok(Some(due)) => {
                let now = crate::now_ms();
                // A due time already passed means the caller's claim left it (limits); do not
                // spin on it.
                if due > now {
                    let until = Duration::from_millis(u64::try_from(due - now).unwrap_or(0));
                    timeout = timeout.min(until);
                }
            }
            Ok(None) => {}
            Err(e) => debug!(error = %e, "cannot read delayed runs; waiting for hints only"),
        }
        waiter.wait(timeout).await;
    }

    /// The earliest due time of a DELAYED run of `queues`.
    async fn next_delay_due(&self, queues: &[String]) -> Result<Option<i64>> {
        if queues.is_empty() {
            return Ok(None);
        }
        let sql = self.sql(
            "SELECT min(delay_until_epoch_ms) FROM {s}.workflow_status
              WHERE status = 'DELAYED' AND queue_name = ANY($1)",
        );
        Ok(sqlx::query_scalar(&sql)
            .bind(queues)
            .fetch_one(self.pool())
            .await?)
    }

    /// Whether this process knows the queue to have a concurrency limit (global or per worker).
    /// Never touches the database: used to decide whether a finished run frees a slot worth a
    /// wake-up.
    pub(crate) fn queue_has_concurrency_limit(&self, queue: &str) -> bool {
        let key = self.limits_key(queue);
        LIMITS_CACHE
            .lock()
            .ok()
            .and_then(|c| {
                c.get(&key)
                    .map(|(_, l)| l.concurrency || l.worker_concurrency)
            })
            .unwrap_or(false)
    }

    fn limits_key(&self, queue: &str) -> (String, String, String) {
        (
            self.config().database_url.clone(),
            self.schema().to_string(),
            queue.to_string(),
        )
    }

    fn cache_limits(&self, queue: &str, limits: Limits) {
        if let Ok(mut c) = LIMITS_CACHE.lock() {
            c.insert(self.limits_key(queue), (Instant::now(), limits));
        }
    }

    /// Limits of each queue, from the cache or (for stale entries) from `queues` in one query.
    async fn queue_limits(&self, queues: &[String]) -> Result<Vec<(String, Limits)>> {
        let now = Instant::now();
        let mut known: Vec<(String, Option<Limits>)> = {
            let cache = LIMITS_CACHE.lock().ok();
            queues
                .iter()
                .map(|q| {
                    let hit = cache.as_ref().and_then(|c| {
                        c.get(&self.limits_key(q))
                            .filter(|(at, _)| now.duration_since(*at) < QUEUE_CONFIG_TTL)
                            .map(|(_, l)| *l)
                    });
                    (q.clone(), hit)
                })
                .collect()
        };
        let missing: Vec<String> = known
            .iter()
            .filter(|(_, l)| l.is_none())
            .map(|(q, _)| q.clone())
            .collect();
        if !missing.is_empty() {
            let sql = self.sql(
                "SELECT name, concurrency IS NOT NULL, worker_concurrency IS NOT NULL,
                        rate_limit_max IS NOT NULL AND rate_limit_period_sec > 0
                   FROM {s}.queues WHERE name = ANY($1)",
            );
            let rows: Vec<(String, bool, bool, Option<bool>)> = self
                .retry("queue limits", || {
                    sqlx::query_as(&sql).bind(&missing).fetch_all(self.pool())
                })
                .await?;
            let loaded: HashMap<String, Limits> = rows
                .into_iter()
                .map(|(name, c, w, r)| {
                    let limits = Limits {
                        concurrency: c,
                        worker_concurrency: w,
                        rate_limit: r.unwrap_or(false),
                    };
                    (name, limits)
                })
                .collect();
            for (q, l) in known.iter_mut().filter(|(_, l)| l.is_none()) {
                // No row: no limits.
                let limits = loaded.get(q).copied().unwrap_or_default();
                self.cache_limits(q, limits);
                *l = Some(limits);
            }
        }
        Ok(known
            .into_iter()
            .map(|(q, l)| (q, l.unwrap_or_default()))
            .collect())
    }

    /// The lock-free claim over queues without limits: one statement, one round trip.
    async fn claim_free(
        &self,
        executor_id: &str,
        queues: &[String],
        max: i64,
        token: &str,
    ) -> Result<Vec<WorkflowStatus>> {
        let mut conn = self.pool().acquire().await?;
        self.claim_free_in(&mut conn, executor_id, queues, max, token, crate::now_ms())
            .await
    }

    /// The claim over a set of queues some of which have limits: one transaction, serialized
    /// per queue by advisory locks, counting what the limits leave.
    async fn claim_locked(
        &self,
        executor_id: &str,
        limits: &[(String, Limits)],
        max: i64,
        token: &str,
    ) -> Result<Vec<WorkflowStatus>> {
        let now = crate::now_ms();
        let mut tx = self.pool().begin().await?;
        // Lock keys in a fixed order (sorted in SQL) so two multi-queue claimers cannot deadlock.
        let lock_keys: Vec<String> = limits
            .iter()
            .filter(|(_, l)| l.any())
            .map(|(q, l)| {
                if l.shared() {
                    format!("{}\u{1f}{q}", self.schema())
                } else {
                    format!("{}\u{1f}{q}\u{1f}{executor_id}", self.schema())
                }
            })
            .collect();
        sqlx::query(
            "SELECT count(pg_advisory_xact_lock(hashtext(k)))
               FROM (SELECT k FROM unnest($1::text[]) AS k ORDER BY k) AS keys",
        )
        .bind(&lock_keys)
        .execute(&mut *tx)
        .await?;
        let mut claimed = Vec::new();
        let free: Vec<String> = limits
            .iter()
            .filter(|(_, l)| !l.any())
            .map(|(q, _)| q.clone())
            .collect();
        let mut remaining = max;
        if !free.is_empty() {
            let runs = self
                .claim_free_in(&mut tx, executor_id, &free, remaining, token, now)
                .await?;
            remaining -= i64::try_from(runs.len()).unwrap_or(remaining);
            claimed.extend(runs);
        }
        for (queue, _) in limits.iter().filter(|(_, l)| l.any()) {
            if remaining <= 0 {
                break;
            }
            let runs = self
                .claim_limited_in(&mut tx, executor_id, queue, remaining, token, now)
                .await?;
            remaining -= i64::try_from(runs.len()).unwrap_or(remaining);
            claimed.extend(runs);
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Claims from queues without limits, on `conn`: `e` locks ENQUEUED candidates, `d` due
    /// DELAYED ones (they go straight to PENDING), `pick` keeps the best `max` of both.
    async fn claim_free_in(
        &self,
        conn: &mut PgConnection,
        executor_id: &str,
        queues: &[String],
        max: i64,
        token: &str,
        now: i64,
    ) -> Result<Vec<WorkflowStatus>> {
        let sql = self.sql(&format!(
            "WITH e AS (
                SELECT workflow_uuid, priority, created_at FROM {{s}}.workflow_status
                 WHERE queue_name = ANY($3) AND status = 'ENQUEUED'
                 ORDER BY priority, created_at
                 LIMIT $4
                 FOR NO KEY UPDATE SKIP LOCKED),
             d AS (
                SELECT workflow_uuid, priority, created_at FROM {{s}}.workflow_status
                 WHERE status = 'DELAYED' AND delay_until_epoch_ms <= $2 AND queue_name = ANY($3)
                 ORDER BY priority, created_at
                 LIMIT $4
                 FOR NO KEY UPDATE SKIP LOCKED),
             pick AS (
                SELECT workflow_uuid FROM (SELECT * FROM e UNION ALL SELECT * FROM d) c
                 ORDER BY priority, created_at
                 LIMIT $4)
             UPDATE {{s}}.workflow_status w
                SET {CLAIM_SET}, rate_limited = FALSE
              WHERE w.workflow_uuid IN (SELECT workflow_uuid FROM pick)
                AND w.status IN ('ENQUEUED', 'DELAYED')
             RETURNING {STATUS_COLUMNS}, {CLAIM_FACT_COLUMNS}"
        ));
        let rows = sqlx::query(&sql)
            .bind(executor_id)
            .bind(now)
            .bind(queues)
            .bind(max)
            .bind(token)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(status_from_row).collect()
    }

    /// Claims from one queue with limits; the caller holds the queue's advisory lock. The limit
    /// values are read here, fresh; a queue whose row vanished is unlimited.
    async fn claim_limited_in(
        &self,
        conn: &mut PgConnection,
        executor_id: &str,
        queue: &str,
        max: i64,
        token: &str,
        now: i64,
    ) -> Result<Vec<WorkflowStatus>> {
        let sql = self.sql(&format!(
            "WITH cfg AS (
                SELECT concurrency, worker_concurrency, rate_limit_max,
                       (rate_limit_period_sec * 1000)::bigint AS period_ms
                  FROM {{s}}.queues WHERE name = $3),
             budget AS (
                SELECT GREATEST(0, LEAST(
                    $4::bigint,
                    (SELECT concurrency FROM cfg) - CASE WHEN (SELECT concurrency FROM cfg) IS NULL
                        THEN 0 ELSE (SELECT count(*) FROM {{s}}.workflow_status
                                      WHERE queue_name = $3 AND status = 'PENDING') END,
                    (SELECT worker_concurrency FROM cfg) - CASE WHEN (SELECT worker_concurrency FROM cfg) IS NULL
                        THEN 0 ELSE (SELECT count(*) FROM {{s}}.workflow_status
                                      WHERE queue_name = $3 AND status = 'PENDING'
                                        AND executor_id = $1) END,
                    (SELECT rate_limit_max FROM cfg) - CASE WHEN (SELECT rate_limit_max FROM cfg) IS NULL
                        THEN 0 ELSE (SELECT count(*) FROM {{s}}.workflow_status
                                      WHERE queue_name = $3 AND rate_limited = TRUE
                                        AND status NOT IN ('ENQUEUED', 'DELAYED')
                                        AND started_at_epoch_ms > $2 - (SELECT period_ms FROM cfg)) END
                )) AS n),
             e AS (
                SELECT workflow_uuid, priority, created_at FROM {{s}}.workflow_status
                 WHERE queue_name = $3 AND status = 'ENQUEUED'
                 ORDER BY priority, created_at
                 LIMIT (SELECT n FROM budget)
                 FOR NO KEY UPDATE SKIP LOCKED),
             d AS (
                SELECT workflow_uuid, priority, created_at FROM {{s}}.workflow_status
                 WHERE status = 'DELAYED' AND delay_until_epoch_ms <= $2 AND queue_name = $3
                 ORDER BY priority, created_at
                 LIMIT (SELECT n FROM budget)
                 FOR NO KEY UPDATE SKIP LOCKED),
             pick AS (
                SELECT workflow_uuid FROM (SELECT * FROM e UNION ALL SELECT * FROM d) c
                 ORDER BY priority, created_at
                 LIMIT (SELECT n FROM budget))
             UPDATE {{s}}.workflow_status w
                SET {CLAIM_SET},
                    rate_limited = COALESCE((SELECT rate_limit_max IS NOT NULL FROM cfg), FALSE)
              WHERE w.workflow_uuid IN (SELECT workflow_uuid FROM pick)
                AND w.status IN ('ENQUEUED', 'DELAYED')
             RETURNING {STATUS_COLUMNS}, {CLAIM_FACT_COLUMNS}"
        ));
        let rows = sqlx::query(&sql)
            .bind(executor_id)
            .bind(now)
            .bind(queue)
            .bind(max)
            .bind(token)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(status_from_row).collect()
    }
}

/// The SET list of every claim: `$1` executor, `$2` now, `$5` claim token.
const CLAIM_SET: &str = "status = 'PENDING', executor_id = $1, started_at_epoch_ms = $2, \
     updated_at = $2, dbosify_claim_token = $5, \
     workflow_deadline_epoch_ms = CASE \
        WHEN w.workflow_timeout_ms IS NOT NULL AND w.workflow_deadline_epoch_ms IS NULL \
        THEN $2 + w.workflow_timeout_ms ELSE w.workflow_deadline_epoch_ms END";

/// Orders claimed runs by priority, then age (then id), without duplicates.
fn finish_runs(mut runs: Vec<WorkflowStatus>) -> Vec<WorkflowStatus> {
    runs.sort_by(|a, b| {
        (a.priority, a.created_at_ms, &a.workflow_id).cmp(&(
            b.priority,
            b.created_at_ms,
            &b.workflow_id,
        ))
    });
    runs.dedup_by(|a, b| a.workflow_id == b.workflow_id);
    runs
}

/// How long the token of a claim attempt with an unknown outcome is remembered (and looked up
/// by the executor's later claims). A statement the server received runs at once in practice;
/// this bounds the cost of the extra look-ups after a failure.
const UNRESOLVED_TOKEN_TTL: Duration = Duration::from_secs(120);

/// At most this many unresolved tokens are remembered per executor (the newest).
const UNRESOLVED_TOKEN_MAX: usize = 64;

/// (database URL, schema, executor) → tokens of claim attempts whose outcome is unknown.
type TokenList = HashMap<(String, String, String), Vec<(String, Instant)>>;

static UNRESOLVED: LazyLock<Mutex<TokenList>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The unresolved claim tokens one `claim` call is responsible for. Whatever is left when it
/// is dropped — the call returned, failed, or its future was dropped mid-statement — goes back
/// to the executor's shared list, for its next claims to look up.
struct UnresolvedTokens {
    key: (String, String, String),
    tokens: Vec<String>,
}

impl UnresolvedTokens {
    /// Hands over runs found under tokens plus runs claimed directly: the tokens whose runs
    /// are handed over are resolved (a statement commits all its rows at once, so such a token
    /// can have no more).
    fn deliver(
        &mut self,
        found: Vec<(String, WorkflowStatus)>,
        claimed: Vec<WorkflowStatus>,
    ) -> Vec<WorkflowStatus> {
        let mut runs = claimed;
        for (token, run) in found {
            self.tokens.retain(|t| *t != token);
            runs.push(run);
        }
        finish_runs(runs)
    }

    fn take(db: &SystemDatabase, executor_id: &str) -> Self {
        let key = (
            db.config().database_url.clone(),
            db.schema().to_string(),
            executor_id.to_string(),
        );
        let now = Instant::now();
        let tokens = UNRESOLVED
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&key))
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, at)| now.duration_since(*at) < UNRESOLVED_TOKEN_TTL)
            .map(|(t, _)| t)
            .collect();
        Self { key, tokens }
    }
}

impl Drop for UnresolvedTokens {
    fn drop(&mut self) {
        if self.tokens.is_empty() {
            return;
        }
        let Ok(mut m) = UNRESOLVED.lock() else { return };
        let list = m.entry(self.key.clone()).or_default();
        let now = Instant::now();
        list.extend(self.tokens.drain(..).map(|t| (t, now)));
        if list.len() > UNRESOLVED_TOKEN_MAX {
            let excess = list.len() - UNRESOLVED_TOKEN_MAX;
            list.drain(..excess);
        }
    }
}

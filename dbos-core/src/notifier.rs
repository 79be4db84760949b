//! Wake-ups across processes: one LISTEN connection per process dispatching notifications to
//! local waiters, and one sender that publishes hints after commits.
//!
//! Notifications are hints; the database is the truth. A waiter registers its key *before* it
//! probes the database, re-probes after every wake, and wakes on its own every
//! `fallback_poll_interval` in case a notification was lost.
//!
//! The LISTEN connection is the process's own (outside the pool). When it is lost (server
//! restart, `pg_terminate_backend`, network failure, or a keep-alive probe that does not come
//! back) it is re-opened with a jittered backoff, `LISTEN` is issued again, and only *then* is
//! every waiter woken so it re-probes whatever it was waiting on: anything committed while no
//! one was listening is found by that probe, anything committed after it arrives as a hint.
//! While it stays down, every waiter is woken after each reconnection attempt as well.
//!
//! Hints are sent after the data commit, outside the writer's transaction, batched, on a
//! dedicated connection with `synchronous_commit = off`: a NOTIFY inside a write transaction
//! holds Postgres's notification-queue lock through its commit (WAL flush included), so such
//! commits serialize. The first hint after a quiet period goes out at once; under load, batches
//! start at least `HINT_MIN_INTERVAL` (1 ms) apart, so hints cost the server a bounded number of
//! (non-durable) transactions per second. The sender reconnects on failure; a batch that cannot be
//! sent after one reconnection is dropped (waiters fall back to polling) rather than delaying
//! newer hints.
//!
//! Inline hints: while no other inline hint of this process is in flight, a latency-critical
//! write (enqueue, completion) may instead carry its NOTIFY in its own statement
//! ([`Notifier::inline_slot`]); that saves the separate hint transaction on sequential paths and
//! costs nothing under load, where the slot is busy and hints go to the batch sender.
//!
//! Every payload starts with this notifier's random origin tag: a process's own hints come back
//! on its LISTEN connection and are not dispatched again (local waiters were woken when the
//! hint was published).
//!
//! Every wake-up is also kept, briefly, in a short log of recent keys, so that a waiter
//! registered *after* a write may still learn that its key was woken since a [`Mark`] taken
//! before that write ([`Notifier::register_since`]); this lets callers skip a probe they would
//! otherwise need (a freshly claimed run's inbox, the first status read of a just-started run).
//!
//! One exception: [`crate::SystemDatabase::send`] puts its hint in the message insert's own
//! statement (delivered at that commit), because send -> consume latency is what messages are
//! judged by and messages are not a bulk write path. A send that finds its message already
//! written (a retry) falls back to the ordinary hint.
//!
//! Cost model (per hint batch): one NOTIFY transaction on the sender (no WAL flush wait), plus
//! one short read transaction in *every* backend listening on the namespace's channel, which
//! Postgres runs to read its notification queue.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{ConnectOptions, PgConnection};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::db::Config;
use crate::error::Result;

/// What a waiter waits for. Rendered as the notification payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WakeKey {
    /// Work was enqueued on a queue.
    Queue(String),
    /// A message arrived for a run.
    Message(String),
    /// An event was set on a run.
    Event(String, String),
    /// A run reached a terminal status.
    Completion(String),
    /// A run's status changed (cancel, resume, claim); used by runs watching their own status.
    Status(String),
    /// A schedule was created, changed or deleted: schedulers recompute their next wake-up.
    Schedules,
}

const SEP: char = '\u{1f}';

impl WakeKey {
    pub(crate) fn payload(&self) -> String {
        match self {
            WakeKey::Queue(q) => format!("q{SEP}{q}"),
            WakeKey::Message(w) => format!("m{SEP}{w}"),
            WakeKey::Event(w, k) => format!("e{SEP}{w}{SEP}{k}"),
            WakeKey::Completion(w) => format!("c{SEP}{w}"),
            WakeKey::Status(w) => format!("s{SEP}{w}"),
            WakeKey::Schedules => format!("S{SEP}"),
        }
    }

    fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.splitn(3, SEP);
        let kind = parts.next()?;
        let a = parts.next()?.to_string();
        Some(match kind {
            "q" => WakeKey::Queue(a),
            "m" => WakeKey::Message(a),
            "e" => WakeKey::Event(a, parts.next()?.to_string()),
            "c" => WakeKey::Completion(a),
            "s" => WakeKey::Status(a),
            "S" => WakeKey::Schedules,
            _ => return None,
        })
    }
}

/// Counters of the process's notification plumbing (for tests, benchmarks and diagnostics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifierStats {
    /// How many times the LISTEN connection was (re)established, the first time included.
    pub listener_connects: u64,
    /// Notifications received on the LISTEN connection.
    pub notifications_received: u64,
    /// Hint batches sent.
    pub batches_sent: u64,
    /// Hints dropped because they could not be sent (waiters fall back to polling).
    pub hints_dropped: u64,
    /// How many times the hint sender opened its connection, the first time included.
    pub sender_connects: u64,
}

#[derive(Default)]
struct Counters {
    listener_connects: AtomicU64,
    notifications_received: AtomicU64,
    batches_sent: AtomicU64,
    hints_dropped: AtomicU64,
    sender_connects: AtomicU64,
}

type WaiterMap = HashMap<WakeKey, Vec<Arc<Notify>>>;

/// How many recent wake-ups the log keeps for [`Notifier::register_since`].
const RECENT_WAKES: usize = 4096;

/// A point in this process's sequence of wake-ups (see [`Notifier::register_since`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Listener generation: a reconnection (possible missed notifications) bumps it.
    epoch: u64,
    /// Sequence number of the last wake-up before the mark.
    seq: u64,
}

/// Waiters plus the short log of recent wake-ups, under one lock.
#[derive(Default)]
struct State {
    waiters: WaiterMap,
    recent: VecDeque<(u64, WakeKey)>,
    /// The sequence number of each key's latest wake-up still in `recent`, so that a
    /// registration checks "woken since the mark" in constant time rather than by scanning
    /// every wake-up since (quadratic under a burst of concurrent starts).
    latest: HashMap<WakeKey, u64>,
    seq: u64,
    epoch: u64,
}

struct Shared {
    state: Mutex<State>,
    fallback: Duration,
    shutdown: watch::Sender<bool>,
    counters: Counters,
    /// Random tag starting every payload this notifier publishes: notifications carrying it are
    /// this process's own hints coming back, and local waiters were woken when they were
    /// published, so they are not dispatched again (no spurious re-probes).
    origin: String,
    /// Whether an inline hint (NOTIFY inside a write's statement) is in flight.
    inline_busy: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state is never left half-updated by a panic (only collection calls under the
        // lock), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, key: &WakeKey) {
        let mut st = self.state();
        st.seq += 1;
        let seq = st.seq;
        if st.recent.len() == RECENT_WAKES
            && let Some((old_seq, old_key)) = st.recent.pop_front()
            && st.latest.get(&old_key) == Some(&old_seq)
        {
            st.latest.remove(&old_key);
        }
        st.recent.push_back((seq, key.clone()));
        st.latest.insert(key.clone(), seq);
        if let Some(list) = st.waiters.get(key) {
            for n in list {
                n.notify_one();
            }
        }
    }

    /// Wakes every waiter; with `new_epoch`, marks taken before can no longer vouch that
    /// nothing happened (notifications may have been missed).
    fn wake_all(&self, new_epoch: bool) {
        let mut st = self.state();
        if new_epoch {
            st.epoch += 1;
        }
        for list in st.waiters.values() {
            for n in list {
                n.notify_one();
            }
        }
    }

    /// The payload of `key` as this notifier publishes it (origin tag first).
    fn payload(&self, key: &WakeKey) -> String {
        format!("{}{SEP}{}", self.origin, key.payload())
    }

    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// The process's notification hub (owned by the [`crate::SystemDatabase`]). Dropping it stops
/// its background tasks.
pub(crate) struct Notifier {
    shared: Arc<Shared>,
    outbox: mpsc::UnboundedSender<String>,
    /// The namespace's NOTIFY channel.
    channel: String,
}

/// A registered interest in one key. Register before probing; drop when done (dropping
/// unregisters it).
pub struct Waiter {
    notify: Arc<Notify>,
    key: WakeKey,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter").field("key", &self.key).finish()
    }
}

impl Waiter {
    /// Waits until woken, the fallback interval passes, or `deadline` (if any) is reached,
    /// whichever comes first. The caller re-probes the database afterwards. A wake that arrived
    /// since the last wait (for example between a probe and this call) returns at once.
    pub async fn wait(&self, deadline: Option<Instant>) {
        self.wait_woken(deadline).await;
    }

    /// [`Self::wait`], telling whether it ended by a wake-up (`true`) rather than by the
    /// fallback interval or the deadline.
    pub(crate) async fn wait_woken(&self, deadline: Option<Instant>) -> bool {
        let mut until = Instant::now() + self.shared.fallback;
        if let Some(d) = deadline {
            until = until.min(d);
        }
        tokio::time::timeout_at(until, self.notify.notified())
            .await
            .is_ok()
    }

    /// Waits until woken or `limit` passes, *not* capped by the fallback interval: for a waiter
    /// with nothing else to re-check, whose wake-ups are published by every write it cares
    /// about (a lost LISTEN connection still wakes it, at reconnection).
    pub async fn wait_up_to(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.notify.notified()).await;
    }

    /// Consumes a wake-up that arrived since the last wait, without waiting; `true` if there
    /// was one.
    pub(crate) fn take_wake(&self) -> bool {
        use futures::FutureExt as _;
        self.notify.notified().now_or_never().is_some()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut st = self.shared.state();
        if let Some(list) = st.waiters.get_mut(&self.key) {
            list.retain(|n| !Arc::ptr_eq(n, &self.notify));
            if list.is_empty() {
                st.waiters.remove(&self.key);
            }
        }
    }
}

impl Notifier {
    /// Opens the LISTEN connection (the first `LISTEN` is in place when this returns) and starts
    /// the listener and hint-sender tasks.
    pub(crate) async fn start(options: &PgConnectOptions, config: &Config) -> Result<Self> {
        let channel = channel_name(&config.schema);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            fallback: config.fallback_poll_interval,
            shutdown,
            counters: Counters::default(),
            origin: format!("{:08x}", rand::random::<u32>()),
            inline_busy: AtomicBool::new(false),
        });
        let first = crate::db::retry_with(config, "open LISTEN connection", || {
            open_listener(options, &channel)
        })
        .await?;
        shared
            .counters
            .listener_connects
            .fetch_add(1, Ordering::Relaxed);
        tokio::spawn(listen_loop(
            first,
            options.clone(),
            channel.clone(),
            shared.clone(),
        ));
        let (outbox, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(
            options.clone(),
            channel.clone(),
            rx,
            shared.clone(),
        ));
        Ok(Self {
            shared,
            outbox,
            channel,
        })
    }

    /// Registers interest in `key`.
    pub(crate) fn register(&self, key: WakeKey) -> Waiter {
        self.register_inner(key, None).0
    }

    /// The current point in this process's sequence of wake-ups.
    pub(crate) fn mark(&self) -> Mark {
        let st = self.shared.state();
        Mark {
            epoch: st.epoch,
            seq: st.seq,
        }
    }

    /// Registers interest in `key`, already woken if `key` was woken after `since` (or if that
    /// cannot be ruled out: the listener reconnected, or the log of recent wake-ups no longer
    /// reaches back to `since`). A caller that took `since` before a write may then skip probing
    /// for what the write's notification would have told it.
    /// The flag says whether it was woken so.
    pub(crate) fn register_since(&self, key: WakeKey, since: Mark) -> (Waiter, bool) {
        self.register_inner(key, Some(since))
    }

    fn register_inner(&self, key: WakeKey, since: Option<Mark>) -> (Waiter, bool) {
        let notify = Arc::new(Notify::new());
        let mut st = self.shared.state();
        st.waiters
            .entry(key.clone())
            .or_default()
            .push(notify.clone());
        let mut woken = false;
        if let Some(m) = since {
            let covered = st.epoch == m.epoch
                && st
                    .recent
                    .front()
                    .is_none_or(|(first, _)| *first <= m.seq + 1);
            woken = !covered || st.latest.get(&key).is_some_and(|seq| *seq > m.seq);
            if woken {
                notify.notify_one();
            }
        }
        drop(st);
        let waiter = Waiter {
            notify,
            key,
            shared: self.shared.clone(),
        };
        (waiter, woken)
    }

    /// The payload of `key` as published by this notifier (for statements carrying their own
    /// NOTIFY).
    pub(crate) fn payload(&self, key: &WakeKey) -> String {
        self.shared.payload(key)
    }

    /// Takes the inline-hint slot if it is free: the caller may then put its NOTIFY in its own
    /// write statement (and call [`Self::wake_local`] after the commit). `None` means another
    /// inline hint is in flight: publish with [`Self::notify`] after the commit instead, so
    /// that concurrent commits do not queue on the notification lock.
    pub(crate) fn inline_slot(&self) -> Option<InlineSlot<'_>> {
        self.shared
            .inline_busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| InlineSlot(&self.shared.inline_busy))
    }

    /// Publishes a hint after a commit: wakes local waiters at once and tells other processes.
    pub(crate) fn notify(&self, key: WakeKey) {
        self.shared.wake(&key);
        if self.outbox.send(self.shared.payload(&key)).is_err() {
            self.shared
                .counters
                .hints_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wakes this process's waiters only; for writes whose statement carries its own NOTIFY.
    pub(crate) fn wake_local(&self, key: &WakeKey) {
        self.shared.wake(key);
    }

    /// Stops the background tasks and wakes every waiter.
    pub(crate) fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        self.shared.wake_all(true);
    }

    pub(crate) fn stats(&self) -> NotifierStats {
        let c = &self.shared.counters;
        NotifierStats {
            listener_connects: c.listener_connects.load(Ordering::Relaxed),
            notifications_received: c.notifications_received.load(Ordering::Relaxed),
            batches_sent: c.batches_sent.load(Ordering::Relaxed),
            hints_dropped: c.hints_dropped.load(Ordering::Relaxed),
            sender_connects: c.sender_connects.load(Ordering::Relaxed),
        }
    }
}

/// The inline-hint slot, held while a write carrying its own NOTIFY is in flight.
pub(crate) struct InlineSlot<'a>(&'a AtomicBool);

impl Drop for InlineSlot<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The wake-ups of one write: inline in its statement when the inline slot was free, else
/// published after its commit. Bind [`Hints::channel`] and [`Hints::payloads`] to a
/// `SELECT count(pg_notify(channel, p)) FROM unnest(payloads) p` part of the statement (the
/// payload list is empty when the hints are not inline), then call [`Hints::published`] once
/// the write has committed.
pub(crate) struct Hints<'a> {
    notifier: &'a Notifier,
    keys: Vec<WakeKey>,
    payloads: Vec<String>,
    channel: &'a str,
    _slot: Option<InlineSlot<'a>>,
}

impl Hints<'_> {
    /// The namespace's NOTIFY channel.
    pub(crate) fn channel(&self) -> &str {
        self.channel
    }

    /// The payloads the statement must publish (empty when not inline).
    pub(crate) fn payloads(&self) -> &[String] {
        &self.payloads
    }

    /// After the commit: wakes local waiters, and publishes the hints through the sender unless
    /// the statement carried them. `carried` says whether the statement's NOTIFY part ran (it
    /// does not when the write found its work already done, e.g. a retry whose first attempt
    /// committed); with an empty payload list it never carried anything.
    pub(crate) fn published(self, carried: bool) {
        let inline = carried && !self.payloads.is_empty();
        for key in &self.keys {
            if inline {
                self.notifier.wake_local(key);
            } else {
                self.notifier.notify(key.clone());
            }
        }
    }
}

impl Notifier {
    /// The wake-ups of one write of `keys` (inline when the slot is free).
    pub(crate) fn hints(&self, keys: Vec<WakeKey>) -> Hints<'_> {
        let slot = if keys.is_empty() {
            None
        } else {
            self.inline_slot()
        };
        let payloads = if slot.is_some() {
            keys.iter().map(|k| self.payload(k)).collect()
        } else {
            Vec::new()
        };
        Hints {
            notifier: self,
            keys,
            payloads,
            channel: &self.channel,
            _slot: slot,
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The NOTIFY channel of a schema: one channel per namespace, so namespaces sharing a database
/// do not wake each other.
pub(crate) fn channel_name(schema: &str) -> String {
    format!("dbosify_{schema}")
}

/// How often the LISTEN connection is probed with a trivial query when nothing arrives: a
/// half-open TCP connection (peer gone without a reset) would otherwise be waited on forever.
const LISTEN_KEEPALIVE: Duration = Duration::from_secs(15);
/// How long the keep-alive probe may take before the connection is declared lost.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection backoff of the LISTEN and sender connections: first and largest delay.
const RECONNECT_FIRST: Duration = Duration::from_millis(20);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Least time between the starts of two hint batches. The first hint after a quiet period goes
/// out at once (no added latency); under load, hints gathered meanwhile share one NOTIFY
/// transaction, so the sender costs the server at most `1 s / HINT_MIN_INTERVAL` transactions
/// per second however busy the process is.
const HINT_MIN_INTERVAL: Duration = Duration::from_micros(1000);

/// Opens a fresh LISTEN connection on its own single-connection pool (never the shared pool:
/// it must not hold one of the pool's slots, and a dead one is simply dropped).
async fn open_listener(options: &PgConnectOptions, channel: &str) -> Result<PgListener> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    // Reconnection is ours (with wake-all after LISTEN), not the driver's.
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    listener.listen(channel).await?;
    Ok(listener)
}

fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(RECONNECT_MAX)
}

fn jittered(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    Duration::from_millis(ms + rand::random_range(0..=ms / 4))
}

async fn listen_loop(
    first: PgListener,
    options: PgConnectOptions,
    channel: String,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut current = Some(first);
    let mut backoff = RECONNECT_FIRST;
    loop {
        if shared.is_shut_down() {
            return;
        }
        let mut listener = match current.take() {
            Some(l) => l,
            None => {
                let opened = tokio::select! {
                    r = open_listener(&options, &channel) => r,
                    _ = shutdown.changed() => return,
                };
                match opened {
                    Ok(l) => {
                        shared
                            .counters
                            .listener_connects
                            .fetch_add(1, Ordering::Relaxed);
                        info!(%channel, "LISTEN connection re-established; waking all waiters");
                        // LISTEN is in place: whatever was committed while no one listened is
                        // found by the waiters' re-probe.
                        shared.wake_all(true);
                        backoff = RECONNECT_FIRST;
                        l
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?backoff, "cannot re-open the LISTEN connection");
                        // Nobody hears hints meanwhile: let waiters poll at the reconnect pace.
                        shared.wake_all(true);
                        tokio::select! {
                            _ = tokio::time::sleep(jittered(backoff)) => {}
                            _ = shutdown.changed() => return,
                        }
                        backoff = next_backoff(backoff);
                        continue;
                    }
                }
            }
        };
        // Receive until the connection is lost.
        let lost = loop {
            let next = tokio::select! {
                n = listener.try_recv() => n,
                _ = tokio::time::sleep(LISTEN_KEEPALIVE) => {
                    let ping = tokio::time::timeout(
                        KEEPALIVE_TIMEOUT,
                        sqlx::query("SELECT 1").execute(&mut listener),
                    )
                    .await;
                    match ping {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break "keep-alive probe timed out".to_string(),
                    }
                }
                _ = shutdown.changed() => return,
            };
            match next {
                Ok(Some(n)) => {
                    shared
                        .counters
                        .notifications_received
                        .fetch_add(1, Ordering::Relaxed);
                    let Some((origin, rest)) = n.payload().split_once(SEP) else {
                        continue;
                    };
                    if origin == shared.origin {
                        continue;
                    }
                    if let Some(key) = WakeKey::parse(rest) {
                        shared.wake(&key);
                    }
                }
                Ok(None) => break "connection closed".to_string(),
                Err(e) => break e.to_string(),
            }
        };
        warn!(reason = %lost, "LISTEN connection lost; reconnecting");
        drop(listener);
        shared.wake_all(true);
    }
}

async fn open_sender(options: &PgConnectOptions, shared: &Shared) -> Option<PgConnection> {
    // Hints are not data: their commit need not wait for the WAL flush.
    let options = options.clone().options([("synchronous_commit", "off")]);
    match options.connect().await {
        Ok(c) => {
            shared
                .counters
                .sender_connects
                .fetch_add(1, Ordering::Relaxed);
            Some(c)
        }
        Err(e) => {
            warn!(error = %e, "cannot open the notification connection");
            None
        }
    }
}

const SEND_SQL: &str = "SELECT count(pg_notify($1, p)) FROM unnest($2::text[]) AS p";

async fn send_batch(conn: &mut PgConnection, channel: &str, batch: &[String]) -> Result<()> {
    sqlx::query(SEND_SQL)
        .bind(channel)
        .bind(batch)
        .execute(conn)
        .await?;
    Ok(())
}

async fn send_loop(
    options: PgConnectOptions,
    channel: String,
    mut rx: mpsc::UnboundedReceiver<String>,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut conn: Option<PgConnection> = None;
    let mut batch: Vec<String> = Vec::new();
    let mut backoff = RECONNECT_FIRST;
    let mut last_batch: Option<Instant> = None;
    loop {
        if batch.is_empty() {
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => batch.push(p),
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
        if let Some(next) = last_batch.map(|t| t + HINT_MIN_INTERVAL)
            && next > Instant::now()
        {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.changed() => return,
            }
        }
        while let Ok(p) = rx.try_recv() {
            batch.push(p);
        }
        batch.sort_unstable();
        batch.dedup();
        if conn.is_none() {
            conn = open_sender(&options, &shared).await;
            if conn.is_none() {
                // Keep the batch (new hints join it) and try again shortly.
                tokio::select! {
                    _ = tokio::time::sleep(jittered(backoff)) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = next_backoff(backoff);
                continue;
            }
            backoff = RECONNECT_FIRST;
        }
        let Some(c) = conn.as_mut() else { continue };
        last_batch = Some(Instant::now());
        match send_batch(c, &channel, &batch).await {
            Ok(()) => {
                shared.counters.batches_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // The connection is probably gone: retry once on a new one, then drop the batch
                // (receivers find the data on their fallback re-check).
                debug!(error = %e, "sending notifications failed; reconnecting");
                conn = open_sender(&options, &shared).await;
                let resent = match conn.as_mut() {
                    Some(c) => send_batch(c, &channel, &batch).await.is_ok(),
                    None => false,
                };
                if resent {
                    shared.counters.batches_sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    conn = None;
                    warn!(hints = batch.len(), "dropping notification hints");
                    shared
                        .counters
                        .hints_dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            }
        }
        batch.clear();
    }
}

impl crate::SystemDatabase {
    /// Registers interest in `key` (register first, then probe).
    pub fn register_waiter(&self, key: WakeKey) -> Waiter {
        self.inner.notifier.register(key)
    }

    /// The current point in this process's sequence of wake-ups; see
    /// [`Self::register_waiter_since`].
    pub fn wake_mark(&self) -> Mark {
        self.inner.notifier.mark()
    }

    /// Registers interest in `key`, already woken when `key` was (or may have been) woken since
    /// `since`. With a mark taken before a write, a caller that finds its waiter not woken knows
    /// that no notification for `key` reached this process since then, and may skip a probe.
    pub fn register_waiter_since(&self, key: WakeKey, since: Mark) -> Waiter {
        self.inner.notifier.register_since(key, since).0
    }

    /// Publishes a wake-up hint for `key` (call after the commit that made it true).
    pub fn notify(&self, key: WakeKey) {
        self.inner.notifier.notify(key)
    }

    /// The wake-ups of one write of `keys` (see [`Hints`]).
    pub(crate) fn hints(&self, keys: Vec<WakeKey>) -> Hints<'_> {
        self.inner.notifier.hints(keys)
    }

    /// Counters of this handle's notification plumbing.
    pub fn notifier_stats(&self) -> NotifierStats {
        self.inner.notifier.stats()
    }

    /// The one waiting loop: registers on `key`, then probes until the probe yields a value or
    /// the timeout passes (`None` waits forever). Returns `Ok(None)` on timeout. The probe runs
    /// at least once, and once more after the deadline's wait.
    pub async fn wait_for<T, F, Fut>(
        &self,
        key: WakeKey,
        timeout: Option<Duration>,
        probe: F,
    ) -> Result<Option<T>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        self.wait_for_since(key, timeout, None, probe).await
    }

    /// [`Self::wait_for`], for a caller that knows the probe would have found nothing at
    /// `since` (a mark taken before the write that creates what it waits for): unless `key`
    /// was woken since then, the first probe is skipped and the wait starts at once.
    pub async fn wait_for_since<T, F, Fut>(
        &self,
        key: WakeKey,
        timeout: Option<Duration>,
        since: Option<Mark>,
        mut probe: F,
    ) -> Result<Option<T>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let deadline = timeout.map(|t| Instant::now() + t);
        let (waiter, mut skip_probe) = match since {
            Some(mark) => {
                let (w, woken) = self.inner.notifier.register_since(key, mark);
                (w, !woken)
            }
            None => (self.register_waiter(key), false),
        };
        loop {
            if !std::mem::take(&mut skip_probe) {
                if let Some(v) = probe().await? {
                    return Ok(Some(v));
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(None);
                }
            }
            if self.inner.notifier.shared.is_shut_down() {
                return Err(crate::Error::Shutdown);
            }
            waiter.wait(deadline).await;
        }
    }
}

//! Wake-ups across processes: one LISTEN connection per process dispatching notifications to
//! local waiters, and one sender that publishes hints after commits.
//!
//! Notifications are hints; the database is the truth. A waiter registers its key *before* it
//! probes the database, re-probes after every wake, and wakes on its own every
//! `fallback_poll_interval` in case a notification was lost. After the LISTEN connection drops,
//! every waiter is woken so it re-probes whatever it was waiting on.
//!
//! Hints are sent after the data commit, outside the writer's transaction, batched, on a
//! dedicated connection with `synchronous_commit = off`: a NOTIFY inside a write transaction would
//! serialize every writer's commit on Postgres's notification-queue lock.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, warn};

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
}

const SEP: char = '\u{1f}';

impl WakeKey {
    fn payload(&self) -> String {
        match self {
            WakeKey::Queue(q) => format!("q{SEP}{q}"),
            WakeKey::Message(w) => format!("m{SEP}{w}"),
            WakeKey::Event(w, k) => format!("e{SEP}{w}{SEP}{k}"),
            WakeKey::Completion(w) => format!("c{SEP}{w}"),
            WakeKey::Status(w) => format!("s{SEP}{w}"),
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
            _ => return None,
        })
    }
}

type WaiterMap = HashMap<WakeKey, Vec<Weak<Notify>>>;

struct Shared {
    waiters: Mutex<WaiterMap>,
    fallback: Duration,
    shutdown: Notify,
}

impl Shared {
    fn wake(&self, key: &WakeKey) {
        let Ok(mut map) = self.waiters.lock() else {
            return;
        };
        if let Some(list) = map.get_mut(key) {
            list.retain(|w| match w.upgrade() {
                Some(n) => {
                    n.notify_one();
                    true
                }
                None => false,
            });
            if list.is_empty() {
                map.remove(key);
            }
        }
    }

    fn wake_all(&self) {
        let Ok(mut map) = self.waiters.lock() else {
            return;
        };
        map.retain(|_, list| {
            list.retain(|w| match w.upgrade() {
                Some(n) => {
                    n.notify_one();
                    true
                }
                None => false,
            });
            !list.is_empty()
        });
    }
}

/// The process's notification hub (owned by the [`crate::SystemDatabase`]).
pub(crate) struct Notifier {
    shared: Arc<Shared>,
    outbox: mpsc::UnboundedSender<String>,
}

/// A registered interest in one key. Register before probing; drop when done.
pub struct Waiter {
    notify: Arc<Notify>,
    fallback: Duration,
}

impl Waiter {
    /// Waits until woken, the fallback interval passes, or `deadline` (if any) is reached,
    /// whichever comes first. The caller re-probes the database afterwards.
    pub async fn wait(&self, deadline: Option<Instant>) {
        let mut until = Instant::now() + self.fallback;
        if let Some(d) = deadline {
            until = until.min(d);
        }
        let _ = tokio::time::timeout_at(until, self.notify.notified()).await;
    }
}

impl Notifier {
    pub(crate) async fn start(pool: &PgPool, config: &Config) -> Result<Self> {
        let channel = channel_name(&config.schema);
        let shared = Arc::new(Shared {
            waiters: Mutex::new(HashMap::new()),
            fallback: config.fallback_poll_interval,
            shutdown: Notify::new(),
        });
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(&channel).await?;
        tokio::spawn(listen_loop(listener, shared.clone()));
        let (outbox, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(
            config.database_url.clone(),
            channel,
            rx,
            shared.clone(),
        ));
        Ok(Self { shared, outbox })
    }

    /// Registers interest in `key`.
    pub(crate) fn register(&self, key: WakeKey) -> Waiter {
        let notify = Arc::new(Notify::new());
        if let Ok(mut map) = self.shared.waiters.lock() {
            map.entry(key).or_default().push(Arc::downgrade(&notify));
        }
        Waiter {
            notify,
            fallback: self.shared.fallback,
        }
    }

    /// Publishes a hint after a commit: wakes local waiters at once and tells other processes.
    pub(crate) fn notify(&self, key: WakeKey) {
        self.shared.wake(&key);
        let _ = self.outbox.send(key.payload());
    }

    pub(crate) fn shutdown(&self) {
        self.shared.shutdown.notify_waiters();
        self.shared.wake_all();
    }
}

/// The NOTIFY channel of a schema: one channel per namespace, so namespaces sharing a database
/// do not wake each other.
fn channel_name(schema: &str) -> String {
    format!("dbosify_{schema}")
}

async fn listen_loop(mut listener: PgListener, shared: Arc<Shared>) {
    loop {
        let next = tokio::select! {
            n = listener.try_recv() => n,
            _ = shared.shutdown.notified() => return,
        };
        match next {
            Ok(Some(n)) => {
                if let Some(key) = WakeKey::parse(n.payload()) {
                    shared.wake(&key);
                }
            }
            Ok(None) => {
                // The connection was lost; the next call reconnects. Anything sent meanwhile is
                // lost, so every waiter re-probes.
                warn!("LISTEN connection lost; reconnecting and waking all waiters");
                shared.wake_all();
            }
            Err(e) => {
                warn!(error = %e, "LISTEN connection failed; retrying");
                shared.wake_all();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn send_loop(
    url: String,
    channel: String,
    mut rx: mpsc::UnboundedReceiver<String>,
    shared: Arc<Shared>,
) {
    let mut conn: Option<PgConnection> = None;
    let mut batch: Vec<String> = Vec::new();
    loop {
        if batch.is_empty() {
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => batch.push(p),
                    None => return,
                },
                _ = shared.shutdown.notified() => return,
            }
        }
        while let Ok(p) = rx.try_recv() {
            batch.push(p);
        }
        batch.sort_unstable();
        batch.dedup();
        if conn.is_none() {
            conn = open_sender(&url).await;
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let sent = sqlx::query("SELECT count(pg_notify($1, p)) FROM unnest($2::text[]) AS p")
            .bind(&channel)
            .bind(&batch)
            .execute(&mut *c)
            .await;
        match sent {
            Ok(_) => batch.clear(),
            Err(e) => {
                // Hints are best effort; waiters fall back to polling. Retry once on a new
                // connection, then drop the batch.
                debug!(error = %e, "sending notifications failed");
                conn = None;
                if let Some(mut c) = open_sender(&url).await {
                    let _ =
                        sqlx::query("SELECT count(pg_notify($1, p)) FROM unnest($2::text[]) AS p")
                            .bind(&channel)
                            .bind(&batch)
                            .execute(&mut c)
                            .await;
                    conn = Some(c);
                }
                batch.clear();
            }
        }
    }
}

async fn open_sender(url: &str) -> Option<PgConnection> {
    match PgConnection::connect(url).await {
        Ok(mut c) => {
            if let Err(e) = sqlx::query("SET synchronous_commit = off")
                .execute(&mut c)
                .await
            {
                warn!(error = %e, "cannot configure the notification connection");
            }
            Some(c)
        }
        Err(e) => {
            warn!(error = %e, "cannot open the notification connection");
            None
        }
    }
}

impl crate::SystemDatabase {
    /// Registers interest in `key` (register first, then probe).
    pub fn register_waiter(&self, key: WakeKey) -> Waiter {
        self.inner.notifier.register(key)
    }

    /// Publishes a wake-up hint for `key` (call after the commit that made it true).
    pub fn notify(&self, key: WakeKey) {
        self.inner.notifier.notify(key)
    }

    /// The one waiting loop: registers on `key`, then probes until the probe yields a value or
    /// the timeout passes (`None` waits forever). Returns `Ok(None)` on timeout.
    pub async fn wait_for<T, F, Fut>(
        &self,
        key: WakeKey,
        timeout: Option<Duration>,
        mut probe: F,
    ) -> Result<Option<T>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let deadline = timeout.map(|t| Instant::now() + t);
        let waiter = self.register_waiter(key);
        loop {
            if let Some(v) = probe().await? {
                return Ok(Some(v));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            waiter.wait(deadline).await;
        }
    }
}

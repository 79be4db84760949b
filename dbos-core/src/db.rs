//! The system-database handle: configuration, the connection pool, schema set-up, and the retry
//! rule every idempotent operation goes through.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::notifier::Notifier;

/// How to reach and shape the system database.
#[derive(Debug, Clone)]
pub struct Config {
    /// A `postgres://` URL.
    pub database_url: String,
    /// The Postgres schema holding the system tables (one per namespace).
    pub schema: String,
    /// Maximum connections of the pool (the LISTEN connection is extra). The default, 10, is
    /// deliberately small: connections beyond what the server's cores can serve only add context
    /// switches, and each new one is a cold server process (its catalog caches and prepared
    /// statements built in the middle of the burst that opened it). On a 2-core host, 10 beat 20
    /// on a burst of 200 concurrent workflows and matched it on 1,000.
    pub max_connections: u32,
    /// How often waiters re-check the database when no notification arrives (lost-notification
    /// fallback). Wake-ups normally travel by LISTEN/NOTIFY.
    pub fallback_poll_interval: Duration,
    /// Largest accepted serialized value (inputs, outputs, messages, events), in bytes.
    pub max_value_bytes: usize,
    /// How many times an idempotent operation is retried after a transient failure.
    pub max_retries: u32,
}

impl Config {
    /// A configuration with defaults for everything but the URL and schema.
    pub fn new(database_url: impl Into<String>, schema: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            schema: schema.into(),
            max_connections: 10,
            fallback_poll_interval: Duration::from_secs(2),
            max_value_bytes: 8 * 1024 * 1024,
            max_retries: 8,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) config: Config,
    /// The schema name, quoted, ready to splice into SQL text (validated at connect).
    pub(crate) qschema: String,
    pub(crate) notifier: Notifier,
}

/// A handle on the system database: one per process, cheap to clone.
#[derive(Clone)]
pub struct SystemDatabase {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for SystemDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemDatabase")
            .field("schema", &self.inner.config.schema)
            .finish_non_exhaustive()
    }
}

impl SystemDatabase {
    /// Connects, applies the schema (idempotent, safe when several processes start at once) and
    /// starts the process's LISTEN connection.
    ///
    /// Every connection (pool, LISTEN, hint sender) carries the URL's `application_name`, or
    /// [`DEFAULT_APPLICATION_NAME`] when the URL sets none, so operators can find this process's
    /// backends in `pg_stat_activity`.
    pub async fn connect(config: Config) -> Result<Self> {
        validate_schema_name(&config.schema)?;
        let mut options: PgConnectOptions = config
            .database_url
            .parse::<PgConnectOptions>()?
            .log_statements(tracing::log::LevelFilter::Trace);
        if options.get_application_name().is_none() {
            options = options.application_name(DEFAULT_APPLICATION_NAME);
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        let qschema = format!("\"{}\"", config.schema);
        retry_with(&config, "apply schema", || {
            crate::migrate::apply(&pool, &config.schema, &qschema)
        })
        .await?;
        let notifier = Notifier::start(&options, &config).await?;
        debug!(schema = %config.schema, "system database ready");
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                config,
                qschema,
                notifier,
            }),
        })
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The configuration this handle was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.inner.config.schema
    }

    /// Replaces `{s}` in a statement template with the quoted schema name.
    pub(crate) fn sql(&self, template: &str) -> String {
        template.replace("{s}", &self.inner.qschema)
    }

    /// Runs an idempotent operation, retrying it with a short backoff after transient failures
    /// (dropped connection, server restart, serialization failure). See [`retry_with`].
    pub(crate) async fn retry<T, E, F, Fut>(&self, what: &'static str, op: F) -> Result<T>
    where
        E: Into<Error>,
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        retry_with(&self.inner.config, what, op).await
    }

    /// Checks a serialized value against the size limit.
    pub(crate) fn check_size(&self, what: &'static str, value: &str) -> Result<()> {
        let limit = self.inner.config.max_value_bytes;
        if value.len() > limit {
            return Err(Error::ValueTooLarge {
                what,
                size: value.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Closes the pool and stops the listener.
    pub async fn close(&self) {
        self.inner.notifier.shutdown();
        self.inner.pool.close().await;
    }
}

/// The `application_name` of this crate's connections when the URL does not set one.
pub const DEFAULT_APPLICATION_NAME: &str = "dbosify";

/// The retry rule of every idempotent operation.
///
/// A transient failure (see [`Error::is_transient`]) is retried up to `config.max_retries`
/// times with a jittered exponential backoff (10 ms doubling to about 1.3 s). On top of that,
/// a *lost connection* is retried at once, without counting, up to `max_connections + 2` times:
/// after a server restart or `pg_terminate_backend`, every idle connection of the pool is dead
/// and each attempt discards one of them, so the first retries must not wait or exhaust the
/// budget on connections that were known to be stale.
///
/// The operation must be idempotent: a failure after the server committed (lost
/// acknowledgement) runs it again.
pub(crate) async fn retry_with<T, E, F, Fut>(
    config: &Config,
    what: &'static str,
    mut op: F,
) -> Result<T>
where
    E: Into<Error>,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    let mut attempt = 0u32;
    let mut quick_left = config.max_connections.saturating_add(2);
    loop {
        match op().await.map_err(Into::into) {
            Err(e) if e.is_connection_loss() && quick_left > 0 => {
                quick_left -= 1;
                debug!(operation = what, error = %e, "connection lost, retrying at once");
            }
            Err(e) if e.is_transient() && attempt < config.max_retries => {
                attempt += 1;
                let base = 5u64 << attempt.min(8);
                let jitter = rand::random_range(0..=base / 2);
                warn!(operation = what, attempt, error = %e, "transient failure, retrying");
                tokio::time::sleep(Duration::from_millis(base + jitter)).await;
            }
            other => return other,
        }
    }
}

/// Milliseconds since the Unix epoch, from the local clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Schema names become part of SQL text and of a NOTIFY channel name, so they are restricted to
/// lower-case ASCII letters, digits and `_`, starting with a letter or `_`, at most 48 bytes.
pub fn validate_schema_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            what: "schema name",
            value: truncate(name),
            reason,
        })
    };
    if name.is_empty() || name.len() > 48 {
        return bad("must be 1 to 48 bytes");
    }
    let mut chars = name.chars();
    if !chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
    {
        return bad("must start with a lower-case letter or `_`");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return bad("may hold only lower-case letters, digits and `_`");
    }
    Ok(())
}

/// Checks an identifier-like value stored as data (run id, workflow name, queue, topic, key):
/// non-empty, at most 1024 bytes, no NUL and no control characters.
pub(crate) fn validate_text(what: &'static str, value: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            what,
            value: truncate(value),
            reason,
        })
    };
    if value.is_empty() {
        return bad("must not be empty");
    }
    if value.len() > 1024 {
        return bad("must be at most 1024 bytes");
    }
    if value.chars().any(|c| c.is_control()) {
        return bad("must not contain control characters");
    }
    Ok(())
}

fn truncate(value: &str) -> String {
    value.chars().take(80).collect()
}

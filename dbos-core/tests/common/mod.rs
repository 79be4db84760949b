//! Helpers shared by the dbos-core integration tests (each test binary uses a subset).
#![allow(dead_code)]

use std::time::Duration;

use dbos_core::{Config, EnqueueRequest, SystemDatabase, testing};
use sqlx::{Connection, PgConnection};

/// Installs a tracing subscriber once (RUST_LOG=dbos_core=debug to see retries/reconnects).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A fresh schema with the test defaults.
pub async fn fresh() -> SystemDatabase {
    init_tracing();
    testing::fresh_database().await.expect("connect")
}

/// A fresh schema with an adjusted configuration.
pub async fn fresh_with(adjust: impl FnOnce(&mut Config)) -> SystemDatabase {
    init_tracing();
    let mut config = testing::test_config();
    adjust(&mut config);
    SystemDatabase::connect(config).await.expect("connect")
}

/// A fresh schema whose waiters never fall back to polling within a test's time: any wake-up
/// observed must have travelled by LISTEN/NOTIFY (or a reconnect's wake-all).
pub async fn fresh_without_fallback() -> SystemDatabase {
    fresh_with(|c| c.fallback_poll_interval = Duration::from_secs(120)).await
}

/// A second handle on the same schema: its own pool, LISTEN connection and sender, as another
/// process would have.
pub async fn other_handle(db: &SystemDatabase) -> SystemDatabase {
    SystemDatabase::connect(db.config().clone())
        .await
        .expect("connect second handle")
}

/// Creates a run (ENQUEUED) so checkpoints and messages have a row to belong to.
pub async fn new_run(db: &SystemDatabase, id: &str) {
    db.enqueue(EnqueueRequest::new(
        id,
        "test-workflow",
        "test-queue",
        "null",
    ))
    .await
    .expect("enqueue");
}

/// A plain connection to the test database, outside any handle (writes through it send no
/// hint).
pub async fn plain_connection() -> PgConnection {
    PgConnection::connect(&testing::test_database_url())
        .await
        .expect("plain connection")
}

/// Adds (or replaces) `application_name` in a postgres URL.
pub fn with_application_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut params: Vec<String> = query
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty() && !p.starts_with("application_name="))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    params.push(format!("application_name={name}"));
    format!("{base}?{}", params.join("&"))
}

//! Test support: an isolated system schema per test on the project's private Postgres.
//!
//! Tests never use a mock database. The URL comes from `DBOSIFY_TEST_DATABASE_URL`, which
//! `scripts/test.sh` exports after starting a private Postgres.

use std::time::Duration;

use crate::{Config, Result, SystemDatabase};

/// The environment variable naming the test database.
pub const TEST_DATABASE_URL_VAR: &str = "DBOSIFY_TEST_DATABASE_URL";

/// The test database URL.
///
/// # Panics
/// When `DBOSIFY_TEST_DATABASE_URL` is unset: tests must run under `scripts/test.sh`.
pub fn test_database_url() -> String {
    std::env::var(TEST_DATABASE_URL_VAR).unwrap_or_else(|_| {
        panic!("{TEST_DATABASE_URL_VAR} is not set: run the tests with scripts/test.sh")
    })
}

/// A fresh schema name, unique to this call.
pub fn fresh_schema() -> String {
    format!("t_{}", uuid::Uuid::new_v4().simple())
}

/// A test configuration on a fresh schema, with a short fallback poll so lost-notification
/// tests stay quick.
pub fn test_config() -> Config {
    let mut config = Config::new(test_database_url(), fresh_schema());
    config.fallback_poll_interval = Duration::from_millis(500);
    // Many tests run at once against one server: keep each pool small.
    config.max_connections = 5;
    config
}

/// Connects to a fresh schema.
pub async fn fresh_database() -> Result<SystemDatabase> {
    SystemDatabase::connect(test_config()).await
}

//! A fresh Postgres database per example run.
//!
//! The admin URL comes from `DBOSIFY_TEST_DATABASE_URL` (exported by `scripts/test.sh`, e.g.
//! `postgres://postgres@127.0.0.1:54329/dbosify_test`). [`TestDatabase::create`] runs
//! `CREATE DATABASE conf_<label>_<random>` through it and hands out the new database's URL. The
//! examples use fixed workflow ids, so every run needs its own database.
//!
//! On drop the database is removed (`DROP DATABASE ... WITH (FORCE)`), except while the thread
//! is panicking (a failed test keeps its database for inspection; the name is in the panic
//! output via the log directory) or when `DBOSIFY_CONFORMANCE_KEEP_DATABASES` is set.
//!
//! The API is blocking: each operation runs on a short-lived thread with its own tokio runtime,
//! so it can be called from plain `#[test]`s and from inside async code alike.

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use crate::error::{Error, Result};
use crate::paths::sanitize;

/// Environment variable holding the admin database URL.
pub const DATABASE_URL_ENV: &str = "DBOSIFY_TEST_DATABASE_URL";

/// Environment variable that, when set, keeps databases after tests.
pub const KEEP_DATABASES_ENV: &str = "DBOSIFY_CONFORMANCE_KEEP_DATABASES";

/// Postgres limits identifiers to 63 bytes.
const MAX_IDENTIFIER: usize = 63;

/// The admin URL from [`DATABASE_URL_ENV`], or [`Error::MissingDatabaseUrl`] telling the reader
/// to run `scripts/test.sh`.
pub fn admin_url() -> Result<String> {
    match std::env::var(DATABASE_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Ok(url),
        _ => Err(Error::MissingDatabaseUrl),
    }
}

/// A database created for one test; dropped with it (see the module documentation).
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates `conf_<label>_<random>` on the server of [`admin_url`].
    pub fn create(label: &str) -> Result<Self> {
        Self::create_with_admin_url(&admin_url()?, label)
    }

    /// Creates `conf_<label>_<random>` on the server of `admin_url`.
    pub fn create_with_admin_url(admin_url: &str, label: &str) -> Result<Self> {
        let name = database_name(label);
        let url = with_database(admin_url, &name)?;
        let statement = format!("CREATE DATABASE \"{name}\"");
        let admin = admin_url.to_owned();
        block_on(move || async move {
            let mut conn = connect(&admin).await?;
            sqlx::raw_sql(&statement)
                .execute(&mut conn)
                .await
                .map_err(|e| Error::db(statement.clone(), e))?;
            let _ = conn.close().await;
            Ok(())
        })?;
        Ok(Self {
            name,
            url,
            admin_url: admin_url.to_owned(),
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL: the admin URL with the database name replaced.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `sql` (one or more statements, no parameters) in this database. For test setup and
    /// inspection.
    pub fn execute(&self, sql: &str) -> Result<()> {
        let url = self.url.clone();
        let sql = sql.to_owned();
        block_on(move || async move {
            let mut conn = connect(&url).await?;
            sqlx::raw_sql(&sql)
                .execute(&mut conn)
                .await
                .map_err(|e| Error::db(sql.clone(), e))?;
            let _ = conn.close().await;
            Ok(())
        })
    }

    /// Runs `sql` in this database and returns the first column of the first row as text
    /// (`None` when there is no row or the value is NULL). Write the query to yield text, e.g.
    /// `SELECT count(*)::text FROM ...`.
    pub fn query_scalar(&self, sql: &str) -> Result<Option<String>> {
        let url = self.url.clone();
        let sql = sql.to_owned();
        block_on(move || async move {
            let mut conn = connect(&url).await?;
            let value: Option<Option<String>> = sqlx::query_scalar(&sql)
                .fetch_optional(&mut conn)
                .await
                .map_err(|e| Error::db(sql.clone(), e))?;
            let _ = conn.close().await;
            Ok(value.flatten())
        })
    }

    /// Drops the database now (terminating its connections).
    pub fn drop_now(&self) -> Result<()> {
        let admin = self.admin_url.clone();
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        block_on(move || async move {
            let mut conn = connect(&admin).await?;
            sqlx::raw_sql(&statement)
                .execute(&mut conn)
                .await
                .map_err(|e| Error::db(statement.clone(), e))?;
            let _ = conn.close().await;
            Ok(())
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os(KEEP_DATABASES_ENV).is_some() {
            eprintln!(
                "conformance: keeping database {} ({})",
                self.name,
                redact(&self.url)
            );
            return;
        }
        if let Err(e) = self.drop_now() {
            eprintln!("conformance: could not drop database {}: {e}", self.name);
        }
    }
}

/// How long [`connect`] keeps retrying.
const CONNECT_PATIENCE: Duration = Duration::from_secs(20);

/// Connects to `url`, retrying for up to [`CONNECT_PATIENCE`] while the server refuses
/// connections (too many clients, starting up, restarting): tests share one server.
async fn connect(url: &str) -> Result<PgConnection> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    let mut delay = Duration::from_millis(50);
    loop {
        match PgConnection::connect(url).await {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() < deadline && is_transient(&e) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(Error::db(format!("connecting to {}", redact(url)), e)),
        }
    }
}

/// Connection failures worth retrying: I/O errors and the server's "too many connections" /
/// "starting up" / "shutting down" refusals (SQLSTATE class 53, 57P01-57P03).
fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("53") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// `conf_<sanitized label>_<12 random hex>`, at most 63 bytes.
fn database_name(label: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    let suffix = &random[..12];
    let mut label = sanitize(label);
    let budget = MAX_IDENTIFIER - "conf__".len() - suffix.len();
    label.truncate(budget);
    format!("conf_{label}_{suffix}")
}

/// `url` with its path (the database name) replaced by `database`; query parameters are kept.
pub fn with_database(url: &str, database: &str) -> Result<String> {
    let mut parsed = url::Url::parse(url)
        .map_err(|e| Error::db(format!("parsing {DATABASE_URL_ENV} ({})", redact(url)), e))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(Error::db(
            format!("{DATABASE_URL_ENV} ({})", redact(url)),
            "expected a postgres:// or postgresql:// URL",
        ));
    }
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.into())
}

/// `url` with any password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.into()
        }
        _ => url.to_owned(),
    }
}

/// Runs the future made by `make` to completion on a fresh thread with its own current-thread
/// tokio runtime (the future is created on that thread, so it need not be `Send`).
fn block_on<T, M, F>(make: M) -> Result<T>
where
    T: Send + 'static,
    M: FnOnce() -> F + Send + 'static,
    F: Future<Output = Result<T>>,
{
    let handle = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::db("starting a tokio runtime", e))?;
        runtime.block_on(make())
    });
    handle
        .join()
        .map_err(|_| Error::db("database helper thread", "panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_only_the_path() {
        assert_eq!(
            with_database(
                "postgres://postgres@127.0.0.1:54329/dbosify_test?sslmode=disable",
                "conf_x"
            )
            .expect("valid URL"),
            "postgres://postgres@127.0.0.1:54329/conf_x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgresql://u:p%2Fw@h/", "d").expect("valid URL"),
            "postgresql://u:p%2Fw@h/d"
        );
        assert!(with_database("mysql://h/d", "x").is_err());
    }

    #[test]
    fn database_names_are_safe_and_short() {
        let name = database_name("Saga fail-trip with a very long label that goes on and on");
        assert!(name.len() <= MAX_IDENTIFIER, "{name}");
        assert!(name.starts_with("conf_saga_fail_trip_"), "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        assert_ne!(database_name("x"), database_name("x"));
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5/d"),
            "postgres://u:***@h:5/d"
        );
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
    }
}

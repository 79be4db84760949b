//! Applies the system schema (`migrations/*.sql`) into one Postgres schema per namespace.
//!
//! Each migration runs in one transaction together with the version bump, under a
//! transaction-level advisory lock keyed by the schema name, so processes starting at once apply
//! each migration exactly once and the others wait and then see it done.

use sqlx::PgPool;
use tracing::info;

use crate::error::{Error, Result};

/// The ordered list of migrations: (version, SQL template with `{schema}` placeholders).
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_system_schema.sql")),
    (2, include_str!("../../migrations/0002_schedules.sql")),
];

/// The schema version this build expects.
pub const SCHEMA_VERSION: i64 = 2;

pub(crate) async fn apply(pool: &PgPool, schema: &str, qschema: &str) -> Result<()> {
    // Fast path: already at (or beyond) our version.
    if current_version(pool, schema).await? >= SCHEMA_VERSION {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('dbosify_migrations:' || $1))")
        .bind(schema)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA IF NOT EXISTS {qschema};
         CREATE TABLE IF NOT EXISTS {qschema}.dbosify_migrations (version BIGINT NOT NULL PRIMARY KEY);"
    ))
    .execute(&mut *tx)
    .await?;
    let current: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT max(version) FROM {qschema}.dbosify_migrations"
    ))
    .fetch_one(&mut *tx)
    .await?;
    let current = current.unwrap_or(0);
    for (version, template) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let sql = template.replace("{schema}", qschema);
        sqlx::raw_sql(&sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::Migration(format!("version {version}: {e}")))?;
        sqlx::query(&format!(
            "INSERT INTO {qschema}.dbosify_migrations (version) VALUES ($1)"
        ))
        .bind(version)
        .execute(&mut *tx)
        .await?;
        info!(schema, version, "applied system schema migration");
    }
    tx.commit().await?;
    Ok(())
}

async fn current_version(pool: &PgPool, schema: &str) -> Result<i64> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                        WHERE table_schema = $1 AND table_name = 'dbosify_migrations')",
    )
    .bind(schema)
    .fetch_one(pool)
    .await?;
    if !exists {
        return Ok(0);
    }
    let v: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT max(version) FROM \"{schema}\".dbosify_migrations"
    ))
    .fetch_one(pool)
    .await?;
    Ok(v.unwrap_or(0))
}

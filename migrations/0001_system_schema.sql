-- DBOSify system schema, version 1.
--
-- The tables workflow_status, operation_outputs, notifications, workflow_events,
-- workflow_events_history and queues use DBOS Transact's column names, types and meanings, so DBOS
-- tooling can read them. Everything DBOSify adds lives in tables and columns whose names start
-- with `dbosify_`.
--
-- `{schema}` is replaced by the quoted, validated schema name before this file runs. Every
-- statement is idempotent (IF NOT EXISTS), and the runner holds an advisory lock, so several
-- processes may start at once. Time columns are epoch milliseconds (BIGINT), as in DBOS.

CREATE TABLE IF NOT EXISTS {schema}.workflow_status (
    workflow_uuid              TEXT PRIMARY KEY,
    status                     TEXT,
    name                       TEXT,
    authenticated_user         TEXT,
    assumed_role               TEXT,
    authenticated_roles        TEXT,
    request                    TEXT,
    output                     TEXT,
    error                      TEXT,
    executor_id                TEXT,
    created_at                 BIGINT NOT NULL DEFAULT (EXTRACT(epoch FROM now()) * 1000.0)::bigint,
    updated_at                 BIGINT NOT NULL DEFAULT (EXTRACT(epoch FROM now()) * 1000.0)::bigint,
    application_version        TEXT,
    application_id             TEXT,
    class_name                 VARCHAR(255) DEFAULT NULL,
    config_name                VARCHAR(255) DEFAULT NULL,
    recovery_attempts          BIGINT DEFAULT 0,
    queue_name                 TEXT,
    workflow_timeout_ms        BIGINT,
    workflow_deadline_epoch_ms BIGINT,
    inputs                     TEXT,
    started_at_epoch_ms        BIGINT,
    deduplication_id           TEXT,
    priority                   INT4 NOT NULL DEFAULT 0,
    queue_partition_key        TEXT,
    forked_from                TEXT,
    owner_xid                  TEXT DEFAULT NULL,
    parent_workflow_id         TEXT DEFAULT NULL,
    serialization              TEXT DEFAULT NULL,
    delay_until_epoch_ms       BIGINT DEFAULT NULL,
    was_forked_from            BOOLEAN NOT NULL DEFAULT FALSE,
    rate_limited               BOOLEAN NOT NULL DEFAULT FALSE,
    completed_at               BIGINT,
    attributes                 JSONB,
    schedule_name              TEXT,
    debounce_deadline_epoch_ms BIGINT DEFAULT NULL,
    is_debounced               BOOLEAN NOT NULL DEFAULT FALSE,
    application_name           TEXT DEFAULT NULL,
    -- DBOSify: the token of the claim that moved this run to PENDING, so a claim whose commit
    -- acknowledgement was lost can be recognised on retry.
    dbosify_claim_token        TEXT DEFAULT NULL
);
CREATE INDEX IF NOT EXISTS workflow_status_created_at_index ON {schema}.workflow_status (created_at);
CREATE INDEX IF NOT EXISTS idx_workflow_status_forked_from ON {schema}.workflow_status (forked_from)
    WHERE forked_from IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_workflow_status_parent_workflow_id ON {schema}.workflow_status (parent_workflow_id)
    WHERE parent_workflow_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_workflow_status_delayed ON {schema}.workflow_status (delay_until_epoch_ms)
    WHERE status = 'DELAYED';
CREATE UNIQUE INDEX IF NOT EXISTS uq_workflow_status_dedup_id ON {schema}.workflow_status (queue_name, deduplication_id)
    WHERE deduplication_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_workflow_status_pending ON {schema}.workflow_status (created_at)
    WHERE status = 'PENDING';
CREATE INDEX IF NOT EXISTS idx_workflow_status_failed ON {schema}.workflow_status (status, created_at)
    WHERE status IN ('ERROR', 'CANCELLED', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED');
CREATE INDEX IF NOT EXISTS idx_workflow_status_in_flight ON {schema}.workflow_status (queue_name, status, priority, created_at)
    WHERE status IN ('ENQUEUED', 'PENDING');
CREATE INDEX IF NOT EXISTS idx_workflow_status_rate_limited ON {schema}.workflow_status (queue_name, started_at_epoch_ms)
    WHERE rate_limited = TRUE;
CREATE INDEX IF NOT EXISTS idx_workflow_status_completed_at ON {schema}.workflow_status (completed_at)
    WHERE completed_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_workflow_status_started_at ON {schema}.workflow_status (started_at_epoch_ms)
    WHERE started_at_epoch_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_workflow_status_attributes ON {schema}.workflow_status USING GIN (attributes)
    WHERE attributes IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_workflow_status_executor_pending ON {schema}.workflow_status (executor_id)
    WHERE status = 'PENDING';

CREATE TABLE IF NOT EXISTS {schema}.operation_outputs (
    workflow_uuid          TEXT NOT NULL,
    function_id            INT4 NOT NULL,
    function_name          TEXT NOT NULL DEFAULT '',
    output                 TEXT,
    error                  TEXT,
    child_workflow_id      TEXT,
    started_at_epoch_ms    BIGINT,
    completed_at_epoch_ms  BIGINT,
    serialization          TEXT DEFAULT NULL,
    application_name       TEXT DEFAULT NULL,
    PRIMARY KEY (workflow_uuid, function_id),
    FOREIGN KEY (workflow_uuid) REFERENCES {schema}.workflow_status (workflow_uuid)
        ON UPDATE CASCADE ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS {schema}.notifications (
    destination_uuid     TEXT NOT NULL,
    topic                TEXT,
    message              TEXT NOT NULL,
    created_at_epoch_ms  BIGINT NOT NULL DEFAULT (EXTRACT(epoch FROM now()) * 1000.0)::bigint,
    message_uuid         TEXT NOT NULL DEFAULT gen_random_uuid()::TEXT PRIMARY KEY,
    serialization        TEXT DEFAULT NULL,
    consumed             BOOLEAN NOT NULL DEFAULT FALSE,
    -- DBOSify: total order of delivery within a destination (ties in created_at are common).
    dbosify_seq          BIGSERIAL,
    FOREIGN KEY (destination_uuid) REFERENCES {schema}.workflow_status (workflow_uuid)
        ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS idx_workflow_topic ON {schema}.notifications (destination_uuid, topic);
CREATE INDEX IF NOT EXISTS idx_notifications_unconsumed ON {schema}.notifications (destination_uuid, topic, dbosify_seq)
    WHERE NOT consumed;

CREATE TABLE IF NOT EXISTS {schema}.workflow_events (
    workflow_uuid  TEXT NOT NULL,
    key            TEXT NOT NULL,
    value          TEXT NOT NULL,
    serialization  TEXT DEFAULT NULL,
    PRIMARY KEY (workflow_uuid, key),
    FOREIGN KEY (workflow_uuid) REFERENCES {schema}.workflow_status (workflow_uuid)
        ON UPDATE CASCADE ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS {schema}.workflow_events_history (
    workflow_uuid  TEXT NOT NULL,
    function_id    INT4 NOT NULL,
    key            TEXT NOT NULL,
    value          TEXT NOT NULL,
    serialization  TEXT DEFAULT NULL,
    PRIMARY KEY (workflow_uuid, function_id, key),
    FOREIGN KEY (workflow_uuid) REFERENCES {schema}.workflow_status (workflow_uuid)
        ON UPDATE CASCADE ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS {schema}.queues (
    queue_id                        TEXT PRIMARY KEY DEFAULT gen_random_uuid()::TEXT,
    name                            TEXT NOT NULL UNIQUE,
    concurrency                     INT4,
    worker_concurrency              INT4,
    rate_limit_max                  INT4,
    rate_limit_period_sec           DOUBLE PRECISION,
    priority_enabled                BOOLEAN NOT NULL DEFAULT FALSE,
    partition_queue                 BOOLEAN NOT NULL DEFAULT FALSE,
    polling_interval_sec            DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    created_at                      BIGINT NOT NULL DEFAULT (EXTRACT(epoch FROM now()) * 1000.0)::bigint,
    updated_at                      BIGINT NOT NULL DEFAULT (EXTRACT(epoch FROM now()) * 1000.0)::bigint,
    application_name                TEXT DEFAULT NULL
);

-- DBOSify: live executors (worker processes) and their leases.
CREATE TABLE IF NOT EXISTS {schema}.dbosify_executors (
    executor_id          TEXT PRIMARY KEY,
    application_version  TEXT,
    started_at_epoch_ms  BIGINT NOT NULL,
    lease_expires_at_ms  BIGINT NOT NULL
);

-- DBOSify: aborts the current statement with a chosen SQLSTATE and detail. Multi-part writes
-- (checkpoint + consumed messages + events, or recv's consume + checkpoint) are single
-- statements, so one round trip and one commit; when a part finds the write cannot go ahead
-- (position taken, message consumed by someone else) the statement calls this to roll back
-- every part. VOLATILE so the planner never evaluates it ahead of time.
CREATE OR REPLACE FUNCTION {schema}.dbosify_abort(code TEXT, detail TEXT) RETURNS BOOLEAN
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = 'dbosify: ' || code, DETAIL = detail;
END
$$;

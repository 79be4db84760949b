-- DBOSify system schema, version 2: durable schedules.
--
-- One row per schedule. dbos-core treats `definition` and `state` as opaque JSON owned by the
-- layer above (the Temporal schedule and its counters); it owns the firing columns:
--   next_fire_at_ms  the next nominal fire time (epoch ms), NULL when none is coming (paused,
--                    exhausted, past its end);
--   running          ids of the runs this schedule started that were still open at its last
--                    evaluation (overlap policies look at them);
--   wake_on_finish   evaluate the schedule as soon as none of `running` is open any more
--                    (buffered starts, pause-on-failure);
--   version          bumped by every change (the conflict token).
-- Schedulers claim due rows with FOR UPDATE SKIP LOCKED and enqueue, advance and record in one
-- transaction.

CREATE TABLE IF NOT EXISTS {schema}.dbosify_schedules (
    schedule_id      TEXT PRIMARY KEY,
    definition       JSONB NOT NULL,
    state            JSONB NOT NULL DEFAULT '{}'::jsonb,
    next_fire_at_ms  BIGINT,
    running          TEXT[] NOT NULL DEFAULT '{}',
    wake_on_finish   BOOLEAN NOT NULL DEFAULT FALSE,
    version          BIGINT NOT NULL DEFAULT 1,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_dbosify_schedules_next_fire ON {schema}.dbosify_schedules (next_fire_at_ms)
    WHERE next_fire_at_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_dbosify_schedules_wake_on_finish ON {schema}.dbosify_schedules (schedule_id)
    WHERE wake_on_finish;

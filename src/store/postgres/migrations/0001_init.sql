-- The same model as the SQLite schema: times are Unix milliseconds, wire messages are
-- protobuf bytes. Every hot query is driven by a small table (inbox, activities) or a partial
-- index, so its cost does not grow with the number of finished instances kept.

-- One row per orchestration instance. The lock columns make the row the orchestration's
-- work-item lease: lock_expires <= now means nobody holds it.
CREATE TABLE instances (
    instance_id        TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    version            TEXT,
    execution_id       TEXT NOT NULL,
    status             INTEGER NOT NULL,
    input              TEXT,
    output             TEXT,
    custom_status      TEXT,
    failure_details    BYTEA,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    completed_at       BIGINT,
    scheduled_start_at BIGINT,
    parent_instance_id TEXT,
    tags               BYTEA,
    trace_context      BYTEA,
    -- Not dispatched before this time (scheduled starts, back-off after an abandon).
    ready_at           BIGINT NOT NULL DEFAULT 0,
    lock_token         TEXT,
    lock_owner         TEXT,
    lock_expires       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX instances_by_created ON instances (created_at, instance_id);
CREATE INDEX instances_by_completed ON instances (completed_at, instance_id) WHERE completed_at IS NOT NULL;
CREATE INDEX instances_by_ready ON instances (ready_at) WHERE ready_at > 0;
CREATE INDEX instances_by_lock_owner ON instances (lock_owner) WHERE lock_owner IS NOT NULL;
CREATE INDEX instances_by_lock_token ON instances (lock_token) WHERE lock_token IS NOT NULL;

-- The current execution's history, in order.
CREATE TABLE history (
    instance_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    event       BYTEA NOT NULL,
    PRIMARY KEY (instance_id, seq)
);

-- Events not yet seen by their orchestrator. kind = 1 marks the events that wake a
-- suspended instance (resume, terminate, rewind).
CREATE TABLE inbox (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id  TEXT NOT NULL,
    execution_id TEXT,
    priority     INTEGER NOT NULL,
    kind         INTEGER NOT NULL,
    visible_at   BIGINT NOT NULL,
    event        BYTEA NOT NULL
);
CREATE INDEX inbox_by_instance ON inbox (instance_id, priority, id);
CREATE INDEX inbox_by_visible ON inbox (visible_at);

-- Scheduled activities; the lock columns are the activity work item's lease.
CREATE TABLE activities (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id  TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    task_id      INTEGER NOT NULL,
    request      BYTEA NOT NULL,
    visible_at   BIGINT NOT NULL,
    lock_token   TEXT,
    lock_owner   TEXT,
    lock_expires BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX activities_by_ready ON activities (lock_expires, visible_at, id);
CREATE INDEX activities_by_instance ON activities (instance_id);
CREATE INDEX activities_by_lock_owner ON activities (lock_owner) WHERE lock_owner IS NOT NULL;
CREATE INDEX activities_by_lock_token ON activities (lock_token) WHERE lock_token IS NOT NULL;

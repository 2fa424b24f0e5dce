-- Durable entities (@name@key). One row per entity: its state, the critical section holding
-- its lock, and the lease columns that make one worker (on any sidecar) process it at a time.
CREATE TABLE entities (
    instance_id     TEXT PRIMARY KEY,
    state           TEXT,
    locked_by       TEXT,
    lock_section    TEXT,
    modified_at     BIGINT NOT NULL,
    -- Not dispatched before this time (back-off after an abandon).
    ready_at        BIGINT NOT NULL DEFAULT 0,
    lease_token     TEXT,
    lease_owner     TEXT,
    lease_expires   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX entities_by_lease_owner ON entities (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX entities_by_lease_token ON entities (lease_token) WHERE lease_token IS NOT NULL;
CREATE INDEX entities_by_locked_by ON entities (locked_by) WHERE locked_by IS NOT NULL;

-- Messages for entities, in arrival order (operations, lock requests, releases). deferred = 1
-- marks rows waiting for the entity's lock holder to release it: they do not make the entity
-- runnable until a new message (the release) arrives.
CREATE TABLE entity_queue (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id TEXT NOT NULL,
    deferred    INTEGER NOT NULL DEFAULT 0,
    visible_at  BIGINT NOT NULL,
    event       BYTEA NOT NULL
);
CREATE INDEX entity_queue_by_entity ON entity_queue (instance_id, id);
CREATE INDEX entity_queue_by_visible ON entity_queue (visible_at) WHERE deferred = 0;

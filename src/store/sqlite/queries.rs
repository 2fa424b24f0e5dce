//! The statements only SQLite says this way (the Postgres store's `queries.rs`
//! has the same names; what both run alike is `store::queries`). SQLite has no array binds:
//! a list, and the rows of a many-row insert, is one JSON array read with `json_each`.

use sqlx::SqliteConnection;

use crate::store::queries::instance_columns;
use crate::store::txn::Dialect;

impl Dialect for SqliteConnection {
    /// The single writer already keeps a concurrent create of the same id out.
    const SELECT_STATUS_FOR_UPDATE: &'static str = crate::store::queries::SELECT_STATUS;

    const LOCK_ORCHESTRATIONS: &'static str = concat!(
        "UPDATE instances SET lock_token = lower(hex(randomblob(16))), lock_owner = ?2, lock_expires = ?3 \
         WHERE instance_id IN ( \
           SELECT DISTINCT m.instance_id FROM inbox m JOIN instances i ON i.instance_id = m.instance_id \
           WHERE m.visible_at <= ?1 AND i.lock_expires <= ?1 AND i.ready_at <= ?1 AND (i.status != ?6 OR m.kind = 1) \
             AND (?5 IS NULL OR EXISTS (SELECT 1 FROM json_each(?5) f \
               WHERE f.value ->> 0 = i.name AND (f.value ->> 1 IS NULL OR f.value ->> 1 = COALESCE(i.version, '')))) \
           LIMIT ?4) \
         RETURNING lock_token, ",
        instance_columns!()
    );

    const LOCK_ACTIVITIES: &'static str = "UPDATE activities SET lock_token = lower(hex(randomblob(16))), lock_owner = ?2, lock_expires = ?3 \
         WHERE id IN (SELECT id FROM activities a WHERE lock_expires <= ?1 AND visible_at <= ?1 \
           AND (?5 IS NULL OR a.name IS NULL OR EXISTS (SELECT 1 FROM json_each(?5) f \
             WHERE f.value ->> 0 = a.name AND (f.value ->> 1 IS NULL OR f.value ->> 1 = COALESCE(a.version, '')))) \
           ORDER BY id LIMIT ?4) \
         RETURNING id, lock_token, instance_id, execution_id, request";

    const LOCK_ENTITIES: &'static str = "UPDATE entities SET lease_token = lower(hex(randomblob(16))), lease_owner = ?2, lease_expires = ?3 \
         WHERE instance_id IN ( \
           SELECT DISTINCT q.instance_id FROM entity_queue q JOIN entities e ON e.instance_id = q.instance_id \
           WHERE q.deferred = 0 AND q.visible_at <= ?1 AND e.lease_expires <= ?1 AND e.ready_at <= ?1 LIMIT ?4) \
         RETURNING lease_token, instance_id, state, locked_by, lock_section, modified_at";

    const RELEASE_ALL: &'static [&'static str] = &[
        "UPDATE instances SET lock_token = NULL, lock_owner = NULL, lock_expires = 0 \
         WHERE lock_owner IS NOT NULL AND (?1 IS NULL OR lock_owner = ?1)",
        "UPDATE activities SET lock_token = NULL, lock_owner = NULL, lock_expires = 0 \
         WHERE lock_owner IS NOT NULL AND (?1 IS NULL OR lock_owner = ?1)",
        "UPDATE entities SET lease_token = NULL, lease_owner = NULL, lease_expires = 0 \
         WHERE lease_owner IS NOT NULL AND (?1 IS NULL OR lease_owner = ?1)",
    ];

    const DELETE_ALL: &'static [&'static str] = &[
        "DELETE FROM history",
        "DELETE FROM inbox",
        "DELETE FROM activities",
        "DELETE FROM instances",
        "DELETE FROM entity_queue",
        "DELETE FROM entities",
    ];

    /// One sidecar per file: no other sidecar's lease runs out.
    const NEXT_DUE: &'static str = "SELECT MIN(t) AS due FROM ( \
           SELECT MIN(visible_at) AS t FROM inbox WHERE visible_at > ?1 \
           UNION ALL SELECT MIN(ready_at) FROM instances WHERE ready_at > 0 AND ready_at > ?1 \
           UNION ALL SELECT MIN(visible_at) FROM activities WHERE visible_at > ?1 \
           UNION ALL SELECT MIN(visible_at) FROM entity_queue WHERE deferred = 0 AND visible_at > ?1 \
           UNION ALL SELECT MIN(ready_at) FROM entities WHERE ready_at > ?1)";

    const CLAIM_INSTANCES: &'static str = concat!(
        "UPDATE instances SET lock_token = lower(hex(randomblob(16))), lock_owner = ?2, lock_expires = ?3 \
         WHERE instance_id IN (SELECT value FROM json_each(?4)) AND lock_expires <= ?1 AND ready_at <= ?1 \
           AND EXISTS (SELECT 1 FROM inbox m WHERE m.instance_id = instances.instance_id AND m.visible_at <= ?1 \
             AND (instances.status != ?5 OR m.kind = 1)) \
         RETURNING lock_token, ",
        instance_columns!()
    );
    const DELETE_INBOX_IDS: &'static str = "DELETE FROM inbox WHERE id IN (SELECT value FROM json_each(?1))";
    const DELETE_QUEUE_IDS: &'static str = "DELETE FROM entity_queue WHERE id IN (SELECT value FROM json_each(?1))";
    const SET_DEFERRED: &'static str = "UPDATE entity_queue SET deferred = id IN (SELECT value FROM json_each(?2)) \
         WHERE instance_id = ?1 AND (deferred = 1 OR id IN (SELECT value FROM json_each(?2)))";
    const UNDEFER_QUEUES: &'static str = "UPDATE entity_queue SET deferred = 0 WHERE instance_id IN (SELECT value FROM json_each(?1))";
    const SELECT_HISTORIES: &'static str = "SELECT instance_id, event FROM history \
         WHERE instance_id IN (SELECT value FROM json_each(?1)) ORDER BY instance_id, seq";
    const SELECT_INBOXES: &'static str = "SELECT id, instance_id, execution_id, priority, visible_at, event FROM inbox \
         WHERE instance_id IN (SELECT value FROM json_each(?1)) AND visible_at <= ?2 ORDER BY priority, id";
    const RENEW_LEASES: [&'static str; 3] = [
        "UPDATE instances SET lock_expires = ?1 WHERE lock_token IN (SELECT value FROM json_each(?2))",
        "UPDATE activities SET lock_expires = ?1 WHERE lock_token IN (SELECT value FROM json_each(?2))",
        "UPDATE entities SET lease_expires = ?1 WHERE lease_token IN (SELECT value FROM json_each(?2))",
    ];
    const INSERT_HISTORY: &'static str = "INSERT INTO history (instance_id, seq, event) \
         SELECT ?1, COALESCE(?2, (SELECT MAX(seq) + 1 FROM history WHERE instance_id = ?1), 0) + e.key, unhex(e.value) \
         FROM json_each(?3) e";
    /// Each element of ?1 a row: [instance_id, execution_id, task_id, request (hex), name, version].
    const INSERT_ACTIVITIES: &'static str = "INSERT INTO activities (instance_id, execution_id, task_id, request, visible_at, name, version) \
         SELECT a.value ->> 0, a.value ->> 1, a.value ->> 2, unhex(a.value ->> 3), ?2, a.value ->> 4, a.value ->> 5 \
         FROM json_each(?1) a";
    const INSERT_CLAIMED_ACTIVITIES: &'static str = "INSERT INTO activities (instance_id, execution_id, task_id, request, visible_at, name, version, \
           lock_token, lock_owner, lock_expires) \
         SELECT a.value ->> 0, a.value ->> 1, a.value ->> 2, unhex(a.value ->> 3), ?2, a.value ->> 4, a.value ->> 5, \
           lower(hex(randomblob(16))), ?3, ?4 \
         FROM json_each(?1) a \
         RETURNING id, lock_token, task_id";
}

//! The statements only Postgres says this way (the SQLite store's `queries.rs`
//! has the same names; what both run alike is `store::queries`): row locks, `SKIP LOCKED`
//! picks and array binds.

use sqlx::PgConnection;

use crate::store::queries::instance_columns;
use crate::store::txn::Dialect;

impl Dialect for PgConnection {
    /// Locks the row (when there is one) so a concurrent create of the same id waits for us.
    const SELECT_STATUS_FOR_UPDATE: &'static str = "SELECT status FROM instances WHERE instance_id = $1 FOR UPDATE";

    /// The candidates come from the inbox, so finished instances (which have none) cost
    /// nothing. SKIP LOCKED lets sidecars lease side by side without waiting on each other.
    const LOCK_ORCHESTRATIONS: &'static str = concat!(
        "UPDATE instances i SET lock_token = gen_random_uuid()::text, lock_owner = $2, lock_expires = $3 \
         FROM ( \
           SELECT c.instance_id AS picked FROM instances c \
           WHERE c.instance_id IN (SELECT m.instance_id FROM inbox m WHERE m.visible_at <= $1) \
             AND c.lock_expires <= $1 AND c.ready_at <= $1 \
             AND (c.status <> $6 OR EXISTS ( \
               SELECT 1 FROM inbox k WHERE k.instance_id = c.instance_id AND k.kind = 1 AND k.visible_at <= $1)) \
             AND ($5::jsonb IS NULL OR EXISTS (SELECT 1 FROM jsonb_array_elements($5::jsonb) f(v) \
               WHERE f.v ->> 0 = c.name AND (f.v ->> 1 IS NULL OR f.v ->> 1 = COALESCE(c.version, '')))) \
           LIMIT $4 FOR UPDATE OF c SKIP LOCKED \
         ) p \
         WHERE i.instance_id = p.picked \
         RETURNING lock_token, ",
        instance_columns!()
    );

    const LOCK_ACTIVITIES: &'static str = "UPDATE activities a SET lock_token = gen_random_uuid()::text, lock_owner = $2, lock_expires = $3 \
         FROM ( \
           SELECT id AS picked FROM activities c WHERE lock_expires <= $1 AND visible_at <= $1 \
             AND ($5::jsonb IS NULL OR c.name IS NULL OR EXISTS (SELECT 1 FROM jsonb_array_elements($5::jsonb) f(v) \
               WHERE f.v ->> 0 = c.name AND (f.v ->> 1 IS NULL OR f.v ->> 1 = COALESCE(c.version, '')))) \
           ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED \
         ) p \
         WHERE a.id = p.picked \
         RETURNING a.id, a.lock_token, a.instance_id, a.execution_id, a.request";

    /// Picked with `FOR UPDATE SKIP LOCKED` and written back `WHERE lease_token = $token`, as
    /// instances are: one entity runs in one place at a time across every sidecar.
    const LOCK_ENTITIES: &'static str = "UPDATE entities e SET lease_token = gen_random_uuid()::text, lease_owner = $2, lease_expires = $3 \
         FROM ( \
           SELECT c.instance_id AS picked FROM entities c \
           WHERE c.instance_id IN (SELECT q.instance_id FROM entity_queue q WHERE q.deferred = 0 AND q.visible_at <= $1) \
             AND c.lease_expires <= $1 AND c.ready_at <= $1 \
           LIMIT $4 FOR UPDATE OF c SKIP LOCKED \
         ) p \
         WHERE e.instance_id = p.picked \
         RETURNING e.lease_token, e.instance_id, e.state, e.locked_by, e.lock_section, e.modified_at";

    const RELEASE_ALL: &'static [&'static str] = &[
        "UPDATE instances SET lock_token = NULL, lock_owner = NULL, lock_expires = 0 \
         WHERE lock_owner IS NOT NULL AND ($1::text IS NULL OR lock_owner = $1)",
        "UPDATE activities SET lock_token = NULL, lock_owner = NULL, lock_expires = 0 \
         WHERE lock_owner IS NOT NULL AND ($1::text IS NULL OR lock_owner = $1)",
        "UPDATE entities SET lease_token = NULL, lease_owner = NULL, lease_expires = 0 \
         WHERE lease_owner IS NOT NULL AND ($1::text IS NULL OR lease_owner = $1)",
    ];

    const DELETE_ALL: &'static [&'static str] = &["TRUNCATE history, inbox, activities, instances, entity_queue, entities"];

    /// Leases running out count too: a crashed sidecar's work is taken over right then, not at
    /// the next sweep.
    const NEXT_DUE: &'static str = "SELECT MIN(t) AS due FROM ( \
           SELECT MIN(visible_at) AS t FROM inbox WHERE visible_at > $1 \
           UNION ALL SELECT MIN(ready_at) FROM instances WHERE ready_at > 0 AND ready_at > $1 \
           UNION ALL SELECT MIN(visible_at) FROM activities WHERE visible_at > $1 \
           UNION ALL SELECT MIN(lock_expires) FROM instances WHERE lock_token IS NOT NULL AND lock_expires > $1 \
           UNION ALL SELECT MIN(lock_expires) FROM activities WHERE lock_token IS NOT NULL AND lock_expires > $1 \
           UNION ALL SELECT MIN(visible_at) FROM entity_queue WHERE deferred = 0 AND visible_at > $1 \
           UNION ALL SELECT MIN(ready_at) FROM entities WHERE ready_at > $1 \
           UNION ALL SELECT MIN(lease_expires) FROM entities WHERE lease_token IS NOT NULL AND lease_expires > $1 \
         ) due";

    /// A row another transaction has locked is skipped (it is being leased or stepped
    /// elsewhere); the ones this transaction holds are not.
    const CLAIM_INSTANCES: &'static str = concat!(
        "UPDATE instances i SET lock_token = gen_random_uuid()::text, lock_owner = $2, lock_expires = $3 \
         FROM ( \
           SELECT c.instance_id AS picked FROM instances c \
           WHERE c.instance_id = ANY($4) AND c.lock_expires <= $1 AND c.ready_at <= $1 \
             AND EXISTS (SELECT 1 FROM inbox m WHERE m.instance_id = c.instance_id AND m.visible_at <= $1 \
               AND (c.status <> $5 OR m.kind = 1)) \
           FOR UPDATE OF c SKIP LOCKED \
         ) p \
         WHERE i.instance_id = p.picked \
         RETURNING lock_token, ",
        instance_columns!()
    );
    const DELETE_INBOX_IDS: &'static str = "DELETE FROM inbox WHERE id = ANY($1)";
    const DELETE_QUEUE_IDS: &'static str = "DELETE FROM entity_queue WHERE id = ANY($1)";
    const SET_DEFERRED: &'static str = "UPDATE entity_queue SET deferred = CASE WHEN id = ANY($2) THEN 1 ELSE 0 END \
         WHERE instance_id = $1 AND (deferred = 1 OR id = ANY($2))";
    const UNDEFER_QUEUES: &'static str = "UPDATE entity_queue SET deferred = 0 WHERE instance_id = ANY($1)";
    const SELECT_HISTORIES: &'static str = "SELECT instance_id, event FROM history WHERE instance_id = ANY($1) ORDER BY instance_id, seq";
    const SELECT_INBOXES: &'static str = "SELECT id, instance_id, execution_id, priority, visible_at, event FROM inbox \
         WHERE instance_id = ANY($1) AND visible_at <= $2 ORDER BY priority, id";

    /// Rows a write batch has locked are skipped, never waited for: that batch is ending those
    /// leases anyway, and waiting would let renewal and batches deadlock.
    const RENEW_LEASES: [&'static str; 3] = [
        "UPDATE instances SET lock_expires = $1 WHERE instance_id IN ( \
           SELECT instance_id FROM instances WHERE lock_token = ANY($2) FOR UPDATE SKIP LOCKED)",
        "UPDATE activities SET lock_expires = $1 WHERE id IN ( \
           SELECT id FROM activities WHERE lock_token = ANY($2) FOR UPDATE SKIP LOCKED)",
        "UPDATE entities SET lease_expires = $1 WHERE instance_id IN ( \
           SELECT instance_id FROM entities WHERE lease_token = ANY($2) FOR UPDATE SKIP LOCKED)",
    ];
    const INSERT_HISTORY: &'static str = "INSERT INTO history (instance_id, seq, event) \
         SELECT $1, COALESCE($2, (SELECT MAX(seq) + 1 FROM history WHERE instance_id = $1), 0) + e.n - 1, e.event \
         FROM UNNEST($3::bytea[]) WITH ORDINALITY AS e(event, n)";
    /// One array per column, $1 to $6.
    const INSERT_ACTIVITIES: &'static str = "INSERT INTO activities (instance_id, execution_id, task_id, request, visible_at, name, version) \
         SELECT a.instance_id, a.execution_id, a.task_id, a.request, $7, a.name, a.version \
         FROM UNNEST($1::text[], $2::text[], $3::int[], $4::bytea[], $5::text[], $6::text[]) \
           AS a(instance_id, execution_id, task_id, request, name, version)";
    const INSERT_CLAIMED_ACTIVITIES: &'static str = "INSERT INTO activities (instance_id, execution_id, task_id, request, visible_at, name, version, \
           lock_token, lock_owner, lock_expires) \
         SELECT a.instance_id, a.execution_id, a.task_id, a.request, $7, a.name, a.version, gen_random_uuid()::text, $8, $9 \
         FROM UNNEST($1::text[], $2::text[], $3::int[], $4::bytea[], $5::text[], $6::text[]) \
           AS a(instance_id, execution_id, task_id, request, name, version) \
         RETURNING id, lock_token, task_id";
}

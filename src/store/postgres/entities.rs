//! Entity rows and queues in Postgres: the statements behind the shared entity transactions
//! (`store::entities_txn`), plus the reads and the lease. The rules (what runs, who holds a
//! lock) are the engine's; this persists its decisions. Entities are leased like instances:
//! picked with `FOR UPDATE SKIP LOCKED`, written back `WHERE lease_token = $token`, so one
//! entity is processed in one place at a time across every sidecar on the database.

use sqlx::{PgConnection, PgPool, Row};

use super::super::encoding::{self, encode};
use super::super::entities_txn::{self, EntityStatements};
use super::super::filters;
use super::super::*;

pub(super) use entities_txn::clean;

pub(super) const DELETE_ALL: &str = "TRUNCATE entity_queue, entities";

pub(super) const RENEW: &str = "UPDATE entities SET lease_expires = $1 WHERE instance_id IN ( \
       SELECT instance_id FROM entities WHERE lease_token = ANY($2) FOR UPDATE SKIP LOCKED)";

pub(super) const RELEASE_ALL: &str = "UPDATE entities SET lease_token = NULL, lease_owner = NULL, lease_expires = 0 \
     WHERE lease_owner IS NOT NULL AND ($1::text IS NULL OR lease_owner = $1)";

/// Earliest future moments of entity work, to be part of the store's next-due query.
pub(super) const NEXT_DUE_PARTS: &str = "UNION ALL SELECT MIN(visible_at) FROM entity_queue WHERE deferred = 0 AND visible_at > $1 \
     UNION ALL SELECT MIN(ready_at) FROM entities WHERE ready_at > $1 \
     UNION ALL SELECT MIN(lease_expires) FROM entities WHERE lease_token IS NOT NULL AND lease_expires > $1";

const INSERT_ENTITY: &str = "INSERT INTO entities (instance_id, modified_at) VALUES ($1, $2) ON CONFLICT (instance_id) DO NOTHING";

const PUSH_QUEUE: &str = "INSERT INTO entity_queue (instance_id, visible_at, event) VALUES ($1, $2, $3)";

/// A step's state and lock ($1..$4), ending the lease token $6 holds on entity $5.
const WRITE_STEP: &str = "UPDATE entities SET state = $1, locked_by = $2, lock_section = $3, modified_at = $4, ready_at = 0, \
     lease_token = NULL, lease_owner = NULL, lease_expires = 0 WHERE instance_id = $5 AND lease_token = $6";

const DELETE_IF_UNQUEUED: &str =
    "DELETE FROM entities e WHERE e.instance_id = $1 AND NOT EXISTS (SELECT 1 FROM entity_queue q WHERE q.instance_id = e.instance_id)";

const DELETE_EMPTY: &str = "DELETE FROM entities e WHERE e.state IS NULL AND e.locked_by IS NULL AND e.lease_token IS NULL \
     AND NOT EXISTS (SELECT 1 FROM entity_queue q WHERE q.instance_id = e.instance_id)";

const DELETE_QUEUE: &str = "DELETE FROM entity_queue WHERE instance_id = $1";

const DELETE_ENTITY: &str = "DELETE FROM entities WHERE instance_id = $1";

const VISIBLE_QUEUE: &str = "SELECT id, event FROM entity_queue WHERE instance_id = $1 AND visible_at <= $2 ORDER BY id";

const SELECT_ENTITY: &str = "SELECT instance_id, state, locked_by, lock_section, modified_at, \
     (SELECT COUNT(*) FROM entity_queue q WHERE q.instance_id = e.instance_id) AS backlog \
     FROM entities e WHERE instance_id = $1";

/// Leases up to $4 entities with runnable messages ($1 = now) for owner $2 until $3.
const LOCK_ENTITIES: &str = "UPDATE entities e SET lease_token = gen_random_uuid()::text, lease_owner = $2, lease_expires = $3 \
     FROM ( \
       SELECT c.instance_id AS picked FROM entities c \
       WHERE c.instance_id IN (SELECT q.instance_id FROM entity_queue q WHERE q.deferred = 0 AND q.visible_at <= $1) \
         AND c.lease_expires <= $1 AND c.ready_at <= $1 \
       LIMIT $4 FOR UPDATE OF c SKIP LOCKED \
     ) p \
     WHERE e.instance_id = p.picked \
     RETURNING e.lease_token, e.instance_id, e.state, e.locked_by, e.lock_section, e.modified_at";

/// Ends a lease held with token $3 on entity $2; not dispatched again before $1.
const RELEASE_ENTITY: &str = "UPDATE entities SET lease_token = NULL, lease_owner = NULL, lease_expires = 0, ready_at = $1 \
     WHERE instance_id = $2 AND lease_token = $3";

impl EntityStatements for PgConnection {
    entities_txn::same_statements!();

    async fn delete_consumed(&mut self, ids: &[i64]) -> Result<()> {
        sqlx::query("DELETE FROM entity_queue WHERE id = ANY($1)")
            .bind(ids)
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn set_deferred(&mut self, id: &str, deferred: &[i64]) -> Result<()> {
        // One statement: undefer the old set and defer the new one.
        sqlx::query("UPDATE entity_queue SET deferred = CASE WHEN id = ANY($2) THEN 1 ELSE 0 END WHERE instance_id = $1 AND (deferred = 1 OR id = ANY($2))")
            .bind(id)
            .bind(deferred)
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn release_orphaned_locks(&mut self) -> Result<u32> {
        // Orphaned: the holder is gone or finished. Deferred messages may run again.
        let released = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH released AS ( \
               UPDATE entities e SET locked_by = NULL, lock_section = NULL WHERE e.locked_by IS NOT NULL AND NOT EXISTS ( \
                 SELECT 1 FROM instances i WHERE i.instance_id = e.locked_by AND i.status NOT IN ({})) \
               RETURNING e.instance_id), \
             undeferred AS (UPDATE entity_queue q SET deferred = 0 FROM released r WHERE q.instance_id = r.instance_id) \
             SELECT COUNT(*) FROM released",
            filters::terminal_statuses()
        )))
        .fetch_one(&mut *self)
        .await?;
        Ok(released.get::<i64, _>(0) as u32)
    }
}

pub(super) async fn get(pool: &PgPool, id: &str) -> Result<Option<EntitySummary>> {
    let row = sqlx::query(SELECT_ENTITY).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(entities_txn::summary).transpose()
}

pub(super) async fn query(pool: &PgPool, f: &EntityListFilter) -> Result<Vec<EntitySummary>> {
    let rows = filters::entities::<sqlx::Postgres>(f).build().fetch_all(pool).await?;
    rows.iter().map(entities_txn::summary).collect()
}

pub(super) async fn lock(pool: &PgPool, lease: &Lease<'_>, max: u32) -> Result<Vec<LockedEntity>> {
    let q = sqlx::query(LOCK_ENTITIES).bind(lease.now).bind(lease.owner).bind(lease.until);
    let rows = q.bind(i64::from(max)).fetch_all(pool).await?;
    // Nothing leased: spare the pool a connection.
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let leased = entities_txn::leased(&rows)?;
    let mut conn = pool.acquire().await?;
    entities_txn::with_queues(&mut *conn, leased, lease.now).await
}

pub(super) async fn release(conn: &mut PgConnection, id: &str, token: &str, ready_at: Micros) -> Result<()> {
    let done = sqlx::query(RELEASE_ENTITY).bind(ready_at).bind(id).bind(token);
    if done.execute(&mut *conn).await?.rows_affected() == 0 {
        return Err(StoreError::LeaseLost);
    }
    Ok(())
}

//! Entity rows and queues in SQLite: the statements behind the shared entity transactions
//! (`store::entities_txn`), plus the reads and the lease. The rules (what runs, who holds a
//! lock) are the engine's; this persists its decisions.

use sqlx::{Row, SqliteConnection, SqlitePool};

use super::super::encoding::{self, encode};
use super::super::entities_txn::{self, EntityStatements};
use super::super::filters;
use super::super::*;
use super::for_ids;

pub(super) use entities_txn::clean;

pub(super) const DELETE_ALL: [&str; 2] = ["DELETE FROM entity_queue", "DELETE FROM entities"];

pub(super) const RENEW: &str = "UPDATE entities SET lease_expires = ? WHERE lease_token = ?";

pub(super) const RELEASE_ALL: &str = "UPDATE entities SET lease_token = NULL, lease_owner = NULL, lease_expires = 0 \
     WHERE lease_owner IS NOT NULL AND (?1 IS NULL OR lease_owner = ?1)";

const INSERT_ENTITY: &str = "INSERT INTO entities (instance_id, modified_at) VALUES (?, ?) ON CONFLICT (instance_id) DO NOTHING";

const PUSH_QUEUE: &str = "INSERT INTO entity_queue (instance_id, visible_at, event) VALUES (?, ?, ?)";

/// A step's state and lock, ending the lease the token (last) holds on the entity (before it).
const WRITE_STEP: &str = "UPDATE entities SET state = ?, locked_by = ?, lock_section = ?, modified_at = ?, ready_at = 0, \
     lease_token = NULL, lease_owner = NULL, lease_expires = 0 WHERE instance_id = ? AND lease_token = ?";

const DELETE_IF_UNQUEUED: &str =
    "DELETE FROM entities WHERE instance_id = ? AND NOT EXISTS (SELECT 1 FROM entity_queue WHERE instance_id = entities.instance_id)";

const DELETE_EMPTY: &str = "DELETE FROM entities WHERE state IS NULL AND locked_by IS NULL AND lease_token IS NULL \
     AND NOT EXISTS (SELECT 1 FROM entity_queue q WHERE q.instance_id = entities.instance_id)";

const DELETE_QUEUE: &str = "DELETE FROM entity_queue WHERE instance_id = ?";

const DELETE_ENTITY: &str = "DELETE FROM entities WHERE instance_id = ?";

const VISIBLE_QUEUE: &str = "SELECT id, event FROM entity_queue WHERE instance_id = ? AND visible_at <= ? ORDER BY id";

const SELECT_ENTITY: &str = "SELECT instance_id, state, locked_by, lock_section, modified_at, \
     (SELECT COUNT(*) FROM entity_queue q WHERE q.instance_id = e.instance_id) AS backlog \
     FROM entities e WHERE instance_id = ?";

/// Leases up to ?4 entities with runnable messages (?1 = now) for owner ?2 until ?3.
const LOCK_ENTITIES: &str = "UPDATE entities SET lease_token = lower(hex(randomblob(16))), lease_owner = ?2, lease_expires = ?3 \
     WHERE instance_id IN ( \
       SELECT DISTINCT q.instance_id FROM entity_queue q JOIN entities e ON e.instance_id = q.instance_id \
       WHERE q.deferred = 0 AND q.visible_at <= ?1 AND e.lease_expires <= ?1 AND e.ready_at <= ?1 LIMIT ?4) \
     RETURNING lease_token, instance_id, state, locked_by, lock_section, modified_at";

/// Ends a lease held with the token (last) on the entity; not dispatched again before the first.
const RELEASE_ENTITY: &str =
    "UPDATE entities SET lease_token = NULL, lease_owner = NULL, lease_expires = 0, ready_at = ? WHERE instance_id = ? AND lease_token = ?";

impl EntityStatements for SqliteConnection {
    entities_txn::same_statements!();

    async fn delete_consumed(&mut self, ids: &[i64]) -> Result<()> {
        for_ids(self, "DELETE FROM entity_queue WHERE id IN (", ids).await
    }

    async fn set_deferred(&mut self, id: &str, deferred: &[i64]) -> Result<()> {
        sqlx::query("UPDATE entity_queue SET deferred = 0 WHERE instance_id = ? AND deferred = 1")
            .bind(id)
            .execute(&mut *self)
            .await?;
        for_ids(self, "UPDATE entity_queue SET deferred = 1 WHERE id IN (", deferred).await
    }

    async fn release_orphaned_locks(&mut self) -> Result<u32> {
        // Orphaned: the holder is gone or finished. Deferred messages may run again.
        let released = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE entities SET locked_by = NULL, lock_section = NULL WHERE locked_by IS NOT NULL AND NOT EXISTS ( \
               SELECT 1 FROM instances i WHERE i.instance_id = entities.locked_by AND i.status NOT IN ({})) \
             RETURNING instance_id",
            filters::terminal_statuses()
        )))
        .fetch_all(&mut *self)
        .await?;
        for r in &released {
            sqlx::query("UPDATE entity_queue SET deferred = 0 WHERE instance_id = ?")
                .bind(r.get::<String, _>(0))
                .execute(&mut *self)
                .await?;
        }
        Ok(released.len() as u32)
    }
}

pub(super) async fn get(pool: &SqlitePool, id: &str) -> Result<Option<EntitySummary>> {
    let row = sqlx::query(SELECT_ENTITY).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(entities_txn::summary).transpose()
}

pub(super) async fn query(pool: &SqlitePool, f: &EntityListFilter) -> Result<Vec<EntitySummary>> {
    let rows = filters::entities::<sqlx::Sqlite>(f).build().fetch_all(pool).await?;
    rows.iter().map(entities_txn::summary).collect()
}

/// Leases up to `max` entities with visible work on the writer, then reads their queues on a
/// reader so the single writer is held no longer than the lease itself.
pub(super) async fn lock(writer: &SqlitePool, reader: &SqlitePool, lease: &Lease<'_>, max: u32) -> Result<Vec<LockedEntity>> {
    let q = sqlx::query(LOCK_ENTITIES).bind(lease.now).bind(lease.owner).bind(lease.until);
    let leased = entities_txn::leased(&q.bind(i64::from(max)).fetch_all(writer).await?)?;
    let mut conn = reader.acquire().await?;
    entities_txn::with_queues(&mut *conn, leased, lease.now).await
}

pub(super) async fn release(writer: &SqlitePool, id: &str, token: &str, ready_at: Micros) -> Result<()> {
    let done = sqlx::query(RELEASE_ENTITY).bind(ready_at).bind(id).bind(token);
    if done.execute(writer).await?.rows_affected() == 0 {
        return Err(StoreError::LeaseLost);
    }
    Ok(())
}

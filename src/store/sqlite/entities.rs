//! Entity rows and queues in SQLite: the statements behind the shared entity transactions
//! (`store::entities_txn`), plus the reads and the lease. The rules (what runs, who holds a
//! lock) are the engine's; this persists its decisions.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::super::encoding::{decode, encode};
use super::super::entities_txn::{self, EntityStatements, entity};
use super::super::filters;
use super::super::*;
use super::for_ids;

pub(super) use entities_txn::clean;

pub(super) const DELETE_ALL: [&str; 2] = ["DELETE FROM entity_queue", "DELETE FROM entities"];

pub(super) const RENEW: &str = "UPDATE entities SET lease_expires = ? WHERE lease_token = ?";

pub(super) const RELEASE_ALL: &str = "UPDATE entities SET lease_token = NULL, lease_owner = NULL, lease_expires = 0 \
     WHERE lease_owner IS NOT NULL AND (?1 IS NULL OR lease_owner = ?1)";

pub(super) fn entity_from_row(row: &SqliteRow) -> Result<Entity> {
    Ok(entity(
        row.try_get("instance_id")?,
        row.try_get("state")?,
        row.try_get("locked_by")?,
        row.try_get("lock_section")?,
        row.try_get("modified_at")?,
    ))
}

fn summary_from_row(row: &SqliteRow) -> Result<EntitySummary> {
    Ok(EntitySummary {
        entity: entity_from_row(row)?,
        backlog: row.try_get::<i64, _>("backlog")? as u32,
    })
}

impl EntityStatements for SqliteConnection {
    async fn insert_entity(&mut self, id: &str, at: Micros) -> Result<()> {
        sqlx::query("INSERT INTO entities (instance_id, modified_at) VALUES (?, ?) ON CONFLICT (instance_id) DO NOTHING")
            .bind(id)
            .bind(at)
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn push_queue(&mut self, m: &Message) -> Result<()> {
        sqlx::query("INSERT INTO entity_queue (instance_id, visible_at, event) VALUES (?, ?, ?)")
            .bind(&m.instance_id)
            .bind(m.visible_at)
            .bind(encode(&m.event))
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn write_step(&mut self, token: &str, c: &EntityCommit) -> Result<bool> {
        let held = sqlx::query(
            "UPDATE entities SET state = ?, locked_by = ?, lock_section = ?, modified_at = ?, ready_at = 0, \
             lease_token = NULL, lease_owner = NULL, lease_expires = 0 WHERE instance_id = ? AND lease_token = ?",
        )
        .bind(&c.state)
        .bind(c.lock.as_ref().map(|l| &l.owner))
        .bind(c.lock.as_ref().map(|l| &l.critical_section_id))
        .bind(c.now)
        .bind(&c.instance_id)
        .bind(token)
        .execute(&mut *self)
        .await?;
        Ok(held.rows_affected() > 0)
    }

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

    async fn delete_if_unqueued(&mut self, id: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM entities WHERE instance_id = ? AND NOT EXISTS (SELECT 1 FROM entity_queue WHERE instance_id = entities.instance_id)",
        )
        .bind(id)
        .execute(&mut *self)
        .await?;
        Ok(())
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

    async fn delete_empty(&mut self) -> Result<u32> {
        let removed = sqlx::query(
            "DELETE FROM entities WHERE state IS NULL AND locked_by IS NULL AND lease_token IS NULL \
             AND NOT EXISTS (SELECT 1 FROM entity_queue q WHERE q.instance_id = entities.instance_id)",
        )
        .execute(&mut *self)
        .await?;
        Ok(removed.rows_affected() as u32)
    }

    async fn delete_queue(&mut self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM entity_queue WHERE instance_id = ?")
            .bind(id)
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn delete_entity(&mut self, id: &str) -> Result<u32> {
        let done = sqlx::query("DELETE FROM entities WHERE instance_id = ?")
            .bind(id)
            .execute(&mut *self)
            .await?;
        Ok(done.rows_affected() as u32)
    }

    async fn visible_queue(&mut self, id: &str, now: Micros) -> Result<Vec<(i64, HistoryEvent)>> {
        let rows = sqlx::query("SELECT id, event FROM entity_queue WHERE instance_id = ? AND visible_at <= ? ORDER BY id")
            .bind(id)
            .bind(now)
            .fetch_all(&mut *self)
            .await?;
        rows.iter()
            .map(|r| Ok((r.get::<i64, _>(0), decode(r.get::<&[u8], _>(1))?)))
            .collect()
    }
}

pub(super) async fn get(pool: &SqlitePool, id: &str) -> Result<Option<EntitySummary>> {
    let row = sqlx::query(
        "SELECT instance_id, state, locked_by, lock_section, modified_at, \
         (SELECT COUNT(*) FROM entity_queue q WHERE q.instance_id = e.instance_id) AS backlog \
         FROM entities e WHERE instance_id = ?",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(summary_from_row).transpose()
}

pub(super) async fn query(pool: &SqlitePool, f: &EntityListFilter) -> Result<Vec<EntitySummary>> {
    let rows = filters::entities::<sqlx::Sqlite>(f).build().fetch_all(pool).await?;
    rows.iter().map(summary_from_row).collect()
}

/// Leases up to `max` entities with visible work on the writer, then reads their queues on a
/// reader so the single writer is held no longer than the lease itself.
pub(super) async fn lock(writer: &SqlitePool, reader: &SqlitePool, lease: &Lease<'_>, max: u32) -> Result<Vec<LockedEntity>> {
    let rows = sqlx::query(
        "UPDATE entities SET lease_token = lower(hex(randomblob(16))), lease_owner = ?1, lease_expires = ?2 \
         WHERE instance_id IN ( \
           SELECT DISTINCT q.instance_id FROM entity_queue q JOIN entities e ON e.instance_id = q.instance_id \
           WHERE q.deferred = 0 AND q.visible_at <= ?3 AND e.lease_expires <= ?3 AND e.ready_at <= ?3 LIMIT ?4) \
         RETURNING lease_token, instance_id, state, locked_by, lock_section, modified_at",
    )
    .bind(lease.owner)
    .bind(lease.until)
    .bind(lease.now)
    .bind(i64::from(max))
    .fetch_all(writer)
    .await?;
    let leased = rows
        .iter()
        .map(|row| Ok((row.try_get("lease_token")?, entity_from_row(row)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut conn = reader.acquire().await?;
    entities_txn::with_queues(&mut *conn, leased, lease.now).await
}

pub(super) async fn release(writer: &SqlitePool, id: &str, token: &str, ready_at: Micros) -> Result<()> {
    let done = sqlx::query(
        "UPDATE entities SET lease_token = NULL, lease_owner = NULL, lease_expires = 0, ready_at = ? WHERE instance_id = ? AND lease_token = ?",
    )
    .bind(ready_at)
    .bind(id)
    .bind(token)
    .execute(writer)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::LeaseLost);
    }
    Ok(())
}

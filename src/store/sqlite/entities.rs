//! Entity rows and queues in SQLite. The rules (what runs, who holds a lock) are the engine's;
//! this persists its decisions.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};
use tracing::info;

use super::super::encoding::{decode, encode, status};
use super::super::filters;
use super::super::*;
use crate::model::{EntityLock, is_terminal};
use crate::time;

pub(super) const DELETE_ALL: [&str; 2] = ["DELETE FROM entity_queue", "DELETE FROM entities"];

pub(super) fn entity_from_row(row: &SqliteRow) -> Result<Entity> {
    let owner: Option<String> = row.try_get("locked_by")?;
    let section: Option<String> = row.try_get("lock_section")?;
    Ok(Entity {
        instance_id: row.try_get("instance_id")?,
        state: row.try_get("state")?,
        lock: owner.map(|owner| EntityLock {
            owner,
            critical_section_id: section.unwrap_or_default(),
        }),
        last_modified: row.try_get("modified_at")?,
    })
}

fn summary_from_row(row: &SqliteRow) -> Result<EntitySummary> {
    Ok(EntitySummary {
        entity: entity_from_row(row)?,
        backlog: row.try_get::<i64, _>("backlog")? as u32,
    })
}

/// Queues a message for an entity, creating the entity's row on first use.
pub(super) async fn enqueue(conn: &mut SqliteConnection, m: &Message) -> Result<Delivery> {
    let at = m
        .event
        .timestamp
        .as_ref()
        .and_then(|t| time::from_timestamp(t).ok())
        .unwrap_or(m.visible_at);
    sqlx::query("INSERT INTO entities (instance_id, modified_at) VALUES (?, ?) ON CONFLICT (instance_id) DO NOTHING")
        .bind(&m.instance_id)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO entity_queue (instance_id, visible_at, event) VALUES (?, ?, ?)")
        .bind(&m.instance_id)
        .bind(m.visible_at)
        .bind(encode(&m.event))
        .execute(&mut *conn)
        .await?;
    Ok(Delivery::Queued)
}

/// One entity step inside a write batch; nothing is written when the lease is gone.
pub(super) async fn step_in(conn: &mut SqliteConnection, token: &str, c: &EntityCommit) -> Result<Vec<String>> {
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
    .execute(&mut *conn)
    .await?;
    if held.rows_affected() == 0 {
        return Err(StoreError::LeaseLost);
    }
    let mut consumed = sqlx::QueryBuilder::new("DELETE FROM entity_queue WHERE id IN (");
    let mut list = consumed.separated(", ");
    for id in &c.consumed {
        list.push_bind(*id);
    }
    consumed.push(")");
    if !c.consumed.is_empty() {
        consumed.build().execute(&mut *conn).await?;
    }
    sqlx::query("UPDATE entity_queue SET deferred = 0 WHERE instance_id = ? AND deferred = 1")
        .bind(&c.instance_id)
        .execute(&mut *conn)
        .await?;
    if !c.deferred.is_empty() {
        let mut q = sqlx::QueryBuilder::new("UPDATE entity_queue SET deferred = 1 WHERE id IN (");
        let mut list = q.separated(", ");
        for id in &c.deferred {
            list.push_bind(*id);
        }
        q.push(")");
        q.build().execute(&mut *conn).await?;
    }
    let mut changed = vec![c.instance_id.clone()];
    for m in &c.messages {
        super::deliver(conn, m).await?;
    }
    for new in &c.starts {
        let id = &new.instance.instance_id;
        let existing: Option<i64> = sqlx::query_scalar("SELECT status FROM instances WHERE instance_id = ?")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        match existing.map(status).transpose()? {
            Some(s) if !is_terminal(s) => {
                info!(entity = %c.instance_id, instance_id = %id, "an entity started an orchestration whose id is taken by a live instance; skipped");
            }
            existing => {
                super::insert_new(conn, new, existing.is_some()).await?;
                changed.push(id.clone());
            }
        }
    }
    // An entity with nothing left (no state, no lock, no queue) does not exist any more.
    if c.state.is_none() && c.lock.is_none() {
        sqlx::query(
            "DELETE FROM entities WHERE instance_id = ? AND NOT EXISTS (SELECT 1 FROM entity_queue WHERE instance_id = entities.instance_id)",
        )
        .bind(&c.instance_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(changed)
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

pub(super) async fn clean(conn: &mut SqliteConnection, remove_empty: bool, release_orphaned_locks: bool) -> Result<Cleaned> {
    let mut cleaned = Cleaned::default();
    if release_orphaned_locks {
        // Orphaned: the holder is gone or finished. Deferred messages may run again.
        let released = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE entities SET locked_by = NULL, lock_section = NULL WHERE locked_by IS NOT NULL AND NOT EXISTS ( \
               SELECT 1 FROM instances i WHERE i.instance_id = entities.locked_by AND i.status NOT IN ({})) \
             RETURNING instance_id",
            filters::terminal_statuses()
        )))
        .fetch_all(&mut *conn)
        .await?;
        for r in &released {
            sqlx::query("UPDATE entity_queue SET deferred = 0 WHERE instance_id = ?")
                .bind(r.get::<String, _>(0))
                .execute(&mut *conn)
                .await?;
        }
        cleaned.released = released.len() as u32;
    }
    if remove_empty {
        let removed = sqlx::query(
            "DELETE FROM entities WHERE state IS NULL AND locked_by IS NULL AND lease_token IS NULL \
             AND NOT EXISTS (SELECT 1 FROM entity_queue q WHERE q.instance_id = entities.instance_id)",
        )
        .execute(&mut *conn)
        .await?;
        cleaned.removed = removed.rows_affected() as u32;
    }
    Ok(cleaned)
}

/// Deletes an entity and its queue (purge). Returns how many entities were deleted.
pub(super) async fn purge(conn: &mut SqliteConnection, id: &str) -> Result<u32> {
    sqlx::query("DELETE FROM entity_queue WHERE instance_id = ?")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let done = sqlx::query("DELETE FROM entities WHERE instance_id = ?")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() as u32)
}

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
    let mut locked = Vec::with_capacity(rows.len());
    let mut conn = reader.acquire().await?;
    for row in &rows {
        let entity = entity_from_row(row)?;
        let queue = sqlx::query("SELECT id, event FROM entity_queue WHERE instance_id = ? AND visible_at <= ? ORDER BY id")
            .bind(&entity.instance_id)
            .bind(lease.now)
            .fetch_all(&mut *conn)
            .await?;
        let queue = queue
            .iter()
            .map(|r| Ok((r.get::<i64, _>(0), decode(r.get::<&[u8], _>(1))?)))
            .collect::<Result<Vec<_>>>()?;
        locked.push(LockedEntity {
            token: row.try_get("lease_token")?,
            entity,
            queue,
        });
    }
    Ok(locked)
}

pub(super) async fn release(writer: &SqlitePool, id: &str, token: &str, ready_at: Millis) -> Result<()> {
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

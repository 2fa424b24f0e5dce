//! The entity transactions, written once for both engines: the order of reads and writes that
//! enqueues a message, persists an entity step, cleans, purges and reads a leased entity's
//! queue. What the engines say their own way (SQLite JSON lists and a single writer;
//! Postgres array binds and `SKIP LOCKED` picks) is in their `txn::Dialect`.

use tracing::info;

use super::encoding::{self, Columns};
use super::queries::*;
use super::sql::Sql;
use super::txn::{self, Dialect};
use super::{Cleaned, Delivery, EntitySummary, LockedEntity, Result, StoreError};
use crate::engine::rules::{self, Slot};
use crate::model::{Entity, EntityCommit, EntityLock, Message};
use crate::time::{self, Micros};

/// An entity from its columns (both engines select the same ones).
pub(super) fn entity(row: &impl Columns) -> Result<Entity> {
    let section = row.maybe_text("lock_section")?;
    Ok(Entity {
        instance_id: row.text("instance_id")?,
        state: row.maybe_text("state")?,
        lock: row.maybe_text("locked_by")?.map(|owner| EntityLock {
            owner,
            critical_section_id: section.unwrap_or_default(),
        }),
        last_modified: row.int("modified_at")?,
    })
}

/// An entity and its queued-message count (`backlog`).
pub(super) fn summary(row: &impl Columns) -> Result<EntitySummary> {
    Ok(EntitySummary {
        entity: entity(row)?,
        backlog: row.int("backlog")? as u32,
    })
}

/// Leased entities with their tokens, from rows of `lease_token` and the entity columns.
pub(super) fn leased(rows: &[impl Columns]) -> Result<Vec<(String, Entity)>> {
    rows.iter().map(|r| Ok((r.text("lease_token")?, entity(r)?))).collect()
}

/// Queues a message for an entity, creating the entity's row on first use.
pub(super) async fn enqueue<C: Dialect>(conn: &mut C, m: &Message) -> Result<Delivery> {
    // The entity was first touched when the message was sent, if the event says when.
    let at = m
        .event
        .timestamp
        .as_ref()
        .and_then(|t| time::from_timestamp(t).ok())
        .unwrap_or(m.visible_at);
    C::sql(INSERT_ENTITY).text(&m.instance_id).int(at).run(conn).await?;
    let event = encoding::encode(&m.event);
    C::sql(PUSH_QUEUE)
        .text(&m.instance_id)
        .int(m.visible_at)
        .bytes(event)
        .run(conn)
        .await?;
    Ok(Delivery::Queued)
}

/// One entity step inside a write batch; nothing is written when the lease is gone. Returns the
/// entity and the orchestrations it started, whose waiters must hear of the change.
pub(super) async fn step<C: Dialect>(conn: &mut C, token: &str, c: &EntityCommit) -> Result<Vec<String>> {
    let (owner, section) = (
        c.lock.as_ref().map(|l| l.owner.as_str()),
        c.lock.as_ref().map(|l| l.critical_section_id.as_str()),
    );
    let q = C::sql(WRITE_STEP)
        .maybe_text(c.state.as_deref())
        .maybe_text(owner)
        .maybe_text(section);
    if q.int(c.now).text(&c.instance_id).text(token).run(conn).await? == 0 {
        return Err(StoreError::LeaseLost);
    }
    txn::delete_ids(conn, C::DELETE_QUEUE_IDS, &c.consumed).await?;
    C::sql(C::SET_DEFERRED).text(&c.instance_id).ids(&c.deferred).run(conn).await?;
    let mut changed = vec![c.instance_id.clone()];
    for m in &c.messages {
        txn::deliver(conn, m).await?;
    }
    for new in &c.starts {
        let id = &new.instance.instance_id;
        match rules::child_slot(txn::status_of(conn, SELECT_STATUS, id).await?) {
            Slot::Taken(_) => {
                info!(entity = %c.instance_id, instance_id = %id, "an entity started an orchestration whose id is taken by a live instance; skipped");
            }
            slot => {
                txn::insert_new(conn, new, slot == Slot::Replace).await?;
                changed.push(id.clone());
            }
        }
    }
    // An entity with nothing left (no state, no lock, no queue) does not exist any more.
    if c.state.is_none() && c.lock.is_none() {
        C::sql(DELETE_IF_UNQUEUED).text(&c.instance_id).run(conn).await?;
    }
    Ok(changed)
}

pub(super) async fn clean<C: Dialect>(conn: &mut C, remove_empty: bool, release_orphaned_locks: bool) -> Result<Cleaned> {
    let mut cleaned = Cleaned::default();
    if release_orphaned_locks {
        // Orphaned: the holder is gone or finished. Their deferred messages may run again.
        let released = C::sql(sqlx::AssertSqlSafe(release_orphaned_locks_sql())).rows(conn).await?;
        let ids = released.iter().map(|r| r.text("instance_id")).collect::<Result<Vec<_>>>()?;
        if !ids.is_empty() {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            C::sql(C::UNDEFER_QUEUES).texts(&ids).run(conn).await?;
        }
        cleaned.released = ids.len() as u32;
    }
    if remove_empty {
        cleaned.removed = C::sql(DELETE_EMPTY).run(conn).await? as u32;
    }
    Ok(cleaned)
}

/// Deletes an entity and its queue (purge). Returns how many entities were deleted.
pub(super) async fn purge<C: Dialect>(conn: &mut C, id: &str) -> Result<u32> {
    C::sql(DELETE_QUEUE).text(id).run(conn).await?;
    Ok(C::sql(DELETE_ENTITY).text(id).run(conn).await? as u32)
}

/// Reads the visible queue of each entity just leased (`token`, entity).
pub(super) async fn with_queues<C: Dialect>(conn: &mut C, leased: Vec<(String, Entity)>, now: Micros) -> Result<Vec<LockedEntity>> {
    let mut locked = Vec::with_capacity(leased.len());
    for (token, entity) in leased {
        let rows = C::sql(VISIBLE_QUEUE).text(&entity.instance_id).int(now).rows(conn).await?;
        let queue = rows.iter().map(|r| Ok((r.int("id")?, encoding::decode(r.bytes("event")?)?)));
        let queue = queue.collect::<Result<_>>()?;
        locked.push(LockedEntity { token, entity, queue });
    }
    Ok(locked)
}

/// Clears the locks held by missing or finished instances, returning those entities' ids.
fn release_orphaned_locks_sql() -> String {
    format!(
        "UPDATE entities SET locked_by = NULL, lock_section = NULL WHERE locked_by IS NOT NULL AND NOT EXISTS ( \
           SELECT 1 FROM instances i WHERE i.instance_id = entities.locked_by AND i.status NOT IN ({})) \
         RETURNING instance_id",
        super::filters::terminal_statuses()
    )
}

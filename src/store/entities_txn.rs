//! The entity transactions, written once for both engines: the order of reads and writes that
//! enqueues a message, persists an entity step, cleans, purges and reads a leased entity's
//! queue. Each engine's `entities.rs` implements [`EntityStatements`] with its own SQL (SQLite
//! `IN (..)` lists and a single writer; Postgres array binds and `SKIP LOCKED` picks), so the
//! two differ only where their databases do.

use std::future::Future;

use tracing::info;

use super::encoding::Columns;
use super::txn::{self, Statements};
use super::{Cleaned, Delivery, EntityListFilter, EntitySummary, Lease, LockedEntity, Result, StoreError};
use crate::engine::rules::{self, Slot};
use crate::model::{Entity, EntityCommit, EntityLock, Message};
use crate::proto::HistoryEvent;
use crate::time::{self, Micros};

/// The statements one engine runs for entities, each on the connection of the transaction
/// (or batch) that calls it.
/// An entity step also delivers messages and starts orchestrations, hence the orchestration
/// statements beside these.
pub(super) trait EntityStatements: Statements {
    /// Creates the entity's row if it has none; `at` is its first modification time.
    fn insert_entity(&mut self, id: &str, at: Micros) -> impl Future<Output = Result<()>> + Send;
    fn push_queue(&mut self, m: &Message) -> impl Future<Output = Result<()>> + Send;
    /// Writes the step's state and lock and ends the lease; false when `token` no longer holds it.
    fn write_step(&mut self, token: &str, c: &EntityCommit) -> impl Future<Output = Result<bool>> + Send;
    fn delete_consumed(&mut self, ids: &[i64]) -> impl Future<Output = Result<()>> + Send;
    /// Makes exactly `deferred` the entity's deferred messages (earlier ones may run again).
    fn set_deferred(&mut self, id: &str, deferred: &[i64]) -> impl Future<Output = Result<()>> + Send;
    /// Deletes the entity's row when its queue is empty.
    fn delete_if_unqueued(&mut self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Clears locks held by missing or finished instances and undefers those entities' queues;
    /// returns how many locks were released.
    fn release_orphaned_locks(&mut self) -> impl Future<Output = Result<u32>> + Send;
    /// Deletes unleased entities with no state, no lock and no queue; returns how many.
    fn delete_empty(&mut self) -> impl Future<Output = Result<u32>> + Send;
    fn delete_queue(&mut self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Deletes the entity's row; returns how many rows went (0 or 1).
    fn delete_entity(&mut self, id: &str) -> impl Future<Output = Result<u32>> + Send;
    /// The entity's messages visible at `now`, in arrival order.
    fn visible_queue(&mut self, id: &str, now: Micros) -> impl Future<Output = Result<Vec<(i64, HistoryEvent)>>> + Send;
    fn select_entity(&mut self, id: &str) -> impl Future<Output = Result<Option<EntitySummary>>> + Send;
    fn query_entities(&mut self, f: &EntityListFilter) -> impl Future<Output = Result<Vec<EntitySummary>>> + Send;
    /// Leases up to `max` entities with runnable messages, in one statement; (token, entity) each.
    fn lease_entities(&mut self, l: &Lease<'_>, max: u32) -> impl Future<Output = Result<Vec<(String, Entity)>>> + Send;
    /// Ends the lease `token` holds, the entity not dispatched again before `ready_at`; false
    /// when the lease is gone.
    fn release_entity(&mut self, id: &str, token: &str, ready_at: Micros) -> impl Future<Output = Result<bool>> + Send;
}

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

/// The [`EntityStatements`] both engines run the same way, only with their own SQL: expanded
/// inside each engine's `impl EntityStatements`, where that engine's constants name the
/// statements. (The rest of the trait is written per engine, where the databases differ.)
macro_rules! same_statements {
    () => {
        async fn insert_entity(&mut self, id: &str, at: Micros) -> Result<()> {
            sqlx::query(INSERT_ENTITY).bind(id).bind(at).execute(&mut *self).await?;
            Ok(())
        }

        async fn push_queue(&mut self, m: &Message) -> Result<()> {
            let q = sqlx::query(PUSH_QUEUE).bind(&m.instance_id).bind(m.visible_at);
            q.bind(encode(&m.event)).execute(&mut *self).await?;
            Ok(())
        }

        async fn write_step(&mut self, token: &str, c: &EntityCommit) -> Result<bool> {
            let lock = c.lock.as_ref();
            let q = sqlx::query(WRITE_STEP).bind(&c.state).bind(lock.map(|l| &l.owner));
            let q = q.bind(lock.map(|l| &l.critical_section_id)).bind(c.now).bind(&c.instance_id);
            Ok(q.bind(token).execute(&mut *self).await?.rows_affected() > 0)
        }

        async fn delete_if_unqueued(&mut self, id: &str) -> Result<()> {
            sqlx::query(DELETE_IF_UNQUEUED).bind(id).execute(&mut *self).await?;
            Ok(())
        }

        async fn delete_empty(&mut self) -> Result<u32> {
            Ok(sqlx::query(DELETE_EMPTY).execute(&mut *self).await?.rows_affected() as u32)
        }

        async fn delete_queue(&mut self, id: &str) -> Result<()> {
            sqlx::query(DELETE_QUEUE).bind(id).execute(&mut *self).await?;
            Ok(())
        }

        async fn delete_entity(&mut self, id: &str) -> Result<u32> {
            Ok(sqlx::query(DELETE_ENTITY).bind(id).execute(&mut *self).await?.rows_affected() as u32)
        }

        async fn visible_queue(&mut self, id: &str, now: Micros) -> Result<Vec<(i64, HistoryEvent)>> {
            let rows = sqlx::query(VISIBLE_QUEUE).bind(id).bind(now).fetch_all(&mut *self).await?;
            rows.iter()
                .map(|r| Ok((r.get::<i64, _>(0), encoding::decode(r.get::<&[u8], _>(1))?)))
                .collect()
        }

        async fn select_entity(&mut self, id: &str) -> Result<Option<EntitySummary>> {
            let row = sqlx::query(SELECT_ENTITY).bind(id).fetch_optional(&mut *self).await?;
            row.as_ref().map(entities_txn::summary).transpose()
        }

        async fn query_entities(&mut self, f: &EntityListFilter) -> Result<Vec<EntitySummary>> {
            let mut q = filters::entities::<<Self as sqlx::Connection>::Database>(f);
            q.build()
                .fetch_all(&mut *self)
                .await?
                .iter()
                .map(entities_txn::summary)
                .collect()
        }

        async fn lease_entities(&mut self, l: &Lease<'_>, max: u32) -> Result<Vec<(String, Entity)>> {
            let q = sqlx::query(LOCK_ENTITIES).bind(l.now).bind(l.owner).bind(l.until);
            entities_txn::leased(&q.bind(i64::from(max)).fetch_all(&mut *self).await?)
        }

        async fn release_entity(&mut self, id: &str, token: &str, ready_at: Micros) -> Result<bool> {
            let q = sqlx::query(RELEASE_ENTITY).bind(ready_at).bind(id).bind(token);
            Ok(q.execute(&mut *self).await?.rows_affected() > 0)
        }
    };
}
pub(super) use same_statements;

/// Queues a message for an entity, creating the entity's row on first use.
pub(super) async fn enqueue<C: EntityStatements>(conn: &mut C, m: &Message) -> Result<Delivery> {
    // The entity was first touched when the message was sent, if the event says when.
    let at = m
        .event
        .timestamp
        .as_ref()
        .and_then(|t| time::from_timestamp(t).ok())
        .unwrap_or(m.visible_at);
    conn.insert_entity(&m.instance_id, at).await?;
    conn.push_queue(m).await?;
    Ok(Delivery::Queued)
}

/// One entity step inside a write batch; nothing is written when the lease is gone. Returns the
/// entity and the orchestrations it started, whose waiters must hear of the change.
pub(super) async fn step<C: EntityStatements>(conn: &mut C, token: &str, c: &EntityCommit) -> Result<Vec<String>> {
    if !conn.write_step(token, c).await? {
        return Err(StoreError::LeaseLost);
    }
    conn.delete_consumed(&c.consumed).await?;
    conn.set_deferred(&c.instance_id, &c.deferred).await?;
    let mut changed = vec![c.instance_id.clone()];
    for m in &c.messages {
        txn::deliver(conn, m).await?;
    }
    for new in &c.starts {
        let id = &new.instance.instance_id;
        match rules::child_slot(conn.instance_status(id).await?) {
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
        conn.delete_if_unqueued(&c.instance_id).await?;
    }
    Ok(changed)
}

pub(super) async fn clean<C: EntityStatements>(conn: &mut C, remove_empty: bool, release_orphaned_locks: bool) -> Result<Cleaned> {
    let mut cleaned = Cleaned::default();
    if release_orphaned_locks {
        cleaned.released = conn.release_orphaned_locks().await?;
    }
    if remove_empty {
        cleaned.removed = conn.delete_empty().await?;
    }
    Ok(cleaned)
}

/// Deletes an entity and its queue (purge). Returns how many entities were deleted.
pub(super) async fn purge<C: EntityStatements>(conn: &mut C, id: &str) -> Result<u32> {
    conn.delete_queue(id).await?;
    conn.delete_entity(id).await
}

/// Reads the visible queue of each entity just leased (`token`, entity).
pub(super) async fn with_queues<C: EntityStatements>(
    conn: &mut C,
    leased: Vec<(String, Entity)>,
    now: Micros,
) -> Result<Vec<LockedEntity>> {
    let mut locked = Vec::with_capacity(leased.len());
    for (token, entity) in leased {
        let queue = conn.visible_queue(&entity.instance_id, now).await?;
        locked.push(LockedEntity { token, entity, queue });
    }
    Ok(locked)
}

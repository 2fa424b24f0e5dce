//! Entity rows and queues in Postgres: the statements behind the shared entity transactions
//! (`store::entities_txn`) that Postgres says its own way (what both run alike is
//! `store::queries`), the lease among them. The rules (what runs, who holds a
//! lock) are the engine's; this persists its decisions. Entities are leased like instances:
//! picked with `FOR UPDATE SKIP LOCKED`, written back `WHERE lease_token = $token`, so one
//! entity is processed in one place at a time across every sidecar on the database.

use sqlx::{PgConnection, Row};

use super::super::encoding::{self, encode};
use super::super::entities_txn::{self, EntityStatements};
use super::super::queries::*;
use super::super::*;

pub(super) const DELETE_ALL: [&str; 1] = ["TRUNCATE entity_queue, entities"];

pub(super) const RENEW: &str = "UPDATE entities SET lease_expires = $1 WHERE instance_id IN ( \
       SELECT instance_id FROM entities WHERE lease_token = ANY($2) FOR UPDATE SKIP LOCKED)";

pub(super) const RELEASE_ALL: &str = "UPDATE entities SET lease_token = NULL, lease_owner = NULL, lease_expires = 0 \
     WHERE lease_owner IS NOT NULL AND ($1::text IS NULL OR lease_owner = $1)";

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

//! Entity rows and queues in SQLite: the statements behind the shared entity transactions
//! (`store::entities_txn`) that SQLite says its own way (what both run alike is
//! `store::queries`), the lease among them. The rules (what runs, who holds a lock) are the
//! engine's; this persists its decisions.

use sqlx::{Row, SqliteConnection};

use super::super::encoding::{self, encode};
use super::super::entities_txn::{self, EntityStatements};
use super::super::queries::*;
use super::super::*;
use super::for_ids;

pub(super) const DELETE_ALL: [&str; 2] = ["DELETE FROM entity_queue", "DELETE FROM entities"];

pub(super) const RENEW: &str = "UPDATE entities SET lease_expires = ? WHERE lease_token = ?";

pub(super) const RELEASE_ALL: &str = "UPDATE entities SET lease_token = NULL, lease_owner = NULL, lease_expires = 0 \
     WHERE lease_owner IS NOT NULL AND (?1 IS NULL OR lease_owner = ?1)";

/// Leases up to ?4 entities with runnable messages (?1 = now) for owner ?2 until ?3.
const LOCK_ENTITIES: &str = "UPDATE entities SET lease_token = lower(hex(randomblob(16))), lease_owner = ?2, lease_expires = ?3 \
     WHERE instance_id IN ( \
       SELECT DISTINCT q.instance_id FROM entity_queue q JOIN entities e ON e.instance_id = q.instance_id \
       WHERE q.deferred = 0 AND q.visible_at <= ?1 AND e.lease_expires <= ?1 AND e.ready_at <= ?1 LIMIT ?4) \
     RETURNING lease_token, instance_id, state, locked_by, lock_section, modified_at";

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

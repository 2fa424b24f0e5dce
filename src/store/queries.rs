//! The statements both engines run as they stand: portable SQL with `$N` placeholders, which
//! Postgres and sqlx's SQLite driver both bind by number. What only one database can say
//! (row locks, array binds, lease statements, `RETURNING` picks) is in that engine's
//! `queries.rs` (its `txn::Dialect`, under the same names on both sides) and its
//! the lists they bind (`sql::Lists`). Times are Unix microseconds.

/// The instance columns every instance read selects, in table order (`encoding::bind_fields`
/// binds them so).
macro_rules! instance_columns {
    () => {
        "instance_id, name, version, execution_id, status, input, output, custom_status, failure_details, created_at, \
         updated_at, completed_at, scheduled_start_at, parent_instance_id, tags, trace_context"
    };
}
pub(super) use instance_columns;

pub const INSTANCE_COLUMNS: &str = instance_columns!();

pub const SELECT_INSTANCE: &str = concat!("SELECT ", instance_columns!(), " FROM instances WHERE instance_id = $1");

pub const SELECT_STATUS: &str = "SELECT status FROM instances WHERE instance_id = $1";

pub const SELECT_STATUS_AND_EXECUTION: &str = "SELECT status, execution_id FROM instances WHERE instance_id = $1";

/// A new row, unleased.
pub const INSERT_INSTANCE: &str = "INSERT INTO instances (instance_id, name, version, execution_id, status, input, output, \
     custom_status, failure_details, created_at, updated_at, completed_at, scheduled_start_at, parent_instance_id, tags, \
     trace_context, ready_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";

/// A step's instance row, written only while token $17 holds the lease on instance $16, which
/// the same statement ends.
pub const UPDATE_HELD_INSTANCE: &str = "UPDATE instances SET name = $1, version = $2, execution_id = $3, status = $4, \
     input = $5, output = $6, custom_status = $7, failure_details = $8, created_at = $9, updated_at = $10, \
     completed_at = $11, scheduled_start_at = $12, parent_instance_id = $13, tags = $14, trace_context = $15, \
     ready_at = 0, lock_token = NULL, lock_owner = NULL, lock_expires = 0 \
     WHERE instance_id = $16 AND lock_token = $17";

pub const INSERT_MESSAGE: &str =
    "INSERT INTO inbox (instance_id, execution_id, priority, kind, visible_at, event) VALUES ($1, $2, $3, $4, $5, $6)";

/// A terminate for an instance whose start lies in the future runs it now, in two steps:
/// its messages become visible at $1 (instance $2), its start is no longer held back
/// (instance $1).
pub const MAKE_PENDING_DUE: [&str; 2] = [
    "UPDATE inbox SET visible_at = $1 WHERE instance_id = $2 AND visible_at > $1",
    "UPDATE instances SET ready_at = 0 WHERE instance_id = $1",
];

pub const DELETE_INSTANCE: [&str; 4] = [
    "DELETE FROM history WHERE instance_id = $1",
    "DELETE FROM inbox WHERE instance_id = $1",
    "DELETE FROM activities WHERE instance_id = $1",
    "DELETE FROM instances WHERE instance_id = $1",
];

pub const SELECT_HISTORY: &str = "SELECT event FROM history WHERE instance_id = $1 ORDER BY seq";

pub const DELETE_HISTORY: &str = "DELETE FROM history WHERE instance_id = $1";

pub const REWIND_INSTANCE: &str = "UPDATE instances SET status = $1, output = NULL, failure_details = NULL, completed_at = NULL, \
     updated_at = $2, ready_at = 0 WHERE instance_id = $3";

/// Ends a lease held with token $3 on instance $2; not dispatched again before $1.
pub const RELEASE_ORCHESTRATION: &str = "UPDATE instances SET lock_token = NULL, lock_owner = NULL, lock_expires = 0, ready_at = $1 \
     WHERE instance_id = $2 AND lock_token = $3";

/// What a finished instance leaves behind that nothing will consume: pending events and
/// timers, activities not yet handed out.
pub const DELETE_LEFTOVERS: [&str; 2] = [
    "DELETE FROM inbox WHERE instance_id = $1",
    "DELETE FROM activities WHERE instance_id = $1 AND lock_token IS NULL",
];

/// Queues an activity result (bound as INSERT_MESSAGE's) only while that execution is still
/// running.
pub static QUEUE_RESULT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO inbox (instance_id, execution_id, priority, kind, visible_at, event) SELECT $1, $2, $3, $4, $5, $6 \
         WHERE EXISTS (SELECT 1 FROM instances WHERE instance_id = $1 AND execution_id = $2 AND status NOT IN ({}))",
        super::filters::terminal_statuses()
    )
});

pub const DELETE_LOCKED_ACTIVITY: &str = "DELETE FROM activities WHERE id = $1 AND lock_token = $2 RETURNING instance_id, execution_id";

/// Ends a lease held with token $3 on activity $2; not dispatched again before $1.
pub const RELEASE_ACTIVITY: &str = "UPDATE activities SET lock_token = NULL, lock_owner = NULL, lock_expires = 0, visible_at = $1 \
     WHERE id = $2 AND lock_token = $3";

/// What is waiting at $1 (the metrics' backlog gauges): instances with a due event nobody
/// holds (as LOCK_ORCHESTRATIONS picks them, suspended ($2) ones only for a waking event), due
/// activities nobody holds, events not yet due, and leases that ran out unreleased.
pub const BACKLOG: &str = "SELECT \
     (SELECT COUNT(DISTINCT m.instance_id) FROM inbox m JOIN instances i ON i.instance_id = m.instance_id \
       WHERE m.visible_at <= $1 AND i.lock_expires <= $1 AND i.ready_at <= $1 AND (i.status <> $2 OR m.kind = 1)) AS orchestrations, \
     (SELECT COUNT(*) FROM activities WHERE lock_expires <= $1 AND visible_at <= $1) AS activities, \
     (SELECT COUNT(*) FROM inbox WHERE visible_at > $1) AS timers, \
     (SELECT COUNT(*) FROM instances WHERE lock_token IS NOT NULL AND lock_expires <= $1) \
       + (SELECT COUNT(*) FROM activities WHERE lock_token IS NOT NULL AND lock_expires <= $1) AS expired";

// Entities.

pub const INSERT_ENTITY: &str = "INSERT INTO entities (instance_id, modified_at) VALUES ($1, $2) ON CONFLICT (instance_id) DO NOTHING";

pub const PUSH_QUEUE: &str = "INSERT INTO entity_queue (instance_id, visible_at, event) VALUES ($1, $2, $3)";

/// A step's state and lock ($1..$4), ending the lease token $6 holds on entity $5.
pub const WRITE_STEP: &str = "UPDATE entities SET state = $1, locked_by = $2, lock_section = $3, modified_at = $4, ready_at = 0, \
     lease_token = NULL, lease_owner = NULL, lease_expires = 0 WHERE instance_id = $5 AND lease_token = $6";

pub const DELETE_IF_UNQUEUED: &str =
    "DELETE FROM entities WHERE instance_id = $1 AND NOT EXISTS (SELECT 1 FROM entity_queue q WHERE q.instance_id = entities.instance_id)";

pub const DELETE_EMPTY: &str = "DELETE FROM entities WHERE state IS NULL AND locked_by IS NULL AND lease_token IS NULL \
     AND NOT EXISTS (SELECT 1 FROM entity_queue q WHERE q.instance_id = entities.instance_id)";

pub const DELETE_QUEUE: &str = "DELETE FROM entity_queue WHERE instance_id = $1";

pub const DELETE_ENTITY: &str = "DELETE FROM entities WHERE instance_id = $1";

pub const VISIBLE_QUEUE: &str = "SELECT id, event FROM entity_queue WHERE instance_id = $1 AND visible_at <= $2 ORDER BY id";

pub const SELECT_ENTITY: &str = "SELECT instance_id, state, locked_by, lock_section, modified_at, \
     (SELECT COUNT(*) FROM entity_queue q WHERE q.instance_id = e.instance_id) AS backlog \
     FROM entities e WHERE instance_id = $1";

/// Makes the entities nobody holds that wait out a back-off at $1 due.
pub const UNPARK_ENTITIES: &str = "UPDATE entities SET ready_at = 0 WHERE ready_at > $1 AND lease_expires <= $1";

/// Ends a lease held with token $3 on entity $2; not dispatched again before $1.
pub const RELEASE_ENTITY: &str = "UPDATE entities SET lease_token = NULL, lease_owner = NULL, lease_expires = 0, ready_at = $1 \
     WHERE instance_id = $2 AND lease_token = $3";

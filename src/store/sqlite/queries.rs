//! Every orchestration statement the SQLite store runs, by name (the Postgres store's
//! `queries.rs` has the same names). Times are Unix microseconds. SQLite has no array binds:
//! statements over many ids or rows are prefixes the store completes with `IN (..)` lists or
//! `VALUES` rows, a bounded number at a time.

/// The instance columns every instance read selects, in table order (`encoding::bind_fields`
/// binds them so).
macro_rules! instance_columns {
    () => {
        "instance_id, name, version, execution_id, status, input, output, custom_status, failure_details, created_at, \
         updated_at, completed_at, scheduled_start_at, parent_instance_id, tags, trace_context"
    };
}

pub const INSTANCE_COLUMNS: &str = instance_columns!();

pub const SELECT_INSTANCE: &str = concat!("SELECT ", instance_columns!(), " FROM instances WHERE instance_id = ?");

pub const SELECT_STATUS: &str = "SELECT status FROM instances WHERE instance_id = ?";

/// The single writer already keeps a concurrent create of the same id out.
pub const SELECT_STATUS_FOR_UPDATE: &str = SELECT_STATUS;

pub const SELECT_STATUS_AND_EXECUTION: &str = "SELECT status, execution_id FROM instances WHERE instance_id = ?";

/// A new row, unleased.
pub const INSERT_INSTANCE: &str = "INSERT INTO instances (instance_id, name, version, execution_id, status, input, output, \
     custom_status, failure_details, created_at, updated_at, completed_at, scheduled_start_at, parent_instance_id, tags, \
     trace_context, ready_at) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// A step's instance row, written only while the token (last) holds the lease on the instance
/// (before it), which the same statement ends.
pub const UPDATE_HELD_INSTANCE: &str = "UPDATE instances SET name = ?, version = ?, execution_id = ?, status = ?, input = ?, \
     output = ?, custom_status = ?, failure_details = ?, created_at = ?, updated_at = ?, completed_at = ?, \
     scheduled_start_at = ?, parent_instance_id = ?, tags = ?, trace_context = ?, \
     ready_at = 0, lock_token = NULL, lock_owner = NULL, lock_expires = 0 \
     WHERE instance_id = ? AND lock_token = ?";

pub const INSERT_MESSAGE: &str =
    "INSERT INTO inbox (instance_id, execution_id, priority, kind, visible_at, event) VALUES (?, ?, ?, ?, ?, ?)";

/// A terminate for an instance whose start lies in the future runs it now, in two steps:
/// its messages become visible at ?1 (instance ?2), its start is no longer held back
/// (instance ?).
pub const MAKE_PENDING_DUE: [&str; 2] = [
    "UPDATE inbox SET visible_at = ?1 WHERE instance_id = ?2 AND visible_at > ?1",
    "UPDATE instances SET ready_at = 0 WHERE instance_id = ?",
];

pub const DELETE_INSTANCE: [&str; 4] = [
    "DELETE FROM history WHERE instance_id = ?",
    "DELETE FROM inbox WHERE instance_id = ?",
    "DELETE FROM activities WHERE instance_id = ?",
    "DELETE FROM instances WHERE instance_id = ?",
];

pub const DELETE_ALL: [&str; 4] = [
    "DELETE FROM history",
    "DELETE FROM inbox",
    "DELETE FROM activities",
    "DELETE FROM instances",
];

pub const SELECT_HISTORY: &str = "SELECT event FROM history WHERE instance_id = ? ORDER BY seq";

/// Completed by `instance_id IN (..) ORDER BY instance_id, seq`.
pub const SELECT_HISTORIES: &str = "SELECT instance_id, event FROM history WHERE ";

pub const NEXT_HISTORY_SEQ: &str = "SELECT COALESCE(MAX(seq) + 1, 0) FROM history WHERE instance_id = ?";

pub const DELETE_HISTORY: &str = "DELETE FROM history WHERE instance_id = ?";

/// Completed by `VALUES` rows (instance_id, seq, event).
pub const INSERT_HISTORY: &str = "INSERT INTO history (instance_id, seq, event) ";

pub const REWIND_INSTANCE: &str = "UPDATE instances SET status = ?, output = NULL, failure_details = NULL, completed_at = NULL, \
     updated_at = ?, ready_at = 0 WHERE instance_id = ?";

/// Leases up to ?4 instances with visible inbox messages (?1 = now) that nobody holds, for
/// owner ?2 until ?3, with a fresh token each, in one statement that returns the rows (nothing
/// to do costs one query). A suspended (?6) instance is only picked for an event that wakes
/// it. ?5 is the workers' name filter (NULL: any name), see `filters::names_json`.
pub const LOCK_ORCHESTRATIONS: &str = concat!(
    "UPDATE instances SET lock_token = lower(hex(randomblob(16))), lock_owner = ?2, lock_expires = ?3 \
     WHERE instance_id IN ( \
       SELECT DISTINCT m.instance_id FROM inbox m JOIN instances i ON i.instance_id = m.instance_id \
       WHERE m.visible_at <= ?1 AND i.lock_expires <= ?1 AND i.ready_at <= ?1 AND (i.status != ?6 OR m.kind = 1) \
         AND (?5 IS NULL OR EXISTS (SELECT 1 FROM json_each(?5) f \
           WHERE f.value ->> 0 = i.name AND (f.value ->> 1 IS NULL OR f.value ->> 1 = COALESCE(i.version, '')))) \
       LIMIT ?4) \
     RETURNING lock_token, ",
    instance_columns!()
);

/// Leases instance ?4 for owner ?2 until ?3 when it has visible inbox messages (?1 = now), is
/// ready and nobody holds it (a suspended (?5) one only for an event that wakes it): a
/// commit's claim on the work it leaves.
pub const CLAIM_INSTANCE: &str = concat!(
    "UPDATE instances SET lock_token = lower(hex(randomblob(16))), lock_owner = ?2, lock_expires = ?3 \
     WHERE instance_id = ?4 AND lock_expires <= ?1 AND ready_at <= ?1 \
       AND EXISTS (SELECT 1 FROM inbox m WHERE m.instance_id = ?4 AND m.visible_at <= ?1 \
         AND (instances.status != ?5 OR m.kind = 1)) \
     RETURNING lock_token, ",
    instance_columns!()
);

/// Completed by `instance_id IN (..) AND visible_at <= now ORDER BY priority, id`.
pub const SELECT_INBOXES: &str = "SELECT id, instance_id, execution_id, priority, visible_at, event FROM inbox WHERE ";

/// Ends a lease held with token ?3 on instance ?2; not dispatched again before ?1.
pub const RELEASE_ORCHESTRATION: &str = "UPDATE instances SET lock_token = NULL, lock_owner = NULL, lock_expires = 0, ready_at = ? \
     WHERE instance_id = ? AND lock_token = ?";

/// Completed by a list of ids and `)`.
pub const DELETE_MESSAGES: &str = "DELETE FROM inbox WHERE id IN (";

/// What a finished instance leaves behind that nothing will consume: pending events and
/// timers, activities not yet handed out.
pub const DELETE_LEFTOVERS: [&str; 2] = [
    "DELETE FROM inbox WHERE instance_id = ?",
    "DELETE FROM activities WHERE instance_id = ? AND lock_token IS NULL",
];

/// Completed by `VALUES` rows (instance_id, execution_id, task_id, request, visible_at, name, version).
pub const INSERT_ACTIVITIES: &str = "INSERT INTO activities (instance_id, execution_id, task_id, request, visible_at, name, version) ";

/// Completed by `VALUES` rows (instance_id, execution_id, task_id, request, visible_at, name,
/// version, a fresh token, lock_owner, lock_expires) and [`CLAIMED_ACTIVITIES_RETURNING`]:
/// activities leased as they are queued.
pub const INSERT_CLAIMED_ACTIVITIES: &str = "INSERT INTO activities (instance_id, execution_id, task_id, request, visible_at, name, version, lock_token, lock_owner, lock_expires) ";

pub const CLAIMED_ACTIVITIES_RETURNING: &str = " RETURNING id, lock_token, task_id";

/// Leases up to ?4 visible activities (?1 = now) that nobody holds, oldest first, for owner
/// ?2 until ?3, whose name the workers' filter ?5 takes (NULL: any name; rows queued before
/// the name column existed are leased whatever the filter and checked by the dispatcher).
pub const LOCK_ACTIVITIES: &str = "UPDATE activities SET lock_token = lower(hex(randomblob(16))), lock_owner = ?2, lock_expires = ?3 \
     WHERE id IN (SELECT id FROM activities a WHERE lock_expires <= ?1 AND visible_at <= ?1 \
       AND (?5 IS NULL OR a.name IS NULL OR EXISTS (SELECT 1 FROM json_each(?5) f \
         WHERE f.value ->> 0 = a.name AND (f.value ->> 1 IS NULL OR f.value ->> 1 = COALESCE(a.version, '')))) \
       ORDER BY id LIMIT ?4) \
     RETURNING id, lock_token, instance_id, execution_id, request";

/// Queues an activity result (bound as INSERT_MESSAGE's) only while that execution is still
/// running.
pub static QUEUE_RESULT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO inbox (instance_id, execution_id, priority, kind, visible_at, event) SELECT ?1, ?2, ?3, ?4, ?5, ?6 \
         WHERE EXISTS (SELECT 1 FROM instances WHERE instance_id = ?1 AND execution_id = ?2 AND status NOT IN ({}))",
        crate::store::filters::terminal_statuses()
    )
});

pub const DELETE_LOCKED_ACTIVITY: &str = "DELETE FROM activities WHERE id = ? AND lock_token = ? RETURNING instance_id, execution_id";

pub const RELEASE_ACTIVITY: &str =
    "UPDATE activities SET lock_token = NULL, lock_owner = NULL, lock_expires = 0, visible_at = ? WHERE id = ? AND lock_token = ?";

/// Extends the lease with token ?2 to ?1, one token at a time.
pub const RENEW_LEASES: [&str; 2] = [
    "UPDATE instances SET lock_expires = ? WHERE lock_token = ?",
    "UPDATE activities SET lock_expires = ? WHERE lock_token = ?",
];

/// Releases the leases of owner ?1, or of everyone when ?1 is NULL.
pub const RELEASE_ALL: [&str; 2] = [
    "UPDATE instances SET lock_token = NULL, lock_owner = NULL, lock_expires = 0 \
     WHERE lock_owner IS NOT NULL AND (?1 IS NULL OR lock_owner = ?1)",
    "UPDATE activities SET lock_token = NULL, lock_owner = NULL, lock_expires = 0 \
     WHERE lock_owner IS NOT NULL AND (?1 IS NULL OR lock_owner = ?1)",
];

/// The earliest moment after ?1 when work appears: a timer or other future message, a
/// scheduled start or back-off ending, an activity's retry time. (One sidecar per file: no
/// other sidecar's lease runs out.)
pub const NEXT_DUE: &str = "SELECT MIN(t) FROM ( \
       SELECT MIN(visible_at) AS t FROM inbox WHERE visible_at > ?1 \
       UNION ALL SELECT MIN(ready_at) FROM instances WHERE ready_at > 0 AND ready_at > ?1 \
       UNION ALL SELECT MIN(visible_at) FROM activities WHERE visible_at > ?1 \
       UNION ALL SELECT MIN(visible_at) FROM entity_queue WHERE deferred = 0 AND visible_at > ?1 \
       UNION ALL SELECT MIN(ready_at) FROM entities WHERE ready_at > ?1)";

/// What is waiting at ?1 (the metrics' backlog gauges), as the Postgres store's BACKLOG.
pub const BACKLOG: &str = "SELECT \
     (SELECT COUNT(DISTINCT m.instance_id) FROM inbox m JOIN instances i ON i.instance_id = m.instance_id \
       WHERE m.visible_at <= ?1 AND i.lock_expires <= ?1 AND i.ready_at <= ?1 AND (i.status != ?2 OR m.kind = 1)), \
     (SELECT COUNT(*) FROM activities WHERE lock_expires <= ?1 AND visible_at <= ?1), \
     (SELECT COUNT(*) FROM inbox WHERE visible_at > ?1), \
     (SELECT COUNT(*) FROM instances WHERE lock_token IS NOT NULL AND lock_expires <= ?1) \
       + (SELECT COUNT(*) FROM activities WHERE lock_token IS NOT NULL AND lock_expires <= ?1)";

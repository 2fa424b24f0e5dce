//! The listing queries (`query`, `finished`), built once for both engines: their SQL is
//! portable, only the placeholders differ, which the query builder handles.

use sqlx::{Database, Encode, QueryBuilder, Type};

use super::{FinishedFilter, InstanceFilter};
use crate::proto::OrchestrationStatus;

const TERMINAL: [OrchestrationStatus; 4] = [
    OrchestrationStatus::Completed,
    OrchestrationStatus::Failed,
    OrchestrationStatus::Terminated,
    OrchestrationStatus::Canceled,
];

/// `SELECT {columns} FROM instances` matching `f`, oldest first, one page.
pub fn instances<DB>(columns: &str, f: &InstanceFilter) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    for<'t> i32: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::new(format!("SELECT {columns} FROM instances WHERE 1 = 1"));
    push_statuses(&mut q, &f.statuses);
    if let Some(from) = f.created_from {
        q.push(" AND created_at >= ").push_bind(from);
    }
    if let Some(to) = f.created_to {
        q.push(" AND created_at <= ").push_bind(to);
    }
    if let Some(prefix) = &f.id_prefix {
        q.push(" AND substr(instance_id, 1, ")
            .push_bind(prefix.chars().count() as i32)
            .push(") = ")
            .push_bind(prefix.clone());
    }
    if let Some((at, id)) = &f.after {
        q.push(" AND (created_at, instance_id) > (")
            .push_bind(*at)
            .push(", ")
            .push_bind(id.clone())
            .push(")");
    }
    q.push(" ORDER BY created_at, instance_id LIMIT ").push_bind(i64::from(f.limit));
    q
}

/// `SELECT completed_at, instance_id FROM instances` for finished instances matching `f`,
/// by completion time, one page.
pub fn finished<DB>(f: &FinishedFilter) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    for<'t> i32: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::new("SELECT completed_at, instance_id FROM instances WHERE completed_at IS NOT NULL");
    q.push(format!(" AND status IN ({})", terminal_statuses()));
    push_statuses(&mut q, &f.statuses);
    if let Some(from) = f.completed_from {
        q.push(" AND completed_at >= ").push_bind(from);
    }
    if let Some(to) = f.completed_to {
        q.push(" AND completed_at <= ").push_bind(to);
    }
    if let Some((at, id)) = &f.after {
        q.push(" AND (completed_at, instance_id) > (")
            .push_bind(*at)
            .push(", ")
            .push_bind(id.clone())
            .push(")");
    }
    q.push(" ORDER BY completed_at, instance_id LIMIT ").push_bind(i64::from(f.limit));
    q
}

/// The final statuses as an SQL list, e.g. "1,3,5,6".
pub fn terminal_statuses() -> String {
    TERMINAL.iter().map(|s| (*s as i32).to_string()).collect::<Vec<_>>().join(",")
}

/// Adds "AND status IN (...)" unless the list is empty (meaning any status).
fn push_statuses<DB>(q: &mut QueryBuilder<DB>, statuses: &[OrchestrationStatus])
where
    DB: Database,
    for<'t> i32: Encode<'t, DB> + Type<DB>,
{
    if statuses.is_empty() {
        return;
    }
    q.push(" AND status IN (");
    let mut list = q.separated(", ");
    for s in statuses {
        list.push_bind(*s as i32);
    }
    q.push(")");
}

/// `SELECT` of entities matching `f` with their backlog, by id, one page. Columns: instance_id,
/// state, locked_by, lock_section, modified_at, backlog.
pub fn entities<DB>(f: &super::EntityListFilter) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    for<'t> i32: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::new(
        "SELECT e.instance_id, e.state, e.locked_by, e.lock_section, e.modified_at, \
         (SELECT COUNT(*) FROM entity_queue q WHERE q.instance_id = e.instance_id) AS backlog \
         FROM entities e WHERE 1 = 1",
    );
    if let Some(prefix) = &f.id_prefix {
        q.push(" AND substr(e.instance_id, 1, ")
            .push_bind(prefix.chars().count() as i32)
            .push(") = ")
            .push_bind(prefix.clone());
    }
    if let Some(from) = f.modified_from {
        q.push(" AND e.modified_at >= ").push_bind(from);
    }
    if let Some(to) = f.modified_to {
        q.push(" AND e.modified_at < ").push_bind(to);
    }
    if f.include_transient {
        q.push(
            " AND (e.state IS NOT NULL OR e.locked_by IS NOT NULL \
             OR EXISTS (SELECT 1 FROM entity_queue q WHERE q.instance_id = e.instance_id))",
        );
    } else {
        q.push(" AND e.state IS NOT NULL");
    }
    if let Some(after) = &f.after {
        q.push(" AND e.instance_id > ").push_bind(after.clone());
    }
    q.push(" ORDER BY e.instance_id LIMIT ").push_bind(i64::from(f.limit));
    q
}

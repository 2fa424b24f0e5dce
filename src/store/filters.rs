//! The listing queries (`query`, `finished`, entities), built once for both engines: their
//! SQL is portable, with `$N` placeholders.

use sqlx::AssertSqlSafe;

use super::encoding::Columns;
use super::sql::{Conn, Sql};
use super::{FinishedFilter, InstanceFilter, SortKey};
use crate::model::{Names, TERMINAL};
use crate::proto::OrchestrationStatus;

/// `SELECT {columns} FROM instances` matching `f`, in `f.sort` order, one page.
pub fn instances(columns: &str, f: &InstanceFilter) -> Built {
    let mut q = Built::new(format!("SELECT {columns} FROM instances WHERE 1 = 1"));
    push_conditions(&mut q, f);
    // Each order is an index (created, completed, name) read forwards or backwards, and the
    // page resumes strictly after the last row's key, so a page costs the same at any depth.
    let (key, tie) = match f.sort {
        SortKey::Created => ("created_at, instance_id", None),
        SortKey::Completed => ("completed_at, instance_id", None),
        SortKey::Name => ("name, created_at, instance_id", Some(f.after_name.clone().unwrap_or_default())),
    };
    if f.sort == SortKey::Completed {
        q.push(" AND completed_at IS NOT NULL");
    }
    let (cmp, dir) = if f.descending { ("<", " DESC") } else { (">", "") };
    if let Some((at, id)) = &f.after {
        q.push(format!(" AND ({key}) {cmp} ("));
        if let Some(name) = tie {
            q.push_bind(name).push(", ");
        }
        q.push_bind(*at).push(", ").push_bind(id.clone()).push(")");
    }
    let order: Vec<String> = key.split(", ").map(|c| format!("{c}{dir}")).collect();
    q.push(format!(" ORDER BY {} LIMIT ", order.join(", ")))
        .push_bind(i64::from(f.limit));
    q
}

/// `SELECT status, COUNT(*) AS n FROM instances` matching `f` (paging and order aside), per status.
pub fn counts(f: &InstanceFilter) -> Built {
    let mut q = Built::new("SELECT status, COUNT(*) AS n FROM instances WHERE 1 = 1");
    push_conditions(&mut q, f);
    q.push(" GROUP BY status");
    q
}

/// The filter's conditions, each as " AND ...".
fn push_conditions(q: &mut Built, f: &InstanceFilter) {
    push_statuses(q, &f.statuses);
    if let Some(from) = f.created_from {
        q.push(" AND created_at >= ").push_bind(from);
    }
    if let Some(to) = f.created_to {
        q.push(" AND created_at <= ").push_bind(to);
    }
    if let Some(from) = f.completed_from {
        q.push(" AND completed_at >= ").push_bind(from);
    }
    if let Some(to) = f.completed_to {
        q.push(" AND completed_at <= ").push_bind(to);
    }
    if let Some(prefix) = &f.id_prefix {
        q.push(" AND substr(instance_id, 1, ")
            .push_bind(prefix.chars().count() as i32)
            .push(") = ")
            .push_bind(prefix.clone());
    }
    if let Some(name) = &f.name {
        q.push(" AND name = ").push_bind(name.clone());
    }
    if let Some(text) = &f.custom_status {
        // Contains, ignoring (ASCII) case, alike on both engines; LIKE's wildcards in the text
        // are matched literally.
        let escaped = text.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        q.push(" AND lower(custom_status) LIKE ")
            .push_bind(format!("%{escaped}%"))
            .push(" ESCAPE '\\'");
    }
    if f.top_level_only {
        q.push(" AND parent_instance_id IS NULL");
    }
}

/// `SELECT completed_at, instance_id FROM instances` for finished instances matching `f`,
/// by completion time, one page.
pub fn finished(f: &FinishedFilter) -> Built {
    let mut q = Built::new("SELECT completed_at, instance_id FROM instances WHERE completed_at IS NOT NULL");
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
fn push_statuses(q: &mut Built, statuses: &[OrchestrationStatus]) {
    if statuses.is_empty() {
        return;
    }
    q.push(" AND status IN (");
    for (n, s) in statuses.iter().enumerate() {
        q.push(if n == 0 { "" } else { ", " }).push_bind(*s as i32);
    }
    q.push(")");
}

/// A worker filter's names as the JSON the lease statements read: `null` for any name, else
/// `[[name, version], ...]` with a `null` version for "any version".
pub fn names_json(names: &Names) -> Option<String> {
    let Names::Only(listed) = names else {
        return None;
    };
    let mut pairs = vec![];
    for (name, versions) in listed {
        if versions.is_empty() {
            pairs.push(serde_json::json!([name, null]));
        }
        for v in versions {
            pairs.push(serde_json::json!([name, v]));
        }
    }
    Some(serde_json::Value::Array(pairs).to_string())
}

/// Decodes the rows of a [`counts`] query: (status, n).
pub(crate) fn status_counts(rows: &[impl Columns]) -> super::Result<Vec<(OrchestrationStatus, u64)>> {
    rows.iter()
        .map(|r| Ok((super::encoding::status(r.small("status")?.into())?, r.int("n")?.max(0) as u64)))
        .collect()
}

/// `SELECT` of entities matching `f` with their backlog, by id, one page. Columns: instance_id,
/// state, locked_by, lock_section, modified_at, backlog.
pub fn entities(f: &super::EntityListFilter) -> Built {
    let mut q = Built::new(
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

/// A statement built from a filter: its SQL, with `$N` placeholders, and the values to bind.
pub struct Built {
    sql: String,
    values: Vec<Value>,
}

pub enum Value {
    Small(i32),
    Int(i64),
    Text(String),
}

impl Built {
    fn new(sql: impl Into<String>) -> Built {
        Built {
            sql: sql.into(),
            values: vec![],
        }
    }

    fn push(&mut self, sql: impl AsRef<str>) -> &mut Built {
        self.sql.push_str(sql.as_ref());
        self
    }

    fn push_bind(&mut self, value: impl Into<Value>) -> &mut Built {
        self.values.push(value.into());
        self.sql.push_str(&format!("${}", self.values.len()));
        self
    }

    /// The statement, bound, for connections of kind `C`.
    pub fn bound<C: Conn>(self) -> C::Sql {
        let q = C::sql(AssertSqlSafe(self.sql));
        self.values.into_iter().fold(q, |q, v| match v {
            Value::Small(v) => q.small(v),
            Value::Int(v) => q.int(v),
            Value::Text(v) => q.text(&v),
        })
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Small(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

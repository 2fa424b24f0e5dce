//! How domain values become column values: protobuf bytes for wire messages, a small
//! protobuf message for tag maps (so both engines store the same bytes).

use std::collections::{BTreeMap, HashMap};

use prost::Message as _;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::sql::Sql;
use super::{Lease, LockedActivity, StoreError, filters};
use crate::engine::wakes_suspended;
use crate::model::{ActivityTask, Instance, Message, Names};
use crate::proto::{HistoryEvent, OrchestrationStatus};

#[derive(Clone, PartialEq, prost::Message)]
struct Tags {
    #[prost(btree_map = "string, string", tag = "1")]
    tags: BTreeMap<String, String>,
}

pub fn encode<M: prost::Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

pub fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub fn encode_tags(tags: &BTreeMap<String, String>) -> Option<Vec<u8>> {
    (!tags.is_empty()).then(|| Tags { tags: tags.clone() }.encode_to_vec())
}

pub fn decode_tags(bytes: Option<&[u8]>) -> Result<BTreeMap<String, String>, StoreError> {
    Ok(bytes.map(decode::<Tags>).transpose()?.map(|t| t.tags).unwrap_or_default())
}

pub fn status(value: i64) -> Result<OrchestrationStatus, StoreError> {
    i32::try_from(value)
        .ok()
        .and_then(|v| OrchestrationStatus::try_from(v).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("unknown status {value}")))
}

/// Binds an instance's columns after `instance_id`, in table order (both engines' instance
/// statements list them so).
pub fn bind_fields<S: Sql>(q: S, i: &Instance) -> S {
    q.text(&i.name)
        .maybe_text(i.version.as_deref())
        .text(&i.execution_id)
        .small(i.status as i32)
        .maybe_text(i.input.as_deref())
        .maybe_text(i.output.as_deref())
        .maybe_text(i.custom_status.as_deref())
        .maybe_bytes(i.failure_details.as_ref().map(encode))
        .int(i.created_at)
        .int(i.updated_at)
        .maybe_int(i.completed_at)
        .maybe_int(i.scheduled_start_at)
        .maybe_text(i.parent_instance_id.as_deref())
        .maybe_bytes(encode_tags(&i.tags))
        .maybe_bytes(i.trace_context.as_ref().map(encode))
}

/// Binds a message's inbox columns: instance_id, execution_id, priority, kind (whether it
/// wakes a suspended instance), visible_at, event.
pub fn bind_message<S: Sql>(q: S, m: &Message) -> S {
    q.text(&m.instance_id)
        .maybe_text(m.execution_id.as_deref())
        .small(m.priority)
        .small(i32::from(wakes_suspended(&m.event)))
        .int(m.visible_at)
        .bytes(encode(&m.event))
}

/// Binds a lease's parameters in the order both engines' lease statements take them: now,
/// owner, until, the most rows to lease, the workers' name filter (`filters::names_json`).
pub fn bind_lease<S: Sql>(q: S, lease: &Lease<'_>, max: u32, names: &Names) -> S {
    let q = q.int(lease.now).text(lease.owner).int(lease.until).int(i64::from(max));
    q.maybe_text(filters::names_json(names).as_deref())
}

/// Reads the columns the store selects, from a row of either engine (by column name).
pub trait Columns {
    fn text(&self, c: &str) -> Result<String, StoreError>;
    fn maybe_text(&self, c: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, c: &str) -> Result<i64, StoreError>;
    fn maybe_int(&self, c: &str) -> Result<Option<i64>, StoreError>;
    fn small(&self, c: &str) -> Result<i32, StoreError>;
    fn bytes(&self, c: &str) -> Result<&[u8], StoreError>;
    fn maybe_bytes(&self, c: &str) -> Result<Option<&[u8]>, StoreError>;
}

impl<R> Columns for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> &'r [u8]: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<&'r [u8]>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, c: &str) -> Result<String, StoreError> {
        Ok(self.try_get(c)?)
    }
    fn maybe_text(&self, c: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(c)?)
    }
    fn int(&self, c: &str) -> Result<i64, StoreError> {
        Ok(self.try_get(c)?)
    }
    fn maybe_int(&self, c: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(c)?)
    }
    fn small(&self, c: &str) -> Result<i32, StoreError> {
        Ok(self.try_get(c)?)
    }
    fn bytes(&self, c: &str) -> Result<&[u8], StoreError> {
        Ok(self.try_get(c)?)
    }
    fn maybe_bytes(&self, c: &str) -> Result<Option<&[u8]>, StoreError> {
        Ok(self.try_get(c)?)
    }
}

/// An instance from its columns (as each engine's `INSTANCE_COLUMNS` lists them).
pub fn instance(row: &impl Columns) -> Result<Instance, StoreError> {
    Ok(Instance {
        instance_id: row.text("instance_id")?,
        name: row.text("name")?,
        version: row.maybe_text("version")?,
        execution_id: row.text("execution_id")?,
        status: status(row.small("status")?.into())?,
        input: row.maybe_text("input")?,
        output: row.maybe_text("output")?,
        custom_status: row.maybe_text("custom_status")?,
        failure_details: row.maybe_bytes("failure_details")?.map(decode).transpose()?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        completed_at: row.maybe_int("completed_at")?,
        scheduled_start_at: row.maybe_int("scheduled_start_at")?,
        parent_instance_id: row.maybe_text("parent_instance_id")?,
        tags: decode_tags(row.maybe_bytes("tags")?)?,
        trace_context: row.maybe_bytes("trace_context")?.map(decode).transpose()?,
    })
}

/// Leased instances with their tokens, from rows of `lock_token` and the instance columns.
pub fn leased(rows: &[impl Columns]) -> Result<Vec<(String, Instance)>, StoreError> {
    rows.iter().map(|r| Ok((r.text("lock_token")?, instance(r)?))).collect()
}

/// Histories by instance, from rows of (instance_id, event) in order.
pub fn histories(rows: &[impl Columns]) -> Result<HashMap<String, Vec<HistoryEvent>>, StoreError> {
    let mut histories: HashMap<String, Vec<HistoryEvent>> = HashMap::new();
    for r in rows {
        histories
            .entry(r.text("instance_id")?)
            .or_default()
            .push(decode(r.bytes("event")?)?);
    }
    Ok(histories)
}

/// Inbox messages by instance, with their row ids, from rows of the inbox columns in order.
pub fn inboxes(rows: &[impl Columns]) -> Result<HashMap<String, Vec<(i64, Message)>>, StoreError> {
    let mut inboxes: HashMap<String, Vec<(i64, Message)>> = HashMap::new();
    for r in rows {
        let message = Message {
            instance_id: r.text("instance_id")?,
            execution_id: r.maybe_text("execution_id")?,
            priority: r.small("priority")?,
            visible_at: r.int("visible_at")?,
            event: decode(r.bytes("event")?)?,
        };
        inboxes
            .entry(message.instance_id.clone())
            .or_default()
            .push((r.int("id")?, message));
    }
    Ok(inboxes)
}

/// The activities a step queued already leased, from the rows (id, lock_token, task_id) their
/// insert returned, by id.
pub fn claimed(activities: &[ActivityTask], rows: &[impl Columns]) -> Result<Vec<LockedActivity>, StoreError> {
    let mut locked = vec![];
    for r in rows {
        let task_id = r.small("task_id")?;
        if let Some(task) = activities.iter().find(|a| a.request.task_id == task_id) {
            let (id, token, task) = (r.int("id")?, r.text("lock_token")?, task.clone());
            locked.push(LockedActivity { id, token, task });
        }
    }
    locked.sort_by_key(|a| a.id);
    Ok(locked)
}

/// Leased activities, by id, from rows of (id, lock_token, instance_id, execution_id, request).
pub fn activities(rows: &[impl Columns]) -> Result<Vec<LockedActivity>, StoreError> {
    let mut locked = rows
        .iter()
        .map(|r| {
            let task = ActivityTask {
                instance_id: r.text("instance_id")?,
                execution_id: r.text("execution_id")?,
                request: decode(r.bytes("request")?)?,
            };
            Ok(LockedActivity {
                id: r.int("id")?,
                token: r.text("lock_token")?,
                task,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    locked.sort_by_key(|a| a.id);
    Ok(locked)
}

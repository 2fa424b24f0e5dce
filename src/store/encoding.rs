//! How domain values become column values: protobuf bytes for wire messages, a small
//! protobuf message for tag maps (so both engines store the same bytes).

use std::collections::BTreeMap;

use prost::Message as _;
use sqlx::query::Query;
use sqlx::{Database, Encode, Type};

use super::StoreError;
use crate::model::Instance;
use crate::proto::OrchestrationStatus;

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
pub fn bind_fields<'q, DB>(q: Query<'q, DB, DB::Arguments>, i: &Instance) -> Query<'q, DB, DB::Arguments>
where
    DB: Database,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
    for<'t> i32: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
    for<'t> Option<Vec<u8>>: Encode<'t, DB> + Type<DB>,
{
    q.bind(i.name.as_str())
        .bind(i.version.as_deref())
        .bind(i.execution_id.as_str())
        .bind(i.status as i32)
        .bind(i.input.as_deref())
        .bind(i.output.as_deref())
        .bind(i.custom_status.as_deref())
        .bind(i.failure_details.as_ref().map(encode))
        .bind(i.created_at)
        .bind(i.updated_at)
        .bind(i.completed_at)
        .bind(i.scheduled_start_at)
        .bind(i.parent_instance_id.as_deref())
        .bind(encode_tags(&i.tags))
        .bind(i.trace_context.as_ref().map(encode))
}

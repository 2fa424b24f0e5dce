//! How domain values become column values: protobuf bytes for wire messages, a small
//! protobuf message for tag maps (so both engines store the same bytes).

use std::collections::BTreeMap;

use prost::Message as _;

use super::StoreError;
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

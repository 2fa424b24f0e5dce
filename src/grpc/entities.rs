//! Client-facing entity RPCs: signal, get, query and clean.

use tonic::Status;

use super::{Service, page, status};
use crate::engine::entities;
use crate::proto::*;
use crate::store::{EntityListFilter, EntitySummary};
use crate::time::{self, Micros};

/// Longest entity id accepted (as for instance ids).
const MAX_ID_LEN: usize = 1024;
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// Checks and normalizes an entity id (`@name@key`, the name lower-cased).
fn entity_id(id: &str) -> Result<String, Status> {
    if id.len() > MAX_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "instanceId is {} bytes; at most {MAX_ID_LEN} are allowed",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(Status::invalid_argument("instanceId must not contain control characters"));
    }
    entities::normalize_id(id).map_err(Status::invalid_argument)
}

fn timestamp(field: &str, ts: &Option<prost_types::Timestamp>) -> Result<Option<Micros>, Status> {
    ts.as_ref()
        .map(|t| time::from_timestamp(t).map_err(|e| Status::invalid_argument(format!("{field}: {e}"))))
        .transpose()
}

fn metadata(s: EntitySummary, include_state: bool) -> EntityMetadata {
    EntityMetadata {
        instance_id: s.entity.instance_id,
        last_modified_time: Some(time::to_timestamp(s.entity.last_modified)),
        backlog_queue_size: i32::try_from(s.backlog).unwrap_or(i32::MAX),
        locked_by: s.entity.lock.map(|l| l.owner),
        serialized_state: if include_state { s.entity.state } else { None },
    }
}

/// An id prefix in stored form: the name part is case-insensitive like every entity name.
fn prefix(p: &str) -> String {
    match p.strip_prefix('@') {
        Some(rest) => match rest.split_once('@') {
            Some((name, key)) => format!("@{}@{key}", name.to_lowercase()),
            None => format!("@{}", rest.to_lowercase()),
        },
        None => p.to_string(),
    }
}

impl Service {
    pub(crate) async fn signal_entity(&self, r: SignalEntityRequest) -> Result<SignalEntityResponse, Status> {
        let id = entity_id(&r.instance_id)?;
        if r.name.is_empty() {
            return Err(Status::invalid_argument("name (the operation) is required"));
        }
        let now = self.now();
        let at = timestamp("scheduledTime", &r.scheduled_time)?;
        let request_id = if r.request_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            r.request_id
        };
        let message = entities::signal(&id, request_id, r.name, r.input, r.scheduled_time, at, now);
        self.store.send(message).await.map_err(status::store)?;
        self.dispatcher.changed(&[id]);
        Ok(SignalEntityResponse {})
    }

    pub(crate) async fn get_entity(&self, r: GetEntityRequest) -> Result<GetEntityResponse, Status> {
        let id = entity_id(&r.instance_id)?;
        let found = self.store.get_entity(&id).await.map_err(status::store)?;
        // An entity without state and without a lock does not exist (it may have queued work).
        Ok(match found.filter(|s| s.entity.state.is_some() || s.entity.lock.is_some()) {
            Some(s) => GetEntityResponse {
                exists: true,
                entity: Some(metadata(s, r.include_state)),
            },
            None => GetEntityResponse {
                exists: false,
                entity: None,
            },
        })
    }

    pub(crate) async fn query_entities(&self, r: QueryEntitiesRequest) -> Result<QueryEntitiesResponse, Status> {
        let q = r.query.unwrap_or_default();
        let limit = match q.page_size {
            None => DEFAULT_PAGE,
            Some(n) if n < 0 => return Err(Status::invalid_argument(format!("pageSize must not be negative, got {n}"))),
            Some(0) => DEFAULT_PAGE,
            Some(n) => (n as u32).min(MAX_PAGE),
        };
        let filter = EntityListFilter {
            id_prefix: q.instance_id_starts_with.filter(|p| !p.is_empty()).map(|p| prefix(&p)),
            modified_from: timestamp("lastModifiedFrom", &q.last_modified_from)?,
            modified_to: timestamp("lastModifiedTo", &q.last_modified_to)?,
            include_transient: q.include_transient,
            after: match q.continuation_token.filter(|t| !t.is_empty()) {
                // A token is an entity's instance id: anything longer was not issued here.
                Some(t) if t.len() > crate::limits::MAX_ID_BYTES => {
                    return Err(Status::invalid_argument("continuationToken is not a token this sidecar issued"));
                }
                t => t,
            },
            limit: limit + 1,
        };
        let rows = self.store.query_entities(&filter).await.map_err(status::store)?;
        let (entities, continuation_token) = page(
            rows,
            limit as usize,
            |s| s.entity.instance_id.clone(),
            |s| metadata(s, q.include_state),
        );
        Ok(QueryEntitiesResponse {
            entities,
            continuation_token,
        })
    }

    pub(super) async fn clean_entity_storage(&self, r: CleanEntityStorageRequest) -> Result<CleanEntityStorageResponse, Status> {
        let cleaned = self
            .store
            .clean_entities(r.remove_empty_entities, r.release_orphaned_locks)
            .await
            .map_err(status::store)?;
        if cleaned.released > 0 {
            self.dispatcher.wake(); // deferred operations may run now
        }
        // One call does the whole job, so there is never a continuation.
        Ok(CleanEntityStorageResponse {
            continuation_token: None,
            empty_entities_removed: i32::try_from(cleaned.removed).unwrap_or(i32::MAX),
            orphaned_locks_released: i32::try_from(cleaned.released).unwrap_or(i32::MAX),
        })
    }
}

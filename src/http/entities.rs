//! The Durable Functions API's entity routes: an entity's state (`GET
//! /entities/{name}/{key}`), entities of one name or of every name a page at a time (`GET
//! /entities[/{name}]`, `x-ms-continuation-token` paging as for instances), and signals (`POST
//! /entities/{name}/{key}?op=...`, `DELETE` for the `delete` operation), each onto the gRPC
//! service's entity methods so the same id rules and queues apply.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use super::State as App;
use super::api::{self, BASE_PATH, CONTINUATION, Query};
use super::error::{ApiError, ApiResult};
use super::{links, payload};
use crate::proto::*;
use crate::rfc3339::Precision;

pub fn routes() -> Router<App> {
    let p = |path: &str| format!("{BASE_PATH}{path}");
    Router::new()
        .route(&p("/entities"), get(list_all))
        .route(&p("/entities/{name}"), get(list_named))
        .route(&p("/entities/{name}/{key}"), get(read).post(signal).delete(delete))
}

/// `@name@key`, the form the store and the SDKs use. A name holding `@` would read back as
/// another name and key, so it is refused.
fn entity_id(name: &str, key: &str) -> ApiResult<String> {
    if name.contains('@') {
        return Err(ApiError::bad_request(format!("entity name '{name}' must not contain '@'")));
    }
    Ok(format!("@{name}@{key}"))
}

async fn read(State(app): State<App>, Path((name, key)): Path<(String, String)>) -> ApiResult {
    let request = GetEntityRequest {
        instance_id: entity_id(&name, &key)?,
        include_state: true,
    };
    // Durable Functions answers 404 for an entity without state (never set, or deleted).
    match app.service.get_entity(request).await?.entity.and_then(|e| e.serialized_state) {
        Some(state) => Ok(api::json(StatusCode::OK, &payload::json_value(Some(&state)))),
        None => Err(ApiError::not_found(format!("no entity '{name}' with key '{key}'"))),
    }
}

async fn list_all(State(app): State<App>, RawQuery(query): RawQuery, headers: HeaderMap) -> ApiResult {
    list(app, None, query, headers).await
}

async fn list_named(State(app): State<App>, Path(name): Path<String>, RawQuery(query): RawQuery, headers: HeaderMap) -> ApiResult {
    list(app, Some(name), query, headers).await
}

async fn list(app: App, name: Option<String>, query: Option<String>, headers: HeaderMap) -> ApiResult {
    let q = Query::parse(query);
    let with_state = q.flag("fetchState", false)?;
    let prefix = match &name {
        Some(n) => Some(entity_id(n, "")?),
        // Every entity id starts with '@'; instances never do.
        None => Some("@".to_string()),
    };
    let request = QueryEntitiesRequest {
        query: Some(EntityQuery {
            instance_id_starts_with: prefix,
            last_modified_from: q.time("lastOperationTimeFrom")?,
            last_modified_to: q.time("lastOperationTimeTo")?,
            include_state: with_state,
            include_transient: false,
            page_size: q.top()?,
            continuation_token: api::continuation(&headers)?,
        }),
    };
    let page = app.service.query_entities(request).await?;
    let items: Vec<Value> = page.entities.iter().map(|e| row(e, with_state)).collect();
    let mut response = api::json(StatusCode::OK, &Value::Array(items));
    if let Some(token) = page.continuation_token {
        response
            .headers_mut()
            .insert(CONTINUATION, api::header_value(&links::segment(&token)));
    }
    Ok(response)
}

/// One entity as Durable Functions lists it: its id split into name and key, the time of its
/// last operation and, with `fetchState`, its state.
fn row(e: &EntityMetadata, with_state: bool) -> Value {
    let (name, key) = crate::engine::entities::parse_id(&e.instance_id).unwrap_or((e.instance_id.as_str(), ""));
    let mut row = json!({
        "entityId": { "name": name, "key": key },
        "lastOperationTime": payload::time_of(&e.last_modified_time, Precision::Ticks),
    });
    if with_state {
        row["state"] = payload::json_value(e.serialized_state.as_deref());
    }
    row
}

/// An operation's input: the body as JSON when it is sent as JSON, else as a string (as
/// Durable Functions passes it); no body is no input.
fn operation_input(headers: &HeaderMap, body: &Bytes) -> ApiResult<Option<String>> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("application/json"));
    if is_json {
        return api::json_input(body);
    }
    if body.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the body is not UTF-8 text"))?;
    Ok(Some(Value::String(text.to_string()).to_string()))
}

async fn send(app: &App, id: String, operation: String, input: Option<String>) -> ApiResult {
    let request = SignalEntityRequest {
        instance_id: id,
        name: operation,
        input,
        ..Default::default()
    };
    app.service.signal_entity(request).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn signal(
    State(app): State<App>,
    Path((name, key)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let q = Query::parse(query);
    let Some(op) = q.get("op").filter(|o| !o.is_empty()) else {
        return Err(ApiError::bad_request("the operation to signal is required: ?op=NAME"));
    };
    let id = entity_id(&name, &key)?;
    send(&app, id, op.to_string(), operation_input(&headers, &body)?).await
}

async fn delete(State(app): State<App>, Path((name, key)): Path<(String, String)>) -> ApiResult {
    send(&app, entity_id(&name, &key)?, "delete".into(), None).await
}

//! The dashboard: a page served at `/` on the HTTP listener (hand-written HTML, CSS and JS
//! embedded in the binary, [`assets`]) and the JSON it reads under `/api/`, for what the
//! Durable Functions API does not offer: filtered and sorted pages with counts per status
//! ([`filter`]), one instance with its history folded into a timeline ([`view`]), a stream of
//! changes for live updates ([`live`]), actions on one instance, a selection or a whole filter
//! ([`bulk`]) and a page of entities ([`entities`]). Every action runs through the same
//! service methods the gRPC handlers call, so the same rules decide.

mod assets;
mod bulk;
mod entities;
mod filter;
mod live;
pub(crate) mod view;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use crate::grpc::Service;
use crate::model::RUNTIME_STATUSES;

/// How the dashboard is served.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Shows state but refuses every action (the buttons are hidden, `/api/bulk` answers 403).
    pub read_only: bool,
    /// A link to the instance's trace: `{traceId}` (and `{instanceId}`) are filled in, e.g.
    /// `http://localhost:16686/trace/{traceId}` for Jaeger.
    pub trace_url: Option<String>,
}

#[derive(Clone)]
struct Dashboard {
    service: Service,
    settings: Arc<Settings>,
}

/// What a request needs to be allowed beyond its API key (checked in front of every route by
/// `http::access`): [`Dashboard::permit`] is the one place the dashboard's own rule lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Write,
}

impl Dashboard {
    /// Refuses actions in read-only mode.
    fn permit(&self, _headers: &HeaderMap, need: Need) -> ApiResult<()> {
        if need == Need::Write && self.settings.read_only {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the dashboard is read-only (--dashboard-read-only)",
            ));
        }
        Ok(())
    }
}

/// The dashboard's pages, assets and JSON routes.
pub fn routes(service: Service, settings: Settings) -> Router {
    let state = Dashboard {
        service,
        settings: Arc::new(settings),
    };
    Router::new()
        .route("/", get(assets::page))
        .route("/instances/{id}", get(assets::page))
        .route("/entities", get(assets::page))
        .route("/favicon.ico", get(assets::icon))
        .route("/assets/{file}", get(assets::file))
        .route("/api/config", get(config))
        .route("/api/instances", get(list))
        .route("/api/counts", get(counts))
        .route("/api/instances/{id}", get(one))
        .route("/api/entities", get(entities::list))
        .route("/api/events", get(live::events))
        .route("/api/bulk", post(bulk::run))
        .with_state(state)
}

fn json(body: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")],
        body.to_string(),
    )
        .into_response()
}

async fn config(State(d): State<Dashboard>, headers: HeaderMap) -> ApiResult {
    d.permit(&headers, Need::Read)?;
    Ok(json(&json!({
        "readOnly": d.settings.read_only,
        "traceUrl": d.settings.trace_url,
        "statuses": RUNTIME_STATUSES.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        "version": env!("CARGO_PKG_VERSION"),
        "entities": true,
    })))
}

/// One page of instances: `{"items": [...], "next": token or null}`.
async fn list(State(d): State<Dashboard>, RawQuery(query): RawQuery, headers: HeaderMap) -> ApiResult {
    d.permit(&headers, Need::Read)?;
    let page = filter::Page::parse(query.as_deref().unwrap_or(""))?;
    let mut rows = d.service.store().query(&page.filter).await.map_err(ApiError::from)?;
    let more = rows.len() > page.size as usize;
    rows.truncate(page.size as usize);
    let next = if more { rows.last().map(|r| page.token_after(r)) } else { None };
    Ok(json(&json!({
        "items": rows.iter().map(view::row).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// Counts per status for the filter, whatever its status choice: `{"counts": {...}, "total": n}`.
async fn counts(State(d): State<Dashboard>, RawQuery(query): RawQuery, headers: HeaderMap) -> ApiResult {
    d.permit(&headers, Need::Read)?;
    let mut f = filter::Page::parse(query.as_deref().unwrap_or(""))?.filter;
    f.statuses.clear();
    let counts = d.service.store().count_by_status(&f).await.map_err(ApiError::from)?;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let by_name: serde_json::Map<String, Value> = counts
        .iter()
        .map(|(s, n)| (crate::model::runtime_status_name(*s).to_string(), json!(n)))
        .collect();
    Ok(json(&json!({ "counts": by_name, "total": total })))
}

/// One instance: its state, history, timeline, children and trace link.
async fn one(State(d): State<Dashboard>, Path(id): Path<String>, headers: HeaderMap) -> ApiResult {
    d.permit(&headers, Need::Read)?;
    let store = d.service.store();
    let Some(instance) = store.get_instance(&id).await.map_err(ApiError::from)? else {
        return Err(ApiError::not_found(format!("no instance with id '{id}'")));
    };
    let history = store.history(&id).await.map_err(ApiError::from)?;
    let trace_id = view::trace_id(&history);
    let trace_url = match (&d.settings.trace_url, &trace_id) {
        (Some(template), Some(trace)) => Some(view::trace_url(template, trace, &id)),
        _ => None,
    };
    Ok(json(&json!({
        "instance": view::instance(&instance),
        "traceId": trace_id,
        "traceUrl": trace_url,
        "children": view::children(&history),
        "history": history.iter().map(view::event).collect::<Vec<_>>(),
        "timeline": view::timeline_json(&history),
        "now": view::stored_millis(d.service.now()),
    })))
}

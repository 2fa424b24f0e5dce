//! The Durable Functions HTTP management API: routes, status codes and headers as Durable
//! Functions answers them (so its pollers and tools work unchanged), each handler a thin
//! translation onto the gRPC service's own methods.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tonic::Code;

use super::State as App;
use super::error::{ApiError, ApiResult};
use super::links;
use super::payload::{self, Show};
use crate::auth::Caller;
use crate::model::{is_terminal, parse_runtime_status};
use crate::proto::purge_instances_request::Request as PurgeTarget;
use crate::proto::*;
use crate::rfc3339;
use crate::store::Delivery;
use crate::time;

/// Where Durable Functions (v2 and later) serves this API.
pub const BASE_PATH: &str = "/runtime/webhooks/durabletask";
/// Paging header of the list route, in both directions.
pub const CONTINUATION: &str = "x-ms-continuation-token";
/// Seconds a caller is asked to wait before polling again: after a start, while running.
const RETRY_AFTER_START: u64 = 10;
const RETRY_AFTER_RUNNING: u64 = 5;
/// Longest wait a start or restart may ask for with `timeout`.
const MAX_WAIT: Duration = Duration::from_secs(3600);

pub fn routes() -> Router<App> {
    let p = |path: &str| format!("{BASE_PATH}{path}");
    Router::new()
        .route(&p("/orchestrators/{name}"), post(start))
        .route(&p("/orchestrators/{name}/{instance_id}"), post(start_with_id))
        .route(&p("/instances"), get(list).delete(purge_by_filter))
        .route(&p("/instances/{id}"), get(status).delete(purge_one))
        .route(&p("/instances/{id}/raiseEvent/{event}"), post(raise))
        .route(&p("/instances/{id}/terminate"), post(terminate))
        .route(&p("/instances/{id}/suspend"), post(suspend))
        .route(&p("/instances/{id}/resume"), post(resume))
        .route(&p("/instances/{id}/rewind"), post(rewind))
        .route(&p("/instances/{id}/restart"), post(restart))
}

/// Query parameters; names are matched ignoring case, as Durable Functions does.
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(raw: Option<String>) -> Query {
        let raw = raw.unwrap_or_default();
        Query(form_urlencoded::parse(raw.as_bytes()).into_owned().collect())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub(super) fn flag(&self, name: &str, default: bool) -> ApiResult<bool> {
        match self.get(name) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
            Some(v) => Err(ApiError::bad_request(format!("{name} must be true or false, got '{v}'"))),
        }
    }

    pub(super) fn time(&self, name: &str) -> ApiResult<Option<prost_types::Timestamp>> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| {
                rfc3339::parse(v)
                    .map(time::to_timestamp)
                    .map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
            })
            .transpose()
    }

    /// `top`, the page size, when given.
    pub(super) fn top(&self) -> ApiResult<Option<i32>> {
        match self.get("top") {
            None => Ok(None),
            Some(t) => match t.parse::<i32>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(ApiError::bad_request(format!("top must be a positive integer, got '{t}'"))),
            },
        }
    }

    /// `runtimeStatus`, comma-separated and/or repeated.
    fn statuses(&self) -> ApiResult<Vec<i32>> {
        self.all("runtimeStatus")
            .flat_map(|v| v.split(','))
            .filter(|v| !v.trim().is_empty())
            .map(|v| {
                parse_runtime_status(v)
                    .map(|s| s as i32)
                    .map_err(|e| ApiError::bad_request(format!("runtimeStatus: {e}")))
            })
            .collect()
    }

    /// A wait in seconds (`timeout`), fractions allowed.
    fn wait(&self, name: &str) -> ApiResult<Option<Duration>> {
        let Some(v) = self.get(name) else { return Ok(None) };
        match v.parse::<f64>() {
            // Capped before converting: a huge number of seconds is no Duration.
            Ok(s) if s.is_finite() && s >= 0.0 => Ok(Some(Duration::from_secs_f64(s.min(MAX_WAIT.as_secs_f64())))),
            _ => Err(ApiError::bad_request(format!("{name} must be a number of seconds, got '{v}'"))),
        }
    }
}

/// The paging token a list request sent back, as this sidecar issued it (percent-encoded).
pub(super) fn continuation(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get(CONTINUATION) else { return Ok(None) };
    let refused = || ApiError::bad_request(format!("{CONTINUATION} is not a token this sidecar issued"));
    let text = v.to_str().map_err(|_| refused())?;
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8().map_err(|_| refused())?;
    Ok(Some(decoded.into_owned()).filter(|t| !t.is_empty()))
}

/// A request body as the JSON text the SDKs expect as an input; empty is no input.
pub(super) fn json_input(body: &Bytes) -> ApiResult<Option<String>> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the body is not UTF-8 text"))?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str::<Value>(text).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    Ok(Some(text.to_string()))
}

pub(super) fn json(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

pub(super) fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("/"))
}

/// The W3C trace context a caller sent, to parent the new orchestration's trace on.
fn trace_context(headers: &HeaderMap) -> Option<TraceContext> {
    let parent = headers.get("traceparent")?.to_str().ok()?.to_string();
    let state = headers.get("tracestate").and_then(|v| v.to_str().ok()).map(str::to_string);
    #[allow(deprecated)]
    Some(TraceContext {
        trace_parent: parent,
        span_id: String::new(),
        trace_state: state,
    })
}

async fn start(State(app): State<App>, Path(name): Path<String>, query: RawQuery, headers: HeaderMap, body: Bytes) -> ApiResult {
    start_instance(app, name, String::new(), query, headers, body).await
}

async fn start_with_id(
    State(app): State<App>,
    Path((name, id)): Path<(String, String)>,
    query: RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    start_instance(app, name, id, query, headers, body).await
}

async fn start_instance(app: App, name: String, id: String, RawQuery(query): RawQuery, headers: HeaderMap, body: Bytes) -> ApiResult {
    let q = Query::parse(query);
    let wait = q.wait("timeout")?;
    let request = CreateInstanceRequest {
        instance_id: id,
        name,
        version: q.get("version").filter(|v| !v.is_empty()).map(str::to_string),
        input: json_input(&body)?,
        parent_trace_context: trace_context(&headers),
        ..Default::default()
    };
    let started = app.service.start(request).await?;
    started_response(&app, &headers, &started.instance_id, wait).await
}

/// The answer to a start or restart: 202 with the management payload, or, when the caller
/// asked to wait and the instance finished in time, 200 with its output (or its status object
/// if it did not complete).
async fn started_response(app: &App, headers: &HeaderMap, id: &str, wait: Option<Duration>) -> ApiResult {
    if let Some(wait) = wait {
        let request = GetInstanceRequest {
            instance_id: id.to_string(),
            get_inputs_and_outputs: true,
        };
        match app
            .service
            .wait(request, Some(tokio::time::Instant::now() + wait), is_terminal)
            .await
        {
            Ok(GetInstanceResponse {
                orchestration_state: Some(s),
                ..
            }) => {
                if s.orchestration_status == OrchestrationStatus::Completed as i32 {
                    return Ok(json(StatusCode::OK, &payload::json_value(s.output.as_deref())));
                }
                let body = payload::status(&s, Show { input: true, output: true });
                return Ok(json(StatusCode::OK, &Value::Object(body)));
            }
            Ok(_) => return Err(ApiError::not_found(format!("no instance with id '{id}'"))),
            Err(e) if e.code() == Code::DeadlineExceeded => {}
            Err(e) => return Err(e.into()),
        }
    }
    let origin = links::origin(app.public_url.as_deref(), headers);
    let body = links::management(&origin, id);
    let location = body["statusQueryGetUri"].as_str().unwrap_or_default().to_string();
    let mut response = json(StatusCode::ACCEPTED, &body);
    response.headers_mut().insert(header::LOCATION, header_value(&location));
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_START));
    Ok(response)
}

async fn status(State(app): State<App>, Path(id): Path<String>, RawQuery(query): RawQuery, headers: HeaderMap, uri: Uri) -> ApiResult {
    let q = Query::parse(query);
    let show_input = q.flag("showInput", true)?;
    let show_history = q.flag("showHistory", false)?;
    let show_history_output = q.flag("showHistoryOutput", false)?;
    let fail_with_500 = q.flag("returnInternalServerErrorOnFailure", false)?;
    let request = GetInstanceRequest {
        instance_id: id.clone(),
        get_inputs_and_outputs: true,
    };
    let Some(state) = app.service.get(request).await?.orchestration_state else {
        return Err(ApiError::not_found(format!("no instance with id '{id}'")));
    };
    let mut body = payload::status(
        &state,
        Show {
            input: show_input,
            output: true,
        },
    );
    if show_history {
        let request = StreamInstanceHistoryRequest {
            instance_id: id.clone(),
            ..Default::default()
        };
        let events: Vec<HistoryEvent> = app.service.history(request).await?.into_iter().flat_map(|c| c.events).collect();
        body.insert("historyEvents".into(), Value::Array(payload::history(&events, show_history_output)));
    }
    let runtime = OrchestrationStatus::try_from(state.orchestration_status).unwrap_or(OrchestrationStatus::Running);
    let body = Value::Object(body);
    if !is_terminal(runtime) {
        // The async HTTP pattern: keep polling this very URL.
        let origin = links::origin(app.public_url.as_deref(), &headers);
        let mut response = json(StatusCode::ACCEPTED, &body);
        response
            .headers_mut()
            .insert(header::LOCATION, header_value(&links::this_request(&origin, &uri)));
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_RUNNING));
        return Ok(response);
    }
    let code = if runtime == OrchestrationStatus::Failed && fail_with_500 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    Ok(json(code, &body))
}

async fn list(State(app): State<App>, RawQuery(query): RawQuery, headers: HeaderMap) -> ApiResult {
    let q = Query::parse(query);
    let top = q.top()?.unwrap_or(0);
    let continuation = continuation(&headers)?;
    let show_input = q.flag("showInput", false)?;
    let query = InstanceQuery {
        runtime_status: q.statuses()?,
        created_time_from: q.time("createdTimeFrom")?,
        created_time_to: q.time("createdTimeTo")?,
        max_instance_count: top,
        continuation_token: continuation,
        instance_id_prefix: q.get("instanceIdPrefix").filter(|p| !p.is_empty()).map(str::to_string),
        fetch_inputs_and_outputs: true,
        ..Default::default()
    };
    let page = app.service.query(QueryInstancesRequest { query: Some(query) }).await?;
    let items: Vec<Value> = page
        .orchestration_state
        .iter()
        .map(|s| {
            Value::Object(payload::status(
                s,
                Show {
                    input: show_input,
                    output: true,
                },
            ))
        })
        .collect();
    let mut response = json(StatusCode::OK, &Value::Array(items));
    if let Some(token) = page.continuation_token {
        response.headers_mut().insert(CONTINUATION, header_value(&links::segment(&token)));
    }
    Ok(response)
}

fn purged(deleted: i32) -> Response {
    json(StatusCode::OK, &serde_json::json!({ "instancesDeleted": deleted }))
}

async fn purge_one(State(app): State<App>, Path(id): Path<String>, RawQuery(query): RawQuery) -> ApiResult {
    let q = Query::parse(query);
    let request = PurgeInstancesRequest {
        request: Some(PurgeTarget::InstanceId(id.clone())),
        recursive: q.flag("recursive", false)?,
        ..Default::default()
    };
    match app.service.purge(request).await?.deleted_instance_count {
        0 => Err(ApiError::not_found(format!("no instance with id '{id}'"))),
        n => Ok(purged(n)),
    }
}

async fn purge_by_filter(State(app): State<App>, caller: Caller, RawQuery(query): RawQuery) -> ApiResult {
    caller.may_destroy()?;
    let q = Query::parse(query);
    let Some(from) = q.time("createdTimeFrom")? else {
        return Err(ApiError::bad_request("Please provide value for 'createdTimeFrom'"));
    };
    let filter = PurgeInstanceFilter {
        created_time_from: Some(from),
        created_time_to: Some(q.time("createdTimeTo")?.unwrap_or_else(|| time::to_timestamp(app.service.now()))),
        runtime_status: q.statuses()?,
        timeout: None,
    };
    let request = PurgeInstancesRequest {
        request: Some(PurgeTarget::PurgeInstanceFilter(filter)),
        recursive: q.flag("recursive", false)?,
        ..Default::default()
    };
    match app.service.purge(request).await?.deleted_instance_count {
        0 => Err(ApiError::not_found("no finished instance matched the filter")),
        n => Ok(purged(n)),
    }
}

/// 202 when an event was queued; 410 when the instance has already finished.
fn accepted(id: &str, delivery: Delivery) -> ApiResult {
    match delivery {
        Delivery::Finished => Err(ApiError::new(StatusCode::GONE, format!("instance '{id}' has already finished"))),
        _ => Ok(StatusCode::ACCEPTED.into_response()),
    }
}

async fn raise(State(app): State<App>, Path((id, event)): Path<(String, String)>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("application/json"));
    if !is_json {
        return Err(ApiError::bad_request(
            "the event data must be sent as Content-Type: application/json",
        ));
    }
    let request = RaiseEventRequest {
        instance_id: id.clone(),
        name: event,
        input: json_input(&body)?,
    };
    let delivery = app.service.raise(request).await?;
    accepted(&id, delivery)
}

fn reason(q: &Query) -> Option<String> {
    q.get("reason").filter(|r| !r.is_empty()).map(str::to_string)
}

async fn terminate(State(app): State<App>, Path(id): Path<String>, RawQuery(query): RawQuery) -> ApiResult {
    let q = Query::parse(query);
    let request = TerminateRequest {
        instance_id: id.clone(),
        // The reason becomes the instance's output, JSON text like every payload.
        output: reason(&q).map(|r| Value::String(r).to_string()),
        recursive: q.flag("recursive", false)?,
    };
    let delivery = app.service.terminate(request).await?;
    accepted(&id, delivery)
}

async fn suspend(State(app): State<App>, Path(id): Path<String>, RawQuery(query): RawQuery) -> ApiResult {
    let q = Query::parse(query);
    let delivery = app.service.suspend_or_resume(id.clone(), reason(&q), true).await?;
    accepted(&id, delivery)
}

async fn resume(State(app): State<App>, Path(id): Path<String>, RawQuery(query): RawQuery) -> ApiResult {
    let q = Query::parse(query);
    let delivery = app.service.suspend_or_resume(id.clone(), reason(&q), false).await?;
    accepted(&id, delivery)
}

async fn rewind(State(app): State<App>, Path(id): Path<String>, RawQuery(query): RawQuery) -> ApiResult {
    let q = Query::parse(query);
    let request = RewindInstanceRequest {
        instance_id: id,
        reason: reason(&q),
    };
    app.service.rewind(request).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn restart(State(app): State<App>, Path(id): Path<String>, RawQuery(query): RawQuery, headers: HeaderMap) -> ApiResult {
    let q = Query::parse(query);
    let wait = q.wait("timeout")?;
    let request = RestartInstanceRequest {
        instance_id: id,
        restart_with_new_instance_id: q.flag("restartWithNewInstanceId", false)?,
    };
    let restarted = match app.service.restart(request).await {
        Ok(r) => r,
        // Durable Functions answers a restart of a live instance with 409.
        Err(e) if e.code() == Code::FailedPrecondition => return Err(ApiError::new(StatusCode::CONFLICT, e.message())),
        Err(e) => return Err(e.into()),
    };
    started_response(&app, &headers, &restarted.instance_id, wait).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_capped_not_converted_whole() {
        let wait = |v: &str| Query::parse(Some(format!("timeout={v}"))).wait("timeout").map_err(|e| e.status);
        assert_eq!(wait("1.5"), Ok(Some(Duration::from_millis(1500))));
        // Seconds beyond what a Duration holds are the longest wait, not a crash.
        assert_eq!(wait("1e300"), Ok(Some(MAX_WAIT)));
        for bad in ["-1", "NaN", "inf", "soon"] {
            assert_eq!(wait(bad), Err(StatusCode::BAD_REQUEST), "{bad}");
        }
    }
}

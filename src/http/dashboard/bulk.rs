//! `POST /api/bulk?action=...`: terminate, purge, restart, suspend, resume or rewind the
//! instances a body's `{"ids": [...]}` names, or raise an event (`event=NAME`, the body's
//! `data` as its input) to them, or (with `all=1` and no ids) every instance the list's filter
//! in the query string matches, up to [`MAX_BULK`] per request. Each instance goes through the
//! same service method as its gRPC call, so the same rules decide (only finished instances are
//! purged or restarted, a finished instance ignores a terminate); the answer says how many
//! succeeded and why the others did not.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::filter::{MAX_PAGE, Page};
use super::{Dashboard, Need};
use crate::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::proto::purge_instances_request::Request as PurgeTarget;
use crate::proto::*;
use crate::store::{Delivery, SortKey};

/// Most instances one request acts on; the answer's `more` says whether others still match.
pub const MAX_BULK: usize = 10_000;
/// Failure reasons reported in full; the rest are only counted.
const MAX_ERRORS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Terminate,
    Purge,
    Restart,
    Suspend,
    Resume,
    Rewind,
    Raise,
}

impl Action {
    fn parse(name: &str) -> ApiResult<Action> {
        Ok(match name {
            "terminate" => Action::Terminate,
            "purge" => Action::Purge,
            "restart" => Action::Restart,
            "suspend" => Action::Suspend,
            "resume" => Action::Resume,
            "rewind" => Action::Rewind,
            "raise" => Action::Raise,
            other => {
                return Err(ApiError::bad_request(format!(
                    "action: '{other}' is not terminate, purge, restart, suspend, resume, rewind or raise"
                )));
            }
        })
    }
}

fn selection_is_filter(query: &str) -> bool {
    form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "all" && (v == "1" || v == "true"))
}

/// The selection: ids from the body, or every instance matching the filter.
async fn selection(d: &Dashboard, query: &str, body: &Bytes) -> ApiResult<(Vec<String>, bool, Option<String>)> {
    let all = selection_is_filter(query);
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?
    };
    // An event's data, as the JSON text every payload is.
    let data = body.get("data").filter(|d| !d.is_null()).map(Value::to_string);
    let ids: Option<Vec<String>> = match body.get("ids") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(
            list.iter()
                .map(|id| id.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::bad_request("ids must be strings"))?,
        ),
        Some(_) => return Err(ApiError::bad_request("ids must be an array of instance ids")),
    };
    match (ids, all) {
        (Some(ids), false) if ids.len() <= MAX_BULK => Ok((ids, false, data)),
        (Some(_), false) => Err(ApiError::bad_request(format!("at most {MAX_BULK} ids per request"))),
        (None, true) => {
            // Ids first, actions after: acting while paging could meet a restarted instance again.
            let mut page = Page::parse(query)?;
            page.filter.sort = SortKey::Created;
            page.filter.descending = false;
            page.filter.after_name = None;
            page.filter.after = None;
            page.filter.limit = MAX_PAGE;
            let mut ids = vec![];
            loop {
                let rows = d.service.store().query(&page.filter).await.map_err(ApiError::from)?;
                let Some(last) = rows.last() else { break };
                page.filter.after = Some((last.created_at, last.instance_id.clone()));
                let full = rows.len() == MAX_PAGE as usize;
                ids.extend(rows.into_iter().map(|r| r.instance_id));
                if ids.len() > MAX_BULK {
                    ids.truncate(MAX_BULK);
                    return Ok((ids, true, data));
                }
                if !full {
                    break;
                }
            }
            Ok((ids, false, data))
        }
        _ => Err(ApiError::bad_request(
            "name the instances ({\"ids\": [...]} in the body) or ask for the whole filter (all=1), not both",
        )),
    }
}

pub async fn run(State(d): State<Dashboard>, caller: Caller, RawQuery(query): RawQuery, headers: HeaderMap, body: Bytes) -> ApiResult {
    d.permit(&headers, Need::Write)?;
    let query = query.unwrap_or_default();
    let mut action = None;
    let mut reason = None;
    let mut event = String::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "action" => action = Some(Action::parse(&v)?),
            "reason" if !v.is_empty() => reason = Some(v.to_string()),
            "event" => event = v.to_string(),
            _ => {}
        }
    }
    let action = action.ok_or_else(|| ApiError::bad_request("action is required"))?;
    // Purging a whole filter is the API's purge by filter: a destructive call.
    if action == Action::Purge && selection_is_filter(&query) {
        caller.may_destroy()?;
    }
    let (ids, more, data) = selection(&d, &query, &body).await?;
    let mut succeeded = 0u64;
    let mut deleted = 0i64;
    let mut errors: Vec<Value> = vec![];
    let mut failed = 0u64;
    for id in &ids {
        // An event (terminate, suspend, resume, raise) sent to a finished instance changes
        // nothing: that is not a success.
        let delivered = |d: Delivery| match d {
            Delivery::Finished => Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                format!("instance '{id}' has already finished"),
            )),
            _ => Ok(()),
        };
        let outcome: Result<(), ApiError> = match action {
            Action::Terminate => d
                .service
                .terminate(TerminateRequest {
                    instance_id: id.clone(),
                    output: reason.as_ref().map(|r| Value::String(r.clone()).to_string()),
                    recursive: false,
                })
                .await
                .map_err(ApiError::from)
                .and_then(delivered),
            Action::Suspend | Action::Resume => d
                .service
                .suspend_or_resume(id.clone(), reason.clone(), action == Action::Suspend)
                .await
                .map_err(ApiError::from)
                .and_then(delivered),
            Action::Rewind => d
                .service
                .rewind(RewindInstanceRequest {
                    instance_id: id.clone(),
                    reason: reason.clone(),
                })
                .await
                .map(|_| ())
                .map_err(ApiError::from),
            Action::Raise => d
                .service
                .raise(RaiseEventRequest {
                    instance_id: id.clone(),
                    name: event.clone(),
                    input: data.clone(),
                })
                .await
                .map_err(ApiError::from)
                .and_then(delivered),
            Action::Restart => d
                .service
                .restart(RestartInstanceRequest {
                    instance_id: id.clone(),
                    restart_with_new_instance_id: false,
                })
                .await
                .map(|_| ())
                .map_err(ApiError::from),
            Action::Purge => d
                .service
                .purge(PurgeInstancesRequest {
                    request: Some(PurgeTarget::InstanceId(id.clone())),
                    recursive: true,
                    ..Default::default()
                })
                .await
                .map_err(ApiError::from)
                .and_then(|r| match r.deleted_instance_count {
                    0 => Err(ApiError::not_found(format!("no instance with id '{id}'"))),
                    n => {
                        deleted += i64::from(n);
                        Ok(())
                    }
                }),
        };
        match outcome {
            Ok(()) => succeeded += 1,
            Err(e) => {
                failed += 1;
                if errors.len() < MAX_ERRORS {
                    errors.push(json!({ "instanceId": id, "message": e.message }));
                }
            }
        }
    }
    let mut body = json!({
        "matched": ids.len(),
        "succeeded": succeeded,
        "failed": failed,
        "errors": errors,
        "more": more,
    });
    if action == Action::Purge {
        body["instancesDeleted"] = json!(deleted);
    }
    Ok(super::json(&body))
}

//! `GET /api/entities`: one page of durable entities by id, with their state, the
//! orchestration holding their lock and how many messages wait for them. `prefix` filters on
//! the entity id (`@name@key`: `@counter@` is every counter), `after` resumes after the
//! previous page's `next`, `pageSize` is 1 to 500 (default 50).

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use serde_json::json;

use super::filter::MAX_PAGE;
use super::{Dashboard, Need};
use crate::http::error::{ApiError, ApiResult};
use crate::store::{EntityListFilter, EntitySummary};

const DEFAULT_PAGE: u32 = 50;

fn row(e: &EntitySummary) -> serde_json::Value {
    let id = &e.entity.instance_id;
    // `@name@key`; anything else is shown whole as the name.
    let (name, key) = id
        .strip_prefix('@')
        .and_then(|rest| rest.split_once('@'))
        .unwrap_or((id.as_str(), ""));
    json!({
        "id": id,
        "name": name,
        "key": key,
        "state": e.entity.state,
        "lockedBy": e.entity.lock.as_ref().map(|l| l.owner.clone()),
        "lastModifiedAt": super::view::stored_millis(e.entity.last_modified),
        "backlog": e.backlog,
    })
}

pub async fn list(State(d): State<Dashboard>, RawQuery(query): RawQuery, headers: HeaderMap) -> ApiResult {
    d.permit(&headers, Need::Read)?;
    let mut f = EntityListFilter {
        include_transient: true,
        ..Default::default()
    };
    let mut size = DEFAULT_PAGE;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "prefix" if !v.is_empty() => f.id_prefix = Some(v.to_string()),
            "after" if !v.is_empty() => f.after = Some(v.to_string()),
            "pageSize" => {
                size = match v.parse::<u32>() {
                    Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "pageSize: '{v}' is not a number from 1 to {MAX_PAGE}"
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    f.limit = size + 1;
    let mut rows = d.service.store().query_entities(&f).await.map_err(ApiError::from)?;
    let more = rows.len() > size as usize;
    rows.truncate(size as usize);
    let next = if more {
        rows.last().map(|r| r.entity.instance_id.clone())
    } else {
        None
    };
    Ok(super::json(&json!({
        "items": rows.iter().map(row).collect::<Vec<_>>(),
        "next": next,
    })))
}

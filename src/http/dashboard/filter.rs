//! The list's query string: filters, order and page, as the page keeps them in its URL.
//!
//! `status` (comma-separated runtime statuses), `name`, `prefix` (instance-id prefix),
//! `customStatus` (contained, ignoring case), `createdFrom`/`createdTo`/`completedFrom`/
//! `completedTo` (milliseconds since the epoch), `sub=1` (include sub-orchestrations),
//! `sort` (`created`, `completed` or `name`), `order` (`desc`, the default, or `asc`),
//! `pageSize` (1 to 500, default 50) and `after` (the `next` token of the previous page).

use serde_json::{Value, json};

use super::super::error::{ApiError, ApiResult};
use crate::model::{Instance, parse_runtime_status};
use crate::store::{InstanceFilter, SortKey};

const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;

/// A parsed list request.
#[derive(Debug, Clone)]
pub struct Page {
    /// With `limit` one more than `size`: the extra row tells whether another page exists.
    pub filter: InstanceFilter,
    pub size: u32,
}

fn bad(name: &str, value: &str, expected: &str) -> ApiError {
    ApiError::bad_request(format!("{name}: '{value}' is not {expected}"))
}

impl Page {
    pub fn parse(query: &str) -> ApiResult<Page> {
        let mut f = InstanceFilter {
            top_level_only: true,
            descending: true,
            ..Default::default()
        };
        let mut size = DEFAULT_PAGE;
        let mut after = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let text = || Some(v.to_string()).filter(|t| !t.is_empty());
            let millis = || -> ApiResult<Option<i64>> {
                match text() {
                    None => Ok(None),
                    // The page speaks milliseconds (a browser's `Date`); the store keeps microseconds.
                    Some(t) => t
                        .parse::<i64>()
                        .map(|ms| Some(ms.saturating_mul(1000)))
                        .map_err(|_| bad(&k, &t, "milliseconds since the epoch")),
                }
            };
            match k.as_ref() {
                "status" => {
                    for s in v.split(',').filter(|s| !s.trim().is_empty()) {
                        f.statuses
                            .push(parse_runtime_status(s).map_err(|e| ApiError::bad_request(format!("status: {e}")))?);
                    }
                }
                "name" => f.name = text(),
                "prefix" => f.id_prefix = text(),
                "customStatus" => f.custom_status = text(),
                "createdFrom" => f.created_from = millis()?,
                "createdTo" => f.created_to = millis()?,
                "completedFrom" => f.completed_from = millis()?,
                "completedTo" => f.completed_to = millis()?,
                "sub" => f.top_level_only = !matches!(v.as_ref(), "1" | "true"),
                "sort" => {
                    f.sort = match v.as_ref() {
                        "" | "created" => SortKey::Created,
                        "completed" => SortKey::Completed,
                        "name" => SortKey::Name,
                        other => return Err(bad("sort", other, "created, completed or name")),
                    }
                }
                "order" => {
                    f.descending = match v.as_ref() {
                        "" | "desc" => true,
                        "asc" => false,
                        other => return Err(bad("order", other, "asc or desc")),
                    }
                }
                "pageSize" => {
                    size = match v.parse::<u32>() {
                        Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                        _ => return Err(bad("pageSize", &v, &format!("a number from 1 to {MAX_PAGE}"))),
                    }
                }
                "after" => after = text(),
                // Anything else (the page's own view state) is not the API's business.
                _ => {}
            }
        }
        if let Some(token) = after {
            let parsed: Option<(i64, String, Option<String>)> = serde_json::from_str::<Value>(&token).ok().and_then(|v| {
                Some((
                    v.get(0)?.as_i64()?,
                    v.get(1)?.as_str()?.to_string(),
                    v.get(2).and_then(|n| n.as_str()).map(str::to_string),
                ))
            });
            let (at, id, name) = parsed.ok_or_else(|| bad("after", &token, "a token this sidecar issued"))?;
            f.after = Some((at, id));
            f.after_name = name;
        }
        f.limit = size + 1;
        Ok(Page { filter: f, size })
    }

    /// The token that resumes after `last` in this page's order.
    pub fn token_after(&self, last: &Instance) -> String {
        let token = match self.filter.sort {
            SortKey::Created => json!([last.created_at, last.instance_id]),
            SortKey::Completed => json!([last.completed_at.unwrap_or_default(), last.instance_id]),
            SortKey::Name => json!([last.created_at, last.instance_id, last.name]),
        };
        token.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::OrchestrationStatus;

    #[test]
    fn defaults_hide_sub_orchestrations_newest_first() {
        let p = Page::parse("").unwrap();
        assert!(p.filter.top_level_only && p.filter.descending);
        assert_eq!((p.size, p.filter.limit, p.filter.sort), (50, 51, SortKey::Created));
    }

    #[test]
    fn reads_every_filter() {
        let p = Page::parse(
            "status=Failed,running&name=Order&prefix=ord-&customStatus=st%C3%A9p&createdFrom=5&completedTo=9&sub=1&sort=name&order=asc&pageSize=20&view=x",
        )
        .unwrap();
        let f = &p.filter;
        assert_eq!(f.statuses, vec![OrchestrationStatus::Failed, OrchestrationStatus::Running]);
        assert_eq!((f.name.as_deref(), f.id_prefix.as_deref()), (Some("Order"), Some("ord-")));
        assert_eq!(f.custom_status.as_deref(), Some("stép"));
        assert_eq!(
            (f.created_from, f.created_to, f.completed_to),
            (Some(5000), None, Some(9000)),
            "milliseconds in, microseconds stored"
        );
        assert!(!f.top_level_only && !f.descending);
        assert_eq!((f.sort, p.size), (SortKey::Name, 20));
    }

    #[test]
    fn a_token_resumes_after_the_last_row() {
        let p = Page::parse("sort=name").unwrap();
        let last = Instance {
            instance_id: "a|b".into(),
            name: "N".into(),
            version: None,
            execution_id: String::new(),
            status: OrchestrationStatus::Completed,
            input: None,
            output: None,
            custom_status: None,
            failure_details: None,
            created_at: 42,
            updated_at: 42,
            completed_at: Some(50),
            scheduled_start_at: None,
            parent_instance_id: None,
            tags: Default::default(),
            trace_context: None,
        };
        let token = p.token_after(&last);
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("sort", "name")
            .append_pair("after", &token)
            .finish();
        let next = Page::parse(&query).unwrap();
        assert_eq!(next.filter.after, Some((42, "a|b".to_string())));
        assert_eq!(next.filter.after_name.as_deref(), Some("N"));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for q in [
            "status=Nope",
            "createdFrom=yesterday",
            "sort=size",
            "pageSize=0",
            "pageSize=501",
            "after=xyz",
        ] {
            let e = Page::parse(q).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{q}");
        }
    }
}

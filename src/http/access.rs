//! Who may call which HTTP route. The keys and roles are the gRPC listener's ([`Keys`], one
//! definition in `auth`); this module only says which role each route needs and answers a
//! refusal the HTTP way: 401 (with `WWW-Authenticate: Bearer`) for a missing or unknown key,
//! 403 for a role too low, both with the API's JSON error body.
//!
//! Open to anyone: the probes (an orchestrator's probe presents no key and learns nothing
//! about the data), the OpenAPI document (it describes the API, not the instances) and the
//! dashboard's page shell and assets (the page must load to ask for a key; everything it
//! shows comes from `/api/`, which needs one). Every other read, `/metrics` included (its
//! labels name orchestrations and activities), needs `read`; every change needs `write`; the
//! destructive calls (purge by filter) ask [`Caller::may_destroy`] in their handlers, which
//! knows `--allow-destructive-rpcs`, as the gRPC handlers do.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::auth::{Caller, Denied, Keys, Role};

/// The role a request needs, or `None` for the open routes.
pub fn needed(method: &Method, path: &str) -> Option<Role> {
    let reading = method == Method::GET || method == Method::HEAD;
    if reading && is_open(path) {
        return None;
    }
    Some(if reading { Role::Read } else { Role::Write })
}

fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/openapi.json" | "/" | "/entities" | "/favicon.ico")
        || path.starts_with("/assets/")
        // The dashboard's instance page (the API's instances live under the base path).
        || path.starts_with("/instances/")
}

/// The middleware in front of every route: decides who the caller is and puts the
/// [`Caller`] into the request for handlers that decide on content.
pub async fn check(State(keys): State<Keys>, mut request: Request, next: Next) -> Response {
    let Some(role) = needed(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    match keys.authorize(request.headers(), role) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(denied) => {
            tracing::debug!(path = request.uri().path(), reason = ?denied, "HTTP request refused");
            refusal(denied)
        }
    }
}

fn refusal(denied: Denied) -> Response {
    let unauthenticated = matches!(denied, Denied::Unauthenticated(_));
    let mut response = ApiError::from(denied).into_response();
    if unauthenticated {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Handlers take the caller as an argument; a request that did not pass [`check`] (an open
/// route) is the least privileged.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller::of_http(&parts.extensions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_read_changes_need_write_probes_are_open() {
        let api = "/runtime/webhooks/durabletask/instances";
        assert_eq!(needed(&Method::GET, api), Some(Role::Read));
        assert_eq!(needed(&Method::DELETE, api), Some(Role::Write));
        assert_eq!(
            needed(&Method::POST, "/runtime/webhooks/durabletask/orchestrators/x"),
            Some(Role::Write)
        );
        assert_eq!(needed(&Method::GET, "/metrics"), Some(Role::Read));
        assert_eq!(needed(&Method::GET, "/api/events"), Some(Role::Read));
        assert_eq!(needed(&Method::POST, "/api/bulk"), Some(Role::Write));
        for open in ["/healthz", "/readyz", "/openapi.json", "/", "/assets/app.js", "/instances/abc"] {
            assert_eq!(needed(&Method::GET, open), None, "{open}");
        }
        // Open only for reading: a POST to an open path still needs a key.
        assert_eq!(needed(&Method::POST, "/healthz"), Some(Role::Write));
    }
}

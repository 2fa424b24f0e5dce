//! The OpenAPI document of everything the listener serves, at `/openapi.json`. The service
//! tests check that it names exactly the routes that exist, and schemathesis checks the
//! answers against it (`tests/http_fuzz.sh`).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::State as App;

pub const DOCUMENT: &str = include_str!("openapi.json");

pub fn routes() -> Router<App> {
    Router::new().route(
        "/openapi.json",
        get(|| async { ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response() }),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_json_with_the_base_path_routes() {
        let doc: serde_json::Value = serde_json::from_str(super::DOCUMENT).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().expect("paths");
        assert!(paths.contains_key("/runtime/webhooks/durabletask/instances/{instanceId}"));
    }
}

//! Absolute URLs for the management payload and `Location` headers. Callers behind a reverse
//! proxy must get links that work from where they are: a configured public URL wins, then the
//! proxy's `X-Forwarded-Proto`/`X-Forwarded-Host`, then the request's own `Host`.

use axum::http::{HeaderMap, Uri};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use super::api::BASE_PATH;

/// Characters escaped in a path segment: everything but RFC 3986 unreserved characters and a
/// few harmless sub-delimiters.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'&')
    .add(b'+')
    .add(b'=')
    .add(b';');

pub fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// `scheme://host[:port]` (no trailing slash) the caller reaches this listener at.
pub fn origin(public_url: Option<&str>, headers: &HeaderMap) -> String {
    if let Some(url) = public_url {
        return url.to_string();
    }
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty() && !v.contains(['/', ' ', '@']))
    };
    let scheme = first("x-forwarded-proto")
        .filter(|p| p.eq_ignore_ascii_case("http") || p.eq_ignore_ascii_case("https"))
        .unwrap_or("http")
        .to_ascii_lowercase();
    let host = first("x-forwarded-host").or_else(|| first("host")).unwrap_or("localhost");
    format!("{scheme}://{host}")
}

/// The absolute form of the URL this request was made to (for `Location` while polling).
pub fn this_request(origin: &str, uri: &Uri) -> String {
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    format!("{origin}{path_and_query}")
}

/// The management links of one instance, in the Durable Functions payload's field order.
pub fn management(origin: &str, instance_id: &str) -> serde_json::Value {
    let instance = format!("{origin}{BASE_PATH}/instances/{}", segment(instance_id));
    serde_json::json!({
        "id": instance_id,
        "statusQueryGetUri": instance,
        "sendEventPostUri": format!("{instance}/raiseEvent/{{eventName}}"),
        "terminatePostUri": format!("{instance}/terminate?reason={{text}}"),
        "purgeHistoryDeleteUri": instance,
        "restartPostUri": format!("{instance}/restart"),
        "suspendPostUri": format!("{instance}/suspend?reason={{text}}"),
        "resumePostUri": format!("{instance}/resume?reason={{text}}"),
        "rewindPostUri": format!("{instance}/rewind?reason={{text}}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_origin_follows_configuration_then_proxy_then_host() {
        let h = headers(&[
            ("host", "10.0.0.5:8080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "ops.example.com, inner"),
        ]);
        assert_eq!(origin(Some("https://public.example"), &h), "https://public.example");
        assert_eq!(origin(None, &h), "https://ops.example.com");
        assert_eq!(origin(None, &headers(&[("host", "127.0.0.1:7071")])), "http://127.0.0.1:7071");
        // A forged scheme or host with a path is ignored.
        let odd = headers(&[("host", "h:1"), ("x-forwarded-proto", "javascript"), ("x-forwarded-host", "evil/x")]);
        assert_eq!(origin(None, &odd), "http://h:1");
    }

    #[test]
    fn ids_are_escaped_in_links() {
        assert_eq!(segment("a b/c?d#e%"), "a%20b%2Fc%3Fd%23e%25");
        let links = management("http://h", "x/y");
        assert_eq!(links["statusQueryGetUri"], "http://h/runtime/webhooks/durabletask/instances/x%2Fy");
        assert_eq!(
            links["sendEventPostUri"],
            "http://h/runtime/webhooks/durabletask/instances/x%2Fy/raiseEvent/{eventName}"
        );
    }
}

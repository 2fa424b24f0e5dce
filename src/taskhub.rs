//! Which task hub a call is for: the `taskhub` request metadata, as the managed scheduler's SDK
//! packages (and their emulator's apps) send it on every call, and why a call's hub cannot be
//! served. The hubs themselves are opened and served by [`crate::hubs`].

use tonic::codegen::http::HeaderMap;

/// Why a call's task hub cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The `taskhub` metadata is not a hub name.
    #[error("{0}")]
    Name(String),
    #[error("taskhub: this sidecar serves only the default task hub, not '{0}'")]
    OnlyDefault(String),
    #[error(
        "taskhub: '{name}' would be task hub number {number} besides the default one; this sidecar serves at most {max} (--max-task-hubs)"
    )]
    TooMany { name: String, number: usize, max: usize },
    #[error("the sidecar is shutting down")]
    ShuttingDown,
    /// Its store could not be opened (the message names the redacted URL and the cause).
    #[error("{0}")]
    Open(String),
}

/// The metadata key naming the task hub.
pub const HEADER: &str = "taskhub";

/// The name that stands for the default hub, as the scheduler emulator's own default hub is
/// called: `taskhub: default` and no `taskhub` at all reach the same instances.
pub const DEFAULT: &str = "default";

/// Longest hub name. It also keeps the Postgres schema and channel names derived from it
/// within Postgres's 63-byte identifiers.
pub const MAX_LEN: usize = 40;

/// The hub a request names: `None` for the default hub (no `taskhub`, an empty one, or
/// `default`), otherwise the name in lower case. Names are compared without regard to case,
/// as the scheduler compares them, and may hold ASCII letters, digits, `-` and `_`, starting
/// with a letter or digit, so that every store can derive file, schema and channel names from
/// them without quoting surprises.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<String>, HubError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let name = value
        .to_str()
        .map_err(|_| HubError::Name("taskhub: the task hub name must be plain ASCII".to_string()))?;
    parse(name)
}

/// See [`from_headers`].
pub fn parse(name: &str) -> Result<Option<String>, HubError> {
    if name.is_empty() || name.eq_ignore_ascii_case(DEFAULT) {
        return Ok(None);
    }
    if name.len() > MAX_LEN {
        return Err(HubError::Name(format!(
            "taskhub: a task hub name has at most {MAX_LEN} characters (got {})",
            name.len()
        )));
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if !name.chars().all(plain) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(HubError::Name(format!(
            "taskhub: '{}' is not a valid task hub name (ASCII letters, digits, '-' and '_', starting with a letter or digit)",
            name.escape_default()
        )));
    }
    Ok(Some(name.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_hub_names() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("default").unwrap(), None);
        assert_eq!(parse("DeFault").unwrap(), None);
        assert_eq!(from_headers(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn names_fold_to_lower_case() {
        assert_eq!(parse("Mine").unwrap().as_deref(), Some("mine"));
        assert_eq!(parse("team_a-2").unwrap().as_deref(), Some("team_a-2"));
        assert_eq!(parse(&"x".repeat(MAX_LEN)).unwrap().map(|n| n.len()), Some(MAX_LEN));
    }

    #[test]
    fn bad_names_are_invalid_arguments() {
        for bad in ["-x", "_x", "a b", "a.b", "a\"b", "hé", "a/b", &"x".repeat(MAX_LEN + 1)] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, HubError::Name(_)), "{bad}");
            assert!(e.to_string().starts_with("taskhub: "), "{e}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, tonic::codegen::http::HeaderValue::from_bytes(b"\xff").unwrap());
        assert!(matches!(from_headers(&headers).unwrap_err(), HubError::Name(_)));
    }
}

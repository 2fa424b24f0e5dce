//! Size limits on what clients and workers send, in one place. Every field that is stored,
//! logged or sent on to workers is bounded, so no single request can make later work items,
//! queries or log lines unusable for everyone else. The checks are pure: they return the
//! message an INVALID_ARGUMENT carries, which names the field and the sizes, never the input.

use std::collections::HashMap;

use crate::proto::TaskFailureDetails;

/// Instance ids: primary keys, part of every log line and of every client call.
pub const MAX_ID_BYTES: usize = 1024;
/// Orchestration, activity and event names, versions, tag keys.
pub const MAX_NAME_BYTES: usize = 1024;
/// Tag values.
pub const MAX_TAG_VALUE_BYTES: usize = 4096;
/// Tags on one instance or task.
pub const MAX_TAGS: usize = 64;
/// Nesting of `innerFailure` in failure details. Protocol buffers parsers refuse messages
/// nested deeper than 100 levels, and a failure detail sits several levels down inside a
/// work item, so deeper nesting would make every later work item of the instance unreadable.
pub const MAX_FAILURE_DEPTH: usize = 32;
/// Actions in one orchestrator answer (all chunks together).
pub const MAX_ACTIONS: usize = 100_000;
/// Entries in a runtime-status filter (there are eight statuses; repeats are pointless).
pub const MAX_STATUS_FILTER: usize = 32;

/// Instance ids: not empty, bounded, printable (they are written into text logs).
pub fn instance_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{field} is required"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!("{field} is {} bytes; at most {MAX_ID_BYTES} are allowed", id.len()));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(())
}

/// Names and versions: bounded and printable.
pub fn name(field: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_NAME_BYTES {
        return Err(format!("{field} is {} bytes; at most {MAX_NAME_BYTES} are allowed", value.len()));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(())
}

pub fn optional_name(field: &str, value: Option<&str>) -> Result<(), String> {
    value.map_or(Ok(()), |v| name(field, v))
}

pub fn tags<'a>(field: &str, tags: impl ExactSizeIterator<Item = (&'a String, &'a String)>) -> Result<(), String> {
    if tags.len() > MAX_TAGS {
        return Err(format!("{field} holds {} tags; at most {MAX_TAGS} are allowed", tags.len()));
    }
    for (key, value) in tags {
        name(&format!("{field} key"), key)?;
        if value.len() > MAX_TAG_VALUE_BYTES {
            return Err(format!(
                "{field} value is {} bytes; at most {MAX_TAG_VALUE_BYTES} are allowed",
                value.len()
            ));
        }
    }
    Ok(())
}

pub fn tag_map(field: &str, map: &HashMap<String, String>) -> Result<(), String> {
    tags(field, map.iter())
}

/// Failure details: nesting bounded (see [`MAX_FAILURE_DEPTH`]), error type bounded.
pub fn failure(field: &str, details: Option<&TaskFailureDetails>) -> Result<(), String> {
    let mut depth = 0;
    let mut next = details;
    while let Some(d) = next {
        depth += 1;
        if depth > MAX_FAILURE_DEPTH {
            return Err(format!("{field} nests innerFailure more than {MAX_FAILURE_DEPTH} levels deep"));
        }
        if d.error_type.len() > MAX_NAME_BYTES {
            return Err(format!(
                "{field}.errorType is {} bytes; at most {MAX_NAME_BYTES} are allowed",
                d.error_type.len()
            ));
        }
        if d.properties.values().any(|v| value_depth(v) > MAX_FAILURE_DEPTH) {
            return Err(format!("{field}.properties nest values more than {MAX_FAILURE_DEPTH} levels deep"));
        }
        next = d.inner_failure.as_deref();
    }
    Ok(())
}

/// How deeply a `google.protobuf.Value` nests lists and structs.
fn value_depth(value: &prost_types::Value) -> usize {
    use prost_types::value::Kind;
    match &value.kind {
        Some(Kind::ListValue(list)) => 1 + list.values.iter().map(value_depth).max().unwrap_or(0),
        Some(Kind::StructValue(s)) => 1 + s.fields.values().map(value_depth).max().unwrap_or(0),
        _ => 1,
    }
}

/// Statuses in a filter.
pub fn status_filter(field: &str, n: usize) -> Result<(), String> {
    if n > MAX_STATUS_FILTER {
        return Err(format!("{field} holds {n} statuses; at most {MAX_STATUS_FILTER} are allowed"));
    }
    Ok(())
}

/// Client text quoted in an error message or a log line: at most 64 characters, with control
/// characters escaped, so an answer never grows with the input and a log line is never forged.
pub fn shown(text: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = text.chars().take(MAX).flat_map(char::escape_default).collect();
    if text.chars().nth(MAX).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_printable() {
        assert!(instance_id("id", "order-1").is_ok());
        assert!(instance_id("id", "").is_err());
        assert!(instance_id("id", &"x".repeat(MAX_ID_BYTES + 1)).unwrap_err().contains("1025 bytes"));
        assert!(instance_id("id", "a\nb").is_err());
    }

    #[test]
    fn failure_nesting_is_bounded() {
        let mut details = TaskFailureDetails::default();
        for _ in 0..MAX_FAILURE_DEPTH - 1 {
            details = TaskFailureDetails {
                inner_failure: Some(Box::new(details)),
                ..Default::default()
            };
        }
        assert!(failure("f", Some(&details)).is_ok());
        let deeper = TaskFailureDetails {
            inner_failure: Some(Box::new(details)),
            ..Default::default()
        };
        assert!(failure("f", Some(&deeper)).unwrap_err().contains("32 levels"));
    }

    #[test]
    fn shown_text_is_short_and_escaped() {
        assert_eq!(shown("a\nb"), "a\\nb");
        assert_eq!(shown(&"x".repeat(1000)).len(), 67);
    }

    #[test]
    fn tags_are_bounded() {
        let many: HashMap<String, String> = (0..=MAX_TAGS).map(|i| (i.to_string(), String::new())).collect();
        assert!(tag_map("tags", &many).is_err());
        let big = HashMap::from([("k".to_string(), "v".repeat(MAX_TAG_VALUE_BYTES + 1))]);
        assert!(tag_map("tags", &big).is_err());
    }
}

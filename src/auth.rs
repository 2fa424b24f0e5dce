//! API keys and roles. A caller presents a key as `authorization: Bearer <key>` (what the
//! managed scheduler's SDK packages send) or `dapr-api-token: <key>` (what Dapr-style apps
//! send); each key carries one role. [`Keys`] decides who a caller is and is shared by every
//! listener; `grpc::AuthLayer` applies it to the gRPC services, and the HTTP listener
//! (`http::access`) calls [`Keys::authorize`] with its request headers the same way.
//!
//! With no keys configured every caller is anonymous with the `full` role: the sidecar behaves
//! as it always did (and warns when it listens beyond loopback that way).

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::codegen::http;

/// What a caller may do. Ordered: each role may do everything the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads: instance state, queries, history, waits.
    Read,
    /// Everything an app and its workers do: start, raise, terminate, purge one instance, run
    /// work items. Not the destructive admin calls.
    Write,
    /// Everything, including DeleteTaskHub, CreateTaskHub with recreate and purge by filter.
    Full,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "full" => Some(Role::Full),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Full => "full",
        })
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No key, or a key nobody configured (gRPC UNAUTHENTICATED, HTTP 401).
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A valid key whose role is too low (gRPC PERMISSION_DENIED, HTTP 403).
    #[error("this call needs the '{needed}' role; the key presented has '{held}'")]
    Forbidden { needed: Role, held: Role },
}

/// Who made a call: put into the request's extensions by [`AuthLayer`], read by handlers that
/// decide on the request's content (see [`Caller::may_destroy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// `--allow-destructive-rpcs`: `write` keys may make the destructive admin calls too.
    pub destructive_for_writers: bool,
}

impl Caller {
    /// The check for DeleteTaskHub, CreateTaskHub with recreate and purge by filter.
    pub fn may_destroy(&self) -> Result<(), Denied> {
        if self.role == Role::Full || (self.destructive_for_writers && self.role == Role::Write) {
            return Ok(());
        }
        Err(Denied::Forbidden {
            needed: Role::Full,
            held: self.role,
        })
    }

    /// The caller a request carries; a request that did not pass through [`AuthLayer`] (a
    /// handler called directly) is treated as the least privileged.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request.extensions().get::<Caller>().copied().unwrap_or(Caller::LEAST)
    }

    /// The caller an HTTP request carries (put there by the HTTP listener's key check); a
    /// request that did not pass that check is treated as the least privileged.
    pub fn of_http(extensions: &http::Extensions) -> Caller {
        extensions.get::<Caller>().copied().unwrap_or(Caller::LEAST)
    }

    const LEAST: Caller = Caller {
        role: Role::Read,
        destructive_for_writers: false,
    };
}

/// The configured keys, kept as SHA-256 digests so a key never sits in memory in the clear
/// longer than parsing takes, and compared in constant time.
#[derive(Clone, Default)]
pub struct Keys {
    keys: Arc<Vec<([u8; 32], Role)>>,
    destructive_for_writers: bool,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys").field("count", &self.keys.len()).finish()
    }
}

/// The shortest key accepted: a short key can be guessed over the network.
pub const MIN_KEY_LEN: usize = 16;

impl Keys {
    /// No keys: every caller is anonymous with the `full` role.
    pub fn none() -> Keys {
        Keys::default()
    }

    /// Parses `ROLE:KEY` entries, one per line or separated by commas; blank lines and lines
    /// starting with `#` are skipped. `origin` names the source in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Vec<(String, Role)>, String> {
        let mut out = vec![];
        for (n, entry) in text
            .lines()
            .enumerate()
            .flat_map(|(n, l)| l.split(',').map(move |e| (n + 1, e.trim())))
        {
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let (role, key) = entry
                .split_once(':')
                .ok_or_else(|| format!("{origin} line {n}: expected ROLE:KEY (role read, write or full)"))?;
            let role = Role::parse(role.trim())
                .ok_or_else(|| format!("{origin} line {n}: unknown role '{}' (read, write or full)", role.trim()))?;
            let key = key.trim();
            if key.len() < MIN_KEY_LEN {
                return Err(format!("{origin} line {n}: keys must be at least {MIN_KEY_LEN} characters"));
            }
            out.push((key.to_string(), role));
        }
        Ok(out)
    }

    pub fn new(entries: Vec<(String, Role)>, destructive_for_writers: bool) -> Keys {
        Keys {
            keys: Arc::new(entries.into_iter().map(|(k, r)| (digest(&k), r)).collect()),
            destructive_for_writers,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Who presents these headers, or why they are refused. Needs nothing of gRPC: the HTTP
    /// listener calls it with its own request headers.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, Denied> {
        let caller = |role| Caller {
            role,
            destructive_for_writers: self.destructive_for_writers,
        };
        if self.keys.is_empty() {
            return Ok(caller(Role::Full));
        }
        let presented = presented_key(headers).ok_or(Denied::Unauthenticated(
            "an API key is required: send 'authorization: Bearer <key>'",
        ))?;
        let presented = digest(presented);
        // Every configured key is compared, so timing tells nothing about which one matched.
        let mut found = None;
        for (key, role) in self.keys.iter() {
            let same = key.iter().zip(presented.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if same {
                found = Some(*role);
            }
        }
        found
            .map(caller)
            .ok_or(Denied::Unauthenticated("the API key presented is not valid"))
    }

    /// [`Self::authenticate`] plus the role a call needs.
    pub fn authorize(&self, headers: &http::HeaderMap, needed: Role) -> Result<Caller, Denied> {
        let caller = self.authenticate(headers)?;
        if caller.role < needed {
            return Err(Denied::Forbidden { needed, held: caller.role });
        }
        Ok(caller)
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get("dapr-api-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The role each `TaskHubSidecarService` method needs. The destructive admin calls
/// (DeleteTaskHub, and CreateTaskHub with recreate and purge by filter, whose content decides)
/// are let through here as `write`, and their handlers ask [`Caller::may_destroy`], which knows
/// `--allow-destructive-rpcs`. A method missing here needs `full`, so a new RPC is never open
/// by accident.
pub fn needed_role(method: &str) -> Role {
    match method {
        "Hello"
        | "GetInstance"
        | "WaitForInstanceStart"
        | "WaitForInstanceCompletion"
        | "QueryInstances"
        | "ListInstanceIds"
        | "StreamInstanceHistory"
        | "GetEntity"
        | "QueryEntities" => Role::Read,
        "StartInstance"
        | "RewindInstance"
        | "RestartInstance"
        | "RaiseEvent"
        | "TerminateInstance"
        | "SuspendInstance"
        | "ResumeInstance"
        | "PurgeInstances"
        | "GetWorkItems"
        | "CompleteActivityTask"
        | "CompleteOrchestratorTask"
        | "CompleteEntityTask"
        | "AbandonTaskActivityWorkItem"
        | "AbandonTaskOrchestratorWorkItem"
        | "AbandonTaskEntityWorkItem"
        | "SignalEntity"
        | "CleanEntityStorage"
        | "SkipGracefulOrchestrationTerminations"
        | "CreateTaskHub"
        | "DeleteTaskHub" => Role::Write,
        _ => Role::Full,
    }
}

/// The role a gRPC path needs, or `None` for paths open to anyone: the health service, which
/// probes call without credentials and which tells nothing about the data.
pub(crate) fn needed_for_path(path: &str) -> Option<Role> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    match service {
        "grpc.health.v1.Health" => None,
        "TaskHubSidecarService" => Some(needed_role(method)),
        _ => Some(Role::Full),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const READER: &str = "read-key-0123456789";
    const WRITER: &str = "write-key-0123456789";
    const ADMIN: &str = "full-key-0123456789";

    fn keys(destructive: bool) -> Keys {
        let text = format!("# comment\nread:{READER}\nwrite:{WRITER}, full:{ADMIN}\n\n");
        Keys::new(Keys::parse(&text, "test").unwrap(), destructive)
    }

    #[test]
    fn parses_roles_and_refuses_bad_entries() {
        assert_eq!(keys(false).len(), 3);
        assert!(
            Keys::parse("admin:0123456789abcdef", "f")
                .unwrap_err()
                .contains("unknown role 'admin'")
        );
        assert!(Keys::parse("read:short", "f").unwrap_err().contains("at least 16"));
        assert!(Keys::parse("0123456789abcdef", "f").unwrap_err().contains("ROLE:KEY"));
        assert!(Keys::parse("read:a:b:0123456789abcdef", "f").is_ok(), "a key may contain ':'");
    }

    #[test]
    fn without_keys_everyone_is_full() {
        let caller = Keys::none().authorize(&headers(&[]), Role::Full).unwrap();
        assert_eq!(caller.role, Role::Full);
        assert!(caller.may_destroy().is_ok());
    }

    #[test]
    fn keys_are_read_from_either_header() {
        let k = keys(false);
        let bearer = format!("Bearer {WRITER}");
        assert_eq!(k.authenticate(&headers(&[("authorization", &bearer)])).unwrap().role, Role::Write);
        let lower = format!("bearer {READER}");
        assert_eq!(k.authenticate(&headers(&[("authorization", &lower)])).unwrap().role, Role::Read);
        assert_eq!(k.authenticate(&headers(&[("dapr-api-token", ADMIN)])).unwrap().role, Role::Full);
    }

    #[test]
    fn missing_wrong_and_weak_keys_are_refused() {
        let k = keys(false);
        assert!(matches!(k.authenticate(&headers(&[])), Err(Denied::Unauthenticated(_))));
        assert!(matches!(
            k.authenticate(&headers(&[("authorization", "Bearer not-a-configured-key")])),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            k.authenticate(&headers(&[("authorization", &format!("Basic {WRITER}"))])),
            Err(Denied::Unauthenticated(_))
        ));
        let reader = format!("Bearer {READER}");
        assert_eq!(
            k.authorize(&headers(&[("authorization", &reader)]), Role::Write),
            Err(Denied::Forbidden {
                needed: Role::Write,
                held: Role::Read
            })
        );
    }

    #[test]
    fn destruction_needs_full_or_the_flag_for_writers() {
        let writer = format!("Bearer {WRITER}");
        let reader = format!("Bearer {READER}");
        let caller = |k: &Keys, h: &str| k.authenticate(&headers(&[("authorization", h)])).unwrap();
        assert!(caller(&keys(false), &writer).may_destroy().is_err());
        assert!(caller(&keys(true), &writer).may_destroy().is_ok());
        assert!(caller(&keys(true), &reader).may_destroy().is_err());
        assert!(caller(&keys(false), &format!("Bearer {ADMIN}")).may_destroy().is_ok());
    }

    #[test]
    fn every_rpc_of_the_service_has_a_role_and_health_is_open() {
        let proto = include_str!("../proto/orchestrator_service.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| l.split(['(', ' ']).next().unwrap())
            .collect();
        assert!(rpcs.len() > 25, "found {rpcs:?}");
        let unlisted: Vec<_> = rpcs.iter().filter(|m| needed_role(m) == Role::Full).collect();
        assert!(unlisted.is_empty(), "RPCs without a role of their own: {unlisted:?}");
        assert_eq!(needed_for_path("/grpc.health.v1.Health/Check"), None);
        assert_eq!(needed_for_path("/TaskHubSidecarService/GetInstance"), Some(Role::Read));
        assert_eq!(needed_for_path("/other.Service/Call"), Some(Role::Full));
    }
}

//! Configuration: command-line flags, each with an environment twin. Parsed and checked once
//! at start; nothing else reads the environment.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Outrigger: a Durable Task sidecar. Point any Durable Task SDK's client and worker at it
/// (their default address, localhost:4001, works out of the box).
#[derive(Debug, Clone, Parser)]
#[command(name = "outrigger", version, about, long_about = None)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Host or IP address to listen on. "localhost" listens on both 127.0.0.1 and ::1.
    #[arg(long, env = "OUTRIGGER_HOST", default_value = "localhost")]
    pub host: String,

    /// TCP port to listen on (0 picks a free port and logs it).
    #[arg(long, env = "OUTRIGGER_PORT", default_value_t = 4001)]
    pub port: u16,

    /// Where history is kept: postgres://USER:PASSWORD@HOST:PORT/DB (several sidecars may share
    /// one), sqlite://PATH (created if missing, one sidecar) or sqlite::memory:. DATABASE_URL is
    /// honoured too. [default: sqlite://outrigger.db]
    #[arg(long, env = "OUTRIGGER_DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Most Postgres connections this sidecar holds at once.
    #[arg(long, env = "OUTRIGGER_POOL_SIZE", default_value_t = 10, global = true, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pool_size: u32,

    /// Log line format on stderr. Verbosity comes from RUST_LOG (default "info").
    #[arg(long, env = "OUTRIGGER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Seconds a work-item lease lasts without renewal. Leases are renewed while a worker holds
    /// the item; when a sidecar dies, others take its work over after this long.
    #[arg(long, env = "OUTRIGGER_LEASE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_seconds: u64,

    /// Largest gRPC message accepted or sent, in MiB.
    #[arg(long, env = "OUTRIGGER_MAX_MESSAGE_MIB", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_message_mib: u64,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Apply pending database schema migrations, then exit (the server also applies them at
    /// start; this is for operators who migrate as a separate step).
    Migrate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The database URL after applying the DATABASE_URL fallback and the default.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .or_else(|| std::env::var("DATABASE_URL").ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "sqlite://outrigger.db".to_string())
    }

    pub fn store_options(&self) -> crate::store::Options {
        crate::store::Options { pool_size: self.pool_size }
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }

    pub fn max_message_bytes(&self) -> usize {
        (self.max_message_mib as usize) << 20
    }
}

/// A database URL safe to log: any password is masked.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite://outrigger.db"), "sqlite://outrigger.db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}

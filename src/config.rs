//! Configuration: command-line flags, each with an environment twin. Parsed and checked once
//! at start; nothing else reads the environment.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::telemetry::{self, Protocol, SamplerKind};

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

    /// Which work item carries entity batches: `request` (EntityRequest, read by every SDK that
    /// runs entities) or `batch-request` (the older EntityBatchRequest, for older workers).
    #[arg(long, env = "OUTRIGGER_ENTITY_WORK_ITEMS", value_enum, default_value_t = EntityWorkItems::Request, help_heading = "Entities")]
    pub entity_work_items: EntityWorkItems,

    /// OTLP collector to export traces to, e.g. http://localhost:4318 (HTTP) or
    /// http://localhost:4317 (gRPC). No traces are exported when neither endpoint is set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", help_heading = "Tracing")]
    pub otel_endpoint: Option<String>,

    /// Full URL for traces, used as is (over HTTP, --otel-endpoint gets /v1/traces appended).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", help_heading = "Tracing")]
    pub otel_traces_endpoint: Option<String>,

    /// OTLP transport.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::HttpProtobuf, help_heading = "Tracing")]
    pub otel_protocol: OtlpProtocol,

    /// service.name of the exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "outrigger", help_heading = "Tracing")]
    pub otel_service_name: String,

    /// Which traces are recorded.
    #[arg(long, env = "OTEL_TRACES_SAMPLER", value_enum, default_value_t = TraceSampler::ParentbasedAlwaysOn, help_heading = "Tracing")]
    pub otel_traces_sampler: TraceSampler,

    /// The ratio for the traceidratio samplers, 0.0 to 1.0.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value_t = 1.0, value_parser = ratio, help_heading = "Tracing")]
    pub otel_traces_sampler_arg: f64,

    /// Extra resource attributes of the exported spans: key=value,key=value.
    #[arg(long, env = "OTEL_RESOURCE_ATTRIBUTES", value_parser = resource_attributes, help_heading = "Tracing")]
    pub otel_resource_attributes: Option<String>,

    /// A server span for each client RPC (StartInstance, RaiseEvent, ...).
    #[arg(long, env = "OUTRIGGER_OTEL_RPC_SPANS", default_value_t = true, action = clap::ArgAction::Set, help_heading = "Tracing")]
    pub otel_rpc_spans: bool,

    /// TCP port of the HTTP listener (Durable Functions management API, /metrics, /healthz,
    /// /readyz); 0 picks a free one. No HTTP listener unless set.
    #[arg(long, env = "OUTRIGGER_HTTP_PORT", help_heading = "HTTP")]
    pub http_port: Option<u16>,

    /// Host or IP address of the HTTP listener. "localhost" (the default, like the gRPC
    /// listener's) is both 127.0.0.1 and ::1; the management API can terminate and purge, so
    /// exposing it is a deliberate choice.
    #[arg(long, env = "OUTRIGGER_HTTP_HOST", default_value = "localhost", help_heading = "HTTP")]
    pub http_host: String,

    /// Base URL the management payload's links start with, e.g. https://ops.example.com, when
    /// callers reach the listener through a proxy. Without it links follow the request's
    /// X-Forwarded-Proto/X-Forwarded-Host, else its Host header.
    #[arg(long, env = "OUTRIGGER_HTTP_PUBLIC_URL", value_parser = public_url, help_heading = "HTTP")]
    pub http_public_url: Option<String>,

    /// Record Prometheus metrics (served at /metrics on the HTTP listener).
    #[arg(long, env = "OUTRIGGER_METRICS", default_value_t = true, action = clap::ArgAction::Set, help_heading = "HTTP")]
    pub metrics: bool,

    /// Serve the dashboard at / on the HTTP listener.
    #[arg(long, env = "OUTRIGGER_DASHBOARD", default_value_t = true, action = clap::ArgAction::Set, help_heading = "Dashboard")]
    pub dashboard: bool,

    /// The dashboard shows state but takes no actions (no terminate, purge, restart, ...).
    #[arg(long, env = "OUTRIGGER_DASHBOARD_READ_ONLY", help_heading = "Dashboard")]
    pub dashboard_read_only: bool,

    /// Link from an instance to its trace in your tracing UI: {traceId} (and {instanceId}) are
    /// filled in, e.g. http://localhost:16686/trace/{traceId} for Jaeger.
    #[arg(long, env = "OUTRIGGER_DASHBOARD_TRACE_URL", value_parser = trace_url, help_heading = "Dashboard")]
    pub dashboard_trace_url: Option<String>,
}

fn trace_url(text: &str) -> Result<String, String> {
    if !(text.starts_with("http://") || text.starts_with("https://")) || !text.contains("{traceId}") {
        return Err(format!("'{text}' is not an http(s):// URL with {{traceId}} in it"));
    }
    Ok(text.to_string())
}

fn public_url(text: &str) -> Result<String, String> {
    let trimmed = text.trim_end_matches('/');
    if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) || trimmed.len() <= "https://".len() {
        return Err(format!("'{text}' is not an http:// or https:// URL"));
    }
    Ok(trimmed.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EntityWorkItems {
    Request,
    BatchRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum TraceSampler {
    AlwaysOn,
    AlwaysOff,
    Traceidratio,
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
    ParentbasedTraceidratio,
}

fn ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("'{text}' is not a ratio between 0.0 and 1.0")),
    }
}

fn resource_attributes(text: &str) -> Result<String, String> {
    telemetry::parse_attributes(text).map(|_| text.to_string())
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Apply pending database schema migrations, then exit (the server also applies them at
    /// start; this is for operators who migrate as a separate step).
    Migrate,
    // Its help text is the doc comment of `InstancesArgs`.
    Instances(crate::cli::InstancesArgs),
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

    pub fn entity_work_items(&self) -> crate::dispatch::EntityWorkItems {
        match self.entity_work_items {
            EntityWorkItems::Request => crate::dispatch::EntityWorkItems::Request,
            EntityWorkItems::BatchRequest => crate::dispatch::EntityWorkItems::BatchRequest,
        }
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }

    pub fn max_message_bytes(&self) -> usize {
        (self.max_message_mib as usize) << 20
    }

    /// Trace export settings, or `None` when no endpoint is configured.
    pub fn telemetry(&self) -> Option<telemetry::Settings> {
        let endpoint = self.otel_endpoint.clone().filter(|e| !e.is_empty());
        let traces_endpoint = self.otel_traces_endpoint.clone().filter(|e| !e.is_empty());
        if endpoint.is_none() && traces_endpoint.is_none() {
            return None;
        }
        let protocol = match self.otel_protocol {
            OtlpProtocol::Grpc => Protocol::Grpc,
            OtlpProtocol::HttpProtobuf => Protocol::HttpProtobuf,
        };
        let r = self.otel_traces_sampler_arg;
        let sampler = match self.otel_traces_sampler {
            TraceSampler::AlwaysOn => SamplerKind::AlwaysOn,
            TraceSampler::AlwaysOff => SamplerKind::AlwaysOff,
            TraceSampler::Traceidratio => SamplerKind::TraceIdRatio(r),
            TraceSampler::ParentbasedAlwaysOn => SamplerKind::ParentBasedAlwaysOn,
            TraceSampler::ParentbasedAlwaysOff => SamplerKind::ParentBasedAlwaysOff,
            TraceSampler::ParentbasedTraceidratio => SamplerKind::ParentBasedTraceIdRatio(r),
        };
        Some(telemetry::Settings {
            traces_endpoint,
            service_name: self.otel_service_name.clone(),
            sampler,
            resource_attributes: self.otel_resource_attributes.clone(),
            rpc_spans: self.otel_rpc_spans,
            ..telemetry::Settings::new(endpoint.unwrap_or_default(), protocol)
        })
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
    fn tracing_is_off_without_an_endpoint_and_reads_the_standard_names() {
        let config = Config::try_parse_from(["outrigger"]).unwrap();
        assert!(config.telemetry().is_none());
        let config = Config::try_parse_from([
            "outrigger",
            "--otel-endpoint=http://collector:4317",
            "--otel-protocol=grpc",
            "--otel-traces-sampler=parentbased_traceidratio",
            "--otel-traces-sampler-arg=0.25",
            "--otel-rpc-spans=false",
        ])
        .unwrap();
        let settings = config.telemetry().expect("enabled");
        assert_eq!(settings.endpoint, "http://collector:4317");
        assert_eq!(settings.protocol, Protocol::Grpc);
        assert_eq!(settings.sampler, SamplerKind::ParentBasedTraceIdRatio(0.25));
        assert!(!settings.rpc_spans);
        assert!(Config::try_parse_from(["outrigger", "--otel-protocol=http/json"]).is_err());
        assert!(Config::try_parse_from(["outrigger", "--otel-traces-sampler-arg=2"]).is_err());
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite://outrigger.db"), "sqlite://outrigger.db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}

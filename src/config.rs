//! Configuration: command-line flags, each with an environment twin. Parsed and checked once
//! at start; nothing else reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
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

    /// TCP port of the Microsoft-dialect listener (0 picks a free port and logs it). [default:
    /// 4001, or off when only --dapr-port is given]
    #[arg(long, env = "OUTRIGGER_PORT")]
    pub port: Option<u16>,

    /// TCP port of the Dapr-dialect listener (the Rust SDK dapr-durabletask, Dapr's Go and
    /// Python SDKs), on the same host, store and task hub. Off unless set; 0 picks a free port.
    #[arg(long, env = "OUTRIGGER_DAPR_PORT", help_heading = "Dapr dialect")]
    pub dapr_port: Option<u16>,

    /// The Dapr app id this sidecar serves. Dapr requests and actions may name a target app;
    /// with this set, targets other than this app are refused (there is no cross-app routing).
    /// Unset, every target is taken to be this app.
    #[arg(long, env = "OUTRIGGER_DAPR_APP_ID", help_heading = "Dapr dialect")]
    pub dapr_app_id: Option<String>,

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

    /// Largest work item sent to a worker, in MiB (the SDKs' gRPC clients accept 4 MiB unless
    /// configured otherwise). An orchestration whose next work item would be larger fails; an
    /// activity result larger than this fails the activity.
    #[arg(long, env = "OUTRIGGER_MAX_WORK_ITEM_MIB", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024), help_heading = "Limits")]
    pub max_work_item_mib: u64,

    /// MiB of work items queued for one worker stream that it has not read yet; a worker that
    /// stops reading is sent nothing more until it catches up.
    #[arg(long, env = "OUTRIGGER_WORKER_BUFFER_MIB", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096), help_heading = "Limits")]
    pub worker_buffer_mib: u64,

    /// Seconds a worker may hold a work item without answering before it is given to another
    /// worker (its late answer is then refused). 0: no deadline.
    #[arg(long, env = "OUTRIGGER_ITEM_DEADLINE_SECONDS", default_value_t = 0, help_heading = "Limits")]
    pub item_deadline_seconds: u64,

    /// Seconds between HTTP/2 keepalive pings on every connection; a peer that does not answer
    /// one within as long again is disconnected, and a worker's items go to other workers.
    /// 0: no pings.
    #[arg(long, env = "OUTRIGGER_KEEPALIVE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600), help_heading = "Limits")]
    pub keepalive_seconds: u64,

    /// Seconds a new connection may take to begin speaking (the HTTP/2 preface and SETTINGS,
    /// or an HTTP request line; with TLS, its handshake too) before it is closed, on every
    /// listener: silent connections cannot pile up and hold file descriptors.
    #[arg(long, env = "OUTRIGGER_HANDSHAKE_DEADLINE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600), help_heading = "Limits")]
    pub handshake_deadline_seconds: u64,

    /// Longest a WaitForInstanceStart/Completion call without a gRPC deadline waits before it
    /// answers DEADLINE_EXCEEDED (the .NET client then asks again). Calls with a deadline wait
    /// until their deadline.
    #[arg(long, env = "OUTRIGGER_MAX_WAIT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400), help_heading = "Protocol")]
    pub max_wait_seconds: u64,

    /// Entity message reorder window told to workers on every orchestrator work item
    /// (`entityParameters`; the .NET SDK needs it to use entities from orchestrations).
    #[arg(long, env = "OUTRIGGER_ENTITY_REORDER_WINDOW_MINUTES", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=10080), help_heading = "Entities")]
    pub entity_reorder_window_minutes: u64,
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

    /// PEM certificate chain for TLS on the gRPC listener (with --tls-key). Reloaded on SIGHUP
    /// and when the file changes.
    #[arg(long, env = "OUTRIGGER_TLS_CERT", requires = "tls_key", help_heading = "Security")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "OUTRIGGER_TLS_KEY", requires = "tls_cert", help_heading = "Security")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: clients must present a certificate it signed (mTLS). Needs --tls-cert.
    #[arg(long, env = "OUTRIGGER_TLS_CLIENT_CA", requires = "tls_cert", help_heading = "Security")]
    pub tls_client_ca: Option<PathBuf>,

    /// File of API keys, one ROLE:KEY per line (roles: read, write, full). With keys, every
    /// call needs `authorization: Bearer KEY`; without, every caller has the full role.
    #[arg(long, env = "OUTRIGGER_API_KEYS_FILE", help_heading = "Security")]
    pub api_keys_file: Option<PathBuf>,

    /// API keys given directly, ROLE:KEY entries separated by commas (added to the file's).
    #[arg(long, env = "OUTRIGGER_API_KEYS", hide_env_values = true, help_heading = "Security")]
    pub api_keys: Option<String>,

    /// Lets write keys make the destructive admin calls (DeleteTaskHub, CreateTaskHub with
    /// recreate, purge by filter), which otherwise need a full key.
    #[arg(long, env = "OUTRIGGER_ALLOW_DESTRUCTIVE_RPCS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", help_heading = "Security")]
    pub allow_destructive_rpcs: bool,

    /// Also serve only the gRPC health service, in the clear and without keys, on this
    /// address (e.g. 0.0.0.0:4002), for probes that can present neither.
    #[arg(long, env = "OUTRIGGER_HEALTH_ADDRESS", help_heading = "Deployment")]
    pub health_address: Option<SocketAddr>,

    /// At SIGTERM, how long work items in flight may take to finish before their leases are
    /// released (readiness is off and no new work is handed out meanwhile).
    #[arg(long, env = "OUTRIGGER_DRAIN_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600), help_heading = "Deployment")]
    pub drain_seconds: u64,

    /// Most named task hubs (chosen by the `taskhub` gRPC metadata) served besides the default
    /// hub; each is opened on its first call and holds its own store connections and dispatch
    /// loop. 0 serves the default hub only.
    #[arg(long, env = "OUTRIGGER_MAX_TASK_HUBS", default_value_t = 16, value_parser = clap::value_parser!(u64).range(0..=256), help_heading = "Task hubs")]
    pub max_task_hubs: u64,

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
    /// Ask a running sidecar's gRPC health service; exits 0 when it answers SERVING, 1
    /// otherwise (for container health checks, where no probe tool is installed).
    Health {
        /// Where to ask [default: --health-address if set, else http://127.0.0.1:--port].
        #[arg(long)]
        address: Option<String>,
        /// The health service name: "" (the whole server), readiness or liveness.
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The Microsoft-dialect port: 4001 unless set, off when only the Dapr port is set.
    pub fn microsoft_port(&self) -> Option<u16> {
        match (self.port, self.dapr_port) {
            (Some(p), _) => Some(p),
            (None, Some(_)) => None,
            (None, None) => Some(4001),
        }
    }

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

    /// Named task hubs live beside the default hub, in the same database.
    pub fn task_hubs(&self) -> crate::hubs::Settings {
        crate::hubs::Settings {
            database: Some((self.database_url(), self.store_options())),
            max: self.max_task_hubs as usize,
        }
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

    pub fn max_wait(&self) -> Duration {
        Duration::from_secs(self.max_wait_seconds)
    }

    pub fn entity_reorder_window(&self) -> Duration {
        Duration::from_secs(self.entity_reorder_window_minutes * 60)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }

    /// The API keys from --api-keys-file and --api-keys.
    pub fn keys(&self) -> Result<crate::auth::Keys, String> {
        let mut entries = vec![];
        if let Some(path) = &self.api_keys_file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read --api-keys-file {}: {e}", path.display()))?;
            entries.extend(crate::auth::Keys::parse(&text, &path.display().to_string())?);
        }
        if let Some(text) = &self.api_keys {
            entries.extend(crate::auth::Keys::parse(text, "OUTRIGGER_API_KEYS")?);
        }
        Ok(crate::auth::Keys::new(entries, self.allow_destructive_rpcs))
    }

    /// The TLS files, when TLS is configured.
    pub fn tls_files(&self) -> Option<crate::tls::Files> {
        Some(crate::tls::Files {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// Where `outrigger health` asks.
    pub fn health_target(&self, address: Option<&str>) -> String {
        if let Some(a) = address {
            return if a.contains("://") { a.to_string() } else { format!("http://{a}") };
        }
        let (ip, port) = match self.health_address {
            Some(a) if a.ip().is_unspecified() => (None, a.port()),
            Some(a) => (Some(a.ip()), a.port()),
            None => (None, self.microsoft_port().or(self.dapr_port).unwrap_or(4001)),
        };
        match ip {
            Some(std::net::IpAddr::V6(ip)) => format!("http://[{ip}]:{port}"),
            Some(ip) => format!("http://{ip}:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        }
    }

    pub fn max_message_bytes(&self) -> usize {
        (self.max_message_mib as usize) << 20
    }

    /// Dispatch settings from the flags.
    pub fn dispatch(&self) -> crate::dispatch::Settings {
        crate::dispatch::Settings {
            lease: self.lease(),
            item_deadline: (self.item_deadline_seconds > 0).then(|| Duration::from_secs(self.item_deadline_seconds)),
            worker_buffer_bytes: (self.worker_buffer_mib as usize) << 20,
            max_work_item_bytes: (self.max_work_item_mib as usize) << 20,
            ..Default::default()
        }
    }

    pub fn handshake_deadline(&self) -> Duration {
        Duration::from_secs(self.handshake_deadline_seconds)
    }

    pub fn keepalive(&self) -> Option<Duration> {
        (self.keepalive_seconds > 0).then(|| Duration::from_secs(self.keepalive_seconds))
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    /// Parses `args` as the command line with every flag's environment twin switched off, so
    /// the outcome does not depend on the variables of the process running the tests.
    fn parse<const N: usize>(args: [&str; N]) -> Result<Config, clap::Error> {
        let command = Config::command().mut_args(|a| a.env(None::<&'static str>));
        Config::from_arg_matches(&command.try_get_matches_from(args)?)
    }

    #[test]
    fn tracing_is_off_without_an_endpoint_and_reads_the_standard_names() {
        let config = parse(["outrigger"]).unwrap();
        assert!(config.telemetry().is_none());
        let config = parse([
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
        assert!(parse(["outrigger", "--otel-protocol=http/json"]).is_err());
        assert!(parse(["outrigger", "--otel-traces-sampler-arg=2"]).is_err());
    }

    #[test]
    fn security_flags_go_together() {
        assert!(parse(["outrigger", "--tls-cert=c.pem"]).is_err(), "a cert needs a key");
        assert!(parse(["outrigger", "--tls-client-ca=ca.pem"]).is_err());
        let config = parse(["outrigger", "--tls-cert=c.pem", "--tls-key=k.pem"]).unwrap();
        assert_eq!(config.tls_files().unwrap().client_ca, None);
        let config = parse([
            "outrigger",
            "--api-keys=read:0123456789abcdef,full:fedcba9876543210",
            "--allow-destructive-rpcs",
        ])
        .unwrap();
        assert_eq!(config.keys().unwrap().len(), 2);
        assert!(config.allow_destructive_rpcs);
        assert!(parse(["outrigger", "--api-keys=read:short"]).unwrap().keys().is_err());
    }

    #[test]
    fn health_asks_the_health_listener_when_there_is_one() {
        let config = parse(["outrigger", "--port=4100"]).unwrap();
        assert_eq!(config.health_target(None), "http://127.0.0.1:4100");
        let config = parse(["outrigger", "--health-address=0.0.0.0:4002"]).unwrap();
        assert_eq!(config.health_target(None), "http://127.0.0.1:4002");
        assert_eq!(config.health_target(Some("db:9")), "http://db:9");
    }
}

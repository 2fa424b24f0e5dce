//! The `outrigger` binary: configuration, logging, store, listeners, serve.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use outrigger::config::{Command, Config, LogFormat};
use outrigger::telemetry::Telemetry;
use outrigger::{dispatch, server, store};

/// Exit code for unusable configuration (BSD EX_USAGE), as sidecar supervisors expect.
const EX_USAGE: u8 = 64;
/// Exit code when a required resource (database, port) is unavailable (BSD EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let mut config = Config::parse();
    let command = match config.command.take() {
        // A client: no server logging, its own small runtime.
        Some(Command::Instances(args)) => return outrigger::cli::main(args),
        other => other,
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Some(Command::Migrate) => runtime.block_on(migrate(config)),
        Some(Command::Health { address, service }) => runtime.block_on(health(config.health_target(address.as_deref()), service)),
        Some(Command::Instances(_)) => unreachable!("handled above"),
        None => runtime.block_on(serve(config)),
    }
}

async fn migrate(config: Config) -> ExitCode {
    let database_url = config.database_url();
    match store::migrate(&database_url, &config.store_options()).await {
        Ok(()) => {
            info!(database_url = %outrigger::redact::redact(&database_url), "schema is up to date");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}

/// `outrigger health`: one Check call, for container health checks.
async fn health(target: String, service: String) -> ExitCode {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let ask = async {
        let channel = tonic::transport::Endpoint::from_shared(target.clone())
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest { service: service.clone() })
            .await
            .map_err(|e| e.message().to_string())?;
        Ok::<_, String>(answer.into_inner().status())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), ask).await {
        Ok(Ok(ServingStatus::Serving)) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            println!("{}", status.as_str_name());
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("{target}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{target}: no answer within 5 s");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
}

async fn serve(config: Config) -> ExitCode {
    let database_url = config.database_url();
    info!(
        host = %config.host,
        port = ?config.microsoft_port(),
        dapr_port = ?config.dapr_port,
        database_url = %outrigger::redact::redact(&database_url),
        log_format = ?config.log_format,
        pool_size = config.pool_size,
        lease_seconds = config.lease_seconds,
        max_message_mib = config.max_message_mib,
        max_work_item_mib = config.max_work_item_mib,
        worker_buffer_mib = config.worker_buffer_mib,
        item_deadline_seconds = config.item_deadline_seconds,
        keepalive_seconds = config.keepalive_seconds,
        handshake_deadline_seconds = config.handshake_deadline_seconds,
        max_wait_seconds = config.max_wait_seconds,
        entity_reorder_window_minutes = config.entity_reorder_window_minutes,
        http_port = ?config.http_port,
        metrics = config.metrics,
        max_task_hubs = config.max_task_hubs,
        version = env!("CARGO_PKG_VERSION"),
        "starting outrigger"
    );
    let mut listeners = server::Listeners::default();
    for (host, port, bound) in [
        (&config.host, config.microsoft_port(), &mut listeners.microsoft),
        (&config.host, config.dapr_port, &mut listeners.dapr),
        (&config.http_host, config.http_port, &mut listeners.http),
    ] {
        let Some(port) = port else { continue };
        let addresses = match addresses(host, port).await {
            Ok(a) => a,
            Err(e) => {
                error!("{e}");
                return ExitCode::from(EX_USAGE);
            }
        };
        *bound = match bind(addresses).await {
            Ok(l) => l,
            Err(e) => {
                error!("{e}");
                return ExitCode::from(EX_UNAVAILABLE);
            }
        };
    }
    let keys = match config.keys() {
        Ok(k) => k,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let tls = match config.tls_files().map(outrigger::tls::Acceptor::new).transpose() {
        Ok(t) => t,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let health_listeners = match config.health_address {
        None => vec![],
        Some(a) => match bind(vec![a]).await {
            Ok(l) => l,
            Err(e) => {
                error!("health listener: {e}");
                return ExitCode::from(EX_UNAVAILABLE);
            }
        },
    };
    let beyond_loopback = listeners
        .microsoft
        .iter()
        .chain(&listeners.dapr)
        .chain(&listeners.http)
        .filter_map(|l| l.local_addr().ok())
        .any(|a| !a.ip().is_loopback());
    info!(
        tls = tls.is_some(),
        mtls = config.tls_client_ca.is_some(),
        api_keys = keys.len(),
        allow_destructive_rpcs = config.allow_destructive_rpcs,
        drain_seconds = config.drain_seconds,
        "security"
    );
    if beyond_loopback && (tls.is_none() || keys.is_empty()) {
        let missing = match (tls.is_none(), keys.is_empty()) {
            (true, true) => "without TLS and without API keys: anyone who can reach it may read, change or delete every instance",
            (true, false) => "without TLS: API keys and payloads cross the network in the clear",
            _ => "without API keys: any client that can reach it may read, change or delete every instance",
        };
        warn!("!!! listening beyond loopback {missing}; set OUTRIGGER_TLS_CERT/OUTRIGGER_TLS_KEY and OUTRIGGER_API_KEYS_FILE !!!");
    }
    let store = match store::open(&database_url, &config.store_options()).await {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    for l in &health_listeners {
        if let Ok(addr) = l.local_addr() {
            info!("health service only: addr={addr}");
        }
    }
    // HTTP first: the gRPC line is what supervisors and tests take as "serving".
    for l in &listeners.http {
        if let Ok(addr) = l.local_addr() {
            info!("listening http={addr}");
        }
    }
    for (dialect, l) in listeners
        .microsoft
        .iter()
        .map(|l| ("microsoft", l))
        .chain(listeners.dapr.iter().map(|l| ("dapr", l)))
    {
        if let Ok(addr) = l.local_addr() {
            info!(dialect, "listening addr={addr}");
        }
    }
    outrigger::metrics::set_enabled(config.metrics);
    let telemetry = match config.telemetry() {
        None => Telemetry::disabled(),
        Some(settings) => match Telemetry::start(&settings) {
            Ok(t) => {
                info!(endpoint = %outrigger::redact::redact(settings.traces_endpoint.as_deref().unwrap_or(&settings.endpoint)), protocol = ?settings.protocol, "exporting traces");
                t
            }
            Err(e) => {
                error!("{e}");
                return ExitCode::from(EX_USAGE);
            }
        },
    };
    let options = server::Options {
        dispatch: dispatch::Settings {
            entity_reorder_window: config.entity_reorder_window(),
            entity_work_items: config.entity_work_items(),
            ..config.dispatch()
        },
        max_message_bytes: config.max_message_bytes(),
        keepalive: config.keepalive(),
        max_wait: config.max_wait(),
        telemetry: telemetry.clone(),
        dapr_app_id: config.dapr_app_id.clone(),
        http: outrigger::http::Settings {
            public_url: config.http_public_url.clone(),
            dashboard: config.dashboard.then(|| outrigger::http::dashboard::Settings {
                read_only: config.dashboard_read_only,
                trace_url: config.dashboard_trace_url.clone(),
            }),
        },
        keys,
        tls,
        health_listeners,
        drain: config.drain(),
        handshake_deadline: config.handshake_deadline(),
        task_hubs: config.task_hubs(),
        clock: std::sync::Arc::new(outrigger::time::SystemClock),
    };
    let outcome = server::serve(listeners, store, options, shutdown_signal()).await;
    // The last spans are exported before exit; this blocks on the network, so off the runtime.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match outcome {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("server failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The addresses a host name stands for; "localhost" is both loopbacks, as SDK clients
/// resolving it may try either.
async fn addresses(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if host == "localhost" {
        return Ok(vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
        ]);
    }
    if let Ok(ip) = host.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve --host '{host}': {e}"))?
        .collect();
    if found.is_empty() {
        return Err(format!("--host '{host}' resolves to no address"));
    }
    Ok(found)
}

/// Binds every address. A second address is optional (a machine without IPv6 still serves on
/// IPv4); the first must succeed. With port 0 the later ones reuse the port the first got.
async fn bind(addresses: Vec<SocketAddr>) -> Result<Vec<TcpListener>, String> {
    let mut listeners: Vec<TcpListener> = vec![];
    for mut addr in addresses {
        if let Some(first) = listeners.first()
            && addr.port() == 0
        {
            addr.set_port(first.local_addr().map(|a| a.port()).unwrap_or(0));
        }
        match TcpListener::bind(addr).await {
            Ok(l) => listeners.push(l),
            Err(e) if listeners.is_empty() => {
                let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                    " (is another outrigger already running? choose another --port)"
                } else {
                    ""
                };
                return Err(format!("cannot listen on {addr}: {e}{hint}"));
            }
            Err(e) => warn!("not listening on {addr}: {e}"),
        }
    }
    Ok(listeners)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}

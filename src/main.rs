//! The `outrigger` binary: configuration, logging, store, listeners, serve.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use outrigger::config::{self, Command, Config, LogFormat};
use outrigger::telemetry::Telemetry;
use outrigger::{dispatch, server, store};

/// Exit code for unusable configuration (BSD EX_USAGE), as sidecar supervisors expect.
const EX_USAGE: u8 = 64;
/// Exit code when a required resource (database, port) is unavailable (BSD EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let config = Config::parse();
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match config.command {
        Some(Command::Migrate) => runtime.block_on(migrate(config)),
        Some(Command::Health { ref address, ref service }) => {
            runtime.block_on(health(config.health_target(address.as_deref()), service.clone()))
        }
        None => runtime.block_on(serve(config)),
    }
}

async fn migrate(config: Config) -> ExitCode {
    let database_url = config.database_url();
    match store::migrate(&database_url, &config.store_options()).await {
        Ok(()) => {
            info!(database_url = %config::redact(&database_url), "schema is up to date");
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
        port = config.port,
        database_url = %config::redact(&database_url),
        log_format = ?config.log_format,
        pool_size = config.pool_size,
        lease_seconds = config.lease_seconds,
        max_message_mib = config.max_message_mib,
        max_wait_seconds = config.max_wait_seconds,
        entity_reorder_window_minutes = config.entity_reorder_window_minutes,
        version = env!("CARGO_PKG_VERSION"),
        "starting outrigger"
    );
    let addresses = match addresses(&config.host, config.port).await {
        Ok(a) => a,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let listeners = match bind(addresses).await {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
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
    let beyond_loopback = listeners.iter().filter_map(|l| l.local_addr().ok()).any(|a| !a.ip().is_loopback());
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
    for l in &listeners {
        if let Ok(addr) = l.local_addr() {
            info!("listening addr={addr}");
        }
    }
    let telemetry = match config.telemetry() {
        None => Telemetry::disabled(),
        Some(settings) => match Telemetry::start(&settings) {
            Ok(t) => {
                info!(endpoint = %settings.traces_endpoint.as_deref().unwrap_or(&settings.endpoint), protocol = ?settings.protocol, "exporting traces");
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
            lease: config.lease(),
            entity_reorder_window: config.entity_reorder_window(),
            entity_work_items: config.entity_work_items(),
            ..Default::default()
        },
        max_message_bytes: config.max_message_bytes(),
        max_wait: config.max_wait(),
        telemetry: telemetry.clone(),
        keys,
        tls,
        health_listeners,
        drain: config.drain(),
    };
    let outcome = server::run(listeners, store, options, shutdown_signal()).await;
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

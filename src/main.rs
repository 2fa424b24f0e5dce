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
    let mut config = Config::parse();
    let migrate_only = match config.command.take() {
        // A client: no server logging, its own small runtime.
        Some(Command::Instances(args)) => return outrigger::cli::main(args),
        Some(Command::Migrate) => true,
        None => false,
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if migrate_only {
        runtime.block_on(migrate(config))
    } else {
        runtime.block_on(serve(config))
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
        http_port = ?config.http_port,
        metrics = config.metrics,
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
    let http_listeners = match config.http_port {
        None => vec![],
        Some(port) => match self::addresses(&config.http_host, port).await {
            Err(e) => {
                error!("{e}");
                return ExitCode::from(EX_USAGE);
            }
            Ok(a) => match bind(a).await {
                Ok(l) => l,
                Err(e) => {
                    error!("{e} (--http-port)");
                    return ExitCode::from(EX_UNAVAILABLE);
                }
            },
        },
    };
    let store = match store::open(&database_url, &config.store_options()).await {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    // HTTP first: the gRPC line is what supervisors and tests take as "serving".
    for l in &http_listeners {
        if let Ok(addr) = l.local_addr() {
            info!("listening http={addr}");
        }
    }
    for l in &listeners {
        if let Ok(addr) = l.local_addr() {
            info!("listening addr={addr}");
        }
    }
    outrigger::metrics::set_enabled(config.metrics);
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
            entity_work_items: config.entity_work_items(),
            ..Default::default()
        },
        max_message_bytes: config.max_message_bytes(),
        telemetry: telemetry.clone(),
        http: outrigger::http::Settings {
            public_url: config.http_public_url.clone(),
            dashboard: config.dashboard.then(|| outrigger::http::dashboard::Settings {
                read_only: config.dashboard_read_only,
                trace_url: config.dashboard_trace_url.clone(),
            }),
        },
    };
    let outcome = server::run_with_http(listeners, http_listeners, store, options, shutdown_signal()).await;
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

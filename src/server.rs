//! Serves the sidecar on already-bound listeners until `shutdown` resolves, then drains in the
//! order a sidecar's pod needs: readiness turns false, no new work is handed out, work items in
//! flight may finish until the drain deadline, then worker streams end cleanly, leases are
//! released, and in-flight calls get a short grace period.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{debug, info, warn};

use crate::accept::{Backoff, Handshaking, Speaks};
use crate::auth::Keys;
use crate::dispatch;
use crate::grpc::AuthLayer;
use crate::grpc::dapr::guard;
use crate::hubs::{self, Hubs, Route};
use crate::store::Store;
use crate::task::AbortOnDrop;
use crate::telemetry::{RpcLayer, Telemetry};
use crate::time::{Clock, SystemClock};
use crate::tls::{self, Conn};

/// How long in-flight calls (long waits, mostly) may take to finish once the drain is over.
const GRACE: Duration = Duration::from_secs(5);

/// Health service names besides the whole server (""): `readiness` turns NOT_SERVING when the
/// drain starts; `liveness` stays SERVING until the process exits, so a probe never restarts a
/// draining sidecar.
pub const READINESS: &str = "readiness";
pub const LIVENESS: &str = "liveness";

/// Everything `run` needs besides the listeners.
#[derive(Debug)]
pub struct Options {
    pub dispatch: dispatch::Settings,
    pub max_message_bytes: usize,
    /// HTTP/2 keepalive ping interval on every connection (and how long an answer may take):
    /// a frozen peer is disconnected, which releases a worker's items at once.
    pub keepalive: Option<Duration>,
    /// How long a WaitForInstance* call without a gRPC deadline may wait before it answers
    /// DEADLINE_EXCEEDED (calls with a deadline wait until it).
    pub max_wait: Duration,
    pub telemetry: Telemetry,
    /// The app the Dapr listener serves (routers naming another app are refused).
    pub dapr_app_id: Option<String>,
    pub http: crate::http::Settings,
    /// API keys every call is checked against (none: everyone may do everything).
    pub keys: Keys,
    /// TLS on the API listeners; `None` serves in the clear.
    pub tls: Option<tls::Acceptor>,
    /// Listeners that serve only the health service, always in the clear and without keys,
    /// for probes that cannot present either.
    pub health_listeners: Vec<TcpListener>,
    /// How long work items in flight at shutdown may take to finish.
    pub drain: Duration,
    /// How long a new connection (on every listener) may take to begin speaking (HTTP/2
    /// preface and SETTINGS, or an HTTP request line; with TLS, its handshake too) before it is
    /// closed, so silent connections cannot hold file descriptors.
    pub handshake_deadline: Duration,
    /// Named task hubs beside the default one (the store given to [`serve`]).
    pub task_hubs: hubs::Settings,
    /// Where every hub reads the time of day (the system clock; tests hand in a manual one).
    pub clock: Arc<dyn Clock>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dispatch: dispatch::Settings::default(),
            max_message_bytes: 32 << 20,
            keepalive: Some(Duration::from_secs(10)),
            max_wait: Duration::from_secs(60),
            telemetry: Telemetry::disabled(),
            dapr_app_id: None,
            http: crate::http::Settings::default(),
            keys: Keys::none(),
            tls: None,
            health_listeners: vec![],
            drain: Duration::from_secs(10),
            handshake_deadline: Duration::from_secs(10),
            task_hubs: hubs::Settings::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

type Incoming = Pin<Box<dyn Stream<Item = std::io::Result<Handshaking<Conn>>> + Send>>;

/// One stream of accepted connections over every listener, each accepted by a task of its own
/// that backs off when accepting fails. Each connection must begin HTTP/2 within `handshake`
/// (with TLS, its TLS handshake too, which runs in a task of its own so a slow client never
/// holds up the others).
fn incoming(
    listeners: Vec<TcpListener>,
    tls: Option<tls::Acceptor>,
    handshake: Duration,
    name: &'static str,
) -> (Option<Incoming>, Vec<AbortOnDrop>) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let tasks: Vec<AbortOnDrop> = listeners
        .into_iter()
        .map(|listener| {
            let (tx, tls) = (tx.clone(), tls.clone());
            AbortOnDrop(tokio::spawn(async move {
                let mut backoff = Backoff::new(name);
                loop {
                    let (tcp, _) = backoff.accept(&listener).await;
                    let _ = tcp.set_nodelay(true);
                    let deadline = Instant::now() + handshake;
                    let Some(acceptor) = tls.clone() else {
                        let conn = Handshaking::new(Conn::Plain(tcp), deadline, Speaks::Http2);
                        if tx.send(Ok(conn)).await.is_err() {
                            return;
                        }
                        continue;
                    };
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let conn = Handshaking::new(Conn::Tls(Box::new(stream)), deadline, Speaks::Http2);
                                let _ = tx.send(Ok(conn)).await;
                            }
                            Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                            Err(_) => debug!("TLS handshake not finished within the handshake deadline"),
                        }
                    });
                }
            }))
        })
        .collect();
    if tasks.is_empty() {
        return (None, tasks);
    }
    (Some(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))), tasks)
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for service in ["", READINESS, "TaskHubSidecarService"] {
        health.set_service_status(service, status).await;
    }
}

pub async fn run(
    listeners: Vec<TcpListener>,
    store: Arc<dyn Store>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let listeners = Listeners {
        microsoft: listeners,
        ..Listeners::default()
    };
    serve(listeners, store, options, shutdown).await
}

/// The bound listeners of each dialect (either may be empty, not both) and of the HTTP API,
/// metrics and probes (served only when not empty).
#[derive(Debug, Default)]
pub struct Listeners {
    pub microsoft: Vec<TcpListener>,
    pub dapr: Vec<TcpListener>,
    pub http: Vec<TcpListener>,
}

/// Serves both dialects until `shutdown` resolves: the default task hub on `store`, named hubs
/// (chosen by the `taskhub` metadata) on stores opened as `options.task_hubs` says.
pub async fn serve(
    listeners: Listeners,
    store: Arc<dyn Store>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let recipe = hubs::Recipe {
        dispatch: options.dispatch.clone(),
        telemetry: options.telemetry.clone(),
        max_wait: options.max_wait,
        max_message_bytes: options.max_message_bytes,
        dapr_app_id: options.dapr_app_id.clone(),
        clock: options.clock.clone(),
    };
    let hubs = Hubs::new(store, recipe, options.task_hubs.clone());
    // The HTTP API serves the default hub only.
    let handlers = hubs.default_hub().handlers.clone();
    let http_listeners = listeners.http;
    let handshake = options.handshake_deadline;
    let (http_stop_tx, mut http_stop) = tokio::sync::watch::channel(false);
    let (draining_tx, draining) = tokio::sync::watch::channel(false);
    let _http = (!http_listeners.is_empty()).then(|| {
        let router = crate::http::router(handlers.clone(), options.http.clone(), options.keys.clone(), draining);
        let stopped = async move {
            let _ = http_stop.wait_for(|s| *s).await;
        };
        let tls = options.tls.clone();
        AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = crate::http::serve(http_listeners, router, tls, handshake, stopped).await {
                warn!(error = %e, "HTTP listener failed");
            }
        }))
    });
    let service = Route::new(hubs.clone(), |hub| hub.microsoft.clone());
    let dapr_service = Route::new(hubs.clone(), |hub| hub.dapr.clone());
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;
    health.set_service_status(LIVENESS, ServingStatus::Serving).await;

    let _tls_watch = options.tls.as_ref().map(|t| t.watch());
    let (microsoft, _microsoft_acceptors) = incoming(listeners.microsoft, options.tls.clone(), handshake, "grpc");
    let (dapr, _dapr_acceptors) = incoming(listeners.dapr, options.tls.clone(), handshake, "dapr");
    assert!(microsoft.is_some() || dapr.is_some(), "at least one listener");

    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let _health_servers: Vec<(AbortOnDrop, Vec<AbortOnDrop>)> = options
        .health_listeners
        .into_iter()
        .map(|listener| {
            let (service, mut stopping) = (health_service.clone(), stopping.clone());
            let (incoming, acceptors) = incoming(vec![listener], None, handshake, "health");
            let incoming = incoming.expect("one listener");
            let server = AbortOnDrop(tokio::spawn(async move {
                let result = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = result {
                    warn!(error = %e, "health listener failed");
                }
            }));
            (server, acceptors)
        })
        .collect();

    let closer = hubs.clone();
    let drain = options.drain;
    let graceful = async move {
        shutdown.await;
        // No new work first, then readiness: whoever sees NOT_SERVING may rely on both.
        closer.drain();
        let _ = draining_tx.send(true);
        set_health(&health, ServingStatus::NotServing).await;
        info!(
            in_flight = closer.held(),
            deadline_seconds = drain.as_secs_f64(),
            "shutting down: readiness off, no new work handed out; waiting for work items in flight"
        );
        if tokio::time::timeout(drain, closer.settled()).await.is_err() {
            warn!(still_held = closer.held(), "drain deadline reached; releasing what is still held");
        }
        info!("ending worker streams and releasing leases");
        closer.close_all();
        let _ = http_stop_tx.send(true);
        let _ = stopping_tx.send(true);
    };
    // Each dialect has its own server (both services are named TaskHubSidecarService), with
    // the same layers; both stop when shutdown begins.
    let stopped = {
        let stopping = stopping.clone();
        move || {
            let mut stopping = stopping.clone();
            async move {
                let _ = stopping.wait_for(|s| *s).await;
            }
        }
    };
    let serve_microsoft = serve_dialect(
        "Microsoft",
        microsoft,
        Routes::new(health_service.clone()).add_service(service),
        (options.keepalive, &options.telemetry, &options.keys),
        stopped(),
    );
    let serve_dapr = serve_dialect(
        "Dapr",
        dapr,
        Routes::new(health_service.clone()).add_service(dapr_service),
        (options.keepalive, &options.telemetry, &options.keys),
        stopped(),
    );
    let _graceful = AbortOnDrop(tokio::spawn(graceful));
    let serve = async { tokio::try_join!(serve_microsoft, serve_dapr).map(|_| ()) };
    tokio::select! {
        result = serve => result?,
        _ = async {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(GRACE).await;
        } => warn!("calls still open after the grace period (long waits); closing them"),
    }
    hubs.release_everything().await;
    Ok(())
}

/// One dialect's gRPC server on its listeners (none: nothing to serve), with the layers both
/// dialects share; only the Microsoft listener refuses the Dapr dialect's Rust SDK.
async fn serve_dialect(
    dialect: &'static str,
    incoming: Option<Incoming>,
    routes: Routes,
    (keepalive, telemetry, keys): (Option<Duration>, &Telemetry, &Keys),
    stopped: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let Some(incoming) = incoming else { return Ok(()) };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(keepalive)
        .layer(tower::util::MapRequestLayer::new(crate::grpc::stamp_arrival::<tonic::body::Body>))
        .layer(tower::util::MapResponseLayer::new(crate::grpc::refusal_codes))
        .layer(tower::util::MapResponseLayer::new(guard::undecodable_is_invalid_argument(dialect)))
        .layer(guard::RefuseDaprClientsLayer {
            refuse: dialect == "Microsoft",
        })
        .layer(RpcLayer::new(telemetry.clone()))
        .layer(AuthLayer::new(keys.clone()))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stopped)
        .await
}

//! Serves the sidecar on already-bound listeners until `shutdown` resolves, then drains in the
//! order a sidecar's pod needs: readiness turns false, no new work is handed out, work items in
//! flight may finish until the drain deadline, then worker streams end cleanly, leases are
//! released, and in-flight calls get a short grace period.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::http;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{debug, info, warn};

use crate::auth::{AuthLayer, Keys};
use crate::dispatch::{self, AbortOnDrop, Dispatcher};
use crate::grpc::Service;
use crate::proto::task_hub_sidecar_service_server::TaskHubSidecarServiceServer;
use crate::store::Store;
use crate::telemetry::{RpcLayer, Telemetry};
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
    /// How long a WaitForInstance* call without a gRPC deadline may wait before it answers
    /// DEADLINE_EXCEEDED (calls with a deadline wait until it).
    pub max_wait: Duration,
    pub telemetry: Telemetry,
    /// API keys every call is checked against (none: everyone may do everything).
    pub keys: Keys,
    /// TLS on the API listeners; `None` serves in the clear.
    pub tls: Option<tls::Acceptor>,
    /// Listeners that serve only the health service, always in the clear and without keys,
    /// for probes that cannot present either.
    pub health_listeners: Vec<TcpListener>,
    /// How long work items in flight at shutdown may take to finish.
    pub drain: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dispatch: dispatch::Settings::default(),
            max_message_bytes: 32 << 20,
            max_wait: Duration::from_secs(60),
            telemetry: Telemetry::disabled(),
            keys: Keys::none(),
            tls: None,
            health_listeners: vec![],
            drain: Duration::from_secs(10),
        }
    }
}

type Incoming = Pin<Box<dyn Stream<Item = std::io::Result<Conn>> + Send>>;

/// One stream of accepted connections over every listener; with TLS, each handshake runs in a
/// task of its own so a slow client never holds up the others.
fn incoming(listeners: Vec<TcpListener>, tls: Option<tls::Acceptor>) -> (Incoming, Vec<AbortOnDrop>) {
    let Some(acceptor) = tls else {
        let mut merged = None::<Incoming>;
        for listener in listeners {
            let stream = TcpIncoming::from(listener).with_nodelay(Some(true)).map(|c| c.map(Conn::Plain));
            merged = Some(match merged {
                None => Box::pin(stream),
                Some(other) => Box::pin(other.merge(stream)),
            });
        }
        return (merged.expect("at least one listener"), vec![]);
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let tasks = listeners
        .into_iter()
        .map(|listener| {
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    let tcp = match listener.accept().await {
                        Ok((tcp, _)) => tcp,
                        Err(e) => {
                            // Out of descriptors, mostly: give closing connections a moment.
                            warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let (tx, acceptor) = (tx.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        match acceptor.accept(tcp).await {
                            Ok(stream) => {
                                let _ = tx.send(Ok(Conn::Tls(Box::new(stream)))).await;
                            }
                            Err(e) => debug!(error = %e, "TLS handshake failed"),
                        }
                    });
                }
            }))
        })
        .collect();
    (Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)), tasks)
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
    let dispatcher = Dispatcher::new(store.clone(), options.dispatch.clone(), options.telemetry.clone());
    let _dispatch_loop = AbortOnDrop(tokio::spawn(dispatcher.clone().run()));

    let service = TaskHubSidecarServiceServer::new(Service::new(store, dispatcher.clone(), options.max_wait))
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes);
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;
    health.set_service_status(LIVENESS, ServingStatus::Serving).await;

    let _tls_watch = options.tls.as_ref().map(|t| t.watch());
    let (incoming, _acceptors) = incoming(listeners, options.tls.clone());

    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let _health_servers: Vec<AbortOnDrop> = options
        .health_listeners
        .into_iter()
        .map(|listener| {
            let (service, mut stopping) = (health_service.clone(), stopping.clone());
            AbortOnDrop(tokio::spawn(async move {
                let result = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = result {
                    warn!(error = %e, "health listener failed");
                }
            }))
        })
        .collect();

    let closer = dispatcher.clone();
    let drain = options.drain;
    let graceful = async move {
        shutdown.await;
        // No new work first, then readiness: whoever sees NOT_SERVING may rely on both.
        closer.drain();
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
        let _ = stopping_tx.send(true);
    };
    let serve = tonic::transport::Server::builder()
        .layer(tower::util::MapRequestLayer::new(crate::grpc::stamp_arrival::<tonic::body::Body>))
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_resource_exhausted::<tonic::body::Body>,
        ))
        .layer(RpcLayer::new(options.telemetry.clone()))
        .layer(AuthLayer::new(options.keys.clone()))
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, graceful);
    tokio::select! {
        result = serve => result?,
        _ = async {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(GRACE).await;
        } => warn!("calls still open after the grace period (long waits); closing them"),
    }
    dispatcher.release_everything().await;
    Ok(())
}

/// tonic refuses a too-large request with OUT_OF_RANGE; gRPC's convention (and what clients
/// test for) is RESOURCE_EXHAUSTED. Such refusals are trailers-only responses, so the status
/// sits in the headers.
fn oversized_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers();
    let oversized = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| m.contains("length too large") || m.contains("length%20too%20large"));
    if oversized {
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

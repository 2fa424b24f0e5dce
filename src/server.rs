//! Serves the sidecar on already-bound listeners until `shutdown` resolves, then drains: worker
//! streams end cleanly, leases are released, and in-flight calls get a short grace period.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::codegen::http;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use crate::dapr::proto::task_hub_sidecar_service_server::TaskHubSidecarServiceServer as DaprServer;
use crate::dapr::{DaprService, guard};
use crate::dispatch::{self, AbortOnDrop, Dispatcher};
use crate::grpc::Service;
use crate::proto::task_hub_sidecar_service_server::TaskHubSidecarServiceServer;
use crate::store::Store;
use crate::telemetry::{RpcLayer, Telemetry};

/// How long in-flight calls may take to finish after shutdown begins.
const GRACE: Duration = Duration::from_secs(5);

/// Everything `run` needs besides the listeners.
#[derive(Debug, Clone)]
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
        }
    }
}

/// Serves gRPC only.
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

/// One stream of connections over all of a dialect's listeners.
fn incoming(
    listeners: Vec<TcpListener>,
) -> Option<std::pin::Pin<Box<dyn tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send>>> {
    let mut incoming = None::<std::pin::Pin<Box<dyn tokio_stream::Stream<Item = _> + Send>>>;
    for listener in listeners {
        let stream = TcpIncoming::from(listener).with_nodelay(Some(true));
        incoming = Some(match incoming {
            None => Box::pin(stream),
            Some(other) => Box::pin(other.merge(stream)),
        });
    }
    incoming
}

/// Serves both dialects over one dispatcher and store until `shutdown` resolves.
pub async fn serve(
    listeners: Listeners,
    store: Arc<dyn Store>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let dispatcher = Dispatcher::new(store.clone(), options.dispatch.clone(), options.telemetry.clone());
    let _dispatch_loop = AbortOnDrop(tokio::spawn(dispatcher.clone().run()));

    let handlers = Service::new(store, dispatcher.clone(), options.max_wait);
    let http_listeners = listeners.http;
    let (http_stop_tx, mut http_stop) = tokio::sync::watch::channel(false);
    let _http = (!http_listeners.is_empty()).then(|| {
        let router = crate::http::router(handlers.clone(), options.http.clone());
        let stopped = async move {
            let _ = http_stop.wait_for(|s| *s).await;
        };
        AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = crate::http::serve(http_listeners, router, stopped).await {
                warn!(error = %e, "HTTP listener failed");
            }
        }))
    });
    let service = TaskHubSidecarServiceServer::new(handlers.clone())
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes);
    let dapr_service = DaprServer::new(DaprService::new(handlers, options.dapr_app_id.clone()))
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TaskHubSidecarServiceServer<Service>>().await;

    let microsoft = incoming(listeners.microsoft);
    let dapr = incoming(listeners.dapr);
    assert!(microsoft.is_some() || dapr.is_some(), "at least one listener");

    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let closer = dispatcher.clone();
    let graceful = async move {
        shutdown.await;
        info!("shutting down: ending worker streams and releasing leases");
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
    let serve_microsoft = async {
        match microsoft {
            None => Ok(()),
            Some(incoming) => {
                tonic::transport::Server::builder()
                    .http2_keepalive_interval(options.keepalive)
                    .http2_keepalive_timeout(options.keepalive)
                    .layer(tower::util::MapRequestLayer::new(crate::grpc::stamp_arrival::<tonic::body::Body>))
                    .layer(tower::util::MapResponseLayer::new(refusal_codes::<tonic::body::Body>))
                    .layer(tower::util::MapResponseLayer::new(guard::undecodable_is_invalid_argument(
                        "Microsoft",
                    )))
                    .layer(guard::RefuseDaprClientsLayer)
                    .layer(RpcLayer::new(options.telemetry.clone()))
                    .add_service(health_service.clone())
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, stopped())
                    .await
            }
        }
    };
    let serve_dapr = async {
        match dapr {
            None => Ok(()),
            Some(incoming) => {
                tonic::transport::Server::builder()
                    .http2_keepalive_interval(options.keepalive)
                    .http2_keepalive_timeout(options.keepalive)
                    .layer(tower::util::MapRequestLayer::new(crate::grpc::stamp_arrival::<tonic::body::Body>))
                    .layer(tower::util::MapResponseLayer::new(refusal_codes::<tonic::body::Body>))
                    .layer(tower::util::MapResponseLayer::new(guard::undecodable_is_invalid_argument("Dapr")))
                    .layer(RpcLayer::new(options.telemetry.clone()))
                    .add_service(health_service.clone())
                    .add_service(dapr_service)
                    .serve_with_incoming_shutdown(incoming, stopped())
                    .await
            }
        }
    };
    let _graceful = AbortOnDrop(tokio::spawn(graceful));
    let serve = async { tokio::try_join!(serve_microsoft, serve_dapr).map(|_| ()) };
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

/// A too-large request is refused by tonic with OUT_OF_RANGE, where gRPC's convention (and what
/// clients test for) is RESOURCE_EXHAUSTED. Such refusals are trailers-only responses, so the
/// status sits in the headers. (Requests that cannot be decoded are mapped by
/// `dapr::guard::undecodable_is_invalid_argument`, the layer inside this one on both listeners.)
fn refusal_codes<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers();
    let status = headers.get("grpc-status").and_then(|s| s.to_str().ok()).unwrap_or("");
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("");
    if status == "11" && (message.contains("length too large") || message.contains("length%20too%20large")) {
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

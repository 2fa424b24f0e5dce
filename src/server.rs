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
    pub telemetry: Telemetry,
    pub http: crate::http::Settings,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dispatch: dispatch::Settings::default(),
            max_message_bytes: 32 << 20,
            telemetry: Telemetry::disabled(),
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
    run_with_http(listeners, vec![], store, options, shutdown).await
}

/// Serves gRPC on `listeners` and, when `http_listeners` is not empty, the HTTP API, metrics
/// and probes on those, over the same store and dispatcher.
pub async fn run_with_http(
    listeners: Vec<TcpListener>,
    http_listeners: Vec<TcpListener>,
    store: Arc<dyn Store>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let dispatcher = Dispatcher::new(store.clone(), options.dispatch.clone(), options.telemetry.clone());
    let _dispatch_loop = AbortOnDrop(tokio::spawn(dispatcher.clone().run()));

    let handlers = Service::new(store, dispatcher.clone());
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
    let service = TaskHubSidecarServiceServer::new(handlers)
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TaskHubSidecarServiceServer<Service>>().await;

    let mut incoming = None::<std::pin::Pin<Box<dyn tokio_stream::Stream<Item = _> + Send>>>;
    for listener in listeners {
        let stream = TcpIncoming::from(listener).with_nodelay(Some(true));
        incoming = Some(match incoming {
            None => Box::pin(stream),
            Some(other) => Box::pin(other.merge(stream)),
        });
    }
    let incoming = incoming.expect("at least one listener");

    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let closer = dispatcher.clone();
    let graceful = async move {
        shutdown.await;
        info!("shutting down: ending worker streams and releasing leases");
        closer.close_all();
        let _ = http_stop_tx.send(true);
        let _ = stopping_tx.send(true);
    };
    let serve = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_resource_exhausted::<tonic::body::Body>,
        ))
        .layer(RpcLayer::new(options.telemetry.clone()))
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

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
    /// HTTP/2 keepalive ping interval on every connection (and how long an answer may take):
    /// a frozen peer is disconnected, which releases a worker's items at once.
    pub keepalive: Option<Duration>,
    /// How long a WaitForInstance* call without a gRPC deadline may wait before it answers
    /// DEADLINE_EXCEEDED (calls with a deadline wait until it).
    pub max_wait: Duration,
    pub telemetry: Telemetry,
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

    let handlers = Service::new(store, dispatcher.clone(), options.max_wait);
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
        .http2_keepalive_interval(options.keepalive)
        .http2_keepalive_timeout(options.keepalive)
        .layer(tower::util::MapRequestLayer::new(crate::grpc::stamp_arrival::<tonic::body::Body>))
        .layer(tower::util::MapResponseLayer::new(refusal_codes::<tonic::body::Body>))
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

/// Statuses tonic answers for requests it cannot read, corrected to what they mean. A
/// too-large request is refused with OUT_OF_RANGE, where gRPC's convention (and what clients
/// test for) is RESOURCE_EXHAUSTED; one it cannot decode (nested deeper than protobuf allows,
/// malformed) with INTERNAL and a message that repeats the nesting path, however long, where
/// the fault is the caller's: INVALID_ARGUMENT with a short message. Such refusals are
/// trailers-only responses, so the status sits in the headers.
fn refusal_codes<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers();
    let status = headers.get("grpc-status").and_then(|s| s.to_str().ok()).unwrap_or("");
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("");
    let oversized = status == "11" && (message.contains("length too large") || message.contains("length%20too%20large"));
    let undecodable = status == "13" && (message.starts_with("failed to decode") || message.starts_with("failed%20to%20decode"));
    if oversized {
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("8"));
    } else if undecodable {
        let headers = response.headers_mut();
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "the%20request%20could%20not%20be%20decoded%3A%20malformed%20or%20nested%20deeper%20than%20protobuf%20allows",
            ),
        );
    }
    response
}

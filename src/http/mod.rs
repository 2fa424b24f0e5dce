//! The HTTP listener: the Durable Functions management API under
//! `/runtime/webhooks/durabletask` ([`api`]), its OpenAPI document ([`openapi`]), Prometheus
//! metrics at `/metrics` and liveness/readiness probes ([`probes`]).
//!
//! Handlers translate HTTP to the same request types the gRPC service takes and call the same
//! [`Service`] methods, so every rule (id checks, reuse policy, which instances may be purged)
//! lives in one place. [`router`] is the one place the routes are put together, behind the
//! API-key check ([`access`]); [`serve`] serves them in the clear or over TLS.

mod access;
mod api;
pub mod dashboard;
mod entities;
mod error;
mod links;
mod listen;
mod openapi;
pub(crate) mod payload;
mod probes;
mod secure;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

use crate::auth::Keys;
use crate::grpc::Service;

pub use api::BASE_PATH;
pub use openapi::DOCUMENT as OPENAPI_DOCUMENT;

/// What the HTTP listener needs besides the service.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Links in payloads start with this (no trailing slash) instead of what the request's
    /// forwarding headers or Host say.
    pub public_url: Option<String>,
    /// The dashboard at `/`, unless `None` (`--dashboard false`).
    pub dashboard: Option<dashboard::Settings>,
}

/// Shared by every handler.
#[derive(Clone, Debug)]
pub(crate) struct State {
    pub service: Service,
    pub public_url: Option<Arc<str>>,
    /// True once a shutdown drain began: `/readyz` answers 503 from then on.
    pub draining: watch::Receiver<bool>,
}

/// Every route the listener serves, each checked against `keys`; `draining` turns true when
/// the shutdown drain begins.
pub fn router(service: Service, settings: Settings, keys: Keys, draining: watch::Receiver<bool>) -> Router {
    let dashboard = settings.dashboard.map(|d| dashboard::routes(service.clone(), d));
    let state = State {
        service,
        public_url: settings.public_url.map(Arc::from),
        draining,
    };
    let router = Router::new()
        .merge(api::routes())
        .merge(entities::routes())
        .merge(probes::routes())
        .merge(openapi::routes())
        .fallback(error::no_route)
        .with_state(state);
    let router = match dashboard {
        Some(d) => router.merge(d),
        None => router,
    };
    router.layer(axum::middleware::from_fn_with_state(keys, access::check))
}

/// Serves `router` on every listener, over TLS when `tls` is set, until `shutdown` resolves;
/// open requests may finish. A connection that has not begun a request `handshake` after it
/// was accepted is closed.
pub async fn serve(
    listeners: Vec<TcpListener>,
    router: Router,
    tls: Option<crate::tls::Acceptor>,
    handshake: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        let mut stop = stop_rx.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let app = router.clone();
        match &tls {
            None => {
                let listener = listen::PlainListener::new(listener, handshake);
                servers.spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stopped).await })
            }
            Some(acceptor) => {
                let listener = secure::TlsListener::new(listener, acceptor.clone(), handshake)?;
                servers.spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stopped).await })
            }
        };
    }
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    while let Some(result) = servers.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => warn!(error = %e, "HTTP server task failed"),
        }
    }
    Ok(())
}

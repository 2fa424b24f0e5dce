//! What operators and orchestrators poll: `/healthz` (the process answers), `/readyz` (its
//! store answers too and no shutdown drain has begun) and `/metrics` (Prometheus text format).

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::State as App;
use crate::metrics::{Gauges, METRICS};

/// A store slower than this to answer a trivial read is reported not ready.
const READY_WITHIN: Duration = Duration::from_secs(2);

pub fn routes() -> Router<App> {
    Router::new()
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn live() -> Response {
    text(StatusCode::OK, "ok\n".into())
}

async fn ready(State(app): State<App>) -> Response {
    // A draining sidecar takes no new traffic, whatever its store says.
    if *app.draining.borrow() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down\n".into());
    }
    match tokio::time::timeout(READY_WITHIN, app.service.store().next_due(app.service.now())).await {
        Ok(Ok(_)) => text(StatusCode::OK, "ready\n".into()),
        Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("store unavailable: {e}\n")),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store did not answer within {READY_WITHIN:?}\n"),
        ),
    }
}

async fn metrics(State(app): State<App>) -> Response {
    let mut gauges = Gauges {
        connected_workers: app.service.dispatcher().connected_workers() as u64,
        awaited_instances: app.service.watchers().len() as u64,
        ..Default::default()
    };
    // A store that is down leaves the store gauges out rather than failing the scrape.
    if let Ok(Ok(b)) = tokio::time::timeout(READY_WITHIN, app.service.store().backlog(app.service.now())).await {
        gauges.backlog = Some([b.orchestrations, b.activities]);
        gauges.timers_waiting = Some(b.timers);
        gauges.expired_leases = Some(b.expired_leases);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        METRICS.render(&gauges),
    )
        .into_response()
}

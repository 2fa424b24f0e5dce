//! The service each dialect's server adds: reads the call's `taskhub` and hands the call to that
//! hub's generated service, so hubs cost the handlers nothing. It sits inside the server's
//! layers (keys, telemetry, refusal codes), which therefore apply to every hub alike.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tower::ServiceExt;

use super::{Hub, Hubs};
use crate::taskhub as name;

/// Routes calls to `pick(hub)` of the hub each call names.
pub struct Route<S> {
    hubs: Arc<Hubs>,
    pick: fn(&Hub) -> S,
}

impl<S> Route<S> {
    pub fn new(hubs: Arc<Hubs>, pick: fn(&Hub) -> S) -> Self {
        Route { hubs, pick }
    }
}

impl<S> Clone for Route<S> {
    fn clone(&self) -> Self {
        Route {
            hubs: self.hubs.clone(),
            pick: self.pick,
        }
    }
}

impl<S: NamedService> NamedService for Route<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Route<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is the chosen hub's service's, awaited per call below.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (hubs, pick) = (self.hubs.clone(), self.pick);
        Box::pin(async move {
            let hub = match name::from_headers(request.headers()) {
                Ok(name) => hubs.get(name.as_deref()).await,
                Err(refused) => Err(refused),
            };
            match hub {
                Ok(hub) => pick(&hub).oneshot(request).await,
                Err(refused) => Ok(crate::grpc::status::hub(refused).into_http()),
            }
        })
    }
}

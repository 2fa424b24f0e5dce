//! The tower layer that applies the API keys ([`Keys`]) to every gRPC call, both dialects',
//! before it reaches a handler; a refused call is answered here with its gRPC status.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;

use crate::auth::{Keys, needed_for_path};

/// The tower layer that authenticates every gRPC call before it reaches a handler.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    keys: Keys,
}

impl AuthLayer {
    pub fn new(keys: Keys) -> Self {
        AuthLayer { keys }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            keys: self.keys.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    keys: Keys,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let decision = match needed_for_path(request.uri().path()) {
            None => Ok(None),
            Some(needed) => self.keys.authorize(request.headers(), needed).map(Some),
        };
        match decision {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                Box::pin(self.inner.call(request))
            }
            Err(denied) => {
                tracing::debug!(path = request.uri().path(), reason = ?denied, "call refused");
                let response = super::status::denied(&denied).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

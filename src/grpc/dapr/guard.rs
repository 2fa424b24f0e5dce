//! Keeps each dialect on its own listener: a message the listener's decoder cannot read is
//! refused as INVALID_ARGUMENT naming the dialect (rather than INTERNAL), and the Rust SDK,
//! which announces itself, is refused on the Microsoft listener before any of its messages
//! could be misread there.

use std::task::{Context, Poll};

use std::future::Future;
use std::pin::Pin;
use tonic::codegen::http;

/// The `user-agent` prefix of `dapr-durabletask`, the Rust SDK, on clients and workers alike.
const DAPR_RUST_SDK: &str = "dapr-durabletask/";

/// A request that does not decode as this listener's dialect fails in tonic with INTERNAL
/// "failed to decode Protobuf message: ...". That is the caller's error, most likely a client
/// of the other dialect, so it becomes INVALID_ARGUMENT saying which dialect is expected.
pub fn undecodable_is_invalid_argument<B>(dialect: &'static str) -> impl Fn(http::Response<B>) -> http::Response<B> + Clone {
    move |mut response| {
        let headers = response.headers();
        let undecodable = headers.get("grpc-status").is_some_and(|s| s == "13")
            && headers
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .is_some_and(|m| m.contains("failed to decode Protobuf message") || m.contains("failed%20to%20decode"));
        if undecodable {
            // Never the decoder's own text: it repeats the nesting path of the input, however long.
            let message = format!(
                "the%20request%20could%20not%20be%20decoded%3A%20malformed%2C%20nested%20deeper%20than%20protobuf%20allows%2C%20or%20built%20for%20the%20other%20dialect%20(this%20listener%20speaks%20the%20{dialect}%20dialect%20of%20TaskHubSidecarService)"
            );
            let headers = response.headers_mut();
            headers.insert("grpc-status", http::HeaderValue::from_static("3"));
            if let Ok(v) = http::HeaderValue::from_str(&message.replace(' ', "%20")) {
                headers.insert("grpc-message", v);
            }
        }
        response
    }
}

/// Refuses calls from the Rust SDK (Dapr dialect) on the Microsoft listener (`refuse`); on the
/// Dapr listener it lets everything through.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefuseDaprClientsLayer {
    pub refuse: bool,
}

impl<S> tower::Layer<S> for RefuseDaprClientsLayer {
    type Service = RefuseDaprClients<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RefuseDaprClients {
            inner,
            refuse: self.refuse,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RefuseDaprClients<S> {
    inner: S,
    refuse: bool,
}

impl<S, B> tower::Service<http::Request<B>> for RefuseDaprClients<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let dapr = self.refuse
            && request
                .headers()
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ua| ua.starts_with(DAPR_RUST_SDK));
        if dapr {
            let status = tonic::Status::invalid_argument(
                "this is the Microsoft-dialect listener; dapr-durabletask speaks the Dapr dialect: point it at the --dapr-port listener",
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}

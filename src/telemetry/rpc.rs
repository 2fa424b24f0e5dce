//! A server span per client RPC (StartInstance, RaiseEvent, ...), following the OpenTelemetry
//! gRPC conventions. Worker RPCs are left out: a busy worker makes thousands of them, and the
//! work they carry is already traced as orchestration spans.
//!
//! The span is current while the handler runs, so a create span opened by StartInstance
//! without a parentTraceContext nests under it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use tonic::codegen::http;

use super::{Telemetry, context};

const SERVICE: &str = "TaskHubSidecarService";

/// Methods a worker calls, or that carry no information worth a span.
const UNTRACED: [&str; 8] = [
    "Hello",
    "GetWorkItems",
    "CompleteActivityTask",
    "CompleteOrchestratorTask",
    "CompleteEntityTask",
    "AbandonTaskActivityWorkItem",
    "AbandonTaskOrchestratorWorkItem",
    "AbandonTaskEntityWorkItem",
];

/// The tower layer that adds the RPC spans; passes calls through when tracing or RPC spans are off.
#[derive(Clone, Debug)]
pub struct RpcLayer {
    telemetry: Telemetry,
}

impl RpcLayer {
    pub fn new(telemetry: Telemetry) -> Self {
        RpcLayer { telemetry }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            telemetry: self.telemetry.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RpcService<S> {
    inner: S,
    telemetry: Telemetry,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let inner = self.telemetry.inner.as_ref().filter(|i| i.rpc_spans);
        let method = request
            .uri()
            .path()
            .strip_prefix(&format!("/{SERVICE}/"))
            .filter(|m| !UNTRACED.contains(m))
            .map(str::to_string);
        let (Some(inner), Some(method)) = (inner, method) else {
            return Box::pin(self.inner.call(request));
        };
        let headers: HashMap<String, String> = ["traceparent", "tracestate"]
            .into_iter()
            .filter_map(|h| Some((h.to_string(), request.headers().get(h)?.to_str().ok()?.to_string())))
            .collect();
        let parent = match context::from_headers(&headers) {
            Some(caller) => Context::new().with_remote_span_context(caller),
            None => Context::new(),
        };
        let span = inner
            .tracer
            .span_builder(format!("{SERVICE}/{method}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", SERVICE),
                KeyValue::new("rpc.method", method),
            ])
            .start_with_context(&inner.tracer, &parent);
        let cx = parent.with_span(span);
        let call = self.inner.call(request).with_context(cx.clone());
        Box::pin(async move {
            let result = call.await;
            let span = cx.span();
            if let Ok(response) = &result {
                // Failed unary calls answer trailers-only, so their status is in the headers;
                // a successful call's status comes later, in trailers, and is OK.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
                    .unwrap_or(0);
                span.set_attribute(KeyValue::new("rpc.grpc.status_code", code));
                if code != 0 {
                    let message = response
                        .headers()
                        .get("grpc-message")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    span.set_status(Status::error(message.to_string()));
                }
            }
            span.end();
            result
        })
    }
}

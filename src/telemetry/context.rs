//! W3C trace context <-> the protocol's `TraceContext` message.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::proto::TraceContext;

/// The span a `TraceContext` names, if its traceparent is valid.
pub(super) fn parse(tc: &TraceContext) -> Option<SpanContext> {
    let mut carrier = HashMap::from([("traceparent".to_string(), tc.trace_parent.clone())]);
    if let Some(state) = tc.trace_state.as_ref().filter(|s| !s.is_empty()) {
        carrier.insert("tracestate".into(), state.clone());
    }
    from_headers(&carrier)
}

/// The span named by `traceparent`/`tracestate` entries.
pub(super) fn from_headers(carrier: &HashMap<String, String>) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(carrier);
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

pub(super) fn to_proto(span: &SpanContext) -> TraceContext {
    let state = span.trace_state().header();
    #[allow(deprecated)] // the old separate span id field; some SDKs still read it
    TraceContext {
        trace_parent: format!("00-{}-{}-{:02x}", span.trace_id(), span.span_id(), span.trace_flags().to_u8()),
        span_id: span.span_id().to_string(),
        trace_state: (!state.is_empty()).then_some(state),
    }
}

/// Another span of the same trace, with the same sampling decision.
pub(super) fn sibling(span: &SpanContext, id: SpanId) -> SpanContext {
    SpanContext::new(span.trace_id(), id, span.trace_flags(), true, span.trace_state().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_traceparent() {
        let tc = TraceContext {
            trace_parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            trace_state: Some("vendor=x".into()),
            ..Default::default()
        };
        let span = parse(&tc).expect("valid");
        assert!(span.trace_flags().is_sampled());
        let back = to_proto(&span);
        assert_eq!(back.trace_parent, tc.trace_parent);
        assert_eq!(back.trace_state.as_deref(), Some("vendor=x"));
        assert!(
            parse(&TraceContext {
                trace_parent: "garbage".into(),
                ..Default::default()
            })
            .is_none()
        );
    }
}

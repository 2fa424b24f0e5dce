//! OpenTelemetry traces, exported over OTLP: one trace per orchestration execution.
//!
//! The shape of a trace (README "Tracing" has the full table):
//!
//! ```text
//! caller's span (StartInstance parentTraceContext, else the StartInstance RPC span)
//! └─ create_orchestration:<name>   exported as soon as the instance is stored
//!    ├─ orchestration:<name>       creation to the end of the execution
//!    ├─ activity:<name>            scheduled to result  (the SDK's activity span nests under it)
//!    ├─ orchestration:<name>:timer created to fired
//!    ├─ orchestration_event:<event> raised to delivered
//!    └─ create_orchestration:<child> ... the child's own spans
//! ```
//!
//! Every span is emitted after the fact, from what the store already holds, so whichever
//! sidecar processes a step can emit it, after any number of restarts: the create span's
//! context is the execution's `ExecutionStarted.parentTraceContext`, the orchestration span's
//! id its `orchestrationSpanID`, start and end times are history timestamps, and activity span
//! ids are derived from those (see [`ids`]). Work spans hang under the create span rather than
//! the orchestration span because the create span is exported at once, while the orchestration
//! span can only be exported when the execution ends: viewers never see a missing parent.
//!
//! With no endpoint configured, [`Telemetry::disabled`] makes every hook a no-op and trace
//! contexts pass through untouched.

mod context;
mod ids;
mod orchestration;
mod rpc;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};

pub use orchestration::{Creation, Step};
pub use rpc::RpcLayer;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Which traces are recorded (the OTEL_TRACES_SAMPLER values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerKind {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

/// Everything needed to export traces.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL of the collector (OTEL_EXPORTER_OTLP_ENDPOINT); over HTTP, `/v1/traces` is
    /// appended.
    pub endpoint: String,
    /// Full URL for traces (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); wins over `endpoint` as is.
    pub traces_endpoint: Option<String>,
    pub protocol: Protocol,
    pub service_name: String,
    pub sampler: SamplerKind,
    /// Extra resource attributes, `key=value,key=value` (OTEL_RESOURCE_ATTRIBUTES).
    pub resource_attributes: Option<String>,
    /// Whether client RPCs get a server span each.
    pub rpc_spans: bool,
    /// How long finished spans wait to be exported in one batch; by default
    /// OTEL_BSP_SCHEDULE_DELAY, else 5 s.
    pub batch_delay: Option<Duration>,
}

impl Settings {
    /// Settings for `endpoint` with every other value at its default.
    pub fn new(endpoint: impl Into<String>, protocol: Protocol) -> Self {
        Settings {
            endpoint: endpoint.into(),
            traces_endpoint: None,
            protocol,
            service_name: "outrigger".into(),
            sampler: SamplerKind::ParentBasedAlwaysOn,
            resource_attributes: None,
            rpc_spans: true,
            batch_delay: None,
        }
    }
}

/// The tracing handle every component holds; cheap to clone. Disabled, it does nothing.
#[derive(Clone, Default)]
pub struct Telemetry {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    rpc_spans: bool,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("enabled", &self.inner.is_some()).finish()
    }
}

impl Telemetry {
    /// No tracing: no spans, and trace contexts in requests pass through unchanged.
    pub fn disabled() -> Self {
        Telemetry { inner: None }
    }

    /// Starts exporting. Must be called inside a Tokio runtime (the gRPC exporter's channel
    /// lives on it). Spans are queued and exported in batches by a background thread, so
    /// recording one never waits on the network; when the queue is full, spans are dropped.
    pub fn start(settings: &Settings) -> Result<Self, String> {
        let exporter = match settings.protocol {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.traces_endpoint.clone().unwrap_or_else(|| settings.endpoint.clone()))
                .build(),
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(
                    settings
                        .traces_endpoint
                        .clone()
                        .unwrap_or_else(|| format!("{}/v1/traces", settings.endpoint.trim_end_matches('/'))),
                )
                .build(),
        }
        .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
        let mut batches = BatchConfigBuilder::default(); // reads the OTEL_BSP_* variables
        if let Some(delay) = settings.batch_delay {
            batches = batches.with_scheduled_delay(delay);
        }
        let batches = batches.build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batches).build())
            .with_sampler(sampler(settings.sampler))
            .with_id_generator(ids::Ids)
            .with_resource(resource(settings)?)
            .build();
        let tracer = provider.tracer("outrigger");
        Ok(Telemetry {
            inner: Some(Arc::new(Inner {
                provider,
                tracer,
                rpc_spans: settings.rpc_spans,
            })),
        })
    }

    /// Exports what is queued and stops. Blocks until the export finishes or times out, so
    /// call it off the async threads.
    pub fn shutdown(&self) {
        if let Some(inner) = &self.inner
            && let Err(e) = inner.provider.shutdown()
        {
            tracing::warn!(error = %e, "exporting the last spans failed");
        }
    }
}

fn sampler(kind: SamplerKind) -> Sampler {
    match kind {
        SamplerKind::AlwaysOn => Sampler::AlwaysOn,
        SamplerKind::AlwaysOff => Sampler::AlwaysOff,
        SamplerKind::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        SamplerKind::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerKind::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerKind::ParentBasedTraceIdRatio(r) => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r))),
    }
}

/// service.name (the setting wins over one in the attributes, as the specification says),
/// service.version, and the operator's attributes.
fn resource(settings: &Settings) -> Result<Resource, String> {
    let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    for (key, value) in parse_attributes(settings.resource_attributes.as_deref().unwrap_or(""))? {
        if key != "service.name" {
            attributes.push(KeyValue::new(key, value));
        }
    }
    Ok(Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .with_attributes(attributes)
        .build())
}

/// Parses `key=value,key=value`; values may be percent-encoded.
pub fn parse_attributes(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = vec![];
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("resource attribute '{item}' is not key=value"))?;
        pairs.push((key.trim().to_string(), percent_decode(value.trim())));
    }
    Ok(pairs)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_attributes_parse_and_decode() {
        assert_eq!(
            parse_attributes("deployment.environment=prod, team=a%2Cb").unwrap(),
            vec![("deployment.environment".into(), "prod".into()), ("team".into(), "a,b".into())]
        );
        assert_eq!(parse_attributes("").unwrap(), vec![]);
        assert!(parse_attributes("novalue").is_err());
    }
}

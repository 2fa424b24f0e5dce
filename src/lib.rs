//! Outrigger: a Durable Task sidecar.
//!
//! Layout:
//! - [`config`]: flags and environment, validated once at start.
//! - [`grpc`]: the `TaskHubSidecarService` handlers (input checks and wire <-> domain),
//!   [`grpc::dapr`], the Dapr dialect of the same service translated onto them, and
//!   [`grpc::status`], the one place every layer's errors become gRPC statuses.
//! - [`engine`]: the Durable Task rules as pure functions (no I/O).
//! - [`model`]: the domain records the engine produces and the store persists.
//! - [`limits`]: size limits on every field clients and workers send.
//! - [`dispatch`]: worker streams, leases and the push loop that hands out work items.
//! - [`watchers`]: client waits on instance state and the live change feed.
//! - [`store`]: durable state behind one trait, on SQLite or Postgres; it persists what the engine decides.
//!   The trait, each transaction and the SQL both engines run alike are written once; each
//!   engine's folder keeps only what its database says or does differently.
//! - [`telemetry`]: OpenTelemetry traces of orchestrations and client RPCs.
//! - [`http`]: the Durable Functions HTTP management API, probes, `/metrics` and the dashboard.
//! - [`metrics`]: Prometheus counters and histograms, cheap enough for the hot path.
//! - [`cli`]: `outrigger instances ...`, a gRPC client of a running sidecar.
//! - [`hubs`]: task hubs chosen by the `taskhub` metadata ([`taskhub`]), each with its own
//!   store and dispatcher.
//! - [`server`]: wires the pieces together and serves until shutdown.
//! - [`auth`], [`tls`]: API keys and roles, TLS with reload; shared by every listener.
//! - [`time`], [`rfc3339`]: the `Clock` every time of day is read from (the system clock, or a
//!   manual one for tests), microsecond times and wire timestamps; ISO 8601 text.
//! - [`accept`]: accepting connections (back-off when descriptors run out, a handshake deadline).
//! - [`proto`]: the Microsoft dialect's wire messages, generated from `proto/`.
//! - [`task`], [`redact`]: a background task that ends with its owner; URLs safe to log.

pub mod accept;
pub mod auth;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod engine;
pub mod grpc;
pub mod http;
pub mod hubs;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod redact;
pub mod rfc3339;
pub mod server;
pub mod store;
pub mod task;
pub mod taskhub;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod watchers;

/// Types generated from `proto/orchestrator_service.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    tonic::include_proto!("_");
}

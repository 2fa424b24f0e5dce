//! Outrigger: a Durable Task sidecar.
//!
//! Layout:
//! - [`config`]: flags and environment, validated once at start.
//! - [`grpc`]: the `TaskHubSidecarService` handlers: input checks and wire <-> domain, nothing more.
//! - [`dapr`]: the Dapr dialect of the same service, translated onto the [`grpc`] handlers.
//! - [`engine`]: the Durable Task rules as pure functions (no I/O).
//! - [`limits`]: size limits on every field clients and workers send.
//! - [`dispatch`]: worker streams, leases and the push loop that hands out work items.
//! - [`store`]: durable state behind one trait, on SQLite or Postgres; it persists what the engine decides.
//! - [`telemetry`]: OpenTelemetry traces of orchestrations and client RPCs.
//! - [`http`]: the Durable Functions HTTP management API, probes and `/metrics`.
//! - [`metrics`]: Prometheus counters and histograms, cheap enough for the hot path.
//! - [`cli`]: `outrigger instances ...`, a gRPC client of a running sidecar.
//! - [`hubs`]: task hubs chosen by the `taskhub` metadata, each with its own store and dispatcher.
//! - [`server`]: wires the pieces together and serves until shutdown.
//! - [`auth`], [`tls`]: API keys and roles, TLS with reload; shared by every listener.

pub mod accept;
pub mod auth;
pub mod cli;
pub mod config;
pub mod dapr;
pub mod dispatch;
pub mod engine;
pub mod grpc;
pub mod http;
pub mod hubs;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod rfc3339;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod tls;

/// Types generated from `proto/orchestrator_service.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    tonic::include_proto!("_");
}

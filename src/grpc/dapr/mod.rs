//! The Dapr dialect of `TaskHubSidecarService` (the Rust SDK `dapr-durabletask`, the Dapr Go
//! SDK, and Dapr's Python SDK), served on its own listener over the same engine, store and
//! dispatcher as the Microsoft dialect.

/// Types generated from `proto/dapr/orchestrator_service.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    include!(concat!(env!("OUT_DIR"), "/dapr/_.rs"));
}

pub mod convert;
pub mod guard;
mod service;

pub use service::DaprService;

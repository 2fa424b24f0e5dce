//! The Dapr dialect of `TaskHubSidecarService` (the Rust SDK `dapr-durabletask`, the Dapr Go
//! SDK, and Dapr's Python SDK), served on its own listener over the same engine, store and
//! dispatcher as the Microsoft dialect.

pub use crate::dapr_proto as proto;

pub mod convert;
pub mod guard;
mod service;

pub use service::DaprService;

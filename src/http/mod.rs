//! The HTTP listener (placeholder until the HTTP API lands): the dashboard.

mod error;
pub mod dashboard;

//! Worker-facing RPCs: the work-item stream. Completions and abandons go straight to the
//! dispatcher, which owns the outstanding items.

use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;

use super::Service;
use crate::dispatch::{Outbox, WorkerGuard};
use crate::proto::*;

/// A worker's stream of work items; dropping it (the worker went away) releases its items.
#[derive(Debug)]
pub struct WorkStream {
    outbox: Outbox,
    _guard: WorkerGuard,
}

impl tokio_stream::Stream for WorkStream {
    type Item = Result<WorkItem, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.outbox.poll_recv(cx).map(|item| item.map(Ok))
    }
}

pub(super) fn required_token(token: String) -> Result<String, Status> {
    if token.is_empty() {
        return Err(Status::invalid_argument("completionToken is required"));
    }
    Ok(token)
}

impl Service {
    pub(super) fn work_items(&self, r: GetWorkItemsRequest) -> Result<WorkStream, Status> {
        for (name, n) in [
            ("maxConcurrentOrchestrationWorkItems", r.max_concurrent_orchestration_work_items),
            ("maxConcurrentActivityWorkItems", r.max_concurrent_activity_work_items),
            ("maxConcurrentEntityWorkItems", r.max_concurrent_entity_work_items),
        ] {
            if n < 0 {
                return Err(Status::invalid_argument(format!("{name} must not be negative, got {n}")));
            }
        }
        let (outbox, guard) = self.dispatcher.connect(&r);
        Ok(WorkStream { outbox, _guard: guard })
    }
}

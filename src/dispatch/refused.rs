//! Why the dispatcher refused a worker's answer. The gRPC layer gives each a status code
//! (`grpc::status::refused`); the messages are written for the worker's log.

use crate::engine::InvalidAction;
use crate::limits;
use crate::store::StoreError;

use super::completion::MAX_CHUNKED_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "completion token '{0}' does not name a work item this sidecar has outstanding (already completed, abandoned, or its worker disconnected)"
    )]
    Stale(String),
    #[error("instanceId is required when completionToken is empty")]
    NoInstanceId,
    #[error("no orchestration work item for instance '{0}' is outstanding")]
    NoOrchestration(String),
    #[error("no activity work item for instance '{instance_id}' task {task_id} is outstanding")]
    NoActivity { instance_id: String, task_id: i32 },
    #[error("completionToken is required when more than one entity work item is outstanding (EntityBatchResult has no instance id)")]
    AmbiguousEntity,
    #[error("instanceId '{given}' does not match the work item's instance '{held}'")]
    OtherInstance { given: String, held: String },
    #[error("instanceId/taskId '{given_instance}'/{given_task} do not match the work item's '{held_instance}'/{held_task}")]
    OtherTask {
        given_instance: String,
        given_task: i32,
        held_instance: String,
        held_task: i32,
    },
    #[error("expected chunk {expected}, got chunk {got}")]
    ChunkOutOfOrder { expected: i32, got: i32 },
    #[error(
        "a chunked answer may hold at most {} actions and {MAX_CHUNKED_BYTES} bytes; this chunk makes it larger, so the answer is discarded (abandon the work item)",
        limits::MAX_ACTIONS
    )]
    ChunksTooLarge,
    #[error(transparent)]
    Invalid(#[from] InvalidAction),
    /// The step can never be stored; the orchestration was failed instead.
    #[error("the orchestration step could not be stored, so the orchestration was failed: {0}")]
    NotStorable(StoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

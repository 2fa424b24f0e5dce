//! Constructors for the history events the sidecar itself creates.

use crate::proto::history_event::EventType;
use crate::proto::*;
use crate::time::{Micros, to_timestamp};

/// Event id of events that do not come from an orchestrator action.
pub const EXTERNAL: i32 = -1;

pub fn event(event_id: i32, at: Micros, kind: EventType) -> HistoryEvent {
    HistoryEvent {
        event_id,
        timestamp: Some(to_timestamp(at)),
        event_type: Some(kind),
    }
}

pub fn orchestrator_started(at: Micros) -> HistoryEvent {
    event(EXTERNAL, at, EventType::OrchestratorStarted(OrchestratorStartedEvent {}))
}

pub fn orchestrator_completed(at: Micros) -> HistoryEvent {
    event(EXTERNAL, at, EventType::OrchestratorCompleted(OrchestratorCompletedEvent {}))
}

pub fn event_raised(at: Micros, name: String, input: Option<String>) -> HistoryEvent {
    event(EXTERNAL, at, EventType::EventRaised(EventRaisedEvent { name, input }))
}

pub fn terminated(at: Micros, reason: Option<String>, recurse: bool) -> HistoryEvent {
    event(
        EXTERNAL,
        at,
        EventType::ExecutionTerminated(ExecutionTerminatedEvent { input: reason, recurse }),
    )
}

pub fn suspended(at: Micros, reason: Option<String>) -> HistoryEvent {
    event(
        EXTERNAL,
        at,
        EventType::ExecutionSuspended(ExecutionSuspendedEvent { input: reason }),
    )
}

pub fn resumed(at: Micros, reason: Option<String>) -> HistoryEvent {
    event(EXTERNAL, at, EventType::ExecutionResumed(ExecutionResumedEvent { input: reason }))
}

pub fn task_result(at: Micros, task_id: i32, result: Option<String>, failure: Option<TaskFailureDetails>) -> HistoryEvent {
    let kind = match failure {
        Some(failure_details) => EventType::TaskFailed(TaskFailedEvent {
            task_scheduled_id: task_id,
            failure_details: Some(failure_details),
        }),
        None => EventType::TaskCompleted(TaskCompletedEvent {
            task_scheduled_id: task_id,
            result,
        }),
    };
    event(EXTERNAL, at, kind)
}

pub fn rewound(at: Micros, reason: Option<String>, parent_execution_id: Option<String>) -> HistoryEvent {
    event(
        EXTERNAL,
        at,
        EventType::ExecutionRewound(ExecutionRewoundEvent {
            reason,
            parent_execution_id,
            ..Default::default()
        }),
    )
}

/// Failure details the sidecar writes on behalf of an orchestration or a child that could
/// not report its own (terminated children, id conflicts, malformed responses).
pub fn failure(error_type: &str, message: impl Into<String>) -> TaskFailureDetails {
    TaskFailureDetails {
        error_type: error_type.to_string(),
        error_message: message.into(),
        is_non_retriable: true,
        ..Default::default()
    }
}

/// The ExecutionStarted event of an instance, if the events hold one.
pub fn execution_started(events: &[HistoryEvent]) -> Option<&ExecutionStartedEvent> {
    events.iter().find_map(|e| match &e.event_type {
        Some(EventType::ExecutionStarted(s)) => Some(s),
        _ => None,
    })
}

/// A short name for an event's kind, for logs (`none` when the event carries no kind).
pub fn kind_name(event: &HistoryEvent) -> &'static str {
    event.event_type.as_ref().map_or("none", type_name)
}

/// The event type's name as the protocol spells it (`TaskScheduled`, `TimerFired`, ...).
pub fn type_name(kind: &EventType) -> &'static str {
    match kind {
        EventType::ExecutionStarted(_) => "ExecutionStarted",
        EventType::ExecutionCompleted(_) => "ExecutionCompleted",
        EventType::ExecutionTerminated(_) => "ExecutionTerminated",
        EventType::TaskScheduled(_) => "TaskScheduled",
        EventType::TaskCompleted(_) => "TaskCompleted",
        EventType::TaskFailed(_) => "TaskFailed",
        EventType::SubOrchestrationInstanceCreated(_) => "SubOrchestrationInstanceCreated",
        EventType::SubOrchestrationInstanceCompleted(_) => "SubOrchestrationInstanceCompleted",
        EventType::SubOrchestrationInstanceFailed(_) => "SubOrchestrationInstanceFailed",
        EventType::TimerCreated(_) => "TimerCreated",
        EventType::TimerFired(_) => "TimerFired",
        EventType::OrchestratorStarted(_) => "OrchestratorStarted",
        EventType::OrchestratorCompleted(_) => "OrchestratorCompleted",
        EventType::EventSent(_) => "EventSent",
        EventType::EventRaised(_) => "EventRaised",
        EventType::GenericEvent(_) => "GenericEvent",
        EventType::HistoryState(_) => "HistoryState",
        EventType::ContinueAsNew(_) => "ContinueAsNew",
        EventType::ExecutionSuspended(_) => "ExecutionSuspended",
        EventType::ExecutionResumed(_) => "ExecutionResumed",
        EventType::EntityOperationSignaled(_) => "EntityOperationSignaled",
        EventType::EntityOperationCalled(_) => "EntityOperationCalled",
        EventType::EntityOperationCompleted(_) => "EntityOperationCompleted",
        EventType::EntityOperationFailed(_) => "EntityOperationFailed",
        EventType::EntityLockRequested(_) => "EntityLockRequested",
        EventType::EntityLockGranted(_) => "EntityLockGranted",
        EventType::EntityUnlockSent(_) => "EntityUnlockSent",
        EventType::ExecutionRewound(_) => "ExecutionRewound",
    }
}

//! Dapr wire <-> Microsoft wire, the one place that knows where the two dialects part ways.
//!
//! Most messages are identical tag for tag, so they are re-encoded with the other dialect's
//! types ([`recode`]). Before that, every field whose tag means something else on the other
//! side (the "conflict" fields of `proto/dapr/orchestrator_service.proto`) is taken out and
//! mapped by hand, so nothing is ever read under the wrong meaning.
//!
//! Dapr-only facts the engine has no field for ride in Microsoft fields it already carries:
//! an activity's `taskExecutionId` travels as the [`TASK_EXECUTION_ID`] tag of the schedule
//! action, which the engine copies onto the `TaskScheduled` event and the activity work item;
//! the `rerunParentInstanceInfo` of a rerun event is the engine's [`RERUN_PARENT`] tag.

use std::collections::HashMap;

use prost::Message;
use tonic::Status;

use super::proto as dp;
use crate::engine::rerun::RERUN_PARENT;
use crate::proto as ms;

/// Tag key under which a Dapr activity's `taskExecutionId` is kept.
pub const TASK_EXECUTION_ID: &str = "dapr.taskExecutionId";

/// Re-encodes a message whose remaining fields are wire-identical in both dialects.
pub fn recode<A: Message, B: Message + Default>(a: &A) -> Result<B, Status> {
    B::decode(a.encode_to_vec().as_slice()).map_err(|e| Status::internal(format!("dialect translation failed: {e}")))
}

fn recode_opt<A: Message, B: Message + Default>(a: &Option<A>) -> Result<Option<B>, Status> {
    a.as_ref().map(recode).transpose()
}

/// Requests and actions may carry a router naming the app that owns the instance or runs the
/// task. This sidecar serves one app: with `app_id` set, a router that targets any other app is
/// refused; without it, every target is taken to be this app.
pub fn check_router(router: Option<dp::TaskRouter>, app_id: Option<&str>) -> Result<(), Status> {
    plain_router("router", &router)?;
    let target = router.and_then(|r| r.target_app_id).filter(|t| !t.is_empty());
    match (target, app_id) {
        (Some(target), Some(ours)) if target != ours => Err(Status::failed_precondition(format!(
            "cross-app routing to app '{target}' is not supported: this sidecar serves app '{ours}' only"
        ))),
        _ => Ok(()),
    }
}

/// Ids and names never hold control characters; one that does is a message of the other
/// dialect read under this one's field meanings (an embedded message read as a string).
fn plain(field: &str, s: &str) -> Result<(), Status> {
    if s.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{field} holds control characters: not a Dapr-dialect value (a Microsoft-dialect message on the Dapr listener?)"
        )));
    }
    Ok(())
}

fn plain_router(field: &str, router: &Option<dp::TaskRouter>) -> Result<(), Status> {
    if let Some(r) = router {
        plain(&format!("{field}.sourceAppID"), &r.source_app_id)?;
        plain(&format!("{field}.targetAppID"), r.target_app_id.as_deref().unwrap_or_default())?;
        plain(
            &format!("{field}.targetAppNamespace"),
            r.target_app_namespace.as_deref().unwrap_or_default(),
        )?;
    }
    Ok(())
}

// ---- client requests (Dapr -> Microsoft) ----

/// A start request, and whether the caller demands a never-used instance id.
pub fn create(mut r: dp::CreateInstanceRequest, app_id: Option<&str>) -> Result<(ms::CreateInstanceRequest, bool), Status> {
    check_router(r.router.take(), app_id)?;
    let enforce_unique = std::mem::take(&mut r.enforce_unique_instance_id);
    let mut out: ms::CreateInstanceRequest = recode(&r)?;
    out.orchestration_id_reuse_policy = Some(ms::OrchestrationIdReusePolicy {
        // Unique: nothing may be replaced. Otherwise a finished instance is started afresh
        // (Dapr's rule), a live one is refused.
        replaceable_status: if enforce_unique {
            vec![]
        } else {
            [
                ms::OrchestrationStatus::Completed,
                ms::OrchestrationStatus::Failed,
                ms::OrchestrationStatus::Terminated,
                ms::OrchestrationStatus::Canceled,
            ]
            .map(|s| s as i32)
            .to_vec()
        },
        action: ms::CreateOrchestrationAction::Error as i32,
    });
    Ok((out, enforce_unique))
}

/// A purge request, and whether `force` was asked for.
pub fn purge(mut r: dp::PurgeInstancesRequest, app_id: Option<&str>) -> Result<(ms::PurgeInstancesRequest, bool), Status> {
    check_router(r.router.take(), app_id)?;
    let force = r.force.take().unwrap_or(false);
    Ok((recode(&r)?, force))
}

// ---- server answers and work items (Microsoft -> Dapr) ----

pub fn state(s: &ms::OrchestrationState) -> Result<dp::WorkflowState, Status> {
    let mut out: dp::WorkflowState = recode(s)?;
    // Dapr's own status; the Microsoft one has no STALLED and the store never records it.
    out.workflow_status = s.orchestration_status;
    Ok(out)
}

pub fn instance(r: ms::GetInstanceResponse) -> Result<dp::GetInstanceResponse, Status> {
    Ok(dp::GetInstanceResponse {
        exists: r.exists,
        workflow_state: r.orchestration_state.as_ref().map(state).transpose()?,
    })
}

/// History for a Dapr worker or client. `TaskCompleted`/`TaskFailed` carry the execution id of
/// the activity they answer, looked up from its `TaskScheduled` event in the same history.
pub fn history(events: &[ms::HistoryEvent]) -> Result<Vec<dp::HistoryEvent>, Status> {
    history_after(&[], events)
}

/// Converts a run of events that continues `earlier` (so answers find their schedules).
///
/// The end-of-turn marker (`OrchestratorCompleted`) is left out: Dapr runtimes never record
/// it, and the older Dapr Python worker fails on it. Work items and `GetInstanceHistory` leave
/// it out alike, so stateful-history event counts agree.
pub fn history_after(earlier: &[ms::HistoryEvent], events: &[ms::HistoryEvent]) -> Result<Vec<dp::HistoryEvent>, Status> {
    let mut execution_ids = HashMap::new();
    for e in earlier {
        event_to_dapr(e, &mut execution_ids)?;
    }
    events
        .iter()
        .filter(|e| !matches!(e.event_type, Some(ms::history_event::EventType::OrchestratorCompleted(_))))
        .map(|e| event_to_dapr(e, &mut execution_ids))
        .collect()
}

fn event_to_dapr(e: &ms::HistoryEvent, execution_ids: &mut HashMap<i32, String>) -> Result<dp::HistoryEvent, Status> {
    use ms::history_event::EventType as Ms;
    let mut e = e.clone();
    let mut execution_id = None;
    let mut rerun_parent = None;
    match &mut e.event_type {
        Some(Ms::TaskScheduled(t)) => {
            // Conflict C5: tag 5 is tags here, taskExecutionId there.
            let mut tags = std::mem::take(&mut t.tags);
            execution_id = tags.remove(TASK_EXECUTION_ID);
            rerun_parent = tags.remove(RERUN_PARENT);
            if let Some(x) = &execution_id {
                execution_ids.insert(e.event_id, x.clone());
            }
        }
        // Conflict C6: tag 6 is tags here, rerunParentInstanceInfo there.
        Some(Ms::SubOrchestrationInstanceCreated(c)) => rerun_parent = std::mem::take(&mut c.tags).remove(RERUN_PARENT),
        // Kinds Dapr has no counterpart for (entities, rewinds, generic state events; tag 30 is
        // a router there): sent as an event of no kind, which the Dapr SDKs skip.
        Some(
            Ms::GenericEvent(_)
            | Ms::HistoryState(_)
            | Ms::ExecutionRewound(_)
            | Ms::EntityOperationSignaled(_)
            | Ms::EntityOperationCalled(_)
            | Ms::EntityOperationCompleted(_)
            | Ms::EntityOperationFailed(_)
            | Ms::EntityLockRequested(_)
            | Ms::EntityLockGranted(_)
            | Ms::EntityUnlockSent(_),
        ) => e.event_type = None,
        _ => {}
    }
    let mut out: dp::HistoryEvent = recode(&e)?;
    use dp::history_event::EventType as Dp;
    let rerun_parent = rerun_parent.map(|instance_id| dp::RerunParentInstanceInfo { instance_id });
    match &mut out.event_type {
        Some(Dp::TaskScheduled(t)) => {
            t.task_execution_id = execution_id.unwrap_or_default();
            t.rerun_parent_instance_info = rerun_parent;
        }
        Some(Dp::ChildWorkflowInstanceCreated(c)) => c.rerun_parent_instance_info = rerun_parent,
        Some(Dp::TaskCompleted(t)) => t.task_execution_id = execution_ids.get(&t.task_scheduled_id).cloned().unwrap_or_default(),
        Some(Dp::TaskFailed(t)) => t.task_execution_id = execution_ids.get(&t.task_scheduled_id).cloned().unwrap_or_default(),
        _ => {}
    }
    Ok(out)
}

/// An orchestration turn for a Dapr worker (the stateful-history delta is applied by the caller).
pub fn workflow_request(r: &ms::OrchestratorRequest) -> Result<dp::WorkflowRequest, Status> {
    Ok(dp::WorkflowRequest {
        instance_id: r.instance_id.clone(),
        execution_id: r.execution_id.clone(),
        past_events: history(&r.past_events)?,
        new_events: history_after(&r.past_events, &r.new_events)?,
        // Dapr workers fetch history with GetInstanceHistory, never by streaming.
        requires_history_streaming: false,
        // Conflicts C2/C3: properties and the trace context are not Dapr's router and history.
        router: None,
        propagated_history: None,
        cached_history: None,
    })
}

pub fn activity_request(r: &ms::ActivityRequest) -> Result<dp::ActivityRequest, Status> {
    Ok(dp::ActivityRequest {
        name: r.name.clone(),
        version: r.version.clone(),
        input: r.input.clone(),
        workflow_instance: recode_opt(&r.orchestration_instance)?,
        task_id: r.task_id,
        parent_trace_context: recode_opt(&r.parent_trace_context)?,
        // Conflict C1: tag 7 is tags here, taskExecutionId there.
        task_execution_id: r.tags.get(TASK_EXECUTION_ID).cloned().unwrap_or_default(),
        propagated_history: None,
    })
}

// ---- worker answers (Dapr -> Microsoft) ----

pub fn workflow_response(r: dp::WorkflowResponse, app_id: Option<&str>) -> Result<ms::OrchestratorResponse, Status> {
    // Conflict C10: a Microsoft trace context here reads as a version with garbage patches.
    // The version is not recorded (no versioning support), but garbage is refused.
    if let Some(v) = &r.version {
        for p in &v.patches {
            plain("version.patches", p)?;
        }
        plain("version.name", v.name.as_deref().unwrap_or_default())?;
    }
    Ok(ms::OrchestratorResponse {
        instance_id: r.instance_id,
        actions: r.actions.into_iter().map(|a| action(a, app_id)).collect::<Result<_, _>>()?,
        custom_status: r.custom_status,
        completion_token: r.completion_token,
        num_events_processed: r.num_events_processed,
        // Conflict C10: Dapr's tag 6 is the workflow version, not a trace context.
        ..Default::default()
    })
}

fn action(a: dp::WorkflowAction, app_id: Option<&str>) -> Result<ms::OrchestratorAction, Status> {
    use dp::workflow_action::WorkflowActionType as Dp;
    use ms::orchestrator_action::OrchestratorActionType as Ms;
    // Conflict C9: the action's router (tag 9) is not the rewind action; a Microsoft rewind
    // action read here is a router of garbage and no action type, and is refused.
    check_router(a.router, app_id).map_err(|e| Status::invalid_argument(e.message().to_string()))?;
    let kind = match a.workflow_action_type {
        None => None,
        Some(Dp::ScheduleTask(t)) => Some(Ms::ScheduleTask(ms::ScheduleTaskAction {
            // Conflict C7: a Microsoft parentTraceContext reads as a taskExecutionId of garbage.
            tags: {
                plain("scheduleTask.taskExecutionId", &t.task_execution_id)?;
                (!t.task_execution_id.is_empty())
                    .then(|| (TASK_EXECUTION_ID.to_string(), t.task_execution_id))
                    .into_iter()
                    .collect()
            },
            name: t.name,
            version: t.version,
            input: t.input,
            parent_trace_context: None,
        })),
        Some(Dp::CreateChildWorkflow(c)) => Some(Ms::CreateSubOrchestration(ms::CreateSubOrchestrationAction {
            instance_id: c.instance_id,
            name: c.name,
            version: c.version,
            input: c.input,
            parent_trace_context: None,
            tags: Default::default(),
        })),
        Some(Dp::CreateTimer(t)) => Some(Ms::CreateTimer(ms::CreateTimerAction { fire_at: t.fire_at })),
        Some(Dp::SendEvent(s)) => Some(Ms::SendEvent(ms::SendEventAction {
            instance: recode_opt(&s.instance)?,
            name: s.name,
            data: s.data,
        })),
        Some(Dp::CompleteWorkflow(c)) => Some(Ms::CompleteOrchestration(ms::CompleteOrchestrationAction {
            orchestration_status: c.workflow_status,
            result: c.result,
            details: c.details,
            new_version: c.new_version,
            carryover_events: c.carryover_events.iter().map(event_from_dapr).collect::<Result<_, _>>()?,
            failure_details: recode_opt(&c.failure_details)?,
            tags: Default::default(),
        })),
        Some(Dp::TerminateWorkflow(t)) => Some(Ms::TerminateOrchestration(ms::TerminateOrchestrationAction {
            instance_id: t.instance_id,
            reason: t.reason,
            recurse: t.recurse,
        })),
        Some(Dp::WorkflowVersionNotAvailable(_)) => {
            return Err(Status::unimplemented(
                "WorkflowVersionNotAvailableAction (stalled workflows) is not supported by this sidecar",
            ));
        }
        Some(Dp::CreateDetachedWorkflow(_)) => {
            return Err(Status::unimplemented(
                "CreateDetachedWorkflowAction (detached workflows) is not supported by this sidecar",
            ));
        }
    };
    Ok(ms::OrchestratorAction {
        id: a.id,
        orchestrator_action_type: kind,
    })
}

/// A history event from a Dapr worker (carry-over events of continue-as-new).
pub fn event_from_dapr(e: &dp::HistoryEvent) -> Result<ms::HistoryEvent, Status> {
    use dp::history_event::EventType as Dp;
    let mut e = e.clone();
    // Conflict C4: the router (tag 30) would read as an executionRewound event.
    e.router = None;
    match &mut e.event_type {
        // Conflict C5.
        Some(Dp::TaskScheduled(t)) => t.task_execution_id.clear(),
        // Conflict C6.
        Some(Dp::ChildWorkflowInstanceCreated(c)) => c.rerun_parent_instance_info = None,
        Some(Dp::ExecutionStalled(_) | Dp::DetachedWorkflowInstanceCreated(_)) => {
            return Err(Status::invalid_argument(
                "stalled and detached-workflow events cannot be carried over",
            ));
        }
        _ => {}
    }
    recode(&e)
}

//! Engine unit tests. Each test states one Durable Task rule (protocol.md sections 4 to 6) and
//! checks the exact events, messages and instance fields the engine produces for it.

use std::collections::{BTreeMap, HashMap};

use prost_types::Timestamp;

use super::events::{self, EXTERNAL, event};
use super::{Ledger, NewInstance, Prepared, Response, StartSpec, apply, new_instance, prepare, restart_spec, validate};
use crate::model::*;
use crate::proto::history_event::EventType;
use crate::proto::orchestrator_action::OrchestratorActionType as Action;
use crate::proto::send_entity_message_action::EntityMessageType;
use crate::proto::*;
use crate::time::{Micros, to_timestamp};

use OrchestrationStatus as S;

// ---------------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------------

/// The deterministic "now" handed to the engine.
const NOW: Micros = 1_700_000_000_000_123;
/// When earlier steps ran.
const EARLIER: Micros = NOW - 60_000_000;
const ID: &str = "order-42";
const EXEC: &str = "exec-1";
const NAME: &str = "ProcessOrder";
const PARENT: &str = "parent-1";
const PARENT_EXEC: &str = "parent-exec-1";
/// The task id the parent used for this instance when it is a sub-orchestration.
const PARENT_TASK: i32 = 7;

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn tags(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn btags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn trace(parent: &str) -> TraceContext {
    TraceContext {
        trace_parent: parent.to_string(),
        trace_state: s("vendor=1"),
        ..Default::default()
    }
}

fn this_execution() -> OrchestrationInstance {
    OrchestrationInstance {
        instance_id: ID.into(),
        execution_id: s(EXEC),
    }
}

/// The instance `order-42`, execution `exec-1`, in the given status.
fn instance(status: OrchestrationStatus) -> Instance {
    Instance {
        instance_id: ID.into(),
        name: NAME.into(),
        version: s("1.0"),
        execution_id: EXEC.into(),
        status,
        input: s("\"order\""),
        output: None,
        custom_status: None,
        failure_details: None,
        created_at: EARLIER,
        updated_at: EARLIER,
        completed_at: None,
        scheduled_start_at: None,
        parent_instance_id: None,
        tags: btags(&[("team", "billing")]),
        trace_context: None,
    }
}

fn running() -> Instance {
    instance(S::Running)
}

fn parent_info() -> ParentInstanceInfo {
    ParentInstanceInfo {
        task_scheduled_id: PARENT_TASK,
        name: s("Parent"),
        version: None,
        orchestration_instance: Some(OrchestrationInstance {
            instance_id: PARENT.into(),
            execution_id: s(PARENT_EXEC),
        }),
    }
}

fn started_event(parent: Option<ParentInstanceInfo>) -> ExecutionStartedEvent {
    ExecutionStartedEvent {
        name: NAME.into(),
        version: s("1.0"),
        input: s("\"order\""),
        orchestration_instance: Some(this_execution()),
        parent_instance: parent,
        scheduled_start_timestamp: None,
        parent_trace_context: Some(trace("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")),
        orchestration_span_id: None,
        tags: tags(&[("team", "billing")]),
    }
}

/// ExecutionStarted of a top-level instance.
fn started() -> HistoryEvent {
    event(EXTERNAL, EARLIER, EventType::ExecutionStarted(started_event(None)))
}

/// ExecutionStarted of an instance started by `parent-1` (task 7).
fn started_as_child() -> HistoryEvent {
    event(EXTERNAL, EARLIER, EventType::ExecutionStarted(started_event(Some(parent_info()))))
}

/// A committed history that began with `start` and ran one step, then `more`.
fn history_of(start: HistoryEvent, more: impl IntoIterator<Item = HistoryEvent>) -> Vec<HistoryEvent> {
    let mut h = vec![
        events::orchestrator_started(EARLIER),
        start,
        events::orchestrator_completed(EARLIER),
    ];
    h.extend(more);
    h
}

fn history(more: impl IntoIterator<Item = HistoryEvent>) -> Vec<HistoryEvent> {
    history_of(started(), more)
}

fn os(at: Micros) -> HistoryEvent {
    events::orchestrator_started(at)
}

fn oc(at: Micros) -> HistoryEvent {
    events::orchestrator_completed(at)
}

fn task_scheduled(id: i32) -> HistoryEvent {
    event(
        id,
        EARLIER,
        EventType::TaskScheduled(TaskScheduledEvent {
            name: "Charge".into(),
            ..Default::default()
        }),
    )
}

fn task_completed(id: i32) -> HistoryEvent {
    events::task_result(EARLIER, id, s("\"ok\""), None)
}

fn task_failed(id: i32) -> HistoryEvent {
    events::task_result(EARLIER, id, None, Some(events::failure("CardDeclined", "card declined")))
}

fn timer_created(id: i32) -> HistoryEvent {
    event(
        id,
        EARLIER,
        EventType::TimerCreated(TimerCreatedEvent {
            fire_at: Some(to_timestamp(EARLIER)),
        }),
    )
}

fn timer_fired(id: i32) -> HistoryEvent {
    event(
        EXTERNAL,
        EARLIER,
        EventType::TimerFired(TimerFiredEvent {
            fire_at: Some(to_timestamp(EARLIER)),
            timer_id: id,
        }),
    )
}

fn child_created(id: i32, child: &str) -> HistoryEvent {
    event(
        id,
        EARLIER,
        EventType::SubOrchestrationInstanceCreated(SubOrchestrationInstanceCreatedEvent {
            instance_id: child.into(),
            name: "Ship".into(),
            input: s("\"box\""),
            ..Default::default()
        }),
    )
}

fn child_completed(id: i32) -> HistoryEvent {
    event(
        EXTERNAL,
        EARLIER,
        EventType::SubOrchestrationInstanceCompleted(SubOrchestrationInstanceCompletedEvent {
            task_scheduled_id: id,
            result: s("\"shipped\""),
        }),
    )
}

fn child_failed(id: i32) -> HistoryEvent {
    event(
        EXTERNAL,
        EARLIER,
        EventType::SubOrchestrationInstanceFailed(SubOrchestrationInstanceFailedEvent {
            task_scheduled_id: id,
            failure_details: Some(events::failure("ShipError", "no truck")),
        }),
    )
}

fn raised(name: &str) -> HistoryEvent {
    events::event_raised(EARLIER, name.into(), s("1"))
}

fn suspended() -> HistoryEvent {
    events::suspended(EARLIER, s("pause"))
}

fn resumed() -> HistoryEvent {
    events::resumed(EARLIER, s("go on"))
}

fn terminated(reason: &str, recurse: bool) -> HistoryEvent {
    events::terminated(EARLIER, s(reason), recurse)
}

fn rewound(reason: &str) -> HistoryEvent {
    events::rewound(NOW, s(reason), None)
}

/// A message for the current execution (results, timers: tagged with the execution id).
fn to_current(event: HistoryEvent) -> Message {
    to_execution(EXEC, event)
}

fn to_execution(execution_id: &str, event: HistoryEvent) -> Message {
    Message {
        instance_id: ID.into(),
        execution_id: s(execution_id),
        event,
        visible_at: EARLIER,
        priority: Message::NORMAL,
    }
}

/// A message for whichever execution is current (raised events, suspend, terminate).
fn external(event: HistoryEvent) -> Message {
    Message {
        instance_id: ID.into(),
        execution_id: None,
        event,
        visible_at: EARLIER,
        priority: Message::NORMAL,
    }
}

/// Numbers the messages as inbox rows 1, 2, 3, ...
fn inbox(messages: Vec<Message>) -> Vec<(i64, Message)> {
    messages.into_iter().enumerate().map(|(i, m)| (i as i64 + 1, m)).collect()
}

fn run(new_events: Vec<HistoryEvent>, consumed: Vec<i64>) -> Prepared {
    Prepared::Run { new_events, consumed }
}

/// The rows a Drop deletes; panics on anything else.
fn dropped(p: Prepared) -> Vec<i64> {
    match p {
        Prepared::Drop { consumed, .. } => consumed,
        other => panic!("expected Drop, got {other:?}"),
    }
}

fn action(id: i32, a: Action) -> OrchestratorAction {
    OrchestratorAction {
        id,
        orchestrator_action_type: Some(a),
    }
}

fn schedule_task(id: i32, name: &str) -> OrchestratorAction {
    action(
        id,
        Action::ScheduleTask(ScheduleTaskAction {
            name: name.into(),
            ..Default::default()
        }),
    )
}

fn create_timer(id: i32, fire_at: Micros) -> OrchestratorAction {
    action(
        id,
        Action::CreateTimer(CreateTimerAction {
            fire_at: Some(to_timestamp(fire_at)),
        }),
    )
}

fn create_child(id: i32, instance_id: &str, name: &str) -> OrchestratorAction {
    action(
        id,
        Action::CreateSubOrchestration(CreateSubOrchestrationAction {
            instance_id: instance_id.into(),
            name: name.into(),
            ..Default::default()
        }),
    )
}

fn send_event(id: i32, target: &str, name: &str, data: &str) -> OrchestratorAction {
    action(
        id,
        Action::SendEvent(SendEventAction {
            instance: Some(OrchestrationInstance {
                instance_id: target.into(),
                execution_id: None,
            }),
            name: name.into(),
            data: s(data),
        }),
    )
}

fn complete(id: i32, status: OrchestrationStatus, result: Option<&str>) -> OrchestratorAction {
    action(
        id,
        Action::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: status as i32,
            result: result.map(str::to_string),
            ..Default::default()
        }),
    )
}

fn fail(id: i32, details: TaskFailureDetails) -> OrchestratorAction {
    action(
        id,
        Action::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: S::Failed as i32,
            failure_details: Some(details),
            ..Default::default()
        }),
    )
}

fn continue_as_new(id: i32, input: &str, new_version: Option<&str>, carryover: Vec<HistoryEvent>) -> OrchestratorAction {
    action(
        id,
        Action::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: S::ContinuedAsNew as i32,
            result: s(input),
            new_version: new_version.map(str::to_string),
            carryover_events: carryover,
            ..Default::default()
        }),
    )
}

fn terminate_other(id: i32, target: &str, reason: &str, recurse: bool) -> OrchestratorAction {
    action(
        id,
        Action::TerminateOrchestration(TerminateOrchestrationAction {
            instance_id: target.into(),
            reason: s(reason),
            recurse,
        }),
    )
}

fn rewind_action(new_history: Vec<HistoryEvent>) -> OrchestratorAction {
    action(-1, Action::RewindOrchestration(RewindOrchestrationAction { new_history }))
}

fn signal_entity(id: i32) -> OrchestratorAction {
    action(
        id,
        Action::SendEntityMessage(SendEntityMessageAction {
            entity_message_type: Some(EntityMessageType::EntityOperationSignaled(EntityOperationSignaledEvent {
                request_id: "req-1".into(),
                operation: "add".into(),
                target_instance_id: s("@counter@c1"),
                ..Default::default()
            })),
        }),
    )
}

fn respond(actions: Vec<OrchestratorAction>) -> Response {
    Response {
        actions,
        ..Default::default()
    }
}

/// Runs `apply` at NOW with execution ids "new-exec-1", "new-exec-2", ...
fn apply_at_now(instance: &Instance, history: &[HistoryEvent], new_events: &[HistoryEvent], response: Response) -> Commit {
    let mut n = 0;
    let mut new_id = move || {
        n += 1;
        format!("new-exec-{n}")
    };
    apply(instance, history, new_events, response, NOW, &mut new_id)
}

/// One step of a running top-level instance: new events are OrchestratorStarted(NOW) + `extra`.
fn step(extra: Vec<HistoryEvent>, response: Response) -> Commit {
    let mut new_events = vec![os(NOW)];
    new_events.extend(extra);
    apply_at_now(&running(), &history([]), &new_events, response)
}

/// The events a commit appends; panics when it replaces the history.
fn appended(c: &Commit) -> &Vec<HistoryEvent> {
    match &c.history {
        HistoryWrite::Append(events) => events,
        other => panic!("expected HistoryWrite::Append, got {other:?}"),
    }
}

fn message_to(instance_id: &str, execution_id: Option<&str>, event: HistoryEvent, visible_at: Micros) -> Message {
    Message {
        instance_id: instance_id.into(),
        execution_id: execution_id.map(str::to_string),
        event,
        visible_at,
        priority: Message::NORMAL,
    }
}

fn execution_completed(id: i32, status: OrchestrationStatus, result: Option<&str>, failure: Option<TaskFailureDetails>) -> HistoryEvent {
    event(
        id,
        NOW,
        EventType::ExecutionCompleted(ExecutionCompletedEvent {
            orchestration_status: status as i32,
            result: result.map(str::to_string),
            failure_details: failure,
        }),
    )
}

fn started_of(m: &Message) -> &ExecutionStartedEvent {
    match &m.event.event_type {
        Some(EventType::ExecutionStarted(e)) => e,
        other => panic!("expected ExecutionStarted, got {other:?}"),
    }
}

fn sub_failed_of(m: &Message) -> &SubOrchestrationInstanceFailedEvent {
    match &m.event.event_type {
        Some(EventType::SubOrchestrationInstanceFailed(e)) => e,
        other => panic!("expected SubOrchestrationInstanceFailed, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// prepare
// ---------------------------------------------------------------------------------------------

#[test]
fn prepare_first_step_is_orchestrator_started_then_execution_started() {
    let p = prepare(&instance(S::Pending), &[], &inbox(vec![to_current(started())]), NOW);
    assert_eq!(p, run(vec![os(NOW), started()], vec![1]));
}

#[test]
fn prepare_first_step_keeps_events_that_arrived_with_the_start() {
    let p = prepare(
        &instance(S::Pending),
        &[],
        &inbox(vec![to_current(started()), external(raised("early"))]),
        NOW,
    );
    assert_eq!(p, run(vec![os(NOW), started(), raised("early")], vec![1, 2]));
}

#[test]
fn prepare_orchestrator_started_carries_now() {
    let now = NOW + 12_345_678;
    let Prepared::Run { new_events, .. } = prepare(&running(), &history([]), &inbox(vec![external(raised("go"))]), now) else {
        panic!("expected Run");
    };
    assert_eq!(new_events[0].event_id, EXTERNAL);
    assert_eq!(
        new_events[0].timestamp,
        Some(Timestamp {
            seconds: 1_700_000_012,
            nanos: 345_801_000
        })
    );
    assert!(matches!(new_events[0].event_type, Some(EventType::OrchestratorStarted(_))));
    assert_eq!(new_events[1], raised("go"));
}

#[test]
fn prepare_drops_events_for_a_replaced_execution() {
    let h = history([task_scheduled(1), timer_created(2)]);
    let p = prepare(
        &running(),
        &h,
        &inbox(vec![
            to_execution("exec-0", task_completed(1)),
            to_execution("exec-0", timer_fired(2)),
            external(raised("go")),
            to_current(task_completed(1)),
        ]),
        NOW,
    );
    assert_eq!(p, run(vec![os(NOW), raised("go"), task_completed(1)], vec![1, 2, 3, 4]));
}

#[test]
fn prepare_drops_duplicate_task_results() {
    let h = history([task_scheduled(1), task_completed(1), task_scheduled(2)]);
    let p = prepare(
        &running(),
        &h,
        &inbox(vec![
            to_current(task_completed(1)), // already in history
            to_current(task_failed(1)),    // already in history
            to_current(task_failed(2)),    // new
            to_current(task_completed(2)), // second result for 2 in the same batch
        ]),
        NOW,
    );
    assert_eq!(p, run(vec![os(NOW), task_failed(2)], vec![1, 2, 3, 4]));
}

#[test]
fn prepare_drops_duplicate_timer_fired() {
    let h = history([timer_created(1), timer_fired(1), timer_created(2)]);
    let p = prepare(
        &running(),
        &h,
        &inbox(vec![
            to_current(timer_fired(1)),
            to_current(timer_fired(2)),
            to_current(timer_fired(2)),
        ]),
        NOW,
    );
    assert_eq!(p, run(vec![os(NOW), timer_fired(2)], vec![1, 2, 3]));
}

#[test]
fn prepare_drops_duplicate_sub_orchestration_results() {
    let h = history([child_created(1, "c1"), child_completed(1), child_created(2, "c2")]);
    let p = prepare(
        &running(),
        &h,
        &inbox(vec![
            to_current(child_failed(1)),
            to_current(child_completed(1)),
            to_current(child_failed(2)),
            to_current(child_completed(2)),
        ]),
        NOW,
    );
    assert_eq!(p, run(vec![os(NOW), child_failed(2)], vec![1, 2, 3, 4]));
}

#[test]
fn prepare_drops_results_for_ids_never_scheduled() {
    // Id 1 is a timer: results of the wrong kind for it are strays too.
    let h = history([timer_created(1)]);
    let p = prepare(
        &running(),
        &h,
        &inbox(vec![
            to_current(task_completed(5)),
            to_current(task_failed(6)),
            to_current(timer_fired(7)),
            to_current(child_completed(8)),
            to_current(child_failed(9)),
            to_current(task_completed(1)),
            to_current(child_completed(1)),
            external(raised("go")),
        ]),
        NOW,
    );
    assert_eq!(p, run(vec![os(NOW), raised("go")], vec![1, 2, 3, 4, 5, 6, 7, 8]));
}

#[test]
fn prepare_drops_a_duplicate_execution_started() {
    let p = prepare(
        &running(),
        &history([]),
        &inbox(vec![to_current(started()), external(raised("go"))]),
        NOW,
    );
    assert_eq!(p, run(vec![os(NOW), raised("go")], vec![1, 2]));

    // Two starts in the very first batch: only the first is delivered.
    let p = prepare(
        &instance(S::Pending),
        &[],
        &inbox(vec![to_current(started()), to_current(started())]),
        NOW,
    );
    assert_eq!(p, run(vec![os(NOW), started()], vec![1, 2]));
}

#[test]
fn prepare_drops_everything_for_a_finished_instance() {
    for status in [S::Completed, S::Failed, S::Terminated, S::Canceled] {
        let p = prepare(
            &instance(status),
            &history([task_scheduled(1)]),
            &inbox(vec![external(raised("late")), to_current(task_completed(1)), external(resumed())]),
            NOW,
        );
        assert_eq!(dropped(p), vec![1, 2, 3], "status {status:?}");
    }
}

#[test]
fn prepare_holds_raised_events_while_suspended() {
    let h = history([timer_created(1)]);
    let p = prepare(
        &instance(S::Suspended),
        &h,
        &inbox(vec![external(raised("a")), to_current(timer_fired(1))]),
        NOW,
    );
    assert_eq!(p, Prepared::Wait);
}

#[test]
fn prepare_resume_delivers_the_held_events() {
    let p = prepare(
        &instance(S::Suspended),
        &history([]),
        &inbox(vec![external(raised("a")), external(resumed())]),
        NOW,
    );
    assert_eq!(p, run(vec![os(NOW), raised("a"), resumed()], vec![1, 2]));
}

#[test]
fn prepare_terminate_wakes_a_suspended_instance() {
    let p = prepare(
        &instance(S::Suspended),
        &history([]),
        &inbox(vec![external(raised("a")), external(terminated("stop", false))]),
        NOW,
    );
    assert_eq!(p, run(vec![os(NOW), raised("a"), terminated("stop", false)], vec![1, 2]));
}

#[test]
fn prepare_resume_for_a_replaced_execution_does_not_wake_a_suspended_instance() {
    let p = prepare(
        &instance(S::Suspended),
        &history([]),
        &inbox(vec![external(raised("a")), to_execution("exec-0", resumed())]),
        NOW,
    );
    assert_eq!(p, Prepared::Wait);
}

#[test]
fn prepare_delivers_a_rewind_alone() {
    let h = history([task_scheduled(1), task_failed(1)]);
    let p = prepare(
        &running(),
        &h,
        &inbox(vec![
            external(raised("early")),
            to_current(rewound("fixed")),
            external(raised("late")),
        ]),
        NOW,
    );
    // Only the rewind row is consumed; the others wait for the next step.
    assert_eq!(p, run(vec![os(NOW), rewound("fixed")], vec![2]));
}

#[test]
fn prepare_bare_wake_runs_with_only_a_fresh_orchestrator_started() {
    let p = prepare(&running(), &history([]), &inbox(vec![to_current(os(EARLIER))]), NOW);
    assert_eq!(p, run(vec![os(NOW)], vec![1]));
}

#[test]
fn prepare_drops_an_all_stale_inbox() {
    let h = history([task_scheduled(1), task_completed(1)]);
    let p = prepare(
        &running(),
        &h,
        &inbox(vec![
            to_current(task_completed(1)),
            to_execution("exec-0", raised("old")),
            to_current(timer_fired(3)),
        ]),
        NOW,
    );
    assert_eq!(dropped(p), vec![1, 2, 3]);
}

#[test]
fn prepare_waits_for_the_start_of_a_pending_instance() {
    // A scheduled start is not visible yet; a raised event must not run the orchestrator.
    let p = prepare(&instance(S::Pending), &[], &inbox(vec![external(raised("early"))]), NOW);
    assert_eq!(p, Prepared::Wait);
}

// ---------------------------------------------------------------------------------------------
// apply: one rule per action kind
// ---------------------------------------------------------------------------------------------

#[test]
fn schedule_task_records_task_scheduled_and_queues_an_activity() {
    let tc = trace("00-11111111111111111111111111111111-2222222222222222-01");
    let a = ScheduleTaskAction {
        name: "Charge".into(),
        version: s("2"),
        input: s("{\"amount\":5}"),
        tags: tags(&[("priority", "high")]),
        parent_trace_context: Some(tc.clone()),
    };
    let c = step(vec![], respond(vec![action(3, Action::ScheduleTask(a))]));
    let scheduled = TaskScheduledEvent {
        name: "Charge".into(),
        version: s("2"),
        input: s("{\"amount\":5}"),
        parent_trace_context: Some(tc.clone()),
        tags: tags(&[("priority", "high")]),
    };
    assert_eq!(
        appended(&c),
        &vec![os(NOW), event(3, NOW, EventType::TaskScheduled(scheduled)), oc(NOW)]
    );
    assert_eq!(
        c.activities,
        vec![ActivityTask {
            instance_id: ID.into(),
            execution_id: EXEC.into(),
            request: ActivityRequest {
                name: "Charge".into(),
                version: s("2"),
                input: s("{\"amount\":5}"),
                orchestration_instance: Some(this_execution()),
                task_id: 3,
                parent_trace_context: Some(tc),
                tags: tags(&[("priority", "high")]),
            },
        }]
    );
    assert!(c.messages.is_empty());
    assert!(c.children.is_empty());
    assert_eq!(c.instance.status, S::Running);
}

#[test]
fn create_timer_records_timer_created_and_sends_timer_fired_at_fire_time() {
    let fire = NOW + 30_000_000;
    let c = step(vec![], respond(vec![create_timer(4, fire)]));
    assert_eq!(
        appended(&c),
        &vec![
            os(NOW),
            event(
                4,
                NOW,
                EventType::TimerCreated(TimerCreatedEvent {
                    fire_at: Some(to_timestamp(fire))
                })
            ),
            oc(NOW)
        ]
    );
    let fired = event(
        EXTERNAL,
        fire,
        EventType::TimerFired(TimerFiredEvent {
            fire_at: Some(to_timestamp(fire)),
            timer_id: 4,
        }),
    );
    assert_eq!(c.messages, vec![message_to(ID, Some(EXEC), fired, fire)]);
    assert!(c.activities.is_empty());
}

#[test]
fn create_sub_orchestration_starts_the_child_with_its_parent() {
    let tc = trace("00-33333333333333333333333333333333-4444444444444444-01");
    let a = CreateSubOrchestrationAction {
        instance_id: "ship-42".into(),
        name: "Ship".into(),
        version: s("3"),
        input: s("\"box\""),
        parent_trace_context: Some(tc.clone()),
        tags: tags(&[("region", "eu")]),
    };
    let c = step(vec![], respond(vec![action(5, Action::CreateSubOrchestration(a))]));

    let created = SubOrchestrationInstanceCreatedEvent {
        instance_id: "ship-42".into(),
        name: "Ship".into(),
        version: s("3"),
        input: s("\"box\""),
        parent_trace_context: Some(tc.clone()),
        tags: tags(&[("region", "eu")]),
    };
    assert_eq!(
        appended(&c),
        &vec![os(NOW), event(5, NOW, EventType::SubOrchestrationInstanceCreated(created)), oc(NOW)]
    );
    assert_eq!(c.children.len(), 1);

    let NewInstance { instance: child, start } = &c.children[0].child;
    assert_eq!(child.instance_id, "ship-42");
    assert_eq!(child.execution_id, "new-exec-1");
    assert_eq!(child.status, S::Pending);
    assert_eq!(child.name, "Ship");
    assert_eq!(child.version, s("3"));
    assert_eq!(child.parent_instance_id, s(ID));
    assert_eq!(child.tags, btags(&[("region", "eu")]));

    assert_eq!(start.instance_id, "ship-42");
    assert_eq!(start.execution_id, s("new-exec-1"));
    assert_eq!(start.priority, Message::FIRST);
    assert_eq!(start.visible_at, NOW);
    assert_eq!(
        started_of(start),
        &ExecutionStartedEvent {
            name: "Ship".into(),
            version: s("3"),
            input: s("\"box\""),
            orchestration_instance: Some(OrchestrationInstance {
                instance_id: "ship-42".into(),
                execution_id: s("new-exec-1")
            }),
            parent_instance: Some(ParentInstanceInfo {
                task_scheduled_id: 5,
                name: s(NAME),
                version: s("1.0"),
                orchestration_instance: Some(this_execution()),
            }),
            scheduled_start_timestamp: None,
            parent_trace_context: Some(tc),
            orchestration_span_id: None,
            tags: tags(&[("region", "eu")]),
        }
    );

    // If the id is taken, only this child fails: the parent's execution hears it as task 5.
    let conflict = &c.children[0].on_conflict;
    assert_eq!((conflict.instance_id.as_str(), conflict.execution_id.as_deref()), (ID, Some(EXEC)));
    assert_eq!(conflict.visible_at, NOW);
    let failed = sub_failed_of(conflict);
    assert_eq!(failed.task_scheduled_id, 5);
    let details = failed.failure_details.as_ref().expect("conflict carries failure details");
    assert_eq!(details.error_type, "OrchestrationAlreadyExists");
    assert!(details.error_message.contains("ship-42"), "{}", details.error_message);
    assert!(c.messages.is_empty(), "the child's start travels in `children`, not `messages`");
}

#[test]
fn create_sub_orchestration_without_id_gets_parent_colon_hex_action_id() {
    let c = step(
        vec![],
        respond(vec![create_child(10, "", "Ship"), create_child(0x1f3c, "", "Ship")]),
    );
    let ids: Vec<&str> = c.children.iter().map(|ch| ch.child.instance.instance_id.as_str()).collect();
    assert_eq!(ids, ["order-42:000a", "order-42:1f3c"]);
    let created: Vec<(i32, String)> = appended(&c)
        .iter()
        .filter_map(|e| match &e.event_type {
            Some(EventType::SubOrchestrationInstanceCreated(cr)) => Some((e.event_id, cr.instance_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        created,
        vec![(10, "order-42:000a".to_string()), (0x1f3c, "order-42:1f3c".to_string())]
    );
    // Each child gets its own execution id.
    assert_eq!(c.children[0].child.instance.execution_id, "new-exec-1");
    assert_eq!(c.children[1].child.instance.execution_id, "new-exec-2");
}

#[test]
fn send_event_records_event_sent_and_raises_the_event_at_the_target() {
    let c = step(vec![], respond(vec![send_event(6, "other-7", "Approved", "true")]));
    let sent = EventSentEvent {
        instance_id: "other-7".into(),
        name: "Approved".into(),
        input: s("true"),
    };
    assert_eq!(appended(&c), &vec![os(NOW), event(6, NOW, EventType::EventSent(sent)), oc(NOW)]);
    let raised = event(
        EXTERNAL,
        NOW,
        EventType::EventRaised(EventRaisedEvent {
            name: "Approved".into(),
            input: s("true"),
        }),
    );
    assert_eq!(c.messages, vec![message_to("other-7", None, raised, NOW)]);
}

#[test]
fn terminate_orchestration_action_only_sends_a_terminate() {
    let c = step(vec![], respond(vec![terminate_other(8, "other-9", "stop", true)]));
    assert_eq!(appended(&c), &vec![os(NOW), oc(NOW)]);
    assert_eq!(
        c.messages,
        vec![message_to("other-9", None, events::terminated(NOW, s("stop"), true), NOW)]
    );
    assert_eq!(c.instance.status, S::Running);
}

#[test]
fn complete_orchestration_completed_finishes_the_instance() {
    let c = step(vec![], respond(vec![complete(9, S::Completed, Some("\"done\""))]));
    assert_eq!(
        appended(&c),
        &vec![os(NOW), execution_completed(9, S::Completed, Some("\"done\""), None), oc(NOW)]
    );
    assert_eq!(c.instance.status, S::Completed);
    assert_eq!(c.instance.output, s("\"done\""));
    assert_eq!(c.instance.failure_details, None);
    assert_eq!(c.instance.completed_at, Some(NOW));
    assert_eq!(c.instance.updated_at, NOW);
    assert!(c.messages.is_empty(), "a top-level instance notifies nobody");
}

#[test]
fn complete_orchestration_failed_records_failure_details() {
    let details = events::failure("InvalidOperation", "out of stock");
    let c = step(vec![], respond(vec![fail(9, details.clone())]));
    assert_eq!(
        appended(&c),
        &vec![os(NOW), execution_completed(9, S::Failed, None, Some(details.clone())), oc(NOW)]
    );
    assert_eq!(c.instance.status, S::Failed);
    assert_eq!(c.instance.output, None);
    assert_eq!(c.instance.failure_details, Some(details));
    assert_eq!(c.instance.completed_at, Some(NOW));
}

#[test]
fn complete_orchestration_merges_tags() {
    let a = CompleteOrchestrationAction {
        orchestration_status: S::Completed as i32,
        tags: tags(&[("outcome", "shipped")]),
        ..Default::default()
    };
    let c = step(vec![], respond(vec![action(2, Action::CompleteOrchestration(a))]));
    assert_eq!(c.instance.tags, btags(&[("outcome", "shipped"), ("team", "billing")]));
}

#[test]
fn completed_child_notifies_its_parent_execution() {
    let c = apply_at_now(
        &running(),
        &history_of(started_as_child(), []),
        &[os(NOW)],
        respond(vec![complete(9, S::Completed, Some("\"done\""))]),
    );
    let result = event(
        EXTERNAL,
        NOW,
        EventType::SubOrchestrationInstanceCompleted(SubOrchestrationInstanceCompletedEvent {
            task_scheduled_id: PARENT_TASK,
            result: s("\"done\""),
        }),
    );
    assert_eq!(c.messages, vec![message_to(PARENT, Some(PARENT_EXEC), result, NOW)]);
}

#[test]
fn failed_child_notifies_its_parent_with_its_failure() {
    let details = events::failure("InvalidOperation", "out of stock");
    let c = apply_at_now(
        &running(),
        &history_of(started_as_child(), []),
        &[os(NOW)],
        respond(vec![fail(9, details.clone())]),
    );
    let result = event(
        EXTERNAL,
        NOW,
        EventType::SubOrchestrationInstanceFailed(SubOrchestrationInstanceFailedEvent {
            task_scheduled_id: PARENT_TASK,
            failure_details: Some(details),
        }),
    );
    assert_eq!(c.messages, vec![message_to(PARENT, Some(PARENT_EXEC), result, NOW)]);
}

#[test]
fn first_step_of_a_child_finds_its_parent_in_the_new_events() {
    // The ExecutionStarted is in new_events, not history, when a child finishes in one step.
    let c = apply_at_now(
        &instance(S::Pending),
        &[],
        &[os(NOW), started_as_child()],
        respond(vec![complete(1, S::Completed, Some("1"))]),
    );
    assert_eq!(c.messages.len(), 1);
    assert_eq!(
        (c.messages[0].instance_id.as_str(), c.messages[0].execution_id.as_deref()),
        (PARENT, Some(PARENT_EXEC))
    );
    assert!(matches!(
        &c.messages[0].event.event_type,
        Some(EventType::SubOrchestrationInstanceCompleted(r)) if r.task_scheduled_id == PARENT_TASK && r.result == s("1")
    ));
}

#[test]
fn terminated_child_notifies_its_parent_with_synthesized_failure_details() {
    let c = apply_at_now(
        &running(),
        &history_of(started_as_child(), []),
        &[os(NOW), terminated("cancelled by user", false)],
        respond(vec![complete(9, S::Terminated, Some("cancelled by user"))]),
    );
    assert_eq!(c.instance.status, S::Terminated);
    assert_eq!(c.messages.len(), 1);
    let m = &c.messages[0];
    assert_eq!(
        (m.instance_id.as_str(), m.execution_id.as_deref(), m.visible_at),
        (PARENT, Some(PARENT_EXEC), NOW)
    );
    let failed = sub_failed_of(m);
    assert_eq!(failed.task_scheduled_id, PARENT_TASK);
    let details = failed
        .failure_details
        .as_ref()
        .expect("a terminated child must report failure details");
    assert_eq!(details.error_type, "OrchestrationTerminated");
    assert!(details.error_message.contains(ID), "{}", details.error_message);
    assert!(details.error_message.contains("terminated"), "{}", details.error_message);
    assert!(details.error_message.contains("cancelled by user"), "{}", details.error_message);
}

#[test]
fn recursive_terminate_terminates_children_still_running() {
    let h = history([
        child_created(1, "c-done"),
        child_completed(1),
        child_created(2, "c-running"),
        child_created(3, "c-failing"),
    ]);
    let c = apply_at_now(
        &running(),
        &h,
        &[os(NOW), child_failed(3), terminated("shutdown", true)],
        respond(vec![complete(10, S::Terminated, Some("shutdown"))]),
    );
    assert_eq!(c.instance.status, S::Terminated);
    assert_eq!(
        c.messages,
        vec![message_to("c-running", None, events::terminated(NOW, s("shutdown"), true), NOW)]
    );
}

#[test]
fn non_recursive_terminate_leaves_children_alone() {
    let h = history([child_created(2, "c-running")]);
    let c = apply_at_now(
        &running(),
        &h,
        &[os(NOW), terminated("shutdown", false)],
        respond(vec![complete(10, S::Terminated, Some("shutdown"))]),
    );
    assert_eq!(c.instance.status, S::Terminated);
    assert!(c.messages.is_empty(), "{:?}", c.messages);
}

#[test]
fn terminate_without_a_complete_action_still_ends_the_instance() {
    let c = step(vec![raised("a"), terminated("stop", false)], respond(vec![]));
    assert_eq!(c.instance.status, S::Terminated);
    assert_eq!(c.instance.output, s("stop"));
    assert_eq!(c.instance.completed_at, Some(NOW));
    assert_eq!(
        appended(&c),
        &vec![
            os(NOW),
            raised("a"),
            terminated("stop", false),
            execution_completed(EXTERNAL, S::Terminated, Some("stop"), None),
            oc(NOW)
        ]
    );
}

#[test]
fn sidecar_terminate_also_recurses_and_notifies_the_parent() {
    let h = history_of(started_as_child(), [child_created(2, "c-running")]);
    let c = apply_at_now(&running(), &h, &[os(NOW), terminated("stop", true)], respond(vec![]));
    assert_eq!(c.instance.status, S::Terminated);
    assert_eq!(c.messages.len(), 2, "{:?}", c.messages);
    assert_eq!(sub_failed_of(&c.messages[0]).task_scheduled_id, PARENT_TASK);
    assert_eq!(c.messages[0].instance_id, PARENT);
    assert_eq!(
        c.messages[1],
        message_to("c-running", None, events::terminated(NOW, s("stop"), true), NOW)
    );
}

#[test]
fn terminate_wins_over_continue_as_new() {
    let h = history([timer_created(1)]);
    let c = apply_at_now(
        &running(),
        &h,
        &[os(NOW), timer_fired(1), terminated("stop", false)],
        respond(vec![continue_as_new(2, "\"next\"", None, vec![])]),
    );
    assert_eq!(c.instance.status, S::Terminated);
    assert_eq!(c.instance.execution_id, EXEC);
    assert_eq!(c.instance.output, s("stop"));
    assert!(c.messages.is_empty(), "no new execution may be queued: {:?}", c.messages);
}

// ---------------------------------------------------------------------------------------------
// apply: continue-as-new
// ---------------------------------------------------------------------------------------------

#[test]
fn continue_as_new_starts_a_new_execution_with_carryover_first() {
    let h = history_of(started_as_child(), [task_scheduled(1), task_completed(1)]);
    let c = apply_at_now(
        &running(),
        &h,
        &[os(NOW), raised("more")],
        respond(vec![continue_as_new(2, "\"next\"", Some("2.0"), vec![raised("carried")])]),
    );
    assert_eq!(c.history, HistoryWrite::Replace(vec![]));
    assert_eq!(c.instance.execution_id, "new-exec-1");
    assert_eq!(c.instance.status, S::Running);
    assert_eq!(c.instance.input, s("\"next\""));
    assert_eq!(c.instance.output, None);
    assert_eq!(c.instance.version, s("2.0"));
    assert_eq!(c.instance.completed_at, None);

    let mut expected_start = started_event(Some(parent_info()));
    expected_start.version = s("2.0");
    expected_start.input = s("\"next\"");
    expected_start.orchestration_instance = Some(OrchestrationInstance {
        instance_id: ID.into(),
        execution_id: s("new-exec-1"),
    });
    let first = |event| Message {
        instance_id: ID.into(),
        execution_id: s("new-exec-1"),
        event,
        visible_at: NOW,
        priority: Message::FIRST,
    };
    assert_eq!(
        c.messages,
        vec![
            first(event(EXTERNAL, NOW, EventType::ExecutionStarted(expected_start))),
            first(raised("carried"))
        ],
        "the parent is not notified until the final completion"
    );
    assert!(c.activities.is_empty());
}

#[test]
fn continue_as_new_without_new_version_keeps_the_version() {
    let c = step(vec![], respond(vec![continue_as_new(1, "2", None, vec![])]));
    assert_eq!(c.instance.version, s("1.0"));
    assert_eq!(started_of(&c.messages[0]).version, s("1.0"));
    assert_eq!(started_of(&c.messages[0]).name, NAME);
    assert_eq!(started_of(&c.messages[0]).parent_instance, None);
}

#[test]
fn continue_as_new_keeps_side_effects_before_and_after_it() {
    let c = step(
        vec![],
        respond(vec![
            send_event(1, "other-7", "Progress", "1"),
            continue_as_new(2, "\"next\"", None, vec![]),
            schedule_task(3, "Late"),
            send_event(4, "other-8", "Late", "2"),
        ]),
    );
    let targets: Vec<(&str, Option<&str>)> = c
        .messages
        .iter()
        .map(|m| (m.instance_id.as_str(), m.execution_id.as_deref()))
        .collect();
    assert_eq!(targets, [("other-7", None), ("other-8", None), (ID, Some("new-exec-1"))]);
    assert!(matches!(&c.messages[0].event.event_type, Some(EventType::EventRaised(e)) if e.name == "Progress"));
    assert_eq!(c.activities.len(), 1, "{:?}", c.activities);
    assert_eq!(c.history, HistoryWrite::Replace(vec![]));
}

#[test]
fn continue_as_new_resets_the_trace_context() {
    let mut inst = running();
    inst.trace_context = Some(OrchestrationTraceContext {
        span_id: s("old-span"),
        span_start_time: Some(to_timestamp(EARLIER)),
    });
    let c = apply_at_now(
        &inst,
        &history([]),
        &[os(NOW)],
        respond(vec![continue_as_new(1, "2", None, vec![])]),
    );
    assert_eq!(c.instance.trace_context, None);
}

// ---------------------------------------------------------------------------------------------
// apply: lifecycle
// ---------------------------------------------------------------------------------------------

#[test]
fn every_action_takes_effect_and_the_completion_is_applied_last() {
    // The Go SDK lists actions in map order: the completion may come first.
    let c = step(
        vec![],
        respond(vec![
            complete(1, S::Completed, Some("1")),
            schedule_task(2, "Late"),
            send_event(3, "other-7", "Late", "x"),
            create_timer(4, NOW + 1_000_000),
            create_child(5, "child-5", "Child"),
            complete(6, S::Failed, None),
        ]),
    );
    let kinds: Vec<i32> = appended(&c).iter().map(|e| e.event_id).collect();
    assert_eq!(kinds, [-1, 2, 3, 4, 5, 1, -1], "{:?}", appended(&c));
    assert_eq!(appended(&c)[5], execution_completed(1, S::Completed, Some("1"), None));
    assert_eq!(c.instance.status, S::Completed, "the first completion wins");
    assert_eq!(c.activities.len(), 1);
    assert_eq!(c.children.len(), 1);
    let targets: Vec<&str> = c.messages.iter().map(|m| m.instance_id.as_str()).collect();
    assert_eq!(targets, ["other-7", ID], "the event and the timer's TimerFired");
}

#[test]
fn side_effects_before_a_completion_happen() {
    let c = step(
        vec![],
        respond(vec![send_event(1, "other-7", "Done", "1"), complete(2, S::Completed, None)]),
    );
    assert_eq!(c.messages.len(), 1);
    assert_eq!(c.messages[0].instance_id, "other-7");
    assert_eq!(c.instance.status, S::Completed);
}

#[test]
fn first_step_moves_pending_to_running() {
    let c = apply_at_now(
        &instance(S::Pending),
        &[],
        &[os(NOW), started()],
        respond(vec![schedule_task(1, "Charge")]),
    );
    assert_eq!(c.instance.status, S::Running);
    assert_eq!(c.instance.updated_at, NOW);
    assert_eq!(appended(&c)[..2], [os(NOW), started()]);
}

#[test]
fn suspend_and_resume_change_the_status() {
    let c = step(vec![suspended()], respond(vec![]));
    assert_eq!(c.instance.status, S::Suspended);

    let c = apply_at_now(
        &instance(S::Suspended),
        &history([]),
        &[os(NOW), raised("a"), resumed()],
        respond(vec![]),
    );
    assert_eq!(c.instance.status, S::Running);

    // The last of several wins.
    let c = step(vec![suspended(), resumed()], respond(vec![]));
    assert_eq!(c.instance.status, S::Running);
    let c = step(vec![resumed(), suspended()], respond(vec![]));
    assert_eq!(c.instance.status, S::Suspended);
}

#[test]
fn completion_while_suspended_is_terminal() {
    let c = step(
        vec![suspended(), terminated("stop", false)],
        respond(vec![complete(1, S::Terminated, Some("stop"))]),
    );
    assert_eq!(c.instance.status, S::Terminated);
}

#[test]
fn custom_status_is_replaced_when_set_and_kept_when_unset() {
    let mut inst = running();
    inst.custom_status = s("\"old\"");
    let set = Response {
        custom_status: s("\"50%\""),
        ..Default::default()
    };
    let c = apply_at_now(&inst, &history([]), &[os(NOW)], set);
    assert_eq!(c.instance.custom_status, s("\"50%\""));

    let c = apply_at_now(&inst, &history([]), &[os(NOW)], respond(vec![]));
    assert_eq!(c.instance.custom_status, s("\"old\""));
}

#[test]
fn trace_context_is_stored_when_set_and_kept_when_unset() {
    let tc = OrchestrationTraceContext {
        span_id: s("a1b2c3d4e5f60718"),
        span_start_time: Some(to_timestamp(EARLIER)),
    };
    let c = apply_at_now(
        &running(),
        &history([]),
        &[os(NOW)],
        Response {
            trace_context: Some(tc.clone()),
            ..Default::default()
        },
    );
    assert_eq!(c.instance.trace_context, Some(tc.clone()));

    let mut inst = running();
    inst.trace_context = Some(tc.clone());
    let c = apply_at_now(&inst, &history([]), &[os(NOW)], respond(vec![]));
    assert_eq!(c.instance.trace_context, Some(tc));
}

#[test]
fn history_appends_new_events_then_action_events_then_orchestrator_completed() {
    let h = history([task_scheduled(1)]);
    let c = apply_at_now(
        &running(),
        &h,
        &[os(NOW), task_completed(1), raised("go")],
        respond(vec![
            create_timer(3, NOW + 5_000_000),
            schedule_task(2, "Charge"),
            send_event(4, "other-7", "Hi", "1"),
        ]),
    );
    let kinds: Vec<(i32, &str)> = appended(&c).iter().map(|e| (e.event_id, events::kind_name(e))).collect();
    assert_eq!(
        kinds,
        [
            (-1, "OrchestratorStarted"),
            (-1, "TaskCompleted"),
            (-1, "EventRaised"),
            (3, "TimerCreated"),
            (2, "TaskScheduled"),
            (4, "EventSent"),
            (-1, "OrchestratorCompleted"),
        ]
    );
    assert_eq!(appended(&c).last(), Some(&oc(NOW)));
}

#[test]
fn rewind_replaces_the_history_and_wakes_the_orchestrator() {
    let mut inst = running(); // the RewindInstance RPC has set RUNNING; failure still recorded
    inst.output = s("stale");
    inst.failure_details = Some(events::failure("Boom", "failed"));
    inst.completed_at = Some(EARLIER);

    let mut new_start = started_event(None);
    new_start.orchestration_instance = Some(OrchestrationInstance {
        instance_id: ID.into(),
        execution_id: s("exec-2"),
    });
    let new_history = vec![
        os(EARLIER),
        event(EXTERNAL, EARLIER, EventType::ExecutionStarted(new_start)),
        child_created(1, "c-done"),
        child_completed(1),
        child_created(2, "c-failed"),
        os(NOW),
        rewound("fixed the bug"),
    ];
    let h = history([
        child_created(1, "c-done"),
        child_completed(1),
        child_created(2, "c-failed"),
        child_failed(2),
    ]);
    let c = apply_at_now(
        &inst,
        &h,
        &[os(NOW), rewound("fixed the bug")],
        respond(vec![rewind_action(new_history.clone())]),
    );

    assert_eq!(c.history, HistoryWrite::Replace(new_history));
    assert_eq!(c.instance.execution_id, "exec-2");
    assert_eq!(c.instance.status, S::Running);
    assert_eq!(c.instance.output, None);
    assert_eq!(c.instance.failure_details, None);
    assert_eq!(c.instance.completed_at, None);
    assert_eq!(c.messages, vec![message_to(ID, Some("exec-2"), os(NOW), NOW)]);
    assert!(c.activities.is_empty());
    assert!(c.children.is_empty());

    assert_eq!(c.rewinds.len(), 1, "only the unfinished child comes back: {:?}", c.rewinds);
    let r = &c.rewinds[0];
    assert_eq!(r.instance_id, "c-failed");
    assert_eq!(r.reason, s("fixed the bug"));
    assert_eq!(r.parent_execution_id, "exec-2");
    assert_eq!(r.recreate.instance.instance_id, "c-failed");
    assert_eq!(r.recreate.instance.name, "Ship");
    assert_eq!(r.recreate.instance.input, s("\"box\""));
    assert_eq!(r.recreate.instance.status, S::Pending);
    assert_eq!(
        started_of(&r.recreate.start).parent_instance,
        Some(ParentInstanceInfo {
            task_scheduled_id: 2,
            name: s(NAME),
            version: s("1.0"),
            orchestration_instance: Some(OrchestrationInstance {
                instance_id: ID.into(),
                execution_id: s("exec-2")
            }),
        })
    );
}

#[test]
fn rewind_without_an_execution_id_in_the_new_history_makes_one() {
    let mut new_start = started_event(None);
    new_start.orchestration_instance = Some(OrchestrationInstance {
        instance_id: ID.into(),
        execution_id: None,
    });
    let new_history = vec![
        os(EARLIER),
        event(EXTERNAL, EARLIER, EventType::ExecutionStarted(new_start)),
        rewound("r"),
    ];
    let c = apply_at_now(
        &running(),
        &history([]),
        &[os(NOW), rewound("r")],
        respond(vec![rewind_action(new_history)]),
    );
    assert_eq!(c.instance.execution_id, "new-exec-1");
    assert_eq!(c.messages[0].execution_id, s("new-exec-1"));
}

#[test]
fn send_entity_message_records_the_event_and_queues_it_for_the_entity() {
    let c = step(vec![], respond(vec![signal_entity(4), schedule_task(5, "Next")]));
    assert_eq!(c.instance.status, S::Running);
    let recorded = appended(&c)
        .iter()
        .find(|e| matches!(e.event_type, Some(EventType::EntityOperationSignaled(_))))
        .expect("the signal is recorded");
    assert_eq!(recorded.event_id, 4);
    assert!(matches!(&recorded.event_type, Some(EventType::EntityOperationSignaled(e)) if e.operation == "add"));
    assert_eq!(c.messages.len(), 1);
    assert_eq!(c.messages[0].instance_id, "@counter@c1");
    assert_eq!(c.messages[0].event.event_id, EXTERNAL);
    assert_eq!(c.activities.len(), 1, "later actions still apply");
}

fn lock_entities(id: i32, section: &str, set: &[&str]) -> OrchestratorAction {
    action(
        id,
        Action::SendEntityMessage(SendEntityMessageAction {
            entity_message_type: Some(EntityMessageType::EntityLockRequested(EntityLockRequestedEvent {
                critical_section_id: section.into(),
                lock_set: set.iter().map(|x| x.to_string()).collect(),
                position: 0,
                parent_instance_id: s(ID),
            })),
        }),
    )
}

#[test]
fn an_orchestration_that_ends_holding_locks_releases_them() {
    for end in [complete(9, S::Failed, None), continue_as_new(9, "1", None, vec![])] {
        let c = step(vec![], respond(vec![lock_entities(3, "cs-1", &["@a@1", "@b@2"]), end]));
        let mut released: Vec<&str> = c
            .messages
            .iter()
            .filter(|m| matches!(&m.event.event_type, Some(EventType::EntityUnlockSent(u)) if u.critical_section_id == "cs-1"))
            .map(|m| m.instance_id.as_str())
            .collect();
        released.sort();
        assert_eq!(released, vec!["@a@1", "@b@2"]);
    }
}

#[test]
fn a_terminated_orchestration_releases_its_locks() {
    let held = history([event(
        3,
        EARLIER,
        EventType::EntityLockRequested(EntityLockRequestedEvent {
            critical_section_id: "cs-1".into(),
            lock_set: vec!["@a@1".into()],
            position: 0,
            parent_instance_id: s(ID),
        }),
    )]);
    let new_events = vec![os(NOW), events::terminated(NOW, s("stop"), false)];
    let c = apply_at_now(&running(), &held, &new_events, respond(vec![]));
    assert_eq!(c.instance.status, S::Terminated);
    assert!(
        c.messages
            .iter()
            .any(|m| m.instance_id == "@a@1" && matches!(m.event.event_type, Some(EventType::EntityUnlockSent(_))))
    );
}

// ---------------------------------------------------------------------------------------------
// validate
// ---------------------------------------------------------------------------------------------

fn refused(actions: Vec<OrchestratorAction>) -> String {
    validate(&actions).expect_err("validate should refuse these actions")
}

fn assert_names(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error {err:?} should mention {p:?}");
    }
}

#[test]
fn validate_accepts_one_valid_action_of_each_kind() {
    let actions = vec![
        schedule_task(1, "Charge"),
        create_child(2, "ship-1", "Ship"),
        create_timer(3, NOW),
        send_event(4, "other-7", "Hi", "1"),
        terminate_other(5, "other-9", "stop", false),
        signal_entity(6),
        rewind_action(vec![]),
        complete(7, S::Completed, None),
        complete(8, S::Failed, None),
        complete(9, S::Terminated, None),
        continue_as_new(10, "1", None, vec![]),
    ];
    assert_eq!(validate(&actions), Ok(()));
    assert_eq!(validate(&[]), Ok(()));
}

#[test]
fn validate_refuses_an_action_without_a_type() {
    let err = refused(vec![
        schedule_task(1, "ok"),
        OrchestratorAction {
            id: 7,
            orchestrator_action_type: None,
        },
    ]);
    assert_names(&err, &["action 7", "no action type"]);
}

#[test]
fn validate_refuses_an_empty_task_name() {
    assert_names(&refused(vec![schedule_task(3, "")]), &["scheduleTask", "3", "empty name"]);
}

#[test]
fn validate_refuses_an_empty_sub_orchestration_name() {
    assert_names(
        &refused(vec![create_child(4, "c", "")]),
        &["createSubOrchestration", "4", "empty name"],
    );
}

#[test]
fn validate_refuses_a_timer_without_fire_at() {
    let err = refused(vec![action(5, Action::CreateTimer(CreateTimerAction { fire_at: None }))]);
    assert_names(&err, &["createTimer", "5", "fireAt"]);
}

#[test]
fn validate_refuses_a_malformed_fire_at() {
    for bad in [
        Timestamp {
            seconds: NOW / 1_000_000,
            nanos: 1_000_000_000,
        },
        Timestamp {
            seconds: NOW / 1_000_000,
            nanos: -1,
        },
        Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        },
    ] {
        let err = refused(vec![action(6, Action::CreateTimer(CreateTimerAction { fire_at: Some(bad) }))]);
        assert_names(&err, &["createTimer", "6"]);
    }
    let err = refused(vec![action(
        6,
        Action::CreateTimer(CreateTimerAction {
            fire_at: Some(Timestamp { seconds: 0, nanos: -5 }),
        }),
    )]);
    assert_names(&err, &["nanos"]);
}

#[test]
fn validate_refuses_send_event_without_a_target() {
    let no_instance = action(
        8,
        Action::SendEvent(SendEventAction {
            instance: None,
            name: "x".into(),
            data: None,
        }),
    );
    assert_names(&refused(vec![no_instance]), &["sendEvent", "8", "target"]);
    assert_names(&refused(vec![send_event(9, "", "x", "1")]), &["sendEvent", "9", "target"]);
}

#[test]
fn validate_refuses_terminate_without_an_instance_id() {
    assert_names(
        &refused(vec![terminate_other(10, "", "r", false)]),
        &["terminateOrchestration", "10"],
    );
}

#[test]
fn validate_refuses_completion_with_a_status_that_does_not_end_an_execution() {
    for status in [S::Running as i32, S::Pending as i32, S::Suspended as i32, 99] {
        let a = action(
            11,
            Action::CompleteOrchestration(CompleteOrchestrationAction {
                orchestration_status: status,
                ..Default::default()
            }),
        );
        let err = refused(vec![a]);
        assert_names(&err, &["completeOrchestration", "11", &format!("status {status}")]);
    }
}

// ---------------------------------------------------------------------------------------------
// new_instance
// ---------------------------------------------------------------------------------------------

fn spec() -> StartSpec {
    StartSpec {
        instance_id: "inv-1".into(),
        name: "Invoice".into(),
        version: s("1"),
        input: s("5"),
        execution_id: "e-1".into(),
        scheduled_start: None,
        tags: btags(&[("k", "v")]),
        parent: None,
        parent_trace_context: Some(trace("00-55555555555555555555555555555555-6666666666666666-01")),
    }
}

#[test]
fn new_instance_is_pending_with_a_first_priority_start_message() {
    let NewInstance { instance, start } = new_instance(spec(), NOW);
    assert_eq!(
        instance,
        Instance {
            instance_id: "inv-1".into(),
            name: "Invoice".into(),
            version: s("1"),
            execution_id: "e-1".into(),
            status: S::Pending,
            input: s("5"),
            output: None,
            custom_status: None,
            failure_details: None,
            created_at: NOW,
            updated_at: NOW,
            completed_at: None,
            scheduled_start_at: None,
            parent_instance_id: None,
            tags: btags(&[("k", "v")]),
            trace_context: None,
        }
    );
    let expected_start = ExecutionStartedEvent {
        name: "Invoice".into(),
        version: s("1"),
        input: s("5"),
        orchestration_instance: Some(OrchestrationInstance {
            instance_id: "inv-1".into(),
            execution_id: s("e-1"),
        }),
        parent_instance: None,
        scheduled_start_timestamp: None,
        parent_trace_context: Some(trace("00-55555555555555555555555555555555-6666666666666666-01")),
        orchestration_span_id: None,
        tags: tags(&[("k", "v")]),
    };
    assert_eq!(
        start,
        Message {
            instance_id: "inv-1".into(),
            execution_id: s("e-1"),
            event: event(EXTERNAL, NOW, EventType::ExecutionStarted(expected_start)),
            visible_at: NOW,
            priority: Message::FIRST,
        }
    );
}

#[test]
fn new_instance_with_scheduled_start_becomes_visible_then() {
    let at = NOW + 3_600_000_000;
    let NewInstance { instance, start } = new_instance(
        StartSpec {
            scheduled_start: Some(at),
            ..spec()
        },
        NOW,
    );
    assert_eq!(start.visible_at, at);
    assert_eq!(instance.scheduled_start_at, Some(at));
    assert_eq!(instance.status, S::Pending);
    assert_eq!(started_of(&start).scheduled_start_timestamp, Some(to_timestamp(at)));
}

#[test]
fn new_instance_with_scheduled_start_in_the_past_is_visible_now() {
    let NewInstance { start, .. } = new_instance(
        StartSpec {
            scheduled_start: Some(EARLIER),
            ..spec()
        },
        NOW,
    );
    assert_eq!(start.visible_at, NOW);
}

#[test]
fn new_instance_records_its_parent() {
    let NewInstance { instance, start } = new_instance(
        StartSpec {
            parent: Some(parent_info()),
            ..spec()
        },
        NOW,
    );
    assert_eq!(instance.parent_instance_id, s(PARENT));
    assert_eq!(started_of(&start).parent_instance, Some(parent_info()));
}

#[test]
fn retried_task_and_child_ids_earn_one_result_per_scheduling() {
    // SDK retry policies schedule the same id again after a failure and a retry timer.
    let past = history([
        task_scheduled(1),
        task_failed(1),
        timer_created(2),
        timer_fired(2),
        task_scheduled(1),
        child_created(3, "kid"),
        child_failed(3),
        child_created(3, "kid"),
    ]);
    let messages = inbox(vec![
        to_current(task_failed(1)),
        to_current(child_completed(3)),
        to_current(task_completed(1)),
    ]);
    let prepared = prepare(&running(), &past, &messages, NOW);
    // The second result of id 1 has no scheduling left to match, so only two events pass.
    assert_eq!(prepared, run(vec![os(NOW), task_failed(1), child_completed(3)], vec![1, 2, 3]));
}

#[test]
fn results_answer_schedulings_in_order() {
    let mut s: Ledger<i64> = Ledger::default();
    assert_eq!(s.schedule(1, 10), 0);
    assert_eq!(s.answer(1), Some((0, &10)));
    assert_eq!(s.schedule(1, 20), 1);
    assert_eq!(s.answer(1), Some((1, &20)));
    assert_eq!(s.answer(1), None);
    assert_eq!(s.answer(2), None);
}

#[test]
fn a_restart_starts_the_first_executions_input_again() {
    // After a continue-as-new the instance row carries the latest input; the restart takes
    // the one the instance was first started with.
    let mut old = instance(S::Completed);
    old.input = s("\"later\"");
    let spec = restart_spec(old.clone(), &history_of(started(), []), "new-id".into(), "exec-9".into());
    assert_eq!(spec.input, s("\"order\""));
    assert_eq!((spec.instance_id.as_str(), spec.execution_id.as_str()), ("new-id", "exec-9"));
    assert_eq!((spec.name.as_str(), spec.version.as_deref()), (NAME, Some("1.0")));
    assert_eq!(spec.tags, old.tags);
    assert!(spec.parent.is_none() && spec.scheduled_start.is_none());
    // Without a recorded start (a purged history), the instance's own input.
    let spec = restart_spec(old, &[], ID.into(), "exec-9".into());
    assert_eq!(spec.input, s("\"later\""));
}

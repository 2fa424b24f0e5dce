//! Rerunning a finished instance from one of its events (Dapr's `RerunWorkflowFromEvent`): a
//! new instance starts with the source's history up to that event, and the activity or
//! sub-orchestration the event recorded runs again, optionally with a new input.
//!
//! The new history keeps every event before the target, in order, except work that had not
//! answered by then: an activity, timer or sub-orchestration whose result comes later in the
//! source (or never) is moved after the prefix and issued again, because the new instance
//! will never receive the source's result. The target follows last, marked with the source's id. Its
//! worker then replays the prefix and waits for the reissued work, as after any other turn.

use super::*;

/// Tag of a rerun `TaskScheduled` or `SubOrchestrationInstanceCreated` event naming the
/// instance it was rerun from; the Dapr dialect shows it as `rerunParentInstanceInfo`.
pub const RERUN_PARENT: &str = "dapr.rerunParentInstanceId";

/// What a client asked to rerun.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RerunRequest {
    /// The `eventId` of the `TaskScheduled` or `SubOrchestrationInstanceCreated` event.
    pub event_id: i32,
    pub new_instance_id: String,
    /// `Some(input)` replaces the event's input (`Some(None)` clears it).
    pub input: Option<Option<String>>,
    /// The id of the rerun sub-orchestration (by default `<new id>:<event id as 4 hex digits>`).
    pub new_child_instance_id: Option<String>,
}

/// Why a rerun is refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum RerunError {
    #[error("instance is {}; only a finished instance can be rerun", .0.as_str_name())]
    NotFinished(OrchestrationStatus),
    #[error("instance is a sub-orchestration; rerun its root instead")]
    Child,
    #[error("instance has no history event with id {0}")]
    NoSuchEvent(i32),
    #[error("history event {0} is {1}, not an event that can be rerun (an activity or sub-orchestration)")]
    NotRerunnable(i32, &'static str),
    #[error("history event {0} schedules an activity; a new child workflow instance id applies only to sub-orchestrations")]
    ChildIdOnActivity(i32),
}

/// Builds the new instance of a rerun as a commit the store creates whole: the instance row,
/// its history, and the reissued activities, timers and sub-orchestrations.
pub fn rerun(
    source: &Instance,
    history: &[HistoryEvent],
    request: &RerunRequest,
    now: Micros,
    new_id: &mut dyn FnMut() -> String,
) -> Result<Commit, RerunError> {
    if !source.is_terminal() {
        return Err(RerunError::NotFinished(source.status));
    }
    // A rerun child would have a parent that never asked for it and never hears its result.
    if source.parent_instance_id.is_some() {
        return Err(RerunError::Child);
    }
    let execution_id = new_id();
    let instance = Instance {
        instance_id: request.new_instance_id.clone(),
        execution_id: execution_id.clone(),
        status: OrchestrationStatus::Running,
        output: None,
        custom_status: None,
        failure_details: None,
        created_at: now,
        updated_at: now,
        completed_at: None,
        scheduled_start_at: None,
        parent_instance_id: None,
        trace_context: None,
        ..source.clone()
    };

    let mut kept = vec![];
    // Work issued before the target with no result yet: event id -> position in `kept`.
    let mut open: BTreeMap<i32, usize> = BTreeMap::new();
    let mut target = None;
    for e in history {
        if e.event_id == request.event_id {
            target = Some(e.clone());
            break;
        }
        let answered = match &e.event_type {
            Some(EventType::TaskScheduled(_) | EventType::TimerCreated(_) | EventType::SubOrchestrationInstanceCreated(_)) => {
                open.insert(e.event_id, kept.len());
                None
            }
            Some(EventType::TaskCompleted(r)) => Some(r.task_scheduled_id),
            Some(EventType::TaskFailed(r)) => Some(r.task_scheduled_id),
            Some(EventType::TimerFired(r)) => Some(r.timer_id),
            Some(EventType::SubOrchestrationInstanceCompleted(r)) => Some(r.task_scheduled_id),
            Some(EventType::SubOrchestrationInstanceFailed(r)) => Some(r.task_scheduled_id),
            _ => None,
        };
        if let Some(id) = answered {
            open.remove(&id);
        }
        let mut e = e.clone();
        if let Some(EventType::ExecutionStarted(s)) = &mut e.event_type {
            s.orchestration_instance = Some(OrchestrationInstance {
                instance_id: instance.instance_id.clone(),
                execution_id: Some(execution_id.clone()),
            });
            s.scheduled_start_timestamp = None;
        }
        kept.push(e);
    }
    // The unanswered work leaves the prefix, to be issued again after it.
    let unanswered: Vec<HistoryEvent> = open.values().map(|&at| kept[at].clone()).collect();
    let positions: HashSet<usize> = open.into_values().collect();
    let kept: Vec<HistoryEvent> = kept
        .into_iter()
        .enumerate()
        .filter(|(at, _)| !positions.contains(at))
        .map(|(_, e)| e)
        .collect();
    let target = target.ok_or(RerunError::NoSuchEvent(request.event_id))?;

    let mut step = Step::new(&instance, &kept, &[], now);
    for mut e in unanswered {
        let id = e.event_id;
        // A child the source left running is the source's; the new instance starts its own.
        if let Some(EventType::SubOrchestrationInstanceCreated(c)) = &mut e.event_type {
            c.instance_id = format!("{}:{id:04x}", instance.instance_id);
        }
        reissue(&mut step, e, new_id);
    }
    let mut target = target;
    match &mut target.event_type {
        Some(EventType::TaskScheduled(t)) => {
            if request.new_child_instance_id.is_some() {
                return Err(RerunError::ChildIdOnActivity(target.event_id));
            }
            if let Some(input) = &request.input {
                t.input = input.clone();
            }
        }
        Some(EventType::SubOrchestrationInstanceCreated(c)) => {
            if let Some(input) = &request.input {
                c.input = input.clone();
            }
            c.instance_id = request
                .new_child_instance_id
                .clone()
                .unwrap_or_else(|| format!("{}:{:04x}", instance.instance_id, target.event_id));
        }
        other => return Err(RerunError::NotRerunnable(target.event_id, kind_name(other))),
    }
    reissue(&mut step, target, new_id);
    let source_id = source.instance_id.clone();
    match step.appended.last_mut().and_then(|e| e.event_type.as_mut()) {
        Some(EventType::TaskScheduled(t)) => _ = t.tags.insert(RERUN_PARENT.into(), source_id),
        Some(EventType::SubOrchestrationInstanceCreated(c)) => _ = c.tags.insert(RERUN_PARENT.into(), source_id),
        _ => {}
    }

    let Step {
        instance,
        mut appended,
        messages,
        activities,
        children,
        ..
    } = step;
    let mut events = kept;
    events.append(&mut appended);
    events.push(events::orchestrator_completed(now));
    Ok(Commit {
        instance,
        history: HistoryWrite::Replace(events),
        messages,
        activities,
        children,
        rewinds: vec![],
    })
}

/// Issues recorded work again for the new instance, exactly as if its orchestrator had just
/// asked for it: the event is recorded anew and the activity, timer or child is queued.
fn reissue(step: &mut Step<'_>, e: HistoryEvent, new_id: &mut dyn FnMut() -> String) {
    let id = e.event_id;
    match e.event_type {
        // The marker of an earlier rerun is not this one's; the target gets its own below.
        Some(EventType::TaskScheduled(mut t)) => step.schedule_task(
            id,
            ScheduleTaskAction {
                name: t.name,
                version: t.version,
                input: t.input,
                tags: {
                    t.tags.remove(RERUN_PARENT);
                    t.tags
                },
                parent_trace_context: t.parent_trace_context,
            },
        ),
        Some(EventType::TimerCreated(t)) => step.create_timer(id, CreateTimerAction { fire_at: t.fire_at }),
        Some(EventType::SubOrchestrationInstanceCreated(mut c)) => step.create_child(
            id,
            CreateSubOrchestrationAction {
                instance_id: c.instance_id,
                name: c.name,
                version: c.version,
                input: c.input,
                parent_trace_context: c.parent_trace_context,
                tags: {
                    c.tags.remove(RERUN_PARENT);
                    c.tags
                },
            },
            new_id,
        ),
        _ => {}
    }
}

fn kind_name(kind: &Option<EventType>) -> &'static str {
    match kind {
        Some(EventType::TimerCreated(_)) => "a timer",
        Some(EventType::EventSent(_)) => "an event sent",
        Some(EventType::ExecutionCompleted(_)) => "the completion",
        Some(_) => "not an activity or sub-orchestration",
        None => "an event of no kind",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Micros = 1_700_000_000_000_000;
    const THEN: Micros = NOW - 60_000_000;
    const SRC: &str = "src";
    const NEW: &str = "again";

    fn finished() -> Instance {
        Instance {
            instance_id: SRC.into(),
            name: "Order".into(),
            version: None,
            execution_id: "x1".into(),
            status: OrchestrationStatus::Completed,
            input: Some("\"in\"".into()),
            output: Some("\"out\"".into()),
            custom_status: Some("\"busy\"".into()),
            failure_details: None,
            created_at: THEN,
            updated_at: THEN,
            completed_at: Some(THEN),
            scheduled_start_at: None,
            parent_instance_id: None,
            tags: BTreeMap::new(),
            trace_context: None,
        }
    }

    fn started() -> HistoryEvent {
        event(
            EXTERNAL,
            THEN,
            EventType::ExecutionStarted(ExecutionStartedEvent {
                name: "Order".into(),
                input: Some("\"in\"".into()),
                orchestration_instance: Some(OrchestrationInstance {
                    instance_id: SRC.into(),
                    execution_id: Some("x1".into()),
                }),
                ..Default::default()
            }),
        )
    }

    fn scheduled(id: i32, name: &str, input: &str) -> HistoryEvent {
        event(
            id,
            THEN,
            EventType::TaskScheduled(TaskScheduledEvent {
                name: name.into(),
                input: Some(input.into()),
                ..Default::default()
            }),
        )
    }

    fn completed(id: i32, result: &str) -> HistoryEvent {
        events::task_result(THEN, id, Some(result.into()), None)
    }

    fn child(id: i32, instance_id: &str) -> HistoryEvent {
        event(
            id,
            THEN,
            EventType::SubOrchestrationInstanceCreated(SubOrchestrationInstanceCreatedEvent {
                instance_id: instance_id.into(),
                name: "Child".into(),
                input: Some("\"c\"".into()),
                ..Default::default()
            }),
        )
    }

    fn timer(id: i32, fire_at: Micros) -> HistoryEvent {
        event(
            id,
            THEN,
            EventType::TimerCreated(TimerCreatedEvent {
                fire_at: Some(time::to_timestamp(fire_at)),
            }),
        )
    }

    fn turn() -> [HistoryEvent; 2] {
        [events::orchestrator_started(THEN), events::orchestrator_completed(THEN)]
    }

    /// Three sequential activities (0, 1, 2), then the completion (3).
    fn sequence() -> Vec<HistoryEvent> {
        let [os, oc] = turn();
        let done = event(
            3,
            THEN,
            EventType::ExecutionCompleted(ExecutionCompletedEvent {
                orchestration_status: OrchestrationStatus::Completed as i32,
                result: Some("\"out\"".into()),
                failure_details: None,
            }),
        );
        vec![
            os.clone(),
            started(),
            scheduled(0, "A", "\"a\""),
            oc.clone(),
            os.clone(),
            completed(0, "\"ra\""),
            scheduled(1, "B", "\"b\""),
            oc.clone(),
            os.clone(),
            completed(1, "\"rb\""),
            scheduled(2, "C", "\"c\""),
            oc.clone(),
            os,
            completed(2, "\"rc\""),
            done,
            oc,
        ]
    }

    fn request(event_id: i32) -> RerunRequest {
        RerunRequest {
            event_id,
            new_instance_id: NEW.into(),
            ..Default::default()
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("x-new-{n}")
        }
    }

    fn run(history: &[HistoryEvent], r: &RerunRequest) -> Result<Commit, RerunError> {
        rerun(&finished(), history, r, NOW, &mut ids())
    }

    fn replaced(c: &Commit) -> &[HistoryEvent] {
        match &c.history {
            HistoryWrite::Replace(events) => events,
            other => panic!("a rerun writes the whole history, got {other:?}"),
        }
    }

    #[test]
    fn rerun_from_an_activity_keeps_the_prefix_and_schedules_the_activity_again() {
        let history = sequence();
        let c = run(&history, &request(1)).unwrap();
        let events = replaced(&c);
        // Everything before TaskScheduled(1), then TaskScheduled(1) reissued, then the turn ends.
        let mut prefix = history[..6].to_vec();
        prefix[1] = started_for_new();
        assert_eq!(&events[..6], &prefix[..]);
        let Some(EventType::TaskScheduled(t)) = &events[6].event_type else {
            panic!("the target comes after the prefix: {:?}", events[6]);
        };
        assert_eq!(events[6].event_id, 1);
        assert_eq!(t.name, "B");
        assert_eq!(t.input.as_deref(), Some("\"b\""), "the original input by default");
        assert_eq!(t.tags.get(RERUN_PARENT).map(String::as_str), Some(SRC));
        assert_eq!(events[6].timestamp, Some(time::to_timestamp(NOW)));
        assert_eq!(events.len(), 8);
        assert!(matches!(events[7].event_type, Some(EventType::OrchestratorCompleted(_))));

        assert_eq!(c.activities.len(), 1);
        let a = &c.activities[0];
        assert_eq!((a.instance_id.as_str(), a.execution_id.as_str()), (NEW, "x-new-1"));
        assert_eq!((a.request.name.as_str(), a.request.task_id), ("B", 1));
        assert_eq!(a.request.input.as_deref(), Some("\"b\""));
        assert!(
            !a.request.tags.contains_key(RERUN_PARENT),
            "the marker is the event's, not the activity's"
        );
        assert!(c.messages.is_empty() && c.children.is_empty());
    }

    fn started_for_new() -> HistoryEvent {
        let mut e = started();
        if let Some(EventType::ExecutionStarted(s)) = &mut e.event_type {
            s.orchestration_instance = Some(OrchestrationInstance {
                instance_id: NEW.into(),
                execution_id: Some("x-new-1".into()),
            });
        }
        e
    }

    #[test]
    fn the_new_instance_is_running_under_its_own_id_and_execution() {
        let c = run(&sequence(), &request(0)).unwrap();
        let i = &c.instance;
        assert_eq!((i.instance_id.as_str(), i.execution_id.as_str()), (NEW, "x-new-1"));
        assert_eq!(i.status, OrchestrationStatus::Running);
        assert_eq!((i.name.as_str(), i.input.as_deref()), ("Order", Some("\"in\"")));
        assert_eq!((i.output.clone(), i.custom_status.clone(), i.completed_at), (None, None, None));
        assert_eq!((i.created_at, i.updated_at), (NOW, NOW));
        assert_eq!(replaced(&c)[1], started_for_new(), "ExecutionStarted names the new instance");
    }

    #[test]
    fn overwrite_input_replaces_or_clears_the_input() {
        let mut r = request(2);
        r.input = Some(Some("\"new\"".into()));
        let c = run(&sequence(), &r).unwrap();
        assert_eq!(c.activities[0].request.input.as_deref(), Some("\"new\""));
        let Some(EventType::TaskScheduled(t)) = &replaced(&c).iter().rev().nth(1).unwrap().event_type else {
            panic!("target last")
        };
        assert_eq!(t.input.as_deref(), Some("\"new\""));

        r.input = Some(None);
        let c = run(&sequence(), &r).unwrap();
        assert_eq!(c.activities[0].request.input, None);
    }

    #[test]
    fn work_without_a_result_before_the_target_is_issued_again() {
        // A fan-out: 0, 1 and a timer 2 issued together; 1 answered, then the target 5 and
        // child 4 issued after it. 0 answered only after the target, the timer never.
        let [os, oc] = turn();
        let history = vec![
            os.clone(),
            started(),
            scheduled(0, "A", "\"a\""),
            scheduled(1, "B", "\"b\""),
            timer(2, THEN + 5),
            oc.clone(),
            os.clone(),
            completed(1, "\"rb\""),
            child(4, "src:0004"),
            scheduled(5, "E", "\"e\""),
            oc.clone(),
            os,
            completed(0, "\"ra\""),
            oc,
        ];
        let c = run(&history, &request(5)).unwrap();
        let events = replaced(&c);
        let ids: Vec<i32> = events.iter().map(|e| e.event_id).collect();
        // Prefix in order without the unanswered 0, 2 and 4: OS, ES, TS1, OC, OS, TC1; then
        // 0, 2, 4 reissued in id order; the target last; the turn's end.
        assert_eq!(ids, vec![-1, -1, 1, -1, -1, -1, 0, 2, 4, 5, -1]);
        let names: Vec<&str> = c.activities.iter().map(|a| a.request.name.as_str()).collect();
        assert_eq!(names, ["A", "E"]);
        assert_eq!(c.messages.len(), 1, "the timer fires for the new instance");
        let m = &c.messages[0];
        assert_eq!(
            (m.instance_id.as_str(), m.execution_id.as_deref(), m.visible_at),
            (NEW, Some("x-new-1"), THEN + 5)
        );
        assert!(matches!(&m.event.event_type, Some(EventType::TimerFired(f)) if f.timer_id == 2));
        assert_eq!(c.children.len(), 1);
        assert_eq!(
            c.children[0].child.instance.instance_id, "again:0004",
            "the child is the new instance's own"
        );
        assert_eq!(c.children[0].child.instance.parent_instance_id.as_deref(), Some(NEW));
        let Some(EventType::SubOrchestrationInstanceCreated(created)) = &events[8].event_type else {
            panic!()
        };
        assert_eq!(created.instance_id, "again:0004");
        assert!(!created.tags.contains_key(RERUN_PARENT), "only the target carries the marker");
    }

    #[test]
    fn rerun_from_a_sub_orchestration_starts_it_again() {
        let [os, oc] = turn();
        let history = vec![os, started(), child(0, "src:0000"), oc];
        let c = run(&history, &request(0)).unwrap();
        assert_eq!(c.children.len(), 1);
        let child = &c.children[0].child;
        assert_eq!(child.instance.instance_id, "again:0000");
        assert_eq!(child.instance.input.as_deref(), Some("\"c\""));
        let Some(EventType::SubOrchestrationInstanceCreated(created)) = &replaced(&c)[2].event_type else {
            panic!()
        };
        assert_eq!(created.tags.get(RERUN_PARENT).map(String::as_str), Some(SRC));

        let mut r = request(0);
        r.new_child_instance_id = Some("mine".into());
        r.input = Some(Some("\"d\"".into()));
        let c = run(&history, &r).unwrap();
        assert_eq!(c.children[0].child.instance.instance_id, "mine");
        assert_eq!(c.children[0].child.instance.input.as_deref(), Some("\"d\""));
    }

    #[test]
    fn refusals() {
        let history = sequence();
        let mut live = finished();
        live.status = OrchestrationStatus::Running;
        assert_eq!(
            rerun(&live, &history, &request(0), NOW, &mut ids()),
            Err(RerunError::NotFinished(OrchestrationStatus::Running))
        );
        let mut child_instance = finished();
        child_instance.parent_instance_id = Some("p".into());
        assert_eq!(
            rerun(&child_instance, &history, &request(0), NOW, &mut ids()),
            Err(RerunError::Child)
        );
        assert_eq!(run(&history, &request(9)), Err(RerunError::NoSuchEvent(9)));
        assert_eq!(run(&history, &request(3)), Err(RerunError::NotRerunnable(3, "the completion")));
        let [os, oc] = turn();
        let timers = vec![os, started(), timer(0, THEN), oc];
        assert_eq!(run(&timers, &request(0)), Err(RerunError::NotRerunnable(0, "a timer")));
        let mut r = request(1);
        r.new_child_instance_id = Some("c".into());
        assert_eq!(run(&history, &r), Err(RerunError::ChildIdOnActivity(1)));
    }
}

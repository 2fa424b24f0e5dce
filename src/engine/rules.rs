//! The Durable Task rules a store transaction applies to what it has just read: whether a
//! message is delivered, whether an instance id is free, whether an instance may be rewound,
//! what a purge removes. Only the transaction can read the current rows (another sidecar may
//! have changed them since the step was decided), so these take those rows and decide; the
//! store then writes what they say.

use crate::model::{ChildRewind, Instance, Message, TERMINAL, is_terminal};
use crate::proto::history_event::EventType;
use crate::proto::{HistoryEvent, OrchestrationStatus};
use crate::time::Micros;

/// What becomes of a message sent to an orchestration instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Queue it. `start_now`: the target is waiting for its scheduled start and the message
    /// terminates it, so the start becomes due now (terminating a pending instance never
    /// waits for its start time).
    Queue { start_now: bool },
    /// No such instance: dropped.
    Unknown,
    /// The instance has finished: dropped.
    Finished(OrchestrationStatus),
    /// The message is bound to an execution that has since been replaced: dropped.
    Replaced,
}

/// Decides a delivery from the target's current status and execution (`None`: no such
/// instance).
pub fn delivery(target: Option<(OrchestrationStatus, &str)>, m: &Message) -> Target {
    let Some((status, execution)) = target else {
        return Target::Unknown;
    };
    if is_terminal(status) {
        return Target::Finished(status);
    }
    if m.execution_id.as_deref().is_some_and(|e| e != execution) {
        return Target::Replaced;
    }
    let terminates = matches!(m.event.event_type, Some(EventType::ExecutionTerminated(_)));
    Target::Queue {
        start_now: terminates && status == OrchestrationStatus::Pending,
    }
}

/// Whether an instance id can be given to a new instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Free,
    /// Held by an instance in a replaceable status: it is deleted first.
    Replace,
    /// Held by an instance in this status, which may not be replaced.
    Taken(OrchestrationStatus),
}

/// Decides an id from the status of the instance holding it (`None`: nobody) and the statuses
/// the creator may replace.
pub fn slot(existing: Option<OrchestrationStatus>, replaceable: &[OrchestrationStatus]) -> Slot {
    match existing {
        None => Slot::Free,
        Some(s) if replaceable.contains(&s) => Slot::Replace,
        Some(s) => Slot::Taken(s),
    }
}

/// A sub-orchestration's (or an entity-started orchestration's) id: a finished instance is
/// replaced, a live one keeps it.
pub fn child_slot(existing: Option<OrchestrationStatus>) -> Slot {
    slot(existing, &TERMINAL)
}

/// Rewinding an instance: only a failed one may be, and then the rewind event is queued for
/// its current execution. `Err` carries the status that refuses it.
pub fn rewind(instance: &Instance, event: HistoryEvent, now: Micros) -> Result<Message, OrchestrationStatus> {
    if instance.status != OrchestrationStatus::Failed {
        return Err(instance.status);
    }
    Ok(Message {
        instance_id: instance.instance_id.clone(),
        execution_id: Some(instance.execution_id.clone()),
        event,
        visible_at: now,
        priority: Message::NORMAL,
    })
}

/// The ExecutionRewound event a parent's rewind sends to one of its sub-orchestrations.
pub fn child_rewound(r: &ChildRewind, now: Micros) -> HistoryEvent {
    super::events::rewound(now, r.reason.clone(), Some(r.parent_execution_id.clone()))
}

/// What a purge does to one instance it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeStep {
    /// Delete it; `children`: read its history for sub-orchestrations to purge too.
    Delete { children: bool },
    /// A sub-orchestration still running: left alone.
    Keep,
    /// The instance the purge was asked for has not finished: nothing is purged.
    Refuse(OrchestrationStatus),
}

/// Decides one instance of a purge: only finished instances are deleted; `root` says it is
/// the instance the purge was asked for (before anything was deleted).
pub fn purge_step(status: OrchestrationStatus, root: bool, recursive: bool) -> PurgeStep {
    match (is_terminal(status), root) {
        (true, _) => PurgeStep::Delete { children: recursive },
        (false, true) => PurgeStep::Refuse(status),
        (false, false) => PurgeStep::Keep,
    }
}

/// The instances a recursive purge goes on to, from a purged instance's history: the
/// sub-orchestrations it created.
pub fn purge_children(history: &[HistoryEvent]) -> Vec<String> {
    super::sub_orchestrations(history)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::events;
    use crate::proto::*;

    use OrchestrationStatus as S;

    fn message(execution: Option<&str>, kind: EventType) -> Message {
        Message {
            instance_id: "a".into(),
            execution_id: execution.map(str::to_string),
            event: HistoryEvent {
                event_id: -1,
                timestamp: None,
                event_type: Some(kind),
            },
            visible_at: 5,
            priority: Message::NORMAL,
        }
    }

    fn raised() -> EventType {
        EventType::EventRaised(EventRaisedEvent::default())
    }

    fn terminate() -> EventType {
        EventType::ExecutionTerminated(ExecutionTerminatedEvent::default())
    }

    #[test]
    fn messages_reach_only_live_current_executions() {
        let m = message(None, raised());
        assert_eq!(delivery(None, &m), Target::Unknown);
        for s in TERMINAL {
            assert_eq!(delivery(Some((s, "e1")), &m), Target::Finished(s));
        }
        for s in [S::Running, S::Pending, S::Suspended] {
            assert_eq!(delivery(Some((s, "e1")), &m), Target::Queue { start_now: false });
        }
        let bound = message(Some("e1"), raised());
        assert_eq!(delivery(Some((S::Running, "e1")), &bound), Target::Queue { start_now: false });
        assert_eq!(delivery(Some((S::Running, "e2")), &bound), Target::Replaced);
    }

    #[test]
    fn a_terminate_makes_only_a_pending_start_due() {
        let t = message(None, terminate());
        assert_eq!(delivery(Some((S::Pending, "e1")), &t), Target::Queue { start_now: true });
        assert_eq!(delivery(Some((S::Running, "e1")), &t), Target::Queue { start_now: false });
        assert_eq!(delivery(Some((S::Suspended, "e1")), &t), Target::Queue { start_now: false });
        assert_eq!(delivery(Some((S::Completed, "e1")), &t), Target::Finished(S::Completed));
    }

    #[test]
    fn ids_are_free_replaceable_or_taken() {
        assert_eq!(slot(None, &[]), Slot::Free);
        assert_eq!(slot(Some(S::Completed), &[]), Slot::Taken(S::Completed));
        assert_eq!(slot(Some(S::Completed), &[S::Completed]), Slot::Replace);
        assert_eq!(slot(Some(S::Running), &[S::Completed]), Slot::Taken(S::Running));
        assert_eq!(slot(Some(S::Running), &[S::Running, S::Terminated]), Slot::Replace);
    }

    #[test]
    fn a_child_replaces_a_finished_instance_but_not_a_live_one() {
        assert_eq!(child_slot(None), Slot::Free);
        for s in TERMINAL {
            assert_eq!(child_slot(Some(s)), Slot::Replace);
        }
        for s in [S::Running, S::Pending, S::Suspended, S::ContinuedAsNew] {
            assert_eq!(child_slot(Some(s)), Slot::Taken(s));
        }
    }

    fn instance(status: OrchestrationStatus) -> Instance {
        Instance {
            instance_id: "a".into(),
            name: "o".into(),
            version: None,
            execution_id: "e1".into(),
            status,
            input: None,
            output: Some("out".into()),
            custom_status: None,
            failure_details: None,
            created_at: 1,
            updated_at: 2,
            completed_at: Some(2),
            scheduled_start_at: None,
            parent_instance_id: None,
            tags: Default::default(),
            trace_context: None,
        }
    }

    #[test]
    fn only_a_failed_instance_is_rewound_on_its_current_execution() {
        let event = events::rewound(9, Some("why".into()), None);
        let m = rewind(&instance(S::Failed), event.clone(), 9).unwrap();
        assert_eq!(m.instance_id, "a");
        assert_eq!(m.execution_id.as_deref(), Some("e1"));
        assert_eq!(m.event, event);
        assert_eq!(m.visible_at, 9);
        for s in [S::Running, S::Completed, S::Terminated, S::Pending, S::Suspended] {
            assert_eq!(rewind(&instance(s), event.clone(), 9), Err(s));
        }
    }

    #[test]
    fn a_rewound_child_hears_its_parents_execution_and_reason() {
        let r = ChildRewind {
            instance_id: "c".into(),
            reason: Some("retry".into()),
            parent_execution_id: "p1".into(),
            recreate: crate::model::NewInstance {
                instance: instance(S::Pending),
                start: message(None, raised()),
            },
        };
        let Some(EventType::ExecutionRewound(e)) = child_rewound(&r, 7).event_type else {
            panic!("a rewind event")
        };
        assert_eq!(e.reason.as_deref(), Some("retry"));
        assert_eq!(e.parent_execution_id.as_deref(), Some("p1"));
    }

    #[test]
    fn a_purge_deletes_finished_instances_and_leaves_running_children() {
        assert_eq!(purge_step(S::Completed, true, false), PurgeStep::Delete { children: false });
        assert_eq!(purge_step(S::Failed, false, true), PurgeStep::Delete { children: true });
        assert_eq!(purge_step(S::Running, true, true), PurgeStep::Refuse(S::Running));
        assert_eq!(purge_step(S::Running, false, true), PurgeStep::Keep);
        assert_eq!(purge_step(S::Pending, false, true), PurgeStep::Keep);
    }

    #[test]
    fn a_recursive_purge_follows_created_sub_orchestrations() {
        let created = |id: &str| HistoryEvent {
            event_type: Some(EventType::SubOrchestrationInstanceCreated(SubOrchestrationInstanceCreatedEvent {
                instance_id: id.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let other = message(None, raised()).event;
        let children = purge_children(&[created("c1"), other, created("c2")]);
        assert_eq!(children, ["c1", "c2"]);
    }
}

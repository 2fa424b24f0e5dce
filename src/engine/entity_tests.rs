//! Unit tests of the entity rules: ids, lock ordering, lock-holder-only delivery, release,
//! per-sender order, batch results (partial batches, failures, signals and starts).

use super::entities::*;
use super::events::{EXTERNAL, event};
use crate::model::{Entity, EntityLock, Message};
use crate::proto::history_event::EventType;
use crate::proto::send_entity_message_action::EntityMessageType;
use crate::proto::*;
use crate::time::{Millis, to_timestamp};

const NOW: Millis = 1_700_000_000_000;
const E: &str = "@counter@c1";

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn entity(lock: Option<(&str, &str)>) -> Entity {
    Entity {
        instance_id: E.into(),
        state: s("5"),
        lock: lock.map(|(owner, section)| EntityLock {
            owner: owner.into(),
            critical_section_id: section.into(),
        }),
        last_modified: NOW - 1000,
    }
}

fn signaled(op: &str) -> HistoryEvent {
    event(
        EXTERNAL,
        NOW,
        EventType::EntityOperationSignaled(EntityOperationSignaledEvent {
            request_id: format!("req-{op}"),
            operation: op.into(),
            target_instance_id: s(E),
            ..Default::default()
        }),
    )
}

fn called(op: &str, from: &str) -> HistoryEvent {
    event(
        EXTERNAL,
        NOW,
        EventType::EntityOperationCalled(EntityOperationCalledEvent {
            request_id: format!("req-{op}"),
            operation: op.into(),
            parent_instance_id: s(from),
            parent_execution_id: s(&format!("{from}-exec")),
            target_instance_id: s(E),
            ..Default::default()
        }),
    )
}

fn lock_request(section: &str, from: &str, set: &[&str], position: i32) -> HistoryEvent {
    event(
        EXTERNAL,
        NOW,
        EventType::EntityLockRequested(EntityLockRequestedEvent {
            critical_section_id: section.into(),
            lock_set: set.iter().map(|x| x.to_string()).collect(),
            position,
            parent_instance_id: s(from),
        }),
    )
}

fn unlock(section: &str, from: &str) -> HistoryEvent {
    event(
        EXTERNAL,
        NOW,
        EventType::EntityUnlockSent(EntityUnlockSentEvent {
            critical_section_id: section.into(),
            parent_instance_id: s(from),
            target_instance_id: s(E),
        }),
    )
}

fn queue(events: Vec<HistoryEvent>) -> Vec<(i64, HistoryEvent)> {
    events.into_iter().enumerate().map(|(i, e)| (i as i64 + 1, e)).collect()
}

fn op_rows(p: &Plan) -> Vec<i64> {
    p.operations.iter().map(|(id, _)| *id).collect()
}

fn success(result: &str) -> OperationResult {
    OperationResult {
        result_type: Some(operation_result::ResultType::Success(OperationResultSuccess {
            result: s(result),
            ..Default::default()
        })),
    }
}

fn failed(message: &str) -> OperationResult {
    OperationResult {
        result_type: Some(operation_result::ResultType::Failure(OperationResultFailure {
            failure_details: Some(TaskFailureDetails {
                error_type: "ValueError".into(),
                error_message: message.into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

fn ids() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("id-{n}")
    }
}

#[test]
fn ids_lower_case_the_name_and_keep_the_key() {
    assert_eq!(normalize_id("@Counter@MyKey"), Ok("@counter@MyKey".into()));
    assert_eq!(normalize_id("@a@b@c"), Ok("@a@b@c".into()));
    assert_eq!(normalize_id("@a@"), Ok("@a@".into()));
    assert!(normalize_id("counter@x").is_err());
    assert!(normalize_id("@counter").is_err());
    assert!(normalize_id("@@x").is_err());
    assert_eq!(name_of("@counter@x"), "counter");
}

#[test]
fn an_unlocked_entity_runs_everything_in_order() {
    let q = queue(vec![signaled("a"), called("b", "o1"), signaled("c")]);
    let p = plan(&entity(None), &q, NOW);
    assert_eq!(op_rows(&p), vec![1, 2, 3]);
    assert!(p.deferred.is_empty() && p.handled.is_empty() && p.lock.is_none());
}

#[test]
fn a_locked_entity_runs_only_the_holders_calls() {
    let q = queue(vec![signaled("a"), called("b", "other"), called("c", "holder")]);
    let p = plan(&entity(Some(("holder", "cs1"))), &q, NOW);
    assert_eq!(op_rows(&p), vec![3]);
    assert_eq!(p.deferred, vec![1, 2]);
    assert_eq!(p.lock.as_ref().map(|l| l.owner.as_str()), Some("holder"));
}

#[test]
fn a_release_lets_deferred_messages_run_oldest_first() {
    let q = queue(vec![signaled("a"), called("b", "holder"), unlock("cs1", "holder"), signaled("c")]);
    let p = plan(&entity(Some(("holder", "cs1"))), &q, NOW);
    // b (holder), then after the release: a (deferred earlier), then c.
    assert_eq!(op_rows(&p), vec![2, 1, 4]);
    assert_eq!(p.handled, vec![3]);
    assert!(p.deferred.is_empty());
    assert!(p.lock.is_none());
}

#[test]
fn a_release_from_another_critical_section_is_ignored() {
    let q = queue(vec![unlock("other-cs", "x"), signaled("a")]);
    let p = plan(&entity(Some(("holder", "cs1"))), &q, NOW);
    assert_eq!(p.handled, vec![1]);
    assert_eq!(p.deferred, vec![2]);
    assert!(p.lock.is_some());
}

#[test]
fn a_lock_request_forwards_to_the_next_entity_in_the_set() {
    let q = queue(vec![lock_request("cs1", "orch", &[E, "@counter@c2"], 0), signaled("late")]);
    let p = plan(&entity(None), &q, NOW);
    assert_eq!(
        p.lock,
        Some(EntityLock {
            owner: "orch".into(),
            critical_section_id: "cs1".into()
        })
    );
    assert_eq!(p.handled, vec![1]);
    // Signals after the grant wait for the release.
    assert_eq!(p.deferred, vec![2]);
    assert_eq!(p.messages.len(), 1);
    assert_eq!(p.messages[0].instance_id, "@counter@c2");
    match &p.messages[0].event.event_type {
        Some(EventType::EntityLockRequested(r)) => {
            assert_eq!(r.position, 1);
            assert_eq!(r.critical_section_id, "cs1");
        }
        other => panic!("expected a forwarded lock request, got {other:?}"),
    }
}

#[test]
fn the_last_entity_of_the_set_grants_the_lock_to_the_orchestration() {
    let q = queue(vec![lock_request("cs1", "orch", &["@counter@c0", E], 1)]);
    let p = plan(&entity(None), &q, NOW);
    assert_eq!(p.messages.len(), 1);
    assert_eq!(p.messages[0].instance_id, "orch");
    assert!(matches!(&p.messages[0].event.event_type, Some(EventType::EntityLockGranted(g)) if g.critical_section_id == "cs1"));
}

#[test]
fn a_second_lock_request_waits_for_the_first_release() {
    let q = queue(vec![
        lock_request("cs2", "orch2", &[E], 0),
        called("x", "holder"),
        unlock("cs1", "holder"),
    ]);
    let p = plan(&entity(Some(("holder", "cs1"))), &q, NOW);
    // The holder's call runs, its release comes, then the waiting request takes the lock.
    assert_eq!(op_rows(&p), vec![2]);
    assert_eq!(p.handled, vec![3, 1]);
    assert_eq!(p.lock.as_ref().map(|l| l.critical_section_id.as_str()), Some("cs2"));
    assert!(matches!(&p.messages[0].event.event_type, Some(EventType::EntityLockGranted(g)) if g.critical_section_id == "cs2"));
}

#[test]
fn one_senders_messages_keep_their_order_across_a_lock() {
    // Client signals s1, s2 arrive around a lock held by someone else; they run in order later.
    let q = queue(vec![signaled("s1"), signaled("s2")]);
    let p = plan(&entity(Some(("holder", "cs1"))), &q, NOW);
    assert_eq!(p.deferred, vec![1, 2]);
    let q = queue(vec![signaled("s1"), signaled("s2"), unlock("cs1", "holder"), signaled("s3")]);
    let p = plan(&entity(Some(("holder", "cs1"))), &q, NOW);
    assert_eq!(op_rows(&p), vec![1, 2, 4]);
}

#[test]
fn a_batch_holds_at_most_max_batch_operations() {
    let q = queue((0..MAX_BATCH + 5).map(|i| signaled(&i.to_string())).collect());
    let p = plan(&entity(None), &q, NOW);
    assert_eq!(p.operations.len(), MAX_BATCH);
    assert!(p.deferred.is_empty());
}

#[test]
fn results_go_to_callers_and_failures_fail_only_that_call() {
    let q = queue(vec![called("ok", "o1"), called("boom", "o2"), signaled("quiet")]);
    let p = plan(&entity(None), &q, NOW);
    let result = EntityBatchResult {
        results: vec![success("6"), failed("nope"), success("")],
        entity_state: s("6"),
        ..Default::default()
    };
    let c = complete(&entity(None), p, result, NOW, &mut ids());
    assert_eq!(c.state, s("6"));
    assert_eq!(c.consumed, vec![1, 2, 3]);
    assert_eq!(c.messages.len(), 2, "the signal has nobody to answer");
    assert_eq!(c.messages[0].instance_id, "o1");
    assert_eq!(c.messages[0].execution_id, s("o1-exec"));
    assert!(matches!(&c.messages[0].event.event_type,
        Some(EventType::EntityOperationCompleted(r)) if r.request_id == "req-ok" && r.output == s("6")));
    assert_eq!(c.messages[1].instance_id, "o2");
    assert!(matches!(&c.messages[1].event.event_type,
        Some(EventType::EntityOperationFailed(f)) if f.request_id == "req-boom"
            && f.failure_details.as_ref().is_some_and(|d| d.error_message == "nope")));
}

#[test]
fn operations_a_worker_did_not_run_stay_queued() {
    let q = queue(vec![signaled("a"), signaled("b"), signaled("c")]);
    let p = plan(&entity(None), &q, NOW);
    let result = EntityBatchResult {
        results: vec![success("1")],
        entity_state: s("1"),
        ..Default::default()
    };
    let c = complete(&entity(None), p, result, NOW, &mut ids());
    assert_eq!(c.consumed, vec![1]);
    assert!(c.deferred.is_empty());
}

#[test]
fn an_entity_can_signal_entities_and_start_orchestrations() {
    let q = queue(vec![signaled("go")]);
    let p = plan(&entity(None), &q, NOW);
    let result = EntityBatchResult {
        results: vec![success("")],
        actions: vec![
            OperationAction {
                id: 0,
                operation_action_type: Some(operation_action::OperationActionType::SendSignal(SendSignalAction {
                    instance_id: "@Other@k".into(),
                    name: "ping".into(),
                    input: s("1"),
                    scheduled_time: Some(to_timestamp(NOW + 5000)),
                    ..Default::default()
                })),
            },
            OperationAction {
                id: 1,
                operation_action_type: Some(operation_action::OperationActionType::StartNewOrchestration(
                    StartNewOrchestrationAction {
                        instance_id: "started-1".into(),
                        name: "Flow".into(),
                        input: s("\"x\""),
                        ..Default::default()
                    },
                )),
            },
        ],
        entity_state: s("5"),
        ..Default::default()
    };
    let c = complete(&entity(None), p, result, NOW, &mut ids());
    let signal: &Message = &c.messages[0];
    assert_eq!(signal.instance_id, "@other@k");
    assert_eq!(signal.visible_at, NOW + 5000);
    assert!(matches!(&signal.event.event_type,
        Some(EventType::EntityOperationSignaled(e)) if e.operation == "ping" && e.request_id == "id-1"));
    assert_eq!(c.starts.len(), 1);
    assert_eq!(c.starts[0].instance.instance_id, "started-1");
    assert_eq!(c.starts[0].instance.name, "Flow");
    assert_eq!(c.starts[0].instance.input, s("\"x\""));
}

#[test]
fn a_step_without_operations_keeps_the_state() {
    let q = queue(vec![lock_request("cs1", "orch", &[E], 0)]);
    let e = entity(None);
    let c = without_worker(&e, plan(&e, &q, NOW), NOW);
    assert_eq!(c.state, s("5"));
    assert_eq!(c.consumed, vec![1]);
    assert_eq!(c.lock.map(|l| l.owner), s("orch"));
}

#[test]
fn orchestration_calls_carry_the_caller_and_lock_sets_are_sorted() {
    let call = SendEntityMessageAction {
        entity_message_type: Some(EntityMessageType::EntityOperationCalled(EntityOperationCalledEvent {
            request_id: "r1".into(),
            operation: "get".into(),
            target_instance_id: s("@Counter@K"),
            ..Default::default()
        })),
    };
    let (recorded, message) = send_from_orchestration("orch", "exec-9", 4, call, NOW);
    assert_eq!(recorded.event_id, 4);
    assert_eq!(message.instance_id, "@counter@K");
    match message.event.event_type {
        Some(EventType::EntityOperationCalled(c)) => {
            assert_eq!(c.parent_instance_id, s("orch"));
            assert_eq!(c.parent_execution_id, s("exec-9"));
        }
        other => panic!("expected a call, got {other:?}"),
    }
    let lock = SendEntityMessageAction {
        entity_message_type: Some(EntityMessageType::EntityLockRequested(EntityLockRequestedEvent {
            critical_section_id: "cs".into(),
            lock_set: vec!["@b@2".into(), "@A@1".into(), "@b@2".into()],
            ..Default::default()
        })),
    };
    let (_, message) = send_from_orchestration("orch", "exec-9", 5, lock, NOW);
    assert_eq!(message.instance_id, "@a@1");
    match message.event.event_type {
        Some(EventType::EntityLockRequested(l)) => {
            assert_eq!(l.lock_set, vec!["@a@1".to_string(), "@b@2".to_string()]);
            assert_eq!(l.position, 0);
            assert_eq!(l.parent_instance_id, s("orch"));
        }
        other => panic!("expected a lock request, got {other:?}"),
    }
}

#[test]
fn a_delayed_signal_from_an_orchestration_waits_for_its_time() {
    let signal = SendEntityMessageAction {
        entity_message_type: Some(EntityMessageType::EntityOperationSignaled(EntityOperationSignaledEvent {
            request_id: "r1".into(),
            operation: "add".into(),
            scheduled_time: Some(to_timestamp(NOW + 3000)),
            target_instance_id: s(E),
            ..Default::default()
        })),
    };
    let (_, message) = send_from_orchestration("orch", "exec", 1, signal, NOW);
    assert_eq!(message.visible_at, NOW + 3000);
}

#[test]
fn an_ending_orchestration_releases_the_locks_it_still_holds() {
    let history = vec![
        event(
            3,
            NOW,
            EventType::EntityLockRequested(EntityLockRequestedEvent {
                critical_section_id: "cs".into(),
                lock_set: vec!["@a@1".into(), "@b@2".into()],
                ..Default::default()
            }),
        ),
        event(
            EXTERNAL,
            NOW,
            EventType::EntityLockGranted(EntityLockGrantedEvent {
                critical_section_id: "cs".into(),
            }),
        ),
        event(
            5,
            NOW,
            EventType::EntityUnlockSent(EntityUnlockSentEvent {
                critical_section_id: "cs".into(),
                target_instance_id: s("@a@1"),
                ..Default::default()
            }),
        ),
    ];
    let releases = releases_on_end("orch", &history, NOW);
    assert_eq!(releases.len(), 1);
    assert_eq!(releases[0].instance_id, "@b@2");
    assert!(matches!(&releases[0].event.event_type,
        Some(EventType::EntityUnlockSent(u)) if u.critical_section_id == "cs" && u.parent_instance_id == s("orch")));
    assert!(releases_on_end("orch", &history[..0], NOW).is_empty());
}

#[test]
fn invalid_entity_ids_are_refused() {
    let bad = SendEntityMessageAction {
        entity_message_type: Some(EntityMessageType::EntityOperationSignaled(EntityOperationSignaledEvent {
            target_instance_id: s("not-an-entity"),
            ..Default::default()
        })),
    };
    assert!(validate(&bad).is_err());
    assert!(validate(&SendEntityMessageAction { entity_message_type: None }).is_err());
}

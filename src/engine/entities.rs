//! Durable entity rules, as pure functions. An entity (`@name@key`) has a state, a queue of
//! messages and at most one lock holder. The dispatcher leases an entity with its visible
//! queue; [`plan`] decides which operations run now (lock requests and releases are handled
//! here, without a worker), and [`complete`] turns the worker's batch result into the one
//! transaction the store writes. Orchestration-side rules (what a `sendEntityMessage` action
//! sends, which locks a finishing orchestration still holds) are here too.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::engine::events::{EXTERNAL, event};
use crate::engine::{StartSpec, new_instance};
use crate::model::{Entity, EntityCommit, EntityLock, Message};
use crate::proto::history_event::EventType;
use crate::proto::send_entity_message_action::EntityMessageType;
use crate::proto::*;
use crate::time::{self, Millis};

/// Most operations given to a worker in one batch: big enough to amortise a round trip,
/// small enough that a batch commits quickly.
pub const MAX_BATCH: usize = 100;

/// Splits `@name@key`. The name may not be empty or contain `@`; the key may contain anything.
pub fn parse_id(id: &str) -> Result<(&str, &str), String> {
    let rest = id
        .strip_prefix('@')
        .ok_or_else(|| format!("entity id '{id}' must have the form @name@key"))?;
    let (name, key) = rest
        .split_once('@')
        .ok_or_else(|| format!("entity id '{id}' must have the form @name@key"))?;
    if name.is_empty() {
        return Err(format!("entity id '{id}' has an empty name"));
    }
    Ok((name, key))
}

/// The stored form of an entity id: names are case-insensitive (lower-cased), keys are not.
pub fn normalize_id(id: &str) -> Result<String, String> {
    let (name, key) = parse_id(id)?;
    Ok(format!("@{}@{key}", name.to_lowercase()))
}

/// The entity name of a (normalized) entity id, for work-item filters.
pub fn name_of(id: &str) -> &str {
    parse_id(id).map(|(name, _)| name).unwrap_or_default()
}

/// What one entity step does before any worker is involved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Operations to run, in order: queue row and its `entityOperationSignaled/Called` event.
    pub operations: Vec<(i64, HistoryEvent)>,
    /// Rows handled without a worker (lock requests, releases, stray events).
    pub handled: Vec<i64>,
    /// Rows that wait until the lock holder releases the entity.
    pub deferred: Vec<i64>,
    /// The lock after this step.
    pub lock: Option<EntityLock>,
    /// Lock grants to orchestrations and lock requests forwarded to the next entity.
    pub messages: Vec<Message>,
}

/// Chooses what to do with an entity's visible queue (oldest first).
///
/// While the entity is locked only the holder's calls (and its release) get through; all else
/// is deferred, in order. A release lets the deferred rows in again, from the oldest, so every
/// sender's messages are handled in the order it sent them. Lock requests travel the sorted
/// lock set one entity at a time, so two critical sections over overlapping sets never
/// deadlock.
pub fn plan(entity: &Entity, queue: &[(i64, HistoryEvent)], now: Millis) -> Plan {
    let mut plan = Plan {
        lock: entity.lock.clone(),
        ..Plan::default()
    };
    let mut pending: VecDeque<&(i64, HistoryEvent)> = queue.iter().collect();
    let mut deferred: Vec<&(i64, HistoryEvent)> = vec![];
    while let Some(row) = pending.pop_front() {
        let (id, e) = (row.0, &row.1);
        if plan.operations.len() >= MAX_BATCH {
            break; // the rest stays queued for the next batch, in order
        }
        let holder = |owner: Option<&String>| match &plan.lock {
            None => true,
            Some(l) => owner.is_some_and(|o| *o == l.owner),
        };
        match &e.event_type {
            Some(EventType::EntityOperationSignaled(_)) => {
                // A signal carries no sender, so it never belongs to a critical section.
                if plan.lock.is_none() {
                    plan.operations.push((id, e.clone()));
                } else {
                    deferred.push(row);
                }
            }
            Some(EventType::EntityOperationCalled(c)) => {
                if holder(c.parent_instance_id.as_ref()) {
                    plan.operations.push((id, e.clone()));
                } else {
                    deferred.push(row);
                }
            }
            Some(EventType::EntityLockRequested(r)) => match &plan.lock {
                None => {
                    plan.lock = Some(EntityLock {
                        owner: r.parent_instance_id.clone().unwrap_or_default(),
                        critical_section_id: r.critical_section_id.clone(),
                    });
                    plan.messages.push(next_hop(r, now));
                    plan.handled.push(id);
                }
                // A repeated request of the section already holding the lock: already granted.
                Some(l) if l.critical_section_id == r.critical_section_id => plan.handled.push(id),
                Some(_) => deferred.push(row),
            },
            Some(EventType::EntityUnlockSent(u)) => {
                plan.handled.push(id);
                if plan.lock.as_ref().is_some_and(|l| l.critical_section_id == u.critical_section_id) {
                    plan.lock = None;
                    // The deferred rows are older than everything still pending.
                    for row in deferred.drain(..).rev() {
                        pending.push_front(row);
                    }
                }
            }
            _ => plan.handled.push(id), // nothing an entity can act on
        }
    }
    plan.deferred = deferred.iter().map(|(id, _)| *id).collect();
    plan
}

/// After an entity took its lock: ask the next entity of the set, or tell the orchestration
/// the whole set is held.
fn next_hop(r: &EntityLockRequestedEvent, now: Millis) -> Message {
    let next = usize::try_from(r.position).unwrap_or(0) + 1;
    match r.lock_set.get(next) {
        Some(target) => Message {
            instance_id: target.clone(),
            execution_id: None,
            event: event(
                EXTERNAL,
                now,
                EventType::EntityLockRequested(EntityLockRequestedEvent {
                    position: next as i32,
                    ..r.clone()
                }),
            ),
            visible_at: now,
            priority: Message::NORMAL,
        },
        None => lock_granted(r.parent_instance_id.clone().unwrap_or_default(), &r.critical_section_id, now),
    }
}

fn lock_granted(orchestration: String, critical_section_id: &str, now: Millis) -> Message {
    Message {
        instance_id: orchestration,
        execution_id: None,
        event: event(
            EXTERNAL,
            now,
            EventType::EntityLockGranted(EntityLockGrantedEvent {
                critical_section_id: critical_section_id.to_string(),
            }),
        ),
        visible_at: now,
        priority: Message::NORMAL,
    }
}

/// The wire form of an operation for the older `EntityBatchRequest` work item.
pub fn operation_request(e: &HistoryEvent) -> OperationRequest {
    match &e.event_type {
        Some(EventType::EntityOperationSignaled(s)) => OperationRequest {
            operation: s.operation.clone(),
            request_id: s.request_id.clone(),
            input: s.input.clone(),
            trace_context: None,
        },
        Some(EventType::EntityOperationCalled(c)) => OperationRequest {
            operation: c.operation.clone(),
            request_id: c.request_id.clone(),
            input: c.input.clone(),
            trace_context: None,
        },
        _ => OperationRequest::default(),
    }
}

/// A step that ran no operation (only lock traffic or deferrals): the state stays.
pub fn without_worker(entity: &Entity, plan: Plan, now: Millis) -> EntityCommit {
    EntityCommit {
        instance_id: entity.instance_id.clone(),
        state: entity.state.clone(),
        lock: plan.lock,
        consumed: plan.handled,
        deferred: plan.deferred,
        messages: plan.messages,
        starts: vec![],
        now,
    }
}

/// Turns a worker's batch result into the step's commit. Operations the worker did not
/// execute (fewer results than operations) stay queued. Each call's result or failure goes
/// to its caller; the state is what the worker reports after the last executed operation (a
/// failed operation's changes were already rolled back by the worker).
pub fn complete(entity: &Entity, plan: Plan, result: EntityBatchResult, now: Millis, new_id: &mut dyn FnMut() -> String) -> EntityCommit {
    let executed = result.results.len().min(plan.operations.len());
    let mut commit = without_worker(entity, plan.clone(), now);
    commit.state = result.entity_state;
    for ((row, op), outcome) in plan.operations.iter().zip(result.results) {
        commit.consumed.push(*row);
        if let Some(EventType::EntityOperationCalled(c)) = &op.event_type
            && let Some(caller) = c.parent_instance_id.clone()
        {
            commit.messages.push(Message {
                instance_id: caller,
                execution_id: c.parent_execution_id.clone().filter(|e| !e.is_empty()),
                event: call_result(&c.request_id, outcome, now),
                visible_at: now,
                priority: Message::NORMAL,
            });
        }
    }
    debug_assert!(commit.consumed.len() >= executed);
    for action in result.actions {
        match action.operation_action_type {
            Some(operation_action::OperationActionType::SendSignal(s)) => {
                let Ok(target) = normalize_id(&s.instance_id) else {
                    tracing::info!(entity = %entity.instance_id, target = %s.instance_id, "dropping a signal to an invalid entity id");
                    continue;
                };
                let at = s.scheduled_time.as_ref().and_then(|t| time::from_timestamp(t).ok());
                commit
                    .messages
                    .push(signal(&target, new_id(), s.name, s.input, s.scheduled_time, at, now));
            }
            Some(operation_action::OperationActionType::StartNewOrchestration(o)) => {
                let scheduled_start = o.scheduled_time.as_ref().and_then(|t| time::from_timestamp(t).ok());
                let spec = StartSpec {
                    instance_id: if o.instance_id.is_empty() { new_id() } else { o.instance_id },
                    name: o.name,
                    version: o.version,
                    input: o.input,
                    execution_id: new_id(),
                    scheduled_start: scheduled_start.filter(|t| *t > now),
                    tags: BTreeMap::new(),
                    parent: None,
                    parent_trace_context: o.parent_trace_context,
                };
                commit.starts.push(new_instance(spec, now));
            }
            None => {}
        }
    }
    commit
}

fn call_result(request_id: &str, outcome: OperationResult, now: Millis) -> HistoryEvent {
    use operation_result::ResultType;
    let kind = match outcome.result_type {
        Some(ResultType::Failure(f)) => EventType::EntityOperationFailed(EntityOperationFailedEvent {
            request_id: request_id.to_string(),
            failure_details: f.failure_details,
        }),
        Some(ResultType::Success(s)) => EventType::EntityOperationCompleted(EntityOperationCompletedEvent {
            request_id: request_id.to_string(),
            output: s.result,
        }),
        None => EventType::EntityOperationCompleted(EntityOperationCompletedEvent {
            request_id: request_id.to_string(),
            output: None,
        }),
    };
    event(EXTERNAL, now, kind)
}

/// A signal to an entity, delivered no earlier than `at`.
pub fn signal(
    target: &str,
    request_id: String,
    operation: String,
    input: Option<String>,
    scheduled_time: Option<prost_types::Timestamp>,
    at: Option<Millis>,
    now: Millis,
) -> Message {
    Message {
        instance_id: target.to_string(),
        execution_id: None,
        event: event(
            EXTERNAL,
            now,
            EventType::EntityOperationSignaled(EntityOperationSignaledEvent {
                request_id,
                operation,
                scheduled_time,
                input,
                target_instance_id: Some(target.to_string()),
            }),
        ),
        visible_at: at.unwrap_or(now).max(now),
        priority: Message::NORMAL,
    }
}

/// Checks a `sendEntityMessage` action's entity ids.
pub fn validate(a: &SendEntityMessageAction) -> Result<(), String> {
    let ids: Vec<&str> = match &a.entity_message_type {
        None => return Err("has no message".into()),
        Some(EntityMessageType::EntityOperationSignaled(s)) => vec![s.target_instance_id.as_deref().unwrap_or_default()],
        Some(EntityMessageType::EntityOperationCalled(c)) => vec![c.target_instance_id.as_deref().unwrap_or_default()],
        Some(EntityMessageType::EntityLockRequested(l)) => l.lock_set.iter().map(String::as_str).collect(),
        Some(EntityMessageType::EntityUnlockSent(u)) => vec![u.target_instance_id.as_deref().unwrap_or_default()],
    };
    ids.into_iter().try_for_each(|id| parse_id(id).map(drop))
}

/// What a `sendEntityMessage` action does: the event the orchestration's history keeps (with
/// the action's id) and the message it sends. The message carries the sender (and its
/// execution, for calls) so the entity can answer and tell the lock holder apart; lock sets
/// are sorted and de-duplicated, which is the global order that keeps critical sections from
/// deadlocking.
pub fn send_from_orchestration(
    instance_id: &str,
    execution_id: &str,
    action_id: i32,
    a: SendEntityMessageAction,
    now: Millis,
) -> (HistoryEvent, Message) {
    let norm = |id: Option<&String>| normalize_id(id.map(String::as_str).unwrap_or_default()).unwrap_or_default();
    let me = Some(instance_id.to_string());
    let to = |target: String, kind: EventType, at: Millis| Message {
        instance_id: target,
        execution_id: None,
        event: event(EXTERNAL, now, kind),
        visible_at: at.max(now),
        priority: Message::NORMAL,
    };
    let at = |ts: &Option<prost_types::Timestamp>| ts.as_ref().and_then(|t| time::from_timestamp(t).ok()).unwrap_or(now);
    let (recorded, message) = match a.entity_message_type {
        Some(EntityMessageType::EntityOperationSignaled(s)) => {
            let target = norm(s.target_instance_id.as_ref());
            let sent = EntityOperationSignaledEvent {
                target_instance_id: Some(target.clone()),
                ..s.clone()
            };
            let visible = at(&s.scheduled_time);
            (
                EventType::EntityOperationSignaled(s),
                to(target, EventType::EntityOperationSignaled(sent), visible),
            )
        }
        Some(EntityMessageType::EntityOperationCalled(c)) => {
            let target = norm(c.target_instance_id.as_ref());
            let sent = EntityOperationCalledEvent {
                parent_instance_id: me,
                parent_execution_id: Some(execution_id.to_string()),
                target_instance_id: Some(target.clone()),
                ..c.clone()
            };
            let visible = at(&c.scheduled_time);
            (
                EventType::EntityOperationCalled(c),
                to(target, EventType::EntityOperationCalled(sent), visible),
            )
        }
        Some(EntityMessageType::EntityLockRequested(l)) => {
            let set: BTreeSet<String> = l.lock_set.iter().map(|id| norm(Some(id))).collect();
            let sent = EntityLockRequestedEvent {
                critical_section_id: l.critical_section_id.clone(),
                lock_set: set.into_iter().collect(),
                position: 0,
                parent_instance_id: me,
            };
            let message = match sent.lock_set.first() {
                Some(first) => to(first.clone(), EventType::EntityLockRequested(sent.clone()), now),
                None => lock_granted(instance_id.to_string(), &l.critical_section_id, now),
            };
            (EventType::EntityLockRequested(l), message)
        }
        Some(EntityMessageType::EntityUnlockSent(u)) => {
            let target = norm(u.target_instance_id.as_ref());
            let sent = EntityUnlockSentEvent {
                critical_section_id: u.critical_section_id.clone(),
                parent_instance_id: me,
                target_instance_id: Some(target.clone()),
            };
            (EventType::EntityUnlockSent(u), to(target, EventType::EntityUnlockSent(sent), now))
        }
        None => unreachable!("refused by validate"),
    };
    (event(action_id, now, recorded), message)
}

/// Releases for the locks an orchestration still holds (or has requested) when its execution
/// ends: completed, failed, terminated or continued as new. An entity ignores a release for a
/// critical section that does not hold it.
pub fn releases_on_end<'a>(instance_id: &str, history: impl IntoIterator<Item = &'a HistoryEvent>, now: Millis) -> Vec<Message> {
    let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in history {
        match &e.event_type {
            Some(EventType::EntityLockRequested(l)) if e.event_id >= 0 => {
                let set = held.entry(l.critical_section_id.clone()).or_default();
                set.extend(l.lock_set.iter().filter_map(|id| normalize_id(id).ok()));
            }
            Some(EventType::EntityUnlockSent(u)) if e.event_id >= 0 => {
                if let Some(set) = held.get_mut(&u.critical_section_id)
                    && let Some(target) = u.target_instance_id.as_deref().and_then(|t| normalize_id(t).ok())
                {
                    set.remove(&target);
                }
            }
            _ => {}
        }
    }
    let mut releases = vec![];
    for (section, entities) in held {
        for target in entities {
            let unlock = EntityUnlockSentEvent {
                critical_section_id: section.clone(),
                parent_instance_id: Some(instance_id.to_string()),
                target_instance_id: Some(target.clone()),
            };
            releases.push(Message {
                instance_id: target,
                execution_id: None,
                event: event(EXTERNAL, now, EventType::EntityUnlockSent(unlock)),
                visible_at: now,
                priority: Message::NORMAL,
            });
        }
    }
    releases
}

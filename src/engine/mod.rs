//! Durable Task semantics, as pure functions: which inbox messages an orchestrator sees next
//! ([`prepare`]), and what its answer changes ([`apply`]). No I/O here: the store persists the
//! returned [`Commit`] in one transaction, the dispatcher moves work items. Time and fresh ids
//! are passed in, so every rule is unit-tested without a clock or a database.

pub mod entities;
#[cfg(test)]
mod entity_tests;
pub mod events;
pub mod rerun;
pub mod reuse;
pub mod rules;
#[cfg(test)]
mod tests;
pub mod work_filters;

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::limits;
use crate::model::*;
use crate::proto::history_event::EventType;
use crate::proto::orchestrator_action::OrchestratorActionType as Action;
use crate::proto::*;
use crate::time::{self, Micros};
use events::{EXTERNAL, event, execution_started, failure};

/// What to do with an instance whose inbox has visible messages.
#[derive(Debug, PartialEq)]
pub enum Prepared {
    /// Run the orchestrator with these new events (the first is always a fresh
    /// OrchestratorStarted carrying the deterministic time). `consumed` are the inbox rows
    /// they came from, deleted when the step commits.
    Run { new_events: Vec<HistoryEvent>, consumed: Vec<i64> },
    /// Nothing to run: delete these rows (stale, duplicate, or addressed to a finished instance).
    Drop { consumed: Vec<i64>, reason: &'static str },
    /// Not runnable now (suspended, or not started yet); leave the inbox as it is.
    Wait,
}

/// Chooses the new events of the next orchestrator step.
pub fn prepare(instance: &Instance, history: &[HistoryEvent], inbox: &[(i64, Message)], now: Micros) -> Prepared {
    let all = || inbox.iter().map(|(id, _)| *id).collect::<Vec<_>>();
    if instance.is_terminal() {
        return Prepared::Drop {
            consumed: all(),
            reason: "instance has finished",
        };
    }
    let current = |m: &Message| m.execution_id.as_deref().is_none_or(|e| e == instance.execution_id);
    // Events raised while suspended wait for the resume (or a terminate), so a suspended
    // orchestrator is not woken for nothing.
    if instance.status == OrchestrationStatus::Suspended && !inbox.iter().any(|(_, m)| current(m) && wakes_suspended(&m.event)) {
        return Prepared::Wait;
    }
    // A rewind must reach the worker alone: the SDKs expect exactly
    // [OrchestratorStarted, ExecutionRewound] and rewrite the history from it.
    if let Some((id, m)) = inbox
        .iter()
        .find(|(_, m)| current(m) && matches!(m.event.event_type, Some(EventType::ExecutionRewound(_))))
    {
        return Prepared::Run {
            new_events: vec![events::orchestrator_started(now), m.event.clone()],
            consumed: vec![*id],
        };
    }

    let mut seen = Seen::from_history(history);
    let mut new_events = vec![events::orchestrator_started(now)];
    let mut wake = false;
    let mut terminated = false;
    for (_, m) in inbox {
        if !current(m) {
            continue; // left over from an execution that has been replaced
        }
        let keep = match &m.event.event_type {
            Some(EventType::OrchestratorStarted(_)) => {
                wake = true; // a bare wake-up (after a rewind); a fresh one is added above
                false
            }
            Some(EventType::ExecutionStarted(_)) => !std::mem::replace(&mut seen.started, true),
            // A recursive terminate can reach an instance twice (from its parent and from the
            // client's walk of the tree); the first one ends it.
            Some(EventType::ExecutionTerminated(_)) => !std::mem::replace(&mut terminated, true),
            Some(EventType::TaskCompleted(e)) => seen.tasks.result(e.task_scheduled_id),
            Some(EventType::TaskFailed(e)) => seen.tasks.result(e.task_scheduled_id),
            Some(EventType::TimerFired(e)) => seen.timers.result(e.timer_id),
            Some(EventType::SubOrchestrationInstanceCompleted(e)) => seen.children.result(e.task_scheduled_id),
            Some(EventType::SubOrchestrationInstanceFailed(e)) => seen.children.result(e.task_scheduled_id),
            Some(EventType::ExecutionRewound(_)) | None => false,
            Some(_) => true,
        };
        if keep {
            new_events.push(m.event.clone());
        }
    }
    if !seen.started {
        return Prepared::Wait;
    }
    if new_events.len() == 1 && !wake {
        return Prepared::Drop {
            consumed: all(),
            reason: "only stale or duplicate events",
        };
    }
    Prepared::Run {
        new_events,
        consumed: all(),
    }
}

/// The instance ids of the sub-orchestrations a history started, in order.
pub fn sub_orchestrations(history: &[HistoryEvent]) -> Vec<String> {
    history
        .iter()
        .filter_map(|e| match &e.event_type {
            Some(EventType::SubOrchestrationInstanceCreated(c)) => Some(c.instance_id.clone()),
            _ => None,
        })
        .collect()
}

/// Events that must reach a suspended orchestrator (everything else waits for the resume).
pub fn wakes_suspended(event: &HistoryEvent) -> bool {
    matches!(
        event.event_type,
        Some(EventType::ExecutionResumed(_) | EventType::ExecutionTerminated(_) | EventType::ExecutionRewound(_))
    )
}

/// Ids the current execution's history already accounts for, so duplicate or stray results
/// never reach an orchestrator. Counted, not just remembered: SDK retry policies schedule the
/// same task or child id again after a failure, and each scheduling earns one result.
#[derive(Default)]
struct Seen {
    started: bool,
    tasks: Ledger,
    timers: Ledger,
    children: Ledger,
}

/// How often each id was scheduled, with what each scheduling carries (`T`), and how many of
/// those schedulings have had their result: the nth result of an id answers its nth
/// scheduling (SDK retry policies schedule the same task or child id again). The engine counts
/// results with it to drop duplicates; telemetry times each result from its scheduling.
#[derive(Debug)]
pub struct Ledger<T = ()> {
    scheduled: HashMap<i32, Vec<T>>,
    answered: HashMap<i32, usize>,
}

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Ledger {
            scheduled: HashMap::new(),
            answered: HashMap::new(),
        }
    }
}

impl<T> Ledger<T> {
    /// Records a scheduling of `id`; returns its ordinal among that id's schedulings.
    pub fn schedule(&mut self, id: i32, with: T) -> u32 {
        let all = self.scheduled.entry(id).or_default();
        all.push(with);
        (all.len() - 1) as u32
    }

    /// Matches a result to the oldest unanswered scheduling of `id`: its ordinal and what it
    /// carries, or `None` when every scheduling of the id has had its result.
    pub fn answer(&mut self, id: i32) -> Option<(u32, &T)> {
        let n = self.answered.entry(id).or_default();
        let with = self.scheduled.get(&id)?.get(*n)?;
        *n += 1;
        Some(((*n - 1) as u32, with))
    }

    /// Counts a result; false if the id has no outstanding scheduling to match it.
    fn result(&mut self, id: i32) -> bool {
        self.answer(id).is_some()
    }
}

impl Seen {
    fn from_history(history: &[HistoryEvent]) -> Self {
        let mut seen = Seen::default();
        for e in history {
            match &e.event_type {
                Some(EventType::ExecutionStarted(_)) => seen.started = true,
                Some(EventType::TaskScheduled(_)) => _ = seen.tasks.schedule(e.event_id, ()),
                Some(EventType::TaskCompleted(r)) => _ = seen.tasks.result(r.task_scheduled_id),
                Some(EventType::TaskFailed(r)) => _ = seen.tasks.result(r.task_scheduled_id),
                Some(EventType::TimerCreated(_)) => _ = seen.timers.schedule(e.event_id, ()),
                Some(EventType::TimerFired(r)) => _ = seen.timers.result(r.timer_id),
                Some(EventType::SubOrchestrationInstanceCreated(_)) => _ = seen.children.schedule(e.event_id, ()),
                Some(EventType::SubOrchestrationInstanceCompleted(r)) => _ = seen.children.result(r.task_scheduled_id),
                Some(EventType::SubOrchestrationInstanceFailed(r)) => _ = seen.children.result(r.task_scheduled_id),
                _ => {}
            }
        }
        seen
    }
}

/// What a worker answered for one orchestrator step (chunks already joined).
#[derive(Clone, Debug, Default)]
pub struct Response {
    pub actions: Vec<OrchestratorAction>,
    pub custom_status: Option<String>,
    pub trace_context: Option<OrchestrationTraceContext>,
}

/// Checks a worker's actions before anything is applied, so a malformed answer is refused
/// with a precise message instead of corrupting history.
pub fn validate(actions: &[OrchestratorAction]) -> Result<(), String> {
    if actions.len() > limits::MAX_ACTIONS {
        return Err(format!(
            "the answer holds {} actions; at most {} are allowed",
            actions.len(),
            limits::MAX_ACTIONS
        ));
    }
    for a in actions {
        let id = a.id;
        fields(a).map_err(|e| format!("action {id}: {e}"))?;
        match &a.orchestrator_action_type {
            None => return Err(format!("action {id} has no action type")),
            Some(Action::ScheduleTask(t)) if t.name.is_empty() => return Err(format!("scheduleTask action {id} has an empty name")),
            Some(Action::CreateSubOrchestration(c)) if c.name.is_empty() => {
                return Err(format!("createSubOrchestration action {id} has an empty name"));
            }
            Some(Action::CreateTimer(t)) => match &t.fire_at {
                None => return Err(format!("createTimer action {id} has no fireAt")),
                Some(ts) => time::from_timestamp(ts)
                    .map(|_| ())
                    .map_err(|e| format!("createTimer action {id}: {e}"))?,
            },
            Some(Action::SendEvent(s)) if s.instance.as_ref().is_none_or(|i| i.instance_id.is_empty()) => {
                return Err(format!("sendEvent action {id} has no target instance id"));
            }
            Some(Action::SendEntityMessage(m)) => entities::validate(m).map_err(|e| format!("sendEntityMessage action {id}: {e}"))?,
            Some(Action::TerminateOrchestration(t)) if t.instance_id.is_empty() => {
                return Err(format!("terminateOrchestration action {id} has an empty instance id"));
            }
            Some(Action::CompleteOrchestration(c)) => {
                use OrchestrationStatus as S;
                match S::try_from(c.orchestration_status) {
                    Ok(S::Completed | S::Failed | S::Terminated | S::ContinuedAsNew | S::Canceled) => {}
                    _ => {
                        return Err(format!(
                            "completeOrchestration action {id} has status {} which does not end an execution",
                            c.orchestration_status
                        ));
                    }
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The size and id rules of [`limits`] applied to an action's fields: ids created or
/// addressed by an orchestrator obey the same rules as ids clients send.
fn fields(a: &OrchestratorAction) -> Result<(), String> {
    match &a.orchestrator_action_type {
        Some(Action::ScheduleTask(t)) => {
            limits::name("scheduleTask.name", &t.name)?;
            limits::optional_name("scheduleTask.version", t.version.as_deref())?;
            limits::tag_map("scheduleTask.tags", &t.tags)
        }
        Some(Action::CreateSubOrchestration(c)) => {
            if !c.instance_id.is_empty() {
                limits::instance_id("createSubOrchestration.instanceId", &c.instance_id)?;
            }
            limits::name("createSubOrchestration.name", &c.name)?;
            limits::optional_name("createSubOrchestration.version", c.version.as_deref())?;
            limits::tag_map("createSubOrchestration.tags", &c.tags)
        }
        Some(Action::SendEvent(e)) => {
            if let Some(target) = e.instance.as_ref().filter(|i| !i.instance_id.is_empty()) {
                limits::instance_id("sendEvent.instance.instanceId", &target.instance_id)?;
            }
            limits::name("sendEvent.name", &e.name)
        }
        Some(Action::TerminateOrchestration(t)) if !t.instance_id.is_empty() => {
            limits::instance_id("terminateOrchestration.instanceId", &t.instance_id)
        }
        Some(Action::CompleteOrchestration(c)) => {
            limits::optional_name("completeOrchestration.newVersion", c.new_version.as_deref())?;
            limits::tag_map("completeOrchestration.tags", &c.tags)?;
            limits::failure("completeOrchestration.failureDetails", c.failure_details.as_ref())
        }
        _ => Ok(()),
    }
}

/// Everything needed to create an instance: from StartInstance, a sub-orchestration action,
/// or a restart.
#[derive(Clone, Debug, Default)]
pub struct StartSpec {
    pub instance_id: String,
    pub name: String,
    pub version: Option<String>,
    pub input: Option<String>,
    pub execution_id: String,
    pub scheduled_start: Option<Micros>,
    pub tags: BTreeMap<String, String>,
    pub parent: Option<ParentInstanceInfo>,
    pub parent_trace_context: Option<TraceContext>,
}

/// What a restart starts: the old instance's orchestration, name, version and tags, with the
/// first execution's input (as its ExecutionStarted recorded it, else the instance's own),
/// under `instance_id` (the same id or a new one) and a fresh execution.
pub fn restart_spec(old: Instance, history: &[HistoryEvent], instance_id: String, execution_id: String) -> StartSpec {
    let input = events::execution_started(history).map_or(old.input, |s| s.input.clone());
    StartSpec {
        instance_id,
        name: old.name,
        version: old.version,
        input,
        execution_id,
        tags: old.tags,
        ..Default::default()
    }
}

/// Builds a PENDING instance and the ExecutionStarted message that will start it.
pub fn new_instance(spec: StartSpec, now: Micros) -> NewInstance {
    let started = ExecutionStartedEvent {
        name: spec.name.clone(),
        version: spec.version.clone(),
        input: spec.input.clone(),
        orchestration_instance: Some(OrchestrationInstance {
            instance_id: spec.instance_id.clone(),
            execution_id: Some(spec.execution_id.clone()),
        }),
        parent_instance: spec.parent.clone(),
        scheduled_start_timestamp: spec.scheduled_start.map(time::to_timestamp),
        parent_trace_context: spec.parent_trace_context,
        orchestration_span_id: None,
        tags: spec.tags.clone().into_iter().collect(),
    };
    let instance = Instance {
        instance_id: spec.instance_id.clone(),
        name: spec.name,
        version: spec.version,
        execution_id: spec.execution_id.clone(),
        status: OrchestrationStatus::Pending,
        input: spec.input,
        output: None,
        custom_status: None,
        failure_details: None,
        created_at: now,
        updated_at: now,
        completed_at: None,
        scheduled_start_at: spec.scheduled_start,
        parent_instance_id: spec
            .parent
            .as_ref()
            .and_then(|p| p.orchestration_instance.as_ref())
            .map(|o| o.instance_id.clone()),
        tags: spec.tags,
        trace_context: None,
    };
    let start = Message {
        instance_id: spec.instance_id,
        execution_id: Some(spec.execution_id),
        event: event(EXTERNAL, now, EventType::ExecutionStarted(started)),
        visible_at: spec.scheduled_start.unwrap_or(now).max(now),
        priority: Message::FIRST,
    };
    NewInstance { instance, start }
}

/// Turns an orchestrator's answer into the step's commit.
///
/// `history` is the execution's committed history and `new_events` what the worker was sent
/// (both as given to the worker); `new_id` makes execution ids for continue-as-new.
pub fn apply(
    instance: &Instance,
    history: &[HistoryEvent],
    new_events: &[HistoryEvent],
    response: Response,
    now: Micros,
    new_id: &mut dyn FnMut() -> String,
) -> Commit {
    let mut step = Step::new(instance, history, new_events, now);
    if response.custom_status.is_some() {
        step.instance.custom_status = response.custom_status;
    }
    if response.trace_context.is_some() {
        step.instance.trace_context = response.trace_context;
    }
    // Some SDKs (Go) list their actions in no particular order, so a completion may come before
    // the side effects of the same step: every action takes effect, the completion last. The
    // sort is stable, so the rest keep their order, and of several completions the first wins.
    let mut actions = response.actions;
    actions.sort_by_key(|a| matches!(a.orchestrator_action_type, Some(Action::CompleteOrchestration(_))));
    for action in actions {
        let id = action.id;
        match action.orchestrator_action_type {
            Some(Action::ScheduleTask(a)) => step.schedule_task(id, a),
            Some(Action::CreateTimer(a)) => step.create_timer(id, a),
            Some(Action::CreateSubOrchestration(a)) => step.create_child(id, a, new_id),
            Some(Action::SendEvent(a)) => step.send_event(id, a),
            Some(Action::TerminateOrchestration(a)) => step.messages.push(Message {
                instance_id: a.instance_id,
                execution_id: None,
                event: events::terminated(now, a.reason, a.recurse),
                visible_at: now,
                priority: Message::NORMAL,
            }),
            Some(Action::CompleteOrchestration(a)) => {
                if a.orchestration_status == OrchestrationStatus::ContinuedAsNew as i32 {
                    if step.terminate_request().is_some() {
                        break; // a terminate beats starting over; it is applied below
                    }
                    return step.continue_as_new(a, new_id());
                }
                let status = OrchestrationStatus::try_from(a.orchestration_status).unwrap_or(OrchestrationStatus::Failed);
                step.complete(id, status, a.result, a.failure_details, a.tags.into_iter().collect());
                break; // a second completion cannot end the execution again
            }
            Some(Action::RewindOrchestration(a)) => return step.rewind(a.new_history, new_id),
            Some(Action::SendEntityMessage(a)) => {
                let (recorded, message) =
                    entities::send_from_orchestration(&step.instance.instance_id, &step.instance.execution_id, id, a, now);
                step.appended.push(recorded);
                step.messages.push(message);
            }
            None => {} // refused by `validate` before this point
        }
    }
    // A terminate is not optional: if the orchestrator did not finish, the sidecar does.
    if !step.instance.is_terminal()
        && let Some(t) = step.terminate_request()
    {
        step.complete(-1, OrchestrationStatus::Terminated, t.input, None, BTreeMap::new());
    }
    step.finish()
}

/// The state of one step while its actions are applied.
struct Step<'a> {
    history: &'a [HistoryEvent],
    new_events: &'a [HistoryEvent],
    started: ExecutionStartedEvent,
    instance: Instance,
    appended: Vec<HistoryEvent>,
    messages: Vec<Message>,
    activities: Vec<ActivityTask>,
    children: Vec<ChildStart>,
    now: Micros,
}

impl<'a> Step<'a> {
    fn new(instance: &Instance, history: &'a [HistoryEvent], new_events: &'a [HistoryEvent], now: Micros) -> Self {
        let started = execution_started(history)
            .or(execution_started(new_events))
            .cloned()
            .unwrap_or_default();
        let mut instance = instance.clone();
        instance.updated_at = now;
        if instance.status == OrchestrationStatus::Pending {
            instance.status = OrchestrationStatus::Running;
        }
        for e in new_events {
            match e.event_type {
                Some(EventType::ExecutionSuspended(_)) => instance.status = OrchestrationStatus::Suspended,
                Some(EventType::ExecutionResumed(_)) => instance.status = OrchestrationStatus::Running,
                _ => {}
            }
        }
        Step {
            history,
            new_events,
            started,
            instance,
            appended: new_events.to_vec(),
            messages: vec![],
            activities: vec![],
            children: vec![],
            now,
        }
    }

    fn this_execution(&self) -> OrchestrationInstance {
        OrchestrationInstance {
            instance_id: self.instance.instance_id.clone(),
            execution_id: Some(self.instance.execution_id.clone()),
        }
    }

    fn to_self(&self, event: HistoryEvent, visible_at: Micros) -> Message {
        Message {
            instance_id: self.instance.instance_id.clone(),
            execution_id: Some(self.instance.execution_id.clone()),
            event,
            visible_at,
            priority: Message::NORMAL,
        }
    }

    fn schedule_task(&mut self, id: i32, a: ScheduleTaskAction) {
        self.activities.push(ActivityTask {
            instance_id: self.instance.instance_id.clone(),
            execution_id: self.instance.execution_id.clone(),
            request: ActivityRequest {
                name: a.name.clone(),
                version: a.version.clone(),
                input: a.input.clone(),
                orchestration_instance: Some(self.this_execution()),
                task_id: id,
                parent_trace_context: a.parent_trace_context.clone(),
                tags: a.tags.clone(),
            },
        });
        self.appended.push(event(
            id,
            self.now,
            EventType::TaskScheduled(TaskScheduledEvent {
                name: a.name,
                version: a.version,
                input: a.input,
                parent_trace_context: a.parent_trace_context,
                tags: a.tags,
            }),
        ));
    }

    fn create_timer(&mut self, id: i32, a: CreateTimerAction) {
        let fire_at = a.fire_at.as_ref().and_then(|t| time::from_timestamp(t).ok()).unwrap_or(self.now);
        let fired = event(
            EXTERNAL,
            fire_at,
            EventType::TimerFired(TimerFiredEvent {
                fire_at: a.fire_at,
                timer_id: id,
            }),
        );
        self.messages.push(self.to_self(fired, fire_at));
        self.appended.push(event(
            id,
            self.now,
            EventType::TimerCreated(TimerCreatedEvent { fire_at: a.fire_at }),
        ));
    }

    fn create_child(&mut self, id: i32, a: CreateSubOrchestrationAction, new_id: &mut dyn FnMut() -> String) {
        let child_id = if a.instance_id.is_empty() {
            format!("{}:{id:04x}", self.instance.instance_id)
        } else {
            a.instance_id.clone()
        };
        let spec = StartSpec {
            instance_id: child_id.clone(),
            name: a.name.clone(),
            version: a.version.clone(),
            input: a.input.clone(),
            execution_id: new_id(),
            scheduled_start: None,
            tags: a.tags.clone().into_iter().collect(),
            parent: Some(ParentInstanceInfo {
                task_scheduled_id: id,
                name: Some(self.instance.name.clone()),
                version: self.instance.version.clone(),
                orchestration_instance: Some(self.this_execution()),
            }),
            parent_trace_context: a.parent_trace_context.clone(),
        };
        let conflict = failure(
            "OrchestrationAlreadyExists",
            format!("cannot start sub-orchestration '{child_id}': an instance with that id is still running"),
        );
        let on_conflict = self.to_self(
            event(
                EXTERNAL,
                self.now,
                EventType::SubOrchestrationInstanceFailed(SubOrchestrationInstanceFailedEvent {
                    task_scheduled_id: id,
                    failure_details: Some(conflict),
                }),
            ),
            self.now,
        );
        self.children.push(ChildStart {
            child: new_instance(spec, self.now),
            on_conflict,
        });
        self.appended.push(event(
            id,
            self.now,
            EventType::SubOrchestrationInstanceCreated(SubOrchestrationInstanceCreatedEvent {
                instance_id: child_id,
                name: a.name,
                version: a.version,
                input: a.input,
                parent_trace_context: a.parent_trace_context,
                tags: a.tags,
            }),
        ));
    }

    fn send_event(&mut self, id: i32, a: SendEventAction) {
        let target = a.instance.map(|i| i.instance_id).unwrap_or_default();
        // The target sees an ordinary external event; the sender's history records EventSent.
        self.messages.push(Message {
            instance_id: target.clone(),
            execution_id: None,
            event: events::event_raised(self.now, a.name.clone(), a.data.clone()),
            visible_at: self.now,
            priority: Message::NORMAL,
        });
        self.appended.push(event(
            id,
            self.now,
            EventType::EventSent(EventSentEvent {
                instance_id: target,
                name: a.name,
                input: a.data,
            }),
        ));
    }

    fn terminate_request(&self) -> Option<ExecutionTerminatedEvent> {
        self.new_events.iter().find_map(|e| match &e.event_type {
            Some(EventType::ExecutionTerminated(t)) => Some(t.clone()),
            _ => None,
        })
    }

    fn complete(
        &mut self,
        id: i32,
        status: OrchestrationStatus,
        result: Option<String>,
        failure_details: Option<TaskFailureDetails>,
        tags: BTreeMap<String, String>,
    ) {
        let now = self.now;
        self.appended.push(event(
            id,
            now,
            EventType::ExecutionCompleted(ExecutionCompletedEvent {
                orchestration_status: status as i32,
                result: result.clone(),
                failure_details: failure_details.clone(),
            }),
        ));
        self.instance.status = status;
        self.instance.output = result.clone();
        self.instance.failure_details = failure_details.clone();
        self.instance.completed_at = Some(now);
        self.instance.tags.extend(tags);
        self.release_locks();

        if let Some(parent) = self.started.parent_instance.clone() {
            let target = parent.orchestration_instance.unwrap_or_default();
            let kind = if status == OrchestrationStatus::Completed {
                EventType::SubOrchestrationInstanceCompleted(SubOrchestrationInstanceCompletedEvent {
                    task_scheduled_id: parent.task_scheduled_id,
                    result,
                })
            } else {
                let details = failure_details.unwrap_or_else(|| {
                    let why = if status == OrchestrationStatus::Terminated {
                        "terminated"
                    } else {
                        "failed"
                    };
                    failure(
                        &format!(
                            "Orchestration{}",
                            if status == OrchestrationStatus::Terminated {
                                "Terminated"
                            } else {
                                "Failed"
                            }
                        ),
                        format!(
                            "sub-orchestration '{}' was {why}{}",
                            self.instance.instance_id,
                            result.map(|r| format!(": {r}")).unwrap_or_default()
                        ),
                    )
                });
                EventType::SubOrchestrationInstanceFailed(SubOrchestrationInstanceFailedEvent {
                    task_scheduled_id: parent.task_scheduled_id,
                    failure_details: Some(details),
                })
            };
            self.messages.push(Message {
                instance_id: target.instance_id,
                execution_id: target.execution_id,
                event: event(EXTERNAL, now, kind),
                visible_at: now,
                priority: Message::NORMAL,
            });
        }

        if status == OrchestrationStatus::Terminated
            && let Some(t) = self.terminate_request().filter(|t| t.recurse)
        {
            for child in self.running_children() {
                self.messages.push(Message {
                    instance_id: child,
                    execution_id: None,
                    event: events::terminated(now, t.input.clone(), true),
                    visible_at: now,
                    priority: Message::NORMAL,
                });
            }
        }
    }

    /// Entity locks are never left held by an execution that has ended.
    fn release_locks(&mut self) {
        let releases = entities::releases_on_end(&self.instance.instance_id, self.history.iter().chain(&self.appended), self.now);
        self.messages.extend(releases);
    }

    /// Children created by this execution that have not reported back.
    fn running_children(&self) -> Vec<String> {
        let mut created: Vec<(i32, String)> = vec![];
        let mut done = HashSet::new();
        for e in self.history.iter().chain(&self.appended) {
            match &e.event_type {
                Some(EventType::SubOrchestrationInstanceCreated(c)) => created.push((e.event_id, c.instance_id.clone())),
                Some(EventType::SubOrchestrationInstanceCompleted(r)) => _ = done.insert(r.task_scheduled_id),
                Some(EventType::SubOrchestrationInstanceFailed(r)) => _ = done.insert(r.task_scheduled_id),
                _ => {}
            }
        }
        created
            .into_iter()
            .filter(|(id, _)| !done.contains(id))
            .map(|(_, child)| child)
            .collect()
    }

    /// Ends this execution and queues the next one: OrchestratorStarted (added at dispatch),
    /// then its ExecutionStarted, then the carried-over events, then anything that arrived
    /// meanwhile. The other actions of this answer have been applied already, so they happen.
    fn continue_as_new(mut self, a: CompleteOrchestrationAction, execution_id: String) -> Commit {
        let now = self.now;
        self.release_locks();
        self.instance.tags.extend(a.tags);
        let version = a.new_version.or(self.started.version.clone());
        let started = ExecutionStartedEvent {
            name: self.started.name.clone(),
            version: version.clone(),
            input: a.result.clone(),
            orchestration_instance: Some(OrchestrationInstance {
                instance_id: self.instance.instance_id.clone(),
                execution_id: Some(execution_id.clone()),
            }),
            parent_instance: self.started.parent_instance.clone(),
            scheduled_start_timestamp: None,
            parent_trace_context: self.started.parent_trace_context.clone(),
            orchestration_span_id: None,
            tags: self.instance.tags.clone().into_iter().collect(),
        };
        self.instance.execution_id = execution_id.clone();
        self.instance.version = version;
        self.instance.input = a.result;
        self.instance.output = None;
        self.instance.failure_details = None;
        self.instance.trace_context = None;
        self.instance.status = OrchestrationStatus::Running;
        let first = std::iter::once(event(EXTERNAL, now, EventType::ExecutionStarted(started))).chain(a.carryover_events);
        for e in first {
            self.messages.push(Message {
                instance_id: self.instance.instance_id.clone(),
                execution_id: Some(execution_id.clone()),
                event: e,
                visible_at: now,
                priority: Message::FIRST,
            });
        }
        Commit {
            instance: self.instance,
            history: HistoryWrite::Replace(vec![]),
            messages: self.messages,
            activities: self.activities,
            children: self.children,
            rewinds: vec![],
        }
    }

    /// Replaces the history with the one the SDK rewrote (failed tasks removed), brings back
    /// failed children, and wakes the orchestrator so it schedules the removed work again.
    fn rewind(mut self, new_history: Vec<HistoryEvent>, new_id: &mut dyn FnMut() -> String) -> Commit {
        let execution_id = execution_started(&new_history)
            .and_then(|s| s.orchestration_instance.as_ref())
            .and_then(|o| o.execution_id.clone())
            .unwrap_or_else(&mut *new_id);
        let reason = new_history.iter().rev().find_map(|e| match &e.event_type {
            Some(EventType::ExecutionRewound(r)) => Some(r.reason.clone()),
            _ => None,
        });
        self.instance.execution_id = execution_id.clone();
        self.instance.status = OrchestrationStatus::Running;
        self.instance.output = None;
        self.instance.failure_details = None;
        self.instance.completed_at = None;

        let mut results = HashSet::new();
        for e in &new_history {
            if let Some(EventType::SubOrchestrationInstanceCompleted(r)) = &e.event_type {
                results.insert(r.task_scheduled_id);
            }
        }
        let mut rewinds = vec![];
        for e in &new_history {
            if let Some(EventType::SubOrchestrationInstanceCreated(c)) = &e.event_type {
                if results.contains(&e.event_id) {
                    continue;
                }
                let spec = StartSpec {
                    instance_id: c.instance_id.clone(),
                    name: c.name.clone(),
                    version: c.version.clone(),
                    input: c.input.clone(),
                    execution_id: new_id(),
                    scheduled_start: None,
                    tags: c.tags.clone().into_iter().collect(),
                    parent: Some(ParentInstanceInfo {
                        task_scheduled_id: e.event_id,
                        name: Some(self.instance.name.clone()),
                        version: self.instance.version.clone(),
                        orchestration_instance: Some(OrchestrationInstance {
                            instance_id: self.instance.instance_id.clone(),
                            execution_id: Some(execution_id.clone()),
                        }),
                    }),
                    parent_trace_context: c.parent_trace_context.clone(),
                };
                rewinds.push(ChildRewind {
                    instance_id: c.instance_id.clone(),
                    reason: reason.clone().flatten(),
                    parent_execution_id: execution_id.clone(),
                    recreate: new_instance(spec, self.now),
                });
            }
        }
        let wake = Message {
            instance_id: self.instance.instance_id.clone(),
            execution_id: Some(execution_id),
            event: events::orchestrator_started(self.now),
            visible_at: self.now,
            priority: Message::NORMAL,
        };
        Commit {
            instance: self.instance,
            history: HistoryWrite::Replace(new_history),
            messages: vec![wake],
            activities: vec![],
            children: vec![],
            rewinds,
        }
    }

    fn finish(mut self) -> Commit {
        self.appended.push(events::orchestrator_completed(self.now));
        Commit {
            instance: self.instance,
            history: HistoryWrite::Append(self.appended),
            messages: self.messages,
            activities: self.activities,
            children: self.children,
            rewinds: vec![],
        }
    }
}

//! The spans of orchestration executions, built from history when a step commits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Event, Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};

use super::{Inner, Telemetry, context, ids};
use crate::engine::Ledger;
use crate::model::{Commit, HistoryWrite, Instance, NewInstance};
use crate::proto::history_event::EventType;
use crate::proto::{EntityOperationCompletedEvent, EntityOperationFailedEvent, ExecutionStartedEvent, HistoryEvent, OrchestrationStatus};
use crate::time::{self, Micros};

/// Attribute keys of the Durable Task conventions.
mod key {
    pub const TYPE: &str = "durabletask.type";
    pub const NAME: &str = "durabletask.task.name";
    pub const VERSION: &str = "durabletask.task.version";
    pub const INSTANCE_ID: &str = "durabletask.task.instance_id";
    pub const EXECUTION_ID: &str = "durabletask.task.execution_id";
    pub const TASK_ID: &str = "durabletask.task.task_id";
    pub const STATUS: &str = "durabletask.task.status";
    pub const RUNTIME_STATUS: &str = "durabletask.runtime_status";
    pub const FIRE_AT: &str = "durabletask.fire_at";
}

/// An execution's create span, open while the execution is being stored. Ends when dropped,
/// so call [`Creation::failed`] when the store refused it.
#[derive(Default)]
pub struct Creation {
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl Creation {
    pub fn failed(mut self, why: &dyn std::fmt::Display) {
        if let Some(span) = &mut self.span {
            span.set_status(Status::error(format!("not stored: {why}")));
        }
    }
}

/// The spans of one orchestration step, emitted once the step is committed.
#[derive(Default)]
pub struct Step {
    inner: Option<Arc<Inner>>,
    creations: Vec<Creation>,
    records: Vec<Record>,
}

impl Step {
    pub fn committed(self) {
        if let Some(inner) = &self.inner {
            for r in self.records {
                emit(inner, r);
            }
        }
    }

    /// The step was not stored: its work never happened, so only the create spans are
    /// reported (as failed); it will be traced when it runs again.
    pub fn failed(self, why: &dyn std::fmt::Display) {
        for c in self.creations {
            c.failed(why);
        }
    }
}

/// A span known in full: emitted after the fact with its recorded times.
struct Record {
    name: String,
    kind: SpanKind,
    parent: SpanContext,
    /// The span's id when something else already refers to it; random otherwise.
    id: Option<SpanId>,
    start: Micros,
    end: Micros,
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    error: Option<String>,
}

fn emit(inner: &Inner, r: Record) {
    let cx = Context::new().with_remote_span_context(r.parent);
    let builder = inner
        .tracer
        .span_builder(r.name)
        .with_kind(r.kind)
        .with_start_time(system_time(r.start))
        .with_attributes(r.attributes)
        .with_events(r.events);
    let mut span = match r.id {
        Some(id) => ids::with_span_id(id, || builder.start_with_context(&inner.tracer, &cx)),
        None => builder.start_with_context(&inner.tracer, &cx),
    };
    if let Some(message) = r.error {
        span.set_status(Status::error(message));
    }
    span.end_with_timestamp(system_time(r.end.max(r.start)));
}

fn system_time(us: Micros) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

/// `<type>:<name>`, or `<type>:<name>@(<version>)` for a versioned task.
fn span_name(kind: &str, name: &str, version: Option<&str>) -> String {
    match version.filter(|v| !v.is_empty()) {
        Some(v) => format!("{kind}:{name}@({v})"),
        None => format!("{kind}:{name}"),
    }
}

fn event_time(e: &HistoryEvent) -> Micros {
    e.timestamp.as_ref().and_then(|t| time::from_timestamp(t).ok()).unwrap_or_default()
}

/// What the stored ExecutionStarted says about an execution's trace. Executions created while
/// tracing was off carry no orchestration span id and are not traced.
struct Execution {
    create: SpanContext,
    span_id: SpanId,
    started_at: Micros,
    name: String,
    version: Option<String>,
}

impl Execution {
    fn of(event: &HistoryEvent) -> Option<Execution> {
        let Some(EventType::ExecutionStarted(s)) = &event.event_type else {
            return None;
        };
        let span_id = SpanId::from_hex(s.orchestration_span_id.as_deref()?)
            .ok()
            .filter(|id| *id != SpanId::INVALID)?;
        Some(Execution {
            create: context::parse(s.parent_trace_context.as_ref()?)?,
            span_id,
            started_at: event_time(event),
            name: s.name.clone(),
            version: s.version.clone(),
        })
    }

    fn span(&self) -> SpanContext {
        context::sibling(&self.create, self.span_id)
    }
}

fn started_event<'a>(events: impl IntoIterator<Item = &'a HistoryEvent>) -> Option<&'a HistoryEvent> {
    events
        .into_iter()
        .find(|e| matches!(e.event_type, Some(EventType::ExecutionStarted(_))))
}

fn started_mut(event: &mut HistoryEvent) -> Option<&mut ExecutionStartedEvent> {
    match &mut event.event_type {
        Some(EventType::ExecutionStarted(s)) => Some(s),
        _ => None,
    }
}

impl Telemetry {
    /// A new instance from a client (StartInstance, RestartInstance): opens its create span
    /// under the request's trace context, or else the current one (the RPC span), and records
    /// the trace in its ExecutionStarted.
    pub fn creating(&self, new: &mut NewInstance, now: Micros) -> Creation {
        let Some(inner) = &self.inner else { return Creation::default() };
        let Some(started) = started_mut(&mut new.start.event) else {
            return Creation::default();
        };
        let parent = match started.parent_trace_context.as_ref().and_then(context::parse) {
            Some(caller) => Context::new().with_remote_span_context(caller),
            None => Context::current(),
        };
        open(inner, started, &parent, vec![], now)
    }

    /// Prepares the spans of an orchestration step before it is committed: marks the trace
    /// context of new executions (children, continue-as-new) and of scheduled activities in
    /// `commit`, and collects the spans this step completes. `history` and `new_events` are
    /// what the worker was sent.
    pub fn step(
        &self,
        instance: &Instance,
        history: &[HistoryEvent],
        new_events: &[HistoryEvent],
        commit: &mut Commit,
        now: Micros,
    ) -> Step {
        let Some(inner) = &self.inner else { return Step::default() };
        let Some(execution) = started_event(history.iter().chain(new_events)).and_then(Execution::of) else {
            return Step::default();
        };
        let mut step = Step {
            inner: Some(inner.clone()),
            ..Default::default()
        };
        let base = |kind: &'static str, name: &str| {
            vec![
                KeyValue::new(key::TYPE, kind),
                KeyValue::new(key::NAME, name.to_string()),
                KeyValue::new(key::INSTANCE_ID, instance.instance_id.clone()),
            ]
        };

        // When each task was scheduled, matched to its results as the engine matches them.
        let mut schedulings: Ledger<Micros> = Ledger::default();
        let mut timers: HashMap<i32, Micros> = HashMap::new();
        // Entity calls by request id: when sent, to which entity, which operation.
        let mut calls: HashMap<String, (Micros, String, String)> = HashMap::new();
        let mut scheduled_names: HashMap<i32, (String, Option<String>)> = HashMap::new();
        for e in history {
            match &e.event_type {
                Some(EventType::TaskScheduled(t)) => {
                    _ = schedulings.schedule(e.event_id, event_time(e));
                    scheduled_names.insert(e.event_id, (t.name.clone(), t.version.clone()));
                }
                Some(EventType::TaskCompleted(r)) => _ = schedulings.answer(r.task_scheduled_id),
                Some(EventType::TaskFailed(r)) => _ = schedulings.answer(r.task_scheduled_id),
                Some(EventType::TimerCreated(_)) => _ = timers.insert(e.event_id, event_time(e)),
                Some(EventType::EntityOperationCalled(c)) => {
                    let target = c.target_instance_id.clone().unwrap_or_default();
                    calls.insert(c.request_id.clone(), (event_time(e), target, c.operation.clone()));
                }
                _ => {}
            }
        }

        for e in new_events {
            let (task_id, failure) = match &e.event_type {
                Some(EventType::TaskCompleted(r)) => (r.task_scheduled_id, None),
                Some(EventType::TaskFailed(r)) => (
                    r.task_scheduled_id,
                    Some(r.failure_details.as_ref().map(|f| f.error_message.clone()).unwrap_or_default()),
                ),
                Some(EventType::TimerFired(f)) => {
                    let Some(created) = timers.get(&f.timer_id) else { continue };
                    let mut attributes = base("timer", &execution.name);
                    attributes.push(KeyValue::new(key::TASK_ID, i64::from(f.timer_id)));
                    if let Some(at) = &f.fire_at {
                        attributes.push(KeyValue::new(key::FIRE_AT, at.to_string()));
                    }
                    step.records.push(Record {
                        name: format!("orchestration:{}:timer", execution.name),
                        kind: SpanKind::Internal,
                        parent: execution.create.clone(),
                        id: None,
                        start: *created,
                        end: event_time(e),
                        attributes,
                        events: vec![],
                        error: None,
                    });
                    continue;
                }
                Some(EventType::EntityOperationCompleted(EntityOperationCompletedEvent { request_id, .. }))
                | Some(EventType::EntityOperationFailed(EntityOperationFailedEvent { request_id, .. })) => {
                    // One span per entity call, from the call to its result, in the caller's trace.
                    let Some((sent, target, operation)) = calls.get(request_id) else {
                        continue;
                    };
                    let error = match &e.event_type {
                        Some(EventType::EntityOperationFailed(f)) => {
                            Some(f.failure_details.as_ref().map(|d| d.error_message.clone()).unwrap_or_default())
                        }
                        _ => None,
                    };
                    let entity = target
                        .strip_prefix('@')
                        .and_then(|t| t.split_once('@'))
                        .map(|(n, _)| n)
                        .unwrap_or(target);
                    let mut attributes = base("entity", entity);
                    attributes.push(KeyValue::new("durabletask.entity.instance_id", target.clone()));
                    attributes.push(KeyValue::new("durabletask.entity.operation", operation.clone()));
                    step.records.push(Record {
                        name: format!("entity:{entity}:{operation}"),
                        kind: SpanKind::Client,
                        parent: execution.create.clone(),
                        id: None,
                        start: *sent,
                        end: event_time(e),
                        attributes,
                        events: vec![],
                        error,
                    });
                    continue;
                }
                Some(EventType::EventRaised(r)) => {
                    step.records.push(Record {
                        name: span_name("orchestration_event", &r.name, None),
                        kind: SpanKind::Consumer,
                        parent: execution.create.clone(),
                        id: None,
                        start: event_time(e),
                        end: now,
                        attributes: base("event", &r.name),
                        events: vec![],
                        error: None,
                    });
                    continue;
                }
                _ => continue,
            };
            let Some((nth, &scheduled_at)) = schedulings.answer(task_id) else {
                continue;
            };
            let (name, version) = scheduled_names.get(&task_id).cloned().unwrap_or_default();
            let mut attributes = base("activity", &name);
            attributes.push(KeyValue::new(key::TASK_ID, i64::from(task_id)));
            if let Some(v) = &version {
                attributes.push(KeyValue::new(key::VERSION, v.clone()));
            }
            step.records.push(Record {
                name: span_name("activity", &name, version.as_deref()),
                kind: SpanKind::Client,
                parent: execution.create.clone(),
                id: Some(ids::activity_span_id(execution.span_id, task_id, nth)),
                start: scheduled_at,
                end: event_time(e),
                attributes,
                events: vec![],
                error: failure,
            });
        }

        // The worker running an activity continues the trace from its activity span.
        for a in &mut commit.activities {
            let nth = schedulings.schedule(a.request.task_id, now);
            let id = ids::activity_span_id(execution.span_id, a.request.task_id, nth);
            a.request.parent_trace_context = Some(context::to_proto(&context::sibling(&execution.create, id)));
        }

        for child in &mut commit.children {
            if let Some(started) = started_mut(&mut child.child.start.event) {
                let parent = Context::new().with_remote_span_context(execution.create.clone());
                step.creations.push(open(inner, started, &parent, vec![], now));
            }
        }

        let continued = matches!(&commit.history, HistoryWrite::Replace(h) if h.is_empty());
        if continued {
            // Each generation gets its own trace, linked to the one before: an eternal
            // orchestration would otherwise grow one trace without bound.
            let link = Link::new(execution.span(), vec![KeyValue::new("durabletask.link", "continued_from")], 0);
            let next = commit
                .messages
                .iter_mut()
                .filter(|m| m.instance_id == instance.instance_id)
                .find_map(|m| started_mut(&mut m.event));
            if let Some(started) = next {
                step.creations.push(open(inner, started, &Context::new(), vec![link], now));
            }
        }
        if let HistoryWrite::Replace(rewritten) = &mut commit.history {
            // A rewound execution runs again: its orchestration span must not reuse the id of
            // the failed run's, which has been exported already.
            if let Some(started) = rewritten.iter_mut().find_map(started_mut) {
                started.orchestration_span_id = Some(ids::random_span_id().to_string());
            }
        }

        let status = if continued {
            Some(OrchestrationStatus::ContinuedAsNew)
        } else {
            Some(commit.instance.status).filter(|_| commit.instance.is_terminal())
        };
        if let Some(status) = status {
            let mut attributes = base("orchestration", &execution.name);
            attributes.push(KeyValue::new(key::EXECUTION_ID, instance.execution_id.clone()));
            if let Some(v) = &execution.version {
                attributes.push(KeyValue::new(key::VERSION, v.clone()));
            }
            let runtime_status = status.as_str_name().trim_start_matches("ORCHESTRATION_STATUS_");
            attributes.push(KeyValue::new(key::RUNTIME_STATUS, runtime_status.to_string()));
            attributes.push(KeyValue::new(key::STATUS, title_case(runtime_status)));
            let error = (status == OrchestrationStatus::Failed).then(|| {
                commit
                    .instance
                    .failure_details
                    .as_ref()
                    .map(|f| f.error_message.clone())
                    .unwrap_or_default()
            });
            step.records.push(Record {
                name: span_name("orchestration", &execution.name, execution.version.as_deref()),
                kind: SpanKind::Server,
                parent: execution.create.clone(),
                id: Some(execution.span_id),
                start: execution.started_at,
                end: now,
                attributes,
                events: history.iter().chain(new_events).filter_map(span_event).collect(),
                error,
            });
        }
        step
    }
}

/// "CONTINUED_AS_NEW" -> "ContinuedAsNew", the form the SDKs report.
fn title_case(status: &str) -> String {
    status
        .split('_')
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_string() + &chars.as_str().to_lowercase())
                .unwrap_or_default()
        })
        .collect()
}

/// Lifecycle events of the orchestration span, from its history.
fn span_event(e: &HistoryEvent) -> Option<Event> {
    let reason = |r: &Option<String>| vec![KeyValue::new("reason", r.clone().unwrap_or_default())];
    let (name, attributes) = match &e.event_type {
        Some(EventType::EventRaised(r)) => (
            "Received external event",
            vec![
                KeyValue::new("name", r.name.clone()),
                KeyValue::new("size", r.input.as_ref().map_or(0, |i| i.len() as i64)),
            ],
        ),
        Some(EventType::ExecutionSuspended(s)) => ("Execution suspended", reason(&s.input)),
        Some(EventType::ExecutionResumed(s)) => ("Execution resumed", reason(&s.input)),
        Some(EventType::ExecutionTerminated(t)) => ("Execution terminated", reason(&t.input)),
        _ => return None,
    };
    Some(Event::new(name, system_time(event_time(e)), attributes, 0))
}

/// Opens the create span of a new execution under `parent` and records the trace in its
/// ExecutionStarted: the create span's context as parentTraceContext (what the SDKs parent
/// their own spans on), and a fresh orchestration span id.
fn open(inner: &Inner, started: &mut ExecutionStartedEvent, parent: &Context, links: Vec<Link>, now: Micros) -> Creation {
    let instance = started.orchestration_instance.clone().unwrap_or_default();
    let mut attributes = vec![
        KeyValue::new(key::TYPE, "orchestration"),
        KeyValue::new(key::NAME, started.name.clone()),
        KeyValue::new(key::INSTANCE_ID, instance.instance_id),
        KeyValue::new(key::EXECUTION_ID, instance.execution_id.unwrap_or_default()),
    ];
    if let Some(v) = &started.version {
        attributes.push(KeyValue::new(key::VERSION, v.clone()));
    }
    if let Some(p) = &started.parent_instance {
        attributes.push(KeyValue::new(key::TASK_ID, i64::from(p.task_scheduled_id)));
    }
    let span = inner
        .tracer
        .span_builder(span_name("create_orchestration", &started.name, started.version.as_deref()))
        .with_kind(SpanKind::Producer)
        .with_start_time(system_time(now))
        .with_attributes(attributes)
        .with_links(links)
        .start_with_context(&inner.tracer, parent);
    started.parent_trace_context = Some(context::to_proto(span.span_context()));
    started.orchestration_span_id = Some(ids::random_span_id().to_string());
    Creation { span: Some(span) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        assert_eq!(span_name("activity", "Charge", None), "activity:Charge");
        assert_eq!(span_name("orchestration", "Order", Some("2")), "orchestration:Order@(2)");
        assert_eq!(title_case("CONTINUED_AS_NEW"), "ContinuedAsNew");
    }
}

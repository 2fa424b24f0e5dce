//! What the dashboard shows, as JSON: instance rows, one instance's history, and the history
//! folded into timeline bars. Pure functions of stored records, so they are tested here.

use serde_json::{Map, Value, json};

use crate::engine::events::type_name;
use crate::model::{Instance, runtime_status_name};
use crate::proto::history_event::EventType;
use crate::proto::{HistoryEvent, TaskFailureDetails};

/// Milliseconds since the epoch, fractions kept (history timestamps may be finer than a ms).
fn millis(ts: &Option<prost_types::Timestamp>) -> Option<f64> {
    ts.as_ref().map(|t| t.seconds as f64 * 1000.0 + f64::from(t.nanos) / 1_000_000.0)
}

/// Milliseconds since the epoch (what a browser's `Date` takes) of a stored time.
pub fn stored_millis(us: crate::time::Micros) -> f64 {
    us as f64 / 1000.0
}

/// A row of the instance list.
pub fn row(i: &Instance) -> Value {
    json!({
        "instanceId": i.instance_id,
        "name": i.name,
        "version": i.version,
        "runtimeStatus": runtime_status_name(i.status),
        "createdAt": stored_millis(i.created_at),
        "lastUpdatedAt": stored_millis(i.updated_at),
        "completedAt": i.completed_at.map(stored_millis),
        "customStatus": i.custom_status,
        "parentInstanceId": i.parent_instance_id,
        "failure": i.failure_details.as_ref().map(|f| f.error_message.clone()),
    })
}

/// Everything about one instance the instance page shows besides its history.
pub fn instance(i: &Instance) -> Value {
    let mut v = row(i);
    let extra = json!({
        "executionId": i.execution_id,
        "scheduledStartAt": i.scheduled_start_at.map(stored_millis),
        "input": i.input,
        "output": i.output,
        "failureDetails": i.failure_details.as_ref().map(failure),
        "tags": i.tags,
    });
    if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
        v.extend(extra);
    }
    v
}

pub fn failure(f: &TaskFailureDetails) -> Value {
    json!({
        "errorType": f.error_type,
        "errorMessage": f.error_message,
        "stackTrace": f.stack_trace,
        "isNonRetriable": f.is_non_retriable,
        "innerFailure": f.inner_failure.as_deref().map(failure),
    })
}

/// The W3C trace id Outrigger recorded for the current execution: ExecutionStarted's
/// `parentTraceContext` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(history: &[HistoryEvent]) -> Option<String> {
    history.iter().find_map(|e| match &e.event_type {
        Some(EventType::ExecutionStarted(s)) => {
            let parent = &s.parent_trace_context.as_ref()?.trace_parent;
            let id = parent.split('-').nth(1)?;
            (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0')).then(|| id.to_string())
        }
        _ => None,
    })
}

/// Fills a trace URL template (`{traceId}`, `{instanceId}`); the values are URL-safe already
/// (hex) or percent-encoded.
pub fn trace_url(template: &str, trace_id: &str, instance_id: &str) -> String {
    let id: String = percent_encoding::utf8_percent_encode(instance_id, percent_encoding::NON_ALPHANUMERIC).collect();
    template.replace("{traceId}", trace_id).replace("{instanceId}", &id)
}

/// One history event as a table row: type, time, and the fields worth reading.
pub fn event(e: &HistoryEvent) -> Value {
    let mut v = Map::new();
    v.insert("eventId".into(), e.event_id.into());
    v.insert("timestamp".into(), json!(millis(&e.timestamp)));
    let Some(kind) = &e.event_type else {
        v.insert("type".into(), "Unknown".into());
        return Value::Object(v);
    };
    v.insert("type".into(), type_name(kind).into());
    let mut put = |k: &str, value: Value| {
        if !value.is_null() {
            v.insert(k.into(), value);
        }
    };
    let mut failed = false;
    match kind {
        EventType::ExecutionStarted(s) => {
            put("name", json!(s.name));
            put("version", json!(s.version));
            put("input", json!(s.input));
            put("scheduledStartTime", json!(millis(&s.scheduled_start_timestamp)));
        }
        EventType::ExecutionCompleted(c) => {
            let status = crate::proto::OrchestrationStatus::try_from(c.orchestration_status)
                .map(runtime_status_name)
                .unwrap_or("Unknown");
            put("status", json!(status));
            put("result", json!(c.result));
            failed = c.failure_details.is_some();
            put("failure", json!(c.failure_details.as_ref().map(failure)));
        }
        EventType::ExecutionTerminated(t) => put("reason", json!(t.input)),
        EventType::TaskScheduled(t) => {
            put("name", json!(t.name));
            put("input", json!(t.input));
        }
        EventType::TaskCompleted(t) => {
            put("taskScheduledId", json!(t.task_scheduled_id));
            put("result", json!(t.result));
        }
        EventType::TaskFailed(t) => {
            failed = true;
            put("taskScheduledId", json!(t.task_scheduled_id));
            put("failure", json!(t.failure_details.as_ref().map(failure)));
        }
        EventType::SubOrchestrationInstanceCreated(s) => {
            put("name", json!(s.name));
            put("instanceId", json!(s.instance_id));
            put("input", json!(s.input));
        }
        EventType::SubOrchestrationInstanceCompleted(s) => {
            put("taskScheduledId", json!(s.task_scheduled_id));
            put("result", json!(s.result));
        }
        EventType::SubOrchestrationInstanceFailed(s) => {
            failed = true;
            put("taskScheduledId", json!(s.task_scheduled_id));
            put("failure", json!(s.failure_details.as_ref().map(failure)));
        }
        EventType::TimerCreated(t) => put("fireAt", json!(millis(&t.fire_at))),
        EventType::TimerFired(t) => {
            put("timerId", json!(t.timer_id));
            put("fireAt", json!(millis(&t.fire_at)));
        }
        EventType::EventSent(s) => {
            put("name", json!(s.name));
            put("instanceId", json!(s.instance_id));
            put("input", json!(s.input));
        }
        EventType::EventRaised(r) => {
            put("name", json!(r.name));
            put("input", json!(r.input));
        }
        EventType::ContinueAsNew(c) => put("input", json!(c.input)),
        EventType::ExecutionSuspended(s) => put("reason", json!(s.input)),
        EventType::ExecutionResumed(r) => put("reason", json!(r.input)),
        EventType::ExecutionRewound(r) => put("reason", json!(r.reason)),
        EventType::EntityOperationFailed(f) => {
            failed = true;
            put("failure", json!(f.failure_details.as_ref().map(failure)));
        }
        _ => {}
    }
    v.insert("failed".into(), failed.into());
    Value::Object(v)
}

/// A bar (or, without an end, a bar still growing) of the instance's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub kind: &'static str,
    pub name: String,
    pub start: f64,
    /// `None` while it runs (or, for a mark, always).
    pub end: Option<f64>,
    pub failed: bool,
    /// A sub-orchestration's instance id, for a link.
    pub instance_id: Option<String>,
}

impl Bar {
    fn new(kind: &'static str, name: impl Into<String>, start: f64) -> Bar {
        Bar {
            kind,
            name: name.into(),
            start,
            end: None,
            failed: false,
            instance_id: None,
        }
    }

    fn json(&self) -> Value {
        json!({
            "kind": self.kind,
            "name": self.name,
            "start": self.start,
            "end": self.end,
            "failed": self.failed,
            "instanceId": self.instance_id,
        })
    }
}

/// Folds a history into timeline bars, in the order they started: the execution itself, then
/// activities (scheduled → result), sub-orchestrations (created → result), timers (created →
/// fired), suspensions (suspended → resumed), and marks for events that arrived (external
/// events, termination). History does not record when an orchestrator began waiting for an
/// event, so an event is a mark at its arrival rather than a bar.
pub fn timeline(history: &[HistoryEvent]) -> Vec<Bar> {
    let mut bars: Vec<Bar> = vec![];
    // Bars waiting for their end, by the scheduling event's id.
    let mut open: std::collections::HashMap<(&'static str, i32), usize> = Default::default();
    let mut suspended: Option<usize> = None;
    for e in history {
        let (Some(kind), Some(at)) = (&e.event_type, millis(&e.timestamp)) else {
            continue;
        };
        let mut close = |key: (&'static str, i32), failed: bool, bars: &mut Vec<Bar>| {
            if let Some(i) = open.remove(&key) {
                bars[i].end = Some(at);
                bars[i].failed = failed;
            }
        };
        match kind {
            EventType::ExecutionStarted(s) => {
                open.insert(("orchestration", 0), bars.len());
                bars.push(Bar::new("orchestration", s.name.clone(), at));
            }
            EventType::ExecutionCompleted(c) => close(("orchestration", 0), c.failure_details.is_some(), &mut bars),
            EventType::ExecutionTerminated(_) => {
                bars.push(Bar::new("terminated", "terminated", at));
                close(("orchestration", 0), false, &mut bars);
            }
            EventType::TaskScheduled(t) => {
                open.insert(("activity", e.event_id), bars.len());
                bars.push(Bar::new("activity", t.name.clone(), at));
            }
            EventType::TaskCompleted(t) => close(("activity", t.task_scheduled_id), false, &mut bars),
            EventType::TaskFailed(t) => close(("activity", t.task_scheduled_id), true, &mut bars),
            EventType::SubOrchestrationInstanceCreated(s) => {
                open.insert(("suborchestration", e.event_id), bars.len());
                let mut bar = Bar::new("suborchestration", s.name.clone(), at);
                bar.instance_id = Some(s.instance_id.clone());
                bars.push(bar);
            }
            EventType::SubOrchestrationInstanceCompleted(s) => close(("suborchestration", s.task_scheduled_id), false, &mut bars),
            EventType::SubOrchestrationInstanceFailed(s) => close(("suborchestration", s.task_scheduled_id), true, &mut bars),
            EventType::TimerCreated(_) => {
                open.insert(("timer", e.event_id), bars.len());
                bars.push(Bar::new("timer", "timer", at));
            }
            EventType::TimerFired(t) => close(("timer", t.timer_id), false, &mut bars),
            EventType::EventRaised(r) => bars.push(Bar::new("event", r.name.clone(), at)),
            EventType::ExecutionSuspended(_) => {
                suspended = Some(bars.len());
                bars.push(Bar::new("suspended", "suspended", at));
            }
            EventType::ExecutionResumed(_) => {
                if let Some(i) = suspended.take() {
                    bars[i].end = Some(at);
                }
            }
            _ => {}
        }
    }
    bars
}

/// The timeline as the page draws it.
pub fn timeline_json(history: &[HistoryEvent]) -> Value {
    Value::Array(timeline(history).iter().map(Bar::json).collect())
}

/// The sub-orchestrations this execution started, with how each ended so far.
pub fn children(history: &[HistoryEvent]) -> Value {
    let bars = timeline(history);
    Value::Array(
        bars.iter()
            .filter(|b| b.kind == "suborchestration")
            .map(|b| {
                json!({
                    "instanceId": b.instance_id,
                    "name": b.name,
                    "state": match (b.end, b.failed) {
                        (None, _) => "Running",
                        (Some(_), false) => "Completed",
                        (Some(_), true) => "Failed",
                    },
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::events;
    use crate::proto::*;

    /// An event at `ms` milliseconds (the unit the dashboard shows) since the epoch.
    fn at(ms: i64, id: i32, kind: EventType) -> HistoryEvent {
        events::event(id, ms * 1000, kind)
    }

    fn history() -> Vec<HistoryEvent> {
        vec![
            at(
                1_000,
                -1,
                EventType::ExecutionStarted(ExecutionStartedEvent {
                    name: "Order".into(),
                    parent_trace_context: Some(TraceContext {
                        trace_parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            ),
            at(
                1_010,
                0,
                EventType::TaskScheduled(TaskScheduledEvent {
                    name: "Charge".into(),
                    ..Default::default()
                }),
            ),
            at(1_020, 1, EventType::TimerCreated(TimerCreatedEvent::default())),
            at(
                1_500,
                -1,
                EventType::TaskCompleted(TaskCompletedEvent {
                    task_scheduled_id: 0,
                    result: None,
                }),
            ),
            at(
                1_600,
                2,
                EventType::SubOrchestrationInstanceCreated(SubOrchestrationInstanceCreatedEvent {
                    instance_id: "child-1".into(),
                    name: "Ship".into(),
                    ..Default::default()
                }),
            ),
            at(
                2_020,
                -1,
                EventType::TimerFired(TimerFiredEvent {
                    fire_at: None,
                    timer_id: 1,
                }),
            ),
            at(
                2_100,
                -1,
                EventType::EventRaised(EventRaisedEvent {
                    name: "Approval".into(),
                    input: None,
                }),
            ),
            at(
                2_200,
                3,
                EventType::TaskScheduled(TaskScheduledEvent {
                    name: "Notify".into(),
                    ..Default::default()
                }),
            ),
            at(
                2_900,
                -1,
                EventType::TaskFailed(TaskFailedEvent {
                    task_scheduled_id: 3,
                    failure_details: Some(TaskFailureDetails {
                        error_message: "boom".into(),
                        ..Default::default()
                    }),
                }),
            ),
        ]
    }

    #[test]
    fn pairs_each_start_with_its_result_by_id() {
        let bars = timeline(&history());
        let find = |name: &str| bars.iter().find(|b| b.name == name).unwrap_or_else(|| panic!("{name} bar"));
        assert_eq!((find("Charge").start, find("Charge").end), (1_010.0, Some(1_500.0)));
        assert!(!find("Charge").failed);
        assert_eq!((find("timer").start, find("timer").end), (1_020.0, Some(2_020.0)));
        assert_eq!(find("Notify").end, Some(2_900.0));
        assert!(find("Notify").failed, "a failed activity is marked");
        let ship = find("Ship");
        assert_eq!(
            (ship.end, ship.instance_id.as_deref()),
            (None, Some("child-1")),
            "still running, linked"
        );
        assert_eq!((find("Approval").kind, find("Approval").end), ("event", None));
        assert_eq!((find("Order").kind, find("Order").end), ("orchestration", None));
    }

    #[test]
    fn a_completed_execution_closes_its_bar_and_children_report_state() {
        let mut h = history();
        h.push(at(
            3_000,
            -1,
            EventType::SubOrchestrationInstanceFailed(SubOrchestrationInstanceFailedEvent {
                task_scheduled_id: 2,
                failure_details: None,
            }),
        ));
        h.push(at(
            3_100,
            4,
            EventType::ExecutionCompleted(ExecutionCompletedEvent {
                orchestration_status: OrchestrationStatus::Failed as i32,
                failure_details: Some(TaskFailureDetails::default()),
                result: None,
            }),
        ));
        let bars = timeline(&h);
        assert_eq!((bars[0].end, bars[0].failed), (Some(3_100.0), true));
        assert_eq!(children(&h), json!([{"instanceId": "child-1", "name": "Ship", "state": "Failed"}]));
    }

    #[test]
    fn reads_the_trace_id_from_execution_started() {
        assert_eq!(trace_id(&history()).as_deref(), Some("0af7651916cd43dd8448eb211c80319c"));
        assert_eq!(trace_id(&history()[1..]), None);
        assert_eq!(
            trace_url("http://jaeger:16686/trace/{traceId}?i={instanceId}", "abc", "a b/c"),
            "http://jaeger:16686/trace/abc?i=a%20b%2Fc"
        );
    }

    #[test]
    fn events_carry_their_details_and_failure_flag() {
        let h = history();
        let failed = event(&h[8]);
        assert_eq!(failed["type"], "TaskFailed");
        assert_eq!(failed["failed"], true);
        assert_eq!(failed["failure"]["errorMessage"], "boom");
        let scheduled = event(&h[1]);
        assert_eq!(
            (scheduled["name"].as_str(), scheduled["eventId"].as_i64()),
            (Some("Charge"), Some(0))
        );
        assert_eq!(scheduled["timestamp"], 1_010.0);
        assert_eq!(scheduled["failed"], false);
    }
}

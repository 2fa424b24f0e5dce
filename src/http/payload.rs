//! The JSON bodies of the Durable Functions API: an instance's status object (camelCase,
//! second-precision times) and its `historyEvents` (PascalCase, as Durable Functions writes
//! them, with each completion carrying the name and time of what it completes).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::model::runtime_status_name;
use crate::proto::history_event::EventType;
use crate::proto::{HistoryEvent, OrchestrationState, OrchestrationStatus, TaskFailureDetails};
use crate::rfc3339::{self, Precision};

/// A payload as stored (JSON text written by an SDK) as a JSON value; text that is not JSON
/// is returned as a string rather than refused.
pub fn json_value(text: Option<&str>) -> Value {
    match text {
        None => Value::Null,
        Some(t) => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string())),
    }
}

pub fn time_of(ts: &Option<prost_types::Timestamp>, precision: Precision) -> Value {
    match ts {
        Some(t) => Value::String(rfc3339::format(t.seconds * 1_000_000 + i64::from(t.nanos) / 1000, precision)),
        None => Value::Null,
    }
}

fn failure(f: &TaskFailureDetails) -> Value {
    json!({
        "errorType": f.error_type,
        "errorMessage": f.error_message,
        "stackTrace": f.stack_trace,
    })
}

/// What to include in a status object.
#[derive(Debug, Clone, Copy, Default)]
pub struct Show {
    pub input: bool,
    pub output: bool,
}

/// The status object of one instance.
pub fn status(s: &OrchestrationState, show: Show) -> Map<String, Value> {
    let runtime = OrchestrationStatus::try_from(s.orchestration_status).unwrap_or(OrchestrationStatus::Running);
    let mut output = if show.output {
        json_value(s.output.as_deref())
    } else {
        Value::Null
    };
    // A failed orchestration's "output" is its failure message, as in Durable Functions.
    if show.output
        && output.is_null()
        && let Some(f) = &s.failure_details
    {
        output = Value::String(f.error_message.clone());
    }
    let mut m = Map::new();
    m.insert("name".into(), json!(s.name));
    m.insert("instanceId".into(), json!(s.instance_id));
    m.insert("runtimeStatus".into(), json!(runtime_status_name(runtime)));
    m.insert(
        "input".into(),
        if show.input { json_value(s.input.as_deref()) } else { Value::Null },
    );
    m.insert("customStatus".into(), json_value(s.custom_status.as_deref()));
    m.insert("output".into(), output);
    m.insert("createdTime".into(), time_of(&s.created_timestamp, Precision::Seconds));
    m.insert("lastUpdatedTime".into(), time_of(&s.last_updated_timestamp, Precision::Seconds));
    if let Some(f) = &s.failure_details {
        m.insert("failureDetails".into(), failure(f));
    }
    m
}

/// The history in the Durable Functions shape. Orchestrator episode markers are left out; a
/// scheduled task or sub-orchestration that has finished shows as its completion (carrying
/// `FunctionName` and `ScheduledTime`), one still running as the scheduling event.
/// `show_output` adds results and inputs.
pub fn history(events: &[HistoryEvent], show_output: bool) -> Vec<Value> {
    // Scheduling events by event id: (name, scheduled time, index in the output).
    let mut scheduled: HashMap<i32, (String, Value, usize)> = HashMap::new();
    let mut out: Vec<Option<Value>> = vec![];
    let payload = |text: &Option<String>| {
        if show_output { json_value(text.as_deref()) } else { Value::Null }
    };
    for e in events {
        let Some(kind) = &e.event_type else { continue };
        let mut m = Map::new();
        m.insert("EventType".into(), json!(crate::engine::events::kind_name(e)));
        m.insert("EventId".into(), json!(e.event_id));
        let mut completes = None;
        match kind {
            EventType::OrchestratorStarted(_) | EventType::OrchestratorCompleted(_) => continue,
            EventType::ExecutionStarted(s) => {
                m.insert("FunctionName".into(), json!(s.name));
                m.insert("Input".into(), payload(&s.input));
                if s.scheduled_start_timestamp.is_some() {
                    m.insert("ScheduledStartTime".into(), time_of(&s.scheduled_start_timestamp, Precision::Ticks));
                }
            }
            EventType::ExecutionCompleted(c) => {
                let status = OrchestrationStatus::try_from(c.orchestration_status).unwrap_or(OrchestrationStatus::Completed);
                m.insert("OrchestrationStatus".into(), json!(runtime_status_name(status)));
                m.insert("Result".into(), payload(&c.result));
                if let Some(f) = &c.failure_details {
                    m.insert("FailureDetails".into(), failure(f));
                }
            }
            EventType::ExecutionTerminated(t) => {
                m.insert("Input".into(), payload(&t.input));
            }
            EventType::TaskScheduled(t) => {
                m.insert("Name".into(), json!(t.name));
                m.insert("Input".into(), payload(&t.input));
                scheduled.insert(e.event_id, (t.name.clone(), time_of(&e.timestamp, Precision::Ticks), out.len()));
            }
            EventType::SubOrchestrationInstanceCreated(c) => {
                m.insert("Name".into(), json!(c.name));
                m.insert("InstanceId".into(), json!(c.instance_id));
                m.insert("Input".into(), payload(&c.input));
                scheduled.insert(e.event_id, (c.name.clone(), time_of(&e.timestamp, Precision::Ticks), out.len()));
            }
            EventType::TaskCompleted(c) => {
                m.insert("Result".into(), payload(&c.result));
                completes = Some(c.task_scheduled_id);
            }
            EventType::SubOrchestrationInstanceCompleted(c) => {
                m.insert("Result".into(), payload(&c.result));
                completes = Some(c.task_scheduled_id);
            }
            EventType::TaskFailed(f) => {
                if let Some(d) = &f.failure_details {
                    m.insert("Reason".into(), json!(d.error_message));
                    m.insert("FailureDetails".into(), failure(d));
                }
                completes = Some(f.task_scheduled_id);
            }
            EventType::SubOrchestrationInstanceFailed(f) => {
                if let Some(d) = &f.failure_details {
                    m.insert("Reason".into(), json!(d.error_message));
                    m.insert("FailureDetails".into(), failure(d));
                }
                completes = Some(f.task_scheduled_id);
            }
            EventType::TimerCreated(t) => {
                m.insert("FireAt".into(), time_of(&t.fire_at, Precision::Ticks));
            }
            EventType::TimerFired(t) => {
                m.insert("FireAt".into(), time_of(&t.fire_at, Precision::Ticks));
                m.insert("TimerId".into(), json!(t.timer_id));
            }
            EventType::EventRaised(r) => {
                m.insert("Name".into(), json!(r.name));
                m.insert("Input".into(), payload(&r.input));
            }
            EventType::EventSent(s) => {
                m.insert("Name".into(), json!(s.name));
                m.insert("InstanceId".into(), json!(s.instance_id));
                m.insert("Input".into(), payload(&s.input));
            }
            EventType::ContinueAsNew(c) => {
                m.insert("Input".into(), payload(&c.input));
            }
            EventType::ExecutionSuspended(s) => {
                m.insert("Reason".into(), json!(s.input));
            }
            EventType::ExecutionResumed(r) => {
                m.insert("Reason".into(), json!(r.input));
            }
            EventType::ExecutionRewound(r) => {
                m.insert("Reason".into(), json!(r.reason));
            }
            _ => {}
        }
        if let Some((name, at, index)) = completes.and_then(|id| scheduled.remove(&id)) {
            m.insert("FunctionName".into(), json!(name));
            m.insert("ScheduledTime".into(), at);
            out[index] = None; // the completion stands for its scheduling event
        }
        m.insert("Timestamp".into(), time_of(&e.timestamp, Precision::Ticks));
        out.push(Some(Value::Object(m)));
    }
    out.into_iter().flatten().collect()
}

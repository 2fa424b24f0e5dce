//! Traces over a real socket: sidecars export over OTLP/gRPC to a collector running in the
//! test, while orchestrations run through the raw protocol; the tests assert the span tree.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use outrigger::proto::history_event::EventType;
use outrigger::proto::orchestrator_action::OrchestratorActionType as ActionType;
use outrigger::proto::work_item::Request as Item;
use outrigger::proto::*;
use outrigger::telemetry::{Protocol, Settings, Telemetry};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Server;

// ---------------------------------------------------------------------------------------------
// An OTLP collector
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    received: watch::Sender<usize>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        self.received.send_replace(spans.len());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> (Collector, String) {
        let collector = Collector {
            spans: Arc::default(),
            received: watch::channel(0).0,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind collector");
        let addr = listener.local_addr().expect("collector addr");
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (collector, format!("http://{addr}"))
    }

    /// Waits until the spans received satisfy `done`, and returns them.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let mut received = self.received.subscribe();
        let ready = received.wait_for(|_| done(&self.spans.lock().unwrap()));
        match tokio::time::timeout(GUARD, ready).await {
            Ok(_) => self.spans.lock().unwrap().clone(),
            Err(_) => panic!(
                "timed out waiting for {what}; spans so far: {:#?}",
                names(&self.spans.lock().unwrap())
            ),
        }
    }
}

fn names(spans: &[Span]) -> Vec<String> {
    spans.iter().map(|s| s.name.clone()).collect()
}

fn has(spans: &[Span], name: &str) -> bool {
    spans.iter().any(|s| s.name == name)
}

#[track_caller]
fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "expected exactly one span '{name}' in {:#?}", names(spans));
    found[0]
}

fn attr(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// (trace id, span id) of a traceparent.
fn ids_of(tc: &Option<TraceContext>) -> (String, String) {
    let tp = &tc.as_ref().expect("trace context set").trace_parent;
    let parts: Vec<_> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "malformed traceparent {tp}");
    (parts[1].to_string(), parts[2].to_string())
}

fn error_message(span: &Span) -> Option<String> {
    span.status
        .as_ref()
        .filter(|s| s.code == StatusCode::Error as i32)
        .map(|s| s.message.clone())
}

fn start_ms(span: &Span) -> i64 {
    (span.start_time_unix_nano / 1_000_000) as i64
}

// ---------------------------------------------------------------------------------------------
// Sidecars that export to the collector
// ---------------------------------------------------------------------------------------------

struct Traced {
    client: Client,
    telemetry: Telemetry,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

fn telemetry(endpoint: &str, rpc_spans: bool) -> Telemetry {
    let settings = Settings {
        batch_delay: Some(Duration::from_millis(20)),
        rpc_spans,
        ..Settings::new(endpoint, Protocol::Grpc)
    };
    Telemetry::start(&settings).expect("telemetry")
}

async fn serve(db: &Path, telemetry: Telemetry) -> Traced {
    let store = outrigger::store::open(&format!("sqlite://{}", db.display()), &Default::default())
        .await
        .expect("open store");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let options = outrigger::server::Options {
        telemetry: telemetry.clone(),
        ..Default::default()
    };
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        outrigger::server::run(vec![listener], store, options, shutdown)
            .await
            .expect("server");
    });
    let client = Client::connect(format!("http://{addr}")).await.expect("connect");
    Traced {
        client,
        telemetry,
        stop,
        server,
    }
}

impl Traced {
    async fn worker(&self) -> Worker {
        Worker::connect(&mut self.client.clone(), GetWorkItemsRequest::default()).await
    }

    /// Stops the server and exports its last spans, as the binary does on exit.
    async fn stop(self) {
        drop(self.client);
        let _ = self.stop.send(());
        guarded("server stop", self.server).await.expect("server task");
        let telemetry = self.telemetry;
        tokio::task::spawn_blocking(move || telemetry.shutdown()).await.expect("shutdown");
    }
}

fn caller() -> TraceContext {
    TraceContext {
        trace_parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        ..Default::default()
    }
}

fn action(id: i32, kind: ActionType) -> OrchestratorAction {
    OrchestratorAction {
        id,
        orchestrator_action_type: Some(kind),
    }
}

fn failed(id: i32, message: &str) -> OrchestratorAction {
    action(
        id,
        ActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: OrchestrationStatus::Failed as i32,
            failure_details: Some(TaskFailureDetails {
                error_type: "Boom".into(),
                error_message: message.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
}

fn saw(events: &[HistoryEvent], pick: impl Fn(&HistoryEvent) -> bool) -> bool {
    events.iter().any(pick)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn one_trace_holds_the_orchestration_its_work_and_its_child() {
    let (collector, endpoint) = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = serve(&dir.path().join("t.db"), telemetry(&endpoint, true)).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;

    let request = CreateInstanceRequest {
        instance_id: "order".into(),
        name: "Order".into(),
        parent_trace_context: Some(caller()),
        ..Default::default()
    };
    client.start_instance(request).await.expect("start");
    let (token, first) = worker.orchestration().await;
    let started = execution_started(&first.new_events[1]);
    let (trace_id, create_id) = ids_of(&started.parent_trace_context);
    assert_eq!(
        trace_id, "0af7651916cd43dd8448eb211c80319c",
        "the orchestration joins the caller's trace"
    );
    let execution_id = first.execution_id.clone().unwrap();
    let created_at = ms(first.new_events[1].timestamp.as_ref().unwrap());

    let actions = vec![
        schedule_task(0, "Charge", "1"),
        create_timer(1, now_ms()),
        action(
            2,
            ActionType::CreateSubOrchestration(CreateSubOrchestrationAction {
                instance_id: "ship".into(),
                name: "Ship".into(),
                ..Default::default()
            }),
        ),
    ];
    complete_orchestrator(&mut client, &token, "order", actions).await.expect("step 1");
    client
        .raise_event(RaiseEventRequest {
            instance_id: "order".into(),
            name: "Approval".into(),
            input: Some("\"yes\"".into()),
        })
        .await
        .expect("raise");

    // Answer work items until the parent has seen every result, then complete it.
    let mut activity_context = None;
    let mut seen: Vec<HistoryEvent> = vec![];
    loop {
        let item = worker.next().await;
        match item.request {
            Some(Item::ActivityRequest(a)) => {
                activity_context = Some(a.parent_trace_context.clone());
                complete_activity(&mut client, &item.completion_token, &a, "\"charged\"")
                    .await
                    .expect("activity");
            }
            Some(Item::OrchestratorRequest(r)) if r.instance_id == "ship" => {
                let child_started = execution_started(&r.new_events[1]);
                assert_eq!(
                    ids_of(&child_started.parent_trace_context).0,
                    trace_id,
                    "the child is in the parent's trace"
                );
                complete_orchestrator(
                    &mut client,
                    &item.completion_token,
                    "ship",
                    vec![complete(0, OrchestrationStatus::Completed, "\"shipped\"")],
                )
                .await
                .expect("child");
            }
            Some(Item::OrchestratorRequest(r)) => {
                seen.extend(r.new_events);
                let done = saw(&seen, |e| matches!(e.event_type, Some(EventType::TaskCompleted(_))))
                    && saw(&seen, |e| matches!(e.event_type, Some(EventType::TimerFired(_))))
                    && saw(&seen, |e| {
                        matches!(e.event_type, Some(EventType::SubOrchestrationInstanceCompleted(_)))
                    })
                    && saw(&seen, |e| matches!(e.event_type, Some(EventType::EventRaised(_))));
                let actions = if done {
                    vec![complete(3, OrchestrationStatus::Completed, "\"done\"")]
                } else {
                    vec![]
                };
                complete_orchestrator(&mut client, &item.completion_token, "order", actions)
                    .await
                    .expect("parent step");
                if done {
                    break;
                }
            }
            other => panic!("unexpected work item {other:?}"),
        }
    }

    let spans = collector
        .wait_for("the orchestration spans", |s| {
            has(s, "orchestration:Order") && has(s, "orchestration:Ship")
        })
        .await;
    for s in &spans {
        if !s.name.starts_with("TaskHubSidecarService/") {
            assert_eq!(hex(&s.trace_id), trace_id, "span '{}' is in another trace", s.name);
        }
    }
    let create = one(&spans, "create_orchestration:Order");
    assert_eq!(hex(&create.span_id), create_id);
    assert_eq!(hex(&create.parent_span_id), "b7ad6b7169203331", "the caller's span is the parent");
    assert_eq!(create.kind, SpanKind::Producer as i32);

    let orchestration = one(&spans, "orchestration:Order");
    assert_eq!(hex(&orchestration.span_id), started.orchestration_span_id.clone().unwrap());
    assert_eq!(hex(&orchestration.parent_span_id), create_id);
    assert_eq!(orchestration.kind, SpanKind::Server as i32);
    assert_eq!(
        start_ms(orchestration),
        created_at,
        "the orchestration span starts when the instance was created"
    );
    assert_eq!(attr(orchestration, "durabletask.type").as_deref(), Some("orchestration"));
    assert_eq!(attr(orchestration, "durabletask.task.name").as_deref(), Some("Order"));
    assert_eq!(attr(orchestration, "durabletask.task.instance_id").as_deref(), Some("order"));
    assert_eq!(attr(orchestration, "durabletask.task.execution_id"), Some(execution_id));
    assert_eq!(attr(orchestration, "durabletask.runtime_status").as_deref(), Some("COMPLETED"));
    assert_eq!(attr(orchestration, "durabletask.task.status").as_deref(), Some("Completed"));
    assert_eq!(error_message(orchestration), None);
    let received = orchestration
        .events
        .iter()
        .find(|e| e.name == "Received external event")
        .expect("external event on the orchestration span");
    assert!(
        received
            .attributes
            .iter()
            .any(|kv| kv.key == "name" && matches!(&kv.value.as_ref().unwrap().value, Some(Value::StringValue(n)) if n == "Approval"))
    );

    let activity = one(&spans, "activity:Charge");
    let (activity_trace, activity_span) = ids_of(&activity_context.expect("an activity was dispatched"));
    assert_eq!(activity_trace, trace_id);
    assert_eq!(
        hex(&activity.span_id),
        activity_span,
        "the worker's activity parent is the activity span"
    );
    assert_eq!(hex(&activity.parent_span_id), create_id);
    assert_eq!(activity.kind, SpanKind::Client as i32);
    assert_eq!(attr(activity, "durabletask.task.task_id").as_deref(), Some("0"));
    assert!(activity.end_time_unix_nano >= activity.start_time_unix_nano);

    let timer = one(&spans, "orchestration:Order:timer");
    assert_eq!(hex(&timer.parent_span_id), create_id);
    assert_eq!(attr(timer, "durabletask.type").as_deref(), Some("timer"));
    assert!(
        attr(timer, "durabletask.fire_at").is_some_and(|t| t.ends_with('Z')),
        "fire_at is RFC 3339"
    );

    let event = one(&spans, "orchestration_event:Approval");
    assert_eq!(hex(&event.parent_span_id), create_id);

    let child_create = one(&spans, "create_orchestration:Ship");
    assert_eq!(
        hex(&child_create.parent_span_id),
        create_id,
        "the child hangs under the parent's create span"
    );
    assert_eq!(attr(child_create, "durabletask.task.task_id").as_deref(), Some("2"));
    let child = one(&spans, "orchestration:Ship");
    assert_eq!(child.parent_span_id, child_create.span_id);

    let rpc = one(&spans, "TaskHubSidecarService/StartInstance");
    assert_eq!(attr(rpc, "rpc.method").as_deref(), Some("StartInstance"));
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    assert!(has(&spans, "TaskHubSidecarService/RaiseEvent"));
    assert!(
        !spans
            .iter()
            .any(|s| s.name.ends_with("/GetWorkItems") || s.name.ends_with("/CompleteActivityTask")),
        "worker RPCs are not traced"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn failures_mark_spans_as_errors() {
    let (collector, endpoint) = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = serve(&dir.path().join("t.db"), telemetry(&endpoint, true)).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;

    start(&mut client, "fails", "Fragile", None).await;
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(&mut client, &token, "fails", vec![schedule_task(0, "Flaky", "1")])
        .await
        .expect("step 1");
    let (activity_token, activity) = worker.activity().await;
    let response = ActivityResponse {
        instance_id: "fails".into(),
        task_id: activity.task_id,
        completion_token: activity_token,
        failure_details: Some(TaskFailureDetails {
            error_type: "IOError".into(),
            error_message: "disk on fire".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    client.complete_activity_task(response).await.expect("activity failure");
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(&mut client, &token, "fails", vec![failed(1, "gave up")])
        .await
        .expect("step 2");

    let spans = collector
        .wait_for("the orchestration span", |s| has(s, "orchestration:Fragile"))
        .await;
    let orchestration = one(&spans, "orchestration:Fragile");
    assert_eq!(error_message(orchestration).as_deref(), Some("gave up"));
    assert_eq!(attr(orchestration, "durabletask.runtime_status").as_deref(), Some("FAILED"));
    assert_eq!(error_message(one(&spans, "activity:Flaky")).as_deref(), Some("disk on fire"));
    // Without a caller's context, the trace starts at the StartInstance call.
    let create = one(&spans, "create_orchestration:Fragile");
    assert_eq!(create.parent_span_id, one(&spans, "TaskHubSidecarService/StartInstance").span_id);
    assert_eq!(error_message(create), None);
    sidecar.stop().await;
}

#[tokio::test]
async fn a_trace_stays_whole_across_a_sidecar_restart() {
    let (collector, endpoint) = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");

    let first = serve(&db, telemetry(&endpoint, false)).await;
    let mut client = first.client.clone();
    let mut worker = first.worker().await;
    start(&mut client, "long", "Long", None).await;
    let (token, request) = worker.orchestration().await;
    let started = execution_started(&request.new_events[1]).clone();
    let created_at = ms(request.new_events[1].timestamp.as_ref().unwrap());
    complete_orchestrator(&mut client, &token, "long", vec![schedule_task(0, "Slow", "1")])
        .await
        .expect("step 1");
    let (_, before) = worker.activity().await;
    // Visible while running: the create span, parent of the activity to come, is already out.
    collector.wait_for("the create span", |s| has(s, "create_orchestration:Long")).await;
    drop(worker);
    drop(client);
    first.stop().await;

    let second = serve(&db, telemetry(&endpoint, false)).await;
    let mut client = second.client.clone();
    let mut worker = second.worker().await;
    let (activity_token, after) = worker.activity().await;
    assert_eq!(
        after.parent_trace_context, before.parent_trace_context,
        "the activity keeps its trace context"
    );
    complete_activity(&mut client, &activity_token, &after, "\"ok\"")
        .await
        .expect("activity");
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(
        &mut client,
        &token,
        "long",
        vec![complete(1, OrchestrationStatus::Completed, "\"ok\"")],
    )
    .await
    .expect("step 2");

    let spans = collector.wait_for("the orchestration span", |s| has(s, "orchestration:Long")).await;
    let create = one(&spans, "create_orchestration:Long");
    let orchestration = one(&spans, "orchestration:Long");
    let activity = one(&spans, "activity:Slow");
    assert_eq!(orchestration.trace_id, create.trace_id);
    assert_eq!(activity.trace_id, create.trace_id);
    assert_eq!(orchestration.parent_span_id, create.span_id);
    assert_eq!(activity.parent_span_id, create.span_id);
    assert_eq!(hex(&orchestration.span_id), started.orchestration_span_id.unwrap());
    assert_eq!(hex(&activity.span_id), ids_of(&before.parent_trace_context).1);
    assert_eq!(start_ms(orchestration), created_at, "the start time survives the restart");
    assert!(
        !spans.iter().any(|s| s.name.starts_with("TaskHubSidecarService/")),
        "RPC spans were turned off"
    );
    second.stop().await;
}

#[tokio::test]
async fn each_continue_as_new_generation_gets_a_linked_trace() {
    let (collector, endpoint) = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = serve(&dir.path().join("t.db"), telemetry(&endpoint, true)).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;

    start(&mut client, "loop", "Loop", Some("0")).await;
    let (token, _) = worker.orchestration().await;
    let again = action(
        0,
        ActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: OrchestrationStatus::ContinuedAsNew as i32,
            result: Some("1".into()),
            ..Default::default()
        }),
    );
    complete_orchestrator(&mut client, &token, "loop", vec![again])
        .await
        .expect("continue as new");
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(
        &mut client,
        &token,
        "loop",
        vec![complete(0, OrchestrationStatus::Completed, "\"end\"")],
    )
    .await
    .expect("finish");

    let spans = collector
        .wait_for("both generations", |s| {
            s.iter().filter(|s| s.name == "orchestration:Loop").count() == 2
        })
        .await;
    let generations: Vec<&Span> = spans.iter().filter(|s| s.name == "orchestration:Loop").collect();
    let (first, second) = if attr(generations[0], "durabletask.runtime_status").as_deref() == Some("CONTINUED_AS_NEW") {
        (generations[0], generations[1])
    } else {
        (generations[1], generations[0])
    };
    assert_eq!(attr(first, "durabletask.runtime_status").as_deref(), Some("CONTINUED_AS_NEW"));
    assert_eq!(attr(second, "durabletask.runtime_status").as_deref(), Some("COMPLETED"));
    assert_ne!(first.trace_id, second.trace_id, "a new generation starts a new trace");
    let creates: Vec<&Span> = spans.iter().filter(|s| s.name == "create_orchestration:Loop").collect();
    assert_eq!(creates.len(), 2);
    let next = creates
        .iter()
        .find(|c| c.trace_id == second.trace_id)
        .expect("the second generation's create span");
    assert!(next.parent_span_id.is_empty(), "the new trace starts at its create span");
    assert!(
        next.links
            .iter()
            .any(|l| l.trace_id == first.trace_id && l.span_id == first.span_id),
        "the new trace links to the previous generation's orchestration span"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn an_unreachable_collector_does_not_hold_up_orchestrations() {
    // Nothing listens on port 1; both transports keep failing in the background.
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let settings = Settings {
            batch_delay: Some(Duration::from_millis(10)),
            ..Settings::new("http://127.0.0.1:1", protocol)
        };
        let dir = tempfile::tempdir().unwrap();
        let sidecar = serve(&dir.path().join("t.db"), Telemetry::start(&settings).expect("telemetry")).await;
        let mut client = sidecar.client.clone();
        let mut worker = sidecar.worker().await;
        for i in 0..5 {
            let id = format!("unexported-{i}");
            start(&mut client, &id, "Work", None).await;
            let (token, _) = worker.orchestration().await;
            complete_orchestrator(&mut client, &token, &id, vec![schedule_task(0, "Step", "1")])
                .await
                .expect("step 1");
            let (activity_token, activity) = worker.activity().await;
            complete_activity(&mut client, &activity_token, &activity, "\"ok\"")
                .await
                .expect("activity");
            let (token, _) = worker.orchestration().await;
            complete_orchestrator(
                &mut client,
                &token,
                &id,
                vec![complete(1, OrchestrationStatus::Completed, "\"ok\"")],
            )
            .await
            .expect("step 2");
            assert_eq!(
                wait_completion(&mut client, &id).await.orchestration_status(),
                OrchestrationStatus::Completed
            );
        }
        drop(worker);
        drop(client);
        sidecar.stop().await;
    }
}

#[tokio::test]
async fn without_tracing_trace_contexts_pass_through() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    let request = CreateInstanceRequest {
        instance_id: "plain".into(),
        name: "Plain".into(),
        parent_trace_context: Some(caller()),
        ..Default::default()
    };
    client.start_instance(request).await.expect("start");
    let (token, first) = worker.orchestration().await;
    let started = execution_started(&first.new_events[1]);
    assert_eq!(
        started.parent_trace_context.as_ref().map(|t| t.trace_parent.clone()),
        Some(caller().trace_parent)
    );
    assert_eq!(started.orchestration_span_id, None);
    let sdk_context = TraceContext {
        trace_parent: "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01".into(),
        ..Default::default()
    };
    let task = ScheduleTaskAction {
        name: "A".into(),
        parent_trace_context: Some(sdk_context.clone()),
        ..Default::default()
    };
    complete_orchestrator(&mut client, &token, "plain", vec![action(0, ActionType::ScheduleTask(task))])
        .await
        .expect("step");
    let (_, activity) = worker.activity().await;
    assert_eq!(activity.parent_trace_context, Some(sdk_context));
}

#[tokio::test]
async fn an_entity_call_is_a_span_in_the_callers_trace() {
    let (collector, endpoint) = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = serve(&dir.path().join("t.db"), telemetry(&endpoint, false)).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    let request = CreateInstanceRequest {
        instance_id: "caller".into(),
        name: "Caller".into(),
        parent_trace_context: Some(caller()),
        ..Default::default()
    };
    client.start_instance(request).await.expect("start");
    let (token, _) = worker.orchestration().await;
    let call = SendEntityMessageAction {
        entity_message_type: Some(send_entity_message_action::EntityMessageType::EntityOperationCalled(
            EntityOperationCalledEvent {
                request_id: "call-1".into(),
                operation: "deposit".into(),
                target_instance_id: Some("@account@a".into()),
                ..Default::default()
            },
        )),
    };
    complete_orchestrator(&mut client, &token, "caller", vec![action(1, ActionType::SendEntityMessage(call))])
        .await
        .expect("call step");
    let item = worker.next().await;
    assert!(matches!(item.request, Some(Item::EntityRequestV2(_))), "{item:?}");
    let failure = OperationResult {
        result_type: Some(operation_result::ResultType::Failure(OperationResultFailure {
            failure_details: Some(TaskFailureDetails {
                error_message: "closed account".into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    client
        .complete_entity_task(EntityBatchResult {
            results: vec![failure],
            completion_token: item.completion_token,
            ..Default::default()
        })
        .await
        .expect("entity batch");
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(
        &mut client,
        &token,
        "caller",
        vec![complete(2, OrchestrationStatus::Completed, "1")],
    )
    .await
    .expect("final step");

    let spans = collector
        .wait_for("the entity span", |s| {
            has(s, "entity:account:deposit") && has(s, "orchestration:Caller")
        })
        .await;
    let span = one(&spans, "entity:account:deposit");
    assert_eq!(hex(&span.trace_id), "0af7651916cd43dd8448eb211c80319c", "in the caller's trace");
    assert_eq!(attr(span, "durabletask.type").as_deref(), Some("entity"));
    assert_eq!(attr(span, "durabletask.entity.operation").as_deref(), Some("deposit"));
    assert_eq!(attr(span, "durabletask.entity.instance_id").as_deref(), Some("@account@a"));
    assert_eq!(error_message(span).as_deref(), Some("closed account"));
    sidecar.stop().await;
}

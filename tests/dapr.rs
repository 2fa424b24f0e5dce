//! The Dapr-dialect listener: every wire conflict between the two dialects (a message of one
//! sent to the other's listener is refused as INVALID_ARGUMENT or understood correctly, never
//! misread), the translation of work items and history, stateful history, health pings, and
//! interop between clients and workers of both dialects on one task hub.
#![allow(deprecated)] // CompleteOrchestratorTask and TraceContext.spanId: what SDKs still send

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, GUARD, Worker, guarded};
use outrigger::grpc::dapr::proto as dp;
use outrigger::proto as ms;
use outrigger::proto::orchestrator_action::OrchestratorActionType as MsAction;
use outrigger::server::{Listeners, Options};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;

type DaprClient = dp::task_hub_sidecar_service_client::TaskHubSidecarServiceClient<Channel>;
use dp::history_event::EventType as DpEvent;
use dp::workflow_action::WorkflowActionType as DpAction;

/// A sidecar with both listeners on one store.
struct Both {
    ms: Client,
    dapr: DaprClient,
    ms_addr: SocketAddr,
    dapr_addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Both {
    async fn start() -> Both {
        Both::with(|_| {}).await
    }

    async fn with(adjust: impl FnOnce(&mut Options)) -> Both {
        let mut options = Options {
            dapr_app_id: Some("this-app".into()),
            ..Default::default()
        };
        adjust(&mut options);
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = outrigger::store::open(&url, &Default::default()).await.unwrap();
        let ms_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dapr_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ms_addr, dapr_addr) = (ms_listener.local_addr().unwrap(), dapr_listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let listeners = Listeners {
                microsoft: vec![ms_listener],
                dapr: vec![dapr_listener],
                http: vec![],
            };
            let shutdown = async move {
                let _ = stopped.await;
            };
            outrigger::server::serve(listeners, store, options, shutdown).await.expect("server");
        });
        Both {
            ms: Client::connect(format!("http://{ms_addr}")).await.unwrap(),
            dapr: DaprClient::connect(format!("http://{dapr_addr}")).await.unwrap(),
            ms_addr,
            dapr_addr,
            _stop: stop,
            _dir: dir,
        }
    }

    /// A Microsoft-dialect client talking to the Dapr listener.
    async fn ms_on_dapr(&self) -> Client {
        Client::connect(format!("http://{}", self.dapr_addr)).await.unwrap()
    }

    /// A Dapr-dialect client talking to the Microsoft listener.
    async fn dapr_on_ms(&self) -> DaprClient {
        DaprClient::connect(format!("http://{}", self.ms_addr)).await.unwrap()
    }

    async fn dapr_worker(&self, capabilities: Vec<dp::WorkerCapability>) -> DaprWorker {
        let request = dp::GetWorkItemsRequest {
            capabilities: capabilities.into_iter().map(|c| c as i32).collect(),
        };
        let stream = self.dapr.clone().get_work_items(request).await.unwrap().into_inner();
        DaprWorker { stream }
    }
}

struct DaprWorker {
    stream: tonic::Streaming<dp::WorkItem>,
}

impl DaprWorker {
    async fn next(&mut self) -> dp::WorkItem {
        loop {
            let item = guarded("a Dapr work item", self.stream.message())
                .await
                .unwrap()
                .expect("stream open");
            if !matches!(item.request, Some(dp::work_item::Request::HealthPing(_))) {
                return item;
            }
        }
    }

    async fn workflow(&mut self) -> (String, dp::WorkflowRequest) {
        match self.next().await {
            dp::WorkItem {
                request: Some(dp::work_item::Request::WorkflowRequest(r)),
                completion_token,
            } => (completion_token, r),
            other => panic!("expected a workflow request, got {other:?}"),
        }
    }

    async fn activity(&mut self) -> (String, dp::ActivityRequest) {
        match self.next().await {
            dp::WorkItem {
                request: Some(dp::work_item::Request::ActivityRequest(r)),
                completion_token,
            } => (completion_token, r),
            other => panic!("expected an activity request, got {other:?}"),
        }
    }
}

fn dapr_action(id: i32, kind: DpAction) -> dp::WorkflowAction {
    dp::WorkflowAction {
        id,
        workflow_action_type: Some(kind),
        router: None,
    }
}

fn dapr_complete(id: i32, result: &str) -> dp::WorkflowAction {
    dapr_action(
        id,
        DpAction::CompleteWorkflow(dp::CompleteWorkflowAction {
            workflow_status: dp::OrchestrationStatus::Completed as i32,
            result: Some(result.into()),
            ..Default::default()
        }),
    )
}

async fn dapr_complete_turn(
    client: &mut DaprClient,
    token: &str,
    instance_id: &str,
    actions: Vec<dp::WorkflowAction>,
) -> Result<(), tonic::Status> {
    let response = dp::WorkflowResponse {
        instance_id: instance_id.into(),
        actions,
        completion_token: token.into(),
        ..Default::default()
    };
    client.complete_orchestrator_task(response).await.map(|_| ())
}

async fn dapr_start(client: &mut DaprClient, id: &str, name: &str) -> Result<String, tonic::Status> {
    let r = dp::CreateInstanceRequest {
        instance_id: id.into(),
        name: name.into(),
        ..Default::default()
    };
    client.start_instance(r).await.map(|r| r.into_inner().instance_id)
}

async fn dapr_get(client: &mut DaprClient, id: &str) -> dp::GetInstanceResponse {
    let r = dp::GetInstanceRequest {
        instance_id: id.into(),
        get_inputs_and_outputs: true,
        router: None,
    };
    client.get_instance(r).await.expect("GetInstance").into_inner()
}

async fn dapr_wait(client: &mut DaprClient, id: &str) -> dp::WorkflowState {
    let mut r = tonic::Request::new(dp::GetInstanceRequest {
        instance_id: id.into(),
        get_inputs_and_outputs: true,
        router: None,
    });
    r.set_timeout(GUARD);
    let a = guarded("WaitForInstanceCompletion", client.wait_for_instance_completion(r))
        .await
        .unwrap();
    a.into_inner().workflow_state.expect("exists")
}

async fn dapr_history(client: &mut DaprClient, id: &str) -> Vec<dp::HistoryEvent> {
    let r = dp::GetInstanceHistoryRequest { instance_id: id.into() };
    client
        .get_instance_history(r)
        .await
        .expect("GetInstanceHistory")
        .into_inner()
        .events
}

fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, dialect: &str) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(dialect), "names the dialect: {}", status.message());
}

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: 0,
    }
}

// ---- Microsoft messages on the Dapr listener ----

#[tokio::test]
async fn c11_microsoft_request_time_on_the_dapr_listener_is_refused() {
    let s = Both::start().await;
    let r = ms::CreateInstanceRequest {
        instance_id: "c11".into(),
        name: "N".into(),
        request_time: Some(now()),
        ..Default::default()
    };
    assert_refused(s.ms_on_dapr().await.start_instance(r).await, "Dapr dialect");
    assert!(!dapr_get(&mut s.dapr.clone(), "c11").await.exists, "nothing was started");
}

#[tokio::test]
async fn c12_microsoft_instance_batch_on_the_dapr_listener_is_refused() {
    let s = Both::start().await;
    let r = ms::PurgeInstancesRequest {
        request: Some(ms::purge_instances_request::Request::InstanceBatch(ms::InstanceBatch {
            instance_ids: vec!["a".into()],
        })),
        ..Default::default()
    };
    assert_refused(s.ms_on_dapr().await.purge_instances(r).await, "Dapr dialect");
}

#[tokio::test]
async fn c13_microsoft_is_orchestration_purge_on_the_dapr_listener_is_refused() {
    let s = Both::start().await;
    let r = ms::PurgeInstancesRequest {
        request: Some(ms::purge_instances_request::Request::InstanceId("a".into())),
        is_orchestration: true,
        ..Default::default()
    };
    assert_refused(s.ms_on_dapr().await.purge_instances(r).await, "Dapr dialect");
}

/// Completions from a Microsoft worker on the Dapr listener: every conflicting action field is
/// refused before the token is even looked at.
#[tokio::test]
async fn c7_c8_c9_c10_microsoft_turns_on_the_dapr_listener_are_refused() {
    let s = Both::start().await;
    let mut client = s.ms_on_dapr().await;
    let trace = ms::TraceContext {
        trace_parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        span_id: "b7ad6b7169203331".into(),
        trace_state: None,
    };
    let turns = [
        // C7: parentTraceContext, read as a taskExecutionId.
        vec![common::action(
            1,
            MsAction::ScheduleTask(ms::ScheduleTaskAction {
                name: "a".into(),
                parent_trace_context: Some(trace.clone()),
                ..Default::default()
            }),
        )],
        // C8: tags, where Dapr has a VARINT scope.
        vec![common::action(
            1,
            MsAction::CreateSubOrchestration(ms::CreateSubOrchestrationAction {
                name: "c".into(),
                tags: HashMap::from([("k".into(), "v".into())]),
                ..Default::default()
            }),
        )],
        // C9: a rewind action, read as a router and no action.
        vec![common::action(
            1,
            MsAction::RewindOrchestration(ms::RewindOrchestrationAction {
                new_history: vec![ms::HistoryEvent {
                    event_id: 1,
                    ..Default::default()
                }],
            }),
        )],
    ];
    for actions in turns {
        let r = ms::OrchestratorResponse {
            instance_id: "x".into(),
            completion_token: "t".into(),
            actions: actions.clone(),
            ..Default::default()
        };
        let e = client
            .complete_orchestrator_task(r)
            .await
            .expect_err(&format!("{actions:?} must be refused"));
        assert_eq!(e.code(), Code::InvalidArgument, "{actions:?}: {e:?}");
    }
    // C10: a trace context, read as a workflow version with garbage patches.
    let r = ms::OrchestratorResponse {
        instance_id: "x".into(),
        completion_token: "t".into(),
        orchestration_trace_context: Some(ms::OrchestrationTraceContext {
            span_id: Some("abcd".into()),
            span_start_time: Some(now()),
        }),
        ..Default::default()
    };
    let e = client.complete_orchestrator_task(r).await.expect_err("C10 must be refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

// ---- Dapr messages on the Microsoft listener ----

#[tokio::test]
async fn c11_dapr_enforce_unique_on_the_microsoft_listener_is_refused() {
    let s = Both::start().await;
    let r = dp::CreateInstanceRequest {
        instance_id: "u".into(),
        name: "N".into(),
        enforce_unique_instance_id: true,
        ..Default::default()
    };
    assert_refused(s.dapr_on_ms().await.start_instance(r).await, "Microsoft dialect");
}

#[tokio::test]
async fn c12_c13_dapr_purge_fields_on_the_microsoft_listener_are_refused() {
    let s = Both::start().await;
    let mut client = s.dapr_on_ms().await;
    let forced = dp::PurgeInstancesRequest {
        request: Some(dp::purge_instances_request::Request::InstanceId("a".into())),
        force: Some(true),
        ..Default::default()
    };
    assert_refused(client.purge_instances(forced).await, "Microsoft dialect");
    let routed = dp::PurgeInstancesRequest {
        request: Some(dp::purge_instances_request::Request::InstanceId("a".into())),
        router: Some(dp::TaskRouter {
            source_app_id: "app".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_refused(client.purge_instances(routed).await, "Microsoft dialect");
}

#[tokio::test]
async fn c8_dapr_propagation_scope_on_the_microsoft_listener_is_refused() {
    let s = Both::start().await;
    let action = dapr_action(
        1,
        DpAction::CreateChildWorkflow(dp::CreateChildWorkflowAction {
            name: "c".into(),
            history_propagation_scope: Some(dp::HistoryPropagationScope::OwnHistory as i32),
            ..Default::default()
        }),
    );
    assert_refused(
        dapr_complete_turn(&mut s.dapr_on_ms().await, "t", "x", vec![action]).await,
        "Microsoft dialect",
    );
}

#[tokio::test]
async fn the_rust_sdk_is_refused_on_the_microsoft_listener() {
    let s = Both::start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.ms_addr))
        .unwrap()
        .user_agent("dapr-durabletask/rust/0.0.4")
        .unwrap()
        .connect()
        .await
        .unwrap();
    let e = DaprClient::new(channel).hello(()).await.expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("--dapr-port"), "{}", e.message());
}

// ---- translation of work items and history ----

/// C1 and C5: Microsoft tags never reach a Dapr worker as a taskExecutionId; a Dapr worker's
/// taskExecutionId travels to its activity and back into the history.
#[tokio::test]
async fn task_execution_ids_travel_and_microsoft_tags_do_not_become_them() {
    let s = Both::start().await;
    let mut ms_client = s.ms.clone();
    common::start(&mut ms_client, "tags", "Tagged", None).await;
    {
        let mut ms_worker = Worker::connect(&mut ms_client, Default::default()).await;
        let (token, _) = ms_worker.orchestration().await;
        let tagged = common::action(
            1,
            MsAction::ScheduleTask(ms::ScheduleTaskAction {
                name: "act".into(),
                tags: HashMap::from([("k".into(), "v".into())]),
                ..Default::default()
            }),
        );
        common::complete_orchestrator(&mut ms_client, &token, "tags", vec![tagged])
            .await
            .unwrap();
        // The activity went to this stream; dropping it releases the activity for the next.
    }
    let mut dapr = s.dapr.clone();
    let mut worker = s.dapr_worker(vec![]).await;
    let (token, activity) = worker.activity().await;
    assert_eq!(activity.task_execution_id, "", "tags are not an execution id");
    assert_eq!(activity.name, "act");
    let done = dp::ActivityResponse {
        instance_id: "tags".into(),
        task_id: activity.task_id,
        result: Some("1".into()),
        completion_token: token,
        failure_details: None,
    };
    dapr.complete_activity_task(done).await.unwrap();
    let (token, turn) = worker.workflow().await;
    let scheduled = turn
        .past_events
        .iter()
        .find_map(|e| match &e.event_type {
            Some(DpEvent::TaskScheduled(t)) => Some(t.clone()),
            _ => None,
        })
        .expect("TaskScheduled in the past events");
    assert_eq!(scheduled.task_execution_id, "");
    assert!(
        turn.router.is_none() && turn.propagated_history.is_none(),
        "C2/C3 fields stay empty"
    );

    // Now a Dapr worker's execution id.
    let id = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
    let with_id = dapr_action(
        2,
        DpAction::ScheduleTask(dp::ScheduleTaskAction {
            name: "act2".into(),
            task_execution_id: id.into(),
            ..Default::default()
        }),
    );
    dapr_complete_turn(&mut dapr, &token, "tags", vec![with_id]).await.unwrap();
    let (token, activity) = worker.activity().await;
    assert_eq!(activity.task_execution_id, id);
    let done = dp::ActivityResponse {
        instance_id: "tags".into(),
        task_id: activity.task_id,
        result: Some("2".into()),
        completion_token: token,
        failure_details: None,
    };
    dapr.complete_activity_task(done).await.unwrap();
    let (token, _) = worker.workflow().await;
    dapr_complete_turn(&mut dapr, &token, "tags", vec![dapr_complete(3, "\"done\"")])
        .await
        .unwrap();
    dapr_wait(&mut dapr, "tags").await;

    let history = dapr_history(&mut dapr, "tags").await;
    let ids: Vec<(&str, &str)> = history
        .iter()
        .filter_map(|e| match &e.event_type {
            Some(DpEvent::TaskScheduled(t)) => Some(("scheduled", t.task_execution_id.as_str())),
            Some(DpEvent::TaskCompleted(t)) => Some(("completed", t.task_execution_id.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(ids, [("scheduled", ""), ("completed", ""), ("scheduled", id), ("completed", id)]);
    // The Microsoft view keeps the tags it was given.
    let ms_history = common::history(&mut ms_client, "tags").await;
    let tags: Vec<_> = ms_history
        .iter()
        .filter_map(|e| match &e.event_type {
            Some(ms::history_event::EventType::TaskScheduled(t)) => Some(t.tags.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(tags[0], HashMap::from([("k".to_string(), "v".to_string())]));
}

/// C6: Microsoft sub-orchestration tags never read as a rerun marker.
#[tokio::test]
async fn sub_orchestration_tags_do_not_become_rerun_markers() {
    let s = Both::start().await;
    let mut ms_client = s.ms.clone();
    common::start(&mut ms_client, "parent", "Parent", None).await;
    let mut ms_worker = Worker::connect(&mut ms_client, Default::default()).await;
    let (token, _) = ms_worker.orchestration().await;
    let child = common::action(
        1,
        MsAction::CreateSubOrchestration(ms::CreateSubOrchestrationAction {
            instance_id: "child".into(),
            name: "Child".into(),
            tags: HashMap::from([("src".into(), "".into())]),
            ..Default::default()
        }),
    );
    common::complete_orchestrator(&mut ms_client, &token, "parent", vec![child])
        .await
        .unwrap();
    let created = dapr_history(&mut s.dapr.clone(), "parent")
        .await
        .into_iter()
        .find_map(|e| match e.event_type {
            Some(DpEvent::ChildWorkflowInstanceCreated(c)) => Some(c),
            _ => None,
        })
        .expect("child created");
    assert_eq!(created.instance_id, "child");
    assert!(created.rerun_parent_instance_info.is_none());
}

/// Stateful history: a stream's first turn for an instance is a full send; later turns carry
/// only the committed events after what the stream already got, and prefix plus delta is what
/// GetInstanceHistory returns. A new stream starts cold.
#[tokio::test]
async fn stateful_workers_get_history_deltas() {
    let s = Both::start().await;
    let mut dapr = s.dapr.clone();
    dapr_start(&mut dapr, "sf", "Stateful").await.unwrap();
    let mut worker = s.dapr_worker(vec![dp::WorkerCapability::StatefulHistory]).await;
    let timer = |id| {
        dapr_action(
            id,
            DpAction::CreateTimer(dp::CreateTimerAction {
                fire_at: Some(now()),
                ..Default::default()
            }),
        )
    };
    // The first turn of a new instance has no committed past, so the stream holds nothing yet.
    let (token, first) = worker.workflow().await;
    assert!(first.cached_history.is_none() && first.past_events.is_empty());
    dapr_complete_turn(&mut dapr, &token, "sf", vec![timer(1)]).await.unwrap();
    let (token, second) = worker.workflow().await;
    assert!(second.cached_history.is_none(), "nothing held: a full send");
    let mut held = second.past_events.clone();
    assert!(!held.is_empty());
    dapr_complete_turn(&mut dapr, &token, "sf", vec![timer(2)]).await.unwrap();
    let (token, third) = worker.workflow().await;
    let cached = third.cached_history.expect("a delta send");
    assert_eq!(cached.event_count as usize, held.len());
    assert!(!third.past_events.is_empty(), "the second turn's events are new to the stream");
    held.extend(third.past_events.clone());
    assert_eq!(held, dapr_history(&mut dapr, "sf").await, "prefix + delta = the committed history");

    // A new stream knows nothing: full send again.
    drop(worker);
    let mut fresh = s.dapr_worker(vec![dp::WorkerCapability::StatefulHistory]).await;
    let (token2, again) = fresh.workflow().await;
    assert!(again.cached_history.is_none(), "cold stream");
    assert_eq!(again.past_events, dapr_history(&mut dapr, "sf").await);
    let _ = token; // the first stream's lease went with it
    dapr_complete_turn(&mut dapr, &token2, "sf", vec![dapr_complete(3, "1")])
        .await
        .unwrap();
    dapr_wait(&mut dapr, "sf").await;
}

#[tokio::test]
async fn stateless_workers_always_get_the_full_history() {
    let s = Both::start().await;
    let mut dapr = s.dapr.clone();
    dapr_start(&mut dapr, "sl", "Stateless").await.unwrap();
    let mut worker = s.dapr_worker(vec![]).await;
    let (token, _) = worker.workflow().await;
    let timer = dapr_action(
        1,
        DpAction::CreateTimer(dp::CreateTimerAction {
            fire_at: Some(now()),
            ..Default::default()
        }),
    );
    dapr_complete_turn(&mut dapr, &token, "sl", vec![timer]).await.unwrap();
    let (_, second) = worker.workflow().await;
    assert!(second.cached_history.is_none());
    assert_eq!(second.past_events, dapr_history(&mut dapr, "sl").await);
}

#[tokio::test]
async fn health_pings_go_to_dapr_workers_that_ask_at_the_dapr_tag() {
    let s = Both::with(|o| o.dispatch.ping_interval = Duration::from_millis(50)).await;
    // A worker that does not ask for pings, connected first.
    let mut quiet = s.dapr_worker(vec![]).await;
    let request = dp::GetWorkItemsRequest {
        capabilities: vec![dp::WorkerCapability::HealthPing as i32],
    };
    let mut stream = s.dapr.clone().get_work_items(request).await.unwrap().into_inner();
    for _ in 0..3 {
        let item = guarded("a ping", stream.message()).await.unwrap().unwrap();
        assert!(matches!(item.request, Some(dp::work_item::Request::HealthPing(_))), "{item:?}");
    }
    // Three ping intervals have passed for the quiet one too; its first item is real work.
    drop(stream);
    dapr_start(&mut s.dapr.clone(), "after-pings", "N").await.unwrap();
    let first = guarded("an item", quiet.stream.message()).await.unwrap().unwrap();
    assert!(
        matches!(first.request, Some(dp::work_item::Request::WorkflowRequest(_))),
        "{first:?}"
    );
}

// ---- Dapr semantics ----

#[tokio::test]
async fn enforce_unique_instance_id_refuses_live_and_finished_instances() {
    let s = Both::start().await;
    let mut dapr = s.dapr.clone();
    let unique = |id: &str| dp::CreateInstanceRequest {
        instance_id: id.into(),
        name: "N".into(),
        enforce_unique_instance_id: true,
        ..Default::default()
    };
    dapr.start_instance(unique("u1")).await.unwrap();
    let e = dapr.start_instance(unique("u1")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains("orchestration instance already exists"), "{}", e.message());
    // Finished: refused with the flag, restarted without it.
    let mut ms_client = s.ms.clone();
    let mut ms_worker = Worker::connect(&mut ms_client, Default::default()).await;
    let (token, _) = ms_worker.orchestration().await;
    common::complete_orchestrator(
        &mut ms_client,
        &token,
        "u1",
        vec![common::complete(1, ms::OrchestrationStatus::Completed, "1")],
    )
    .await
    .unwrap();
    dapr_wait(&mut dapr, "u1").await;
    let e = dapr.start_instance(unique("u1")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    dapr_start(&mut dapr, "u1", "N")
        .await
        .expect("without the flag a finished instance starts afresh");
    let state = dapr_get(&mut dapr, "u1").await.workflow_state.unwrap();
    assert_eq!(state.workflow_status, dp::OrchestrationStatus::Pending as i32);
}

#[tokio::test]
async fn unknown_instances_read_as_not_existing() {
    let s = Both::start().await;
    let mut dapr = s.dapr.clone();
    let a = dapr_get(&mut dapr, "nobody").await;
    assert!(!a.exists && a.workflow_state.is_none());
    let mut r = tonic::Request::new(dp::GetInstanceRequest {
        instance_id: "nobody".into(),
        ..Default::default()
    });
    r.set_timeout(GUARD);
    let a = dapr.wait_for_instance_completion(r).await.unwrap().into_inner();
    assert!(!a.exists);
}

#[tokio::test]
async fn routers_to_other_apps_are_refused_and_to_this_app_accepted() {
    let s = Both::start().await;
    let mut dapr = s.dapr.clone();
    let router = |target: &str| {
        Some(dp::TaskRouter {
            source_app_id: String::new(),
            target_app_id: Some(target.into()),
            target_app_namespace: None,
        })
    };
    let start = |target: &str| dp::CreateInstanceRequest {
        instance_id: format!("r-{target}"),
        name: "N".into(),
        router: router(target),
        ..Default::default()
    };
    dapr.start_instance(start("this-app")).await.expect("this app");
    let e = dapr.start_instance(start("other-app")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("other-app"), "{}", e.message());
}

/// Hello answers; CompleteWorkflowTask completes a turn like CompleteOrchestratorTask; the
/// actions of features this sidecar lacks (stalled and detached workflows) are UNIMPLEMENTED.
#[tokio::test]
async fn hello_complete_workflow_task_and_unsupported_actions() {
    let s = Both::start().await;
    let mut dapr = s.dapr.clone();
    dapr.hello(()).await.expect("Hello");
    let mut worker = s.dapr_worker(vec![]).await;
    dapr_start(&mut dapr, "cwt", "N").await.unwrap();
    let (token, _) = worker.workflow().await;
    for kind in [
        DpAction::WorkflowVersionNotAvailable(dp::WorkflowVersionNotAvailableAction {}),
        DpAction::CreateDetachedWorkflow(dp::CreateDetachedWorkflowAction {
            instance_id: "d".into(),
            name: "D".into(),
            ..Default::default()
        }),
    ] {
        let response = dp::WorkflowResponse {
            instance_id: "cwt".into(),
            actions: vec![dapr_action(0, kind)],
            completion_token: token.clone(),
            ..Default::default()
        };
        let e = dapr.complete_workflow_task(response).await.expect_err("unsupported");
        assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    }
    let response = dp::WorkflowResponse {
        instance_id: "cwt".into(),
        actions: vec![dapr_complete(0, "\"ok\"")],
        completion_token: token,
        ..Default::default()
    };
    dapr.complete_workflow_task(response).await.expect("CompleteWorkflowTask");
    assert_eq!(dapr_wait(&mut dapr, "cwt").await.output.as_deref(), Some("\"ok\""));
}

// ---- RerunWorkflowFromEvent ----

fn schedule(id: i32, name: &str, input: &str) -> dp::WorkflowAction {
    dapr_action(
        id,
        DpAction::ScheduleTask(dp::ScheduleTaskAction {
            name: name.into(),
            input: Some(input.into()),
            task_execution_id: format!("exec-{id}"),
            ..Default::default()
        }),
    )
}

/// Answers an activity work item with `result`; returns the request it answered.
async fn run_activity(worker: &mut DaprWorker, dapr: &mut DaprClient, result: &str) -> dp::ActivityRequest {
    let (token, activity) = worker.activity().await;
    let done = dp::ActivityResponse {
        instance_id: activity.workflow_instance.clone().unwrap_or_default().instance_id,
        task_id: activity.task_id,
        result: Some(result.into()),
        completion_token: token,
        failure_details: None,
    };
    dapr.complete_activity_task(done).await.unwrap();
    activity
}

/// `src` runs two activities one after the other (events 0 and 1) and completes with the
/// second one's result; the worker stays connected.
async fn two_steps(s: &Both, src: &str) -> DaprWorker {
    let mut dapr = s.dapr.clone();
    let mut worker = s.dapr_worker(vec![]).await;
    dapr_start(&mut dapr, src, "Two").await.unwrap();
    let (token, _) = worker.workflow().await;
    dapr_complete_turn(&mut dapr, &token, src, vec![schedule(0, "first", "\"a\"")])
        .await
        .unwrap();
    run_activity(&mut worker, &mut dapr, "\"ra\"").await;
    let (token, _) = worker.workflow().await;
    dapr_complete_turn(&mut dapr, &token, src, vec![schedule(1, "second", "\"b\"")])
        .await
        .unwrap();
    run_activity(&mut worker, &mut dapr, "\"rb\"").await;
    let (token, _) = worker.workflow().await;
    dapr_complete_turn(&mut dapr, &token, src, vec![dapr_complete(2, "\"rb\"")])
        .await
        .unwrap();
    assert_eq!(
        dapr_wait(&mut dapr, src).await.workflow_status,
        dp::OrchestrationStatus::Completed as i32
    );
    worker
}

fn rerun_request(src: &str, event_id: u32, new_id: &str) -> dp::RerunWorkflowFromEventRequest {
    dp::RerunWorkflowFromEventRequest {
        source_instance_id: src.into(),
        event_id,
        new_instance_id: Some(new_id.into()),
        ..Default::default()
    }
}

/// The new instance replays the first activity's result, runs the second activity again with
/// the new input, and completes; the source is left as it was.
#[tokio::test]
async fn rerun_from_an_activity_runs_it_again_in_a_new_instance() {
    let s = Both::start().await;
    let mut dapr = s.dapr.clone();
    let mut worker = two_steps(&s, "src").await;

    let mut r = rerun_request("src", 1, "again");
    r.overwrite_input = true;
    r.input = Some("\"b2\"".into());
    let answer = dapr.rerun_workflow_from_event(r).await.expect("rerun").into_inner();
    assert_eq!(answer.new_instance_id, "again");

    let activity = run_activity(&mut worker, &mut dapr, "\"rb2\"").await;
    assert_eq!(activity.name, "second");
    assert_eq!(activity.input.as_deref(), Some("\"b2\""), "the new input");
    assert_eq!(activity.workflow_instance.unwrap().instance_id, "again");
    assert_eq!(activity.task_execution_id, "exec-1", "the recorded execution id");

    let (token, turn) = worker.workflow().await;
    assert_eq!(turn.instance_id, "again");
    let kinds: Vec<_> = turn.past_events.iter().map(|e| (e.event_id, kind(e))).collect();
    assert_eq!(
        kinds,
        [
            (-1, "workflowStarted"),
            (-1, "executionStarted"),
            (0, "taskScheduled"),
            (-1, "workflowStarted"),
            (-1, "taskCompleted"),
            (1, "taskScheduled"),
        ],
        "the source's history up to event 1, then event 1 again"
    );
    let Some(DpEvent::TaskScheduled(t)) = &turn.past_events[5].event_type else {
        unreachable!()
    };
    assert_eq!(t.rerun_parent_instance_info.as_ref().map(|p| p.instance_id.as_str()), Some("src"));
    assert_eq!(t.input.as_deref(), Some("\"b2\""));
    let Some(DpEvent::TaskScheduled(first)) = &turn.past_events[2].event_type else {
        unreachable!()
    };
    assert!(first.rerun_parent_instance_info.is_none(), "only the rerun event is marked");
    assert!(matches!(&turn.new_events[1].event_type, Some(DpEvent::TaskCompleted(c)) if c.task_scheduled_id == 1));
    dapr_complete_turn(&mut dapr, &token, "again", vec![dapr_complete(2, "\"rb2\"")])
        .await
        .unwrap();

    let state = dapr_wait(&mut dapr, "again").await;
    assert_eq!(state.workflow_status, dp::OrchestrationStatus::Completed as i32);
    assert_eq!(state.output.as_deref(), Some("\"rb2\""));
    let source = dapr_get(&mut dapr, "src").await.workflow_state.unwrap();
    assert_eq!(source.output.as_deref(), Some("\"rb\""), "the source is unchanged");
    let history = dapr_history(&mut dapr, "again").await;
    assert!(history.iter().any(|e| matches!(&e.event_type,
        Some(DpEvent::TaskScheduled(t)) if t.rerun_parent_instance_info.as_ref().is_some_and(|p| p.instance_id == "src"))));
}

fn kind(e: &dp::HistoryEvent) -> &'static str {
    match &e.event_type {
        Some(DpEvent::WorkflowStarted(_)) => "workflowStarted",
        Some(DpEvent::ExecutionStarted(_)) => "executionStarted",
        Some(DpEvent::TaskScheduled(_)) => "taskScheduled",
        Some(DpEvent::TaskCompleted(_)) => "taskCompleted",
        _ => "other",
    }
}

/// Without a new id the sidecar makes one; the rerun of a rerun names its own source.
#[tokio::test]
async fn rerun_without_a_new_id_generates_one() {
    let s = Both::start().await;
    let mut dapr = s.dapr.clone();
    let mut worker = two_steps(&s, "gen").await;
    let mut r = rerun_request("gen", 0, "");
    r.new_instance_id = None;
    let id = dapr.rerun_workflow_from_event(r).await.unwrap().into_inner().new_instance_id;
    assert!(!id.is_empty() && id != "gen");
    let activity = run_activity(&mut worker, &mut dapr, "\"ra\"").await;
    assert_eq!(
        (activity.name.as_str(), activity.input.as_deref()),
        ("first", Some("\"a\"")),
        "the original input"
    );
    assert_eq!(activity.workflow_instance.unwrap().instance_id, id);
    assert!(dapr_get(&mut dapr, &id).await.exists);
}

#[tokio::test]
async fn rerun_refusals() {
    let s = Both::start().await;
    let mut dapr = s.dapr.clone();
    let _worker = two_steps(&s, "done").await;
    dapr_start(&mut dapr, "live", "Two").await.unwrap();
    let refused = |r: dp::RerunWorkflowFromEventRequest| {
        let mut dapr = dapr.clone();
        async move { dapr.rerun_workflow_from_event(r).await.expect_err("must be refused") }
    };

    let e = refused(rerun_request("nobody", 0, "n1")).await;
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = refused(rerun_request("live", 0, "n2")).await;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("finished"), "{}", e.message());
    let e = refused(rerun_request("done", 7, "n3")).await;
    assert_eq!(e.code(), Code::NotFound, "no event 7: {e:?}");
    let e = refused(rerun_request("done", 2, "n4")).await;
    assert_eq!(e.code(), Code::NotFound, "event 2 is the completion: {e:?}");
    assert!(e.message().contains("not an event that can be rerun"), "{}", e.message());
    let e = refused(rerun_request("done", 0, "live")).await;
    assert_eq!(e.code(), Code::AlreadyExists, "the new id is taken: {e:?}");
    let e = refused(rerun_request("done", 0, "done")).await;
    assert_eq!(e.code(), Code::AlreadyExists, "the source's own id: {e:?}");
    let mut r = rerun_request("done", 0, "n5");
    r.new_child_workflow_instance_id = Some("c".into());
    let e = refused(r).await;
    assert_eq!(e.code(), Code::InvalidArgument, "a child id on an activity: {e:?}");
    for id in ["n1", "n2", "n3", "n4", "n5"] {
        assert!(!dapr_get(&mut dapr, id).await.exists, "{id}: nothing was created");
    }
}

// ---- interop ----

/// An instance started by a Microsoft client is read, raised, suspended, resumed, terminated
/// and purged by a Dapr client, and run by a Dapr worker.
#[tokio::test]
async fn microsoft_started_instances_are_served_to_dapr_clients_and_workers() {
    let s = Both::start().await;
    let mut ms_client = s.ms.clone();
    let mut dapr = s.dapr.clone();
    common::start(&mut ms_client, "ms-1", "Hello", Some("\"in\"")).await;
    let state = dapr_get(&mut dapr, "ms-1").await.workflow_state.expect("exists");
    assert_eq!(state.name, "Hello");
    assert_eq!(state.input.as_deref(), Some("\"in\""));
    assert_eq!(state.workflow_status, dp::OrchestrationStatus::Pending as i32);

    let mut worker = s.dapr_worker(vec![]).await;
    let (token, turn) = worker.workflow().await;
    assert_eq!(turn.instance_id, "ms-1");
    assert!(matches!(
        turn.new_events.iter().find_map(|e| e.event_type.clone()),
        Some(DpEvent::WorkflowStarted(_))
    ));
    dapr_complete_turn(&mut dapr, &token, "ms-1", vec![]).await.unwrap();

    let raise = dp::RaiseEventRequest {
        instance_id: "ms-1".into(),
        name: "go".into(),
        input: Some("5".into()),
        router: None,
    };
    dapr.raise_event(raise).await.unwrap();
    let (token, turn) = worker.workflow().await;
    assert!(
        turn.new_events
            .iter()
            .any(|e| matches!(&e.event_type, Some(DpEvent::EventRaised(r)) if r.name == "go"))
    );
    dapr_complete_turn(&mut dapr, &token, "ms-1", vec![]).await.unwrap();

    dapr.suspend_instance(dp::SuspendRequest {
        instance_id: "ms-1".into(),
        reason: Some("pause".into()),
        router: None,
    })
    .await
    .unwrap();
    let (token, _) = worker.workflow().await;
    dapr_complete_turn(&mut dapr, &token, "ms-1", vec![]).await.unwrap();
    assert_eq!(common::status_of(&mut ms_client, "ms-1").await, ms::OrchestrationStatus::Suspended);
    dapr.resume_instance(dp::ResumeRequest {
        instance_id: "ms-1".into(),
        reason: None,
        router: None,
    })
    .await
    .unwrap();
    let (token, _) = worker.workflow().await;
    dapr_complete_turn(&mut dapr, &token, "ms-1", vec![]).await.unwrap();
    assert_eq!(common::status_of(&mut ms_client, "ms-1").await, ms::OrchestrationStatus::Running);

    dapr.terminate_instance(dp::TerminateRequest {
        instance_id: "ms-1".into(),
        output: Some("\"bye\"".into()),
        recursive: false,
        router: None,
    })
    .await
    .unwrap();
    // The termination is recorded by the instance's next turn.
    let (token, _) = worker.workflow().await;
    dapr_complete_turn(&mut dapr, &token, "ms-1", vec![]).await.unwrap();
    let state = dapr_wait(&mut dapr, "ms-1").await;
    assert_eq!(state.workflow_status, dp::OrchestrationStatus::Terminated as i32);
    assert_eq!(
        common::wait_completion(&mut ms_client, "ms-1").await.output.as_deref(),
        Some("\"bye\"")
    );

    let purged = dapr
        .purge_instances(dp::PurgeInstancesRequest {
            request: Some(dp::purge_instances_request::Request::InstanceId("ms-1".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.deleted_instance_count, 1);
    assert!(common::get(&mut ms_client, "ms-1").await.is_none());
}

/// And the other way round: a Dapr-started instance, read and driven by Microsoft clients and
/// a Microsoft worker.
#[tokio::test]
async fn dapr_started_instances_are_served_to_microsoft_clients_and_workers() {
    let s = Both::start().await;
    let mut ms_client = s.ms.clone();
    let mut dapr = s.dapr.clone();
    dapr_start(&mut dapr, "dp-1", "Hello").await.unwrap();
    assert_eq!(common::status_of(&mut ms_client, "dp-1").await, ms::OrchestrationStatus::Pending);
    let mut worker = Worker::connect(&mut ms_client, Default::default()).await;
    let (token, turn) = worker.orchestration().await;
    assert_eq!(turn.instance_id, "dp-1");
    common::complete_orchestrator(&mut ms_client, &token, "dp-1", vec![]).await.unwrap();

    ms_client
        .raise_event(ms::RaiseEventRequest {
            instance_id: "dp-1".into(),
            name: "go".into(),
            input: None,
        })
        .await
        .unwrap();
    let (token, turn) = worker.orchestration().await;
    assert!(
        turn.new_events
            .iter()
            .any(|e| matches!(&e.event_type, Some(ms::history_event::EventType::EventRaised(r)) if r.name == "go"))
    );
    common::complete_orchestrator(&mut ms_client, &token, "dp-1", vec![]).await.unwrap();

    ms_client
        .terminate_instance(ms::TerminateRequest {
            instance_id: "dp-1".into(),
            output: None,
            recursive: false,
        })
        .await
        .unwrap();
    let (token, _) = worker.orchestration().await;
    common::complete_orchestrator(&mut ms_client, &token, "dp-1", vec![]).await.unwrap();
    let state = common::wait_completion(&mut ms_client, "dp-1").await;
    assert_eq!(state.orchestration_status(), ms::OrchestrationStatus::Terminated);
    assert_eq!(
        dapr_wait(&mut dapr, "dp-1").await.workflow_status,
        dp::OrchestrationStatus::Terminated as i32
    );

    let purged = ms_client
        .purge_instances(ms::PurgeInstancesRequest {
            request: Some(ms::purge_instances_request::Request::InstanceId("dp-1".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.deleted_instance_count, 1);
    assert!(!dapr_get(&mut dapr, "dp-1").await.exists);
}

//! The .NET SDK's side of the protocol, played over the raw gRPC stubs exactly as its client
//! (`GrpcDurableTaskClient`) and worker (`GrpcDurableTaskWorker.Processor`) send it, since the
//! SDK itself cannot run here. Tests whose outcome depends on the store run on SQLite and on
//! Postgres.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use outrigger::proto::history_event::EventType;
use outrigger::proto::orchestrator_action::OrchestratorActionType as ActionType;
use outrigger::proto::*;
use tonic::Code;

/// Runs each test once per store.
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    if !super::common::postgres::available() {
                        return;
                    }
                    super::$test(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_stores!(
    a_wait_on_a_child_not_yet_created_answers_once_the_child_completes,
    a_wait_on_an_instance_that_never_appears_ends_at_its_deadline,
    a_wait_without_a_deadline_is_capped,
    without_inputs_and_outputs_a_failed_instance_shows_no_failure_details,
    every_orchestrator_work_item_carries_entity_parameters,
    workers_with_dotnet_filters_get_only_what_they_registered,
);

/// What the .NET worker sends when it connects: concurrency limits of 100 per processor (a
/// 2-core machine here), the history-streaming capability it always announces, no filters.
fn dotnet_worker_request() -> GetWorkItemsRequest {
    GetWorkItemsRequest {
        max_concurrent_activity_work_items: 200,
        max_concurrent_orchestration_work_items: 200,
        max_concurrent_entity_work_items: 200,
        capabilities: vec![WorkerCapability::HistoryStreaming as i32],
        ..Default::default()
    }
}

/// A client request as `ScheduleNewOrchestrationInstanceAsync` builds it: a 32-hex-digit id
/// (`Guid.ToString("N")`), JSON input and the client's clock as `requestTime`.
fn dotnet_start(name: &str, input: &str) -> CreateInstanceRequest {
    CreateInstanceRequest {
        instance_id: uuid::Uuid::new_v4().simple().to_string(),
        name: name.into(),
        input: Some(input.into()),
        request_time: Some(ts(now_ms())),
        ..Default::default()
    }
}

/// The GetInstanceRequest of `GetInstanceAsync` and both `WaitForInstance*Async` calls. They
/// carry no gRPC deadline, only a cancellation token.
fn get_request(instance_id: &str, get_inputs_and_outputs: bool) -> GetInstanceRequest {
    GetInstanceRequest {
        instance_id: instance_id.into(),
        get_inputs_and_outputs,
    }
}

/// An OrchestratorResponse as `ProtoUtils.ConstructOrchestratorResponse` builds it: the trace
/// context is always present (empty without an active span).
fn dotnet_answer(token: &str, instance_id: &str, actions: Vec<OrchestratorAction>, custom_status: Option<&str>) -> OrchestratorResponse {
    OrchestratorResponse {
        instance_id: instance_id.into(),
        actions,
        custom_status: custom_status.map(Into::into),
        completion_token: token.into(),
        orchestration_trace_context: Some(OrchestrationTraceContext::default()),
        ..Default::default()
    }
}

fn tags() -> HashMap<String, String> {
    HashMap::from([("tag1".into(), "value1".into()), ("tag2".into(), "value2".into())])
}

/// `ScheduleSubOrchestrationWithTags` of the SDK's integration suite: the client starts a parent
/// and at once waits for the completion of the child's fixed id, which the parent creates only
/// in its first step. The wait must last until the child exists and completes.
async fn a_wait_on_a_child_not_yet_created_answers_once_the_child_completes(backend: Backend) {
    let sidecar = Sidecar::on(backend, |_| {}).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker_with(dotnet_worker_request()).await;
    const NAME: &str = "ScheduleSubOrchestrationWithTags";
    const CHILD: &str = "instance_id";

    let parent = client
        .start_instance(dotnet_start(NAME, "1"))
        .await
        .expect("StartInstance")
        .into_inner()
        .instance_id;
    let mut waiter_client = sidecar.new_client().await;
    let waiter = tokio::spawn(async move { waiter_client.wait_for_instance_completion(get_request(CHILD, true)).await });

    // The parent's first step creates the child; the waiter must still be waiting meanwhile.
    let (token, request) = worker.orchestration().await;
    assert_eq!(request.instance_id, parent);
    assert!(!waiter.is_finished(), "the wait answered before the child existed");
    let create_child = action(
        0,
        ActionType::CreateSubOrchestration(CreateSubOrchestrationAction {
            instance_id: CHILD.into(),
            name: NAME.into(),
            input: Some("2".into()),
            tags: tags(),
            ..Default::default()
        }),
    );
    client
        .complete_orchestrator_task(dotnet_answer(&token, &parent, vec![create_child], None))
        .await
        .expect("parent step 1");

    // The child (input 2) does not recurse: it completes with 1.
    let (token, request) = worker.orchestration().await;
    assert_eq!(request.instance_id, CHILD);
    let started = request
        .new_events
        .iter()
        .find_map(|e| match &e.event_type {
            Some(EventType::ExecutionStarted(s)) => Some(s),
            _ => None,
        })
        .expect("the child's ExecutionStarted");
    assert_eq!(started.tags, tags());
    assert_eq!(
        started
            .parent_instance
            .as_ref()
            .and_then(|p| p.orchestration_instance.as_ref())
            .map(|i| i.instance_id.as_str()),
        Some(parent.as_str())
    );
    assert!(!waiter.is_finished(), "the wait answered before the child completed");
    client
        .complete_orchestrator_task(dotnet_answer(
            &token,
            CHILD,
            vec![complete(0, OrchestrationStatus::Completed, "1")],
            None,
        ))
        .await
        .expect("child completes");

    let response = guarded("the wait on the child", waiter)
        .await
        .expect("waiter task")
        .expect("WaitForInstanceCompletion")
        .into_inner();
    // The .NET client reads orchestrationState without looking at `exists`.
    assert!(response.exists);
    let state = response.orchestration_state.expect("orchestrationState");
    assert_eq!(state.instance_id, CHILD);
    assert_eq!(state.name, NAME);
    assert_eq!(state.orchestration_status(), OrchestrationStatus::Completed);
    assert_eq!(state.output.as_deref(), Some("1"));
    assert_eq!(state.tags, tags());
    assert_eq!(state.parent_instance_id.as_deref(), Some(parent.as_str()));
    assert!(state.created_timestamp.is_some() && state.last_updated_timestamp.is_some());

    // And the parent finishes with 1 + 1.
    let (token, request) = worker.orchestration().await;
    assert_eq!(request.instance_id, parent);
    assert!(
        request
            .new_events
            .iter()
            .any(|e| matches!(&e.event_type, Some(EventType::SubOrchestrationInstanceCompleted(c)) if c.result.as_deref() == Some("1"))),
        "{:?}",
        kinds(&request.new_events)
    );
    client
        .complete_orchestrator_task(dotnet_answer(
            &token,
            &parent,
            vec![complete(1, OrchestrationStatus::Completed, "2")],
            None,
        ))
        .await
        .expect("parent completes");
    let state = wait_completion(&mut client, &parent).await;
    assert_eq!(state.output.as_deref(), Some("2"));
}

/// Runs the waits `(method, instance id)` side by side on one connection, each with the
/// gRPC deadline `timeout`, and gives each outcome with how long it took.
async fn side_by_side(
    connection: &std::sync::Arc<raw::RawConnection>,
    waits: &[(&'static str, &'static str)],
    timeout: Option<&'static str>,
) -> Vec<(&'static str, &'static str, Result<GetInstanceResponse, tonic::Status>, Duration)> {
    let mut calls = tokio::task::JoinSet::new();
    for &(method, id) in waits {
        let connection = connection.clone();
        calls.spawn(async move {
            let request = get_request(id, false);
            let call = connection.unary::<_, GetInstanceResponse>(method, &request, timeout);
            let (outcome, took) = timed(guarded(method, call)).await;
            (method, id, outcome, took)
        });
    }
    calls.join_all().await
}

/// Waits on an id nobody creates end at the call's deadline with DEADLINE_EXCEEDED (which the
/// .NET client answers by asking again, and Python turns into TimeoutError), never with
/// `exists=false`, which the .NET client cannot read.
async fn a_wait_on_an_instance_that_never_appears_ends_at_its_deadline(backend: Backend) {
    let sidecar = Sidecar::on(backend, |_| {}).await;
    // A bare HTTP/2 connection: tonic's client would end the call itself at the deadline.
    let connection = std::sync::Arc::new(raw::RawConnection::open(sidecar.addr).await);
    let waits = ["WaitForInstanceStart", "WaitForInstanceCompletion"].map(|method| (method, "nobody"));
    for (method, _, outcome, took) in side_by_side(&connection, &waits, Some("400m")).await {
        let status = expect_code(outcome, Code::DeadlineExceeded);
        assert!(status.message().contains("does not exist"), "{method}: {status:?}");
        assert!(
            took >= Duration::from_millis(350),
            "{method} ended after {took:?}, before its deadline"
        );
    }
}

/// A wait without a deadline (what the .NET client sends) ends after the server's cap, with
/// DEADLINE_EXCEEDED; WaitForInstanceCompletionAsync then simply asks again.
async fn a_wait_without_a_deadline_is_capped(backend: Backend) {
    let cap = Duration::from_millis(500);
    let sidecar = Sidecar::on(backend, |o| o.max_wait = cap).await;
    let connection = std::sync::Arc::new(raw::RawConnection::open(sidecar.addr).await);
    let mut client = sidecar.client.clone();
    start_later(&mut client, "pending").await; // exists, but stays PENDING
    let waits = [
        ("WaitForInstanceStart", "nobody"),
        ("WaitForInstanceCompletion", "nobody"),
        ("WaitForInstanceStart", "pending"),
        ("WaitForInstanceCompletion", "pending"),
    ];
    for (method, id, outcome, took) in side_by_side(&connection, &waits, None).await {
        let status = expect_code(outcome, Code::DeadlineExceeded);
        assert!(status.message().contains("without a deadline"), "{method} {id}: {status:?}");
        assert!(took >= cap, "{method} {id} ended after {took:?}, before the cap");
    }
    // The retry the .NET client makes gets the answer once there is one.
    let mut worker = sidecar.worker_with(dotnet_worker_request()).await;
    let id = client
        .start_instance(dotnet_start("Quick", "null"))
        .await
        .expect("StartInstance")
        .into_inner()
        .instance_id;
    let (token, _) = worker.orchestration().await;
    client
        .complete_orchestrator_task(dotnet_answer(
            &token,
            &id,
            vec![complete(0, OrchestrationStatus::Completed, "7")],
            None,
        ))
        .await
        .expect("complete");
    let response: GetInstanceResponse = connection
        .unary("WaitForInstanceCompletion", &get_request(&id, true), None)
        .await
        .expect("a finished instance answers at once");
    assert_eq!(response.orchestration_state.and_then(|s| s.output).as_deref(), Some("7"));
}

/// `GetInstanceMetadata_EndToEnd`: a FAILED instance read with `getInputsAndOutputs=false` has
/// no failure details, like no input, output or custom status; asked for, they are all there.
/// The same rule holds for both waits and for queries.
async fn without_inputs_and_outputs_a_failed_instance_shows_no_failure_details(backend: Backend) {
    let sidecar = Sidecar::on(backend, |_| {}).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker_with(dotnet_worker_request()).await;
    let start = dotnet_start("GetInstanceMetadata_EndToEnd", "true");
    let id = start.instance_id.clone();
    client.start_instance(start).await.expect("StartInstance");

    // As the .NET worker reports an orchestrator that threw.
    let (token, _) = worker.orchestration().await;
    let failure = TaskFailureDetails {
        error_type: "System.InvalidOperationException".into(),
        error_message: "Kah-BOOOOOM!!!".into(),
        stack_trace: Some("   at Program.<Main>".into()),
        ..Default::default()
    };
    let fail = action(
        0,
        ActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: OrchestrationStatus::Failed as i32,
            failure_details: Some(failure.clone()),
            ..Default::default()
        }),
    );
    client
        .complete_orchestrator_task(dotnet_answer(&token, &id, vec![fail], Some("\"custom\"")))
        .await
        .expect("fail it");

    let waited = client
        .wait_for_instance_completion(get_request(&id, false))
        .await
        .expect("WaitForInstanceCompletion")
        .into_inner()
        .orchestration_state
        .expect("state");
    let got = client
        .get_instance(get_request(&id, false))
        .await
        .expect("GetInstance")
        .into_inner()
        .orchestration_state
        .expect("state");
    let started = client
        .wait_for_instance_start(get_request(&id, false))
        .await
        .expect("WaitForInstanceStart")
        .into_inner()
        .orchestration_state
        .expect("state");
    let query = |fetch_inputs_and_outputs| QueryInstancesRequest {
        query: Some(InstanceQuery {
            instance_id_prefix: Some(id.clone()),
            fetch_inputs_and_outputs,
            max_instance_count: 100,
            ..Default::default()
        }),
    };
    let mut queried = client
        .query_instances(query(false))
        .await
        .expect("QueryInstances")
        .into_inner()
        .orchestration_state;
    assert_eq!(queried.len(), 1);
    for (what, state) in [
        ("wait for completion", waited),
        ("get", got),
        ("wait for start", started),
        ("query", queried.remove(0)),
    ] {
        assert_eq!(state.orchestration_status(), OrchestrationStatus::Failed, "{what}");
        assert_eq!(state.name, "GetInstanceMetadata_EndToEnd", "{what}");
        assert!(
            state.created_timestamp.is_some() && state.last_updated_timestamp.is_some(),
            "{what}"
        );
        assert_eq!(state.failure_details, None, "{what}");
        assert_eq!(state.input, None, "{what}");
        assert_eq!(state.output, None, "{what}");
        assert_eq!(state.custom_status, None, "{what}");
    }

    let full = client
        .get_instance(get_request(&id, true))
        .await
        .expect("GetInstance")
        .into_inner()
        .orchestration_state
        .expect("state");
    let mut queried = client
        .query_instances(query(true))
        .await
        .expect("QueryInstances")
        .into_inner()
        .orchestration_state;
    for (what, state) in [("get", full), ("query", queried.remove(0))] {
        let details = state.failure_details.expect("failure details when asked for");
        assert_eq!(details.error_type, failure.error_type, "{what}");
        assert_eq!(details.error_message, failure.error_message, "{what}");
        assert_eq!(state.input.as_deref(), Some("true"), "{what}");
        assert_eq!(state.custom_status.as_deref(), Some("\"custom\""), "{what}");
    }
}

/// The .NET orchestration context refuses every entity call, signal and lock unless its work
/// item carries `entityParameters`. Every orchestrator work item carries it, with the
/// configured reorder window, whatever the worker says about entity concurrency (Python sends
/// 0 and still uses entities).
async fn every_orchestrator_work_item_carries_entity_parameters(backend: Backend) {
    let window = Duration::from_secs(7 * 60);
    let sidecar = Sidecar::on(backend, |o| o.dispatch.entity_reorder_window = window).await;
    let mut client = sidecar.client.clone();
    let expected = Some(OrchestratorEntityParameters {
        entity_message_reorder_window: Some(prost_types::Duration { seconds: 420, nanos: 0 }),
    });
    let python_shape = GetWorkItemsRequest {
        max_concurrent_entity_work_items: 0,
        ..dotnet_worker_request()
    };
    for request in [dotnet_worker_request(), python_shape] {
        let mut worker = sidecar.worker_with(request).await;
        let start = dotnet_start("UsesEntities", "null");
        let id = start.instance_id.clone();
        client.start_instance(start).await.expect("StartInstance");
        // The first work item, and a later one for the same instance (after a timer).
        let (token, first) = worker.orchestration().await;
        assert_eq!(first.entity_parameters, expected, "first work item");
        client
            .complete_orchestrator_task(dotnet_answer(&token, &id, vec![create_timer(0, now_ms())], None))
            .await
            .expect("timer");
        let (token, second) = worker.orchestration().await;
        assert_eq!(kinds(&second.new_events), ["OrchestratorStarted", "TimerFired"]);
        assert_eq!(second.entity_parameters, expected, "later work item");
        client
            .complete_orchestrator_task(dotnet_answer(
                &token,
                &id,
                vec![complete(1, OrchestrationStatus::Completed, "null")],
                None,
            ))
            .await
            .expect("complete");
        wait_completion(&mut client, &id).await;
    }
}

/// The default window is Durable Functions' default, 30 minutes.
#[tokio::test]
async fn the_default_entity_reorder_window_is_thirty_minutes() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker_with(dotnet_worker_request()).await;
    client
        .start_instance(dotnet_start("UsesEntities", "null"))
        .await
        .expect("StartInstance");
    let (_, request) = worker.orchestration().await;
    let window = request.entity_parameters.and_then(|p| p.entity_message_reorder_window);
    assert_eq!(window, Some(prost_types::Duration { seconds: 1800, nanos: 0 }));
}

/// Work-item filters as `UseWorkItemFilters()` builds them from a worker's registry
/// (`DurableTaskWorkerWorkItemFilters.FromDurableTaskRegistry`): one entry per registered name;
/// no versions when only unversioned code is registered (any version will do), otherwise the
/// registered versions, sorted, with "" for an unversioned registration (or, under strict
/// versioning, just the worker's version); entities by name; and the message is sent with
/// every kind, even a kind with no entries.
fn dotnet_filtered_worker(orchestrations: &[(&str, &[&str])], activities: &[(&str, &[&str])], entities: &[&str]) -> GetWorkItemsRequest {
    let versions = |v: &[&str]| v.iter().map(|v| v.to_string()).collect::<Vec<_>>();
    GetWorkItemsRequest {
        work_item_filters: Some(WorkItemFilters {
            orchestrations: orchestrations
                .iter()
                .map(|(name, v)| OrchestrationFilter {
                    name: name.to_string(),
                    versions: versions(v),
                })
                .collect(),
            activities: activities
                .iter()
                .map(|(name, v)| ActivityFilter {
                    name: name.to_string(),
                    versions: versions(v),
                })
                .collect(),
            entities: entities.iter().map(|name| EntityFilter { name: name.to_string() }).collect(),
        }),
        ..dotnet_worker_request()
    }
}

fn versioned_start(name: &str, version: Option<&str>) -> CreateInstanceRequest {
    CreateInstanceRequest {
        version: version.map(Into::into),
        ..dotnet_start(name, "null")
    }
}

/// Two .NET workers on one task hub, each hosting its own orchestrations and activities, as in
/// the report (before filters, each was sent everything and failed what it did not
/// host). Work nobody connected has registered waits until a worker that has it connects.
async fn workers_with_dotnet_filters_get_only_what_they_registered(backend: Backend) {
    let sidecar = Sidecar::on(backend, |_| {}).await;
    let mut client = sidecar.client.clone();
    let mut a = sidecar
        .worker_with(dotnet_filtered_worker(
            &[("Chain", &[]), ("Versioned", &["1.0", "2.0"])],
            &[("Hello", &[])],
            &["counter"],
        ))
        .await;
    let mut ids = HashMap::new();
    for (key, name, version) in [
        ("only_b", "OnlyB", None),
        ("v3", "Versioned", Some("3.0")),
        ("unversioned", "Versioned", None),
        ("chain", "Chain", None),
        ("v2", "Versioned", Some("2.0")),
    ] {
        let id = client
            .start_instance(versioned_start(name, version))
            .await
            .expect("StartInstance")
            .into_inner()
            .instance_id;
        ids.insert(key, id);
    }

    // Worker A gets exactly its two: Chain, and Versioned at a version it registered.
    let held = a.orchestrations(2).await;
    let mut got: Vec<_> = held.keys().cloned().collect();
    got.sort();
    let mut expected = vec![ids["chain"].clone(), ids["v2"].clone()];
    expected.sort();
    assert_eq!(got, expected, "worker A's orchestrations");

    // Worker B hosts one orchestration and its activity, and no entities.
    let mut b = sidecar
        .worker_with(dotnet_filtered_worker(&[("OnlyB", &[])], &[("OnlyBActivity", &[])], &[]))
        .await;
    let (b_token, b_item) = b.orchestration().await;
    assert_eq!(b_item.instance_id, ids["only_b"], "worker B's orchestration");

    // Each one's activity goes to the worker that registered it.
    let (a_token, _) = &held[&ids["chain"]];
    client
        .complete_orchestrator_task(dotnet_answer(
            a_token,
            &ids["chain"],
            vec![schedule_task(0, "Hello", "\"x\"")],
            None,
        ))
        .await
        .expect("Chain step");
    client
        .complete_orchestrator_task(dotnet_answer(
            &b_token,
            &ids["only_b"],
            vec![schedule_task(0, "OnlyBActivity", "1")],
            None,
        ))
        .await
        .expect("OnlyB step");
    let (_, activity) = a.activity().await;
    assert_eq!(activity.name, "Hello");
    let (_, activity) = b.activity().await;
    assert_eq!(activity.name, "OnlyBActivity");

    // An entity nobody connected hosts waits for a worker that does: neither A (other entities)
    // nor B (none) takes it.
    client
        .signal_entity(SignalEntityRequest {
            instance_id: "@ledger@1".into(),
            name: "add".into(),
            input: Some("1".into()),
            request_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .expect("SignalEntity");

    // The versions nobody had wait as well, and go to the workers that register them: one with
    // unversioned and 1.0 registered, one under strict versioning at 3.0.
    let mut c = sidecar
        .worker_with(dotnet_filtered_worker(&[("Versioned", &["", "1.0"])], &[], &[]))
        .await;
    let (_, item) = c.orchestration().await;
    assert_eq!(item.instance_id, ids["unversioned"], "the unversioned instance");
    let mut d = sidecar
        .worker_with(dotnet_filtered_worker(&[("Versioned", &["3.0"])], &[], &[]))
        .await;
    let (_, item) = d.orchestration().await;
    assert_eq!(item.instance_id, ids["v3"], "the 3.0 instance");
    let mut e = sidecar.worker_with(dotnet_filtered_worker(&[], &[], &["ledger"])).await;
    let item = e.next().await;
    match item.request {
        Some(work_item::Request::EntityRequestV2(r)) => assert_eq!(r.instance_id, "@ledger@1"),
        other => panic!("expected the ledger's entity work item, got {other:?}"),
    }
}

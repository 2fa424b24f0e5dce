//! The work-item protocol over a real socket: orchestrator and activity items, their
//! completions, history streaming, chunked answers and continue-as-new.
#![allow(deprecated)] // isPartial / chunkIndex are deprecated in the protocol but still sent by SDKs

mod common;

use common::*;
use outrigger::proto::history_event::EventType;
use outrigger::proto::orchestrator_action::OrchestratorActionType as ActionType;
use outrigger::proto::*;
use tonic::Code;

#[tokio::test]
async fn full_orchestration_over_the_raw_protocol() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;

    let id = start(&mut client, "order-1", "ProcessOrder", Some("\"order\"")).await;
    assert_eq!(id, "order-1");

    // Step 1: the orchestrator starts.
    let (token, first) = worker.orchestration().await;
    assert!(!token.is_empty(), "completion token must be set");
    assert_eq!(first.instance_id, "order-1");
    let execution_id = first.execution_id.clone().expect("executionId set");
    assert!(!execution_id.is_empty());
    assert!(
        first.past_events.is_empty(),
        "a new instance has no past events: {:?}",
        kinds(&first.past_events)
    );
    assert_eq!(kinds(&first.new_events), ["OrchestratorStarted", "ExecutionStarted"]);
    let started = execution_started(&first.new_events[1]);
    assert_eq!(started.name, "ProcessOrder");
    assert_eq!(started.input.as_deref(), Some("\"order\""));
    let started_instance = started.orchestration_instance.as_ref().expect("orchestrationInstance");
    assert_eq!(started_instance.instance_id, "order-1");
    assert_eq!(started_instance.execution_id.as_deref(), Some(execution_id.as_str()));

    complete_orchestrator(&mut client, &token, &id, vec![schedule_task(0, "Charge", "\"card\"")])
        .await
        .expect("step 1");

    // The activity.
    let (activity_token, activity) = worker.activity().await;
    assert!(!activity_token.is_empty());
    assert_ne!(activity_token, token);
    assert_eq!(activity.task_id, 0);
    assert_eq!(activity.name, "Charge");
    assert_eq!(activity.input.as_deref(), Some("\"card\""));
    let owner = activity.orchestration_instance.clone().expect("orchestrationInstance set");
    assert_eq!(owner.instance_id, "order-1");
    assert_eq!(owner.execution_id.as_deref(), Some(execution_id.as_str()));
    complete_activity(&mut client, &activity_token, &activity, "\"charged\"")
        .await
        .expect("activity completion");

    // Step 2: the orchestrator sees the activity's result.
    let (token2, second) = worker.orchestration().await;
    assert_ne!(token2, token, "each work item gets its own token");
    assert_eq!(second.execution_id.as_deref(), Some(execution_id.as_str()));
    let scheduled = second
        .past_events
        .iter()
        .find(|e| matches!(e.event_type, Some(EventType::TaskScheduled(_))))
        .unwrap_or_else(|| panic!("pastEvents hold TaskScheduled: {:?}", kinds(&second.past_events)));
    assert_eq!(scheduled.event_id, 0);
    assert_eq!(
        kinds(&second.past_events),
        ["OrchestratorStarted", "ExecutionStarted", "TaskScheduled", "OrchestratorCompleted"]
    );
    assert_eq!(kinds(&second.new_events), ["OrchestratorStarted", "TaskCompleted"]);
    match &second.new_events[1].event_type {
        Some(EventType::TaskCompleted(c)) => {
            assert_eq!(c.task_scheduled_id, 0);
            assert_eq!(c.result.as_deref(), Some("\"charged\""));
        }
        other => panic!("expected TaskCompleted, got {other:?}"),
    }

    complete_orchestrator(
        &mut client,
        &token2,
        &id,
        vec![complete(1, OrchestrationStatus::Completed, "\"done\"")],
    )
    .await
    .expect("step 2");

    let state = wait_completion(&mut client, &id).await;
    assert_eq!(state.orchestration_status(), OrchestrationStatus::Completed);
    assert_eq!(state.output.as_deref(), Some("\"done\""));
    assert_eq!(state.input.as_deref(), Some("\"order\""));
    assert!(state.completed_timestamp.is_some());
}

/// Runs step 1 of an instance (scheduling one activity) and its activity, returning the
/// step-1 request and the second orchestrator work item.
async fn two_steps(sidecar: &Sidecar, worker: &mut Worker, id: &str) -> (OrchestratorRequest, (String, OrchestratorRequest)) {
    let mut client = sidecar.client.clone();
    start(&mut client, id, "Streamed", Some("1")).await;
    let (token, first) = worker.orchestration().await;
    assert!(!first.requires_history_streaming, "an empty history is never streamed");
    complete_orchestrator(&mut client, &token, id, vec![schedule_task(0, "Work", "2")])
        .await
        .expect("step 1");
    let (activity_token, activity) = worker.activity().await;
    complete_activity(&mut client, &activity_token, &activity, "3")
        .await
        .expect("activity");
    (first, worker.orchestration().await)
}

#[tokio::test]
async fn streaming_worker_gets_history_by_stream_instead_of_past_events() {
    let sidecar = Sidecar::with(|o| o.dispatch.history_streaming_threshold = 0).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar
        .worker_with(GetWorkItemsRequest {
            capabilities: vec![WorkerCapability::HistoryStreaming as i32],
            ..Default::default()
        })
        .await;

    let (first, (token, second)) = two_steps(&sidecar, &mut worker, "streamed").await;
    assert!(second.requires_history_streaming, "history above the threshold must be streamed");
    assert!(
        second.past_events.is_empty(),
        "pastEvents must be empty when streaming: {:?}",
        kinds(&second.past_events)
    );
    assert_eq!(kinds(&second.new_events), ["OrchestratorStarted", "TaskCompleted"]);

    let streamed = history_for(
        &mut client,
        StreamInstanceHistoryRequest {
            instance_id: "streamed".into(),
            execution_id: second.execution_id.clone(),
            for_work_item_processing: true,
        },
    )
    .await;
    // Exactly what step 1 committed: the events it was sent, then its own.
    assert_eq!(
        kinds(&streamed),
        ["OrchestratorStarted", "ExecutionStarted", "TaskScheduled", "OrchestratorCompleted"]
    );
    assert_eq!(
        streamed[..2],
        first.new_events[..],
        "the committed events are the ones step 1 was sent"
    );
    assert_eq!(streamed[2].event_id, 0);

    // The worker can answer normally afterwards.
    complete_orchestrator(
        &mut client,
        &token,
        "streamed",
        vec![complete(1, OrchestrationStatus::Completed, "4")],
    )
    .await
    .expect("step 2");
    assert_eq!(
        wait_completion(&mut client, "streamed").await.orchestration_status(),
        OrchestrationStatus::Completed
    );
}

#[tokio::test]
async fn worker_without_streaming_capability_always_gets_past_events() {
    let sidecar = Sidecar::with(|o| o.dispatch.history_streaming_threshold = 0).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;

    let (_, (_, second)) = two_steps(&sidecar, &mut worker, "plain").await;
    assert!(!second.requires_history_streaming);
    assert_eq!(
        kinds(&second.past_events),
        ["OrchestratorStarted", "ExecutionStarted", "TaskScheduled", "OrchestratorCompleted"]
    );
    assert_eq!(
        second.past_events,
        history(&mut client, "plain").await,
        "pastEvents are the committed history"
    );
}

#[tokio::test]
async fn chunked_completion_is_committed_once_with_all_actions() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "chunked", "Chunky", None).await;
    let (token, _) = worker.orchestration().await;

    let chunk0 = OrchestratorResponse {
        instance_id: "chunked".into(),
        completion_token: token.clone(),
        actions: vec![schedule_task(0, "A", "0"), schedule_task(1, "B", "1")],
        is_partial: true,
        chunk_index: Some(0),
        ..Default::default()
    };
    client.complete_orchestrator_task(chunk0).await.expect("chunk 0");
    assert!(
        history(&mut client, "chunked").await.is_empty(),
        "a partial chunk must not commit anything"
    );
    assert_eq!(status_of(&mut client, "chunked").await, OrchestrationStatus::Pending);

    let chunk1 = OrchestratorResponse {
        instance_id: "chunked".into(),
        completion_token: token.clone(),
        actions: vec![schedule_task(2, "C", "2")],
        is_partial: false,
        chunk_index: Some(1),
        ..Default::default()
    };
    client.complete_orchestrator_task(chunk1).await.expect("chunk 1");

    let committed = history(&mut client, "chunked").await;
    assert_eq!(
        kinds(&committed),
        [
            "OrchestratorStarted",
            "ExecutionStarted",
            "TaskScheduled",
            "TaskScheduled",
            "TaskScheduled",
            "OrchestratorCompleted"
        ],
        "one step with the actions of both chunks"
    );
    let scheduled_ids: Vec<i32> = committed[2..5].iter().map(|e| e.event_id).collect();
    assert_eq!(scheduled_ids, [0, 1, 2]);

    let mut activities = vec![];
    for _ in 0..3 {
        let (_, a) = worker.activity().await;
        activities.push((a.task_id, a.name));
    }
    activities.sort();
    assert_eq!(activities, [(0, "A".to_string()), (1, "B".to_string()), (2, "C".to_string())]);

    // The token is spent once the last chunk commits.
    let again = complete_orchestrator(&mut client, &token, "chunked", vec![]).await;
    expect_code(again, Code::FailedPrecondition);
}

#[tokio::test]
async fn chunk_with_wrong_index_is_invalid_argument() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "bad-chunks", "Chunky", None).await;
    let (token, _) = worker.orchestration().await;
    let chunk = |index: i32, partial: bool, task: i32| OrchestratorResponse {
        instance_id: "bad-chunks".into(),
        completion_token: token.clone(),
        actions: vec![schedule_task(task, "T", "0")],
        is_partial: partial,
        chunk_index: Some(index),
        ..Default::default()
    };

    // The first chunk must be chunk 0.
    expect_code(client.complete_orchestrator_task(chunk(1, true, 0)).await, Code::InvalidArgument);
    client.complete_orchestrator_task(chunk(0, true, 0)).await.expect("chunk 0");
    // Skipping chunk 1, or repeating chunk 0, is refused.
    expect_code(client.complete_orchestrator_task(chunk(2, false, 1)).await, Code::InvalidArgument);
    expect_code(client.complete_orchestrator_task(chunk(0, false, 1)).await, Code::InvalidArgument);
    assert!(history(&mut client, "bad-chunks").await.is_empty(), "refused chunks commit nothing");

    // The refused chunks left the answer intact: the right chunk 1 completes it with both actions.
    client.complete_orchestrator_task(chunk(1, false, 1)).await.expect("chunk 1");
    let committed = history(&mut client, "bad-chunks").await;
    let scheduled: Vec<i32> = committed
        .iter()
        .filter(|e| matches!(e.event_type, Some(EventType::TaskScheduled(_))))
        .map(|e| e.event_id)
        .collect();
    assert_eq!(scheduled, [0, 1], "exactly the accepted chunks' actions: {:?}", kinds(&committed));
}

#[tokio::test]
async fn continue_as_new_starts_a_fresh_execution_with_carryover_events() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "looper", "Loop", Some("1")).await;
    let (token, first) = worker.orchestration().await;
    let first_execution = first.execution_id.clone().expect("executionId");

    let carried = HistoryEvent {
        event_id: -1,
        timestamp: Some(ts(now_ms())),
        event_type: Some(EventType::EventRaised(EventRaisedEvent {
            name: "carried".into(),
            input: Some("\"c\"".into()),
        })),
    };
    let again = action(
        0,
        ActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: OrchestrationStatus::ContinuedAsNew as i32,
            result: Some("2".into()),
            carryover_events: vec![carried.clone()],
            ..Default::default()
        }),
    );
    complete_orchestrator(&mut client, &token, "looper", vec![again])
        .await
        .expect("continue as new");

    let (_, next) = worker.orchestration().await;
    assert_eq!(next.instance_id, "looper");
    let next_execution = next.execution_id.clone().expect("executionId");
    assert_ne!(next_execution, first_execution, "continue-as-new starts a new execution");
    assert!(
        next.past_events.is_empty(),
        "a new execution has no past: {:?}",
        kinds(&next.past_events)
    );
    assert_eq!(kinds(&next.new_events), ["OrchestratorStarted", "ExecutionStarted", "EventRaised"]);
    let started = execution_started(&next.new_events[1]);
    assert_eq!(started.input.as_deref(), Some("2"));
    assert_eq!(started.name, "Loop");
    assert_eq!(
        started.orchestration_instance.as_ref().and_then(|i| i.execution_id.as_deref()),
        Some(next_execution.as_str())
    );
    assert_eq!(next.new_events[2].event_type, carried.event_type);

    let state = get(&mut client, "looper").await.expect("instance exists");
    assert_eq!(state.orchestration_status(), OrchestrationStatus::Running);
    assert_eq!(state.input.as_deref(), Some("2"));
    assert_eq!(state.execution_id.as_deref(), Some(next_execution.as_str()));
}

//! Who holds which work item: completion tokens, abandons, vanished workers, health pings and
//! per-worker concurrency limits.

mod common;

use std::time::Duration;

use common::*;
use outrigger::proto::work_item::Request as Item;
use outrigger::proto::*;
use tonic::Code;

/// The back-off before an abandoned item is offered again (the default).
fn abandon_delay() -> Duration {
    outrigger::dispatch::Settings::default().abandon_delay
}

#[tokio::test]
async fn completing_twice_with_one_token_is_refused_and_changes_nothing() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "twice", "Once", None).await;
    let (token, _) = worker.orchestration().await;

    complete_orchestrator(&mut client, &token, "twice", vec![schedule_task(0, "Work", "1")])
        .await
        .expect("first completion");
    let committed = history(&mut client, "twice").await;
    assert_eq!(
        kinds(&committed),
        ["OrchestratorStarted", "ExecutionStarted", "TaskScheduled", "OrchestratorCompleted"]
    );

    let second = complete_orchestrator(&mut client, &token, "twice", vec![complete(1, OrchestrationStatus::Completed, "x")]).await;
    let status = expect_code(second, Code::FailedPrecondition);
    assert!(
        status.message().contains(&token),
        "the message names the token: {}",
        status.message()
    );
    assert_eq!(
        history(&mut client, "twice").await,
        committed,
        "a refused completion must not touch history"
    );
    assert_eq!(status_of(&mut client, "twice").await, OrchestrationStatus::Running);
}

#[tokio::test]
async fn made_up_tokens_are_refused() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    // An instance exists (and is even held by a worker), but the token names nothing.
    let mut worker = sidecar.worker().await;
    start(&mut client, "real", "Real", None).await;
    let _held = worker.orchestration().await;

    let orchestration = complete_orchestrator(&mut client, "not-a-token", "real", vec![]).await;
    expect_code(orchestration, Code::FailedPrecondition);
    assert!(history(&mut client, "real").await.is_empty());

    let activity = ActivityResponse {
        instance_id: "real".into(),
        task_id: 0,
        result: Some("1".into()),
        completion_token: "not-a-token".into(),
        failure_details: None,
    };
    expect_code(client.complete_activity_task(activity).await, Code::FailedPrecondition);
}

#[tokio::test]
async fn completing_an_activity_twice_is_refused() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "act-twice", "A", None).await;
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(&mut client, &token, "act-twice", vec![schedule_task(0, "Work", "1")])
        .await
        .expect("step 1");
    let (activity_token, activity) = worker.activity().await;

    complete_activity(&mut client, &activity_token, &activity, "first")
        .await
        .expect("first completion");
    let second = complete_activity(&mut client, &activity_token, &activity, "second").await;
    expect_code(second, Code::FailedPrecondition);

    // Only the first result reached the orchestrator.
    let (_, next) = worker.orchestration().await;
    assert_eq!(kinds(&next.new_events), ["OrchestratorStarted", "TaskCompleted"]);
    match &next.new_events[1].event_type {
        Some(outrigger::proto::history_event::EventType::TaskCompleted(c)) => assert_eq!(c.result.as_deref(), Some("first")),
        other => panic!("expected TaskCompleted, got {other:?}"),
    }
}

#[tokio::test]
async fn abandoned_orchestration_is_redelivered_with_a_new_token() {
    let time = VirtualTime::start();
    let sidecar = Sidecar::with(|o| time.options(o)).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "abandoned", "A", Some("1")).await;
    let (token, first) = worker.orchestration().await;

    client
        .abandon_task_orchestrator_work_item(AbandonOrchestrationTaskRequest {
            completion_token: token.clone(),
        })
        .await
        .expect("abandon");

    // Offered again after the abandon's back-off.
    time.advance(abandon_delay()).await;
    let (token2, again) = worker.orchestration().await;
    assert_ne!(token2, token, "a redelivered item gets a fresh token");
    assert_eq!(again.instance_id, "abandoned");
    assert_eq!(again.execution_id, first.execution_id);
    assert_eq!(kinds(&again.new_events), ["OrchestratorStarted", "ExecutionStarted"]);
    assert_eq!(
        again.new_events[1], first.new_events[1],
        "the same ExecutionStarted is delivered again"
    );

    // The abandoned token is dead; the new one works.
    expect_code(
        complete_orchestrator(&mut client, &token, "abandoned", vec![]).await,
        Code::FailedPrecondition,
    );
    complete_orchestrator(
        &mut client,
        &token2,
        "abandoned",
        vec![complete(0, OrchestrationStatus::Completed, "2")],
    )
    .await
    .expect("complete with the new token");
    assert_eq!(wait_completion(&mut client, "abandoned").await.output.as_deref(), Some("2"));
}

#[tokio::test]
async fn abandoned_activity_is_redelivered_with_a_new_token() {
    let time = VirtualTime::start();
    let sidecar = Sidecar::with(|o| time.options(o)).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "abandoned-act", "A", None).await;
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(&mut client, &token, "abandoned-act", vec![schedule_task(0, "Work", "\"in\"")])
        .await
        .expect("step 1");
    let (activity_token, activity) = worker.activity().await;

    client
        .abandon_task_activity_work_item(AbandonActivityTaskRequest {
            completion_token: activity_token.clone(),
        })
        .await
        .expect("abandon");

    time.advance(abandon_delay()).await;
    let (activity_token2, again) = worker.activity().await;
    assert_ne!(activity_token2, activity_token);
    assert_eq!(again, activity, "the same activity request is delivered again");

    expect_code(
        complete_activity(&mut client, &activity_token, &activity, "old").await,
        Code::FailedPrecondition,
    );
    complete_activity(&mut client, &activity_token2, &again, "new")
        .await
        .expect("complete with the new token");
    let (_, next) = worker.orchestration().await;
    assert_eq!(kinds(&next.new_events), ["OrchestratorStarted", "TaskCompleted"]);
}

#[tokio::test]
async fn abandoning_unknown_tokens_is_ok() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    client
        .abandon_task_orchestrator_work_item(AbandonOrchestrationTaskRequest {
            completion_token: "no-such-token".into(),
        })
        .await
        .expect("abandoning an unknown orchestration token is idempotent");
    client
        .abandon_task_activity_work_item(AbandonActivityTaskRequest {
            completion_token: "no-such-token".into(),
        })
        .await
        .expect("abandoning an unknown activity token is idempotent");
}

#[tokio::test]
async fn items_of_a_dropped_worker_go_to_another_worker_promptly() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut first = sidecar.worker().await;
    start(&mut client, "orphan", "Orphan", None).await;
    let (token, item) = first.orchestration().await;

    // A second worker connects while the first still holds the item.
    let mut second = sidecar.worker_with(GetWorkItemsRequest::default()).await;
    drop(first);

    // Leases last 30 s; the item must come back because the stream closed, well before that.
    let again = second.next_within(Duration::from_secs(5)).await;
    let Some(Item::OrchestratorRequest(request)) = again.request else {
        panic!("expected an orchestrator item, got {again:?}")
    };
    assert_eq!(request.instance_id, "orphan");
    assert_eq!(kinds(&request.new_events), ["OrchestratorStarted", "ExecutionStarted"]);
    assert_eq!(
        request.new_events[1], item.new_events[1],
        "the same ExecutionStarted is delivered again"
    );
    assert_ne!(again.completion_token, token);
    expect_code(
        complete_orchestrator(&mut client, &token, "orphan", vec![]).await,
        Code::FailedPrecondition,
    );
    complete_orchestrator(
        &mut client,
        &again.completion_token,
        "orphan",
        vec![complete(0, OrchestrationStatus::Completed, "1")],
    )
    .await
    .expect("the second worker completes it");
}

#[tokio::test]
async fn activities_of_a_dropped_worker_go_to_another_worker_promptly() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut first = sidecar.worker().await;
    start(&mut client, "orphan-act", "Orphan", None).await;
    let (token, _) = first.orchestration().await;
    complete_orchestrator(&mut client, &token, "orphan-act", vec![schedule_task(0, "Work", "1")])
        .await
        .expect("step 1");
    let (activity_token, activity) = first.activity().await;

    let mut second = sidecar.worker().await;
    drop(first);

    let again = second.next_within(Duration::from_secs(5)).await;
    let Some(Item::ActivityRequest(request)) = again.request else {
        panic!("expected an activity item, got {again:?}")
    };
    assert_eq!(request, activity);
    assert_ne!(again.completion_token, activity_token);
    expect_code(
        complete_activity(&mut client, &activity_token, &activity, "old").await,
        Code::FailedPrecondition,
    );
    complete_activity(&mut client, &again.completion_token, &request, "new")
        .await
        .expect("the second worker completes it");
}

/// A worker that holds an item past the item deadline loses it: the item is offered again
/// with a fresh token, and the late answer is refused. The deadline is checked with every lease
/// renewal (a third of the lease), and the lease here never expires: only the deadline can
/// bring the item back.
#[tokio::test]
async fn an_item_held_past_the_item_deadline_is_offered_again() {
    let time = VirtualTime::start();
    let deadline = Duration::from_secs(2);
    let lease = outrigger::dispatch::Settings::default().lease;
    let sidecar = Sidecar::with(|o| {
        time.options(o);
        o.dispatch.item_deadline = Some(deadline);
    })
    .await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "slow", "Slow", None).await;
    let (token, first) = worker.orchestration().await;

    // The first renewal after the deadline: still well inside the lease.
    let renewal = lease / 3;
    assert!(renewal >= deadline && renewal < lease);
    time.advance(renewal).await;
    let (token2, again) = worker.orchestration().await;
    assert_ne!(token2, token, "a taken-back item gets a fresh token");
    assert_eq!(again.instance_id, "slow");
    assert_eq!(
        again.new_events[1], first.new_events[1],
        "the same ExecutionStarted is delivered again"
    );
    expect_code(
        complete_orchestrator(&mut client, &token, "slow", vec![]).await,
        Code::FailedPrecondition,
    );
    complete_orchestrator(&mut client, &token2, "slow", vec![complete(0, OrchestrationStatus::Completed, "1")])
        .await
        .expect("the answer with the fresh token");
    assert_eq!(wait_completion(&mut client, "slow").await.output.as_deref(), Some("1"));
}

#[tokio::test]
async fn idle_streams_receive_health_pings() {
    let time = VirtualTime::start();
    let interval = Duration::from_secs(15);
    let sidecar = Sidecar::with(|o| {
        time.options(o);
        o.dispatch.ping_interval = interval;
    })
    .await;
    let mut worker = sidecar.worker().await;
    for _ in 0..2 {
        time.advance(interval).await;
        let item = worker.next_within(Duration::from_secs(5)).await;
        assert!(
            matches!(item.request, Some(Item::HealthPing(_))),
            "an idle stream gets only pings, got {item:?}"
        );
        assert!(item.completion_token.is_empty(), "pings carry no completion token");
    }
}

#[tokio::test]
async fn worker_activity_limit_is_honoured_until_it_completes() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let one_at_a_time = GetWorkItemsRequest {
        max_concurrent_activity_work_items: 1,
        ..Default::default()
    };
    let mut a = sidecar.worker_with(one_at_a_time.clone()).await;
    start(&mut client, "fan-out", "FanOut", None).await;
    let (token, _) = a.orchestration().await;
    let three = vec![
        schedule_task(0, "Work", "0"),
        schedule_task(1, "Work", "1"),
        schedule_task(2, "Work", "2"),
    ];
    complete_orchestrator(&mut client, &token, "fan-out", three).await.expect("step 1");
    let (a_token, a_activity) = next_activity(&mut a).await;

    // A is full, so a second one-at-a-time worker gets exactly one of the other two. If A had
    // been handed more than its limit, there would be nothing left for B.
    let mut b = sidecar.worker_with(one_at_a_time).await;
    let (_, b_activity) = next_activity(&mut b).await;
    assert_ne!(b_activity.task_id, a_activity.task_id);

    // Completing frees A's slot: the third activity goes to A (B is still full).
    complete_activity(&mut client, &a_token, &a_activity, "done")
        .await
        .expect("complete");
    let (_, a_next) = next_activity(&mut a).await;
    let mut seen = vec![a_activity.task_id, b_activity.task_id, a_next.task_id];
    seen.sort();
    assert_eq!(seen, [0, 1, 2], "each activity handed out exactly once");
}

/// The next activity item, passing over orchestrator items (the orchestration's next step may
/// go to either worker; it is not what this test is about).
async fn next_activity(worker: &mut Worker) -> (String, ActivityRequest) {
    loop {
        let item = worker.next().await;
        if let Some(Item::ActivityRequest(request)) = item.request {
            return (item.completion_token, request);
        }
    }
}

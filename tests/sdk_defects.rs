//! Defects that SDKs other than Python exposed, each pinned by a test on the raw protocol:
//! actions listed after the completion (the Go SDK's order), recursive terminate below a
//! finished sub-orchestration, microsecond timestamps, and both shapes of the reuse policy.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use outrigger::proto::history_event::EventType;
use outrigger::proto::orchestrator_action::OrchestratorActionType as ActionType;
use outrigger::proto::*;
use tonic::Code;

use OrchestrationStatus as S;

fn create_child(id: i32, instance_id: &str) -> OrchestratorAction {
    action(
        id,
        ActionType::CreateSubOrchestration(CreateSubOrchestrationAction {
            instance_id: instance_id.into(),
            name: "Child".into(),
            ..Default::default()
        }),
    )
}

fn send_event(id: i32, target: &str, name: &str) -> OrchestratorAction {
    action(
        id,
        ActionType::SendEvent(SendEventAction {
            instance: Some(OrchestrationInstance {
                instance_id: target.into(),
                execution_id: None,
            }),
            name: name.into(),
            data: Some("\"late\"".into()),
        }),
    )
}

#[tokio::test]
async fn actions_listed_after_the_completion_still_take_effect() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "listener", "Listener", None).await;
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(&mut client, &token, "listener", vec![]).await.unwrap();

    start(&mut client, "last-step", "Parent", None).await;
    let (token, _) = worker.orchestration().await;
    // The completion first, as the Go SDK may list it.
    let actions = vec![
        complete(1, S::Completed, "\"done\""),
        create_child(2, "last-step-child"),
        send_event(3, "listener", "Late"),
        schedule_task(4, "Cleanup", "1"),
    ];
    complete_orchestrator(&mut client, &token, "last-step", actions).await.unwrap();

    let state = wait_completion(&mut client, "last-step").await;
    assert_eq!(state.orchestration_status(), S::Completed);
    assert_eq!(state.output.as_deref(), Some("\"done\""));
    let recorded = kinds(&history(&mut client, "last-step").await);
    for k in ["SubOrchestrationInstanceCreated", "EventSent", "TaskScheduled"] {
        assert!(recorded.contains(&k.to_string()), "{k} missing from {recorded:?}");
    }
    assert_eq!(recorded.iter().rev().nth(1).map(String::as_str), Some("ExecutionCompleted"));

    // Each of the three reaches a worker: the child starts, the event arrives, the activity runs.
    let mut seen = vec![];
    while seen.len() < 3 {
        match worker.next().await.request {
            Some(work_item::Request::OrchestratorRequest(r)) if r.instance_id == "last-step-child" => seen.push("child"),
            Some(work_item::Request::OrchestratorRequest(r)) if r.instance_id == "listener" => {
                assert!(
                    r.new_events
                        .iter()
                        .any(|e| matches!(&e.event_type, Some(EventType::EventRaised(x)) if x.name == "Late"))
                );
                seen.push("event");
            }
            Some(work_item::Request::ActivityRequest(a)) if a.name == "Cleanup" => seen.push("activity"),
            other => panic!("unexpected work item {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, ["activity", "child", "event"]);
}

#[tokio::test]
async fn recursive_terminate_reaches_grandchildren_of_a_finished_child() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "root", "Root", None).await;
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(&mut client, &token, "root", vec![create_child(1, "root-child")])
        .await
        .unwrap();

    // The child starts a grandchild without waiting for it, and finishes.
    let (token, r) = worker.orchestration().await;
    assert_eq!(r.instance_id, "root-child");
    let actions = vec![create_child(1, "root-grandchild"), complete(2, S::Completed, "\"ok\"")];
    complete_orchestrator(&mut client, &token, "root-child", actions).await.unwrap();

    // The grandchild waits on a far timer; the root takes note of the child's result.
    let items = worker.orchestrations(2).await;
    let (token, _) = &items["root-grandchild"];
    let far = create_timer(1, now_ms() + 3_600_000);
    complete_orchestrator(&mut client, token, "root-grandchild", vec![far])
        .await
        .unwrap();
    let (token, _) = &items["root"];
    complete_orchestrator(&mut client, token, "root", vec![]).await.unwrap();
    assert_eq!(status_of(&mut client, "root-child").await, S::Completed);
    assert_eq!(status_of(&mut client, "root-grandchild").await, S::Running);

    let terminate = TerminateRequest {
        instance_id: "root".into(),
        output: Some("\"stop\"".into()),
        recursive: true,
    };
    client.terminate_instance(terminate).await.unwrap();
    // Both the root and the grandchild are told; a worker answers each as the SDKs do.
    let items = worker.orchestrations(2).await;
    for (id, (token, r)) in &items {
        let told = r
            .new_events
            .iter()
            .any(|e| matches!(&e.event_type, Some(EventType::ExecutionTerminated(t)) if t.recurse));
        assert!(told, "{id} was not sent a recursive terminate: {:?}", r.new_events);
        complete_orchestrator(&mut client, token, id, vec![complete(-1, S::Terminated, "\"stop\"")])
            .await
            .unwrap();
    }
    assert_eq!(
        wait_completion(&mut client, "root-grandchild").await.orchestration_status(),
        S::Terminated
    );
    assert_eq!(wait_completion(&mut client, "root").await.orchestration_status(), S::Terminated);
}

fn micros(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1_000
}

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

#[tokio::test]
async fn timestamps_keep_microseconds_so_a_start_is_never_earlier_than_the_call() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    let mut sub_millisecond = 0;
    for n in 0..20 {
        let id = format!("clock-{n}");
        let before = now_micros();
        start(&mut client, &id, "Clock", None).await;
        let state = get(&mut client, &id).await.unwrap();
        let created = micros(state.created_timestamp.as_ref().unwrap());
        assert!(created >= before, "created {created} before the call was made at {before}");
        let (token, _) = worker.orchestration().await;
        complete_orchestrator(&mut client, &token, &id, vec![complete(1, S::Completed, "1")])
            .await
            .unwrap();
        let done = wait_completion(&mut client, &id).await;
        let updated = micros(done.last_updated_timestamp.as_ref().unwrap());
        let completed = micros(done.completed_timestamp.as_ref().unwrap());
        assert!(completed >= created && updated >= created);
        let events = history(&mut client, &id).await;
        for t in [created, updated, completed]
            .into_iter()
            .chain(events.iter().map(|e| micros(e.timestamp.as_ref().unwrap())))
        {
            if t % 1_000 != 0 {
                sub_millisecond += 1;
            }
        }
    }
    // Whole milliseconds everywhere would mean the microseconds were cut (by chance: 10^-300).
    assert!(sub_millisecond > 0, "every timestamp was a whole millisecond");
}

fn policy(statuses: &[S], action: CreateOrchestrationAction) -> OrchestrationIdReusePolicy {
    OrchestrationIdReusePolicy {
        replaceable_status: statuses.iter().map(|s| *s as i32).collect(),
        action: action as i32,
    }
}

async fn start_with(client: &mut Client, id: &str, input: &str, p: Option<OrchestrationIdReusePolicy>) -> Result<String, tonic::Status> {
    let request = CreateInstanceRequest {
        instance_id: id.into(),
        name: "Reused".into(),
        input: Some(input.into()),
        orchestration_id_reuse_policy: p,
        ..Default::default()
    };
    client.start_instance(request).await.map(|r| r.into_inner().instance_id)
}

#[tokio::test]
async fn old_reuse_policy_ignore_keeps_the_running_instance() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start_with(&mut client, "dup", "\"first\"", None).await.unwrap();
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(&mut client, &token, "dup", vec![create_timer(1, now_ms() + 3_600_000)])
        .await
        .unwrap();
    let before = get(&mut client, "dup").await.unwrap();
    assert_eq!(before.orchestration_status(), S::Running);

    let ignore = policy(&[S::Running, S::Completed, S::Pending], CreateOrchestrationAction::Ignore);
    let id = start_with(&mut client, "dup", "\"second\"", Some(ignore))
        .await
        .expect("IGNORE answers OK");
    assert_eq!(id, "dup");
    let after = get(&mut client, "dup").await.unwrap();
    assert_eq!(after.orchestration_status(), S::Running, "not replaced");
    assert_eq!(after.input.as_deref(), Some("\"first\""));
    assert_eq!(after.created_timestamp, before.created_timestamp);

    // A status the policy does not list is a conflict.
    let only_failed = policy(&[S::Failed], CreateOrchestrationAction::Ignore);
    expect_code(
        start_with(&mut client, "dup", "\"third\"", Some(only_failed)).await,
        Code::AlreadyExists,
    );
    // A fresh id is simply started.
    let fresh = policy(&[S::Running], CreateOrchestrationAction::Ignore);
    start_with(&mut client, "fresh", "\"x\"", Some(fresh)).await.unwrap();
    assert_eq!(status_of(&mut client, "fresh").await, S::Pending);
}

#[tokio::test]
async fn old_reuse_policy_terminate_replaces_the_running_instance() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start_with(&mut client, "dup", "\"first\"", None).await.unwrap();
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(&mut client, &token, "dup", vec![create_timer(1, now_ms() + 3_600_000)])
        .await
        .unwrap();

    let terminate = policy(&[S::Running, S::Completed, S::Pending], CreateOrchestrationAction::Terminate);
    start_with(&mut client, "dup", "\"second\"", Some(terminate)).await.unwrap();
    let (token, r) = worker.orchestration().await;
    let started = r.new_events.iter().find_map(|e| match &e.event_type {
        Some(EventType::ExecutionStarted(s)) => Some(s.clone()),
        _ => None,
    });
    assert_eq!(started.and_then(|s| s.input).as_deref(), Some("\"second\""));
    complete_orchestrator(&mut client, &token, "dup", vec![complete(1, S::Completed, "\"two\"")])
        .await
        .unwrap();
    assert_eq!(wait_completion(&mut client, "dup").await.output.as_deref(), Some("\"two\""));
    // Not listed: a conflict, as with ERROR.
    let only_failed = policy(&[S::Failed], CreateOrchestrationAction::Terminate);
    expect_code(
        start_with(&mut client, "dup", "\"third\"", Some(only_failed)).await,
        Code::AlreadyExists,
    );
}

#[tokio::test]
async fn a_policy_replacing_live_instances_without_terminated_is_invalid() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    for live in [S::Running, S::Pending, S::Suspended] {
        let contradictory = policy(&[S::Completed, S::Failed, live], CreateOrchestrationAction::Error);
        let status = expect_code(
            start_with(&mut client, "any", "1", Some(contradictory)).await,
            Code::InvalidArgument,
        );
        assert!(status.message().contains("TERMINATED"), "{}", status.message());
    }
    assert!(get(&mut client, "any").await.is_none(), "nothing was created");
    // With TERMINATED included the same policy is fine, and replaces the live instance.
    start_with(&mut client, "any", "1", None).await.unwrap();
    let full = policy(
        &[S::Completed, S::Running, S::Pending, S::Terminated],
        CreateOrchestrationAction::Error,
    );
    start_with(&mut client, "any", "2", Some(full)).await.unwrap();
    assert_eq!(get(&mut client, "any").await.unwrap().input.as_deref(), Some("2"));
}

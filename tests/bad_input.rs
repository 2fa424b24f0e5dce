//! Malformed or impossible requests get the precise gRPC status, and change nothing.

mod common;

use common::*;
use outrigger::proto::orchestrator_action::OrchestratorActionType as ActionType;
use outrigger::proto::purge_instances_request::Request as PurgeTarget;
use outrigger::proto::*;
use prost_types::Timestamp;
use tonic::Code;

#[tokio::test]
async fn empty_instance_id_is_invalid_argument() {
    let sidecar = Sidecar::start().await;
    let mut c = sidecar.client.clone();
    let get = GetInstanceRequest::default();
    expect_code(c.get_instance(get.clone()).await, Code::InvalidArgument);
    expect_code(c.wait_for_instance_start(get.clone()).await, Code::InvalidArgument);
    expect_code(c.wait_for_instance_completion(get).await, Code::InvalidArgument);
    expect_code(
        c.raise_event(RaiseEventRequest {
            name: "e".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    expect_code(c.terminate_instance(TerminateRequest::default()).await, Code::InvalidArgument);
    expect_code(c.suspend_instance(SuspendRequest::default()).await, Code::InvalidArgument);
    expect_code(c.resume_instance(ResumeRequest::default()).await, Code::InvalidArgument);
    expect_code(
        c.purge_instances(PurgeInstancesRequest {
            request: Some(PurgeTarget::InstanceId(String::new())),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    expect_code(c.rewind_instance(RewindInstanceRequest::default()).await, Code::InvalidArgument);
    expect_code(c.restart_instance(RestartInstanceRequest::default()).await, Code::InvalidArgument);
    expect_code(
        c.stream_instance_history(StreamInstanceHistoryRequest::default()).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn start_without_a_name_is_invalid_argument() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let request = CreateInstanceRequest {
        instance_id: "nameless".into(),
        ..Default::default()
    };
    expect_code(client.start_instance(request).await, Code::InvalidArgument);
    assert!(get(&mut client, "nameless").await.is_none(), "nothing was created");
}

#[tokio::test]
async fn malformed_timestamps_are_invalid_argument() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let bad = [
        Timestamp {
            seconds: now_ms() / 1000,
            nanos: -1,
        },
        Timestamp {
            seconds: now_ms() / 1000,
            nanos: 1_000_000_000,
        },
    ];
    for timestamp in bad {
        let start = CreateInstanceRequest {
            instance_id: "bad-time".into(),
            name: "T".into(),
            scheduled_start_timestamp: Some(timestamp),
            ..Default::default()
        };
        expect_code(client.start_instance(start).await, Code::InvalidArgument);

        let query = QueryInstancesRequest {
            query: Some(InstanceQuery {
                created_time_from: Some(timestamp),
                ..Default::default()
            }),
        };
        expect_code(client.query_instances(query).await, Code::InvalidArgument);

        let list = ListInstanceIdsRequest {
            completed_time_to: Some(timestamp),
            ..Default::default()
        };
        expect_code(client.list_instance_ids(list).await, Code::InvalidArgument);

        let filter = PurgeInstanceFilter {
            created_time_from: Some(timestamp),
            ..Default::default()
        };
        let purge = PurgeInstancesRequest {
            request: Some(PurgeTarget::PurgeInstanceFilter(filter)),
            ..Default::default()
        };
        expect_code(client.purge_instances(purge).await, Code::InvalidArgument);
    }
    assert!(get(&mut client, "bad-time").await.is_none(), "nothing was created");
}

#[tokio::test]
async fn unknown_instance_is_not_found() {
    let sidecar = Sidecar::start().await;
    let mut c = sidecar.client.clone();
    let id = || "no-such-instance".to_string();
    expect_code(
        c.raise_event(RaiseEventRequest {
            instance_id: id(),
            name: "e".into(),
            input: None,
        })
        .await,
        Code::NotFound,
    );
    expect_code(
        c.terminate_instance(TerminateRequest {
            instance_id: id(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    expect_code(
        c.suspend_instance(SuspendRequest {
            instance_id: id(),
            reason: None,
        })
        .await,
        Code::NotFound,
    );
    expect_code(
        c.resume_instance(ResumeRequest {
            instance_id: id(),
            reason: None,
        })
        .await,
        Code::NotFound,
    );
    expect_code(
        c.rewind_instance(RewindInstanceRequest {
            instance_id: id(),
            reason: None,
        })
        .await,
        Code::NotFound,
    );
    expect_code(
        c.restart_instance(RestartInstanceRequest {
            instance_id: id(),
            restart_with_new_instance_id: false,
        })
        .await,
        Code::NotFound,
    );
    expect_code(
        c.restart_instance(RestartInstanceRequest {
            instance_id: id(),
            restart_with_new_instance_id: true,
        })
        .await,
        Code::NotFound,
    );
    expect_code(
        c.stream_instance_history(StreamInstanceHistoryRequest {
            instance_id: id(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    assert!(get(&mut c, &id()).await.is_none(), "nothing was created");
}

#[tokio::test]
async fn starting_a_live_instance_id_again_is_already_exists() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "once", "Once", Some("1")).await;
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(&mut client, &token, "once", vec![schedule_task(0, "Work", "1")])
        .await
        .expect("step 1");
    assert_eq!(status_of(&mut client, "once").await, OrchestrationStatus::Running);
    let before = get(&mut client, "once").await;

    let again = CreateInstanceRequest {
        instance_id: "once".into(),
        name: "Once".into(),
        input: Some("2".into()),
        ..Default::default()
    };
    expect_code(client.start_instance(again).await, Code::AlreadyExists);
    assert_eq!(get(&mut client, "once").await, before, "the running instance is untouched");
}

#[tokio::test]
async fn completion_with_an_untyped_action_is_refused_and_changes_nothing() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "untyped", "Untyped", None).await;
    let (token, _) = worker.orchestration().await;

    let untyped = OrchestratorAction {
        id: 0,
        orchestrator_action_type: None,
    };
    let result = complete_orchestrator(&mut client, &token, "untyped", vec![schedule_task(1, "Fine", "1"), untyped]).await;
    expect_code(result, Code::InvalidArgument);
    assert!(history(&mut client, "untyped").await.is_empty(), "a refused answer commits nothing");
    assert_eq!(status_of(&mut client, "untyped").await, OrchestrationStatus::Pending);

    // The work item is still held: a valid answer with the same token is accepted.
    complete_orchestrator(
        &mut client,
        &token,
        "untyped",
        vec![complete(0, OrchestrationStatus::Completed, "ok")],
    )
    .await
    .expect("a valid answer after a refused one");
    assert_eq!(wait_completion(&mut client, "untyped").await.output.as_deref(), Some("ok"));
}

#[tokio::test]
async fn create_timer_without_fire_at_is_invalid_argument() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "no-fire-at", "Timer", None).await;
    let (token, _) = worker.orchestration().await;

    let timer = action(0, ActionType::CreateTimer(CreateTimerAction { fire_at: None }));
    expect_code(
        complete_orchestrator(&mut client, &token, "no-fire-at", vec![timer]).await,
        Code::InvalidArgument,
    );
    let malformed = action(
        0,
        ActionType::CreateTimer(CreateTimerAction {
            fire_at: Some(Timestamp { seconds: 1, nanos: -5 }),
        }),
    );
    expect_code(
        complete_orchestrator(&mut client, &token, "no-fire-at", vec![malformed]).await,
        Code::InvalidArgument,
    );
    assert!(history(&mut client, "no-fire-at").await.is_empty());
}

#[tokio::test]
async fn negative_page_sizes_are_invalid_argument() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let query = QueryInstancesRequest {
        query: Some(InstanceQuery {
            max_instance_count: -1,
            ..Default::default()
        }),
    };
    expect_code(client.query_instances(query).await, Code::InvalidArgument);
    let list = ListInstanceIdsRequest {
        page_size: -1,
        ..Default::default()
    };
    expect_code(client.list_instance_ids(list).await, Code::InvalidArgument);
}

#[tokio::test]
async fn malformed_continuation_tokens_are_invalid_argument() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    for token in ["garbage", "12x|id", "|"] {
        let query = QueryInstancesRequest {
            query: Some(InstanceQuery {
                continuation_token: Some(token.into()),
                ..Default::default()
            }),
        };
        expect_code(client.query_instances(query).await, Code::InvalidArgument);
        let list = ListInstanceIdsRequest {
            last_instance_key: Some(token.into()),
            ..Default::default()
        };
        expect_code(client.list_instance_ids(list).await, Code::InvalidArgument);
    }
}

#[tokio::test]
async fn purging_a_running_instance_is_failed_precondition() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "busy", "Busy", None).await;
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(&mut client, &token, "busy", vec![schedule_task(0, "Work", "1")])
        .await
        .expect("step 1");
    assert_eq!(status_of(&mut client, "busy").await, OrchestrationStatus::Running);

    let purge = PurgeInstancesRequest {
        request: Some(PurgeTarget::InstanceId("busy".into())),
        ..Default::default()
    };
    expect_code(client.purge_instances(purge).await, Code::FailedPrecondition);
    assert_eq!(status_of(&mut client, "busy").await, OrchestrationStatus::Running, "still there");
    assert!(!history(&mut client, "busy").await.is_empty());
}

#[tokio::test]
async fn rewinding_an_instance_that_did_not_fail_is_failed_precondition() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    run_to_completion(&mut client, &mut worker, "fine", "1").await;
    start_later(&mut client, "waiting").await;

    for id in ["fine", "waiting"] {
        let before = get(&mut client, id).await;
        expect_code(
            client
                .rewind_instance(RewindInstanceRequest {
                    instance_id: id.into(),
                    reason: None,
                })
                .await,
            Code::FailedPrecondition,
        );
        assert_eq!(get(&mut client, id).await, before, "a refused rewind changes nothing");
    }
}

#[tokio::test]
async fn messages_over_the_size_limit_are_resource_exhausted() {
    let sidecar = Sidecar::with(|o| o.max_message_bytes = 64 * 1024).await;
    let mut client = sidecar.client.clone();
    let huge = "x".repeat(100 * 1024);
    let request = CreateInstanceRequest {
        instance_id: "huge".into(),
        name: "Huge".into(),
        input: Some(huge),
        ..Default::default()
    };
    expect_code(client.start_instance(request).await, Code::ResourceExhausted);
    assert!(get(&mut client, "huge").await.is_none(), "nothing was created");

    // The server keeps serving, on the same connection.
    client.hello(()).await.expect("Hello after an oversized message");
    start(&mut client, "small", "Small", Some("\"fits\"")).await;
    assert_eq!(status_of(&mut client, "small").await, OrchestrationStatus::Pending);
}

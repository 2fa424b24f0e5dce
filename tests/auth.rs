//! API keys on a real socket: every RPC of TaskHubSidecarService with no key, a wrong key and
//! each role's key, the destructive admin calls with and without --allow-destructive-rpcs, and
//! the health service open to probes.

mod common;

use std::time::Duration;

use common::*;
use outrigger::auth::{Keys, Role};
use outrigger::proto::purge_instances_request::Request as PurgeTarget;
use outrigger::proto::*;
use tonic::{Code, Request, Status};

const READ: &str = "r-0123456789abcdef";
const WRITE: &str = "w-0123456789abcdef";
const FULL: &str = "f-0123456789abcdef";

fn keys(destructive_for_writers: bool) -> Keys {
    Keys::new(
        vec![(READ.into(), Role::Read), (WRITE.into(), Role::Write), (FULL.into(), Role::Full)],
        destructive_for_writers,
    )
}

async fn keyed(destructive_for_writers: bool) -> Sidecar {
    Sidecar::with(|o| o.keys = keys(destructive_for_writers)).await
}

fn req<T>(message: T, key: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(key) = key {
        r.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    // Waits on unknown instances end quickly; what matters here is whether the call got in.
    r.set_timeout(Duration::from_millis(300));
    r
}

/// Every RPC, with a harmless request (unknown ids, empty filters).
const RPCS: [&str; 29] = [
    "Hello",
    "StartInstance",
    "GetInstance",
    "RewindInstance",
    "RestartInstance",
    "WaitForInstanceStart",
    "WaitForInstanceCompletion",
    "RaiseEvent",
    "TerminateInstance",
    "SuspendInstance",
    "ResumeInstance",
    "QueryInstances",
    "ListInstanceIds",
    "PurgeInstances",
    "GetWorkItems",
    "CompleteActivityTask",
    "CompleteOrchestratorTask",
    "CompleteEntityTask",
    "StreamInstanceHistory",
    "CreateTaskHub",
    "DeleteTaskHub",
    "SignalEntity",
    "GetEntity",
    "QueryEntities",
    "CleanEntityStorage",
    "AbandonTaskActivityWorkItem",
    "AbandonTaskOrchestratorWorkItem",
    "AbandonTaskEntityWorkItem",
    "SkipGracefulOrchestrationTerminations",
];

/// The role each RPC needs, as documented in the README.
fn expected(method: &str) -> Role {
    match method {
        "Hello"
        | "GetInstance"
        | "WaitForInstanceStart"
        | "WaitForInstanceCompletion"
        | "QueryInstances"
        | "ListInstanceIds"
        | "StreamInstanceHistory"
        | "GetEntity"
        | "QueryEntities" => Role::Read,
        "DeleteTaskHub" => Role::Full,
        _ => Role::Write,
    }
}

async fn call(client: &mut Client, method: &str, key: Option<&str>) -> Result<(), Status> {
    let id = || "auth-unknown".to_string();
    let c = client;
    match method {
        "Hello" => c.hello(req((), key)).await.map(drop),
        "StartInstance" => {
            let r = CreateInstanceRequest {
                instance_id: format!("auth-{}", uuid::Uuid::new_v4().simple()),
                name: "Auth".into(),
                ..Default::default()
            };
            c.start_instance(req(r, key)).await.map(drop)
        }
        "GetInstance" => c
            .get_instance(req(
                GetInstanceRequest {
                    instance_id: id(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "RewindInstance" => c
            .rewind_instance(req(
                RewindInstanceRequest {
                    instance_id: id(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "RestartInstance" => c
            .restart_instance(req(
                RestartInstanceRequest {
                    instance_id: id(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "WaitForInstanceStart" => c
            .wait_for_instance_start(req(
                GetInstanceRequest {
                    instance_id: id(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "WaitForInstanceCompletion" => c
            .wait_for_instance_completion(req(
                GetInstanceRequest {
                    instance_id: id(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "RaiseEvent" => c
            .raise_event(req(
                RaiseEventRequest {
                    instance_id: id(),
                    name: "e".into(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "TerminateInstance" => c
            .terminate_instance(req(
                TerminateRequest {
                    instance_id: id(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "SuspendInstance" => c
            .suspend_instance(req(
                SuspendRequest {
                    instance_id: id(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "ResumeInstance" => c
            .resume_instance(req(
                ResumeRequest {
                    instance_id: id(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "QueryInstances" => c.query_instances(req(QueryInstancesRequest::default(), key)).await.map(drop),
        "ListInstanceIds" => c.list_instance_ids(req(ListInstanceIdsRequest::default(), key)).await.map(drop),
        "PurgeInstances" => c.purge_instances(req(purge(PurgeTarget::InstanceId(id())), key)).await.map(drop),
        "GetWorkItems" => c.get_work_items(req(GetWorkItemsRequest::default(), key)).await.map(drop),
        "CompleteActivityTask" => c
            .complete_activity_task(req(
                ActivityResponse {
                    completion_token: "x".into(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "CompleteOrchestratorTask" => c
            .complete_orchestrator_task(req(
                OrchestratorResponse {
                    completion_token: "x".into(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "CompleteEntityTask" => c.complete_entity_task(req(EntityBatchResult::default(), key)).await.map(drop),
        "StreamInstanceHistory" => c
            .stream_instance_history(req(
                StreamInstanceHistoryRequest {
                    instance_id: id(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "CreateTaskHub" => c
            .create_task_hub(req(CreateTaskHubRequest { recreate_if_exists: false }, key))
            .await
            .map(drop),
        "DeleteTaskHub" => c.delete_task_hub(req(DeleteTaskHubRequest {}, key)).await.map(drop),
        "SignalEntity" => c
            .signal_entity(req(
                SignalEntityRequest {
                    instance_id: "@e@k".into(),
                    name: "op".into(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "GetEntity" => c
            .get_entity(req(
                GetEntityRequest {
                    instance_id: "@e@k".into(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "QueryEntities" => c.query_entities(req(QueryEntitiesRequest::default(), key)).await.map(drop),
        "CleanEntityStorage" => c
            .clean_entity_storage(req(CleanEntityStorageRequest::default(), key))
            .await
            .map(drop),
        "AbandonTaskActivityWorkItem" => c
            .abandon_task_activity_work_item(req(
                AbandonActivityTaskRequest {
                    completion_token: "x".into(),
                },
                key,
            ))
            .await
            .map(drop),
        "AbandonTaskOrchestratorWorkItem" => c
            .abandon_task_orchestrator_work_item(req(
                AbandonOrchestrationTaskRequest {
                    completion_token: "x".into(),
                },
                key,
            ))
            .await
            .map(drop),
        "AbandonTaskEntityWorkItem" => c
            .abandon_task_entity_work_item(req(
                AbandonEntityTaskRequest {
                    completion_token: "x".into(),
                },
                key,
            ))
            .await
            .map(drop),
        "SkipGracefulOrchestrationTerminations" => c
            .skip_graceful_orchestration_terminations(req(SkipGracefulOrchestrationTerminationsRequest::default(), key))
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    }
}

fn purge(target: PurgeTarget) -> PurgeInstancesRequest {
    PurgeInstancesRequest {
        request: Some(target),
        ..Default::default()
    }
}

fn let_in(outcome: &Result<(), Status>) -> bool {
    !matches!(outcome, Err(s) if s.code() == Code::Unauthenticated || s.code() == Code::PermissionDenied)
}

#[test]
fn the_list_names_every_rpc_of_the_proto() {
    let proto = include_str!("../proto/orchestrator_service.proto");
    let mut declared: Vec<&str> = proto
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|l| l.split('(').next().unwrap().trim())
        .collect();
    let mut listed = RPCS.to_vec();
    declared.sort();
    listed.sort();
    assert_eq!(declared, listed);
}

#[tokio::test]
async fn every_rpc_checks_the_key_and_its_role() {
    let sidecar = keyed(false).await;
    let mut client = sidecar.new_client().await;
    for method in RPCS {
        let needed = expected(method);
        for (key, role) in [(READ, Role::Read), (WRITE, Role::Write), (FULL, Role::Full)] {
            let outcome = call(&mut client, method, Some(key)).await;
            if role >= needed {
                assert!(let_in(&outcome), "{method} with a {role} key was refused: {outcome:?}");
            } else {
                let code = outcome.as_ref().map_err(|s| s.code()).err();
                assert_eq!(code, Some(Code::PermissionDenied), "{method} with a {role} key: {outcome:?}");
            }
        }
        for key in [None, Some("not-a-configured-key-000")] {
            let outcome = call(&mut client, method, key).await;
            let code = outcome.as_ref().map_err(|s| s.code()).err();
            assert_eq!(code, Some(Code::Unauthenticated), "{method} with key {key:?}: {outcome:?}");
        }
    }
}

#[tokio::test]
async fn destructive_calls_need_full_or_the_flag() {
    let filter = || purge(PurgeTarget::PurgeInstanceFilter(PurgeInstanceFilter::default()));
    for flag in [false, true] {
        let sidecar = keyed(flag).await;
        let mut c = sidecar.new_client().await;
        for key in [READ, WRITE, FULL] {
            let allowed = key == FULL || (flag && key == WRITE);
            let outcomes = [
                c.create_task_hub(req(CreateTaskHubRequest { recreate_if_exists: true }, Some(key)))
                    .await
                    .map(drop),
                c.purge_instances(req(filter(), Some(key))).await.map(drop),
                c.delete_task_hub(req(DeleteTaskHubRequest {}, Some(key))).await.map(drop),
            ];
            for (what, outcome) in ["CreateTaskHub recreate", "purge by filter", "DeleteTaskHub"].iter().zip(&outcomes) {
                if allowed {
                    assert!(outcome.is_ok(), "{what} with {key} (flag {flag}): {outcome:?}");
                } else {
                    let code = outcome.as_ref().map_err(|s| s.code()).err();
                    assert_eq!(code, Some(Code::PermissionDenied), "{what} with {key} (flag {flag})");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_write_key_runs_an_orchestration_and_a_read_key_only_watches() {
    let sidecar = keyed(false).await;
    let mut client = sidecar.new_client().await;
    let start = CreateInstanceRequest {
        instance_id: "keyed".into(),
        name: "Keyed".into(),
        ..Default::default()
    };
    client.start_instance(req(start, Some(WRITE))).await.expect("start with write key");
    let mut stream = client
        .get_work_items(req(GetWorkItemsRequest::default(), Some(WRITE)))
        .await
        .expect("worker with write key")
        .into_inner();
    let item = guarded("the work item", stream.message()).await.unwrap().unwrap();
    let answer = OrchestratorResponse {
        instance_id: "keyed".into(),
        completion_token: item.completion_token,
        actions: vec![complete(0, OrchestrationStatus::Completed, "\"done\"")],
        ..Default::default()
    };
    let refused = client.complete_orchestrator_task(req(answer.clone(), Some(READ))).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    client
        .complete_orchestrator_task(req(answer, Some(WRITE)))
        .await
        .expect("completion");
    let mut wait = Request::new(GetInstanceRequest {
        instance_id: "keyed".into(),
        get_inputs_and_outputs: true,
    });
    wait.metadata_mut()
        .insert("authorization", format!("Bearer {READ}").parse().unwrap());
    let state = guarded("completion", client.wait_for_instance_completion(wait))
        .await
        .expect("read key waits");
    let state = state.into_inner().orchestration_state.unwrap();
    assert_eq!(state.output.as_deref(), Some("\"done\""));
}

#[tokio::test]
async fn dapr_style_token_header_is_accepted() {
    let sidecar = keyed(false).await;
    let mut client = sidecar.new_client().await;
    let mut r = Request::new(QueryInstancesRequest::default());
    r.metadata_mut().insert("dapr-api-token", READ.parse().unwrap());
    client.query_instances(r).await.expect("dapr-api-token");
}

#[tokio::test]
async fn health_is_open_to_probes_without_a_key() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let sidecar = keyed(false).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", sidecar.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "readiness", "liveness", "TaskHubSidecarService"] {
        let answer = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap_or_else(|e| panic!("health {service:?}: {e}"));
        assert_eq!(answer.into_inner().status(), ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn without_keys_everything_is_allowed_as_before() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.new_client().await;
    for method in RPCS {
        let outcome = call(&mut client, method, None).await;
        assert!(let_in(&outcome), "{method} without keys configured: {outcome:?}");
    }
}

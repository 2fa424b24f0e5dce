//! Client-facing RPCs: Hello, querying, listing and purging instances (entities: tests/entities.rs).

mod common;

use std::collections::BTreeSet;

use common::*;
use outrigger::proto::purge_instances_request::Request as PurgeTarget;
use outrigger::proto::*;
use tonic::Code;

#[tokio::test]
async fn hello_answers() {
    let sidecar = Sidecar::start().await;
    sidecar.client.clone().hello(()).await.expect("Hello");
}

fn query(prefix: &str, page: i32, token: Option<String>) -> QueryInstancesRequest {
    QueryInstancesRequest {
        query: Some(InstanceQuery {
            instance_id_prefix: Some(prefix.into()),
            max_instance_count: page,
            continuation_token: token,
            ..Default::default()
        }),
    }
}

fn ids(states: &[OrchestrationState]) -> Vec<String> {
    states.iter().map(|s| s.instance_id.clone()).collect()
}

#[tokio::test]
async fn query_instances_pages_through_a_prefix() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    for i in 0..5 {
        start(&mut client, &format!("page-{i}"), "Paged", Some(&i.to_string())).await;
    }
    start(&mut client, "other-1", "Other", None).await;
    start(&mut client, "pag", "Other", None).await; // shorter than the prefix

    let mut pages = vec![];
    let mut token = None;
    loop {
        let response = client
            .query_instances(query("page-", 2, token.clone()))
            .await
            .expect("QueryInstances")
            .into_inner();
        pages.push(ids(&response.orchestration_state));
        assert!(pages.len() <= 3, "paging does not end: {pages:?}");
        match response.continuation_token {
            Some(next) => {
                assert!(!next.is_empty(), "a continuation token, when set, is not empty");
                token = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(
        pages,
        [vec!["page-0", "page-1"], vec!["page-2", "page-3"], vec!["page-4"]],
        "oldest first, two at a time"
    );

    // Payloads only when asked for.
    let response = client
        .query_instances(query("page-0", 0, None))
        .await
        .expect("QueryInstances")
        .into_inner();
    assert_eq!(ids(&response.orchestration_state), ["page-0"]);
    assert_eq!(response.orchestration_state[0].input, None);
    assert_eq!(response.orchestration_state[0].name, "Paged");
    assert_eq!(response.orchestration_state[0].orchestration_status(), OrchestrationStatus::Pending);
    let mut with_payloads = query("page-0", 0, None);
    with_payloads.query.as_mut().unwrap().fetch_inputs_and_outputs = true;
    let response = client.query_instances(with_payloads).await.expect("QueryInstances").into_inner();
    assert_eq!(response.orchestration_state[0].input.as_deref(), Some("0"));
    assert_eq!(response.continuation_token, None);
}

#[tokio::test]
async fn query_instances_filters_by_runtime_status() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    run_to_completion(&mut client, &mut worker, "st-done-1", "1").await;
    run_to_completion(&mut client, &mut worker, "st-done-2", "2").await;
    start_later(&mut client, "st-pending").await;

    let by_status = |statuses: Vec<OrchestrationStatus>| QueryInstancesRequest {
        query: Some(InstanceQuery {
            runtime_status: statuses.into_iter().map(|s| s as i32).collect(),
            instance_id_prefix: Some("st-".into()),
            ..Default::default()
        }),
    };
    let mut found = async |statuses| {
        ids(&client
            .query_instances(by_status(statuses))
            .await
            .expect("QueryInstances")
            .into_inner()
            .orchestration_state)
    };
    assert_eq!(found(vec![OrchestrationStatus::Completed]).await, ["st-done-1", "st-done-2"]);
    assert_eq!(found(vec![OrchestrationStatus::Pending]).await, ["st-pending"]);
    assert_eq!(found(vec![OrchestrationStatus::Running]).await, Vec::<String>::new());
    assert_eq!(
        found(vec![OrchestrationStatus::Completed, OrchestrationStatus::Pending]).await,
        ["st-done-1", "st-done-2", "st-pending"]
    );
    assert_eq!(
        found(vec![]).await,
        ["st-done-1", "st-done-2", "st-pending"],
        "no status filter means all"
    );
}

#[tokio::test]
async fn list_instance_ids_pages_over_finished_instances() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    for id in ["done-a", "done-b", "done-c"] {
        run_to_completion(&mut client, &mut worker, id, "ok").await;
    }
    start_later(&mut client, "not-done").await;

    let mut pages = vec![];
    let mut key = None;
    loop {
        let request = ListInstanceIdsRequest {
            page_size: 2,
            last_instance_key: key.clone(),
            ..Default::default()
        };
        let response = client.list_instance_ids(request).await.expect("ListInstanceIds").into_inner();
        pages.push(response.instance_ids);
        assert!(pages.len() <= 2, "paging does not end: {pages:?}");
        match response.last_instance_key {
            Some(next) => key = Some(next),
            None => break,
        }
    }
    assert_eq!(
        pages,
        [vec!["done-a", "done-b"], vec!["done-c"]],
        "finished instances only, in completion order"
    );

    let request = ListInstanceIdsRequest {
        runtime_status: vec![OrchestrationStatus::Failed as i32],
        ..Default::default()
    };
    let response = client.list_instance_ids(request).await.expect("ListInstanceIds").into_inner();
    assert!(response.instance_ids.is_empty(), "no instance failed: {:?}", response.instance_ids);
}

fn purge_request(target: PurgeTarget, recursive: bool) -> PurgeInstancesRequest {
    PurgeInstancesRequest {
        request: Some(target),
        recursive,
        ..Default::default()
    }
}

#[tokio::test]
async fn purge_by_instance_id() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    run_to_completion(&mut client, &mut worker, "purge-me", "1").await;
    run_to_completion(&mut client, &mut worker, "keep-me", "2").await;

    let response = client
        .purge_instances(purge_request(PurgeTarget::InstanceId("purge-me".into()), false))
        .await
        .expect("PurgeInstances")
        .into_inner();
    assert_eq!(response.deleted_instance_count, 1);
    assert_eq!(response.is_complete, Some(true));
    assert!(get(&mut client, "purge-me").await.is_none(), "the purged instance is gone");
    assert!(
        history(&mut client, "keep-me").await.len() > 1,
        "other instances keep their history"
    );
    expect_code(
        client
            .stream_instance_history(StreamInstanceHistoryRequest {
                instance_id: "purge-me".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );

    // Purging again finds nothing.
    let response = client
        .purge_instances(purge_request(PurgeTarget::InstanceId("purge-me".into()), false))
        .await
        .expect("PurgeInstances")
        .into_inner();
    assert_eq!(response.deleted_instance_count, 0);
}

#[tokio::test]
async fn purge_recursive_removes_sub_orchestrations() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;

    // parent -> child, both run to completion.
    start(&mut client, "parent", "Parent", None).await;
    let (token, _) = worker.orchestration().await;
    let create_child = action(
        0,
        orchestrator_action::OrchestratorActionType::CreateSubOrchestration(CreateSubOrchestrationAction {
            instance_id: "parent-child".into(),
            name: "Child".into(),
            ..Default::default()
        }),
    );
    complete_orchestrator(&mut client, &token, "parent", vec![create_child])
        .await
        .expect("parent step 1");
    let (child_token, child) = worker.orchestration().await;
    assert_eq!(child.instance_id, "parent-child");
    complete_orchestrator(
        &mut client,
        &child_token,
        "parent-child",
        vec![complete(0, OrchestrationStatus::Completed, "\"c\"")],
    )
    .await
    .expect("child completes");
    let (token, step2) = worker.orchestration().await;
    assert_eq!(step2.instance_id, "parent");
    assert_eq!(
        kinds(&step2.new_events),
        ["OrchestratorStarted", "SubOrchestrationInstanceCompleted"]
    );
    complete_orchestrator(
        &mut client,
        &token,
        "parent",
        vec![complete(1, OrchestrationStatus::Completed, "\"p\"")],
    )
    .await
    .expect("parent completes");
    wait_completion(&mut client, "parent").await;
    assert_eq!(
        get(&mut client, "parent-child").await.expect("child").parent_instance_id.as_deref(),
        Some("parent")
    );

    let response = client
        .purge_instances(purge_request(PurgeTarget::InstanceId("parent".into()), true))
        .await
        .expect("PurgeInstances")
        .into_inner();
    assert_eq!(response.deleted_instance_count, 2);
    assert!(get(&mut client, "parent").await.is_none());
    assert!(
        get(&mut client, "parent-child").await.is_none(),
        "recursive purge removes the child"
    );
}

#[tokio::test]
async fn purge_by_filter_and_by_batch_removes_only_finished_instances() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    for id in ["f-1", "f-2", "f-3"] {
        run_to_completion(&mut client, &mut worker, id, "ok").await;
    }
    start_later(&mut client, "f-pending").await;

    // A batch naming a finished, a pending and an unknown instance deletes only the first.
    let batch = InstanceBatch {
        instance_ids: vec!["f-1".into(), "f-pending".into(), "f-unknown".into()],
    };
    let response = client
        .purge_instances(purge_request(PurgeTarget::InstanceBatch(batch), false))
        .await
        .expect("purge batch")
        .into_inner();
    assert_eq!(response.deleted_instance_count, 1);
    assert!(get(&mut client, "f-1").await.is_none());

    // A filter naming COMPLETED and PENDING still leaves the pending instance alone.
    let filter = PurgeInstanceFilter {
        created_time_from: Some(ts(now_ms() - 3_600_000)),
        runtime_status: vec![OrchestrationStatus::Completed as i32, OrchestrationStatus::Pending as i32],
        ..Default::default()
    };
    let response = client
        .purge_instances(purge_request(PurgeTarget::PurgeInstanceFilter(filter), false))
        .await
        .expect("purge filter")
        .into_inner();
    assert_eq!(response.deleted_instance_count, 2);
    assert_eq!(response.is_complete, Some(true));
    let left = client
        .query_instances(QueryInstancesRequest::default())
        .await
        .expect("QueryInstances")
        .into_inner();
    assert_eq!(
        ids(&left.orchestration_state).into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from(["f-pending".to_string()])
    );
}

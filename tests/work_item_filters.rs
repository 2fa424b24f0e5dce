//! Work-item filters on the raw protocol, with the filters shaped as the SDKs send them: a
//! worker that sends filters gets only the names (and versions) it lists; work nobody takes
//! waits, unleased, until a worker that takes it connects; a worker without filters gets all.

mod common;

use common::*;
use outrigger::proto::*;

use OrchestrationStatus as S;

fn filters(orchestrations: &[(&str, &[&str])], activities: &[(&str, &[&str])]) -> GetWorkItemsRequest {
    let versions = |vs: &[&str]| vs.iter().map(|v| v.to_string()).collect();
    GetWorkItemsRequest {
        work_item_filters: Some(WorkItemFilters {
            orchestrations: orchestrations
                .iter()
                .map(|(n, vs)| OrchestrationFilter {
                    name: n.to_string(),
                    versions: versions(vs),
                })
                .collect(),
            activities: activities
                .iter()
                .map(|(n, vs)| ActivityFilter {
                    name: n.to_string(),
                    versions: versions(vs),
                })
                .collect(),
            entities: vec![],
        }),
        ..Default::default()
    }
}

async fn start_versioned(client: &mut Client, id: &str, name: &str, version: Option<&str>) {
    let request = CreateInstanceRequest {
        instance_id: id.into(),
        name: name.into(),
        version: version.map(String::from),
        ..Default::default()
    };
    client.start_instance(request).await.expect("StartInstance");
}

#[tokio::test]
async fn orchestrations_and_activities_go_to_the_workers_that_take_them() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut orchestrator = sidecar.worker_with(filters(&[("Order", &[])], &[])).await;
    let mut activities = sidecar.worker_with(filters(&[], &[("Charge", &[])])).await;

    start(&mut client, "o1", "Order", None).await;
    let (token, r) = orchestrator.orchestration().await;
    assert_eq!(r.instance_id, "o1");
    complete_orchestrator(&mut client, &token, "o1", vec![schedule_task(1, "Charge", "5")])
        .await
        .unwrap();
    let (token, a) = activities.activity().await;
    assert_eq!(a.name, "Charge");
    complete_activity(&mut client, &token, &a, "\"paid\"").await.unwrap();
    let (token, r) = orchestrator.orchestration().await;
    assert_eq!(r.instance_id, "o1");
    complete_orchestrator(&mut client, &token, "o1", vec![complete(2, S::Completed, "\"paid\"")])
        .await
        .unwrap();
    assert_eq!(wait_completion(&mut client, "o1").await.output.as_deref(), Some("\"paid\""));
}

#[tokio::test]
async fn work_nobody_takes_waits_until_a_worker_that_takes_it_connects() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut orders = sidecar.worker_with(filters(&[("Order", &[])], &[])).await;

    start(&mut client, "unknown-1", "Unregistered", None).await;
    start(&mut client, "order-1", "Order", None).await;
    // The Order worker gets its own instance and nothing else.
    let (token, r) = orders.orchestration().await;
    assert_eq!(r.instance_id, "order-1");
    complete_orchestrator(&mut client, &token, "order-1", vec![schedule_task(1, "Unlisted", "1")])
        .await
        .unwrap();
    assert_eq!(status_of(&mut client, "unknown-1").await, S::Pending, "left waiting");

    // A worker that takes the name connects later and gets the waiting instance; a worker
    // without filters takes what nobody else does (the activity).
    let mut late = sidecar.worker_with(filters(&[("Unregistered", &[])], &[])).await;
    let (token, r) = late.orchestration().await;
    assert_eq!(r.instance_id, "unknown-1");
    complete_orchestrator(&mut client, &token, "unknown-1", vec![complete(1, S::Completed, "1")])
        .await
        .unwrap();
    let mut everything = sidecar.worker().await;
    let (token, a) = everything.activity().await;
    assert_eq!((a.name.as_str(), a.task_id), ("Unlisted", 1));
    complete_activity(&mut client, &token, &a, "1").await.unwrap();
    let (token, r) = orders.orchestration().await;
    assert_eq!(r.instance_id, "order-1");
    complete_orchestrator(&mut client, &token, "order-1", vec![complete(2, S::Completed, "2")])
        .await
        .unwrap();
    assert_eq!(wait_completion(&mut client, "order-1").await.orchestration_status(), S::Completed);
}

#[tokio::test]
async fn versions_must_match_when_listed() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    // What the .NET worker sends for "Order" registered as version 2 only, under a strict match.
    let mut v2 = sidecar.worker_with(filters(&[("Order", &["2"])], &[])).await;
    start_versioned(&mut client, "unversioned", "Order", None).await;
    start_versioned(&mut client, "v1", "Order", Some("1")).await;
    start_versioned(&mut client, "v2", "Order", Some("2")).await;
    let (token, r) = v2.orchestration().await;
    assert_eq!(r.instance_id, "v2");
    complete_orchestrator(&mut client, &token, "v2", vec![complete(1, S::Completed, "2")])
        .await
        .unwrap();

    // Unversioned work is the version "" in a filter; any version when none are listed.
    let mut unversioned = sidecar.worker_with(filters(&[("Order", &[""])], &[])).await;
    let (token, r) = unversioned.orchestration().await;
    assert_eq!(r.instance_id, "unversioned");
    complete_orchestrator(&mut client, &token, "unversioned", vec![complete(1, S::Completed, "0")])
        .await
        .unwrap();
    assert_eq!(status_of(&mut client, "v1").await, S::Pending);
    let mut any = sidecar.worker_with(filters(&[("Order", &[])], &[])).await;
    let (_, r) = any.orchestration().await;
    assert_eq!(r.instance_id, "v1");
}

#[tokio::test]
async fn a_filtered_worker_that_leaves_hands_its_items_to_the_next_that_takes_them() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut first = sidecar.worker_with(filters(&[("Order", &[])], &[])).await;
    start(&mut client, "o1", "Order", None).await;
    let (_, r) = first.orchestration().await;
    assert_eq!(r.instance_id, "o1");
    drop(first);
    let mut second = sidecar.worker_with(filters(&[("Order", &[])], &[])).await;
    let (token, r) = second.orchestration().await;
    assert_eq!(r.instance_id, "o1");
    complete_orchestrator(&mut client, &token, "o1", vec![complete(1, S::Completed, "1")])
        .await
        .unwrap();
    assert_eq!(wait_completion(&mut client, "o1").await.orchestration_status(), S::Completed);
}

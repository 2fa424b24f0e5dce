//! Work a commit creates is leased in that commit for the workers waiting for it and handed
//! to them straight away (see `dispatch/claims.rs`). What matters here is that such a lease
//! never strands its work: a worker that goes away before reading it, a sidecar that shuts
//! down, a second sidecar on the same database: the work still runs, exactly once, without
//! waiting for a lease to expire. The leases are made long so that a stranded one would
//! fail these tests rather than be rescued by expiry.

mod common;

use std::time::Duration;

use common::*;
use outrigger::proto::work_item::Request as Item;
use outrigger::proto::*;

fn long_leases(o: &mut outrigger::server::Options) {
    o.dispatch.lease = Duration::from_secs(120);
}

#[tokio::test]
async fn a_waiting_worker_gets_each_steps_work_from_its_commit() {
    let sidecar = Sidecar::with(long_leases).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "flow", "Flow", None).await;
    let (token, _) = worker.orchestration().await;
    let tasks = vec![schedule_task(0, "A", "\"a\""), schedule_task(1, "B", "\"b\"")];
    complete_orchestrator(&mut client, &token, "flow", tasks).await.unwrap();
    let mut names = vec![];
    for _ in 0..2 {
        let (token, request) = worker.activity().await;
        names.push(request.name.clone());
        complete_activity(&mut client, &token, &request, "\"done\"").await.unwrap();
    }
    names.sort();
    assert_eq!(names, ["A", "B"]);
    // Both results reach the orchestration, in one episode or two.
    let mut results = 0;
    while results < 2 {
        let (token, request) = worker.orchestration().await;
        results += request.new_events.iter().filter(|e| kind(e) == "TaskCompleted").count();
        let next = if results == 2 {
            vec![complete(2, OrchestrationStatus::Completed, "\"ok\"")]
        } else {
            vec![]
        };
        complete_orchestrator(&mut client, &token, "flow", next).await.unwrap();
    }
    assert_eq!(wait_completion(&mut client, "flow").await.output.as_deref(), Some("\"ok\""));
}

#[tokio::test]
async fn claimed_work_a_worker_leaves_unread_goes_to_the_next_worker_at_once() {
    let sidecar = Sidecar::with(long_leases).await;
    let mut client = sidecar.client.clone();
    let mut first = sidecar.worker().await;
    start(&mut client, "left", "Left", None).await;
    let (token, _) = first.orchestration().await;
    // The activity is claimed for this worker by the step's commit and queued on its stream
    // before the answer returns; the worker goes away without reading it.
    complete_orchestrator(&mut client, &token, "left", vec![schedule_task(0, "Work", "1")])
        .await
        .unwrap();
    drop(first);
    let mut second = sidecar.worker().await;
    let (token, request) = second.activity().await;
    assert_eq!(request.name, "Work");
    // Likewise the orchestration its result claims.
    complete_activity(&mut client, &token, &request, "\"done\"").await.unwrap();
    drop(second);
    let mut third = sidecar.worker().await;
    let (token, request) = third.orchestration().await;
    assert_eq!(kinds(&request.new_events), ["OrchestratorStarted", "TaskCompleted"]);
    complete_orchestrator(
        &mut client,
        &token,
        "left",
        vec![complete(1, OrchestrationStatus::Completed, "\"ok\"")],
    )
    .await
    .unwrap();
    assert_eq!(status_of(&mut client, "left").await, OrchestrationStatus::Completed);
}

#[tokio::test]
async fn work_created_while_no_worker_waits_is_queued_for_the_next_one() {
    let sidecar = Sidecar::with(long_leases).await;
    let mut client = sidecar.client.clone();
    // A worker that takes orchestrations only: nothing can claim the activity for anyone.
    let filters = WorkItemFilters {
        orchestrations: vec![OrchestrationFilter {
            name: "Queue".into(),
            ..Default::default()
        }],
        activities: vec![ActivityFilter {
            name: "Other".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut orchestrator = sidecar
        .worker_with(GetWorkItemsRequest {
            work_item_filters: Some(filters),
            ..Default::default()
        })
        .await;
    start(&mut client, "queued", "Queue", None).await;
    let (token, _) = orchestrator.orchestration().await;
    complete_orchestrator(&mut client, &token, "queued", vec![schedule_task(0, "Work", "1")])
        .await
        .unwrap();
    // An activity-only worker connecting later finds it queued.
    let activities_only = WorkItemFilters {
        activities: vec![ActivityFilter {
            name: "Work".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut later = sidecar
        .worker_with(GetWorkItemsRequest {
            work_item_filters: Some(activities_only),
            ..Default::default()
        })
        .await;
    let (token, request) = later.activity().await;
    assert_eq!(request.name, "Work");
    complete_activity(&mut client, &token, &request, "\"done\"").await.unwrap();
    // Only a filtered worker takes the orchestration: the result claims nothing and the
    // dispatch loop hands the orchestration to it.
    let (token, request) = orchestrator.orchestration().await;
    assert_eq!(kinds(&request.new_events), ["OrchestratorStarted", "TaskCompleted"]);
    complete_orchestrator(
        &mut client,
        &token,
        "queued",
        vec![complete(1, OrchestrationStatus::Completed, "1")],
    )
    .await
    .unwrap();
    assert_eq!(status_of(&mut client, "queued").await, OrchestrationStatus::Completed);
}

#[tokio::test]
async fn sidecars_sharing_postgres_run_claimed_work_once_and_a_stopping_one_lets_it_go() {
    if !common::postgres::available() {
        return;
    }
    let a = Sidecar::on(Backend::Postgres, long_leases).await;
    let b = a.sharing(long_leases).await;
    let mut client = a.client.clone();
    let mut on_a = a.worker().await;
    start(&mut client, "shared", "Shared", None).await;
    let (token, _) = on_a.orchestration().await;
    let tasks = (0..3).map(|i| schedule_task(i, "Work", &i.to_string())).collect();
    complete_orchestrator(&mut client, &token, "shared", tasks).await.unwrap();
    // All three were claimed for the worker on A; a worker on B gets none of them, only what
    // A lets go when it stops.
    let mut held = vec![];
    for _ in 0..3 {
        held.push(on_a.activity().await);
    }
    let mut on_b = b.worker().await;
    let (token, request) = &held[0];
    complete_activity(&mut client, token, request, "\"0\"").await.unwrap();
    // The orchestration that result claims goes to A's worker, not B's.
    let (token, request) = on_a.orchestration().await;
    assert_eq!(kinds(&request.new_events), ["OrchestratorStarted", "TaskCompleted"]);
    complete_orchestrator(&mut client, &token, "shared", vec![]).await.unwrap();
    // A stops holding two activities: B's worker gets them at once, long before their leases
    // would run out.
    drop(on_a);
    let database = a.stop().await;
    // The results B's worker sends claim the orchestration for it: its work items may come
    // before the second activity.
    let mut client_b = b.client.clone();
    let (mut rest, mut completed) = (vec![], 1);
    while completed < 3 {
        let item = on_b.next().await;
        match item.request {
            Some(Item::ActivityRequest(request)) => {
                rest.push(request.task_id);
                complete_activity(&mut client_b, &item.completion_token, &request, "\"later\"")
                    .await
                    .unwrap();
            }
            Some(Item::OrchestratorRequest(request)) => {
                completed += request.new_events.iter().filter(|e| kind(e) == "TaskCompleted").count();
                let next = if completed == 3 {
                    vec![complete(3, OrchestrationStatus::Completed, "\"ok\"")]
                } else {
                    vec![]
                };
                complete_orchestrator(&mut client_b, &item.completion_token, "shared", next)
                    .await
                    .unwrap();
            }
            other => panic!("expected an activity or an orchestrator work item, got {other:?}"),
        }
    }
    rest.sort();
    let first = held[0].1.task_id;
    let expected: Vec<i32> = (0..3).filter(|i| *i != first).collect();
    assert_eq!(rest, expected);
    assert_eq!(status_of(&mut client_b, "shared").await, OrchestrationStatus::Completed);
    drop((on_b, client, client_b));
    b.stop().await;
    drop(database);
}
